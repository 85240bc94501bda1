"""Addressing primitives shared by the NTM, the DNC and SAM (Graves et al., 2014, arXiv:1410.5401;
Graves et al., 2016, Nature 538:471; Rae et al., 2016, arXiv:1610.09027): content addressing by
guarded cosine similarity, and the NTM's location addressing (interpolate, shift, sharpen).

Shapes: B batch, N slots, W word size, R heads, S allowed shifts (odd, S = 2q + 1), K candidate rows.
Equations (NTM paper numbering; spec: specs/ntm_dnc_sam.md, section 0 and Part A):
    (6)  D(k, m) = k.m / (nrm(k) nrm(m) + eps_d),   nrm(u) = sqrt(u.u + eps_n)   guarded cosine
    (5)  w_c = softmax_i(beta * D(k, M_i))                                        content weighting
    (7)  w_g = g * w_c + (1 - g) * w_prev                                         interpolation
    (8)  w_s(i) = sum_j w_g(j) s(i - j), indices mod N                            circular shift
    (9)  w(i) = w_s(i)^gamma / sum_j w_s(j)^gamma, computed as
         softmax_i(gamma * log(w_s(i) + eps_s))                                   sharpening

Every primitive is a pair `<thing>_forward(...) -> (out, cache)` / `<thing>_backward(dout, cache)`
returning one gradient per forward input, in order; `<thing>_autodiff(...)` is the same forward
written with minimem.autodiff ops, and `<thing>_op` wraps the manual pair as one autodiff node.
Nothing loops over B, R or N. The weighted read and the erase/add write live in
minimem.memory.read_write.

Conventions fixed by the spec (do not flip them silently):
- Guards: eps_n = eps_d = 1e-6 (deepmind/dnc's, used by every minimem model), so a zero key or an
  all-zero memory row gives D = 0 with finite gradients (nrm is smooth because eps_n is under the root).
- Key strengths arrive positive: the NTM makes beta with softplus, the DNC and SAM with oneplus;
  the primitives take beta as given.
- Shifts are ordered s = (s(-q), ..., s(0), ..., s(+q)) along the last axis, and a shift of +1 moves
  mass from slot j to slot j + 1: with s = one_hot(+1), w_s = np.roll(w_g, +1, axis=-1).
  (pytorch-ntm's kernel is reversed; flip s to compare with it.)
- Sharpening is done in the log domain with eps_s = 1e-12, a documented deviation from eq. (9) of
  order 1e-10 that avoids underflow of w^gamma and the NaN of 0 * log 0 in d/dgamma.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np

from minimem import autodiff as ad

EPS_NORM = 1e-6       # eps_n, inside the square root of every norm (spec section 0)
EPS_DEN = 1e-6        # eps_d, added to the product of the two norms (spec section 0)
EPS_SHARPEN = 1e-12   # eps_s, inside the log of the sharpening step (spec A.3 step 6)


# ----------------------------------------------------------------- input validation
def _expect_shape(name: str, array, expected: tuple, legend: str) -> None:
    if tuple(array.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {legend} = {tuple(expected)}; got {tuple(array.shape)}")


def _expect_ndim(name: str, array, ndim: int, legend: str) -> None:
    if array.ndim != ndim:
        raise ValueError(f"{name} must have shape {legend}; got {tuple(array.shape)}")


def _validate_rows_and_keys(M, k) -> str:
    """Check memory rows against keys; return the einsum subscript of the rows ('bnw' or 'brnw')."""
    _expect_ndim("k", k, 3, "(B, R, W)")
    if M.ndim in (3, 4) and k.shape[-1] != M.shape[-1]:
        raise ValueError(f"k must have shape (B, R, W) with M's word size W = {M.shape[-1]}; got {tuple(k.shape)}")
    if M.ndim == 3:
        _expect_shape("M", M, (k.shape[0], M.shape[1], k.shape[2]), "(B, N, W)")
        return "bnw"
    if M.ndim == 4:
        _expect_shape("M", M, (k.shape[0], k.shape[1], M.shape[2], k.shape[2]), "(B, R, K, W)")
        return "brnw"
    raise ValueError(f"M must have shape (B, N, W), or (B, R, K, W) for per-head rows; got {tuple(M.shape)}")


def _validate_weighting(name: str, w) -> None:
    _expect_ndim(name, w, 3, "(B, R, N)")


if hasattr(np, "vecdot"):                    # NumPy >= 2.0: one ufunc, no (..., n) product array
    def row_dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """sum_i x[..., i] y[..., i] over the last axis (x and y broadcast), = (x * y).sum(-1)."""
        return np.vecdot(x, y)
else:                                        # pragma: no cover (older NumPy)
    def row_dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """sum_i x[..., i] y[..., i] over the last axis (x and y broadcast), = (x * y).sum(-1)."""
        return np.einsum("...i,...i->...", x, y)


def _norm(u: np.ndarray) -> np.ndarray:
    """nrm(u) = sqrt(u.u + eps_n) over the last axis (spec section 0); the squares are summed by
    row_dot (one call, no u * u array)."""
    return np.sqrt(row_dot(u, u) + EPS_NORM)


def outer_product(x: np.ndarray, y: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """x[..., :, None] * y[..., None, :] for x (..., n), y (..., m): (..., n, m) outer products.

    Computed as one batched matrix product with an inner dimension of 2, [x, 0] @ [y; 0]: each entry
    is x_i y_j + 0 * 0, the same rounded product as the broadcast multiply (bit-identical), but BLAS
    writes the (n, m) blocks faster than NumPy's broadcasting loop (an inner dimension of 1 would
    not go to BLAS). `out`, if given, must have the result's shape and dtype.
    """
    dtype = np.result_type(x, y)
    left = np.zeros(x.shape + (2,), dtype)                             # (..., n, 2) = [x, 0]
    left[..., 0] = x
    right = np.zeros(y.shape[:-1] + (2, y.shape[-1]), dtype)           # (..., 2, m) = [y; 0]
    right[..., 0, :] = y
    return np.matmul(left, right, out=out)


def _softmax(z: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, shifted by the max so a large beta or gamma cannot overflow."""
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    z /= z.sum(axis=-1, keepdims=True)
    return z


def _softmax_backward(dw: np.ndarray, w: np.ndarray) -> np.ndarray:
    """VJP of w = softmax(z): dz = w * (dw - sum_j w_j dw_j)."""
    return w * (dw - (w * dw).sum(axis=-1, keepdims=True))


# ----------------------------------------------------------------- cosine similarity, eq. (6)
class CosineCache(NamedTuple):
    M: np.ndarray        # (B, N, W) memory, or (B, R, K, W) per-head rows
    k: np.ndarray        # (B, R, W) keys
    dot: np.ndarray      # (B, R, N) k . M_i
    n_k: np.ndarray      # (B, R, 1) nrm(k)
    n_rows: np.ndarray   # (B, N) or (B, R, K) nrm(M_i), shaped like M without its last axis
    den: np.ndarray      # (B, R, N) nrm(k) nrm(M_i) + eps_d
    rows: str            # einsum subscript of M: 'bnw' (shared memory) or 'brnw' (per-head rows)


def _rows_per_head(n_rows: np.ndarray, rows: str) -> np.ndarray:
    """Row norms shaped to broadcast against (B, R, N): shared rows get a head axis of size 1."""
    return n_rows[:, None, :] if rows == "bnw" else n_rows             # (B, 1, N) or (B, R, N)


def cosine_similarity_forward(M: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, CosineCache]:
    """Guarded cosine similarity of every key with every memory row, eq. (6) and spec section 0:

        nrm(u) = sqrt(sum_w u_w^2 + eps_n),   D[b, r, i] = k_r . M_i / (nrm(k_r) nrm(M_i) + eps_d)

    Args:
        M: (B, N, W) memory shared by the heads, or (B, R, K, W) per-head candidate rows (SAM's
            sparse reads score each head's own K rows).
        k: (B, R, W) one key per head.
    Returns:
        D: (B, R, N) (or (B, R, K)) similarities in (-1, 1), and the cache.
    """
    M, k = np.asarray(M), np.asarray(k)
    rows = _validate_rows_and_keys(M, k)
    if rows == "bnw":
        dot = k @ np.swapaxes(M, -1, -2)                               # (B, R, N), batched matmul
    else:
        dot = (M @ k[..., :, None])[..., 0]                            # (B, R, K)
    n_k = _norm(k)[..., None]                                          # (B, R, 1)
    n_rows = _norm(M)                                                  # (B, N) or (B, R, K)
    den = n_k * _rows_per_head(n_rows, rows)
    den += EPS_DEN                                                     # (B, R, N)
    return dot / den, CosineCache(M, k, dot, n_k, n_rows, den, rows)


def cosine_similarity_backward(dD: np.ndarray, cache: CosineCache) -> tuple[np.ndarray, np.ndarray]:
    """Adjoint of eq. (6) (spec section 0). Returns (dM, dk) shaped like M and k:

        dk   = sum_i dD_i ( M_i / den_i - dot_i n_i k / (n_k den_i^2) )
        dM_i = sum_r dD_i ( k / den_i - dot_i n_k M_i / (n_i den_i^2) )
    """
    M, k, dot, n_k, n_rows, den, rows = cache
    _expect_shape("dD", dD, dot.shape, "(B, R, N)")
    n_m = _rows_per_head(n_rows, rows)                                 # (B, 1, N) or (B, R, N)
    along = dD / den                                                   # (B, R, N) through the dot product
    through_norms = along * dot
    through_norms /= den                                               # (B, R, N) dD dot / den^2
    if rows == "bnw":
        dk = along @ M                                                 # (B, R, W)
        if k.shape[1] == 1:                                            # one head: an outer product
            dM = outer_product(along[:, 0], k[:, 0])                   # (B, N, W)
        else:
            dM = np.swapaxes(along, -1, -2) @ k                        # (B, N, W), summed over heads
        row_scale = (through_norms * n_k).sum(axis=1)                  # (B, N): sum over heads
    else:
        dk = (along[..., None, :] @ M)[..., 0, :]                      # (B, R, W)
        dM = along[..., :, None] * k[..., None, :]                     # (B, R, K, W)
        row_scale = through_norms * n_k                                # (B, R, K)
    dk -= ((through_norms * n_m).sum(axis=-1, keepdims=True) / n_k) * k
    dM -= (row_scale / n_rows)[..., None] * M                          # like M
    return dM, dk


def cosine_similarity_autodiff(M, k) -> ad.Tensor:
    """Autodiff twin of cosine_similarity_forward, eq. (6)."""
    M, k = ad.as_tensor(M), ad.as_tensor(k)
    rows = _validate_rows_and_keys(M, k)
    dot = ad.einsum(f"brw,{rows}->brn", k, M)                          # (B, R, N)
    n_k = ad.sqrt((k * k).sum(axis=-1, keepdims=True) + EPS_NORM)      # (B, R, 1)
    n_m = ad.sqrt((M * M).sum(axis=-1) + EPS_NORM)                     # (B, N) or (B, R, N)
    if rows == "bnw":
        n_m = n_m.reshape((M.shape[0], 1, M.shape[1]))                 # (B, 1, N)
    return dot / (n_k * n_m + EPS_DEN)                                 # (B, R, N)


# ----------------------------------------------------------------- content weighting, eq. (5)
class ContentCache(NamedTuple):
    cosine: CosineCache  # cache of D = cosine_similarity(M, k)
    D: np.ndarray        # (B, R, N) similarities
    beta: np.ndarray     # (B, R, 1) key strengths
    w_c: np.ndarray      # (B, R, N) content weighting


def _validate_beta(beta, k) -> None:
    _expect_shape("beta", beta, (k.shape[0], k.shape[1], 1), "(B, R, 1)")


def content_forward(M: np.ndarray, k: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, ContentCache]:
    """Content weighting, eqs. (5)-(6): w_c[b, r, i] = softmax_i(beta[b, r] * D(k[b, r], M[b, i])).

    Args:
        M: (B, N, W) memory (or (B, R, K, W) per-head rows, then the softmax runs over each head's K).
        k: (B, R, W) keys.
        beta: (B, R, 1) key strengths, already positive (softplus for the NTM, oneplus for DNC/SAM).
    Returns:
        w_c: (B, R, N) on the simplex, and the cache for content_backward.
    """
    M, k, beta = np.asarray(M), np.asarray(k), np.asarray(beta)
    _validate_rows_and_keys(M, k)
    _validate_beta(beta, k)
    D, cosine = cosine_similarity_forward(M, k)                        # (B, R, N)
    w_c = _softmax(beta * D)                                           # (B, R, N)
    return w_c, ContentCache(cosine, D, beta, w_c)


def content_backward(dw_c: np.ndarray, cache: ContentCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Adjoint of eqs. (5)-(6). Returns (dM, dk, dbeta), shaped like the forward's inputs."""
    cosine, D, beta, w_c = cache
    _expect_shape("dw_c", dw_c, w_c.shape, "(B, R, N)")
    dz = _softmax_backward(dw_c, w_c)                                  # (B, R, N)
    dbeta = (dz * D).sum(axis=-1, keepdims=True)                       # (B, R, 1)
    dM, dk = cosine_similarity_backward(beta * dz, cosine)
    return dM, dk, dbeta


def content_autodiff(M, k, beta) -> ad.Tensor:
    """Autodiff twin of content_forward, eqs. (5)-(6)."""
    M, k, beta = ad.as_tensor(M), ad.as_tensor(k), ad.as_tensor(beta)
    _validate_rows_and_keys(M, k)
    _validate_beta(beta, k)
    return ad.softmax(beta * cosine_similarity_autodiff(M, k), axis=-1)  # (B, R, N)


# ----------------------------------------------------------------- interpolation, eq. (7)
class InterpolateCache(NamedTuple):
    w_c: np.ndarray      # (B, R, N) content weighting
    w_prev: np.ndarray   # (B, R, N) previous weighting
    g: np.ndarray        # (B, R, 1) interpolation gate


def _validate_interpolate(w_c, w_prev, g) -> None:
    _validate_weighting("w_c", w_c)
    _expect_shape("w_prev", w_prev, w_c.shape, "(B, R, N)")
    _expect_shape("g", g, w_c.shape[:2] + (1,), "(B, R, 1)")


def interpolate_forward(w_c: np.ndarray, w_prev: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, InterpolateCache]:
    """Interpolation gate, eq. (7): w_g = g * w_c + (1 - g) * w_prev.

    Args:
        w_c: (B, R, N) content weighting w^c_t from eq. (5).
        w_prev: (B, R, N) the head's weighting at the previous step, w_{t-1}.
        g: (B, R, 1) gate g_t in (0, 1).
    Returns:
        w_g: (B, R, N), and the cache for interpolate_backward.
    """
    w_c, w_prev, g = np.asarray(w_c), np.asarray(w_prev), np.asarray(g)
    _validate_interpolate(w_c, w_prev, g)
    w_g = g * w_c + (1.0 - g) * w_prev                                 # (B, R, N)
    return w_g, InterpolateCache(w_c, w_prev, g)


def interpolate_backward(dw_g: np.ndarray, cache: InterpolateCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Adjoint of eq. (7). Returns (dw_c, dw_prev, dg), shaped like the forward's inputs.

    dw_prev is the recurrence of a head's weighting through time: BPTT carries it to step t-1.
    """
    w_c, w_prev, g = cache
    _expect_shape("dw_g", dw_g, w_c.shape, "(B, R, N)")
    dw_c = g * dw_g                                                    # (B, R, N)
    dw_prev = (1.0 - g) * dw_g                                         # (B, R, N)
    dg = np.sum(dw_g * (w_c - w_prev), axis=-1, keepdims=True)         # (B, R, 1)
    return dw_c, dw_prev, dg


def interpolate_autodiff(w_c, w_prev, g) -> ad.Tensor:
    """Autodiff twin of interpolate_forward, eq. (7)."""
    w_c, w_prev, g = ad.as_tensor(w_c), ad.as_tensor(w_prev), ad.as_tensor(g)
    _validate_interpolate(w_c, w_prev, g)
    return g * w_c + (1.0 - g) * w_prev                                # (B, R, N)


# ----------------------------------------------------------------- circular shift, eq. (8)
def shift_offsets(S: int) -> np.ndarray:
    """The shifts that s[..., j] weights: (-q, ..., 0, ..., +q) for S = 2q + 1."""
    if S < 1 or S % 2 == 0:
        raise ValueError(f"the number of shifts S must be odd and positive (S = 2q + 1); got {S}")
    return np.arange(S) - S // 2


@lru_cache(maxsize=64)
def _shift_index(S: int, N: int, sign: int) -> np.ndarray:
    """index[j, i] = (i + sign * o_j) mod N for the offsets o_j of shift_offsets(S); read-only (S, N)."""
    index = (np.arange(N)[None, :] + sign * shift_offsets(S)[:, None]) % N   # (S, N) int
    index.setflags(write=False)
    return index


class ShiftCache(NamedTuple):
    w_g: np.ndarray      # (B, R, N) weighting to shift
    s: np.ndarray        # (B, R, S) shift weighting over offsets (-q..q)


def _validate_shift(w_g, s) -> None:
    _validate_weighting("w_g", w_g)
    _expect_ndim("s", s, 3, "(B, R, S)")
    _expect_shape("s", s, w_g.shape[:2] + (s.shape[-1],), "(B, R, S)")
    shift_offsets(s.shape[-1])                                         # S must be odd


def shift_forward(w_g: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, ShiftCache]:
    """Circular convolution, eq. (8): w_s(i) = sum_o s(o) w_g(i - o), indices mod N.

    A shift of +1 moves mass from slot j to slot j + 1 (s = one_hot(+1) gives roll(w_g, +1)).
    For S = 3: w_s = s(-1) roll(w_g, -1) + s(0) w_g + s(+1) roll(w_g, +1). When S > N several
    offsets land on the same slot and their weights add, exactly as eq. (8) mod N says.

    Args:
        w_g: (B, R, N) interpolated weighting from eq. (7).
        s: (B, R, S) shift weighting, S odd, ordered over offsets (-q, ..., +q).
    Returns:
        w_s: (B, R, N), and the cache for shift_backward.
    """
    w_g, s = np.asarray(w_g), np.asarray(s)
    _validate_shift(w_g, s)
    shifted = w_g[..., _shift_index(s.shape[-1], w_g.shape[-1], -1)]  # (B, R, S, N): w_g(i - o_j)
    w_s = np.einsum("brs,brsn->brn", s, shifted)                       # (B, R, N)
    return w_s, ShiftCache(w_g, s)


def shift_backward(dw_s: np.ndarray, cache: ShiftCache) -> tuple[np.ndarray, np.ndarray]:
    """Adjoint of eq. (8). Returns (dw_g, ds):

        dw_g(m) = sum_o s(o) dw_s(m + o),   ds(o) = sum_i dw_s(i) w_g(i - o)   (indices mod N)
    """
    w_g, s = cache
    _expect_shape("dw_s", dw_s, w_g.shape, "(B, R, N)")
    S, N = s.shape[-1], w_g.shape[-1]
    shifted = w_g[..., _shift_index(S, N, -1)]                         # (B, R, S, N): w_g(i - o_j)
    ds = np.einsum("brn,brsn->brs", dw_s, shifted)                     # (B, R, S)
    dw_g = np.einsum("brs,brsn->brn", s, dw_s[..., _shift_index(S, N, +1)])  # (B, R, N)
    return dw_g, ds


def shift_autodiff(w_g, s) -> ad.Tensor:
    """Autodiff twin of shift_forward, eq. (8)."""
    w_g, s = ad.as_tensor(w_g), ad.as_tensor(s)
    _validate_shift(w_g, s)
    index = _shift_index(s.shape[-1], w_g.shape[-1], -1)
    shifted = w_g[:, :, index]                                         # (B, R, S, N)
    return ad.einsum("brs,brsn->brn", s, shifted)                      # (B, R, N)


# ----------------------------------------------------------------- sharpening, eq. (9)
class SharpenCache(NamedTuple):
    w_s: np.ndarray      # (B, R, N) shifted weighting
    gamma: np.ndarray    # (B, R, 1) sharpening exponent
    log_w_s: np.ndarray  # (B, R, N) log(w_s + eps_s)
    w: np.ndarray        # (B, R, N) sharpened weighting


def _validate_sharpen(w_s, gamma) -> None:
    _validate_weighting("w_s", w_s)
    _expect_shape("gamma", gamma, w_s.shape[:2] + (1,), "(B, R, 1)")


def sharpen_forward(w_s: np.ndarray, gamma: np.ndarray) -> tuple[np.ndarray, SharpenCache]:
    """Sharpening, eq. (9), in the log domain (spec A.3 step 6, minimem choice A.10.5):

        w(i) = softmax_i(gamma * log(w_s(i) + eps_s))  ~=  w_s(i)^gamma / sum_j w_s(j)^gamma

    The log domain cannot underflow (gamma ~ 21 and weights ~ 1e-18 are fine) and a zero weight
    gives a finite d/dgamma instead of 0 * log 0 = NaN.

    Args:
        w_s: (B, R, N) nonnegative shifted weighting from eq. (8).
        gamma: (B, R, 1) exponent (>= 1 when made by 1 + softplus).
    Returns:
        w: (B, R, N) on the simplex, and the cache for sharpen_backward.
    """
    w_s, gamma = np.asarray(w_s), np.asarray(gamma)
    _validate_sharpen(w_s, gamma)
    log_w_s = np.log(w_s + EPS_SHARPEN)                                # (B, R, N)
    w = _softmax(gamma * log_w_s)                                      # (B, R, N)
    return w, SharpenCache(w_s, gamma, log_w_s, w)


def sharpen_backward(dw: np.ndarray, cache: SharpenCache) -> tuple[np.ndarray, np.ndarray]:
    """Adjoint of eq. (9) in the log domain (spec A.4). Returns (dw_s, dgamma):

        dz = w (dw - sum w dw),   dgamma = sum_i dz_i log(w_s(i) + eps_s),   dw_s = gamma dz / (w_s + eps_s)
    """
    w_s, gamma, log_w_s, w = cache
    _expect_shape("dw", dw, w.shape, "(B, R, N)")
    dz = _softmax_backward(dw, w)                                      # (B, R, N)
    dgamma = np.sum(dz * log_w_s, axis=-1, keepdims=True)              # (B, R, 1)
    dw_s = gamma * dz / (w_s + EPS_SHARPEN)                            # (B, R, N)
    return dw_s, dgamma


def sharpen_autodiff(w_s, gamma) -> ad.Tensor:
    """Autodiff twin of sharpen_forward, eq. (9) in the log domain."""
    w_s, gamma = ad.as_tensor(w_s), ad.as_tensor(gamma)
    _validate_sharpen(w_s, gamma)
    return ad.softmax(gamma * ad.log(w_s + EPS_SHARPEN), axis=-1)      # (B, R, N)


# ----------------------------------------------------------------- composite NTM addressing
class AddressCache(NamedTuple):
    content: ContentCache
    interpolate: InterpolateCache
    shift: ShiftCache
    sharpen: SharpenCache


def _validate_address(M, k, beta, g, s, gamma, w_prev) -> None:
    """Check every input before any work, so a bad shape is named as the caller passed it."""
    _validate_rows_and_keys(M, k)
    _validate_beta(beta, k)
    _validate_weighting("w_prev", w_prev)
    N = M.shape[-2]
    _expect_shape("w_prev", w_prev, k.shape[:2] + (N,), "(B, R, N)")
    _expect_shape("g", g, k.shape[:2] + (1,), "(B, R, 1)")
    _validate_shift(w_prev, s)
    _expect_shape("gamma", gamma, k.shape[:2] + (1,), "(B, R, 1)")


def address_forward(M: np.ndarray, k: np.ndarray, beta: np.ndarray, g: np.ndarray, s: np.ndarray,
                    gamma: np.ndarray, w_prev: np.ndarray) -> tuple[np.ndarray, AddressCache]:
    """NTM addressing: content, then location, eqs. (5)-(9).

    Args:
        M: (B, N, W) memory M_{t-1}.
        k: (B, R, W) keys; beta: (B, R, 1) positive strengths.
        g: (B, R, 1) interpolation gates in (0, 1).
        s: (B, R, S) shift weightings over offsets (-q, ..., +q), S odd.
        gamma: (B, R, 1) sharpening exponents (>= 1).
        w_prev: (B, R, N) each head's weighting at the previous step.
    Returns:
        w: (B, R, N) on the simplex, and the cache for address_backward.
    """
    M, k, beta, g, s, gamma, w_prev = (np.asarray(x) for x in (M, k, beta, g, s, gamma, w_prev))
    _validate_address(M, k, beta, g, s, gamma, w_prev)
    w_c, c1 = content_forward(M, k, beta)           # 1. eqs. (5)-(6)  (B, R, N)
    w_g, c2 = interpolate_forward(w_c, w_prev, g)   # 2. eq. (7)
    w_s, c3 = shift_forward(w_g, s)                 # 3. eq. (8)
    w, c4 = sharpen_forward(w_s, gamma)             # 4. eq. (9)
    return w, AddressCache(c1, c2, c3, c4)


def address_backward(dw: np.ndarray, cache: AddressCache) -> tuple[np.ndarray, ...]:
    """Adjoint of address_forward. Returns (dM, dk, dbeta, dg, ds, dgamma, dw_prev)."""
    c1, c2, c3, c4 = cache
    dw_s, dgamma = sharpen_backward(dw, c4)              # 4.
    dw_g, ds = shift_backward(dw_s, c3)                  # 3.
    dw_c, dw_prev, dg = interpolate_backward(dw_g, c2)   # 2.
    dM, dk, dbeta = content_backward(dw_c, c1)           # 1.
    return dM, dk, dbeta, dg, ds, dgamma, dw_prev


def address_autodiff(M, k, beta, g, s, gamma, w_prev) -> ad.Tensor:
    """Autodiff twin of address_forward, eqs. (5)-(9)."""
    M, k, beta, g, s, gamma, w_prev = (ad.as_tensor(x) for x in (M, k, beta, g, s, gamma, w_prev))
    _validate_address(M, k, beta, g, s, gamma, w_prev)
    w_c = content_autodiff(M, k, beta)              # 1. eqs. (5)-(6)
    w_g = interpolate_autodiff(w_c, w_prev, g)      # 2. eq. (7)
    w_s = shift_autodiff(w_g, s)                    # 3. eq. (8)
    return sharpen_autodiff(w_s, gamma)             # 4. eq. (9)


# ----------------------------------------------------------------- the manual pairs as autodiff ops
cosine_similarity_op = ad.custom_op(cosine_similarity_forward, cosine_similarity_backward,
                                    name="addressing.cosine_similarity")
content_op = ad.custom_op(content_forward, content_backward, name="addressing.content")
interpolate_op = ad.custom_op(interpolate_forward, interpolate_backward, name="addressing.interpolate")
shift_op = ad.custom_op(shift_forward, shift_backward, name="addressing.shift")
sharpen_op = ad.custom_op(sharpen_forward, sharpen_backward, name="addressing.sharpen")
address_op = ad.custom_op(address_forward, address_backward, name="addressing.address")
