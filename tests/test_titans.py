"""Tests for the Titans neural long-term memory (minimem.memory.titans and its titans_* modules):
the LMM oracles of specs/titans_mnm.md A9 (items 1-13, 15, 16), both engines against central
differences and each other, the planted first-order-only gradient (pitfall P1), and bad inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcheck.cases.titans import titans_lmm_cases, titans_model_cases
from gradcheck.core import assert_grads_close, check_model, manual_gradients, numeric_vjp
from minimem import autodiff as ad
from minimem.memory.titans import (
    LMMState, TitansLMM, TitansLMMConfig, lmm_layer_autodiff, lmm_layer_backward, lmm_layer_forward,
)
from minimem.memory.titans_arch import TitansConfig, TitansModel
from minimem.memory.titans_blocks import mac_window_mask, sliding_window_mask
from minimem.memory.titans_features import (
    causal_conv_backward, causal_conv_forward, lmm_features_backward, lmm_features_forward,
    lmm_output_backward, lmm_output_forward,
)
from minimem.memory.titans_lmm import (
    chunk_matrices, decay_products, linear_dual_chunk_read, lmm_chunk_forward, lmm_reference_backward,
    lmm_reference_forward, lmm_scan_autodiff, lmm_scan_backward, lmm_scan_forward,
)
from minimem.memory.titans_memory import (
    mem_inner_grad_adjoint, mem_inner_grad_autodiff, mem_inner_grad_forward, mem_read_backward,
    mem_read_forward,
)
from minimem.nn.linear import strip_prefix


# ----------------------------------------------------------------- helpers
def memory(rng, B, H, widths, scale=0.5):
    """Random weights (W_1, ..., W_L), W_l (B, H, n_{l-1}, n_l)."""
    return tuple(scale * rng.standard_normal((B, H, widths[l], widths[l + 1])) for l in range(len(widths) - 1))


def unit_rows(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def scan_inputs(seed=0, T=7, B=2, H=2, d=3, h=4, L=2, S_scale=0.1):
    """(M0, S0, q, k, v, alpha, eta, theta) with generic gates and unit queries and keys (as the
    layer's l2 normalisation makes them; unnormalised keys with large steps blow up, pitfall P5)."""
    rng = np.random.default_rng(seed)
    widths = (d,) + (h,) * (L - 1) + (d,)
    M0 = memory(rng, B, H, widths)
    S0 = memory(rng, B, H, widths, scale=S_scale)
    q, k, v = (rng.standard_normal((T, B, H, d)) for _ in range(3))
    q, k = unit_rows(q), unit_rows(k)
    alpha = rng.uniform(0.05, 0.5, (T, B, H))
    eta = rng.uniform(0.1, 0.9, (T, B, H))
    theta = rng.uniform(0.05, 0.4, (T, B, H))
    return M0, S0, q, k, v, alpha, eta, theta


def flatten(grads):
    """((dq, dk, dv), (dalpha, deta, dtheta), (dM0, dS0)) as one flat list."""
    (dq, dk, dv), gates, (dM0, dS0) = grads
    return [dq, dk, dv, *gates, *dM0, *dS0]


def assert_engines_agree(a, b, rtol=1e-10, what=""):
    """|a - b| <= rtol max(|a|, |b|) + 1e-12 max(1, max|a|) entrywise."""
    a, b = np.asarray(a), np.asarray(b)
    floor = 1e-12 * max(1.0, float(np.max(np.abs(a), initial=0.0)))
    bad = np.abs(a - b) > rtol * np.maximum(np.abs(a), np.abs(b)) + floor
    assert not np.any(bad), f"{what}: differ at {np.argwhere(bad)[:3].tolist()}, max |diff| {np.max(np.abs(a - b)):.3g}"


def layer_config(**overrides):
    base = dict(D=4, H=2, d=2, h=3, K_c=3, theta_max=0.5)
    return TitansLMMConfig(**{**base, **overrides})


def generic_model(config, seed=0):
    """A TitansLMM whose gates vary from token to token (the gate weights start at 0)."""
    rng = np.random.default_rng(seed)
    model = TitansLMM(config, rng=rng)
    for key in ("w_alpha", "w_eta", "w_theta"):
        model.params[f"lmm.{key}"] = 0.5 * rng.standard_normal(model.params[f"lmm.{key}"].shape)
    return model


# ----------------------------------------------------------------- A9 item 1, 6, 15: forms agree
@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("read_after_write", [True, False])
def test_chunk_1_equals_the_sequential_definition_outputs_and_gradients(L, read_after_write):
    args = scan_inputs(seed=L, L=L)
    y, (M, S), cache = lmm_scan_forward(*args, chunk=1, read_after_write=read_after_write)
    y_ref, (M_ref, S_ref), ref_cache = lmm_reference_forward(*args, chunk=1, read_after_write=read_after_write)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-12)
    for a, b in zip(M + S, M_ref + S_ref):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    rng = np.random.default_rng(9)
    dy = rng.standard_normal(y.shape)
    dstate = (tuple(rng.standard_normal(W.shape) for W in M), tuple(rng.standard_normal(W.shape) for W in S))
    for a, b in zip(flatten(lmm_scan_backward(dy, cache, dstate)), flatten(lmm_reference_backward(dy, ref_cache, dstate))):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(T=st.integers(1, 9), chunk=st.integers(1, 10), L=st.integers(1, 3), B=st.integers(1, 2),
       H=st.integers(1, 2), read_after_write=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_matrix_form_equals_the_token_loop_for_any_chunk(T, chunk, L, B, H, read_after_write, seed):
    """A9 items 6 and 15: (A17)-(A18) equal the token loop, also with a last partial chunk."""
    args = scan_inputs(seed=seed, T=T, B=B, H=H, L=L)
    y, (M, S), cache = lmm_scan_forward(*args, chunk=chunk, read_after_write=read_after_write)
    y_ref, (M_ref, S_ref), ref_cache = lmm_reference_forward(*args, chunk=chunk, read_after_write=read_after_write)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-12)
    for a, b in zip(M + S, M_ref + S_ref):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    dy = np.random.default_rng(seed + 1).standard_normal(y.shape)
    for a, b in zip(flatten(lmm_scan_backward(dy, cache)), flatten(lmm_reference_backward(dy, ref_cache))):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_chunk_size_above_1_is_a_different_model():
    """A9 item 2 / pitfall P2: b > 1 changes the outputs of an MLP memory with random gates."""
    args = scan_inputs(seed=3, T=7, L=2)
    y1 = lmm_scan_forward(*args, chunk=1)[0]
    for chunk in (2, 3, 7):
        assert np.max(np.abs(lmm_scan_forward(*args, chunk=chunk)[0] - y1)) > 1e-6


def test_eta_zero_gives_kmat_beta_ratio_and_the_dual_form_equals_per_token_reads():
    """A9 item 6: eta = 0 -> Kmat[t, i] = beta_t / beta_i; (A19) equals reading per-token weights."""
    rng = np.random.default_rng(4)
    n, B, H, d = 5, 2, 2, 3
    alpha = rng.uniform(0.05, 0.5, (n, B, H))
    beta, m, Kmat, LE = chunk_matrices(alpha, np.zeros((n, B, H)))
    expected = np.tril(beta[..., :, None] / beta[..., None, :])
    np.testing.assert_allclose(Kmat, expected, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(m, 0.0)
    np.testing.assert_array_equal(LE, np.broadcast_to(np.eye(n), LE.shape))
    M_s, S_s = memory(rng, B, H, (d, d))[0], memory(rng, B, H, (d, d))[0]
    q, k, v = (rng.standard_normal((n, B, H, d)) for _ in range(3))
    eta, theta = rng.uniform(0.1, 0.9, (n, B, H)), rng.uniform(0.05, 0.4, (n, B, H))
    y = lmm_chunk_forward((M_s,), (S_s,), q, k, v, alpha, eta, theta)[0]
    np.testing.assert_allclose(linear_dual_chunk_read(M_s, S_s, q, k, v, alpha, eta, theta), y, rtol=0, atol=1e-12)


def test_decay_products_are_cumulative_products_and_handle_exact_zeros():
    rng = np.random.default_rng(5)
    A = rng.uniform(0.0, 1.0, (1, 2, 6))                          # (B, H, n)
    A[0, 0, 2] = 0.0                                              # an exact zero (alpha = 1 or eta = 0)
    P = decay_products(A)
    for r in range(7):
        for i in range(7):
            expected = np.prod(A[..., i:r], axis=-1) if i <= r else np.zeros((1, 2))
            np.testing.assert_allclose(P[..., r, i], expected, rtol=1e-13, atol=0)
    long = decay_products(np.full((1, 1, 400), 0.01))            # products down to 1e-800: no NaN or inf
    assert np.all(np.isfinite(long)) and long[0, 0, -1, 0] == 0.0


# ----------------------------------------------------------------- A9 items 3, 4, 5, 7, 8, 12
def test_no_momentum_no_forgetting_is_plain_online_sgd():
    """A9 item 3: eta = alpha = 0 -> M_t = M_{t-1} - theta_t grad l(M_{t-1})."""
    M0, S0, q, k, v, _, _, theta = scan_inputs(seed=6, T=6, L=2)
    zeros = np.zeros_like(theta)
    y, (M_T, _), _ = lmm_scan_forward(M0, S0, q, k, v, zeros, zeros, theta, chunk=1)
    M = M0
    for t in range(6):
        u = mem_inner_grad_forward(M, k[t], v[t])[0]
        M = tuple(W - theta[t, ..., None, None] * g for W, g in zip(M, u))
        np.testing.assert_allclose(y[t], mem_read_forward(M, q[t])[0], rtol=0, atol=1e-12)
    for a, b in zip(M_T, M):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_linear_memory_is_the_gated_delta_rule_with_rate_2_theta():
    """A9 item 4: M_t = (1 - alpha_t) M_{t-1} + 2 theta_t k_t^T (v_t - k_t M_{t-1}), written out here."""
    M0, S0, q, k, v, alpha, _, theta = scan_inputs(seed=7, T=6, L=1)
    S0 = (np.zeros_like(S0[0]),)
    y, _, _ = lmm_scan_forward(M0, S0, q, k, v, alpha, np.zeros_like(alpha), theta, chunk=1)
    W = M0[0]
    for t in range(6):
        residual = v[t] - np.einsum("bhi,bhij->bhj", k[t], W)
        W = (1 - alpha[t])[..., None, None] * W + 2 * theta[t][..., None, None] * k[t][..., :, None] * residual[..., None, :]
        np.testing.assert_allclose(y[t], np.einsum("bhi,bhij->bhj", q[t], W), rtol=0, atol=1e-12)


def test_delta_rule_with_unit_keys_and_theta_half_stores_each_pair_exactly():
    """A9 item 4: ||k|| = 1, alpha = eta = 0, theta = 1/2 -> k_t M_t = v_t (reading k_t right after its write)."""
    rng = np.random.default_rng(8)
    T, B, H, d = 6, 2, 1, 4
    k = unit_rows(rng.standard_normal((T, B, H, d)))
    v = rng.standard_normal((T, B, H, d))
    zeros = np.zeros((T, B, H))
    M0 = (rng.standard_normal((B, H, d, d)),)
    y, _, _ = lmm_scan_forward(M0, (np.zeros_like(M0[0]),), k, k, v, zeros, zeros, zeros + 0.5, chunk=1)
    np.testing.assert_allclose(y, v, rtol=0, atol=1e-12)


def test_delta_rule_through_the_layer_with_eps_normalised_keys():
    """A9 item 4 with eps_n = 1e-6 normalisation: ||k_t||^2 = 1 - eps_n / n_t^2 (n_t^2 = ||k~_t||^2 + eps_n),
    so reading k_t right after its write misses v_t by exactly that deficit:
    k_t M_t - v_t = (eps_n / n_t^2) (k_t M_{t-1} - v_t)."""
    config = TitansLMMConfig(D=4, H=1, d=4, L_M=1, K_c=1, theta_max=1.0, conv_init="identity", output_path=False)
    model = TitansLMM(config, rng=np.random.default_rng(0))
    params = strip_prefix("lmm", model.params)
    params["W_q"] = params["W_k"]                                 # read with the keys
    params["b_alpha"][:] = -1e3                                   # alpha = 0
    params["b_eta"][:] = -1e3                                     # eta = 0
    params["b_theta"][:] = 0.0                                    # theta = 1/2 of theta_max = 1
    x = np.random.default_rng(1).standard_normal((5, 2, 4))
    y, _, cache = lmm_layer_forward(x, params, config)
    (q, k, v), _, _, features = lmm_features_forward(x, params, 1, 1.0, config.eps_n)
    _, n = features.norm[1]                                       # (T, B, 1, 1)
    deficit = config.eps_n / n ** 2
    for t in range(5):
        M_prev = cache.scan.starts[t][0][0]                       # b = 1: chunk t starts at M_{t-1}
        before = np.einsum("bhi,bhij->bhj", k[t], M_prev) - v[t]
        np.testing.assert_allclose(y[t].reshape(v[t].shape) - v[t], deficit[t] * before, rtol=1e-6, atol=1e-15)
    assert np.max(np.abs(y.reshape(v.shape) - v)) > 0             # the eps really is there


def test_one_chunk_without_momentum_or_forgetting_is_batch_gradient_descent():
    """A9 item 5: b = T, eta = alpha = 0, S_0 = 0 -> M_T = M_0 - sum_t theta_t grad l(M_0; k_t, v_t)."""
    M0, S0, q, k, v, _, _, theta = scan_inputs(seed=9, T=6, L=2)
    zeros = np.zeros_like(theta)
    S0 = tuple(np.zeros_like(W) for W in S0)
    _, (M_T, _), _ = lmm_scan_forward(M0, S0, q, k, v, zeros, zeros, theta, chunk=6)
    rows = lambda x: np.moveaxis(x, 0, 2)                         # (T, B, H, d) -> (B, H, T, d): T rows sharing M_0
    us = mem_inner_grad_forward(M0, rows(k), rows(v))[0]          # (B, H, T, ., .), all at M_0
    for l in range(2):
        batch_gd = M0[l] - np.einsum("tbh,bhtij->bhij", theta, us[l])
        np.testing.assert_allclose(M_T[l], batch_gd, rtol=0, atol=1e-12)


def test_full_forgetting_and_zero_step():
    """A9 item 7: alpha = 1 -> M_t = S_t; theta = 0 -> M_t = prod(1 - alpha) M_0 and S_t = 0."""
    M0, S0, q, k, v, alpha, eta, theta = scan_inputs(seed=10, T=5, L=2)
    ones = np.ones_like(alpha)
    for chunk in (1, 2, 5):
        _, (M, S), _ = lmm_scan_forward(M0, S0, q, k, v, ones, eta, theta, chunk=chunk)
        for a, b in zip(M, S):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-14)
        zero_S = tuple(np.zeros_like(W) for W in S0)
        _, (M, S), _ = lmm_scan_forward(M0, zero_S, q, k, v, alpha, eta, np.zeros_like(theta), chunk=chunk)
        decay = np.prod(1 - alpha, axis=0)[..., None, None]
        for a, b, s in zip(M, M0, S):
            np.testing.assert_allclose(a, decay * b, rtol=1e-13, atol=0)
            np.testing.assert_array_equal(s, 0.0)


def test_constant_momentum_and_surprise_is_a_geometric_series():
    """A9 item 8: S_t = -theta g (1 - eta^t) / (1 - eta) when every surprise is the same g
    (one chunk, so every u_t is taken at M_0, and the same key and value at every step)."""
    rng = np.random.default_rng(11)
    T, B, H, d = 8, 1, 2, 3
    M0 = memory(rng, B, H, (d, 4, d))
    k = np.broadcast_to(rng.standard_normal((B, H, d)), (T, B, H, d))
    v = np.broadcast_to(rng.standard_normal((B, H, d)), (T, B, H, d))
    eta, theta = 0.7, 0.3
    g = mem_inner_grad_forward(M0, k[0], v[0])[0]
    zero_S = tuple(np.zeros_like(W) for W in M0)
    for t in range(1, T + 1):
        _, (_, S), _ = lmm_scan_forward(M0, zero_S, k[:t], k[:t], v[:t], np.zeros((t, B, H)),
                                        np.full((t, B, H), eta), np.full((t, B, H), theta), chunk=T)
        for s, g_l in zip(S, g):
            np.testing.assert_allclose(s, -theta * g_l * (1 - eta ** t) / (1 - eta), rtol=1e-12, atol=1e-15)


def test_feature_mean_loss_with_theta_equals_the_sum_loss_with_theta_over_d():
    """A9 item 12: one inner step on mean_j (M(k)_j - v_j)^2 (central differences) with step theta
    equals the sum-loss step with theta / d."""
    rng = np.random.default_rng(12)
    B, H, d = 1, 1, 3
    M0 = memory(rng, B, H, (d, 4, d))
    k, v = rng.standard_normal((1, B, H, d)), rng.standard_normal((1, B, H, d))
    theta = 0.4
    mean_loss = lambda *W: np.mean((mem_read_forward(W, k[0])[0] - v[0]) ** 2)
    mean_grad = numeric_vjp(mean_loss, M0, np.array(1.0))
    zero = np.zeros((1, B, H))
    _, (M, _), _ = lmm_scan_forward(M0, tuple(np.zeros_like(W) for W in M0), k, k, v, zero, zero,
                                    np.full((1, B, H), theta / d))
    for a, W, g in zip(M, M0, mean_grad):
        np.testing.assert_allclose(a, W - theta * g, rtol=1e-7, atol=1e-9)


# ----------------------------------------------------------------- A9 items 9, 10, 11, 16
def test_reading_never_changes_the_state_and_nothing_is_mutated():
    """A9 item 9."""
    args = scan_inputs(seed=13, T=5, L=2)
    copies = [tuple(W.copy() for W in x) if isinstance(x, tuple) else x.copy() for x in args]
    y1, state1, _ = lmm_scan_forward(*args, chunk=2)
    y2, state2, _ = lmm_scan_forward(*args, chunk=2)
    np.testing.assert_array_equal(y1, y2)
    for a, b in zip(state1[0] + state1[1], state2[0] + state2[1]):
        np.testing.assert_array_equal(a, b)
    for x, c in zip(args, copies):
        for a, b in zip(x if isinstance(x, tuple) else (x,), c if isinstance(c, tuple) else (c,)):
            np.testing.assert_array_equal(a, b)
    M = args[0]
    before = tuple(W.copy() for W in M)
    mem_read_forward(M, args[2][0])
    mem_read_forward(M, args[2][0])
    for a, b in zip(M, before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("chunk", [1, 3])
def test_causality_future_inputs_do_not_change_past_outputs(chunk):
    """A9 item 10 for the LMM layer (any b, read after write)."""
    model = generic_model(layer_config(chunk=chunk))
    x = np.random.default_rng(14).standard_normal((8, 2, 4))
    y = model.forward(x)[0]
    for t in (0, 3, 6):
        x2 = x.copy()
        x2[t + 1:] += np.random.default_rng(t).standard_normal(x2[t + 1:].shape)
        y2 = model.forward(x2)[0]
        np.testing.assert_array_equal(y2[:t + 1], y[:t + 1])
        assert np.max(np.abs(y2[t + 1:] - y[t + 1:])) > 1e-6


def test_batch_rows_are_independent():
    """A9 item 11."""
    model = generic_model(layer_config(chunk=2))
    x = np.random.default_rng(15).standard_normal((6, 3, 4))
    y = model.forward(x)[0]
    x2 = x.copy()
    x2[:, 1] = 5.0
    y2 = model.forward(x2)[0]
    np.testing.assert_allclose(y2[:, [0, 2]], y[:, [0, 2]], rtol=0, atol=1e-14)
    np.testing.assert_allclose(model.forward(x[:, 2:3])[0][:, 0], y[:, 2], rtol=0, atol=1e-13)


@pytest.mark.parametrize("chunk, split", [(1, 3), (1, 5), (2, 4), (3, 3)])
def test_streaming_two_calls_equal_one_call_outputs_and_gradients(chunk, split):
    """A9 item 16: carried (M, S, conv buffers) make two calls one; the state's gradient links them."""
    config = layer_config(chunk=chunk)
    model = generic_model(config, seed=1)
    params = strip_prefix("lmm", model.params)
    rng = np.random.default_rng(16)
    x = rng.standard_normal((7, 2, 4))
    dout = rng.standard_normal((7, 2, 4))
    y, _, cache = lmm_layer_forward(x, params, config)
    y1, state1, cache1 = lmm_layer_forward(x[:split], params, config)
    y2, _, cache2 = lmm_layer_forward(x[split:], params, config, state1)
    np.testing.assert_allclose(np.concatenate([y1, y2]), y, rtol=0, atol=1e-12)
    dx, grads, _ = lmm_layer_backward(dout, cache)
    dx2, grads2, dstate = lmm_layer_backward(dout[split:], cache2)
    dx1, grads1, _ = lmm_layer_backward(dout[:split], cache1, dstate)
    np.testing.assert_allclose(np.concatenate([dx1, dx2]), dx, rtol=0, atol=1e-12)
    for name in grads:
        np.testing.assert_allclose(grads1[name] + grads2[name], grads[name], rtol=0, atol=1e-12, err_msg=name)


def test_model_streaming_state_and_initial_state():
    model = generic_model(layer_config(chunk=1, N_p=2))
    x = np.random.default_rng(17).standard_normal((6, 2, 4))
    y, cache = model.forward(x)
    y1, c1 = model.forward(x[:2])
    y2, _ = model.forward(x[2:], state=c1.state)                  # no persistent prefix when continuing
    np.testing.assert_allclose(np.concatenate([y1, y2]), y, rtol=0, atol=1e-12)
    no_prefix = TitansLMM(layer_config(chunk=1), rng=np.random.default_rng(0))
    no_prefix.params = {k: v for k, v in model.params.items() if k != "persist.P"}
    np.testing.assert_allclose(no_prefix.forward(x, state=no_prefix.initial_state(2))[0], no_prefix.forward(x)[0],
                               rtol=0, atol=1e-14)


# ----------------------------------------------------------------- A9 item 13: gradients
@pytest.mark.parametrize("L, phi", [(1, "silu"), (2, "silu"), (3, "tanh")])
def test_inner_gradient_and_its_adjoint_match_central_differences(L, phi):
    rng = np.random.default_rng(18)
    widths = (3,) + (4,) * (L - 1) + (3,)
    Ws = memory(rng, 2, 1, widths)                                # (B, H, ., .)
    k, v = rng.standard_normal((2, 1, 3, 3)), rng.standard_normal((2, 1, 3, 3))   # 3 tokens sharing Ws
    us, loss, cache = mem_inner_grad_forward(Ws, k, v, phi)
    numeric = numeric_vjp(lambda *W: mem_inner_grad_forward(W, k, v, phi)[1], Ws, np.ones(loss.shape))
    assert_grads_close([u.sum(axis=2) for u in us], numeric, names=[f"u{l}" for l in range(L)])
    G = tuple(rng.standard_normal(u.shape) for u in us)
    analytic = mem_inner_grad_adjoint(G, cache)
    numeric = numeric_vjp(lambda *a: mem_inner_grad_forward(a[:L], a[L], a[L + 1], phi)[0], [*Ws, k, v], G)
    assert_grads_close([*analytic[0], analytic[1], analytic[2]], numeric,
                       names=[f"W{l + 1}" for l in range(L)] + ["k", "v"])
    tW = [ad.Tensor(W, requires_grad=True) for W in Ws]
    tk, tv = ad.Tensor(k, requires_grad=True), ad.Tensor(v, requires_grad=True)
    tus = mem_inner_grad_autodiff(tW, tk, tv, phi)
    for t, u in zip(tus, us):
        assert_engines_agree(t.data, u, what="u")
    total = sum((t * g).sum() for t, g in zip(tus, G))
    for a, b in zip(ad.grad(total, tW + [tk, tv]), [*analytic[0], analytic[1], analytic[2]]):
        assert_engines_agree(a, b, what="ADJ")


def test_read_backward_matches_central_differences():
    rng = np.random.default_rng(19)
    Ws = memory(rng, 2, 2, (3, 4, 3))
    q = rng.standard_normal((2, 2, 3))
    dy = rng.standard_normal((2, 2, 3))
    dq, dWs = mem_read_backward(dy, mem_read_forward(Ws, q)[1])
    numeric = numeric_vjp(lambda *a: mem_read_forward(a[:2], a[2])[0], [*Ws, q], dy)
    assert_grads_close([*dWs, dq], numeric, names=["W1", "W2", "q"])


@pytest.mark.parametrize("chunk, read_after_write", [(1, True), (3, False), (4, True)])
def test_scan_gradients_of_every_input_match_central_differences_and_autodiff(chunk, read_after_write):
    args = scan_inputs(seed=20 + chunk, T=6, B=1, H=2, d=2, h=3, L=2)
    y, (M, S), cache = lmm_scan_forward(*args, chunk=chunk, read_after_write=read_after_write)
    rng = np.random.default_rng(21)
    dy = rng.standard_normal(y.shape)
    dM, dS = tuple(rng.standard_normal(W.shape) for W in M), tuple(rng.standard_normal(W.shape) for W in S)
    analytic = flatten(lmm_scan_backward(dy, cache, (dM, dS)))
    M0, S0, *rest = args
    inputs = [*rest, *M0, *S0]

    def f(q, k, v, alpha, eta, theta, *states):
        y, (M, S), _ = lmm_scan_forward(states[:2], states[2:], q, k, v, alpha, eta, theta, chunk=chunk,
                                        read_after_write=read_after_write)
        return (y, *M, *S)

    numeric = numeric_vjp(f, inputs, (dy, *dM, *dS))
    names = ["q", "k", "v", "alpha", "eta", "theta", "M0.W1", "M0.W2", "S0.W1", "S0.W2"]
    assert_grads_close(analytic, numeric, names=names, atol=1e-7)
    tensors = [ad.Tensor(x, requires_grad=True) for x in inputs]
    ty, (tM, tS) = lmm_scan_autodiff(tuple(tensors[6:8]), tuple(tensors[8:]), *tensors[:6], chunk=chunk,
                                     read_after_write=read_after_write)
    assert_engines_agree(ty.data, y, what="y")
    total = (ty * dy).sum() + sum((a * b).sum() for a, b in zip(tM + tS, dM + dS))
    for name, a, b in zip(names, ad.grad(total, tensors), analytic):
        assert_engines_agree(a, b, what=name)


def test_registered_cases_pass_full_gradcheck_with_both_engines():
    """Every parameter coordinate of every titans case against central differences, and the
    manual and autodiff engines against each other to 1e-10 (check_model's agreement rows)."""
    cases = titans_lmm_cases()
    assert {c.name for c in cases} == {"titans.lmm.sequential", "titans.lmm.chunked", "titans.lmm.linear",
                                       "titans.lmm.deep_tanh"}
    for case in cases:
        rows, ok = check_model(case, mode="full")
        assert ok, [r for r in rows if not r.ok]
        assert any(r.engine == "manual~autodiff" and r.tensor == "lmm.W_k" for r in rows)


def test_planted_first_order_only_gradient_is_caught_and_zeroes_the_key_projection():
    """A9 item 13 / pitfall P1: dropping the second-order terms makes dL/dW_k (and W_v, conv_k,
    conv_v) exactly zero, and the checker fails on them."""
    for case in titans_lmm_cases()[:2]:
        case.model.second_order = False
        _, _, grads = manual_gradients(case)
        for name in ("lmm.W_k", "lmm.W_v", "lmm.conv_k", "lmm.conv_v"):
            assert np.all(grads[name] == 0.0), name
        rows, ok = check_model(case, mode="full", engines=("manual",), tensors=["lmm.W_k", "lmm.W_q"])
        verdict = {r.tensor: r.verdict for r in rows}
        assert not ok and verdict["lmm.W_k"] == "FAIL"
        case.model.second_order = True
        assert check_model(case, mode="full", engines=("manual",), tensors=["lmm.W_k"]).ok


def test_layer_input_and_state_gradients_match_central_differences_and_autodiff():
    config = layer_config(chunk=2, K_c=2)
    model = generic_model(config, seed=2)
    params = strip_prefix("lmm", model.params)
    rng = np.random.default_rng(22)
    x0 = rng.standard_normal((3, 2, 4))
    _, state, _ = lmm_layer_forward(x0, params, config)           # a generic mid-sequence state
    x = rng.standard_normal((5, 2, 4))
    out, state_out, cache = lmm_layer_forward(x, params, config, state)
    dout = rng.standard_normal(out.shape)
    dstate = LMMState(*(tuple(rng.standard_normal(a.shape) for a in part) for part in state_out))
    dx, grads, dstate0 = lmm_layer_backward(dout, cache, dstate)
    flat_state = [*state.M, *state.S, *state.conv]

    def f(x, *flat):
        s = LMMState(tuple(flat[:2]), tuple(flat[2:4]), tuple(flat[4:]))
        o, so, _ = lmm_layer_forward(x, params, config, s)
        return (o, *so.M, *so.S, *so.conv)

    douts = (dout, *dstate.M, *dstate.S, *dstate.conv)
    numeric = numeric_vjp(f, [x, *flat_state], douts)
    analytic = [dx, *dstate0.M, *dstate0.S, *dstate0.conv]
    names = ["x", "M.W1", "M.W2", "S.W1", "S.W2", "conv_q", "conv_k", "conv_v"]
    assert_grads_close(analytic, numeric, names=names, atol=1e-7)
    tx = ad.Tensor(x, requires_grad=True)
    tstate = [ad.Tensor(a, requires_grad=True) for a in flat_state]
    tparams = {k: ad.Tensor(v, requires_grad=True) for k, v in params.items()}
    tout, tso = lmm_layer_autodiff(tx, tparams, config,
                                   LMMState(tuple(tstate[:2]), tuple(tstate[2:4]), tuple(tstate[4:])))
    assert_engines_agree(tout.data, out, what="out")
    total = (tout * dout).sum() + sum((a * b).sum() for a, b in zip([*tso.M, *tso.S, *tso.conv], douts[1:]))
    found = ad.grad(total, [tx, *tstate, *tparams.values()])
    for name, a, b in zip(names + list(params), found, analytic + [grads[k] for k in params]):
        assert_engines_agree(a, b, what=name)


def test_feature_and_output_primitives_match_central_differences():
    config = layer_config(K_c=3)
    params = strip_prefix("lmm", generic_model(config, seed=3).params)
    rng = np.random.default_rng(23)
    x = rng.standard_normal((4, 2, 4))
    buffers = tuple(rng.standard_normal((2, 2, 4)) for _ in range(3))
    (q, k, v), gates, new_buffers, cache = lmm_features_forward(x, params, 2, 0.5, 1e-6, buffers)
    douts = [rng.standard_normal(a.shape) for a in (q, k, v, *gates, *new_buffers)]
    dx, grads, dbuffers = lmm_features_backward(tuple(douts[:3]), tuple(douts[3:6]), cache, tuple(douts[6:]))

    def f(x, *b):
        (q, k, v), g, nb, _ = lmm_features_forward(x, params, 2, 0.5, 1e-6, b)
        return (q, k, v, *g, *nb)

    assert_grads_close([dx, *dbuffers], numeric_vjp(f, [x, *buffers], tuple(douts)), names=["x", "bq", "bk", "bv"])
    y = rng.standard_normal((4, 2, 2, 2))
    o, ocache = lmm_output_forward(y, x, params)
    do = rng.standard_normal(o.shape)
    dy, dx, _ = lmm_output_backward(do, ocache)
    assert_grads_close([dy, dx], numeric_vjp(lambda y, x: lmm_output_forward(y, x, params)[0], [y, x], do),
                       names=["y", "x"])
    z = rng.standard_normal((5, 1, 3))
    out, buffer, ccache = causal_conv_forward(z, params["conv_q"][:3], None)
    joined = causal_conv_forward(z[2:], params["conv_q"][:3], causal_conv_forward(z[:2], params["conv_q"][:3])[1])[0]
    np.testing.assert_allclose(joined, out[2:], rtol=0, atol=1e-15)
    dconv = rng.standard_normal(out.shape)
    dz, dw, _ = causal_conv_backward(dconv, ccache)
    numeric = numeric_vjp(lambda z, w: causal_conv_forward(z, w)[0], [z, params["conv_q"][:3]], dconv)
    assert_grads_close([dz, dw], numeric, names=["z", "w"])


# ----------------------------------------------------------------- stability (pitfall P5)
@pytest.mark.parametrize("L_M, chunk", [(2, 16), (2, 1), (1, 8)])
def test_long_sequences_stay_finite_at_the_default_bounds(L_M, chunk):
    T = 2048 if chunk > 1 else 512
    config = TitansLMMConfig(D=8, H=2, L_M=L_M, chunk=chunk)
    model = TitansLMM(config, rng=np.random.default_rng(24))
    rng = np.random.default_rng(25)
    for key in ("w_alpha", "w_eta", "w_theta"):                   # gates swing over their whole range
        model.params[f"lmm.{key}"] = 2.0 * rng.standard_normal(model.params[f"lmm.{key}"].shape)
    x = 3.0 * rng.standard_normal((T, 2, 8))
    y, cache = model.forward(x)
    assert np.all(np.isfinite(y))
    assert np.all(np.isfinite(cache.state.M[0])) and np.max(np.abs(cache.state.M[0])) < 1e3
    grads = model.backward(rng.standard_normal(y.shape), cache)
    assert all(np.all(np.isfinite(g)) for g in grads.values())


# ----------------------------------------------------------------- bad input
def test_invalid_inputs_raise_value_error_naming_the_shape():
    args = list(scan_inputs(seed=26, T=5, L=2))
    with pytest.raises(ValueError, match="chunk size b"):
        lmm_scan_forward(*args, chunk=0)
    with pytest.raises(ValueError, match="chunk size b"):
        lmm_scan_forward(*args, chunk=1.5)
    bad = list(args)
    bad[3] = args[3][:4]                                          # k with T = 4 against q with T = 5
    with pytest.raises(ValueError, match=r"k must have the shape of q \(T, B, H, d\)"):
        lmm_scan_forward(*bad)
    bad = list(args)
    bad[5] = args[5][:, :1]
    with pytest.raises(ValueError, match=r"alpha must have shape \(T, B, H\)"):
        lmm_scan_forward(*bad)
    bad = list(args)
    bad[6] = args[6] + 1.0
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\]"):
        lmm_scan_forward(*bad)
    bad = list(args)
    bad[0] = (args[0][0], args[0][1][..., :2])
    with pytest.raises(ValueError, match="memory must map width d"):
        lmm_scan_forward(*bad)
    with pytest.raises(ValueError, match="phi"):
        lmm_scan_forward(*args, phi="gelu")
    model = TitansLMM(layer_config())
    for x in (np.zeros((5, 2, 3)), np.zeros((5, 4)), np.zeros((0, 2, 4)), np.full((5, 2, 4), np.nan)):
        with pytest.raises(ValueError, match="inputs must"):
            model.forward(x)
    state = model.initial_state(2)
    with pytest.raises(ValueError, match=r"state.M\[0\] must have shape \(B, H"):
        model.forward(np.zeros((5, 3, 4)), state=state)
    model.params["lmm.W_q"] = np.zeros((4, 5))
    with pytest.raises(ValueError, match=r"lmm.W_q must have shape \(4, 4\)"):
        model.forward(np.zeros((5, 2, 4)))
    for bad_config in (dict(chunk=0), dict(D=5, H=2), dict(phi="relu"), dict(theta_max=0.0), dict(L_M=0),
                       dict(conv_init="zeros"), dict(N_p=-1)):
        with pytest.raises(ValueError):
            TitansLMMConfig(**{"D": 4, **bad_config})


def test_float32_parameters_and_inputs_stay_float32():
    model = TitansLMM(layer_config(chunk=2), rng=np.random.default_rng(0), dtype=np.float32)
    x = np.random.default_rng(1).standard_normal((5, 2, 4)).astype(np.float32)
    y, cache = model.forward(x)
    grads = model.backward(np.ones_like(y), cache)
    assert y.dtype == np.float32 and all(g.dtype == np.float32 for g in grads.values())
    reference = generic_model(layer_config(chunk=2))
    reference.params = {k: v.astype(np.float64) for k, v in model.params.items()}
    np.testing.assert_allclose(y, reference.forward(x.astype(np.float64))[0], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------- the architectures (MAC, MAG, MAL)
def arch_model(variant, seed=0, **overrides):
    """A small TitansModel with generic gates and attention biases."""
    memory = TitansLMMConfig(**{**dict(D=4, H=1, d=2, h=3, K_c=2, chunk=2, theta_max=0.5), **overrides.pop("memory", {})})
    config = TitansConfig(**{**dict(variant=variant, X=3, Y=2, D=4, layers=1, memory=memory, N_p=2, window=2,
                                    segment=3, attn_heads=2, F=3), **overrides})
    rng = np.random.default_rng(seed)
    model = TitansModel(config, rng=rng)
    for key, value in model.params.items():
        if key.endswith(("w_alpha", "w_eta", "w_theta", "b_q", "b_k", "b_v", "b_o", "persist.P")):
            model.params[key] = 0.5 * rng.standard_normal(value.shape)
    return model


@pytest.mark.parametrize("name", ["mal", "mag", "mac", "lmm_blocks"])
def test_architecture_cases_pass_full_gradcheck_with_both_engines(name):
    case = {c.name: c for c in titans_model_cases()}[f"titans.{name}"]
    rows, ok = check_model(case, mode="full")
    assert ok, [r for r in rows if not r.ok]


@pytest.mark.parametrize("variant, layers", [("lmm", 2), ("mal", 1), ("mag", 2), ("mac", 2)])
def test_architectures_are_causal(variant, layers):
    """A9 item 10: perturbing x_{t+1..T} leaves outputs 1..t unchanged (MAC with the A3.8 mask)."""
    model = arch_model(variant, layers=layers)
    x = np.random.default_rng(30).standard_normal((8, 2, 3))
    y = model.forward(x)[0]
    for t in (0, 2, 4, 6):
        x2 = x.copy()
        x2[t + 1:] += 1.0
        y2 = model.forward(x2)[0]
        np.testing.assert_allclose(y2[:t + 1], y[:t + 1], rtol=0, atol=1e-14, err_msg=f"t={t}")
        assert np.max(np.abs(y2[t + 1:] - y[t + 1:])) > 1e-6


def test_the_literal_plain_causal_mac_mask_leaks_the_segment_future():
    """A9 item 10, the documented failure: with a plain causal mask over [P || h || S], segment
    token j sees the memory tokens h_j' of later tokens j' > j of its segment."""
    model = arch_model("mac", plain_causal_mac=True, segment=4)
    x = np.random.default_rng(31).standard_normal((8, 2, 3))
    y = model.forward(x)[0]
    x2 = x.copy()
    x2[2:] += 1.0                                                  # the future of token 1, inside segment 0
    assert np.max(np.abs(model.forward(x2)[0][:2] - y[:2])) > 1e-6


def test_masks():
    causal = np.tril(np.ones((6, 6), dtype=bool))
    np.testing.assert_array_equal(sliding_window_mask(6, 6, 2), causal)          # w >= T: full causal attention
    window = sliding_window_mask(6, 2, 2)
    np.testing.assert_array_equal(window[5], [True, True, False, False, True, True])
    np.testing.assert_array_equal(window[2], [True, True, True, False, False, False])
    mac = mac_window_mask(1, 3)                                    # [P, h1, h2, h3, x1, x2, x3]
    np.testing.assert_array_equal(mac[4], [1, 1, 0, 0, 1, 0, 0])   # x1: P, h1, x1
    np.testing.assert_array_equal(mac[6], [1, 1, 1, 1, 1, 1, 1])   # x3: everything up to itself
    assert mac_window_mask(1, 3, plain_causal=True)[4, 2]          # the leak: x1 sees h2


def test_large_window_and_segment_are_one_window():
    """A9 item 14: MAG with w >= T + N_p is full causal attention with the prefix; MAC with C >= T is one window."""
    x = np.random.default_rng(32).standard_normal((6, 2, 3))
    mag = arch_model("mag", window=8)
    y = mag.forward(x)[0]
    mag.config = TitansConfig(**{**mag.config.__dict__, "window": 100})
    np.testing.assert_array_equal(mag.forward(x)[0], y)
    mac = arch_model("mac", segment=6)
    y = mac.forward(x)[0]
    mac.config = TitansConfig(**{**mac.config.__dict__, "segment": 50})
    np.testing.assert_array_equal(mac.forward(x)[0], y)
    mac.config = TitansConfig(**{**mac.config.__dict__, "segment": 2})
    assert np.max(np.abs(mac.forward(x)[0] - y)) > 1e-6


def test_architecture_bad_inputs_and_configs():
    model = arch_model("mag")
    for x in (np.zeros((5, 2, 4)), np.zeros((5, 3)), np.zeros((0, 2, 3))):
        with pytest.raises(ValueError, match="inputs must"):
            model.forward(x)
    for bad in (dict(variant="mat"), dict(window=0), dict(D=5), dict(memory=TitansLMMConfig(D=8)),
                dict(memory=TitansLMMConfig(D=4, output_path=False)), dict(N_p=-1)):
        with pytest.raises(ValueError):
            TitansConfig(**{**dict(D=4, attn_heads=2), **bad})
