"""Optimisers and global-norm gradient clipping for parameter dicts.

Every optimiser is bound to one parameter dict (`dict[str, np.ndarray]`, dotted names such as
`controller.W_x`) and updates its arrays in place, so a model that holds references to them sees
the new values. `step(grads)` takes a dict with exactly the same names and shapes.

    opt = Adam(model.params, lr=1e-3)
    grads, norm = clip_grad_norm(model.backward(dout, cache), max_norm=10.0)
    opt.step(grads)

Update equations (g is the gradient, lr the learning rate, t the number of updates so far
including this one; all operations elementwise):

    SGD, momentum mu (Sutskever et al., 2013, eqs. 1-2):
        v <- mu * v - lr * g ;  p <- p + v                     (mu = 0: p <- p - lr * g)
    Adam (Kingma & Ba, 2015, Algorithm 1):
        m <- b1 * m + (1 - b1) * g ;  v <- b2 * v + (1 - b2) * g^2
        m_hat = m / (1 - b1^t) ;  v_hat = v / (1 - b2^t)
        p <- p - lr * m_hat / (sqrt(v_hat) + eps)
    AdamW, weight decay wd (Loshchilov & Hutter, 2019, Algorithm 2, decoupled decay; PyTorch's form):
        p <- p - lr * wd * p, then the Adam update above
    RMSProp, decay rho, momentum mu (Graves, 2013, arXiv:1308.0850, eqs. 38-41; the NTM and DNC
    papers train with it):
        s <- rho * s + (1 - rho) * g^2
        d = sqrt(s + eps)                         standard
        d = sqrt(max(s - a^2, 0) + eps)           centered, with a <- rho * a + (1 - rho) * g
        v <- mu * v - lr * g / d ;  p <- p + v                 (mu = 0: p <- p - lr * g / d)

State (moments, velocities, the update count and lr) lives in arrays, so it can go into a
checkpoint: `state_dict()` returns flat dotted names ("adam.m.controller.W_x", "adam.step",
"adam.lr") and `load_state_dict(d)` restores them exactly, so a resumed optimiser continues
bit-identically. `lr` is a plain attribute that learning-rate schedules may change between steps;
warmup_cosine(lr, warmup, steps) is such a schedule (train.train's lr_schedule).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSProp", "clip_grad_norm", "global_norm", "check_grads",
           "warmup_cosine"]


def _describe(array: np.ndarray) -> str:
    return f"shape {tuple(array.shape)} {array.dtype}"


def check_grads(grads: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray]) -> None:
    """Raise ValueError unless `grads` has exactly the names and shapes of `params`, all finite.

    The message names the offending array and the shape it should have.
    """
    if not isinstance(grads, Mapping):
        raise ValueError(f"grads must be a dict of arrays; got {type(grads).__name__}")
    missing = [name for name in params if name not in grads]
    if missing:
        name = missing[0]
        raise ValueError(
            f"gradient for {name!r} is missing (expected shape {tuple(params[name].shape)}); "
            f"missing names: {missing}")
    unexpected = [name for name in grads if name not in params]
    if unexpected:
        raise ValueError(
            f"gradient {unexpected[0]!r} has no matching parameter; unexpected names: {unexpected}")
    for name, param in params.items():
        grad = grads[name]
        if not isinstance(grad, (np.ndarray, np.generic)) or grad.dtype.kind not in "fiu":
            raise ValueError(
                f"gradient for {name!r} must be a real numeric np.ndarray with shape "
                f"{tuple(param.shape)}; got {type(grad).__name__} "
                f"{getattr(grad, 'dtype', '')}".rstrip())
        if grad.shape != param.shape:
            raise ValueError(
                f"gradient for {name!r} has shape {tuple(grad.shape)}; expected shape "
                f"{tuple(param.shape)} (the parameter's shape)")
        if not np.all(np.isfinite(grad)):
            bad = int(np.size(grad) - np.count_nonzero(np.isfinite(grad)))
            raise ValueError(f"gradient for {name!r} has {bad} non-finite (nan/inf) entries")


def global_norm(grads: Mapping[str, np.ndarray]) -> float:
    """sqrt(sum_k |g_k|^2) over all arrays, in float64 (nan if any entry is nan)."""
    arrays = [np.asarray(g) for g in grads.values()]
    # Divide by the largest entry first so huge (finite) gradients do not overflow when squared.
    largest = max((float(np.max(np.abs(g))) for g in arrays if g.size), default=0.0)
    if largest == 0.0 or not np.isfinite(largest):
        return largest
    total = sum(float(np.sum(np.square(g / largest, dtype=np.float64))) for g in arrays)
    return largest * float(np.sqrt(total))


def clip_grad_norm(grads: Mapping[str, np.ndarray],
                   max_norm: float) -> tuple[dict[str, np.ndarray], float]:
    """Global-norm clipping (Pascanu et al., 2013): scale all gradients together so that
    sqrt(sum_k |g_k|^2) <= max_norm.

    Args:
        grads: name -> gradient array, any shapes. Not modified.
        max_norm: the largest allowed global L2 norm, > 0.
    Returns:
        (clipped, total_norm): a new dict of new arrays (each g * max_norm / total_norm when
        total_norm > max_norm, else a copy of g), and the global norm before clipping (a float).
    Raises:
        ValueError: max_norm not a positive finite number, or a non-finite gradient (named).
    """
    max_norm = float(max_norm)
    if not (np.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"max_norm must be a positive finite number; got {max_norm}")
    if not isinstance(grads, Mapping):
        raise ValueError(f"grads must be a dict of arrays; got {type(grads).__name__}")
    arrays = {}
    for name, grad in grads.items():
        grad = np.asarray(grad)
        if grad.dtype.kind not in "fiu":
            raise ValueError(f"gradient for {name!r} must be real numeric; got dtype {grad.dtype}")
        if not np.all(np.isfinite(grad)):
            raise ValueError(f"gradient for {name!r} has non-finite (nan/inf) entries")
        arrays[name] = grad
    total_norm = global_norm(arrays)
    if total_norm > max_norm:
        scale = max_norm / total_norm
        return {name: g * scale for name, g in arrays.items()}, total_norm
    return {name: g.copy() for name, g in arrays.items()}, total_norm


class Optimizer:
    """Base class: binds a parameter dict, validates gradients, owns the state arrays.

    Subclasses set `prefix` (the state_dict namespace), declare their per-parameter state slots
    by filling `self.slots` in __init__, and implement `_update(name, param, grad)`.
    """

    prefix = "optimizer"

    def __init__(self, params: dict[str, np.ndarray], lr: float) -> None:
        if not isinstance(params, dict):
            raise ValueError(f"params must be a dict[str, np.ndarray]; got {type(params).__name__}")
        for name, param in params.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"parameter names must be non-empty strings; got {name!r}")
            if not isinstance(param, np.ndarray) or param.dtype.kind != "f":
                raise ValueError(
                    f"parameter {name!r} must be a floating-point np.ndarray; got "
                    f"{type(param).__name__} {getattr(param, 'dtype', '')}".rstrip())
        self.params = params
        self.lr = lr
        self.num_steps = 0                                   # t: updates applied so far
        self.slots: dict[str, dict[str, np.ndarray]] = {}    # slot -> name -> array like param

    # ------------------------------------------------------------------ hyper-parameters
    @property
    def lr(self) -> float:
        """Learning rate; may be changed between steps (schedules)."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        value = float(value)
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"lr must be a finite number >= 0; got {value}")
        self._lr = value

    def hyperparameters(self) -> dict[str, float | bool | str]:
        """The optimiser's settings as a JSON-friendly dict (for checkpoint configs)."""
        return {"type": type(self).__name__, "lr": self.lr}

    def _add_slot(self, slot: str) -> None:
        self.slots[slot] = {name: np.zeros_like(p) for name, p in self.params.items()}

    # ------------------------------------------------------------------ the update
    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        """Apply one update to every parameter in place.

        Raises:
            ValueError: grads has missing or extra names, a mis-shaped array, or nan/inf
                entries (the message names the array). Nothing is updated in that case.
        """
        check_grads(grads, self.params)
        self.num_steps += 1
        for name, param in self.params.items():
            self._update(name, param, grads[name])

    def _update(self, name: str, param: np.ndarray, grad: np.ndarray) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, np.ndarray]:
        """All state as flat dotted names -> new arrays: "<prefix>.<slot>.<param name>",
        "<prefix>.step" (0-d int64) and "<prefix>.lr" (0-d float64)."""
        state = {f"{self.prefix}.step": np.array(self.num_steps, dtype=np.int64),
                 f"{self.prefix}.lr": np.array(self.lr, dtype=np.float64)}
        for slot, arrays in self.slots.items():
            for name, array in arrays.items():
                state[f"{self.prefix}.{slot}.{name}"] = array.copy()
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore the state written by state_dict() (copied, bit-exact; lr is restored too).

        Raises:
            ValueError: a missing or unexpected name, or an array whose shape or dtype differs
                from this optimiser's (the message names it, with expected and found).
        """
        expected = self.state_dict()
        missing = [key for key in expected if key not in state]
        unexpected = [key for key in state if key not in expected]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append("missing: " + ", ".join(
                    f"{key} ({_describe(expected[key])})" for key in missing))
            if unexpected:
                parts.append("unexpected: " + ", ".join(unexpected))
            raise ValueError(f"{type(self).__name__} state does not match this optimiser; "
                             + "; ".join(parts))
        for key, want in expected.items():
            found = np.asarray(state[key])
            if found.shape != want.shape or found.dtype != want.dtype:
                raise ValueError(f"optimiser state {key!r}: expected {_describe(want)}, "
                                 f"found {_describe(found)}")
        step = int(state[f"{self.prefix}.step"])
        if step < 0:
            raise ValueError(f"optimiser state {self.prefix}.step must be >= 0; got {step}")
        self.lr = float(state[f"{self.prefix}.lr"])
        self.num_steps = step
        for slot, arrays in self.slots.items():
            for name, array in arrays.items():
                np.copyto(array, state[f"{self.prefix}.{slot}.{name}"])


def _check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not (0.0 <= value < 1.0):
        raise ValueError(f"{name} must be in [0, 1); got {value}")
    return value


def _check_eps(value: float) -> float:
    value = float(value)
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"eps must be a positive finite number; got {value}")
    return value


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum (Sutskever et al., 2013, eqs. 1-2):

        v <- mu * v - lr * g ;  p <- p + v          (mu = 0: p <- p - lr * g, no state)

    State: "sgd.velocity.<name>" (only when momentum > 0), "sgd.step", "sgd.lr".
    """

    prefix = "sgd"

    def __init__(self, params: dict[str, np.ndarray], lr: float = 1e-2,
                 momentum: float = 0.0) -> None:
        super().__init__(params, lr)
        self.momentum = _check_fraction("momentum", momentum)
        if self.momentum > 0:
            self._add_slot("velocity")

    def hyperparameters(self) -> dict[str, float | bool | str]:
        return {**super().hyperparameters(), "momentum": self.momentum}

    def _update(self, name: str, param: np.ndarray, grad: np.ndarray) -> None:
        if self.momentum == 0:
            param -= self.lr * grad
            return
        v = self.slots["velocity"][name]
        v *= self.momentum
        v -= self.lr * grad                                  # v <- mu v - lr g
        param += v


class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba, 2015, Algorithm 1):

        m <- b1 * m + (1 - b1) * g ;  v <- b2 * v + (1 - b2) * g^2
        m_hat = m / (1 - b1^t) ;  v_hat = v / (1 - b2^t)
        p <- p - lr * m_hat / (sqrt(v_hat) + eps)

    t counts updates including the current one (1 at the first step).
    State: "adam.m.<name>", "adam.v.<name>", "adam.step" (t), "adam.lr".
    """

    prefix = "adam"

    def __init__(self, params: dict[str, np.ndarray], lr: float = 1e-3, beta1: float = 0.9,
                 beta2: float = 0.999, eps: float = 1e-8) -> None:
        super().__init__(params, lr)
        self.beta1 = _check_fraction("beta1", beta1)
        self.beta2 = _check_fraction("beta2", beta2)
        self.eps = _check_eps(eps)
        self._add_slot("m")
        self._add_slot("v")

    def hyperparameters(self) -> dict[str, float | bool | str]:
        return {**super().hyperparameters(), "beta1": self.beta1, "beta2": self.beta2,
                "eps": self.eps}

    def _update(self, name: str, param: np.ndarray, grad: np.ndarray) -> None:
        m, v = self.slots["m"][name], self.slots["v"][name]
        t = self.num_steps
        m *= self.beta1
        m += (1.0 - self.beta1) * grad                       # first moment
        v *= self.beta2
        v += (1.0 - self.beta2) * np.square(grad)            # second moment
        m_hat = m / (1.0 - self.beta1 ** t)
        v_hat = v / (1.0 - self.beta2 ** t)
        param -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019, Algorithm 2, in PyTorch's form):

        p <- p - lr * wd * p ;  then Adam's update of p with the gradient g

    The decay is applied to the parameter, not added to g, so Adam's per-entry scaling does not
    touch it. wd = 0 is exactly Adam. State as Adam's, under "adamw." instead of "adam.".
    """

    prefix = "adamw"

    def __init__(self, params: dict[str, np.ndarray], lr: float = 1e-3, weight_decay: float = 1e-2,
                 beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        super().__init__(params, lr, beta1, beta2, eps)
        weight_decay = float(weight_decay)
        if not (np.isfinite(weight_decay) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0; got {weight_decay}")
        self.weight_decay = weight_decay

    def hyperparameters(self) -> dict[str, float | bool | str]:
        return {**super().hyperparameters(), "weight_decay": self.weight_decay}

    def _update(self, name: str, param: np.ndarray, grad: np.ndarray) -> None:
        param -= self.lr * self.weight_decay * param           # decoupled decay
        super()._update(name, param, grad)


def warmup_cosine(lr: float, warmup: int, steps: int):
    """A learning-rate schedule for train.train (lr_schedule(step) -> rate, steps counted from 0):
    linear warm-up to lr over the first `warmup` steps (lr (step + 1) / warmup), then cosine decay
    to 0 at step `steps`: lr (1 + cos(pi (step - warmup) / (steps - warmup))) / 2. The warm-up is
    cut to steps - 1 when the run is shorter than it."""
    warmup = min(int(warmup), max(int(steps) - 1, 1))
    if warmup < 1:
        raise ValueError(f"warmup must be >= 1; got {warmup}")

    def schedule(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))

    return schedule


class RMSProp(Optimizer):
    """RMSProp as used for the NTM and DNC (Graves, 2013, arXiv:1308.0850, eqs. 38-41):

        s <- rho * s + (1 - rho) * g^2                      running mean square (n in eq. 38)
        a <- rho * a + (1 - rho) * g                        running mean (eq. 39; centered only)
        d = sqrt(s + eps)                                   standard
        d = sqrt(max(s - a^2, 0) + eps)                     centered (eq. 40); the max only
                                                            guards against rounding below zero
        v <- mu * v - lr * g / d ;  p <- p + v              momentum mu > 0 (eqs. 40-41)
        p <- p - lr * g / d                                 mu = 0

    eps sits inside the square root, as in the paper. Defaults follow the NTM paper's
    settings (decay 0.95, momentum 0.9, lr 1e-4); Graves (2013) used centered=True, eps=1e-4.
    With momentum the learning rate enters the velocity, so an lr change affects new steps only.
    State: "rmsprop.mean_square.<name>", "rmsprop.mean_grad.<name>" (centered),
    "rmsprop.velocity.<name>" (momentum > 0), "rmsprop.step", "rmsprop.lr".
    """

    prefix = "rmsprop"

    def __init__(self, params: dict[str, np.ndarray], lr: float = 1e-4, decay: float = 0.95,
                 momentum: float = 0.9, eps: float = 1e-8, centered: bool = False) -> None:
        super().__init__(params, lr)
        self.decay = _check_fraction("decay", decay)
        self.momentum = _check_fraction("momentum", momentum)
        self.eps = _check_eps(eps)
        self.centered = bool(centered)
        self._add_slot("mean_square")
        if self.centered:
            self._add_slot("mean_grad")
        if self.momentum > 0:
            self._add_slot("velocity")

    def hyperparameters(self) -> dict[str, float | bool | str]:
        return {**super().hyperparameters(), "decay": self.decay, "momentum": self.momentum,
                "eps": self.eps, "centered": self.centered}

    def _update(self, name: str, param: np.ndarray, grad: np.ndarray) -> None:
        s = self.slots["mean_square"][name]
        s *= self.decay
        s += (1.0 - self.decay) * np.square(grad)            # eq. (38)
        if self.centered:
            a = self.slots["mean_grad"][name]
            a *= self.decay
            a += (1.0 - self.decay) * grad                   # eq. (39)
            d = np.sqrt(np.maximum(s - np.square(a), 0.0) + self.eps)
        else:
            d = np.sqrt(s + self.eps)
        if self.momentum == 0:
            param -= self.lr * grad / d
            return
        v = self.slots["velocity"][name]
        v *= self.momentum
        v -= self.lr * grad / d                              # eq. (40)
        param += v                                           # eq. (41)
