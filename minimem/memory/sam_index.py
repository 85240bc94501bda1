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

import numpy as np
from scipy.spatial import cKDTree

from minimem.memory.addressing import EPS_NORM, cosine_similarity_forward
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


class ExactIndex:
    """Exact top-K over all N rows (the default and the oracle). Holds no state."""

    kind = "exact"

    def __init__(self, M: np.ndarray | None = None):
        self.rebuilds = 0

    def update(self, M: np.ndarray, rows: np.ndarray) -> None:
        """Nothing to do: every query scores the current memory."""

    def query(self, M: np.ndarray, q: np.ndarray, K: int) -> np.ndarray:
        """(B, R, K) ascending slots of the K largest D(q^i, M(j)), ties to the lowest index."""
        _check_memory(M)
        return top_k_slots(cosine_similarity_forward(M, q)[0], K)


class SnapshotIndex:
    """A static index over a snapshot of the memory plus a dirty set (module docstring). Subclasses
    implement _build(unit_rows, batch_of_row) and _candidates(unit_queries, count)."""

    kind = "snapshot"

    def __init__(self, M: np.ndarray, rebuild_after: int | None = None):
        B, N, W = _check_memory(M)
        if rebuild_after is not None and (isinstance(rebuild_after, bool) or not isinstance(
                rebuild_after, (int, np.integer)) or rebuild_after < 1):
            raise ValueError(f"rebuild_after must be None (N) or an integer >= 1; got {rebuild_after!r}")
        self.B, self.N, self.W = B, N, W
        self.rebuild_after = N if rebuild_after is None else int(rebuild_after)
        self.rebuilds = 0
        self.rebuild(M)

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
        self.dirty = np.zeros(0, dtype=INDEX_DTYPE)                        # ascending, unique
        self.modified = 0
        self.rebuilds += 1

    def update(self, M: np.ndarray, rows: np.ndarray) -> None:
        """Mark the global rows written at this step dirty; rebuild after rebuild_after * B of them."""
        rows = np.asarray(rows, dtype=INDEX_DTYPE)
        self.dirty = np.union1d(self.dirty, rows)
        self.modified += rows.size
        if self.modified >= self.rebuild_after * self.B:
            self.rebuild(M)

    def query(self, M: np.ndarray, q: np.ndarray, K: int) -> np.ndarray:
        """(B, R, K) ascending slots: the index's candidates, re-scored exactly with D (top K)."""
        B, N, W = self.B, self.N, self.W
        if M.shape != (B, N, W) or q.ndim != 3 or q.shape[0] != B or q.shape[2] != W:
            raise ValueError(f"M must have shape {(B, N, W)} and q (B, R, W) = ({B}, R, {W}); "
                             f"got {M.shape} and {q.shape}")
        K = check_K(K, N)
        R = q.shape[1]
        offsets = N * np.arange(B, dtype=INDEX_DTYPE)
        dirty_ptr = np.searchsorted(self.dirty, N * np.arange(B + 1))
        max_dirty = int(np.max(np.diff(dirty_ptr), initial=0))
        unit = q / np.sqrt(np.sum(q * q, axis=-1, keepdims=True) + EPS_NORM)           # (B, R, W)
        per_element = np.concatenate([
            _ragged(self.dirty, dirty_ptr, max_dirty),                                  # rows written since
            _ragged(self.zero_rows, self.zero_ptr, K + max_dirty),                      # zero at the snapshot
            offsets[:, None] + np.arange(K)], axis=1)                                   # slots 0..K-1
        candidates = np.concatenate([self._candidates(unit, 2 * K + max_dirty),
                                     np.broadcast_to(per_element[:, None], (B, R, per_element.shape[1]))],
                                    axis=-1)                                            # (B, R, C)
        sentinel = B * N
        candidates = np.sort(np.where(candidates < 0, sentinel, candidates), axis=-1)
        valid = candidates < sentinel
        valid[..., 1:] &= candidates[..., 1:] != candidates[..., :-1]                   # drop duplicates
        if np.any(np.sum(valid, axis=-1) < K):
            raise RuntimeError("the index produced fewer than K candidates (a bug: slots 0..K-1 are always added)")
        rows = np.where(valid, candidates, 0)
        D, _ = cosine_similarity_forward(M.reshape(B * N, W)[rows], q)                   # (B, R, C), exact
        best = top_k_slots(np.where(valid, D, -np.inf), K)                             # ascending positions
        return np.take_along_axis(candidates, best, axis=-1) - offsets[:, None, None]   # ascending slots

    def _build(self, unit: np.ndarray, batch: np.ndarray) -> None:
        raise NotImplementedError

    def _candidates(self, unit_q: np.ndarray, count: int) -> np.ndarray:
        raise NotImplementedError


class KDTreeIndex(SnapshotIndex):
    """cKDTree over the normalised snapshot rows (module docstring). eps >= 0: cKDTree's
    approximation (0 = exact search of the snapshot); leafsize: cKDTree's."""

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

    def _candidates(self, unit_q, count):
        B, R, W = unit_q.shape
        if self.tree is None:
            return np.full((B, R, 0), -1, dtype=INDEX_DTYPE)
        k = min(count, self.tree.n)
        points = np.concatenate([unit_q.reshape(B * R, W),
                                 self.separation * np.repeat(np.arange(B), R)[:, None]], axis=1)
        _, found = self.tree.query(points, k=k, eps=self.eps)
        found = np.asarray(found).reshape(B * R, k)
        rows = np.where(found < self.tree.n, self.rows[np.minimum(found, self.tree.n - 1)], -1)
        own = rows // self.N == np.repeat(np.arange(B), R)[:, None]                    # drop other elements
        return np.where(own & (rows >= 0), rows, -1).reshape(B, R, k)


class LSHIndex(SnapshotIndex):
    """Random-hyperplane LSH over the snapshot rows (module docstring): `tables` tables of `bits`
    hyperplanes each (bits None: round(log2(N) / 2)), drawn from `rng`; a row's key in a table is
    b 2^bits + its sign pattern, and a query's candidates are the rows sharing its key."""

    kind = "lsh"

    def __init__(self, M: np.ndarray, rng: np.random.Generator, tables: int = 8, bits: int | None = None,
                 rebuild_after: int | None = None):
        B, N, W = _check_memory(M)
        bits = max(1, int(round(np.log2(max(N, 2)) / 2))) if bits is None else bits
        for name, value, top in (("tables", tables, 4096), ("bits", bits, 30)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= top:
                raise ValueError(f"{name} must be an integer in [1, {top}]; got {value!r}")
        self.tables, self.bits = int(tables), int(bits)
        self.planes = rng.standard_normal((W, self.tables * self.bits))                 # (W, L bits)
        super().__init__(M, rebuild_after)

    def _keys(self, unit: np.ndarray, batch: np.ndarray) -> np.ndarray:
        """(n, L) int keys b 2^bits + sign pattern, one per table."""
        signs = (unit @ self.planes > 0).reshape(len(unit), self.tables, self.bits)
        codes = np.sum(signs * (1 << np.arange(self.bits, dtype=INDEX_DTYPE)), axis=-1)
        return batch[:, None].astype(INDEX_DTYPE) * (1 << self.bits) + codes

    def _build(self, unit, batch):
        keys = self._keys(unit, batch)                                                  # (n, L)
        order = np.argsort(keys, axis=0, kind="stable")                                 # rows ascending in a bucket
        self.sorted_keys = np.take_along_axis(keys, order, axis=0).T                    # (L, n)
        self.sorted_rows = self.rows[order].T                                           # (L, n)

    def _candidates(self, unit_q, count):
        B, R, W = unit_q.shape
        keys = self._keys(unit_q.reshape(B * R, W), np.repeat(np.arange(B), R))         # (B R, L)
        found = []
        for table in range(self.tables):                # a loop over tables, never over batch or slots
            lo = np.searchsorted(self.sorted_keys[table], keys[:, table], side="left")
            hi = np.searchsorted(self.sorted_keys[table], keys[:, table], side="right")
            found.append(_bucket_rows(self.sorted_rows[table], lo, hi))
        return np.concatenate(found, axis=1).reshape(B, R, -1)


def _bucket_rows(rows: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """rows[lo[k]:hi[k]] for every query k, padded with -1: (len(lo), max(hi - lo)) int."""
    width = int(np.max(hi - lo, initial=0))
    if width == 0:
        return np.full((len(lo), 0), -1, dtype=INDEX_DTYPE)
    position = lo[:, None] + np.arange(width)
    inside = position < hi[:, None]
    return np.where(inside, rows[np.minimum(position, rows.size - 1)], -1).astype(INDEX_DTYPE)


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
