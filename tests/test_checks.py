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


# The model configs validate their integer fields with check_int: each must accept NumPy integers,
# reject bools, floats and values below the minimum, and name "Class.field" and the expected range.
def _config_cases():
    from minimem.memory.dnc import DNCConfig
    from minimem.memory.hma import HMAConfig
    from minimem.memory.lsam import LSAMConfig
    from minimem.memory.mnm import MNMConfig
    from minimem.memory.nam_transformer import NAMTransformerConfig
    from minimem.memory.ntm import NTMConfig
    from minimem.memory.sam_state import SAMConfig
    from minimem.memory.sdnc import SDNCConfig
    from minimem.memory.titans_arch import TitansConfig
    return [  # (config class, valid kwargs, field, minimum, message prefix)
        (DNCConfig, dict(X=3, Y=2), "layers", 1, "DNCConfig.layers"),
        (DNCConfig, dict(X=3, Y=2), "link_K", 1, "DNCConfig.link_K"),
        (NTMConfig, dict(X=3, Y=2), "write_heads", 1, "NTMConfig.write_heads"),
        (SAMConfig, dict(X=3, Y=2), "R", 1, "SAMConfig.R"),
        (SAMConfig, dict(X=3, Y=2), "lsh_bits", 1, r"SAMConfig.lsh_bits \(if not None\)"),
        (SDNCConfig, dict(X=3, Y=2), "H", 1, "SDNCConfig.H"),
        (LSAMConfig, dict(X=3, D=4, H=2), "Y", 1, "LSAMConfig.Y"),
        (MNMConfig, dict(X=3, Y=2), "truncate", 1, r"MNMConfig.truncate \(if not None\)"),
        (NAMTransformerConfig, dict(V=5, classes=2), "mlp", 1, "NAMTransformerConfig.mlp"),
        (HMAConfig, dict(D=4, K_c=2), "m", 0, "HMAConfig.m"),
        (TitansConfig, dict(), "N_p", 0, "N_p"),
    ]


@pytest.mark.parametrize("case", range(11))
def test_config_integer_fields_use_check_int(case):
    cls, kwargs, field, minimum, prefix = _config_cases()[case]
    assert getattr(cls(**{**kwargs, field: np.int64(minimum + 1)}), field) == minimum + 1
    for bad in (True, float(minimum + 1), minimum - 1):
        with pytest.raises(ValueError, match=rf"^{prefix} must be an integer >= {minimum}; got "):
            cls(**{**kwargs, field: bad})


def test_bools_are_not_integers_in_the_vma_and_few_shot_options():
    """True == 1 in Python, but an option given as a bool is a mistake: VMA's N, n_dummy and top_k,
    the few-shot metrics' K_b and the NAM Transformer's head_mlp reject it (np.int64 stays fine)."""
    from minimem.memory.nam_transformer import NAMTransformerConfig
    from minimem.memory.vma import VMAConfig
    with pytest.raises(ValueError, match=r"top_k \(if not None\) must be an integer >= 1; got True"):
        VMAConfig(X=16, memory="few_shot", top_k=True)
    with pytest.raises(ValueError, match="n_dummy must be an integer >= 0; got True"):
        VMAConfig(X=16, memory="few_shot", n_dummy=True)
    with pytest.raises(ValueError, match="learned mode needs N >= 1"):
        VMAConfig(X=16, memory="learned", N=True)
    assert VMAConfig(X=16, memory="few_shot", top_k=np.int64(2)).top_k == 2
    assert NAMTransformerConfig(V=5, classes=3, T_max=4, head_mlp=np.int64(8)).head_mlp == 8
    with pytest.raises(ValueError, match=r"head_mlp \(if not None\) must be an integer >= 1"):
        NAMTransformerConfig(V=5, classes=3, T_max=4, head_mlp=0)


def test_check_slot_count():
    from minimem.checks import check_slot_count
    assert check_slot_count("K", "slots read per head", np.int64(3), 4) == 3
    with pytest.raises(ValueError, match=r"K \(slots read per head\) must satisfy 1 <= K <= N = 4; got K = 5"):
        check_slot_count("K", "slots read per head", 5, 4)
    with pytest.raises(ValueError, match=r"K_L \(link sparsity\) must be an integer; got True"):
        check_slot_count("K_L", "link sparsity", True, 4)
