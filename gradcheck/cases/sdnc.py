"""Gradient-check cases for the Sparse DNC (minimem.memory.sdnc, spec Part D): small, seeded, float64,
every output seen through a fixed random projection.

Every discrete choice and every stop-gradient quantity of the unperturbed pass is recorded and
replayed by the perturbed passes (ReplaySDNC), as spec D.9 asks: the top-K content sets, the LRA
slots, the kept entries of f and b, and the link values behind them (Nl_t and Pl_t are constants of
the backward, spec D.4, so a perturbed pass must not see the links it would build itself).

Most cases start from a random but valid state (memory N(0, 0.5^2), distinct last-access times, read
weightings as random (slot, weight) pairs summing to 0.9, random links with K_L entries per row and
a zero diagonal, a random K_L-sparse precedence), so every carried gradient - memory, previous read
weights through the write rule AND through f and b, read words, LSTM - is exercised at a generic
point; one case starts from a sequence start. Covered: K < N with K_L < N, the oracle setting
K = N, K_L = N, three heads sharing slots with self-links allowed (zero_diagonal=False) and tanh.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from gradcheck.cases import register
from gradcheck.core import Case, projection_loss
from minimem.memory.sdnc import SDNC, SDNCConfig, SDNCRecord, SDNCState


class ReplaySDNC:
    """An SDNC seen as a function of its parameters only: forward(xs) starts from `state0` and
    replays `record` (choices and links). Follows the model protocol for check_model."""

    def __init__(self, model: SDNC, state0: SDNCState | None, record: SDNCRecord | None):
        self.model, self.state0, self.record = model, state0, record

    @property
    def params(self) -> dict:
        return self.model.params

    @property
    def config(self) -> SDNCConfig:
        return self.model.config

    def forward(self, xs):
        return self.model.forward(xs, self.state0, self.record)

    def backward(self, dys, cache):
        return self.model.backward(dys, cache)

    def forward_autodiff(self, tparams, xs):
        return self.model.forward_autodiff(tparams, xs, self.state0, self.record)


def _random_links(rng: np.random.Generator, B: int, N: int, K_L: int, zero_diagonal: bool) -> sp.csr_matrix:
    """(B N, B N) batch-stacked links: min(K_L, N - 1) entries per row off the diagonal (if asked),
    values in (0, 1 / K_L) so row sums stay below 1."""
    rows, cols = [], []
    for b in range(B):
        for i in range(N):
            choices = [j for j in range(N) if j != i or not zero_diagonal]
            picked = rng.choice(choices, size=min(K_L, len(choices)), replace=False)
            rows += [b * N + i] * len(picked)
            cols += list(b * N + picked)
    values = rng.uniform(0.05, 1.0, size=len(rows)) / K_L
    return sp.csr_matrix((values, (rows, cols)), shape=(B * N, B * N))


def random_state(rng: np.random.Generator, config: SDNCConfig, B: int) -> SDNCState:
    """A valid, generic SDNC state at time t0 = 3N (see the module docstring)."""
    N, W, R, K, K_L, H, Kp = config.N, config.W, config.R, config.K, config.K_L, config.H, config.Kp
    t0 = 3 * N
    M = 0.5 * rng.standard_normal((B, N, W))
    last = np.stack([rng.choice(np.arange(1, t0 + 1), size=N, replace=False) for _ in range(B)])
    index = rng.integers(0, N, size=(B, R, Kp))
    weight = 0.9 * rng.dirichlet(np.ones(Kp), size=(B, R))
    r = np.einsum("brk,brkw->brw", weight, M[np.arange(B)[:, None, None], index])
    h = 0.5 * np.tanh(rng.standard_normal((B, H)))
    c = 0.5 * rng.standard_normal((B, H))
    Nl = _random_links(rng, B, N, K_L, config.zero_diagonal)
    Pl = _random_links(rng, B, N, K_L, config.zero_diagonal)
    p_rows = np.repeat(np.arange(B), K_L)
    p_cols = np.concatenate([b * N + rng.choice(N, size=K_L, replace=False) for b in range(B)])
    p = sp.csr_matrix((0.8 * rng.dirichlet(np.ones(K_L), size=B).reshape(-1), (p_rows, p_cols)), shape=(B, B * N))
    return SDNCState(M, last.astype(np.int64), index.astype(np.int64), weight, r, h, c, Nl, Pl, p, t0)


def make_case(name: str, config: SDNCConfig, seed: int, T: int = 4, B: int = 2, zero_state: bool = False,
              notes: str = "") -> Case:
    """An SDNC case: model with generic biases, inputs (T, B, X), a random start state (or a sequence
    start), the recorded choices and links, and a projection loss."""
    rng = np.random.default_rng(seed)
    model = SDNC(config, rng=rng)
    for key in ("interface.b", "output.b"):                  # a generic point, not the zero init
        model.params[key] = 0.5 * rng.standard_normal(model.params[key].shape)
    xs = rng.standard_normal((T, B, config.X))               # (T, B, X)
    state0 = None if zero_state else random_state(rng, config, B)
    ys, cache = model.forward(xs, state0)
    start = "sequence start" if zero_state else "random state"
    return Case(f"sdnc.{name}", ReplaySDNC(model, state0, cache.record), xs, projection_loss(rng, ys),
                notes=f"N={config.N} W={config.W} R={config.R} K={config.K} K_L={config.K_L} H={config.H} "
                      f"T={T} B={B}, {start}, frozen S, l, kept f/b sets and links" + (f"; {notes}" if notes else ""))


SMALL = dict(X=3, Y=3, N=8, W=4, R=2, K=3, K_L=2, H=6)


@register("sdnc")
def sdnc_cases():
    return [
        make_case("sparse", SDNCConfig(**SMALL), seed=0, notes="K < N, K_L < N, memory-revert BPTT"),
        make_case("zero_state", SDNCConfig(**SMALL), seed=1, T=5, zero_state=True,
                  notes="links grow from empty as in training"),
        make_case("K=N.K_L=N", SDNCConfig(**{**SMALL, "K": 8, "K_L": 8}), seed=2,
                  notes="the oracle setting of spec D.9 (no truncation)"),
        make_case("shared_slots", SDNCConfig(**{**SMALL, "N": 6, "R": 3, "K": 4, "K_L": 3}, zero_diagonal=False,
                                             write_squash="tanh"), seed=3,
                  notes="3 heads, duplicated slots across parts and heads; self-links allowed; tanh word"),
    ]
