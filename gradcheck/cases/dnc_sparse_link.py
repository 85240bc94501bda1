"""Gradient-check cases for the DNC's optional sparse link matrix (minimem.memory.sparse_link, spec
B.10.9): the link update on its own (family dnc_sparse_link) and whole DNCs with
DNCConfig(link="sparse") (family dnc, names dnc.sparse_link.*).

    dnc_sparse_link.step   sparse_link_forward, spec B.10.9 steps 1-3
        params: L_prev (B, N, N) a valid sparse link (zero diagonal, entries 0 or >= 1/K, row and
                column sums <= 1); w_w (B, N) write weighting; p_prev (B, N) previous precedence
        constants: record (SparseLinkChoice): top_w, top_p (B, K) kept slots, keep (B, N, N)
                threshold mask, recorded at this point and replayed by every perturbed pass
        output: Lhat (B, N, N)

The kept sets and the threshold mask are discrete choices, recorded by one forward pass and
replayed by the perturbed ones (as the free list is, gradcheck.cases.dnc). Each factory also checks
that the point sits away from those kinks (every link entry before the threshold more than
MARGIN from 1/K, the K-th and (K+1)-th values of w^w_t and p_{t-1} more than MARGIN apart), so the
replayed choices are the ones an unfrozen pass would make, and that the threshold both keeps and
drops entries (otherwise the mask would not be exercised).
"""

from __future__ import annotations

import numpy as np

from gradcheck.cases import register
from gradcheck.cases.dnc import USAGE_GAP, ReplayDNC, min_usage_gap, random_state
from gradcheck.cases.primitives import Primitive
from gradcheck.core import Case, projection_loss
from minimem.memory import sparse_link
from minimem.memory.dnc import DNC, DNCConfig, DNCState

MARGIN = 1e-4     # distance of every pre-threshold link entry from 1/K and of the top-K boundary


def random_sparse_link(rng: np.random.Generator, B: int, N: int, K: int) -> np.ndarray:
    """(B, N, N) valid sparse link: each row i points to one earlier-written slot (a random
    permutation chain) with strength in [1/K + 0.05, 0.95] (exactly 1 for K = 1, the only value a
    K = 1 link can hold), zero diagonal; rows and columns hold one entry each, so sums are <= 1."""
    L = np.zeros((B, N, N))
    for b in range(B):
        order = rng.permutation(N)                       # the order the slots were written in
        for prev, slot in zip(order[:-1], order[1:]):
            L[b, slot, prev] = 1.0 if K == 1 else rng.uniform(1.0 / K + 0.05, 0.95)
    return L


def peaked(rng: np.random.Generator, total: float, size) -> np.ndarray:
    """A weighting summing to `total`, concentrated on a few slots (Dirichlet(0.3))."""
    N = size[-1]
    return total * rng.dirichlet(0.3 * np.ones(N), size=size[:-1])


def kink_margin(v_list, L_update: np.ndarray, K: int) -> float:
    """Smallest distance to a kink: |entry - 1/K| over the pre-threshold links (off the diagonal)
    and the gap between the K-th and (K+1)-th largest values of each weighting (rows that are all
    zero, the precedence p_0 of a sequence start, are constants of the pass and skipped)."""
    N = L_update.shape[-1]
    off = ~np.eye(N, dtype=bool)
    margins = [np.min(np.abs(L_update[:, off] - 1.0 / K))]
    if K < N:
        for v in v_list:
            ranked = -np.sort(-v[np.sum(v, axis=-1) > 0], axis=-1)    # all-zero rows (p_0) are constants
            if ranked.size:
                margins.append(np.min(ranked[..., K - 1] - ranked[..., K]))
    return float(min(margins))


# ----------------------------------------------------------------- the link update on its own
class SparseLinkStep(Primitive):
    """One sparse link update with recorded choices (spec B.10.9)."""

    spec = {"file": "specs/ntm_dnc_sam.md", "sections": ["B.10.9", "B.4"],
            "equations": "DNC Methods, Sparse link matrix"}
    ORDER = ("L_prev", "w_w", "p_prev")
    param_layouts = {"L_prev": "(B, N, N), L[i, j]: slot i written after slot j", "w_w": "(B, N)",
                     "p_prev": "(B, N)"}

    def __init__(self, params: dict, K: int, record: sparse_link.SparseLinkChoice | None = None):
        super().__init__(params)
        self.K, self.record = K, record

    def _forward(self, p):
        return sparse_link.sparse_link_forward(*(p[name] for name in self.ORDER), self.K, self.record)

    def _backward(self, dL, cache):
        return dict(zip(self.ORDER, sparse_link.sparse_link_backward(dL, cache)))

    def _autodiff(self, tp):
        return sparse_link.sparse_link_autodiff(*(tp[name] for name in self.ORDER), self.K, self.record)


def sparse_link_step_case(seed: int = 3, B: int = 2, N: int = 7, K: int = 3) -> Case:
    rng = np.random.default_rng(seed)
    params = {"L_prev": random_sparse_link(rng, B, N, K), "w_w": peaked(rng, 0.9, (B, N)),
              "p_prev": peaked(rng, 0.85, (B, N))}
    model = SparseLinkStep(params, K)
    L, cache = model.forward()
    margin = kink_margin((params["w_w"], params["p_prev"]), cache.L_update, K)
    kept = int(np.sum(cache.choice.keep))
    dropped = int(np.sum(cache.L_update > 0)) - kept
    if margin <= MARGIN or kept == 0 or dropped == 0:
        raise ValueError(f"dnc_sparse_link.step: margin {margin:.2e}, {kept} kept and {dropped} dropped links; "
                         "choose another seed")
    model.record = cache.choice
    return Case("dnc_sparse_link.step", model, None, projection_loss(rng, L),
                notes=f"B={B} N={N} K={K}: top-K of w^w and p renormalised, link update, 1/K threshold "
                      f"({kept} links kept, {dropped} dropped; choices recorded and replayed), spec B.10.9")


@register("dnc_sparse_link")
def dnc_sparse_link_step():
    return sparse_link_step_case()


# ----------------------------------------------------------------- whole DNCs with link="sparse"
SMALL = dict(X=3, Y=3, N=6, W=4, R=2, H=8)
SEEDS = {"K3": 0, "K6_L2": 1, "zero_state": 0}     # seeds whose paths stay MARGIN away from every kink


def sparse_state(rng: np.random.Generator, config: DNCConfig, B: int) -> DNCState:
    """random_state with a valid sparse link and peaked precedence and write weighting."""
    state = random_state(rng, config, B)
    N = config.N
    return state._replace(L=random_sparse_link(rng, B, N, config.link_K), p=peaked(rng, 0.85, (B, N)),
                          w_w=peaked(rng, 0.9, (B, N)))


def step_margin(access_cache, K: int) -> float:
    """kink_margin of one DNC step's sparse link (w^w_t from the write weighting's cache, p_{t-1}
    from the precedence's)."""
    w_w = access_cache.write_weighting.g_w * access_cache.write_weighting.mix       # (B, N) w^w_t
    return kink_margin((w_w, access_cache.precedence.p_prev), access_cache.link.L_update, K)


def make_sparse_case(name: str, config: DNCConfig, seed: int, T: int = 4, B: int = 2,
                     zero_state: bool = False) -> Case:
    """A DNC case with link="sparse": recorded free lists and link choices, replayed; raises
    ValueError if the path comes near a sort, top-K or threshold kink, or never keeps a link."""
    rng = np.random.default_rng(seed)
    model = DNC(config, rng=rng)
    for name_b in ("interface.b", "output.b"):                 # a generic point, not the zero init
        model.params[name_b] = 0.5 * rng.standard_normal(model.params[name_b].shape)
    xs = rng.standard_normal((T, B, config.X))                 # (T, B, X)
    state0 = None if zero_state else sparse_state(rng, config, B)
    ys, cache = model.forward(xs, state0)
    if not zero_state and min_usage_gap(cache) <= USAGE_GAP:
        raise ValueError(f"case {name}: usages come within {USAGE_GAP} of each other; choose another seed")
    K = config.link_K
    margin = min(step_margin(s.access, K) for s in cache.steps)
    kept = sum(int(np.sum(s.access.link.choice.keep)) for s in cache.steps)
    # From the zero state the memory is 0, so the write content weighting is uniform and w^w_t's
    # entries differ only by the allocation's eps_a powers: near-ties that the replay decides.
    if (margin <= MARGIN and not zero_state) or kept == 0:
        raise ValueError(f"case {name}: kink margin {margin:.2e}, {kept} links kept; choose another seed")
    start = ("zero state (near-tied w^w and tied usages: the replayed choices decide)" if zero_state
             else "random state with a sparse link")
    return Case(name, ReplayDNC(model, state0, cache.record), xs, projection_loss(rng, ys),
                notes=f"N={config.N} W={config.W} R={config.R} H={config.H} L={config.layers} T={T} B={B}, "
                      f"link=sparse K={K}, {start}, frozen phi and link choices ({kept} links kept over "
                      "the path); spec B.10.9")


@register("dnc")
def sparse_link_cases():
    return [make_sparse_case("dnc.sparse_link.K3", DNCConfig(**SMALL, link="sparse", link_K=3), seed=SEEDS["K3"]),
            make_sparse_case("dnc.sparse_link.K6_L2", DNCConfig(**SMALL, layers=2, link="sparse", link_K=6),
                             seed=SEEDS["K6_L2"]),
            make_sparse_case("dnc.sparse_link.zero_state", DNCConfig(**SMALL, link="sparse", link_K=2),
                             seed=SEEDS["zero_state"], T=5, zero_state=True)]
