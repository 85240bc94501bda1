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

Manual pairs: address_logits_* computes (V1)-(V2) without the slot keys (the slots' second layer
moved to the query side by associativity); template_vae_* merges the products that read the same
input (e's four heads, g's two) and runs on M' itself when every slot is used (a = None, exact
mode); memory_first_layers_* is the exact mode's one product M' @ [key.W1 | emb.W]. The key-network
pair key_net_* (the plain (V1)) serves the query and the autodiff-free monitoring paths.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem.memory.vma_bound import (
    LOG_2PI, bernoulli_log_likelihood_autodiff, bernoulli_log_likelihood_backward,
    bernoulli_log_likelihood_forward_inplace, gaussian_log_density_autodiff, gaussian_log_density_backward,
    gaussian_log_density_forward,
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


def affine_backward(dout: np.ndarray, cache: LinearCache, need_dv: bool = True, dv_out: np.ndarray | None = None):
    """Adjoint of affine_forward: (dv (..., X) or None, dW (X, Y), db (Y,) or None). With
    need_dv=False the input gradient is not computed at all (v is data, or its gradient is
    discarded), which saves one product as large as the forward's. dv_out: None, or a (-1, X)
    array (a view into a larger buffer is fine) that receives dv, returned reshaped."""
    v, W, has_bias = cache
    X, Y = W.shape
    d2 = dout.reshape(-1, Y)
    dW = v.reshape(-1, X).T @ d2                                  # (X, Y), summed over every leading axis
    db = d2.sum(axis=0) if has_bias else None
    dv = None
    if need_dv:
        dv = np.matmul(d2, W.T, out=dv_out).reshape(dout.shape[:-1] + (X,))
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


# ----------------------------------------------------------------- in-place activations
def activation_inplace(z: np.ndarray, kind: str):
    """act(z) written into z's own buffer (z must be a temporary the caller owns, e.g. a fresh
    pre-activation). Returns (a, cache) where the cache (kind, a, a) serves
    minimem.nn.mlp.activation_backward: relu's mask [z > 0] equals [a > 0] (a = max(z, 0)), and
    tanh's derivative 1 - a^2 needs only a. Saves one allocation per layer."""
    if kind == "relu":
        np.maximum(z, 0.0, out=z)
    elif kind == "tanh":
        np.tanh(z, out=z)
    else:
        return activation_forward(z, kind)
    return z, (kind, z, z)


def activation_backward_inplace(dout: np.ndarray, cache) -> np.ndarray:
    """activation_backward written into dout's own buffer (dout must be a temporary the caller owns)."""
    kind, z, a = cache
    if kind == "relu":
        np.multiply(dout, z > 0, out=dout)
    elif kind == "tanh":
        dout *= 1.0 - a * a
    else:
        return activation_backward(dout, cache)
    return dout


# ----------------------------------------------------------------- address logits (V1, V2) with the slot keys folded away
# ----------------------------------------------------------------- the products over every slot (exact mode)
E_FIRST = ("key.W1", "emb.W")      # the two weights applied to every slot m_n when the VAE runs on M' itself
E_FIRST_BIASES = ("key.b1", "emb.b")


def memory_first_layers_forward(memory: np.ndarray, params: Mapping[str, np.ndarray]):
    """Exact mode runs the conditional VAE on every slot, so the slot key network's first layer
    (V1) and the entry embedding (V6) read the same rows m_n of M':
        M' @ [key.W1 | emb.W] + [key.b1 | emb.b]   one product, one pass over the memory
    instead of two (the outputs equal the separate products, column blocks of one array).
    Returns the pre-activations (B, N', H) and (B, N', He) (views) and the cache for
    memory_first_layers_backward."""
    both, cache = affine_forward(memory, np.concatenate([params[n] for n in E_FIRST], axis=1),
                                 np.concatenate([params[n] for n in E_FIRST_BIASES]))
    H = params["key.W1"].shape[1]
    return both[..., :H], both[..., H:], cache


def memory_first_layers_backward(dboth: np.ndarray, cache, H: int, need_dmemory: bool):
    """Adjoint of memory_first_layers_forward for dboth = [dpre_key | dpre_emb] (B, N', H + He):
    one product for both weight gradients, one for dmemory (None unless need_dmemory).
    Returns (dmemory, {key.W1, key.b1, emb.W, emb.b}) with the slot branch's part of key.*."""
    dmemory, dW, db = affine_backward(dboth, cache, need_dmemory)
    return dmemory, {"key.W1": dW[:, :H], "key.b1": db[:H], "emb.W": dW[:, H:], "emb.b": db[H:]}


class AddressCache(NamedTuple):
    k_x: np.ndarray      # (B, E) query keys
    query: object        # KeyCache of a separate query network pass (key_net_forward), or None (stacked rows)
    first: object        # LinearCache of the first-layer product (slots, or stacked [M'; x]); None: the caller's
    activation: tuple    # activation cache of that layer's output, (B N' [+ B], H) rows
    query_out: object    # stacked rows only: LinearCache of the query's second layer h_x @ key.W2 + key.b2
    u: np.ndarray        # (B, H) key.W2 k_x: the query seen through the slots' second layer
    W2: np.ndarray       # (H, E) key.W2
    b2: np.ndarray       # (E,) key.b2
    scale: float


def address_logits_forward(x: np.ndarray, memory: np.ndarray, params: Mapping[str, np.ndarray], query_prefix: str,
                           activation: str, scale: float = 1.0, pre: np.ndarray | None = None):
    """Address logits l_bn = scale <k_x[b], k_n[b, n]>, eqs. (V1)-(V2), without forming the slot keys.

    The slot keys are k_n = s_n @ W2 + b2 with s_n = act(m_n @ W1 + b1) (H,) the slot's hidden layer, so
        <k_x, k_n> = <s_n, W2 k_x> + <b2, k_x>          (associativity of the products)
    and the slots' second layer moves to the query side: one (B, E) x (E, H) product u = k_x @ W2^T
    instead of a (B N', H) x (H, E) one, then one length-H dot product per slot. The backward keeps
    the same shortcut (address_logits_backward). The value is l of (V2) exactly (the constant
    <b2, k_x> included), up to rounding. When the query shares the key network (query_prefix
    "key") the first layer runs once on the stacked rows [M'; x] (B N' + B, X): one product here
    and one for its weight gradient, instead of two each.

    Args:
        x: (B, X) queries. memory: (B, N', X) slots M'. params: key.* (and query.* if query_prefix is "query").
        pre: None, or M' @ key.W1 + key.b1 (B, N', H) computed by the caller (memory_first_layers_forward),
            a temporary this function may overwrite; its gradient is then left to the caller.
    Returns:
        l: (B, N') and the cache for address_logits_backward.
    """
    W2, b2 = params["key.W2"], params["key.b2"]
    B, Np, X = memory.shape
    query = first = query_out = None
    if pre is None and query_prefix == "key":          # shared key.W1: slots and query as one stack of rows
        both, first = affine_forward(np.concatenate([memory.reshape(B * Np, X), x]), params["key.W1"], params["key.b1"])
        both, ca = activation_inplace(both, activation)                               # (B N' + B, H)
        hidden = both[:B * Np].reshape(B, Np, -1)                                     # (B, N', H) s
        k_x, query_out = affine_forward(both[B * Np:], W2, b2)                        # (B, E)
    else:
        k_x, query = key_net_forward(x, params, query_prefix, activation)             # (B, E)
        if pre is None:
            pre, first = affine_forward(memory, params["key.W1"], params["key.b1"])   # (B, N', H)
        hidden, ca = activation_inplace(pre, activation)
    u = k_x @ W2.T                                                                    # (B, H)
    l = np.matmul(hidden, u[:, :, None])[..., 0]                                      # (B, N') <s_n, W2 k_x>
    l += (k_x @ b2)[:, None]                                                          # + <b2, k_x>
    if scale != 1.0:
        l *= scale
    return l, AddressCache(k_x, query, first, ca, query_out, u, W2, b2, scale)


def address_logits_backward(dl: np.ndarray, cache: AddressCache, query_prefix: str, need_dmemory: bool = False,
                            dpre_out: np.ndarray | None = None):
    """Adjoint of address_logits_forward. With dk_n = scale dl_bn k_x[b] (the slot keys' gradient,
    never formed) and P_b = sum_n dl_bn s_bn (B, H):
        slot branch   dW2 = sum_bn s_bn^T dk_n = scale P^T k_x,   db2 = scale sum_b (sum_n dl_bn) k_x[b],
                      ds_bn = dk_n W2^T = scale dl_bn u_b          (u = W2 k_x, cached)
        query branch  dk_x = scale sum_n dl_bn k_n = scale (P W2 + (sum_n dl_bn) b2)
    Returns dmemory (B, N', X) (None unless need_dmemory: few-shot memories are data) and the
    gradients of key.* (the shared network accumulates both branches) and query.* if separate.
    With stacked rows the adjoints of both branches' first layer fill one (B N' + B, H) buffer and
    key.W1, key.b1 come from one product. If the forward was given `pre`, the slots' first layer
    belongs to the caller: the adjoint of `pre` is written into dpre_out (B N', H) (a 2-D view into
    the caller's buffer), and dmemory and the slot branch's key.W1, key.b1 are left to the caller."""
    if cache.first is None and dpre_out is None:
        raise ValueError("the forward was given pre: pass dpre_out, the (B N', H) buffer of its adjoint")
    k_x, H = cache.k_x, cache.u.shape[-1]
    B, Np = dl.shape
    dl = dl * cache.scale if cache.scale != 1.0 else dl
    hidden = cache.activation[2].reshape(-1, H)[:B * Np].reshape(B, Np, H)            # (B, N', H) s
    P = np.matmul(dl[:, None, :], hidden)[:, 0, :]                                    # (B, H)
    dl_sum = dl.sum(axis=1)                                                           # (B,)
    dk_x = P @ cache.W2 + dl_sum[:, None] * cache.b2                                  # (B, E)
    grads = {"key.W2": P.T @ k_x, "key.b2": dl_sum @ k_x}                             # slot branch, layer 2
    if cache.query_out is not None:                     # stacked rows [M'; x]: one buffer, one product
        dboth = np.empty((B * Np + B, H), dtype=dl.dtype)
        np.multiply(dl[:, :, None], cache.u[:, None, :], out=dboth[:B * Np].reshape(B, Np, H))   # ds_bn
        _, dW2, db2 = affine_backward(dk_x, cache.query_out, dv_out=dboth[B * Np:])   # query branch, layer 2
        grads["key.W2"] += dW2
        grads["key.b2"] += db2
        dboth = activation_backward_inplace(dboth, cache.activation)
        dstack, grads["key.W1"], grads["key.b1"] = affine_backward(dboth, cache.first, need_dmemory)
        return (None if dstack is None else dstack[:B * Np].reshape(B, Np, -1)), grads
    out = None if dpre_out is None else dpre_out.reshape(B, Np, H)                    # splitting an axis: a view
    dhidden = np.multiply(dl[:, :, None], cache.u[:, None, :], out=out)              # (B, N', H)
    dpre = activation_backward_inplace(dhidden, cache.activation)
    dmemory = None
    if cache.first is not None:
        dmemory, grads["key.W1"], grads["key.b1"] = affine_backward(dpre, cache.first, need_dmemory)
    _, query_grads = key_net_backward(dk_x, cache.query, query_prefix, need_dv=False)   # x is data
    for name, value in query_grads.items():                  # shared net: accumulate (in place: fresh arrays)
        if name in grads:
            grads[name] += value
        else:
            grads[name] = value
    return dmemory, grads


# ----------------------------------------------------------------- template VAE pair (V6-V11)
class TemplateVAECache(NamedTuple):
    a: np.ndarray | None     # (S', B) int addresses, or None: every slot once, rows in (B, N') order
    m: np.ndarray            # (R..., X) templates: gathered (S', B, X), or M' itself (B, N', X)
    x: np.ndarray            # (1, B, X) or (B, 1, X): x broadcast against the rows R...
    emb: tuple               # (LinearCache, activation cache) of e
    e_heads: object          # LinearCache of e @ [prior.Wm | prior.Ws | enc.We | dec.We] + biases
    enc_x: object            # LinearCache of x @ enc.Wx
    enc_act: tuple           # activation cache of g
    enc_out: object          # LinearCache of g @ [enc.Wm | enc.Ws] + [enc.bm | enc.bs]
    sig_eps: np.ndarray      # (R..., Z) sig_q * eps = z - mu_q
    dec_z: object            # LinearCache of z @ dec.Wz
    dec_act: tuple           # activation cache of r
    dec_out: object          # LinearCache of r @ dec.Wo + dec.bo
    skip: np.ndarray         # (X,) dec.skip
    log_px: tuple            # Bernoulli cache
    log_pz: tuple            # Gaussian cache of p(z | m)
    mu_q: np.ndarray         # (R..., Z) kept for monitoring (KL_z)
    log_sig_q: np.ndarray
    mu_p: np.ndarray
    log_sig_p: np.ndarray


E_HEADS = ("prior.Wm", "prior.Ws", "enc.We", "dec.We")     # every weight that reads e, side by side
E_BIASES = ("prior.bm", "prior.bs", "enc.b", "dec.b")      # and the biases of those four affine maps


def template_vae_forward(params: Mapping[str, np.ndarray], x: np.ndarray, memory: np.ndarray,
                         a: np.ndarray | None, eps: np.ndarray, activation: str = "tanh", pre_e: np.ndarray | None = None):
    """The conditional VAE at the addresses a, eqs. (V6)-(V11), vectorised over the rows R...

    Rows: with addresses a (S', B), the templates m = M'[b, a_sb] are gathered, R... = (S', B). With
    a = None every slot is used once (the exact-address bound): the templates are the memory M'
    itself, no gather and no copy, and the rows stay in its (B, N') order.

    Products are merged where the algebra allows (outputs equal to the separate products):
        e @ [prior.Wm | prior.Ws | enc.We | dec.We] + [prior.bm | prior.bs | enc.b | dec.b]
            one product for the four affine maps that read e, eqs. (V7), (V8), (V10)
        g @ [enc.Wm | enc.Ws] + [enc.bm | enc.bs]   one product for mu_q and log sig_q (V8)
        x @ enc.Wx on the B rows of x only: the x-part of the encoder is the same for every sample
    and log N(z; mu_q, sig_q) uses (z - mu_q) / sig_q = eps (V9): sum_d -eps_d^2 / 2 - log sig_q,d.

    Args:
        params: the model parameters (emb.*, prior.*, enc.*, dec.*).
        x: (B, X) targets. memory: (B, N', X) addressable slots M'. a: (S', B) int addresses or None.
        eps: (S', B, Z) standard normal noise, or (B, N', Z) when a is None.
        pre_e: None, or M' @ emb.W + emb.b (B, N', He) computed by the caller when a is None
            (memory_first_layers_forward), a temporary this function may overwrite; the backward
            then leaves emb.* and the embedding's part of dmemory to the caller.
    Returns:
        inner: (S', B), or (B, N') when a is None, = log p(x|z, m_a) + log N(z; mu_p, sig_p)
        - log N(z; mu_q, sig_q), i.e. log w (V12) without the address terms; and the cache for
        template_vae_backward.
    """
    p = params
    B = x.shape[0]
    Z, H = p["prior.Wm"].shape[1], p["enc.We"].shape[1]
    if a is None:
        m, x_rows = memory, x[:, None, :]                                        # (B, N', X)  (V6) every slot
    else:
        slot = a + np.arange(B) * memory.shape[1]                                # (S', B) row of (b, a_sb) in M'
        m, x_rows = np.take(memory.reshape(-1, memory.shape[2]), slot, axis=0), x[None]   # (S', B, X)  (V6) gather
    c_emb = None
    if pre_e is None:
        pre_e, c_emb = affine_forward(m, p["emb.W"], p["emb.b"])
    e, a_emb = activation_inplace(pre_e, activation)                             # (R..., He)
    heads, c_heads = affine_forward(e, np.concatenate([p[n] for n in E_HEADS], axis=1),
                                    np.concatenate([p[n] for n in E_BIASES]))    # (R..., 2Z + 2H)
    mu_p, log_sig_p = heads[..., :Z], heads[..., Z:2 * Z]                        # (V7)
    xw, c_ex = affine_forward(x_rows, p["enc.Wx"])                               # (1, B, H) or (B, 1, H)  (V8)
    g, a_enc = activation_inplace(heads[..., 2 * Z:2 * Z + H] + xw, activation)  # x-part broadcast over samples
    q_heads, c_q = affine_forward(g, np.concatenate([p["enc.Wm"], p["enc.Ws"]], axis=1),
                                  np.concatenate([p["enc.bm"], p["enc.bs"]]))    # (R..., 2Z)
    mu_q, log_sig_q = q_heads[..., :Z], q_heads[..., Z:]
    sig_eps = np.exp(log_sig_q)
    sig_eps *= eps                                                               # sig_q * eps
    z = mu_q + sig_eps                                                           # (R..., Z)    (V9)
    pre_r, c_dz = affine_forward(z, p["dec.Wz"])                                 # (R..., H)    (V10)
    pre_r += heads[..., 2 * Z + H:]                                              # + e @ dec.We + dec.b
    r, a_dec = activation_inplace(pre_r, activation)
    logit, c_do = affine_forward(r, p["dec.Wo"], p["dec.bo"])                    # (R..., X)
    work = np.multiply(m, p["dec.skip"], dtype=logit.dtype)
    logit += work                                                                # template skip
    log_px, c_px = bernoulli_log_likelihood_forward_inplace(x_rows, logit, work)   # (R...), reuses the buffer
    log_pz, c_pz = gaussian_log_density_forward(z, mu_p, log_sig_p)              # (R...)       (V11)
    log_qz = np.sum(-0.5 * eps * eps - log_sig_q, axis=-1) - 0.5 * LOG_2PI * Z   # (z - mu_q) / sig_q = eps
    cache = TemplateVAECache(a, m, x_rows, (c_emb, a_emb), c_heads, c_ex, a_enc, c_q, sig_eps, c_dz, a_dec, c_do,
                             p["dec.skip"], c_px, c_pz, mu_q, log_sig_q, mu_p, log_sig_p)
    return log_px + log_pz - log_qz, cache


def template_vae_backward(dinner: np.ndarray, cache: TemplateVAECache, memory_shape: tuple | None = None,
                          dpre_e_out: np.ndarray | None = None):
    """Adjoint of template_vae_forward (steps walked back from V11 to V6), with the merged products
    of the forward: one product each for the adjoint of e's four heads and of g's two.

    The posterior density needs no adjoint of its own: at z = mu_q + sig_q eps,
    log N(z; mu_q, sig_q) = sum_d -eps_d^2 / 2 - log sig_q,d - (Z / 2) log 2 pi, so -log q(z) in
    inner adds dinner to every dlog sig_q,d and nothing to z or mu_q (the total derivative through
    z and through (mu_q, sig_q) as separate arguments cancels: -eps / sig + eps / sig = 0 for mu_q,
    -eps^2 + (eps^2 - 1) = -1 for log sig_q).

    Args:
        dinner: (R...) upstream gradient of inner ((S', B), or (B, N') without addresses).
        cache: from template_vae_forward.
        memory_shape: (B, N', X) to also return dmemory (the gather's scatter-add), or None.
        dpre_e_out: with a forward given pre_e, the (B N', He) 2-D view that receives the adjoint
            of pre_e (emb.* and the embedding's part of dmemory are then the caller's).
    Returns:
        grads {emb.*, prior.*, enc.*, dec.*} and dmemory (B, N', X) or None.
    """
    c = cache
    if c.emb[0] is None and dpre_e_out is None:
        raise ValueError("the forward was given pre_e: pass dpre_e_out, the (B N', He) buffer of its adjoint")
    Z = c.mu_q.shape[-1]
    H = c.dec_z.W.shape[1]
    grads = {}
    dlogit = bernoulli_log_likelihood_backward(dinner, c.log_px)                 # (R..., X)    (V10)
    X = dlogit.shape[-1]
    grads["dec.skip"] = np.einsum("rx,rx->x", dlogit.reshape(-1, X), c.m.reshape(-1, X))   # (X,)
    rows = dlogit.shape[:-1]
    dheads = np.empty(rows + (2 * Z + 2 * H,), dtype=dlogit.dtype)              # adjoint of e's four heads,
    dheads2 = dheads.reshape(-1, 2 * Z + 2 * H)                                  # filled in place below
    dr, grads["dec.Wo"], grads["dec.bo"] = affine_backward(dlogit, c.dec_out, dv_out=dheads2[:, 2 * Z + H:])
    dpre_r = activation_backward_inplace(dr, c.dec_act)                          # (R..., H), in dheads (V10)
    dz, grads["dec.Wz"], _ = affine_backward(dpre_r, c.dec_z)
    dz_p, dmu_p, dlog_sig_p = gaussian_log_density_backward(dinner, c.log_pz)    # (V11) prior
    dz += dz_p                                                                   # (R..., Z)
    dq_heads = np.empty(dz.shape[:-1] + (2 * Z,), dtype=dz.dtype)               # [dmu_q | dlog sig_q]
    dq_heads[..., :Z] = dz                                                       # (V9): dz/dmu_q = 1
    np.multiply(dz, c.sig_eps, out=dq_heads[..., Z:])                            # dz/dlog sig_q = sig_q eps
    dq_heads[..., Z:] += dinner[..., None]                                       # -log q(z) (docstring)
    dg, dWq, dbq = affine_backward(dq_heads, c.enc_out, dv_out=dheads2[:, 2 * Z:2 * Z + H])   # (V8)
    grads["enc.Wm"], grads["enc.Ws"] = dWq[:, :Z], dWq[:, Z:]
    grads["enc.bm"], grads["enc.bs"] = dbq[:Z], dbq[Z:]
    dpre_g = activation_backward_inplace(dg, c.enc_act)                          # (R..., H), in dheads
    sample_axes = tuple(i for i, n in enumerate(c.x.shape[:-1]) if n == 1)       # x broadcast over these
    _, grads["enc.Wx"], _ = affine_backward(dpre_g.sum(axis=sample_axes, keepdims=True), c.enc_x, need_dv=False)
    dheads[..., :Z] = dmu_p                                                      # (V7)
    dheads[..., Z:2 * Z] = dlog_sig_p
    de, dW_heads, db_heads = affine_backward(dheads, c.e_heads, dv_out=dpre_e_out)   # one product for all four
    for w_name, b_name, lo, hi in zip(E_HEADS, E_BIASES, (0, Z, 2 * Z, 2 * Z + H), (Z, 2 * Z, 2 * Z + H, 2 * Z + 2 * H)):
        grads[w_name], grads[b_name] = dW_heads[:, lo:hi], db_heads[lo:hi]        # column blocks of the merged product
    dpre_e = activation_backward_inplace(de, c.emb[1])                           # (V6)
    dm_emb = None
    if c.emb[0] is not None:                                                     # else: the caller's product
        dm_emb, grads["emb.W"], grads["emb.b"] = affine_backward(dpre_e, c.emb[0], need_dv=memory_shape is not None)
    dmemory = None
    if memory_shape is not None:
        dm = dlogit * c.skip                                                     # template skip
        if dm_emb is not None:
            dm += dm_emb
        if c.a is None:                                                          # the templates are M' itself
            dmemory = dm
        else:                                     # scatter-add: several samples may pick one slot (F.4)
            dmemory = np.zeros(memory_shape, dtype=dm.dtype)
            B = memory_shape[0]
            np.add.at(dmemory, (np.broadcast_to(np.arange(B)[None, :], c.a.shape), c.a), dm)
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
