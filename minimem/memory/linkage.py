"""DNC temporal memory linkage (Graves et al. 2016, Nature 538:471, Methods "Temporal memory
linkage" and "Read weighting"): a precedence weighting remembers where the last write went, an
N x N link matrix records which slot was written after which, and read heads mix following the
links forwards, backwards and a content lookup.

Shapes: B batch, R read heads, N slots, H write heads (an optional axis of the precedence and link
pairs; the paper's DNC has one write head, so most callers pass (B, N) and (B, N, N)).

Equations (Methods; cited by subsection and by their step in spec B.3):
    L_t[i,j] = (1 - w^w_t[i] - w^w_t[j]) L_{t-1}[i,j] + w^w_t[i] p_{t-1}[j],  L_t[i,i] = 0   (step 11)
    p_t = (1 - sum_i w^w_t[i]) p_{t-1} + w^w_t                                             (step 12)
    f^i_t = L_t w^{r,i}_{t-1},   b^i_t = L_t^T w^{r,i}_{t-1}                              (step 13)
    w^{r,i}_t = pi^i_t[1] b^i_t + pi^i_t[2] c^{r,i}_t + pi^i_t[3] f^i_t                   (step 15)

The link update uses the OLD precedence p_{t-1} (so call link_forward before precedence_forward),
and f, b use the NEW links with the OLD read weightings (spec E.2 item 2).

Every primitive is a pair `x_forward(...) -> (out, cache)` / `x_backward(dout, cache) -> grads`
(gradients in the order of the forward's inputs), an autodiff twin `x_autodiff(...)`, and, for the
single-output pairs, `x_op`, the pair wrapped as one autodiff node.

Choices (spec sections in brackets):
- Read modes are ordered (backward, content, forward): pi[..., 0] weighs b, pi[..., 1] the content
  weighting, pi[..., 2] f, as in the paper [B.3 step 4, B.10.3]. deepmind/dnc and
  ixaxaar/pytorch-dnc use (backward, forward, content); map it when comparing [B.8, E.2 item 4].
- The diagonal is set to exactly 0 AFTER the update [B.3 step 11]; the backward masks the upstream
  gradient's diagonal, so L_{t-1}[i,i], w and p get nothing through it [B.4].
- read_weighting takes the modes pi after their softmax (the softmax belongs to the interface).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem.memory.addressing import outer_product, row_dot
from minimem.memory.allocation import _real, _same_shape, _weighting

READ_MODES = ("backward", "content", "forward")   # order of pi[..., k], spec B.10.3
MODE_BACKWARD, MODE_CONTENT, MODE_FORWARD = 0, 1, 2


# ----------------------------------------------------------------- precedence (B.3 step 12)
class PrecedenceCache(NamedTuple):
    p_prev: np.ndarray       # (B, N) precedence p_{t-1}
    w_w: np.ndarray          # (B, N) write weighting w^w_t
    write_total: np.ndarray  # (B, 1) sum_i w^w_t[i]


def precedence_forward(p_prev: np.ndarray, w_w: np.ndarray) -> tuple[np.ndarray, PrecedenceCache]:
    """Precedence p_t = (1 - sum_i w^w_t[i]) p_{t-1} + w^w_t (Methods, "Temporal memory linkage").

    Args:
        p_prev: (B, N) precedence of the previous step (or (B, H, N)), in Delta_N.
        w_w: (B, N) write weighting of this step.
    Returns:
        p: (B, N), the degree to which each slot was the last one written, and the cache.
    """
    p_prev = _weighting(p_prev, "p_prev", allow_heads=True)
    w_w = _same_shape(w_w, p_prev, "w_w", "(B, N) like p_prev")
    write_total = np.sum(w_w, axis=-1, keepdims=True)             # (B, 1)
    p = (1.0 - write_total) * p_prev + w_w                        # (B, N)
    return p, PrecedenceCache(p_prev, w_w, write_total)


def precedence_backward(dp: np.ndarray, cache: PrecedenceCache) -> tuple[np.ndarray, np.ndarray]:
    """Adjoint of the precedence update (spec B.4). Returns (dp_prev, dw_w), each (B, N)."""
    p_prev, w_w, write_total = cache
    dp_prev = (1.0 - write_total) * dp
    dw_w = dp - row_dot(dp, p_prev)[..., None]                    # every w_n also scales p_prev
    return dp_prev, dw_w


def precedence_autodiff(p_prev, w_w) -> ad.Tensor:
    """Autodiff twin of precedence_forward."""
    p_prev, w_w = ad.as_tensor(p_prev), ad.as_tensor(w_w)
    return (1.0 - w_w.sum(axis=-1, keepdims=True)) * p_prev + w_w


# ----------------------------------------------------------------- link matrix (B.3 step 11)
class LinkCache(NamedTuple):
    L_prev: np.ndarray       # (B, N, N) link matrix L_{t-1}
    w_w: np.ndarray          # (B, N) write weighting w^w_t
    p_prev: np.ndarray       # (B, N) OLD precedence p_{t-1}


def _zero_diagonal(L: np.ndarray) -> np.ndarray:
    """Set L[..., i, i] = 0 in place (exactly 0, whatever was there) and return L."""
    N = L.shape[-1]
    if L.flags.c_contiguous:                  # the diagonal is every (N + 1)-th entry of each flat matrix
        L.reshape(L.shape[:-2] + (N * N,))[..., ::N + 1] = 0.0
    else:
        diagonal = np.arange(N)
        L[..., diagonal, diagonal] = 0.0
    return L


def _link_factor(w_w: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The (B, N, N) factor 1 - w_i - w_j of the link update, as (1 - w_i) * 1 + (-1) * w_j: one
    batched matrix product [1 - w, -1] @ [1; w] with an inner dimension of 2. Both products are
    exact, so each entry is the rounded (1 - w_i) - w_j, bit-identical to the broadcast subtraction
    (which is slower: NumPy's broadcasting loop against BLAS writing the blocks)."""
    left = np.empty(w_w.shape + (2,), w_w.dtype)                   # (B, N, 2) = [1 - w_i, -1]
    np.subtract(1.0, w_w, out=left[..., 0])
    left[..., 1] = -1.0
    right = np.empty(w_w.shape[:-1] + (2, w_w.shape[-1]), w_w.dtype)   # (B, 2, N) = [1; w_j]
    right[..., 0, :] = 1.0
    right[..., 1, :] = w_w
    return np.matmul(left, right, out=out)


def link_forward(L_prev: np.ndarray, w_w: np.ndarray, p_prev: np.ndarray,
                 out: np.ndarray | None = None) -> tuple[np.ndarray, LinkCache]:
    """Temporal link matrix L_t[i,j] = (1 - w_i - w_j) L_{t-1}[i,j] + w_i p_{t-1}[j], then L_t[i,i] = 0
    (Methods, "Temporal memory linkage"). L_t[i,j] is the degree to which slot i was written right
    after slot j.

    Args:
        L_prev: (B, N, N) link matrix of the previous step (or (B, H, N, N)).
        w_w: (B, N) write weighting of this step.
        p_prev: (B, N) precedence of the PREVIOUS step (not the one precedence_forward returns now).
        out: optional array shaped like L_prev to write L_t into (the DNC keeps the T link matrices
            of a sequence in one (T, B, N, N) array); used only if it has the result's dtype, else a
            new array is made. It must not overlap L_prev.
    Returns:
        L: (B, N, N) with zero diagonal, entries in [0, 1], rows and columns summing to <= 1 (`out`
        when it was used), and the cache for link_backward.
    """
    w_w = _weighting(w_w, "w_w", allow_heads=True)
    p_prev = _same_shape(p_prev, w_w, "p_prev", "(B, N) like w_w")
    L_prev = _real(L_prev, "L_prev")
    if L_prev.shape != w_w.shape + w_w.shape[-1:]:
        letters = "(B, N, N)" if w_w.ndim == 2 else "(B, H, N, N)"
        raise ValueError(f"L_prev must have shape {letters} = {w_w.shape + w_w.shape[-1:]}; "
                         f"got {L_prev.shape}")
    if out is not None and out.shape != L_prev.shape:
        raise ValueError(f"out must have L_prev's shape {L_prev.shape}; got {out.shape}")
    dtype = np.result_type(L_prev, w_w, p_prev)
    L = out if out is not None and out.dtype == dtype else np.empty(L_prev.shape, dtype)
    # L = (1 - w_i - w_j) L_prev + w_i p_j, built in L with one (B, N, N) temporary (the same
    # roundings as the one-line formula; the factor and the outer product are BLAS products)
    _link_factor(w_w.astype(dtype, copy=False), out=L)            # (B, N, N) 1 - w_i - w_j
    L *= L_prev
    L += outer_product(w_w, p_prev)                               # + w_i p_j
    # w_i + w_j <= 1 in exact arithmetic, but under saturated gates it can exceed 1 by round-off and
    # leave entries like -1e-288: they are set to 0 (a change at round-off level; the backward is
    # that of the exact formula, which differs from the clamped one only at those round-off points).
    np.maximum(L, 0.0, out=L)
    return _zero_diagonal(L), LinkCache(L_prev, w_w, p_prev)


def link_backward(dL: np.ndarray, cache: LinkCache,
                  overwrite_dL: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Adjoint of the link update (spec B.4). Returns (dL_prev (B, N, N), dw_w (B, N), dp_prev (B, N)).

    With G = dL, its diagonal zeroed (the forward overwrote those entries):
        dL_prev[i,j] = (1 - w_i - w_j) G[i,j]
        dw_k = sum_j G[k,j] (p_{t-1}[j] - L_{t-1}[k,j]) - sum_i G[i,k] L_{t-1}[i,k]
        dp_{t-1}[j] = sum_i G[i,j] w_i
    overwrite_dL=True lets the function zero dL's diagonal and scale it into dL_prev in place (for a
    caller that owns dL and no longer needs it, as the DNC's BPTT does; dL_prev is then dL's
    buffer); by default dL is left untouched.
    """
    L_prev, w_w, p_prev = cache
    G = _zero_diagonal(dL if overwrite_dL else np.array(dL, copy=True))     # (B, N, N)
    dw_w = ((G @ p_prev[..., :, None])[..., 0]                     # (B, N): sum_j G[k,j] p[j]
            - row_dot(G, L_prev)                                   # - sum_j G[k,j] L[k,j] (rows)
            - np.einsum("...ik,...ik->...k", G, L_prev))           # - sum_i G[i,k] L[i,k] (columns)
    dp_prev = (w_w[..., None, :] @ G)[..., 0, :]                   # (B, N): sum_i w_i G[i,j]
    dtype = np.result_type(G, w_w)
    if G.dtype == dtype:                                           # G is ours: scale it in place
        dL_prev = np.multiply(G, _link_factor(w_w.astype(dtype, copy=False)), out=G)
    else:
        dL_prev = _link_factor(w_w.astype(dtype, copy=False)) * G
    return dL_prev, dw_w, dp_prev                                  # dL_prev = (1 - w_i - w_j) G


def link_autodiff(L_prev, w_w, p_prev) -> ad.Tensor:
    """Autodiff twin of link_forward."""
    L_prev, w_w, p_prev = ad.as_tensor(L_prev), ad.as_tensor(w_w), ad.as_tensor(p_prev)
    N = w_w.shape[-1]
    w_i = ad.reshape(w_w, w_w.shape + (1,))                                  # (B, N, 1)
    w_j = ad.reshape(w_w, w_w.shape[:-1] + (1, N))                           # (B, 1, N)
    p_j = ad.reshape(p_prev, p_prev.shape[:-1] + (1, N))                     # (B, 1, N)
    L = (1.0 - w_i - w_j) * L_prev + w_i * p_j                               # (B, N, N)
    return ad.where(np.eye(N, dtype=bool), 0.0, L)


# ----------------------------------------------------------------- forward and backward weightings (B.3 step 13)
class DirectionalCache(NamedTuple):
    L: np.ndarray            # (B, N, N) the NEW link matrix L_t
    w_r_prev: np.ndarray     # (B, R, N) the OLD read weightings w^{r,i}_{t-1}


def _check_directional(L, w_r_prev) -> tuple[np.ndarray, np.ndarray]:
    L, w_r_prev = _real(L, "L"), _real(w_r_prev, "w_r_prev")
    if L.ndim != 3 or L.shape[1] != L.shape[2]:
        raise ValueError(f"L must have shape (B, N, N); got {L.shape}")
    if w_r_prev.ndim != 3 or w_r_prev.shape[0] != L.shape[0] or w_r_prev.shape[2] != L.shape[2]:
        raise ValueError(f"w_r_prev must have shape (B, R, N) with (B, N) = {(L.shape[0], L.shape[2])}; "
                         f"got {w_r_prev.shape}")
    return L, w_r_prev


def directional_forward(L: np.ndarray, w_r_prev: np.ndarray):
    """Forward and backward weightings f^i_t = L_t w^{r,i}_{t-1}, b^i_t = L_t^T w^{r,i}_{t-1}
    (Methods, "Temporal memory linkage").

    Args:
        L: (B, N, N) the link matrix of THIS step (after link_forward).
        w_r_prev: (B, R, N) the read weightings of the PREVIOUS step.
    Returns:
        (f, b): two (B, R, N) arrays, and the cache for directional_backward.
    """
    L, w_r_prev = _check_directional(L, w_r_prev)
    L_T = np.swapaxes(L, -1, -2)
    f = w_r_prev @ L_T                           # (B, R, N): f[r, i] = sum_j L[i, j] w[r, j]
    b = w_r_prev @ L                             # (B, R, N): b[r, j] = sum_i L[i, j] w[r, i]
    return (f, b), DirectionalCache(L, w_r_prev)


def directional_backward(dout: tuple[np.ndarray, np.ndarray],
                         cache: DirectionalCache) -> tuple[np.ndarray, np.ndarray]:
    """Adjoint of the forward/backward weightings (spec B.4). dout = (df, db), each (B, R, N).

    Returns (dL (B, N, N), dw_r_prev (B, R, N)):
        f = L w:    dL += df w^T,  dw += L^T df
        b = L^T w:  dL += w db^T,  dw += L db
    """
    df, db = dout
    L, w_r_prev = cache
    # dL = df^T w + w^T db as one product over the 2R stacked heads (one (B, N, N) array, not three)
    left = np.concatenate([df, w_r_prev], axis=1)                   # (B, 2R, N)
    right = np.concatenate([w_r_prev, db], axis=1)                  # (B, 2R, N)
    dL = np.swapaxes(left, -1, -2) @ right                          # (B, N, N), summed over heads
    dw_r_prev = df @ L + db @ np.swapaxes(L, -1, -2)                # (B, R, N)
    return dL, dw_r_prev


def directional_autodiff(L, w_r_prev) -> tuple[ad.Tensor, ad.Tensor]:
    """Autodiff twin of directional_forward; returns (f, b)."""
    f = ad.einsum("bij,brj->bri", L, w_r_prev)                    # (B, R, N)
    b = ad.einsum("bij,bri->brj", L, w_r_prev)                    # (B, R, N)
    return f, b


# ----------------------------------------------------------------- read weighting (B.3 step 15)
class ReadWeightingCache(NamedTuple):
    b: np.ndarray            # (B, R, N) backward weighting
    c: np.ndarray            # (B, R, N) read content weighting
    f: np.ndarray            # (B, R, N) forward weighting
    pi: np.ndarray           # (B, R, 3) read modes (backward, content, forward)


def read_weighting_forward(b: np.ndarray, c: np.ndarray, f: np.ndarray,
                           pi: np.ndarray) -> tuple[np.ndarray, ReadWeightingCache]:
    """Read weighting w^{r,i}_t = pi^i[1] b^i_t + pi^i[2] c^{r,i}_t + pi^i[3] f^i_t
    (Methods, "Read weighting"); modes in the paper's order (backward, content, forward).

    Args:
        b: (B, R, N) backward weightings from directional_forward.
        c: (B, R, N) read content weightings C(M_t, k^{r,i}_t, beta^{r,i}_t) on the NEW memory.
        f: (B, R, N) forward weightings from directional_forward.
        pi: (B, R, 3) read modes after their softmax: pi[..., 0] backward, 1 content, 2 forward.
    Returns:
        w_r: (B, R, N), and the cache for read_weighting_backward.
    """
    b = _real(b, "b")
    if b.ndim != 3:
        raise ValueError(f"b must have shape (B, R, N); got {b.shape}")
    c = _same_shape(c, b, "c", "(B, R, N) like b")
    f = _same_shape(f, b, "f", "(B, R, N) like b")
    pi = _real(pi, "pi")
    if pi.shape != b.shape[:2] + (3,):
        raise ValueError(f"pi must have shape (B, R, 3) = {b.shape[:2] + (3,)} "
                         f"(modes backward, content, forward); got {pi.shape}")
    w_r = (pi[..., MODE_BACKWARD, None] * b + pi[..., MODE_CONTENT, None] * c
           + pi[..., MODE_FORWARD, None] * f)                     # (B, R, N)
    return w_r, ReadWeightingCache(b, c, f, pi)


def read_weighting_backward(dw_r: np.ndarray, cache: ReadWeightingCache):
    """Adjoint of the read-mode mix (spec B.4). Returns (db, dc, df (B, R, N), dpi (B, R, 3))."""
    b, c, f, pi = cache
    db = pi[..., MODE_BACKWARD, None] * dw_r
    dc = pi[..., MODE_CONTENT, None] * dw_r
    df = pi[..., MODE_FORWARD, None] * dw_r
    dpi = np.stack([row_dot(b, dw_r), row_dot(c, dw_r), row_dot(f, dw_r)], axis=-1)  # (B, R, 3), mode order
    return db, dc, df, dpi


def read_weighting_autodiff(b, c, f, pi) -> ad.Tensor:
    """Autodiff twin of read_weighting_forward."""
    pi = ad.as_tensor(pi)
    return pi[..., 0:1] * b + pi[..., 1:2] * c + pi[..., 2:3] * f   # modes: backward, content, forward


# ----------------------------------------------------------------- the single-output pairs as autodiff nodes
precedence_op = ad.custom_op(precedence_forward, precedence_backward, name="dnc.precedence")
link_op = ad.custom_op(link_forward, link_backward, name="dnc.link")
read_weighting_op = ad.custom_op(read_weighting_forward, read_weighting_backward, name="dnc.read_weighting")
