"""The multi-head attention block (MAB) of HMA (specs/nam_hma.md B2-B3): Set-Transformer style
cross-attention with pre-layer-norm, a residual from the un-normalised queries and a GELU
feed-forward with the exact (erf) GELU of minimem.nn.gelu. minimem.memory.hma builds the head from two
of these blocks.

Shapes: B sets (a batch of sets), Tq queries per set, Tk keys of the set's own, Ts keys shared by
every set (HMA's queue or memory tokens, stored once instead of B times), Dc the width of
everything (dim_Q = dim_KV = dim_emb = dim_out = D + L_h in HMA), H heads of width d_s = Dc / H,
F = ff_mult * Dc the feed-forward width.
Equations (labels of the spec, B3):
    (MAB-1)  X_bar = LN_q(X), Y_bar = LN_kv([Y ; Y_shared])
             Q = X_bar W_q + b_q,  K = Y_bar W_k + b_k,  V = Y_bar W_v + b_v
    (MAB-2)  A_h = softmax(scale Q_h K_h^T) over keys, per head h; HMA's scale is
             tau / sqrt(Dc) (the reference: the FULL key width, B8.5) or tau / sqrt(d_s)
    (MAB-3)  O = concat_h(A_h V_h);  Hm = dropout(O) + R(X),  R = identity or X W_res + b_res
    (MAB-4)  out = Hm + dropout(W_2 dropout(GELU(LN_ff(Hm) W_1 + b_1)) + b_2)
    GELU(z) = z Phi(z) = z (1 + erf(z / sqrt 2)) / 2,   GELU'(z) = Phi(z) + z phi(z)
There is no output projection after the heads (Set Transformer), and the residual of MAB-3 is
taken from X before its layer norm. Every layer norm has eps 1e-12 (the reference's).
The shared keys Y_shared (Ts, Dc) are normalised and projected once, and never copied per set: their
scores are one matmul per head over the queries of all sets (shared_key_attention_forward), which
also sums their gradients over the sets in the backward. The autodiff twin broadcasts them to every
set and concatenates instead: a different formulation, so the two engines check each other. An
optional boolean mask (B, Tq, Tk + Ts), True where allowed, removes keys (HMA's exclude_self).
Dropout is an explicit input (DESIGN.md): MABDropout holds three multiplier arrays, 0 or
1 / (1 - p), for the attention output (B, Tq, Dc), the hidden layer (B, Tq, F) and the
feed-forward output (B, Tq, Dc); None means no dropout.
Parameters (names inside a block; HMA prefixes them with "block_r." or "block_a."):
    ln_q.gain, ln_q.bias, ln_kv.gain, ln_kv.bias, ln_ff.gain, ln_ff.bias   (Dc,)
    W_q, W_k, W_v (Dc, Dc) used as `x @ W`, head h owning columns [h d_s, (h + 1) d_s); b_q, b_k, b_v (Dc,)
    res.W (Dc, Dc), res.b (Dc,)            only with res_linear (the graph code's residual map)
    ff0.W (Dc, F), ff0.b (F,), ff1.W (F, Dc), ff1.b (Dc,)
PyTorch's MAB (fc_q, fc_k, fc_v, fc_res, rff) maps as W = Linear.weight.T, b = Linear.bias.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem.nn.attention import dot_product_attention_autodiff
from minimem.nn.gelu import gelu_erf_autodiff, gelu_erf_backward, gelu_erf_forward
from minimem.nn.layernorm import layernorm_autodiff, layernorm_backward, layernorm_forward, layernorm_init
from minimem.nn.linear import linear_autodiff, linear_backward, linear_forward, linear_init, with_prefix

LN_EPS = 1e-12        # the reference's LayerNorm eps (spec B2)


# ----------------------------------------------------------------- attention with shared keys
class SharedKeyAttentionCache(NamedTuple):
    Q: np.ndarray             # (B, H, Tq, d_s)
    K: np.ndarray | None      # (B, H, Tk, d_s) each set's own keys
    V: np.ndarray | None
    K_s: np.ndarray | None    # (H, Ts, d_s) keys shared by every set
    V_s: np.ndarray | None
    A: np.ndarray             # (B, H, Tq, Tk + Ts) attention weights, own keys first
    scale: float


def _all_queries(x: np.ndarray) -> np.ndarray:
    """(B, H, Tq, n) -> (H, B*Tq, n): every set's queries in one matrix per head."""
    B, H, Tq, n = x.shape
    return x.transpose(1, 0, 2, 3).reshape(H, B * Tq, n)


def _per_set(x: np.ndarray, B: int) -> np.ndarray:
    """(H, B*Tq, n) -> (B, H, Tq, n), the inverse of _all_queries."""
    H, BTq, n = x.shape
    return x.reshape(H, B, BTq // B, n).transpose(1, 0, 2, 3)


def shared_key_attention_forward(Q, K, V, K_s, V_s, mask, scale: float):
    """MAB-2 and O = A V, with keys [own ; shared]: softmax(scale Q [K ; K_s]^T) [V ; V_s].

    The shared keys are never copied per set: their scores and values are one matmul per head over
    the queries of all sets, (H, B Tq, d_s) @ (H, d_s, Ts), and the backward's matmul sums their
    gradients over the sets by itself. mask: boolean, broadcastable to (B, H, Tq, Tk + Ts), or None.
    Returns O (B, H, Tq, d_s) and the cache.
    """
    B, H, Tq, _ = Q.shape
    scores = []
    if K is not None:
        scores.append(Q @ np.swapaxes(K, -1, -2))                                    # (B, H, Tq, Tk)
    if K_s is not None:
        scores.append(_per_set(_all_queries(Q) @ np.swapaxes(K_s, -1, -2), B))       # (B, H, Tq, Ts)
    S = scale * np.concatenate(scores, axis=-1)                                      # (B, H, Tq, Tk + Ts)
    if mask is not None:
        if not np.all(np.any(mask, axis=-1)):
            raise ValueError("mask leaves a query with no allowed key; every row needs at least one True")
        S = np.where(mask, S, -np.inf)
    A = np.exp(S - S.max(axis=-1, keepdims=True))
    A /= A.sum(axis=-1, keepdims=True)
    Tk = 0 if K is None else K.shape[2]
    O = A[..., :Tk] @ V if K is not None else 0.0
    if K_s is not None:
        O = O + _per_set(_all_queries(A[..., Tk:]) @ V_s, B)                         # (B, H, Tq, d_s)
    return O, SharedKeyAttentionCache(Q, K, V, K_s, V_s, A, scale)


def shared_key_attention_backward(dO: np.ndarray, cache: SharedKeyAttentionCache):
    """Adjoint of shared_key_attention_forward. Returns (dQ, dK, dV, dK_s, dV_s) shaped like the
    inputs (None for absent keys); dK_s and dV_s are summed over the sets."""
    Q, K, V, K_s, V_s, A, scale = cache
    B = Q.shape[0]
    Tk = 0 if K is None else K.shape[2]
    dA = []
    dK = dV = dK_s = dV_s = None
    if K is not None:
        dV = np.swapaxes(A[..., :Tk], -1, -2) @ dO                                   # (B, H, Tk, d_s)
        dA.append(dO @ np.swapaxes(V, -1, -2))                                       # (B, H, Tq, Tk)
    if K_s is not None:
        A_s, dO_all = _all_queries(A[..., Tk:]), _all_queries(dO)                    # (H, B*Tq, Ts), (H, B*Tq, d_s)
        dV_s = np.swapaxes(A_s, -1, -2) @ dO_all                                     # (H, Ts, d_s), summed over sets
        dA.append(_per_set(dO_all @ np.swapaxes(V_s, -1, -2), B))                    # (B, H, Tq, Ts)
    dA = np.concatenate(dA, axis=-1)
    dS = scale * A * (dA - np.sum(dA * A, axis=-1, keepdims=True))                  # softmax adjoint
    dQ = np.zeros_like(Q)
    if K is not None:
        dQ += dS[..., :Tk] @ K
        dK = np.swapaxes(dS[..., :Tk], -1, -2) @ Q                                   # (B, H, Tk, d_s)
    if K_s is not None:
        dS_s = _all_queries(dS[..., Tk:])                                            # (H, B*Tq, Ts)
        dQ += _per_set(dS_s @ K_s, B)
        dK_s = np.swapaxes(dS_s, -1, -2) @ _all_queries(Q)                           # (H, Ts, d_s), summed over sets
    return dQ, dK, dV, dK_s, dV_s


# ----------------------------------------------------------------- the block
class MABDropout(NamedTuple):
    """Dropout multipliers (0 or 1 / (1 - p)) of one MAB call."""
    attn: np.ndarray      # (B, Tq, Dc) on O, MAB-3
    hidden: np.ndarray    # (B, Tq, F) after the GELU, MAB-4
    out: np.ndarray       # (B, Tq, Dc) on the feed-forward output, MAB-4


def mab_dropout(rng: np.random.Generator, p: float, B: int, Tq: int, Dc: int, F: int) -> MABDropout:
    """Draw the three dropout multipliers for rate p (all ones when p = 0)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1); got {p}")
    draw = lambda shape: (rng.random(shape) >= p) / (1.0 - p)
    return MABDropout(draw((B, Tq, Dc)), draw((B, Tq, F)), draw((B, Tq, Dc)))


def mab_init(rng: np.random.Generator, Dc: int, ff_mult: int = 4, res_linear: bool = False, dtype=np.float64) -> dict:
    """The block's parameters (names in the module docstring): Xavier-uniform weights, zero biases,
    unit layer-norm gains."""
    params = {**with_prefix("ln_q", layernorm_init(Dc, dtype)), **with_prefix("ln_kv", layernorm_init(Dc, dtype))}
    for name in ("q", "k", "v"):
        weights = linear_init(rng, Dc, Dc, dtype=dtype)
        params[f"W_{name}"], params[f"b_{name}"] = weights["W"], weights["b"]
    if res_linear:
        params.update(with_prefix("res", linear_init(rng, Dc, Dc, dtype=dtype)))
    params.update(with_prefix("ln_ff", layernorm_init(Dc, dtype)))
    params.update(with_prefix("ff0", linear_init(rng, Dc, ff_mult * Dc, dtype=dtype)))
    params.update(with_prefix("ff1", linear_init(rng, ff_mult * Dc, Dc, dtype=dtype)))
    return params


def mab_param_shapes(Dc: int, ff_mult: int = 4, res_linear: bool = False) -> dict:
    F = ff_mult * Dc
    shapes = {"ln_q.gain": (Dc,), "ln_q.bias": (Dc,), "ln_kv.gain": (Dc,), "ln_kv.bias": (Dc,),
              "W_q": (Dc, Dc), "b_q": (Dc,), "W_k": (Dc, Dc), "b_k": (Dc,), "W_v": (Dc, Dc), "b_v": (Dc,)}
    if res_linear:
        shapes.update({"res.W": (Dc, Dc), "res.b": (Dc,)})
    shapes.update({"ln_ff.gain": (Dc,), "ln_ff.bias": (Dc,), "ff0.W": (Dc, F), "ff0.b": (F,),
                   "ff1.W": (F, Dc), "ff1.b": (Dc,)})
    return shapes


def _split_heads(x: np.ndarray, H: int) -> np.ndarray:
    B, T, Dc = x.shape
    return x.reshape(B, T, H, Dc // H).transpose(0, 2, 1, 3)                 # (B, H, T, d_s)


def _merge_heads(x: np.ndarray) -> np.ndarray:
    B, H, T, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * d)                      # (B, T, Dc)


def _heads_of_shared(x: np.ndarray, H: int) -> np.ndarray:
    Ts, Dc = x.shape
    return x.reshape(Ts, H, Dc // H).transpose(1, 0, 2)                        # (H, Ts, d_s)


def _merge_shared(x: np.ndarray) -> np.ndarray:
    H, Ts, d = x.shape
    return x.transpose(1, 0, 2).reshape(Ts, H * d)                             # (Ts, Dc)


class MABCache(NamedTuple):
    ln_q: object          # LayerNormCache of X
    q: object             # LinearCache
    ln_kv: object         # LayerNormCache of the own keys Y (None if no Y)
    k: object
    v: object
    ln_s: object          # LayerNormCache of Y_shared (None if none)
    k_s: object
    v_s: object
    heads: int
    attn: SharedKeyAttentionCache   # attn.A (B, H, Tq, Tk + Ts): the attention weights, own keys first
    res: object           # LinearCache of the residual map, or None for the identity
    ln_ff: object
    ff0: object
    gelu: tuple
    ff1: object
    dropout: MABDropout | None


def mab_forward(X: np.ndarray, Y: np.ndarray | None, params: Mapping[str, np.ndarray], heads: int, scale: float,
                Y_shared: np.ndarray | None = None, mask: np.ndarray | None = None,
                dropout: MABDropout | None = None, eps: float = LN_EPS):
    """MAB-1 .. MAB-4 for B sets at once.

    Args:
        X: (B, Tq, Dc) queries.
        Y: (B, Tk, Dc) each set's own keys/values, or None.
        params: the block's parameters (module docstring); "res.W" present means res_linear.
        heads: H, dividing Dc.
        scale: multiplies the scores in MAB-2.
        Y_shared: (Ts, Dc) keys/values shared by every set, or None (Y and Y_shared not both None).
        mask: boolean (B, Tq, Tk + Ts), True where allowed, or None.
        dropout: MABDropout multipliers, or None.
    Returns:
        out: (B, Tq, Dc), and the cache for mab_backward (cache.attn.A: the attention weights).
    """
    B, Tq, Dc = X.shape
    if Y is None and Y_shared is None:
        raise ValueError("a MAB needs keys: Y (B, Tk, Dc), Y_shared (Ts, Dc) or both")
    if Dc % heads:
        raise ValueError(f"the width Dc={Dc} must be divisible by heads={heads}")
    Xn, ln_q = layernorm_forward(X, params["ln_q.gain"], params["ln_q.bias"], eps)    # MAB-1
    Q, q_cache = linear_forward(Xn, params["W_q"], params["b_q"])                       # (B, Tq, Dc)
    K = V = K_s = V_s = ln_kv = k_cache = v_cache = ln_s = ks_cache = vs_cache = None
    if Y is not None:
        Yn, ln_kv = layernorm_forward(Y, params["ln_kv.gain"], params["ln_kv.bias"], eps)
        K, k_cache = linear_forward(Yn, params["W_k"], params["b_k"])                  # (B, Tk, Dc)
        V, v_cache = linear_forward(Yn, params["W_v"], params["b_v"])
        K, V = _split_heads(K, heads), _split_heads(V, heads)                          # (B, H, Tk, d_s)
    if Y_shared is not None:                                  # normalised and projected once for all sets
        Ysn, ln_s = layernorm_forward(Y_shared, params["ln_kv.gain"], params["ln_kv.bias"], eps)
        K_s, ks_cache = linear_forward(Ysn, params["W_k"], params["b_k"])              # (Ts, Dc)
        V_s, vs_cache = linear_forward(Ysn, params["W_v"], params["b_v"])
        K_s, V_s = _heads_of_shared(K_s, heads), _heads_of_shared(V_s, heads)          # (H, Ts, d_s)
    O, attn = shared_key_attention_forward(_split_heads(Q, heads), K, V, K_s, V_s,     # MAB-2
                                           None if mask is None else mask[:, None], scale)
    O = _merge_heads(O)                                                              # (B, Tq, Dc)
    if dropout is not None:
        O = O * dropout.attn
    res_cache = None
    if "res.W" in params:
        R, res_cache = linear_forward(X, params["res.W"], params["res.b"])
    else:
        R = X
    Hm = O + R                                                                       # MAB-3
    Hn, ln_ff = layernorm_forward(Hm, params["ln_ff.gain"], params["ln_ff.bias"], eps)  # MAB-4
    Z1, ff0 = linear_forward(Hn, params["ff0.W"], params["ff0.b"])                   # (B, Tq, F)
    A1, gelu_cache = gelu_erf_forward(Z1)
    if dropout is not None:
        A1 = A1 * dropout.hidden
    Z2, ff1 = linear_forward(A1, params["ff1.W"], params["ff1.b"])                   # (B, Tq, Dc)
    if dropout is not None:
        Z2 = Z2 * dropout.out
    out = Hm + Z2
    return out, MABCache(ln_q, q_cache, ln_kv, k_cache, v_cache, ln_s, ks_cache, vs_cache, heads, attn,
                         res_cache, ln_ff, ff0, gelu_cache, ff1, dropout)


def mab_backward(dout: np.ndarray, cache: MABCache):
    """Adjoint of mab_forward. Returns (dX (B, Tq, Dc), dY (B, Tk, Dc) or None, dY_shared (Ts, Dc) or
    None, grads) with grads keyed like the block's parameters. dY_shared is summed over the B sets."""
    c = cache
    grads = {}
    dHm = dout.copy()                                                                # out = Hm + Z2
    dZ2 = dout if c.dropout is None else dout * c.dropout.out
    dA1, grads["ff1.W"], grads["ff1.b"] = linear_backward(dZ2, c.ff1)                # MAB-4, walked back
    if c.dropout is not None:
        dA1 = dA1 * c.dropout.hidden
    dZ1 = gelu_erf_backward(dA1, c.gelu)
    dHn, grads["ff0.W"], grads["ff0.b"] = linear_backward(dZ1, c.ff0)
    dHm_ln, grads["ln_ff.gain"], grads["ln_ff.bias"] = layernorm_backward(dHn, c.ln_ff)
    dHm += dHm_ln
    if c.res is not None:                                                            # MAB-3
        dX, grads["res.W"], grads["res.b"] = linear_backward(dHm, c.res)
    else:
        dX = dHm.copy()
    dO = dHm if c.dropout is None else dHm * c.dropout.attn
    dQ, dK, dV, dK_s, dV_s = shared_key_attention_backward(_split_heads(dO, c.heads), c.attn)  # MAB-2
    dXn, grads["W_q"], grads["b_q"] = linear_backward(_merge_heads(dQ), c.q)         # MAB-1
    dX_ln, grads["ln_q.gain"], grads["ln_q.bias"] = layernorm_backward(dXn, c.ln_q)
    dX += dX_ln                                               # X reaches the output through LN_q and the residual
    Dc = dX.shape[-1]
    for name, shape in (("W_k", (Dc, Dc)), ("b_k", (Dc,)), ("W_v", (Dc, Dc)), ("b_v", (Dc,)),
                        ("ln_kv.gain", (Dc,)), ("ln_kv.bias", (Dc,))):
        grads[name] = np.zeros(shape, dtype=dX.dtype)       # summed over the own and the shared keys
    dY = dY_shared = None
    parts = []
    if dK is not None:
        parts.append(("own", _merge_heads(dK), _merge_heads(dV), c.k, c.v, c.ln_kv))
    if dK_s is not None:
        parts.append(("shared", _merge_shared(dK_s), _merge_shared(dV_s), c.k_s, c.v_s, c.ln_s))
    for which, dK_part, dV_part, k_cache, v_cache, ln_cache in parts:
        dYn_k, dW_k, db_k = linear_backward(dK_part, k_cache)
        dYn_v, dW_v, db_v = linear_backward(dV_part, v_cache)
        dY_part, dgain, dbias = layernorm_backward(dYn_k + dYn_v, ln_cache)
        for name, value in (("W_k", dW_k), ("b_k", db_k), ("W_v", dW_v), ("b_v", db_v),
                            ("ln_kv.gain", dgain), ("ln_kv.bias", dbias)):
            grads[name] += value
        if which == "own":
            dY = dY_part
        else:
            dY_shared = dY_part
    order = mab_param_shapes(Dc, c.ff0.W.shape[1] // Dc, c.res is not None)
    return dX, dY, dY_shared, {name: grads[name] for name in order}


def mab_autodiff(X, Y, tparams: Mapping[str, ad.Tensor], heads: int, scale: float, Y_shared=None, mask=None,
                 dropout: MABDropout | None = None, eps: float = LN_EPS) -> ad.Tensor:
    """Autodiff twin of mab_forward."""
    X = ad.as_tensor(X)
    B, Tq, Dc = X.shape

    def split(t):                                             # (B, T, Dc) -> (B, H, T, d_s)
        return ad.transpose(ad.reshape(t, (B, t.shape[1], heads, Dc // heads)), (0, 2, 1, 3))

    def project(rows):
        rows_n = layernorm_autodiff(rows, tparams["ln_kv.gain"], tparams["ln_kv.bias"], eps)
        return (linear_autodiff(rows_n, tparams["W_k"], tparams["b_k"]),
                linear_autodiff(rows_n, tparams["W_v"], tparams["b_v"]))

    Q = linear_autodiff(layernorm_autodiff(X, tparams["ln_q.gain"], tparams["ln_q.bias"], eps),
                        tparams["W_q"], tparams["b_q"])                              # MAB-1
    keys, values = [], []
    if Y is not None:
        K, V = project(ad.as_tensor(Y))
        keys.append(K)
        values.append(V)
    if Y_shared is not None:
        K_s, V_s = project(ad.as_tensor(Y_shared))
        keys.append(ad.broadcast_to(K_s, (B,) + K_s.shape))
        values.append(ad.broadcast_to(V_s, (B,) + V_s.shape))
    K, V = ad.concatenate(keys, axis=1), ad.concatenate(values, axis=1)
    O = dot_product_attention_autodiff(split(Q), split(K), split(V),                 # MAB-2
                                       None if mask is None else np.asarray(mask)[:, None], scale)
    O = ad.reshape(ad.transpose(O, (0, 2, 1, 3)), (B, Tq, Dc))
    if dropout is not None:
        O = O * dropout.attn
    R = linear_autodiff(X, tparams["res.W"], tparams["res.b"]) if "res.W" in tparams else X
    Hm = O + R                                                                       # MAB-3
    A1 = gelu_erf_autodiff(linear_autodiff(layernorm_autodiff(Hm, tparams["ln_ff.gain"], tparams["ln_ff.bias"], eps),
                                       tparams["ff0.W"], tparams["ff0.b"]))          # MAB-4
    if dropout is not None:
        A1 = A1 * dropout.hidden
    Z2 = linear_autodiff(A1, tparams["ff1.W"], tparams["ff1.b"])
    if dropout is not None:
        Z2 = Z2 * dropout.out
    return Hm + Z2
