"""Gradient-check cases for the VSM-style model (reconstructed; specs/generative_memory.md C.5, D.2).

The semantic address is summed out exactly, so the whole bound (S1)-(S15) is a smooth function of
the parameters once the noise (eps_c, eps_z) is fixed: a plain pathwise check. The n_c = 0 branch
(no context: chat = 0, pi = 0, no episodic read) is a different function, not a limit, so it has a
case of its own besides a batch mixing n_c = 0 with n_c > 0. Both plug-ins are covered: vsm.hvae.*
(hierarchical, class VSM) and vsm.vae.* (non-hierarchical, VSMConfig(variant="vae"), class VSMVAE),
each also with the episodic read switched off (ablation C.6 b). Masked context slots hold garbage, to
show it never enters. The semantic state is a constant here, except in vsm.hvae.state_as_input,
which declares sem.mu and sem.lam inputs (for checking foreign implementations; minimem never
updates the memory by gradient).

Sizes: X = 12, Hu = H = 5, Z = Zc = 3, Hk = 4, Ns = 4, n_t = 2; parameters perturbed off the init;
project-standard tolerance (|a - n| <= 1e-8 or relative error <= 1e-6) at step h = 1e-5 (see EPS).
"""

from __future__ import annotations

import numpy as np

from gradcheck.cases import register
from gradcheck.core import Case, projection_loss
from minimem.memory.vsm import VSM, VSMConfig, VSMInputs
from minimem.memory.vsm_memory import SemanticState

# Project-standard tolerance (rtol 1e-6, atol 1e-8) with a central-difference step of 1e-5, not the
# default 1e-6: the objective is a bound of tens to ~150 nats, so at h = 1e-6 the round-off of one
# difference, eps_machine |J| / h, is 3e-8 and swamps gradient entries of 1e-2 (relative error up
# to 4e-6 at h = 1e-6, falling 10x at h = 1e-5 and rising 10x at h = 1e-7: float-limited, not a
# kink). At h = 1e-5 the truncation error (h^2 f''' / 6) stays below 3e-8 on these smooth cases.
RTOL, ATOL, EPS = 1e-6, 1e-8, 1e-5
SIZES = dict(X=12, Z=3, Zc=3, Hu=5, H=5, Hk=4, Ns=4)


def small_vsm(rng: np.random.Generator, scale: float = 0.3, **options) -> VSM:
    """A small VSM (VSMConfig options, e.g. variant="vae") with parameters moved off the init and a
    random, uneven semantic state."""
    model = VSM(VSMConfig(**SIZES, **options), rng=rng)
    for name, value in model.params.items():
        model.params[name] = value + scale * rng.standard_normal(value.shape)
    Ns, Zc = SIZES["Ns"], SIZES["Zc"]
    model.state = SemanticState(rng.standard_normal((Ns, Zc)), rng.uniform(0.5, 2.0, (Ns, Zc)), np.zeros(Ns))
    return model


def small_tasks(rng: np.random.Generator, n_c, Ne: int = 3, n_t: int = 2, X: int = 12, variant: str = "hvae") -> VSMInputs:
    """Binary context and target images; masked context slots filled with large garbage. Noise for
    the variant: eps_c (B, Zc) and eps_z (B, n_t, Z) for "hvae"; eps_c (B, n_t, Zc), no eps_z for "vae"."""
    n_c = np.asarray(n_c)
    B = len(n_c)
    context = (rng.random((B, Ne, X)) < 0.3).astype(np.float64)
    mask = np.arange(Ne)[None, :] < n_c[:, None]
    context[~mask] = 5.0 * rng.standard_normal(context[~mask].shape)
    targets = (rng.random((B, n_t, X)) < 0.3).astype(np.float64)
    if variant == "vae":
        return VSMInputs(context, mask, targets, rng.standard_normal((B, n_t, SIZES["Zc"])), None)
    return VSMInputs(context, mask, targets, rng.standard_normal((B, SIZES["Zc"])),
                     rng.standard_normal((B, n_t, SIZES["Z"])))


class StateAsInput:
    """A VSM whose semantic state (sem.mu, sem.lam) is part of the checked parameters."""

    def __init__(self, model: VSM):
        self.model = model
        self.params = {**model.params, "sem.mu": model.state.mu.copy(), "sem.lam": model.state.lam.copy()}

    def _sync(self) -> None:
        self.model.params = {name: self.params[name] for name in self.model.params}
        self.model.state = self.model.state._replace(mu=self.params["sem.mu"], lam=self.params["sem.lam"])

    def forward(self, inputs: VSMInputs):
        self._sync()
        return self.model.forward(inputs)

    def backward(self, dL, cache) -> dict:
        return self.model.backward(dL, cache, state_grads=True)

    def forward_autodiff(self, tparams, inputs: VSMInputs):
        self._sync()
        return self.model.forward_autodiff(tparams, inputs)


def _case(name: str, model, inputs: VSMInputs, rng, notes: str) -> Case:
    outputs, _ = model.forward(inputs)
    return Case(name, model, inputs, projection_loss(rng, outputs), rtol=RTOL, atol=ATOL, eps=EPS, notes=notes)


@register("vsm")
def vsm_cases():
    rng = np.random.default_rng(20)
    mixed = _case("vsm.hvae.mixed", small_vsm(rng), small_tasks(rng, [2, 0, 3]), rng,
                  "D.2: S1-S15, n_c = 2, 0, 3 in one batch, garbage in masked slots")
    rng = np.random.default_rng(21)
    zero = _case("vsm.hvae.zero_shot", small_vsm(rng), small_tasks(rng, [0, 0]), rng,
                 "D.2: the n_c = 0 branch alone (no cue, uniform recall prior, no episodic read)")
    rng = np.random.default_rng(22)
    state = _case("vsm.hvae.state_as_input", StateAsInput(small_vsm(rng)), small_tasks(rng, [1, 3]), rng,
                  "D.2 with sem.mu and sem.lam declared inputs (C.5), n_c = 1, 3")
    rng = np.random.default_rng(23)
    no_read = _case("vsm.hvae.no_episodic_read", small_vsm(rng, episodic_read=False), small_tasks(rng, [2, 3]), rng,
                    "D.2, ablation C.6 (b): episodic read off (att.* get exactly zero gradient)")
    cases = [mixed, zero, state, no_read]
    for seed, name, n_c, wrap, options, notes in (
            (30, "mixed", [2, 0, 3], False, {}, "VSM-VAE (C.3): S1-S5, S6'-S15' per target, n_c = 2, 0, 3, garbage in masked slots"),
            (31, "zero_shot", [0, 0], False, {}, "VSM-VAE: the n_c = 0 branch alone"),
            (32, "state_as_input", [1, 3], True, {}, "VSM-VAE with sem.mu and sem.lam declared inputs, n_c = 1, 3"),
            (33, "no_episodic_read", [2, 1], False, {"episodic_read": False}, "VSM-VAE, ablation C.6 (b)")):
        rng = np.random.default_rng(seed)
        model = small_vsm(rng, variant="vae", **options)
        cases.append(_case(f"vsm.vae.{name}", StateAsInput(model) if wrap else model,
                           small_tasks(rng, n_c, n_t=3, variant="vae"), rng, notes))
    return cases
