"""The Titans speed rewrites (issue 11) compute the plain formulas: the decay products without exact
zeros (fast path) equal the masked definition, SiLU and l2-norm adjoints written from their outputs
equal the textbook derivatives and central differences, and the output path's recomputed r gives
the same gradients as autodiff. The chunk caches written into one block of memory (ChunkArena)
hold the same numbers as fresh arrays, also when the block runs out. No timing here (speed is
measured by minimem.bench_titans)."""

import minimem  # noqa: F401
import numpy as np
import pytest

from minimem import autodiff as ad
from minimem.memory.titans_features import (
    l2norm_backward, l2norm_forward, lmm_output_autodiff, lmm_output_backward, lmm_output_forward,
    silu_backward, silu_forward,
)
from minimem.memory.titans_lmm import (
    ChunkArena, decay_products, lmm_chunk_backward, lmm_chunk_forward, lmm_scan_backward, lmm_scan_forward,
)
from minimem.memory.titans_memory import activation_derivatives


def _decay_products_definition(A: np.ndarray) -> np.ndarray:
    """P[r, i] = prod_{j=i+1}^{r} A_j for i <= r, 0 above the diagonal, by explicit products."""
    n = A.shape[-1]
    P = np.zeros(A.shape[:-1] + (n + 1, n + 1))
    for r in range(n + 1):
        for i in range(r + 1):
            P[..., r, i] = np.prod(A[..., i:r], axis=-1)
    return P


@pytest.mark.parametrize("zeros", [(), ((0, 3),), ((1, 0), (1, 6))])
def test_decay_products_match_the_definition_with_and_without_zero_factors(zeros):
    rng = np.random.default_rng(0)
    A = rng.uniform(0.3, 1.0, size=(2, 7))
    for row, j in zeros:
        A[row, j] = 0.0
    P = decay_products(A)
    np.testing.assert_allclose(P, _decay_products_definition(A), rtol=1e-13, atol=0)
    assert np.all(P[..., np.triu(np.ones((8, 8), bool), 1)] == 0.0)     # exact zeros above the diagonal
    for row, j in zeros:                                          # a product spanning a zero is exactly 0
        assert np.all(P[row, j + 1:, :j + 1] == 0.0)


def test_decay_products_of_long_small_factor_runs_take_the_masked_path_and_match_the_definition():
    """Cumulative logs below -600 (here ~ -610) leave the exp(c_r) exp(-c_i) form; the masked
    exp(c_r - c_i) form gives the definition's products, down to ~1e-265, without overflow."""
    rng = np.random.default_rng(4)
    A = rng.uniform(1e-6, 2e-6, size=(2, 45))
    P = decay_products(A)
    assert np.all(np.isfinite(P)) and P[0, -1, 0] > 0.0
    np.testing.assert_allclose(P, _decay_products_definition(A), rtol=1e-12, atol=0)
    A[1, :] = rng.uniform(0.5, 1.0, size=45)                      # one row each way: still the masked path
    np.testing.assert_allclose(decay_products(A), _decay_products_definition(A), rtol=1e-12, atol=0)


def _chunk_problem(seed, T, B=2, H=2, d=3, h=5):
    rng = np.random.default_rng(seed)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    q, k = unit(rng.standard_normal((T, B, H, d))), unit(rng.standard_normal((T, B, H, d)))
    v = rng.standard_normal((T, B, H, d))
    gates = rng.uniform(0.05, 0.3, (T, B, H)), rng.uniform(0.5, 0.95, (T, B, H)), rng.uniform(0.01, 0.1, (T, B, H))
    M0 = (rng.standard_normal((B, H, d, h)) * 0.5, rng.standard_normal((B, H, h, d)) * 0.5)
    S0 = tuple(rng.standard_normal(W.shape) * 0.1 for W in M0)
    return M0, S0, (q, k, v) + gates, rng.standard_normal((T, B, H, d))


@pytest.mark.parametrize("phi, read_after_write", [("silu", True), ("tanh", False)])
def test_scan_with_its_arena_equals_chunks_with_fresh_arrays(phi, read_after_write):
    """lmm_scan_forward keeps its chunk caches in one ChunkArena; chunk by chunk with fresh arrays
    (arena=None) and with a block too small for one chunk (every take() falls back) give the same
    reads, states and gradients to the last bit, and the final state is not a view of the block."""
    M0, S0, inputs, dy = _chunk_problem(5, T=11)
    b = 4
    y, (M, S), cache = lmm_scan_forward(M0, S0, *inputs, b, phi, read_after_write)
    grads = lmm_scan_backward(dy, cache, dstate=(M, S))
    arena_block = cache.chunks[0].P_M.base
    assert arena_block is not None and arena_block.size == 2 * ChunkArena.chunk_size(2, 2, b, (3, 5, 3))
    assert cache.chunks[1].M_s[0].base is arena_block              # chunk-start states live in the block
    assert all(W.base is not arena_block for W in M + S)
    for arena in (None, "tiny"):
        ys, caches, (M_c, S_c) = [], [], (M0, S0)
        for s in range(0, 11, b):
            chunk_args = tuple(x[s:s + b] for x in inputs)
            block = ChunkArena(3, np.float64) if arena == "tiny" else None
            y_c, (M_c, S_c), chunk_cache = lmm_chunk_forward(M_c, S_c, *chunk_args, phi, read_after_write, block)
            ys.append(y_c)
            caches.append(chunk_cache)
        np.testing.assert_array_equal(np.concatenate(ys), y)
        for a, c in zip(M_c + S_c, M + S):
            np.testing.assert_array_equal(a, c)
        GM, GS = M_c, S_c                                          # dstate = the final state, as above
        parts = []
        for c in reversed(range(len(caches))):
            s = c * b
            *g, GM, GS = lmm_chunk_backward(dy[s:s + b], caches[c], GM, GS)
            parts.append(g)
        for ours, theirs in zip([np.concatenate(p[::-1]) for p in zip(*parts)], list(grads[0]) + list(grads[1])):
            np.testing.assert_array_equal(ours, theirs)
        for ours, theirs in zip(GM + GS, grads[2][0] + grads[2][1]):
            np.testing.assert_array_equal(ours, theirs)


def test_arena_hands_out_padded_views_then_fresh_arrays():
    arena = ChunkArena(24, np.float64)
    a, b = arena.take((2, 3)), arena.take((2, 4))                 # 6 numbers padded to 8, then 8
    assert a.base is arena.block and b.base is arena.block
    assert np.shares_memory(a, arena.block[:6]) and np.shares_memory(b, arena.block[8:16])
    c = arena.take((3, 3))                                         # 9 > the 8 left: a fresh array
    assert c.base is None and c.shape == (3, 3)
    x = np.arange(4.0)
    kept = arena.keep(x)
    assert kept.base is arena.block and np.array_equal(kept, x)
    other = arena.keep(x.astype(np.float32))                       # another dtype: a copy outside the block
    assert other.dtype == np.float32 and other.base is None


@pytest.mark.parametrize("phi", ["silu", "tanh"])
def test_activation_derivatives_written_to_given_arrays_equal_the_fresh_ones(phi):
    a = np.random.default_rng(6).standard_normal((2, 3, 4)) * 3.0
    block = ChunkArena(200, np.float64)
    fresh, given = activation_derivatives(a, phi), activation_derivatives(a, phi, take=block.take)
    for x, y in zip(fresh, given):
        np.testing.assert_array_equal(x, y)
        assert y.base is block.block


def test_silu_backward_from_the_output_equals_the_derivative_and_finite_differences():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((5, 3, 4)) * 4.0
    a[0, 0, 0] = -800.0                                           # sigma underflows: SiLU' -> 0
    z, cache = silu_forward(a)
    s = 1.0 / (1.0 + np.exp(-np.clip(a, -700, 700)))
    np.testing.assert_allclose(z, a * s, rtol=1e-15, atol=1e-300)
    dout = rng.standard_normal(a.shape)
    dz = silu_backward(dout, cache)
    np.testing.assert_allclose(dz, dout * s * (1.0 + a * (1.0 - s)), rtol=1e-13, atol=1e-300)
    h = 1e-6
    fd = dout * (silu_forward(a + h)[0] - silu_forward(a - h)[0]) / (2 * h)
    ok = np.abs(a) < 700
    np.testing.assert_allclose(dz[ok], fd[ok], rtol=1e-6, atol=1e-9)


def test_l2norm_backward_from_the_output_equals_finite_differences():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 2, 3, 5))
    x[0, 0, 0] = 0.0                                              # the eps keeps a zero row finite
    dy = rng.standard_normal(x.shape)
    _, cache = l2norm_forward(x, 1e-6)
    dx = l2norm_backward(dy, cache)
    fd = np.zeros_like(x)
    h = 1e-6
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        fd[idx] = np.sum(dy * (l2norm_forward(xp, 1e-6)[0] - l2norm_forward(xm, 1e-6)[0])) / (2 * h)
    np.testing.assert_allclose(dx, fd, rtol=1e-6, atol=1e-8)
    n = np.sqrt(np.sum(x * x, axis=-1, keepdims=True) + 1e-6)     # the input form of the same adjoint
    np.testing.assert_allclose(dx, dy / n - x * np.sum(x * dy, axis=-1, keepdims=True) / n ** 3, rtol=1e-12, atol=1e-14)


def test_output_path_with_recomputed_read_out_matches_autodiff():
    rng = np.random.default_rng(3)
    T, B, H, d, D = 5, 2, 2, 3, 4
    y, x = rng.standard_normal((T, B, H, d)), rng.standard_normal((T, B, D))
    params = {"out_norm.g": rng.standard_normal(d), "W_gate": rng.standard_normal((D, H * d)),
              "W_o": rng.standard_normal((H * d, D))}
    do = rng.standard_normal((T, B, D))
    o, cache = lmm_output_forward(y, x, params)
    dy, dx, grads = lmm_output_backward(do, cache)
    ty, tx = ad.Tensor(y, requires_grad=True), ad.Tensor(x, requires_grad=True)
    tparams = {k: ad.Tensor(v, requires_grad=True) for k, v in params.items()}
    to = lmm_output_autodiff(ty, tx, tparams)
    np.testing.assert_allclose(o, to.data, rtol=1e-13, atol=1e-13)
    to.backward(do)
    np.testing.assert_allclose(dy, ty.grad, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad, rtol=1e-11, atol=1e-12)
    for k in params:
        np.testing.assert_allclose(grads[k], tparams[k].grad, rtol=1e-11, atol=1e-12)
