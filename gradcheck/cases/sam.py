"""Gradient-check cases for Sparse Access Memory (minimem.memory.sam, spec Part C): small, seeded,
float64, every output seen through a fixed random projection.

The top-K index sets S^i_t and the LRA slots l_t are recorded by one forward pass and replayed by
every perturbed pass (ReplaySAM), as spec section 0 and C.5 item 4 ask: with them frozen, the
objective is a smooth function of the parameters (restricted softmax, guarded cosine), whatever
the usage bookkeeping would choose at the perturbed point.

Most cases start from a random but valid state (memory N(0, 0.5^2), distinct last-access times,
random sorted read sets with Dirichlet weights, controller state), so every carried gradient -
memory, previous read weights through the write rule, read words, LSTM - is exercised at a
generic point; one case starts from the empty state of a sequence start. The cases cover both
manual engines (sparse with the memory-revert BPTT, dense twin), K < N and K = N, DAM's
discounted usage, the tanh write word, and three heads sharing slots (duplicates in Wr and Ww).
"""

from __future__ import annotations

import numpy as np

from gradcheck.cases import register
from gradcheck.core import Case, projection_loss
from minimem.memory.sam import SAM, SAMConfig, SAMRecord, SAMState


class ReplaySAM:
    """A SAM seen as a function of its parameters only: forward(xs) starts from `state0` and replays
    `record` (index sets and LRA slots). It follows the model protocol, so check_model can perturb
    model.params (the wrapped model's own dict)."""

    def __init__(self, model: SAM, state0: SAMState | None, record: SAMRecord | None):
        self.model, self.state0, self.record = model, state0, record

    @property
    def params(self) -> dict:
        return self.model.params

    @property
    def config(self) -> SAMConfig:
        return self.model.config

    def forward(self, xs):
        return self.model.forward(xs, self.state0, self.record)

    def backward(self, dys, cache):
        return self.model.backward(dys, cache)

    def forward_autodiff(self, tparams, xs):
        return self.model.forward_autodiff(tparams, xs, self.state0, self.record)


def random_state(rng: np.random.Generator, config: SAMConfig, B: int) -> SAMState:
    """A valid, generic SAM state at time t0 = 3N: M ~ N(0, 0.5^2); `last` distinct times in
    [1, t0] (no LRA ties); U^(1) a shuffled grid over [0.1, 1]; each head's K slots a random
    sorted subset with Dirichlet weights (sum 1); r read from M with them; h, c small."""
    N, W, R, K, H = config.N, config.W, config.R, config.K, config.H
    t0 = 3 * N
    M = 0.5 * rng.standard_normal((B, N, W))
    last = np.stack([rng.choice(np.arange(1, t0 + 1), size=N, replace=False) for _ in range(B)])
    usage = np.stack([rng.permutation(np.linspace(0.1, 1.0, N)) for _ in range(B)])
    index = np.sort(np.stack([[rng.choice(N, size=K, replace=False) for _ in range(R)] for _ in range(B)]), -1)
    weight = rng.dirichlet(np.ones(K), size=(B, R))
    r = np.einsum("brk,brkw->brw", weight, M[np.arange(B)[:, None, None], index])
    h = 0.5 * np.tanh(rng.standard_normal((B, H)))
    c = 0.5 * rng.standard_normal((B, H))
    return SAMState(M, last.astype(np.int64), usage, index.astype(np.int64), weight, r, h, c, t0)


def make_case(name: str, config: SAMConfig, seed: int, T: int = 4, B: int = 2, zero_state: bool = False,
              notes: str = "") -> Case:
    """A SAM case: model with generic biases, inputs (T, B, X), random start state (or the empty
    one), the recorded choices, and a projection loss."""
    rng = np.random.default_rng(seed)
    model = SAM(config, rng=rng)
    for key in ("interface.b", "output.b"):                  # a generic point, not the zero init
        model.params[key] = 0.5 * rng.standard_normal(model.params[key].shape)
    xs = rng.standard_normal((T, B, config.X))               # (T, B, X)
    state0 = None if zero_state else random_state(rng, config, B)
    ys, cache = model.forward(xs, state0)
    start = "empty state (zero memory: tied scores, the replayed sets decide)" if zero_state else "random state"
    return Case(f"sam.{name}", ReplaySAM(model, state0, cache.record), xs, projection_loss(rng, ys),
                notes=f"{config.engine} N={config.N} W={config.W} R={config.R} K={config.K} H={config.H} "
                      f"T={T} B={B}, {start}, frozen S and l" + (f"; {notes}" if notes else ""))


SMALL = dict(X=3, Y=3, N=8, W=4, R=2, K=3, H=6)


@register("sam")
def sparse_cases():
    return [
        make_case("sparse", SAMConfig(**SMALL), seed=0, notes="in-place memory, memory-revert BPTT"),
        make_case("sparse.zero_state", SAMConfig(**SMALL), seed=1, T=5, zero_state=True,
                  notes="sequence start as in training"),
        make_case("sparse.shared_slots", SAMConfig(**{**SMALL, "N": 6, "R": 3, "K": 4}, write_squash="tanh"),
                  seed=2, notes="3 heads x 4 of 6 slots: duplicates in Wr and Ww; tanh write word"),
    ]


@register("sam")
def dense_cases():
    return [
        make_case("dense.K=N", SAMConfig(**{**SMALL, "K": 8}, engine="dense"), seed=3,
                  notes="the dense path (every M_t kept)"),
        make_case("dense.masked", SAMConfig(**SMALL, engine="dense"), seed=0,
                  notes="masked dense reference at K < N, same point as sam.sparse"),
        make_case("dam", SAMConfig(**{**SMALL, "K": 8}, engine="dense", usage="discounted", discount=0.9),
                  seed=4, notes="DAM: K = N, LRA slot from the discounted usage U^(1)"),
    ]
