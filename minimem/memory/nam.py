"""Neural Attention Memory, the primitive (Nam & Seo, 2023, arXiv:2302.09422): a memory matrix
written by adding outer products of values and unit-normalised keys, and read by multiplying it
with a unit-normalised query. Both are plain linear algebra, so the memory can sit inside recurrent
cells (LSAM), tape machines (NAM-TM), classifiers and Transformers (NAM attention).

Shapes: "..." any leading axes, in the host models (B, H) batch and heads or (B, T_p) batch and
tapes; d_k key width, d_v value width. A memory is (..., d_v, d_k): "value x key", so a read is
M q_hat (spec A1.10; a NAM-TM tape shown as cells x width is the transpose M^T).
Equations (the paper's numbering could not be consulted; labels are the spec's, specs/nam_hma.md A1):
    (NAM-0)  k_hat = unit(k) = k / max(||k||_2, eps),  eps = 1e-12      per vector, over the last axis
    (NAM-1)  RD(M, q, p_r) = p_r M q_hat                                  (..., d_v)
    (NAM-2)  WR(M, k, v, p_w, p_e) = M + p_w v k_hat^T - p_e (M k_hat) k_hat^T    (..., d_v, d_k)
The erase term reads the old value u = M k_hat stored under the key and subtracts p_e u k_hat^T.
Special cases the hosts use: (p_w, p_e) = (1, 1) overwrite, RD(WR(M, k, v, 1, 1), k, 1) = v;
(1, 0) pure accumulation (linear attention, A6); (0, 1) erase, afterwards M k_hat = 0; p_w = p_e = w
(LSAM): M + w (v - M k_hat) k_hat^T. Probabilities are (...) arrays, sigmoid outputs in every host
model; the algebra is defined for any real value, so nothing outside [0, 1] is rejected.

Every pair `<thing>_forward(...) -> (out, cache)` / `<thing>_backward(dout, cache)` returns one
gradient per forward array input, in order; `<thing>_autodiff` is the twin in minimem.autodiff ops
and `<thing>_op` the manual pair as one autodiff node. Nothing loops over batch, heads or slots.
`normalize=False` uses a key or query exactly as given (for hosts that normalised it already, e.g.
the NAM-TM key tape, whose content keys are unit vectors made once per step).

The unit norm below eps is x / eps (PyTorch's F.normalize, which the reference code uses); its
derivative there is I / eps. Nothing in a trained model comes near it; gradcheck keeps norms >= 1e-3.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem.nn.linear import as_float_array

EPS = 1e-12       # the unit-norm floor of the reference code (spec section 0 and A1.10)


# ----------------------------------------------------------------- input validation
def _leading(M) -> tuple[tuple, int, int]:
    """(leading shape, d_v, d_k) of a memory (..., d_v, d_k)."""
    if M.ndim < 2:
        raise ValueError(f"M must have shape (..., d_v, d_k), e.g. (B, H, d_v, d_k); got {tuple(M.shape)}")
    return tuple(M.shape[:-2]), M.shape[-2], M.shape[-1]


def _expect(name: str, x, expected: tuple, legend: str) -> None:
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {legend} = {tuple(expected)} to match M; got {tuple(x.shape)}")


def _expect_dout(name: str, dout, shape: tuple, legend: str) -> None:
    if np.shape(dout) != tuple(shape):
        raise ValueError(f"{name} must have the forward output's shape {legend} = {tuple(shape)}; "
                         f"got {np.shape(dout)}")


def _floats(**arrays) -> list[np.ndarray]:
    return [as_float_array(name, x) for name, x in arrays.items()]


def _check_eps(eps: float) -> float:
    eps = float(eps)
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0; got {eps}")
    return eps


def _outer_plus(a: np.ndarray, b: np.ndarray, C: np.ndarray | None = None) -> np.ndarray:
    """a b^T + C over the last axes, (..., m) and (..., n) -> (..., m, n), in one new buffer (C None:
    just the outer product). The values and dtype of C + a[..., :, None] * b[..., None, :]; einsum
    forms the products ~1.5x faster than broadcasting over a short last axis (the same numbers)."""
    out = np.einsum("...i,...j->...ij", a, b, dtype=np.result_type(a, b) if C is None else np.result_type(C, a, b))
    if C is not None:
        out += C
    return out


# ----------------------------------------------------------------- unit norm, (NAM-0)
class UnitCache(NamedTuple):
    x_hat: np.ndarray    # (..., n) x / max(||x||, eps)
    norm: np.ndarray     # (..., 1) max(||x||, eps), the divisor
    above: np.ndarray    # (..., 1) bool, ||x|| >= eps (the divisor depends on x)


def unit_forward(x: np.ndarray, eps: float = EPS) -> tuple[np.ndarray, UnitCache]:
    """Unit L2 norm over the last axis, (NAM-0): x_hat = x / max(||x||, eps).

    Args:
        x: (..., n) vectors, e.g. keys (B, H, d_k).
        eps: the floor of the norm, 1e-12 as in PyTorch's F.normalize.
    Returns:
        x_hat: (..., n), and the cache for unit_backward.
    """
    x, eps = as_float_array("x", x), _check_eps(eps)
    if x.ndim < 1:
        raise ValueError("x must have shape (..., n); got a scalar")
    return _unit(x, eps)


def _unit(x: np.ndarray, eps: float) -> tuple[np.ndarray, UnitCache]:
    """unit_forward on an array already converted and checked."""
    squared = (x * x).sum(axis=-1, keepdims=True)               # (..., 1)
    above = squared >= eps * eps
    norm = np.sqrt(np.maximum(squared, eps * eps))              # max(||x||, eps)
    x_hat = x / norm                                            # (..., n)
    return x_hat, UnitCache(x_hat, norm, above)


def unit_backward(dx_hat: np.ndarray, cache: UnitCache) -> np.ndarray:
    """Adjoint of (NAM-0) (spec A1.4): dx = (dx_hat - x_hat (x_hat . dx_hat)) / ||x|| above the
    floor, dx = dx_hat / eps below it."""
    x_hat, norm, above = cache
    _expect_dout("dx_hat", dx_hat, x_hat.shape, "(..., n)")
    radial = (x_hat * dx_hat).sum(axis=-1, keepdims=True)        # (..., 1)
    dx = x_hat * (above * radial)                                # (..., n), one new buffer
    np.subtract(dx_hat, dx, out=dx)
    dx /= norm
    return dx


def unit_autodiff(x, eps: float = EPS) -> ad.Tensor:
    """Autodiff twin of unit_forward. The floor sits under the square root (clip of ||x||^2 at
    eps^2), so a zero vector gives x / eps with a finite gradient instead of 0 / 0."""
    x = ad.as_tensor(x)
    squared = ad.sum(x * x, axis=-1, keepdims=True)              # (..., 1)
    return x / ad.sqrt(ad.clip(squared, eps * eps, None))        # (..., n)


# ----------------------------------------------------------------- read, (NAM-1)
class NAMReadCache(NamedTuple):
    M: np.ndarray            # (..., d_v, d_k) memory that was read
    q_hat: np.ndarray        # (..., d_k) unit query (the query itself with normalize=False)
    p_r: np.ndarray          # (...) read probability
    unit: UnitCache | None   # the normalisation of q, None with normalize=False
    read: np.ndarray | None = None   # (..., d_v) M q_hat, kept from the forward (None: recomputed)


def _validate_read(M, q, p_r) -> None:
    lead, d_v, d_k = _leading(M)
    _expect("q", q, lead + (d_k,), "(..., d_k)")
    _expect("p_r", p_r, lead, "(...)")


def nam_read_forward(M: np.ndarray, q: np.ndarray, p_r: np.ndarray, normalize: bool = True,
                     eps: float = EPS) -> tuple[np.ndarray, NAMReadCache]:
    """NAM read, (NAM-0)-(NAM-1): r = p_r M unit(q).

    Args:
        M: (..., d_v, d_k) memory, e.g. (B, H, d_v, d_k).
        q: (..., d_k) query (normalised here unless normalize=False).
        p_r: (...) read probability, e.g. (B, H).
        normalize: apply (NAM-0) to q; False uses q as given.
        eps: the floor of the unit norm.
    Returns:
        r: (..., d_v), and the cache for nam_read_backward.
    """
    M, q, p_r = _floats(M=M, q=q, p_r=p_r)
    _validate_read(M, q, p_r)
    return _read_forward(M, q, p_r, normalize, _check_eps(eps))


def _read_forward(M, q, p_r, normalize: bool = True, eps: float = EPS):
    """nam_read_forward on arrays already converted and checked (for hosts' time loops)."""
    q_hat, unit = _unit(q, eps) if normalize else (q, None)
    read = np.matmul(M, q_hat[..., None])[..., 0]                    # (..., d_v)  M q_hat
    r = p_r[..., None] * read                                        # (..., d_v)
    return r, NAMReadCache(M, q_hat, p_r, unit, read)


def nam_read_backward(dr: np.ndarray, cache: NAMReadCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Adjoint of (NAM-1) (spec A1.4). Returns (dM, dq, dp_r):
        dM = p_r dr q_hat^T,  dq_hat = p_r M^T dr,  dp_r = dr . M q_hat,  then the unit-norm adjoint.
    """
    _expect_dout("dr", dr, cache.M.shape[:-1], "(..., d_v)")
    M, q_hat, p_r, unit, read = cache
    if read is None:
        read = np.matmul(M, q_hat[..., None])[..., 0]                # (..., d_v)  M q_hat
    dM = _outer_plus(p_r[..., None] * dr, q_hat)                     # (..., d_v, d_k)
    dq_hat = p_r[..., None] * np.matmul(dr[..., None, :], M)[..., 0, :]  # (..., d_k)
    dp_r = (dr * read).sum(axis=-1)                                  # (...)
    dq = dq_hat if unit is None else unit_backward(dq_hat, unit)
    return dM, dq, dp_r


def nam_read_autodiff(M, q, p_r, normalize: bool = True, eps: float = EPS) -> ad.Tensor:
    """Autodiff twin of nam_read_forward, (NAM-0)-(NAM-1)."""
    M, q, p_r = ad.as_tensor(M), ad.as_tensor(q), ad.as_tensor(p_r)
    _validate_read(M, q, p_r)
    q_hat = unit_autodiff(q, eps) if normalize else q
    read = ad.matmul(M, ad.reshape(q_hat, q_hat.shape + (1,)))       # (..., d_v, 1)
    return ad.reshape(p_r, p_r.shape + (1,)) * ad.reshape(read, read.shape[:-1])   # (..., d_v)


# ----------------------------------------------------------------- write, (NAM-2)
class NAMWriteCache(NamedTuple):
    M: np.ndarray            # (..., d_v, d_k) memory before the write
    k_hat: np.ndarray        # (..., d_k) unit key (the key itself with normalize=False)
    v: np.ndarray            # (..., d_v) value
    p_w: np.ndarray          # (...) write probability
    p_e: np.ndarray          # (...) erase probability
    u: np.ndarray            # (..., d_v) old value M k_hat
    delta: np.ndarray        # (..., d_v) p_w v - p_e u, the column written along k_hat
    unit: UnitCache | None   # the normalisation of k, None with normalize=False


def _validate_write(M, k, v, p_w, p_e) -> None:
    lead, d_v, d_k = _leading(M)
    _expect("k", k, lead + (d_k,), "(..., d_k)")
    _expect("v", v, lead + (d_v,), "(..., d_v)")
    _expect("p_w", p_w, lead, "(...)")
    _expect("p_e", p_e, lead, "(...)")


def nam_write_forward(M: np.ndarray, k: np.ndarray, v: np.ndarray, p_w: np.ndarray, p_e: np.ndarray,
                      normalize: bool = True, eps: float = EPS) -> tuple[np.ndarray, NAMWriteCache]:
    """NAM write, (NAM-0) and (NAM-2): M' = M + (p_w v - p_e M k_hat) k_hat^T.

    Args:
        M: (..., d_v, d_k) memory (not modified), e.g. (B, H, d_v, d_k).
        k: (..., d_k) key (normalised here unless normalize=False).
        v: (..., d_v) value.
        p_w, p_e: (...) write and erase probabilities.
        normalize: apply (NAM-0) to k; False uses k as given.
        eps: the floor of the unit norm.
    Returns:
        M_new: (..., d_v, d_k), and the cache for nam_write_backward.
    """
    M, k, v, p_w, p_e = _floats(M=M, k=k, v=v, p_w=p_w, p_e=p_e)
    _validate_write(M, k, v, p_w, p_e)
    return _write_forward(M, k, v, p_w, p_e, normalize, _check_eps(eps))


def _write_forward(M, k, v, p_w, p_e, normalize: bool = True, eps: float = EPS):
    """nam_write_forward on arrays already converted and checked (for hosts' time loops)."""
    k_hat, unit = _unit(k, eps) if normalize else (k, None)
    u = np.matmul(M, k_hat[..., None])[..., 0]                       # (..., d_v)  old value at k_hat
    delta = p_w[..., None] * v - p_e[..., None] * u                  # (..., d_v)
    M_new = _outer_plus(delta, k_hat, M)                             # (..., d_v, d_k)
    return M_new, NAMWriteCache(M, k_hat, v, p_w, p_e, u, delta, unit)


def nam_write_backward(dM_new: np.ndarray, cache: NAMWriteCache) -> tuple[np.ndarray, ...]:
    """Adjoint of (NAM-2) (spec A1.4), with G = dM_new. Returns (dM, dk, dv, dp_w, dp_e):
        dM = G - p_e (G k_hat) k_hat^T          dv = p_w G k_hat
        dp_w = v . G k_hat                      dp_e = -u . G k_hat
        dk_hat = G^T (p_w v - p_e u) - p_e M^T G k_hat,  then the unit-norm adjoint.
    """
    M, k_hat, v, p_w, p_e, u, delta, unit = cache
    _expect_dout("dM_new", dM_new, M.shape, "(..., d_v, d_k)")
    G_k = np.matmul(dM_new, k_hat[..., None])[..., 0]                # (..., d_v)  G k_hat
    dk_hat = (np.matmul(delta[..., None, :], dM_new)[..., 0, :]      # (..., d_k)  G^T delta
              - p_e[..., None] * np.matmul(G_k[..., None, :], M)[..., 0, :])   # - p_e M^T G k_hat
    dM = _outer_plus(-p_e[..., None] * G_k, k_hat, dM_new)          # (..., d_v, d_k)
    dv = p_w[..., None] * G_k                                        # (..., d_v)
    dp_w = (v * G_k).sum(axis=-1)                                    # (...)
    dp_e = -(u * G_k).sum(axis=-1)                                   # (...)
    dk = dk_hat if unit is None else unit_backward(dk_hat, unit)
    return dM, dk, dv, dp_w, dp_e


def _write_read_backward(dr: np.ndarray, dM_out: np.ndarray, write: NAMWriteCache, read: NAMReadCache):
    """Adjoint of a write followed by a read of the written memory, M' = WR(M, k, v, p_w, p_e) and
    r = RD(M', q, p_r), M' also leaving with gradient dM_out (the recurrent hosts: LSAM's cell,
    NAM-TM's two tapes). The same numbers as nam_read_backward (its dM plus dM_out) then
    nam_write_backward, up to round-off, without forming G = dM_out + p_r dr q_hat^T: with a = p_r dr,
        G k_hat = dM_out k_hat + a (q_hat . k_hat),   G^T delta = dM_out^T delta + q_hat (a . delta),
        dM = G - p_e (G k_hat) k_hat^T = dM_out + [a, -p_e G k_hat] [q_hat, k_hat]^T   (one rank-2 product).
    Returns (dM, dk, dv, dp_w, dp_e, dq, dp_r)."""
    M, k_hat, v, p_w, p_e, u, delta, k_unit = write
    M_t, q_hat, p_r, q_unit, r_read = read
    if r_read is None:
        r_read = np.matmul(M_t, q_hat[..., None])[..., 0]              # (..., d_v)  M' q_hat
    a = p_r[..., None] * dr                                           # (..., d_v)  (NAM-1) adjoint
    dq_hat = p_r[..., None] * np.matmul(dr[..., None, :], M_t)[..., 0, :]   # (..., d_k)
    dp_r = (dr * r_read).sum(axis=-1)                                 # (...)
    G_k = (np.matmul(dM_out, k_hat[..., None])[..., 0]                # (..., d_v)  G k_hat
           + a * (q_hat * k_hat).sum(axis=-1, keepdims=True))
    dk_hat = (np.matmul(delta[..., None, :], dM_out)[..., 0, :]       # (..., d_k)  G^T delta
              + q_hat * (a * delta).sum(axis=-1, keepdims=True)
              - p_e[..., None] * np.matmul(G_k[..., None, :], M)[..., 0, :])   # - p_e M^T G k_hat
    dM = np.matmul(np.stack([a, -p_e[..., None] * G_k], axis=-1),    # (..., d_v, 2) @ (..., 2, d_k)
                   np.stack([q_hat, k_hat], axis=-2))
    if dM.dtype == np.result_type(dM, dM_out):
        dM += dM_out
    else:
        dM = dM + dM_out
    dv = p_w[..., None] * G_k                                         # (..., d_v)
    dp_w = (v * G_k).sum(axis=-1)                                     # (...)
    dp_e = -(u * G_k).sum(axis=-1)                                    # (...)
    dk = dk_hat if k_unit is None else unit_backward(dk_hat, k_unit)
    dq = dq_hat if q_unit is None else unit_backward(dq_hat, q_unit)
    return dM, dk, dv, dp_w, dp_e, dq, dp_r


def nam_write_autodiff(M, k, v, p_w, p_e, normalize: bool = True, eps: float = EPS) -> ad.Tensor:
    """Autodiff twin of nam_write_forward, (NAM-0) and (NAM-2)."""
    M, k, v, p_w, p_e = (ad.as_tensor(x) for x in (M, k, v, p_w, p_e))
    _validate_write(M, k, v, p_w, p_e)
    k_hat = unit_autodiff(k, eps) if normalize else k
    u = ad.reshape(ad.matmul(M, ad.reshape(k_hat, k_hat.shape + (1,))), v.shape)   # (..., d_v)
    delta = ad.reshape(p_w, p_w.shape + (1,)) * v - ad.reshape(p_e, p_e.shape + (1,)) * u
    return M + ad.outer(delta, k_hat)                                # (..., d_v, d_k)


# ----------------------------------------------------------------- the manual pairs as autodiff ops
unit_op = ad.custom_op(unit_forward, unit_backward, name="nam.unit")
nam_read_op = ad.custom_op(nam_read_forward, nam_read_backward, name="nam.read")
nam_write_op = ad.custom_op(nam_write_forward, nam_write_backward, name="nam.write")
