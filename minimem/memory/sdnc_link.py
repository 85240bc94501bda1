"""Sparse temporal links of the Sparse DNC (Rae et al. 2016, arXiv:1610.09027, Supplementary D; spec
specs/ntm_dnc_sam.md D.2, D.3 steps 7-9, D.4, D.10): the forward and backward link matrices Nl and Pl
with at most K_L nonzeros per row, the sparse precedence p, the truncated temporal weightings f and b,
and their dense twins (the oracle of spec D.9 at K_L = N).

Shapes: B batch, N slots, R read heads, K_L link sparsity (1 <= K_L <= N), Kp the number of
(slot, weight) pairs of a previous read weighting (duplicated slots allowed; they add up).

Equations (Supplementary eq. numbers in brackets), all with the OLD precedence p_{t-1}:
    [17-18] Nl_t(i,j) = (1 - wW_t(i)) Nl_{t-1}(i,j) + wW_t(i) p_{t-1}(j)
    [19-20] Pl_t(i,j) = (1 - wW_t(j)) Pl_{t-1}(i,j) + wW_t(j) p_{t-1}(i)
            then zero the diagonal (minimem default, D.10.1) and keep the K_L largest entries of every
            row (ties to the lower column, D.10.4)
    [11]    p_t = (1 - sum_i wW_t(i)) p_{t-1} + wW_t, then keep its K_L largest entries (no renormalising)
    [21-22] f^i_t = Nl_t wR^i_{t-1},  b^i_t = Pl_t wR^i_{t-1}, each cut to its K_L largest entries

Data layout (spec D.2, C.5): Nl and Pl are batch-stacked block-diagonal CSR matrices of shape
(B N, B N) (row b N + i, column b N + j is entry (i, j) of element b); p and the write weights are CSR
of shape (B, B N) (row b holds element b's entries at columns b N + j). Explicit zeros are dropped,
so `nnz` counts true nonzeros. At K_L = N and with the diagonal rule applied to both, Pl_t equals
Nl_t^T exactly (the same recurrence transposed), which the tests check.

Not differentiated (spec D.4, the paper's choice): Nl, Pl and p are stop-gradient constants, and so are
the K_L entries f and b keep. What the backward needs is therefore only the small block of link
values that produced each kept entry: links_f[b, i, k, m] = Nl_t(T_f[b, i, k], slot m of wR^i_{t-1}),
so that f_kept = links_f @ weights and d weights = links_f^T df. temporal_select returns these blocks;
they are also what a gradient check freezes (the links of the unperturbed pass).

Cost: link_update rebuilds the three matrices from COO triplets (old entries with their decay plus
the new outer-product entries): one stable sort of the triplet keys (the old entries arrive as one
sorted run), a per-row cut only for the rows holding more than K_L entries, O(nnz(Nl) + nnz(Pl))
<= O(B N K_L) work. temporal_select forms f and b of all heads as one CSR-times-dense product with
the previous weightings laid out as a (B N, R) array, then picks the K_L largest of each (B, R, N)
row: O(nnz R + B N R). Both add O(B N) index bookkeeping (indptr arrays) per step - not the paper's
O(K_L^2), which needs the touched rows and columns updated in place and column access to Nl and Pl
kept incrementally. (The exact top-K content read is O(N W) per query anyway, as in SAM's "linear"
variant.) The recorded blocks are O(R K_L Kp) per step, independent of N. Note that only rows are
bounded: a column of Nl (or Pl) can hold more than K_L entries, since nothing in eqs. [17-20] or D.3
limits how many rows point to one slot.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from minimem.memory.sam_sparse import INDEX_DTYPE, _csr, _unique_inverse, top_k_slots


def check_K_L(K_L, N: int) -> int:
    """K_L as an int, or ValueError unless 1 <= K_L <= N (spec D.2)."""
    if isinstance(K_L, (bool, np.bool_)) or not isinstance(K_L, (int, np.integer)):
        raise ValueError(f"K_L (link sparsity) must be an integer; got {K_L!r}")
    if not 1 <= K_L <= N:
        raise ValueError(f"K_L (link sparsity) must satisfy 1 <= K_L <= N = {N}; got K_L = {K_L}")
    return int(K_L)


def _canonical(A) -> sp.csr_matrix:
    """A as CSR with sorted, summed entries, explicit zeros dropped and int64 indices."""
    A = sp.csr_matrix(A)
    A.sum_duplicates()
    A.eliminate_zeros()
    A.indices = A.indices.astype(INDEX_DTYPE, copy=False)
    A.indptr = A.indptr.astype(INDEX_DTYPE, copy=False)
    return A


def empty_links(B: int, N: int, dtype=np.float64) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """(Nl, Pl, p) at a sequence start: all zero (spec B.2, D.2)."""
    return (_canonical(sp.csr_matrix((B * N, B * N), dtype=dtype)),
            _canonical(sp.csr_matrix((B * N, B * N), dtype=dtype)),
            _canonical(sp.csr_matrix((B, B * N), dtype=dtype)))


def _row_top(vals: np.ndarray, indptr: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the entries of a canonical CSR (vals, indptr; every row's columns ascending)
    that are among the k largest of their row, ties to the lower column.

    Only the rows with more than k entries need a choice. Their entries go into a padded (rows,
    width) array of -value (+inf in the padding); one stable sort per row puts them value down and,
    among equal values, in column order; the entries it ranks k or later are dropped (the padding
    sorts last and is skipped)."""
    keep = np.ones(vals.size, dtype=bool)
    count = np.diff(indptr)
    full = np.flatnonzero(count > k)                                   # the rows to cut
    if full.size == 0:
        return keep
    start, n = indptr[full][:, None], count[full][:, None]             # (rows, 1) each
    slot = np.arange(int(n.max()))
    valid = slot < n                                                   # (rows, width)
    key = np.where(valid, -vals[np.where(valid, start + slot, 0)], np.inf)
    cut = np.argsort(key, axis=1, kind="stable")[:, k:]                # places ranked k or later
    keep[(start + cut)[cut < n]] = False
    return keep


def _build(rows, cols, vals, shape: tuple, k: int, drop_diagonal: bool = False) -> sp.csr_matrix:
    """A canonical CSR from COO triplets: duplicates summed, the diagonal dropped (if asked), explicit
    zeros dropped, then the k largest entries of every row kept (ties to the lower column).

    The triplets are ordered by one stable sort of the key row * columns + col (runs that arrive
    sorted, like a matrix's old entries, cost a stable sort little); duplicates are summed in their
    input order."""
    rows, cols, vals = np.asarray(rows, INDEX_DTYPE), np.asarray(cols, INDEX_DTYPE), np.asarray(vals)
    key, where = _unique_inverse(rows * shape[1] + cols)                  # sorted by (row, col)
    vals = np.bincount(where, weights=vals, minlength=key.size).astype(vals.dtype)
    rows, cols = np.divmod(key, shape[1])
    keep = vals != 0
    if drop_diagonal:
        keep &= rows != cols
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    indptr = np.zeros(shape[0] + 1, dtype=INDEX_DTYPE)
    np.cumsum(np.bincount(rows, minlength=shape[0]), out=indptr[1:])
    keep = _row_top(vals, indptr, k)
    if not keep.all():
        cols, vals = cols[keep], vals[keep]
        np.cumsum(np.minimum(np.diff(indptr), k), out=indptr[1:])
    return _csr(vals, cols, indptr, shape, canonical=True)


def keep_row_largest(A, k: int) -> sp.csr_matrix:
    """Keep the k largest entries of every row of a sparse matrix (ties to the lower column); the
    others become structural zeros. Entries are assumed >= 0, explicit zeros are dropped first, so a
    row with fewer than k positive entries keeps them all (the dense rule "keep the k largest of N"
    gives the same values: whatever else it keeps is 0)."""
    A = sp.coo_matrix(A)
    return _build(A.row, A.col, A.data, A.shape, k)


def _coo(A: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, values) of a CSR matrix."""
    return np.repeat(np.arange(A.shape[0], dtype=INDEX_DTYPE), np.diff(A.indptr)), A.indices, A.data


def _outer(u: sp.csr_matrix, v: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Triplets of u_b^T v_b for every batch row b of u, v (B, B N): (global i, global j, u(i) v(j))."""
    bu, iu, du = _coo(u)
    count = np.diff(v.indptr)[bu]                                      # partners of every entry of u
    left = np.repeat(np.arange(bu.size), count)
    right = np.repeat(v.indptr[:-1][bu], count) + (np.arange(left.size) - np.repeat(np.cumsum(count) - count, count))
    return iu[left], v.indices[right], du[left] * v.data[right]


# ----------------------------------------------------------------- steps 7-8: links and precedence
def link_update(Nl: sp.csr_matrix, Pl: sp.csr_matrix, p: sp.csr_matrix, Ww: sp.csr_matrix, K_L: int,
                zero_diagonal: bool = True):
    """Steps 7-8, eqs. [17-20] and [11]: the new sparse links and precedence from the write weights.

    Works on COO triplets: the old entries scaled by their decay, plus the outer products of wW_t and
    p_{t-1} within each batch element (only rows in supp(wW) of Nl and rows in supp(p_{t-1}) of Pl gain
    entries), duplicates summed, diagonal and zeros dropped, then the K_L largest per row.

    Args:
        Nl, Pl: (B N, B N) CSR links of t-1. p: (B, B N) CSR precedence p_{t-1}.
        Ww: (B, B N) CSR write weights wW_t (minimem.memory.sam_sparse.write_weights_csr).
        K_L: entries kept per row of Nl, Pl and of p. zero_diagonal: D.10.1 (default True).
    Returns:
        (Nl_t, Pl_t, p_t), new CSR matrices (the inputs are not modified).
    """
    BN = Nl.shape[0]
    w = np.zeros(BN, dtype=Ww.dtype)
    np.add.at(w, Ww.indices, Ww.data)                                  # (B N,) wW_t on global slots
    i, j, v = _coo(Nl)
    ni, nj, nv = _outer(Ww, p)                                         # wW(i) p(j)
    Nl_new = _build(np.concatenate([i, ni]), np.concatenate([j, nj]), np.concatenate([(1.0 - w[i]) * v, nv]),
                    Nl.shape, K_L, zero_diagonal)                      # [17-18]
    i, j, v = _coo(Pl)
    pj, pi, pv = ni, nj, nv                                            # p(i) wW(j): the same products
    Pl_new = _build(np.concatenate([i, pi]), np.concatenate([j, pj]), np.concatenate([(1.0 - w[j]) * v, pv]),
                    Pl.shape, K_L, zero_diagonal)                      # [19-20]
    written = np.asarray(Ww.sum(axis=1)).reshape(-1)                   # (B,) sum_i wW_t(i)
    b, j, v = _coo(p)
    wb, wj, wv = _coo(Ww)
    p_new = _build(np.concatenate([b, wb]), np.concatenate([j, wj]), np.concatenate([(1.0 - written[b]) * v, wv]),
                   p.shape, K_L)                                       # [11]
    return Nl_new, Pl_new, p_new


def link_update_dense(L_f: np.ndarray, L_b: np.ndarray, p: np.ndarray, w: np.ndarray, K_L: int,
                      zero_diagonal: bool = True):
    """Dense twin of link_update: L_f, L_b (B, N, N), p (B, N), w (B, N) dense wW_t. Returns new arrays."""
    L_f = (1.0 - w[:, :, None]) * L_f + w[:, :, None] * p[:, None, :]           # (B, N, N) [17-18]
    L_b = (1.0 - w[:, None, :]) * L_b + p[:, :, None] * w[:, None, :]           # [19-20]
    if zero_diagonal:
        N = w.shape[1]
        L_f[:, np.arange(N), np.arange(N)] = 0.0
        L_b[:, np.arange(N), np.arange(N)] = 0.0
    p = (1.0 - np.sum(w, axis=1, keepdims=True)) * p + w                        # [11]
    return keep_largest_dense(L_f, K_L), keep_largest_dense(L_b, K_L), keep_largest_dense(p, K_L)


def largest_dense(x: np.ndarray, k: int) -> np.ndarray:
    """(..., k) indices of the k largest entries along the last axis, ties to the lower index,
    ascending (the rule of keep_row_largest and temporal_select, on dense arrays)."""
    order = np.argsort(-x, axis=-1, kind="stable")[..., :k]            # stable: ties keep index order
    return np.sort(order, axis=-1).astype(INDEX_DTYPE)


def keep_largest_dense(x: np.ndarray, k: int) -> np.ndarray:
    """x with all but the k largest entries of the last axis set to 0 (ties to the lower index)."""
    out = np.zeros_like(x)
    index = largest_dense(x, k)
    np.put_along_axis(out, index, np.take_along_axis(x, index, axis=-1), axis=-1)
    return out


# ----------------------------------------------------------------- step 9: temporal weightings
class TemporalRecord(NamedTuple):
    """The kept entries of f and b and the link values behind them (constants of the backward)."""
    fwd_index: np.ndarray    # (B, R, K_L) int, T_f: the slots f keeps, ascending
    fwd_links: np.ndarray    # (B, R, K_L, Kp) Nl_t(T_f, slots of wR_{t-1})
    bwd_index: np.ndarray    # (B, R, K_L) int, T_b
    bwd_links: np.ndarray    # (B, R, K_L, Kp) Pl_t(T_b, slots of wR_{t-1})


def _pairs_csr(index: np.ndarray, weight: np.ndarray, N: int) -> sp.csr_matrix:
    """(B R, B N) CSR of weightings given as (slot, weight) pairs (B, R, Kp); duplicates summed."""
    B, R, Kp = index.shape
    rows = np.repeat(np.arange(B * R), Kp)
    cols = (index + N * np.arange(B, dtype=INDEX_DTYPE)[:, None, None]).reshape(-1)
    return sp.csr_matrix((weight.reshape(-1), (rows, cols)), shape=(B * R, B * N))


def _gather(A: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """A[rows, cols] elementwise for equal-shaped integer arrays (0 where A has no entry), by binary
    search of the keys row * columns + col, which a canonical CSR stores ascending."""
    if A.nnz == 0:
        return np.zeros(rows.shape, dtype=A.dtype)
    if not A.has_canonical_format:
        A = A.copy()
        A.sum_duplicates()
    stored = _coo(A)[0] * A.shape[1] + A.indices                       # (nnz,) ascending
    wanted = rows * A.shape[1] + cols
    at = np.minimum(np.searchsorted(stored, wanted), A.nnz - 1)
    return np.where(stored[at] == wanted, A.data[at], 0).astype(A.dtype, copy=False)


def temporal_select(Nl: sp.csr_matrix, Pl: sp.csr_matrix, prev_index: np.ndarray, prev_weight: np.ndarray,
                    K_L: int) -> TemporalRecord:
    """Step 9, eqs. [21-22]: which K_L entries of f^i = Nl wR^i_{t-1} and b^i = Pl wR^i_{t-1} are kept,
    and the link values that make them (D.10.2: the K_L largest, ties to the lower slot).

    The previous read weightings go into a (B N, R) array (column i holds every element's wR^i_{t-1}
    at its rows b N + slot, duplicated pairs summed); as the links are block diagonal, links @ that
    array is f (or b) of every head at once, at rows b N + j. The choice is then top_k_slots on the
    (B, R, N) result: the K_L largest entries, ties (zeros included) to the lower slot.

    Args:
        Nl, Pl: (B N, B N) CSR links of step t. prev_index (B, R, Kp) int and prev_weight (B, R, Kp):
            the previous read weightings as (slot, weight) pairs.
    Returns:
        the TemporalRecord; the kept values are f_kept = temporal_values(record.fwd_links, prev_weight).
    """
    B, R, Kp = prev_index.shape
    N = Nl.shape[0] // B
    offsets = N * np.arange(B, dtype=INDEX_DTYPE)[:, None, None]
    columns = np.zeros((B * N, R), dtype=np.result_type(prev_weight, Nl.dtype))
    np.add.at(columns, (prev_index + offsets, np.arange(R)[None, :, None]), prev_weight)
    out = []
    for links in (Nl, Pl):
        F = (links @ columns).reshape(B, N, R).transpose(0, 2, 1)      # (B, R, N) f^i (or b^i)
        index = top_k_slots(F, K_L)                                    # (B, R, K_L) ascending
        rows = np.broadcast_to((index + offsets)[..., None], (B, R, K_L, Kp))
        cols = np.broadcast_to((prev_index + offsets)[:, :, None, :], (B, R, K_L, Kp))
        out += [index, _gather(links, rows, cols)]
    return TemporalRecord(out[0], out[1], out[2], out[3])


def temporal_values(links: np.ndarray, prev_weight: np.ndarray) -> np.ndarray:
    """The kept entries (B, R, K_L) = links (B, R, K_L, Kp) applied to prev_weight (B, R, Kp)."""
    return np.einsum("brkm,brm->brk", links, prev_weight)


def temporal_values_backward(dvalues: np.ndarray, links: np.ndarray) -> np.ndarray:
    """Adjoint of temporal_values w.r.t. prev_weight (the links are constants, spec D.4): (B, R, Kp)."""
    return np.einsum("brkm,brk->brm", links, dvalues)
