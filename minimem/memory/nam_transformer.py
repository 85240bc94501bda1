"""NAM Transformer (Nam & Seo, 2023, arXiv:2302.09422; spec specs/nam_hma.md A6): a small pre-LN
Transformer encoder whose attention is NAM (unit-norm linear attention without a row normaliser),
softmax scaled dot-product attention, or the elu-linear attention of the Linear Transformer
(Katharopoulos et al., 2020, arXiv:2006.16236) - one config switch, everything else shared, so the
three can be compared on equal terms (reference: hwnam831/long-range-arena, `nam_transformer`).

Shapes: T positions (T_max at most, including a CLS row if one is prepended), B batch, V vocabulary,
D model width, H heads, d = D / H head width, F the blocks' MLP width, G the head's hidden width,
Y classes. Tokens come in time-first like every minimem sequence, tokens (T, B) and key_mask (T, B);
inside, the blocks work batch-first on (B, T, D), the layout of minimem's attention kernels.
Equations (the spec's labels; the paper's numbering could not be consulted):
    (NT-5)  x_0 = E[tokens] (+ a CLS row prepended) + P[0..T-1]     embedding, no scaling
 each block l, pre-LN, residual:
    (NT-6)  x <- x + Attn(LN_1(x))                                  Attn = NAM | softmax | linear
    (NT-7)  x <- x + GELU(LN_2(x) W_1 + b_1) W_2 + b_2              GELU with the tanh approximation
                                                                    (minimem.nn.gelu)
 then
    (NT-8)  y = LN_f(x);  r = y[:, 0] ("first": the CLS / query row), the masked mean over the real
            rows ("mean"), or every row ("tokens");  logits = relu(r W_h1 + b_h1) W_h2 + b_h2
Attention variants (per head; Q, K, V projections of LN_1(x), merged heads then W_o):
    nam      (NT-1)-(NT-4) of minimem.memory.nam_attention: Y_l = sum_s cos(Q_l, K_s) V_s, no biases
    softmax  minimem.nn.attention: softmax(Q K^T / sqrt(d)) V, with biases (Vaswani et al. eq. 1)
    linear   (LT-1)  phi(x) = elu(x) + 1 = x + 1 (x > 0), exp(x) (x <= 0)
             (LT-2)  Y_l = sum_s (phi(Q_l).phi(K_s)) V_s / (sum_s phi(Q_l).phi(K_s) + 1e-6), no biases
Padding (key_mask True at real tokens): pads write nothing (NAM, linear: their feature rows are
zeroed; softmax: their scores are -inf). Pads still read, and a pad query may attend everywhere, so
every softmax row stays well defined; real rows never see pads, so appending PAD tokens changes no
real row (spec A9.7). `reference_padding=True` ignores the mask in attention, as the reference does.
causal=True: position l reads positions s <= l only (NAM and linear: chunked prefix sums, an
extension of the reference; softmax: a triangular mask).
Departures from the reference, all deliberate: no dropout (a deterministic objective for gradient
checks; the CPU tasks of A6.6 do without); learned positions start at N(0, 0.02^2) (the spec does not
fix them; the embedding keeps N(0, 1)); layer-norm eps 1e-6 (Flax's default, the reference's).

Parameters (model.params, in this order; every weight used as `x @ W`):
    embed.E (V, D) N(0, 1);  cls (D,) zeros (cls=True);  pos.P (T_max, D) (positions="learned")
    block{l}.ln1.gain, block{l}.ln1.bias (D,)
    block{l}.attn.W_q, .W_k, .W_v (D, D), .W_o (D, D), Xavier-uniform; softmax adds .b_q, .b_k,
        .b_v, .b_o (D,) zeros. Head h owns columns [h d, (h + 1) d) (nam_attention module docstring)
    block{l}.ln2.gain, block{l}.ln2.bias (D,)
    block{l}.mlp.layer0.W (D, F), .layer0.b (F,), .layer1.W (F, D), .layer1.b (D,)   Xavier, zeros
    final_ln.gain, final_ln.bias (D,)
    head.layer0.W (D, G), head.layer0.b (G,), head.layer1.W (G, Y), head.layer1.b (Y,)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem import init
from minimem.checks import check_int
from minimem.memory.nam import unit_forward
from minimem.memory.nam_attention import (
    nam_attention_init, nam_attention_layer_autodiff, nam_attention_layer_backward, nam_attention_layer_forward,
)
from minimem.nn.attention import attention_autodiff, attention_backward, attention_forward, attention_init
from minimem.nn.gelu import gelu_tanh_autodiff, gelu_tanh_backward, gelu_tanh_forward
from minimem.nn.layernorm import layernorm_autodiff, layernorm_backward, layernorm_forward
from minimem.nn.linear import (
    as_float_array, check_finite, check_params, linear_autodiff, linear_backward, linear_forward,
    scatter_add_rows, strip_prefix, with_prefix,
)
from minimem.nn.mlp import mlp_autodiff, mlp_backward, mlp_forward, mlp_init

ATTENTIONS = ("nam", "softmax", "linear")
READOUTS = ("first", "mean", "tokens")
POSITIONS = ("learned", "sinusoidal", "none")
LINEAR_EPS = 1e-6                    # the Linear Transformer's denominator floor (spec A6.3)


# ----------------------------------------------------------------- the (masked) kernel product
def _tril(n: int, dtype) -> np.ndarray:
    return np.tril(np.ones((n, n), dtype=dtype))


def _product_forward(Qf, Kf, V, causal: bool, chunk: int):
    """Y = (Qf Kf^T [* tril]) V without the T x T matrix: S = Kf^T V, Y = Qf S; causal by chunks
    (inside a chunk the masked product, across chunks the running state). Returns (Y, states)."""
    if not causal:
        S = np.swapaxes(Kf, -1, -2) @ V                              # (B, H, d_k, d_v)
        return Qf @ S, S
    B, H, T, _ = Qf.shape
    Y = np.empty((B, H, T, V.shape[-1]), dtype=np.result_type(Qf, V))
    starts = range(0, T, chunk)
    states = np.empty((len(starts), B, H, Kf.shape[-1], V.shape[-1]), dtype=Y.dtype)
    S = np.zeros(states.shape[1:], dtype=Y.dtype)
    for c, t0 in enumerate(starts):
        t1 = min(t0 + chunk, T)
        q, k, v = Qf[:, :, t0:t1], Kf[:, :, t0:t1], V[:, :, t0:t1]
        states[c] = S                                                # what the earlier chunks wrote
        Y[:, :, t0:t1] = q @ S + ((q @ np.swapaxes(k, -1, -2)) * _tril(t1 - t0, Y.dtype)) @ v
        S = S + np.swapaxes(k, -1, -2) @ v
    return Y, states


def _product_backward(dY, Qf, Kf, V, causal: bool, chunk: int, states):
    """Adjoint of _product_forward. Returns (dQf, dKf, dV)."""
    if not causal:
        S = states
        dS = np.swapaxes(Qf, -1, -2) @ dY                            # (B, H, d_k, d_v)
        return dY @ np.swapaxes(S, -1, -2), V @ np.swapaxes(dS, -1, -2), Kf @ dS
    T = Qf.shape[2]
    dQf, dKf, dV = np.empty_like(Qf), np.empty_like(Kf), np.empty_like(V)
    dS_carry = np.zeros(states.shape[1:], dtype=dY.dtype)            # gradient of the state after chunk c
    for c in reversed(range(states.shape[0])):
        t0 = c * chunk
        t1 = min(t0 + chunk, T)
        q, k, v, dy = Qf[:, :, t0:t1], Kf[:, :, t0:t1], V[:, :, t0:t1], dY[:, :, t0:t1]
        tril = _tril(t1 - t0, dY.dtype)
        A = (q @ np.swapaxes(k, -1, -2)) * tril                      # (B, H, C, C)
        dA = (dy @ np.swapaxes(v, -1, -2)) * tril
        dQf[:, :, t0:t1] = dy @ np.swapaxes(states[c], -1, -2) + dA @ k
        dKf[:, :, t0:t1] = np.swapaxes(dA, -1, -2) @ q + v @ np.swapaxes(dS_carry, -1, -2)
        dV[:, :, t0:t1] = np.swapaxes(A, -1, -2) @ dy + k @ dS_carry
        dS_carry = dS_carry + np.swapaxes(q, -1, -2) @ dy
    return dQf, dKf, dV


# ----------------------------------------------------------------- elu-linear attention, (LT-1)-(LT-2)
def elu_feature_forward(x: np.ndarray):
    """(LT-1) phi(x) = elu(x) + 1. Returns (phi, dphi/dx); exp sees min(x, 0) only, never overflows."""
    e = np.exp(np.minimum(x, 0.0))
    return np.where(x > 0, x + 1.0, e), np.where(x > 0, 1.0, e)


class LinearAttentionCache(NamedTuple):
    dQf_dQ: np.ndarray       # (B, H, Tq, d_k) phi'(Q)
    dKf_dK: np.ndarray       # (B, H, Tk, d_k) phi'(K)
    Qf: np.ndarray           # (B, H, Tq, d_k) phi(Q)
    Kf: np.ndarray           # (B, H, Tk, d_k) phi(K), zero rows at pads
    V1: np.ndarray           # (B, H, Tk, d_v + 1) [V, 1]: the last column gives the denominator
    keep: np.ndarray | None  # (B, 1, Tk, 1) 1.0 at real tokens, 0.0 at pads
    causal: bool
    chunk: int
    states: np.ndarray       # the product's state(s)
    out: np.ndarray          # (B, H, Tq, d_v)
    den: np.ndarray          # (B, H, Tq, 1)


def linear_attention_forward(Q, K, V, key_mask=None, causal: bool = False, chunk: int = 64):
    """Elu-linear attention, (LT-1)-(LT-2), batched over batch and heads.

    Args:
        Q: (B, H, Tq, d_k); K: (B, H, Tk, d_k); V: (B, H, Tk, d_v).
        key_mask: (B, Tk) bool, True at real tokens (pads enter neither sum); None: every token.
        causal: query l reads keys s <= l only (Tq == Tk); chunk: positions per prefix-sum chunk.
    Returns:
        Y (B, H, Tq, d_v), and the cache for linear_attention_backward.
    """
    Q, K, V = (as_float_array(n, x) for n, x in (("Q", Q), ("K", K), ("V", V)))
    key_mask = _check_kernel(Q, K, V, key_mask, causal, chunk)
    Qf, dQf_dQ = elu_feature_forward(Q)                              # (LT-1)
    Kf, dKf_dK = elu_feature_forward(K)
    keep = None
    if key_mask is not None:
        keep = key_mask[:, None, :, None].astype(Kf.dtype)           # (B, 1, Tk, 1)
        Kf = Kf * keep
    V1 = np.concatenate([V, np.ones(V.shape[:3] + (1,), dtype=V.dtype)], axis=-1)   # (B, H, Tk, d_v + 1)
    Y1, states = _product_forward(Qf, Kf, V1, causal, chunk)         # numerator | denominator
    den = Y1[..., -1:] + LINEAR_EPS                                  # (B, H, Tq, 1)
    out = Y1[..., :-1] / den                                         # (LT-2)
    return out, LinearAttentionCache(dQf_dQ, dKf_dK, Qf, Kf, V1, keep, causal, chunk, states, out, den)


def linear_attention_backward(dY: np.ndarray, cache: LinearAttentionCache):
    """Adjoint of linear_attention_forward. Returns (dQ, dK, dV). With out = num / den:
    dnum = dY / den, dden = -sum(dY * out) / den, then the product's adjoint on [V, 1]."""
    dQf_dQ, dKf_dK, Qf, Kf, V1, keep, causal, chunk, states, out, den = cache
    if np.shape(dY) != out.shape:
        raise ValueError(f"dY must have the output's shape (B, H, Tq, d_v) = {out.shape}; got {np.shape(dY)}")
    dden = -np.sum(dY * out, axis=-1, keepdims=True) / den           # (B, H, Tq, 1)
    dY1 = np.concatenate([dY / den, dden], axis=-1)
    dQf, dKf, dV1 = _product_backward(dY1, Qf, Kf, V1, causal, chunk, states)
    if keep is not None:
        dKf = dKf * keep
    return dQf * dQf_dQ, dKf * dKf_dK, dV1[..., :-1]


def linear_attention_autodiff(Q, K, V, key_mask=None, causal: bool = False, chunk: int = 64) -> ad.Tensor:
    """Autodiff twin of linear_attention_forward; the causal form is the masked quadratic product
    (an independent route to the chunked prefix sums). `chunk` is accepted and unused."""
    Q, K, V = ad.as_tensor(Q), ad.as_tensor(K), ad.as_tensor(V)
    key_mask = _check_kernel(Q, K, V, key_mask, causal, chunk)

    def phi(x):                                                      # (LT-1)
        return ad.where(x.data > 0, x + 1.0, ad.exp(ad.clip(x, None, 0.0)))

    Qf, Kf = phi(Q), phi(K)
    if key_mask is not None:
        Kf = Kf * key_mask[:, None, :, None].astype(Kf.dtype)
    V1 = ad.concatenate([V, ad.Tensor(np.ones(V.shape[:3] + (1,), dtype=V.dtype))], axis=-1)
    A = ad.matmul(Qf, ad.swapaxes(Kf, -1, -2))                       # (B, H, Tq, Tk)
    if causal:
        A = A * _tril(Q.shape[2], Q.dtype)
    Y1 = ad.matmul(A, V1)
    return Y1[..., :-1] / (Y1[..., -1:] + LINEAR_EPS)                # (LT-2)


def _check_kernel(Q, K, V, key_mask, causal, chunk):
    if Q.ndim != 4 or K.ndim != 4 or V.ndim != 4 or K.shape[:2] != Q.shape[:2] or K.shape[3] != Q.shape[3] \
            or V.shape[:3] != K.shape[:3]:
        raise ValueError(f"Q (B, H, Tq, d_k), K (B, H, Tk, d_k) and V (B, H, Tk, d_v) disagree: "
                         f"{tuple(Q.shape)}, {tuple(K.shape)}, {tuple(V.shape)}")
    if Q.shape[2] == 0 or K.shape[2] == 0:
        raise ValueError("Q and K need at least one position")
    if causal and Q.shape[2] != K.shape[2]:
        raise ValueError(f"causal=True needs Tq == Tk; got {Q.shape[2]}, {K.shape[2]}")
    check_int("chunk", chunk, 1)
    if key_mask is None:
        return None
    key_mask = np.asarray(key_mask)
    if key_mask.dtype != bool or key_mask.shape != (Q.shape[0], K.shape[2]):
        raise ValueError(f"key_mask must be a boolean (B, Tk) = {(Q.shape[0], K.shape[2])} array; "
                         f"got {key_mask.dtype} {key_mask.shape}")
    return key_mask


# ----------------------------------------------------------------- the three attention layers, (NT-6)
def _split(x: np.ndarray, H: int) -> np.ndarray:
    B, T, Hd = x.shape
    return x.reshape(B, T, H, Hd // H).transpose(0, 2, 1, 3)         # (B, H, T, d)


def _merge(x: np.ndarray) -> np.ndarray:
    B, H, T, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * d)              # (B, T, H d)


def _softmax_mask(key_mask):
    """(B, T, T) from a (B, T) key mask: real queries see real keys, pad queries see everything."""
    return None if key_mask is None else key_mask[:, None, :] | ~key_mask[:, :, None]


def attention_layer_forward(kind: str, h: np.ndarray, params, heads: int, key_mask=None, causal=False,
                            chunk: int = 64):
    """One multi-head self-attention of the chosen kind on h (B, T, D). Returns (a (B, T, D), cache)."""
    if kind == "nam":
        return nam_attention_layer_forward(h, params, heads, key_mask, causal, chunk)
    if kind == "softmax":
        return attention_forward(h, h, params, heads, mask=_softmax_mask(key_mask), causal=causal)
    Q, q = linear_forward(h, params["W_q"])                          # (B, T, D)
    K, k = linear_forward(h, params["W_k"])
    V, v = linear_forward(h, params["W_v"])
    Y, kernel = linear_attention_forward(_split(Q, heads), _split(K, heads), _split(V, heads), key_mask,
                                         causal, chunk)              # (B, H, T, d)
    a, o = linear_forward(_merge(Y), params["W_o"])
    return a, (q, k, v, kernel, o, heads)


def attention_layer_backward(kind: str, da: np.ndarray, cache):
    """Adjoint of attention_layer_forward. Returns (dh (B, T, D), parameter gradients)."""
    if kind == "nam":
        return nam_attention_layer_backward(da, cache)
    if kind == "softmax":
        dh_q, dh_kv, grads = attention_backward(da, cache)
        return dh_q + dh_kv, grads
    q, k, v, kernel, o, heads = cache
    dY, dW_o, _ = linear_backward(da, o)
    dQ, dK, dV = linear_attention_backward(_split(dY, heads), kernel)
    dh_q, dW_q, _ = linear_backward(_merge(dQ), q)
    dh_k, dW_k, _ = linear_backward(_merge(dK), k)
    dh_v, dW_v, _ = linear_backward(_merge(dV), v)
    return dh_q + dh_k + dh_v, {"W_q": dW_q, "W_k": dW_k, "W_v": dW_v, "W_o": dW_o}


def attention_layer_autodiff(kind: str, h, tparams, heads: int, key_mask=None, causal=False, chunk=64):
    """Autodiff twin of attention_layer_forward."""
    if kind == "nam":
        return nam_attention_layer_autodiff(h, tparams, heads, key_mask, causal, chunk)
    if kind == "softmax":
        return attention_autodiff(h, h, tparams, heads, mask=_softmax_mask(key_mask), causal=causal)
    B, T, _ = h.shape

    def split(t):
        return ad.transpose(ad.reshape(t, (B, T, heads, t.shape[2] // heads)), (0, 2, 1, 3))

    Q, K, V = (linear_autodiff(h, tparams[name]) for name in ("W_q", "W_k", "W_v"))
    Y = linear_attention_autodiff(split(Q), split(K), split(V), key_mask, causal, chunk)
    return linear_autodiff(ad.reshape(ad.transpose(Y, (0, 2, 1, 3)), (B, T, -1)), tparams["W_o"])


# ----------------------------------------------------------------- config and parameters
@dataclass(frozen=True)
class NAMTransformerConfig:
    """Sizes and switches (CPU defaults of spec A6.6: 1 layer, D 64, 4 heads, MLP 128).

    V: vocabulary. classes: Y, outputs of the head. T_max: positions, including a CLS row.
    attention: "nam" | "softmax" | "linear". causal: read only earlier positions. readout: "first"
    (row 0: the CLS or query row) | "mean" (masked mean over real rows) | "tokens" (every row;
    logits (T, B, Y)). positions: "learned" | "sinusoidal" | "none". cls: prepend a learned CLS
    row (zero init) before the positions are added. reference_padding: attention ignores key_mask.
    head_mlp: G, default F. chunk: causal prefix-sum chunk. dtype: "float64" | "float32".
    """
    V: int
    classes: int
    T_max: int = 64
    D: int = 64
    heads: int = 4
    layers: int = 1
    mlp: int = 128
    head_mlp: int | None = None
    attention: str = "nam"
    causal: bool = False
    readout: str = "first"
    positions: str = "learned"
    cls: bool = False
    reference_padding: bool = False
    chunk: int = 64
    ln_eps: float = 1e-6
    dtype: str = "float64"

    def __post_init__(self) -> None:
        for name in ("V", "classes", "T_max", "D", "heads", "layers", "mlp", "chunk"):
            check_int(f"NAMTransformerConfig.{name}", getattr(self, name), 1)
        if self.head_mlp is not None:
            check_int("NAMTransformerConfig.head_mlp (if not None)", self.head_mlp, 1)
        if self.D % self.heads:
            raise ValueError(f"NAMTransformerConfig.D={self.D} must be divisible by heads={self.heads}")
        for name, allowed in (("attention", ATTENTIONS), ("readout", READOUTS), ("positions", POSITIONS),
                              ("dtype", ("float64", "float32"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"NAMTransformerConfig.{name} must be one of {allowed}; got {getattr(self, name)!r}")
        for name in ("causal", "cls", "reference_padding"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"NAMTransformerConfig.{name} must be True or False; got {getattr(self, name)!r}")
        if not (isinstance(self.ln_eps, (int, float)) and self.ln_eps > 0):
            raise ValueError(f"NAMTransformerConfig.ln_eps must be > 0; got {self.ln_eps!r}")


def _attention_shapes(config: NAMTransformerConfig) -> dict:
    D = config.D
    shapes = {"W_q": (D, D), "W_k": (D, D), "W_v": (D, D), "W_o": (D, D)}
    if config.attention == "softmax":
        shapes = {"W_q": (D, D), "b_q": (D,), "W_k": (D, D), "b_k": (D,), "W_v": (D, D), "b_v": (D,),
                  "W_o": (D, D), "b_o": (D,)}
    return shapes


def nam_transformer_param_shapes(config: NAMTransformerConfig) -> dict[str, tuple]:
    """Every parameter's name and shape, in the order of model.params."""
    D, F = config.D, config.mlp
    G = config.head_mlp or F
    shapes = {"embed.E": (config.V, D)}
    if config.cls:
        shapes["cls"] = (D,)
    if config.positions == "learned":
        shapes["pos.P"] = (config.T_max, D)
    for l in range(config.layers):
        shapes.update({f"block{l}.ln1.gain": (D,), f"block{l}.ln1.bias": (D,)})
        shapes.update(with_prefix(f"block{l}.attn", _attention_shapes(config)))
        shapes.update({f"block{l}.ln2.gain": (D,), f"block{l}.ln2.bias": (D,),
                       f"block{l}.mlp.layer0.W": (D, F), f"block{l}.mlp.layer0.b": (F,),
                       f"block{l}.mlp.layer1.W": (F, D), f"block{l}.mlp.layer1.b": (D,)})
    shapes.update({"final_ln.gain": (D,), "final_ln.bias": (D,), "head.layer0.W": (D, G), "head.layer0.b": (G,),
                   "head.layer1.W": (G, config.classes), "head.layer1.b": (config.classes,)})
    return shapes


def nam_transformer_init(rng: np.random.Generator, config: NAMTransformerConfig) -> dict:
    """Embedding N(0, 1), learned positions N(0, 0.02^2), CLS zeros, Xavier-uniform weights, zero
    biases, layer norms ones / zeros (module docstring)."""
    dtype = np.dtype(config.dtype)
    D, F = config.D, config.mlp
    G = config.head_mlp or F
    params = {"embed.E": init.normal(rng, (config.V, D), 1.0, dtype=dtype)}
    if config.cls:
        params["cls"] = np.zeros(D, dtype=dtype)
    if config.positions == "learned":
        params["pos.P"] = init.normal(rng, (config.T_max, D), 0.02, dtype=dtype)
    for l in range(config.layers):
        attn = (attention_init(rng, D, config.heads, dtype=dtype) if config.attention == "softmax"
                else nam_attention_init(rng, D, config.heads, dtype=dtype))
        params.update({f"block{l}.ln1.gain": np.ones(D, dtype), f"block{l}.ln1.bias": np.zeros(D, dtype)})
        params.update(with_prefix(f"block{l}.attn", attn))
        params.update({f"block{l}.ln2.gain": np.ones(D, dtype), f"block{l}.ln2.bias": np.zeros(D, dtype)})
        params.update(with_prefix(f"block{l}.mlp", mlp_init(rng, (D, F, D), dtype)))
    params.update({"final_ln.gain": np.ones(D, dtype), "final_ln.bias": np.zeros(D, dtype)})
    params.update(with_prefix("head", mlp_init(rng, (D, G, config.classes), dtype)))
    return params


def sinusoidal_positions(T: int, D: int, dtype=np.float64) -> np.ndarray:
    """P[t, 2i] = sin(t / 10000^(2i / D)), P[t, 2i + 1] = cos(...) (Vaswani et al., section 3.5). (T, D)."""
    t = np.arange(T)[:, None]
    rate = 1.0 / 10000.0 ** (2 * (np.arange(D) // 2) / D)
    angle = t * rate[None, :]
    return np.where(np.arange(D) % 2 == 0, np.sin(angle), np.cos(angle)).astype(dtype)


# ----------------------------------------------------------------- input checks
def _check_inputs(inputs, config: NAMTransformerConfig):
    """(tokens (B, T) int, key_mask (B, T) bool or None), batch-first, CLS row not yet added."""
    tokens, key_mask = inputs if isinstance(inputs, tuple) else (inputs, None)
    tokens = np.asarray(tokens)
    if tokens.dtype.kind not in "iu" or tokens.ndim != 2 or 0 in tokens.shape:
        raise ValueError(f"tokens must be an integer array (T, B) with T, B >= 1; got {tokens.dtype} {tokens.shape}")
    if tokens.min() < 0 or tokens.max() >= config.V:
        raise ValueError(f"tokens must lie in [0, V) = [0, {config.V}); got [{tokens.min()}, {tokens.max()}]")
    T = tokens.shape[0] + int(config.cls)
    if config.positions == "learned" and T > config.T_max:
        raise ValueError(f"T = {T} positions (CLS included) exceed T_max = {config.T_max}")
    if key_mask is not None:
        key_mask = np.asarray(key_mask)
        if key_mask.dtype != bool or key_mask.shape != tokens.shape:
            raise ValueError(f"key_mask must be a boolean (T, B) = {tokens.shape} array, True at real tokens; "
                             f"got {key_mask.dtype} {key_mask.shape}")
        if not np.all(key_mask.any(axis=0)):
            raise ValueError("key_mask leaves a row without a real token")
        key_mask = key_mask.T
    return tokens.T, key_mask


# ----------------------------------------------------------------- the model, manual engine
def _first_row_only(config: NAMTransformerConfig) -> bool:
    """Whether the manual engine runs the last block for row 0 only: the "first" readout reads
    nothing else, and with non-causal NAM attention row 0 of the block's output depends on the other
    rows only through the memory they write (which is still computed in full). Same numbers, less
    work: the last block's query, output projection, second layer norm and MLP see B rows, not B T."""
    return config.readout == "first" and config.attention == "nam" and not config.causal and config.layers >= 1


class BlockCache(NamedTuple):
    ln1: object
    attn: object
    ln2: object
    fc1: object
    gelu: tuple
    fc2: object
    T: int | None = None         # positions of the block's input when only its first rows were output


class NAMTransformerCache(NamedTuple):
    tokens: np.ndarray           # (B, T) int, batch-first
    key_mask: np.ndarray | None  # (B, T') bool incl. the CLS row, None without a mask
    blocks: list                 # BlockCache per block
    final_ln: object
    rows: np.ndarray | None      # (B, T', 1) readout weights for "mean", None otherwise
    head: object                 # MLPCache
    T: int                       # T' = positions incl. CLS


def block_forward(x, params, config: NAMTransformerConfig, key_mask, rows: int | None = None):
    """One pre-LN block, (NT-6)-(NT-7), on x (B, T, D). Returns (x', BlockCache).

    rows = n (NAM attention, non-causal): x' (B, n, D) holds only the first n positions, each as in
    the full output; every position still writes the attention memory. The last block under the
    "first" readout needs only row 0, and its MLP then runs on B rows instead of B T."""
    eps = config.ln_eps
    h, ln1 = layernorm_forward(x, params["ln1.gain"], params["ln1.bias"], eps)                     # 1.
    if rows is None:
        a, attn = attention_layer_forward(config.attention, h, strip_prefix("attn", params), config.heads,
                                          key_mask, config.causal, config.chunk)                   # 2.
        x = x + a
    else:
        a, attn = nam_attention_layer_forward(h, strip_prefix("attn", params), config.heads, key_mask,
                                              config.causal, config.chunk, query_rows=rows)
        x = x[:, :rows] + a
    h, ln2 = layernorm_forward(x, params["ln2.gain"], params["ln2.bias"], eps)                     # 3.
    z, fc1 = linear_forward(h, params["mlp.layer0.W"], params["mlp.layer0.b"])                     # 4.
    g, gelu = gelu_tanh_forward(z)
    m, fc2 = linear_forward(g, params["mlp.layer1.W"], params["mlp.layer1.b"])
    return x + m, BlockCache(ln1, attn, ln2, fc1, gelu, fc2, None if rows is None else h.shape[1])


def block_backward(dx, cache: BlockCache, config: NAMTransformerConfig):
    """Adjoint of block_forward. Returns (dx (B, T, D), unprefixed parameter gradients)."""
    grads = {}
    dg, grads["mlp.layer1.W"], grads["mlp.layer1.b"] = linear_backward(dx, cache.fc2)              # 4.
    dh, grads["mlp.layer0.W"], grads["mlp.layer0.b"] = linear_backward(gelu_tanh_backward(dg, cache.gelu), cache.fc1)
    dh, grads["ln2.gain"], grads["ln2.bias"] = layernorm_backward(dh, cache.ln2)                    # 3.
    dx = dx + dh
    dh, attn_grads = attention_layer_backward(config.attention, dx, cache.attn)                    # 2.
    grads.update(with_prefix("attn", attn_grads))
    dh, grads["ln1.gain"], grads["ln1.bias"] = layernorm_backward(dh, cache.ln1)                    # 1.
    if cache.T is not None:                                          # only the first rows were output
        dh[:, :dx.shape[1]] += dx
        return dh, grads
    return dx + dh, grads


def nam_transformer_forward(inputs, params: Mapping[str, np.ndarray], config: NAMTransformerConfig):
    """(NT-5)-(NT-8). inputs: tokens (T, B) int, or (tokens, key_mask (T, B) bool).
    Returns logits (B, Y) ("first", "mean") or (T', B, Y) ("tokens"), and the cache."""
    tokens, key_mask = _check_inputs(inputs, config)
    B = tokens.shape[0]
    x = params["embed.E"][tokens]                                    # (B, T, D)  (NT-5)
    if config.cls:
        x = np.concatenate([np.broadcast_to(params["cls"], (B, 1, config.D)), x], axis=1)
        if key_mask is not None:
            key_mask = np.concatenate([np.ones((B, 1), dtype=bool), key_mask], axis=1)
    T = x.shape[1]
    if config.positions == "learned":
        x = x + params["pos.P"][:T]
    elif config.positions == "sinusoidal":
        x = x + sinusoidal_positions(T, config.D, x.dtype)
    attn_mask = None if config.reference_padding else key_mask
    blocks = []
    for l in range(config.layers):                                   # (NT-6)-(NT-7)
        rows = 1 if l == config.layers - 1 and _first_row_only(config) else None
        x, block = block_forward(x, strip_prefix(f"block{l}", params), config, attn_mask, rows)
        blocks.append(block)
    y, final_ln = layernorm_forward(x, params["final_ln.gain"], params["final_ln.bias"], config.ln_eps)  # (NT-8)
    rows = None
    if config.readout == "first":
        r = y[:, 0]                                                  # (B, D)
    elif config.readout == "mean":
        rows = (np.ones((B, T), y.dtype) if key_mask is None else key_mask.astype(y.dtype))[..., None]
        rows = rows / rows.sum(axis=1, keepdims=True)                # (B, T, 1)
        r = np.sum(y * rows, axis=1)
    else:
        r = y
    logits, head = mlp_forward(r, strip_prefix("head", params), activation="relu")
    if config.readout == "tokens":
        logits = logits.transpose(1, 0, 2)                           # (T, B, Y), time-first
    return logits, NAMTransformerCache(tokens, key_mask, blocks, final_ln, rows, head, T)


def nam_transformer_backward(dlogits: np.ndarray, cache: NAMTransformerCache, params, config) -> dict:
    """Adjoint of nam_transformer_forward. Returns the parameter gradients, keyed like params."""
    grads = {}
    if config.readout == "tokens":
        dlogits = np.asarray(dlogits).transpose(1, 0, 2)
    dr, head_grads = mlp_backward(dlogits, cache.head)
    grads.update(with_prefix("head", head_grads))
    B, T = cache.tokens.shape[0], cache.T
    if config.readout == "first" and _first_row_only(config):
        dy = dr[:, None, :]                                          # (B, 1, D): the last block kept row 0 only
    elif config.readout == "first":
        dy = np.zeros((B, T, config.D), dtype=dr.dtype)
        dy[:, 0] = dr
    elif config.readout == "mean":
        dy = dr[:, None, :] * cache.rows
    else:
        dy = dr
    dx, grads["final_ln.gain"], grads["final_ln.bias"] = layernorm_backward(dy, cache.final_ln)
    for l in reversed(range(config.layers)):
        dx, block_grads = block_backward(dx, cache.blocks[l], config)
        grads.update(with_prefix(f"block{l}", block_grads))
    if config.positions == "learned":
        grads["pos.P"] = np.zeros_like(params["pos.P"])
        grads["pos.P"][:T] = dx.sum(axis=0)
    if config.cls:
        grads["cls"] = dx[:, 0].sum(axis=0)
        dx = dx[:, 1:]
    dE = np.zeros_like(params["embed.E"])
    scatter_add_rows(dE, cache.tokens, dx)                           # repeated tokens accumulate
    grads["embed.E"] = dE
    return {name: grads[name] for name in params}


# ----------------------------------------------------------------- the autodiff twin
def nam_transformer_autodiff(tparams: Mapping[str, ad.Tensor], inputs, config: NAMTransformerConfig) -> ad.Tensor:
    """Autodiff twin of nam_transformer_forward: the logits as a Tensor."""
    tokens, key_mask = _check_inputs(inputs, config)
    B = tokens.shape[0]
    x = ad.getitem(tparams["embed.E"], tokens)                       # (B, T, D)
    if config.cls:
        cls = ad.broadcast_to(ad.reshape(tparams["cls"], (1, 1, config.D)), (B, 1, config.D))
        x = ad.concatenate([cls, x], axis=1)
        if key_mask is not None:
            key_mask = np.concatenate([np.ones((B, 1), dtype=bool), key_mask], axis=1)
    T = x.shape[1]
    if config.positions == "learned":
        x = x + tparams["pos.P"][:T]
    elif config.positions == "sinusoidal":
        x = x + sinusoidal_positions(T, config.D, x.dtype)
    attn_mask = None if config.reference_padding else key_mask
    eps = config.ln_eps
    for l in range(config.layers):
        p = strip_prefix(f"block{l}", tparams)
        h = layernorm_autodiff(x, p["ln1.gain"], p["ln1.bias"], eps)
        x = x + attention_layer_autodiff(config.attention, h, strip_prefix("attn", p), config.heads, attn_mask,
                                         config.causal, config.chunk)
        h = layernorm_autodiff(x, p["ln2.gain"], p["ln2.bias"], eps)
        g = gelu_tanh_autodiff(linear_autodiff(h, p["mlp.layer0.W"], p["mlp.layer0.b"]))
        x = x + linear_autodiff(g, p["mlp.layer1.W"], p["mlp.layer1.b"])
    y = layernorm_autodiff(x, tparams["final_ln.gain"], tparams["final_ln.bias"], eps)
    if config.readout == "first":
        r = y[:, 0]
    elif config.readout == "mean":
        rows = (np.ones((B, T), y.dtype) if key_mask is None else key_mask.astype(y.dtype))[..., None]
        r = ad.sum(y * (rows / rows.sum(axis=1, keepdims=True)), axis=1)
    else:
        r = y
    logits = mlp_autodiff(r, strip_prefix("head", tparams), activation="relu")
    return ad.transpose(logits, (1, 0, 2)) if config.readout == "tokens" else logits


# ----------------------------------------------------------------- the model
class NAMTransformer:
    """A pre-LN Transformer classifier with NAM, softmax or elu-linear attention (module docstring).

    Model protocol: params, forward(inputs) -> (logits, cache), backward(dlogits, cache) -> grads,
    forward_autodiff(tparams, inputs) -> Tensor. inputs: tokens (T, B) int, or (tokens, key_mask)
    with key_mask (T, B) bool, True at real tokens. attention_weights(cache) gives what each query
    row read, for plots.
    """

    def __init__(self, config: NAMTransformerConfig, rng: np.random.Generator | None = None):
        if not isinstance(config, NAMTransformerConfig):
            raise ValueError(f"config must be a NAMTransformerConfig; got {type(config).__name__}")
        self.config = config
        self.params = nam_transformer_init(np.random.default_rng(0) if rng is None else rng, config)

    def _check(self) -> None:
        check_params(self.params, nam_transformer_param_shapes(self.config))
        for name, value in self.params.items():
            as_float_array(f"parameter {name}", value)
            check_finite(f"parameter {name}", value)

    def forward(self, inputs):
        """logits (B, Y), or (T', B, Y) with readout "tokens", and the cache for backward."""
        self._check()
        return nam_transformer_forward(inputs, self.params, self.config)

    def backward(self, dlogits, cache: NAMTransformerCache) -> dict:
        return nam_transformer_backward(dlogits, cache, self.params, self.config)

    def forward_autodiff(self, tparams: Mapping[str, ad.Tensor], inputs) -> ad.Tensor:
        self._check()
        return nam_transformer_autodiff(tparams, inputs, self.config)

    def attention_weights(self, cache: NAMTransformerCache, block: int = 0) -> np.ndarray:
        """(B, H, T', T') weights with which each query row summed the value rows in `block`:
        NAM cos(Q_l, K_s) (unnormalised, any sign), softmax A, linear phi(Q_l).phi(K_s) / den_l.
        Pads (masked keys) get 0. O(T'^2): for plots of small examples."""
        attn = cache.blocks[block].attn
        if self.config.attention == "softmax":
            return attn.sdpa.A
        if self.config.attention == "nam":
            kernel = attn.kernel
            Q_hat = kernel.Q_hat
            if cache.blocks[block].T is not None:                    # the forward kept row 0 only: every row's query
                Q = _split(attn.k.x @ self.params[f"block{block}.attn.W_q"], self.config.heads)
                Q_hat = unit_forward(Q)[0]                           # (B, H, T', d)
            return Q_hat @ np.swapaxes(kernel.K_hat, -1, -2) * (
                _tril(Q_hat.shape[2], Q_hat.dtype) if kernel.causal else 1.0)
        kernel = attn[3]
        A = kernel.Qf @ np.swapaxes(kernel.Kf, -1, -2) / kernel.den
        return A * _tril(A.shape[-1], A.dtype) if kernel.causal else A
