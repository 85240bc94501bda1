"""Sparse Access Memory, the sparse memory step (Rae et al. 2016, arXiv:1610.09027, section 3 and
Supplementary A; spec specs/ntm_dnc_sam.md C.3 steps 3-8, C.4 and C.5): the least-recently-accessed
slot, the sparse write made in place with a record of the rows it touched, the top-K read through a
batch-stacked CSR weighting, the usage bookkeeping, and their hand-derived adjoints.

Shapes: B batch, N slots, W word size, R read heads, K slots read per head (K <= N), Kp the K of
the previous read weightings (0 for the empty weightings of a sequence start), J = |supp(wW_t)| the
rows one write touches (<= R Kp + 1 per batch element).

One step, spec C.3 (paper eq. numbers in brackets):
    3. [6]      l_t = argmin_j last_{t-1}(j), ties to the lowest index          LRA slot
    4.          wbar_{t-1} = (1/R) sum_i wR^i_{t-1}                              mean previous read
    5. [5]/[9]  wW_t = alpha_t (gamma_t wbar_{t-1} + (1 - gamma_t) I^U_t)        write weights
    6. [3]/[8]  M_t = M_{t-1} - M_{t-1} o (I^U_t 1^T) + wW_t a_t^T                LRA row erased, then add
    7. [4]/[7]  S^i_t = top-K_j D(q^i, M_t(j)),  wR^i_t = softmax over S^i_t of beta^i D,
                r^i_t = sum_{s in S^i_t} wR^i_t(s) M_t(s)                        sparse read, NEW memory
    8. [U(2)]   last_t(j) = t wherever wW_t(j) + sum_i wR^i_t(j) > delta         usage

Data layout (C.5). Memory M (B, N, W) is ONE C-contiguous buffer, modified in place; M2 is its
(B N, W) view, row b N + j is slot j of element b. Read weights are a CSR matrix Wr of shape
(B R, B N): row b R + i (batch-major, head-minor) holds exactly K entries, columns b N + S^i_t
ascending, data the K weights (row sums 1); Wr.toarray() is block diagonal. Write weights are a
canonical CSR matrix Ww of shape (B, B N), at most R Kp + 1 entries per row: a slot chosen by
several heads and by the LRA rule appears once with the weights summed, and the LRA entry stays
stored even when its weight is 0 (its row is erased whatever alpha_t is). Indices are int64.
The step keeps each weighting as the arrays of its CSR (ReadRecord: rows and K weights per head;
WriteRecord: rows, bounds, data) and builds the scipy matrix only when record.Wr / record.Ww is
asked for: every row of Wr holds exactly K entries, so gathering the K rows is the CSR product.

Not differentiated (spec C.4): the index sets S^i_t, the LRA slot l_t, the usage bookkeeping. The
forward functions take recorded choices (index=, lra=) so finite differences can replay them.

Memory-revert BPTT (C.4). The forward keeps per step only a record of what it touched: the old
rows M_{t-1}[J_t], Ww, a_t, the gates, l_t, S^i_t, wR^i_t and the K rows each head read with their
similarities - O(R K W) numbers, never O(N W).
The backward walks t = T..1 with the same buffer (holding M_t) and ONE gradient buffer dM: read
adjoint (sparse_read_backward, on the K rows the read recorded), revert
(sparse_write_revert: M[J_t] = saved rows, never a subtraction, so the buffer returns to M_0 bit
for bit), write adjoint (sparse_write_backward). The buffers are arguments that these functions
modify in place; everything else follows the forward/backward pair convention.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from minimem.checks import check_slot_count
from minimem.memory.addressing import ContentCache, content_backward, content_forward, cosine_similarity_forward

INDEX_DTYPE = np.int64        # B N exceeds 2^31 at the paper's sizes (C.5)


# ----------------------------------------------------------------- validation
def check_K(K, N: int) -> int:
    """K as an int, or ValueError unless 1 <= K <= N (spec C.11)."""
    return check_slot_count("K", "slots read per head", K, N)


def _as_rows(M: np.ndarray, name: str = "M") -> np.ndarray:
    """The (B N, W) view of a buffer (B, N, W); ValueError if reshaping would copy (then an in-place
    update would silently miss the caller's buffer)."""
    if M.ndim != 3:
        raise ValueError(f"{name} must have shape (B, N, W); got {M.shape}")
    if not (M.flags.c_contiguous and M.flags.writeable):
        raise ValueError(f"{name} must be a writeable C-contiguous buffer (it is updated in place)")
    return M.reshape(M.shape[0] * M.shape[1], M.shape[2])


def check_index_sets(index: np.ndarray, B: int, R: int, N: int, name: str = "index") -> np.ndarray:
    """index (B, R, K) int with every row strictly ascending in [0, N); returns it as int64."""
    index = np.asarray(index)
    if index.ndim != 3 or index.shape[:2] != (B, R) or index.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an integer array of shape (B, R, K) with (B, R) = {(B, R)}; "
                         f"got {index.dtype} {index.shape}")
    if index.size and (index.min() < 0 or index.max() >= N):
        raise ValueError(f"{name} must hold slots in [0, N) with N = {N}; got [{index.min()}, {index.max()}]")
    if index.shape[2] > 1 and np.any(np.diff(index, axis=-1) <= 0):
        raise ValueError(f"{name} must be sorted ascending and unique within each head's K slots")
    return index.astype(INDEX_DTYPE, copy=False)


def _csr(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, shape: tuple,
         canonical: bool = False) -> sp.csr_matrix:
    """A csr_matrix that keeps int64 index arrays (scipy downcasts to int32 whenever it can).
    canonical=True: the callers built every row's columns sorted and unique, and the matrix is
    told so (sum_duplicates() is then a no-op that only sets the flag)."""
    # csr_array keeps int64 index arrays as given (no scan of their contents, no cast); csr_matrix
    # of a csr_array takes its arrays over as they are
    matrix = sp.csr_matrix(sp.csr_array((data, np.asarray(indices, dtype=INDEX_DTYPE),
                                         np.asarray(indptr, dtype=INDEX_DTYPE)), shape=shape, copy=False))
    if canonical:
        matrix.sum_duplicates()
    return matrix


def _unique_inverse(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(values, return_inverse=True) for a small 1-d int array, without np.unique's
    per-call overhead: (sorted unique values, int64 position of every value in them)."""
    order = values.argsort(kind="stable")
    ordered = values[order]
    first = np.empty(ordered.size, dtype=bool)
    first[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    inverse = np.empty(ordered.size, dtype=INDEX_DTYPE)
    inverse[order] = first.cumsum() - 1
    return ordered[first], inverse


# ----------------------------------------------------------------- choices: LRA slot and top-K
def lra_slots(usage: np.ndarray) -> np.ndarray:
    """Step 3, eq. [6]: l_t = argmin_j usage(j) per batch element, ties to the lowest index.

    usage is last_{t-1} (B, N) int (SAM's U^(2): argmin of t - last = argmin of last) or the
    discounted usage U^(1)_{t-1} (B, N) float (DAM). np.argmin returns the first minimum.
    """
    return np.argmin(usage, axis=-1).astype(INDEX_DTYPE)                 # (B,)


TOP_K_SORT_MAX_N = 1024      # up to this many scores per row top_k_slots sorts instead of partitioning


def top_k_slots(scores: np.ndarray, K: int) -> np.ndarray:
    """Step 7: the K largest scores of every row, ties to the lowest index, returned ascending.

    Exact top-K (the default and the test oracle): np.argpartition finds the K-th largest value v;
    every score > v is kept, and of the scores == v the lowest-indexed ones fill the K places
    (argpartition alone does not promise which tied index it keeps).

    Args:
        scores: (..., N) similarities.
    Returns:
        (..., K) int64 slot indices, strictly ascending along the last axis.
    """
    N = scores.shape[-1]
    K = check_K(K, N)
    if K == N:
        return np.broadcast_to(np.arange(N, dtype=INDEX_DTYPE), scores.shape).copy()
    if N <= TOP_K_SORT_MAX_N and not np.isnan(scores).any():
        # few scores: a stable sort of -scores lists equal scores lowest index first, so its first K
        # are the same set as below, in fewer (and cheaper) array operations
        best = (-scores).argsort(axis=-1, kind="stable")[..., :K].copy()      # its own (..., K) buffer
        best.sort(axis=-1)
        return best.astype(INDEX_DTYPE, copy=False)
    part = np.argpartition(-scores, K - 1, axis=-1)[..., :K]
    kth = np.min(np.take_along_axis(scores, part, axis=-1), axis=-1, keepdims=True)  # K-th largest
    above, tied = scores > kth, scores == kth
    need = K - np.sum(above, axis=-1, keepdims=True)                    # tied places to fill
    chosen = above | (tied & (np.cumsum(tied, axis=-1) <= need))         # (..., N), K per row
    return np.nonzero(chosen)[-1].reshape(scores.shape[:-1] + (K,)).astype(INDEX_DTYPE)


# ----------------------------------------------------------------- CSR weightings (C.5)
def read_weights_csr(index: np.ndarray, weights: np.ndarray, N: int) -> sp.csr_matrix:
    """Batch-stacked read weightings: CSR (B R, B N), row b R + i holds the K entries of head i of
    element b at columns b N + index[b, i] (ascending), exactly K per row.

    Args:
        index: (B, R, K) int, ascending per row. weights: (B, R, K).
    """
    if np.ndim(index) != 3 or np.shape(weights) != np.shape(index):
        raise ValueError(f"index and weights must have the same shape (B, R, K); got {np.shape(index)} "
                         f"and {np.shape(weights)}")
    B, R, K = index.shape
    columns = (index + N * np.arange(B, dtype=INDEX_DTYPE)[:, None, None]).reshape(-1)
    indptr = K * np.arange(B * R + 1, dtype=INDEX_DTYPE)
    return _csr(weights.reshape(-1), columns, indptr, (B * R, B * N))


def read_weights_dense(Wr: sp.csr_matrix, B: int, R: int, N: int) -> np.ndarray:
    """The (B, R, N) dense weightings of a batch-stacked CSR: the diagonal blocks of Wr.toarray().
    O(B R N): for tests and plots, never in the sparse path."""
    rows = np.repeat(np.arange(B * R), np.diff(Wr.indptr))
    dense = np.zeros((B, R, N), dtype=Wr.dtype)
    b, i = np.divmod(rows, R)
    np.add.at(dense, (b, i, Wr.indices - N * b), Wr.data)
    return dense


def write_weights_csr(prev_index: np.ndarray, prev_weight: np.ndarray, lra: np.ndarray, alpha: np.ndarray,
                      gamma: np.ndarray, N: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Steps 4-5, eqs. [5]/[9]: wW_t = alpha (gamma wbar_{t-1} + (1 - gamma) I^U_t) as a canonical CSR.

    The R Kp read entries (value alpha gamma wR/R at column b N + s) and the B LRA entries (value
    alpha (1 - gamma) at b N + l) are COO triplets; one stable sort orders their columns (b-major, so the
    order of a canonical CSR of shape (B, B N)) and its inverse map sums duplicates - the same
    result as coo.tocsr() + sum_duplicates(), plus the triplet -> entry map the backward needs.
    Zero weights are kept (never eliminate_zeros: the LRA row is erased whatever its weight).

    Args:
        prev_index: (B, R, Kp) int and prev_weight: (B, R, Kp), the previous read weightings.
        lra: (B,) int LRA slots. alpha, gamma: (B, 1) gates.
    Returns:
        Ww (B, B N) CSR, and write_map (B R Kp + B,) int: triplet k is stored at Ww.data[write_map[k]]
        (read triplets in prev_weight's C order, then the B LRA triplets).
    """
    J, indptr, data, write_map = write_weights(prev_index, prev_weight, lra, alpha, gamma, N)
    return _csr(data, J, indptr, (lra.shape[0], lra.shape[0] * N), canonical=True), write_map


def write_weights(prev_index: np.ndarray, prev_weight: np.ndarray, lra: np.ndarray, alpha: np.ndarray,
                  gamma: np.ndarray, N: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """write_weights_csr's three CSR arrays without the scipy object (what the step itself uses):
    (J_t = Ww.indices (nnz,) global rows, sorted and unique; Ww.indptr (B + 1,); Ww.data (nnz,);
    write_map)."""
    B, R, Kp = prev_index.shape
    offsets = N * np.arange(B, dtype=INDEX_DTYPE)
    columns = np.concatenate([(prev_index + offsets[:, None, None]).reshape(-1), offsets + lra])
    values = np.concatenate([((alpha * gamma / R)[:, :, None] * prev_weight).reshape(-1),
                             (alpha * (1.0 - gamma))[:, 0]])
    J, write_map = _unique_inverse(columns)                              # J_t, sorted, unique
    data = np.bincount(write_map, weights=values, minlength=J.size).astype(values.dtype, copy=False)
    indptr = np.searchsorted(J, N * np.arange(B + 1, dtype=INDEX_DTYPE))
    return J, indptr, data, write_map


# ----------------------------------------------------------------- sparse write, steps 3-6
class WriteRecord(NamedTuple):
    """What one write touched: everything its adjoint and the revert need, O(R Kp W) numbers. The
    write weights are kept as the three arrays of their canonical CSR (B, B N); record.Ww is that
    CSR matrix, built when asked for (the step itself only reads the arrays)."""
    lra: np.ndarray          # (B,) int, l_t
    rows: np.ndarray         # (nnz,) int, J_t: the global rows b N + j written (= Ww.indices), ascending
    bounds: np.ndarray       # (B + 1,) int, Ww.indptr: element b owns rows[bounds[b]:bounds[b + 1]]
    data: np.ndarray         # (nnz,) wW_t on those rows (= Ww.data)
    element: np.ndarray      # (nnz,) int, the batch element b of every row (rows // N)
    N: int                   # slots per element
    write_map: np.ndarray    # (B R Kp + B,) int, triplet -> entry of rows / data
    prev_weight: np.ndarray  # (B, R, Kp) the previous read weights used in wbar
    saved: np.ndarray        # (nnz, W) the old rows M_{t-1}[J_t], for the exact revert
    a: np.ndarray            # (B, W) write word
    alpha: np.ndarray        # (B, 1) write gate
    gamma: np.ndarray        # (B, 1) interpolation gate

    @property
    def Ww(self) -> sp.csr_matrix:
        """The write weights as the canonical CSR matrix (B, B N) of C.5 (built on each access)."""
        B = self.lra.shape[0]
        return _csr(self.data, self.rows, self.bounds, (B, B * self.N), canonical=True)

    @property
    def erased(self) -> np.ndarray:
        """(B,) the global rows b N + l_t of the LRA slots."""
        return self.N * np.arange(self.lra.shape[0], dtype=INDEX_DTYPE) + self.lra


def _row_sums(data: np.ndarray, element: np.ndarray, rows: np.ndarray, B: int) -> np.ndarray:
    """Ww @ X (B, W) for the CSR with entries data (nnz,) in rows element (nnz,) (ascending), given
    rows = X[Ww.indices] (nnz, W): each row's products added in stored order, as scipy's CSR product
    adds them (the same bits), without its dispatch overhead."""
    products = data[:, None] * rows
    if B == 1:
        return np.add.reduce(products, axis=0, keepdims=True)
    out = np.zeros((B, rows.shape[1]), dtype=np.result_type(data, rows))
    np.add.at(out, element, products)                                    # in order: 0 + p_1 + p_2 + ...
    return out


def _apply_write(M2: np.ndarray, record: WriteRecord) -> None:
    M2[record.erased] = 0.0                                              # E_t: the LRA row, unconditionally
    M2[record.rows] += record.data[:, None] * record.a[record.element]   # A_t = wW a^T, rows unique


def sparse_write_forward(M: np.ndarray, prev_index: np.ndarray, prev_weight: np.ndarray, lra: np.ndarray,
                         a: np.ndarray, alpha: np.ndarray, gamma: np.ndarray) -> WriteRecord:
    """Steps 4-6 in place: build wW_t, save the rows J_t it touches, erase the LRA row, add wW a^T.

        M_t(j) = M_{t-1}(j) - [j = l_t] M_{t-1}(j) + wW_t(j) a_t

    Args:
        M: (B, N, W) memory buffer holding M_{t-1}; on return it holds M_t.
        prev_index: (B, R, Kp) int, prev_weight: (B, R, Kp): the previous read weightings wR_{t-1}.
        lra: (B,) int LRA slots l_t (lra_slots, or a recorded choice).
        a: (B, W) write word; alpha, gamma: (B, 1) gates.
    Returns:
        the WriteRecord (the sparse write weights are record.Ww, or its arrays rows, bounds, data).
    """
    M2 = _as_rows(M)
    N = M.shape[1]
    rows, bounds, data, write_map = write_weights(prev_index, prev_weight, lra, alpha, gamma, N)
    record = WriteRecord(lra, rows, bounds, data, rows // N, N, write_map, prev_weight,
                         M2[rows], a, alpha, gamma)                      # saved: a copy of the old rows
    _apply_write(M2, record)
    return record


def sparse_write_revert(M: np.ndarray, record: WriteRecord) -> None:
    """Undo one write in place: M[J_t] = the saved rows, so the buffer holds M_{t-1} bit for bit.
    (Subtracting wW a^T and restoring the erased row is the paper's description; it is not exact
    in floating point.) Reverts must run in reverse time order."""
    _as_rows(M)[record.rows] = record.saved


def sparse_write_replay(M: np.ndarray, record: WriteRecord) -> None:
    """Redo one write in place (the same operations on the same values: bit-exact M_t again). Used
    to bring a reverted buffer back to M_T, e.g. for a second backward over the same cache."""
    _apply_write(_as_rows(M), record)


def sparse_write_backward(dM: np.ndarray, record: WriteRecord):
    """Adjoint of steps 4-6 (spec C.4, "Write" and "Gates"), updating the gradient buffer in place.

        dwW(j) = dM_t(j) . a_t  (j in J_t)          da_t = sum_j wW(j) dM_t(j) = Ww @ dM2
        dM_{t-1}(l_t) = 0, every other row unchanged (read dM_t(l_t) for dwW first)
        dalpha = sum_j dwW(j) (gamma wbar(j) + (1 - gamma) I^U(j))
        dgamma = alpha sum_j dwW(j) (wbar(j) - I^U(j))
        dwR^i_{t-1}(s) = alpha gamma dwW(s) / R  for s in S^i_{t-1}     (carried back in time)

    Args:
        dM: (B, N, W) buffer holding dL/dM_t; on return it holds dL/dM_{t-1} (the part through this
            write; the read at t-1 adds its own rows next).
    Returns:
        (da (B, W), dalpha (B, 1), dgamma (B, 1), dprev_weight (B, R, Kp)).
    """
    dM2 = _as_rows(dM, "dM")
    alpha, gamma, prev_weight = record.alpha, record.gamma, record.prev_weight
    B, R, Kp = prev_weight.shape
    dM_rows = dM2[record.rows]                                           # (nnz, W)
    dwW = np.einsum("jw,jw->j", dM_rows, record.a[record.element])      # (nnz,) on the pattern of Ww
    da = _row_sums(record.data, record.element, dM_rows, B)              # (B, W) = Ww @ dM2
    dM2[record.erased] = 0.0                                                    # the erased row forgot M_{t-1}
    per_triplet = dwW[record.write_map]                                  # duplicates share their entry
    d_read = per_triplet[:B * R * Kp].reshape(B, R, Kp)                  # dwW at each previous read entry
    d_lra = per_triplet[B * R * Kp:, None]                               # (B, 1) dwW(l_t)
    g_read = np.sum(d_read * prev_weight, axis=(1, 2))[:, None] / R      # (B, 1) <dwW, wbar>
    dalpha = gamma * g_read + (1.0 - gamma) * d_lra
    dgamma = alpha * (g_read - d_lra)
    dprev_weight = (alpha * gamma / R)[:, :, None] * d_read              # (B, R, Kp)
    return da, dalpha, dgamma, dprev_weight


# ----------------------------------------------------------------- sparse read, step 7
class ReadRecord(NamedTuple):
    """What one read used, O(R K W) numbers. The read weights are kept as the K entries of every
    head - the data and indices of their CSR (B R, B N), whose indptr is K * arange(B R + 1);
    record.Wr is that CSR matrix, built when asked for (the step itself only gathers and scatters
    the K rows). The content cache keeps the K rows read, so the adjoint needs no second gather
    and no second content_forward."""
    index: np.ndarray        # (B, R, K) int, S^i_t ascending
    rows: np.ndarray         # (B R K,) int, the global rows b N + S^i_t (= Wr.indices)
    w: np.ndarray            # (B, R, K) read weights wR^i_t on S^i_t (= Wr.data as (B, R, K))
    N: int                   # slots per element
    q: np.ndarray            # (B, R, W) queries
    beta: np.ndarray         # (B, R, 1) strengths
    content: ContentCache    # the K rows M_t[S^i_t] (B, R, K, W), their similarities and softmax

    @property
    def Wr(self) -> sp.csr_matrix:
        """The batch-stacked read weights as the CSR matrix (B R, B N) of C.5 (built on each access)."""
        return read_weights_csr(self.index, self.w, self.N)


def sparse_read_forward(M: np.ndarray, q: np.ndarray, beta: np.ndarray, K: int,
                        index: np.ndarray | None = None, candidates=None, *,
                        validate: bool = True) -> tuple[np.ndarray, ReadRecord]:
    """Step 7, eqs. [4]/[7]: top-K content read on the memory M_t.

        S^i = top-K_j D(q^i, M(j)),   wR^i(s) = softmax_{s in S^i}(beta^i D(q^i, M(s))),
        r^i = sum_{s in S^i} wR^i(s) M(s) = (Wr @ M2)[b R + i]

    The restricted softmax equals "keep the K largest entries of the dense softmax and renormalise"
    (C.12.4). Scoring all N rows (exact top-K) costs O(N W) per query, the paper's "SAM linear".

    Args:
        M: (B, N, W) memory M_t (not modified). q: (B, R, W) queries. beta: (B, R, 1) strengths.
        K: slots per head, 1 <= K <= N.
        index: (B, R, K) recorded sets to replay (None: exact top-K, ties to the lowest index).
        candidates: None, or a callable (q) -> (B, R, K) int index sets (an approximate index).
        validate: False skips checking K and the index sets (sam_forward's time loop: K and the
            recorded sets were checked when the forward was called, an index's answers are well
            formed by construction).
    Returns:
        r (B, R, W), and the ReadRecord.
    """
    B, N, W = M.shape
    if validate:
        K = check_K(K, N)
    if index is None:
        if candidates is not None:
            index = candidates(q)
        else:
            index = top_k_slots(cosine_similarity_forward(M, q)[0], K)  # (B, R, K)
    if validate:
        index = check_index_sets(index, B, q.shape[1], N)
    if index.shape[2] != K:
        raise ValueError(f"index must hold K = {K} slots per head; got {index.shape}")
    R = q.shape[1]
    rows = (index + N * np.arange(B, dtype=INDEX_DTYPE)[:, None, None]).reshape(-1)   # (B R K,) global rows
    M_sel = M.reshape(B * N, W)[rows].reshape(B, R, K, W)               # (B, R, K, W)
    w, content = content_forward(M_sel, q, beta)                         # (B, R, K) on the K rows
    # r = Wr @ M2, each head's K products added in slot order (as the CSR product adds them)
    r = np.add.reduce(w[..., None] * M_sel, axis=2)                      # (B, R, W)
    return r, ReadRecord(index, rows, w, N, q, beta, content)


def sparse_read_backward(dr: np.ndarray, dweight: np.ndarray, M: np.ndarray, dM: np.ndarray,
                         record: ReadRecord) -> tuple[np.ndarray, np.ndarray]:
    """Adjoint of step 7 (paper Supplementary A.2), O(R K W), adding into the gradient buffer.

        dwR^i(s) = M_t(s) . dr^i (+ dweight, the gradient carried from the write at t+1)
        dM_t(s) += wR^i(s) dr^i, then the restricted softmax and cosine adjoints on the K rows.

    The K rows M_t(s) are the ones the forward read (record.content, equal to the buffer's rows at
    this point of the backward). Two heads of one element may share a slot: the rows are added
    with np.add.at, which sums duplicates (plain fancy `+=` would drop them).

    Args:
        dr: (B, R, W) gradient w.r.t. the read words. dweight: (B, R, K) gradient w.r.t. wR_t from
            later steps. M: (B, N, W) memory M_t (its shape is checked; the K rows come from the
            record). dM: (B, N, W) gradient buffer, updated.
    Returns:
        (dq (B, R, W), dbeta (B, R, 1)).
    """
    B, N, W = M.shape
    M_sel = record.content.cosine.M                                      # (B, R, K, W) = M_t[S^i_t]
    if M_sel.shape[0] != B or M_sel.shape[3] != W or record.N != N:
        raise ValueError(f"M must be the (B, N, W) memory the record was read from; got {M.shape}")
    dw = np.einsum("brkw,brw->brk", M_sel, dr) + dweight                 # (B, R, K) = dWr.data
    dM_sel, dq, dbeta = content_backward(dw, record.content)            # (B, R, K, W), ...
    rows, w = record.rows, record.w
    _add_rows(_as_rows(dM, "dM"), rows, (w[..., None] * dr[:, :, None, :] + dM_sel).reshape(-1, W))
    return dq, dbeta


ADD_AT_MAX_ROWS = 1 << 15     # repeated rows in a buffer up to this size: one np.add.at, not layers


def _add_rows(target: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """np.add.at(target, rows, values) for a few rows of a large (n, W) buffer: the same additions
    in the same order (a row listed twice gets its first value added, then its second), as fancy
    `+=` over layers of distinct rows - np.add.at's cost grows with the buffer (3x one fancy `+=` at
    B N = 8 x 2^17 rows). When rows repeat in a small buffer (<= ADD_AT_MAX_ROWS rows; e.g. two
    heads of one element reading one slot), one np.add.at is cheaper than the layers (about 4x at
    B N = 16 x 32)."""
    order = rows.argsort(kind="stable")
    ordered = rows[order]
    repeated = ordered[1:] == ordered[:-1]
    if not repeated.any():
        target[rows] += values                                           # rows distinct: one layer
        return
    if target.shape[0] <= ADD_AT_MAX_ROWS:
        np.add.at(target, rows, values)
        return
    start = np.flatnonzero(np.concatenate([[True], ~repeated]))          # first of each run of equal rows
    rank = np.arange(rows.size) - np.repeat(start, np.diff(np.append(start, rows.size)))
    for layer in range(int(rank.max()) + 1):                             # the k-th copy of every row
        chosen = order[rank == layer]
        target[rows[chosen]] += values[chosen]


# ----------------------------------------------------------------- usage, step 8
def usage_update(last: np.ndarray, usage: np.ndarray | None, Ww: sp.csr_matrix, Wr: sp.csr_matrix, t: int,
                 delta: float, discount: float | None = None) -> np.ndarray:
    """Step 8 in place, O(R K) for U^(2): last(j) = t for every slot with wW(j) + sum_i wR^i(j) > delta.

    With `discount` (DAM's U^(1), C.3): also usage = discount * usage + wW + sum_i wR^i (O(N) for
    the decay). Neither is differentiated.

    Args:
        last: (B, N) int buffer of last-access times. usage: (B, N) float buffer or None.
        Ww: (B, B N), Wr: (B R, B N) this step's write and read weights. t: the step's time (>= 1).
    Returns:
        the global rows b N + j stamped with t, ascending (for the LRA order, minimem.memory.sam_lra).
    """
    for name, buffer in (("last", last), ("usage", usage)):
        if buffer is not None and not (buffer.flags.c_contiguous and buffer.flags.writeable):
            raise ValueError(f"{name} must be a writeable C-contiguous (B, N) buffer (it is updated in place)")
    return stamp_accesses(last, usage, np.concatenate([Ww.indices, Wr.indices]),
                          np.concatenate([Ww.data, Wr.data]), t, delta, discount)


def stamp_accesses(last: np.ndarray, usage: np.ndarray | None, columns: np.ndarray, values: np.ndarray, t: int,
                   delta: float, discount: float | None = None) -> np.ndarray:
    """usage_update on the weights' entries: columns (n,) global slots b N + j (repeats allowed) and
    values (n,) their weights, the write's and the reads' together. Same returns."""
    J, where = _unique_inverse(columns)
    access = np.bincount(where, weights=values, minlength=J.size)       # wW + sum_i wR^i on the union
    accessed = J[access > delta]
    last.reshape(-1)[accessed] = t
    if discount is not None:
        usage *= discount
        usage.reshape(-1)[J] += access.astype(usage.dtype, copy=False)
    return accessed
