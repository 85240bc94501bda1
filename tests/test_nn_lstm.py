"""minimem.nn.lstm: the step and BPTT pairs against central differences (every input and parameter),
planted carried-gradient bugs, the documented gate layout, the autodiff twin and bad input; the
feedback steps (input [x_t; u_t], weight gradients after the loop) against central differences
and the per-step API."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gradcheck.core import assert_grads_close, numeric_vjp
from minimem import autodiff as ad
from minimem.nn.lstm import (
    LSTMModel, lstm_autodiff, lstm_backward, lstm_external_share, lstm_feedback_params, lstm_feedback_step_backward,
    lstm_feedback_step_forward, lstm_feedback_weight_gradients, lstm_forward, lstm_init, lstm_step_backward,
    lstm_step_forward, lstm_step_autodiff,
)

PARAMS = ("W_x", "W_h", "b")


def random_params(rng, X, H):
    return {"W_x": 0.6 * rng.standard_normal((X, 4 * H)), "W_h": 0.6 * rng.standard_normal((H, 4 * H)),
            "b": 0.3 * rng.standard_normal(4 * H)}


def sequence(rng, T, B, X, H):
    xs = rng.standard_normal((T, B, X))
    h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    return xs, h0, c0, random_params(rng, X, H)


def lstm_numeric(xs, h0, c0, params, dhs):
    """Central differences of sum(dhs * hs) w.r.t. xs, h0, c0 and every parameter."""
    def f(xs, h0, c0, W_x, W_h, b):
        return lstm_forward(xs, h0, c0, {"W_x": W_x, "W_h": W_h, "b": b})[0]
    return numeric_vjp(f, (xs, h0, c0, params["W_x"], params["W_h"], params["b"]), dhs)


@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 3), X=st.integers(1, 3), H=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_step_backward_matches_central_differences(B, X, H, seed):
    rng = np.random.default_rng(seed)
    xs, h_prev, c_prev, params = sequence(rng, 1, B, X, H)
    x = xs[0]
    dh, dc = rng.standard_normal((B, H)), rng.standard_normal((B, H))   # upstream for both outputs
    _, cache = lstm_step_forward(x, h_prev, c_prev, params)
    dx, dh_prev, dc_prev, grads = lstm_step_backward(dh, dc, cache)

    def f(x, h_prev, c_prev, W_x, W_h, b):
        return lstm_step_forward(x, h_prev, c_prev, {"W_x": W_x, "W_h": W_h, "b": b})[0]

    numeric = numeric_vjp(f, (x, h_prev, c_prev) + tuple(params[n] for n in PARAMS), (dh, dc))
    assert_grads_close((dx, dh_prev, dc_prev) + tuple(grads[n] for n in PARAMS), numeric,
                       names=("x", "h_prev", "c_prev") + PARAMS)


@settings(max_examples=15, deadline=None)
@given(T=st.integers(1, 5), B=st.integers(1, 2), X=st.integers(1, 3), H=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_bptt_matches_central_differences(T, B, X, H, seed):
    rng = np.random.default_rng(seed)
    xs, h0, c0, params = sequence(rng, T, B, X, H)
    dhs = rng.standard_normal((T, B, H))                        # per-step loss gradients only
    _, cache = lstm_forward(xs, h0, c0, params)
    dxs, dh0, dc0, grads = lstm_backward(dhs, cache)
    assert list(grads) == list(PARAMS)
    assert_grads_close((dxs, dh0, dc0) + tuple(grads[n] for n in PARAMS), lstm_numeric(xs, h0, c0, params, dhs),
                       names=("xs", "h0", "c0") + PARAMS)


def backward_dropping(carried: str):
    """A planted bug: BPTT that forgets one carried gradient between steps."""
    def backward(dhs, cache):
        T, B, H = dhs.shape
        grads = {name: np.zeros_like(p) for name, p in cache.params.items()}
        dxs = np.empty_like(cache.xs)
        dh_carry, dc_carry = np.zeros((B, H)), np.zeros((B, H))
        for t in reversed(range(T)):
            dxs[t], dh_carry, dc_carry, step = lstm_step_backward(dhs[t] + dh_carry, dc_carry, cache.steps[t])
            if carried == "dc":
                dc_carry = np.zeros_like(dc_carry)
            else:
                dh_carry = np.zeros_like(dh_carry)
            for name, d in step.items():
                grads[name] += d
        return dxs, dh_carry, dc_carry, grads
    return backward


@pytest.mark.parametrize("carried", ["dc", "dh"])
def test_planted_bug_dropping_a_carried_gradient_is_caught(carried):
    rng = np.random.default_rng(7)
    xs, h0, c0, params = sequence(rng, 4, 2, 3, 3)
    dhs = rng.standard_normal((4, 2, 3))
    _, cache = lstm_forward(xs, h0, c0, params)
    numeric = lstm_numeric(xs, h0, c0, params, dhs)
    dxs, dh0, dc0, grads = backward_dropping(carried)(dhs, cache)
    with pytest.raises(AssertionError, match="^xs: gradients differ"):
        assert_grads_close((dxs, dh0, dc0) + tuple(grads[n] for n in PARAMS), numeric,
                           names=("xs", "h0", "c0") + PARAMS)
    with pytest.raises(AssertionError, match="^W_x: gradients differ"):   # parameters see it too
        assert_grads_close((grads["W_x"],), numeric[3:4], names=("W_x",))


def test_final_step_of_a_dropped_carry_is_still_right():
    """The planted bug only changes steps before the last: the checker is not failing by accident."""
    rng = np.random.default_rng(8)
    xs, h0, c0, params = sequence(rng, 3, 2, 2, 2)
    dhs = rng.standard_normal((3, 2, 2))
    _, cache = lstm_forward(xs, h0, c0, params)
    right = lstm_backward(dhs, cache)[0]
    wrong = backward_dropping("dc")(dhs, cache)[0]
    np.testing.assert_allclose(wrong[-1], right[-1], rtol=0, atol=1e-15)
    assert np.max(np.abs(wrong[0] - right[0])) > 1e-3


def test_gate_layout_is_i_f_g_o():
    """With zero weights the gates are sigmoid/tanh of the documented bias blocks."""
    H = 2
    b = np.concatenate([np.full(H, 0.3), np.full(H, -0.7), np.full(H, 1.1), np.full(H, 2.0)])  # i, f, g, o
    params = {"W_x": np.zeros((1, 4 * H)), "W_h": np.zeros((H, 4 * H)), "b": b}
    c_prev = np.array([[0.5, -2.0]])
    (h, c), _ = lstm_step_forward(np.zeros((1, 1)), np.zeros((1, H)), c_prev, params)
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))
    c_expected = sig(-0.7) * c_prev + sig(0.3) * np.tanh(1.1)
    np.testing.assert_allclose(c, c_expected, rtol=1e-14)
    np.testing.assert_allclose(h, sig(2.0) * np.tanh(c_expected), rtol=1e-14)


def test_init_sets_forget_bias_block_only():
    params = lstm_init(np.random.default_rng(0), X=3, H=4, forget_bias=1.5)
    b = params["b"]
    np.testing.assert_array_equal(b[4:8], 1.5)
    assert not np.any(b[:4]) and not np.any(b[8:])
    assert params["W_x"].shape == (3, 16) and params["W_h"].shape == (4, 16)
    for k in range(4):                                          # each recurrent gate block is orthogonal
        block = params["W_h"][:, 4 * k:4 * (k + 1)]
        np.testing.assert_allclose(block.T @ block, np.eye(4), atol=1e-12)
    assert not np.any(lstm_init(np.random.default_rng(0), 3, 4, forget_bias=0.0)["b"])


def test_autodiff_twin_agrees_with_manual():
    rng = np.random.default_rng(9)
    xs, h0, c0, params = sequence(rng, 4, 2, 3, 3)
    dhs = rng.standard_normal((4, 2, 3))
    hs, cache = lstm_forward(xs, h0, c0, params)
    manual = lstm_backward(dhs, cache)
    tx, th, tc = (ad.Tensor(a.copy(), requires_grad=True) for a in (xs, h0, c0))
    tparams = {n: ad.Tensor(p.copy(), requires_grad=True) for n, p in params.items()}
    out = lstm_autodiff(tx, th, tc, tparams)
    np.testing.assert_allclose(out.data, hs, rtol=0, atol=1e-12)
    out.backward(dhs)
    for t, g in zip((tx, th, tc), manual[:3]):
        np.testing.assert_allclose(t.grad, g, rtol=0, atol=1e-10)
    for name in PARAMS:
        np.testing.assert_allclose(tparams[name].grad, manual[3][name], rtol=0, atol=1e-10)


def test_step_twin_returns_the_cell_state_too():
    rng = np.random.default_rng(10)
    xs, h0, c0, params = sequence(rng, 1, 2, 2, 3)
    (h, c), _ = lstm_step_forward(xs[0], h0, c0, params)
    th, tc = lstm_step_autodiff(xs[0], h0, c0, {n: ad.Tensor(p) for n, p in params.items()})
    np.testing.assert_allclose(th.data, h, atol=1e-14)
    np.testing.assert_allclose(tc.data, c, atol=1e-14)


def test_zero_initial_state_and_final_cell_state():
    rng = np.random.default_rng(11)
    xs, _, _, params = sequence(rng, 3, 2, 2, 2)
    hs, cache = lstm_forward(xs, None, None, params)
    hs0, cache0 = lstm_forward(xs, np.zeros((2, 2)), np.zeros((2, 2)), params)
    np.testing.assert_array_equal(hs, hs0)
    (h, c), _ = lstm_step_forward(xs[2], hs[1], cache.steps[1].c, params)
    np.testing.assert_array_equal(c, cache.c_last)


def test_model_float32_runs_and_stays_float32():
    rng = np.random.default_rng(12)
    model = LSTMModel(X=3, H=4, Y=2, rng=rng, dtype=np.float32)
    xs = rng.standard_normal((5, 2, 3)).astype(np.float32)
    ys, cache = model.forward(xs)
    assert ys.dtype == np.float32 and ys.shape == (5, 2, 2)
    grads = model.backward(np.ones_like(ys), cache)
    assert list(grads) == list(model.params)
    assert all(g.dtype == np.float32 for g in grads.values())
    assert list(model.params) == ["lstm.W_x", "lstm.W_h", "lstm.b", "readout.W", "readout.b"]


def test_bad_input_raises_value_error_naming_the_shape():
    params = lstm_init(np.random.default_rng(0), X=3, H=2)
    with pytest.raises(ValueError, match=r"\(T, B, X\) with T >= 1 and X=3"):
        lstm_forward(np.zeros((4, 3)), None, None, params)
    with pytest.raises(ValueError, match="X=3"):
        lstm_forward(np.zeros((4, 1, 2)), None, None, params)
    with pytest.raises(ValueError, match="T >= 1"):
        lstm_forward(np.zeros((0, 1, 3)), None, None, params)
    with pytest.raises(ValueError, match=r"h0 must have shape \(B, H\) = \(1, 2\)"):
        lstm_forward(np.zeros((2, 1, 3)), np.zeros((1, 3)), None, params)
    with pytest.raises(ValueError, match=r"W_x must have shape \(X, 4H\)"):
        lstm_forward(np.zeros((2, 1, 3)), None, None, {**params, "W_x": np.zeros((3, 7))})
    with pytest.raises(ValueError, match=r"W_h must have shape \(2, 8\)"):
        lstm_forward(np.zeros((2, 1, 3)), None, None, {**params, "W_h": np.zeros((3, 8))})
    _, cache = lstm_forward(np.zeros((2, 1, 3)), None, None, params)
    with pytest.raises(ValueError, match=r"dhs must have the shape of hs"):
        lstm_backward(np.zeros((2, 1, 3)), cache)
    model = LSTMModel(3, 2, 1)
    with pytest.raises(ValueError, match="inputs must be finite"):
        model.forward(np.full((2, 1, 3), np.nan))
    model.params["lstm.b"] = np.full(8, np.nan)
    with pytest.raises(ValueError, match="parameter lstm.b must be finite"):
        model.forward(np.zeros((2, 1, 3)))


# ----------------------------------------------------------------- feedback steps (SAM, NTM, DNC controllers)
def feedback_forward(xs, h0, c0, u0, params, A, X):
    """A T-step loop whose input is [x_t; u_t] with u_1 = u0 and u_{t+1} = tanh(h_t @ A) (B, U): the
    shape of a memory controller's recurrence (u = the read words). Returns hs (T, B, H) and what
    feedback_backward needs."""
    split = lstm_feedback_params(params, X)
    z_ext = lstm_external_share(xs, split)
    h, c, u, hs, us, caches = h0, c0, u0, [], [], []
    for t in range(xs.shape[0]):
        (h, c), cache = lstm_feedback_step_forward(z_ext[t], u, h, c, split)
        hs.append(h), us.append(u), caches.append(cache)
        u = np.tanh(h @ A)
    return np.stack(hs), (split, caches, us)


def feedback_backward(dhs, xs, A, saved):
    """BPTT through feedback_forward: (dxs-free) gradients w.r.t. h0, c0, u0 and the parameters."""
    split, caches, us = saved
    T, B, H = dhs.shape
    dZ = np.empty((T, B, 4 * H))
    dh, dc, du = np.zeros((B, H)), np.zeros((B, H)), np.zeros_like(us[0])
    for t in reversed(range(T)):
        if t + 1 < T:                                             # u_{t+1} = tanh(h_t @ A)
            dh = dh + (du * (1.0 - us[t + 1] ** 2)) @ A.T
        du, dh, dc, dZ[t] = lstm_feedback_step_backward(dhs[t] + dh, dc, caches[t], split)
    return dh, dc, du, lstm_feedback_weight_gradients(xs if split.X else None, caches, dZ, split)


def feedback_problem(rng, T, B, X, U, H):
    xs, h0, c0, params = sequence(rng, T, B, X + U, H)
    return xs[:, :, :X], h0, c0, rng.standard_normal((B, U)), params, 0.8 * rng.standard_normal((H, U))


@settings(max_examples=15, deadline=None)
@given(T=st.integers(1, 4), B=st.integers(1, 2), X=st.integers(0, 3), U=st.integers(0, 3), H=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_feedback_steps_match_central_differences(T, B, X, U, H, seed):
    rng = np.random.default_rng(seed)
    xs, h0, c0, u0, params, A = feedback_problem(rng, T, B, X, U, H)
    dhs = rng.standard_normal((T, B, H))
    hs, saved = feedback_forward(xs, h0, c0, u0, params, A, X)
    dh0, dc0, du0, grads = feedback_backward(dhs, xs, A, saved)
    assert list(grads) == list(PARAMS) and all(grads[n].shape == params[n].shape for n in PARAMS)

    def f(h0, c0, u0, W_x, W_h, b):
        return feedback_forward(xs, h0, c0, u0, {"W_x": W_x, "W_h": W_h, "b": b}, A, X)[0]

    numeric = numeric_vjp(f, (h0, c0, u0) + tuple(params[n] for n in PARAMS), dhs)
    assert_grads_close((dh0, dc0, du0) + tuple(grads[n] for n in PARAMS), numeric,
                       names=("h0", "c0", "u0") + PARAMS)


@pytest.mark.parametrize("X", [0, 2, 5])
def test_feedback_steps_equal_the_per_step_api(X):
    """The same numbers as lstm_step_forward / lstm_step_backward on chi_t = [x_t; u_t] with the
    per-step weight gradients summed: hoisting changes only the order of additions."""
    rng = np.random.default_rng(11)
    T, B, U, H = 6, 4, 5 - X, 7
    xs, h0, c0, u0, params, A = feedback_problem(rng, T, B, X, U, H)
    dhs = rng.standard_normal((T, B, H))
    hs, saved = feedback_forward(xs, h0, c0, u0, params, A, X)
    dh0, dc0, du0, grads = feedback_backward(dhs, xs, A, saved)
    _, _, us = saved
    h, c, steps = h0, c0, []
    for t in range(T):
        (h, c), cache = lstm_step_forward(np.concatenate([xs[t], us[t]], axis=1), h, c, params)
        np.testing.assert_allclose(h, hs[t], rtol=1e-13, atol=1e-14)
        steps.append(cache)
    total = {n: np.zeros_like(params[n]) for n in PARAMS}
    dh, dc, du = np.zeros((B, H)), np.zeros((B, H)), np.zeros((B, U))
    for t in reversed(range(T)):
        if t + 1 < T:
            dh = dh + (du * (1.0 - us[t + 1] ** 2)) @ A.T
        dchi, dh, dc, step_grads = lstm_step_backward(dhs[t] + dh, dc, steps[t])
        du = dchi[:, X:]
        for n in PARAMS:
            total[n] += step_grads[n]
    for got, want in zip((dh0, dc0, du0), (dh, dc, du)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)
    for n in PARAMS:
        np.testing.assert_allclose(grads[n], total[n], rtol=1e-12, atol=1e-13)


def test_feedback_bad_input_raises_value_error():
    params = lstm_init(np.random.default_rng(0), X=5, H=2)
    with pytest.raises(ValueError, match=r"X \(the external input width\) must be in \[0, 5\]"):
        lstm_feedback_params(params, 6)
    with pytest.raises(ValueError, match=r"X \(the external input width\) must be in \[0, 5\]"):
        lstm_feedback_params(params, -1)
    split = lstm_feedback_params(params, 3)
    assert (split.X, split.U) == (3, 2)
    with pytest.raises(ValueError, match=r"xs must have shape \(T, B, X\) with X=3"):
        lstm_external_share(np.zeros((2, 1, 5)), split)
    with pytest.raises(ValueError, match=r"W_h must have shape \(2, 8\)"):
        lstm_feedback_params({**params, "W_h": np.zeros((3, 8))}, 3)
