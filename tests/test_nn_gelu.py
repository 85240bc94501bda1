"""minimem.nn.gelu: the exact (erf) GELU and the tanh approximation, each against central differences,
known values and its autodiff twin; the two are different functions; a wrong derivative is caught."""

import math

import numpy as np
import pytest

from gradcheck.core import assert_grads_close, numeric_vjp
from minimem import autodiff as ad
from minimem.nn.gelu import (
    erf_autodiff, gelu_erf_autodiff, gelu_erf_backward, gelu_erf_forward, gelu_tanh_autodiff, gelu_tanh_backward,
    gelu_tanh_forward,
)


def twin(fn, z, dout):
    tz = ad.Tensor(np.array(z), requires_grad=True)
    out = fn(tz)
    out.backward(dout)
    return out.data, tz.grad


def test_exact_gelu_known_values_derivative_and_twin():
    z = np.array([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0])
    a, cache = gelu_erf_forward(z)
    Phi = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in z])
    np.testing.assert_allclose(a, z * Phi, rtol=1e-15)
    np.testing.assert_allclose(a[[1, 4]], [-0.15865525393145707, 0.8413447460685429], rtol=1e-14)
    dout = np.random.default_rng(0).standard_normal(6)
    dz = gelu_erf_backward(dout, cache)
    assert_grads_close((dz,), numeric_vjp(lambda z: gelu_erf_forward(z)[0], (z,), dout), names=("z",))
    out, grad = twin(gelu_erf_autodiff, z, dout)
    np.testing.assert_allclose(out, a, rtol=1e-15)
    np.testing.assert_allclose(grad, dz, rtol=1e-13)           # erf' in the twin, Phi + z phi in the pair


def test_tanh_gelu_derivative_twin_and_tails():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3, 4)) * 2
    a, cache = gelu_tanh_forward(z)
    np.testing.assert_allclose(a[np.abs(z) > 3.5], np.maximum(z, 0)[np.abs(z) > 3.5], atol=1e-3)
    da = rng.standard_normal(a.shape)
    numeric = numeric_vjp(lambda x: gelu_tanh_forward(x)[0], (z,), da)
    assert_grads_close((gelu_tanh_backward(da, cache),), numeric, names=("z",))
    out, grad = twin(gelu_tanh_autodiff, z, da)
    np.testing.assert_allclose(out, a, atol=1e-14)
    np.testing.assert_allclose(grad, gelu_tanh_backward(da, cache), atol=1e-12)


def test_the_two_forms_are_different_functions():
    z = np.linspace(-6.0, 6.0, 12001)
    gap = np.abs(gelu_erf_forward(z)[0] - gelu_tanh_forward(z)[0])
    assert 4e-4 < gap.max() < 5e-4                              # near |z| = 2.7
    assert gap[np.abs(z) < 1e-9].max() == 0.0                   # both 0 at z = 0


def test_erf_autodiff_is_twice_differentiable():
    x = ad.Tensor(np.array([-1.3, 0.2, 0.9]), requires_grad=True)
    (g,) = ad.grad(erf_autodiff(x).sum(), [x], create_graph=True)
    np.testing.assert_allclose(g.data, 2 / math.sqrt(math.pi) * np.exp(-x.data ** 2), rtol=1e-14)
    (h,) = ad.grad(g.sum(), [x])
    np.testing.assert_allclose(h.data if isinstance(h, ad.Tensor) else h,
                               -4 * x.data / math.sqrt(math.pi) * np.exp(-x.data ** 2), rtol=1e-13)


def test_a_planted_wrong_derivative_is_caught():
    z = np.array([-1.5, -0.3, 0.4, 2.2])
    dout = np.ones_like(z)
    _, cache = gelu_erf_forward(z)
    wrong = dout * cache[1]                                     # Phi alone: the z phi(z) term dropped
    with pytest.raises(AssertionError):
        assert_grads_close((wrong,), numeric_vjp(lambda z: gelu_erf_forward(z)[0], (z,), dout), names=("z",))
