"""Central finite differences in float64: the oracle every backward pass in minimem is checked against.

The first tools here are the ones unit tests use directly:

    numeric_grad(f, x)                 d f / d x of a scalar function, every coordinate
    numeric_vjp(f, inputs, dout)       the vector-Jacobian product <dout, d f(inputs) / d inputs[i]>
    assert_grads_close(a, n, names)    compare analytic and numeric gradients, naming the worst entry

Relative error is measured as |a - n| / max(|a|, |n|, floor), which is safe near zero: two tiny
numbers that agree to the floor count as equal.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

DEFAULT_EPS = 1e-6
DEFAULT_RTOL = 1e-6
DEFAULT_ATOL = 1e-8


def relative_error(analytic: np.ndarray, numeric: np.ndarray, floor: float = DEFAULT_ATOL) -> np.ndarray:
    """Elementwise |a - n| / max(|a|, |n|, floor), safe near zero."""
    analytic = np.asarray(analytic, dtype=np.float64)
    numeric = np.asarray(numeric, dtype=np.float64)
    scale = np.maximum(np.maximum(np.abs(analytic), np.abs(numeric)), floor)
    return np.abs(analytic - numeric) / scale


def numeric_grad(f: Callable[[np.ndarray], float], x: np.ndarray, eps: float = DEFAULT_EPS) -> np.ndarray:
    """Central-difference gradient of the scalar function f at x, every coordinate, in float64.

    x is not mutated: a float64 copy is perturbed one coordinate at a time.
    """
    x = np.array(x, dtype=np.float64, copy=True)
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        orig = flat[i]
        flat[i] = orig + eps
        f_plus = float(f(x))
        flat[i] = orig - eps
        f_minus = float(f(x))
        flat[i] = orig
        gflat[i] = (f_plus - f_minus) / (2.0 * eps)
    return grad


def numeric_vjp(
    f: Callable[..., np.ndarray | Sequence[np.ndarray]],
    inputs: Sequence[np.ndarray],
    dout: np.ndarray | Sequence[np.ndarray],
    eps: float = DEFAULT_EPS,
) -> tuple[np.ndarray, ...]:
    """Central-difference vector-Jacobian products of f at inputs.

    Args:
        f: takes the arrays in `inputs` positionally and returns one array, or a tuple of arrays.
        inputs: the arrays at which to differentiate (float64 copies are perturbed).
        dout: the upstream gradient, shaped like f's output (a tuple if f returns a tuple).
    Returns:
        One array per input, shaped like it: the gradient of sum(dout * f(inputs)).
    """
    inputs = [np.array(x, dtype=np.float64, copy=True) for x in inputs]
    douts = dout if isinstance(dout, (tuple, list)) else (dout,)

    def scalar(*args):
        out = f(*args)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if len(outs) != len(douts):
            raise ValueError(f"f returned {len(outs)} outputs but {len(douts)} upstream gradients were given")
        return sum(float(np.sum(np.asarray(o, dtype=np.float64) * d)) for o, d in zip(outs, douts))

    grads = []
    for i in range(len(inputs)):
        def f_i(x_i, i=i):
            args = list(inputs)
            args[i] = x_i
            return scalar(*args)
        grads.append(numeric_grad(f_i, inputs[i], eps))
    return tuple(grads)


def assert_grads_close(
    analytic: Sequence[np.ndarray],
    numeric: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> None:
    """Raise AssertionError naming the first tensor (and its worst index) whose gradients disagree.

    An entry passes when |a - n| <= atol or relative_error(a, n) <= rtol.
    """
    if isinstance(analytic, np.ndarray):
        analytic, numeric = (analytic,), (numeric,)
    names = list(names) if names is not None else [f"input{i}" for i in range(len(analytic))]
    if not (len(analytic) == len(numeric) == len(names)):
        raise ValueError(f"got {len(analytic)} analytic, {len(numeric)} numeric gradients and {len(names)} names")
    for name, a, n in zip(names, analytic, numeric):
        a = np.asarray(a, dtype=np.float64)
        n = np.asarray(n, dtype=np.float64)
        if a.shape != n.shape:
            raise AssertionError(f"{name}: analytic gradient has shape {a.shape}, numeric {n.shape}")
        if a.size == 0:
            continue
        abs_err = np.abs(a - n)
        rel = relative_error(a, n, floor=atol)
        bad = (abs_err > atol) & (rel > rtol)
        if np.any(bad):
            worst = np.unravel_index(int(np.argmax(np.where(bad, rel, -1.0))), a.shape)
            raise AssertionError(
                f"{name}: gradients differ at {tuple(int(i) for i in worst)}: analytic {a[worst]:.10g}, "
                f"numeric {n[worst]:.10g} (rel {rel[worst]:.3g}, abs {abs_err[worst]:.3g}); "
                f"{int(bad.sum())} of {a.size} entries out of tolerance"
            )
