"""Golden vectors: every number of a gradcheck case, written out for other implementations.

    python -m gradcheck export DIR                  # every registered case
    python -m gradcheck export DIR --case ntm       # the cases whose name contains "ntm"
    python -m gradcheck export gradcheck/golden --curated   # refresh the committed set

For each case, `<case>.npz` (plain .npy members, loadable with np.load(path, allow_pickle=False)
from any framework) holds:

    params/<name>          the parameters, by their dotted names (e.g. params/controller.W_x)
    inputs/<name>          every array of the inputs: a bare array under the forward's argument
                           name (inputs/xs), the fields of an inputs tuple (inputs/x, inputs/eps, ...),
                           items of a plain tuple as inputs/<argument>[i], a sparse matrix as
                           <name>.data, <name>.indices, <name>.indptr. Noise (eps, u) and sampled
                           discrete choices (VMA's addresses a) are inputs, as DESIGN.md asks.
    constants/<name>       arrays the model holds besides its parameters, which the function
                           depends on: recorded discrete choices replayed by a wrapper (a DNC's
                           free lists, constants/record.phi), a start state (constants/state0.M),
                           a fixed memory (constants/memory0), a semantic state, frozen signals
    outputs/<i>            the forward's outputs (outputs/0 when there is one)
    doutputs/<i>           d loss / d outputs at this point (the projection P of a projection loss)
    loss                   the case's loss, a 0-d array
    grads/params/<name>    d loss / d parameter, from minimem's manual engine (hand-derived backward)
    grads/inputs/<name>    d loss / d input for every dense float64 input, by central differences
                           (eps of the case); integer, boolean and sparse inputs have none

`<case>.json` is the manifest: the model class (and the class a wrapper wraps), its config or
constructor attributes, the spec file and sections when the case notes name them, the weight
layouts when the model documents them in a `param_layouts` attribute (otherwise the module named in
"docs" documents them in its docstring), the structure of the inputs, every array's name, role,
shape and dtype, the tolerance, and "sha256", a content hash of the arrays (content_hash).

Export is deterministic: the same arrays, hash and file bytes on every run (the .npz is written
with fixed zip timestamps). The loss is the case's own; for every case with a projection loss it is
exactly sum(outputs * doutputs) (manifest "loss": {"is_projection": true}), which is what a foreign
implementation computes to reproduce it (see gradcheck.compare).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import io
import json
import os
import re
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from gradcheck.core import Case, _classify, _loss_value, _objective, _tensor_numeric, float64_params, manual_gradients

__all__ = ["Golden", "CURATED", "GOLDEN_DIR", "make_golden", "write_golden", "export", "load_golden",
           "golden_path", "content_hash", "diff_golden", "select_cases", "dump_manifest"]

FORMAT = "minimem.golden"
FORMAT_VERSION = 1
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"

# The committed set: one small case per model family (python -m gradcheck export gradcheck/golden --curated).
CURATED = ("nn.lstm.T3", "ntm.lstm", "dnc.paper.L1", "nam.lsam.small", "titans.lmm.sequential", "mnm.grad",
           "vma.pathwise.few_shot", "vsm.hvae.mixed", "sam.sparse", "sdnc.sparse", "hma.head.mlp",
           # single memory operations (gradcheck/cases/primitives.py; PyTorch ports in demos/torch_check.py)
           "ntm_addressing.step", "dnc_allocation.step", "nam_write.step", "titans_update.sequential",
           "dnc_sparse_link.step")

# Spec file per family (DESIGN.md's model table); sections come from the case notes.
SPEC_FILES = {"ntm": "specs/ntm_dnc_sam.md", "dnc": "specs/ntm_dnc_sam.md", "sam": "specs/ntm_dnc_sam.md",
              "sdnc": "specs/ntm_dnc_sam.md", "dnc_sparse_link": "specs/ntm_dnc_sam.md",
              "nam": "specs/nam_hma.md", "hma": "specs/nam_hma.md", "titans": "specs/titans_mnm.md",
              "mnm": "specs/titans_mnm.md", "vma": "specs/generative_memory.md", "vsm": "specs/generative_memory.md"}
_SECTION = re.compile(r"(?<![\w.])([A-D](?:\.?\d+)(?:\.\d+)*)(?![\w.]*\w)")

# Regression tolerances (diff_golden): arrays computed by exact engines may move by rounding across
# machines and BLAS builds; finite-difference input gradients by rounding / eps.
EXACT_RTOL, EXACT_ATOL = 1e-9, 1e-12
_NOISE_FIELD = re.compile(r"^(eps(_\w+)?|u|noise)$")


# ----------------------------------------------------------------- the Golden record
@dataclasses.dataclass
class Golden:
    """One case's golden vectors: `arrays` (the .npz members, by key, in file order) and `manifest`
    (the .json). The accessors return the arrays themselves (copy before modifying)."""
    name: str
    arrays: dict
    manifest: dict

    def section(self, prefix: str) -> dict[str, np.ndarray]:
        """Members under `prefix/`, keyed by the rest of their name."""
        head = prefix.rstrip("/") + "/"
        return {k[len(head):]: v for k, v in self.arrays.items() if k.startswith(head)}

    @property
    def params(self) -> dict[str, np.ndarray]:
        return self.section("params")

    @property
    def inputs(self) -> dict[str, np.ndarray]:
        """The inputs and the constants in one flat dict: what an adapter receives."""
        return {**self.section("inputs"), **self.section("constants")}

    @property
    def outputs(self) -> tuple:
        return tuple(self.arrays[f"outputs/{i}"] for i in range(self.manifest["outputs"]["count"]))

    @property
    def doutputs(self) -> tuple:
        return tuple(self.arrays[f"doutputs/{i}"] for i in range(self.manifest["outputs"]["count"]))

    @property
    def single_output(self) -> bool:
        return bool(self.manifest["outputs"]["single"])

    @property
    def loss(self) -> float:
        return float(self.arrays["loss"])

    @property
    def param_grads(self) -> dict[str, np.ndarray]:
        return self.section("grads/params")

    @property
    def input_grads(self) -> dict[str, np.ndarray]:
        return self.section("grads/inputs")

    @property
    def tolerance(self) -> dict:
        return dict(self.manifest["tolerance"])


# ----------------------------------------------------------------- structure of inputs and constants
def _type_name(obj) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_sparse(obj) -> bool:
    try:
        import scipy.sparse as sp
    except ImportError:                      # scipy is a dependency, but golden files need not be
        return False
    return sp.issparse(obj)


def _child(path: str, key) -> str:
    return str(key) if not path else f"{path}.{key}"


def _flatten(obj, path: str, out: dict, strict: bool):
    """Record every array of obj in out (path -> array); return the JSON node describing obj.
    strict: raise on a type that cannot be exported (inputs); otherwise return None (constants)."""
    if obj is None:
        return None
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            if strict:
                raise ValueError(f"input {path!r} has dtype {obj.dtype}; golden files hold only bool, integer "
                                 "and float arrays")
            return None
        out[path] = obj
        return {"array": path}
    if isinstance(obj, (bool, int, float, np.generic)):
        return {"value": _jsonable(obj)}
    if _is_sparse(obj):
        csr = obj.tocsr()
        names = {}
        for part in ("data", "indices", "indptr"):
            out[f"{path}.{part}"] = np.asarray(getattr(csr, part))
            names[part] = f"{path}.{part}"
        return {"sparse": "csr", "shape": list(csr.shape), "arrays": names,
                "note": "scipy.sparse.csr_array((data, indices, indptr), shape)"}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        fields = {}
        for field in obj._fields:
            fields[field] = _flatten(getattr(obj, field), _child(path, field), out, strict)
        return {"namedtuple": _type_name(obj), "fields": fields}
    if isinstance(obj, (tuple, list)):
        return {"tuple" if isinstance(obj, tuple) else "list":
                [_flatten(item, f"{path}[{i}]", out, strict) for i, item in enumerate(obj)]}
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        # keys that already carry the attribute's name (MNM's mem0 holds "mem0.W1") are used as they are
        return {"dict": {k: _flatten(v, k if k.startswith(f"{path}.") else _child(path, k), out, strict)
                         for k, v in obj.items()}}
    if strict:
        raise ValueError(f"cannot export input {path!r} of type {_type_name(obj)}: golden files hold arrays, "
                         "tuples and named tuples of arrays, dicts of arrays and scipy.sparse matrices")
    return None


def _rebuild(obj, node, copies: dict):
    """obj with every array listed in `copies` (path -> array) swapped for its copy."""
    if node is None or obj is None:
        return obj
    if "array" in node:
        return copies.get(node["array"], obj)
    if "namedtuple" in node:
        return type(obj)(*[_rebuild(getattr(obj, f), node["fields"][f], copies) for f in obj._fields])
    if "tuple" in node or "list" in node:
        items = [_rebuild(item, sub, copies) for item, sub in zip(obj, node.get("tuple", node.get("list")))]
        return tuple(items) if isinstance(obj, tuple) else items
    if "dict" in node:
        return {k: _rebuild(v, node["dict"][k], copies) for k, v in obj.items()}
    return obj                               # scalars and sparse matrices are not perturbed


def _dense_paths(node) -> set[str]:
    """The paths of the dense arrays in a structure node (not the members of sparse matrices)."""
    if not isinstance(node, dict):
        return set()
    if "array" in node:
        return {node["array"]}
    if "fields" in node:
        children = node["fields"].values()
    elif "dict" in node:
        children = node["dict"].values()
    else:                                    # tuples and lists; sparse and scalar nodes have no children
        children = node.get("tuple", node.get("list", []))
    return set().union(*(_dense_paths(child) for child in children))


def _argument_name(model) -> str:
    """The name of model.forward's first parameter (xs, inputs, tokens, ...), else "inputs"."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return "inputs"
    return params[0].name if params and params[0].kind in (params[0].POSITIONAL_ONLY,
                                                          params[0].POSITIONAL_OR_KEYWORD) else "inputs"


def _holders(model) -> list:
    """The model, and the model a wrapper wraps (ReplayDNC.model, FrozenSignalSurrogate.model, ...)."""
    inner = getattr(model, "model", None)
    return [model] + ([inner] if inner is not None and isinstance(getattr(inner, "params", None), dict) else [])


def _constants(model, out: dict) -> dict:
    """Arrays the model (or the model it wraps) holds besides params: recorded choices, start states,
    fixed memories, frozen signals. Returns the JSON structure {attribute: node}."""
    structure = {}
    for depth, holder in enumerate(_holders(model)):
        for attr, value in vars(holder).items():
            if attr in ("params", "config", "model") or attr.startswith("_") or callable(value):
                continue
            name = attr if attr not in structure else f"model.{attr}"
            found: dict = {}
            node = _flatten(value, name, found, strict=False)
            if found:
                structure[name] = node
                out.update(found)
    return structure


def _jsonable(value):
    """value as plain JSON (tuples become lists; dtypes and types become names; the rest repr)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return value if np.isfinite(value) else repr(value)
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, (np.dtype, type)):
        try:
            return np.dtype(value).name
        except TypeError:
            return _type_name(value)
    return repr(value)


def _simple(value) -> bool:
    """A constructor setting worth listing: a scalar, a string, or a tuple of them."""
    if isinstance(value, (bool, int, float, str, np.generic)) or value is None:
        return True
    return isinstance(value, (tuple, list)) and all(isinstance(v, (bool, int, float, str)) for v in value)


def _model_info(model) -> dict:
    holders = _holders(model)
    info: dict[str, Any] = {"class": _type_name(model)}
    if len(holders) > 1:
        info["wraps"] = _type_name(holders[1])
    config = next((getattr(h, "config") for h in holders if dataclasses.is_dataclass(getattr(h, "config", None))), None)
    if config is not None:
        info["config"] = _jsonable(config)
    attributes = {}
    for holder in reversed(holders):
        for attr, value in vars(holder).items():
            if attr not in ("params", "config", "model") and not attr.startswith("_") and _simple(value):
                attributes[attr] = _jsonable(value)
    if attributes:
        info["attributes"] = attributes
    layouts = next((h.param_layouts for h in holders if isinstance(getattr(h, "param_layouts", None), dict)), None)
    if layouts is not None:
        info["layouts"] = {str(k): str(v) for k, v in layouts.items()}
    info["docs"] = f"{type(holders[-1]).__module__} (module docstring: equations, shapes, weight layouts)"
    return info


def _spec(case: Case) -> dict | None:
    """The spec file of the case's family and the sections its notes name (or a model `spec` attribute)."""
    for holder in _holders(case.model):
        given = getattr(holder, "spec", None)
        if isinstance(given, (str, dict)):
            return {"given": _jsonable(given)}
    sections = list(dict.fromkeys(_SECTION.findall(case.notes or "")))
    spec = {}
    if case.family in SPEC_FILES:
        spec["file"] = SPEC_FILES[case.family]
    if sections:
        spec["sections"] = sections
    return spec or None


# ----------------------------------------------------------------- hashing and files
def content_hash(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the arrays in name order: for each, its name, dtype (little-endian), shape and bytes."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.require(arrays[name], requirements="C")
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        h.update(name.encode("utf-8") + b"\0" + a.dtype.str.encode() + b"\0"
                 + ",".join(str(n) for n in a.shape).encode() + b"\0")
        h.update(a.tobytes())
    return h.hexdigest()


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed .npz with fixed timestamps and attributes: the same bytes for the same arrays."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.require(array, requirements="C"), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system, info.external_attr = 3, 0o644 << 16
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode) if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# ----------------------------------------------------------------- making golden vectors
def _role_entry(name: str, array: np.ndarray, role: str, **extra) -> dict:
    return {"name": name, "role": role, "shape": list(array.shape), "dtype": array.dtype.name, **extra}


def make_golden(case: Case, log: Callable[[str], None] | None = None) -> Golden:
    """Run a case once and collect its golden vectors (nothing is written; see write_golden).

    The case's parameter arrays are never modified (they are swapped for float64 copies while the
    case runs). Input gradients are central differences of the case's loss with step case.eps, on
    float64 copies of the inputs; an input coordinate where the loss is not smooth within eps is
    listed in the manifest ("input_kinks") and reported through `log`.
    """
    model = case.model
    arrays: dict[str, np.ndarray] = {}
    entries: list[dict] = []
    with float64_params(model) as params:
        argument = _argument_name(model)
        leaves: dict[str, np.ndarray] = {}
        structure = _flatten(case.inputs, argument if not (isinstance(case.inputs, tuple)
                                                           and hasattr(case.inputs, "_fields")) else "",
                             leaves, strict=True)
        constants: dict[str, np.ndarray] = {}
        constant_structure = _constants(model, constants)
        clash = sorted(set(leaves) & set(constants))
        if clash:
            raise ValueError(f"case {case.name}: inputs and model constants share the names {clash}")
        clash = sorted(set(leaves) & set(params))
        if clash:
            raise ValueError(f"case {case.name}: inputs and parameters share the names {clash}")

        value, outputs, grads = manual_gradients(case)
        raw_outputs, _ = model.forward(case.inputs)
        _, douts = _loss_value(case, raw_outputs)
        douts = tuple(np.asarray(d, dtype=np.float64)
                      for d in (douts if isinstance(douts, (tuple, list)) else (douts,)))
        single = not isinstance(raw_outputs, (tuple, list))

        # d loss / d input by central differences, on float64 copies of the inputs
        dense = _dense_paths(structure)          # sparse matrices' members are structure, not differentiated
        copies = {p: np.array(a, dtype=np.float64, order="C", copy=True)
                  for p, a in leaves.items() if a.dtype == np.float64 and p in dense}
        perturbed = dataclasses.replace(case, inputs=_rebuild(case.inputs, structure, copies))
        objective = lambda: _objective(perturbed)
        f0 = objective()
        input_grads, input_kinks = {}, {}
        for path, array in copies.items():
            numeric, fp, fm, hp, hm = _tensor_numeric(objective, array, case.eps)
            verdict, = _classify(objective, array, case.eps, f0, numeric, fp, fm, hp, hm, [numeric],
                                 case.rtol, case.atol, 1e-3)
            # the "analytic" value here is the numeric one, so any entry not "ok" failed the smoothness probes
            kinks = [tuple(int(j) for j in np.unravel_index(i, array.shape)) for i in np.flatnonzero(verdict != "ok")]
            if kinks:
                input_kinks[path] = [list(k) for k in kinks]
                if log:
                    log(f"warning: {case.name}: the loss is not smooth within eps at input {path} {kinks[:5]}; "
                        "its finite-difference gradient there is not meaningful")
            input_grads[path] = numeric.reshape(array.shape)

        def add(key, array, role, **extra):
            arrays[key] = array
            entries.append(_role_entry(key, array, role, **extra))

        for name, p in params.items():
            add(f"params/{name}", p.copy(), "param")
        for path, a in leaves.items():
            extra = {"differentiable": path in copies}
            if _NOISE_FIELD.match(path.rsplit(".", 1)[-1]):
                extra["noise"] = True
            add(f"inputs/{path}", np.array(a, copy=True), "input", **extra)
        for path, a in constants.items():
            role = "choice" if a.dtype.kind in "biu" or path.split(".")[0] == "record" else "constant"
            add(f"constants/{path}", np.array(a, copy=True), role)
        for i, o in enumerate(outputs):
            add(f"outputs/{i}", np.array(o, dtype=np.float64, copy=True), "output")
        for i, d in enumerate(douts):
            add(f"doutputs/{i}", np.array(d, copy=True), "doutput")
        add("loss", np.array(value, dtype=np.float64), "loss")
        for name in params:
            add(f"grads/params/{name}", np.array(grads[name], copy=True), "grad", source="manual engine")
        for path, g in input_grads.items():
            add(f"grads/inputs/{path}", g, "grad", source=f"central differences, eps {case.eps:g}")

    projected = float(sum(np.sum(o * d) for o, d in zip(outputs, douts)))
    is_projection = bool(abs(projected - value) <= 1e-12 * max(1.0, abs(value)))
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "case": case.name, "family": case.family, "notes": case.notes,
        "model": _model_info(model),
    }
    spec = _spec(case)
    if spec is not None:
        manifest["spec"] = spec
    manifest.update({
        "inputs": {"argument": argument, "structure": structure},
        "constants": constant_structure,
        "outputs": {"count": len(outputs), "single": single},
        "loss": {"value": float(value), "is_projection": is_projection,
                 "definition": "sum over outputs of outputs * doutputs" if is_projection
                 else "the case's own loss of the outputs; doutputs is its gradient at this point"},
        "gradients": {"params": "minimem's manual engine (hand-derived backward)",
                      "inputs": f"central differences of the loss, eps {case.eps:g}, every float64 input"},
        "tolerance": {"rtol": case.rtol, "atol": case.atol, "eps": case.eps},
        "regression": {"exact_rtol": EXACT_RTOL, "exact_atol": EXACT_ATOL,
                       "note": "diff_golden: exact arrays to exact_rtol/atol (x max(1, |array|)), "
                               "finite-difference gradients to the case tolerance"},
    })
    if input_kinks:
        manifest["input_kinks"] = input_kinks
    manifest["arrays"] = entries
    manifest["sha256"] = content_hash(arrays)
    return Golden(case.name, arrays, manifest)


def dump_manifest(manifest: dict) -> str:
    """The manifest as JSON text: indented, with short lists and innermost objects on one line."""
    text = json.dumps(manifest, indent=1, allow_nan=False)
    text = re.sub(r"\[\s*([^\[\]{}]*?)\s*\]", lambda m: "[" + re.sub(r"\s*\n\s*", " ", m.group(1)) + "]", text)
    def one_line(match):                     # innermost objects that fit on a line: every array entry
        flat = "{" + re.sub(r"\s*\n\s*", " ", match.group(1)).strip() + "}"
        return flat if len(flat) <= 160 else match.group(0)
    text = re.sub(r"\{([^{}]*)\}", one_line, text)
    return text + "\n"


def golden_path(directory: str | os.PathLike, name: str) -> Path:
    """DIR/<case>.npz (the JSON manifest is the same path with .json)."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"not a case name: {name!r}")
    return Path(directory) / f"{name}.npz"


def write_golden(golden: Golden, directory: str | os.PathLike) -> tuple[Path, Path]:
    """Write <case>.npz and <case>.json into directory (created if missing), atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    npz = golden_path(directory, golden.name)
    manifest = dump_manifest(golden.manifest)
    _write_atomically(npz, _npz_bytes(golden.arrays))
    _write_atomically(npz.with_suffix(".json"), manifest.encode("utf-8"))
    return npz, npz.with_suffix(".json")


def select_cases(case: str | None = None, family: str | None = None, names: Iterable[str] | None = None) -> list[Case]:
    """Registered cases: those whose name contains `case`, of `family`, or named exactly in `names`
    (only the families of those names are built)."""
    from gradcheck.cases import all_cases

    if names is not None:
        names = list(names)
        families = list(dict.fromkeys(n.split(".")[0] for n in names))
        built = {c.name: c for fam in families for c in all_cases(fam)}
        missing = [n for n in names if n not in built]
        if missing:
            raise ValueError(f"no registered gradcheck case named {missing}")
        return [built[n] for n in names]
    cases = all_cases(family)
    return [c for c in cases if case is None or case in c.name]


def export(directory: str | os.PathLike, cases: Sequence[Case] | None = None, *, case: str | None = None,
           family: str | None = None, log: Callable[[str], None] | None = None) -> list[Path]:
    """Write golden vectors for the given cases (default: the registered ones matching case/family).
    Returns the .npz paths written."""
    cases = select_cases(case, family) if cases is None else list(cases)
    written = []
    for c in cases:
        golden = make_golden(c, log=log)
        npz, _ = write_golden(golden, directory)
        written.append(npz)
        if log:
            log(f"{c.name}: {len(golden.arrays)} arrays, {npz.stat().st_size} bytes, "
                f"sha256 {golden.manifest['sha256'][:16]}")
    return written


# ----------------------------------------------------------------- loading and comparing
def load_golden(path: str | os.PathLike, name: str | None = None, verify: bool = True) -> Golden:
    """Read golden vectors: path is <case>.npz, <case>.json, or a directory (then name the case).

    Loads with allow_pickle=False; with verify, checks that the arrays are exactly those the
    manifest lists (names, shapes, dtypes) and that their content hash matches.
    Raises FileNotFoundError, or ValueError naming what does not match.
    """
    path = Path(path)
    if path.is_dir():
        if name is None:
            raise ValueError(f"{path} is a directory: name the case too")
        path = golden_path(path, name)
    npz, manifest_path = path.with_suffix(".npz"), path.with_suffix(".json")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_path} is not a minimem golden manifest")
    if not isinstance(manifest.get("format_version"), int) or manifest["format_version"] > FORMAT_VERSION:
        raise ValueError(f"{manifest_path} has golden format version {manifest.get('format_version')!r}; "
                         f"this gradcheck reads versions up to {FORMAT_VERSION}")
    with np.load(npz, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    if verify:
        listed = {e["name"]: e for e in manifest.get("arrays", [])}
        problems = [f"{k} is in the .npz but not in the manifest" for k in arrays if k not in listed]
        problems += [f"{k} is listed but missing from the .npz" for k in listed if k not in arrays]
        for k, e in listed.items():
            if k in arrays and (list(arrays[k].shape) != e["shape"] or arrays[k].dtype.name != e["dtype"]):
                problems.append(f"{k}: manifest says {e['shape']} {e['dtype']}, file holds "
                                f"{list(arrays[k].shape)} {arrays[k].dtype.name}")
        if not problems and content_hash(arrays) != manifest.get("sha256"):
            problems.append("the arrays' sha256 does not match the manifest (the .npz was changed)")
        if problems:
            raise ValueError(f"golden file {npz} is inconsistent:\n  " + "\n  ".join(problems))
    return Golden(manifest.get("case", npz.stem), arrays, manifest)


def _numeric_member(key: str) -> bool:
    return key.startswith("grads/inputs/")


def diff_golden(expected: Golden, actual: Golden) -> list[str]:
    """Every difference between two golden records of the same case, one message each, naming the
    case and the array (or manifest field). Exact arrays must agree to EXACT_RTOL / EXACT_ATOL
    (atol scaled by max(1, largest magnitude)), integer arrays exactly, finite-difference input
    gradients to the case tolerance. An empty list means they agree."""
    case = expected.name
    problems = []
    # what a foreign implementation relies on; a new config option alone is not a change of the mathematics
    fields = {"case": lambda m: m.get("case"), "family": lambda m: m.get("family"),
              "model class": lambda m: (m["model"].get("class"), m["model"].get("wraps")),
              "inputs": lambda m: m.get("inputs"), "constants": lambda m: m.get("constants"),
              "outputs": lambda m: m.get("outputs"), "tolerance": lambda m: m.get("tolerance")}
    for field, get in fields.items():
        if get(expected.manifest) != get(actual.manifest):
            problems.append(f"{case}: manifest {field} differs: committed {get(expected.manifest)!r}, "
                            f"now {get(actual.manifest)!r}")
    strip = lambda es: [{k: e[k] for k in ("name", "role", "shape", "dtype")} for e in es]
    if strip(expected.manifest.get("arrays", [])) != strip(actual.manifest.get("arrays", [])):
        before = {e["name"]: e for e in strip(expected.manifest.get("arrays", []))}
        after = {e["name"]: e for e in strip(actual.manifest.get("arrays", []))}
        problems += [f"{case}: {k} is gone (committed {before[k]})" for k in before if k not in after]
        problems += [f"{case}: {k} is new ({after[k]})" for k in after if k not in before]
        problems += [f"{case}: {k}: committed {before[k]}, now {after[k]}" for k in before
                     if k in after and before[k] != after[k]]
        if list(before) != list(after) and set(before) == set(after):
            problems.append(f"{case}: the arrays are in a different order")
    rtol, atol = expected.tolerance["rtol"], expected.tolerance["atol"]
    for key, a in expected.arrays.items():
        if key not in actual.arrays:
            continue
        b = actual.arrays[key]
        if a.shape != b.shape or a.dtype != b.dtype:
            problems.append(f"{case}: {key}: committed {a.shape} {a.dtype}, now {b.shape} {b.dtype}")
            continue
        if a.dtype.kind in "biu":
            bad = a != b
        else:
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            if _numeric_member(key):
                r, t = rtol, atol
            else:
                r = EXACT_RTOL
                t = EXACT_ATOL * max(1.0, float(np.max(np.abs(a64), initial=0.0)),
                                     float(np.max(np.abs(b64), initial=0.0)))
            diff = np.abs(a64 - b64)
            scale = np.maximum(np.maximum(np.abs(a64), np.abs(b64)), t)
            bad = ~((diff <= t) | (diff / scale <= r)) | (np.isfinite(a64) != np.isfinite(b64))
        if np.any(bad):
            score = np.where(bad, np.abs(a.astype(np.float64) - b.astype(np.float64)), -1.0)
            i = np.unravel_index(int(np.nanargmax(np.where(np.isnan(score), np.inf, score))), a.shape)
            where = tuple(int(j) for j in i) if a.ndim else "()"
            problems.append(f"{case}: {key} differs at {where}: committed {a[i]!r}, now {b[i]!r} "
                            f"({int(np.sum(bad))} of {a.size} entries)")
    return problems
