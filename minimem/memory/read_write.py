"""Weighted read and erase/add write, shared by the NTM and the DNC (Graves et al., 2014,
arXiv:1410.5401, section 3.1-3.2; Graves et al., 2016, Methods "Reading and writing").

Shapes: B batch, N slots, W word size, R read heads, H write heads.
Equations (NTM paper numbering; spec: specs/ntm_dnc_sam.md, A.3 steps 7-8 and A.4):
    (2)  r_r = sum_i w_r(i) M(i)                                   read, one vector per head
    (3)  Mtilde(i) = M(i) * prod_h (1 - w_h(i) e_h)                erase
    (4)  M'(i) = Mtilde(i) + sum_h w_h(i) a_h                      add
The DNC's write, M_t = M_{t-1} * (E - w e^T) + w nu^T, is the H = 1 case.

With several write heads the spec fixes the combination: multiply all the erase factors, then add
all the add terms. The result does not depend on the order of the heads; it is NOT the same as
applying the heads one after another (then a later erase would also erase an earlier add).

Pairs follow the addressing module: `<thing>_forward -> (out, cache)`, `<thing>_backward(dout,
cache)` returns one gradient per forward input, `<thing>_autodiff` is the autodiff twin and
`<thing>_op` the manual pair as one autodiff node. Nothing loops over B, heads or N; the
sums over slots and words are batched matrix products (np.matmul), not einsum.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem.memory.addressing import _expect_ndim, _expect_shape, outer_product


# ----------------------------------------------------------------- read, eq. (2)
class ReadCache(NamedTuple):
    M: np.ndarray        # (B, N, W) memory that was read
    w: np.ndarray        # (B, R, N) read weightings


def _validate_read(M, w) -> None:
    _expect_ndim("M", M, 3, "(B, N, W)")
    _expect_ndim("w", w, 3, "(B, R, N)")
    _expect_shape("w", w, (M.shape[0], w.shape[1], M.shape[1]), "(B, R, N)")


def read_forward(M: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ReadCache]:
    """Weighted read, eq. (2): r[b, r] = sum_i w[b, r, i] M[b, i] (= w^T M per head).

    Args:
        M: (B, N, W) memory.
        w: (B, R, N) read weightings, one per head.
    Returns:
        r: (B, R, W) read vectors, and the cache for read_backward.
    """
    M, w = np.asarray(M), np.asarray(w)
    _validate_read(M, w)
    r = w @ M                                                           # (B, R, W), batched matmul
    return r, ReadCache(M, w)


def read_backward(dr: np.ndarray, cache: ReadCache) -> tuple[np.ndarray, np.ndarray]:
    """Adjoint of eq. (2) (spec A.4). Returns (dM, dw): dM_i = sum_r w_r(i) dr_r, dw_r(i) = M_i . dr_r."""
    M, w = cache
    _expect_shape("dr", dr, (M.shape[0], w.shape[1], M.shape[2]), "(B, R, W)")
    dM = np.swapaxes(w, -1, -2) @ dr                                    # (B, N, W)
    dw = dr @ np.swapaxes(M, -1, -2)                                    # (B, R, N)
    return dM, dw


def read_autodiff(M, w) -> ad.Tensor:
    """Autodiff twin of read_forward, eq. (2)."""
    M, w = ad.as_tensor(M), ad.as_tensor(w)
    _validate_read(M, w)
    return ad.einsum("brn,bnw->brw", w, M)                              # (B, R, W)


# ----------------------------------------------------------------- erase and add write, eqs. (3)-(4)
class WriteCache(NamedTuple):
    M: np.ndarray        # (B, N, W) memory before the write, M_{t-1}
    w: np.ndarray        # (B, H, N) write weightings
    e: np.ndarray        # (B, H, W) erase vectors
    a: np.ndarray        # (B, H, W) add vectors
    keep: np.ndarray     # (B, N, W) prod_h (1 - w_h e_h^T), what the erase leaves of M; None for
                         # one head of M's dtype: the backward recomputes it (one multiply, cheaper
                         # than holding a fresh (B, N, W) array per step for all of BPTT)


def _validate_write(M, w, e, a) -> None:
    _expect_ndim("M", M, 3, "(B, N, W)")
    _expect_ndim("w", w, 3, "(B, H, N)")
    B, N, W = M.shape
    H = w.shape[1]
    _expect_shape("w", w, (B, H, N), "(B, H, N)")
    _expect_shape("e", e, (B, H, W), "(B, H, W)")
    _expect_shape("a", a, (B, H, W), "(B, H, W)")


def _exclusive_products(x: np.ndarray, axis: int) -> np.ndarray:
    """out[h] = prod_{j != h} x[j] along `axis`, from prefix and suffix products.

    Dividing prod_j x[j] by x[h] would fail where a factor is exactly 0 (e = 1 at a one-hot
    weighting), so the product of the others is built without any division (spec B.4, retention).
    """
    x = np.moveaxis(x, axis, 0)                                         # (H, ...)
    ones = np.ones_like(x[:1])
    before = np.concatenate([ones, np.cumprod(x[:-1], axis=0)], axis=0)             # prod_{j < h}
    after = np.concatenate([np.cumprod(x[:0:-1], axis=0)[::-1], ones], axis=0)      # prod_{j > h}
    return np.moveaxis(before * after, 0, axis)


def write_forward(M: np.ndarray, w: np.ndarray, e: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, WriteCache]:
    """Erase then add, eqs. (3)-(4), for H write heads at once:

        M'(i) = M(i) * prod_h (1 - w_h(i) e_h) + sum_h w_h(i) a_h

    Args:
        M: (B, N, W) memory M_{t-1} (not modified).
        w: (B, H, N) write weightings.
        e: (B, H, W) erase vectors, entries in [0, 1].
        a: (B, H, W) add vectors.
    Returns:
        M_new: (B, N, W) memory M_t, and the cache for write_backward.
    """
    M, w, e, a = (np.asarray(x) for x in (M, w, e, a))
    _validate_write(M, w, e, a)
    if w.shape[1] == 1 and np.result_type(w, e) == np.result_type(M, w, e, a):
        # One write head (the DNC): no product over heads and, as keep is not cached, one (B, N, W)
        # buffer turned in place into 1 - w e^T, then M * (1 - w e^T), then + w a^T (the same
        # roundings as the general branch, without its temporaries); the outer products w e^T and
        # w a^T are BLAS products (bit-identical to broadcasting, see outer_product).
        M_new = outer_product(w[:, 0], e[:, 0])                         # (B, N, W) w e^T
        np.subtract(1.0, M_new, out=M_new)                              # keep
        M_new *= M
        M_new += outer_product(w[:, 0], a[:, 0])                        # + outer product w a^T
        return M_new, WriteCache(M, w, e, a, None)
    keep = np.prod(1.0 - w[..., :, None] * e[..., None, :], axis=1)    # (B, N, W) product over heads
    M_new = M * keep + np.swapaxes(w, -1, -2) @ a                       # (B, N, W) sum over heads
    return M_new, WriteCache(M, w, e, a, keep)


def write_backward(dM_new: np.ndarray, cache: WriteCache) -> tuple[np.ndarray, ...]:
    """Adjoint of eqs. (3)-(4) (spec A.4, with the product over heads). Returns (dM, dw, de, da):

        dM(i)      = dM'(i) * prod_h (1 - w_h(i) e_h)
        dw_h(i)    = sum_k dM'(i,k) (a_h(k) - M(i,k) e_h(k) prod_{j != h} (1 - w_j(i) e_j(k)))
        de_h(k)    = -sum_i dM'(i,k) w_h(i) M(i,k) prod_{j != h} (1 - w_j(i) e_j(k))
        da_h(k)    = sum_i dM'(i,k) w_h(i)
    """
    M, w, e, a, keep = cache
    _expect_shape("dM_new", dM_new, M.shape, "(B, N, W)")
    if keep is None:                                                    # one head: recompute it
        dM = outer_product(w[:, 0], e[:, 0])                            # (B, N, W) w e^T
        np.subtract(1.0, dM, out=dM)                                    # keep, in the buffer of dM
        dM *= dM_new                                                    # dM'(i) * keep(i)
    else:
        dM = dM_new * keep                                              # (B, N, W)
    dM_M = dM_new * M                                                   # (B, N, W)
    if w.shape[1] == 1:                                                 # one head: no other factors
        derase = dM_M[:, None]                                          # (B, 1, N, W)
    else:
        others = _exclusive_products(1.0 - w[..., :, None] * e[..., None, :], axis=1)  # (B, H, N, W)
        derase = dM_M[:, None] * others                                 # (B, H, N, W) d/d(1 - w_h e_h)
    dw = (a @ np.swapaxes(dM_new, -1, -2)                               # (B, H, N): sum_k dM'(i,k) a_h(k)
          - (derase @ e[..., :, None])[..., 0])                         # - sum_k derase_h(i,k) e_h(k)
    de = -(w[..., None, :] @ derase)[..., 0, :]                         # (B, H, W)
    da = w @ dM_new                                                     # (B, H, W)
    return dM, dw, de, da


def _product_over_heads_autodiff(x: ad.Tensor) -> ad.Tensor:
    """prod over axis 1 of a Tensor (B, H, ...) by pairwise halving.

    The autodiff core has no product op, and exp(sum(log(x))) breaks at a zero factor (e = 1 at a
    one-hot weighting), so the factors are multiplied in pairs: the loop runs over the
    ceil(log2 H) levels of the tree, not over the heads.
    """
    while x.shape[1] > 1:
        if x.shape[1] % 2:
            x = ad.concatenate([x, ad.Tensor(np.ones_like(x.data[:, :1]))], axis=1)
        x = x[:, 0::2] * x[:, 1::2]                                     # (B, ceil(H / 2), ...)
    return x[:, 0]


def write_autodiff(M, w, e, a) -> ad.Tensor:
    """Autodiff twin of write_forward, eqs. (3)-(4)."""
    M, w, e, a = (ad.as_tensor(x) for x in (M, w, e, a))
    _validate_write(M, w, e, a)
    erase = 1.0 - ad.outer(w, e)                                        # (B, H, N, W)
    keep = _product_over_heads_autodiff(erase)                          # (B, N, W)
    return M * keep + ad.einsum("bhn,bhw->bnw", w, a)                   # (B, N, W)


# ----------------------------------------------------------------- the manual pairs as autodiff ops
read_op = ad.custom_op(read_forward, read_backward, name="read_write.read")
write_op = ad.custom_op(write_forward, write_backward, name="read_write.write")
