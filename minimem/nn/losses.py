"""Losses with their own forward/backward pairs: sigmoid cross-entropy with logits (bit tasks),
softmax cross-entropy (class indices or target distributions), and squared error.

Shapes: outputs are (..., B, Y): typically (T, B, Y) over a sequence or (B, Y) for one step, with
Y bits, classes or features on the last axis. The "steps" are the leading (..., B) entries.
Every loss has the same three stages:
    (1) l[..., b, k]   elementwise loss of one bit / class / feature
    (2) s[..., b] = m[..., b] * sum_k l[..., b, k]     per-step loss, weighted by the mask m
    (3) loss = sum(s) / normaliser
with
    sigmoid cross-entropy   l = max(z, 0) - z y + log(1 + exp(-|z|))   (= -y log p - (1-y) log(1-p))
    softmax cross-entropy   l = -y_k log softmax(z)_k, with log softmax = z - max z - log sum exp(z - max z)
    squared error           l = (p - y)^2
so logits of +-1000 give finite losses and gradients.
Mask m: None (every step counts) or an array with the ndim of (..., B) whose axes equal those of
(..., B) or are 1 — (T, B) per step and sequence, (T, 1) per step. Entries are weights >= 0
(normally 0 or 1). A step with m = 0 contributes exactly zero loss and zero gradient, even if its
outputs hold NaN or inf (padding).
Normaliser (argument `reduction`):
    "batch" (default)  B, the size of the axis before Y: the loss per sequence, summed over time
                       and bits (the NTM/DNC papers' "cost per sequence", spec ntm_dnc_sam.md);
    "steps"            sum(m): the mean loss per counted step (per token);
    "mean"             sum(m) * Y: the mean per counted element (plain MSE when there is no mask);
    "sum"              1.
If the mask sums to 0, the "steps" and "mean" normalisers are taken as 1 (the loss is then 0).
Targets and masks are constants: the backward returns the gradient of the outputs only.
The gradient has the outputs' dtype (float32 logits with float64 targets give a float32 gradient),
so a float32 model trains in float32 end to end.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem.nn.linear import as_float_array

REDUCTIONS = ("batch", "steps", "mean", "sum")


def _weights_and_normaliser(outputs: np.ndarray, mask, reduction: str) -> tuple[np.ndarray, float]:
    """Per-step weights broadcast to (..., B), and the normaliser of stage (3)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")
    steps = outputs.shape[:-1]                                          # (..., B)
    if mask is None:
        weights = np.ones(steps, dtype=outputs.dtype)
    else:
        mask = np.asarray(mask)
        if mask.dtype.kind not in "biuf":
            raise ValueError(f"mask must hold numbers or booleans; got dtype {mask.dtype}")
        if mask.ndim != len(steps) or any(m not in (1, n) for m, n in zip(mask.shape, steps)):
            raise ValueError(f"mask must have shape {steps} (the outputs' shape without Y; axes of size 1 "
                             f"broadcast); got {mask.shape}")
        if not (np.all(np.isfinite(mask)) and np.all(mask >= 0)):
            raise ValueError("mask entries must be finite and >= 0")
        weights = np.broadcast_to(mask.astype(outputs.dtype), steps)
    if reduction == "batch":
        normaliser = steps[-1] if steps else 1
    elif reduction == "sum":
        normaliser = 1
    else:
        normaliser = float(np.sum(weights)) * (outputs.shape[-1] if reduction == "mean" else 1)
    return weights, float(normaliser) if normaliser > 0 else 1.0


def _check_outputs(name: str, outputs) -> np.ndarray:
    outputs = as_float_array(name, outputs)
    if outputs.ndim < 1 or outputs.shape[-1] == 0:
        raise ValueError(f"{name} must have shape (..., B, Y) with Y >= 1; got {outputs.shape}")
    return outputs


def _reduce(elementwise: np.ndarray, weights: np.ndarray, normaliser: float):
    """Stages (2)-(3); masked steps are skipped with `where`, so NaN padding cannot leak in."""
    counted = weights > 0                                               # (..., B)
    per_step = np.where(counted, weights * np.sum(elementwise, axis=-1), 0.0)
    return np.sum(per_step) / normaliser


class LossCache(NamedTuple):
    dloss_dz: np.ndarray   # (..., B, Y) gradient of the elementwise loss, summed over k where needed
    weights: np.ndarray    # (..., B) mask weights
    normaliser: float


def _loss_backward(dout, cache: LossCache) -> np.ndarray:
    dloss_dz, weights, normaliser = cache
    scale = weights[..., None] * (float(dout) / normaliser)             # (..., B, 1)
    return np.where(scale != 0, scale * dloss_dz, 0.0).astype(dloss_dz.dtype, copy=False)


def _autodiff_reduce(elementwise: ad.Tensor, weights: np.ndarray, normaliser: float) -> ad.Tensor:
    per_step = ad.where(weights > 0, ad.sum(elementwise, axis=-1) * weights, 0.0)  # (..., B)
    return ad.sum(per_step) / normaliser


# ----------------------------------------------------------------- sigmoid cross-entropy
def sigmoid_cross_entropy_forward(logits: np.ndarray, targets: np.ndarray, mask=None, reduction: str = "batch"):
    """Binary cross-entropy of sigmoid(logits) against targets, computed from the logits.

    Args:
        logits: (..., B, Y) z.
        targets: (..., B, Y) y in [0, 1] (bits, or probabilities).
        mask: weights of shape (..., B) or broadcastable as in the module docstring, or None.
        reduction: "batch" | "steps" | "mean" | "sum" (module docstring).
    Returns:
        loss (a scalar of the logits' dtype), and the cache for sigmoid_cross_entropy_backward.
    """
    logits = _check_outputs("logits", logits)
    targets = as_float_array("targets", targets)
    if targets.shape != logits.shape:
        raise ValueError(f"targets must have the logits' shape {logits.shape}; got {targets.shape}")
    if not np.all((targets >= 0) & (targets <= 1)):
        raise ValueError("targets must lie in [0, 1]")
    weights, normaliser = _weights_and_normaliser(logits, mask, reduction)
    e = np.exp(-np.abs(logits))                                          # in (0, 1]: never overflows
    elementwise = np.maximum(logits, 0.0) - logits * targets + np.log1p(e)  # (1)
    p = np.where(logits >= 0, 1.0 / (1.0 + e), e / (1.0 + e))            # sigmoid(z)
    loss = _reduce(elementwise, weights, normaliser).astype(logits.dtype)
    return loss, LossCache((p - targets).astype(logits.dtype, copy=False), weights, normaliser)


def sigmoid_cross_entropy_backward(dout, cache: LossCache) -> np.ndarray:
    """dlogits (..., B, Y) = dout * m * (sigmoid(z) - y) / normaliser."""
    return _loss_backward(dout, cache)


def sigmoid_cross_entropy_autodiff(logits, targets, mask=None, reduction: str = "batch") -> ad.Tensor:
    """Autodiff twin: softplus(z) - z y is the same elementwise loss."""
    logits = ad.as_tensor(logits)
    weights, normaliser = _weights_and_normaliser(logits.data, mask, reduction)
    return _autodiff_reduce(ad.softplus(logits) - logits * targets, weights, normaliser)


# ----------------------------------------------------------------- softmax cross-entropy
def _target_distribution(logits: np.ndarray, targets) -> np.ndarray:
    """Targets as (..., B, Y) probabilities: class indices (..., B) become one-hot rows."""
    targets = np.asarray(targets)
    Y = logits.shape[-1]
    if targets.dtype.kind in "iu":
        if targets.shape != logits.shape[:-1]:
            raise ValueError(f"integer targets must have shape {logits.shape[:-1]} (the logits' without Y); "
                             f"got {targets.shape}")
        if not np.all((targets >= 0) & (targets < Y)):
            raise ValueError(f"class indices must lie in [0, Y) = [0, {Y}) (masked steps too)")
        return (targets[..., None] == np.arange(Y)).astype(logits.dtype)
    targets = as_float_array("targets", targets)
    if targets.shape != logits.shape:
        raise ValueError(f"probability targets must have the logits' shape {logits.shape}; got {targets.shape}")
    if not np.all(targets >= 0):
        raise ValueError("probability targets must be >= 0")
    return targets


def softmax_cross_entropy_forward(logits: np.ndarray, targets: np.ndarray, mask=None, reduction: str = "batch"):
    """Cross-entropy of softmax(logits) over the last axis against class indices or distributions.

    Args:
        logits: (..., B, Y) z.
        targets: integer class indices (..., B) in [0, Y), or probabilities / one-hot rows (..., B, Y).
        mask: weights of shape (..., B) or broadcastable as in the module docstring, or None.
        reduction: "batch" | "steps" | "mean" | "sum" (module docstring).
    Returns:
        loss (a scalar of the logits' dtype), and the cache for softmax_cross_entropy_backward.
    """
    logits = _check_outputs("logits", logits)
    y = _target_distribution(logits, targets)                            # (..., B, Y)
    weights, normaliser = _weights_and_normaliser(logits, mask, reduction)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_sum = np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
    log_p = shifted - log_sum                                            # log softmax, never -inf
    elementwise = np.where(y != 0, -y * log_p, 0.0)                      # (1)
    p = np.exp(log_p)
    loss = _reduce(elementwise, weights, normaliser).astype(logits.dtype)
    # d/dz of -sum_k y_k log p_k is p sum_k y_k - y (p - y when the targets sum to 1).
    dloss_dz = (p * y.sum(axis=-1, keepdims=True) - y).astype(logits.dtype, copy=False)
    return loss, LossCache(dloss_dz, weights, normaliser)


def softmax_cross_entropy_backward(dout, cache: LossCache) -> np.ndarray:
    """dlogits (..., B, Y) = dout * m * (softmax(z) sum(y) - y) / normaliser."""
    return _loss_backward(dout, cache)


def softmax_cross_entropy_autodiff(logits, targets, mask=None, reduction: str = "batch") -> ad.Tensor:
    """Autodiff twin, through ad.log_softmax."""
    logits = ad.as_tensor(logits)
    y = _target_distribution(logits.data, targets)
    weights, normaliser = _weights_and_normaliser(logits.data, mask, reduction)
    return _autodiff_reduce(-(ad.log_softmax(logits, axis=-1) * y), weights, normaliser)


# ----------------------------------------------------------------- squared error
def mse_forward(predictions: np.ndarray, targets: np.ndarray, mask=None, reduction: str = "batch"):
    """Squared error (p - y)^2, summed over Y and the counted steps, then normalised.

    With reduction="mean" and no mask this is np.mean((p - y)^2); the default "batch" gives the
    per-sequence sum (the Gaussian log-likelihood scale of a reconstruction term).

    Args:
        predictions: (..., B, Y) p.
        targets: (..., B, Y) y.
        mask: weights of shape (..., B) or broadcastable as in the module docstring, or None.
        reduction: "batch" | "steps" | "mean" | "sum" (module docstring).
    Returns:
        loss (a scalar of the predictions' dtype), and the cache for mse_backward.
    """
    predictions = _check_outputs("predictions", predictions)
    targets = as_float_array("targets", targets)
    if targets.shape != predictions.shape:
        raise ValueError(f"targets must have the predictions' shape {predictions.shape}; got {targets.shape}")
    weights, normaliser = _weights_and_normaliser(predictions, mask, reduction)
    error = predictions - targets                                        # (..., B, Y)
    loss = _reduce(error * error, weights, normaliser).astype(predictions.dtype)
    return loss, LossCache((2.0 * error).astype(predictions.dtype, copy=False), weights, normaliser)


def mse_backward(dout, cache: LossCache) -> np.ndarray:
    """dpredictions (..., B, Y) = dout * m * 2 (p - y) / normaliser."""
    return _loss_backward(dout, cache)


def mse_autodiff(predictions, targets, mask=None, reduction: str = "batch") -> ad.Tensor:
    """Autodiff twin of mse_forward."""
    predictions = ad.as_tensor(predictions)
    weights, normaliser = _weights_and_normaliser(predictions.data, mask, reduction)
    error = predictions - targets
    return _autodiff_reduce(error * error, weights, normaliser)
