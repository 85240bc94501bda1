"""Check the gradient of your own NumPy function against central differences in float64.

    from gradcheck import check

    def f(W, x):                                   # any NumPy function returning a scalar
        return np.sum(np.tanh(x @ W) ** 2)

    def grad_f(W, x):                              # called like f; returns one gradient per input
        y = np.tanh(x @ W)
        dz = 2 * y * (1 - y ** 2)
        return x.T @ dz, dz @ W.T

    report = check(f, (W, x), grad=grad_f)         # the report table of `python -m gradcheck`
    print(report)
    assert report.ok
    dW, dx = check(f, (W, x))                      # no grad: the numerical gradient itself

A function with an array (or tuple of arrays) as output is checked through a fixed upstream
projection `doutput`: the objective is sum(f(...) * doutput), and `grad` must return its gradient,
i.e. the vector-Jacobian product with doutput. Integer and boolean inputs are passed through
unchanged and not differentiated (their slot in `grad` may be None).

Second order (`second_order=True`): a Hessian-vector product hvp(*inputs, v) -> H v is compared
with the gradient differenced along v, (grad(x + h v) - grad(x - h v)) / 2h, where grad is your
gradient function; without `hvp`, the differenced gradient's Jacobian is checked for symmetry, a
property every true gradient has.
"""

from __future__ import annotations

import warnings
import zlib
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from gradcheck import report
from gradcheck.core import (DEFAULT_ATOL, DEFAULT_EPS, DEFAULT_RTOL, _full_row, _tensor_numeric, _within,
                            check_tensor_fast, check_tensor_full)
from gradcheck.report import ReportRow

__all__ = ["Report", "check", "check_tensor", "compare_row"]


class Report(NamedTuple):
    """What check() and compare() return; unpacks as `rows, ok = report`. str(report) is the table,
    notes on the rows that are not ok (or carry a note), and a one-line summary."""
    rows: list
    ok: bool

    def table(self) -> str:
        return report.format_table(self.rows) if self.rows else "(no rows)"

    def __str__(self) -> str:
        counts = {v: sum(r.verdict == v for r in self.rows) for v in ("ok", "FAIL", "kink")}
        other = len(self.rows) - sum(counts.values())
        summary = (f"{len(self.rows)} rows: {counts['ok']} ok, {counts['FAIL']} FAIL, {counts['kink']} kink"
                   + (f", {other} other" if other else ""))
        notes = report.format_notes(self.rows)
        return self.table() + ("\n\nnotes:\n" + notes if notes else "") + "\n" + summary


# ----------------------------------------------------------------- shared by check() and compare()
def check_tensor(objective: Callable[[], float], array: np.ndarray, analytics: dict[str, np.ndarray], *,
                 mode: str, case_name: str, tensor: str, eps: float, rtol: float, atol: float, seed: int = 0,
                 directions: int = 3, kink_screen: float = 1e-3, f0: float | None = None) -> list[ReportRow]:
    """One tensor against central differences, as check_model does it: full mode perturbs every
    coordinate; fast mode tries `directions` random unit directions (seeded by seed and the tensor
    name) and reruns full mode (rows marked "rerun") when a direction fails or looks non-smooth."""
    common = dict(case_name=case_name, tensor=tensor, eps=eps, rtol=rtol, atol=atol, kink_screen=kink_screen, f0=f0)
    if mode == "full":
        return check_tensor_full(objective, array, analytics, **common)
    rng = np.random.default_rng([seed, zlib.crc32(tensor.encode())])
    rows, suspicious = check_tensor_fast(objective, array, analytics, rng=rng, directions=directions, **common)
    if suspicious:
        note = "; ".join(f"fast: {r.engine} FAIL at {r.worst}" for r in rows if not r.ok)
        rows = check_tensor_full(objective, array, analytics, mode="rerun", **common)
        for r in rows:
            r.note = note or "fast: a direction looked non-smooth"
    return rows


def compare_row(case_name: str, engine: str, tensor: str, a: np.ndarray, b: np.ndarray, *, rtol: float, atol: float,
                mode: str = "full", note: str = "") -> ReportRow:
    """Every entry of a against b with the pass rule of gradcheck.core (|a - b| <= atol or relative
    error <= rtol). The analytic column shows a, the numeric column b."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return ReportRow(case_name, engine, tensor, int(b.size), float("inf"), float("inf"), None, 0.0, 0.0,
                         "FAIL", mode, int(b.size),
                         note=f"shape {a.shape}, expected {b.shape}" + ("; " + note if note else ""))
    verdicts = np.where(_within(a, b, rtol, atol) & np.isfinite(a) & np.isfinite(b), "ok", "FAIL").astype(object)
    row = _full_row(case_name, engine, tensor, a.shape, a.reshape(-1), b.reshape(-1), verdicts.reshape(-1), mode, atol)
    row.note = note
    return row


# ----------------------------------------------------------------- the caller's inputs
class _Args:
    """The caller's inputs as named arrays: float64 copies of the floating ones (perturbed in place
    by the checks), the others untouched; and how to call f with them."""

    def __init__(self, inputs, names: Sequence[str] | None):
        if isinstance(inputs, dict):
            self.kind, keys, values = "dict", list(inputs), list(inputs.values())
            if any(not isinstance(k, str) for k in keys):
                raise ValueError(f"dict inputs must have string keys; got {keys}")
            if names is not None:
                raise ValueError("names= is for array or sequence inputs; dict inputs are named by their keys")
        elif isinstance(inputs, (tuple, list)):
            self.kind, values = "sequence", list(inputs)
            keys = [f"x{i}" for i in range(len(values))] if names is None else list(names)
        else:
            self.kind, values = "array", [inputs]
            keys = ["x"] if names is None else list(names)
        if len(keys) != len(values) or len(set(keys)) != len(keys):
            raise ValueError(f"names must be {len(values)} distinct strings, one per input; got {keys}")
        if not values:
            raise ValueError("inputs must hold at least one array")
        self.names, self.values, self.diff = keys, [], []
        upcast = []
        for name, value in zip(keys, values):
            if isinstance(value, (float, int, bool, np.generic)) and not isinstance(value, np.ndarray):
                value = np.asarray(value)
            if not isinstance(value, np.ndarray):
                raise ValueError(f"input {name!r} must be an ndarray; got {type(value).__name__}")
            if value.dtype.kind == "f":
                if value.dtype != np.float64:
                    upcast.append(f"{name} ({value.dtype})")
                value = np.array(value, dtype=np.float64, order="C", copy=True)
                if not np.all(np.isfinite(value)):
                    raise ValueError(f"input {name!r} holds NaN or inf; central differences need finite inputs")
            elif value.dtype.kind not in "biu":
                raise ValueError(f"input {name!r} must be a real float, integer or boolean array; got {value.dtype}")
            self.values.append(value)
            self.diff.append(value.dtype == np.float64)
        if upcast:
            warnings.warn(f"inputs {', '.join(upcast)} were copied to float64: central differences with eps ~ 1e-6 "
                          "need double precision (torch.autograd.gradcheck asks for double too)", stacklevel=3)
        if not any(self.diff):
            raise ValueError("no floating-point input to differentiate; integer and boolean inputs are constants")

    @property
    def wrt(self) -> list[str]:
        """The names of the differentiated (float) inputs."""
        return [n for n, d in zip(self.names, self.diff) if d]

    def array(self, name: str) -> np.ndarray:
        return self.values[self.names.index(name)]

    def call(self, fn: Callable, *extra):
        if self.kind == "dict":
            return fn(dict(zip(self.names, self.values)), *extra)
        return fn(*self.values, *extra)

    def pack(self, per_name: dict[str, Any]):
        """Arrays by name -> the structure of the inputs (None for non-differentiated slots)."""
        items = [per_name.get(n) for n in self.names]
        if self.kind == "dict":
            return dict(zip(self.names, items))
        return tuple(items) if self.kind == "sequence" else items[0]

    def unpack(self, given, what: str) -> dict[str, np.ndarray]:
        """A gradient-like structure (shaped like the inputs) -> float64 copies for the differentiated names."""
        if self.kind == "dict":
            if not isinstance(given, dict):
                raise ValueError(f"{what} must be a dict keyed like the inputs {self.names}; "
                                 f"got {type(given).__name__}")
            unknown = [k for k in given if k not in self.names]
            if unknown:
                raise ValueError(f"{what} has keys {unknown} that are not inputs; inputs are {self.names}")
            items = [given.get(n) for n in self.names]
        elif self.kind == "sequence":
            if not isinstance(given, (tuple, list)) or len(given) != len(self.names):
                count = f" of {len(given)}" if isinstance(given, (tuple, list)) else ""
                raise ValueError(f"{what} must be a tuple of {len(self.names)} arrays, one per input; "
                                 f"got {type(given).__name__}{count}")
            items = list(given)
        else:
            items = [given]
        out = {}
        for name, item, diff, value in zip(self.names, items, self.diff, self.values):
            if not diff:
                continue
            if item is None:
                raise ValueError(f"{what} is missing the gradient of input {name!r}")
            item = np.asarray(item)
            if item.dtype.kind not in "fiu":
                raise ValueError(f"{what}[{name!r}] must be a real array; got {item.dtype}")
            if item.shape != value.shape:
                raise ValueError(f"{what}[{name!r}] must have the input's shape {value.shape}; got {item.shape}")
            out[name] = np.array(item, dtype=np.float64, copy=True)
        return out


def _scalar(out, doutput, what: str = "f") -> float:
    """f's output as the checked scalar: itself, or sum(out * doutput) for array outputs."""
    def as_float64(o, label):
        o = np.asarray(o)
        if o.dtype.kind == "f" and o.dtype != np.float64:
            raise ValueError(f"{label} is {o.dtype}; central differences need float64 (compute in double precision)")
        if o.dtype.kind not in "fiub":
            raise ValueError(f"{label} must be real numbers; got {o.dtype}")
        return o.astype(np.float64, copy=False)

    if doutput is None:
        if isinstance(out, (tuple, list)):
            raise ValueError(f"{what} returned a {type(out).__name__} of {len(out)} outputs; pass doutput= "
                             "(one upstream gradient per output: the objective is then sum(out * doutput))")
        o = as_float64(out, f"{what}'s output")
        if o.size != 1:
            raise ValueError(f"{what} returned shape {o.shape}; a non-scalar output needs doutput= (the upstream "
                             "gradient: the objective is then sum(f(...) * doutput))")
        return float(o.reshape(()))
    outs = out if isinstance(out, (tuple, list)) else (out,)
    douts = doutput if isinstance(doutput, (tuple, list)) else (doutput,)
    if len(outs) != len(douts):
        raise ValueError(f"{what} returned {len(outs)} outputs but doutput holds {len(douts)} arrays")
    total = 0.0
    for i, (o, d) in enumerate(zip(outs, douts)):
        o = as_float64(o, f"{what}'s output {i}")
        if o.shape != np.shape(d):
            raise ValueError(f"{what}'s output {i} has shape {o.shape} but doutput has {np.shape(d)}")
        total += float(np.sum(o * d))
    return total


# ----------------------------------------------------------------- check()
def check(f: Callable, inputs, grad=None, *, doutput=None, mode: str = "full", eps: float = DEFAULT_EPS,
          rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL, second_order: bool = False,
          hvp: Callable | None = None, directions: int = 3, seed: int = 0, names: Sequence[str] | None = None,
          name: str = "check", kink_screen: float = 1e-3):
    """Check grad against central differences of f, or return the numerical gradient of f.

    Args:
        f: a NumPy function. Called as f(x) for one array, f(*inputs) for a tuple/list, f(inputs)
            for a dict (one dict argument, same keys). Returns a float64 scalar, or an array or tuple
            of arrays (then pass doutput). It must be deterministic and must not modify its inputs.
        inputs: an ndarray, a tuple/list of ndarrays, or a dict name -> ndarray. Never modified:
            float inputs are copied to float64 and the copies are perturbed.
        grad: the gradient to check, shaped like inputs (an array, a tuple, a dict), or a function
            called like f returning it. None: return the numerical gradient instead of a report.
        doutput: the fixed upstream gradient for an array-valued f (an array, or a tuple matching
            f's outputs): the objective is J = sum(f(...) * doutput) and grad must be dJ/dinputs.
        mode: "full" checks every coordinate of every input (the specification; 2 calls of f per
            coordinate); "fast" checks `directions` seeded random unit directions per input and
            reruns full mode on an input that fails or looks non-smooth.
        eps: central-difference step. rtol, atol: an entry passes when |a - n| <= atol or
            |a - n| / max(|a|, |n|, atol) <= rtol.
        second_order: also check second derivatives (needs grad as a function): with hvp, compare
            hvp(*inputs, v) (called like f with v appended; v shaped like inputs) with the gradient
            differenced along v; without hvp, check that the differenced gradient's Jacobian (the
            Hessian) is symmetric. Full mode differences along every coordinate (the whole Hessian);
            fast mode along `directions` random directions, rerunning full mode on a failure.
        names: names for array or sequence inputs (default "x", or "x0", "x1", ...).
        name: the label in the report's case column.
    Returns:
        With grad: Report(rows, ok), one row per float input (engine "grad"), and with
        second_order one per Hessian block ("hess[a, b]", engine "hvp" or "symmetry"); a row's
        verdict is "ok", "FAIL", or "kink" (f is not smooth within eps there, so the finite
        difference cannot judge it: move the point). print(report) shows the table.
        Without grad: the numerical gradient, shaped like inputs (None for integer inputs).

    Defaults against other libraries (as documented for torch 2.x and in jax/_src/public_test_util.py
    when this was written; check your version):
      - torch.autograd.gradcheck(func, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=False) passes
        when |a - n| <= atol + rtol |n| for every entry of the full Jacobian; its docs warn that the
        defaults are designed for double precision and will likely fail for float32 inputs.
        gradgradcheck checks second derivatives the same way. fast_mode compares u^T J v for random
        u, v. Here float inputs are always copied to float64, a float32 output is an error, and the
        tolerances are tighter (rtol 1e-6, atol 1e-8): a missing term worth 1e-6 of a gradient
        passes torch's atol 1e-5 but not this check; central differences at eps 1e-6 in float64 are
        accurate to ~1e-10 relative on a well-scaled function, so 1e-6 leaves ample room.
      - jax.test_util.check_grads(f, args, order, modes=("fwd", "rev"), atol=None, rtol=None, eps=None)
        checks one random direction (like mode="fast" with directions=1), eps 1e-4 by default, and
        for float64 atol = rtol = 1e-5 (2e-3 for float32), scaled by the array size; "rev" compares
        <t, vjp(c)> with <jvp_numeric(t), c>; order=2 repeats the check on the derivative function
        (like second_order=True here, which differences your gradient function).
      - The kink verdict has no counterpart in either: where f is not differentiable within eps
        (relu, max, a top-k set that flips), both report a plain failure.
    """
    if mode not in ("full", "fast"):
        raise ValueError(f"mode must be 'full' or 'fast'; got {mode!r}")
    if not callable(f):
        raise ValueError(f"f must be callable; got {type(f).__name__}")
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive float; got {eps}")
    if directions < 1:
        raise ValueError(f"directions must be >= 1; got {directions}")
    args = _Args(inputs, names)
    objective = lambda: _scalar(args.call(f), doutput)
    f0 = objective()
    if objective() != f0:
        raise ValueError("f is not deterministic (two calls at the same point differ); fix its randomness")
    if not np.isfinite(f0):
        raise ValueError(f"f is {f0} at the given inputs; central differences need a finite value")

    if grad is None:
        if mode != "full" or second_order or hvp is not None:
            raise ValueError("without grad, check returns the numerical gradient (every coordinate): "
                             "mode='fast', second_order and hvp need a grad to check")
        numeric = {n: _tensor_numeric(objective, args.array(n), eps)[0].reshape(args.array(n).shape) for n in args.wrt}
        return args.pack(numeric)

    grad_fn = grad if callable(grad) else None
    analytic = args.unpack(args.call(grad) if grad_fn else grad, "grad")
    rows: list[ReportRow] = []
    for n in args.wrt:
        rows += check_tensor(objective, args.array(n), {"grad": analytic[n]}, mode=mode, case_name=name, tensor=n,
                             eps=eps, rtol=rtol, atol=atol, seed=seed, directions=directions,
                             kink_screen=kink_screen, f0=f0)
    if second_order:
        if grad_fn is None:
            raise ValueError("second_order needs grad as a function (called like f), to difference it")
        if hvp is not None and not callable(hvp):
            raise ValueError(f"hvp must be a function hvp(*inputs, v); got {type(hvp).__name__}")
        second = _second_order(args, grad_fn, hvp, mode, eps, rtol, atol, seed, directions, name)
        if mode == "fast" and not all(r.ok for r in second):
            note = "; ".join(f"fast: {r.tensor} FAIL at {r.worst}" for r in second if not r.ok)
            second = _second_order(args, grad_fn, hvp, "full", eps, rtol, atol, seed, directions, name)
            for r in second:
                r.mode, r.note = "rerun", note
        rows += second
    return Report(rows, all(r.ok for r in rows))


# ----------------------------------------------------------------- second order
def _grad_along(args: _Args, grad_fn: Callable, v: dict[str, np.ndarray], eps: float) -> dict[str, np.ndarray]:
    """(grad(x + h v) - grad(x - h v)) / 2h, restoring the inputs exactly afterwards."""
    originals = {n: args.array(n).copy() for n in v}
    try:
        for n in v:
            args.array(n)[...] = originals[n] + eps * v[n]
        g_plus = args.unpack(args.call(grad_fn), "grad")
        for n in v:
            args.array(n)[...] = originals[n] - eps * v[n]
        g_minus = args.unpack(args.call(grad_fn), "grad")
    finally:
        for n in v:
            args.array(n)[...] = originals[n]
    return {n: (g_plus[n] - g_minus[n]) / (2.0 * eps) for n in g_plus}


def _hvp_at(args: _Args, hvp: Callable, v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return args.unpack(args.call(hvp, args.pack(v)), "hvp")


def _second_order(args, grad_fn, hvp, mode, eps, rtol, atol, seed, directions, name) -> list[ReportRow]:
    """Rows comparing H v (hvp) or the Hessian's transpose (symmetry) with the differenced gradient."""
    wrt = args.wrt
    shapes = {n: args.array(n).shape for n in wrt}
    engine = "hvp" if hvp is not None else "symmetry"
    if mode == "full":
        # column c of every block H[a, b] (a: gradient tensor, b: input tensor) = differenced grad along e_c
        numeric = {(a, b): np.empty((args.array(a).size, args.array(b).size)) for a in wrt for b in wrt}
        analytic = {key: np.empty_like(block) for key, block in numeric.items()} if hvp is not None else None
        for b in wrt:
            for c in range(args.array(b).size):
                e = {n: np.zeros(shapes[n]) for n in wrt}
                e[b].reshape(-1)[c] = 1.0
                column = _grad_along(args, grad_fn, e, eps)
                hv = _hvp_at(args, hvp, e) if hvp is not None else None
                for a in wrt:
                    numeric[(a, b)][:, c] = column[a].reshape(-1)
                    if hv is not None:
                        analytic[(a, b)][:, c] = hv[a].reshape(-1)
        rows = []
        for a in wrt:
            for b in wrt:
                if hvp is None and wrt.index(b) < wrt.index(a):
                    continue                         # symmetry: H[a, b] against H[b, a]^T, each pair once
                left = analytic[(a, b)] if hvp is not None else numeric[(a, b)]
                right = numeric[(a, b)] if hvp is not None else numeric[(b, a)].T
                row = compare_row(name, engine, f"hess[{a}, {b}]", left.reshape(shapes[a] + shapes[b]),
                                  right.reshape(shapes[a] + shapes[b]), rtol=rtol, atol=atol)
                rows.append(row)
        return rows

    rng = np.random.default_rng([seed, zlib.crc32(b"second order")])

    def direction():
        v = {n: rng.standard_normal(shapes[n]) for n in wrt}
        norm = np.sqrt(sum(float(np.sum(x * x)) for x in v.values()))
        return {n: x / max(norm, np.finfo(np.float64).tiny) for n, x in v.items()}

    if hvp is not None:
        left = {n: [] for n in wrt}
        right = {n: [] for n in wrt}
        for _ in range(directions):
            v = direction()
            hv, column = _hvp_at(args, hvp, v), _grad_along(args, grad_fn, v, eps)
            for n in wrt:
                left[n].append(hv[n])
                right[n].append(column[n])
        rows = []
        for n in wrt:
            row = compare_row(name, engine, f"hess[{n}, :]", np.stack(left[n]), np.stack(right[n]), rtol=rtol,
                              atol=atol, mode="fast")
            row.checked = directions
            if isinstance(row.worst, tuple):
                row.worst = f"u{row.worst[0]} {report.format_worst(row.worst[1:])}"
            rows.append(row)
        return rows
    uJv, vJu = np.empty(directions), np.empty(directions)
    for k in range(directions):
        u, v = direction(), direction()
        Jv, Ju = _grad_along(args, grad_fn, v, eps), _grad_along(args, grad_fn, u, eps)
        uJv[k] = sum(float(np.sum(u[n] * Jv[n])) for n in wrt)
        vJu[k] = sum(float(np.sum(v[n] * Ju[n])) for n in wrt)
    row = compare_row(name, engine, "hess", uJv, vJu, rtol=rtol, atol=atol, mode="fast")
    row.checked = directions
    if isinstance(row.worst, tuple):
        row.worst = f"u{row.worst[0]}"
    return [row]
