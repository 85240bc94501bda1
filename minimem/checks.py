"""Validation of plain options shared across minimem: integers in a range, probabilities, random
generators and float dtypes. Each returns the value in its canonical type or raises ValueError naming
what was expected (DESIGN.md: bad input gets a clear ValueError, nothing is silently converted).
Array shapes and model configs have their own, more specific checks beside the code that uses them.
"""

from __future__ import annotations

import numpy as np


def check_int(name: str, value, minimum: int, maximum: int | None = None) -> int:
    """value as int if it is an integer (not a bool, not a float) in [minimum, maximum]."""
    expected = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer {expected}; got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an integer {expected}; got {value}")
    return int(value)


def check_slot_count(symbol: str, meaning: str, value, N: int) -> int:
    """value as int if it is an integer with 1 <= value <= N, the number of memory slots; the message
    names the symbol, what it counts and N: "K (slots read per head) must satisfy 1 <= K <= N = 8"."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{symbol} ({meaning}) must be an integer; got {value!r}")
    if not 1 <= value <= N:
        raise ValueError(f"{symbol} ({meaning}) must satisfy 1 <= {symbol} <= N = {N}; got {symbol} = {value}")
    return int(value)


def check_probability(name: str, value) -> float:
    """value as float if it is a real number (not a bool) in [0, 1]."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1]; got {value!r}")
    return float(value)


def check_rng(rng) -> np.random.Generator:
    """rng itself if it is a np.random.Generator (DESIGN.md: randomness only through a Generator)."""
    if not isinstance(rng, np.random.Generator):
        raise ValueError("rng must be a np.random.Generator (e.g. np.random.default_rng(0)); "
                         f"got {type(rng).__name__}")
    return rng


def check_float_dtype(dtype) -> np.dtype:
    """dtype as np.dtype if it names a floating-point type (float64, float32, ...)."""
    try:
        dtype = np.dtype(dtype)
    except TypeError as err:
        raise ValueError(f"dtype must be a floating-point type (float64 or float32); got {dtype!r}") from err
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating-point type (float64 or float32); got {dtype}")
    return dtype
