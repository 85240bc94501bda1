"""Multi-head scaled dot-product attention (Vaswani et al., 2017, arXiv:1706.03762, eqs. (1), (4)),
vectorised over batch and heads: heads are an array axis, never a Python loop.

Shapes: B batch, Tq query positions, Tk key positions, D query width (and output width), Dkv
key/value input width (D for self-attention), H heads, E width of a query/key head, Ev width of a
value head (E = Ev = D / H by default).
Equations:
    (1) Q = x_q @ W_q + b_q,  K = x_kv @ W_k + b_k,  V = x_kv @ W_v + b_v      projections
    (2) split heads: (B, T, H*E) -> (B, H, T, E); head h owns columns [h*E, (h+1)*E)
    (3) S = scale * Q K^T, scale = 1 / sqrt(E) unless given             (B, H, Tq, Tk) scores
    (4) S[..., q, k] = -inf where the mask forbids key k to query q
    (5) A = softmax(S) over keys                                        (B, H, Tq, Tk) weights
    (6) O = A V, merge heads: (B, H, Tq, Ev) -> (B, Tq, H*Ev)
    (7) y = O @ W_o + b_o                                               (B, Tq, D)
Masks are boolean, True where attention is allowed, of shape (Tq, Tk) or (B, Tq, Tk) (axes of size
1 broadcast, e.g. (B, 1, Tk) for key padding); `causal=True` also forbids keys k > q. Every query
must keep at least one allowed key.
Parameters: `W_q` (D, H*E), `W_k` (Dkv, H*E), `W_v` (Dkv, H*Ev), `W_o` (H*Ev, D), all used as
`x @ W`, and biases `b_q` (H*E,), `b_k` (H*E,), `b_v` (H*Ev,), `b_o` (D,). PyTorch's
nn.MultiheadAttention maps as W_q = in_proj_weight[:D].T (and so on), W_o = out_proj.weight.T,
with the same head-major column split.
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem import init
from minimem.nn.layernorm import layernorm_autodiff, layernorm_backward, layernorm_forward, layernorm_init
from minimem.nn.linear import (
    as_float_array, check_finite, check_params, linear_autodiff, linear_backward, linear_forward,
    strip_prefix, with_prefix,
)

PARAM_NAMES = ("W_q", "b_q", "W_k", "b_k", "W_v", "b_v", "W_o", "b_o")


def causal_mask(T: int) -> np.ndarray:
    """(T, T) boolean, True where key k <= query q."""
    return np.tril(np.ones((T, T), dtype=bool))


def _check_mask(mask, Tq: int, Tk: int, B: int | None = None) -> np.ndarray:
    """The mask as a boolean (Tq, Tk) or (B, Tq, Tk) array whose axes equal those sizes or are 1."""
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise ValueError(f"mask must be a boolean array (True = may attend); got dtype {mask.dtype}")
    target = (Tq, Tk) if mask.ndim == 2 else (B, Tq, Tk)
    if mask.ndim not in (2, 3) or (B is None and mask.ndim == 3) or any(
            m not in (1, n) for m, n in zip(mask.shape, target)):
        raise ValueError(f"mask must have shape (Tq, Tk) = {(Tq, Tk)} or (B, Tq, Tk) = {(B, Tq, Tk)}, "
                         f"axes of size 1 broadcasting; got {mask.shape}")
    return mask


# ----------------------------------------------------------------- the attention kernel
class DotProductAttentionCache(NamedTuple):
    Q: np.ndarray        # (..., Tq, E)
    K: np.ndarray        # (..., Tk, E)
    V: np.ndarray        # (..., Tk, Ev)
    A: np.ndarray        # (..., Tq, Tk) attention weights, 0 where masked
    scale: float


def dot_product_attention_forward(Q: np.ndarray, K: np.ndarray, V: np.ndarray, mask: np.ndarray | None = None,
                                  scale: float | None = None):
    """Eqs. (3)-(5) and the product A V of eq. (6), batched over every leading axis ("...").

    Args:
        Q: (..., Tq, E) queries;  K: (..., Tk, E) keys;  V: (..., Tk, Ev) values.
        mask: boolean, broadcastable to (..., Tq, Tk), True where allowed; None allows everything.
        scale: multiplies the scores; default 1 / sqrt(E).
    Returns:
        O: (..., Tq, Ev), and the cache (its field A holds the attention weights).
    """
    if Q.shape[-1] != K.shape[-1] or K.shape[-2] != V.shape[-2]:
        raise ValueError(f"Q (..., Tq, E), K (..., Tk, E) and V (..., Tk, Ev) disagree: "
                         f"{Q.shape}, {K.shape}, {V.shape}")
    scale = 1.0 / math.sqrt(Q.shape[-1]) if scale is None else float(scale)
    S = scale * (Q @ np.swapaxes(K, -1, -2))                    # (..., Tq, Tk)  eq. (3)
    if mask is not None:
        if not np.all(np.any(mask, axis=-1)):
            raise ValueError("mask leaves a query with no allowed key; every row needs at least one True")
        S = np.where(mask, S, -np.inf)                          # eq. (4)
    S = S - S.max(axis=-1, keepdims=True)                       # shift: exp never overflows
    A = np.exp(S)
    A /= A.sum(axis=-1, keepdims=True)                          # eq. (5)
    O = A @ V                                                   # (..., Tq, Ev)  eq. (6)
    return O, DotProductAttentionCache(Q, K, V, A, scale)


def dot_product_attention_backward(dout: np.ndarray, cache: DotProductAttentionCache):
    """Adjoint of dot_product_attention_forward. Returns (dQ, dK, dV), shaped like Q, K, V.

    Masked weights are exactly 0, so the softmax adjoint gives their scores zero gradient.
    """
    Q, K, V, A, scale = cache
    dV = np.swapaxes(A, -1, -2) @ dout                          # (..., Tk, Ev)
    dA = dout @ np.swapaxes(V, -1, -2)                          # (..., Tq, Tk)
    dS = A * (dA - np.sum(dA * A, axis=-1, keepdims=True))      # softmax adjoint, eq. (5)
    dS *= scale                                                 # eq. (3)
    dQ = dS @ K                                                 # (..., Tq, E)
    dK = np.swapaxes(dS, -1, -2) @ Q                            # (..., Tk, E)
    return dQ, dK, dV


def dot_product_attention_autodiff(Q, K, V, mask=None, scale=None) -> ad.Tensor:
    """Autodiff twin of dot_product_attention_forward."""
    Q, K = ad.as_tensor(Q), ad.as_tensor(K)
    scale = 1.0 / math.sqrt(Q.shape[-1]) if scale is None else float(scale)
    S = ad.matmul(Q, ad.swapaxes(K, -1, -2)) * scale            # (..., Tq, Tk)
    if mask is not None:
        S = ad.where(mask, S, -np.inf)
    return ad.matmul(ad.softmax(S, axis=-1), V)                 # (..., Tq, Ev)


# ----------------------------------------------------------------- multi-head attention
def _split_heads(x: np.ndarray, H: int) -> np.ndarray:
    B, T, HE = x.shape
    return x.reshape(B, T, H, HE // H).transpose(0, 2, 1, 3)     # (B, H, T, E)


def _merge_heads(x: np.ndarray) -> np.ndarray:
    B, H, T, E = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * E)          # (B, T, H*E)


def _attention_shapes(params: Mapping[str, np.ndarray], heads: int) -> tuple[int, int, int, int]:
    """(D, Dkv, E, Ev) from the parameter shapes, checking that they agree with each other and `heads`."""
    W_q, W_v = np.shape(params.get("W_q")), np.shape(params.get("W_v"))
    W_k = np.shape(params.get("W_k"))
    if heads < 1 or len(W_q) != 2 or len(W_k) != 2 or len(W_v) != 2 or W_q[1] % heads or W_v[1] % heads:
        raise ValueError(f"W_q (D, H*E), W_k (Dkv, H*E) and W_v (Dkv, H*Ev) must split into H={heads} heads; "
                         f"got {W_q}, {W_k}, {W_v}")
    D, Dkv, E, Ev = W_q[0], W_k[0], W_q[1] // heads, W_v[1] // heads
    check_params(params, attention_param_shapes(D, heads, Dkv, E, Ev))
    return D, Dkv, E, Ev


def _attention_mask(mask, causal: bool, B: int, Tq: int, Tk: int) -> np.ndarray | None:
    """The combined (Tq, Tk) or (B, 1, Tq, Tk) mask (a head axis of size 1 added), or None."""
    if mask is not None:
        mask = _check_mask(mask, Tq, Tk, B)
    if causal:
        if Tq != Tk:
            raise ValueError(f"causal=True needs Tq == Tk; got Tq={Tq}, Tk={Tk}")
        mask = causal_mask(Tq) if mask is None else mask & causal_mask(Tq)
    if mask is not None and mask.ndim == 3:
        mask = mask[:, None]                                    # (B, 1, Tq, Tk): the same for every head
    return mask


class AttentionCache(NamedTuple):
    q: object            # LinearCache of eq. (1) for Q
    k: object            # LinearCache for K
    v: object            # LinearCache for V
    heads: int
    sdpa: DotProductAttentionCache   # eqs. (3)-(6); sdpa.A holds the (B, H, Tq, Tk) weights
    o: object            # LinearCache of eq. (7)


def attention_forward(x_q: np.ndarray, x_kv: np.ndarray, params: Mapping[str, np.ndarray], heads: int,
                      mask: np.ndarray | None = None, causal: bool = False, scale: float | None = None):
    """Multi-head attention, eqs. (1)-(7). Self-attention passes the same array as x_q and x_kv.

    Args:
        x_q: (B, Tq, D) query inputs.
        x_kv: (B, Tk, Dkv) key/value inputs.
        params: {"W_q", "b_q", "W_k", "b_k", "W_v", "b_v", "W_o", "b_o"} (layouts in the module docstring).
        heads: H, the number of heads.
        mask: boolean (Tq, Tk) or (B, Tq, Tk), True where allowed; None allows every key.
        causal: also forbid keys k > q (needs Tq == Tk).
        scale: multiplies the scores; default 1 / sqrt(E).
    Returns:
        y: (B, Tq, D), and the cache for attention_backward (cache.sdpa.A: the weights).
    """
    D, Dkv, E, Ev = _attention_shapes(params, heads)
    x_q, x_kv = as_float_array("x_q", x_q), as_float_array("x_kv", x_kv)
    if x_q.ndim != 3 or x_q.shape[2] != D or x_q.shape[1] == 0:
        raise ValueError(f"x_q must have shape (B, Tq, D) with Tq >= 1 and D={D}; got {x_q.shape}")
    B, Tq, _ = x_q.shape
    if x_kv.ndim != 3 or x_kv.shape[0] != B or x_kv.shape[2] != Dkv or x_kv.shape[1] == 0:
        raise ValueError(f"x_kv must have shape (B, Tk, Dkv) with B={B}, Tk >= 1, Dkv={Dkv}; got {x_kv.shape}")
    mask = _attention_mask(mask, causal, B, Tq, x_kv.shape[1])
    Q, q_cache = linear_forward(x_q, params["W_q"], params["b_q"])      # (B, Tq, H*E)   eq. (1)
    K, k_cache = linear_forward(x_kv, params["W_k"], params["b_k"])     # (B, Tk, H*E)
    V, v_cache = linear_forward(x_kv, params["W_v"], params["b_v"])     # (B, Tk, H*Ev)
    O, sdpa_cache = dot_product_attention_forward(                      # (B, H, Tq, Ev)  eqs. (2)-(6)
        _split_heads(Q, heads), _split_heads(K, heads), _split_heads(V, heads), mask, scale)
    y, o_cache = linear_forward(_merge_heads(O), params["W_o"], params["b_o"])  # (B, Tq, D)  eq. (7)
    return y, AttentionCache(q_cache, k_cache, v_cache, heads, sdpa_cache, o_cache)


def attention_backward(dout: np.ndarray, cache: AttentionCache):
    """Adjoint of attention_forward. Returns dx_q (B, Tq, D), dx_kv (B, Tk, Dkv) and the parameter
    gradients (keys of the module docstring). For self-attention the input's gradient is dx_q + dx_kv."""
    H = cache.heads
    dO, dW_o, db_o = linear_backward(dout, cache.o)                     # 7.
    dQ, dK, dV = dot_product_attention_backward(_split_heads(dO, H), cache.sdpa)  # 6.-3.
    dx_q, dW_q, db_q = linear_backward(_merge_heads(dQ), cache.q)       # 2.-1.
    dx_k, dW_k, db_k = linear_backward(_merge_heads(dK), cache.k)
    dx_v, dW_v, db_v = linear_backward(_merge_heads(dV), cache.v)
    grads = {"W_q": dW_q, "b_q": db_q, "W_k": dW_k, "b_k": db_k,
             "W_v": dW_v, "b_v": db_v, "W_o": dW_o, "b_o": db_o}
    return dx_q, dx_k + dx_v, grads


def attention_autodiff(x_q, x_kv, tparams: Mapping[str, ad.Tensor], heads: int, mask=None, causal: bool = False,
                       scale: float | None = None) -> ad.Tensor:
    """Autodiff twin of attention_forward."""
    x_q, x_kv = ad.as_tensor(x_q), ad.as_tensor(x_kv)
    (B, Tq, _), Tk = x_q.shape, x_kv.shape[1]
    mask = _attention_mask(mask, causal, B, Tq, Tk)

    def split(t):                                               # (B, T, H*E) -> (B, H, T, E)
        return ad.transpose(ad.reshape(t, (B, t.shape[1], heads, t.shape[2] // heads)), (0, 2, 1, 3))

    Q = linear_autodiff(x_q, tparams["W_q"], tparams["b_q"])
    K = linear_autodiff(x_kv, tparams["W_k"], tparams["b_k"])
    V = linear_autodiff(x_kv, tparams["W_v"], tparams["b_v"])
    O = dot_product_attention_autodiff(split(Q), split(K), split(V), mask, scale)  # (B, H, Tq, Ev)
    O = ad.reshape(ad.transpose(O, (0, 2, 1, 3)), (B, Tq, -1))   # (B, Tq, H*Ev)
    return linear_autodiff(O, tparams["W_o"], tparams["b_o"])


# ----------------------------------------------------------------- initialisation and model
def attention_param_shapes(D: int, heads: int, Dkv: int, E: int, Ev: int) -> dict:
    """{name: shape} of the eight parameters, in the order of PARAM_NAMES."""
    return {"W_q": (D, heads * E), "b_q": (heads * E,), "W_k": (Dkv, heads * E), "b_k": (heads * E,),
            "W_v": (Dkv, heads * Ev), "b_v": (heads * Ev,), "W_o": (heads * Ev, D), "b_o": (D,)}


def attention_init(rng: np.random.Generator, D: int, heads: int, Dkv: int | None = None,
                   head_width: int | None = None, dtype=np.float64) -> dict:
    """Xavier-uniform projections and zero biases; E = Ev = head_width, default D / heads."""
    Dkv = D if Dkv is None else Dkv
    if head_width is None:
        if D % heads:
            raise ValueError(f"D={D} is not divisible by heads={heads}; pass head_width")
        head_width = D // heads
    shapes = attention_param_shapes(D, heads, Dkv, head_width, head_width)
    return {name: init.xavier_uniform(rng, shape, dtype=dtype) if name.startswith("W_")
            else init.zeros(rng, shape, dtype=dtype) for name, shape in shapes.items()}


class AttentionModel:
    """A pre-layer-norm residual self-attention block: x (B, T, D) -> y = x + MHA(LN(x)) (B, T, D).

    Parameters: `ln.gain`, `ln.bias` (D,); `attn.W_q`, `attn.b_q`, ..., `attn.b_o` with the layouts of
    the module docstring (E = Ev = D / heads). causal=True masks future positions.
    """

    def __init__(self, D: int, heads: int, causal: bool = True, eps: float = 1e-5,
                 rng: np.random.Generator | None = None, dtype=np.float64):
        rng = np.random.default_rng(0) if rng is None else rng
        self.D, self.heads, self.causal, self.eps = D, heads, causal, eps
        self.params = {**with_prefix("ln", layernorm_init(D, dtype)),
                       **with_prefix("attn", attention_init(rng, D, heads, dtype=dtype))}

    def _check(self, x) -> np.ndarray:
        D, E = self.D, self.D // self.heads
        check_params(self.params, {"ln.gain": (D,), "ln.bias": (D,),
                                   **with_prefix("attn", attention_param_shapes(D, self.heads, D, E, E))})
        for name, value in self.params.items():
            check_finite(f"parameter {name}", value)
        x = as_float_array("inputs", x)
        if x.ndim != 3 or x.shape[2] != D or x.shape[1] == 0:
            raise ValueError(f"inputs must have shape (B, T, D) with T >= 1 and D={D}; got {x.shape}")
        check_finite("inputs", x)
        return x

    def forward(self, x):
        x = self._check(x)
        h, ln_cache = layernorm_forward(x, self.params["ln.gain"], self.params["ln.bias"], self.eps)  # 1.
        a, attn_cache = attention_forward(h, h, strip_prefix("attn", self.params), self.heads,     # 2.
                                          causal=self.causal)
        return x + a, (ln_cache, attn_cache)                                                      # 3.

    def backward(self, dy, cache) -> dict:
        ln_cache, attn_cache = cache
        dh_q, dh_kv, attn_grads = attention_backward(dy, attn_cache)                              # 2.
        _, dgain, dbias = layernorm_backward(dh_q + dh_kv, ln_cache)                              # 1.
        grads = {"ln.gain": dgain, "ln.bias": dbias, **with_prefix("attn", attn_grads)}
        return {name: grads[name] for name in self.params}

    def forward_autodiff(self, tparams: Mapping[str, ad.Tensor], x) -> ad.Tensor:
        x = self._check(x)
        h = layernorm_autodiff(x, tparams["ln.gain"], tparams["ln.bias"], self.eps)
        return x + attention_autodiff(h, h, strip_prefix("attn", tparams), self.heads, causal=self.causal)
