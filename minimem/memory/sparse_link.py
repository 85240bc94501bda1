"""The DNC's optional sparse link matrix (Graves et al. 2016, Nature 538:471, Methods "Sparse link
matrix"; spec specs/ntm_dnc_sam.md B.10.9): keep only the K largest entries of the write weighting
and of the old precedence, renormalise each to sum 1, update the links with them, and drop every
link weaker than 1/K. The read heads then follow these links (f = Lhat w, b = Lhat^T w) exactly as
they follow the dense ones (minimem.memory.linkage.directional_forward).

Shapes: B batch, N slots, K kept entries (1 <= K <= N; the paper finds K = 8 sufficient and uses
K = 5 in Extended Data Fig. 4).

Three steps (spec B.10.9; they replace step 11 of spec B.3, everything else is unchanged):
    1. what = top_K(w^w_t) / sum(top_K(w^w_t)),   phat = top_K(p_{t-1}) / sum(top_K(p_{t-1}))
       (top_K keeps the K largest entries in place and zeroes the rest)               sparsify
    2. Lhat_t[i,j] = (1 - what_i - what_j) Lhat_{t-1}[i,j] + what_i phat_j,  Lhat_t[i,i] = 0  link update
    3. Lhat_t[i,j] = 0 wherever Lhat_t[i,j] < 1/K                                     threshold
Step 2 is linkage.link_forward applied to (what, phat), so its backward is shared with the dense
DNC. The dense precedence p_t (spec B.3 step 12) still uses the full w^w_t: only the link update
sees the sparsified vectors.

Not the dense update, even at K = N: the renormalisation turns any write, however faint (g^w near
0), into a full-strength link update, and the threshold drops weak links. The oracle is therefore
`sparse_link_reference`, a loop-by-loop re-implementation of the same three steps, not link_forward.

Discrete choices (held constant in the backward, recorded in the cache and replayable, as
minimem.memory.allocation does with its free list):
    top_w, top_p  (B, K) int: the kept slots, in descending order of value, ties to the lower slot
    keep          (B, N, N) bool: the link entries that survived the 1/K threshold
Pass them back as `choice=` (a SparseLinkChoice) so that finite differences replay them instead of
straddling the kink where two entries swap rank or a link crosses 1/K.

A selection whose kept values sum to 0 (p_0 = 0 at a sequence start, or a write gate exactly 0)
has no renormalisation: its sparse vector is 0 (so the links are left alone), and its gradient is
taken as 0 (the map is not differentiable there; the point is a constant of the state, not a
parameter, in every DNC pass).

Storage: Lhat is kept densely as (B, N, N) with the mask, and the update costs O(N^2) per step like
the dense link. The point of this module is the option's mathematics - what the sparsified update
computes and how its gradient flows - not the paper's O(N log N) time and O(N) memory, which would
need the entries stored as (row, column, value) lists and the touched rows and columns updated in
place (minimem.memory.sdnc_link does that with scipy.sparse for the SDNC's different link).

Invariants (tests/test_sparse_link.py): zero diagonal; entries in [0, 1]; row sums <= 1, hence at
most K nonzeros per row. Columns are NOT bounded by this update: a column j with phat_j near 1 gains
an entry near 1 in every row written while the precedence stays on j (faint writes, renormalised to
full strength), so a column can hold more than K nonzeros (the test shows a case; spec B.10.9 and
the Methods say "at most K per row and column").
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem.checks import check_slot_count
from minimem.memory.allocation import _real, _weighting
from minimem.memory.linkage import LinkCache, link_autodiff, link_backward, link_forward

DEFAULT_K = 8      # "K = 8 appears sufficient" (Methods); Extended Data Fig. 4 uses K = 5


def check_link_K(K, N: int) -> int:
    """K as an int, or ValueError unless K is an integer with 1 <= K <= N."""
    return check_slot_count("K", "sparse link entries kept", K, N)


def top_k_slots(v: np.ndarray, K: int) -> np.ndarray:
    """(B, K) int: the slots of the K largest entries of v (B, N), largest first, ties to the lower
    slot (a stable sort of -v)."""
    return np.argsort(-v, axis=-1, kind="stable")[..., :K]


def _check_top(top, v: np.ndarray, K: int, name: str) -> np.ndarray:
    top = np.asarray(top)
    expected = v.shape[:-1] + (K,)
    if top.shape != expected or top.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an integer array of shape (B, K) = {expected}; got {top.dtype} {top.shape}")
    N = v.shape[-1]
    if np.any(top < 0) or np.any(top >= N):
        raise ValueError(f"{name} must hold slots in [0, N) = [0, {N}); got values in [{top.min()}, {top.max()}]")
    if K > 1 and np.any(np.diff(np.sort(top, axis=-1), axis=-1) == 0):
        raise ValueError(f"{name} must hold K distinct slots per row")
    return top


# ----------------------------------------------------------------- 1. sparsify and renormalise
class SparsifyCache(NamedTuple):
    top: np.ndarray          # (B, K) int kept slots (constant of the backward pass)
    vhat_kept: np.ndarray    # (B, K) renormalised kept values, vhat[top]
    total: np.ndarray        # (B, 1) sum of the kept values; rows with total <= 0 output 0


def sparsify_forward(v: np.ndarray, K: int, top: np.ndarray | None = None) -> tuple[np.ndarray, SparsifyCache]:
    """Keep the K largest entries of a weighting and renormalise them to sum 1 (step 1).

    Args:
        v: (B, N) weighting with entries >= 0 (w^w_t or p_{t-1}).
        K: entries kept, 1 <= K <= N.
        top: optional (B, K) int kept slots recorded by an earlier call (cache.top), replayed
            instead of ranking v again.
    Returns:
        vhat: (B, N) with at most K nonzeros, summing to 1 (or all 0 where the kept values sum to 0),
        and the cache for sparsify_backward.
    """
    v = _weighting(v, "v")
    K = check_link_K(K, v.shape[-1])
    # The kept set is a constant of the backward pass; it goes into the cache for replay.
    top = top_k_slots(v, K) if top is None else _check_top(top, v, K, "top")
    kept = np.take_along_axis(v, top, axis=-1)                     # (B, K)
    total = np.sum(kept, axis=-1, keepdims=True)                   # (B, 1)
    live = total > 0.0
    vhat_kept = np.where(live, kept / np.where(live, total, 1.0), 0.0)
    vhat = np.zeros_like(v)
    np.put_along_axis(vhat, top, vhat_kept, axis=-1)               # (B, N)
    return vhat, SparsifyCache(top, vhat_kept, total)


def sparsify_backward(dvhat: np.ndarray, cache: SparsifyCache) -> np.ndarray:
    """Adjoint of sparsify_forward with the kept set fixed. Returns dv (B, N).

    With s = sum_{k in top} v_k and vhat_i = v_i / s for i in top:
        dv_i = (dvhat_i - sum_{k in top} dvhat_k vhat_k) / s   for i in top,  0 elsewhere
    (0 everywhere on rows with s <= 0, see the module docstring).
    """
    top, vhat_kept, total = cache
    live = total > 0.0
    dkept = np.take_along_axis(dvhat, top, axis=-1)                # (B, K)
    dkept = dkept - np.sum(dkept * vhat_kept, axis=-1, keepdims=True)
    dkept = np.where(live, dkept / np.where(live, total, 1.0), 0.0)
    dv = np.zeros(dvhat.shape, dtype=np.result_type(dvhat, vhat_kept))
    np.put_along_axis(dv, top, dkept, axis=-1)
    return dv


def sparsify_autodiff(v, K: int, top: np.ndarray | None = None) -> ad.Tensor:
    """Autodiff twin of sparsify_forward (the kept set, if not given, is ranked from v's values)."""
    v = ad.as_tensor(v)
    B, N = v.shape
    top = top_k_slots(v.data, K) if top is None else np.asarray(top)
    kept = ad.gather(v, top, axis=-1)                              # (B, K)
    total = kept.sum(axis=-1, keepdims=True)                       # (B, 1)
    live = total.data > 0.0
    vhat_kept = ad.where(live, kept / ad.where(live, total, 1.0), 0.0)
    rows = np.broadcast_to(np.arange(B)[:, None], top.shape)
    return ad.scatter_add(np.zeros((B, N), dtype=v.dtype), (rows, top), vhat_kept)


# ----------------------------------------------------------------- 3. the 1/K threshold
def threshold_forward(L: np.ndarray, K: int, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Zero every link entry below 1/K (step 3). L: (B, N, N). keep: optional (B, N, N) bool mask
    to replay. Returns (L * keep, keep); keep is the cache (a constant of the backward pass)."""
    K = check_link_K(K, L.shape[-1])
    if keep is None:
        keep = L >= 1.0 / K
    else:
        keep = np.asarray(keep)
        if keep.shape != L.shape or keep.dtype != bool:
            raise ValueError(f"keep must be a boolean array of shape (B, N, N) = {L.shape}; "
                             f"got {keep.dtype} {keep.shape}")
    return np.where(keep, L, 0.0), keep


def threshold_backward(dL: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Adjoint of threshold_forward with the mask fixed: dL where kept, 0 elsewhere."""
    return np.where(keep, dL, 0.0)


# ----------------------------------------------------------------- the three steps
class SparseLinkChoice(NamedTuple):
    """The discrete choices of one sparse link update, replayable with choice=."""
    top_w: np.ndarray        # (B, K) int slots kept of w^w_t
    top_p: np.ndarray        # (B, K) int slots kept of p_{t-1}
    keep: np.ndarray         # (B, N, N) bool entries that passed the 1/K threshold


class SparseLinkCache(NamedTuple):
    sparsify_w: SparsifyCache    # 1. for w^w_t
    sparsify_p: SparsifyCache    # 1. for p_{t-1}
    link: LinkCache              # 2. the link update on (what, phat)
    choice: SparseLinkChoice     # top_w, top_p (in the sparsify caches) and the threshold mask (3.)
    w_hat: np.ndarray            # (B, N) sparsified, renormalised write weighting (for plots, tests)
    p_hat: np.ndarray            # (B, N) sparsified, renormalised old precedence
    L_update: np.ndarray         # (B, N, N) links after step 2, before the threshold (kink margins)


def _check_choice(choice) -> SparseLinkChoice:
    if not isinstance(choice, SparseLinkChoice):
        raise ValueError(f"choice must be a SparseLinkChoice (cache.choice of an earlier call); "
                         f"got {type(choice).__name__}")
    return choice


def sparse_link_forward(L_prev: np.ndarray, w_w: np.ndarray, p_prev: np.ndarray, K: int,
                        choice: SparseLinkChoice | None = None) -> tuple[np.ndarray, SparseLinkCache]:
    """The sparse link update, steps 1-3 of the module docstring (spec B.10.9).

    Args:
        L_prev: (B, N, N) sparse link matrix Lhat_{t-1} (stored densely; zeros off the support).
        w_w: (B, N) write weighting w^w_t of this step.
        p_prev: (B, N) precedence of the PREVIOUS step (dense, as in spec B.3 step 12).
        K: entries kept per weighting, 1 <= K <= N; the threshold is 1/K.
        choice: optional SparseLinkChoice recorded by an earlier call (cache.choice), replayed.
    Returns:
        Lhat_t: (B, N, N) with zero diagonal, entries 0 or in [1/K, 1], at most K nonzeros per row,
        and the cache for sparse_link_backward.
    """
    w_w = _weighting(w_w, "w_w")
    K = check_link_K(K, w_w.shape[-1])
    if choice is not None:
        choice = _check_choice(choice)
    w_hat, c_w = sparsify_forward(w_w, K, None if choice is None else choice.top_w)      # 1.
    p_hat, c_p = sparsify_forward(p_prev, K, None if choice is None else choice.top_p)   # 1.
    if p_hat.shape != w_hat.shape:
        raise ValueError(f"p_prev must have shape (B, N) like w_w = {w_w.shape}; got {p_hat.shape}")
    L_update, c_link = link_forward(L_prev, w_hat, p_hat)                                # 2. (B, N, N)
    L, keep = threshold_forward(L_update, K, None if choice is None else choice.keep)    # 3. (B, N, N)
    choice = SparseLinkChoice(c_w.top, c_p.top, keep)
    return L, SparseLinkCache(c_w, c_p, c_link, choice, w_hat, p_hat, L_update)


def sparse_link_backward(dL: np.ndarray, cache: SparseLinkCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Adjoint of sparse_link_forward with top_w, top_p and keep held constant.
    Returns (dL_prev (B, N, N), dw_w (B, N), dp_prev (B, N)), in the order of the forward's inputs."""
    dL_update = threshold_backward(dL, cache.choice.keep)                       # 3.
    dL_prev, dw_hat, dp_hat = link_backward(dL_update, cache.link)              # 2.
    dp_prev = sparsify_backward(dp_hat, cache.sparsify_p)                       # 1.
    dw_w = sparsify_backward(dw_hat, cache.sparsify_w)                          # 1.
    return dL_prev, dw_w, dp_prev


def sparse_link_autodiff(L_prev, w_w, p_prev, K: int, choice: SparseLinkChoice | None = None) -> ad.Tensor:
    """Autodiff twin of sparse_link_forward (without `choice`, the kept sets and the mask are
    chosen from the Tensors' values, as the manual forward does)."""
    w_w, p_prev = ad.as_tensor(w_w), ad.as_tensor(p_prev)
    K = check_link_K(K, w_w.shape[-1])
    w_hat = sparsify_autodiff(w_w, K, None if choice is None else choice.top_w)          # 1.
    p_hat = sparsify_autodiff(p_prev, K, None if choice is None else choice.top_p)       # 1.
    L_update = link_autodiff(L_prev, w_hat, p_hat)                                       # 2.
    keep = (L_update.data >= 1.0 / K) if choice is None else choice.keep                 # 3.
    return ad.where(keep, L_update, 0.0)


def sparse_link_op(L_prev, w_w, p_prev, K: int, choice: SparseLinkChoice | None = None) -> ad.Tensor:
    """The manual pair as one autodiff node (K and choice are constants)."""
    return _sparse_link_node(L_prev, w_w, p_prev, K=K, choice=choice)


_sparse_link_node = ad.custom_op(sparse_link_forward, sparse_link_backward, name="dnc.sparse_link")


# ----------------------------------------------------------------- the oracle
def sparse_link_reference(L_prev: np.ndarray, w_w: np.ndarray, p_prev: np.ndarray, K: int) -> np.ndarray:
    """Dense, loop-by-loop re-implementation of the three steps, written independently of
    sparse_link_forward (no argsort, no broadcasting): the test oracle of spec B.10.9.

    Ranks with Python's sort on (-value, slot), so ties go to the lower slot. (B, N, N) float64.
    """
    L_prev, w_w, p_prev = (np.asarray(a, dtype=np.float64) for a in (L_prev, w_w, p_prev))
    B, N = w_w.shape
    out = np.zeros((B, N, N))
    for b in range(B):
        sparse = []
        for v in (w_w[b], p_prev[b]):
            ranked = sorted(range(N), key=lambda n: (-v[n], n))[:K]
            total = sum(v[n] for n in ranked)
            vhat = [0.0] * N
            if total > 0:
                for n in ranked:
                    vhat[n] = v[n] / total
            sparse.append(vhat)
        w_hat, p_hat = sparse
        for i in range(N):
            for j in range(N):
                if i == j:
                    continue
                value = (1.0 - w_hat[i] - w_hat[j]) * L_prev[b, i, j] + w_hat[i] * p_hat[j]
                out[b, i, j] = value if value >= 1.0 / K else 0.0
    return out
