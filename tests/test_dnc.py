"""Tests of the Differentiable Neural Computer (minimem.memory.dnc and its siblings dnc_interface,
dnc_access), spec Part B and the DNC column of E.1: engines against each other and against central
differences with frozen free lists, the training-time clip of the controller-activation gradients
(B.4, B.10.8), the B.9 invariants at model level, batch independence, chunked sequences, float32,
planted bugs, and bad inputs (more hostile input in test_dnc_hostile.py)."""

from __future__ import annotations

import numpy as np
import pytest

from gradcheck.cases import dnc as dnc_cases
from gradcheck.cases.dnc import ReplayDNC, min_usage_gap, random_state
from gradcheck.core import Case, assert_grads_close, check_model, numeric_vjp
from minimem import autodiff as ad
from minimem.memory import dnc as dnc_module
from minimem.memory.dnc import DNC, DNCConfig, DNCRecord, DNCState, param_shapes
from minimem.memory.dnc_interface import (
    Interface, interface_autodiff, interface_backward, interface_forward, interface_layout, interface_size,
)
from minimem.nn.lstm import lstm_step_backward, lstm_step_forward

TOL = 1e-12


def all_cases():
    return dnc_cases.paper_mode() + dnc_cases.deepmind_usage() + dnc_cases.options()


CASES = {case.name: case for case in all_cases()}


def _rows_by_engine(rows):
    out = {}
    for row in rows:
        out.setdefault(row.engine, []).append(row)
    return out


# ----------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", sorted(CASES))
def test_engines_agree_and_match_central_differences(name):
    """E.1: manual == autodiff to 1e-10 rel; both == central differences (rel 1e-6) with frozen phi.
    Fast mode screens every tensor; full mode checks every coordinate of the biases, which reach
    every interface field, the output and (layer 0) every gate."""
    case = CASES[name]
    rows, ok = check_model(case, mode="fast", directions=2)
    assert ok, [r for r in rows if not r.ok]
    rows, ok = check_model(case, mode="full", tensors=["interface.b", "output.b", "controller.layer0.b"])
    assert ok, [r for r in rows if not r.ok]
    engines = _rows_by_engine(rows)                            # ok: |a - n| <= 1e-8 or rel <= 1e-6
    assert {r.tensor for r in engines["manual~autodiff"]} >= {"outputs", "interface.b"}


def test_unfrozen_objective_has_the_same_gradient_away_from_ties():
    """With usages > 1e-3 apart the sort does not change within eps, so the plain forward (sorting
    afresh in every perturbed pass) has the gradient the frozen-phi backward computes."""
    case = CASES["dnc.paper.L1"]
    assert min_usage_gap(case.model.forward(case.inputs)[1]) > 1e-3
    free = ReplayDNC(case.model.model, case.model.state0, None)
    rows, ok = check_model(Case(case.name + ".unfrozen", free, case.inputs, case.loss),
                           mode="fast", directions=2)
    assert ok, [r for r in rows if not r.ok]


def test_manual_equals_autodiff_on_a_larger_deep_model():
    """Both engines, no finite differences: N=9, W=5, R=3, L=3, T=6, B=3, from a random state."""
    config = DNCConfig(X=4, Y=5, N=9, W=5, R=3, H=7, layers=3)
    rng = np.random.default_rng(7)
    model = DNC(config, rng)
    xs = rng.standard_normal((6, 3, 4))
    state0 = random_state(rng, config, 3)
    ys, cache = model.forward(xs, state0)
    dys = rng.standard_normal(ys.shape)
    grads = model.backward(dys, cache)
    tparams = {k: ad.Tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}
    ys_t = model.forward_autodiff(tparams, xs, state0, cache.record)
    (ys_t * dys).sum().backward()
    np.testing.assert_allclose(ys_t.data, ys, rtol=1e-12, atol=1e-14)
    for name in model.params:
        scale = np.max(np.abs(grads[name]))
        assert np.max(np.abs(grads[name] - tparams[name].grad)) <= 1e-10 * scale, name


@pytest.mark.parametrize("drop", ["L", "u"])
def test_planted_bug_dropping_a_carried_gradient_is_caught(monkeypatch, drop):
    """Zeroing the link matrix's (or the usage's) gradient carried from step t to t-1 must make the
    manual engine FAIL against central differences, while the autodiff engine stays ok."""
    real_step_backward = dnc_module.dnc_step_backward

    def buggy(*args, **kwargs):
        dstate_prev, *rest = real_step_backward(*args, **kwargs)
        return (dstate_prev._replace(**{drop: np.zeros_like(getattr(dstate_prev, drop))}), *rest)

    monkeypatch.setattr(dnc_module, "dnc_step_backward", buggy)
    case = CASES["dnc.paper.L1"]
    rows, ok = check_model(case, mode="fast", tensors=["interface.b"])
    assert not ok
    engines = _rows_by_engine(rows)
    assert all(r.verdict == "FAIL" for r in engines["manual"])
    assert all(r.ok for r in engines["autodiff"])
    assert not all(r.ok for r in engines["manual~autodiff"])


@pytest.mark.parametrize("plant", ["dc_prev", "dz_forget"])
def test_planted_wrong_lstm_backward_is_caught(monkeypatch, plant):
    """A wrong LSTM cell backward inside the DNC's controller (the carried cell gradient dropped, or
    the forget gate's block of dz zeroed, which also feeds the hoisted weight gradients) must make
    the manual engine FAIL against central differences on the controller weights, on a two-layer
    controller, while the autodiff engine stays ok."""
    real = dnc_module.lstm_feedback_step_backward

    def wrong(dh, dc, cache, split):
        du, dh_prev, dc_prev, dz = real(dh, dc, cache, split)
        if plant == "dc_prev":
            return du, dh_prev, np.zeros_like(dc_prev), dz
        H = dh.shape[1]
        dz = dz.copy()
        dz[:, H:2 * H] = 0.0
        return du, dh_prev, dc_prev, dz

    monkeypatch.setattr(dnc_module, "lstm_feedback_step_backward", wrong)
    case = CASES["dnc.paper.L2"]
    rows, ok = check_model(case, mode="fast", tensors=["controller.layer0.W_h", "controller.layer1.b"])
    assert not ok
    engines = _rows_by_engine(rows)
    assert all(r.verdict == "FAIL" for r in engines["manual"])
    assert all(r.ok for r in engines["autodiff"])


def test_deepmind_mode_drops_exactly_the_usage_write_term():
    """Paper and deepmind mode share the forward; their gradients differ (the stop-gradient matters
    here), and the autodiff engine agrees with each mode's manual backward."""
    paper, deepmind = CASES["dnc.paper.L1"], CASES["dnc.deepmind.L1"]
    ys_p, cache_p = paper.model.forward(paper.inputs)
    ys_d, cache_d = deepmind.model.forward(deepmind.inputs)
    np.testing.assert_array_equal(ys_p, ys_d)
    dys = paper.loss(ys_p)[1]
    g_p = paper.model.backward(dys, cache_p)
    g_d = deepmind.model.backward(dys, cache_d)
    assert np.max(np.abs(g_p["interface.b"] - g_d["interface.b"])) > 1e-6


# ----------------------------------------------------------------- controller-gradient clipping (B.4, B.10.8)
def _recording_lstm_backward(monkeypatch):
    """Patch the LSTM cell backward the DNC calls so that every dh (B, H) it receives is recorded."""
    seen = []
    real = dnc_module.lstm_feedback_step_backward

    def recording(dh, dc, cache, split):
        seen.append(dh.copy())
        return real(dh, dc, cache, split)

    monkeypatch.setattr(dnc_module, "lstm_feedback_step_backward", recording)
    return seen


def _clip_setup(layers=2, T=6):
    config = DNCConfig(X=4, Y=3, N=6, W=4, R=2, H=8, layers=layers)
    rng = np.random.default_rng(21)
    model = DNC(config, rng)
    xs = rng.standard_normal((T, 2, 4))
    state0 = random_state(rng, config, 2)
    ys, cache = model.forward(xs, state0)
    return model, cache, rng.standard_normal(ys.shape)


def test_controller_grad_clip_is_off_by_default_and_in_every_gradcheck_case():
    assert DNC(DNCConfig(X=3, Y=2)).controller_grad_clip is None
    assert all(case.model.model.controller_grad_clip is None for case in all_cases())


def test_controller_grad_clip_is_a_no_op_for_small_gradients(monkeypatch):
    """A bound above every |dh^l_t| that BPTT produces leaves every gradient bit for bit unchanged."""
    seen = _recording_lstm_backward(monkeypatch)
    model, cache, dys = _clip_setup()
    grads, dstate0 = model.backward_with_state(dys, cache)
    largest = max(np.max(np.abs(dh)) for dh in seen)
    assert len(seen) == 6 * 2                                            # T steps x layers
    model.controller_grad_clip = 1.0001 * largest
    grads_clipped, dstate0_clipped = model.backward_with_state(dys, cache)
    for name in grads:
        np.testing.assert_array_equal(grads_clipped[name], grads[name], err_msg=name)
    for exact, clipped in zip(dstate0, dstate0_clipped):
        np.testing.assert_array_equal(clipped, exact)


def test_controller_grad_clip_bounds_large_gradients(monkeypatch):
    """With upstream gradients x 1e4, every dh^l_t entering the LSTM backward is within [-c, c],
    the clip is active (gradients change) and everything stays finite."""
    seen = _recording_lstm_backward(monkeypatch)
    model, cache, dys = _clip_setup()
    grads = model.backward(1e4 * dys, cache)
    assert max(np.max(np.abs(dh)) for dh in seen) > 10.0
    seen.clear()
    model.controller_grad_clip = 0.5
    grads_clipped = model.backward(1e4 * dys, cache)
    assert len(seen) == 12 and all(np.max(np.abs(dh)) <= 0.5 for dh in seen)
    assert any(np.max(np.abs(dh)) == 0.5 for dh in seen)                 # some entries sit on the bound
    for name in grads:
        assert np.all(np.isfinite(grads_clipped[name])), name
    assert np.max(np.abs(grads_clipped["controller.layer0.W_h"])) < np.max(np.abs(grads["controller.layer0.W_h"]))


def test_controller_grad_clip_equals_clipping_dh_by_hand_on_one_step(monkeypatch):
    """T = 1, one layer: the clipped backward is lstm_step_backward(clip(dh, -c, c), 0) of the plain
    LSTM step on chi_0 = [x_0; r_{-1}] (to rounding: the DNC splits eq. (1) into x_t's hoisted share
    and the rest), and the maps after the controller (interface, output, read_out) keep their exact
    gradients."""
    seen = _recording_lstm_backward(monkeypatch)
    model, cache, dys = _clip_setup(layers=1, T=1)
    grads = model.backward(dys, cache)
    (dh,) = seen
    c = 0.5 * np.max(np.abs(dh))
    model.controller_grad_clip = c
    grads_clipped = model.backward(dys, cache)
    np.testing.assert_array_equal(seen[1], np.clip(dh, -c, c))
    state0 = cache.state0
    chi = np.concatenate([cache.xs[0], state0.r.reshape(2, -1)], axis=1)
    (h, _), plain = lstm_step_forward(chi, state0.h[0], state0.c[0],
                                      {name: model.params[f"controller.layer0.{name}"] for name in ("W_x", "W_h", "b")})
    np.testing.assert_allclose(cache.final_state.h[0], h, rtol=1e-13, atol=1e-15)
    _, _, _, expected = lstm_step_backward(np.clip(dh, -c, c), np.zeros_like(dh), plain)
    for name, value in expected.items():
        np.testing.assert_allclose(grads_clipped[f"controller.layer0.{name}"], value, rtol=1e-12, atol=1e-14,
                                   err_msg=name)
    assert not np.allclose(grads_clipped["controller.layer0.W_x"], grads["controller.layer0.W_x"], rtol=1e-6)
    for name in ("interface.W", "interface.b", "output.W", "output.b", "read_out.W"):
        np.testing.assert_array_equal(grads_clipped[name], grads[name])


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf"), True, "10"])
def test_bad_controller_grad_clip_raises_value_error(value):
    with pytest.raises(ValueError, match=r"controller_grad_clip must be None \(off\) or a positive finite number"):
        DNC(DNCConfig(X=3, Y=2), controller_grad_clip=value)
    model, cache, dys = _clip_setup(layers=1, T=2)
    with pytest.raises(ValueError, match=r"controller_grad_clip"):
        dnc_module.dnc_backward(dys, cache, controller_grad_clip=value)


# ----------------------------------------------------------------- invariants (spec B.9)
def _assert_in_delta(name, w):
    assert np.all(w >= -TOL) and np.all(w <= 1 + TOL), name
    assert np.all(np.sum(w, axis=-1) <= 1 + TOL), name


def _assert_invariants(cache):
    eps = cache.config.eps_a
    N = cache.final_state.M.shape[1]
    for step, state in zip(cache.steps, cache.states):
        access = step.access
        assert np.all(state.u >= 0) and np.all(state.u <= 1)
        assert np.all(access.psi >= 0) and np.all(access.psi <= 1)
        for name, w in (("a", access.a), ("w_w", state.w_w), ("p", state.p), ("w_r", state.w_r)):
            _assert_in_delta(name, w)
        uh = eps + (1 - eps) * state.u
        np.testing.assert_allclose(np.sum(access.a, -1), 1 - np.prod(uh, -1), rtol=0, atol=TOL)
        unique = np.sort(state.u, -1)[:, 1] - np.sort(state.u, -1)[:, 0] > 1e-9
        assert np.array_equal(np.argmax(access.a, -1)[unique], np.argmin(state.u, -1)[unique])
        L = state.L
        assert np.all(L >= 0) and np.all(L <= 1)
        assert np.all(L[:, np.arange(N), np.arange(N)] == 0.0)
        assert np.all(L.sum(-1) <= 1 + TOL) and np.all(L.sum(-2) <= 1 + TOL)
        pi = step.interface.parsed.pi
        np.testing.assert_allclose(pi.sum(-1), 1.0, rtol=0, atol=TOL)


def _saturating_model(seed, config, scale):
    rng = np.random.default_rng(seed)
    model = DNC(config, rng)
    model.params["interface.W"] *= scale                       # push gates towards 0 and 1
    model.params["interface.b"] = scale * rng.standard_normal(config.I)
    return model, rng


@pytest.mark.parametrize("scale", [1.0, 8.0])
def test_invariants_hold_at_every_step(scale):
    config = DNCConfig(X=5, Y=4, N=7, W=4, R=3, H=12, layers=2)
    model, rng = _saturating_model(3, config, scale)
    xs = 2.0 * rng.standard_normal((15, 4, 5))
    _, cache = model.forward(xs)
    _assert_invariants(cache)
    _, cache = model.forward(xs, random_state(rng, config, 4))
    _assert_invariants(cache)


@pytest.mark.parametrize("N_other", [3, 24])
def test_memory_size_independence(N_other):
    """Extended Data Fig. 2 property: the same parameters run with N' != N slots."""
    config = DNCConfig(X=5, Y=4, N=8, W=4, R=2, H=12)
    model, rng = _saturating_model(4, config, 3.0)
    xs = rng.standard_normal((10, 3, 5))
    ys, cache = model.forward(xs, model.initial_state(3, N=N_other))
    assert ys.shape == (10, 3, 4) and np.all(np.isfinite(ys))
    assert cache.final_state.M.shape == (3, N_other, 4)
    _assert_invariants(cache)


def test_first_step_from_zero_state_allocates_in_slot_order():
    """B.9: with all usages 0 the allocation is (1 - eps_a, (1 - eps_a) eps_a, ...) in slot order
    (stable sort), and the record holds the free lists and the w^w_{t-1} each usage update saw."""
    config = DNCConfig(X=3, Y=2, N=5, W=4, R=2, H=8)
    model = DNC(config, np.random.default_rng(12))
    xs = np.random.default_rng(13).standard_normal((3, 2, 3))
    _, cache = model.forward(xs)
    eps = config.eps_a
    expected = (1 - eps) * eps ** np.arange(5)
    np.testing.assert_allclose(cache.steps[0].access.a, np.broadcast_to(expected, (2, 5)), rtol=1e-15, atol=0)
    np.testing.assert_array_equal(cache.record.phi[0], np.broadcast_to(np.arange(5), (2, 5)))
    np.testing.assert_array_equal(cache.record.usage_w_w[0], 0.0)
    np.testing.assert_array_equal(cache.record.usage_w_w[1:], np.stack([s.w_w for s in cache.states[:-1]]))


def test_closed_write_gate_leaves_memory_links_and_precedence_unchanged():
    """B.9: with g^w = 0, M, L and p are unchanged bit for bit; usage changes only through psi."""
    config = DNCConfig(X=3, Y=2, N=6, W=4, R=2, H=8)
    rng = np.random.default_rng(5)
    model = DNC(config, rng)
    g_w = interface_layout(config.R, config.W)["g_hat_w"]
    model.params["interface.W"][:, g_w] = 0.0
    model.params["interface.b"][g_w] = -1000.0                  # sigmoid(-1000) == 0.0 exactly
    state0 = random_state(rng, config, 2)
    _, cache = model.forward(rng.standard_normal((3, 2, 3)), state0)
    for t, (step, state) in enumerate(zip(cache.steps, cache.states)):
        assert np.all(state.w_w == 0.0)
        np.testing.assert_array_equal(state.M, state0.M)
        np.testing.assert_array_equal(state.L, state0.L)
        np.testing.assert_array_equal(state.p, state0.p)
        previous = state0 if t == 0 else cache.states[t - 1]
        w_w_prev = previous.w_w
        np.testing.assert_allclose(state.u, (previous.u + w_w_prev - previous.u * w_w_prev) * step.access.psi,
                                   rtol=0, atol=0)


# ----------------------------------------------------------------- sequences, batches, dtypes
def test_batch_elements_are_independent():
    config = DNCConfig(X=4, Y=3, N=6, W=4, R=2, H=8, layers=2)
    rng = np.random.default_rng(8)
    model = DNC(config, rng)
    xs = rng.standard_normal((7, 3, 4))
    state0 = random_state(rng, config, 3)
    ys, cache = model.forward(xs, state0)
    xs2 = xs.copy()
    xs2[:, 1] += rng.standard_normal((7, 4))
    state2 = state0._replace(M=state0.M.copy())
    state2.M[1] += 1.0
    ys2, cache2 = model.forward(xs2, state2)
    np.testing.assert_array_equal(ys2[:, [0, 2]], ys[:, [0, 2]])
    assert np.max(np.abs(ys2[:, 1] - ys[:, 1])) > 1e-3
    dys = rng.standard_normal(ys.shape)
    dys[:, 1] = 0.0                                              # the loss ignores element 1
    g, g2 = model.backward(dys, cache), model.backward(dys, cache2)
    for name in g:
        np.testing.assert_allclose(g2[name], g[name], rtol=1e-13, atol=1e-15, err_msg=name)


def test_whole_sequence_equals_two_halves_with_carried_state():
    """E.1: T steps at once == T/2 then T/2 from the final state, exactly; BPTT chained through
    backward_with_state equals the whole-sequence gradients."""
    config = DNCConfig(X=4, Y=3, N=6, W=4, R=2, H=8, layers=2)
    rng = np.random.default_rng(9)
    model = DNC(config, rng)
    xs = rng.standard_normal((8, 2, 4))
    ys, cache = model.forward(xs)
    ys_a, cache_a = model.forward(xs[:4])
    ys_b, cache_b = model.forward(xs[4:], cache_a.final_state)
    np.testing.assert_array_equal(np.concatenate([ys_a, ys_b]), ys)
    for whole, chunked in zip(cache.final_state, cache_b.final_state):
        np.testing.assert_array_equal(whole, chunked)
    np.testing.assert_array_equal(np.concatenate([cache_a.record.phi, cache_b.record.phi]), cache.record.phi)
    dys = rng.standard_normal(ys.shape)
    grads, dstate0 = model.backward_with_state(dys, cache)
    grads_b, dstate_mid = model.backward_with_state(dys[4:], cache_b)
    grads_a, dstate0_a = model.backward_with_state(dys[:4], cache_a, dstate_mid)
    for name in grads:
        np.testing.assert_allclose(grads_a[name] + grads_b[name], grads[name], rtol=1e-11, atol=1e-13)
    for whole, chunked in zip(dstate0, dstate0_a):
        np.testing.assert_allclose(chunked, whole, rtol=1e-11, atol=1e-13)


def test_replaying_the_record_reproduces_the_forward_exactly():
    case = CASES["dnc.zero_state"]
    model = case.model.model
    ys, cache = model.forward(case.inputs)
    ys_replayed, cache_replayed = model.forward(case.inputs, frozen=cache.record)
    np.testing.assert_array_equal(ys_replayed, ys)
    np.testing.assert_array_equal(cache_replayed.record.phi, cache.record.phi)


def test_float32_forward_matches_float64():
    """E.1: float32 vs float64 forward to 1e-4 relative. Over 8 steps the usages of an untrained
    model drift together (gaps < 1e-4), where float32 rounding may reorder the free list, so the
    float32 pass replays the float64 pass's free lists (the same index sets)."""
    config64 = DNCConfig(X=4, Y=3, N=8, W=5, R=2, H=10, layers=2)
    config32 = DNCConfig(X=4, Y=3, N=8, W=5, R=2, H=10, layers=2, dtype="float32")
    rng = np.random.default_rng(10)
    model64, model32 = DNC(config64, rng), DNC(config32)
    model32.params = {k: v.astype(np.float32) for k, v in model64.params.items()}
    xs = rng.standard_normal((8, 2, 4))
    state0 = random_state(rng, config64, 2)
    ys64, cache64 = model64.forward(xs, state0)
    ys32, cache32 = model32.forward(xs, DNCState(*(a.astype(np.float32) for a in state0)), cache64.record)
    assert ys32.dtype == np.float32 and cache32.final_state.M.dtype == np.float32
    assert np.max(np.abs(ys32 - ys64)) <= 1e-4 * np.max(np.abs(ys64))
    ys32_sorted, _ = model32.forward(xs[:3], DNCState(*(a.astype(np.float32) for a in state0)))
    assert np.max(np.abs(ys32_sorted - ys64[:3])) <= 1e-4 * np.max(np.abs(ys64))


# ----------------------------------------------------------------- the interface vector
def test_interface_layout_follows_spec_b3_step4():
    R, W, B = 2, 3, 1
    I = interface_size(R, W)
    assert I == W * R + 3 * W + 5 * R + 3
    xi = np.arange(I, dtype=float)[None] / 100.0
    iface, _ = interface_forward(xi, R, W)
    rw = R * W
    np.testing.assert_array_equal(iface.k_r[0], xi[0, :rw].reshape(R, W))
    np.testing.assert_array_equal(iface.k_w[0, 0], xi[0, rw + R:rw + R + W])
    np.testing.assert_array_equal(iface.nu[0, 0], xi[0, rw + R + 2 * W + 1:rw + R + 3 * W + 1])
    np.testing.assert_allclose(iface.beta_w[0, 0, 0], 1 + np.log1p(np.exp(xi[0, rw + R + W])))
    np.testing.assert_allclose(iface.g_w[0, 0], 1 / (1 + np.exp(-xi[0, rw + 2 * R + 3 * W + 2])))
    pi_hat = xi[0, rw + 2 * R + 3 * W + 3:].reshape(R, 3)
    np.testing.assert_allclose(iface.pi[0], np.exp(pi_hat) / np.exp(pi_hat).sum(-1, keepdims=True))
    layout = interface_layout(R, W)
    assert list(layout) == ["k_r", "beta_hat_r", "k_w", "beta_hat_w", "e_hat", "nu", "f_hat", "g_hat_a",
                            "g_hat_w", "pi_hat"]
    assert layout["pi_hat"].stop == I
    softplus_iface, _ = interface_forward(xi, R, W, strengths="softplus")
    np.testing.assert_allclose(softplus_iface.beta_r, iface.beta_r - 1.0)


@pytest.mark.parametrize("strengths", ["oneplus", "softplus"])
def test_interface_backward_matches_central_differences_and_autodiff(strengths):
    R, W, B = 2, 3, 2
    rng = np.random.default_rng(11)
    xi = 2.0 * rng.standard_normal((B, interface_size(R, W)))
    iface, cache = interface_forward(xi, R, W, strengths)
    dout = Interface(*(rng.standard_normal(f.shape) for f in iface))
    dxi = interface_backward(dout, cache)
    numeric = numeric_vjp(lambda x: tuple(interface_forward(x, R, W, strengths)[0]), (xi,), tuple(dout))
    assert_grads_close((dxi,), numeric, names=("xi",))
    txi = ad.Tensor(xi.copy(), requires_grad=True)
    total = sum((f * d).sum() for f, d in zip(interface_autodiff(txi, R, W, strengths), dout))
    total.backward()
    np.testing.assert_allclose(txi.grad, dxi, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_value_errors_naming_the_shape():
    config = DNCConfig(X=3, Y=2, N=5, W=4, R=2, H=6)
    model = DNC(config)
    good = np.zeros((4, 2, 3))
    with pytest.raises(ValueError, match=r"\(T, B, X\)"):
        model.forward(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"X=3"):
        model.forward(np.zeros((4, 2, 5)))
    with pytest.raises(ValueError, match=r"T >= 1"):
        model.forward(np.zeros((0, 2, 3)))
    with pytest.raises(ValueError, match=r"finite"):
        model.forward(np.full((4, 2, 3), np.nan))
    with pytest.raises(ValueError, match=r"state.L must have shape \(B, N, N\)"):
        model.forward(good, model.initial_state(2)._replace(L=np.zeros((2, 5, 4))))
    with pytest.raises(ValueError, match=r"state.h must have shape \(layers, B, H\)"):
        model.forward(good, model.initial_state(2)._replace(h=np.zeros((2, 2, 6))))
    _, cache = model.forward(good)
    with pytest.raises(ValueError, match=r"frozen.phi .*\(T, B, N\)"):
        model.forward(good[:2], frozen=cache.record)
    with pytest.raises(ValueError, match=r"dys must have the outputs' shape \(T, B, Y\)"):
        model.backward(np.zeros((4, 2, 3)), cache)
    deepmind = DNC(DNCConfig(X=3, Y=2, N=5, W=4, R=2, H=6, usage_write_grad=False))
    with pytest.raises(ValueError, match=r"frozen.usage_w_w"):
        deepmind.forward(good, frozen=DNCRecord(cache.record.phi, None))
    model.params["read_out.W"] = np.zeros((8, 3))
    with pytest.raises(ValueError, match=r"read_out.W must have shape \(8, 2\)"):
        model.forward(good)


@pytest.mark.parametrize("field, value", [("N", 0), ("R", 1.5), ("layers", 0), ("strengths", "tanh"),
                                          ("eps_a", 1.0), ("clip", -1.0), ("dtype", "int64"),
                                          ("usage_write_grad", "paper")])
def test_bad_config_raises_value_error(field, value):
    kwargs = dict(X=3, Y=2)
    kwargs[field] = value
    with pytest.raises(ValueError, match=f"DNCConfig.{field}"):
        DNCConfig(**kwargs)


def test_param_names_and_layouts():
    config = DNCConfig(X=7, Y=6, N=16, W=8, R=2, H=64, layers=2)
    shapes = param_shapes(config)
    assert list(shapes) == ["controller.layer0.W_x", "controller.layer0.W_h", "controller.layer0.b",
                            "controller.layer1.W_x", "controller.layer1.W_h", "controller.layer1.b",
                            "interface.W", "interface.b", "output.W", "output.b", "read_out.W"]
    assert shapes["controller.layer0.W_x"] == (7 + 16, 256)
    assert shapes["controller.layer1.W_x"] == (7 + 16 + 64, 256)
    assert shapes["interface.W"] == (128, 8 * 2 + 3 * 8 + 5 * 2 + 3)
    model = DNC(config)
    assert {k: v.shape for k, v in model.params.items()} == shapes
