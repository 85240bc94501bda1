"""Gradient-check cases for the Differentiable Neural Computer (minimem.memory.dnc, spec Part B):
small, seeded, float64, every output seen through a fixed random projection.

Each case starts from a random but valid state (memory, usages spread over [0.1, 0.9], links with
row and column sums < 1, weightings in Delta_N, controller state), so every carried gradient is
exercised at a generic point, and one case starts from the all-zero state of a sequence start.

The free lists phi_t (and, in deepmind mode, the stop-gradient write weights inside the usage
update) are recorded by one forward pass and replayed by every perturbed pass (ReplayDNC), as
spec section 0 and B.9 ask; the factories also check that no two floored usages come within
1e-3 of each other on the case's path (min_usage_gap), so the replayed order is the sorted one.
"""

from __future__ import annotations

import numpy as np

from gradcheck.cases import register
from gradcheck.core import Case, projection_loss
from minimem.memory.dnc import DNC, DNCConfig, DNCRecord, DNCState

USAGE_GAP = 1e-3          # spec B.9: keep usages apart by > 1e-3 so the sort is stable


class ReplayDNC:
    """A DNC seen as a function of its parameters only: forward(xs) always starts from `state0` and
    replays `record` (the free lists, and in deepmind mode the usage's w^w_{t-1}). It follows the
    model protocol, so check_model can perturb model.params (the wrapped model's own dict)."""

    def __init__(self, model: DNC, state0: DNCState | None, record: DNCRecord):
        self.model, self.state0, self.record = model, state0, record

    @property
    def params(self) -> dict:
        return self.model.params

    @property
    def config(self) -> DNCConfig:
        return self.model.config

    def forward(self, xs):
        return self.model.forward(xs, self.state0, self.record)

    def backward(self, dys, cache):
        return self.model.backward(dys, cache)

    def forward_autodiff(self, tparams, xs):
        return self.model.forward_autodiff(tparams, xs, self.state0, self.record)


def random_state(rng: np.random.Generator, config: DNCConfig, B: int, N: int | None = None) -> DNCState:
    """A valid, generic DNC state: M ~ N(0, 0.5^2); usages a shuffled grid over [0.1, 0.9] (gaps
    0.8 / (N - 1)); p, w^w, w^r scaled Dirichlet draws (sums 0.8-0.95); L with zero diagonal and
    row/column sums <= 0.9; r read from M with w^r; controller h, s small."""
    N = config.N if N is None else N
    R, W, H, layers = config.R, config.W, config.H, config.layers
    M = 0.5 * rng.standard_normal((B, N, W))
    u = np.stack([rng.permutation(np.linspace(0.1, 0.9, N)) for _ in range(B)])          # (B, N)
    p = 0.8 * rng.dirichlet(np.ones(N), size=B)
    L = rng.uniform(0.0, 0.9 / N, size=(B, N, N))
    L[:, np.arange(N), np.arange(N)] = 0.0
    w_w = 0.9 * rng.dirichlet(np.ones(N), size=B)
    w_r = 0.95 * rng.dirichlet(np.ones(N), size=(B, R))
    r = np.einsum("brn,bnw->brw", w_r, M)
    h = 0.5 * np.tanh(rng.standard_normal((layers, B, H)))
    c = 0.5 * rng.standard_normal((layers, B, H))
    return DNCState(M, u, p, L, w_w, w_r, r, h, c)


def min_usage_gap(cache) -> float:
    """The smallest gap between two floored usages of the same sequence over every step of a pass."""
    eps = cache.config.eps_a
    gaps = [np.min(np.diff(np.sort(eps + (1 - eps) * s.u, axis=-1), axis=-1)) for s in cache.states]
    return float(np.min(gaps))


def make_case(name: str, config: DNCConfig, seed: int, T: int = 4, B: int = 2, zero_state: bool = False,
              notes: str = "") -> Case:
    """A DNC case: model, inputs (T, B, X), random start state (or zeros), recorded choices, and a
    projection loss. Raises ValueError if the path brings two usages within USAGE_GAP (reseed)."""
    rng = np.random.default_rng(seed)
    model = DNC(config, rng=rng)
    for name_b in ("interface.b", "output.b"):                 # a generic point, not the zero init
        model.params[name_b] = 0.5 * rng.standard_normal(model.params[name_b].shape)
    xs = rng.standard_normal((T, B, config.X))                 # (T, B, X)
    state0 = None if zero_state else random_state(rng, config, B)
    ys, cache = model.forward(xs, state0)
    if not zero_state and min_usage_gap(cache) <= USAGE_GAP:
        raise ValueError(f"case {name}: usages come within {USAGE_GAP} of each other; choose another seed")
    replay = ReplayDNC(model, state0, cache.record)
    start = "zero state (usages tied at 0: the replayed free list decides)" if zero_state else "random state"
    return Case(name, replay, xs, projection_loss(rng, ys),
                notes=f"N={config.N} W={config.W} R={config.R} H={config.H} L={config.layers} T={T} B={B}, "
                      f"{start}, frozen phi" + (f"; {notes}" if notes else ""))


SMALL = dict(X=3, Y=3, N=6, W=4, R=2, H=8)
SEEDS = {1: 1, 2: 5}      # per controller depth: seeds whose paths keep usages > 3e-3 apart


@register("dnc")
def paper_mode():
    return [make_case(f"dnc.paper.L{layers}", DNCConfig(**SMALL, layers=layers), seed=SEEDS[layers],
                      notes="oneplus strengths, usage differentiated w.r.t. w^w_{t-1}")
            for layers in (1, 2)]


@register("dnc")
def deepmind_usage():
    return [make_case(f"dnc.deepmind.L{layers}", DNCConfig(**SMALL, layers=layers, usage_write_grad=False),
                      seed=SEEDS[layers],
                      notes="same point as dnc.paper; stop-gradient on w^w_{t-1} in the usage, recorded values replayed")
            for layers in (1, 2)]


@register("dnc")
def options():
    return [
        make_case("dnc.softplus_clip", DNCConfig(**SMALL, strengths="softplus", clip=0.6), seed=4,
                  notes="softplus strengths, controller output and state clipped to +-0.6"),
        make_case("dnc.zero_state", DNCConfig(**SMALL), seed=6, T=5, zero_state=True,
                  notes="sequence start as in training"),
    ]
