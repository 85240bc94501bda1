"""Affine map y = x @ W + b: the building block of every controller, readout and projection.

Shapes: X input width, Y output width, and any number of leading axes "...", e.g. (B, X) inside a
step or (T, B, X) over a sequence.
Layouts: `W`: (X, Y), used as `x @ W` (PyTorch's `nn.Linear.weight` is `W.T`); `b`: (Y,).
Parameter names: `W`, `b`, prefixed by the owner (`readout.W`, `read0.key.W`).

This module also holds the few helpers every nn module shares: float-array checks and the dotted
prefixes of parameter dicts. Initialisers come from minimem.init.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem import init


# ----------------------------------------------------------------- shared helpers
def as_float_array(name: str, x) -> np.ndarray:
    """x as a float32 or float64 ndarray (integers and booleans become float64; no copy otherwise)."""
    x = np.asarray(x)
    if x.dtype.kind in "iub":
        return x.astype(np.float64)
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"{name} must be a float32 or float64 array; got dtype {x.dtype}")
    return x


def check_finite(name: str, x: np.ndarray) -> None:
    """ValueError if x holds NaN or inf (the model classes check inputs and parameters with it)."""
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite; it contains NaN or inf")


def check_params(params: Mapping[str, np.ndarray], shapes: Mapping[str, tuple]) -> None:
    """ValueError unless params holds exactly the keys of `shapes`, each with that shape."""
    if set(params) != set(shapes):
        raise ValueError(f"parameters must be {sorted(shapes)}; got {sorted(params)}")
    for name, shape in shapes.items():
        if np.shape(params[name]) != tuple(shape):
            raise ValueError(f"parameter {name} must have shape {tuple(shape)}; got {np.shape(params[name])}")


def with_prefix(prefix: str, params: Mapping) -> dict:
    """{"W": .} -> {"prefix.W": .}; the same order."""
    return {f"{prefix}.{name}": value for name, value in params.items()}


def strip_prefix(prefix: str, params: Mapping) -> dict:
    """The entries named "prefix.<name>", as {"<name>": .}; the same order."""
    start = prefix + "."
    return {name[len(start):]: value for name, value in params.items() if name.startswith(start)}


def scatter_add_rows(out: np.ndarray, index: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """out[index[i]] += rows[i] for every i, repeated indices accumulating (np.add.at(out, index,
    rows), e.g. an embedding table's gradient), 2-4x faster: the rows are sorted by index (stably)
    and each index's run summed once. index: (...) integers into out's first axis; rows:
    index.shape + out.shape[1:]. Returns out (modified in place); equal to np.add.at up to round-off."""
    flat = np.asarray(index).reshape(-1)
    rows = np.asarray(rows).reshape((flat.size,) + out.shape[1:])
    if flat.size == 0:
        return out
    order = np.argsort(flat, kind="stable")
    keys = flat[order]
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))   # first row of each index
    out[keys[starts]] += np.add.reduceat(rows[order], starts, axis=0)
    return out


# ----------------------------------------------------------------- forward / backward pair
class LinearCache(NamedTuple):
    x: np.ndarray        # (..., X) input
    W: np.ndarray        # (X, Y) weight
    has_bias: bool       # whether b was given


def _check_linear(x, W, b):
    x, W = as_float_array("x", x), as_float_array("W", W)
    if W.ndim != 2:
        raise ValueError(f"W must have shape (X, Y); got {W.shape}")
    if x.ndim < 1 or x.shape[-1] != W.shape[0]:
        raise ValueError(f"x must have shape (..., X) with X={W.shape[0]}; got {x.shape}")
    if b is not None:
        b = as_float_array("b", b)
        if b.shape != (W.shape[1],):
            raise ValueError(f"b must have shape (Y,) with Y={W.shape[1]}; got {b.shape}")
    return x, W, b


def linear_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray | None = None):
    """y = x @ W + b.

    Args:
        x: (..., X) input; every leading axis is a batch axis.
        W: (X, Y) weight, used as `x @ W`.
        b: (Y,) bias, or None for no bias.
    Returns:
        y: (..., Y), and the cache for linear_backward.
    """
    x, W, b = _check_linear(x, W, b)
    y = _rows_matmul(x, W)                                     # (..., Y)
    if b is not None:
        if y.dtype == np.result_type(y, b):
            y += b                                             # y is a new array
        else:
            y = y + b
    return y, LinearCache(x, W, b is not None)


def _rows_matmul(x: np.ndarray, W: np.ndarray) -> np.ndarray:
    """x (..., X) @ W (X, Y) as one 2-D product over all leading axes (np.matmul would run one
    BLAS call per leading index: several times slower for (B, T, X) inputs with short T)."""
    if x.ndim <= 2:
        return x @ W
    return (x.reshape(-1, x.shape[-1]) @ W).reshape(x.shape[:-1] + (W.shape[1],))


def linear_backward(dout: np.ndarray, cache: LinearCache):
    """Adjoint of linear_forward. Returns (dx (..., X), dW (X, Y), db (Y,) or None if no bias)."""
    x, W, has_bias = cache
    X, Y = W.shape
    if dout.shape != x.shape[:-1] + (Y,):
        raise ValueError(f"dout must have the output's shape {x.shape[:-1] + (Y,)}; got {dout.shape}")
    dx = _rows_matmul(dout, W.T)                               # (..., X)
    dW = x.reshape(-1, X).T @ dout.reshape(-1, Y)              # (X, Y), summed over every leading axis
    db = dout.reshape(-1, Y).sum(axis=0) if has_bias else None  # (Y,)
    return dx, dW, db


# ----------------------------------------------------------------- autodiff twin
def linear_autodiff(x, W, b=None) -> ad.Tensor:
    """Autodiff twin of linear_forward: x (..., X) @ W (X, Y) + b (Y,)."""
    y = ad.matmul(x, W)                                        # (..., Y)
    return y if b is None else y + b


linear_op = ad.custom_op(linear_forward, linear_backward, name="nn.linear")


# ----------------------------------------------------------------- initialisation and model
def linear_init(rng: np.random.Generator, X: int, Y: int, bias: bool = True, dtype=np.float64) -> dict:
    """{"W": (X, Y) Xavier-uniform, "b": (Y,) zeros} (no "b" when bias=False)."""
    params = {"W": init.xavier_uniform(rng, (X, Y), dtype=dtype)}
    if bias:
        params["b"] = init.zeros(rng, Y, dtype=dtype)
    return params


class LinearModel:
    """A linear map as a model for gradcheck and training: inputs x (..., X) -> outputs (..., Y).

    Parameters: `W` (X, Y) used as `x @ W`, `b` (Y,).
    """

    def __init__(self, X: int, Y: int, rng: np.random.Generator | None = None, dtype=np.float64):
        rng = np.random.default_rng(0) if rng is None else rng
        self.X, self.Y = X, Y
        self.params = linear_init(rng, X, Y, dtype=dtype)

    def _check(self, x) -> np.ndarray:
        check_params(self.params, {"W": (self.X, self.Y), "b": (self.Y,)})
        for name, value in self.params.items():
            check_finite(f"parameter {name}", value)
        x = as_float_array("x", x)
        if x.ndim < 1 or x.shape[-1] != self.X:
            raise ValueError(f"inputs must have shape (..., X) with X={self.X}; got {x.shape}")
        check_finite("inputs", x)
        return x

    def forward(self, x):
        """outputs (..., Y) and the cache for backward."""
        x = self._check(x)
        return linear_forward(x, self.params["W"], self.params["b"])

    def backward(self, doutputs, cache) -> dict:
        _, dW, db = linear_backward(doutputs, cache)
        return {"W": dW, "b": db}

    def forward_autodiff(self, tparams: Mapping[str, ad.Tensor], x) -> ad.Tensor:
        x = self._check(x)
        return linear_autodiff(x, tparams["W"], tparams["b"])
