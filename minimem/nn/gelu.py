"""GELU, the Gaussian error linear unit, in its two common forms. They are different functions (they
differ by up to 4.7e-4, near |z| = 2.7), so each model names the one its reference uses:

    exact (erf)   gelu_erf(z)  = z Phi(z) = z (1 + erf(z / sqrt 2)) / 2
                  gelu_erf'(z) = Phi(z) + z phi(z),  phi the standard normal density
                  used by HMA's attention blocks (minimem.memory.hma_mab; the reference's nn.GELU())
    tanh approx.  gelu_tanh(z)  = z (1 + t) / 2,  t = tanh(c (z + 0.044715 z^3)),  c = sqrt(2 / pi)
                  gelu_tanh'(z) = (1 + t) / 2 + z (1 - t^2) c (1 + 3 * 0.044715 z^2) / 2
                  used by the NAM Transformer (minimem.memory.nam_transformer; BERT/GPT-2 style)

Each form is a manual pair, `<form>_forward(z) -> (a, cache)` and `<form>_backward(da, cache) -> dz`,
elementwise on any shape, plus an autodiff twin built from minimem.autodiff ops (not from the manual
derivative), so the two check each other. minimem.autodiff has no erf op; erf_autodiff supplies it,
with its derivative 2 / sqrt(pi) exp(-x^2) written in Tensor ops so that it can be differentiated again.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

from minimem import autodiff as ad

SQRT2 = math.sqrt(2.0)
TANH_C = math.sqrt(2.0 / math.pi)    # c of the tanh approximation
TANH_A = 0.044715                    # the cubic coefficient of the tanh approximation


# ----------------------------------------------------------------- exact GELU (erf)
def gelu_erf_forward(z: np.ndarray):
    """a = z Phi(z), Phi the standard normal CDF via erf. Returns a (shape of z) and the cache (z, Phi)."""
    Phi = 0.5 * (1.0 + erf(z / SQRT2))
    return z * Phi, (z, Phi)


def gelu_erf_backward(da: np.ndarray, cache) -> np.ndarray:
    """dz = da (Phi(z) + z phi(z))."""
    z, Phi = cache
    phi = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return da * (Phi + z * phi)


def erf_autodiff(x) -> ad.Tensor:
    """erf as an autodiff op: d erf(x) / dx = 2 / sqrt(pi) exp(-x^2), in Tensor ops (twice differentiable)."""
    x = ad.as_tensor(x)
    return ad.Tensor.from_op(erf(x.data), (x,), lambda g: (g * (2.0 / math.sqrt(math.pi)) * ad.exp(-(x * x)),),
                             "erf")


def gelu_erf_autodiff(z) -> ad.Tensor:
    """Autodiff twin of gelu_erf_forward, through erf."""
    z = ad.as_tensor(z)
    return 0.5 * z * (1.0 + erf_autodiff(z / SQRT2))


# ----------------------------------------------------------------- tanh approximation
def gelu_tanh_forward(z: np.ndarray):
    """a = 0.5 z (1 + tanh(c (z + 0.044715 z^3))). Returns (a, cache (z, t)), t the tanh.
    Computed in two buffers, operation for operation as written (z * z * z: far faster than z ** 3)."""
    t = z * z
    t *= z
    t *= TANH_A
    t += z
    t *= TANH_C
    np.tanh(t, out=t)                                       # t = tanh(c (z + 0.044715 z^3))
    a = t + 1.0
    a *= z
    a *= 0.5                                                # (1 + t) z 0.5 = 0.5 z (1 + t) exactly
    return a, (z, t)


def gelu_tanh_backward(da: np.ndarray, cache) -> np.ndarray:
    """dz = da (0.5 (1 + t) + 0.5 z (1 - t^2) c (1 + 3 * 0.044715 z^2)), reusing the forward's t;
    three buffers instead of a dozen temporaries."""
    z, t = cache
    dz = t + 1.0
    dz *= 0.5                                               # 0.5 (1 + t)
    b = t * t
    np.subtract(1.0, b, out=b)
    b *= z
    b *= 0.5
    b *= TANH_C                                             # 0.5 z (1 - t^2) c
    c = z * (3 * TANH_A)
    c *= z
    c += 1.0                                                # 1 + 3 * 0.044715 z^2
    b *= c
    dz += b
    dz *= da
    return dz


def gelu_tanh_autodiff(z) -> ad.Tensor:
    """Autodiff twin of gelu_tanh_forward, through tanh."""
    z = ad.as_tensor(z)
    return 0.5 * z * (1.0 + ad.tanh(TANH_C * (z + TANH_A * z * z * z)))
