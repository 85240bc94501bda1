"""Tests for minimem.memory.addressing and minimem.memory.read_write.

Every primitive: backward == central differences for every array input (hypothesis-chosen shapes
with size-1 axes), autodiff twin == manual forward and backward, custom op == manual pair; then the
spec's oracles (specs/ntm_dnc_sam.md A.9, E.1), planted wrong backwards, and shape errors.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gradcheck.core import assert_grads_close, numeric_vjp
from minimem import autodiff as ad
from minimem.memory import addressing, read_write
from minimem.memory.addressing import (
    EPS_SHARPEN,
    address_autodiff, address_backward, address_forward, address_op,
    content_autodiff, content_backward, content_forward, content_op,
    cosine_similarity_autodiff, cosine_similarity_backward, cosine_similarity_forward, cosine_similarity_op,
    interpolate_autodiff, interpolate_backward, interpolate_forward, interpolate_op,
    sharpen_autodiff, sharpen_backward, sharpen_forward, sharpen_op,
    shift_autodiff, shift_backward, shift_forward, shift_offsets, shift_op,
)
from minimem.memory.read_write import (
    read_autodiff, read_backward, read_forward, read_op,
    write_autodiff, write_backward, write_forward, write_op,
)

FAST = settings(max_examples=30, deadline=None, database=None)


# ----------------------------------------------------------------- input makers
class Sizes(NamedTuple):
    B: int
    R: int
    N: int
    W: int
    S: int      # shifts (odd)
    H: int      # write heads


sizes = st.builds(Sizes, B=st.integers(1, 3), R=st.integers(1, 3), N=st.integers(1, 6),
                  W=st.integers(1, 4), S=st.sampled_from([1, 3, 5]), H=st.integers(1, 3))
seeds = st.integers(0, 2**32 - 1)


def simplex(rng, shape):
    """Rows on the simplex, every entry >= 0.02 / N-ish (off the sharpening log's steep edge)."""
    w = rng.dirichlet(np.ones(shape[-1]) * 2.0, size=shape[:-1])
    return 0.9 * w + 0.1 / shape[-1]


def off_zero(u, radius=0.5):
    """Scale every vector (last axis) shorter than `radius` up to it: away from the cosine's guard bump."""
    norm = np.sqrt(np.sum(u * u, axis=-1, keepdims=True))
    return u * np.maximum(1.0, radius / np.maximum(norm, 1e-300))


def make_memory(rng, z: Sizes, zero_rows: bool):
    M = off_zero(rng.standard_normal((z.B, z.N, z.W)))
    if zero_rows:                                 # the cosine guard must keep these smooth
        M[:, 0, :] = 0.0
    return M


def make_cosine(rng, z, zero_rows=False):
    k = off_zero(rng.standard_normal((z.B, z.R, z.W)))
    if zero_rows:
        k[0, 0, :] = 0.0
    return make_memory(rng, z, zero_rows), k


def make_cosine_per_head(rng, z, zero_rows=False):
    rows, k = off_zero(rng.standard_normal((z.B, z.R, z.N, z.W))), off_zero(rng.standard_normal((z.B, z.R, z.W)))
    if zero_rows:
        rows[:, -1, 0, :] = 0.0
        k[-1, 0, :] = 0.0
    return rows, k


def make_content(rng, z, zero_rows=False):
    return (*make_cosine(rng, z, zero_rows), rng.uniform(0.5, 5.0, (z.B, z.R, 1)))


def make_interpolate(rng, z, zero_rows=False):
    return simplex(rng, (z.B, z.R, z.N)), simplex(rng, (z.B, z.R, z.N)), rng.uniform(0.1, 0.9, (z.B, z.R, 1))


def make_shift(rng, z, zero_rows=False):
    return simplex(rng, (z.B, z.R, z.N)), simplex(rng, (z.B, z.R, z.S))


def make_sharpen(rng, z, zero_rows=False):
    return rng.uniform(0.05, 1.0, (z.B, z.R, z.N)), rng.uniform(1.0, 4.0, (z.B, z.R, 1))


def make_address(rng, z, zero_rows=False):
    M, k, beta = make_content(rng, z, zero_rows)
    return (M, k, beta, rng.uniform(0.1, 0.9, (z.B, z.R, 1)), simplex(rng, (z.B, z.R, z.S)),
            rng.uniform(1.0, 3.0, (z.B, z.R, 1)), simplex(rng, (z.B, z.R, z.N)))


def make_read(rng, z, zero_rows=False):
    return make_memory(rng, z, zero_rows), simplex(rng, (z.B, z.R, z.N))


def make_write(rng, z, zero_rows=False):
    return (make_memory(rng, z, zero_rows), simplex(rng, (z.B, z.H, z.N)),
            rng.uniform(0.0, 1.0, (z.B, z.H, z.W)), rng.standard_normal((z.B, z.H, z.W)))


class Primitive(NamedTuple):
    forward: Callable
    backward: Callable
    twin: Callable
    op: Callable
    make: Callable
    names: tuple


PRIMITIVES = {
    "cosine": Primitive(cosine_similarity_forward, cosine_similarity_backward, cosine_similarity_autodiff,
                        cosine_similarity_op, make_cosine, ("M", "k")),
    "cosine_per_head": Primitive(cosine_similarity_forward, cosine_similarity_backward,
                                 cosine_similarity_autodiff, cosine_similarity_op, make_cosine_per_head, ("M", "k")),
    "content": Primitive(content_forward, content_backward, content_autodiff, content_op, make_content,
                         ("M", "k", "beta")),
    "interpolate": Primitive(interpolate_forward, interpolate_backward, interpolate_autodiff, interpolate_op,
                             make_interpolate, ("w_c", "w_prev", "g")),
    "shift": Primitive(shift_forward, shift_backward, shift_autodiff, shift_op, make_shift, ("w_g", "s")),
    "sharpen": Primitive(sharpen_forward, sharpen_backward, sharpen_autodiff, sharpen_op, make_sharpen,
                         ("w_s", "gamma")),
    "address": Primitive(address_forward, address_backward, address_autodiff, address_op, make_address,
                         ("M", "k", "beta", "g", "s", "gamma", "w_prev")),
    "read": Primitive(read_forward, read_backward, read_autodiff, read_op, make_read, ("M", "w")),
    "write": Primitive(write_forward, write_backward, write_autodiff, write_op, make_write, ("M", "w", "e", "a")),
}


# An exactly zero key or row is the edge of the cosine's domain: the guards replace the kink of |u|
# at 0 by a bump sqrt(|u|^2 + eps_n) only 1e-3 wide, where D has slope ~1e3 and (times beta) curvature
# on a scale of 1e-3 to 1e-5, so a central difference with h = 1e-6 is off by up to ~1e-4 relative
# there. Hypothesis gradchecks therefore keep keys and rows at norm >= 0.5 (`off_zero`); zero vectors
# are checked by the twin comparison (no finite differences involved), by finiteness oracles, and by
# fixed cases with the smaller step below.
ZERO_VECTOR_STEP = 1e-7
COSINE_BASED = {"cosine", "cosine_per_head", "content", "address"}


def check_against_finite_differences(prim: Primitive, inputs, rng, backward=None, eps=1e-6):
    out, cache = prim.forward(*inputs)
    dout = rng.standard_normal(out.shape)                             # random upstream, never ones
    analytic = (backward or prim.backward)(dout, cache)
    assert len(analytic) == len(inputs)
    for name, x, dx in zip(prim.names, inputs, analytic):
        assert dx.shape == x.shape, f"{name}: gradient shape {dx.shape} != input shape {x.shape}"
    numeric = numeric_vjp(lambda *args: prim.forward(*args)[0], inputs, dout, eps=eps)
    assert_grads_close(analytic, numeric, names=prim.names)


# ----------------------------------------------------------------- gradients: every primitive, every input
@pytest.mark.parametrize("name", list(PRIMITIVES))
@FAST
@given(z=sizes, seed=seeds, zero_rows=st.booleans())
def test_backward_matches_central_differences(name, z, seed, zero_rows):
    rng = np.random.default_rng(seed)
    prim = PRIMITIVES[name]
    zero_rows = zero_rows and name not in COSINE_BASED                # see ZERO_VECTOR_STEP
    check_against_finite_differences(prim, prim.make(rng, z, zero_rows), rng)


@pytest.mark.parametrize("name", list(PRIMITIVES))
@FAST
@given(z=sizes, seed=seeds, zero_rows=st.booleans())
def test_autodiff_twin_and_custom_op_match_manual_pair(name, z, seed, zero_rows):
    rng = np.random.default_rng(seed)
    prim = PRIMITIVES[name]
    inputs = prim.make(rng, z, zero_rows)
    out, cache = prim.forward(*inputs)
    dout = rng.standard_normal(out.shape)
    manual = prim.backward(dout, cache)
    for engine in (prim.twin, prim.op):
        tensors = [ad.Tensor(x, requires_grad=True) for x in inputs]
        result = engine(*tensors)
        np.testing.assert_allclose(result.data, out, rtol=1e-12, atol=1e-14)
        result.backward(dout)
        assert_grads_close(manual, [t.grad for t in tensors], names=prim.names, rtol=1e-10, atol=1e-13)


def test_write_gradients_with_a_fully_erasing_head_match_finite_differences():
    # Head 0 erases slot 2 completely (w one-hot, e = 1), so its erase factor is exactly 0 there:
    # a backward that divides the product by the factor would give NaN or inf for head 1.
    rng = np.random.default_rng(3)
    B, H, N, W = 2, 3, 4, 3
    M = rng.standard_normal((B, N, W))
    w = simplex(rng, (B, H, N))
    w[:, 0] = np.eye(N)[2]
    e = rng.uniform(0.1, 0.9, (B, H, W))
    e[:, 0] = 1.0
    a = rng.standard_normal((B, H, W))
    check_against_finite_differences(PRIMITIVES["write"], (M, w, e, a), rng)


def test_address_gradients_at_zero_memory_and_zero_keys_match_finite_differences():
    # All-zero memory (or memory at the 1e-6 constant initialisation) and zero keys: eqs. (5)-(6)
    # are smooth here only because of the guards, and the gradients must be exact.
    rng = np.random.default_rng(4)
    z = Sizes(B=2, R=2, N=5, W=3, S=3, H=1)
    M, k, beta, g, s, gamma, w_prev = make_address(rng, z)
    for memory, keys in ((np.zeros_like(M), k), (np.full_like(M, 1e-6), k), (M, np.zeros_like(k))):
        check_against_finite_differences(PRIMITIVES["address"], (memory, keys, beta, g, s, gamma, w_prev), rng,
                                         eps=ZERO_VECTOR_STEP)


# ----------------------------------------------------------------- content addressing oracles (A.9)
@FAST
@given(z=sizes, seed=seeds, log_beta=st.floats(-3.0, 8.0))
def test_content_and_address_weightings_lie_on_the_simplex(z, seed, log_beta):
    rng = np.random.default_rng(seed)
    M, k, beta, g, s, gamma, w_prev = make_address(rng, z)
    beta = np.full_like(beta, 10.0 ** log_beta)                       # up to 1e8: no overflow
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        w_c, _ = content_forward(M, k, beta)
        w, _ = address_forward(M, k, beta, g, s, gamma, w_prev)
    for weighting in (w_c, w):
        assert np.all(np.abs(weighting.sum(axis=-1) - 1.0) < 1e-12)
        assert np.all((weighting >= 0.0) & (weighting <= 1.0))


def test_identical_key_and_row_with_beta_50_takes_almost_all_the_weight():
    M = 0.7 * np.eye(4)[None]                                          # (1, 4, 4) orthogonal rows
    k = M[:, [2], :]                                                   # (1, 1, 4) equal to row 2
    w_c, _ = content_forward(M, k, np.full((1, 1, 1), 50.0))
    assert w_c[0, 0, 2] > 0.99
    assert np.argmax(w_c[0, 0]) == 2


def test_cosine_similarity_matches_the_spec_formula_and_is_scale_free_away_from_zero():
    rng = np.random.default_rng(5)
    M, k = rng.standard_normal((2, 6, 4)), rng.standard_normal((2, 3, 4))
    D, _ = cosine_similarity_forward(M, k)
    nrm = lambda u: np.sqrt(np.sum(u * u, axis=-1) + 1e-6)
    expected = np.einsum("brw,bnw->brn", k, M) / (nrm(k)[:, :, None] * nrm(M)[:, None, :] + 1e-6)
    np.testing.assert_allclose(D, expected, rtol=1e-14, atol=0)
    np.testing.assert_allclose(cosine_similarity_forward(3.0 * M, k)[0], D, atol=1e-6)


def test_zero_key_and_zero_memory_give_uniform_weights_and_finite_gradients():
    B, R, N, W = 2, 2, 5, 3
    rng = np.random.default_rng(6)
    beta = np.full((B, R, 1), 7.0)
    for M, k in ((np.zeros((B, N, W)), rng.standard_normal((B, R, W))),
                 (rng.standard_normal((B, N, W)), np.zeros((B, R, W))),
                 (np.zeros((B, N, W)), np.zeros((B, R, W)))):
        with np.errstate(over="raise", divide="raise", invalid="raise"):
            w_c, cache = content_forward(M, k, beta)
            grads = content_backward(rng.standard_normal((B, R, N)), cache)
        np.testing.assert_allclose(w_c, 1.0 / N, rtol=0, atol=1e-15)
        assert all(np.all(np.isfinite(dx)) for dx in grads)


def test_per_head_rows_equal_shared_memory_gathered_per_head():
    # SAM's sparse reads score each head's own candidate rows; with every head given all N rows
    # the per-head path must equal the shared-memory path, values and gradients.
    rng = np.random.default_rng(7)
    B, R, N, W = 2, 3, 4, 5
    M, k, beta = rng.standard_normal((B, N, W)), rng.standard_normal((B, R, W)), rng.uniform(1, 3, (B, R, 1))
    rows = np.broadcast_to(M[:, None], (B, R, N, W)).copy()
    w_shared, c_shared = content_forward(M, k, beta)
    w_rows, c_rows = content_forward(rows, k, beta)
    np.testing.assert_allclose(w_rows, w_shared, rtol=1e-14)
    dw = rng.standard_normal((B, R, N))
    dM_shared, dk_shared, dbeta_shared = content_backward(dw, c_shared)
    dM_rows, dk_rows, dbeta_rows = content_backward(dw, c_rows)
    np.testing.assert_allclose(dM_rows.sum(axis=1), dM_shared, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dk_rows, dk_shared, rtol=1e-12)
    np.testing.assert_allclose(dbeta_rows, dbeta_shared, rtol=1e-12)


# ----------------------------------------------------------------- shift oracles (A.9)
@pytest.mark.parametrize("S", [1, 3, 5])
def test_shift_with_one_hot_zero_is_the_identity(S):
    rng = np.random.default_rng(8)
    w_g = simplex(rng, (2, 3, 7))
    s = np.zeros((2, 3, S))
    s[..., S // 2] = 1.0                                               # offset 0 sits in the middle
    np.testing.assert_array_equal(shift_forward(w_g, s)[0], w_g)


@pytest.mark.parametrize("S, offset", [(3, +1), (3, -1), (5, +2), (5, -2), (5, +1)])
def test_one_hot_shift_rolls_in_the_documented_direction(S, offset):
    # s is ordered over offsets (-q, ..., +q); shift +1 moves mass from slot j to slot j + 1.
    rng = np.random.default_rng(9)
    w_g = simplex(rng, (2, 1, 6))
    s = np.zeros((2, 1, S))
    s[..., list(shift_offsets(S)).index(offset)] = 1.0
    np.testing.assert_array_equal(shift_forward(w_g, s)[0], np.roll(w_g, offset, axis=-1))
    w_one_hot = np.zeros((1, 1, 6))
    w_one_hot[0, 0, 0] = 1.0
    s1 = s[:1]
    assert np.argmax(shift_forward(w_one_hot, s1)[0][0, 0]) == offset % 6


def test_shift_s3_matches_the_spec_roll_formula():
    rng = np.random.default_rng(10)
    w_g, s = simplex(rng, (3, 2, 5)), simplex(rng, (3, 2, 3))
    expected = (s[..., [0]] * np.roll(w_g, -1, axis=-1) + s[..., [1]] * w_g
                + s[..., [2]] * np.roll(w_g, +1, axis=-1))
    np.testing.assert_allclose(shift_forward(w_g, s)[0], expected, rtol=1e-14)


@pytest.mark.parametrize("S", [1, 3, 5])
def test_shift_with_one_slot_is_the_identity(S):
    rng = np.random.default_rng(11)
    w_g = np.ones((2, 3, 1))
    s = simplex(rng, (2, 3, S))
    np.testing.assert_allclose(shift_forward(w_g, s)[0], w_g, rtol=1e-15)


def test_shift_is_linear_in_w_g_and_in_s():
    rng = np.random.default_rng(12)
    w1, w2 = rng.standard_normal((2, 2, 6)), rng.standard_normal((2, 2, 6))
    s1, s2 = rng.standard_normal((2, 2, 5)), rng.standard_normal((2, 2, 5))
    f = lambda w, s: shift_forward(w, s)[0]
    np.testing.assert_allclose(f(2 * w1 - 3 * w2, s1), 2 * f(w1, s1) - 3 * f(w2, s1), atol=1e-13)
    np.testing.assert_allclose(f(w1, 2 * s1 - 3 * s2), 2 * f(w1, s1) - 3 * f(w1, s2), atol=1e-13)


# ----------------------------------------------------------------- sharpening oracles (A.9, A.8 NaN causes)
def test_sharpen_with_gamma_one_returns_the_input_renormalised():
    rng = np.random.default_rng(13)
    w_s = simplex(rng, (2, 3, 6))
    w, _ = sharpen_forward(w_s, np.ones((2, 3, 1)))
    np.testing.assert_allclose(w, w_s, rtol=0, atol=6 * EPS_SHARPEN)
    unnormalised = 3.0 * w_s
    np.testing.assert_allclose(sharpen_forward(unnormalised, np.ones((2, 3, 1)))[0], w_s, atol=1e-11)


def test_sharpen_with_large_gamma_approaches_one_hot_argmax():
    rng = np.random.default_rng(14)
    w_s = simplex(rng, (2, 3, 6))
    w, _ = sharpen_forward(w_s, np.full((2, 3, 1), 2000.0))
    np.testing.assert_allclose(w, np.eye(6)[np.argmax(w_s, axis=-1)], atol=1e-6)


def test_sharpen_of_zero_and_tiny_weights_is_finite_with_finite_gradients():
    # eq. (9) as written underflows (1e-18 ** 21 == 0, then 0 / 0) and d/dgamma hits 0 * log 0.
    w_s = np.array([[[0.0, 1e-18, 0.3, 0.7], [1e-18, 1e-18, 0.0, 1e-17]]])   # (1, 2, 4)
    gamma = np.full((1, 2, 1), 21.0)
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        w, cache = sharpen_forward(w_s, gamma)
        dw_s, dgamma = sharpen_backward(np.arange(8.0).reshape(1, 2, 4), cache)
    assert np.all(np.abs(w.sum(axis=-1) - 1.0) < 1e-12) and np.all(w >= 0)
    assert np.all(np.isfinite(dw_s)) and np.all(np.isfinite(dgamma))
    assert np.argmax(w[0, 1]) == 3


# ----------------------------------------------------------------- read and write oracles (A.9)
def test_write_with_zero_erase_and_add_or_zero_weighting_leaves_memory_bit_identical():
    rng = np.random.default_rng(15)
    B, H, N, W = 2, 3, 5, 4
    M = rng.standard_normal((B, N, W))
    w, e, a = simplex(rng, (B, H, N)), rng.uniform(0, 1, (B, H, W)), rng.standard_normal((B, H, W))
    np.testing.assert_array_equal(write_forward(M, w, np.zeros_like(e), np.zeros_like(a))[0], M)
    np.testing.assert_array_equal(write_forward(M, np.zeros_like(w), e, a)[0], M)


def test_full_erase_one_hot_write_then_read_returns_the_add_vector_exactly():
    rng = np.random.default_rng(16)
    B, N, W = 3, 6, 4
    M = rng.standard_normal((B, N, W))
    w = np.eye(N)[[1, 4, 0]][:, None, :]                               # (B, 1, N) one-hot per batch
    a = rng.standard_normal((B, 1, W))
    M_new, _ = write_forward(M, w, np.ones((B, 1, W)), a)
    r, _ = read_forward(M_new, w)
    np.testing.assert_array_equal(r, a)
    untouched = w[:, 0, :] == 0                                        # (B, N)
    np.testing.assert_array_equal(M_new[untouched], M[untouched])


def test_write_without_erase_adds_the_weighted_add_vector():
    rng = np.random.default_rng(17)
    M, w, a = rng.standard_normal((2, 5, 3)), simplex(rng, (2, 1, 5)), rng.standard_normal((2, 1, 3))
    M_new, _ = write_forward(M, w, np.zeros((2, 1, 3)), a)
    np.testing.assert_array_equal(M_new, M + w[:, 0, :, None] * a)


def test_multiple_write_heads_erase_all_then_add_all_in_any_order():
    rng = np.random.default_rng(18)
    B, H, N, W = 2, 3, 5, 4
    M = rng.standard_normal((B, N, W))
    w, e, a = simplex(rng, (B, H, N)), rng.uniform(0, 1, (B, H, W)), rng.standard_normal((B, H, W))
    M_new, _ = write_forward(M, w, e, a)
    expected = M.copy()
    for h in range(H):                                                 # the spec's rule, head by head
        expected *= 1.0 - w[:, h, :, None] * e[:, h, None, :]
    for h in range(H):
        expected += w[:, h, :, None] * a[:, h, None, :]
    np.testing.assert_allclose(M_new, expected, rtol=1e-14)
    order = [2, 0, 1]
    np.testing.assert_allclose(write_forward(M, w[:, order], e[:, order], a[:, order])[0], M_new, rtol=1e-14)
    # Two heads fully erasing the same slot both keep their add: not a sequential head-by-head write.
    one_hot = np.broadcast_to(np.eye(N)[3], (B, 2, N))
    M_two, _ = write_forward(M, one_hot, np.ones((B, 2, W)), a[:, :2])
    np.testing.assert_allclose(M_two[:, 3], a[:, 0] + a[:, 1], rtol=1e-15)


def test_read_is_w_transpose_m_and_a_one_hot_read_returns_the_row():
    rng = np.random.default_rng(19)
    M, w = rng.standard_normal((2, 5, 3)), simplex(rng, (2, 4, 5))
    r, _ = read_forward(M, w)
    np.testing.assert_allclose(r, np.stack([w[b] @ M[b] for b in range(2)]), rtol=1e-14)
    np.testing.assert_array_equal(read_forward(M, np.eye(5)[None, [3]].repeat(2, 0))[0][:, 0], M[:, 3])


def test_primitives_do_not_mutate_their_inputs():
    rng = np.random.default_rng(20)
    z = Sizes(B=2, R=2, N=4, W=3, S=3, H=2)
    for prim in PRIMITIVES.values():
        inputs = prim.make(rng, z)
        copies = [x.copy() for x in inputs]
        out, cache = prim.forward(*inputs)
        prim.backward(np.ones_like(out), cache)
        for x, x0 in zip(inputs, copies):
            np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("name", ["address", "read", "write"])
def test_batch_elements_are_independent(name):
    rng = np.random.default_rng(21)
    prim = PRIMITIVES[name]
    inputs = prim.make(rng, Sizes(B=3, R=2, N=5, W=3, S=3, H=2))
    out, _ = prim.forward(*inputs)
    perturbed = [x.copy() for x in inputs]
    for x in perturbed:
        x[1] = x[1] * 0.5 + 0.01                                       # change batch element 1 only
    out_perturbed, _ = prim.forward(*perturbed)
    np.testing.assert_array_equal(out_perturbed[[0, 2]], out[[0, 2]])
    assert not np.array_equal(out_perturbed[1], out[1])


def test_float32_inputs_stay_float32():
    rng = np.random.default_rng(22)
    inputs = [x.astype(np.float32) for x in make_address(rng, Sizes(2, 2, 5, 3, 3, 1))]
    w, cache = address_forward(*inputs)
    assert w.dtype == np.float32
    assert all(dx.dtype == np.float32 for dx in address_backward(np.ones_like(w), cache))
    M_new, _ = write_forward(inputs[0], inputs[-1][:, :1], np.ones((2, 1, 3), np.float32), inputs[1][:, :1])
    assert M_new.dtype == np.float32


# ----------------------------------------------------------------- planted wrong backwards are caught
def test_planted_cosine_bug_in_content_backward_is_caught_and_named(monkeypatch):
    # Drop the key-norm term of dk (spec section 0); dM stays right, so only "k" may be named.
    def cosine_backward_without_key_norm_term(dD, cache):
        dM, _ = cosine_similarity_backward(dD, cache)
        dk = np.einsum("brn,bnw->brw", dD / cache.den, cache.M)
        return dM, dk

    monkeypatch.setattr(addressing, "cosine_similarity_backward", cosine_backward_without_key_norm_term)
    rng = np.random.default_rng(23)
    with pytest.raises(AssertionError, match=r"^k: gradients differ"):
        check_against_finite_differences(PRIMITIVES["content"], make_content(rng, Sizes(2, 2, 5, 3, 3, 1)), rng)


def test_planted_interpolation_bug_in_address_backward_is_caught_and_named(monkeypatch):
    # The classic slip: the previous weighting's gradient scaled by g instead of (1 - g).
    def interpolate_backward_with_g_swapped(dw_g, cache):
        dw_c, _, dg = interpolate_backward(dw_g, cache)
        return dw_c, cache.g * dw_g, dg

    monkeypatch.setattr(addressing, "interpolate_backward", interpolate_backward_with_g_swapped)
    rng = np.random.default_rng(24)
    with pytest.raises(AssertionError, match=r"^w_prev: gradients differ"):
        check_against_finite_differences(PRIMITIVES["address"], make_address(rng, Sizes(2, 2, 5, 3, 3, 1)), rng)


def test_planted_reversed_shift_gradient_is_caught_and_named():
    # ds in the reversed (pytorch-ntm kernel) order: dw_g is right, so only "s" may be named.
    def shift_backward_reversed_ds(dw_s, cache):
        dw_g, ds = shift_backward(dw_s, cache)
        return dw_g, ds[..., ::-1]

    rng = np.random.default_rng(25)
    with pytest.raises(AssertionError, match=r"^s: gradients differ"):
        check_against_finite_differences(PRIMITIVES["shift"], make_shift(rng, Sizes(2, 2, 6, 3, 3, 1)), rng,
                                         backward=shift_backward_reversed_ds)


def test_planted_write_bug_ignoring_other_heads_erase_is_caught(monkeypatch):
    # Forget that the other heads' erase factors multiply into d/dw_h and d/de_h (H > 1 only).
    monkeypatch.setattr(read_write, "_exclusive_products", lambda x, axis: np.ones_like(x))
    rng = np.random.default_rng(26)
    with pytest.raises(AssertionError, match=r"^w: gradients differ"):
        check_against_finite_differences(PRIMITIVES["write"], make_write(rng, Sizes(2, 1, 5, 3, 3, 2)), rng)


def test_planted_doubled_sharpen_gamma_gradient_is_caught_by_the_twin_comparison():
    rng = np.random.default_rng(27)
    w_s, gamma = make_sharpen(rng, Sizes(2, 2, 5, 3, 3, 1))
    w, cache = sharpen_forward(w_s, gamma)
    dw = rng.standard_normal(w.shape)
    dw_s, dgamma = sharpen_backward(dw, cache)
    tensors = [ad.Tensor(w_s, requires_grad=True), ad.Tensor(gamma, requires_grad=True)]
    sharpen_autodiff(*tensors).backward(dw)
    with pytest.raises(AssertionError, match=r"^gamma: gradients differ"):
        assert_grads_close((dw_s, 2.0 * dgamma), [t.grad for t in tensors], names=("w_s", "gamma"), rtol=1e-10)


# ----------------------------------------------------------------- shapes at the door
B_, R_, N_, W_ = 2, 3, 5, 4
_M, _k, _beta = np.zeros((B_, N_, W_)), np.zeros((B_, R_, W_)), np.ones((B_, R_, 1))
_w, _g, _s, _gamma = np.full((B_, R_, N_), 0.2), np.full((B_, R_, 1), 0.5), np.full((B_, R_, 3), 1 / 3), np.ones((B_, R_, 1))
_e, _a = np.zeros((B_, R_, W_)), np.zeros((B_, R_, W_))

BAD_CALLS = {
    "memory 2-D": (lambda: content_forward(_M[0], _k, _beta), r"M must have shape \(B, N, W\)"),
    "key word size": (lambda: content_forward(_M, _k[..., :3], _beta), r"k must have shape \(B, R, W\) with M's word size"),
    "key 2-D": (lambda: cosine_similarity_forward(_M, _k[:, 0]), r"k must have shape \(B, R, W\)"),
    "beta without its last axis": (lambda: content_forward(_M, _k, _beta[..., 0]), r"beta must have shape \(B, R, 1\)"),
    "beta broadcast over heads": (lambda: content_forward(_M, _k, _beta[:, :1]), r"beta must have shape"),
    "gate shape": (lambda: interpolate_forward(_w, _w, _g[:, :, 0]), r"g must have shape \(B, R, 1\)"),
    "w_prev slots": (lambda: interpolate_forward(_w, _w[..., :4], _g), r"w_prev must have shape \(B, R, N\)"),
    "even S": (lambda: shift_forward(_w, np.full((B_, R_, 4), 0.25)), r"S must be odd"),
    "shift heads": (lambda: shift_forward(_w, _s[:, :1]), r"s must have shape \(B, R, S\)"),
    "gamma shape": (lambda: sharpen_forward(_w, _gamma[:1]), r"gamma must have shape \(B, R, 1\)"),
    "address w_prev slots": (lambda: address_forward(_M, _k, _beta, _g, _s, _gamma, _w[..., :4]), r"w_prev must have shape"),
    "address s batch": (lambda: address_forward(_M, _k, _beta, _g, _s[:1], _gamma, _w), r"s must have shape"),
    "read weighting slots": (lambda: read_forward(_M, _w[..., :4]), r"w must have shape \(B, R, N\)"),
    "read memory 4-D": (lambda: read_forward(_M[None], _w), r"M must have shape \(B, N, W\)"),
    "write erase width": (lambda: write_forward(_M, _w, _e[..., :3], _a), r"e must have shape \(B, H, W\)"),
    "write add heads": (lambda: write_forward(_M, _w, _e, _a[:, :2]), r"a must have shape \(B, H, W\)"),
    "backward upstream shape": (lambda: content_backward(np.zeros((B_, R_, 4)), content_forward(_M, _k, _beta)[1]),
                                r"dw_c must have shape"),
    "write backward upstream shape": (lambda: write_backward(np.zeros((B_, N_)), write_forward(_M, _w, _e, _a)[1]),
                                      r"dM_new must have shape"),
    "twin key 2-D": (lambda: content_autodiff(_M, _k[:, 0], _beta), r"k must have shape"),
    "twin write erase width": (lambda: write_autodiff(_M, _w, _e[..., :3], _a), r"e must have shape"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_shapes_raise_value_error_naming_the_expected_shape(case):
    call, message = BAD_CALLS[case]
    with pytest.raises(ValueError, match=message):
        call()
