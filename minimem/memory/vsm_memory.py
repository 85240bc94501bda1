"""The memory side of the VSM-style model (VSM-style, reconstructed; specs/generative_memory.md
part C): recall from the semantic memory fused with the episodic cue, the exact concept term over
semantic addresses, the mixture prior used for evaluation, the masked episodic read, and the
uncertainty-aware (Kanerva-style) consolidation. minimem/memory/vsm.py assembles the model.

This is NOT the published VSM (Duan et al., NeurIPS 2023): only the paper's abstract could be read
and no code exists, so every equation below is minimem's reconstruction [M] of the abstract's
components. No number from that paper is claimed.

Shapes: B tasks, Ns semantic slots, Zc concept latent size, Ne episodic capacity, n_t targets,
Hk attention key size. Semantic state: mu (Ns, Zc) slot means, lam (Ns, Zc) slot precisions.
Equations (spec numbering):
    (S3)  v_k = 1/lam_k + tau_r^2                                  recall variance    (Ns, Zc)
    (S4)  P_bk = 1/v_k + pi_b,  m_bk = (mu_k / v_k + pi_b chat_b) / P_bk   fusion     (B, Ns, Zc)
    (S5)  log p(a=k | X_C) = log_softmax_k sum_d [-0.5 pi (chat - mu_k)^2 / D_k - 0.5 log D_k],
          D_k = v_k pi + 1  (the cue's evidence up to a k-independent term; pi = 0 gives uniform)
    (S7)  e_bk = sum_d [0.5 log P - 0.5 log 2 pi - 0.5 P ((mu_c - m)^2 + var_c)]
          Lambda_b = lse_k(log p(a=k|X_C) + e_bk),  log q(a=k|X) = log p(a=k|X_C) + e_bk - Lambda_b
    (S8)  T_c = Lambda + H[q(c)],  H[q(c)] = sum_d 0.5 (log 2 pi + 1 + log var_c)
    (S12) beta_ij = softmax_j over valid j of s_ij; all-masked rows give beta = 0
    (S14) KL(N(mu_q, sig_q) || N(mu_p, sig_p)) summed over the last axis
    (S16) log p(c | X_C) = lse_k(log p(a=k|X_C) + log N(c; m_k, 1/P_k))     mixture prior
    (U1)  lam <- gamma lam + (1 - gamma) lam0                        forgetting
    (U2)  pi_bk = q(a=k | X_b) / (var_c,b + tau_t^2)                  conversion precision
    (U3)  lam' = lam + sum_b pi_bk,  mu' = (lam mu + sum_b pi_bk mu_c,b) / lam',
          count' = count + sum_b q(a=k | X_b)                         conjugate update
The consolidation runs between optimiser steps on detached values: the memory state is never
differentiated through (recall_backward returns its gradients only for checks of foreign code).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem.memory.vma_bound import LOG_2PI, logsumexp


# ----------------------------------------------------------------- recall (S3-S5)
class RecallCache(NamedTuple):
    chat: np.ndarray       # (B, Zc) episodic cue
    pi: np.ndarray         # (B, Zc) episodic precision
    mu: np.ndarray         # (Ns, Zc) slot means
    lam: np.ndarray        # (Ns, Zc) slot precisions
    v: np.ndarray          # (Ns, Zc) recall variance
    D: np.ndarray          # (B, Ns, Zc) v pi + 1
    delta: np.ndarray      # (B, Ns, Zc) chat - mu
    prior: np.ndarray      # (B, Ns) p(a | X_C)
    m: np.ndarray          # (B, Ns, Zc) fused mean
    P: np.ndarray          # (B, Ns, Zc) fused precision


def recall_forward(chat: np.ndarray, pi: np.ndarray, mu: np.ndarray, lam: np.ndarray, tau_r2: float):
    """Recall from semantic memory fused with the episodic evidence, eqs. (S3)-(S5).

    Args:
        chat: (B, Zc) the episodic cue (concept estimate from the context).
        pi: (B, Zc) its precision (0 for a task without context).
        mu, lam: (Ns, Zc) semantic slot means and precisions.
        tau_r2: recall noise tau_r^2 >= 0.
    Returns:
        (log_prior (B, Ns), m (B, Ns, Zc), P (B, Ns, Zc)) and the cache for recall_backward:
        p(c | a=k, X_C) = N(c; m_bk, diag(1 / P_bk)) and log p(a=k | X_C).
    """
    v = 1.0 / lam + tau_r2                                                   # (Ns, Zc)   (S3)
    P = 1.0 / v + pi[:, None, :]                                             # (B, Ns, Zc) (S4)
    m = (mu / v + (pi * chat)[:, None, :]) / P
    D = v * pi[:, None, :] + 1.0                                             # (B, Ns, Zc)
    delta = chat[:, None, :] - mu
    score = np.sum(-0.5 * pi[:, None, :] * delta ** 2 / D - 0.5 * np.log(D), axis=-1)   # (B, Ns) (S5)
    log_prior = score - logsumexp(score, axis=-1, keepdims=True)
    return (log_prior, m, P), RecallCache(chat, pi, mu, lam, v, D, delta, np.exp(log_prior), m, P)


def recall_backward(dlog_prior: np.ndarray, dm: np.ndarray, dP: np.ndarray, cache: RecallCache,
                    need_state: bool = True):
    """Adjoint of (S3)-(S5). Returns (dchat (B, Zc), dpi (B, Zc), dmu (Ns, Zc), dlam (Ns, Zc));
    dmu and dlam are for checking foreign implementations, never for updating the memory, and are
    None with need_state=False (a training step skips them)."""
    chat, pi, mu, lam, v, D, delta, prior, m, P = cache
    dscore = dlog_prior - prior * np.sum(dlog_prior, axis=-1, keepdims=True)   # log_softmax  (S5)
    ds = dscore[:, :, None]                                                  # (B, Ns, 1)
    pi3 = pi[:, None, :]
    inv_D = 1.0 / D
    r = delta * inv_D                                                        # (B, Ns, Zc) delta / D
    ds_r = ds * r
    dm_P = dm / P
    dchat = pi * (np.sum(dm_P, axis=1) - np.sum(ds_r, axis=1))               # (B, Zc); pi does not vary over Ns
    dpi = np.sum(dP + dm_P * (chat[:, None, :] - m) - 0.5 * ds * (r * r + v * inv_D), axis=1)   # (S4): dP/dpi = 1
    if not need_state:
        return dchat, dpi, None, None
    dmu = np.sum(pi3 * ds_r + dm_P / v, axis=0)                              # (Ns, Zc)
    dv = np.sum(ds * (0.5 * (pi3 * r) ** 2 - 0.5 * pi3 * inv_D), axis=0)
    dv += np.sum(-dP / v ** 2 + dm_P * (m - mu) / v ** 2, axis=0)
    return dchat, dpi, dmu, -dv / lam ** 2                                   # (S3): dv/dlam = -1/lam^2


def recall_autodiff(chat, pi, mu, lam, tau_r2: float):
    """Autodiff twin of recall_forward. Returns (log_prior, m, P) Tensors."""
    v = 1.0 / lam + tau_r2
    pi3, chat3 = ad.reshape(pi, (pi.shape[0], 1, pi.shape[1])), ad.reshape(chat, (chat.shape[0], 1, chat.shape[1]))
    P = 1.0 / v + pi3
    m = (mu / v + pi3 * chat3) / P
    D = v * pi3 + 1.0
    delta = chat3 - mu
    score = ad.sum(-0.5 * pi3 * delta * delta / D - 0.5 * ad.log(D), axis=-1)
    return ad.log_softmax(score, axis=-1), m, P


# ----------------------------------------------------------------- concept term (S7, S8)
class ConceptCache(NamedTuple):
    q_a: np.ndarray        # (B, Ns) q(a | X)
    delta: np.ndarray      # (B, Ns, Zc) mu_c - m
    P: np.ndarray          # (B, Ns, Zc)
    var_c: np.ndarray      # (B, Zc)


def concept_term_forward(mu_c: np.ndarray, log_var_c: np.ndarray, log_prior: np.ndarray,
                         m: np.ndarray, P: np.ndarray):
    """The exact concept term over semantic addresses, eqs. (S7)-(S8).

    Args:
        mu_c, log_var_c: (B, Zc) q(c | X), diagonal Gaussian.
        log_prior: (B, Ns) log p(a | X_C).  m, P: (B, Ns, Zc) fused recall moments.
    Returns:
        (T_c (B,), log_q_a (B, Ns)), and the cache for concept_term_backward. T_c is the
        optimum over q(a) of the address part of the bound (mean-field closed form).
    """
    var_c = np.exp(log_var_c)
    delta = mu_c[:, None, :] - m                                             # (B, Ns, Zc)
    e = np.sum(0.5 * np.log(P) - 0.5 * LOG_2PI - 0.5 * P * (delta ** 2 + var_c[:, None, :]), axis=-1)   # (S7)
    joint = log_prior + e                                                    # (B, Ns)
    Lambda = logsumexp(joint, axis=-1)                                       # (B,)
    log_q_a = joint - Lambda[:, None]
    entropy = np.sum(0.5 * (LOG_2PI + 1.0 + log_var_c), axis=-1)             # (S8)
    return (Lambda + entropy, log_q_a), ConceptCache(np.exp(log_q_a), delta, P, var_c)


def concept_term_backward(dT: np.ndarray, cache: ConceptCache):
    """Adjoint of (S7)-(S8); by the envelope property q(a) needs no derivative of its own.
    Returns (dmu_c, dlog_var_c (B, Zc), dlog_prior (B, Ns), dm, dP (B, Ns, Zc))."""
    q_a, delta, P, var_c = cache
    de = (dT[:, None] * q_a)[:, :, None]                                     # (B, Ns, 1): dLambda/de = q
    dP = de * (0.5 / P - 0.5 * (delta ** 2 + var_c[:, None, :]))
    dm = de * P * delta
    dmu_c = -np.sum(dm, axis=1)
    dlog_var_c = 0.5 * dT[:, None] - 0.5 * np.sum(de * P, axis=1) * var_c   # entropy + e terms
    return dmu_c, dlog_var_c, dT[:, None] * q_a, dm, dP


def concept_term_autodiff(mu_c, log_var_c, log_prior, m, P):
    """Autodiff twin of concept_term_forward. Returns (T_c, log_q_a) Tensors."""
    B, Zc = mu_c.shape
    delta = ad.reshape(mu_c, (B, 1, Zc)) - m
    var3 = ad.reshape(ad.exp(log_var_c), (B, 1, Zc))
    e = ad.sum(0.5 * ad.log(P) - 0.5 * LOG_2PI - 0.5 * P * (delta * delta + var3), axis=-1)
    joint = log_prior + e
    Lambda = ad.logsumexp(joint, axis=-1)
    entropy = ad.sum(0.5 * (LOG_2PI + 1.0 + log_var_c), axis=-1)
    return Lambda + entropy, joint - ad.reshape(Lambda, (B, 1))


def mixture_log_prior(c: np.ndarray, log_prior: np.ndarray, m: np.ndarray, P: np.ndarray) -> np.ndarray:
    """log p(c | X_C, memory) = lse_k(log p(a=k|X_C) + log N(c; m_k, 1/P_k)), eq. (S16).

    Args:
        c: (..., B, Zc) concept samples. log_prior: (B, Ns). m, P: (B, Ns, Zc).
    Returns:
        (..., B). Forward only (evaluation).
    """
    diff = c[..., None, :] - m                                               # (..., B, Ns, Zc)
    log_n = np.sum(0.5 * np.log(P) - 0.5 * LOG_2PI - 0.5 * P * diff ** 2, axis=-1)
    return logsumexp(log_prior + log_n, axis=-1)


# ----------------------------------------------------------------- masked episodic read (S12)
def masked_softmax_forward(s: np.ndarray, mask: np.ndarray):
    """beta = softmax over the valid entries of the last axis, eq. (S12); masked logits are
    excluded (never exponentiated) and a row with no valid entry gives beta = 0.

    Args:
        s: (..., Ne) logits. mask: bool, broadcastable to s, True on valid entries.
    Returns:
        beta: (..., Ne), and the cache for masked_softmax_backward.
    """
    mask = np.broadcast_to(mask, s.shape)
    shift = np.max(np.where(mask, s, -np.inf), axis=-1, keepdims=True, initial=-np.inf)
    shift = np.where(np.isfinite(shift), shift, 0.0)                          # all-masked rows
    expd = np.where(mask, np.exp(np.where(mask, s - shift, 0.0)), 0.0)
    total = np.sum(expd, axis=-1, keepdims=True)
    beta = expd / np.where(total > 0, total, 1.0)
    return beta, beta


def masked_softmax_backward(dbeta: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Adjoint of (S12): ds = beta (dbeta - sum_j beta_j dbeta_j); zero on masked entries."""
    return beta * (dbeta - np.sum(beta * dbeta, axis=-1, keepdims=True))


def masked_softmax_autodiff(s, mask: np.ndarray) -> ad.Tensor:
    """Autodiff twin of masked_softmax_forward (the shift is a constant: softmax ignores it)."""
    mask = np.broadcast_to(mask, s.shape)
    shift = np.max(np.where(mask, s.data, -np.inf), axis=-1, keepdims=True, initial=-np.inf)
    shift = np.where(np.isfinite(shift), shift, 0.0)
    expd = ad.where(mask, ad.exp(ad.where(mask, s - shift, 0.0)), 0.0)
    total = ad.sum(expd, axis=-1, keepdims=True)
    return expd / ad.where(total.data > 0, total, 1.0)


# ----------------------------------------------------------------- Gaussian KL (S14)
def gaussian_kl_forward(mu_q: np.ndarray, log_sig_q: np.ndarray, mu_p: np.ndarray, log_sig_p: np.ndarray):
    """KL(N(mu_q, sig_q^2) || N(mu_p, sig_p^2)) summed over the last axis, eq. (S14):
    sum_d [log sig_p - log sig_q + (sig_q^2 + (mu_q - mu_p)^2) / (2 sig_p^2) - 0.5]. Shapes broadcast."""
    ratio = np.exp(2.0 * (log_sig_q - log_sig_p))                            # sig_q^2 / sig_p^2
    scaled = (mu_q - mu_p) / np.exp(log_sig_p)
    value = np.sum(log_sig_p - log_sig_q + 0.5 * (ratio + scaled ** 2) - 0.5, axis=-1)
    return value, (ratio, scaled, np.exp(log_sig_p))


def gaussian_kl_backward(dout: np.ndarray, cache):
    """Adjoint of (S14). Returns (dmu_q, dlog_sig_q, dmu_p, dlog_sig_p), each shaped like the
    broadcast inputs (the caller sums over broadcast axes)."""
    ratio, scaled, sig_p = cache
    dout = dout[..., None]
    dmu_q = dout * scaled / sig_p
    return dmu_q, dout * (ratio - 1.0), -dmu_q, dout * (1.0 - ratio - scaled ** 2)


def gaussian_kl_autodiff(mu_q, log_sig_q, mu_p, log_sig_p) -> ad.Tensor:
    """Autodiff twin of gaussian_kl_forward."""
    ratio = ad.exp(2.0 * (log_sig_q - log_sig_p))
    scaled = (mu_q - mu_p) / ad.exp(log_sig_p)
    return ad.sum(log_sig_p - log_sig_q + 0.5 * (ratio + scaled * scaled) - 0.5, axis=-1)


# ----------------------------------------------------------------- consolidation (U1-U3)
class SemanticState(NamedTuple):
    mu: np.ndarray       # (Ns, Zc) slot means
    lam: np.ndarray      # (Ns, Zc) slot precisions
    count: np.ndarray    # (Ns,) soft number of consolidated traces


def consolidate(state: SemanticState, mu_c: np.ndarray, var_c: np.ndarray, q_a: np.ndarray,
                tau_t2: float, gamma: float, lam0: float) -> SemanticState:
    """Episodic -> semantic conversion with uncertainty, eqs. (U1)-(U3): forgetting, then the
    batched conjugate (precision-weighted) update by the traces of B tasks.

    Args:
        state: the current SemanticState (not modified).
        mu_c, var_c: (B, Zc) the tasks' concept posteriors (detached values).
        q_a: (B, Ns) their address posteriors q(a | X).
        tau_t2: conversion noise tau_t^2 >= 0. gamma: forgetting factor in (0, 1]. lam0: prior precision.
    Returns:
        The new SemanticState (fresh arrays). Applying traces one at a time gives the same result.
    """
    lam = gamma * state.lam + (1.0 - gamma) * lam0                           # (U1)
    pi = q_a[:, :, None] / (var_c[:, None, :] + tau_t2)                      # (B, Ns, Zc)  (U2)
    lam_new = lam + np.sum(pi, axis=0)                                       # (U3)
    mu_new = (lam * state.mu + np.sum(pi * mu_c[:, None, :], axis=0)) / lam_new
    return SemanticState(mu_new, lam_new, state.count + np.sum(q_a, axis=0))


def initial_semantic_state(rng: np.random.Generator, Ns: int, Zc: int, lam0: float = 1.0,
                           dtype=np.float64) -> SemanticState:
    """mu ~ N(0, 1), lam = lam0, count = 0 (spec C.2)."""
    return SemanticState(rng.standard_normal((Ns, Zc)).astype(dtype), np.full((Ns, Zc), lam0, dtype=dtype),
                         np.zeros(Ns, dtype=dtype))


def semantic_address_entropy(log_q_a: np.ndarray) -> np.ndarray:
    """H[q(a | X)] per task (B,), a monitoring quantity (log Ns for a uniform posterior)."""
    q = np.exp(log_q_a)
    return -np.sum(q * log_q_a, axis=-1)

