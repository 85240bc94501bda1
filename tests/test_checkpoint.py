"""Tests for minimem.checkpoint: bit-exact round trips, the JSON sidecar, mismatch errors that
name the array, no pickle, and atomic writes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minimem
from minimem import checkpoint
from minimem.checkpoint import load_checkpoint, save_checkpoint, sidecar_path


def special_values(dtype) -> np.ndarray:
    info = np.finfo(dtype)
    return np.array([0.0, -0.0, 1.0, -1.5, info.max, -info.max, info.tiny, info.smallest_subnormal,
                     -info.smallest_subnormal, 3 * info.smallest_subnormal, info.eps, np.inf,
                     -np.inf, np.nan, 1e-300 if dtype == np.float64 else 1e-40], dtype=dtype)


def assert_bit_identical(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_round_trip_is_bit_exact(tmp_path, dtype):
    rng = np.random.default_rng(0)
    params = {"controller.W_x": rng.standard_normal((4, 8)).astype(dtype),
              "controller.b": special_values(dtype),
              "read0.key.W": np.asfortranarray(rng.standard_normal((3, 5)).astype(dtype)),
              "memory.init": np.array(-0.0, dtype=dtype)}
    extra = {"adam.m.controller.W_x": np.zeros((4, 8), dtype=dtype),
             "adam.step": np.array(17, dtype=np.int64), "mask": np.array([True, False])}
    config = {"N": 8, "W": 4, "name": "ntm", "sizes": [1, 2], "nested": {"lr": 1e-3}}
    path = tmp_path / "run.npz"
    save_checkpoint(path, params, config=config, extra=extra)

    loaded, loaded_config, loaded_extra = load_checkpoint(path, expected=params)
    assert list(loaded) == list(params)                     # saved order is kept
    for name in params:
        assert_bit_identical(loaded[name], params[name])
    assert list(loaded_extra) == list(extra)
    for name in extra:
        assert_bit_identical(loaded_extra[name], extra[name])
    assert loaded_config == config
    assert np.signbit(loaded["memory.init"])                # -0.0 kept
    assert loaded["controller.b"][7] == np.finfo(dtype).smallest_subnormal


def test_sidecar_describes_the_checkpoint(tmp_path):
    path = tmp_path / "run.npz"
    save_checkpoint(path, {"a.b": np.zeros((2, 3), np.float32)}, config={"seed": 1},
                    extra={"train.step": np.array(5)})
    assert sidecar_path(path) == tmp_path / "run.json"
    meta = json.loads((tmp_path / "run.json").read_text())
    assert meta["format"] == "minimem.checkpoint" and meta["format_version"] == 1
    assert meta["minimem_version"] == minimem.__version__
    assert meta["config"] == {"seed": 1}
    assert meta["params"] == [{"name": "a.b", "shape": [2, 3], "dtype": "float32"}]
    assert meta["extra"][0]["name"] == "train.step"
    assert sorted(os.listdir(tmp_path)) == ["run.json", "run.npz"]   # no temp files left


names = st.from_regex(r"[a-z][a-z0-9_]{0,4}(\.[A-Za-z0-9_]{1,4}){0,3}", fullmatch=True)
arrays = st.one_of(
    hnp.arrays(st.sampled_from([np.float64, np.float32, np.float16]),
               hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
               elements=None),                              # any value: nan, inf, -0.0, subnormals
    hnp.arrays(st.sampled_from([np.int64, np.int8, np.uint16, np.bool_, np.complex128]),
               hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3)))


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=st.dictionaries(names, arrays, max_size=5), extra=st.dictionaries(names, arrays,
                                                                                max_size=3))
def test_round_trip_property(tmp_path, params, extra):
    path = tmp_path / "prop.npz"
    save_checkpoint(path, params, extra=extra)
    loaded, config, loaded_extra = load_checkpoint(path, expected=params)
    assert config is None
    assert list(loaded) == list(params) and list(loaded_extra) == list(extra)
    for name in params:
        assert_bit_identical(loaded[name], params[name])
    for name in extra:
        assert_bit_identical(loaded_extra[name], extra[name])


# ----------------------------------------------------------------- expected-array checks
@pytest.fixture
def saved(tmp_path):
    params = {"controller.W_x": np.ones((4, 8)), "controller.b": np.zeros(8)}
    path = tmp_path / "model.npz"
    save_checkpoint(path, params)
    return path, params


def test_missing_array_is_named_with_expected_shape(saved):
    path, params = saved
    expected = {**params, "read0.key.W": np.zeros((8, 3))}
    with pytest.raises(ValueError, match=r"missing array 'read0\.key\.W': expected shape \(8, 3\)"):
        load_checkpoint(path, expected=expected)


def test_renamed_array_is_named_both_ways(saved):
    path, params = saved
    expected = {"controller.W_in": params["controller.W_x"], "controller.b": params["controller.b"]}
    with pytest.raises(ValueError) as err:
        load_checkpoint(path, expected=expected)
    message = str(err.value)
    assert "missing array 'controller.W_in'" in message
    assert "unexpected array 'controller.W_x'" in message
    assert "renamed?" in message


def test_extra_array_in_checkpoint_is_named(saved):
    path, params = saved
    with pytest.raises(ValueError, match=r"unexpected array 'controller\.b'"):
        load_checkpoint(path, expected={"controller.W_x": params["controller.W_x"]})


def test_misshaped_and_mistyped_arrays_are_named(saved):
    path, params = saved
    with pytest.raises(ValueError, match=r"'controller\.W_x': expected shape \(4, 9\) float64, "
                                         r"found shape \(4, 8\) float64"):
        load_checkpoint(path, expected={**params, "controller.W_x": np.ones((4, 9))})
    with pytest.raises(ValueError, match=r"'controller\.b': expected shape \(8,\) float32, "
                                         r"found shape \(8,\) float64"):
        load_checkpoint(path, expected={**params, "controller.b": np.zeros(8, np.float32)})


# ----------------------------------------------------------------- no pickle, bad files
def test_object_array_cannot_be_saved(tmp_path):
    path = tmp_path / "obj.npz"
    with pytest.raises(ValueError, match=r"'bad'.*object.*pickle"):
        save_checkpoint(path, {"bad": np.array([1, None], dtype=object)})
    with pytest.raises(ValueError, match=r"'s'.*pickle"):
        save_checkpoint(path, {"ok": np.ones(2)}, extra={"s": np.array(["text"])})
    assert not path.exists() and os.listdir(tmp_path) == []


def test_object_array_in_a_crafted_file_is_refused_on_load(tmp_path):
    path = tmp_path / "crafted.npz"
    save_checkpoint(path, {"w": np.ones(2)})
    with np.load(path) as data:
        meta = data["meta"]
    # Someone writes an object array (pickled) under a listed name.
    np.savez(path, **{"params/w": np.array([{"evil": 1}, None], dtype=object), "meta": meta},
             allow_pickle=True)
    with pytest.raises(ValueError, match=r"'w' cannot be loaded without pickle"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    plain = tmp_path / "plain.npz"
    np.savez(plain, w=np.ones(2))
    with pytest.raises(ValueError, match="not a minimem checkpoint"):
        load_checkpoint(plain)
    npy = tmp_path / "array.npz"
    with open(npy, "wb") as f:
        np.save(f, np.ones(3))
    with pytest.raises(ValueError, match="not a minimem checkpoint"):
        load_checkpoint(npy)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.npz")
    with pytest.raises(ValueError, match=r"\.npz"):
        save_checkpoint(tmp_path / "model.ckpt", {"w": np.ones(2)})


def test_newer_format_version_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "future.npz"
    monkeypatch.setattr(checkpoint, "FORMAT_VERSION", 99)
    save_checkpoint(path, {"w": np.ones(2)})
    monkeypatch.setattr(checkpoint, "FORMAT_VERSION", 1)
    with pytest.raises(ValueError, match="format version 99"):
        load_checkpoint(path)


def test_config_must_be_json(tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path / "c.npz", {"w": np.ones(1)}, config={"f": object()})
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path / "c.npz", {"w": np.ones(1)}, config={"lr": float("nan")})
    with pytest.raises(ValueError, match="NUL"):
        save_checkpoint(tmp_path / "c.npz", {"a\x00b": np.ones(1)})


# ----------------------------------------------------------------- atomic writes
@pytest.mark.parametrize("interruption", [KeyboardInterrupt, OSError])
def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch, interruption):
    path = tmp_path / "run.npz"
    old = {"w": np.arange(6.0).reshape(2, 3)}
    save_checkpoint(path, old, config={"step": 1})
    real_savez = np.savez

    def savez_then_die(file, *args, **kwargs):
        real_savez(file, *args, **kwargs)
        file.truncate(10)                                    # a half-written archive
        raise interruption("simulated interruption during the write")

    monkeypatch.setattr(checkpoint.np, "savez", savez_then_die)
    with pytest.raises(interruption):
        save_checkpoint(path, {"w": np.zeros((2, 3))}, config={"step": 2})
    monkeypatch.undo()

    params, config, _ = load_checkpoint(path)
    assert_bit_identical(params["w"], old["w"])
    assert config == {"step": 1}
    assert json.loads(sidecar_path(path).read_text())["config"] == {"step": 1}
    assert sorted(os.listdir(tmp_path)) == ["run.json", "run.npz"]


def test_npz_is_the_source_of_truth_over_a_stale_sidecar(tmp_path):
    path = tmp_path / "run.npz"
    save_checkpoint(path, {"w": np.ones(2)}, config={"step": 2})
    sidecar_path(path).write_text('{"config": {"step": 1}}')     # e.g. left by an older save
    assert load_checkpoint(path)[1] == {"step": 2}
