"""Multi-layer perceptron: a stack of linear layers with an elementwise activation between them.

Shapes: X input width, Y output width, sizes = (X, D_1, ..., D_{L-1}, Y) for L layers, and any
number of leading axes "..." on the input.
Equations, for layers l = 0..L-1 with a_0 = x:
    (1) z_l = a_l @ W_l + b_l
    (2) a_{l+1} = act(z_l) for hidden layers, out_act(z_l) for the last (identity by default)
Activations: "tanh", "relu" (gradient 0 at the kink z = 0), "identity".
Parameters: `layer{l}.W` (D_l, D_{l+1}) used as `a @ layer{l}.W`, and `layer{l}.b` (D_{l+1},).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import numpy as np

from minimem import autodiff as ad
from minimem.nn.linear import (
    as_float_array, check_finite, check_params, linear_autodiff, linear_backward, linear_forward,
    linear_init, with_prefix,
)

ACTIVATIONS = ("tanh", "relu", "identity")


# ----------------------------------------------------------------- activation pair
def activation_forward(z: np.ndarray, kind: str):
    """a = act(z) elementwise. Returns a (same shape as z) and the cache for activation_backward."""
    if kind == "tanh":
        a = np.tanh(z)
    elif kind == "relu":
        a = np.maximum(z, 0.0)
    elif kind == "identity":
        a = z
    else:
        raise ValueError(f"activation must be one of {ACTIVATIONS}; got {kind!r}")
    return a, (kind, z, a)


def activation_backward(dout: np.ndarray, cache) -> np.ndarray:
    """dz = dout * act'(z): 1 - a^2 for tanh, [z > 0] for relu, 1 for identity."""
    kind, z, a = cache
    if kind == "tanh":
        return dout * (1.0 - a * a)
    if kind == "relu":
        return dout * (z > 0)
    return dout


def activation_autodiff(z, kind: str) -> ad.Tensor:
    """Autodiff twin of activation_forward."""
    if kind not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}; got {kind!r}")
    return ad.tanh(z) if kind == "tanh" else ad.relu(z) if kind == "relu" else ad.as_tensor(z)


# ----------------------------------------------------------------- the stack
def mlp_depth(params: Mapping[str, np.ndarray]) -> int:
    """Number of layers L: the keys must be exactly layer0.W, layer0.b, ..., layer{L-1}.b."""
    L = sum(1 for name in params if name.endswith(".W"))
    expected = [f"layer{l}.{p}" for l in range(L) for p in ("W", "b")]
    if L == 0 or sorted(params) != sorted(expected):
        raise ValueError(f"MLP parameters must be named layer0.W, layer0.b, ..., layer{{L-1}}.b; "
                         f"got {sorted(params)}")
    for l in range(L):
        W, b = np.shape(params[f"layer{l}.W"]), np.shape(params[f"layer{l}.b"])
        previous = np.shape(params[f"layer{l - 1}.W"])[1] if l > 0 else None
        if len(W) != 2 or b != (W[1],) or (previous is not None and W[0] != previous):
            raise ValueError(f"layer{l}.W must have shape (D_{l}, D_{l + 1}) matching the layer before, "
                             f"and layer{l}.b shape (D_{l + 1},); got {W} and {b}")
    return L


class MLPCache(NamedTuple):
    linear: list        # L LinearCache
    activation: list    # L activation caches


def mlp_forward(x: np.ndarray, params: Mapping[str, np.ndarray], activation: str = "tanh",
                output_activation: str = "identity"):
    """Eqs. (1)-(2) for every layer.

    Args:
        x: (..., X) input.
        params: {"layer0.W": (X, D_1), "layer0.b": (D_1,), ..., "layer{L-1}.b": (Y,)}.
        activation: after every hidden layer ("tanh", "relu" or "identity").
        output_activation: after the last layer (default "identity": the MLP ends linear).
    Returns:
        y: (..., Y), and the cache for mlp_backward.
    """
    L = mlp_depth(params)
    a = as_float_array("x", x)
    linear_caches, activation_caches = [], []
    for l in range(L):
        z, lc = linear_forward(a, params[f"layer{l}.W"], params[f"layer{l}.b"])  # (..., D_{l+1})  eq. (1)
        a, ac = activation_forward(z, activation if l < L - 1 else output_activation)  # eq. (2)
        linear_caches.append(lc)
        activation_caches.append(ac)
    return a, MLPCache(linear_caches, activation_caches)


def mlp_backward(dout: np.ndarray, cache: MLPCache):
    """Adjoint of mlp_forward. Returns dx (..., X) and {"layer{l}.W", "layer{l}.b"} gradients."""
    grads = {}
    da = dout
    for l in reversed(range(len(cache.linear))):
        dz = activation_backward(da, cache.activation[l])                    # eq. (2)
        da, grads[f"layer{l}.W"], grads[f"layer{l}.b"] = linear_backward(dz, cache.linear[l])  # eq. (1)
    return da, {f"layer{l}.{p}": grads[f"layer{l}.{p}"] for l in range(len(cache.linear)) for p in ("W", "b")}


def mlp_autodiff(x, tparams: Mapping[str, ad.Tensor], activation: str = "tanh",
                 output_activation: str = "identity") -> ad.Tensor:
    """Autodiff twin of mlp_forward."""
    L = sum(1 for name in tparams if name.endswith(".W"))
    a = ad.as_tensor(x)
    for l in range(L):
        z = linear_autodiff(a, tparams[f"layer{l}.W"], tparams[f"layer{l}.b"])
        a = activation_autodiff(z, activation if l < L - 1 else output_activation)
    return a


# ----------------------------------------------------------------- initialisation and model
def mlp_init(rng: np.random.Generator, sizes: Sequence[int], dtype=np.float64) -> dict:
    """Parameters for sizes (X, D_1, ..., Y): Xavier-uniform weights, zero biases."""
    if len(sizes) < 2:
        raise ValueError(f"sizes must list at least (X, Y); got {tuple(sizes)}")
    params = {}
    for l, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        params.update(with_prefix(f"layer{l}", linear_init(rng, fan_in, fan_out, dtype=dtype)))
    return params


class MLPModel:
    """An MLP as a model: inputs x (..., X) -> outputs (..., Y).

    Parameters: `layer{l}.W` (D_l, D_{l+1}) used as `a @ W`, `layer{l}.b` (D_{l+1},).
    """

    def __init__(self, sizes: Sequence[int], activation: str = "tanh", output_activation: str = "identity",
                 rng: np.random.Generator | None = None, dtype=np.float64):
        for kind in (activation, output_activation):
            if kind not in ACTIVATIONS:
                raise ValueError(f"activation must be one of {ACTIVATIONS}; got {kind!r}")
        rng = np.random.default_rng(0) if rng is None else rng
        self.sizes = tuple(int(n) for n in sizes)
        self.activation, self.output_activation = activation, output_activation
        self.params = mlp_init(rng, self.sizes, dtype)

    def _check(self, x) -> np.ndarray:
        shapes = {}
        for l, (fan_in, fan_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            shapes[f"layer{l}.W"], shapes[f"layer{l}.b"] = (fan_in, fan_out), (fan_out,)
        check_params(self.params, shapes)
        for name, value in self.params.items():
            check_finite(f"parameter {name}", value)
        x = as_float_array("inputs", x)
        if x.ndim < 1 or x.shape[-1] != self.sizes[0]:
            raise ValueError(f"inputs must have shape (..., X) with X={self.sizes[0]}; got {x.shape}")
        check_finite("inputs", x)
        return x

    def forward(self, x):
        x = self._check(x)
        return mlp_forward(x, self.params, self.activation, self.output_activation)

    def backward(self, doutputs, cache) -> dict:
        _, grads = mlp_backward(doutputs, cache)
        return {name: grads[name] for name in self.params}

    def forward_autodiff(self, tparams: Mapping[str, ad.Tensor], x) -> ad.Tensor:
        x = self._check(x)
        return mlp_autodiff(x, tparams, self.activation, self.output_activation)
