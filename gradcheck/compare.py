"""Compare a foreign implementation (PyTorch, JAX, your own NumPy) with minimem's golden vectors.

    python -m gradcheck compare ntm.lstm my_ntm:adapter            # module:function on sys.path
    python -m gradcheck compare nn.lstm.T3 path/to/check_lstm.py:adapter --mode full

The adapter protocol. gradcheck calls

    adapter(params, inputs, doutputs)

with NumPy float64 arrays (fresh copies; the adapter must not modify them, and must not cache
anything between calls: it is called again at perturbed points):

    params     dict: dotted name -> array, minimem's parameters (manifest: model, layouts)
    inputs     dict: name -> array, the case's inputs and the model's constants: noise (eps, u),
               sampled or recorded discrete choices (VMA's addresses a, a DNC's free lists
               record.phi), start states (state0.M, ...), fixed memories (memory0). Names, shapes
               and roles are in the case's JSON manifest.
    doutputs   the upstream gradient: one array for a one-output case, else a tuple, shaped like
               the outputs. The loss to reproduce is sum(outputs * doutputs). (The few cases whose
               own loss is not a projection, nn.loss.*, store that loss's gradient here, so the
               sum has the same gradient at this point; only its value differs.)

and accepts any of three answers:

    (outputs, grads)   outputs (an array, or a tuple like doutputs) and grads, a dict from names
                       (params by dotted name, inputs by name; "params/..." and "inputs/..." also
                       accepted) to the gradient of sum(outputs * doutputs); missing or None entries
                       are not compared (a missing parameter gradient is reported as "missing").
    outputs            only the outputs (an array, or a tuple of arrays): gradcheck forms the loss.
    loss               only the scalar loss sum(outputs * doutputs).

The report has one row per tensor and comparison; in the engine column "A~B" means the analytic
column holds A and the numeric column B:

    foreign~minimem    your outputs / loss / gradient against minimem's golden value
    foreign~numeric    your gradient against central differences of your own loss (is your
                       backward the derivative of your forward?)
    minimem~numeric    minimem's gradient against central differences of your loss (only when
                       you return no gradients: does your forward have minimem's derivative?)

Tolerances are the case's (manifest "tolerance"), the pass rule that of gradcheck.core. Fast mode
(the default) checks a few random directions per tensor and reruns full mode on a failure; full
mode perturbs every coordinate (two adapter calls each).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from gradcheck.check import Report, _scalar, check_tensor, compare_row
from gradcheck.golden import GOLDEN_DIR, Golden, golden_path, load_golden, make_golden, select_cases
from gradcheck.report import ReportRow

__all__ = ["compare", "load_adapter", "resolve_golden", "adapter_arguments"]


def load_adapter(spec: str) -> Callable:
    """"module:function" (module importable from sys.path) or "path/to/file.py:function"."""
    module_name, _, function = spec.rpartition(":")
    if not module_name or not function:
        raise ValueError(f"adapter must be given as module:function or path/to/file.py:function; got {spec!r}")
    if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise ValueError(f"adapter file {path} does not exist")
        loader_spec = importlib.util.spec_from_file_location(f"gradcheck_adapter_{path.stem}", path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[loader_spec.name] = module
        loader_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    fn = getattr(module, function, None)
    if not callable(fn):
        raise ValueError(f"{module_name} has no function {function!r}")
    return fn


def resolve_golden(case: str | Golden | os.PathLike, golden: str | os.PathLike | None = None) -> Golden:
    """The golden vectors to compare with: a Golden as is; a path to <case>.npz / .json; a case name
    looked up in `golden` (a directory), else in the committed gradcheck/golden/, else computed now
    from the registered case."""
    if isinstance(case, Golden):
        return case
    path = Path(case)
    if path.suffix in (".npz", ".json") and path.exists():
        return load_golden(path)
    name = str(case)
    if golden is not None:
        golden = Path(golden)
        return load_golden(golden) if golden.suffix in (".npz", ".json") else load_golden(golden, name)
    if golden_path(GOLDEN_DIR, name).exists():
        return load_golden(GOLDEN_DIR, name)
    return make_golden(select_cases(names=[name])[0])


def adapter_arguments(golden: Golden) -> tuple[dict, dict, np.ndarray | tuple]:
    """Fresh copies of (params, inputs, doutputs) for one adapter call: float arrays as C-contiguous
    float64, integer and boolean arrays as they are."""
    def copy(a):
        return np.array(a, dtype=np.float64, order="C", copy=True) if a.dtype.kind == "f" else np.array(a, copy=True)

    params = {k: copy(v) for k, v in golden.params.items()}
    inputs = {k: copy(v) for k, v in golden.inputs.items()}
    douts = tuple(copy(d) for d in golden.doutputs)
    return params, inputs, douts[0] if golden.single_output else douts


def _answer(result, golden: Golden):
    """Split an adapter's answer into (kind, outputs tuple or None, loss or None, grads dict or None)."""
    if isinstance(result, tuple) and len(result) == 2 and (result[1] is None or isinstance(result[1], dict)):
        outputs, grads = result
        kind = "grads" if grads is not None else "outputs"
    elif isinstance(result, (float, int, np.floating, np.integer)) or (isinstance(result, np.ndarray)
                                                                        and result.ndim == 0):
        return "loss", None, float(result), None
    else:
        outputs, grads, kind = result, None, "outputs"
    outs = tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)
    count = golden.manifest["outputs"]["count"]
    if len(outs) != count:
        raise ValueError(f"the adapter returned {len(outs)} outputs; case {golden.name} has {count} "
                         f"(shapes {[list(o.shape) for o in golden.outputs]})")
    arrays = []
    for i, o in enumerate(outs):
        o = np.asarray(o)
        if o.dtype.kind == "f" and o.dtype != np.float64:
            raise ValueError(f"the adapter's output {i} is {o.dtype}; compute in float64 (torch.float64, "
                             "jax_enable_x64) so the comparison can be tight")
        arrays.append(o.astype(np.float64, copy=False))
    return kind, tuple(arrays), None, grads


def _normalise_grads(grads: dict, golden: Golden) -> dict[str, np.ndarray]:
    """Foreign gradients keyed like golden members ("params/<name>", "inputs/<name>"), None dropped."""
    params, inputs = golden.param_grads, golden.input_grads
    out, unknown = {}, []
    for key, value in grads.items():
        if value is None:
            continue
        if key.startswith(("params/", "inputs/")):
            section, _, name = key.partition("/")
            known = name in (params if section == "params" else inputs)
        elif key in params:
            section, name, known = "params", key, True
        elif key in inputs:
            section, name, known = "inputs", key, True
        else:
            known = False
        if not known:
            unknown.append(key)
            continue
        value = np.asarray(value)
        if value.dtype.kind == "f" and value.dtype != np.float64:
            raise ValueError(f"the adapter's gradient {key!r} is {value.dtype}; compute in float64")
        out[f"{section}/{name}"] = np.array(value, dtype=np.float64, copy=True)
    if unknown:
        raise ValueError(f"the adapter returned gradients for {unknown}, which case {golden.name} does not have; "
                         f"parameters: {list(params)}; differentiable inputs: {list(inputs)}")
    return out


def compare(case: str | Golden | os.PathLike, adapter: Callable | str, *, golden: str | os.PathLike | None = None,
            mode: str = "fast", directions: int = 3, seed: int = 0, numeric: bool = True,
            rtol: float | None = None, atol: float | None = None, eps: float | None = None) -> Report:
    """Run an adapter (see the module docstring) on a case's golden vectors and report, per tensor,
    how far its results are from minimem's and from central differences of its own loss.

    Args:
        case: a case name, a Golden, or a path to <case>.npz / .json (see resolve_golden).
        adapter: the function, or "module:function" / "file.py:function".
        golden: a directory (or file) of golden vectors to read instead of the committed set.
        mode: "fast" (random directions, full rerun on failure) or "full" (every coordinate).
        numeric: also check against central differences of the adapter's loss (default True).
        rtol, atol, eps: override the case's tolerance.
    Returns:
        Report(rows, ok); print(report) shows the table.
    """
    if mode not in ("full", "fast"):
        raise ValueError(f"mode must be 'full' or 'fast'; got {mode!r}")
    record = resolve_golden(case, golden)
    fn = load_adapter(adapter) if isinstance(adapter, str) else adapter
    if not callable(fn):
        raise ValueError(f"adapter must be callable or 'module:function'; got {type(fn).__name__}")
    tol = record.tolerance
    rtol = tol["rtol"] if rtol is None else rtol
    atol = tol["atol"] if atol is None else atol
    eps = tol["eps"] if eps is None else eps
    name = record.name

    params, inputs, douts = adapter_arguments(record)
    kind, outputs, loss, grads = _answer(fn(params, inputs, douts), record)
    for label, given, original in (("params", params, record.params), ("inputs", inputs, record.inputs)):
        changed = [k for k in original if not np.array_equal(given[k], original[k])]
        if changed:
            raise ValueError(f"the adapter modified {label} {changed}; it must treat its arguments as read-only")

    def objective() -> float:
        k, outs, value, _ = _answer(fn(params, inputs, douts), record)
        return value if k == "loss" else _scalar(outs, record.doutputs, "the adapter")

    rows: list[ReportRow] = []
    if outputs is not None:
        for i, (mine, theirs) in enumerate(zip(outputs, record.outputs)):
            label = "outputs" if record.single_output else f"outputs[{i}]"
            rows.append(compare_row(name, "foreign~minimem", label, mine, theirs, rtol=rtol, atol=atol))
    else:
        expected = record.loss if record.manifest["loss"]["is_projection"] else \
            float(sum(np.sum(o * d) for o, d in zip(record.outputs, record.doutputs)))
        rows.append(compare_row(name, "foreign~minimem", "loss", np.array(loss), np.array(expected),
                                rtol=rtol, atol=atol))

    foreign = _normalise_grads(grads, record) if grads is not None else {}
    tensors = [(f"params/{k}", params[k], g) for k, g in record.param_grads.items()]
    tensors += [(f"inputs/{k}", inputs[k], g) for k, g in record.input_grads.items()]
    missing_inputs = []
    for key, _, golden_grad in tensors:
        label = key.partition("/")[2]
        if kind != "grads":
            continue
        if key in foreign:
            rows.append(compare_row(name, "foreign~minimem", label, foreign[key], golden_grad, rtol=rtol, atol=atol))
        elif key.startswith("params/"):
            rows.append(ReportRow(name, "foreign~minimem", label, int(golden_grad.size), float("nan"), float("nan"),
                                  None, 0.0, 0.0, "missing",
                                  note="the adapter returned no gradient for this parameter"))
        else:
            missing_inputs.append(label)

    if numeric:
        f0 = objective()
        if objective() != f0:
            raise ValueError("the adapter is not deterministic (two calls at the same point differ)")
        for key, array, golden_grad in tensors:
            label = key.partition("/")[2]
            if kind == "grads":
                if key not in foreign or foreign[key].shape != array.shape:
                    continue                     # reported above as missing or misshapen
                analytics = {"foreign~numeric": foreign[key]}
            else:
                analytics = {"minimem~numeric": golden_grad}
            rows += check_tensor(objective, array, analytics, mode=mode, case_name=name, tensor=label, eps=eps,
                                 rtol=rtol, atol=atol, seed=seed, directions=directions, f0=f0)
    if missing_inputs and rows:
        rows[0].note = (rows[0].note + "; " if rows[0].note else "") + \
            f"input gradients not returned (not compared): {', '.join(missing_inputs)}"
    return Report(rows, all(r.ok for r in rows))
