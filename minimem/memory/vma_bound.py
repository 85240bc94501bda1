"""The bound side of VMA (Bornschein et al., 2017, arXiv 1709.07116): the address posterior, the
log densities, the multi-sample (importance-weighted) bound, its VIMCO learning signals (Mnih &
Rezende, 2016, arXiv 1602.06725) and the exact-address bound. The networks and the model live in
minimem/memory/vma.py; this module holds the pieces that are the same for any encoder/decoder.

Shapes: B episodes, N addressable slots (N' = N + n_dummy in vma.py), S importance samples,
Z latent size, X pixels, "..." any leading axes.
Equations (numbering of specs/generative_memory.md, part A):
    (V3)  log q(a=n | M, x) = l_n - lse_n(l)                       address posterior   (B, N)
    (V5)  a = #{n : cumsum_n q_n <= u}, clipped to the last slot with q_n > 0   sampler (S, B)
          top-k: keep the K largest l_n, renormalise (the kept set is a constant of the backward)
    (V10) log p(x | z, m_a) = sum_i [x_i logit_i - softplus(logit_i)]         Bernoulli
    (V11) log N(z; mu, sig) = sum_d [-0.5 ((z_d - mu_d) / sig_d)^2 - log sig_d - 0.5 log 2 pi]
    (V13) L_S = lse_s(log w_s) - log S                           multi-sample bound  (B,)
    (V14) L_exact = sum_n q_n [inner_n + log p_n - log q_n]      exact-address bound (B,)
    (G2)  L_-s: sample s replaced by log w^_s built from the others, by a masked (S x S) lse
          geometric   log w^_s = mean_{j != s} log w_j        (VIMCO default)
          arithmetic  L_-s = lse_{j != s} log w_j - log(S - 1) (the reference code's)
    (G3)  c_s = L - L_-s                                          learning signal, a constant
Monitoring: KL_a = sum_n q_n (log q_n - log p_n), H_a = -sum_n q_n log q_n.

Leave-one-out quantities are never formed by subtraction (log(sum_j W_j - W_s) cancels when one
sample dominates, and clamping it lets the baseline see the sample it must exclude, spec F.2);
they come from a masked log-sum-exp over an (S, S) matrix whose row s omits column s.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

from minimem import autodiff as ad

LOG_2PI = math.log(2.0 * math.pi)
BASELINES = ("geometric", "arithmetic", "none")


# ----------------------------------------------------------------- input checks
def check_finite(name: str, x: np.ndarray) -> None:
    """ValueError if x holds NaN or inf, as minimem.nn.linear.check_finite, but without a (..., X)
    boolean temporary: min and max propagate NaN and show +-inf, so both are finite exactly when
    every entry is (two vectorised reductions, no overflow possible, unlike a sum)."""
    if x.size and not (math.isfinite(x.min()) and math.isfinite(x.max())):
        raise ValueError(f"{name} must be finite; it contains NaN or inf")


# ----------------------------------------------------------------- log-sum-exp helpers
def logsumexp(v: np.ndarray, axis: int = -1, keepdims: bool = False) -> np.ndarray:
    """log sum exp over an axis with the max subtracted; a row of only -inf gives -inf, not NaN."""
    shift = v.max(axis=axis, keepdims=True)
    if np.isfinite(shift).all():                                  # every row has a finite entry: sum >= 1
        out = np.log(np.exp(v - shift).sum(axis=axis, keepdims=True))
    else:
        shift = np.where(np.isfinite(shift), shift, 0.0)
        with np.errstate(divide="ignore"):                        # log(0) = -inf for an all -inf row
            out = np.log(np.exp(v - shift).sum(axis=axis, keepdims=True))
    out += shift
    return out if keepdims else out.squeeze(axis=axis)


def softmax(v: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(v - lse(v)) along an axis; entries of -inf get exactly 0."""
    return np.exp(v - logsumexp(v, axis=axis, keepdims=True))


# ----------------------------------------------------------------- address posterior (V3, V5)
def top_k_mask(l: np.ndarray, K: int | None) -> np.ndarray:
    """The slots kept by the top-k restriction of (V5): the K largest l_n per row.

    Args:
        l: (B, N) address logits.
        K: slots to keep, or None for all; K >= N keeps all (the dense path, bit for bit).
    Returns:
        kept: (B, N) bool. The index set is not differentiated (a constant of the backward);
        gradient checks keep a gap >= 1e-3 between the K-th and (K+1)-th logits.
    """
    B, N = l.shape
    if K is None or K >= N:
        return np.ones((B, N), dtype=bool)
    top = np.argpartition(-l, K - 1, axis=-1)[:, :K]              # (B, K) int
    kept = np.zeros((B, N), dtype=bool)
    np.put_along_axis(kept, top, True, axis=-1)
    return kept


class LogSoftmaxCache(NamedTuple):
    q: np.ndarray       # (..., N) probabilities, 0 outside the kept set
    kept: np.ndarray | None   # (..., N) bool, or None: every slot kept (no masking in the backward)


def log_softmax_forward(l: np.ndarray, kept: np.ndarray | None = None):
    """Masked log-softmax, eq. (V3): log q_n = l_n - lse_{kept}(l) on kept slots, -inf elsewhere.

    Args:
        l: (..., N) logits.
        kept: (..., N) bool, or None for every slot (then no masking is done at all).
    Returns:
        log_q: (..., N), and the cache for log_softmax_backward.
    """
    masked = l if kept is None else np.where(kept, l, -np.inf)
    shift = masked.max(axis=-1, keepdims=True)                     # finite: at least one slot is kept
    log_q = masked - shift                                         # (..., N)
    q = np.exp(log_q)
    total = q.sum(axis=-1, keepdims=True)                          # in [1, N]
    q /= total
    log_q -= np.log(total)
    return log_q, LogSoftmaxCache(q, kept)


def log_softmax_backward(dlog_q: np.ndarray, cache: LogSoftmaxCache) -> np.ndarray:
    """Adjoint of (V3): dl_j = dlog_q_j - q_j sum_n dlog_q_n on kept slots, 0 on dropped ones.
    For one sampled address this is (G5)'s grad_l log q(a) = onehot(a) - q."""
    q, kept = cache
    if kept is None:                                               # dense: nothing to mask
        return dlog_q - q * dlog_q.sum(axis=-1, keepdims=True)
    dlog_q = np.where(kept, dlog_q, 0.0)
    return np.where(kept, dlog_q - q * np.sum(dlog_q, axis=-1, keepdims=True), 0.0)


def sample_addresses(log_q: np.ndarray, u: np.ndarray, q: np.ndarray | None = None) -> np.ndarray:
    """Inverse-CDF sampler, eq. (V5): a_sb = #{n : cumsum_n q_bn <= u_sb}.

    Args:
        log_q: (B, N) address log posterior.
        u: (S, B) uniforms in [0, 1).
        q: (B, N) exp(log_q) if the caller has it already (the log-softmax cache does), else None.
    Returns:
        a: (S, B) int64. Round-off can leave cumsum_N slightly below 1, so a is clipped to the
        last slot with q_n > 0 (never N, never a slot the top-k restriction dropped).
    """
    q = np.exp(log_q) if q is None else q                          # (B, N)
    cdf = np.cumsum(q, axis=-1)                                    # (B, N)
    a = np.sum(cdf[None, :, :] <= u[:, :, None], axis=-1)          # (S, B)
    N = q.shape[-1]
    last = N - 1 - np.argmax((q > 0)[:, ::-1], axis=-1)            # (B,) last slot with mass
    return np.minimum(a, last[None, :]).astype(np.int64)


def address_kl(log_q: np.ndarray, log_p: np.ndarray) -> np.ndarray:
    """KL(q || p) = sum_n q_n (log q_n - log p_n) over the last axis; slots with q_n = 0 add 0."""
    q = np.exp(log_q)
    return np.sum(np.where(q > 0, q * (np.where(q > 0, log_q, 0.0) - log_p), 0.0), axis=-1)


def address_entropy(log_q: np.ndarray) -> np.ndarray:
    """H[q] = -sum_n q_n log q_n over the last axis; slots with q_n = 0 add 0."""
    q = np.exp(log_q)
    return -np.sum(q * np.where(q > 0, log_q, 0.0), axis=-1)


# ----------------------------------------------------------------- log densities (V10, V11)
class GaussianCache(NamedTuple):
    standardised: np.ndarray   # (..., Z) (z - mu) / sig
    sig: np.ndarray            # (..., Z) exp(log_sig)


def gaussian_log_density_forward(z: np.ndarray, mu: np.ndarray, log_sig: np.ndarray):
    """Diagonal Gaussian log density, eq. (V11), summed over the last axis.

    Args:
        z, mu, log_sig: (..., Z) point, mean and log standard deviation (log-std, no floor).
    Returns:
        log N(z; mu, sig): (...,), and the cache for gaussian_log_density_backward.
    """
    sig = np.exp(log_sig)
    standardised = z - mu
    standardised /= sig                                            # (..., Z)
    terms = standardised * standardised
    terms *= -0.5
    terms -= log_sig
    value = terms.sum(axis=-1) - 0.5 * LOG_2PI * z.shape[-1]
    return value, GaussianCache(standardised, sig)


def gaussian_log_density_backward(dout: np.ndarray, cache: GaussianCache):
    """Adjoint of (V11). Returns (dz, dmu, dlog_sig), each (..., Z):
    d/dz = -(z - mu) / sig^2, d/dmu = (z - mu) / sig^2, d/dlog_sig = ((z - mu) / sig)^2 - 1."""
    standardised, sig = cache
    dout = dout[..., None]
    dmu = dout * standardised / sig
    return -dmu, dmu, dout * (standardised ** 2 - 1.0)


def gaussian_log_density_autodiff(z, mu, log_sig) -> ad.Tensor:
    """Autodiff twin of gaussian_log_density_forward."""
    standardised = (z - mu) / ad.exp(log_sig)
    return ad.sum(-0.5 * standardised * standardised - log_sig, axis=-1) - 0.5 * LOG_2PI * z.shape[-1]


def bernoulli_log_likelihood_forward(x: np.ndarray, logit: np.ndarray):
    """Bernoulli log likelihood from logits, eq. (V10): sum_i x_i logit_i - softplus(logit_i).

    Everything comes from ONE exponential, e = e^-|t| in (0, 1] (it never overflows):
        x t - softplus(t) = x t - max(t, 0) - log(1 + e),   max(t, 0) = (t + |t|) / 2 (exact)
        sigmoid(-|t|) = e / (1 + e) = w;   sigmoid(t) = w for t < 0,  1 - w for t >= 0
    The backward needs the Bernoulli mean sigmoid(t), so the cache holds it instead of
    recomputing it. The two branches are merged by arithmetic, sigmoid(t) = w + [t >= 0] (1 - 2w),
    not by np.where (a data-dependent select is several times slower than a product here); the
    t < 0 branch is w exactly (tiny means keep their relative precision) and the other lies in
    [0.5, 1], where 1 - w loses nothing. (log(1 + e) rather than log1p(e): NumPy's log1p and
    logaddexp are several times slower here; the difference is below one unit in the last place
    of 1, i.e. 1e-16 in float64, per pixel.) Three (..., X) buffers, all in the logits' dtype.

    Args:
        x: (..., X) targets in [0, 1] (a constant: no gradient is returned for it); it may
            broadcast against logit.
        logit: (..., X).
    Returns:
        log p(x | logit): (...,), and the cache (x, sigmoid(logit)) for
        bernoulli_log_likelihood_backward.
    """
    work = np.abs(logit)                                           # |t|
    prob = np.negative(work)
    np.exp(prob, out=prob)                                         # e = e^-|t| in (0, 1]
    terms = np.multiply(x - 0.5, logit)                            # x t - (t + |t|) / 2 = x t - max(t, 0)
    work *= 0.5
    terms -= work
    np.add(prob, 1.0, out=work)                                    # 1 + e
    prob /= work                                                   # w = sigmoid(-|t|)
    np.log(work, out=work)
    terms -= work                                                  # - log(1 + e)
    np.multiply(prob, -2.0, out=work)
    work += 1.0
    work *= logit >= 0                                             # [t >= 0] (1 - 2w)
    prob += work                                                   # sigmoid(t)
    return np.sum(terms, axis=-1), (x, prob)


def sum_log_bounded(w: np.ndarray, block: int = 32) -> np.ndarray:
    """sum_x log w_x over the last axis for w in [1, 2] (the 1 + e^-|t| of the Bernoulli), with few logs.

    Identity: sum_x log w_x = sum_blocks log prod_{x in block} w_x. One np.multiply.reduceat forms
    the products of consecutive blocks of `block` entries (the last block may be shorter), each at
    most 2^block = 2^32 (float32 overflows near 2^128): never an overflow. The logarithm then runs
    over X / 32 entries instead of X (13 per row for X = 400), for about the cost of one multiply
    pass; each product's rounding (one unit in the last place per factor) is the same order as that
    of the sum of logarithms it replaces.

    Args:
        w: (..., X) values in [1, 2].
    Returns:
        (...,) in w's dtype.
    """
    X = w.shape[-1]
    products = np.multiply.reduceat(w.reshape(-1, X), np.arange(0, X, block), axis=1)   # (rows, ceil(X / block))
    return np.log(products).sum(axis=-1).reshape(w.shape[:-1])


def bernoulli_log_likelihood_forward_inplace(x: np.ndarray, logit: np.ndarray, work: np.ndarray | None = None):
    """Eq. (V10) as bernoulli_log_likelihood_forward (same value and cache), with fewer passes over
    the (..., X) logits, and CONSUMING `logit`: on return its buffer holds sigmoid(logit), the
    cache's Bernoulli mean (no new array of the logits' size is allocated for it).

        x t - softplus(t) = (x - 1/2) t - |t| / 2 - log(1 + e),   e = e^-|t|   (max(t, 0) = (t + |t|) / 2)
        sum_x (x_x - 1/2) t_x   one batched dot product per row (x - 1/2 is formed on x's rows only,
                                 so once per episode when x broadcasts over the samples)
        sum_x |t_x|             one matrix-vector product with a vector of ones
        sum_x log(1 + e_x)      sum_log_bounded: 1 + e lies in (1, 2], logs of block products
        sigmoid(t) = max(e, [t >= 0]) / (1 + e)   (1 / (1 + e) for t >= 0, e / (1 + e) for t < 0:
                                 no subtraction, so tiny means keep their relative precision)
    One exponential and one division per entry; the logarithms run over X / 32 entries.

    Args:
        x: (..., X) targets in [0, 1], broadcasting against logit (e.g. (1, B, X) or (B, 1, X)).
        logit: (..., X), a temporary the caller owns (overwritten).
        work: None, or a scratch array of logit's shape and dtype that may be overwritten (saves
            one more allocation of the logits' size).
    Returns:
        log p(x | logit): (...,), and the cache (x, sigmoid(logit)) for bernoulli_log_likelihood_backward;
        the sigmoid is `logit`'s buffer.
    """
    X = logit.shape[-1]
    work = np.abs(logit, out=work)                                 # |t|
    sum_abs = (work.reshape(-1, X) @ np.ones(X, dtype=work.dtype)).reshape(logit.shape[:-1])
    centred = np.subtract(x, 0.5, dtype=logit.dtype)               # x - 1/2 on x's own rows
    dot = np.matmul(logit[..., None, :], centred[..., :, None])[..., 0, 0]
    nonnegative = logit >= 0                                       # the last use of t itself
    prob = np.negative(work, out=logit)                            # -|t|, in t's buffer
    np.exp(prob, out=prob)                                         # e = e^-|t| in (0, 1]
    np.add(prob, 1.0, out=work)                                    # 1 + e in (1, 2]
    np.maximum(prob, nonnegative, out=prob)                        # 1 where t >= 0, e where t < 0
    prob /= work                                                   # sigmoid(t)
    return dot - 0.5 * sum_abs - sum_log_bounded(work), (x, prob)


def bernoulli_log_likelihood_backward(dout: np.ndarray, cache) -> np.ndarray:
    """Adjoint of (V10) w.r.t. the logits: dlogit = dout * (x - sigmoid(logit)), (..., X)."""
    x, prob = cache
    dlogit = np.subtract(x, prob, dtype=np.result_type(x, prob, dout))
    dlogit *= dout[..., None]
    return dlogit


def bernoulli_log_likelihood_autodiff(x, logit) -> ad.Tensor:
    """Autodiff twin of bernoulli_log_likelihood_forward."""
    return ad.sum(x * logit - ad.softplus(logit), axis=-1)


def sigmoid(t: np.ndarray) -> np.ndarray:
    """The logistic function 1 / (1 + e^-t), computed without overflow for any t."""
    e = np.exp(-np.abs(t))                                         # never overflows
    return np.where(t >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


# ----------------------------------------------------------------- the multi-sample bound (V13)
def iw_bound_forward(log_w: np.ndarray):
    """Multi-sample bound, eq. (V13) / (G1): L = lse_s(log w_s) - log S.

    Args:
        log_w: (S, B) log importance weights, eq. (V12).
    Returns:
        L: (B,), and the cache (w~ (S, B) = softmax_s(log w), the normalised weights).
    """
    S = log_w.shape[0]
    lse = logsumexp(log_w, axis=0, keepdims=True)                  # (1, B)
    return lse[0] - math.log(S), np.exp(log_w - lse)               # w~ = softmax_s(log w), one lse for both


def iw_bound_backward(dL: np.ndarray, w_tilde: np.ndarray) -> np.ndarray:
    """Adjoint of (V13): dlog_w_s = dL * w~_s. Returns (S, B)."""
    return dL[None, :] * w_tilde


def iw_bound_autodiff(log_w) -> ad.Tensor:
    """Autodiff twin of iw_bound_forward: (S, B) -> (B,)."""
    return ad.logsumexp(log_w, axis=0) - math.log(log_w.shape[0])


# ----------------------------------------------------------------- VIMCO (G2, G3)
@functools.lru_cache(maxsize=16)
def _own_column(S: int) -> np.ndarray:
    """(S, S, 1) bool, True at [s, s, 0]: the diagonal mask of leave_one_out_bounds, built once per S
    (read-only, shared between calls)."""
    own = np.eye(S, dtype=bool)[:, :, None]
    own.flags.writeable = False
    return own


def leave_one_out_bounds(log_w: np.ndarray, baseline: str = "geometric") -> np.ndarray:
    """L_-s of (G2) for every sample, by a masked log-sum-exp (never by subtraction).

    Row s of an (S, S) matrix holds log w_j for j != s and, in column s, the stand-in log w^_s:
        geometric   log w^_s = (1/(S-1)) sum_{j != s} log w_j,   L_-s = lse(row s) - log S
        arithmetic  L_-s = lse_{j != s} log w_j - log(S - 1)     (= the same construction with
                    log w^_s = lse_{j != s} log w_j - log(S - 1))
        none        L_-s = 0 (no baseline: c_s = L, plain multi-sample REINFORCE; unbiased too)

    Args:
        log_w: (S, B) log weights, S >= 2.
        baseline: "geometric", "arithmetic" or "none".
    Returns:
        L_loo: (S, B).
    """
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}; got {baseline!r}")
    S, B = log_w.shape
    if S < 2:
        raise ValueError(f"VIMCO needs S >= 2 samples per episode (leave-one-out); got S={S}")
    if baseline == "none":
        return np.zeros((S, B), dtype=log_w.dtype)
    own = _own_column(S)                                           # (S, S, 1): column s of row s
    rows = log_w[None, :, :]                                       # rows[s, j] = log w_j (broadcast)
    if baseline == "arithmetic":
        without_s = np.where(own, -np.inf, rows)                   # (S, S, B)
        return logsumexp(without_s, axis=1) - math.log(S - 1)      # lse_{j != s} log w_j - log(S - 1)
    stand_in = np.where(own, 0.0, rows).sum(axis=1) / (S - 1)      # (S, B) geometric mean of the others
    filled = np.where(own, stand_in[:, None, :], rows)             # column s <- log w^_s
    return logsumexp(filled, axis=1) - math.log(S)


def vimco_signals(log_w: np.ndarray, baseline: str = "geometric") -> tuple[np.ndarray, np.ndarray]:
    """VIMCO learning signals, eq. (G3): c_s = L - L_-s, to be used as constants.

    Args:
        log_w: (S, B) log weights, S >= 2 (ValueError otherwise).
        baseline: see leave_one_out_bounds.
    Returns:
        c: (S, B) signals, and L_loo: (S, B) the leave-one-out bounds.
    """
    S, B = log_w.shape
    if baseline == "none" or baseline not in BASELINES or S < 2:   # (errors are raised there)
        L = logsumexp(log_w, axis=0) - math.log(S)                 # (B,) eq. (V13)
        L_loo = leave_one_out_bounds(log_w, baseline)
        return L[None, :] - L_loo, L_loo
    # One log-sum-exp for both: rows 0..S-1 of `stack` are the leave-one-out rows of
    # leave_one_out_bounds (column s of row s holds the stand-in), row S is log w itself (for L).
    stack = np.empty((S + 1, S, B), dtype=log_w.dtype)
    stack[:] = log_w
    own = stack[:S].reshape(S * S, B)[::S + 1]                     # (S, B) view of the entries (s, s)
    if baseline == "geometric":
        own[...] = np.where(_own_column(S), 0.0, log_w[None]).sum(axis=1) / (S - 1)
        lse = logsumexp(stack, axis=1)                             # (S + 1, B)
        L_loo = lse[:S] - math.log(S)
    else:                                                          # arithmetic: sample s left out
        own[...] = -np.inf
        lse = logsumexp(stack, axis=1)
        L_loo = lse[:S] - math.log(S - 1)
    L = lse[S] - math.log(S)                                       # (B,) eq. (V13)
    return L[None, :] - L_loo, L_loo


# ----------------------------------------------------------------- exact-address bound (V14)
class ExactBoundCache(NamedTuple):
    q: np.ndarray        # (B, N)
    kept: np.ndarray | None   # (B, N) bool, or None: every slot kept
    f: np.ndarray        # (B, N) inner_n + log p_n - log q_n (0 where not kept)
    L: np.ndarray        # (B,)


def exact_bound_forward(log_q: np.ndarray, log_p: np.ndarray, inner: np.ndarray,
                        kept: np.ndarray | None = None):
    """Exact-address bound, eq. (V14): L = sum_n q_n (inner_n + log p_n - log q_n)
    = sum_n q_n inner_n - KL(q || p), the S = 1 ELBO with the expectation over a done exactly.

    Args:
        log_q: (B, N) address log posterior (-inf on slots a top-k restriction dropped).
        log_p: (B, N) address log prior.
        inner: (B, N) log p(x|z_n, m_n) + log N(z_n; mu_p, sig_p) - log N(z_n; mu_q, sig_q),
            one eps per slot.
        kept: (B, N) bool, or None for every slot.
    Returns:
        L: (B,), and the cache for exact_bound_backward.
    """
    q = np.exp(log_q)
    if kept is None:                                               # dense: log q is finite everywhere
        f = inner + log_p - log_q
    else:
        f = np.where(kept, inner + log_p - np.where(kept, log_q, 0.0), 0.0)    # (B, N)
    L = np.sum(q * f, axis=-1)                                     # (B,)
    return L, ExactBoundCache(q, kept, f, L)


def exact_bound_backward(dL: np.ndarray, cache: ExactBoundCache):
    """Adjoint of (V14) with log q, log p and inner as independent inputs:
    dlog_q_n = dL q_n (f_n - 1), dlog_p_n = dL q_n, dinner_n = dL q_n (0 on dropped slots).
    Through log_softmax_backward this gives dl_j = dL q_j (f_j - L). Returns (dlog_q, dlog_p, dinner)."""
    q, kept, f, _ = cache
    dq = dL[:, None] * q                                           # (B, N)
    dlog_q = dq * (f - 1.0)
    return (dlog_q if kept is None else np.where(kept, dlog_q, 0.0)), dq, dq
