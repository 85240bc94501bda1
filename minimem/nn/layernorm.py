"""Layer normalisation (Ba, Kiros & Hinton, 2016, arXiv:1607.06450) over the last axis.

Shapes: D normalised width, and any number of leading axes "...".
Equations (over the last axis, for every leading index):
    (1) mu = mean(x)                       (..., 1)
    (2) var = mean((x - mu)^2)             (..., 1)  biased (divide by D), as in the paper and PyTorch
    (3) x_hat = (x - mu) / sqrt(var + eps)
    (4) y = gain * x_hat + bias
eps is added to the variance inside the square root; default 1e-5 (PyTorch's), HMA uses 1e-12.
Parameters: `gain` (D,) (PyTorch's weight, initialised to ones), `bias` (D,) (initialised to zeros).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem.nn.linear import as_float_array, check_finite, check_params

DEFAULT_EPS = 1e-5


class LayerNormCache(NamedTuple):
    x_hat: np.ndarray      # (..., D) normalised input
    inv_std: np.ndarray    # (..., 1) 1 / sqrt(var + eps)
    gain: np.ndarray       # (D,)


def layernorm_forward(x: np.ndarray, gain: np.ndarray, bias: np.ndarray, eps: float = DEFAULT_EPS):
    """Eqs. (1)-(4).

    Args:
        x: (..., D) input.
        gain: (D,) per-feature scale.
        bias: (D,) per-feature shift.
        eps: added to the variance, eq. (3); must be > 0.
    Returns:
        y: (..., D), and the cache for layernorm_backward.
    """
    x, gain, bias = as_float_array("x", x), as_float_array("gain", gain), as_float_array("bias", bias)
    if gain.ndim != 1 or bias.shape != gain.shape:
        raise ValueError(f"gain and bias must both have shape (D,); got {gain.shape} and {bias.shape}")
    if x.ndim < 1 or x.shape[-1] != gain.shape[0]:
        raise ValueError(f"x must have shape (..., D) with D={gain.shape[0]}; got {x.shape}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0; got {eps}")
    mu = x.mean(axis=-1, keepdims=True)                         # (..., 1)  eq. (1)
    centred = x - mu                                            # (..., D)
    var = np.mean(centred * centred, axis=-1, keepdims=True)    # (..., 1)  eq. (2)
    inv_std = 1.0 / np.sqrt(var + eps)                          # (..., 1)
    x_hat = centred * inv_std                                   # (..., D)  eq. (3)
    y = np.multiply(x_hat, gain, dtype=np.result_type(x_hat, gain, bias))   # eq. (4), in one new buffer
    y += bias
    return y, LayerNormCache(x_hat, inv_std, gain)


def layernorm_backward(dout: np.ndarray, cache: LayerNormCache):
    """Adjoint of eqs. (1)-(4). Returns (dx (..., D), dgain (D,), dbias (D,)).

    With g = dout * gain, dx = inv_std * (g - mean(g) - x_hat * mean(g * x_hat)), the two means
    over the last axis being the gradients through mu and var.
    """
    x_hat, inv_std, gain = cache
    if dout.shape != x_hat.shape:
        raise ValueError(f"dout must have the output's shape {x_hat.shape}; got {dout.shape}")
    D = x_hat.shape[-1]
    dgain = np.sum((dout * x_hat).reshape(-1, D), axis=0)      # (D,)
    dbias = np.sum(dout.reshape(-1, D), axis=0)                 # (D,)
    g = np.multiply(dout, gain, dtype=np.result_type(dout, gain, x_hat, inv_std))   # (..., D) d/d x_hat
    t = g * x_hat
    radial = np.mean(t, axis=-1, keepdims=True)                 # (..., 1) mean(g * x_hat)
    np.multiply(x_hat, radial, out=t)
    g -= g.mean(axis=-1, keepdims=True)                         # g becomes dx, operation for operation
    g -= t
    g *= inv_std
    return g, dgain, dbias


def layernorm_autodiff(x, gain, bias, eps: float = DEFAULT_EPS) -> ad.Tensor:
    """Autodiff twin of layernorm_forward."""
    x = ad.as_tensor(x)
    mu = x.mean(axis=-1, keepdims=True)                         # eq. (1)
    centred = x - mu
    var = (centred * centred).mean(axis=-1, keepdims=True)      # eq. (2)
    x_hat = centred / ad.sqrt(var + eps)                        # eq. (3)
    return gain * x_hat + bias                                  # eq. (4)


layernorm_op = ad.custom_op(layernorm_forward, layernorm_backward, name="nn.layernorm")


def layernorm_init(D: int, dtype=np.float64) -> dict:
    """{"gain": ones (D,), "bias": zeros (D,)}: the identity map on already-normalised rows."""
    return {"gain": np.ones(D, dtype=dtype), "bias": np.zeros(D, dtype=dtype)}


class LayerNormModel:
    """Layer norm as a model: inputs x (..., D) -> outputs (..., D). Parameters `gain`, `bias` (D,).

    The gain and bias start random (not ones and zeros) when rng is given, so that a gradient check
    sees a generic point.
    """

    def __init__(self, D: int, eps: float = DEFAULT_EPS, rng: np.random.Generator | None = None,
                 dtype=np.float64):
        self.D, self.eps = D, eps
        self.params = layernorm_init(D, dtype)
        if rng is not None:
            self.params["gain"] = (1.0 + 0.5 * rng.standard_normal(D)).astype(dtype)
            self.params["bias"] = (0.5 * rng.standard_normal(D)).astype(dtype)

    def _check(self, x) -> np.ndarray:
        check_params(self.params, {"gain": (self.D,), "bias": (self.D,)})
        for name, value in self.params.items():
            check_finite(f"parameter {name}", value)
        x = as_float_array("inputs", x)
        if x.ndim < 1 or x.shape[-1] != self.D:
            raise ValueError(f"inputs must have shape (..., D) with D={self.D}; got {x.shape}")
        check_finite("inputs", x)
        return x

    def forward(self, x):
        x = self._check(x)
        return layernorm_forward(x, self.params["gain"], self.params["bias"], self.eps)

    def backward(self, doutputs, cache) -> dict:
        _, dgain, dbias = layernorm_backward(doutputs, cache)
        return {"gain": dgain, "bias": dbias}

    def forward_autodiff(self, tparams: Mapping[str, ad.Tensor], x) -> ad.Tensor:
        x = self._check(x)
        return layernorm_autodiff(x, tparams["gain"], tparams["bias"], self.eps)
