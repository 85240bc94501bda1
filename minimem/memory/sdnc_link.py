"""Sparse temporal links of the Sparse DNC (Rae et al. 2016, arXiv:1610.09027, Supplementary D; spec
specs/ntm_dnc_sam.md D.2, D.3 steps 7-9, D.4, D.10): the forward and backward link matrices Nl and Pl
with at most K_L nonzeros per row, the sparse precedence p, the truncated temporal weightings f and b,
and their dense twins (the oracle of spec D.9 at K_L = N).

Shapes: B batch, N slots, R read heads, K_L link sparsity (1 <= K_L <= N), Kp the number of
(slot, weight) pairs of a previous read weighting (duplicated slots allowed; they add up), S the
widest support of the write weights in the batch (S <= N).

Equations (Supplementary eq. numbers in brackets), all with the OLD precedence p_{t-1}:
    [17-18] Nl_t(i,j) = (1 - wW_t(i)) Nl_{t-1}(i,j) + wW_t(i) p_{t-1}(j)
    [19-20] Pl_t(i,j) = (1 - wW_t(j)) Pl_{t-1}(i,j) + wW_t(j) p_{t-1}(i)
            then zero the diagonal (minimem default, D.10.1) and keep the K_L largest entries of every
            row (ties to the lower column, D.10.4)
    [11]    p_t = (1 - sum_i wW_t(i)) p_{t-1} + wW_t, then keep its K_L largest entries (no renormalising)
    [21-22] f^i_t = Nl_t wR^i_{t-1},  b^i_t = Pl_t wR^i_{t-1}, each cut to its K_L largest entries

Two layouts:
- At the sequence boundaries (SDNCState, spec D.2, C.5): Nl and Pl are batch-stacked block-diagonal
  CSR matrices of shape (B N, B N) (row b N + i, column b N + j is entry (i, j) of element b); p is CSR
  of shape (B, B N). Explicit zeros are dropped, so `nnz` counts true nonzeros.
- Inside the time loop (Links): fixed-width rows, as the bound "K_L nonzeros per row" allows (the
  ELLPACK layout): for Nl and Pl (stacked, 2 x) a (B, N, K_L) array of columns and one of values, for
  p a (B, K_L) pair. A place with value 0 is empty; its column is N (a sentinel one past the last
  slot, so gathers with it stay in bounds and it never equals a slot), or, for an entry that decayed
  to exactly 0, the column it held. A row's columns are distinct (except N) and its entries appear in
  ascending column order, so f = Nl wR adds its terms in the order a CSR product does and every
  result equals the CSR layout's bit for bit (tests/test_sdnc_link_speed.py checks this against the
  CSR implementation this layout replaced). links_from_csr and links_to_csr convert.
At K_L = N and with the diagonal rule applied to both, Pl_t equals Nl_t^T exactly (the same recurrence
transposed), which the tests check.

One step of the links, following D.3 step 7 ("only rows in supp(wW_t) of Nl and rows in
supp(p_{t-1}) of Pl gain entries; column decay in Pl touches only columns in supp(wW_t)"):
    Nl: every row's K_L entries get eq. [17-18] at their own columns, (1 - wW_t(i)) Nl(i, j) +
        wW_t(i) p_{t-1}(j), all rows at once (a row off supp(wW_t) keeps its values exactly: 1 x value
        + 0). A written row whose updated entries all stay above its largest candidate wW_t(i) max p
        keeps its columns; only the others (as a rule the few rows of large write weight, or rows not
        yet full) are merged with their K_L candidates wW_t(i) p_{t-1}(j) and cut back to K_L places.
    Pl: likewise with eq. [19-20]: every entry decays by (1 - wW_t(j)) of its column (exactly 1 off
        supp(wW_t)) and gains wW_t(j) p_{t-1}(i) if the row i is in supp(p_{t-1}); of those rows only
        the ones a candidate can enter are merged with their S candidates and cut.
    p:  its K_L places decayed by (1 - sum wW_t), merged with the S write entries and cut.
"Merged" (_merge_and_cut): a row's old places and candidates in column order (one stable sort), a
candidate in a column the row already holds added to that entry, the diagonal dropped, and the K_L
largest kept (value down, ties to the lower column, a second stable sort), back in column order.

Not differentiated (spec D.4, the paper's choice): Nl, Pl and p are stop-gradient constants, and so are
the K_L entries f and b keep. What the backward needs is therefore only the small block of link
values that produced each kept entry: links_f[b, i, k, m] = Nl_t(T_f[b, i, k], slot m of wR^i_{t-1}),
so that f_kept = links_f @ weights and d weights = links_f^T df. temporal_select returns these blocks;
they are also what a gradient check freezes (the links of the unperturbed pass).

Cost per step (no sparse matrix is rebuilt inside the loop): link_update makes a handful of
elementwise passes over the B N K_L places of Nl and of Pl (the equation at every row's own columns,
the row test) and sorts only the rows a candidate can enter - O(n K_L log K_L) for n such rows of Nl
(about one per batch element at the benchmark sizes: the LRA slot's row) and O(n (K_L + S) log) for
Pl (n <= B K_L) and p. temporal_select forms f and b at every slot as one sparse product in C - the
fixed-width rows already are a CSR matrix (2 B N, B (N + 1)) with K_L stored places per row, so it
is wrapped, not built - then picks the K_L largest of each (B, R, N) row and looks the recorded blocks
up in dense rows of N + 1 for the 2 B R K_L kept rows: O(B R N K_L) for the product and O(B R N) for
the choice, as the CSR layout. Measured side by side with the CSR layout it replaced (which rebuilt
Nl, Pl and p from COO triplets with a stable sort every step), interleaved medians over the 17 steps of
the bench_engines SDNC problem (B = 16, N = 32, R = 2, K_L = 8, Kp = 20) on a 2-core machine shared
with other jobs (load 2-3, so absolute times are inflated): link_update 0.45-0.67 ms per step against
1.6-2.5 ms (3.3-4.5x), temporal_select 0.28-0.46 ms against 0.6-1.0 ms (2.1-2.9x); at N = 1024,
link_update 4.5-6.5 ms against 15-19 ms, temporal_select 3.6-4.2 ms against 4.1-4.2 ms (its top-K
over N dominates). Spec D.5's ~100 us for all of it is the paper's own implementation; here NumPy's
cost per call (some 150 calls a step) sets the floor. The conversions at the sequence boundaries are
O(B N K_L) once per sequence. Note that only rows are bounded: a column of Nl (or Pl) can
hold more than K_L entries, since nothing in eqs. [17-20] or D.3 limits how many rows point to one
slot.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from minimem.checks import check_slot_count
from minimem.memory.sam_sparse import INDEX_DTYPE, _csr, top_k_slots


def check_K_L(K_L, N: int) -> int:
    """K_L as an int, or ValueError unless 1 <= K_L <= N (spec D.2)."""
    return check_slot_count("K_L", "link sparsity", K_L, N)


# ----------------------------------------------------------------- the two layouts
class Links(NamedTuple):
    """Nl_t, Pl_t and p_t in fixed-width rows (module docstring: value 0 and column N = empty place).
    Nl and Pl share one array (leading axis: 0 Nl, 1 Pl), so that step 9 handles both in one pass."""
    cols: np.ndarray         # (2, B, N, K_L) int, cols[0, b, i] the columns j of the entries Nl(i, j)
    vals: np.ndarray         # (2, B, N, K_L) their values, 0 in empty places; [1] Pl likewise
    prec_cols: np.ndarray    # (B, K_L) int, the slots of p's entries
    prec_vals: np.ndarray    # (B, K_L)


def empty_links(B: int, N: int, dtype=np.float64) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """(Nl, Pl, p) as CSR at a sequence start: all zero (spec B.2, D.2)."""
    return (_csr(np.zeros(0, dtype), np.zeros(0, INDEX_DTYPE), np.zeros(B * N + 1, INDEX_DTYPE), (B * N, B * N), True),
            _csr(np.zeros(0, dtype), np.zeros(0, INDEX_DTYPE), np.zeros(B * N + 1, INDEX_DTYPE), (B * N, B * N), True),
            _csr(np.zeros(0, dtype), np.zeros(0, INDEX_DTYPE), np.zeros(B + 1, INDEX_DTYPE), (B, B * N), True))


def _rows_from_csr(A: sp.csr_matrix, N: int, K_L: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, K_L) columns and values of a batch-stacked CSR with <= K_L entries per row; columns
    local to the element (j, not b N + j). Rows keep the CSR's ascending order."""
    A = A.tocsr()                                                       # the matrix itself if CSR already
    if not A.has_canonical_format:                                      # ascending, unique columns
        A = A.copy()
        A.sum_duplicates()
    rows = A.shape[0]
    count = np.diff(A.indptr)
    row = np.repeat(np.arange(rows), count)                             # (nnz,) row of every entry
    place = np.arange(A.nnz) - A.indptr[row]                            # its place in the row
    owner = row // N if A.shape[0] == A.shape[1] else row               # batch element of the row
    cols = np.full((rows, K_L), N, dtype=INDEX_DTYPE)
    vals = np.zeros((rows, K_L), dtype=A.dtype)
    cols[row, place] = A.indices - N * owner
    vals[row, place] = A.data                                           # an explicit 0 is an empty place
    return cols, vals


def links_from_csr(Nl: sp.csr_matrix, Pl: sp.csr_matrix, p: sp.csr_matrix, K_L: int,
                   zero_diagonal: bool = True) -> Links:
    """The CSR links of an SDNCState ((B N, B N), (B N, B N), (B, B N); <= K_L entries per row, as
    sdnc.check_state ensures) in the fixed-width layout. With zero_diagonal, diagonal entries a given
    state may hold are emptied here (the first link_update would drop them from every row anyway)."""
    B, BN = p.shape
    N = BN // B
    fwd_cols, fwd_vals = _rows_from_csr(Nl, N, K_L)
    bwd_cols, bwd_vals = _rows_from_csr(Pl, N, K_L)
    prec_cols, prec_vals = _rows_from_csr(p, N, K_L)
    if zero_diagonal:
        slot = np.tile(np.arange(N), B)[:, None]                        # (B N, 1) the row's own slot
        fwd_vals[fwd_cols == slot] = 0.0
        bwd_vals[bwd_cols == slot] = 0.0
    return Links(np.stack([fwd_cols, bwd_cols]).reshape(2, B, N, K_L),
                 np.stack([fwd_vals, bwd_vals]).reshape(2, B, N, K_L), prec_cols, prec_vals)


def _csr_from_rows(cols: np.ndarray, vals: np.ndarray, shape: tuple, N: int) -> sp.csr_matrix:
    """Canonical CSR of the given shape from (rows, K_L) local columns and values: the entries, which
    every row of Links holds in ascending column order, row after row (empty places dropped)."""
    live = vals != 0
    indptr = np.zeros(cols.shape[0] + 1, dtype=INDEX_DTYPE)
    np.cumsum(np.count_nonzero(live, axis=1), out=indptr[1:])
    row = np.arange(cols.shape[0])
    owner = row // N if shape[0] == shape[1] else row
    return _csr(vals[live], (cols + N * owner[:, None])[live], indptr, shape, canonical=True)


def links_to_csr(links: Links) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """(Nl, Pl, p) as the canonical CSR matrices of an SDNCState."""
    _, B, N, K_L = links.cols.shape
    cols, vals = links.cols.reshape(2, B * N, K_L), links.vals.reshape(2, B * N, K_L)
    return (_csr_from_rows(cols[0], vals[0], (B * N, B * N), N),
            _csr_from_rows(cols[1], vals[1], (B * N, B * N), N),
            _csr_from_rows(links.prec_cols, links.prec_vals, (B, B * N), N))


# ----------------------------------------------------------------- the write weights, as the links use them
class WriteSupport(NamedTuple):
    """wW_t seen three ways: its support per element, densely, and its total."""
    slots: np.ndarray        # (B, S) int, supp(wW_t) of every element, ascending; N in the padding
    weight: np.ndarray       # (B, S) wW_t on those slots; 0 in the padding
    dense: np.ndarray        # (B, N + 1) wW_t on every slot, and 0 on the sentinel slot N
    total: np.ndarray        # (B,) sum_i wW_t(i)


def write_support(rows: np.ndarray, bounds: np.ndarray, weight: np.ndarray, N: int) -> WriteSupport:
    """The write weights wW_t (B, B N) given as the three arrays of their canonical CSR: rows = indices
    (global slots b N + j, ascending, unique), bounds = indptr (B + 1,), weight = data. Explicit zero
    weights may be present (they change nothing)."""
    B = bounds.size - 1
    count = np.diff(bounds)
    element = np.repeat(np.arange(B), count)                            # (nnz,) batch element
    place = np.arange(rows.size) - bounds[element]
    local = rows - N * element                                          # (nnz,) slot j
    S = max(int(count.max(initial=0)), 1)
    slots = np.full((B, S), N, dtype=INDEX_DTYPE)
    padded = np.zeros((B, S), dtype=weight.dtype)
    slots[element, place] = local
    padded[element, place] = weight
    dense = np.zeros((B, N + 1), dtype=weight.dtype)
    dense[element, local] = weight
    total = np.zeros(B, dtype=weight.dtype)
    # np.add.reduceat over each element's entries: the sum a CSR row sum (scipy's Ww.sum(axis=1)) forms
    nonempty = count > 0
    if nonempty.any():
        total[nonempty] = np.add.reduceat(weight, bounds[:-1][nonempty])
    return WriteSupport(slots, padded, dense, total)


# ----------------------------------------------------------------- merge and cut, shared by eqs. 17-20 and 11
def _merge_and_cut(row: np.ndarray | None, old_cols: np.ndarray, old_vals: np.ndarray, new_cols: np.ndarray,
                   new_vals: np.ndarray, K_L: int, N: int, zero_diagonal: bool) -> tuple[np.ndarray, np.ndarray]:
    """n rows at once: each row's K_L old places (n, K_L) and C candidates (n, C) become K_L places.

    Within each list the columns are distinct, except the column N of empty places. A candidate in a
    column the row already holds adds to that entry; the diagonal (column == row (n,)) is dropped if
    zero_diagonal; the K_L largest entries remain, ties to the lower column. Returns (n, K_L) columns
    and values: the entries in ascending column order, empty places (value 0, column N) among them.
    """
    n, C = new_cols.shape
    width = K_L + C
    # rows are reordered through flat positions (row r's place k is at r (K_L + C) + k): one fancy
    # index per array, cheaper than take_along_axis for arrays this small
    offsets = width * np.arange(n)[:, None]                             # (n, 1)
    cols = np.concatenate([old_cols, new_cols], axis=1).reshape(-1)     # (n (K_L + C),)
    vals = np.concatenate([old_vals, new_vals], axis=1).reshape(-1)
    # every row's places and candidates in column order; a stable sort keeps an old place before a
    # candidate of the same column
    at = np.argsort(cols.reshape(n, width), axis=1, kind="stable") + offsets
    cols, vals = cols[at], vals[at]                                     # (n, K_L + C)
    # a column holds at most one old place and one candidate, so duplicates are neighbours in pairs:
    # the candidate adds to the old entry (old + new, as eqs. [17-20] read) and leaves an empty place
    # (neighbouring empty places, column N, pair up too, but they hold 0 + 0)
    moved = np.where(cols[:, 1:] == cols[:, :-1], vals[:, 1:], 0.0)     # (n, K_L + C - 1)
    vals[:, :-1] += moved
    vals[:, 1:] -= moved                                                # x - x: exactly 0
    if zero_diagonal:
        vals[cols == row[:, None]] = 0.0                                # D.10.1
    # the K_L largest: a stable sort of -vals lists equal values in column order (ties to the lower
    # column); the kept places are then put back in column order
    kept = np.argsort(-vals, axis=1, kind="stable")[:, :K_L]            # (n, K_L)
    kept.sort(axis=1)
    at = kept + offsets
    kept_vals = vals.reshape(-1)[at]
    return np.where(kept_vals != 0, cols.reshape(-1)[at], N), kept_vals


# ----------------------------------------------------------------- steps 7-8: links and precedence
def _no_candidate_enters(merged: np.ndarray, largest_candidate: np.ndarray) -> np.ndarray:
    """(B, N) True where a row's K_L merged entries (B, N, K_L) are all larger than its largest candidate
    (B, N): the K_L largest of the row are then its own places, its columns stay."""
    B, N, K_L = merged.shape
    # the minimum over a place-major copy: NumPy reduces a few long rows much faster than many short ones
    smallest = np.min(merged.reshape(B * N, K_L).T.copy(), axis=0).reshape(B, N)
    return smallest > largest_candidate


def forward_links_update(cols: np.ndarray, vals: np.ndarray, p_cols: np.ndarray, p_vals: np.ndarray,
                         write: WriteSupport, zero_diagonal: bool = True) -> None:
    """Eqs. [17-18], in place: Nl_t(i, j) = (1 - wW_t(i)) Nl_{t-1}(i, j) + wW_t(i) p_{t-1}(j), diagonal
    dropped, K_L largest per row.

    First the equation at every row's own K_L columns, for all rows at once (a row with wW_t(i) = 0
    keeps its values exactly: 1 x value + 0). A row whose updated entries all stay larger than its
    largest candidate wW_t(i) max_j p_{t-1}(j) - or that is not written - keeps its columns: no
    candidate can enter. Only the other written rows (not full, or a candidate large enough to enter;
    few, as a rule the rows of large write weight) are merged with their K_L candidates wW_t(i)
    p_{t-1}(j) and cut by _merge_and_cut. Both give the numbers the full merge would.

    Args:
        cols, vals: (B, N, K_L) Nl_{t-1}, overwritten with Nl_t (C-contiguous).
        p_cols, p_vals: (B, K_L) the OLD precedence p_{t-1}. write: the write weights (write_support).
    """
    B, N, K_L = cols.shape
    w = write.dense[:, :N, None]                                        # (B, N, 1) wW_t(i)
    p_dense = np.zeros((B, N + 1), dtype=p_vals.dtype)                  # p_{t-1} on every slot, 0 at N
    p_dense[np.arange(B)[:, None], p_cols] = p_vals
    decayed = (1.0 - w) * vals                                          # (B, N, K_L)
    vals[...] = decayed + w * p_dense.reshape(-1)[cols + (N + 1) * np.arange(B)[:, None, None]]
    stays = _no_candidate_enters(vals, w[:, :, 0] * np.max(p_vals, axis=1)[:, None]) | (w[:, :, 0] == 0)
    b, i = np.nonzero(~stays)                                           # the n rows to merge
    if b.size:
        cols[b, i], vals[b, i] = _merge_and_cut(i, cols[b, i], decayed[b, i],
                                                p_cols[b], w[b, i] * p_vals[b],     # (n, K_L) wW_t(i) p_{t-1}(j)
                                                K_L, N, zero_diagonal)


def backward_links_update(cols: np.ndarray, vals: np.ndarray, p_cols: np.ndarray, p_vals: np.ndarray,
                          write: WriteSupport, zero_diagonal: bool = True) -> None:
    """Eqs. [19-20], in place: Pl_t(i, j) = (1 - wW_t(j)) Pl_{t-1}(i, j) + wW_t(j) p_{t-1}(i), diagonal
    dropped, K_L largest per row. Every entry in a column of supp(wW_t) decays; only the rows in
    supp(p_{t-1}) gain entries (the S candidates wW_t(j) p_{t-1}(i), j in supp(wW_t)). As in
    forward_links_update, the equation is first evaluated at every row's own columns, and only the
    rows a candidate can enter are merged.

    Args: as forward_links_update, for Pl.
    """
    B, N, K_L = cols.shape
    # wW_t(j) at every place's column, read from the flat (B (N + 1),) dense write weights (the
    # sentinel N reads 0, and 1 - 0 is exactly 1). An entry decayed to 0 (wW_t(j) = 1) is an empty
    # place from now on (it keeps its column, which no other place of its row holds)
    w = write.dense.reshape(-1)[cols + (N + 1) * np.arange(B)[:, None, None]]       # (B, N, K_L)
    p_dense = np.zeros((B, N + 1), dtype=p_vals.dtype)                  # p_{t-1} on every slot, 0 at N
    p_dense[np.arange(B)[:, None], p_cols] = p_vals
    p = p_dense[:, :N, None]                                            # (B, N, 1) p_{t-1}(i)
    decayed = (1.0 - w) * vals
    vals[...] = decayed + w * p                                         # (B, N, K_L) (p(i) = 0: + 0)
    stays = _no_candidate_enters(vals, np.max(write.weight, axis=1)[:, None] * p[:, :, 0]) | (p[:, :, 0] == 0)
    b, i = np.nonzero(~stays)                                           # the n rows to merge
    if b.size:
        cols[b, i], vals[b, i] = _merge_and_cut(i, cols[b, i], decayed[b, i],
                                                write.slots[b], write.weight[b] * p[b, i],  # (n, S)
                                                K_L, N, zero_diagonal)  # wW_t(j) p_{t-1}(i)


def precedence_update(p_cols: np.ndarray, p_vals: np.ndarray, write: WriteSupport) -> tuple[np.ndarray, np.ndarray]:
    """Eq. [11]: p_t = (1 - sum_i wW_t(i)) p_{t-1} + wW_t, then its K_L largest entries (ties to the
    lower slot, no renormalisation). p_cols, p_vals: (B, K_L). Returns the new (B, K_L) pair."""
    B, K_L = p_cols.shape
    N = write.dense.shape[1] - 1
    return _merge_and_cut(None, p_cols, (1.0 - write.total[:, None]) * p_vals, write.slots, write.weight,
                          K_L, N, zero_diagonal=False)


def link_update(links: Links, write: WriteSupport, zero_diagonal: bool = True) -> Links:
    """Steps 7-8, eqs. [17-20] and [11]: the new links and precedence from the write weights, all
    three from the OLD precedence p_{t-1}. Returns new arrays (the input Links is not modified).

    Args:
        links: Links of t-1 (B, N, K_L places). write: wW_t (write_support). zero_diagonal: D.10.1.
    """
    cols, vals = links.cols.copy(), links.vals.copy()                   # (2, B, N, K_L) each
    forward_links_update(cols[0], vals[0], links.prec_cols, links.prec_vals, write, zero_diagonal)
    backward_links_update(cols[1], vals[1], links.prec_cols, links.prec_vals, write, zero_diagonal)
    return Links(cols, vals, *precedence_update(links.prec_cols, links.prec_vals, write))


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
    ascending (the rule of link_update and temporal_select, on dense arrays)."""
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


def temporal_select(links: Links, prev_index: np.ndarray, prev_weight: np.ndarray, K_L: int) -> TemporalRecord:
    """Step 9, eqs. [21-22]: which K_L entries of f^i = Nl wR^i_{t-1} and b^i = Pl wR^i_{t-1} are kept,
    and the link values that make them (D.10.2: the K_L largest, ties - zeros included - to the lower slot).

    Both link matrices are handled at once (the leading axis of Links.cols: 0 Nl for f, 1 Pl for b):
    f and b at every slot as one sparse product, the K_L largest of every (b, i) row by top_k_slots
    (the content read's rule), and the link blocks read from the kept rows.

    Args:
        links: Links of step t. prev_index (B, R, Kp) int and prev_weight (B, R, Kp): the previous read
            weightings as (slot, weight) pairs. K_L: entries kept of f and of b.
    Returns:
        the TemporalRecord; the kept values are f_kept = temporal_values(record.fwd_links, prev_weight).
    """
    B, R, Kp = prev_index.shape
    N = links.cols.shape[2]
    cols, vals = links.cols, links.vals                                 # (2, B, N, K_L)
    # wR^i_{t-1} on every slot as a (B (N + 1), R) array: element b's slot j at row b (N + 1) + j (its
    # row N, the column of empty places, stays 0), head i in column i; duplicated pairs summed in order
    at = ((N + 1) * np.arange(B)[:, None, None] + prev_index) * R + np.arange(R)[None, :, None]   # (B, R, Kp)
    prev = np.zeros(B * (N + 1) * R, dtype=np.result_type(prev_weight, vals))
    np.add.at(prev, at.reshape(-1), prev_weight.reshape(-1))            # in the working dtype, pair order
    prev = prev.reshape(B * (N + 1), R)
    # f and b at every slot, F[d, b, i, j] = sum_k vals[d, b, j, k] wR^i_{t-1}(cols[d, b, j, k]): the
    # fixed-width rows already are a CSR matrix (2 B N, B (N + 1)) with K_L stored places per row
    # (empty places: explicit zeros in column N), so no sorting or copying is needed to multiply in C.
    # It adds a row's terms place after place - ascending columns - as the CSR layout's product did.
    stored = cols + (N + 1) * np.arange(B)[None, :, None, None]                    # (2, B, N, K_L)
    A = sp.csr_array((vals.reshape(-1), stored.reshape(-1), K_L * np.arange(2 * B * N + 1)),
                     shape=(2 * B * N, B * (N + 1)), copy=False)
    F = (A @ prev).reshape(2, B, N, R).transpose(0, 1, 3, 2)            # (2, B, R, N)
    index = top_k_slots(F, K_L)                                         # (2, B, R, K_L) ascending
    # the link values at (kept slot, previous read slot): the kept rows are scattered into dense rows
    # of N + 1 zeros (empty places write zeros), then read at the Kp slots; O(N) per kept row, but
    # two NumPy calls instead of comparing K_L columns with Kp slots
    rows = (N * np.arange(2 * B).reshape(2, B, 1, 1) + index).reshape(-1)          # (2 B R K_L,)
    dense = np.zeros(rows.size * (N + 1), dtype=vals.dtype)             # (2 B R K_L) rows of N + 1, flat
    start = (N + 1) * np.arange(rows.size).reshape(2, B, R, K_L, 1)     # where each kept row starts
    dense[(start + cols.reshape(2 * B * N, K_L)[rows].reshape(2, B, R, K_L, K_L)).reshape(-1)] = \
        vals.reshape(2 * B * N, K_L)[rows].reshape(-1)
    block = dense[start + prev_index[None, :, :, None, :]]              # (2, B, R, K_L, Kp)
    return TemporalRecord(index[0], block[0], index[1], block[1])


def temporal_values(links: np.ndarray, prev_weight: np.ndarray) -> np.ndarray:
    """The kept entries (B, R, K_L) = links (B, R, K_L, Kp) applied to prev_weight (B, R, Kp)."""
    return np.einsum("brkm,brm->brk", links, prev_weight)


def temporal_values_backward(dvalues: np.ndarray, links: np.ndarray) -> np.ndarray:
    """Adjoint of temporal_values w.r.t. prev_weight (the links are constants, spec D.4): (B, R, Kp)."""
    return np.einsum("brkm,brk->brm", links, dvalues)
