"""Tests for minimem.memory.lsam (specs/nam_hma.md A2): the step and the sequence against central
differences for every array input (xs, h0, M0 and the parameters, with gradients arriving on every
h_t and on M_T), the autodiff twin against the manual engine, the registered gradcheck cases, the
A2.9 invariants, a planted BPTT bug, and bad inputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from gradcheck.cases.nam import lsam_cases
from gradcheck.core import assert_grads_close, check_model, numeric_vjp
from minimem import autodiff as ad
from minimem.memory.lsam import (
    LSAM, LSAMConfig, lsam_autodiff, lsam_backward, lsam_forward, lsam_init, lsam_step_backward,
    lsam_step_forward,
)
from minimem.memory.nam import unit_forward


def setup(seed=0, T=3, B=2, X=3, D=6, H=2):
    rng = np.random.default_rng(seed)
    params = lsam_init(rng, X, D, H)
    xs = rng.standard_normal((T, B, X))
    h0 = 0.5 * rng.standard_normal((B, D))
    M0 = 0.5 * rng.standard_normal((B, H, D // H, D // H))
    return rng, params, xs, h0, M0


# ----------------------------------------------------------------- finite differences
def test_step_backward_matches_central_differences():
    rng, params, xs, h0, M0 = setup(1)
    (h, M), cache = lsam_step_forward(xs[0], h0, M0, params)
    dh, dM = rng.standard_normal(h.shape), rng.standard_normal(M.shape)
    dx, dh_prev, dM_prev, grads = lsam_step_backward(dh, dM, cache)
    names = list(params)

    def f(x, h_prev, M_prev, *weights):
        return lsam_step_forward(x, h_prev, M_prev, dict(zip(names, weights)))[0]

    numeric = numeric_vjp(f, (xs[0], h0, M0) + tuple(params.values()), (dh, dM))
    assert_grads_close((dx, dh_prev, dM_prev) + tuple(grads[n] for n in names), numeric,
                       names=["x", "h_prev", "M_prev"] + names)


def test_sequence_backward_matches_central_differences_for_every_input():
    """BPTT with gradients on every h_t and on the final memory M_T, and non-zero h0, M0."""
    rng, params, xs, h0, M0 = setup(2, T=4)
    (hs, M_T), cache = lsam_forward(xs, params, h0, M0)
    dhs, dM_T = rng.standard_normal(hs.shape), rng.standard_normal(M_T.shape)
    dxs, dh0, dM0, grads = lsam_backward(dhs, dM_T, cache)
    names = list(params)

    def f(xs_, h0_, M0_, *weights):
        return lsam_forward(xs_, dict(zip(names, weights)), h0_, M0_)[0]

    numeric = numeric_vjp(f, (xs, h0, M0) + tuple(params.values()), (dhs, dM_T))
    assert_grads_close((dxs, dh0, dM0) + tuple(grads[n] for n in names), numeric,
                       names=["xs", "h0", "M0"] + names)


def test_autodiff_twin_matches_the_manual_engine_including_the_initial_state():
    rng, params, xs, h0, M0 = setup(3, T=5)
    (hs, M_T), cache = lsam_forward(xs, params, h0, M0)
    dhs, dM_T = rng.standard_normal(hs.shape), rng.standard_normal(M_T.shape)
    dxs, dh0, dM0, grads = lsam_backward(dhs, dM_T, cache)
    t_xs, t_h0, t_M0 = (ad.Tensor(a.copy(), requires_grad=True) for a in (xs, h0, M0))
    tparams = {n: ad.Tensor(p.copy(), requires_grad=True) for n, p in params.items()}
    t_hs, t_M = lsam_autodiff(t_xs, tparams, t_h0, t_M0)
    ((t_hs * dhs).sum() + (t_M * dM_T).sum()).backward()
    np.testing.assert_allclose(t_hs.data, hs, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(t_M.data, M_T, rtol=1e-12, atol=1e-14)
    for name, a, m in [("xs", t_xs.grad, dxs), ("h0", t_h0.grad, dh0), ("M0", t_M0.grad, dM0)] + [
            (n, tparams[n].grad, grads[n]) for n in params]:
        np.testing.assert_allclose(a, m, rtol=1e-10, atol=1e-13, err_msg=name)


# ----------------------------------------------------------------- the registered cases
def test_the_cases_are_small_seeded_float64():
    cases = {c.name: c for c in lsam_cases()}
    assert set(cases) == {"nam.lsam.small", "nam.lsam.bptt30", "nam.lsam.heads4"}
    again = {c.name: c for c in lsam_cases()}
    for name, case in cases.items():
        assert all(p.dtype == np.float64 for p in case.model.params.values())
        for key, value in case.model.params.items():
            np.testing.assert_array_equal(again[name].model.params[key], value)
    assert cases["nam.lsam.bptt30"].inputs.shape[0] == 30


@pytest.mark.parametrize("name", ["small", "heads4"])
def test_lsam_cases_pass_the_full_gradcheck(name):
    case = {c.name: c for c in lsam_cases()}[f"nam.lsam.{name}"]
    result = check_model(case, "full")
    assert result.ok, [(r.engine, r.tensor, r.verdict, r.max_rel, r.worst) for r in result.rows if not r.ok]
    assert {r.engine for r in result.rows} == {"manual", "autodiff", "manual~autodiff"}


def test_bptt30_case_passes_the_fast_gradcheck():
    case = {c.name: c for c in lsam_cases()}["nam.lsam.bptt30"]
    result = check_model(case, "fast", directions=2)
    assert result.ok, [(r.engine, r.tensor, r.verdict, r.max_rel) for r in result.rows if not r.ok]


# ----------------------------------------------------------------- invariants, spec A2.9
def gate_params(params, D, write_bias):
    """q's projection copied from k's (so q = k), and the write gate pinned by its bias."""
    p = {n: v.copy() for n, v in params.items()}
    p["W_qkv"][:, :D] = p["W_qkv"][:, D:2 * D]
    p["b_qkv"][:D] = p["b_qkv"][D:2 * D]
    p["W_w"][:] = 0.0
    p["b_w"][:] = write_bias
    return p


def test_full_write_gate_and_query_equal_key_read_back_the_value():
    """w = 1 (sigmoid(40) == 1.0 in float64) and q = k: h_t = r_t * v_t per head, exactly."""
    _, params, xs, h0, M0 = setup(4, T=4, D=6, H=3)
    p = gate_params(params, 6, 40.0)
    (hs, _), cache = lsam_forward(xs, p, h0, M0)
    for t, step in enumerate(cache.steps):
        assert np.all(step.w == 1.0)
        v = (step.z @ p["W_qkv"][:, 12:] + p["b_qkv"][12:]).reshape(2, 3, 2)
        np.testing.assert_allclose(hs[t].reshape(2, 3, 2), step.r[..., None] * v, rtol=1e-12, atol=1e-13)


def test_closed_write_gate_keeps_the_initial_memory():
    """w = 0 (sigmoid(-800) == 0.0): M_t = M_0 and h_t = r_t * M_0 unit(q_t)."""
    _, params, xs, h0, M0 = setup(5, T=4)
    p = gate_params(params, 6, -800.0)
    (hs, M_T), cache = lsam_forward(xs, p, h0, M0)
    np.testing.assert_array_equal(M_T, M0)
    for t, step in enumerate(cache.steps):
        q = (step.z @ p["W_qkv"][:, :6] + p["b_qkv"][:6]).reshape(2, 2, 3)
        expected = step.r[..., None] * np.matmul(M0, unit_forward(q)[0][..., None])[..., 0]
        np.testing.assert_allclose(hs[t].reshape(2, 2, 3), expected, rtol=1e-12, atol=1e-13)


def test_memory_growth_is_bounded_by_the_written_value():
    """||M_t||_F <= ||M_{t-1}||_F + w ||v|| per head (the erase keeps the memory from blowing up)."""
    rng, params, xs, h0, M0 = setup(6, T=20)
    params = {n: 3.0 * v for n, v in params.items()}                  # large values and gates
    (_, _), cache = lsam_forward(3.0 * xs, params, h0, M0)
    M_prev = M0
    for step in cache.steps:
        M_t = step.read.M
        growth = np.linalg.norm(M_t, axis=(-2, -1)) - np.linalg.norm(M_prev, axis=(-2, -1))
        assert np.all(growth <= step.w * np.linalg.norm(step.write.v, axis=-1) + 1e-12)
        M_prev = M_t


def test_model_outputs_are_the_states_without_a_readout_and_final_memory_is_in_the_cache():
    rng = np.random.default_rng(7)
    model = LSAM(LSAMConfig(X=3, D=4, H=2), rng=rng)
    xs = rng.standard_normal((3, 2, 3))
    hs, cache = model.forward(xs)
    (hs_ref, M_T), _ = lsam_forward(xs, {n[5:]: v for n, v in model.params.items()})
    np.testing.assert_array_equal(hs, hs_ref)
    np.testing.assert_array_equal(cache[0].steps[-1].read.M, M_T)


def test_float32_config_gives_float32_parameters_and_outputs():
    model = LSAM(LSAMConfig(X=3, D=4, H=2, Y=2, dtype="float32"), rng=np.random.default_rng(8))
    assert all(p.dtype == np.float32 for p in model.params.values())
    ys, _ = model.forward(np.ones((2, 1, 3), dtype=np.float32))
    assert ys.dtype == np.float32


# ----------------------------------------------------------------- a planted BPTT bug
def test_dropping_the_memory_carry_through_time_is_caught():
    rng, params, xs, h0, M0 = setup(9, T=4)
    (hs, M_T), cache = lsam_forward(xs, params, h0, M0)
    dhs = rng.standard_normal(hs.shape)
    names = list(params)
    numeric = numeric_vjp(lambda *w: lsam_forward(xs, dict(zip(names, w)), h0, M0)[0][0],
                          tuple(params.values()), dhs)
    # the bug: every step receives dM = 0 instead of the gradient carried from step t+1
    grads = {n: np.zeros_like(p) for n, p in params.items()}
    dh_carry = np.zeros_like(h0)
    for t in reversed(range(4)):
        _, dh_carry, _, step_grads = lsam_step_backward(dhs[t] + dh_carry, np.zeros_like(M0), cache.steps[t])
        for n in names:
            grads[n] += step_grads[n]
    assert_grads_close(tuple(lsam_backward(dhs, None, cache)[3][n] for n in names), numeric, names=names)
    with pytest.raises(AssertionError, match=r"^W_qkv:"):
        assert_grads_close(tuple(grads[n] for n in names), numeric, names=names)


# ----------------------------------------------------------------- bad input
def test_bad_input_raises_value_error():
    _, params, xs, h0, M0 = setup(10)
    with pytest.raises(ValueError, match=r"xs must have shape \(T, B, X\) with T >= 1 and X=3"):
        lsam_forward(xs[..., :2], params)
    with pytest.raises(ValueError, match=r"xs must have shape \(T, B, X\) with T >= 1"):
        lsam_forward(xs[:0], params)
    with pytest.raises(ValueError, match=r"h0 must have shape \(B, D\) = \(2, 6\)"):
        lsam_forward(xs, params, h0[:, :4])
    with pytest.raises(ValueError, match=r"M0 must have shape \(B, H, d, d\) = \(2, 2, 3, 3\)"):
        lsam_forward(xs, params, h0, M0[..., :2])
    with pytest.raises(ValueError, match=r"parameter W_r must have shape \(9, 2\)"):
        lsam_forward(xs, {**params, "W_r": np.ones((9, 3))})
    (hs, M_T), cache = lsam_forward(xs, params)
    with pytest.raises(ValueError, match=r"dhs must have the shape of hs \(T, B, D\) = \(3, 2, 6\)"):
        lsam_backward(hs[:2], None, cache)
    with pytest.raises(ValueError, match=r"dM_T must have the shape of M_T"):
        lsam_backward(hs, M_T[0], cache)
    with pytest.raises(ValueError, match=r"x must have shape \(B, X\) with X=3"):
        lsam_step_forward(xs[0, :, :2], h0, M0, params)
    with pytest.raises(ValueError, match=r"LSAMConfig.D must be divisible by H"):
        LSAMConfig(X=3, D=6, H=4)
    with pytest.raises(ValueError, match=r"LSAMConfig.Y must be an integer >= 1"):
        LSAMConfig(X=3, D=6, H=2, Y=0)
    model = LSAM(LSAMConfig(X=3, D=6, H=2))
    with pytest.raises(ValueError, match=r"inputs must be finite"):
        model.forward(np.full((2, 1, 3), np.nan))
    with pytest.raises(ValueError, match=r"inputs must have shape \(T, B, X\)"):
        model.forward(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"config must be an LSAMConfig"):
        LSAM({"X": 3, "D": 6, "H": 2})
