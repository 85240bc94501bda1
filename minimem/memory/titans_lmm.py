"""The Titans neural long-term memory recurrence: surprise, momentum, forgetting, and the chunked
parallel form (Behrouz et al., 2024, arXiv:2501.00663, sections 3.1-3.2; spec specs/titans_mnm.md
A3.4, A3.5, A4.2). Memory primitives (read, inner gradient, ADJ) are in titans_memory.

Shapes: T time, B batch, H heads, d key/value width, n tokens in a chunk (n <= b, the chunk size).
Memory state: M = (W_1, ..., W_L), W_l (B, H, n_{l-1}, n_l); momentum S likewise.
Inputs: q, k, v (T, B, H, d); gates alpha, eta, theta (T, B, H).
Equations (spec numbering; paper eqs. 9-10, 13-18):
    (A12) u_t = grad_M l(M_{t-1}; k_t, v_t)              momentary surprise (sequential model)
    (A16) u_t = grad_M l(M_s; k_t, v_t)                  chunked model: s = chunk start, t' = b floor((t-1)/b)
    (A13) S_t = eta_t S_{t-1} - theta_t u_t              past surprise (momentum), eq. 14
    (A14) M_t = (1 - alpha_t) M_{t-1} + S_t              forgetting (weight decay), eq. 13
    (A15) y_t = M_t(q_t)                                 read after write (y_t = M_{t-1}(q_t) when
                                                          read_after_write=False), eq. 15
Chunk matrices (A3.5), for a chunk with local tokens tau = 1..n, A_tau = 1 - alpha_tau, E_tau = eta_tau:
    P_A[r, i] = prod_{j=i+1}^{r} A_j, P_E likewise (0 <= i <= r <= n, index 0 = chunk start),
    computed from differences of cumulative logs with exact zeros counted apart (alpha = 1 or
    eta = 0 are allowed), masked above the diagonal before exponentiation;
    LA = P_A[1:, 1:], LE = P_E[1:, 1:], Kmat = LA @ LE, beta = P_A[1:, 0], m = LA @ P_E[1:, 0];
    (A17) M_tau = beta_tau M_s + m_tau S_s - sum_{i<=tau} Kmat[tau, i] theta_i u_i
    (A18) S_tau = P_E[tau, 0] S_s - sum_{i<=tau} LE[tau, i] theta_i u_i
    each computed as one matrix product per weight: rows tau = 0..n, columns [M_s, S_s, u_1..u_n]
    (A19) linear memory, dual form: Y = diag(beta) Q M_s + diag(m) Q S_s - 2 ((Kmat * Q K^T) diag(theta)) E
Backward (A4.2): the adjoints of the states inside a chunk are linear recurrences too,
    GM_t = R_t + A_{t+1} GM_{t+1}  ->  GM = LA^T R,       GS_t = GM_t + E_{t+1} GS_{t+1}  ->  GS = LE^T GM + LE[n, :] GS_in
(R_t: the direct gradient of M_t from the reads, plus the incoming dM at t = n), then
    d alpha_t = -<GM_t, M_{t-1}>,  d eta_t = <GS_t, S_{t-1}>,  d theta_t = -<GS_t, u_t>,  du_t = -theta_t GS_t,
    dM_s = R_0 + A_1 GM_1 + sum_t ADJ(M_s, k_t, v_t; du_t),  dS_s = E_1 GS_1.
<.,.> sums over every weight matrix of the memory. The ADJ term is the second-order part: keys and
values reach the output only through u_t, so without it dk = dv = 0 (pitfall P1).

Three implementations, which the tests hold equal:
    lmm_scan_forward / lmm_scan_backward        the fast path: loop over chunks, matrices inside
    lmm_reference_forward / _backward           the definition: loop over tokens, the literal A4.2 loop
    lmm_scan_autodiff                           minimem.autodiff, inner gradient with create_graph
chunk = 1 is exactly the sequential (token-by-token) model; chunk > 1 is a different model (P2).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from minimem import autodiff as ad
from minimem.memory.titans_memory import (
    check_activation, check_memory, mem_inner_grad_adjoint, mem_inner_grad_autodiff, mem_inner_grad_forward,
    mem_read_autodiff, mem_read_backward, mem_read_forward,
)


# ----------------------------------------------------------------- input validation
def check_scan_inputs(M0, S0, q, k, v, alpha, eta, theta, chunk) -> None:
    """ValueError naming the expected shape when the recurrence's inputs do not fit together."""
    if q.ndim != 4 or q.shape[0] == 0:
        raise ValueError(f"q must have shape (T, B, H, d) with T >= 1; got {q.shape}")
    T, B, H, d = q.shape
    for name, x in (("k", k), ("v", v)):
        if x.shape != q.shape:
            raise ValueError(f"{name} must have the shape of q (T, B, H, d) = {q.shape}; got {x.shape}")
    for name, g in (("alpha", alpha), ("eta", eta), ("theta", theta)):
        if g.shape != (T, B, H):
            raise ValueError(f"{name} must have shape (T, B, H) = {(T, B, H)}; got {g.shape}")
        if not np.all(np.isfinite(g)):
            raise ValueError(f"{name} must be finite")
    for name, g in (("alpha", alpha), ("eta", eta)):
        if np.any(g < 0) or np.any(g > 1):
            raise ValueError(f"{name} must lie in [0, 1]")
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk size b must be an integer >= 1; got {chunk!r}")
    widths = check_memory(M0, d)
    if not isinstance(S0, (tuple, list)) or len(S0) != len(M0):
        raise ValueError(f"S0 must be a tuple of {len(M0)} arrays shaped like M0")
    for l, (M, S) in enumerate(zip(M0, S0), start=1):
        expected = (B, H, widths[l - 1], widths[l])
        if M.shape != expected or S.shape != expected:
            raise ValueError(f"M0 and S0 layer {l} must have shape (B, H, n_{l - 1}, n_{l}) = {expected}; "
                             f"got {M.shape} and {S.shape}")


# ----------------------------------------------------------------- chunk matrices
def decay_products(A: np.ndarray) -> np.ndarray:
    """P (..., n+1, n+1) with P[r, i] = prod_{j=i+1}^{r} A_j for i <= r and 0 above the diagonal.

    A: (..., n) factors in [0, 1] along the last axis (A_j = A[..., j-1]). The product is
    exp(c_r - c_i) of cumulative logs, masked before exponentiation (never overflows); an exact
    zero factor is counted apart, so a product is 0 exactly when it spans a zero (alpha = 1
    clears the memory, eta = 0 has no momentum)."""
    n = A.shape[-1]
    zero = A == 0
    logs = np.log(np.where(zero, 1.0, A))
    start = np.zeros(A.shape[:-1] + (1,))
    c = np.concatenate([start, np.cumsum(logs, axis=-1)], axis=-1)          # (..., n+1)
    cz = np.concatenate([start, np.cumsum(zero, axis=-1)], axis=-1)
    lower = np.tril(np.ones((n + 1, n + 1), dtype=bool))
    diff = np.where(lower, c[..., :, None] - c[..., None, :], 0.0)           # (..., n+1, n+1)
    keep = lower & (cz[..., :, None] == cz[..., None, :])
    return np.where(keep, np.exp(diff), 0.0).astype(A.dtype, copy=False)


def chunk_matrices(alpha: np.ndarray, eta: np.ndarray):
    """The matrices of (A17)-(A18) for one chunk, in the spec's names.

    Args:
        alpha, eta: (n, B, H) the chunk's gates.
    Returns:
        beta (B, H, n), m (B, H, n), Kmat (B, H, n, n), LE (B, H, n, n): beta_tau = prod_{j<=tau} A_j,
        m = LA @ exp(cE), Kmat = LA @ LE, LE[r, i] = prod_{j=i+1}^{r} E_j (lower triangular).
    """
    PA, PE = decay_products(np.moveaxis(1.0 - alpha, 0, -1)), decay_products(np.moveaxis(eta, 0, -1))
    LA, LE = PA[..., 1:, 1:], PE[..., 1:, 1:]
    return PA[..., 1:, 0], (LA @ PE[..., 1:, 0:1])[..., 0], LA @ LE, LE


def _inner(Xs: Sequence[np.ndarray], Ys: Sequence[np.ndarray]) -> np.ndarray:
    """<X, Y> summed over every weight matrix: (..., a, b) pairs -> (...)."""
    return sum(np.sum(X * Y, axis=(-2, -1)) for X, Y in zip(Xs, Ys))


def _flat(X: np.ndarray) -> np.ndarray:
    """(B, H, n, a, b) -> (B, H, n, a b), so a (B, H, ., n) matrix mixes whole weight matrices."""
    return X.reshape(X.shape[:3] + (-1,))


# ----------------------------------------------------------------- one chunk: matrix form
# Inside a chunk the token axis sits after (B, H): keys (B, H, n, d) share the chunk-start weights
# (B, H, ., .) as the rows of one matrix product, and per-token weights are (B, H, n, ., .), so
# the token-mixing matrices of (A17)-(A18) act on contiguous (B, H, n, |W|) blocks by BLAS.
class ChunkCache(NamedTuple):
    M_s: tuple           # chunk-start weights, L arrays (B, H, ., .)
    gates: tuple         # alpha, eta, theta (B, H, n)
    us: tuple            # per-token surprises u_t at M_s, L arrays (B, H, n, ., .)
    inner: object        # InnerGradCache of the surprises
    LA: np.ndarray       # (B, H, n, n)
    LE: np.ndarray       # (B, H, n, n)
    Ms: tuple            # M_0 = M_s, M_1 .. M_n, L arrays (B, H, n+1, ., .)
    Ss: tuple            # S_0 = S_s, S_1 .. S_n (only S_0, S_n when computed without all_momenta)
    read: object         # ReadCache of the n reads
    read_after_write: bool


def lmm_chunk_forward(M_s, S_s, q, k, v, alpha, eta, theta, phi: str = "silu", read_after_write: bool = True,
                      all_momenta: bool = True):
    """One chunk of the chunked LMM, eqs. (A16), (A17)-(A18), (A15), in matrix form.

    Args:
        M_s, S_s: chunk-start memory and momentum, tuples of L arrays (B, H, n_{l-1}, n_l).
        q, k, v: (n, B, H, d) the chunk's queries, keys and values; alpha, eta, theta: (n, B, H).
        all_momenta: compute every S_tau (the backward needs them); False computes only S_n.
    Returns:
        y (n, B, H, d), the chunk-end state (M_n, S_n), and the cache for lmm_chunk_backward.
    """
    q, k, v = (np.moveaxis(x, 0, 2) for x in (q, k, v))          # (B, H, n, d)
    alpha, eta, theta = (np.moveaxis(g, 0, -1) for g in (alpha, eta, theta))   # (B, H, n)
    B, H, n = alpha.shape
    us, _, inner = mem_inner_grad_forward(M_s, k, v, phi)        # (A16): every u_t at M_s, (B, H, n, ., .)
    PA, PE = decay_products(1.0 - alpha), decay_products(eta)    # (B, H, n+1, n+1)
    LA, LE = PA[..., 1:, 1:], PE[..., 1:, 1:]                    # (B, H, n, n)
    # (A17) and (A18) as one product each: rows M_0..M_n (S_0..S_n), columns [M_s, S_s, u_1..u_n]
    P_M = np.zeros((B, H, n + 1, n + 2), dtype=alpha.dtype)
    P_M[..., 0, 0] = 1.0
    P_M[..., 1:, 0] = PA[..., 1:, 0]                             # beta_tau
    P_M[..., 1:, 1] = (LA @ PE[..., 1:, 0:1])[..., 0]            # m_tau = LA @ exp(cE)
    P_M[..., 1:, 2:] = -(LA @ LE) * theta[..., None, :]          # -Kmat[tau, i] theta_i
    P_S = np.zeros((B, H, n + 1, n + 2), dtype=alpha.dtype)
    P_S[..., 0, 1] = 1.0
    P_S[..., 1:, 1] = PE[..., 1:, 0]                             # exp(cE_tau)
    P_S[..., 1:, 2:] = -LE * theta[..., None, :]                 # -LE[tau, i] theta_i
    if not all_momenta:
        P_S = P_S[..., [0, n], :]                                # S_s and S_n only
    Ms, Ss = [], []
    for M0, S0, u in zip(M_s, S_s, us):
        X = _flat(np.concatenate([M0[:, :, None], S0[:, :, None], u], axis=2))   # (B, H, n+2, |W|)
        Ms.append((P_M @ X).reshape((B, H, n + 1) + M0.shape[2:]))              # (A17)
        Ss.append((P_S @ X).reshape((B, H, -1) + M0.shape[2:]))                 # (A18)
    read_weights = tuple(M[:, :, 1:] if read_after_write else M[:, :, :-1] for M in Ms)
    y, read = mem_read_forward(read_weights, q, phi)             # (A15), one weight set per token
    cache = ChunkCache(tuple(M_s), (alpha, eta, theta), us, inner, LA, LE, tuple(Ms), tuple(Ss), read,
                       read_after_write)
    return np.moveaxis(y, 2, 0), (tuple(M[:, :, -1] for M in Ms), tuple(S[:, :, -1] for S in Ss)), cache


def lmm_chunk_backward(dy: np.ndarray, cache: ChunkCache, dM_n: Sequence[np.ndarray],
                       dS_n: Sequence[np.ndarray], second_order: bool = True):
    """Adjoint of lmm_chunk_forward (A4.2, the token loop solved in matrix form; see the module
    docstring). dy (n, B, H, d) is the reads' gradient; dM_n, dS_n the gradients of the chunk-end
    state arriving from later chunks (carried). second_order=False drops the ADJ term: wrong on
    purpose, for demonstrating pitfall P1 only.

    Returns:
        dq, dk, dv (n, B, H, d); dalpha, deta, dtheta (n, B, H); dM_s, dS_s (tuples like M_s).
    """
    alpha, eta, theta = cache.gates                              # (B, H, n)
    B, H, n = alpha.shape
    dq, dM_read = mem_read_backward(np.moveaxis(dy, 0, 2), cache.read)   # per-token (B, H, n, ., .)
    GMs, GSs, dM_s, dS_s = [], [], [], []
    for l, dR in enumerate(dM_read):
        shape = cache.Ms[l].shape
        R = np.zeros(shape[:3] + (dR[0, 0, 0].size,), dtype=dR.dtype)  # direct gradient of M_0 .. M_n
        if cache.read_after_write:
            R[:, :, 1:] += _flat(dR)                             # token tau read M_tau
        else:
            R[:, :, :-1] += _flat(dR)                            # token tau read M_{tau-1}
        R[:, :, n] += dM_n[l].reshape(B, H, -1)
        GM = np.swapaxes(cache.LA, -1, -2) @ R[:, :, 1:]         # GM_t = sum_{tau>=t} LA[tau, t] R_tau
        GS = np.swapaxes(cache.LE, -1, -2) @ GM + cache.LE[..., n - 1, :, None] * dS_n[l].reshape(B, H, 1, -1)
        GMs.append(GM.reshape(shape[:2] + (n,) + shape[3:]))     # (B, H, n, ., .)
        GSs.append(GS.reshape(shape[:2] + (n,) + shape[3:]))
        dM_s.append((R[:, :, 0] + (1.0 - alpha[..., 0:1]) * GM[:, :, 0]).reshape(dM_n[l].shape))   # M_1 = A_1 M_s + S_1
        dS_s.append((eta[..., 0:1] * GS[:, :, 0]).reshape(dS_n[l].shape))                          # S_1 = E_1 S_s - ...
    dalpha = -_inner(GMs, [M[:, :, :-1] for M in cache.Ms])     # (B, H, n)
    deta = _inner(GSs, [S[:, :, :-1] for S in cache.Ss])
    dtheta = -_inner(GSs, cache.us)
    dus = tuple(-theta[..., None, None] * GS for GS in GSs)
    if second_order:                                             # u_t = grad l(M_s; k_t, v_t): ADJ
        dM_inner, dk, dv = mem_inner_grad_adjoint(dus, cache.inner)
        dM_s = [a + b for a, b in zip(dM_s, dM_inner)]
    else:
        dk, dv = np.zeros_like(dq), np.zeros_like(dq)
    time_first = lambda x: np.moveaxis(x, 2, 0)
    gates_first = lambda g: np.moveaxis(g, -1, 0)
    return (time_first(dq), time_first(dk), time_first(dv), gates_first(dalpha), gates_first(deta),
            gates_first(dtheta), tuple(dM_s), tuple(dS_s))


# ----------------------------------------------------------------- the sequence: loop over chunks
class ScanCache(NamedTuple):
    inputs: tuple        # q, k, v (T, B, H, d), alpha, eta, theta (T, B, H)
    starts: tuple        # (M_s, S_s) at the start of every chunk (checkpoints)
    chunk: int
    phi: str
    read_after_write: bool


def lmm_scan_forward(M0, S0, q, k, v, alpha, eta, theta, chunk: int = 1, phi: str = "silu",
                     read_after_write: bool = True):
    """The LMM recurrence over a sequence, chunk by chunk (A16-A18, A15); chunk = 1 is the
    sequential model (A12-A15). A last chunk shorter than b is processed as it is (A9 item 15).

    Args:
        M0, S0: initial memory and momentum, tuples of L arrays (B, H, n_{l-1}, n_l).
        q, k, v: (T, B, H, d); alpha, eta in [0, 1] and theta: (T, B, H).
        chunk: chunk size b >= 1. phi: memory activation. read_after_write: y_t = M_t(q_t) if True,
            M_{t-1}(q_t) if False.
    Returns:
        y (T, B, H, d), the final state (M_T, S_T), and the cache for lmm_scan_backward, which
        keeps only the chunk-start states (memory O((T/b + b) |M|); chunks are recomputed).
    """
    check_activation(phi)
    check_scan_inputs(M0, S0, q, k, v, alpha, eta, theta, chunk)
    T = q.shape[0]
    y = np.empty(q.shape, dtype=np.result_type(q, M0[0]))
    M, S = tuple(M0), tuple(S0)
    starts = []
    for s in range(0, T, chunk):
        e = min(s + chunk, T)
        starts.append((M, S))
        y[s:e], (M, S), _ = lmm_chunk_forward(M, S, q[s:e], k[s:e], v[s:e], alpha[s:e], eta[s:e],
                                              theta[s:e], phi, read_after_write, all_momenta=False)
    cache = ScanCache((q, k, v, alpha, eta, theta), tuple(starts), int(chunk), phi, read_after_write)
    return y, (M, S), cache


def lmm_scan_backward(dy: np.ndarray, cache: ScanCache, dstate: tuple | None = None, second_order: bool = True):
    """Adjoint of lmm_scan_forward: chunks last to first, each recomputed from its start state.

    Args:
        dy: (T, B, H, d) the gradient of the reads.
        dstate: (dM_T, dS_T), gradients of the final state if it was used downstream, or None.
        second_order: False drops the ADJ terms (pitfall P1; tests only).
    Returns:
        (dq, dk, dv) each (T, B, H, d), (dalpha, deta, dtheta) each (T, B, H), (dM0, dS0).
    """
    q, k, v, alpha, eta, theta = cache.inputs
    if dy.shape != q.shape:
        raise ValueError(f"dy must have the shape of y (T, B, H, d) = {q.shape}; got {dy.shape}")
    T = q.shape[0]
    dq, dk, dv = np.empty_like(dy), np.empty_like(dy), np.empty_like(dy)
    dalpha, deta, dtheta = (np.empty(alpha.shape, dtype=dy.dtype) for _ in range(3))
    M_end = cache.starts[0][0]
    GM = tuple(np.zeros_like(M) for M in M_end) if dstate is None else tuple(dstate[0])
    GS = tuple(np.zeros_like(M) for M in M_end) if dstate is None else tuple(dstate[1])
    for c in reversed(range(len(cache.starts))):
        s, e = c * cache.chunk, min((c + 1) * cache.chunk, T)
        M_s, S_s = cache.starts[c]
        _, _, chunk_cache = lmm_chunk_forward(M_s, S_s, q[s:e], k[s:e], v[s:e], alpha[s:e], eta[s:e],
                                              theta[s:e], cache.phi, cache.read_after_write)
        (dq[s:e], dk[s:e], dv[s:e], dalpha[s:e], deta[s:e], dtheta[s:e], GM, GS) = lmm_chunk_backward(
            dy[s:e], chunk_cache, GM, GS, second_order)
    return (dq, dk, dv), (dalpha, deta, dtheta), (GM, GS)


# ----------------------------------------------------------------- the definition: loop over tokens
class ReferenceStep(NamedTuple):
    M_prev: tuple        # M_{t-1}
    S_prev: tuple        # S_{t-1}
    us: tuple            # u_t, L arrays (B, H, ., .)
    inner: object        # InnerGradCache
    read: object         # ReadCache


def lmm_reference_forward(M0, S0, q, k, v, alpha, eta, theta, chunk: int = 1, phi: str = "silu",
                          read_after_write: bool = True):
    """(A12)/(A16), (A13), (A14), (A15) literally, one token at a time: the reference the chunked
    matrix form is tested against (same arguments and returns as lmm_scan_forward; the cache
    holds every M_{t-1} and S_{t-1})."""
    check_activation(phi)
    check_scan_inputs(M0, S0, q, k, v, alpha, eta, theta, chunk)
    T = q.shape[0]
    y = np.empty(q.shape, dtype=np.result_type(q, M0[0]))
    M, S = tuple(M0), tuple(S0)
    steps = []
    for t in range(T):
        if t % chunk == 0:
            M_s = M                                              # the chunk's starting weights
        us, _, inner = mem_inner_grad_forward(M_s, k[t], v[t], phi)                 # (A16); (A12) if b = 1
        S_new = tuple(eta[t, ..., None, None] * S_l - theta[t, ..., None, None] * u for S_l, u in zip(S, us))  # (A13)
        M_new = tuple((1.0 - alpha[t, ..., None, None]) * M_l + S_l for M_l, S_l in zip(M, S_new))          # (A14)
        y[t], read = mem_read_forward(M_new if read_after_write else M, q[t], phi)   # (A15)
        steps.append(ReferenceStep(M, S, us, inner, read))
        M, S = M_new, S_new
    return y, (M, S), (steps, (alpha, eta, theta), int(chunk), read_after_write)


def lmm_reference_backward(dy: np.ndarray, cache, dstate: tuple | None = None, second_order: bool = True):
    """The adjoint recipe of A4.2 line by line (tokens last to first inside chunks last to first,
    then the ADJ terms at the chunk start). Same returns as lmm_scan_backward."""
    steps, (alpha, eta, theta), chunk, read_after_write = cache
    T = len(steps)
    dq, dk, dv = np.empty_like(dy), np.empty_like(dy), np.empty_like(dy)
    dalpha, deta, dtheta = (np.empty(alpha.shape, dtype=dy.dtype) for _ in range(3))
    GM = [np.zeros_like(M) for M in steps[0].M_prev] if dstate is None else list(dstate[0])
    GS = [np.zeros_like(M) for M in steps[0].M_prev] if dstate is None else list(dstate[1])
    for s in reversed(range(0, T, chunk)):
        chunk_tokens = range(s, min(s + chunk, T))
        dus = {}
        for t in reversed(chunk_tokens):
            step = steps[t]
            dq[t], dM_ret = mem_read_backward(dy[t], step.read)
            if read_after_write:
                GM = [G + dR for G, dR in zip(GM, dM_ret)]       # GM <- GM + dM_t^ret
            GS = [G + H for G, H in zip(GS, GM)]                 # GS <- GS + GM  (= dL/dS_t)
            dalpha[t] = -_inner(GM, step.M_prev)
            deta[t] = _inner(GS, step.S_prev)
            dtheta[t] = -_inner(GS, step.us)
            dus[t] = tuple(-theta[t, ..., None, None] * G for G in GS)
            GM = [(1.0 - alpha[t, ..., None, None]) * G for G in GM]
            GS = [eta[t, ..., None, None] * G for G in GS]
            if not read_after_write:
                GM = [G + dR for G, dR in zip(GM, dM_ret)]       # the read of token t used M_{t-1}
        for t in chunk_tokens:                                   # second-order terms of (A16)
            if second_order:
                dM_s, dk[t], dv[t] = mem_inner_grad_adjoint(dus[t], steps[t].inner)
                GM = [G + dM for G, dM in zip(GM, dM_s)]
            else:
                dk[t], dv[t] = 0.0, 0.0
    return (dq, dk, dv), (dalpha, deta, dtheta), (tuple(GM), tuple(GS))


# ----------------------------------------------------------------- autodiff twin
def lmm_scan_autodiff(M0, S0, q, k, v, alpha, eta, theta, chunk: int = 1, phi: str = "silu",
                      read_after_write: bool = True):
    """Autodiff twin of lmm_scan_forward: y (T, B, H, d) and the final (M_T, S_T), as Tensors.

    The surprises of a chunk are computed by minimem.autodiff (ad.grad with create_graph=True, at
    the chunk's starting weights), and momentum and decay run token by token (A13)-(A14), so this
    engine shares neither the closed-form gradients, their adjoint, nor the matrix form with the
    manual one. Its cost grows quadratically with T (each inner ad.grad walks the graph so far):
    meant for checks on short sequences."""
    check_activation(phi)
    T = q.shape[0]
    M, S = [ad.as_tensor(W) for W in M0], [ad.as_tensor(W) for W in S0]
    ys = []
    B, H = alpha.shape[1:]
    for s in range(0, T, chunk):
        e = min(s + chunk, T)
        k_chunk, v_chunk = (ad.transpose(ad.as_tensor(x)[s:e], (1, 2, 0, 3)) for x in (k, v))   # (B, H, n, d)
        us = mem_inner_grad_autodiff(M, k_chunk, v_chunk, phi)   # (A16) per token (B, H, n, ., .)
        for i, t in enumerate(range(s, e)):
            a_t, e_t, th_t = (ad.reshape(g[t], (B, H, 1, 1)) for g in (alpha, eta, theta))
            S = [e_t * S_l - th_t * u[:, :, i] for S_l, u in zip(S, us)]             # (A13)
            M_prev = M
            M = [(1.0 - a_t) * M_l + S_l for M_l, S_l in zip(M, S)]                  # (A14)
            ys.append(mem_read_autodiff(M if read_after_write else M_prev, q[t], phi))   # (A15)
    return ad.stack(ys, axis=0), (tuple(M), tuple(S))


# ----------------------------------------------------------------- linear memory: dual form (A19)
def linear_dual_chunk_read(M_s: np.ndarray, S_s: np.ndarray, q, k, v, alpha, eta, theta) -> np.ndarray:
    """Reads of one chunk of a linear memory without materialising per-token weights, eq. (A19)
    (read after write): Y = diag(beta) Q M_s + diag(m) Q S_s - 2 ((Kmat * Q K^T) diag(theta)) E,
    E = K M_s - V.

    Args:
        M_s, S_s: (B, H, d, d) chunk-start weight and momentum.
        q, k, v: (n, B, H, d); alpha, eta, theta: (n, B, H).
    Returns:
        y (n, B, H, d), equal to lmm_chunk_forward's reads for L_M = 1.
    """
    beta, m, Kmat, _ = chunk_matrices(alpha, eta)
    Q, K, V = (np.moveaxis(x, 0, 2) for x in (q, k, v))         # (B, H, n, d)
    E = K @ M_s - V                                              # (B, H, n, d)
    scores = Kmat * (Q @ np.swapaxes(K, -1, -2)) * np.moveaxis(theta, 0, -1)[..., None, :]   # (B, H, n, n)
    Y = beta[..., None] * (Q @ M_s) + m[..., None] * (Q @ S_s) - 2.0 * scores @ E
    return np.moveaxis(Y, 2, 0)
