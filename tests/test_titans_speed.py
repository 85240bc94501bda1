"""The Titans speed rewrites (issue 11) compute the plain formulas: the decay products without exact
zeros (fast path) equal the masked definition, SiLU and l2-norm adjoints written from their outputs
equal the textbook derivatives and central differences, and the output path's recomputed r gives
the same gradients as autodiff. No timing here (speed is measured by minimem.bench_titans)."""

import minimem  # noqa: F401
import numpy as np
import pytest

from minimem import autodiff as ad
from minimem.memory.titans_features import (
    l2norm_backward, l2norm_forward, lmm_output_autodiff, lmm_output_backward, lmm_output_forward,
    silu_backward, silu_forward,
)
from minimem.memory.titans_lmm import decay_products


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
