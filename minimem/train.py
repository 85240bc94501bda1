"""A small training loop shared by the demos: seeded batches, gradient clipping, progress lines,
periodic evaluation, checkpoints, a clean Ctrl-C and exact resume.

The model follows the library protocol:

    model.params                      dict[str, np.ndarray], updated in place by the optimiser
    model.forward(inputs)             -> (outputs, cache)
    model.backward(doutputs, cache)   -> grads, a dict with the names and shapes of params

and the caller supplies

    batch_fn(rng, step)               -> (inputs, targets); rng = default_rng([seed, step])
    loss_fn(outputs, targets)         -> (loss: float, doutputs)
    metric_fn(outputs, targets)       -> float, a task metric such as bit errors (optional)
    eval_fn(model)                    -> dict[str, float] on held-out data (optional)
    lr_schedule(step)                 -> learning rate for that step (optional)

Steps are numbered from 0: step k is the (k+1)-th update, and `batch_fn(rng, k)` and
`lr_schedule(k)` are called for it. Each step draws its batch from a generator derived from
(seed, step) alone, so a run resumed from a checkpoint sees exactly the batches an uninterrupted
run would: with the same seed, the final parameters are bit-identical.

One step:
    1. optimizer.lr = lr_schedule(step)                       (if given)
    2. inputs, targets = batch_fn(step_rng(seed, step), step)
    3. outputs, cache = model.forward(inputs); loss, doutputs = loss_fn(outputs, targets)
    4. grads = model.backward(doutputs, cache); clipped to global norm config.clip (if not None)
    5. optimizer.step(grads)
    6. after_step(model, cache, step)                         (if given; e.g. a memory consolidation
       that runs between optimiser steps on detached values, such as VSM's U1-U3)

A nan/inf loss or gradient raises TrainingDiverged naming the step (nothing is saved; the last
periodic checkpoint on disk is kept). Checkpoints (minimem.checkpoint) hold the params, the
optimiser state (its own names, e.g. "adam.m.<name>") and the loop state under "train.":
train.step, train.losses, train.metrics, train.grad_norms, train.eval.step, train.eval.<name>.
A model with non-parameter state (callable model.state_dict() -> dict of arrays and
model.load_state_dict(arrays), e.g. VSM's semantic memory) has it saved under "model.<name>" and
restored on resume, so a resumed run stays bit-identical.

The bit-sequence demos (copy, recall, sort, repeat copy) also share from here: bit_sequence_loss
and bit_error_metric (ready-made loss_fn and metric_fn), wrong_bits_per_sequence, mean_bit_errors
and length_generalisation (held-out metrics), loss_ends (the training curve's start and end) and
summary_line (the last line a demo prints).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from minimem.checkpoint import load_checkpoint, save_checkpoint
from minimem.nn.losses import sigmoid_cross_entropy_backward, sigmoid_cross_entropy_forward
from minimem.optim import check_grads, clip_grad_norm, global_norm
from minimem.tasks.metrics import bit_errors_per_sequence

__all__ = ["TrainConfig", "TrainResult", "TrainingDiverged", "train", "step_rng", "bit_sequence_loss",
           "bit_error_metric", "wrong_bits_per_sequence", "mean_bit_errors", "length_generalisation",
           "loss_ends", "summary_line"]


class TrainingDiverged(RuntimeError):
    """The loss or a gradient became nan/inf. `step` is the 0-based step it happened at;
    `result` (set by train) is the TrainResult of the steps completed before it."""

    def __init__(self, step: int, message: str) -> None:
        super().__init__(f"training diverged at step {step}: {message}")
        self.step = step
        self.result: TrainResult | None = None


@dataclass
class TrainConfig:
    """Settings of one training run.

    steps: total number of updates (a resumed run continues up to this number).
    log_every: a progress line every this many steps and at the last step (0: none).
    eval_every: eval_fn every this many steps and at the end (0: only at the end).
    checkpoint_every: save every this many steps (0: only at the end); needs checkpoint_path.
    checkpoint_path: .npz path (str or os.PathLike, kept as str) for checkpoints, or None.
    clip: global gradient-norm limit, or None for no clipping.
    seed: seed of the per-step batch generators (non-negative int).
    """

    steps: int
    log_every: int = 100
    eval_every: int = 0
    checkpoint_every: int = 0
    checkpoint_path: str | None = None
    clip: float | None = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "log_every", "eval_every", "checkpoint_every", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"TrainConfig.{name} must be an int >= 0; got {value!r}")
            setattr(self, name, int(value))                  # plain ints: the config goes to JSON
        if self.checkpoint_path is not None:
            self.checkpoint_path = os.fspath(self.checkpoint_path)
        if self.checkpoint_every and self.checkpoint_path is None:
            raise ValueError("TrainConfig.checkpoint_every > 0 needs a checkpoint_path")
        if self.checkpoint_path is not None and Path(self.checkpoint_path).suffix != ".npz":
            raise ValueError(f"TrainConfig.checkpoint_path must end with .npz; "
                             f"got {self.checkpoint_path!r}")
        if self.clip is not None:
            if isinstance(self.clip, bool) or not isinstance(self.clip, (int, float, np.number)) \
                    or not (math.isfinite(self.clip) and self.clip > 0):
                raise ValueError(f"TrainConfig.clip must be a positive number or None; "
                                 f"got {self.clip!r}")
            self.clip = float(self.clip)


@dataclass
class TrainResult:
    """What a run produced. Histories cover every step since step 0, including steps done
    before a resume. `step` is the number of updates completed."""

    losses: list[float] = field(default_factory=list)       # per step
    metrics: list[float] = field(default_factory=list)      # per step, if metric_fn was given
    grad_norms: list[float] = field(default_factory=list)   # per step, before clipping
    evals: list[dict[str, float]] = field(default_factory=list)  # {"step": k, name: value, ...}
    step: int = 0
    seconds: float = 0.0                                     # wall time of this call
    interrupted: bool = False
    checkpoint_path: str | None = None                       # last checkpoint written or kept


def bit_sequence_loss(outputs: np.ndarray, targets: tuple) -> tuple[float, np.ndarray]:
    """A ready-made loss_fn for the bit-sequence tasks (copy, recall, sort, repeat copy):
    targets = (bits (T, B, Y), mask (T, B)); the sigmoid cross-entropy of the logits outputs
    (T, B, Y) in nats per sequence on the answer steps (mask 1), and its gradient (T, B, Y)."""
    bits, mask = targets
    loss, cache = sigmoid_cross_entropy_forward(outputs, bits, mask, reduction="batch")
    return float(loss), sigmoid_cross_entropy_backward(1.0, cache)


def bit_error_metric(outputs: np.ndarray, targets: tuple) -> float:
    """A ready-made metric_fn for the same tasks, with the targets of bit_sequence_loss: bit errors
    per sequence, minimem.tasks.bit_errors_per_sequence(outputs, bits, mask)."""
    bits, mask = targets
    return bit_errors_per_sequence(outputs, bits, mask)


def wrong_bits_per_sequence(logits: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(B,) wrong bits of each sequence of a bit-sequence task: the scored target bits (mask 1)
    whose thresholded prediction (logit > 0) differs from the target. Their mean is
    minimem.tasks.bit_errors_per_sequence; a sequence with 0 was answered perfectly.
    logits, targets: (T, B, Y); mask: (T, B)."""
    logits, targets, mask = np.asarray(logits), np.asarray(targets), np.asarray(mask)
    if logits.ndim != 3 or targets.shape != logits.shape or mask.shape != logits.shape[:2]:
        raise ValueError(f"expected logits and targets (T, B, Y) and mask (T, B); got {logits.shape}, "
                         f"{targets.shape}, {mask.shape}")
    return np.sum(mask * np.sum((logits > 0) != (targets == 1), axis=2), axis=0)


def mean_bit_errors(model: Any, batches) -> float:
    """Bit errors per sequence (minimem.tasks.bit_errors_per_sequence) of model.forward, averaged
    over `batches`, an iterable of (inputs (T, B, X), targets (T, B, Y), mask (T, B)) such as
    minimem.tasks.Batch; each batch counts once, whatever its size."""
    errors = []
    for inputs, targets, mask in batches:
        logits, _ = model.forward(inputs)
        errors.append(bit_errors_per_sequence(logits, targets, mask))
    if not errors:
        raise ValueError("batches must hold at least one (inputs, targets, mask) batch")
    return float(np.mean(errors))


def length_generalisation(model: Any, batch_for_length: Callable[[int], tuple], lengths) -> list[dict]:
    """One row per length: {"length", "bit_errors": wrong bits per sequence, "perfect": the fraction
    of sequences without a wrong bit}, on the batch batch_for_length(length) -> (inputs (T, B, X),
    targets (T, B, Y), mask (T, B)) (e.g. fresh copy sequences of exactly that length)."""
    rows = []
    for length in lengths:
        inputs, targets, mask = batch_for_length(length)
        logits, _ = model.forward(inputs)
        wrong = wrong_bits_per_sequence(logits, targets, mask)                # (B,)
        rows.append({"length": length, "bit_errors": float(np.mean(wrong)), "perfect": float(np.mean(wrong == 0))})
    return rows


def loss_ends(losses) -> tuple[float, float]:
    """(first, last): the mean of the first and of the last tenth of the per-step losses (at least
    one step each), the training curve's start and end without single-batch noise."""
    losses = np.asarray(losses, dtype=float)
    if losses.ndim != 1 or len(losses) == 0:
        raise ValueError(f"losses must be a non-empty 1-d sequence; got shape {losses.shape}")
    tail = max(1, len(losses) // 10)
    return float(np.mean(losses[:tail])), float(np.mean(losses[-tail:]))


def summary_line(name: str, summary: Mapping[str, Any], skip=()) -> str:
    """"name: key value  key value ..." over the summary dict (floats to 4 significant digits),
    leaving out the keys in skip: the last line a demo prints."""
    return f"{name}: " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                   for k, v in summary.items() if k not in skip)


def step_rng(seed: int, step: int) -> np.random.Generator:
    """The generator for the batch of `step`: np.random.default_rng([seed, step])."""
    return np.random.default_rng([seed, step])


# ----------------------------------------------------------------------------- checkpoints
def _model_config(model: Any) -> Any:
    """The model's `config` as JSON-friendly data, or None when it has none or cannot be."""
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        return None
    try:
        return json.loads(json.dumps(config, allow_nan=False))
    except (TypeError, ValueError):
        return None


def _save(path: str, model: Any, optimizer: Any, config: TrainConfig, result: TrainResult) -> None:
    extra = dict(optimizer.state_dict())
    if callable(getattr(model, "state_dict", None)):
        extra.update({f"model.{k}": np.asarray(v) for k, v in model.state_dict().items()})
    extra["train.step"] = np.array(result.step, dtype=np.int64)
    extra["train.losses"] = np.array(result.losses, dtype=np.float64)
    extra["train.metrics"] = np.array(result.metrics, dtype=np.float64)
    extra["train.grad_norms"] = np.array(result.grad_norms, dtype=np.float64)
    extra["train.eval.step"] = np.array([e["step"] for e in result.evals], dtype=np.int64)
    names = list(dict.fromkeys(k for e in result.evals for k in e if k != "step"))
    for name in names:                      # a value an evaluation did not report is stored as nan
        extra[f"train.eval.{name}"] = np.array([e.get(name, np.nan) for e in result.evals],
                                               dtype=np.float64)
    hyper = getattr(optimizer, "hyperparameters", None)
    meta = {"train": dataclasses.asdict(config), "model": _model_config(model),
            "optimizer": hyper() if callable(hyper) else type(optimizer).__name__}
    save_checkpoint(path, model.params, config=meta, extra=extra)


def _restore(path: str, model: Any, optimizer: Any, config: TrainConfig,
             result: TrainResult, log: Callable[[str], None]) -> None:
    """Load params, optimiser state and loop state; nothing changes if validation fails."""
    params, saved_config, extra = load_checkpoint(path, expected=model.params)
    if "train.step" not in extra:
        raise ValueError(f"{path} is not a training checkpoint (no train.step)")
    step = int(extra["train.step"])
    if step > config.steps:
        raise ValueError(f"checkpoint {path} is at step {step}, beyond config.steps={config.steps}")
    model_state = {k[len("model."):]: v for k, v in extra.items() if k.startswith("model.")}
    if model_state and not callable(getattr(model, "load_state_dict", None)):
        raise ValueError(f"{path} holds model state ({', '.join(model_state)}) but the model has no load_state_dict")
    optimizer.load_state_dict({k: v for k, v in extra.items() if not k.startswith(("train.", "model."))})
    if model_state:
        model.load_state_dict(model_state)
    for name, value in params.items():
        np.copyto(model.params[name], value)                 # in place: references stay valid
    result.step = step
    empty = np.zeros(0)
    result.losses = extra.get("train.losses", empty).tolist()
    result.metrics = extra.get("train.metrics", empty).tolist()
    result.grad_norms = extra.get("train.grad_norms", empty).tolist()
    eval_steps = extra.get("train.eval.step", empty).astype(int).tolist()
    eval_names = [k[len("train.eval."):] for k in extra
                  if k.startswith("train.eval.") and k != "train.eval.step"]
    result.evals = [{"step": s, **{n: float(extra[f"train.eval.{n}"][i]) for n in eval_names}}
                    for i, s in enumerate(eval_steps)]
    saved_seed = ((saved_config or {}).get("train") or {}).get("seed")
    if saved_seed is not None and saved_seed != config.seed:
        log(f"note: {path} was written with seed {saved_seed}; continuing with seed "
            f"{config.seed}, so batches differ from an uninterrupted run")


# ----------------------------------------------------------------------------- the loop
def _fmt(value: float) -> str:
    return f"{value:.4g}"


def train(model: Any, optimizer: Any, batch_fn: Callable[[np.random.Generator, int], tuple],
          loss_fn: Callable[[Any, Any], tuple[float, Any]], config: TrainConfig, *,
          eval_fn: Callable[[Any], Mapping[str, float]] | None = None,
          metric_fn: Callable[[Any, Any], float] | None = None,
          lr_schedule: Callable[[int], float] | None = None,
          log: Callable[[str], None] | None = print,
          metric_name: str = "metric",
          resume: bool = False,
          after_step: Callable[[Any, Any, int], None] | None = None) -> TrainResult:
    """Train `model` for config.steps updates (see the module docstring for the protocol).

    Args:
        model, optimizer: the optimiser must be bound to model.params (e.g. Adam(model.params)).
        batch_fn, loss_fn, metric_fn, eval_fn, lr_schedule: see the module docstring.
        config: TrainConfig.
        log: called with each progress line, e.g. print or list.append; None for silence.
            Progress: "step 100/1000  loss 0.1234  <metric_name> 0.05  lr 0.001  12.3s  eta 110.7s"
            with loss and metric averaged over the steps since the previous line.
        metric_name: label of metric_fn's value in progress lines.
        resume: if config.checkpoint_path exists, continue from it (params, optimiser state,
            model state, step and histories); otherwise start from step 0.
        after_step: called as after_step(model, cache, step) right after each optimiser step,
            with the cache of that step's forward; for updates outside the gradient path, e.g.
            `lambda model, cache, step: model.consolidate(cache)` for VSM.
    Returns:
        TrainResult. On Ctrl-C (KeyboardInterrupt) the run stops cleanly: a checkpoint of the
        last completed step is written (when checkpoint_path is set) and the result has
        interrupted=True. If the interrupt lands inside the parameter update itself, the
        in-memory params are partially updated; then nothing is saved and the previous
        checkpoint is kept.
    Raises:
        TrainingDiverged: nan/inf loss or gradient; the message names the step (and the array).
        ValueError: bad config, resume without checkpoint_path, a checkpoint that does not fit
            the model or optimiser, a gradient dict that does not match the params.
    """
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig; got {type(config).__name__}")
    if not isinstance(getattr(model, "params", None), dict):
        raise ValueError("model.params must be a dict[str, np.ndarray]")
    bound = getattr(optimizer, "params", None)
    if bound is not None and bound is not model.params:
        raise ValueError("the optimizer is bound to a different dict than model.params; "
                         "create it as e.g. Adam(model.params)")
    emit = log if log is not None else (lambda line: None)
    path = config.checkpoint_path
    result = TrainResult(checkpoint_path=None)

    if resume:
        if path is None:
            raise ValueError("resume=True needs config.checkpoint_path")
        if Path(path).exists():
            _restore(path, model, optimizer, config, result, emit)
            result.checkpoint_path = path
            emit(f"resumed from {path} at step {result.step}")
        else:
            emit(f"no checkpoint at {path}; starting at step 0")

    start = result.step
    started = time.perf_counter()
    window_losses: list[float] = []
    window_metrics: list[float] = []
    saved_step = result.step if result.checkpoint_path else None
    updating = False

    def save() -> None:
        nonlocal saved_step
        _save(path, model, optimizer, config, result)
        saved_step = result.step
        result.checkpoint_path = path

    def evaluate() -> None:
        values = eval_fn(model)
        if not isinstance(values, Mapping) or "step" in values:
            raise ValueError("eval_fn must return a dict[str, float] without the key 'step'")
        entry = {"step": result.step, **{str(k): float(v) for k, v in values.items()}}
        result.evals.append(entry)
        emit(f"eval step {result.step}: "
             + "  ".join(f"{k} {_fmt(v)}" for k, v in entry.items() if k != "step"))

    try:
        for step in range(start, config.steps):
            if lr_schedule is not None:
                optimizer.lr = lr_schedule(step)
            inputs, targets = batch_fn(step_rng(config.seed, step), step)
            outputs, cache = model.forward(inputs)
            loss, doutputs = loss_fn(outputs, targets)
            loss = float(loss)
            if not math.isfinite(loss):
                raise TrainingDiverged(step, f"loss is {loss}")
            metric = float(metric_fn(outputs, targets)) if metric_fn is not None else None
            grads = model.backward(doutputs, cache)
            for name, grad in grads.items():
                grad = np.asarray(grad)
                if grad.dtype.kind in "fc" and not np.all(np.isfinite(grad)):
                    raise TrainingDiverged(step, f"gradient for {name!r} has nan/inf entries "
                                                 f"(loss {loss})")
            check_grads(grads, model.params)                 # names and shapes: ValueError
            if config.clip is not None:
                grads, grad_norm = clip_grad_norm(grads, config.clip)
            else:
                grad_norm = global_norm(grads)

            # Until `updating` is cleared the in-memory state may be torn: a Ctrl-C here is
            # not saved. The histories and step counter move together with the params.
            updating = True
            optimizer.step(grads)
            if after_step is not None:
                after_step(model, cache, step)
            result.losses.append(loss)
            if metric is not None:
                result.metrics.append(metric)
            result.grad_norms.append(grad_norm)
            result.step = step + 1
            updating = False

            window_losses.append(loss)
            if metric is not None:
                window_metrics.append(metric)
            done = result.step
            if config.log_every and (done % config.log_every == 0 or done == config.steps):
                elapsed = time.perf_counter() - started
                eta = elapsed / (done - start) * (config.steps - done)
                line = f"step {done}/{config.steps}  loss {_fmt(float(np.mean(window_losses)))}"
                if window_metrics:
                    line += f"  {metric_name} {_fmt(float(np.mean(window_metrics)))}"
                line += f"  lr {optimizer.lr:.3g}  {elapsed:.1f}s  eta {eta:.1f}s"
                emit(line)
                window_losses.clear()
                window_metrics.clear()
            if eval_fn is not None and config.eval_every and done % config.eval_every == 0:
                evaluate()
            if config.checkpoint_every and done % config.checkpoint_every == 0:
                save()

        if eval_fn is not None and (not result.evals or result.evals[-1]["step"] != result.step):
            evaluate()
        if path is not None and saved_step != result.step:
            save()
    except TrainingDiverged as err:
        result.seconds = time.perf_counter() - started
        err.result = result                                  # histories up to the bad step
        raise
    except KeyboardInterrupt:
        result.interrupted = True
        if updating:
            kept = "" if saved_step is None else f"; the checkpoint of step {saved_step} is kept"
            emit(f"interrupted during the parameter update of step {result.step}: in-memory "
                 f"params are partially updated and were not saved{kept}")
        elif path is not None:
            if saved_step != result.step:
                save()
            emit(f"interrupted after {result.step} steps; checkpoint {path} (step {result.step})")
        else:
            emit(f"interrupted after {result.step} steps (no checkpoint_path)")
    result.seconds = time.perf_counter() - started
    return result
