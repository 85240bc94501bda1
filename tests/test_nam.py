"""Tests for minimem.memory.nam, the NAM primitive (specs/nam_hma.md A1).

Every pair: backward == central differences for every array input (hypothesis-chosen leading axes,
size-1 axes, both normalize modes), autodiff twin == manual forward and backward to 1e-10, custom op
== manual pair; then the invariants of A1.9 and the interference law of A1.5, planted wrong
backwards that the checker must catch, and bad inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gradcheck.core import assert_grads_close, numeric_vjp
from minimem import autodiff as ad
from minimem.memory.nam import (
    EPS, NAMWriteCache,
    nam_read_autodiff, nam_read_backward, nam_read_forward, nam_read_op,
    nam_write_autodiff, nam_write_backward, nam_write_forward, nam_write_op,
    unit_autodiff, unit_backward, unit_forward, unit_op,
)

FAST = settings(max_examples=25, deadline=None, database=None)

leads = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)   # (), (B,), (B, H)
widths = st.integers(1, 5)
seeds = st.integers(0, 2**32 - 1)


# ----------------------------------------------------------------- input makers
def vectors(rng, shape, min_norm=0.5):
    """Gaussian vectors over the last axis with norm >= min_norm (far from the 1e-12 floor)."""
    x = rng.standard_normal(shape)
    norm = np.sqrt(np.sum(x * x, axis=-1, keepdims=True))
    return x * np.maximum(1.0, min_norm / np.maximum(norm, 1e-300))


def write_inputs(rng, lead, d_v, d_k):
    M = rng.standard_normal(lead + (d_v, d_k))
    k = vectors(rng, lead + (d_k,))
    v = rng.standard_normal(lead + (d_v,))
    p_w = rng.uniform(0.05, 0.95, lead)
    p_e = rng.uniform(0.05, 0.95, lead)
    return M, k, v, p_w, p_e


def orthonormal_keys(rng, n, d_k, lead=()):
    """(..., n, d_k) rows orthonormal (n <= d_k), a different set for every leading index."""
    gaussian = rng.standard_normal(lead + (d_k, n))
    q, _ = np.linalg.qr(gaussian)                                    # (..., d_k, n)
    return np.swapaxes(q, -1, -2)


def autodiff_grads(fn, arrays, dout, **kwargs):
    tensors = [ad.Tensor(np.array(a), requires_grad=True) for a in arrays]
    out = fn(*tensors, **kwargs)
    (out * dout).sum().backward()
    return out.data, [t.grad for t in tensors]


# ----------------------------------------------------------------- unit norm, (NAM-0)
@FAST
@given(lead=leads, n=widths, seed=seeds)
def test_unit_backward_matches_central_differences(lead, n, seed):
    rng = np.random.default_rng(seed)
    x = vectors(rng, lead + (n,))
    x_hat, cache = unit_forward(x)
    np.testing.assert_allclose(np.linalg.norm(x_hat, axis=-1), 1.0, rtol=1e-14)
    dout = rng.standard_normal(x_hat.shape)
    analytic = unit_backward(dout, cache)
    assert_grads_close([analytic], numeric_vjp(lambda a: unit_forward(a)[0], [x], dout), names=["x"])


def test_unit_below_the_floor_is_x_over_eps_with_gradient_one_over_eps():
    # eps = 1 puts the floor where central differences can see it: ||x|| = 0.3 < 1.
    rng = np.random.default_rng(0)
    x = 0.3 * orthonormal_keys(rng, 1, 4)[0]                         # (4,), norm 0.3
    x_hat, cache = unit_forward(x, eps=1.0)
    np.testing.assert_allclose(x_hat, x, rtol=1e-15)
    dout = rng.standard_normal(4)
    np.testing.assert_allclose(unit_backward(dout, cache), dout, rtol=1e-15)
    assert_grads_close([unit_backward(dout, cache)],
                       numeric_vjp(lambda a: unit_forward(a, eps=1.0)[0], [x], dout), names=["x"])
    # A zero vector stays zero, with a finite gradient, in both engines.
    zero_hat, zero_cache = unit_forward(np.zeros((2, 3)))
    assert np.all(zero_hat == 0)
    np.testing.assert_allclose(unit_backward(np.ones((2, 3)), zero_cache), 1.0 / EPS)
    _, (dz,) = autodiff_grads(unit_autodiff, [np.zeros((2, 3))], np.ones((2, 3)))
    np.testing.assert_allclose(dz, 1.0 / EPS)


@pytest.mark.parametrize("eps", [EPS, 1.0])
def test_unit_autodiff_and_op_match_the_manual_pair(eps):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 5)) * np.array([1.0, 0.1])[None, :, None]   # some below eps = 1
    dout = rng.standard_normal(x.shape)
    x_hat, cache = unit_forward(x, eps)
    dx = unit_backward(dout, cache)
    for fn in (unit_autodiff, unit_op):
        value, (grad,) = autodiff_grads(fn, [x], dout, eps=eps)
        np.testing.assert_allclose(value, x_hat, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(grad, dx, rtol=1e-10, atol=1e-13)


# ----------------------------------------------------------------- read and write: finite differences
@FAST
@given(lead=leads, d_v=widths, d_k=widths, normalize=st.booleans(), seed=seeds)
def test_read_backward_matches_central_differences(lead, d_v, d_k, normalize, seed):
    rng = np.random.default_rng(seed)
    M, q, _, p_r, _ = write_inputs(rng, lead, d_v, d_k)
    r, cache = nam_read_forward(M, q, p_r, normalize=normalize)
    dr = rng.standard_normal(r.shape)
    analytic = nam_read_backward(dr, cache)
    numeric = numeric_vjp(lambda *a: nam_read_forward(*a, normalize=normalize)[0], (M, q, p_r), dr)
    assert_grads_close(analytic, numeric, names=("M", "q", "p_r"))


@FAST
@given(lead=leads, d_v=widths, d_k=widths, normalize=st.booleans(), seed=seeds)
def test_write_backward_matches_central_differences(lead, d_v, d_k, normalize, seed):
    rng = np.random.default_rng(seed)
    inputs = write_inputs(rng, lead, d_v, d_k)
    M_new, cache = nam_write_forward(*inputs, normalize=normalize)
    dout = rng.standard_normal(M_new.shape)
    analytic = nam_write_backward(dout, cache)
    numeric = numeric_vjp(lambda *a: nam_write_forward(*a, normalize=normalize)[0], inputs, dout)
    assert_grads_close(analytic, numeric, names=("M", "k", "v", "p_w", "p_e"))


def test_write_backward_with_the_same_array_as_both_probabilities():
    """LSAM passes one gate as p_w and p_e: its gradient is dp_w + dp_e (spec A2.4)."""
    rng = np.random.default_rng(2)
    M, k, v, w, _ = write_inputs(rng, (2, 3), 4, 4)
    M_new, cache = nam_write_forward(M, k, v, w, w)
    dout = rng.standard_normal(M_new.shape)
    _, _, _, dp_w, dp_e = nam_write_backward(dout, cache)
    (numeric,) = numeric_vjp(lambda g: nam_write_forward(M, k, v, g, g)[0], [w], dout)
    assert_grads_close([dp_w + dp_e], [numeric], names=["w"])


@pytest.mark.parametrize("normalize", [True, False])
def test_autodiff_twins_and_ops_match_the_manual_pairs(normalize):
    rng = np.random.default_rng(3)
    M, k, v, p_w, p_e = write_inputs(rng, (2, 3), 4, 5)
    M_new, wcache = nam_write_forward(M, k, v, p_w, p_e, normalize=normalize)
    dM_new = rng.standard_normal(M_new.shape)
    manual = nam_write_backward(dM_new, wcache)
    for fn in (nam_write_autodiff, nam_write_op):
        value, grads = autodiff_grads(fn, [M, k, v, p_w, p_e], dM_new, normalize=normalize)
        np.testing.assert_allclose(value, M_new, rtol=1e-12, atol=1e-14)
        for name, a, m in zip(("M", "k", "v", "p_w", "p_e"), grads, manual):
            np.testing.assert_allclose(a, m, rtol=1e-10, atol=1e-13, err_msg=f"{fn.__name__}: {name}")
    r, rcache = nam_read_forward(M, k, p_r := p_w, normalize=normalize)
    dr = rng.standard_normal(r.shape)
    manual = nam_read_backward(dr, rcache)
    for fn in (nam_read_autodiff, nam_read_op):
        value, grads = autodiff_grads(fn, [M, k, p_r], dr, normalize=normalize)
        np.testing.assert_allclose(value, r, rtol=1e-12, atol=1e-14)
        for name, a, m in zip(("M", "q", "p_r"), grads, manual):
            np.testing.assert_allclose(a, m, rtol=1e-10, atol=1e-13, err_msg=f"{fn.__name__}: {name}")


def test_write_autodiff_twin_supports_second_derivatives():
    """The twin is built from Tensor ops, so create_graph=True differentiates its VJP again; the
    Hessian-vector product against central differences of the manual gradient."""
    rng = np.random.default_rng(4)
    M, k, v, p_w, p_e = write_inputs(rng, (2,), 3, 3)
    dout = rng.standard_normal(M.shape)
    tk = ad.Tensor(k, requires_grad=True)
    out = nam_write_autodiff(M, tk, v, p_w, p_e)
    (gk,) = ad.grad((out * dout).sum(), [tk], create_graph=True)
    direction = rng.standard_normal(k.shape)
    (hvp,) = ad.grad((gk * direction).sum(), [tk])

    def grad_k(kk):
        return nam_write_backward(dout, nam_write_forward(M, kk, v, p_w, p_e)[1])[1]

    numeric = (grad_k(k + 1e-6 * direction) - grad_k(k - 1e-6 * direction)) / 2e-6
    assert_grads_close([hvp], [numeric], names=["k (Hessian-vector product)"], rtol=1e-5)


# ----------------------------------------------------------------- invariants, spec A1.9
def RD(M, q, p_r=1.0):
    return nam_read_forward(M, q, np.full(M.shape[:-2], p_r))[0]


def WR(M, k, v, p_w, p_e):
    lead = M.shape[:-2]
    return nam_write_forward(M, k, v, np.broadcast_to(np.asarray(p_w, float), lead).copy(),
                             np.broadcast_to(np.asarray(p_e, float), lead).copy())[0]


@FAST
@given(lead=leads, d_v=widths, d_k=widths, seed=seeds)
def test_overwrite_recalls_the_value_exactly(lead, d_v, d_k, seed):            # A1.9.1
    rng = np.random.default_rng(seed)
    M, k, v, _, _ = write_inputs(rng, lead, d_v, d_k)
    recalled = RD(WR(M, k, v, 1.0, 1.0), k)
    scale = 1.0 + np.max(np.abs(M), initial=0.0) * d_k
    assert np.max(np.linalg.norm(recalled - v, axis=-1), initial=0.0) < 1e-12 * scale


@FAST
@given(lead=leads, d_v=widths, d_k=st.integers(2, 5), seed=seeds)
def test_an_orthogonal_query_is_untouched_by_a_write(lead, d_v, d_k, seed):    # A1.9.2
    rng = np.random.default_rng(seed)
    M, _, v, p_w, p_e = write_inputs(rng, lead, d_v, d_k)
    basis = orthonormal_keys(rng, 2, d_k, lead)                      # (..., 2, d_k)
    k, q = 2.0 * basis[..., 0, :], 0.7 * basis[..., 1, :]
    after = nam_read_forward(WR(M, k, v, p_w, p_e), q, p_w)[0]
    before = nam_read_forward(M, q, p_w)[0]
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-12 * (1 + np.max(np.abs(M), initial=0) * d_k))


@pytest.mark.parametrize("p_e", [1.0, 0.0])
def test_orthonormal_keys_store_and_recall_every_value(p_e):                    # A1.9.3
    rng = np.random.default_rng(5)
    B, H, n, d_k, d_v = 2, 3, 8, 16, 5
    keys = orthonormal_keys(rng, n, d_k, (B, H))                     # (B, H, n, d_k)
    values = rng.standard_normal((B, H, n, d_v))
    M = np.zeros((B, H, d_v, d_k))
    for i in range(n):
        M = WR(M, keys[..., i, :], values[..., i, :], 1.0, p_e)
    for j in range(n):
        np.testing.assert_allclose(RD(M, keys[..., j, :]), values[..., j, :], rtol=0, atol=1e-10)


def test_overwrite_is_idempotent():                                              # A1.9.4
    rng = np.random.default_rng(6)
    M, k, v, _, _ = write_inputs(rng, (2, 3), 4, 5)
    once = WR(M, k, v, 1.0, 1.0)
    np.testing.assert_allclose(WR(once, k, v, 1.0, 1.0), once, rtol=0, atol=1e-12)


@FAST
@given(lead=leads, d_v=widths, d_k=widths, seed=seeds)
def test_erase_probability_one_removes_the_stored_key(lead, d_v, d_k, seed):   # A1.9.5
    rng = np.random.default_rng(seed)
    M, k, v, _, _ = write_inputs(rng, lead, d_v, d_k)
    stored = WR(np.zeros_like(M), k, v, 1.0, 0.0) + M               # something under k, and more
    erased = WR(stored, k, rng.standard_normal(v.shape), 0.0, 1.0)
    k_hat = unit_forward(k)[0]
    residual = np.matmul(erased, k_hat[..., None])[..., 0]
    assert np.max(np.abs(residual), initial=0.0) < 1e-12 * (1 + np.max(np.abs(stored), initial=0) * d_k)


@FAST
@given(lead=leads, d_v=widths, d_k=widths, c=st.floats(1e-3, 1e3), seed=seeds)
def test_keys_and_queries_are_scale_invariant(lead, d_v, d_k, c, seed):         # A1.9.6
    rng = np.random.default_rng(seed)
    M, k, v, p_w, p_e = write_inputs(rng, lead, d_v, d_k)
    np.testing.assert_allclose(WR(M, c * k, v, p_w, p_e), WR(M, k, v, p_w, p_e), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(nam_read_forward(M, c * k, p_w)[0], nam_read_forward(M, k, p_w)[0],
                               rtol=1e-12, atol=1e-12)


@FAST
@given(lead=leads, d_v=widths, d_k=widths, p=st.floats(0.0, 1.0), seed=seeds)
def test_equal_write_and_erase_interpolate_old_and_new(lead, d_v, d_k, p, seed):  # A1.9.7
    rng = np.random.default_rng(seed)
    M, k, v, _, _ = write_inputs(rng, lead, d_v, d_k)
    recalled = RD(WR(M, k, v, p, p), k)
    expected = (1.0 - p) * RD(M, k) + p * v
    np.testing.assert_allclose(recalled, expected, rtol=1e-11, atol=1e-11 * (1 + np.max(np.abs(M), initial=0) * d_k))


def test_general_read_after_write_identity():                                    # A1.3
    rng = np.random.default_rng(7)
    M, k, v, p_w, p_e = write_inputs(rng, (3, 2), 4, 6)
    k_hat = unit_forward(k)[0]
    expected = (1.0 - p_e)[..., None] * RD(M, k) + p_w[..., None] * v
    np.testing.assert_allclose(RD(nam_write_forward(M, k, v, p_w, p_e)[0], k), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(RD(M, k), np.matmul(M, k_hat[..., None])[..., 0], rtol=1e-14)


def test_random_unit_keys_interfere_as_the_spec_predicts():                      # A1.5
    """32 random unit keys with p_e = 0 in a 16-wide memory: the mean cosine between recalled and
    stored unit values is about (1 + (n - 1) / d_k)^(-1/2) (0.58 for n = 32, d_k = 16)."""
    rng = np.random.default_rng(8)
    B, n, d_k, d_v = 400, 32, 16, 16
    keys = vectors(rng, (B, n, d_k))
    values = unit_forward(rng.standard_normal((B, n, d_v)))[0]
    M = np.zeros((B, d_v, d_k))
    for i in range(n):
        M = WR(M, keys[:, i], values[:, i], 1.0, 0.0)
    recalled = np.stack([RD(M, keys[:, j]) for j in range(n)], axis=1)     # (B, n, d_v)
    cosines = np.sum(unit_forward(recalled)[0] * values, axis=-1)
    expected = (1.0 + (n - 1) / d_k) ** -0.5
    assert abs(np.mean(cosines) - expected) < 0.03, (np.mean(cosines), expected)


def test_inputs_are_not_mutated():
    rng = np.random.default_rng(9)
    inputs = write_inputs(rng, (2,), 3, 4)
    copies = [x.copy() for x in inputs]
    M_new, cache = nam_write_forward(*inputs)
    nam_write_backward(np.ones_like(M_new), cache)
    nam_read_backward(np.ones((2, 3)), nam_read_forward(inputs[0], inputs[1], inputs[3])[1])
    for x, y in zip(inputs, copies):
        np.testing.assert_array_equal(x, y)


# ----------------------------------------------------------------- planted wrong backwards
def _planted(cache: NAMWriteCache, which: str):
    """nam_write_backward with one deliberate mistake."""
    def wrong(dM_new, c):
        dM, dk, dv, dp_w, dp_e = nam_write_backward(dM_new, c)
        if which == "drop_MtGk":              # forget the erase term's path through u = M k_hat
            G_k = np.matmul(dM_new, c.k_hat[..., None])[..., 0]
            extra = c.p_e[..., None] * np.matmul(G_k[..., None, :], c.M)[..., 0, :]
            dk = dk + (extra - c.k_hat * np.sum(c.k_hat * extra, -1, keepdims=True)) / c.unit.norm
        elif which == "double_dp_e":
            dp_e = 2.0 * dp_e
        elif which == "transpose_dM":         # square memory, so the shapes still fit
            dM = np.swapaxes(dM, -1, -2)
        elif which == "no_unit_vjp":          # return dk_hat, as if k were already a unit vector
            dk = nam_write_backward(dM_new, c._replace(unit=None))[1]
        return dM, dk, dv, dp_w, dp_e
    return wrong


@pytest.mark.parametrize("which, tensor", [("drop_MtGk", "k"), ("double_dp_e", "p_e"),
                                           ("transpose_dM", "M"), ("no_unit_vjp", "k")])
def test_a_planted_wrong_write_backward_is_caught_and_named(which, tensor):
    rng = np.random.default_rng(10)
    M, k, v, p_w, p_e = write_inputs(rng, (2, 2), 4, 4)
    k = 3.0 * k                                                      # norm != 1, so a missing unit VJP shows
    M_new, cache = nam_write_forward(M, k, v, p_w, p_e)
    dout = rng.standard_normal(M_new.shape)
    numeric = numeric_vjp(lambda *a: nam_write_forward(*a)[0], (M, k, v, p_w, p_e), dout)
    assert_grads_close(nam_write_backward(dout, cache), numeric, names=("M", "k", "v", "p_w", "p_e"))
    with pytest.raises(AssertionError, match=rf"^{tensor}:"):
        assert_grads_close(_planted(cache, which)(dout, cache), numeric, names=("M", "k", "v", "p_w", "p_e"))


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize("change, message", [
    (dict(M=np.zeros(4)), r"M must have shape \(\.\.\., d_v, d_k\)"),
    (dict(k=np.ones((2, 3, 6))), r"k must have shape \(\.\.\., d_k\) = \(2, 3, 5\)"),
    (dict(v=np.ones((2, 3, 5))), r"v must have shape \(\.\.\., d_v\) = \(2, 3, 4\)"),
    (dict(p_w=np.ones((2,))), r"p_w must have shape \(\.\.\.\) = \(2, 3\)"),
    (dict(p_e=np.ones((2, 3, 1))), r"p_e must have shape \(\.\.\.\) = \(2, 3\)"),
    (dict(k=np.ones((2, 3, 5), dtype=complex)), r"k must be a float32 or float64 array"),
])
def test_bad_write_input_raises_value_error(change, message):
    rng = np.random.default_rng(11)
    inputs = dict(zip(("M", "k", "v", "p_w", "p_e"), write_inputs(rng, (2, 3), 4, 5)))
    inputs.update(change)
    with pytest.raises(ValueError, match=message):
        nam_write_forward(**inputs)
    if "float32 or float64" in message:      # Tensors cast their data; only the NumPy pair checks dtypes
        return
    with pytest.raises(ValueError, match=message):
        nam_write_autodiff(**inputs)


def test_bad_read_input_and_bad_upstream_gradients_raise_value_error():
    rng = np.random.default_rng(12)
    M, q, _, p_r, _ = write_inputs(rng, (2, 3), 4, 5)
    with pytest.raises(ValueError, match=r"q must have shape \(\.\.\., d_k\) = \(2, 3, 5\)"):
        nam_read_forward(M, q[..., :4], p_r)
    with pytest.raises(ValueError, match=r"p_r must have shape"):
        nam_read_forward(M, q, p_r[0])
    with pytest.raises(ValueError, match=r"eps must be a finite number > 0"):
        nam_read_forward(M, q, p_r, eps=0.0)
    _, rcache = nam_read_forward(M, q, p_r)
    with pytest.raises(ValueError, match=r"dr must have the forward output's shape \(\.\.\., d_v\) = \(2, 3, 4\)"):
        nam_read_backward(np.ones((2, 3, 5)), rcache)
    _, wcache = nam_write_forward(M, q, np.ones((2, 3, 4)), p_r, p_r)
    with pytest.raises(ValueError, match=r"dM_new must have the forward output's shape"):
        nam_write_backward(np.ones((2, 3, 5, 4)), wcache)
