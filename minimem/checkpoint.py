"""Checkpoints: parameters (and optional extra arrays such as optimiser state) in one .npz file,
plus a human-readable JSON sidecar. Never pickled; bit-exact round trip.

Layout of `run.npz` (plain np.savez, uncompressed; every member is a .npy array):

    params/<name>     one array per parameter, under its dotted name (e.g. params/controller.W_x)
    extra/<name>      one array per extra entry (e.g. extra/adam.m.controller.W_x, extra/train.step)
    meta              0-d unicode array holding the JSON metadata below

`run.json` (the sidecar, same path with the .json suffix) holds the same JSON metadata:

    {"format": "minimem.checkpoint", "format_version": 1, "minimem_version": "0.1.0",
     "config": {...} or null,
     "params": [{"name": ..., "shape": [...], "dtype": "float64"}, ...],
     "extra":  [{"name": ..., "shape": [...], "dtype": ...}, ...]}

The .npz is the source of truth: load_checkpoint reads the metadata stored inside it, so a
sidecar from an older save (e.g. an interrupted one) cannot mislead it. Both files are written
atomically (a temporary file in the same directory, then os.replace), so an interrupted save
leaves the previous checkpoint intact. Arrays come back in the order they were saved.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from minimem import __version__

__all__ = ["save_checkpoint", "load_checkpoint", "sidecar_path", "FORMAT", "FORMAT_VERSION"]

FORMAT = "minimem.checkpoint"
FORMAT_VERSION = 1
_ALLOWED_KINDS = "biufc"       # bool, signed/unsigned int, float, complex: no pickle needed


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar of a checkpoint: `run.npz` -> `run.json`."""
    return Path(path).with_suffix(".json")


def _check_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"checkpoint path must end with .npz; got {str(path)!r}")
    return path


def _describe(array: np.ndarray) -> str:
    return f"shape {tuple(array.shape)} {array.dtype}"


def _collect(kind: str, arrays: Mapping[str, Any] | None) -> dict[str, np.ndarray]:
    """Validate a name -> array dict for saving; returns name -> ndarray (no copies)."""
    if arrays is None:
        return {}
    if not isinstance(arrays, Mapping):
        raise ValueError(f"{kind} must be a dict[str, np.ndarray]; got {type(arrays).__name__}")
    out = {}
    for name, array in arrays.items():
        if not isinstance(name, str) or not name or "\x00" in name:
            raise ValueError(f"{kind} names must be non-empty strings without NUL; got {name!r}")
        array = np.asarray(array)
        if array.dtype.kind not in _ALLOWED_KINDS:
            raise ValueError(
                f"{kind} array {name!r} has dtype {array.dtype}, which cannot be stored without "
                f"pickle; checkpoints hold only bool, integer, float and complex arrays")
        out[name] = array
    return out


def _entries(arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    return [{"name": name, "shape": list(a.shape), "dtype": a.dtype.name}
            for name, a in arrays.items()]


def _write_atomically(path: Path, write) -> None:
    """Call write(file) on a temporary file next to `path`, then move it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())        # data on disk before the rename makes it visible
        # mkstemp makes the file private (0600); give it the mode an ordinary file would have.
        os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode) if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:               # includes KeyboardInterrupt: never leave temp files
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_checkpoint(path: str | os.PathLike, params: Mapping[str, np.ndarray],
                    config: Mapping[str, Any] | None = None,
                    extra: Mapping[str, np.ndarray] | None = None) -> None:
    """Write `params` (and `extra` arrays) to `path` (.npz) and the JSON sidecar (.json).

    Args:
        path: destination ending in .npz; its directory must exist.
        params: name -> array (dotted names are fine).
        config: JSON-serialisable dict (e.g. the model and training settings), or None.
            Stored as JSON, so tuples come back as lists; nan/inf are not allowed.
        extra: name -> array for anything else (optimiser state, step counter, loss history).
    Raises:
        ValueError: path not ending in .npz, a non-string name, an array that would need pickle
            (object, string, structured dtypes), or a config that is not JSON-serialisable.
    """
    path = _check_path(path)
    params_arrays = _collect("params", params)
    extra_arrays = _collect("extra", extra)
    if config is not None and not isinstance(config, Mapping):
        raise ValueError(f"config must be a dict or None; got {type(config).__name__}")
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "minimem_version": __version__,
            "config": None if config is None else dict(config),
            "params": _entries(params_arrays), "extra": _entries(extra_arrays)}
    try:
        meta_json = json.dumps(meta, indent=1, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config must be JSON-serialisable (no nan/inf): {err}") from None

    members = {f"params/{name}": a for name, a in params_arrays.items()}
    members.update({f"extra/{name}": a for name, a in extra_arrays.items()})
    members["meta"] = np.array(meta_json)
    _write_atomically(path, lambda f: np.savez(f, allow_pickle=False, **members))
    _write_atomically(sidecar_path(path), lambda f: f.write((meta_json + "\n").encode("utf-8")))


def _read_meta(path: Path, data: np.lib.npyio.NpzFile) -> dict[str, Any]:
    if "meta" not in data.files:
        raise ValueError(f"{path} is not a minimem checkpoint (no 'meta' member)")
    try:
        meta = json.loads(str(data["meta"].item()))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: unreadable checkpoint metadata: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a minimem checkpoint (format {meta.get('format')!r})"
                         if isinstance(meta, dict) else f"{path}: malformed metadata")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format version {version!r}; this minimem "
                         f"({__version__}) reads versions up to {FORMAT_VERSION}")
    return meta


def _read_arrays(path: Path, data: np.lib.npyio.NpzFile, meta: dict[str, Any],
                 kind: str) -> dict[str, np.ndarray]:
    out = {}
    for entry in meta.get(kind, []):
        name = entry["name"]
        key = f"{kind}/{name}"
        if key not in data.files:
            raise ValueError(f"{path}: {kind} array {name!r} is listed in the metadata "
                             f"but missing from the file")
        try:
            out[name] = data[key]
        except ValueError as err:      # e.g. an object array: refused with allow_pickle=False
            raise ValueError(f"{path}: {kind} array {name!r} cannot be loaded without pickle "
                             f"({err}); minimem checkpoints never use pickle") from None
    listed = {f"{kind}/{e['name']}" for e in meta.get(kind, [])}
    unlisted = [f for f in data.files if f.startswith(f"{kind}/") and f not in listed]
    if unlisted:
        raise ValueError(f"{path}: members {unlisted} are not listed in the metadata")
    return out


def _compare(path: Path, found: dict[str, np.ndarray],
             expected: Mapping[str, np.ndarray]) -> None:
    """Raise one ValueError listing every missing, unexpected or mis-shaped/-typed array."""
    problems = []
    missing = [name for name in expected if name not in found]
    unexpected = [name for name in found if name not in expected]
    for name in missing:
        want = np.asarray(expected[name])
        renamed = [u for u in unexpected
                   if found[u].shape == want.shape and found[u].dtype == want.dtype]
        hint = f" (renamed? {renamed[0]!r} has that shape)" if renamed else ""
        problems.append(f"missing array {name!r}: expected {_describe(want)}, "
                        f"found nothing{hint}")
    for name in unexpected:
        problems.append(f"unexpected array {name!r} ({_describe(found[name])}) is not "
                        f"among the expected names")
    for name, want in expected.items():
        if name in found:
            want = np.asarray(want)
            got = found[name]
            if got.shape != want.shape or got.dtype != want.dtype:
                problems.append(f"array {name!r}: expected {_describe(want)}, "
                                f"found {_describe(got)}")
    if problems:
        raise ValueError(f"checkpoint {path} does not match the expected arrays:\n  "
                         + "\n  ".join(problems))


def load_checkpoint(path: str | os.PathLike, expected: Mapping[str, np.ndarray] | None = None
                    ) -> tuple[dict[str, np.ndarray], dict[str, Any] | None,
                               dict[str, np.ndarray]]:
    """Read a checkpoint written by save_checkpoint (with allow_pickle=False).

    Args:
        path: the .npz file. The JSON sidecar is not needed (the metadata is inside the .npz).
        expected: optional name -> array (e.g. a model's current params). When given, the
            loaded params must have exactly these names, shapes and dtypes.
    Returns:
        (params, config, extra): new arrays, bit-identical to the saved ones, in saved order;
        config is the saved dict (JSON round trip) or None.
    Raises:
        FileNotFoundError: no such file.
        ValueError: not a minimem checkpoint, a newer format version, an array that needs
            pickle, or (with `expected`) any missing, unexpected/renamed or mis-shaped or
            mis-typed array; the message names each one with expected and found shape/dtype.
    """
    path = _check_path(path)
    data = np.load(path, allow_pickle=False)
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is not a minimem checkpoint (not an .npz archive)")
    with data:
        meta = _read_meta(path, data)
        params = _read_arrays(path, data, meta, "params")
        extra = _read_arrays(path, data, meta, "extra")
    if expected is not None:
        if not isinstance(expected, Mapping):
            raise ValueError(f"expected must be a dict of arrays or None; "
                             f"got {type(expected).__name__}")
        _compare(path, params, expected)
    return params, meta.get("config"), extra
