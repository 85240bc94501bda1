"""Parameter initialisers drawing from an explicit np.random.Generator.

Every initialiser has the signature `f(rng, shape, ..., dtype=np.float64) -> np.ndarray`, so
they are interchangeable in a table of initialisers (`zeros` accepts and ignores its rng).
Samples are drawn in float64 and then cast, so a float32 parameter is the float64 one rounded:
the same seed gives the same model in both precisions.

Weight layout follows the library convention `x @ W`: the second-to-last axis is the input and
the last axis the output, with any leading axes forming the receptive field (for example a
conv kernel (kh, kw, C_in, C_out)). Hence, as in Glorot & Bengio (2010):

    fan_in  = prod(shape[:-2]) * shape[-2]
    fan_out = prod(shape[:-2]) * shape[-1]

    xavier_uniform: U(-a, a),   a = gain * sqrt(6 / (fan_in + fan_out))
    xavier_normal:  N(0, s^2),  s = gain * sqrt(2 / (fan_in + fan_out))
    orthogonal:     the Q factor of a Gaussian matrix (Saxe et al., 2014), signs fixed so it is
                    uniformly (Haar) distributed; shape is viewed as (prod(shape[:-1]), shape[-1])
                    and the result has orthonormal columns (tall) or rows (wide), times gain
    uniform:        U(-scale, scale)
    normal:         N(0, std^2)
    zeros:          0
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import DTypeLike

from minimem.checks import check_float_dtype, check_rng

__all__ = ["fans", "xavier_uniform", "xavier_normal", "orthogonal", "uniform", "normal", "zeros"]

Shape = int | Sequence[int]


def _check_shape(shape: Shape) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    try:
        shape = tuple(int(n) for n in shape)
    except TypeError:
        raise ValueError(f"shape must be an int or a sequence of ints; got {shape!r}") from None
    if any(n < 0 for n in shape):
        raise ValueError(f"shape must have non-negative sizes; got {shape}")
    return shape


def _check_nonnegative(name: str, value: float) -> float:
    value = float(value)
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0; got {value}")
    return value


def fans(shape: Shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight used as `x @ W` (see the module docstring).

    Raises:
        ValueError: fewer than 2 axes (a vector has no input/output split; use zeros or uniform).
    """
    shape = _check_shape(shape)
    if len(shape) < 2:
        raise ValueError(f"fan_in/fan_out need a shape with at least 2 axes (.., in, out); "
                         f"got {shape}")
    receptive = math.prod(shape[:-2])
    return receptive * shape[-2], receptive * shape[-1]


def xavier_uniform(rng: np.random.Generator, shape: Shape, gain: float = 1.0,
                   dtype: DTypeLike = np.float64) -> np.ndarray:
    """Glorot & Bengio (2010) uniform: U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))."""
    rng, shape, dtype = check_rng(rng), _check_shape(shape), check_float_dtype(dtype)
    gain = _check_nonnegative("gain", gain)
    fan_in, fan_out = fans(shape)
    bound = gain * math.sqrt(6.0 / max(fan_in + fan_out, 1))
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def xavier_normal(rng: np.random.Generator, shape: Shape, gain: float = 1.0,
                  dtype: DTypeLike = np.float64) -> np.ndarray:
    """Glorot & Bengio (2010) normal: N(0, s^2), s = gain * sqrt(2 / (fan_in + fan_out))."""
    rng, shape, dtype = check_rng(rng), _check_shape(shape), check_float_dtype(dtype)
    gain = _check_nonnegative("gain", gain)
    fan_in, fan_out = fans(shape)
    std = gain * math.sqrt(2.0 / max(fan_in + fan_out, 1))
    return (std * rng.standard_normal(shape)).astype(dtype)


def orthogonal(rng: np.random.Generator, shape: Shape, gain: float = 1.0,
               dtype: DTypeLike = np.float64) -> np.ndarray:
    """A (semi-)orthogonal matrix times gain (Saxe et al., 2014), for any shape with >= 2 axes.

    The shape is viewed as a matrix (rows, cols) = (prod(shape[:-1]), shape[-1]). A Gaussian
    (max, min) matrix is QR-factorised; multiplying Q's columns by sign(diag(R)) makes the
    result Haar-distributed (Mezzadri, 2007). Tall results (rows >= cols) have orthonormal
    columns, W^T W = I; wide ones orthonormal rows, W W^T = I.
    """
    rng, shape, dtype = check_rng(rng), _check_shape(shape), check_float_dtype(dtype)
    gain = _check_nonnegative("gain", gain)
    if len(shape) < 2:
        raise ValueError(f"orthogonal needs a shape with at least 2 axes; got {shape}")
    rows, cols = math.prod(shape[:-1]), shape[-1]
    if rows == 0 or cols == 0:
        return np.zeros(shape, dtype=dtype)
    gaussian = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(gaussian)                             # q: (max, min) orthonormal columns
    signs = np.where(np.diag(r) < 0, -1.0, 1.0)               # sign fix; a zero counts as +
    q = q * signs                                             # (max, min)
    if rows < cols:
        q = q.T                                               # (rows, cols) orthonormal rows
    return (gain * q).reshape(shape).astype(dtype)


def uniform(rng: np.random.Generator, shape: Shape, scale: float,
            dtype: DTypeLike = np.float64) -> np.ndarray:
    """U(-scale, scale), elementwise."""
    rng, shape, dtype = check_rng(rng), _check_shape(shape), check_float_dtype(dtype)
    scale = _check_nonnegative("scale", scale)
    return rng.uniform(-scale, scale, size=shape).astype(dtype)


def normal(rng: np.random.Generator, shape: Shape, std: float,
           dtype: DTypeLike = np.float64) -> np.ndarray:
    """N(0, std^2), elementwise."""
    rng, shape, dtype = check_rng(rng), _check_shape(shape), check_float_dtype(dtype)
    std = _check_nonnegative("std", std)
    return (std * rng.standard_normal(shape)).astype(dtype)


def zeros(rng: np.random.Generator | None, shape: Shape,
          dtype: DTypeLike = np.float64) -> np.ndarray:
    """All zeros. `rng` is accepted (and unused, may be None) so every initialiser has the
    same signature f(rng, shape, ...)."""
    if rng is not None:
        check_rng(rng)
    return np.zeros(_check_shape(shape), dtype=check_float_dtype(dtype))
