"""DNC dynamic memory allocation (Graves et al. 2016, Nature 538:471, Methods "Dynamic memory
allocation"): a differentiable free list. Read heads free the slots they have read (free gates), a
usage vector tracks what is taken, and the allocation weighting points at the least-used slots.

Shapes: B batch, R read heads, N slots, H write heads (an optional axis; the paper's DNC has one
write head, so most callers pass (B, N)).

Equations (the Methods number eqs. (1) and (2); the others are cited by subsection, and by their
step in spec B.3):
    psi_t = prod_i (1 - f^i_t w^{r,i}_{t-1})                      retention vector      (B.3 step 5)
    u_t   = (u_{t-1} + w^w_{t-1} - u_{t-1} * w^w_{t-1}) * psi_t    usage vector          (B.3 step 6)
    uh    = eps_a + (1 - eps_a) u_t                                usage floor (deepmind/dnc)
    phi_t = stable ascending argsort of uh                         free list             (B.3 step 7)
    a_t[phi_t[j]] = (1 - uh[phi_t[j]]) prod_{i<j} uh[phi_t[i]]     allocation, eq. (1)
    w^w_t = g^w_t (g^a_t a_t + (1 - g^a_t) c^w_t)                  write weighting, eq. (2)

Every primitive is a pair `x_forward(...) -> (out, cache)` / `x_backward(dout, cache) -> grads`
(gradients in the order of the forward's inputs), an autodiff twin `x_autodiff(...)` written with
minimem.autodiff ops, and `x_op`, the pair wrapped as one autodiff node.

Choices (spec sections in brackets):
- Products of several factors are differentiated with products of the OTHER factors, never by
  dividing the product by one factor: a saturated free gate (f = 1 on a slot read with weight 1)
  makes a factor exactly 0 [B.4, E.2 item 3].
- The sort permutation phi_t is a constant of the backward pass; it is returned in the cache and
  can be passed back in (`phi=`) so that finite differences replay it instead of straddling the
  kink where two usages swap places [0, B.4, E.2 item 1]. Ties go to the lower slot index [B.10.6].
- Usage floor eps_a = 1e-6 [B.3 step 7, B.10.5]; `eps=0.0` gives the paper's unfloored form, which
  the division-free backward handles as well (usages exactly 0 are then exact zero factors).
- The usage itself is not clipped: the spec has no clip there (a clip would add kinks), and u_t stays
  in [0, 1] whenever u_{t-1}, w^w_{t-1}, f and w^r_{t-1} are in range [B.9].
- `write_grad=False` is deepmind/dnc's stop-gradient on w^w_{t-1} inside the usage update [B.4,
  B.10.4]; the default is the paper's full gradient.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem.memory.addressing import row_dot

ALLOCATION_EPS = 1e-6   # eps_a of spec B.3 step 7 (deepmind/dnc's usage floor)


# ----------------------------------------------------------------- input checks
def _real(x, name: str) -> np.ndarray:
    """x as a float array: bool/int one-hots become float64, float32 stays float32."""
    x = np.asarray(x)
    if x.dtype.kind in "biu":
        return x.astype(np.float64)
    if x.dtype.kind != "f":
        raise ValueError(f"{name} must be a real (floating) array; got dtype {x.dtype}")
    return x


def _weighting(x, name: str, allow_heads: bool = False) -> np.ndarray:
    """A weighting over slots: (B, N), or (B, H, N) when allow_heads."""
    x = _real(x, name)
    if x.ndim == 2 or (allow_heads and x.ndim == 3):
        return x
    expected = "(B, N) or (B, H, N)" if allow_heads else "(B, N)"
    raise ValueError(f"{name} must have shape {expected}; got {x.shape}")


def _same_shape(x, like: np.ndarray, name: str, expected: str) -> np.ndarray:
    x = _real(x, name)
    if x.shape != like.shape:
        raise ValueError(f"{name} must have shape {expected} = {like.shape}; got {x.shape}")
    return x


def _gate(g, like: np.ndarray, name: str) -> np.ndarray:
    """A scalar gate per weighting: shape like.shape[:-1] + (1,)."""
    g = _real(g, name)
    expected = like.shape[:-1] + (1,)
    if g.shape != expected:
        letters = "(B, 1)" if like.ndim == 2 else "(B, H, 1)"
        raise ValueError(f"{name} must have shape {letters} = {expected}; got {g.shape}")
    return g


# ----------------------------------------------------------------- products without division
def exclusive_cumprod(x: np.ndarray) -> np.ndarray:
    """P[..., j] = prod_{i<j} x[..., i] along the last axis (P[..., 0] = 1, the empty product).

    This is "prepend 1, drop the last element" (spec B.8, pytorch-dnc issue #59).
    """
    out = np.empty_like(x)
    out[..., :1] = 1.0
    np.cumprod(x[..., :-1], axis=-1, out=out[..., 1:])           # no concatenate, no copy of x
    return out


def product_of_others(q: np.ndarray, axis: int) -> np.ndarray:
    """O[i] = prod_{j != i} q[j] along `axis` (of length K, the read heads).

    Division-free, so a factor that is exactly 0 gives the right answer (psi / q_i would be 0/0):
    a stack with a (K, K - 1) block in place of `axis` holds, in row i, every factor but q_i (in
    their order), and one product over the K - 1 axis gives all K products at once (O(K^2) per
    element; K is a handful of heads).
    """
    axis = axis % q.ndim
    stack = np.take(q, _others_index(q.shape[axis]), axis=axis)  # (..., K, K - 1, ...): row i without q_i
    return stack.prod(axis=axis + 1)                             # (..., K, ...)


@lru_cache(maxsize=16)
def _others_index(K: int) -> np.ndarray:
    """(K, K - 1) int: row i lists 0..K-1 without i (for K = 1, one empty row: the empty product 1)."""
    return np.array([[j for j in range(K) if j != i] for i in range(K)], dtype=np.intp).reshape(K, K - 1)


def suffix_linear_scan(coef: np.ndarray, const: np.ndarray) -> np.ndarray:
    """S along the last axis with S[k] = const[k] + coef[k] S[k+1] and S[-1] = const[-1], i.e.
    S[k] = sum_{j >= k} const[j] prod_{k <= i < j} coef[i], by recursive doubling: after the pass
    with offset d each S[k] holds the first 2d terms of that sum, and the coefficient array the
    products of 2d consecutive factors (it loses 2d - 1 entries at the end, which no later pass
    reads). log2(N) vectorised passes, O(N log N) work, no division (exact zero factors and tiny
    products are fine). Returns a new array; the inputs are not modified.
    """
    S = const.copy()
    N, d = S.shape[-1], 1
    while d < N:
        S[..., :N - d] += coef[..., :N - d] * S[..., d:]         # the right side is evaluated first
        if 2 * d < N:                                            # products of 2d factors, for the next pass
            coef = coef[..., :coef.shape[-1] - d] * coef[..., d:]
        d *= 2
    return S


def _flat_index(index: np.ndarray) -> np.ndarray:
    """Positions in the flattened array of index[..., j] along the last axis: index + N * row."""
    N = index.shape[-1]
    rows = np.arange(0, index.size, N).reshape(index.shape[:-1] + (1,))
    return index + rows


def _gather_last(x: np.ndarray, index: np.ndarray) -> np.ndarray:
    """np.take_along_axis(x, index, axis=-1) for an index shaped like x, as one np.take of flat positions."""
    return np.take(x, _flat_index(index))


def _scatter_last(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """out with out[..., index[..., j]] = values[..., j] (np.put_along_axis into a new array)."""
    out = np.empty(values.shape, dtype=values.dtype)
    np.put(out, _flat_index(index), values)                      # flat positions of a C-order array
    return out


# ----------------------------------------------------------------- retention (B.3 step 5)
class RetentionCache(NamedTuple):
    free_gates: np.ndarray   # (B, R) free gates f^i_t in [0, 1]
    w_r_prev: np.ndarray     # (B, R, N) previous read weightings w^{r,i}_{t-1}
    q: np.ndarray            # (B, R, N) per-head factors 1 - f^i w^{r,i}_{t-1}


def retention_forward(free_gates: np.ndarray, w_r_prev: np.ndarray) -> tuple[np.ndarray, RetentionCache]:
    """Retention vector psi_t = prod_i (1 - f^i_t w^{r,i}_{t-1}) (Methods, "Dynamic memory allocation").

    Args:
        free_gates: (B, R) free gates f^i_t = sigmoid(f_hat^i), one per read head.
        w_r_prev: (B, R, N) the read weightings of the previous step.
    Returns:
        psi: (B, N), how much of each slot survives the frees, and the cache for retention_backward.
    """
    w_r_prev = _real(w_r_prev, "w_r_prev")
    if w_r_prev.ndim != 3:
        raise ValueError(f"w_r_prev must have shape (B, R, N); got {w_r_prev.shape}")
    free_gates = _real(free_gates, "free_gates")
    if free_gates.shape != w_r_prev.shape[:2]:
        raise ValueError(f"free_gates must have shape (B, R) = {w_r_prev.shape[:2]}; got {free_gates.shape}")
    q = 1.0 - free_gates[..., None] * w_r_prev                   # (B, R, N)
    psi = np.prod(q, axis=1)                                     # (B, N)
    return psi, RetentionCache(free_gates, w_r_prev, q)


def retention_backward(dpsi: np.ndarray, cache: RetentionCache) -> tuple[np.ndarray, np.ndarray]:
    """Adjoint of the retention product (spec B.4). Returns (dfree_gates (B, R), dw_r_prev (B, R, N)).

    dq_i = dpsi * prod_{j != i} q_j, as products of the other factors (never psi / q_i).
    """
    free_gates, w_r_prev, q = cache
    dq = dpsi[:, None, :] * product_of_others(q, axis=1)         # (B, R, N)
    dfree_gates = -row_dot(dq, w_r_prev)                         # (B, R)
    dw_r_prev = -free_gates[..., None] * dq                      # (B, R, N)
    return dfree_gates, dw_r_prev


def retention_autodiff(free_gates, w_r_prev) -> ad.Tensor:
    """Autodiff twin of retention_forward."""
    free_gates, w_r_prev = ad.as_tensor(free_gates), ad.as_tensor(w_r_prev)
    q = 1.0 - ad.reshape(free_gates, free_gates.shape + (1,)) * w_r_prev    # (B, R, N)
    # autodiff has no product op and exp(sum(log q)) fails at q = 0: a running product over the
    # R heads (the twin is a reference, not the fast path).
    psi = q[:, 0, :]                                                         # (B, N)
    for i in range(1, q.shape[1]):
        psi = psi * q[:, i, :]
    return psi


# ----------------------------------------------------------------- usage (B.3 step 6)
class UsageCache(NamedTuple):
    u_prev: np.ndarray       # (B, N) usage u_{t-1}
    w_w_prev: np.ndarray     # (B, N) write weighting w^w_{t-1}
    psi: np.ndarray          # (B, N) retention psi_t
    write_grad: bool         # False: deepmind/dnc stop-gradient on w_w_prev


def usage_forward(u_prev: np.ndarray, w_w_prev: np.ndarray, psi: np.ndarray,
                  write_grad: bool = True) -> tuple[np.ndarray, UsageCache]:
    """Usage u_t = (u_{t-1} + w^w_{t-1} - u_{t-1} * w^w_{t-1}) * psi_t (Methods, "Dynamic memory allocation").

    Args:
        u_prev: (B, N) usage of the previous step, in [0, 1].
        w_w_prev: (B, N) write weighting of the previous step.
        psi: (B, N) retention vector from retention_forward.
        write_grad: True (paper) differentiates through w_w_prev; False is deepmind/dnc's
            stop-gradient (usage_backward then returns zeros for dw_w_prev, spec B.4).
    Returns:
        u: (B, N), and the cache for usage_backward. No clip (see the module docstring).
    """
    u_prev = _weighting(u_prev, "u_prev")
    w_w_prev = _same_shape(w_w_prev, u_prev, "w_w_prev", "(B, N)")
    psi = _same_shape(psi, u_prev, "psi", "(B, N)")
    u = (u_prev + w_w_prev - u_prev * w_w_prev) * psi            # (B, N)
    return u, UsageCache(u_prev, w_w_prev, psi, bool(write_grad))


def usage_backward(du: np.ndarray, cache: UsageCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Adjoint of the usage update (spec B.4). Returns (du_prev, dw_w_prev, dpsi), each (B, N)."""
    u_prev, w_w_prev, psi, write_grad = cache
    du_psi = du * psi
    du_prev = du_psi * (1.0 - w_w_prev)
    dw_w_prev = du_psi * (1.0 - u_prev) if write_grad else np.zeros_like(w_w_prev)
    dpsi = du * (u_prev + w_w_prev - u_prev * w_w_prev)
    return du_prev, dw_w_prev, dpsi


def usage_autodiff(u_prev, w_w_prev, psi, write_grad: bool = True) -> ad.Tensor:
    """Autodiff twin of usage_forward; write_grad=False detaches w_w_prev (stop-gradient)."""
    u_prev, w_w_prev, psi = ad.as_tensor(u_prev), ad.as_tensor(w_w_prev), ad.as_tensor(psi)
    if not write_grad:
        w_w_prev = w_w_prev.detach()
    return (u_prev + w_w_prev - u_prev * w_w_prev) * psi


class UsageUpdateCache(NamedTuple):
    retention: RetentionCache
    usage: UsageCache


def usage_update_forward(u_prev: np.ndarray, w_w_prev: np.ndarray, free_gates: np.ndarray,
                         w_r_prev: np.ndarray, write_grad: bool = True) -> tuple[np.ndarray, UsageUpdateCache]:
    """B.3 steps 5-6 in one call: retention from the frees, then the usage update.

    Shapes: u_prev, w_w_prev (B, N); free_gates (B, R); w_r_prev (B, R, N). Returns u (B, N).
    """
    u_prev = _weighting(u_prev, "u_prev")
    B, N = u_prev.shape
    if np.ndim(w_r_prev) != 3 or (np.shape(w_r_prev)[0], np.shape(w_r_prev)[2]) != (B, N):
        raise ValueError(f"w_r_prev must have shape (B, R, N) with (B, N) = {u_prev.shape}; "
                         f"got {np.shape(w_r_prev)}")
    psi, c1 = retention_forward(free_gates, w_r_prev)           # 1. step 5
    u, c2 = usage_forward(u_prev, w_w_prev, psi, write_grad)     # 2. step 6
    return u, UsageUpdateCache(c1, c2)


def usage_update_backward(du: np.ndarray, cache: UsageUpdateCache):
    """Adjoint of usage_update_forward. Returns (du_prev, dw_w_prev, dfree_gates, dw_r_prev)."""
    du_prev, dw_w_prev, dpsi = usage_backward(du, cache.usage)            # 2.
    dfree_gates, dw_r_prev = retention_backward(dpsi, cache.retention)    # 1.
    return du_prev, dw_w_prev, dfree_gates, dw_r_prev


def usage_update_autodiff(u_prev, w_w_prev, free_gates, w_r_prev, write_grad: bool = True) -> ad.Tensor:
    """Autodiff twin of usage_update_forward."""
    return usage_autodiff(u_prev, w_w_prev, retention_autodiff(free_gates, w_r_prev), write_grad)


# ----------------------------------------------------------------- allocation, eq. (1) (B.3 step 7)
class AllocationCache(NamedTuple):
    phi: np.ndarray          # (B, N) int: phi[..., j] is the slot with the j-th smallest floored usage
    x: np.ndarray            # (B, N) floored usages uh in sorted order, x_j = uh[phi_j]
    prefix: np.ndarray       # (B, N) P_j = prod_{i<j} x_i (exclusive cumulative product)
    eps: float               # the usage floor eps_a


def free_list(usage: np.ndarray, eps: float = ALLOCATION_EPS) -> np.ndarray:
    """The free list phi_t: slots in ascending order of floored usage, ties to the lower index.

    The sort is stable, so equal usages keep slot order (top_k semantics, spec B.10.6). (B, N) int.
    """
    usage = _weighting(usage, "usage", allow_heads=True)
    return np.argsort(eps + (1.0 - eps) * usage, axis=-1, kind="stable")


def _check_permutation(phi, usage: np.ndarray) -> np.ndarray:
    phi = np.asarray(phi)
    if phi.shape != usage.shape or phi.dtype.kind not in "iu":
        raise ValueError(f"phi must be an integer array shaped like usage {usage.shape}; "
                         f"got {phi.dtype} {phi.shape}")
    if not np.array_equal(np.sort(phi, axis=-1), np.broadcast_to(np.arange(usage.shape[-1]), phi.shape)):
        raise ValueError("phi must hold a permutation of the slots 0..N-1 along its last axis")
    return phi


def allocation_forward(usage: np.ndarray, phi: np.ndarray | None = None,
                       eps: float = ALLOCATION_EPS) -> tuple[np.ndarray, AllocationCache]:
    """Allocation weighting a_t, eq. (1): with x_j = uh[phi_j] in ascending order,
    a_t[phi_j] = (1 - x_j) prod_{i<j} x_i, where uh = eps + (1 - eps) u_t.

    Args:
        usage: (B, N) usage u_t (or (B, H, N)).
        phi: optional (B, N) int permutation recorded by an earlier call (cache.phi). Passing it
            replays that free list instead of sorting again, so finite differences do not cross
            the kink where two usages swap order. Default: free_list(usage, eps).
        eps: the usage floor eps_a (1e-6, deepmind/dnc); 0.0 for the paper's unfloored form.
    Returns:
        a: (B, N) in Delta_N with sum(a) = 1 - prod(uh), and the cache (which records phi).
    """
    usage = _weighting(usage, "usage", allow_heads=True)
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must be in [0, 1); got {eps}")
    uh = eps + (1.0 - eps) * usage                                # (B, N) floored usage
    # The sort order is a constant of the backward pass (spec B.4); it goes into the cache.
    phi = np.argsort(uh, axis=-1, kind="stable") if phi is None else _check_permutation(phi, usage)
    x = _gather_last(uh, phi)                                     # (B, N) sorted ascending
    prefix = exclusive_cumprod(x)                                 # (B, N) P_j = prod_{i<j} x_i
    a = _scatter_last((1.0 - x) * prefix, phi)                    # (B, N) back in slot order
    return a, AllocationCache(phi, x, prefix, float(eps))


def allocation_backward(da: np.ndarray, cache: AllocationCache) -> np.ndarray:
    """Adjoint of eq. (1) with phi held constant (spec B.4). Returns dusage, shaped like usage.

    In sorted order, a_j = (1 - x_j) P_j, so d a_j / d x_j = -P_j, and for k < j
    d a_j / d x_k = (1 - x_j) prod_{i<j, i != k} x_i = (1 - x_j) P_k prod_{k<i<j} x_i: the prefix
    product with factor k left out. Computing that as a_j / x_k would divide by a usage that may be
    exactly 0 (eps = 0) or lose the value to underflow, so it is built without division:

        dx_k = P_k (S_k - da_k),   S_k = sum_{j>k} (1 - x_j) da_j prod_{k<i<j} x_i,

    and S obeys the backward recurrence S_{N-1} = 0, S_k = (1 - x_{k+1}) da_{k+1} + x_{k+1} S_{k+1},
    evaluated by suffix_linear_scan (log2 N vectorised passes; no N x N matrix).
    """
    phi, x, prefix, eps = cache
    da_sorted = _gather_last(np.asarray(da), phi)                 # (B, N) in sorted order
    const = np.zeros(x.shape, dtype=np.result_type(x, da_sorted))
    np.multiply(1.0 - x[..., 1:], da_sorted[..., 1:], out=const[..., :-1])   # (1 - x_{k+1}) da_{k+1}
    coef = np.ones_like(x)
    coef[..., :-1] = x[..., 1:]                                   # x_{k+1}; the last one is never used
    dx = prefix * (suffix_linear_scan(coef, const) - da_sorted)  # (B, N)
    return _scatter_last((1.0 - eps) * dx, phi)                   # (B, N) back in slot order


def allocation_autodiff(usage, phi: np.ndarray | None = None, eps: float = ALLOCATION_EPS) -> ad.Tensor:
    """Autodiff twin of allocation_forward (phi, if not given, is sorted from usage's values)."""
    usage = ad.as_tensor(usage)
    uh = eps + (1.0 - eps) * usage                                           # (B, N)
    if phi is None:
        phi = np.argsort(uh.data, axis=-1, kind="stable")
    x = ad.gather(uh, phi, axis=-1)                                          # (B, N) sorted
    # Exclusive cumulative product as a stack of running products, one slot at a time: slow but
    # independent of the manual path's np.cumprod (the twin is a reference).
    running = [ad.as_tensor(np.ones(x.shape[:-1], dtype=x.dtype))]
    for j in range(1, x.shape[-1]):
        running.append(running[-1] * x[..., j - 1])
    prefix = ad.stack(running, axis=-1)                                      # (B, N)
    a_sorted = (1.0 - x) * prefix
    return ad.gather(a_sorted, np.argsort(phi, axis=-1), axis=-1)            # (B, N) slot order


# ----------------------------------------------------------------- write weighting, eq. (2) (B.3 step 9)
class WriteWeightingCache(NamedTuple):
    a: np.ndarray            # (B, N) allocation weighting
    c_w: np.ndarray          # (B, N) write content weighting
    g_a: np.ndarray          # (B, 1) allocation gate
    g_w: np.ndarray          # (B, 1) write gate
    mix: np.ndarray          # (B, N) g_a a + (1 - g_a) c_w


def write_weighting_forward(a: np.ndarray, c_w: np.ndarray, g_a: np.ndarray,
                            g_w: np.ndarray) -> tuple[np.ndarray, WriteWeightingCache]:
    """Write weighting w^w_t = g^w_t (g^a_t a_t + (1 - g^a_t) c^w_t), eq. (2).

    Args:
        a: (B, N) allocation weighting (or (B, H, N)).
        c_w: (B, N) write content weighting C(M_{t-1}, k^w_t, beta^w_t) on the OLD memory.
        g_a: (B, 1) allocation gate in [0, 1] (or (B, H, 1)).
        g_w: (B, 1) write gate in [0, 1].
    Returns:
        w_w: (B, N), and the cache for write_weighting_backward.
    """
    a = _weighting(a, "a", allow_heads=True)
    c_w = _same_shape(c_w, a, "c_w", "(B, N) like a")
    g_a, g_w = _gate(g_a, a, "g_a"), _gate(g_w, a, "g_w")
    mix = g_a * a + (1.0 - g_a) * c_w                              # (B, N)
    return g_w * mix, WriteWeightingCache(a, c_w, g_a, g_w, mix)


def write_weighting_backward(dw_w: np.ndarray, cache: WriteWeightingCache):
    """Adjoint of eq. (2). Returns (da, dc_w, dg_a, dg_w) shaped like the forward's inputs."""
    a, c_w, g_a, g_w, mix = cache
    dmix = g_w * dw_w                                              # (B, N)
    da = g_a * dmix
    dc_w = (1.0 - g_a) * dmix
    dg_a = row_dot(dmix, a - c_w)[..., None]                      # (B, 1)
    dg_w = row_dot(dw_w, mix)[..., None]                          # (B, 1)
    return da, dc_w, dg_a, dg_w


def write_weighting_autodiff(a, c_w, g_a, g_w) -> ad.Tensor:
    """Autodiff twin of write_weighting_forward."""
    a, c_w, g_a, g_w = (ad.as_tensor(t) for t in (a, c_w, g_a, g_w))
    return g_w * (g_a * a + (1.0 - g_a) * c_w)


# ----------------------------------------------------------------- the pairs as single autodiff nodes
retention_op = ad.custom_op(retention_forward, retention_backward, name="dnc.retention")
usage_op = ad.custom_op(usage_forward, usage_backward, name="dnc.usage")
usage_update_op = ad.custom_op(usage_update_forward, usage_update_backward, name="dnc.usage_update")
allocation_op = ad.custom_op(allocation_forward, allocation_backward, name="dnc.allocation")
write_weighting_op = ad.custom_op(write_weighting_forward, write_weighting_backward,
                                  name="dnc.write_weighting")
