"""NAM attention (Nam & Seo, 2023, arXiv:2302.09422; spec specs/nam_hma.md A6): attention read as
a NAM memory. Every token writes (unit key, value) with p_w = 1, p_e = 0 into one memory per head;
every token reads it with its unit query. It is linear attention with the unit-norm feature map and
WITHOUT a row normaliser: cost O(T d^2) instead of O(T^2 d), and outputs grow with the number of
tokens written (no softmax temperature; A1.5 interference law).

Shapes: B batch, H heads, Tq query positions, Tk key positions (T for self-attention and causal),
d_k key/query head width, d_v value head width, D model width. Equations (the spec's labels; the
paper's numbering could not be consulted):
    (NT-1)  Q = x W_q, K = x W_k, V = x W_v (no biases), split into H heads, head-major columns
    (NT-2)  M_h = sum_s V_{s,h} unit(K_{s,h})^T      (d_v, d_k): (NAM-3), the NAM write with
                                                     (p_w, p_e) = (1, 0) of every token from M = 0
    (NT-3)  Y_{l,h} = M_h unit(Q_{l,h}) = sum_s cos(Q_{l,h}, K_{s,h}) V_{s,h}
    (NT-4)  out = merge_heads(Y) W_o (no bias)
The kernel computes (NT-2) as S = unit(K)^T V (d_k, d_v) = M^T and Y = unit(Q) S (spec A6.4), so
the T x T matrix is never formed.

Extensions (minimem's, not the reference's; spec A6.3):
- key_mask (B, Tk) boolean, True at real tokens: the rows of unit(K) at pads are zeroed, so pads
  write nothing (the reference writes them; pass key_mask=None to reproduce it). Pads still read.
- causal=True: query l reads only the keys s <= l, i.e. prefix sums of (NT-2). They are computed
  chunk by chunk (`chunk` positions at a time): inside a chunk the masked (C, C) product
  tril(unit(Q_c) unit(K_c)^T) V_c, across chunks the running state S. Memory O(T C + (T / C) d^2).

Layer parameters (nam_attention_init; layouts `x @ W`): `W_q` (D, H d_k), `W_k` (D, H d_k),
`W_v` (D, H d_v), `W_o` (H d_v, D); Xavier-uniform as in the reference. Head h owns columns
[h d, (h + 1) d). PyTorch nn.Linear maps as W = weight.T; the reference Flax DenseGeneral kernels
(D, H, d) reshape to (D, H d) in the same head-major order.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem import init
from minimem.checks import check_int
from minimem.memory.nam import EPS, UnitCache, unit_autodiff, unit_backward, unit_forward
from minimem.nn.layernorm import layernorm_autodiff, layernorm_backward, layernorm_forward, layernorm_init
from minimem.nn.linear import (
    as_float_array, check_finite, check_params, linear_autodiff, linear_backward, linear_forward,
    strip_prefix, with_prefix,
)

PARAM_NAMES = ("W_q", "W_k", "W_v", "W_o")
DEFAULT_CHUNK = 64


# ----------------------------------------------------------------- input validation
def _check_kernel_inputs(Q, K, V, key_mask, causal: bool, chunk: int):
    if Q.ndim != 4:
        raise ValueError(f"Q must have shape (B, H, Tq, d_k); got {tuple(Q.shape)}")
    B, H, Tq, d_k = Q.shape
    if K.ndim != 4 or K.shape[:2] != (B, H) or K.shape[3] != d_k:
        raise ValueError(f"K must have shape (B, H, Tk, d_k) with (B, H, d_k) = {(B, H, d_k)} from Q; "
                         f"got {tuple(K.shape)}")
    Tk = K.shape[2]
    if V.ndim != 4 or V.shape[:3] != (B, H, Tk):
        raise ValueError(f"V must have shape (B, H, Tk, d_v) with (B, H, Tk) = {(B, H, Tk)}; got {tuple(V.shape)}")
    if Tq == 0 or Tk == 0:
        raise ValueError(f"Q and K need at least one position; got Tq={Tq}, Tk={Tk}")
    if causal and Tq != Tk:
        raise ValueError(f"causal=True needs Tq == Tk; got Tq={Tq}, Tk={Tk}")
    check_int("chunk", chunk, 1)
    if key_mask is None:
        return None
    key_mask = np.asarray(key_mask)
    if key_mask.dtype != bool or key_mask.shape != (B, Tk):
        raise ValueError(f"key_mask must be a boolean array of shape (B, Tk) = {(B, Tk)} (True at real "
                         f"tokens); got dtype {key_mask.dtype}, shape {key_mask.shape}")
    return key_mask


def _tril(n: int, dtype) -> np.ndarray:
    return np.tril(np.ones((n, n), dtype=dtype))                      # (n, n), 1 where key <= query


# ----------------------------------------------------------------- the kernel, (NT-2)-(NT-3)
class NAMAttentionCache(NamedTuple):
    Q_hat: np.ndarray            # (B, H, Tq, d_k) unit queries
    K_hat: np.ndarray            # (B, H, Tk, d_k) unit keys, zero rows at pads
    V: np.ndarray                # (B, H, Tk, d_v) values
    q_unit: UnitCache            # normalisation of Q
    k_unit: UnitCache            # normalisation of K
    keep: np.ndarray | None      # (B, 1, Tk, 1) 1.0 at real tokens, 0.0 at pads; None without a mask
    causal: bool
    chunk: int
    states: np.ndarray           # (B, H, d_k, d_v) S = K_hat^T V; causal: (n_chunks, B, H, d_k, d_v),
                                 # the state before each chunk


def nam_attention_forward(Q: np.ndarray, K: np.ndarray, V: np.ndarray, key_mask: np.ndarray | None = None,
                          causal: bool = False, chunk: int = DEFAULT_CHUNK, eps: float = EPS):
    """NAM attention, (NT-2)-(NT-3), batched over batch and heads.

    Args:
        Q: (B, H, Tq, d_k) queries; K: (B, H, Tk, d_k) keys; V: (B, H, Tk, d_v) values.
        key_mask: (B, Tk) boolean, True at real tokens; pads write nothing. None writes every token.
        causal: query l reads only keys s <= l (needs Tq == Tk).
        chunk: positions per chunk of the causal prefix sums (any value gives the same result).
        eps: the floor of the unit norm (1e-12).
    Returns:
        Y: (B, H, Tq, d_v), and the cache for nam_attention_backward.
    """
    Q, K, V = (as_float_array(n, x) for n, x in (("Q", Q), ("K", K), ("V", V)))
    key_mask = _check_kernel_inputs(Q, K, V, key_mask, causal, chunk)
    Q_hat, q_unit = unit_forward(Q, eps)                             # (B, H, Tq, d_k)  (NAM-0)
    K_hat, k_unit = unit_forward(K, eps)                             # (B, H, Tk, d_k)
    keep = None
    if key_mask is not None:
        keep = key_mask[:, None, :, None].astype(K_hat.dtype)        # (B, 1, Tk, 1)
        K_hat = K_hat * keep
    if not causal:
        S = np.swapaxes(K_hat, -1, -2) @ V                           # (B, H, d_k, d_v)  (NT-2), M^T
        Y = Q_hat @ S                                                # (B, H, Tq, d_v)   (NT-3)
        return Y, NAMAttentionCache(Q_hat, K_hat, V, q_unit, k_unit, keep, False, chunk, S)
    B, H, T, _ = Q.shape
    Y = np.empty(Q.shape[:3] + V.shape[3:], dtype=np.result_type(Q_hat, V))   # (B, H, T, d_v)
    starts = range(0, T, chunk)
    states = np.empty((len(starts), B, H, K.shape[3], V.shape[3]), dtype=Y.dtype)
    S = np.zeros(states.shape[1:], dtype=Y.dtype)                    # (B, H, d_k, d_v), nothing written yet
    for c, t0 in enumerate(starts):
        t1 = min(t0 + chunk, T)
        q, k, v = Q_hat[:, :, t0:t1], K_hat[:, :, t0:t1], V[:, :, t0:t1]
        states[c] = S
        A = (q @ np.swapaxes(k, -1, -2)) * _tril(t1 - t0, Y.dtype)   # (B, H, C, C) cosines, s <= l
        Y[:, :, t0:t1] = q @ S + A @ v                               # earlier chunks + this one
        S = S + np.swapaxes(k, -1, -2) @ v                           # write the chunk's tokens
    return Y, NAMAttentionCache(Q_hat, K_hat, V, q_unit, k_unit, keep, True, chunk, states)


def nam_attention_backward(dY: np.ndarray, cache: NAMAttentionCache):
    """Adjoint of nam_attention_forward (spec A6.4). Returns (dQ, dK, dV), shaped like Q, K, V.

    Non-causal: dQ_hat = dY S^T, dS = Q_hat^T dY, dK_hat = V dS^T, dV = K_hat dS. Causal: the same
    per chunk, walking the chunks backwards with dS carried from the later chunks (the state after
    the last chunk is not an output, so the carry starts at 0). Then the key mask and the unit-norm
    adjoints.
    """
    Q_hat, K_hat, V, q_unit, k_unit, keep, causal, chunk, states = cache
    expected = Q_hat.shape[:3] + V.shape[3:]
    if np.shape(dY) != expected:
        raise ValueError(f"dY must have the output's shape (B, H, Tq, d_v) = {expected}; got {np.shape(dY)}")
    if not causal:
        S = states
        dQ_hat = dY @ np.swapaxes(S, -1, -2)                         # (B, H, Tq, d_k)
        dS = np.swapaxes(Q_hat, -1, -2) @ dY                         # (B, H, d_k, d_v)
        dK_hat = V @ np.swapaxes(dS, -1, -2)                         # (B, H, Tk, d_k)
        dV = K_hat @ dS                                              # (B, H, Tk, d_v)
    else:
        T = Q_hat.shape[2]
        dQ_hat, dK_hat, dV = np.empty_like(Q_hat), np.empty_like(K_hat), np.empty_like(V)
        dS_carry = np.zeros(states.shape[1:], dtype=dY.dtype)        # d loss / d S after chunk c
        for c in reversed(range(states.shape[0])):
            t0 = c * chunk
            t1 = min(t0 + chunk, T)
            q, k, v, dy = Q_hat[:, :, t0:t1], K_hat[:, :, t0:t1], V[:, :, t0:t1], dY[:, :, t0:t1]
            tril = _tril(t1 - t0, dY.dtype)
            A = (q @ np.swapaxes(k, -1, -2)) * tril                  # (B, H, C, C)
            dA = (dy @ np.swapaxes(v, -1, -2)) * tril                # (B, H, C, C)
            dQ_hat[:, :, t0:t1] = dy @ np.swapaxes(states[c], -1, -2) + dA @ k
            dK_hat[:, :, t0:t1] = np.swapaxes(dA, -1, -2) @ q + v @ np.swapaxes(dS_carry, -1, -2)
            dV[:, :, t0:t1] = np.swapaxes(A, -1, -2) @ dy + k @ dS_carry
            dS_carry = dS_carry + np.swapaxes(q, -1, -2) @ dy        # this chunk read the state before it
    if keep is not None:
        if dK_hat.dtype == np.result_type(dK_hat, keep):
            dK_hat *= keep                                           # dK_hat is a new array
        else:
            dK_hat = dK_hat * keep
    return unit_backward(dQ_hat, q_unit), unit_backward(dK_hat, k_unit), dV


def nam_attention_autodiff(Q, K, V, key_mask=None, causal: bool = False, chunk: int = DEFAULT_CHUNK,
                           eps: float = EPS) -> ad.Tensor:
    """Autodiff twin of nam_attention_forward. The causal form is written as the masked quadratic
    product (tril(unit(Q) unit(K)^T)) V (spec A9.3), an independent route to the same numbers; it
    costs O(T^2), which is fine for a checking engine. `chunk` is accepted and unused."""
    Q, K, V = ad.as_tensor(Q), ad.as_tensor(K), ad.as_tensor(V)
    key_mask = _check_kernel_inputs(Q, K, V, key_mask, causal, chunk)
    Q_hat, K_hat = unit_autodiff(Q, eps), unit_autodiff(K, eps)
    if key_mask is not None:
        K_hat = K_hat * key_mask[:, None, :, None].astype(K_hat.dtype)
    if not causal:
        return ad.matmul(Q_hat, ad.matmul(ad.swapaxes(K_hat, -1, -2), V))          # (B, H, Tq, d_v)
    A = ad.matmul(Q_hat, ad.swapaxes(K_hat, -1, -2)) * _tril(Q.shape[2], Q_hat.dtype)  # (B, H, T, T)
    return ad.matmul(A, V)                                                          # (B, H, T, d_v)


nam_attention_op = ad.custom_op(nam_attention_forward, nam_attention_backward, name="nam.attention")


# ----------------------------------------------------------------- the multi-head layer, (NT-1)-(NT-4)
def _split_heads(x: np.ndarray, H: int) -> np.ndarray:
    B, T, Hd = x.shape
    return x.reshape(B, T, H, Hd // H).transpose(0, 2, 1, 3)        # (B, H, T, d)


def _merge_heads(x: np.ndarray) -> np.ndarray:
    B, H, T, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * d)             # (B, T, H d)


def nam_attention_param_shapes(D: int, heads: int, d_k: int, d_v: int) -> dict:
    """{name: shape} of the four projections, in the order of PARAM_NAMES."""
    return {"W_q": (D, heads * d_k), "W_k": (D, heads * d_k), "W_v": (D, heads * d_v), "W_o": (heads * d_v, D)}


def _layer_shapes(params: Mapping[str, np.ndarray], heads: int) -> tuple[int, int, int]:
    """(D, d_k, d_v) from the parameter shapes, checked against each other and `heads`."""
    W_q, W_v = np.shape(params.get("W_q")), np.shape(params.get("W_v"))
    if (isinstance(heads, bool) or not isinstance(heads, (int, np.integer)) or heads < 1 or len(W_q) != 2
            or len(W_v) != 2 or W_q[1] % heads or W_v[1] % heads):
        raise ValueError(f"W_q (D, H d_k) and W_v (D, H d_v) must split into H={heads!r} heads; got {W_q}, {W_v}")
    D, d_k, d_v = W_q[0], W_q[1] // heads, W_v[1] // heads
    check_params(params, nam_attention_param_shapes(D, heads, d_k, d_v))
    return D, d_k, d_v


class NAMLayerCache(NamedTuple):
    q: object                    # LinearCache of (NT-1) for Q
    k: object                    # LinearCache for K
    v: object                    # LinearCache for V
    heads: int
    kernel: NAMAttentionCache    # (NT-2)-(NT-3)
    o: object                    # LinearCache of (NT-4)


def nam_attention_layer_forward(x: np.ndarray, params: Mapping[str, np.ndarray], heads: int,
                                key_mask: np.ndarray | None = None, causal: bool = False,
                                chunk: int = DEFAULT_CHUNK, query_rows: int | None = None):
    """Multi-head NAM self-attention, (NT-1)-(NT-4).

    Args:
        x: (B, T, D) inputs.
        params: {"W_q", "W_k", "W_v", "W_o"} (layouts in the module docstring).
        heads: H.
        key_mask: (B, T) boolean, True at real tokens, or None; causal, chunk: as in the kernel.
        query_rows: n in 1..T (non-causal only): the output of the first n positions only, each the
            same as in the full output (every position still writes); None: all T.
    Returns:
        out: (B, T, D) (or (B, n, D)), and the cache for nam_attention_layer_backward.
    """
    D, _, _ = _layer_shapes(params, heads)
    x = as_float_array("x", x)
    if x.ndim != 3 or x.shape[2] != D or x.shape[1] == 0:
        raise ValueError(f"x must have shape (B, T, D) with T >= 1 and D={D}; got {x.shape}")
    if query_rows is not None and query_rows != x.shape[1]:
        if (isinstance(query_rows, bool) or not isinstance(query_rows, (int, np.integer))
                or not 1 <= query_rows <= x.shape[1] or causal):
            raise ValueError(f"query_rows must be an integer in [1, T] = [1, {x.shape[1]}] and needs causal=False; "
                             f"got {query_rows!r}, causal={causal}")
    Q, q_cache = linear_forward(x[:, :query_rows], params["W_q"])   # (B, T or n, H d_k)  (NT-1)
    K, k_cache = linear_forward(x, params["W_k"])                   # (B, T, H d_k)
    V, v_cache = linear_forward(x, params["W_v"])                   # (B, T, H d_v)
    Y, kernel_cache = nam_attention_forward(                        # (B, H, T, d_v)  (NT-2)-(NT-3)
        _split_heads(Q, heads), _split_heads(K, heads), _split_heads(V, heads), key_mask, causal, chunk)
    out, o_cache = linear_forward(_merge_heads(Y), params["W_o"])   # (B, T, D)  (NT-4)
    return out, NAMLayerCache(q_cache, k_cache, v_cache, heads, kernel_cache, o_cache)


def nam_attention_layer_backward(dout: np.ndarray, cache: NAMLayerCache):
    """Adjoint of nam_attention_layer_forward. Returns dx (B, T, D) and {"W_q", "W_k", "W_v", "W_o"}."""
    H = cache.heads
    dY, dW_o, _ = linear_backward(dout, cache.o)                                     # (NT-4)
    dQ, dK, dV = nam_attention_backward(_split_heads(dY, H), cache.kernel)           # (NT-3)-(NT-2)
    dx_q, dW_q, _ = linear_backward(_merge_heads(dQ), cache.q)                       # (NT-1)
    dx_k, dW_k, _ = linear_backward(_merge_heads(dK), cache.k)
    dx_v, dW_v, _ = linear_backward(_merge_heads(dV), cache.v)
    if dx_q.shape == dx_k.shape:
        return dx_q + dx_k + dx_v, {"W_q": dW_q, "W_k": dW_k, "W_v": dW_v, "W_o": dW_o}
    dx = dx_k + dx_v
    dx[:, :dx_q.shape[1]] += dx_q                                   # query_rows = n: queries at the first n rows
    return dx, {"W_q": dW_q, "W_k": dW_k, "W_v": dW_v, "W_o": dW_o}


def nam_attention_layer_autodiff(x, tparams: Mapping[str, ad.Tensor], heads: int, key_mask=None,
                                 causal: bool = False, chunk: int = DEFAULT_CHUNK) -> ad.Tensor:
    """Autodiff twin of nam_attention_layer_forward."""
    x = ad.as_tensor(x)
    B, T, _ = x.shape

    def split(t):                                               # (B, T, H d) -> (B, H, T, d)
        return ad.transpose(ad.reshape(t, (B, T, heads, t.shape[2] // heads)), (0, 2, 1, 3))

    Q, K, V = (linear_autodiff(x, tparams[name]) for name in ("W_q", "W_k", "W_v"))
    Y = nam_attention_autodiff(split(Q), split(K), split(V), key_mask, causal, chunk)   # (B, H, T, d_v)
    Y = ad.reshape(ad.transpose(Y, (0, 2, 1, 3)), (B, T, -1))                           # (B, T, H d_v)
    return linear_autodiff(Y, tparams["W_o"])


def nam_attention_init(rng: np.random.Generator, D: int, heads: int, head_width: int | None = None,
                       dtype=np.float64) -> dict:
    """Xavier-uniform W_q, W_k, W_v, W_o (no biases, as in the reference); d_k = d_v = head_width,
    default D / heads."""
    if head_width is None:
        if D % heads:
            raise ValueError(f"D={D} is not divisible by heads={heads}; pass head_width")
        head_width = D // heads
    shapes = nam_attention_param_shapes(D, heads, head_width, head_width)
    return {name: init.xavier_uniform(rng, shape, dtype=dtype) for name, shape in shapes.items()}


# ----------------------------------------------------------------- a block as a model
class NAMAttentionModel:
    """A pre-layer-norm residual NAM self-attention block: y = x + NAM(LN(x)), x and y (B, T, D).

    Inputs: x (B, T, D), or a pair (x, key_mask) with key_mask (B, T) boolean, True at real tokens.
    Parameters: `ln.gain`, `ln.bias` (D,); `attn.W_q`, `attn.W_k`, `attn.W_v`, `attn.W_o` (module
    docstring; d_k = d_v = D / heads). causal=True reads only earlier and current positions.
    """

    def __init__(self, D: int, heads: int, causal: bool = False, chunk: int = DEFAULT_CHUNK, eps: float = 1e-5,
                 rng: np.random.Generator | None = None, dtype=np.float64):
        rng = np.random.default_rng(0) if rng is None else rng
        self.D, self.heads, self.causal, self.chunk, self.eps = D, heads, causal, chunk, eps
        self.params = {**with_prefix("ln", layernorm_init(D, dtype)),
                       **with_prefix("attn", nam_attention_init(rng, D, heads, dtype=dtype))}

    def _check(self, inputs):
        D, d = self.D, self.D // self.heads
        check_params(self.params, {"ln.gain": (D,), "ln.bias": (D,),
                                   **with_prefix("attn", nam_attention_param_shapes(D, self.heads, d, d))})
        for name, value in self.params.items():
            check_finite(f"parameter {name}", value)
        x, key_mask = inputs if isinstance(inputs, tuple) else (inputs, None)
        x = as_float_array("inputs", x)
        if x.ndim != 3 or x.shape[2] != D or x.shape[1] == 0:
            raise ValueError(f"inputs must have shape (B, T, D) with T >= 1 and D={D}; got {x.shape}")
        check_finite("inputs", x)
        return x, key_mask

    def forward(self, inputs):
        """y (B, T, D) and the cache for backward."""
        x, key_mask = self._check(inputs)
        h, ln_cache = layernorm_forward(x, self.params["ln.gain"], self.params["ln.bias"], self.eps)   # 1.
        a, attn_cache = nam_attention_layer_forward(h, strip_prefix("attn", self.params), self.heads,  # 2.
                                                    key_mask, self.causal, self.chunk)
        return x + a, (ln_cache, attn_cache)                                                          # 3.

    def backward(self, dy, cache) -> dict:
        ln_cache, attn_cache = cache
        dh, attn_grads = nam_attention_layer_backward(dy, attn_cache)                                 # 2.
        _, dgain, dbias = layernorm_backward(dh, ln_cache)                                            # 1.
        grads = {"ln.gain": dgain, "ln.bias": dbias, **with_prefix("attn", attn_grads)}
        return {name: grads[name] for name in self.params}

    def forward_autodiff(self, tparams: Mapping[str, ad.Tensor], inputs) -> ad.Tensor:
        x, key_mask = self._check(inputs)
        h = layernorm_autodiff(x, tparams["ln.gain"], tparams["ln.bias"], self.eps)
        return x + nam_attention_layer_autodiff(h, strip_prefix("attn", tparams), self.heads, key_mask,
                                                self.causal, self.chunk)
