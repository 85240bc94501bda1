"""DNC memory access for one time step (Graves et al. 2016, Nature 538:471, Methods): free, allocate,
write, link, then read - spec B.3 steps 5-16, in execution order, built from the shared primitives.

Shapes: B batch, N slots, W word size, R read heads (one write head, the paper's form).
Steps (spec B.3; the Methods number only eqs. (1) and (2)):
     5. psi_t = prod_i (1 - f^i_t w^{r,i}_{t-1})                              retention
     6. u_t = (u_{t-1} + w^w_{t-1} - u_{t-1} * w^w_{t-1}) * psi_t                usage
     7. a_t from the free list phi_t = argsort(eps_a + (1 - eps_a) u_t), eq. (1)  allocation
     8. c^w_t = C(M_{t-1}, k^w_t, beta^w_t)                                     write content, OLD memory
     9. w^w_t = g^w_t (g^a_t a_t + (1 - g^a_t) c^w_t), eq. (2)                   write weighting
    10. M_t = M_{t-1} * (E - w^w_t e_t^T) + w^w_t nu_t^T                          erase and add
    11. L_t = (1 - w_i - w_j) L_{t-1} + w_i p_{t-1}[j], diagonal 0                links, OLD precedence
    12. p_t = (1 - sum_i w^w_t[i]) p_{t-1} + w^w_t                                precedence
    13. f^i_t = L_t w^{r,i}_{t-1},  b^i_t = L_t^T w^{r,i}_{t-1}                   NEW links, OLD reads
    14. c^{r,i}_t = C(M_t, k^{r,i}_t, beta^{r,i}_t)                              read content, NEW memory
    15. w^{r,i}_t = pi^i[0] b^i_t + pi^i[1] c^{r,i}_t + pi^i[2] f^i_t             read modes
    16. r^i_t = M_t^T w^{r,i}_t                                                  read vectors

access_forward(state, interface) -> (state', cache); access_backward(dstate', cache) ->
(dstate, dinterface), which BPTT chains through time; access_autodiff repeats the steps with the
primitives' autodiff twins.

Not differentiated (spec B.4, held constant in the backward and replayable in the forward):
- the free list phi_t (pass `phi=` to replay a recorded permutation);
- with write_grad=False (deepmind/dnc), the previous write weighting inside the usage update
  (pass `usage_w_w=` to replay a recorded value, so finite differences see the same constant);
- with the sparse link option (link_K=K, spec B.10.9, minimem.memory.sparse_link), the kept slots
  and the 1/K threshold mask of step 11 (pass `link_choice=` to replay a recorded SparseLinkChoice).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem.memory.addressing import content_autodiff, content_backward, content_forward
from minimem.memory.allocation import (
    ALLOCATION_EPS, allocation_autodiff, allocation_backward, allocation_forward, retention_autodiff,
    retention_backward, retention_forward, usage_autodiff, usage_backward, usage_forward,
    write_weighting_autodiff, write_weighting_backward, write_weighting_forward,
)
from minimem.memory.dnc_interface import Interface
from minimem.memory.linkage import (
    directional_autodiff, directional_backward, directional_forward, link_autodiff, link_backward, link_forward,
    precedence_autodiff, precedence_backward, precedence_forward, read_weighting_autodiff,
    read_weighting_backward, read_weighting_forward,
)
from minimem.memory.read_write import (
    read_autodiff, read_backward, read_forward, write_autodiff, write_backward, write_forward,
)
from minimem.memory.sparse_link import (
    SparseLinkCache, sparse_link_autodiff, sparse_link_backward, sparse_link_forward,
)


class MemoryState(NamedTuple):
    """The memory side of the DNC state (spec B.2); all zeros at a sequence start."""
    M: np.ndarray        # (B, N, W) memory M_t
    u: np.ndarray        # (B, N) usage u_t
    p: np.ndarray        # (B, N) precedence p_t
    L: np.ndarray        # (B, N, N) temporal links L_t, zero diagonal
    w_w: np.ndarray      # (B, N) write weighting w^w_t
    w_r: np.ndarray      # (B, R, N) read weightings w^{r,i}_t
    r: np.ndarray        # (B, R, W) read vectors r^i_t


class AccessCache(NamedTuple):
    retention: object        # step 5, RetentionCache
    usage: object            # step 6, UsageCache
    allocation: object       # step 7, AllocationCache
    write_content: object    # step 8, ContentCache
    write_weighting: object  # step 9, WriteWeightingCache
    write: object            # step 10, WriteCache
    link: object             # step 11, LinkCache
    precedence: object       # step 12, PrecedenceCache
    directional: object      # step 13, DirectionalCache
    read_content: object     # step 14, ContentCache
    read_weighting: object   # step 15, ReadWeightingCache
    read: object             # step 16, ReadCache
    psi: np.ndarray          # (B, N) retention psi_t (kept for plots and tests)
    a: np.ndarray            # (B, N) allocation weighting a_t
    phi: np.ndarray          # (B, N) int, the free list used (constant of the backward pass)
    usage_w_w: np.ndarray    # (B, N) the w^w_{t-1} the usage update used


def access_forward(state: MemoryState, iface: Interface, write_grad: bool = True,
                   eps_a: float = ALLOCATION_EPS, phi: np.ndarray | None = None,
                   usage_w_w: np.ndarray | None = None, link_K: int | None = None,
                   link_choice=None, link_out: np.ndarray | None = None) -> tuple[MemoryState, AccessCache]:
    """One step of memory access, spec B.3 steps 5-16 (the module docstring lists them).

    Args:
        state: MemoryState at t-1 (state.r is not used here; it feeds the controller).
        iface: Interface at t from minimem.memory.dnc_interface.interface_forward.
        write_grad: True (paper) differentiates u_t w.r.t. w^w_{t-1}; False is deepmind/dnc's
            stop-gradient [B.4, B.10.4].
        eps_a: usage floor of the allocation [B.3 step 7, B.10.5].
        phi: (B, N) int free list to replay instead of sorting (None: sort, ties to the lower slot).
        usage_w_w: (B, N) value of w^w_{t-1} to use inside the usage update (None: state.w_w). A
            recorded copy lets finite differences replay deepmind mode's stop-gradient constant.
        link_K: None for the dense link of step 11; K for the sparse link of spec B.10.9.
        link_choice: SparseLinkChoice to replay (sparse link only; None: choose afresh).
        link_out: optional (B, N, N) array for the dense link update to write L_t into (see
            linkage.link_forward's `out`); None: a new array.
    Returns:
        MemoryState at t, and the cache for access_backward.
    """
    M_prev, u_prev, p_prev, L_prev, w_w_prev, w_r_prev, _ = state
    w_w_in_usage = w_w_prev if usage_w_w is None else usage_w_w
    psi, c_retention = retention_forward(iface.free_gates, w_r_prev)                # 5. (B, N)
    u, c_usage = usage_forward(u_prev, w_w_in_usage, psi, write_grad)               # 6. (B, N)
    a, c_alloc = allocation_forward(u, phi=phi, eps=eps_a)                          # 7. (B, N)
    c_w, c_wc = content_forward(M_prev, iface.k_w, iface.beta_w)                   # 8. (B, 1, N)
    w_w, c_ww = write_weighting_forward(a, c_w[:, 0], iface.g_a, iface.g_w)        # 9. (B, N)
    M, c_write = write_forward(M_prev, w_w[:, None], iface.e, iface.nu)            # 10. (B, N, W)
    if link_K is None:
        L, c_link = link_forward(L_prev, w_w, p_prev, out=link_out)                # 11. (B, N, N)
    else:
        L, c_link = sparse_link_forward(L_prev, w_w, p_prev, link_K, link_choice)  # 11. B.10.9
    p, c_prec = precedence_forward(p_prev, w_w)                                    # 12. (B, N)
    (f, b), c_dir = directional_forward(L, w_r_prev)                               # 13. (B, R, N) each
    c_r, c_rc = content_forward(M, iface.k_r, iface.beta_r)                        # 14. (B, R, N)
    w_r, c_rw = read_weighting_forward(b, c_r, f, iface.pi)                        # 15. (B, R, N)
    r, c_read = read_forward(M, w_r)                                               # 16. (B, R, W)
    cache = AccessCache(c_retention, c_usage, c_alloc, c_wc, c_ww, c_write, c_link, c_prec, c_dir, c_rc,
                        c_rw, c_read, psi, a, c_alloc.phi, w_w_in_usage)
    return MemoryState(M, u, p, L, w_w, w_r, r), cache


def _add_into(fresh: np.ndarray, other: np.ndarray) -> np.ndarray:
    """fresh + other, written into `fresh` (an array the caller owns) when that keeps the dtype the
    sum would have; otherwise a new array. Saves a (B, N, N) or (B, N, W) allocation per step."""
    if fresh.shape == other.shape and fresh.dtype == np.result_type(fresh, other):
        fresh += other
        return fresh
    return fresh + other


def access_backward(dstate: MemoryState, cache: AccessCache) -> tuple[MemoryState, Interface]:
    """Adjoint of access_forward: walks steps 16 back to 5.

    Args:
        dstate: gradients w.r.t. the NEW state (M_t, u_t, p_t, L_t, w^w_t, w^r_t, r_t): everything
            that later steps and this step's output sent back.
    Returns:
        (dstate_prev, dinterface): gradients w.r.t. the state at t-1 (its r entry is zero: r_{t-1}
        reaches the loss only through the controller) and w.r.t. every Interface field.
    """
    dM, du, dp, dL, dw_w, dw_r, dr = dstate
    dM_read, dw_r_read = read_backward(dr, cache.read)                             # 16.
    # Sums of gradients are accumulated in place into arrays the primitives just created (never
    # into the upstream dstate), see _add_into.
    dM = _add_into(dM_read, dM)
    dw_r = _add_into(dw_r_read, dw_r)
    db, dc_r, df, dpi = read_weighting_backward(dw_r, cache.read_weighting)        # 15.
    dM_content, dk_r, dbeta_r = content_backward(dc_r, cache.read_content)         # 14.
    dM = _add_into(dM, dM_content)
    dL_dir, dw_r_prev = directional_backward((df, db), cache.directional)          # 13.
    dL = _add_into(dL_dir, dL)
    dp_prev, dw_w_prec = precedence_backward(dp, cache.precedence)                 # 12.
    if isinstance(cache.link, SparseLinkCache):
        dL_prev, dw_w_link, dp_prev_link = sparse_link_backward(dL, cache.link)    # 11. B.10.9
    else:                                                                          # 11. (dL is ours)
        dL_prev, dw_w_link, dp_prev_link = link_backward(dL, cache.link, overwrite_dL=True)
    dp_prev = dp_prev + dp_prev_link
    dM_prev, dw_w_write, de, dnu = write_backward(dM, cache.write)                 # 10.
    dw_w = dw_w + dw_w_prec + dw_w_link + dw_w_write[:, 0]
    da, dc_w, dg_a, dg_w = write_weighting_backward(dw_w, cache.write_weighting)   # 9.
    dM_wc, dk_w, dbeta_w = content_backward(dc_w[:, None], cache.write_content)    # 8.
    dM_prev = _add_into(dM_prev, dM_wc)
    du = du + allocation_backward(da, cache.allocation)                            # 7.
    du_prev, dw_w_prev, dpsi = usage_backward(du, cache.usage)                     # 6.
    dfree, dw_r_prev_retention = retention_backward(dpsi, cache.retention)         # 5.
    dw_r_prev = dw_r_prev + dw_r_prev_retention
    dstate_prev = MemoryState(dM_prev, du_prev, dp_prev, dL_prev, dw_w_prev, dw_r_prev, np.zeros_like(dr))
    dinterface = Interface(k_r=dk_r, beta_r=dbeta_r, k_w=dk_w, beta_w=dbeta_w, e=de, nu=dnu,
                           free_gates=dfree, g_a=dg_a, g_w=dg_w, pi=dpi)
    return dstate_prev, dinterface


def access_autodiff(state: MemoryState, iface: Interface, write_grad: bool = True,
                    eps_a: float = ALLOCATION_EPS, phi: np.ndarray | None = None,
                    usage_w_w: np.ndarray | None = None, link_K: int | None = None,
                    link_choice=None) -> MemoryState:
    """Autodiff twin of access_forward: state and iface hold Tensors; returns a MemoryState of Tensors.

    Without phi the allocation sorts the Tensor values itself; with write_grad=False the usage
    update detaches w^w_{t-1} (or uses the constant usage_w_w when given).
    """
    M_prev, u_prev, p_prev, L_prev, w_w_prev, w_r_prev, _ = state
    w_w_in_usage = w_w_prev if usage_w_w is None else ad.Tensor(usage_w_w)
    B = w_w_prev.shape[0]
    N = w_w_prev.shape[-1]
    psi = retention_autodiff(iface.free_gates, w_r_prev)                           # 5.
    u = usage_autodiff(u_prev, w_w_in_usage, psi, write_grad)                      # 6.
    a = allocation_autodiff(u, phi=phi, eps=eps_a)                                 # 7.
    c_w = content_autodiff(M_prev, iface.k_w, iface.beta_w)                        # 8. (B, 1, N)
    w_w = write_weighting_autodiff(a, ad.reshape(c_w, (B, N)), iface.g_a, iface.g_w)  # 9.
    M = write_autodiff(M_prev, ad.reshape(w_w, (B, 1, N)), iface.e, iface.nu)      # 10.
    L = link_autodiff(L_prev, w_w, p_prev) if link_K is None \
        else sparse_link_autodiff(L_prev, w_w, p_prev, link_K, link_choice)       # 11.
    p = precedence_autodiff(p_prev, w_w)                                           # 12.
    f, b = directional_autodiff(L, w_r_prev)                                       # 13.
    c_r = content_autodiff(M, iface.k_r, iface.beta_r)                             # 14.
    w_r = read_weighting_autodiff(b, c_r, f, iface.pi)                             # 15.
    r = read_autodiff(M, w_r)                                                      # 16.
    return MemoryState(M, u, p, L, w_w, w_r, r)
