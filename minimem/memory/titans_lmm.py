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
    computed from cumulative logs c (exp(c_r) exp(-c_i), or exp(c_r - c_i) masked above the
    diagonal before exponentiation when c falls below -600), exact zeros counted apart (alpha = 1
    or eta = 0 are allowed);
    LA = P_A[1:, 1:], LE = P_E[1:, 1:], Kmat = LA @ LE, beta = P_A[1:, 0], m = LA @ P_E[1:, 0];
    (A17) M_tau = beta_tau M_s + m_tau S_s - sum_{i<=tau} Kmat[tau, i] theta_i u_i
    (A18) S_tau = P_E[tau, 0] S_s - sum_{i<=tau} LE[tau, i] theta_i u_i
    collected as coefficient matrices P_M and P_S (n+1, n+2): rows tau = 0..n, columns [M_s, S_s, u_1..u_n].
Dual form ((A19) carried over to any depth): every surprise is an outer product, u_{l,i} =
x_{l,i}^T delta_{l,i} (x_l the input of layer l and delta_l its error for key i at M_s, A11), so
reading the per-token weights needs only inner products with x and delta. For the n read rows
Z_l (the inputs of layer l in the reads; Z_1 = Q) and the rows (c_beta, c_m, C) of P_M the reads use:
    A_l = diag(c_beta) Z_l W_l + diag(c_m) Z_l S_l + (C * Z_l X_l^T) Delta_l       (row tau = z_tau W_{l,tau})
Per-token weights are never formed: a chunk costs O(n^2 (d + h) + n d h) per head instead of the
O(n^2 d h) of materialising the n weight sets of (A17) (the same numbers up to rounding).
(A19) linear memory, as in the paper: Y = diag(beta) Q M_s + diag(m) Q S_s - 2 ((Kmat * Q K^T) diag(theta)) E
Backward (A4.2): the adjoints of the states inside a chunk are linear recurrences too,
    GM_t = R_t + A_{t+1} GM_{t+1}  ->  GM = LA^T R,   GS_t = GM_t + E_{t+1} GS_{t+1}  ->  GS = Kmat^T R + LE[n, :]^T dS_n
(R_t: the direct gradient of M_t: rho_j^T g_j from the read of token j, rho_j its row of Z_l and
g_j = dL/dA_l, plus the incoming dM_n at t = n), then
    d alpha_t = -<GM_t, M_{t-1}>,  d eta_t = <GS_t, S_{t-1}>,  d theta_t = -<GS_t, u_t>,  du_t = -theta_t GS_t,
    dM_s = sum_tau beta_tau R_tau + sum_t ADJ(M_s, k_t, v_t; du_t),  dS_s = sum_tau m_tau R_tau + P_E[n, 0] dS_n
(beta_0 = 1, m_0 = 0). <.,.> sums over every weight matrix of the memory; in the dual form each is a
sum of small products, <rho^T g, W> = rho W g^T and <rho^T g, x^T delta> = (rho . x)(g . delta), and
ADJ takes du_t only through x_t du_t and du_t delta_t^T (mem_inner_grad_adjoint_projected). The ADJ
term is the second-order part: keys and values reach the output only through u_t, so without it
dk = dv = 0 (pitfall P1).

Three implementations, which the tests hold equal:
    lmm_scan_forward / lmm_scan_backward        the fast path: loop over chunks, dual form inside
                                                (b = 1: lmm_token_forward / _backward, the one-token
                                                chunk without the chunk matrices, 2.8-3.7x faster);
                                                the chunk caches are written into one block of memory
                                                per call (ChunkArena: fewer page faults)
    lmm_reference_forward / _backward           the definition: loop over tokens, the literal A4.2 loop
    lmm_scan_autodiff                           minimem.autodiff, inner gradient with create_graph
chunk = 1 is exactly the sequential (token-by-token) model; chunk > 1 is a different model (P2).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

from minimem import autodiff as ad
from minimem.checks import check_int
from minimem.memory.titans_memory import (
    activation_derivatives, check_activation, check_memory, mem_inner_grad_adjoint, mem_inner_grad_adjoint_projected,
    mem_inner_grad_autodiff, mem_inner_grad_forward, mem_read_autodiff, mem_read_backward, mem_read_forward,
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
    check_int("chunk size b", chunk, 1)
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

    A: (..., n) factors in [0, 1] along the last axis (A_j = A[..., j-1]). With cumulative logs
    c_r = sum_{j<=r} log A_j the product is exp(c_r - c_i). When every c_n >= -600 (the common
    case) it is formed as exp(c_r) exp(-c_i): 2 (n+1) exponentials instead of (n+1)^2, and no
    factor leaves the normal range (e^600 < 1e261), so it is as accurate as exp(c_r - c_i) (a few
    ulp; the difference c_r - c_i itself carries an error of |c| ulp). Otherwise the difference is
    masked before exponentiation (never overflows). An exact zero factor is counted apart, so a
    product is 0 exactly when it spans a zero (alpha = 1 clears the memory, eta = 0 has no momentum)."""
    n = A.shape[-1]
    zero = A == 0
    any_zero = bool(zero.any())
    logs = np.log(np.where(zero, 1.0, A) if any_zero else A)
    c = np.zeros(A.shape[:-1] + (n + 1,))
    np.cumsum(logs, axis=-1, out=c[..., 1:])                                  # (..., n+1)
    if np.min(c[..., -1]) >= -600.0:                                         # c never increases: c_n is the least
        P = np.exp(c)[..., :, None] * np.exp(np.negative(c, out=c))[..., None, :]   # (..., n+1, n+1)
    else:
        P = c[..., :, None] - c[..., None, :]                                # (..., n+1, n+1)
        # the cumulative logs never increase (every log <= 0, and rounding is monotone), so the
        # difference is <= 0 on and below the diagonal: clipping at 0 changes only the masked upper
        # part, whose exp may overflow
        np.minimum(P, 0.0, out=P)
        np.exp(P, out=P)
    P *= _lower_mask(n + 1)
    if any_zero:                                                             # (the common case has none)
        cz = np.zeros(A.shape[:-1] + (n + 1,), dtype=np.intp)
        np.cumsum(zero, axis=-1, out=cz[..., 1:])
        P *= cz[..., :, None] == cz[..., None, :]
    return P.astype(A.dtype, copy=False)


_LOWER = {}


def _lower_mask(n: int) -> np.ndarray:
    """(n, n) boolean lower triangle (diagonal included), built once per size."""
    if n not in _LOWER:
        _LOWER[n] = np.tril(np.ones((n, n), dtype=bool))
    return _LOWER[n]


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
    total = None
    for X, Y in zip(Xs, Ys):
        lead = X.shape[:-2]                                      # one dot product of the flattened matrices,
        term = (X.reshape(lead + (1, -1)) @ Y.reshape(lead + (-1, 1)))[..., 0, 0]   # 2x faster than sum(X * Y)
        total = term if total is None else total + term
    return total


def _T(X: np.ndarray) -> np.ndarray:
    """Swap the last two axes."""
    return X.swapaxes(-1, -2)


# token axis first (n, B, H, ...) <-> after (B, H) (B, H, n, ...): the ndarray method, a view, no
# np.moveaxis wrapper (its axis bookkeeping cost more than the transposes themselves, 224 calls a step)
def _tokens_inside(x: np.ndarray) -> np.ndarray:
    """(n, B, H, d) -> (B, H, n, d), or gates (n, B, H) -> (B, H, n)."""
    return x.transpose(1, 2, 0, 3) if x.ndim == 4 else x.transpose(1, 2, 0)


def _tokens_first(x: np.ndarray) -> np.ndarray:
    """(B, H, n, d) -> (n, B, H, d), or gates (B, H, n) -> (n, B, H)."""
    return x.transpose(2, 0, 1, 3) if x.ndim == 4 else x.transpose(2, 0, 1)


def _rowdot(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Row-wise dot products: (..., n, a), (..., n, a) -> (..., n)."""
    return np.vecdot(X, Y)


# ----------------------------------------------------------------- memory for the chunk caches
class ChunkArena:
    """One block of memory for the arrays a chunked scan keeps until its backward (every chunk's
    cache and chunk-start state), handed out as views in order.

    Why: each array a cache keeps is memory the forward takes fresh from the system, and every
    fresh 4 KB page costs a minor page fault (~5 us on a 2-core VM: at T = 1024, b = 64 the ~27 MB
    of chunk caches cost ~6,600 faults, ~30 ms a step, whenever the allocator has returned the
    previous step's memory). One block of >= 4 MB is given huge pages (numpy asks for them), which
    cuts the faults to a few hundred. take() falls back to a fresh array once the block is used up,
    so a wrong size only costs speed, never correctness.
    """

    def __init__(self, size: int, dtype):
        self.block = np.empty(size, dtype=dtype)
        self.used = 0

    @staticmethod
    def chunk_size(B: int, H: int, n: int, widths: Sequence[int]) -> int:
        """Numbers lmm_chunk_forward keeps for a chunk of n tokens (memory widths n_0..n_L)."""
        L = len(widths) - 1
        hidden = sum(_padded(B * H * n * widths[l]) for l in range(1, L))  # one (B, H, n, n_l) per hidden layer
        return (2 * sum(_padded(B * H * widths[l - 1] * widths[l]) for l in range(1, L + 1))   # M_n, S_n
                + 5 * hidden + sum(_padded(B * H * n * widths[l]) for l in range(1, L + 1))    # z, d1, pd2, reads' z, d1; deltas
                + L * _padded(B * H * n * n)                                                # Z_l X_l^T
                + _padded(B * H * (n + 1) ** 2) + _padded(B * H * (n + 1) * n)              # PA, K0
                + 2 * _padded(B * H * (n + 1) * (n + 2)))                                   # P_M, P_S

    def take(self, shape: tuple) -> np.ndarray:
        """An uninitialised array of this shape (a view of the block, or fresh when it is full)."""
        size = math.prod(shape)
        if self.used + size > self.block.size:
            return np.empty(shape, dtype=self.block.dtype)
        view = self.block[self.used:self.used + size].reshape(shape)
        self.used += _padded(size)
        return view

    def keep(self, x: np.ndarray) -> np.ndarray:
        """A copy of x in the block (x itself can then be freed and its memory reused)."""
        if x.dtype != self.block.dtype:
            return x.copy()
        view = self.take(x.shape)
        np.copyto(view, x)
        return view


class _FreshArrays:
    """ChunkArena's interface without a block: fresh arrays (a chunk called on its own)."""

    def __init__(self, dtype):
        self.dtype = dtype

    def take(self, shape: tuple) -> np.ndarray:
        return np.empty(shape, dtype=self.dtype)

    @staticmethod
    def keep(x: np.ndarray) -> np.ndarray:
        return x.copy()


def _padded(size: int) -> int:
    """size rounded up to a multiple of 8 numbers: every view starts on a 64-byte boundary."""
    return -(-size // 8) * 8


# ----------------------------------------------------------------- one chunk: dual form
# Inside a chunk the token axis sits after (B, H): keys (B, H, n, d) share the chunk-start weights
# (B, H, ., .) as the rows of one matrix product, and the (B, H, n, n) token-mixing matrices of
# (A17)-(A18) act on (B, H, n, .) rows of layer inputs x and errors delta, never on weights.
class ChunkCache(NamedTuple):
    M_s: tuple           # chunk-start weights, L arrays (B, H, ., .)
    S_s: tuple           # chunk-start momentum, likewise
    gates: tuple         # alpha, eta, theta (B, H, n)
    inner: object        # InnerGradCache of the surprises at M_s (x_l = zs[l-1], delta_l = deltas[l-1]),
                         # slimmed: without M(k) = zs[L] and the residual e, which the backward never reads
    PA: np.ndarray       # (B, H, n+1, n+1) decay products of A = 1 - alpha
    PE_n: np.ndarray     # (B, H, n) P_E[n, 1:], the last row of the decay products of E = eta (the
                         # backward needs no more of P_E: P_S holds the rest)
    K0: np.ndarray       # (B, H, n+1, n) Kmat with a zero row 0 on top (the chunk start)
    P_M: np.ndarray      # (B, H, n+1, n+2) (A17): M_tau = P_M[tau] . [M_s, S_s, u_1..u_n]
    P_S: np.ndarray      # (B, H, n+1, n+2) (A18)
    rows: list           # Z_1 = q, Z_2 .. Z_L: the read inputs of every layer (B, H, n, .)
    zx: list             # Z_l X_l^T (B, H, n, n): [j, i] = rho_j . x_i, every layer
    d1: list             # phi'(A_l) of the reads, l = 1 .. L-1
    read_after_write: bool


def lmm_chunk_forward(M_s, S_s, q, k, v, alpha, eta, theta, phi: str = "silu", read_after_write: bool = True,
                      arena: ChunkArena | None = None):
    """One chunk of the chunked LMM, eqs. (A16), (A17)-(A18), (A15), in dual form (module docstring).

    Args:
        M_s, S_s: chunk-start memory and momentum, tuples of L arrays (B, H, n_{l-1}, n_l).
        q, k, v: (n, B, H, d) the chunk's queries, keys and values; alpha, eta, theta: (n, B, H).
        arena: where the arrays kept in the cache and the chunk-end state go (lmm_scan_forward
            passes one block for all its chunks), or None for fresh arrays.
    Returns:
        y (n, B, H, d), the chunk-end state (M_n, S_n), and the cache for lmm_chunk_backward.
    """
    q, k, v = (_tokens_inside(x) for x in (q, k, v))             # (B, H, n, d)
    alpha, eta, theta = (_tokens_inside(g) for g in (alpha, eta, theta))       # (B, H, n)
    B, H, n = alpha.shape
    if arena is None or arena.block.dtype != alpha.dtype:
        arena = _FreshArrays(alpha.dtype)
    take = arena.take
    L = len(M_s)
    _, _, inner = mem_inner_grad_forward(M_s, k, v, phi, per_token=False, take=take)   # (A16): u_i = x_i^T delta_i at M_s
    # the cache keeps x_l = zs[l-1] (zs[0] = k is the input), delta_l, phi' and p phi'' (without
    # M(k) = zs[L] and the residual e, which the backward never reads)
    inner = inner._replace(zs=inner.zs[:L], e=None)
    xs, deltas = inner.zs, inner.deltas                          # L arrays (B, H, n, n_{l-1}), (B, H, n, n_l)
    PA, PE = decay_products(np.stack([1.0 - alpha, eta]))        # (B, H, n+1, n+1) each, in one pass
    LA, LE = PA[..., 1:, 1:], PE[..., 1:, 1:]                    # (B, H, n, n)
    Kmat = LA @ LE
    # (A17) and (A18) as coefficients: rows M_0..M_n (S_0..S_n), columns [M_s, S_s, u_1..u_n]
    minus_theta = -theta[..., None, :]                           # (B, H, 1, n)
    P_M = take((B, H, n + 1, n + 2))
    P_M[..., 0, :] = 0.0
    P_M[..., 0, 0] = 1.0
    P_M[..., 1:, 0] = PA[..., 1:, 0]                             # beta_tau
    P_M[..., 1:, 1] = (LA @ PE[..., 1:, 0:1])[..., 0]            # m_tau = LA @ exp(cE)
    np.multiply(Kmat, minus_theta, out=P_M[..., 1:, 2:])         # -Kmat[tau, i] theta_i
    P_S = take((B, H, n + 1, n + 2))
    P_S[..., 0, :] = 0.0
    P_S[..., 0, 1] = 1.0
    P_S[..., 1:, 0] = 0.0
    P_S[..., 1:, 1] = PE[..., 1:, 0]                             # exp(cE_tau)
    np.multiply(LE, minus_theta, out=P_S[..., 1:, 2:])           # -LE[tau, i] theta_i
    read = P_M[..., 1:, :] if read_after_write else P_M[..., :-1, :]    # token tau reads M_tau or M_{tau-1}
    c_beta, c_m, C = read[..., 0:1], read[..., 1:2], read[..., 2:]
    rows, zxs, d1 = [], [], []
    z = q
    for l, (W, S, x, delta) in enumerate(zip(M_s, S_s, xs, deltas)):   # (A15) with per-token weights
        rows.append(z)
        zx = np.matmul(z, _T(x), out=take((B, H, n, n)))         # [j, i] = rho_j . x_i (kept for the backward)
        zxs.append(zx)
        a = z @ W                                                # (B, H, n, n_l)
        a *= c_beta
        zS = z @ S
        zS *= c_m
        a += zS
        a += (zx * C) @ delta
        if l < L - 1:
            z, dphi, _ = activation_derivatives(a, phi, second=False, take=take)
            d1.append(dphi)
        else:
            z = a                                                # identity on the last layer
    c_n, s_n = P_M[..., n, :, None, None], P_S[..., n, :, None, None]     # (B, H, n+2, 1, 1)
    M_n, S_n = [], []
    for W, S, x, delta in zip(M_s, S_s, xs, deltas):
        M_l = np.matmul(_T(x), P_M[..., n, 2:, None] * delta, out=take(W.shape))   # (A17) at tau = n: sum_i P_M[n, 2+i] u_i
        M_l += c_n[..., 0, :, :] * W                             #   + beta_n M_s
        M_l += c_n[..., 1, :, :] * S                             #   + m_n S_s
        S_l = np.matmul(_T(x), P_S[..., n, 2:, None] * delta, out=take(W.shape))   # (A18) at tau = n
        S_l += s_n[..., 1, :, :] * S
        M_n.append(M_l)
        S_n.append(S_l)
    M_n, S_n = tuple(M_n), tuple(S_n)
    K0 = take((B, H, n + 1, n))
    K0[..., 0, :] = 0.0
    K0[..., 1:, :] = Kmat
    PA = arena.keep(PA)                                          # a copy: PE, which shares PA's memory, is not kept
    cache = ChunkCache(tuple(M_s), tuple(S_s), (alpha, eta, theta), inner, PA, PE[..., n, 1:].copy(), K0, P_M,
                       P_S, rows, zxs, d1, read_after_write)
    return _tokens_first(z), (M_n, S_n), cache


def lmm_chunk_backward(dy: np.ndarray, cache: ChunkCache, dM_n: Sequence[np.ndarray],
                       dS_n: Sequence[np.ndarray], second_order: bool = True):
    """Adjoint of lmm_chunk_forward (A4.2, the token loop solved in dual form; see the module
    docstring). dy (n, B, H, d) is the reads' gradient; dM_n, dS_n the gradients of the chunk-end
    state arriving from later chunks (carried). second_order=False drops the ADJ term: wrong on
    purpose, for demonstrating pitfall P1 only. Z_l X_l^T comes from the forward (cached);
    g_l Delta_l^T is formed once and used in steps 1, 2 and 4, g_l W_l^T and g_l S_l^T in steps 1 and 2.

    Returns:
        dq, dk, dv (n, B, H, d); dalpha, deta, dtheta (n, B, H); dM_s, dS_s (tuples like M_s).
    """
    M_s, S_s, (alpha, eta, theta), inner = cache.M_s, cache.S_s, cache.gates, cache.inner
    PA, PE_n, K0, P_M, P_S = cache.PA, cache.PE_n, cache.K0, cache.P_M, cache.P_S
    B, H, n = alpha.shape
    L = len(M_s)
    xs, deltas = inner.zs[:L], inner.deltas
    rows, zx = cache.rows, cache.zx
    reads = slice(1, n + 1) if cache.read_after_write else slice(0, n)   # the state index each token reads
    c_beta, c_m, C = P_M[..., reads, 0:1], P_M[..., reads, 1:2], P_M[..., reads, 2:]
    # 1. back through the reads: the read of token j gives M's layer l the gradient rho_j^T g_j
    gs = [None] * L                                              # g_l = dL/dA_l (B, H, n, n_l)
    gd = [None] * L                                              # g_l Delta_l^T (B, H, n, n): [j, i] = g_j . delta_i
    gW, gS = [None] * L, [None] * L                              # g_l W_l^T, g_l S_l^T (B, H, n, n_{l-1})
    da = _tokens_inside(dy)
    for l in reversed(range(L)):
        gs[l] = da
        gd[l] = da @ _T(deltas[l])
        gW[l], gS[l] = da @ _T(M_s[l]), da @ _T(S_s[l])
        dz = c_beta * gW[l]
        dz += c_m * gS[l]
        dz += (C * gd[l]) @ xs[l]
        if l > 0:
            da = dz * cache.d1[l - 1]
    dq = dz
    # 2. inner products with the columns [M_s, S_s, u_1..u_n] of (A17)-(A18), summed over the layers:
    #    Z[j] for the read gradient of token j, z_M for dM_n, z_S for dS_n
    Z = np.zeros((B, H, n, n + 2), dtype=dq.dtype)
    z_M = np.zeros((B, H, n + 2), dtype=dq.dtype)
    z_S = np.zeros((B, H, n + 2), dtype=dq.dtype)
    x_dM, x_dS = [], []                                          # x_i dM_n, x_i dS_n (B, H, n, n_l)
    for l in range(L):
        g, x, delta = gs[l], xs[l], deltas[l]
        Z[..., 0] += _rowdot(rows[l], gW[l])                     # rho W g^T
        Z[..., 1] += _rowdot(rows[l], gS[l])
        Z[..., 2:] += zx[l] * gd[l]                              # (rho_j . x_i)(g_j . delta_i)
        x_dM.append(x @ dM_n[l])
        x_dS.append(x @ dS_n[l])
        for z, G, xG in ((z_M, dM_n[l], x_dM[l]), (z_S, dS_n[l], x_dS[l])):
            z[..., 0] += _inner((G,), (M_s[l],))
            z[..., 1] += _inner((G,), (S_s[l],))
            z[..., 2:] += _rowdot(xG, delta)                     # x_i G delta_i^T
    # 3. GM_t = sum_j PA[s_j, t] R_j + PA[n, t] dM_n,  GS_t = sum_j K0[s_j, t] R_j + K0[n, t] dM_n + PE[n, t] dS_n
    GA = _T(PA[..., reads, 1:])                                  # (B, H, n, n): [t, j] = PA[s_j, t]
    GK = _T(K0[..., reads, :])                                   # [t, j] = Kmat[s_j, t]
    PA_n, K_n = PA[..., n, 1:], K0[..., n, :]                    # (B, H, n), like PE_n
    M_prev, S_prev = P_M[..., :-1, :], P_S[..., :-1, :]          # coefficients of M_{t-1}, S_{t-1}
    dalpha = -(_rowdot(GA @ Z, M_prev) + PA_n * (M_prev @ z_M[..., None])[..., 0])    # -<GM_t, M_{t-1}>
    deta = (_rowdot(GK @ Z, S_prev) + K_n * (S_prev @ z_M[..., None])[..., 0]
            + PE_n * (S_prev @ z_S[..., None])[..., 0])                                   # <GS_t, S_{t-1}>
    # 4. du_t = -theta_t GS_t, which ADJ needs only as x_t du_t and du_t delta_t^T
    dtheta = np.zeros_like(alpha)
    x_du, du_delta = [], []
    K_n, PE_n = K_n[..., None], PE_n[..., None]
    minus_theta = -theta[..., None]
    for l in range(L):
        rho, g, delta = rows[l], gs[l], deltas[l]
        x_GS = (GK * _T(zx[l])) @ g                              # [t] = sum_j GK[t, j] (x_t . rho_j) g_j
        x_GS += K_n * x_dM[l]
        x_GS += PE_n * x_dS[l]
        GS_delta = (GK * _T(gd[l])) @ rho
        GS_delta += K_n * (delta @ _T(dM_n[l]))
        GS_delta += PE_n * (delta @ _T(dS_n[l]))
        dtheta -= _rowdot(x_GS, delta)                           # -<GS_t, x_t^T delta_t>
        x_du.append(minus_theta * x_GS)
        du_delta.append(minus_theta * GS_delta)
    # 5. the chunk-start state: every M_tau holds beta_tau M_s + m_tau S_s, every S_tau P_E[tau, 0] S_s
    c_n, s_n = P_M[..., n, :, None, None], P_S[..., n, :, None, None]     # (B, H, n+2, 1, 1)
    dM_s, dS_s = [], []
    for l in range(L):
        dM_l = _T(rows[l]) @ (c_beta * gs[l])                    # sum_j beta_{s_j} rho_j^T g_j
        dM_l += c_n[..., 0, :, :] * dM_n[l]
        dS_l = _T(rows[l]) @ (c_m * gs[l])                       # sum_j m_{s_j} rho_j^T g_j
        dS_l += c_n[..., 1, :, :] * dM_n[l]
        dS_l += s_n[..., 1, :, :] * dS_n[l]
        dM_s.append(dM_l)
        dS_s.append(dS_l)
    if second_order:                                             # u_t = grad l(M_s; k_t, v_t): ADJ
        dM_inner, dk, dv = mem_inner_grad_adjoint_projected(x_du, du_delta, inner)
        for dM_l, dM_i in zip(dM_s, dM_inner):
            dM_l += dM_i
    else:
        dk, dv = np.zeros_like(dq), np.zeros_like(dq)
    return (_tokens_first(dq), _tokens_first(dk), _tokens_first(dv), _tokens_first(dalpha), _tokens_first(deta),
            _tokens_first(dtheta), tuple(dM_s), tuple(dS_s))


# ----------------------------------------------------------------- one token: the sequential model
# With b = 1 a chunk holds one token and (A17)-(A18) reduce to (A13)-(A14) with scalars, so the
# chunk machinery (decay products, coefficient matrices, dual-form mixing) is pure overhead: the
# token path forms the new weights directly (one outer product per layer) and reads them. The same
# numbers as lmm_chunk_forward / lmm_chunk_backward with n = 1, up to rounding (a few ulp).
class TokenCache(NamedTuple):
    M_s: tuple           # M_{t-1}, L arrays (B, H, ., .)
    S_s: tuple           # S_{t-1}
    gates: tuple         # A = 1 - alpha, eta, theta, each (B, H, 1, 1)
    inner: object        # InnerGradCache of u_t at M_{t-1} (rows (B, H, 1, .))
    read: object         # ReadCache of the read (weights M_t, or M_{t-1} when reading before the write)
    read_after_write: bool


def lmm_token_forward(M_s, S_s, q, k, v, A, eta, theta, phi: str = "silu", read_after_write: bool = True):
    """One step of the sequential model, (A12)-(A15).

    Args:
        M_s, S_s: M_{t-1}, S_{t-1}, tuples of L arrays (B, H, n_{l-1}, n_l).
        q, k, v: (B, H, 1, d) the token's query, key and value as one-row matrices.
        A, eta, theta: (B, H, 1, 1) the gates, A = 1 - alpha.
    Returns:
        y (B, H, 1, d), (M_t, S_t), and the cache for lmm_token_backward.
    """
    _, _, inner = mem_inner_grad_forward(M_s, k, v, phi, per_token=False)    # (A12): u_t = x^T delta at M_{t-1}
    S = tuple(eta * S_l - x.swapaxes(-1, -2) * (theta * delta)                # (A13): u_t = x^T delta
              for S_l, x, delta in zip(S_s, inner.zs, inner.deltas))
    M = tuple(A * M_l + S_l for M_l, S_l in zip(M_s, S))                     # (A14)
    y, read = mem_read_forward(M if read_after_write else M_s, q, phi)       # (A15)
    return y, (M, S), TokenCache(tuple(M_s), tuple(S_s), (A, eta, theta), inner, read, read_after_write)


def lmm_token_backward(dy: np.ndarray, cache: TokenCache, GM: Sequence[np.ndarray], GS: Sequence[np.ndarray],
                       second_order: bool = True):
    """Adjoint of lmm_token_forward (A4.2 for one token). dy (B, H, 1, d); GM, GS the gradients of
    M_t and S_t from later tokens. Returns dq, dk, dv (B, H, 1, d); dalpha, deta, dtheta (B, H);
    dM_{t-1}, dS_{t-1} (tuples)."""
    M_s, S_s, (A, eta, theta), inner = cache.M_s, cache.S_s, cache.gates, cache.inner
    dq, dM_read = mem_read_backward(dy, cache.read)
    if cache.read_after_write:
        GM = [G + dR for G, dR in zip(GM, dM_read)]
    GS = [G + H for G, H in zip(GS, GM)]                         # dL/dS_t: S_t enters M_t with weight 1
    dalpha = -_inner(GM, M_s)                                    # -<GM, M_{t-1}>   (B, H)
    deta = _inner(GS, S_s)                                       # <GS, S_{t-1}>
    x_GS = [x @ G for x, G in zip(inner.zs, GS)]                 # x_t GS (B, H, 1, n_l)
    dtheta = -_inner(x_GS, inner.deltas)                        # -<GS, u_t> = -sum (x_t GS) . delta_t
    dM_s = [A * G for G in GM]
    if not cache.read_after_write:
        dM_s = [G + dR for G, dR in zip(dM_s, dM_read)]
    dS_s = [eta * G for G in GS]
    if second_order:                                             # du_t = -theta GS through ADJ
        x_du = [-theta * xG for xG in x_GS]
        du_delta = [-theta * (delta @ G.swapaxes(-1, -2)) for delta, G in zip(inner.deltas, GS)]
        dM_inner, dk, dv = mem_inner_grad_adjoint_projected(x_du, du_delta, inner)
        dM_s = [a + b for a, b in zip(dM_s, dM_inner)]
    else:
        dk, dv = np.zeros_like(dq), np.zeros_like(dq)
    return dq, dk, dv, dalpha, deta, dtheta, tuple(dM_s), tuple(dS_s)


# ----------------------------------------------------------------- the sequence: loop over chunks
class ScanCache(NamedTuple):
    inputs: tuple        # q, k, v (T, B, H, d), alpha, eta, theta (T, B, H)
    chunks: tuple        # ChunkCache of every chunk (its start state included); TokenCache when chunk = 1
    chunk: int
    phi: str
    read_after_write: bool

    @property
    def starts(self) -> tuple:
        """(M_s, S_s) at the start of every chunk."""
        return tuple((c.M_s, c.S_s) for c in self.chunks)


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
        y (T, B, H, d), the final state (M_T, S_T), and the cache for lmm_scan_backward: every
        chunk's start state and dual-form cache, O((T/b) |M| + T (d + h + b)) numbers per head.
    """
    check_activation(phi)
    check_scan_inputs(M0, S0, q, k, v, alpha, eta, theta, chunk)
    T = q.shape[0]
    y = np.empty(q.shape, dtype=np.result_type(q, M0[0]))
    M, S = tuple(M0), tuple(S0)
    chunks = []
    if chunk == 1:                                               # the sequential model: token path
        rows = [x[:, :, :, None, :] for x in (q, k, v)]          # (T, B, H, 1, d)
        gates = [g[..., None, None] for g in (1.0 - alpha, eta, theta)]   # (T, B, H, 1, 1)
        for t in range(T):
            y_t, (M, S), token_cache = lmm_token_forward(M, S, rows[0][t], rows[1][t], rows[2][t], gates[0][t],
                                                         gates[1][t], gates[2][t], phi, read_after_write)
            y[t] = y_t[..., 0, :]
            chunks.append(token_cache)
        return y, (M, S), ScanCache((q, k, v, alpha, eta, theta), tuple(chunks), 1, phi, read_after_write)
    # the caches of every chunk but the last go to one block of memory (ChunkArena: fewer page
    # faults); the last chunk's arrays are fresh, so the final state does not hold on to the block
    full = (T - 1) // chunk                                      # chunks before the last
    B, H = q.shape[1:3]
    widths = (M0[0].shape[-2],) + tuple(W.shape[-1] for W in M0)
    arena = ChunkArena(full * ChunkArena.chunk_size(B, H, chunk, widths), y.dtype) if full else None
    for s in range(0, T, chunk):
        e = min(s + chunk, T)
        y[s:e], (M, S), chunk_cache = lmm_chunk_forward(M, S, q[s:e], k[s:e], v[s:e], alpha[s:e], eta[s:e],
                                                        theta[s:e], phi, read_after_write, arena if e < T else None)
        chunks.append(chunk_cache)
    cache = ScanCache((q, k, v, alpha, eta, theta), tuple(chunks), int(chunk), phi, read_after_write)
    return y, (M, S), cache


def lmm_scan_backward(dy: np.ndarray, cache: ScanCache, dstate: tuple | None = None, second_order: bool = True):
    """Adjoint of lmm_scan_forward: chunks last to first, the state's gradient carried.

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
    M_start = cache.chunks[0].M_s
    GM = tuple(np.zeros(M.shape, dtype=dy.dtype) for M in M_start) if dstate is None else tuple(dstate[0])
    GS = tuple(np.zeros(M.shape, dtype=dy.dtype) for M in M_start) if dstate is None else tuple(dstate[1])
    if cache.chunk == 1:                                         # the sequential model: token path
        for t in reversed(range(T)):
            dq_t, dk_t, dv_t, dalpha[t], deta[t], dtheta[t], GM, GS = lmm_token_backward(
                dy[t][:, :, None, :], cache.chunks[t], GM, GS, second_order)
            dq[t], dk[t], dv[t] = dq_t[..., 0, :], dk_t[..., 0, :], dv_t[..., 0, :]
        return (dq, dk, dv), (dalpha, deta, dtheta), (GM, GS)
    for c in reversed(range(len(cache.chunks))):
        s, e = c * cache.chunk, min((c + 1) * cache.chunk, T)
        (dq[s:e], dk[s:e], dv[s:e], dalpha[s:e], deta[s:e], dtheta[s:e], GM, GS) = lmm_chunk_backward(
            dy[s:e], cache.chunks[c], GM, GS, second_order)
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
    manual one. Each inner ad.grad stops at its chunk's weights, keys and values (stop_at_inputs),
    so the cost grows linearly with T (measured: 0.22 / 0.43 / 0.94 s for T = 16 / 32 / 64, where
    walking the whole history took 1.8 / 6.1 / 15 s)."""
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
