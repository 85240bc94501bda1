"""The dense twin of the SAM memory step (Rae et al. 2016, arXiv:1610.09027; spec
specs/ntm_dnc_sam.md C.3 "DAM", C.5 test plan 1-3): the same equations as minimem.memory.sam_sparse
on dense (B, R, N) weightings, with a fresh memory array per step and a plain adjoint.

It serves three purposes:
1. K = N is minimem's "dense path" (C.3): the sparse engine must equal it to 1e-12 (test plan 1),
   and it is what the scaling benchmark compares the sparse engine with (it keeps every M_t: the
   O(T N W) memory of a dense NTM or DAM).
2. Any K < N gives the "masked dense" reference of test plan 2: dense weightings with the logits
   set to -inf outside the (recorded) index sets. It stores every M_t, so it is also the
   "implementation that stores every M_t" of test plan 3.
3. With usage="discounted" and K = N it is DAM (Dense Access Memory): LRA slot from the discounted
   usage U^(1)_t(j) = sum_{s <= t} lambda^{t-s} (wW_s(j) + sum_i wR^i_s(j)).

Shapes: B batch, N slots, W word size, R read heads, K slots read per head.
One step (C.3; the same numbering as sam_sparse):
    3. l_t = argmin_j last_{t-1}(j) (or U^(1)_{t-1}(j)), lowest index on ties;  I = one_hot(l_t)  (B, N)
    4. wbar = mean_i wR^i_{t-1}                                                      (B, N)
    5. wW = alpha (gamma wbar + (1 - gamma) I)                                       (B, N)
    6. M_t = M_{t-1} o ((1 - I) 1^T) + wW a^T                                        (B, N, W)
    7. D = D(q^i, M_t(j)) for all j;  S^i = top-K(D);  wR^i = softmax(beta D masked to S^i)  (B, R, N)
       r^i = sum_j wR^i(j) M_t(j)                                                    (B, R, W)
    8. last_t(j) = t where wW(j) + sum_i wR^i(j) > delta;  U^(1)_t = lambda U^(1)_{t-1} + wW + sum_i wR^i
dense_access_forward(...) -> (outputs, cache), dense_access_backward(douts, cache) -> gradients.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minimem.memory.addressing import CosineCache, cosine_similarity_backward, cosine_similarity_forward
from minimem.memory.read_write import read_backward, read_forward, ReadCache
from minimem.memory.sam_sparse import check_index_sets, check_K, lra_slots, top_k_slots


class DenseAccessCache(NamedTuple):
    lra: np.ndarray          # (B,) int, l_t
    keep: np.ndarray         # (B, N) 1 - I^U_t: which rows keep M_{t-1}
    wbar: np.ndarray         # (B, N) mean previous read weighting
    w_write: np.ndarray      # (B, N) wW_t
    a: np.ndarray            # (B, W) write word
    alpha: np.ndarray        # (B, 1)
    gamma: np.ndarray        # (B, 1)
    cosine: CosineCache      # D(q, M_t) over all N rows
    D: np.ndarray            # (B, R, N) similarities
    beta: np.ndarray         # (B, R, 1)
    index: np.ndarray        # (B, R, K) int, S^i_t ascending
    read: ReadCache          # (M_t, wR_t)


def masked_softmax(z: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """softmax over the last axis with the entries outside `mask` set to -inf (weight exactly 0)."""
    z = np.where(mask, z, -np.inf)
    z = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return z / np.sum(z, axis=-1, keepdims=True)


def index_mask(index: np.ndarray, N: int) -> np.ndarray:
    """(B, R, K) index sets -> (B, R, N) boolean mask."""
    mask = np.zeros(index.shape[:2] + (N,), dtype=bool)
    np.put_along_axis(mask, index, True, axis=-1)
    return mask


def dense_access_forward(M_prev: np.ndarray, last: np.ndarray, usage: np.ndarray, w_read_prev: np.ndarray,
                         q: np.ndarray, beta: np.ndarray, a: np.ndarray, alpha: np.ndarray, gamma: np.ndarray,
                         t: int, K: int, delta: float, discount: float | None = None,
                         lra: np.ndarray | None = None, index: np.ndarray | None = None):
    """One dense SAM/DAM memory step, C.3 steps 3-8 (numbered in the module docstring).

    Args:
        M_prev: (B, N, W) M_{t-1} (not modified). last: (B, N) int last-access times. usage: (B, N)
            discounted usage U^(1) (used for the LRA slot when discount is given).
        w_read_prev: (B, R, N) previous read weightings wR_{t-1} (zeros at a sequence start).
        q: (B, R, W), beta: (B, R, 1), a: (B, W), alpha, gamma: (B, 1) from the interface.
        t: this step's time (>= 1). K: slots read per head. delta: usage threshold.
        discount: None (SAM's U^(2) picks the LRA slot) or lambda (DAM's U^(1) picks it).
        lra: (B,) recorded LRA slots, index: (B, R, K) recorded read sets (None: choose afresh).
    Returns:
        (M, last, usage, w_read, r) - new arrays, w_read (B, R, N), r (B, R, W) - and the cache.
    """
    B, N, W = M_prev.shape
    R = q.shape[1]
    K = check_K(K, N)
    if lra is None:
        lra = lra_slots(last if discount is None else usage)                     # 3.
    keep = np.ones((B, N), dtype=M_prev.dtype)
    keep[np.arange(B), lra] = 0.0                                                # 1 - I^U_t
    wbar = np.mean(w_read_prev, axis=1)                                          # 4. (B, N)
    w_write = alpha * (gamma * wbar + (1.0 - gamma) * (1.0 - keep))             # 5. (B, N)
    M = M_prev * keep[:, :, None] + w_write[:, :, None] * a[:, None, :]         # 6. (B, N, W)
    D, cosine = cosine_similarity_forward(M, q)                                  # 7. (B, R, N)
    index = top_k_slots(D, K) if index is None else check_index_sets(index, B, R, N)
    w_read = masked_softmax(beta * D, index_mask(index, N))                      # (B, R, N)
    r, read_cache = read_forward(M, w_read)                                      # (B, R, W)
    access = w_write + np.sum(w_read, axis=1)                                    # 8. (B, N)
    last = np.where(access > delta, t, last)
    if discount is not None:
        usage = discount * usage + access
    cache = DenseAccessCache(np.asarray(lra), keep, wbar, w_write, a, alpha, gamma, cosine, D, beta, index,
                             read_cache)
    return (M, last, usage, w_read, r), cache


def dense_access_backward(dM: np.ndarray, dw_read: np.ndarray, dr: np.ndarray, cache: DenseAccessCache):
    """Adjoint of dense_access_forward (spec C.4 in dense form).

    Args:
        dM: (B, N, W) gradient w.r.t. M_t from later steps. dw_read: (B, R, N) gradient w.r.t.
            wR_t from the write at t+1. dr: (B, R, W) gradient w.r.t. r_t.
    Returns:
        (dM_prev (B, N, W), dw_read_prev (B, R, N), dq, dbeta, da, dalpha, dgamma).
    """
    c = cache
    R = c.D.shape[1]
    dM_read, dw = read_backward(dr, c.read)                                      # 7. read
    dM = dM + dM_read
    dw = dw + dw_read
    w = c.read.w
    dz = w * (dw - np.sum(w * dw, axis=-1, keepdims=True))                       # masked softmax: 0 off S
    dbeta = np.sum(dz * c.D, axis=-1, keepdims=True)                             # (B, R, 1)
    dM_content, dq = cosine_similarity_backward(c.beta * dz, c.cosine)
    dM = dM + dM_content
    dw_write = np.einsum("bnw,bw->bn", dM, c.a)                                  # 6. (B, N)
    da = np.einsum("bn,bnw->bw", c.w_write, dM)                                  # (B, W)
    dM_prev = dM * c.keep[:, :, None]
    g_read = np.sum(dw_write * c.wbar, axis=-1, keepdims=True)                   # 5. (B, 1)
    g_lra = np.take_along_axis(dw_write, c.lra[:, None], axis=-1)                # (B, 1)
    dalpha = c.gamma * g_read + (1.0 - c.gamma) * g_lra
    dgamma = c.alpha * (g_read - g_lra)
    dw_read_prev = np.broadcast_to((c.alpha * c.gamma / R)[:, :, None] * dw_write[:, None, :],
                                   dw.shape).copy()                              # 4. (B, R, N)
    return dM_prev, dw_read_prev, dq, dbeta, da, dalpha, dgamma
