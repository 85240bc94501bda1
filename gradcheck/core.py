"""Central finite differences in float64: the oracle every backward pass in minimem is checked against.

Tools for unit tests:

    numeric_grad(f, x)                 d f / d x of a scalar function, every coordinate
    numeric_vjp(f, inputs, dout)       the vector-Jacobian product <dout, d f(inputs) / d inputs[i]>
    assert_grads_close(a, n, names)    compare analytic and numeric gradients, naming the worst entry

Whole models (the model protocol of DESIGN.md: params, forward, backward, forward_autodiff):

    Case(name, model, inputs, loss)    one seeded check; projection_loss(rng, like) is the usual loss
    check_model(case, mode)            manual and autodiff gradients against central differences
                                       and against each other -> CheckResult(rows, ok)

The objective is J(params) = case.loss(model.forward(inputs))[0]. Full mode perturbs every
coordinate of every parameter (the specification, on small cases); fast mode compares <grad, u>
with the central difference of J along a few seeded random unit directions u per tensor, and reruns
full mode on a tensor that fails. A coordinate where J is not smooth within eps (a kink of |x| or
relu, a top-k set or sort order that flips) is reported as "kink", not silently passed or plainly
failed: the finite difference there depends on the step, so it cannot judge the analytic value.

Relative error is measured as |a - n| / max(|a|, |n|, floor), which is safe near zero: two tiny
numbers that agree to the floor count as equal. An entry passes when |a - n| <= atol or its relative
error is <= rtol (defaults for float64: eps 1e-6, rtol 1e-6, atol 1e-8).
"""

from __future__ import annotations

import contextlib
import zlib
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np

from gradcheck.report import ReportRow

DEFAULT_EPS = 1e-6
DEFAULT_RTOL = 1e-6
DEFAULT_ATOL = 1e-8


def relative_error(analytic: np.ndarray, numeric: np.ndarray, floor: float = DEFAULT_ATOL) -> np.ndarray:
    """Elementwise |a - n| / max(|a|, |n|, floor), safe near zero."""
    analytic = np.asarray(analytic, dtype=np.float64)
    numeric = np.asarray(numeric, dtype=np.float64)
    scale = np.maximum(np.maximum(np.abs(analytic), np.abs(numeric)), floor)
    with np.errstate(invalid="ignore"):          # inf - inf is NaN, which callers treat as a failure
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
        bad = ((abs_err > atol) & (rel > rtol)) | ~np.isfinite(a) | ~np.isfinite(n)   # NaN never passes
        if np.any(bad):
            worst = np.unravel_index(int(np.argmax(np.where(bad, rel, -1.0))), a.shape)
            raise AssertionError(
                f"{name}: gradients differ at {tuple(int(i) for i in worst)}: analytic {a[worst]:.10g}, "
                f"numeric {n[worst]:.10g} (rel {rel[worst]:.3g}, abs {abs_err[worst]:.3g}); "
                f"{int(bad.sum())} of {a.size} entries out of tolerance"
            )


# ----------------------------------------------------------------- cases and reports
@dataclass
class Case:
    """One seeded gradient check: a model, its inputs, and a scalar loss of the model's outputs.

    Attributes:
        name: dotted case name, e.g. "nn.lstm.small".
        model: follows the model protocol (params, forward, backward, forward_autodiff).
        inputs: passed unchanged to model.forward and model.forward_autodiff.
        loss: loss(outputs) -> (value, doutputs) in NumPy; doutputs shaped like outputs
            (see projection_loss for the standard one).
        family: model family ("nn", "ntm", ...); the registry fills it in when empty.
        rtol, atol: an entry passes when |a - n| <= atol or relative_error(a, n) <= rtol.
        eps: central-difference step.
        notes: one line for the listing (what the case covers, which kinks it avoids).
    """
    name: str
    model: object
    inputs: object
    loss: Callable
    family: str = ""
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    eps: float = DEFAULT_EPS
    notes: str = ""


class CheckResult(NamedTuple):
    """What check_model returns; unpacks as `rows, ok = check_model(case)`."""
    rows: list
    ok: bool


def projection_loss(rng: np.random.Generator, like) -> Callable:
    """The standard gradcheck loss: sum(outputs * P) with a fixed random projection P per output.

    Args:
        rng: the generator the projection is drawn from.
        like: an example of the outputs, an ndarray or a tuple of ndarrays (only shapes are used).
    Returns:
        loss(outputs) -> (value, doutputs), doutputs = P (copies, shaped and nested like outputs).
    """
    single = not isinstance(like, (tuple, list))
    shapes = [np.shape(o) for o in ((like,) if single else like)]
    projections = [rng.standard_normal(shape) for shape in shapes]

    def loss(outputs):
        outs = _as_outputs(outputs, "outputs")
        if len(outs) != len(shapes) or any(o.shape != s for o, s in zip(outs, shapes)):
            raise ValueError(f"projection_loss expects outputs of shapes {shapes}; got {[o.shape for o in outs]}")
        value = float(sum(np.sum(o * p) for o, p in zip(outs, projections)))
        douts = tuple(p.copy() for p in projections)
        return value, douts[0] if single else douts

    return loss


# ----------------------------------------------------------------- the engines
def _as_outputs(outputs, what: str) -> tuple:
    """outputs (an ndarray or a tuple/list of them) as a tuple of float64 arrays."""
    outs = tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)
    arrays = []
    for i, o in enumerate(outs):
        if not isinstance(o, (np.ndarray, np.floating, float, int)):
            raise ValueError(f"{what}[{i}] must be an ndarray; got {type(o).__name__}")
        arrays.append(np.asarray(o, dtype=np.float64))
    return tuple(arrays)


def _loss_value(case: Case, outputs) -> tuple[float, object]:
    """case.loss on the NumPy outputs, with its value and doutputs validated."""
    value, douts = case.loss(outputs)
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"case {case.name}: loss value is {value}; expected a finite float")
    outs = _as_outputs(outputs, "outputs")
    if isinstance(outputs, (tuple, list)) != isinstance(douts, (tuple, list)):
        raise ValueError(f"case {case.name}: doutputs must be nested like the outputs "
                         f"({'a tuple' if isinstance(outputs, (tuple, list)) else 'one ndarray'})")
    dlist = _as_outputs(douts, "doutputs")
    expected = [o.shape for o in outs]
    if [d.shape for d in dlist] != expected:
        raise ValueError(f"case {case.name}: doutputs must have the outputs' shape "
                         f"{expected if len(expected) > 1 else expected[0]}; "
                         f"got {[d.shape for d in dlist] if len(dlist) > 1 else dlist[0].shape}")
    return value, douts


def _objective(case: Case) -> float:
    """J(params) = loss(model.forward(inputs)): the scalar the finite differences see."""
    outputs, _ = case.model.forward(case.inputs)
    return _loss_value(case, outputs)[0]


def _check_grad_dict(case: Case, grads, engine: str) -> dict[str, np.ndarray]:
    params = case.model.params
    if not isinstance(grads, dict):
        raise ValueError(f"case {case.name}: {engine} gradients must be a dict keyed like model.params")
    missing, extra = [k for k in params if k not in grads], [k for k in grads if k not in params]
    if missing or extra:
        raise ValueError(f"case {case.name}: {engine} gradients must have the keys of model.params; "
                         f"missing {missing}, unexpected {extra}")
    out = {}
    for name, p in params.items():
        g = np.asarray(grads[name], dtype=np.float64)
        if g.shape != p.shape:
            raise ValueError(f"case {case.name}: {engine} gradient of {name} must have shape {p.shape}; got {g.shape}")
        out[name] = g
    return out


def manual_gradients(case: Case) -> tuple[float, tuple, dict[str, np.ndarray]]:
    """Run model.forward, the loss and model.backward. Returns (loss value, outputs, grads)."""
    outputs, cache = case.model.forward(case.inputs)
    value, douts = _loss_value(case, outputs)
    grads = case.model.backward(douts, cache)
    return value, _as_outputs(outputs, "outputs"), _check_grad_dict(case, grads, "manual")


def autodiff_gradients(case: Case) -> tuple[tuple, dict[str, np.ndarray]]:
    """Run model.forward_autodiff on Tensor copies of the parameters and backpropagate the loss's
    doutputs (taken from the NumPy forward). Returns (outputs as arrays, grads)."""
    from minimem import autodiff as ad       # imported here so the finite-difference tools need no autodiff

    outputs, _ = case.model.forward(case.inputs)
    _, douts = _loss_value(case, outputs)
    tparams = {k: ad.Tensor(v.copy(), requires_grad=True) for k, v in case.model.params.items()}
    touts = case.model.forward_autodiff(tparams, case.inputs)
    single = isinstance(touts, ad.Tensor)
    touts = (touts,) if single else tuple(touts)
    dlist = (douts,) if not isinstance(douts, (tuple, list)) else tuple(douts)
    if len(touts) != len(dlist) or any(not isinstance(t, ad.Tensor) for t in touts):
        raise ValueError(f"case {case.name}: forward_autodiff must return {len(dlist)} Tensor(s), like forward")
    for i, (t, d) in enumerate(zip(touts, dlist)):
        if t.shape != np.shape(d):
            raise ValueError(f"case {case.name}: forward_autodiff output {i} must have shape {np.shape(d)}; got {t.shape}")
    total = sum((t * np.asarray(d, dtype=np.float64)).sum() for t, d in zip(touts, dlist))   # <outs, douts>
    if total.requires_grad:
        total.backward()
    grads = {k: (np.zeros_like(t.data) if t.grad is None else np.asarray(t.grad)) for k, t in tparams.items()}
    return tuple(np.asarray(t.data, dtype=np.float64) for t in touts), _check_grad_dict(case, grads, "autodiff")


@contextlib.contextmanager
def float64_params(model):
    """Swap every model.params entry for a C-contiguous float64 copy; put the caller's own arrays
    back afterwards (even after an exception), so they are never written to."""
    params = getattr(model, "params", None)
    if not isinstance(params, dict):
        raise ValueError(f"model.params must be a dict[str, ndarray]; got {type(params).__name__}")
    originals = dict(params)
    for name, p in originals.items():
        if not isinstance(p, np.ndarray):
            raise ValueError(f"model.params[{name!r}] must be an ndarray; got {type(p).__name__}")
    try:
        for name, p in originals.items():
            params[name] = np.array(p, dtype=np.float64, order="C", copy=True)
        yield params
    finally:
        for name, p in originals.items():
            params[name] = p


# ----------------------------------------------------------------- finite differences and kinks
def _within(a, n, rtol: float, atol: float) -> np.ndarray:
    """The pass rule of the whole module: |a - n| <= atol or relative_error(a, n) <= rtol."""
    return (np.abs(a - n) <= atol) | (relative_error(a, n, floor=atol) <= rtol)


def _noise(*fs) -> float:
    """Rounding noise of one objective evaluation, as an absolute error in f."""
    return 32.0 * np.finfo(np.float64).eps * float(np.max(np.abs(np.asarray(fs, dtype=np.float64))))


def _probe(objective, flat: np.ndarray, i: int, h: float) -> tuple[float, float, float, float]:
    """f at flat[i] + h and flat[i] - h, with the steps actually taken; flat[i] is restored exactly."""
    orig = flat[i]
    try:
        flat[i] = orig + h
        h_plus = flat[i] - orig
        f_plus = objective()
        flat[i] = orig - h
        h_minus = orig - flat[i]
        f_minus = objective()
    finally:
        flat[i] = orig
    return f_plus, f_minus, h_plus, h_minus


def _tensor_numeric(objective, array: np.ndarray, eps: float) -> tuple[np.ndarray, ...]:
    """Central differences over every coordinate of `array` (perturbed in place, restored).

    Returns flat arrays (size,): numeric gradient, f(x + h), f(x - h), h_plus, h_minus.
    """
    if array.dtype != np.float64 or not array.flags.c_contiguous or not array.flags.writeable:
        raise ValueError(f"the perturbed array must be writeable, C-contiguous float64; got {array.dtype}")
    flat = array.reshape(-1)                 # a view, so perturbing flat perturbs array
    fp, fm, hp, hm = (np.empty(flat.size) for _ in range(4))
    for i in range(flat.size):
        fp[i], fm[i], hp[i], hm[i] = _probe(objective, flat, i, eps)
    return (fp - fm) / (hp + hm), fp, fm, hp, hm


def _classify(objective, array, eps, f0, numeric, fp, fm, hp, hm, analytics, rtol, atol, kink_screen):
    """Per-coordinate verdicts (flat arrays of "ok" / "FAIL" / "kink", one per engine).

    Kink test. With steps h, the one-sided slopes d+ = (f(x+h) - f(x)) / h and d- = (f(x) - f(x-h)) / h
    differ by about h |f''| where f is smooth, but by the jump in slope where a kink lies within h.
    Suspects (a failing entry, or |d+ - d-| large for the tensor's gradient scale) are probed again
    at h/10: the objective is non-smooth there when the central difference moves with the step, or
    when |d+ - d-| does not shrink with it. A non-smooth entry is "kink" if the analytic value lies
    between the one-sided slopes at h/10 (a valid one-sided derivative or subgradient), else "FAIL".
    """
    flat = array.reshape(-1)
    passes = [_within(a, numeric, rtol, atol) for a in analytics]
    asym = np.abs((fp - f0) / hp - (f0 - fm) / hm)
    scale = max([float(np.max(np.abs(g), initial=0.0)) for g in [numeric, *analytics]])   # the tensor's gradient size
    noise = np.array([_noise(f0, a, b) for a, b in zip(fp, fm)]) / eps
    screen = kink_screen * np.maximum(np.abs(numeric), scale) + 4.0 * noise
    suspects = np.flatnonzero(~np.logical_and.reduce(passes) | (asym > screen))
    verdicts = [np.where(p, "ok", "FAIL").astype(object) for p in passes]
    h2 = eps / 10.0
    for i in suspects:
        fp2, fm2, hp2, hm2 = _probe(objective, flat, int(i), h2)
        noise2 = _noise(f0, fp[i], fm[i], fp2, fm2) / h2
        right, left = (fp2 - f0) / hp2, (f0 - fm2) / hm2
        numeric2, asym2 = (fp2 - fm2) / (hp2 + hm2), abs(right - left)
        moved = abs(numeric[i] - numeric2) > atol + rtol * max(abs(numeric[i]), abs(numeric2)) + 2 * noise2
        stuck = asym2 > max(0.5 * asym[i], screen[i] + 4 * noise2)
        if not (moved or stuck):
            continue
        lo, hi = min(left, right), max(left, right)
        for v, a in zip(verdicts, analytics):
            tol = atol + 1e-3 * max(abs(lo), abs(hi), abs(a[i])) + 2 * noise2   # one-sided: first order
            v[i] = "kink" if lo - tol <= a[i] <= hi + tol else "FAIL"
    return verdicts


def _full_row(case_name, engine, tensor, shape, analytic, numeric, verdicts, mode, atol) -> ReportRow:
    abs_err = np.abs(analytic - numeric)
    rel = relative_error(analytic, numeric, floor=atol)
    fails, kinks = np.flatnonzero(verdicts == "FAIL"), np.flatnonzero(verdicts == "kink")
    pick = fails if fails.size else kinks if kinks.size else np.arange(analytic.size)
    worst = int(pick[np.argmax(rel[pick])]) if analytic.size else 0
    index = lambda i: tuple(int(j) for j in np.unravel_index(i, shape))
    verdict = "FAIL" if fails.size else "kink" if kinks.size else "ok"
    return ReportRow(case_name, engine, tensor, int(analytic.size), float(np.max(abs_err, initial=0.0)),
                     float(np.max(rel, initial=0.0)), index(worst) if analytic.size else None,
                     float(analytic[worst]) if analytic.size else 0.0, float(numeric[worst]) if analytic.size else 0.0,
                     verdict, mode, int(fails.size), [index(i) for i in kinks])


def check_tensor_full(objective: Callable[[], float], array: np.ndarray, analytics: dict[str, np.ndarray], *,
                      case_name: str = "", tensor: str = "", eps: float = DEFAULT_EPS, rtol: float = DEFAULT_RTOL,
                      atol: float = DEFAULT_ATOL, kink_screen: float = 1e-3, mode: str = "full",
                      f0: float | None = None) -> list[ReportRow]:
    """Check every coordinate of one parameter tensor against central differences.

    Args:
        objective: () -> float, reads `array` at call time (array is perturbed in place and
            restored exactly, so it must be the float64, C-contiguous array the objective reads).
        array: the parameter, any shape S.
        analytics: engine name -> gradient of shape S.
    Returns:
        One ReportRow per engine, with per-coordinate kink detection (see _classify).
    """
    f0 = objective() if f0 is None else f0
    shape = array.shape
    for engine, a in analytics.items():
        if np.shape(a) != shape:
            raise ValueError(f"{tensor}: the {engine} gradient must have the parameter's shape {shape}; got {np.shape(a)}")
    flats = [np.asarray(a, dtype=np.float64).reshape(-1) for a in analytics.values()]
    numeric, fp, fm, hp, hm = _tensor_numeric(objective, array, eps)
    verdicts = _classify(objective, array, eps, f0, numeric, fp, fm, hp, hm, flats, rtol, atol, kink_screen)
    return [_full_row(case_name, engine, tensor, shape, a, numeric, v, mode, atol)
            for engine, a, v in zip(analytics, flats, verdicts)]


def check_tensor_fast(objective: Callable[[], float], array: np.ndarray, analytics: dict[str, np.ndarray], *,
                      rng: np.random.Generator, directions: int = 3, case_name: str = "", tensor: str = "",
                      eps: float = DEFAULT_EPS, rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
                      kink_screen: float = 1e-3, f0: float | None = None) -> tuple[list[ReportRow], bool]:
    """Directional check: for random unit directions u (shape S), compare <grad, u> with
    (f(x + h u) - f(x - h u)) / 2h. Returns (one row per engine, suspicious) where suspicious means a
    direction failed or looked non-smooth, so the caller should rerun full mode on this tensor.
    A kink is seen only if the segment x +- h u crosses it; full mode probes h along every axis."""
    f0 = objective() if f0 is None else f0
    original = array.copy()
    numeric, asym, dots = np.empty(directions), np.empty(directions), np.empty((len(analytics), directions))
    noise = np.empty(directions)
    for k in range(directions):
        u = rng.standard_normal(array.shape)
        u /= max(float(np.linalg.norm(u)), np.finfo(np.float64).tiny)
        try:
            array[...] = original + eps * u
            f_plus = objective()
            array[...] = original - eps * u
            f_minus = objective()
        finally:
            array[...] = original
        numeric[k] = (f_plus - f_minus) / (2 * eps)
        asym[k] = abs(f_plus - 2 * f0 + f_minus) / eps
        noise[k] = _noise(f0, f_plus, f_minus) / eps
        dots[:, k] = [float(np.sum(np.asarray(a) * u)) for a in analytics.values()]
    screen = kink_screen * np.maximum(np.abs(numeric), np.max(np.abs(dots), axis=0)) + 4 * noise
    suspicious = bool(np.any(asym > screen))
    rows = []
    for engine, a in zip(analytics, dots):
        ok = _within(a, numeric, rtol, atol)
        suspicious |= not bool(np.all(ok))
        rel = relative_error(a, numeric, floor=atol)
        k = int(np.argmax(rel if np.all(ok) else np.where(ok, -1.0, rel)))     # the worst failing direction
        rows.append(ReportRow(case_name, engine, tensor, directions, float(np.max(np.abs(a - numeric))),
                              float(np.max(rel)), f"u{k}", float(a[k]), float(numeric[k]),
                              "ok" if np.all(ok) else "FAIL", "fast", int(np.sum(~ok))))
    return rows, suspicious


def _agreement_row(case_name, tensor, manual, auto, rtol, atol) -> ReportRow:
    manual, auto = np.asarray(manual, dtype=np.float64), np.asarray(auto, dtype=np.float64)
    # rounding differs between the engines by ~1e-16 of the terms summed, so atol scales with the tensor
    atol = atol * max(1.0, float(np.max(np.abs(manual), initial=0.0)), float(np.max(np.abs(auto), initial=0.0)))
    ok = _within(manual, auto, rtol, atol)
    rel = relative_error(manual, auto, floor=atol)
    flat_rel = np.where(ok, -1.0, rel).reshape(-1) if not np.all(ok) else rel.reshape(-1)
    worst = int(np.argmax(flat_rel)) if manual.size else 0
    index = tuple(int(j) for j in np.unravel_index(worst, manual.shape)) if manual.size else None
    pick = lambda x: float(x.reshape(-1)[worst]) if x.size else 0.0
    return ReportRow(case_name, "manual~autodiff", tensor, int(manual.size),
                     float(np.max(np.abs(manual - auto), initial=0.0)), float(np.max(rel, initial=0.0)),
                     index, pick(manual), pick(auto), "ok" if np.all(ok) else "FAIL", "full",
                     int(np.sum(~ok)), note="" if np.all(ok) else "manual and autodiff engines disagree")


# ----------------------------------------------------------------- check_model
def check_model(case: Case, mode: str = "full", *, directions: int = 3, seed: int = 0,
                engines: Sequence[str] = ("manual", "autodiff"), tensors: Sequence[str] | None = None,
                agree_rtol: float = 1e-10, agree_atol: float = 1e-12, kink_screen: float = 1e-3) -> CheckResult:
    """Check a case's manual and autodiff gradients against central differences and each other.

    Args:
        case: the Case; model.params is swapped for float64 copies during the check and the
            caller's arrays are put back untouched afterwards.
        mode: "full" (every coordinate of every tensor) or "fast" (`directions` random unit
            directions per tensor, seeded by (seed, tensor name); a tensor that fails or looks
            non-smooth is rerun in full mode, rows marked mode="rerun").
        engines: which engines to check; both by default (every minimem model has both).
        tensors: parameter names to check (default: all).
        agree_rtol, agree_atol: tolerance of the manual~autodiff comparison (gradients and outputs);
            agree_atol is scaled by max(1, the tensor's largest magnitude).
    Returns:
        CheckResult(rows, ok): for each tensor one row per engine, a "manual~autodiff" row per
        tensor and one for the outputs (when both engines run); ok when every verdict is "ok".
    """
    if mode not in ("full", "fast"):
        raise ValueError(f"mode must be 'full' or 'fast'; got {mode!r}")
    if not engines or any(e not in ("manual", "autodiff") for e in engines):
        raise ValueError(f"engines must be a non-empty subset of ('manual', 'autodiff'); got {tuple(engines)}")
    if directions < 1:
        raise ValueError(f"directions must be >= 1; got {directions}")
    needed = ["forward"] + [{"manual": "backward", "autodiff": "forward_autodiff"}[e] for e in engines]
    missing = [m for m in needed if not callable(getattr(case.model, m, None))]
    if missing:
        raise ValueError(f"case {case.name}: the model has no {missing} (model protocol: params, forward, "
                         "backward, forward_autodiff); check only some engines with engines=(...)")
    rows: list[ReportRow] = []
    with float64_params(case.model) as params:
        names = list(params) if tensors is None else list(tensors)
        unknown = [n for n in names if n not in params]
        if unknown:
            raise ValueError(f"case {case.name}: no parameters named {unknown}; have {list(params)}")
        objective = lambda: _objective(case)
        f0 = objective()
        if objective() != f0:
            raise ValueError(f"case {case.name}: the objective is not deterministic (two forwards differ); "
                             "pass noise as an explicit input")
        grads, outputs = {}, {}
        if "manual" in engines:
            _, outputs["manual"], grads["manual"] = manual_gradients(case)
        if "autodiff" in engines:
            outputs["autodiff"], grads["autodiff"] = autodiff_gradients(case)
        for name in names:
            analytics = {engine: grads[engine][name] for engine in engines}
            common = dict(case_name=case.name, tensor=name, eps=case.eps, rtol=case.rtol, atol=case.atol,
                          kink_screen=kink_screen, f0=f0)
            if mode == "fast":
                rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
                fast_rows, suspicious = check_tensor_fast(objective, params[name], analytics, rng=rng,
                                                          directions=directions, **common)
                if suspicious:               # rerun full mode on this tensor, saying why
                    note = "; ".join(f"fast: {r.engine} FAIL at {r.worst}" for r in fast_rows if not r.ok)
                    fast_rows = check_tensor_full(objective, params[name], analytics, mode="rerun", **common)
                    for r in fast_rows:
                        r.note = note or "fast: a direction looked non-smooth"
                rows += fast_rows
            else:
                rows += check_tensor_full(objective, params[name], analytics, **common)
            if len(engines) == 2:
                rows.append(_agreement_row(case.name, name, grads["manual"][name], grads["autodiff"][name],
                                           agree_rtol, agree_atol))
        if len(engines) == 2:
            for i, (m, a) in enumerate(zip(outputs["manual"], outputs["autodiff"])):
                label = "outputs" if len(outputs["manual"]) == 1 else f"outputs[{i}]"
                row = _agreement_row(case.name, label, m, a, agree_rtol, agree_atol)
                row.note = row.note and "forward outputs differ between the engines"
                rows.append(row)
    return CheckResult(rows, all(r.ok for r in rows))
