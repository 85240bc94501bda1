"""The networks of VMA (Bornschein et al., 2017, arXiv 1709.07116; specs/generative_memory.md A.2,
A.3): the key network h shared by the query and the memory slots, eq. (V1), and the conditional
VAE evaluated at the retrieved templates, eqs. (V6)-(V11). Each is a manual forward/backward pair
with its autodiff twin; minimem/memory/vma.py assembles them into the model.

Shapes: B episodes, N' addressable slots, S' samples (or N' slots in exact mode), X pixels,
Z latent, E key size, He entry embedding, H hidden size. Every weight is used as `v @ W`;
"act" is the hidden activation (tanh by default, relu for speed runs).
    (V1)  h(v) = act(v @ W1 + b1) @ W2 + b2                                   (..., E)
    (V6)  m = M'[b, a];  e = act(m @ emb.W + emb.b)                           (S', B, He)
    (V7)  mu_p = e @ prior.Wm + prior.bm,  log sig_p = e @ prior.Ws + prior.bs  (S', B, Z)
    (V8)  g = act(x @ enc.Wx + e @ enc.We + enc.b);  mu_q, log sig_q = g @ enc.W{m,s} + enc.b{m,s}
    (V9)  z = mu_q + exp(log sig_q) * eps
    (V10) r = act(z @ dec.Wz + e @ dec.We + dec.b);  logit = r @ dec.Wo + dec.bo + dec.skip * m
    (V11) inner = log p(x|z, m) + log N(z; mu_p, sig_p) - log N(z; mu_q, sig_q)   (S', B)
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem.memory.vma_bound import (
    bernoulli_log_likelihood_autodiff, bernoulli_log_likelihood_backward, bernoulli_log_likelihood_forward,
    gaussian_log_density_autodiff, gaussian_log_density_backward, gaussian_log_density_forward,
)
from minimem.nn.linear import LinearCache, linear_autodiff
from minimem.nn.mlp import activation_autodiff, activation_backward, activation_forward


# ----------------------------------------------------------------- affine helpers
def affine_forward(v: np.ndarray, W: np.ndarray, b: np.ndarray | None = None):
    """y = v @ W + b for v (..., X) as ONE 2-D product over every leading axis (NumPy runs a
    3-D @ 2-D matmul as a loop of small products). Returns y (..., Y) and a LinearCache.
    Shapes are checked by the model, not here (this is the inner loop of a training step)."""
    X, Y = W.shape
    y = (v.reshape(-1, X) @ W).reshape(v.shape[:-1] + (Y,))
    if b is not None:
        y += b
    return y, LinearCache(v, W, b is not None)


def affine_backward(dout: np.ndarray, cache: LinearCache, need_dv: bool = True):
    """Adjoint of affine_forward: (dv (..., X) or None, dW (X, Y), db (Y,) or None). With
    need_dv=False the input gradient is not computed at all (v is data, or its gradient is
    discarded), which saves one product as large as the forward's."""
    v, W, has_bias = cache
    X, Y = W.shape
    d2 = dout.reshape(-1, Y)
    dW = v.reshape(-1, X).T @ d2                                  # (X, Y), summed over every leading axis
    db = d2.sum(axis=0) if has_bias else None
    dv = (d2 @ W.T).reshape(dout.shape[:-1] + (X,)) if need_dv else None
    return dv, dW, db


# ----------------------------------------------------------------- key network pair (V1)
class KeyCache(NamedTuple):
    hidden: object       # LinearCache of the first layer
    activation: tuple    # activation cache
    out: object          # LinearCache of the second layer


def key_net_forward(v: np.ndarray, params: Mapping[str, np.ndarray], prefix: str, activation: str):
    """h(v) = act(v @ W1 + b1) @ W2 + b2, eq. (V1), for a query (B, X) or slots (B, N', X).
    Returns k (..., E) and the cache for key_net_backward."""
    pre, c1 = affine_forward(v, params[f"{prefix}.W1"], params[f"{prefix}.b1"])    # (..., H)
    hidden, ca = activation_forward(pre, activation)
    k, c2 = affine_forward(hidden, params[f"{prefix}.W2"], params[f"{prefix}.b2"])   # (..., E)
    return k, KeyCache(c1, ca, c2)


def key_net_backward(dk: np.ndarray, cache: KeyCache, prefix: str, need_dv: bool = True):
    """Adjoint of (V1). Returns dv (..., X) (None with need_dv=False: v is data) and
    {prefix.W1, prefix.b1, prefix.W2, prefix.b2}."""
    dhidden, dW2, db2 = affine_backward(dk, cache.out)
    dpre = activation_backward(dhidden, cache.activation)
    dv, dW1, db1 = affine_backward(dpre, cache.hidden, need_dv)
    return dv, {f"{prefix}.W1": dW1, f"{prefix}.b1": db1, f"{prefix}.W2": dW2, f"{prefix}.b2": db2}


def key_net_autodiff(v, tparams, prefix: str, activation: str) -> ad.Tensor:
    """Autodiff twin of key_net_forward."""
    hidden = activation_autodiff(linear_autodiff(v, tparams[f"{prefix}.W1"], tparams[f"{prefix}.b1"]), activation)
    return linear_autodiff(hidden, tparams[f"{prefix}.W2"], tparams[f"{prefix}.b2"])


# ----------------------------------------------------------------- template VAE pair (V6-V11)
class TemplateVAECache(NamedTuple):
    a: np.ndarray            # (S', B) int addresses
    m: np.ndarray            # (S', B, X) retrieved templates
    emb: tuple               # (LinearCache, activation cache) of e
    e: np.ndarray            # (S', B, He)
    prior: tuple             # LinearCaches of mu_p, log sig_p
    enc_x: object            # LinearCache of x @ enc.Wx
    enc_e: object            # LinearCache of e @ enc.We + enc.b
    enc_act: tuple           # activation cache of g
    enc_out: tuple           # LinearCaches of mu_q, log sig_q
    sig_q: np.ndarray        # (S', B, Z)
    eps: np.ndarray          # (S', B, Z)
    dec_z: object            # LinearCache of z @ dec.Wz + dec.b
    dec_e: object            # LinearCache of e @ dec.We
    dec_act: tuple           # activation cache of r
    dec_out: object          # LinearCache of r @ dec.Wo + dec.bo
    skip: np.ndarray         # (X,) dec.skip
    log_px: tuple            # Bernoulli cache
    log_pz: tuple            # Gaussian cache of p(z | m)
    log_qz: tuple            # Gaussian cache of q(z | x, m)
    mu_q: np.ndarray         # (S', B, Z) kept for monitoring (KL_z)
    log_sig_q: np.ndarray
    mu_p: np.ndarray
    log_sig_p: np.ndarray


def template_vae_forward(params: Mapping[str, np.ndarray], x: np.ndarray, memory: np.ndarray,
                         a: np.ndarray, eps: np.ndarray, activation: str = "tanh"):
    """The conditional VAE at the addresses a, eqs. (V6)-(V11), vectorised over (S', B).

    Args:
        params: the model parameters (emb.*, prior.*, enc.*, dec.*).
        x: (B, X) targets. memory: (B, N', X) addressable slots M'. a: (S', B) int addresses.
        eps: (S', B, Z) standard normal noise.
    Returns:
        inner: (S', B) = log p(x|z, m_a) + log N(z; mu_p, sig_p) - log N(z; mu_q, sig_q),
        i.e. log w (V12) without the address terms; and the cache for template_vae_backward.
    """
    p = params
    B = x.shape[0]
    m = memory[np.arange(B)[None, :], a]                                         # (S', B, X)  (V6) gather
    pre_e, c_emb = affine_forward(m, p["emb.W"], p["emb.b"])
    e, a_emb = activation_forward(pre_e, activation)                             # (S', B, He)
    mu_p, c_mp = affine_forward(e, p["prior.Wm"], p["prior.bm"])                 # (S', B, Z)   (V7)
    log_sig_p, c_sp = affine_forward(e, p["prior.Ws"], p["prior.bs"])
    xw, c_ex = affine_forward(x, p["enc.Wx"])                                    # (B, H)       (V8)
    pre_ee, c_ee = affine_forward(e, p["enc.We"], p["enc.b"])                    # (S', B, H)
    g, a_enc = activation_forward(xw[None] + pre_ee, activation)
    mu_q, c_mq = affine_forward(g, p["enc.Wm"], p["enc.bm"])                     # (S', B, Z)
    log_sig_q, c_sq = affine_forward(g, p["enc.Ws"], p["enc.bs"])
    sig_q = np.exp(log_sig_q)
    z = mu_q + sig_q * eps                                                       # (S', B, Z)   (V9)
    pre_rz, c_dz = affine_forward(z, p["dec.Wz"], p["dec.b"])                    # (S', B, H)   (V10)
    pre_re, c_de = affine_forward(e, p["dec.We"])
    r, a_dec = activation_forward(pre_rz + pre_re, activation)
    out, c_do = affine_forward(r, p["dec.Wo"], p["dec.bo"])                      # (S', B, X)
    logit = out                                                                  # (out is a fresh array)
    logit += p["dec.skip"] * m                                                   # template skip
    log_px, c_px = bernoulli_log_likelihood_forward(x[None], logit)              # (S', B)
    log_pz, c_pz = gaussian_log_density_forward(z, mu_p, log_sig_p)              # (S', B)      (V11)
    log_qz, c_qz = gaussian_log_density_forward(z, mu_q, log_sig_q)
    cache = TemplateVAECache(a, m, (c_emb, a_emb), e, (c_mp, c_sp), c_ex, c_ee, a_enc, (c_mq, c_sq), sig_q, eps,
                             c_dz, c_de, a_dec, c_do, p["dec.skip"], c_px, c_pz, c_qz, mu_q, log_sig_q, mu_p, log_sig_p)
    return log_px + log_pz - log_qz, cache


def template_vae_backward(dinner: np.ndarray, cache: TemplateVAECache, memory_shape: tuple | None = None):
    """Adjoint of template_vae_forward (steps walked back from V11 to V6).

    Args:
        dinner: (S', B) upstream gradient of inner.
        cache: from template_vae_forward.
        memory_shape: (B, N', X) to also return dmemory (the gather's scatter-add), or None.
    Returns:
        grads {emb.*, prior.*, enc.*, dec.*} and dmemory (B, N', X) or None.
    """
    c = cache
    grads = {}
    dlogit = bernoulli_log_likelihood_backward(dinner, c.log_px)                 # (S', B, X)   (V10)
    dz_p, dmu_p, dlog_sig_p = gaussian_log_density_backward(dinner, c.log_pz)    # (V11) prior
    dz_q, dmu_q, dlog_sig_q = gaussian_log_density_backward(-dinner, c.log_qz)   # (V11) posterior
    grads["dec.skip"] = np.einsum("sbx,sbx->x", dlogit, c.m)                     # (X,)
    dr, grads["dec.Wo"], grads["dec.bo"] = affine_backward(dlogit, c.dec_out)
    dpre_r = activation_backward(dr, c.dec_act)
    dz_dec, grads["dec.Wz"], grads["dec.b"] = affine_backward(dpre_r, c.dec_z)
    de, grads["dec.We"], _ = affine_backward(dpre_r, c.dec_e)
    dz = dz_dec + dz_p + dz_q                                                    # (S', B, Z)
    dmu_q = dmu_q + dz                                                           # (V9): dz/dmu_q = 1
    dlog_sig_q = dlog_sig_q + dz * c.sig_q * c.eps                               # dz/dlog sig_q = sig_q eps
    dg_m, grads["enc.Wm"], grads["enc.bm"] = affine_backward(dmu_q, c.enc_out[0])   # (V8)
    dg_s, grads["enc.Ws"], grads["enc.bs"] = affine_backward(dlog_sig_q, c.enc_out[1])
    dpre_g = activation_backward(dg_m + dg_s, c.enc_act)                         # (S', B, H)
    de_enc, grads["enc.We"], grads["enc.b"] = affine_backward(dpre_g, c.enc_e)
    _, grads["enc.Wx"], _ = affine_backward(np.sum(dpre_g, axis=0), c.enc_x, need_dv=False)   # x: shared, data
    de_pm, grads["prior.Wm"], grads["prior.bm"] = affine_backward(dmu_p, c.prior[0])   # (V7)
    de_ps, grads["prior.Ws"], grads["prior.bs"] = affine_backward(dlog_sig_p, c.prior[1])
    dpre_e = activation_backward(de + de_enc + de_pm + de_ps, c.emb[1])          # (V6)
    dm_emb, grads["emb.W"], grads["emb.b"] = affine_backward(dpre_e, c.emb[0], need_dv=memory_shape is not None)
    dmemory = None
    if memory_shape is not None:                  # scatter-add: several samples may pick one slot (F.4)
        dm = dlogit * c.skip                                                     # (S', B, X) template skip
        dmemory = np.zeros(memory_shape, dtype=dm.dtype)
        B = memory_shape[0]
        np.add.at(dmemory, (np.broadcast_to(np.arange(B)[None, :], c.a.shape), c.a), dm + dm_emb)
    return grads, dmemory


def template_vae_autodiff(tparams, x, m, eps, activation: str = "tanh") -> ad.Tensor:
    """Autodiff twin of template_vae_forward, given the gathered templates m (S', B, X)."""
    p = tparams
    e = activation_autodiff(linear_autodiff(m, p["emb.W"], p["emb.b"]), activation)          # (V6)
    mu_p = linear_autodiff(e, p["prior.Wm"], p["prior.bm"])                                # (V7)
    log_sig_p = linear_autodiff(e, p["prior.Ws"], p["prior.bs"])
    g = activation_autodiff(linear_autodiff(x, p["enc.Wx"]) + linear_autodiff(e, p["enc.We"], p["enc.b"]),
                            activation)                                                    # (V8)
    mu_q = linear_autodiff(g, p["enc.Wm"], p["enc.bm"])
    log_sig_q = linear_autodiff(g, p["enc.Ws"], p["enc.bs"])
    z = mu_q + ad.exp(log_sig_q) * eps                                                     # (V9)
    r = activation_autodiff(linear_autodiff(z, p["dec.Wz"], p["dec.b"]) + linear_autodiff(e, p["dec.We"]),
                            activation)                                                    # (V10)
    logit = linear_autodiff(r, p["dec.Wo"], p["dec.bo"]) + p["dec.skip"] * m
    return (bernoulli_log_likelihood_autodiff(x, logit) + gaussian_log_density_autodiff(z, mu_p, log_sig_p)
            - gaussian_log_density_autodiff(z, mu_q, log_sig_q))                           # (V11)
