"""Building blocks of the Titans architectures (Behrouz et al., 2024, arXiv:2501.00663, sections
4.1-4.4; spec specs/titans_mnm.md A3.8-A3.11): RMSNorm, the SwiGLU feed-forward layer, the gated
combination of an attention branch and a memory branch, the attention masks of MAG/MAL (sliding
window with persistent prefix) and MAC (the causal-correct segment window of A3.8), and a
time-first wrapper around minimem.nn's multi-head attention.

Shapes: T time, B batch, D width, F feed-forward width, N_p persistent tokens, w window, c segment
length. Sequences are time-first (T, B, D); attention runs batch-first inside the wrapper.
Equations:
    RMSNorm_g(x) = x / sqrt(mean(x^2) + 1e-6) * g                     over the last axis
    SwiGLU(x) = (SiLU(x W_gate) * (x W_up)) W_down                      (A3.11, Llama-style block)
    (A30) o = RMSNorm_{g1}(y) * sigma(RMSNorm_{g2}(m))                 gate of MAG and MAC
    (A28) position t attends to every prefix position < N_p and to max(N_p, t-w+1) .. t
    (A3.8) segment token j attends to every persistent token, memory tokens j' <= j, segment tokens j' <= j
Parameters (unprefixed): RMSNorm `g` (D,); SwiGLU `W_gate`, `W_up` (D, F), `W_down` (F, D);
gate `g_y`, `g_m` (D,); attention: minimem.nn.attention's eight names (with biases).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from minimem import autodiff as ad
from minimem.memory.titans_features import silu_autodiff, silu_backward, silu_forward
from minimem.memory.titans_memory import _sigmoid
from minimem.nn.attention import attention_autodiff, attention_backward, attention_forward

RMS_EPS = 1e-6


def _rows_T_at(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """x^T g summed over all leading axes: x (..., X), g (..., Y) -> (X, Y)."""
    return x.reshape(-1, x.shape[-1]).T @ g.reshape(-1, g.shape[-1])


# ----------------------------------------------------------------- RMSNorm
def rmsnorm_forward(x: np.ndarray, g: np.ndarray):
    """RMSNorm_g(x) = x / sqrt(mean(x^2) + 1e-6) * g over the last axis. x (..., D), g (D,)."""
    n = np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + RMS_EPS)
    xhat = x / n
    return xhat * g, (xhat, n, g)


def rmsnorm_backward(dout: np.ndarray, cache):
    """Adjoint of rmsnorm_forward. Returns (dx (..., D), dg (D,))."""
    xhat, n, g = cache
    dg = (dout * xhat).reshape(-1, xhat.shape[-1]).sum(axis=0)
    dxhat = dout * g
    return dxhat / n - xhat * np.mean(dxhat * xhat, axis=-1, keepdims=True) / n, dg


def rmsnorm_autodiff(x, g) -> ad.Tensor:
    return x / ad.sqrt(ad.mean(x * x, axis=-1, keepdims=True) + RMS_EPS) * g


# ----------------------------------------------------------------- SwiGLU feed-forward
def swiglu_forward(x: np.ndarray, params: Mapping[str, np.ndarray]):
    """(SiLU(x W_gate) * (x W_up)) W_down. x (..., D) -> (..., D)."""
    a, sc = silu_forward(x @ params["W_gate"])                   # (..., F)
    b = x @ params["W_up"]                                       # (..., F)
    return (a * b) @ params["W_down"], (x, a, b, sc, params)


def swiglu_backward(dout: np.ndarray, cache):
    """Adjoint of swiglu_forward. Returns (dx, {"W_gate", "W_up", "W_down"})."""
    x, a, b, sc, params = cache
    dab = dout @ params["W_down"].T                              # (..., F)
    dgate_in = silu_backward(dab * b, sc)
    dup = dab * a
    dx = dgate_in @ params["W_gate"].T + dup @ params["W_up"].T
    return dx, {"W_gate": _rows_T_at(x, dgate_in), "W_up": _rows_T_at(x, dup), "W_down": _rows_T_at(a * b, dout)}


def swiglu_autodiff(x, tparams: Mapping[str, ad.Tensor]) -> ad.Tensor:
    a = silu_autodiff(ad.matmul(x, tparams["W_gate"]))
    return ad.matmul(a * ad.matmul(x, tparams["W_up"]), tparams["W_down"])


# ----------------------------------------------------------------- gated combination (A30)
def gate_forward(y: np.ndarray, m: np.ndarray, g_y: np.ndarray, g_m: np.ndarray):
    """o = RMSNorm_{g_y}(y) * sigma(RMSNorm_{g_m}(m)), eq. (A30). y, m (..., D)."""
    ry, cy = rmsnorm_forward(y, g_y)
    rm, cm = rmsnorm_forward(m, g_m)
    s = _sigmoid(rm)
    return ry * s, (ry, s, cy, cm)


def gate_backward(dout: np.ndarray, cache):
    """Adjoint of gate_forward. Returns (dy, dm, dg_y, dg_m)."""
    ry, s, cy, cm = cache
    dy, dg_y = rmsnorm_backward(dout * s, cy)
    dm, dg_m = rmsnorm_backward(dout * ry * s * (1.0 - s), cm)
    return dy, dm, dg_y, dg_m


def gate_autodiff(y, m, g_y, g_m) -> ad.Tensor:
    return rmsnorm_autodiff(y, g_y) * ad.sigmoid(rmsnorm_autodiff(m, g_m))


# ----------------------------------------------------------------- masks
def sliding_window_mask(T: int, w: int, N_p: int = 0) -> np.ndarray:
    """(T, T) boolean for SW-Attn with a persistent prefix, eq. (A28): position t (0-indexed, the
    first N_p are the prefix) attends to every prefix position <= t and to positions
    max(N_p, t - w + 1) .. t. With w >= T every causal pair is allowed (full causal attention)."""
    t = np.arange(T)[:, None]
    s = np.arange(T)[None, :]
    return (s <= t) & ((s < N_p) | (s > t - w))


def mac_window_mask(N_p: int, c: int, plain_causal: bool = False) -> np.ndarray:
    """(N_p + 2c, N_p + 2c) boolean over [persistent (N_p) || memory tokens h_1..h_c || segment
    tokens x_1..x_c], spec A3.8. Segment token j attends to every persistent token, to memory
    tokens j' <= j and to segment tokens j' <= j: h_j' is computed from x_j', so a plain causal
    mask (plain_causal=True, kept only to document the leak) would let x_j see x_j' for j' > j.
    Persistent and memory-token rows are never read out; they use the plain causal pattern."""
    size = N_p + 2 * c
    mask = np.tril(np.ones((size, size), dtype=bool))
    if not plain_causal:
        j = np.arange(c)
        memory_cols = N_p + j                                    # h_j'
        rows = N_p + c + j                                       # x_j
        mask[np.ix_(rows, memory_cols)] = j[None, :] <= j[:, None]
    return mask


# ----------------------------------------------------------------- attention, time-first
def attention_tf_forward(x: np.ndarray, params: Mapping[str, np.ndarray], heads: int, mask: np.ndarray):
    """Masked multi-head self-attention on time-first x (T, B, D) -> (T, B, D) (minimem.nn.attention)."""
    y, cache = attention_forward(np.swapaxes(x, 0, 1), np.swapaxes(x, 0, 1), params, heads, mask=mask)
    return np.swapaxes(y, 0, 1), cache


def attention_tf_backward(dout: np.ndarray, cache):
    """Adjoint of attention_tf_forward. Returns (dx (T, B, D), parameter gradients)."""
    dx_q, dx_kv, grads = attention_backward(np.swapaxes(dout, 0, 1), cache)
    return np.swapaxes(dx_q + dx_kv, 0, 1), grads


def attention_tf_autodiff(x, tparams: Mapping[str, ad.Tensor], heads: int, mask: np.ndarray) -> ad.Tensor:
    xb = ad.swapaxes(x, 0, 1)
    return ad.swapaxes(attention_autodiff(xb, xb, tparams, heads, mask=mask), 0, 1)
