"""Gradient-check cases for VMA (specs/generative_memory.md part D): checking a stochastic model.

Every random quantity is an input (addresses a and noise eps), so each objective below is a
deterministic function of the parameters. What differs is which function is checked against
which gradient:

    D.2  vma.pathwise.*    J = L_S(theta; a, eps), a fixed          vs  the exact backward ("pathwise")
         vma.exact.*       J = L_exact (V14), one eps per slot      vs  the exact backward ("exact")
    D.3  vma.surrogate.*   F = L_S + sum_s c_s(theta0) log q(a_s)   vs  the VIMCO backward
                           (c_s frozen as numbers at theta0; recomputing them would differentiate the
                           baseline, a bug in the check, not in the model)
    D.4  vma.enum.*        J_enum = sum_{a in [N']^S} prod_s q(a_s) L_S(a)   vs  G_enum = sum_a prod_s
                           q(a_s) g_VIMCO(a): VIMCO is unbiased iff they agree (B = 1, N' = 3, S = 2, 3)
    D.5  every case runs both engines; manual (organisation 2 of A.4) must equal autodiff
         (organisation 1, the stop-gradient surrogate) to 1e-10.

Negative controls (spec D.4) are NOT registered, because `python -m gradcheck` expects every
registered case to pass: `negative_controls()` builds the two planted-wrong estimators, which must
FAIL the enumeration check (tests/test_vma.py runs them): (i) log q(a_s) detached inside log w_s
while the signal stays c_s, (ii) a "baseline" that contains sample s itself (L_-s := L).
The no-baseline estimator (c_s = L) is unbiased and is registered as vma.enum.no_baseline.

Sizes: X = 12, hidden sizes <= 5, Z = 3; parameters are perturbed away from the init (whose zero
biases and tiny heads are too symmetric to catch a transposed or dropped term); tanh everywhere.
Tolerance: the project standard (an entry passes when |a - n| <= 1e-8 or relative error <= 1e-6),
at central-difference step h = 1e-5 rather than 1e-6 (see EPS below).
"""

from __future__ import annotations

import itertools

import numpy as np

from gradcheck.cases import register
from gradcheck.core import Case, projection_loss
from minimem import autodiff as ad
from minimem.memory.vma import VMA, VMAConfig, VMAInputs

# Project-standard tolerance (rtol 1e-6, atol 1e-8) with a central-difference step of 1e-5, not the
# default 1e-6: the objective is a bound of tens to ~150 nats, so at h = 1e-6 the round-off of one
# difference, eps_machine |J| / h, is 3e-8 and swamps gradient entries of 1e-2 (relative error up
# to 4e-6 at h = 1e-6, falling 10x at h = 1e-5 and rising 10x at h = 1e-7: float-limited, not a
# kink). At h = 1e-5 the truncation error (h^2 f''' / 6) stays below 3e-8 on these smooth cases.
RTOL, ATOL, EPS = 1e-6, 1e-8, 1e-5
SIZES = dict(X=12, Z=3, E=4, He=5, H=5)


def _model(rng: np.random.Generator, model_class=VMA, scale: float = 0.3, **options) -> VMA:
    """A small VMA with every parameter moved off its (symmetric) init by N(0, scale^2)."""
    model = model_class(VMAConfig(**SIZES, **options), rng=rng)
    for name, value in model.params.items():
        model.params[name] = value + scale * rng.standard_normal(value.shape)
    return model


def _data(rng: np.random.Generator, B: int, N: int | None, X: int = 12):
    """Binary targets (B, X) and memories (B, N, X) (None for learned mode), about 30% ink."""
    x = (rng.random((B, X)) < 0.3).astype(np.float64)
    M = None if N is None else (rng.random((B, N, X)) < 0.3).astype(np.float64)
    return x, M


def _b_index(a: np.ndarray) -> np.ndarray:
    return np.broadcast_to(np.arange(a.shape[1])[None, :], a.shape)


# ----------------------------------------------------------------- D.3: frozen-signal surrogate
class FrozenSignalSurrogate:
    """F(theta) = L_S(theta; a, eps) + sum_s c_s(theta0) log q(a_s | M, x; theta) per episode, with
    the VIMCO signals c_s(theta0) computed once, at construction, and frozen (spec D.3).

    forward -> F (B,); backward -> the wrapped model's VIMCO backward (which computes its own
    signals at the point it is evaluated, theta0 in a gradient check); forward_autodiff -> the
    model's autodiff VIMCO surrogate shifted by the constant sum_s c_s log q(a_s).
    The parameters are the wrapped model's (the same dict).
    """

    def __init__(self, model: VMA, inputs: VMAInputs):
        if model.config.estimator != "vimco":
            raise ValueError(f"the surrogate check needs a model with estimator='vimco'; got {model.config.estimator!r}")
        if inputs.a is None:
            raise ValueError("the surrogate check needs fixed addresses a (S, B), not uniforms (spec D.6)")
        self.model, self.params = model, model.params
        _, cache = model.forward(inputs)
        self.signal = cache.signal.copy()                                   # (S, B), frozen at theta0

    def _log_q_a(self, log_q: np.ndarray, a: np.ndarray) -> np.ndarray:
        return log_q[_b_index(a), a]                                        # (S, B)

    def forward(self, inputs: VMAInputs):
        L, cache = self.model.forward(inputs)
        return L + np.sum(self.signal * self._log_q_a(cache.log_q, cache.a), axis=0), cache

    def backward(self, dF, cache) -> dict:
        return self.model.backward(dF, cache)

    def forward_autodiff(self, tparams, inputs: VMAInputs) -> ad.Tensor:
        L = self.model.forward_autodiff(tparams, inputs)
        log_q = self.model.address_posterior(inputs.x, inputs.M, {k: t.data for k, t in tparams.items()})
        return L + np.sum(self.signal * self._log_q_a(log_q, np.asarray(inputs.a)), axis=0)


# ----------------------------------------------------------------- D.4: enumeration over addresses
class EnumeratedObjective:
    """The enumeration oracle of spec D.4, as a model of the parameters.

    forward -> J_enum (B,) = sum_{a in [N']^S} prod_s q(a_s | M, x; theta) L_S(theta; a, eps)
    backward -> G_enum = sum_a prod_s q(a_s | M, x; theta0) g(theta0; a, eps), where g is the wrapped
    model's backward (its estimator): G_enum equals grad J_enum exactly iff g is unbiased.
    All N'^S address tuples run as one batch of N'^S * B episodes (tuple-major), sharing eps.
    """

    def __init__(self, model: VMA):
        self.model, self.params = model, model.params

    def _tiled(self, inputs: VMAInputs) -> tuple[VMAInputs, np.ndarray]:
        x, M, eps = inputs.x, inputs.M, np.asarray(inputs.eps)
        S, B = eps.shape[:2]
        tuples = np.array(list(itertools.product(range(self.model.slots(M)), repeat=S)))   # (T, S)
        T = len(tuples)
        a = np.repeat(tuples.T, B, axis=1)                                  # (S, T*B), episode t*B + b
        tiled = VMAInputs(np.tile(x, (T, 1)), None if M is None else np.tile(M, (T, 1, 1)),
                          a=a, eps=np.tile(eps, (1, T, 1)))
        return tiled, a

    def _weights(self, log_q: np.ndarray, a: np.ndarray) -> np.ndarray:
        """prod_s q(a_s) for every tuple (T*B,), a constant of the backward."""
        return np.exp(np.sum(log_q[_b_index(a), a], axis=0))

    def forward(self, inputs: VMAInputs):
        tiled, a = self._tiled(inputs)
        L, cache = self.model.forward(tiled)                                # (T*B,)
        weights = self._weights(cache.log_q, a)
        B = inputs.x.shape[0]
        return np.sum((weights * L).reshape(-1, B), axis=0), (cache, weights)

    def backward(self, dJ, cache) -> dict:
        inner, weights = cache
        return self.model.backward(np.tile(dJ, len(weights) // len(dJ)) * weights, inner)

    def forward_autodiff(self, tparams, inputs: VMAInputs) -> ad.Tensor:
        tiled, a = self._tiled(inputs)
        L = self.model.forward_autodiff(tparams, tiled)                     # (T*B,) estimator's gradient
        log_q = self.model.address_posterior(tiled.x, tiled.M, {k: t.data for k, t in tparams.items()})
        B = inputs.x.shape[0]
        return ad.sum(ad.reshape(L * self._weights(log_q, a), (-1, B)), axis=0)


# ----------------------------------------------------------------- planted-wrong estimators (D.4)
class DetachedLogQBug(VMA):
    """Negative control (i): log q(a_s) treated as a constant inside log w_s (as the reference code
    does) while the signal stays c_s instead of c_s - w~_s: drops -sum_s w~_s grad log q(a_s)."""

    def score_coefficients(self, dL, w_tilde, signal):
        return dL[None, :] * signal


class SelfBaselineBug(VMA):
    """Negative control (ii): a "baseline" that contains sample s itself, L_-s := L, so c_s = 0 and
    the score term vanishes."""

    def learning_signal(self, log_w):
        c, L_loo = super().learning_signal(log_w)
        return np.zeros_like(c), L_loo + c                                  # L_-s = L


# ----------------------------------------------------------------- cases
def _sampled_inputs(model: VMA, rng, x, M, S: int, a=None) -> VMAInputs:
    B = x.shape[0]
    a = rng.integers(0, model.slots(M), size=(S, B)) if a is None else np.asarray(a)
    return VMAInputs(x, M, a=a, eps=rng.standard_normal((S, B, model.config.Z)))


def _projected(name: str, model, inputs, rng, notes: str) -> Case:
    outputs, _ = model.forward(inputs)
    return Case(name, model, inputs, projection_loss(rng, outputs), rtol=RTOL, atol=ATOL, eps=EPS, notes=notes)


@register("vma")
def pathwise_cases():
    """D.2: the exact gradient of L_S with a and eps fixed (log q(a_s) inside log w_s)."""
    rng = np.random.default_rng(10)
    model = _model(rng, estimator="pathwise", n_dummy=1, separate_query=True, addr_scale=True)
    x, M = _data(rng, 2, 3)
    inputs = _sampled_inputs(model, rng, x, M, S=3, a=[[0, 3], [2, 3], [0, 1]])   # a dummy and a repeat
    few_shot = _projected("vma.pathwise.few_shot", model, inputs, rng,
                          "D.2: S=3, N'=3+1 dummy, separate query, 1/sqrt(E) scale, a fixed")
    rng = np.random.default_rng(11)
    model = _model(rng, estimator="pathwise", memory="learned", N=3)
    x, _ = _data(rng, 2, None)
    inputs = _sampled_inputs(model, rng, x, None, S=3, a=[[1, 0], [1, 2], [2, 2]])   # duplicate slots
    learned = _projected("vma.pathwise.learned", model, inputs, rng,
                         "D.2: learned mem.M and prior logits; forced duplicate addresses (scatter-add)")
    return [few_shot, learned]


@register("vma")
def exact_cases():
    """D.2 for the exact-address bound (V14), dense and top-k."""
    cases = []
    for name, options, seed in (("vma.exact.learned", dict(memory="learned", N=3), 12),
                                ("vma.exact.top_k", dict(n_dummy=1, top_k=3), 13)):
        rng = np.random.default_rng(seed)
        model = _model(rng, estimator="exact", **options)
        x, M = _data(rng, 2, None if options.get("memory") == "learned" else 3)
        inputs = VMAInputs(x, M, eps=rng.standard_normal((model.slots(M), 2, model.config.Z)))
        if "top_k" in options:                          # keep the top-k set away from ties (D.6)
            l = np.sort(model.address_posterior(x, M), axis=-1)
            gap = np.min(l[:, -3] - l[:, -4])
            if gap < 1e-3:
                raise ValueError(f"vma.exact.top_k: seed gives a top-k gap {gap:.1e} < 1e-3; reseed")
        cases.append(_projected(name, model, inputs, rng, f"D.2 for (V14): {options}, one eps per slot"))
    return cases


@register("vma")
def surrogate_cases():
    """D.3: the VIMCO gradient equals the finite-difference gradient of the frozen-signal surrogate."""
    cases = []
    for baseline, options, seed in (("geometric", dict(n_dummy=1), 14), ("arithmetic", dict(memory="learned", N=3), 15)):
        rng = np.random.default_rng(seed)
        model = _model(rng, estimator="vimco", baseline=baseline, **options)
        x, M = _data(rng, 2, None if options.get("memory") == "learned" else 3)
        inputs = _sampled_inputs(model, rng, x, M, S=3)
        surrogate = FrozenSignalSurrogate(model, inputs)
        cases.append(_projected(f"vma.surrogate.{baseline}", surrogate, inputs, rng,
                                f"D.3: {baseline} baseline, S=3, {options}, c_s frozen at theta0"))
    return cases


def _enum_case(name: str, seed: int, S: int, notes: str, model_class=VMA, **options) -> Case:
    rng = np.random.default_rng(seed)
    model = _model(rng, model_class=model_class, estimator="vimco", **options)
    x, M = _data(rng, 1, None if options.get("memory") == "learned" else 3)
    inputs = VMAInputs(x, M, eps=rng.standard_normal((S, 1, model.config.Z)))
    objective = EnumeratedObjective(model)
    return Case(name, objective, inputs, lambda J: (float(J[0]), np.ones(1)), rtol=RTOL, atol=ATOL, eps=EPS, notes=notes)


@register("vma")
def enumeration_cases():
    """D.4: VIMCO is unbiased - grad of the enumerated objective equals the enumerated estimator."""
    return [
        _enum_case("vma.enum.geometric", 16, 3, "D.4: geometric baseline, N'=3, S=3 (27 tuples)", baseline="geometric"),
        _enum_case("vma.enum.arithmetic", 17, 2, "D.4: arithmetic baseline, learned mode N=3, S=2",
                   baseline="arithmetic", memory="learned", N=3),
        _enum_case("vma.enum.no_baseline", 18, 2, "D.4 control that must pass: c_s = L (unbiased, high variance)",
                   baseline="none"),
    ]


def negative_controls() -> list[Case]:
    """The planted-wrong estimators of spec D.4; each must FAIL check_model (not registered)."""
    return [
        _enum_case("vma.enum.planted.detached_log_q", 16, 3, "must FAIL: log q detached in log w, signal c_s",
                   model_class=DetachedLogQBug, baseline="geometric"),
        _enum_case("vma.enum.planted.self_baseline", 16, 3, "must FAIL: L_-s := L (score term deleted)",
                   model_class=SelfBaselineBug, baseline="geometric"),
    ]
