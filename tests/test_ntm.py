"""Tests for minimem.memory.ntm (and its heads module): both engines against central differences
and each other, the model-level oracles of specs/ntm_dnc_sam.md A.9 and E.1, planted bugs that the
checker must catch, and bad inputs.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from gradcheck.cases.ntm import ntm_case, ntm_cases
from gradcheck.core import assert_grads_close, check_model, numeric_vjp
from minimem import autodiff as ad
from minimem.memory import ntm as ntm_module
from minimem.memory.ntm import NTM, NTMConfig, NTMState, ntm_backward, ntm_forward, ntm_param_shapes
from minimem.memory.ntm_heads import (
    HeadLayout, HeadOutputs, clip_backward, clip_forward, head_outputs_autodiff, head_outputs_backward,
    head_outputs_forward,
)
from minimem.tasks import make_copy

CONFIGS = {
    "lstm": dict(),
    "feedforward": dict(controller="feedforward"),
    "multihead": dict(R=2, write_heads=2, S=5, memory_init="random"),
    "read_after_write": dict(read_after_write=True, memory_init="learned", key_squash="identity",
                             add_squash="identity"),
}


def make_model(name="lstm", seed=0, **overrides):
    """An NTM at a demo-like size (copy task: X = 7, Y = 6) with one of the CONFIGS."""
    config = NTMConfig(**{"X": 7, "Y": 6, "N": 12, "W": 6, "H": 16, **CONFIGS[name], **overrides})
    return NTM(config, rng=np.random.default_rng(seed))


def copy_inputs(seed=1, B=3, L=4):
    return make_copy(np.random.default_rng(seed), B, num_bits=6, min_len=L, max_len=L).inputs   # (2L+1, B, 7)


def autodiff_grads(model, xs, dys, **kwargs):
    tparams = {k: ad.Tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}
    ys = model.forward_autodiff(tparams, xs, **kwargs)
    (ys * dys).sum().backward()
    return ys.data, {k: t.grad for k, t in tparams.items()}


def assert_engines_agree(a, b, rtol=1e-10, what=""):
    """|a - b| <= rtol max(|a|, |b|) + 1e-12 max|a| entrywise: relative, with a floor at the
    tensor's scale (rounding differs by ~1e-16 of the terms summed)."""
    a, b = np.asarray(a), np.asarray(b)
    floor = 1e-12 * max(1.0, float(np.max(np.abs(a), initial=0.0)))
    bad = np.abs(a - b) > rtol * np.maximum(np.abs(a), np.abs(b)) + floor
    assert not np.any(bad), f"{what}: engines differ at {np.argwhere(bad)[:3].tolist()}, max |diff| {np.max(np.abs(a - b)):.3g}"


# ----------------------------------------------------------------- the heads pair
@pytest.mark.parametrize("R, Rw, W, S, squash", [(1, 1, 3, 3, "tanh"), (2, 3, 2, 5, "identity"), (1, 2, 1, 1, "tanh")])
def test_head_outputs_backward_matches_central_differences(R, Rw, W, S, squash):
    layout = HeadLayout(R, Rw, W, S, key_squash=squash, add_squash=squash)
    rng = np.random.default_rng(R + 10 * Rw + 100 * S)
    o = 2.0 * rng.standard_normal((2, layout.width))                      # (B, P)
    heads, cache = head_outputs_forward(o, layout)
    assert heads.k.shape == (2, R + Rw, W) and heads.s.shape == (2, R + Rw, S) and heads.a.shape == (2, Rw, W)
    assert np.all(heads.gamma >= 1.0) and np.all(heads.beta >= 0.0)
    np.testing.assert_allclose(heads.s.sum(axis=-1), 1.0, rtol=0, atol=1e-15)
    dheads = HeadOutputs(*(rng.standard_normal(x.shape) for x in heads))
    analytic = head_outputs_backward(dheads, cache)
    numeric = numeric_vjp(lambda o: tuple(head_outputs_forward(o, layout)[0]), (o,), tuple(dheads))
    assert_grads_close((analytic,), numeric, names=("o",))
    t = ad.Tensor(o, requires_grad=True)
    twin = head_outputs_autodiff(t, layout)
    sum((x * d).sum() for x, d in zip(twin, dheads)).backward()
    np.testing.assert_allclose(t.grad, analytic, rtol=1e-12, atol=1e-14)
    for x, y in zip(twin, heads):
        np.testing.assert_allclose(x.data, y, rtol=1e-14, atol=0)


def test_clip_passes_the_gradient_only_inside():
    x = np.array([-25.0, -20.0, -3.0, 0.0, 20.0, 21.0])
    y, cache = clip_forward(x, 20.0)
    np.testing.assert_array_equal(y, [-20.0, -20.0, -3.0, 0.0, 20.0, 20.0])
    np.testing.assert_array_equal(clip_backward(np.ones(6), cache), [0, 1, 1, 1, 1, 0])
    y, cache = clip_forward(x, None)
    assert y is x and clip_backward(np.ones(6), cache).sum() == 6


# ----------------------------------------------------------------- gradient checks
def test_the_cases_are_small_seeded_float64():
    cases = {c.name: c for c in ntm_cases()}
    assert set(cases) == {"ntm.lstm", "ntm.feedforward", "ntm.multihead", "ntm.read_after_write"}
    again = {c.name: c for c in ntm_cases()}
    for name, case in cases.items():
        assert all(p.dtype == np.float64 for p in case.model.params.values())
        for key, value in case.model.params.items():
            np.testing.assert_array_equal(again[name].model.params[key], value)
        ys, cache = case.model.forward(case.inputs)
        assert np.max(np.abs(ys)) < 10.0                     # far from the +-20 clip
        heads_pre = np.stack([s.heads_linear.x @ s.heads_linear.W for s in cache.steps])
        assert np.max(np.abs(heads_pre)) < 10.0


def test_lstm_case_passes_the_full_gradcheck_with_both_engines():
    case = ntm_case("lstm", 0, T=3, B=2, N=8, W=4, R=1, H=8, notes="")
    result = check_model(case, "full")
    assert result.ok, [(r.engine, r.tensor, r.verdict, r.max_abs, r.worst) for r in result.rows if not r.ok]
    engines = {r.engine for r in result.rows}
    assert engines == {"manual", "autodiff", "manual~autodiff"}
    assert {r.tensor for r in result.rows} >= set(case.model.params) | {"outputs"}


@pytest.mark.parametrize("name", ["ntm.feedforward", "ntm.multihead", "ntm.read_after_write"])
def test_other_cases_pass_the_fast_gradcheck(name):
    case = {c.name: c for c in ntm_cases()}[name]
    result = check_model(case, "fast", directions=3)
    assert result.ok, [(r.engine, r.tensor, r.verdict, r.max_abs, r.worst) for r in result.rows if not r.ok]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_manual_engine_equals_autodiff_engine(name):
    model = make_model(name)
    xs = copy_inputs()
    dys = np.random.default_rng(2).standard_normal((xs.shape[0], xs.shape[1], 6))
    ys, cache = model.forward(xs)
    grads = model.backward(dys, cache)
    for custom_ops in (False, True):
        ys_ad, grads_ad = autodiff_grads(model, xs, dys, custom_ops=custom_ops)
        assert_engines_agree(ys, ys_ad, what="outputs")
        assert list(grads) == list(model.params)
        for key in model.params:
            assert grads[key].shape == model.params[key].shape
            assert_engines_agree(grads[key], grads_ad[key], what=key)


# ----------------------------------------------------------------- oracles (A.9, E.1)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_weighting_is_on_the_simplex_at_every_step(name):
    model = make_model(name)
    _, cache = model.forward(copy_inputs(L=5))
    internals = cache.internals()
    for key in ("read_weightings", "write_weightings", "content_weightings"):
        w = internals[key]
        assert np.max(np.abs(w.sum(axis=-1) - 1.0)) < 1e-12, key
        assert w.min() >= 0.0 and w.max() <= 1.0, key
    T, B = 11, 3
    assert internals["read_weightings"].shape == (T, B, model.config.R, model.config.N)
    assert internals["write_weightings"].shape == (T, B, model.config.write_heads, model.config.N)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_batch_elements_are_independent(name):
    model = make_model(name)
    xs = copy_inputs(B=3)
    ys, _ = model.forward(xs)
    other = xs.copy()
    other[:, 1:] = np.random.default_rng(5).standard_normal(other[:, 1:].shape)   # change b' = 1, 2
    ys_other, _ = model.forward(other)
    np.testing.assert_array_equal(ys_other[:, 0], ys[:, 0])
    assert not np.allclose(ys_other[:, 1:], ys[:, 1:])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_T_steps_at_once_equal_two_calls_with_the_carried_state(name):
    model = make_model(name)
    xs = copy_inputs(L=4)                                    # T = 9
    dys = np.random.default_rng(3).standard_normal((9, 3, 6))
    ys, cache = model.forward(xs)
    ys1, cache1 = model.forward(xs[:4])
    ys2, cache2 = model.forward(xs[4:], state=cache1.final_state)
    np.testing.assert_array_equal(np.concatenate([ys1, ys2]), ys)            # exact (E.1)
    for whole, half in zip(cache.final_state, cache2.final_state):
        np.testing.assert_array_equal(half, whole)
    # the gradient chains too: backward of the second half hands d(state) to the first half
    grads = model.backward(dys, cache)
    grads2, dstate_mid = ntm_backward(dys[4:], cache2)
    grads1, _ = ntm_backward(dys[:4], cache1, dstate=dstate_mid)
    assert all(not np.any(grads2[k]) for k in grads2 if k.startswith("init."))
    for key in grads:
        assert_engines_agree(grads[key], grads1[key] + grads2[key], rtol=1e-11, what=key)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_float32_forward_matches_float64(name):
    model64 = make_model(name)
    model32 = make_model(name, dtype="float32")                # the same draws, rounded
    xs = copy_inputs(L=4)                                      # T = 9 <= 10
    ys64, _ = model64.forward(xs)
    ys32, cache32 = model32.forward(xs.astype(np.float32))
    assert ys32.dtype == np.float32 and cache32.final_state.M.dtype == np.float32
    np.testing.assert_allclose(ys32, ys64, rtol=1e-4, atol=1e-4 * np.max(np.abs(ys64)))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_zero_memory_gives_finite_outputs_and_gradients(name):
    model = make_model(name)
    xs = copy_inputs(B=2)
    state = model.initial_state(2)
    state = state._replace(M=np.zeros_like(state.M), r=np.zeros_like(state.r))
    ys, cache = model.forward(xs, state=state)
    grads, dstate0 = ntm_backward(np.ones_like(ys), cache)
    assert np.all(np.isfinite(ys))
    assert all(np.all(np.isfinite(g)) for g in grads.values())
    assert all(np.all(np.isfinite(d)) for d in dstate0)
    _, grads_ad = autodiff_grads(model, xs, np.ones_like(ys), state=state)
    for key, g in grads.items():                       # the given state is a constant: init.* get none
        assert_engines_agree(g, np.zeros_like(g) if grads_ad[key] is None else grads_ad[key], what=key)


@pytest.mark.parametrize("read_after_write", [False, True])
def test_reads_see_the_memory_the_order_says(read_after_write):
    model = make_model("lstm", read_after_write=read_after_write)
    xs = copy_inputs(L=3)
    _, cache = model.forward(xs)
    internals = cache.internals()
    memory_after = internals["memory"]                                   # (T, B, N, W): M_1..M_T
    memory_before = np.concatenate([model.initial_state(3).M[None], memory_after[:-1]])   # M_0..M_{T-1}
    seen = memory_after if read_after_write else memory_before
    expected = np.einsum("tbrn,tbnw->tbrw", internals["read_weightings"], seen)
    np.testing.assert_allclose(internals["read_vectors"], expected, rtol=1e-13, atol=1e-15)
    other = memory_before if read_after_write else memory_after
    wrong = np.einsum("tbrn,tbnw->tbrw", internals["read_weightings"], other)
    assert not np.allclose(internals["read_vectors"], wrong)


def test_initial_state_is_learned_and_not_uniform():
    model = make_model("read_after_write")
    state = model.initial_state(2)
    w = state.w_read[0, 0]
    assert abs(w.sum() - 1.0) < 1e-12 and np.ptp(w) > 1e-3          # breaks the slots' symmetry
    np.testing.assert_allclose(state.r[0, 0], np.tanh(model.params["init.read0.r_bias"]))
    np.testing.assert_allclose(state.M[1], np.tanh(model.params["init.memory_bias"]))
    constant = make_model("lstm").initial_state(2)
    np.testing.assert_array_equal(constant.M, np.full_like(constant.M, 1e-6))
    assert not np.any(constant.h) and not np.any(constant.c)


def test_params_are_read_at_call_time_and_not_mutated():
    model = make_model("lstm")
    xs = copy_inputs(B=2)
    before = {k: v.copy() for k, v in model.params.items()}
    ys, cache = model.forward(xs)
    model.backward(np.ones_like(ys), cache)
    for key, value in before.items():
        np.testing.assert_array_equal(model.params[key], value)
    model.params["output.b"] = model.params["output.b"] + 1.0
    np.testing.assert_allclose(model.forward(xs)[0], ys + 1.0, rtol=0, atol=1e-12)


def test_config_is_json_and_names_every_parameter():
    config = NTMConfig(X=3, Y=2, N=5, W=4, R=2, write_heads=1, H=6, memory_init="learned", dtype=np.float32)
    assert config.dtype == "float32"
    json.dumps(dataclasses.asdict(config))
    shapes = ntm_param_shapes(config)
    assert list(shapes)[:3] == ["controller.W_x", "controller.W_h", "controller.b"]
    assert shapes["controller.W_x"] == (3 + 2 * 4, 24)
    assert shapes["read1.W"] == (6, 4 + 3 + 3) and shapes["write0.W"] == (6, 3 * 4 + 3 + 3)
    assert shapes["output.W"] == (6 + 2 * 4, 2) and shapes["init.memory_bias"] == (5, 4)
    model = NTM(config)
    assert list(model.params) == list(shapes)
    assert all(v.dtype == np.float32 for v in model.params.values())


# ----------------------------------------------------------------- planted bugs must be caught
def test_dropping_the_carried_weighting_gradient_is_caught(monkeypatch):
    real = ntm_module.address_backward

    def no_carry(dw, cache):                      # bug: w_{t-1} gets no gradient through eq. (7)
        *grads, dw_prev = real(dw, cache)
        return (*grads, np.zeros_like(dw_prev))

    monkeypatch.setattr(ntm_module, "address_backward", no_carry)
    case = ntm_case("lstm", 0, T=3, B=2, N=8, W=4, R=1, H=8, notes="")
    result = check_model(case, "full", tensors=["init.read0.w_bias", "controller.W_h"])
    failed = {(r.engine, r.tensor) for r in result.rows if r.verdict == "FAIL"}
    assert ("manual", "init.read0.w_bias") in failed
    assert ("manual~autodiff", "init.read0.w_bias") in failed
    assert not any(engine == "autodiff" for engine, _ in failed)      # the tape is independent


def test_dropping_the_carried_memory_gradient_is_caught(monkeypatch):
    real = ntm_module.write_backward

    def no_memory_carry(dM, cache):               # bug: M_{t-1} gets nothing through the erase
        dM_prev, dw, de, da = real(dM, cache)
        return np.zeros_like(dM_prev), dw, de, da

    monkeypatch.setattr(ntm_module, "write_backward", no_memory_carry)
    case = ntm_case("multihead", 2, T=3, B=2, N=6, W=3, R=2, write_heads=2, H=6, S=5,
                    memory_init="random", notes="")
    result = check_model(case, "fast", tensors=["write0.W", "read0.W"])
    assert not result.ok
    assert any(r.engine == "manual" and r.tensor == "write0.W" and r.verdict == "FAIL" for r in result.rows)


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize("xs, message", [
    (np.zeros((4, 7)), r"\(T, B, X\)"),
    (np.zeros((4, 2, 5)), r"X = 7"),
    (np.zeros((0, 2, 7)), r"T >= 1"),
    (np.zeros((3, 0, 7)), r"B >= 1"),
    (np.full((3, 2, 7), np.nan), r"xs must be finite"),
    (np.zeros((3, 2, 7), dtype=np.complex128), r"float"),
])
def test_bad_inputs_raise_value_errors(xs, message):
    model = make_model("lstm")
    with pytest.raises(ValueError, match=message):
        model.forward(xs)
    tparams = {k: ad.Tensor(v) for k, v in model.params.items()}
    with pytest.raises(ValueError, match=message):
        model.forward_autodiff(tparams, xs)


def test_bad_params_state_and_gradients_raise_value_errors():
    model = make_model("lstm")
    xs = copy_inputs(B=2)
    model.params["read0.W"] = model.params["read0.W"].copy()
    model.params["read0.W"][0, 0] = np.nan
    with pytest.raises(ValueError, match="parameter read0.W must be finite"):
        model.forward(xs)
    model = make_model("lstm")
    model.params["output.W"] = model.params["output.W"][:, :3]
    with pytest.raises(ValueError, match=r"output.W must have shape \(22, 6\)"):
        model.forward(xs)
    model = make_model("lstm")
    del model.params["init.read0.r_bias"]
    with pytest.raises(ValueError, match="parameters must be"):
        model.forward(xs)
    model = make_model("lstm")
    state = model.initial_state(3)                               # B = 3, but xs has B = 2
    with pytest.raises(ValueError, match=r"state.M must have shape \(B, N, W\) = \(2, 12, 6\)"):
        model.forward(xs, state=state)
    with pytest.raises(ValueError, match="NTMState"):
        model.forward(xs, state=tuple(model.initial_state(2)))
    ys, cache = model.forward(xs)
    with pytest.raises(ValueError, match=r"dys must have the shape of ys \(T, B, Y\)"):
        model.backward(ys[:-1], cache)


@pytest.mark.parametrize("field, value, message", [
    ("N", 0, "N must be an integer >= 1"),
    ("R", 1.5, "R must be an integer >= 1"),
    ("write_heads", 0, "write_heads must be an integer >= 1"),
    ("S", 4, "must be odd"),
    ("controller", "gru", "controller must be one of"),
    ("clip", -1.0, "clip must be a positive number or None"),
    ("clip", float("nan"), "clip must be a positive number or None"),
    ("key_squash", "relu", "key_squash must be one of"),
    ("add_squash", "sigmoid", "add_squash must be one of"),
    ("memory_init", "zeros", "memory_init must be one of"),
    ("read_after_write", "yes", "read_after_write must be True or False"),
    ("dtype", "float16", "dtype must be 'float64' or 'float32'"),
])
def test_bad_config_values_raise_value_errors(field, value, message):
    with pytest.raises(ValueError, match=message):
        NTMConfig(X=3, Y=2, **{field: value})


def test_functional_api_matches_the_model():
    model = make_model("multihead")
    xs = copy_inputs(B=2)
    ys, cache = ntm_forward(xs, model.params, model.config, model.memory0)
    np.testing.assert_array_equal(ys, model.forward(xs)[0])
    assert isinstance(cache.final_state, NTMState)
    with pytest.raises(ValueError, match="memory0"):
        ntm_forward(xs, model.params, model.config, memory0=None)          # "random" needs its buffer
