"""minimem.checks: the shared option checks accept what they promise and name what they expected."""

import numpy as np
import pytest

from minimem.checks import check_float_dtype, check_int, check_probability, check_rng


def test_check_int():
    assert check_int("n", np.int32(3), 1) == 3 and type(check_int("n", np.int32(3), 1)) is int
    assert check_int("n", 5, 1, 5) == 5
    for bad, match in [(True, "n must be an integer >= 1; got True"), (2.0, "got 2.0"), (0, "got 0"),
                       ("3", "got '3'")]:
        with pytest.raises(ValueError, match=match):
            check_int("n", bad, 1)
    with pytest.raises(ValueError, match=r"n must be an integer in 1\.\.5; got 6"):
        check_int("n", 6, 1, 5)


def test_check_probability():
    assert check_probability("p", 0) == 0.0 and check_probability("p", np.float32(0.5)) == 0.5
    for bad in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match=r"p must be a probability in \[0, 1\]"):
            check_probability("p", bad)


def test_check_rng_and_dtype():
    rng = np.random.default_rng(0)
    assert check_rng(rng) is rng
    with pytest.raises(ValueError, match=r"rng must be a np.random.Generator .*got RandomState"):
        check_rng(np.random.RandomState(0))
    assert check_float_dtype("float32") == np.float32
    for bad in (np.int64, "not a dtype"):
        with pytest.raises(ValueError, match="dtype must be a floating-point type"):
            check_float_dtype(bad)
