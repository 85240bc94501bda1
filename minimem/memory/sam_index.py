"""Nearest-neighbour indexes for SAM's sparse reads (Rae et al. 2016, arXiv:1610.09027, sections 3.5
and Supplementary A.4; spec specs/ntm_dnc_sam.md C.6): which K slots each query reads.

Shapes: B batch, N slots, W word size, R read heads (queries), K slots per query, C candidates.

Three indexes with one interface - `query(M, q, K) -> (B, R, K)` int slot sets, ascending, and
`update(M, rows)` after every write with the global rows b N + j it touched:
- ExactIndex: exact top-K by the guarded cosine D over all N rows (argpartition, ties to the
  lowest index). The default and the test oracle; O(N W) per query, the paper's "SAM linear".
- KDTreeIndex: scipy.spatial.cKDTree over the L2-normalised rows of a snapshot. For unit vectors
  |q - m|^2 = 2 - 2 cos(q, m), so Euclidean k-NN is cosine top-K; the batch is one tree, each row
  carrying an extra coordinate `separation * b` that keeps elements apart (own rows lie within
  distance 2, other elements' beyond `separation`). `eps > 0` makes the search approximate
  (cKDTree's (1 + eps) guarantee), the speed/recall knob.
- LSHIndex: random-hyperplane LSH (sign patterns of `bits` random projections, `tables` tables)
  over the same snapshot; candidates are the query's buckets in every table.
The two approximate indexes share the snapshot logic of C.6 (SnapshotIndex): a "dirty set" of the
rows written since the snapshot; a query takes the index's candidates, the dirty rows of its
element, the first K + |dirty| rows that were zero at the snapshot (zero rows cannot be
normalised, so they stay out of the index; D of a zero row is 0), and the element's slots 0..K-1
(so at least K distinct rows are always scored); it re-scores them all exactly with D and keeps
the top K (ties to the lowest slot). After `rebuild_after` row modifications per element (default
N, the paper's policy) the snapshot is rebuilt from the current memory. The re-scoring cost grows
with the dirty set, which is why the rebuild threshold is a parameter.

Recall: recall_at_k(index, M, q, K) = mean over queries of |approximate set & exact set| / K.
Nothing here is differentiated: the chosen sets are constants of the backward pass (C.4).
"""

from __future__ import annotations

import copy

import numpy as np
from scipy.spatial import cKDTree

from minimem.checks import check_int
from minimem.memory.addressing import EPS_DEN, EPS_NORM, cosine_similarity_forward
from minimem.memory.sam_sparse import INDEX_DTYPE, check_K, top_k_slots


def _check_memory(M: np.ndarray) -> tuple[int, int, int]:
    if np.ndim(M) != 3:
        raise ValueError(f"M must have shape (B, N, W); got {np.shape(M)}")
    return M.shape


def _ragged(values: np.ndarray, ptr: np.ndarray, width: int) -> np.ndarray:
    """Rows values[ptr[b]:ptr[b+1]] cut or padded with -1 to `width`: (len(ptr) - 1, width) int."""
    count = len(ptr) - 1
    if width <= 0 or values.size == 0:
        return np.full((count, max(width, 0)), -1, dtype=INDEX_DTYPE)
    lengths = np.minimum(np.diff(ptr), width)
    position = ptr[:-1, None] + np.arange(width)
    inside = np.arange(width) < lengths[:, None]
    return np.where(inside, values[np.clip(position, 0, values.size - 1)], -1).astype(INDEX_DTYPE)


# ----------------------------------------------------------------- exact re-scoring
def _unique_sorted(candidates: np.ndarray, sentinel: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidates (..., C) int with -1 for none -> (sorted with -1 as `sentinel` at the end, valid):
    valid marks the first copy of every real candidate."""
    candidates = np.sort(np.where(candidates < 0, sentinel, candidates), axis=-1)
    valid = candidates < sentinel
    valid[..., 1:] &= candidates[..., 1:] != candidates[..., :-1]                       # drop duplicates
    return candidates, valid


def _rescore_top_k(M: np.ndarray, q: np.ndarray, candidates: np.ndarray, K: int) -> np.ndarray:
    """The exact top-K of every query among its candidate slots: (B, R, K) ascending slots.

    candidates: (B, R, C) slots (-1 for none, duplicates allowed), at least K distinct per query.
    They are scored with the guarded cosine D of minimem.memory.addressing on the gathered rows -
    the same arithmetic, bit for bit, as scoring all N rows - and top_k_slots keeps the K best,
    ties to the lowest slot (candidates are sorted first, so position order is slot order)."""
    B, N, W = M.shape
    candidates, valid = _unique_sorted(candidates, N)
    counts = valid.sum(axis=-1)                                                        # (B, R) distinct
    if counts.min() < K:
        raise RuntimeError("fewer than K candidates reached the exact re-scoring (a bug in the index)")
    width = int(counts.max())
    if width < candidates.shape[-1]:
        # drop the duplicates and the padding (often most of the width): duplicates become the
        # sentinel, a second sort moves them to the end, still ascending
        candidates = np.where(valid, candidates, N)
        candidates.sort(axis=-1)
        candidates = candidates[..., :width]
        valid = candidates < N
    rows = np.where(valid, candidates, 0) + N * np.arange(B, dtype=INDEX_DTYPE)[:, None, None]
    D, _ = cosine_similarity_forward(M.reshape(B * N, W)[rows], q)                     # (B, R, C), exact
    best = top_k_slots(np.where(valid, D, -np.inf), K)                                # ascending positions
    return candidates[np.arange(B)[:, None, None], np.arange(q.shape[1])[:, None], best]


def band_candidates(G: np.ndarray, q: np.ndarray, norms: np.ndarray, zero: np.ndarray, K: int,
                    valid: np.ndarray | None = None, cap: int | None = None) -> np.ndarray:
    """A few positions per query that surely contain its exact top-K rows of G (scored by D, ties to
    the lowest position), found with one BLAS product instead of D's einsum over all rows.

    D(q, m) = q.m / den with den = nrm(q) nrm(m) + eps_d. Computing q.m with a matrix product
    (any summation order, fused multiply-adds) instead of D's einsum moves it by at most
    2 gamma_W sum_w |q_w m_w| <= 2 gamma_W den, gamma_W ~ W u; with the two roundings of the
    division, |D_blas - D| <= (W + 1) eps (eps = 2u, machine epsilon). Let `kth` be the K-th
    largest D_blas and e = 4 (W + 2) eps (twice that bound). The K best rows by D have D_blas >= kth - 2e,
    so the "band" {D_blas >= kth - 2e} holds them all; rows outside it cannot be chosen. All-zero rows
    score exactly 0 either way and tie: only the K lowest of them can be chosen, so the band keeps
    only those. The band is then re-scored exactly (_rescore_top_k). If some query's band is larger
    than `cap` (many near-ties among nonzero rows) the exact D of all rows decides instead.

    Args:
        G: (B, C, W) candidate rows, in ascending slot order. q: (B, R, W) queries.
        norms: (B, C) nrm of every row, computed as D computes it. zero: (B, C) bool, row all zero.
        valid: (B, C) bool or None (all valid). cap: the largest band kept (None: 8 K + 64).
    Returns:
        (B, R, c) int positions into G's second axis, -1 padded (c <= cap, or c = K).
    """
    B, C, W = G.shape
    R = q.shape[1]
    cap = 8 * K + 64 if cap is None else cap
    if C <= K:                                                                     # every row is a candidate
        positions = np.broadcast_to(np.arange(C, dtype=INDEX_DTYPE), (B, C))
        if valid is not None:
            positions = np.where(valid, positions, -1)
        return np.broadcast_to(positions[:, None, :], (B, R, C)).copy()
    score = np.matmul(q, np.swapaxes(G, 1, 2))                                    # (B, R, C) q.m, BLAS
    n_q = np.sqrt(np.sum(q * q, axis=-1, keepdims=True) + EPS_NORM)                 # (B, R, 1), as D
    den = n_q * norms[:, None, :]
    den += EPS_DEN
    score /= den                                                                   # D_blas (B, R, C)
    if valid is not None:
        score[~np.broadcast_to(valid[:, None, :], score.shape)] = -np.inf
    margin = 4 * (W + 2) * np.finfo(score.dtype).eps
    # Usually the band is a handful of rows: look at the m largest first
    m = min(C, K + 16)
    top = np.argpartition(score, C - m, axis=-1)[..., C - m:]                      # (B, R, m), unordered
    top_score = np.take_along_axis(score, top, axis=-1)
    kth = np.partition(top_score, m - K, axis=-1)[..., m - K, None]                # K-th largest
    threshold = kth - 2 * margin
    if m == C or np.all(np.min(top_score, axis=-1, keepdims=True) < threshold):
        # every row outside `top` scores below the threshold; tied zero rows are all inside
        keep = top_score >= threshold
        if valid is not None:
            keep &= np.take_along_axis(np.broadcast_to(valid[:, None, :], score.shape), top, axis=-1)
        return np.where(keep, top, -1).astype(INDEX_DTYPE)
    band = score >= threshold                                                      # the long way
    if valid is not None:
        band &= valid[:, None, :]
    zero_band = band & zero[:, None, :]
    if zero_band.any():
        band &= ~zero_band | (np.cumsum(zero_band, axis=-1) <= K)                  # the K lowest zero rows
    counts = np.sum(band, axis=-1)                                                 # (B, R)
    if counts.max() > cap:
        D, _ = cosine_similarity_forward(G, q)                                     # exact, every row
        if valid is not None:
            D = np.where(valid[:, None, :], D, -np.inf)
        return top_k_slots(D, K)
    b, r, position = np.nonzero(band)                                              # grouped by (b, r)
    flat = counts.reshape(-1)
    rank = np.arange(position.size) - np.repeat(np.cumsum(flat) - flat, flat)
    out = np.full((B, R, int(counts.max())), -1, dtype=INDEX_DTYPE)
    out[b, r, rank] = position
    return out


def row_norms(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nrm of every row as D computes it, whether the row is all zero) for rows (..., W)."""
    return np.sqrt(np.sum(rows * rows, axis=-1) + EPS_NORM), ~np.any(rows != 0, axis=-1)


# ----------------------------------------------------------------- exact top-K
EXACT_BLAS_MIN_N = 4096       # below this, scoring every row with D directly is as fast


class ExactIndex:
    """Exact top-K over all N rows (the default and the oracle).

    Built without a memory (ExactIndex()) it holds no state and scores every row with D. Built on a
    memory M with N >= blas_min_n it also keeps every row's norm and zero flag (refreshed for the
    rows each write touches, O(R K W) per step) and answers with band_candidates: one BLAS product
    over the N rows, then exact re-scoring of the band - the same sets, bit for bit, several times
    faster than D's einsum over all N rows. Queries cost O(N W) either way (the paper's "SAM linear").
    blas_min_n: None means EXACT_BLAS_MIN_N.
    """

    kind = "exact"

    def __init__(self, M: np.ndarray | None = None, blas_min_n: int | None = None):
        self.rebuilds = 0
        self.norms = self.zero = None
        if M is not None:
            B, N, W = _check_memory(M)
            if N >= (EXACT_BLAS_MIN_N if blas_min_n is None else blas_min_n):
                self.norms, self.zero = row_norms(M.reshape(B * N, W))                  # (B N,) each
                self.rebuilds = 1

    def fork(self) -> "ExactIndex":
        """An independent copy (the per-row caches are copied, O(N))."""
        twin = copy.copy(self)
        if self.norms is not None:
            twin.norms, twin.zero = self.norms.copy(), self.zero.copy()
        return twin

    def update(self, M: np.ndarray, rows: np.ndarray) -> None:
        """Refresh the cached norms of the global rows b N + j written at this step."""
        if self.norms is not None:
            rows = np.asarray(rows, dtype=INDEX_DTYPE)
            self.norms[rows], self.zero[rows] = row_norms(M.reshape(-1, M.shape[2])[rows])

    def query(self, M: np.ndarray, q: np.ndarray, K: int) -> np.ndarray:
        """(B, R, K) ascending slots of the K largest D(q^i, M(j)), ties to the lowest index."""
        B, N, W = _check_memory(M)
        if self.norms is None or self.norms.shape != (B * N,):
            return top_k_slots(cosine_similarity_forward(M, q)[0], K)
        K = check_K(K, N)
        positions = band_candidates(M, q, self.norms.reshape(B, N), self.zero.reshape(B, N), K)
        return _rescore_top_k(M, q, positions, K)


# ----------------------------------------------------------------- snapshot + dirty set
SHARED_DIRECT = 256           # shared candidate rows up to this many are re-scored directly


def _unique_small(values: np.ndarray) -> np.ndarray:
    """np.unique of a small 1-d int array (sorted, unique) without np.unique's per-call overhead;
    an array that is already strictly ascending is returned as it is."""
    values = np.asarray(values, dtype=INDEX_DTYPE).reshape(-1)
    if values.size < 2:
        return values
    step = values[1:] > values[:-1]
    if step.all():
        return values
    values = np.sort(values)
    keep = np.empty(values.size, dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def _merge_sorted(values: np.ndarray, where: np.ndarray, new: np.ndarray, *more) -> tuple:
    """np.insert(values, where, new) for ascending `where` (new lands before values[where], the
    new values keep their order), for `values` and, at the same places, each (array, new) pair in
    `more`. Returns the merged arrays."""
    size = values.size + new.size
    place = where + np.arange(new.size)                                 # where the new entries land
    old = np.ones(size, dtype=bool)
    old[place] = False
    out = []
    for array, added in ((values, new),) + tuple(more):
        merged = np.empty(size, dtype=array.dtype)
        merged[place] = added
        merged[old] = array
        out.append(merged)
    return tuple(out)


def _insert_sorted(values: np.ndarray, new: np.ndarray) -> np.ndarray:
    """The sorted union of a sorted unique array and some new values, O(len(values) + n log n)."""
    new = _unique_small(new)
    if values.size == 0:
        return new.copy()
    where = np.searchsorted(values, new)
    fresh = (where >= values.size) | (values[np.minimum(where, values.size - 1)] != new)
    if not fresh.any():
        return values
    return _merge_sorted(values, where[fresh], new[fresh])[0]


def _is_member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """values (any shape) in the sorted array sorted_set, elementwise."""
    if sorted_set.size == 0:
        return np.zeros(np.shape(values), dtype=bool)
    where = np.minimum(np.searchsorted(sorted_set, values), sorted_set.size - 1)
    return sorted_set[where] == values


class SnapshotIndex:
    """A static index over a snapshot of the memory plus the rows written since (module docstring).
    Subclasses implement _build(unit_rows, batch_of_row) and _candidates(unit_queries, K); the
    default treats the dirty rows by exact re-scoring of all of them (through band_candidates when
    they are many); LSHIndex hashes them instead (_note_dirty, _dirty_candidates)."""

    kind = "snapshot"
    scores_dirty_rows = True     # every query re-scores every dirty row (False: the subclass finds them)

    def __init__(self, M: np.ndarray, rebuild_after: int | None = None):
        B, N, W = _check_memory(M)
        self.B, self.N, self.W = B, N, W
        self.rebuild_after = N if rebuild_after is None else check_int("rebuild_after (None: N)", rebuild_after, 1)
        self.rebuilds = 0
        self.rebuild(M)

    def fork(self) -> "SnapshotIndex":
        """An independent copy sharing the snapshot (never modified, only replaced); the arrays that
        update() changes in place are copied (O(B N) bytes)."""
        twin = copy.copy(self)
        twin.is_zero, twin.zero_head = self.is_zero.copy(), self.zero_head.copy()
        return twin

    def rebuild(self, M: np.ndarray) -> None:
        """Snapshot the current memory: index its nonzero rows, list its zero rows, clear the dirty set."""
        B, N, W = self.B, self.N, self.W
        if M.shape != (B, N, W):
            raise ValueError(f"M must have the indexed shape (B, N, W) = {(B, N, W)}; got {M.shape}")
        M2 = M.reshape(B * N, W)
        norms = np.sqrt(np.einsum("nw,nw->n", M2, M2))
        indexed = norms > 0
        self.rows = np.flatnonzero(indexed).astype(INDEX_DTYPE)            # global rows in the index
        self._build(M2[self.rows] / norms[self.rows, None], self.rows // N)
        self.zero_rows = np.flatnonzero(~indexed).astype(INDEX_DTYPE)      # ascending, grouped by element
        self.zero_ptr = np.searchsorted(self.zero_rows, N * np.arange(B + 1))
        self.zero_head = self.zero_ptr[:-1].copy()                         # zero_rows before it are not zero now
        self.is_zero = ~indexed                                            # (B N,) the row cannot be normalised
        self.dirty = np.zeros(0, dtype=INDEX_DTYPE)                        # ascending, unique
        self.dirty_zero = np.zeros(0, dtype=INDEX_DTYPE)                   # dirty rows that are zero now
        self.modified = 0
        self.rebuilds += 1
        self._reset_dirty()

    def update(self, M: np.ndarray, rows: np.ndarray) -> None:
        """Mark the global rows written at this step dirty; rebuild after rebuild_after * B of them."""
        rows = _unique_small(rows)
        self.modified += rows.size
        if self.modified >= self.rebuild_after * self.B:
            self.rebuild(M)
            return
        self.dirty = _insert_sorted(self.dirty, rows)
        current = M.reshape(-1, self.W)[rows]
        zero_now = ~np.any(current != 0, axis=1)
        self.is_zero[rows] = zero_now
        if zero_now.any():
            self.dirty_zero = np.union1d(np.setdiff1d(self.dirty_zero, rows[~zero_now]), rows[zero_now])
            self._note_dirty(rows[~zero_now], current[~zero_now])
        else:                                                   # the usual case: every row nonzero now
            if self.dirty_zero.size:
                self.dirty_zero = self.dirty_zero[~_is_member(self.dirty_zero, rows)]
            self._note_dirty(rows, current)

    def _zero_candidates(self, K: int) -> np.ndarray:
        """(B, 2K) global rows, -1 for none: the first K rows of each element that were zero at the
        snapshot and still are, and its first K dirty rows that are zero now. All zero rows score
        D = 0 and tie, so only the K lowest of them can ever be chosen."""
        B, N = self.B, self.N
        if self.dirty_zero.size:
            dirty_zero = _ragged(self.dirty_zero, np.searchsorted(self.dirty_zero, N * np.arange(B + 1)), K)
        else:
            dirty_zero = np.full((B, K), -1, dtype=INDEX_DTYPE)
        if self.zero_rows.size == 0:
            return dirty_zero
        end, last = self.zero_ptr[1:], self.zero_rows.size - 1
        width = 2 * K
        while True:                                   # a window that holds K still-zero rows (or the end)
            position = self.zero_head[:, None] + np.arange(width)                      # (B, width)
            inside = position < end[:, None]
            rows = self.zero_rows[np.minimum(position, last)]
            ok = inside & self.is_zero[rows]
            if np.all((ok.sum(axis=1) >= K) | (self.zero_head + width >= end)):
                break
            width *= 2
        # rows in front of the first still-zero one were written: never look at them again
        self.zero_head += np.where(ok.any(axis=1), np.argmax(ok, axis=1), inside.sum(axis=1))
        first = ok & (np.cumsum(ok, axis=1) <= K)
        clean = np.full((B, K), -1, dtype=INDEX_DTYPE)
        b, column = np.nonzero(first)
        clean[b, np.cumsum(first, axis=1)[b, column] - 1] = rows[b, column]
        return np.concatenate([clean, dirty_zero], axis=1)

    def _shared_rows(self, K: int) -> np.ndarray:
        """(B, C) global rows every head of an element re-scores: the zero-row candidates, slots
        0..K-1 and (scores_dirty_rows) every dirty row; ascending, -1 for none."""
        B, N = self.B, self.N
        parts = [self._zero_candidates(K), N * np.arange(B, dtype=INDEX_DTYPE)[:, None] + np.arange(K)]
        if self.scores_dirty_rows:
            dirty_ptr = np.searchsorted(self.dirty, N * np.arange(B + 1))
            parts.append(_ragged(self.dirty, dirty_ptr, int(np.max(np.diff(dirty_ptr), initial=0))))
        shared, valid = _unique_sorted(np.concatenate(parts, axis=1), B * N)
        return np.where(valid, shared, -1)

    def query(self, M: np.ndarray, q: np.ndarray, K: int) -> np.ndarray:
        """(B, R, K) ascending slots: the index's candidates and the shared rows, re-scored exactly
        with D (top K, ties to the lowest slot)."""
        B, N, W = self.B, self.N, self.W
        if M.shape != (B, N, W) or q.ndim != 3 or q.shape[0] != B or q.shape[2] != W:
            raise ValueError(f"M must have shape {(B, N, W)} and q (B, R, W) = ({B}, R, {W}); "
                             f"got {M.shape} and {q.shape}")
        K = check_K(K, N)
        R = q.shape[1]
        offsets = N * np.arange(B, dtype=INDEX_DTYPE)
        shared = self._shared_rows(K)                                                  # (B, C) global
        if shared.shape[1] > SHARED_DIRECT:            # many dirty rows: keep only their exact band
            valid = shared >= 0
            G = M.reshape(B * N, W)[np.where(valid, shared, 0)]                        # (B, C, W)
            norms, zero = row_norms(G)
            positions = band_candidates(G, q, norms, zero, K, valid)                   # (B, R, c)
            shared = np.where(positions >= 0, np.take_along_axis(
                np.broadcast_to(shared[:, None, :], (B, R, shared.shape[1])), np.maximum(positions, 0), -1), -1)
        else:
            shared = np.broadcast_to(shared[:, None, :], (B, R, shared.shape[1]))
        unit = q / np.sqrt(np.sum(q * q, axis=-1, keepdims=True) + EPS_NORM)           # (B, R, W)
        candidates = np.concatenate(self._all_candidates(unit, K) + [shared], axis=-1)   # (B, R, C') global
        candidates = np.where(candidates >= 0, candidates - offsets[:, None, None], -1)
        return _rescore_top_k(M, q, candidates, K)

    def _build(self, unit: np.ndarray, batch: np.ndarray) -> None:
        raise NotImplementedError

    def _all_candidates(self, unit_q: np.ndarray, K: int) -> list:
        """[the index's candidates, the dirty rows' candidates], each (B, R, c) global rows."""
        return [self._candidates(unit_q, K), self._dirty_candidates(unit_q, K)]

    def _candidates(self, unit_q: np.ndarray, K: int) -> np.ndarray:
        raise NotImplementedError

    def _reset_dirty(self) -> None:
        """A rebuild cleared the dirty set (a subclass that indexes dirty rows empties its structure)."""

    def _note_dirty(self, rows: np.ndarray, current: np.ndarray) -> None:
        """rows (global, ascending, nonzero now) were written; current: their contents (n, W)."""

    def _dirty_candidates(self, unit_q: np.ndarray, K: int) -> np.ndarray:
        """(B, R, c) global rows among the dirty ones for each query (-1 padded); the default finds
        none here because every dirty row is a shared row (scores_dirty_rows)."""
        return np.full(unit_q.shape[:2] + (0,), -1, dtype=INDEX_DTYPE)


class KDTreeIndex(SnapshotIndex):
    """cKDTree over the normalised snapshot rows (module docstring). eps >= 0: cKDTree's
    approximation (0 = exact search of the snapshot); leafsize: cKDTree's.

    A query asks the tree for 2K neighbours, and again for twice as many while fewer than K of them
    are clean (not dirty: a dirty row's snapshot copy is stale, the row itself is re-scored anyway),
    so with eps = 0 the K best clean rows are always among the candidates."""

    kind = "kdtree"

    def __init__(self, M: np.ndarray, eps: float = 0.0, rebuild_after: int | None = None, leafsize: int = 16):
        if not (isinstance(eps, (int, float)) and np.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be a finite number >= 0; got {eps!r}")
        self.eps, self.leafsize = float(eps), int(leafsize)
        self.separation = 2.0 * (1.0 + self.eps) + 1.0      # beyond any (1 + eps)-approximate own-element row
        super().__init__(M, rebuild_after)

    def _build(self, unit, batch):
        points = np.concatenate([unit, self.separation * batch[:, None]], axis=1)      # (n, W + 1)
        self.tree = cKDTree(points, leafsize=self.leafsize) if len(points) else None

    def _candidates(self, unit_q, K):
        B, R, W = unit_q.shape
        if self.tree is None:
            return np.full((B, R, 0), -1, dtype=INDEX_DTYPE)
        points = np.concatenate([unit_q.reshape(B * R, W),
                                 self.separation * np.repeat(np.arange(B), R)[:, None]], axis=1)
        element = np.repeat(np.arange(B), R)[:, None]
        k = 2 * K
        while True:
            k = min(k, self.tree.n)
            _, found = self.tree.query(points, k=k, eps=self.eps)
            found = np.asarray(found).reshape(B * R, k)
            rows = np.where(found < self.tree.n, self.rows[np.minimum(found, self.tree.n - 1)], -1)
            rows = np.where((rows >= 0) & (rows // self.N == element), rows, -1)      # own element only
            clean = np.sum((rows >= 0) & ~_is_member(rows, self.dirty), axis=1)
            if k == self.tree.n or clean.min() >= K:
                return rows.reshape(B, R, k)
            k *= 2


class LSHIndex(SnapshotIndex):
    """Random-hyperplane LSH over the snapshot rows (module docstring): `tables` tables of `bits`
    hyperplanes each (bits None: round(log2(N) / 2)), drawn from `rng`; a row's key in a table is
    b 2^bits + its sign pattern, and a query's candidates are the rows sharing its key."""

    kind = "lsh"
    scores_dirty_rows = False    # written rows are hashed into their own table (below)

    def __init__(self, M: np.ndarray, rng: np.random.Generator, tables: int = 8, bits: int | None = None,
                 rebuild_after: int | None = None):
        B, N, W = _check_memory(M)
        bits = max(1, int(round(np.log2(max(N, 2)) / 2))) if bits is None else bits
        self.tables, self.bits = check_int("tables", tables, 1, 4096), check_int("bits", bits, 1, 30)
        self.planes = rng.standard_normal((W, self.tables * self.bits))                 # (W, L bits)
        super().__init__(M, rebuild_after)

    def _keys(self, unit: np.ndarray, batch: np.ndarray) -> np.ndarray:
        """(n, L) int keys b 2^bits + sign pattern, one per table (in chunks of rows, to bound the
        (rows, L bits) temporaries; the sign patterns are summed as exact small floats)."""
        n, L, bits = len(unit), self.tables, self.bits
        powers = 2.0 ** np.arange(bits)
        step = max(1, (1 << 22) // (L * bits))
        if n <= step:                                   # a few rows (every step's queries and writes)
            signs = (unit @ self.planes > 0).reshape(-1, bits)
            keys = (signs.astype(np.float64) @ powers).astype(INDEX_DTYPE).reshape(n, L)
            return batch.astype(INDEX_DTYPE)[:, None] * (1 << bits) + keys
        keys = np.empty((n, L), dtype=INDEX_DTYPE)
        for start in range(0, n, step):                 # a loop over chunks of rows
            signs = (unit[start:start + step] @ self.planes > 0).reshape(-1, bits)
            keys[start:start + step] = (signs.astype(np.float64) @ powers).reshape(-1, L).astype(INDEX_DTYPE)
        return batch[:, None].astype(INDEX_DTYPE) * (1 << bits) + keys

    def _build(self, unit, batch):
        keys = self._keys(unit, batch)                                                  # (n, L)
        n, L = keys.shape
        # Table l's keys are shifted by l B 2^bits, so that the L sorted tables form ONE sorted array
        # and a query looks up all its tables with one searchsorted.
        self.table_offset = (self.B << self.bits) * np.arange(L, dtype=INDEX_DTYPE)      # (L,)
        keys = keys + self.table_offset
        if n and int(keys.max()) < (1 << 62) // n:
            # one sort of the unique numbers key n + position == a stable argsort by key
            packed = np.sort(keys.T * n + np.arange(n, dtype=INDEX_DTYPE), axis=1)     # (L, n)
            sorted_keys, order = np.divmod(packed, n)
        else:
            order = np.argsort(keys, axis=0, kind="stable").T                            # rows ascending in a bucket
            sorted_keys = np.take_along_axis(keys.T, order, axis=1)
        self.sorted_keys = sorted_keys.reshape(-1)                                      # (L n,) ascending
        self.sorted_rows = self.rows[order].reshape(-1)                                 # (L n,)

    def _query_keys(self, unit_q: np.ndarray) -> np.ndarray:
        B, R, W = unit_q.shape
        return self._keys(unit_q.reshape(B * R, W), np.repeat(np.arange(B), R)) + self.table_offset   # (B R, L)

    def _candidates(self, unit_q, K):
        return self._lookup(self.sorted_keys, self.sorted_rows, self._query_keys(unit_q), unit_q.shape)

    @staticmethod
    def _lookup(sorted_keys, rows, keys, shape) -> np.ndarray:
        """(B, R, c) rows of every query's buckets in one sorted table, the L buckets of a query one
        after the other, -1 padded (keys (B R, L), integers: the bucket of key k is
        [first index >= k, first index >= k + 1))."""
        B, R = shape[:2]
        flat = keys.reshape(-1)
        bounds = sorted_keys.searchsorted(np.stack([flat, flat + 1]))
        return _query_rows(rows, bounds[0], bounds[1], B * R).reshape(B, R, -1)

    def _all_candidates(self, unit_q, K):
        keys = self._query_keys(unit_q)                                                  # hashed once
        return [self._lookup(self.sorted_keys, self.sorted_rows, keys, unit_q.shape),
                self._lookup(self.dirty_keys, self.dirty_rows, keys, unit_q.shape)]

    # Rows written since the snapshot are hashed as they are written, into a second sorted table
    # (old entries of a row written again stay, harmless: every candidate is re-scored exactly), so a
    # query costs O(L log(rows written)) instead of re-scoring every written row.
    def _reset_dirty(self):
        self.dirty_keys = np.zeros(0, dtype=INDEX_DTYPE)                               # sorted, all tables
        self.dirty_rows = np.zeros(0, dtype=INDEX_DTYPE)

    def _note_dirty(self, rows, current):
        if rows.size == 0:
            return
        unit = current / np.sqrt(np.einsum("nw,nw->n", current, current))[:, None]
        keys = (self._keys(unit, rows // self.N) + self.table_offset).reshape(-1)       # (n L,)
        order = keys.argsort(kind="stable")
        keys, owners = keys[order], rows.repeat(self.tables)[order]
        where = np.searchsorted(self.dirty_keys, keys, side="right")
        self.dirty_keys, self.dirty_rows = _merge_sorted(self.dirty_keys, where, keys, (self.dirty_rows, owners))

    def _dirty_candidates(self, unit_q, K):
        return self._lookup(self.dirty_keys, self.dirty_rows, self._query_keys(unit_q), unit_q.shape)


def make_index(kind: str, M: np.ndarray, *, eps: float = 0.0, tables: int = 8, bits: int | None = None,
               rebuild_after: int | None = None, seed: int = 0):
    """The index named `kind` ("exact", "kdtree", "lsh") built on the memory M (B, N, W)."""
    if kind == "exact":
        return ExactIndex(M)
    if kind == "kdtree":
        return KDTreeIndex(M, eps=eps, rebuild_after=rebuild_after)
    if kind == "lsh":
        return LSHIndex(M, np.random.default_rng(seed), tables=tables, bits=bits, rebuild_after=rebuild_after)
    raise ValueError(f"index must be one of ('exact', 'kdtree', 'lsh'); got {kind!r}")


def recall_at_k(index, M: np.ndarray, q: np.ndarray, K: int) -> float:
    """Mean over the B R queries of |index.query(M, q, K) & exact top-K| / K (spec C.5 item 6)."""
    approx = index.query(M, q, K)
    exact = ExactIndex().query(M, q, K)
    hits = (approx[..., :, None] == exact[..., None, :]).any(axis=-1).sum(axis=-1)     # (B, R)
    return float(np.mean(hits / K))


def _query_rows(rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, queries: int) -> np.ndarray:
    """For `queries` queries of L = len(lo) / queries buckets each: the rows of a query's buckets
    rows[lo[k]:hi[k]] concatenated, padded with -1: (queries, max total) int. (Padding every
    bucket to the largest one instead makes the candidate lists several times wider.)"""
    lengths = hi - lo                                                   # (queries L,) bucket sizes
    total = lengths.reshape(queries, -1).sum(axis=1)                    # (queries,)
    n = int(total.sum())
    out = np.full((queries, int(total.max(initial=0))), -1, dtype=INDEX_DTYPE)
    if n == 0:
        return out
    flat = np.arange(n)
    source = flat + (lo - (lengths.cumsum() - lengths)).repeat(lengths)        # position in rows
    column = flat - (total.cumsum() - total).repeat(total)                      # position in the query
    out[np.arange(queries).repeat(total), column] = rows[source]
    return out
