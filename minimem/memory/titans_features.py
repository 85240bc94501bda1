"""Titans LMM layer: token features, data-dependent gates and the output path (Behrouz et al.,
2024, arXiv:2501.00663, eqs. (11), (15), sections 3.1 and 4.4; spec specs/titans_mnm.md A3.1,
A3.2, A3.6). The memory recurrence itself is in titans_lmm; the layer is assembled in titans.

Shapes: T time, B batch, D model width, H heads, d width per head, K_c convolution width, C = H d
channels. Sequences are time-first: x (T, B, D); per-head features (T, B, H, d); gates (T, B, H).
Equations (spec numbering; row vectors, weights used as `x @ W`):
    (A1) q~ = x W_q,  k~ = x W_k,  v~ = x W_v                           (C channels each)
    (A2) conv(z)_t[c] = sum_{j=0}^{K_c-1} w[c, j] z_{t-K_c+1+j}[c]      causal depthwise, tap K_c-1 = now
    (A3) q = SiLU(conv_q(q~)),  k = SiLU(conv_k(k~)),  v = SiLU(conv_v(v~))
    (A4) per head: q <- q / sqrt(||q||^2 + eps_n),  k <- k / sqrt(||k||^2 + eps_n)   (v unnormalised)
    (A5) alpha = sigma(x w_alpha + b_alpha)                             forgetting gate
    (A6) eta = sigma(x w_eta + b_eta)                                   momentum (surprise decay)
    (A7) theta = theta_max sigma(x w_theta + b_theta)                   inner step size
    (A20) r = RMSNorm_g(y) per head: y / sqrt(mean(y^2) + 1e-6) * g     read-out normalisation
    (A21) o = (r * SiLU(x W_gate)) W_o                                  output gate and projection
Parameters (unprefixed; the layer prefixes them with `lmm.`):
    `W_q`, `W_k`, `W_v` (D, C); `conv_q`, `conv_k`, `conv_v` (C, K_c); `w_alpha`, `w_eta`,
    `w_theta` (D, H); `b_alpha`, `b_eta`, `b_theta` (H,); `out_norm.g` (d,) shared by the heads;
    `W_gate` (D, C); `W_o` (C, D). Channel c = i d + j is feature j of head i.
Streaming: each convolution carries its last K_c - 1 inputs (K_c - 1, B, C), zeros at the start.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem.memory.titans_memory import _sigmoid

RMS_EPS = 1e-6           # epsilon of (A20)
FEATURE_NAMES = ("W_q", "W_k", "W_v", "conv_q", "conv_k", "conv_v",
                 "w_alpha", "w_eta", "w_theta", "b_alpha", "b_eta", "b_theta")
OUTPUT_NAMES = ("out_norm.g", "W_gate", "W_o")


def _sum_rows(x: np.ndarray) -> np.ndarray:
    """Sum over every axis but the last."""
    return x.reshape(-1, x.shape[-1]).sum(axis=0)


def _rows_at(x: np.ndarray, W: np.ndarray) -> np.ndarray:
    """x W for rows x (..., X) and one matrix W (X, Y) -> (..., Y), as a single matrix product over
    all the rows (`x @ W` on a (T, B, X) array would be T small products of B rows each)."""
    return (x.reshape(-1, x.shape[-1]) @ W).reshape(x.shape[:-1] + (W.shape[-1],))


def _rows_T_at(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """x^T g summed over all leading axes: x (..., X), g (..., Y) -> (X, Y)."""
    return x.reshape(-1, x.shape[-1]).T @ g.reshape(-1, g.shape[-1])


# ----------------------------------------------------------------- SiLU
def silu_forward(a: np.ndarray):
    """SiLU(a) = a sigma(a), elementwise. Returns the value z and the cache: the derivative
    SiLU'(a) = s (1 + a (1 - s)) = s + z (1 - s), s = sigma(a), formed here where s is at hand (one
    array to keep instead of a and s; the backward is then one product)."""
    s = _sigmoid(a)
    z = a * s
    d = 1.0 - s
    d *= z
    d += s                                                       # s + z (1 - s)
    return z, d


def silu_backward(dout: np.ndarray, cache) -> np.ndarray:
    """dout * SiLU'(a), from the derivative cached by silu_forward."""
    return dout * cache


def silu_autodiff(a) -> ad.Tensor:
    return a * ad.sigmoid(a)


# ----------------------------------------------------------------- causal depthwise convolution (A2)
def causal_conv_forward(z: np.ndarray, w: np.ndarray, buffer: np.ndarray | None = None):
    """Causal depthwise convolution over time, eq. (A2).

    Args:
        z: (T, B, C) inputs.
        w: (C, K_c) kernels; column K_c - 1 multiplies the current token.
        buffer: (K_c - 1, B, C) the inputs before z (oldest first), or None for zeros.
    Returns:
        out (T, B, C), the new buffer (K_c - 1, B, C) (the last K_c - 1 inputs), and the cache.
    """
    T, B, C = z.shape
    K = w.shape[1]
    if buffer is None:
        buffer = np.zeros((K - 1, B, C), dtype=z.dtype)
    zpad = np.concatenate([buffer, z], axis=0)                   # (T + K_c - 1, B, C)
    wT = np.ascontiguousarray(w.T)                               # (K_c, C): contiguous rows per tap
    out = wT[0] * zpad[0:T]
    tap = np.empty_like(out)
    for j in range(1, K):                                        # loop over the K_c taps only
        np.multiply(wT[j], zpad[j:j + T], out=tap)
        out += tap
    return out, zpad[T:].copy(), (zpad, w)


def causal_conv_backward(dout: np.ndarray, cache, dbuffer_out: np.ndarray | None = None):
    """Adjoint of causal_conv_forward: dz_{t-K_c+1+j} += w[:, j] dout_t, dw[:, j] += sum_t z_{t-K_c+1+j} dout_t.
    dbuffer_out (K_c - 1, B, C) is the gradient of the returned buffer, if it was used downstream.
    Returns (dz (T, B, C), dw (C, K_c), dbuffer (K_c - 1, B, C))."""
    zpad, w = cache
    T = dout.shape[0]
    K = w.shape[1]
    dzpad = np.zeros_like(zpad)
    dw = np.empty_like(w)
    tap = np.empty_like(dout)
    wT = np.ascontiguousarray(w.T)                               # (K_c, C)
    for j in range(K):
        np.multiply(wT[j], dout, out=tap)
        dzpad[j:j + T] += tap
        np.multiply(zpad[j:j + T], dout, out=tap)
        dw[:, j] = _sum_rows(tap)
    if dbuffer_out is not None:
        dzpad[T:] += dbuffer_out
    return dzpad[K - 1:], dw, dzpad[:K - 1]


def causal_conv_autodiff(z, w, buffer=None):
    """Autodiff twin of causal_conv_forward: (out, new buffer) Tensors."""
    z, w = ad.as_tensor(z), ad.as_tensor(w)
    T, B, C = z.shape
    K = w.shape[1]
    if buffer is None:
        buffer = ad.Tensor(np.zeros((K - 1, B, C), dtype=z.dtype))
    zpad = ad.concatenate([buffer, z], axis=0)                   # (T + K_c - 1, B, C)
    out = None
    for j in range(K):
        term = w[:, j] * zpad[j:j + T]
        out = term if out is None else out + term
    return out, zpad[T:]


# ----------------------------------------------------------------- l2 normalisation (A4)
def l2norm_forward(x: np.ndarray, eps: float):
    """y = x / sqrt(||x||^2 + eps) over the last axis. Returns y and the cache (y, n): the output,
    which the caller keeps anyway, and the norms n (..., 1)."""
    n = np.sqrt(np.sum(x * x, axis=-1, keepdims=True) + eps)
    y = x / n
    return y, (y, n)


def l2norm_backward(dy: np.ndarray, cache) -> np.ndarray:
    """dx = dy / n - x (x . dy) / n^3 (spec A4.2) = (dy - y (y . dy)) / n with y = x / n."""
    y, n = cache
    c = np.sum(y * dy, axis=-1, keepdims=True)
    dx = y * c
    np.subtract(dy, dx, out=dx)
    dx /= n
    return dx


def l2norm_autodiff(x, eps: float) -> ad.Tensor:
    return x / ad.sqrt(ad.sum(x * x, axis=-1, keepdims=True) + eps)


# ----------------------------------------------------------------- features and gates, (A1)-(A7)
class FeaturesCache(NamedTuple):
    x: np.ndarray        # (T, B, D)
    params: Mapping      # the unprefixed parameters used
    conv: tuple          # three causal_conv caches (q, k, v)
    silu: tuple          # three silu caches
    norm: tuple          # two l2norm caches (q, k), on (T, B, H, d)
    gates: tuple         # alpha, eta, theta (T, B, H)
    theta_max: float


def lmm_features_forward(x: np.ndarray, params: Mapping[str, np.ndarray], H: int, theta_max: float,
                         eps_n: float = 1e-6, conv_state: tuple | None = None):
    """Token features and gates of the LMM, eqs. (A1)-(A7).

    Args:
        x: (T, B, D) layer inputs.
        params: the unprefixed parameters (FEATURE_NAMES), shapes in the module docstring.
        H: heads; d = C / H.
        theta_max: upper bound of theta (A7).
        eps_n: epsilon of the key/query l2 normalisation (A4).
        conv_state: (buffer_q, buffer_k, buffer_v), each (K_c - 1, B, C), or None for zeros.
    Returns:
        (q, k, v) each (T, B, H, d), (alpha, eta, theta) each (T, B, H), the new conv_state, cache.
    """
    T, B, _ = x.shape
    C = params["W_q"].shape[1]
    buffers = conv_state if conv_state is not None else (None, None, None)
    feats, conv_caches, silu_caches, new_state = [], [], [], []
    for name, buffer in zip("qkv", buffers):
        z = _rows_at(x, params[f"W_{name}"])                      # (T, B, C)   (A1)
        z, new_buffer, cc = causal_conv_forward(z, params[f"conv_{name}"], buffer)   # (A2)
        z, sc = silu_forward(z)                                   # (A3)
        feats.append(z.reshape(T, B, H, C // H))                  # (T, B, H, d)
        conv_caches.append(cc)
        silu_caches.append(sc)
        new_state.append(new_buffer)
    q, qn = l2norm_forward(feats[0], eps_n)                       # (A4)
    k, kn = l2norm_forward(feats[1], eps_n)
    v = feats[2]
    H3 = np.concatenate([params["w_alpha"], params["w_eta"], params["w_theta"]], axis=1)     # (D, 3H)
    b3 = np.concatenate([params["b_alpha"], params["b_eta"], params["b_theta"]])
    s3 = _sigmoid(_rows_at(x, H3) + b3)                          # (T, B, 3H): the three gates in one pass
    alpha, eta = s3[..., :H], s3[..., H:2 * H]                   # (T, B, H)  (A5), (A6)
    theta = theta_max * s3[..., 2 * H:]                          # (A7)
    cache = FeaturesCache(x, params, tuple(conv_caches), tuple(silu_caches), (qn, kn),
                          (alpha, eta, theta), theta_max)
    return (q, k, v), (alpha, eta, theta), tuple(new_state), cache


def lmm_features_backward(dqkv: tuple, dgates: tuple, cache: FeaturesCache, dconv_state: tuple | None = None):
    """Adjoint of lmm_features_forward.

    Args:
        dqkv: (dq, dk, dv) each (T, B, H, d); dgates: (dalpha, deta, dtheta) each (T, B, H).
        dconv_state: gradients of the returned conv_state, or None.
    Returns:
        dx (T, B, D), a dict of parameter gradients (FEATURE_NAMES), and the gradients of the
        incoming conv_state (three (K_c - 1, B, C) arrays).
    """
    x, params, conv_caches, silu_caches, (qn, kn), (alpha, eta, theta), theta_max = cache
    T, B, _ = x.shape
    grads = {}
    dfeats = (l2norm_backward(dqkv[0], qn), l2norm_backward(dqkv[1], kn), dqkv[2])   # (A4)
    dx = np.zeros_like(x)
    dbuffers = []
    for i, name in enumerate("qkv"):
        dz = silu_backward(dfeats[i].reshape(T, B, -1), silu_caches[i])             # (A3)
        dz, grads[f"conv_{name}"], dbuf = causal_conv_backward(
            dz, conv_caches[i], None if dconv_state is None else dconv_state[i])      # (A2)
        grads[f"W_{name}"] = _rows_T_at(x, dz)                                      # (A1)
        dx += _rows_at(dz, params[f"W_{name}"].T)
        dbuffers.append(dbuf)
    dalpha, deta, dtheta = dgates
    H = alpha.shape[-1]
    dp = np.concatenate([dalpha * alpha * (1.0 - alpha),                           # (A5)
                         deta * eta * (1.0 - eta),                                 # (A6)
                         dtheta * theta * (1.0 - theta / theta_max)], axis=-1)     # (A7)  (T, B, 3H)
    dw, db = _rows_T_at(x, dp), _sum_rows(dp)                    # (D, 3H), (3H,)
    for i, name in enumerate(("alpha", "eta", "theta")):
        grads[f"w_{name}"] = np.ascontiguousarray(dw[:, i * H:(i + 1) * H])
        grads[f"b_{name}"] = db[i * H:(i + 1) * H].copy()
    dx += _rows_at(dp, np.concatenate([params["w_alpha"], params["w_eta"], params["w_theta"]], axis=1).T)
    return dx, {name: grads[name] for name in FEATURE_NAMES}, tuple(dbuffers)


def lmm_features_autodiff(x, tparams: Mapping[str, ad.Tensor], H: int, theta_max: float,
                          eps_n: float = 1e-6, conv_state: tuple | None = None):
    """Autodiff twin of lmm_features_forward: ((q, k, v), (alpha, eta, theta), conv_state) Tensors."""
    x = ad.as_tensor(x)
    T, B, _ = x.shape
    C = tparams["W_q"].shape[1]
    buffers = conv_state if conv_state is not None else (None, None, None)
    feats, new_state = [], []
    for name, buffer in zip("qkv", buffers):
        z = ad.matmul(x, tparams[f"W_{name}"])                    # (T, B, C)
        z, new_buffer = causal_conv_autodiff(z, tparams[f"conv_{name}"], buffer)
        feats.append(ad.reshape(silu_autodiff(z), (T, B, H, C // H)))
        new_state.append(new_buffer)
    q, k, v = l2norm_autodiff(feats[0], eps_n), l2norm_autodiff(feats[1], eps_n), feats[2]
    alpha = ad.sigmoid(ad.matmul(x, tparams["w_alpha"]) + tparams["b_alpha"])
    eta = ad.sigmoid(ad.matmul(x, tparams["w_eta"]) + tparams["b_eta"])
    theta = theta_max * ad.sigmoid(ad.matmul(x, tparams["w_theta"]) + tparams["b_theta"])
    return (q, k, v), (alpha, eta, theta), tuple(new_state)


def lmm_queries_forward(x: np.ndarray, params: Mapping[str, np.ndarray], H: int, eps_n: float = 1e-6,
                        buffer: np.ndarray | None = None):
    """The query path alone, eqs. (A1)-(A4) for q (MAC's retrieval, A22): q = l2norm(SiLU(conv_q(x W_q))).

    Args:
        x: (T, B, D); params: "W_q" (D, C), "conv_q" (C, K_c); buffer: (K_c - 1, B, C) or None.
    Returns:
        q (T, B, H, d), the new buffer, and the cache.
    """
    T, B, _ = x.shape
    C = params["W_q"].shape[1]
    z, new_buffer, cc = causal_conv_forward(_rows_at(x, params["W_q"]), params["conv_q"], buffer)
    z, sc = silu_forward(z)
    q, nc = l2norm_forward(z.reshape(T, B, H, C // H), eps_n)
    return q, new_buffer, (x, params, cc, sc, nc)


def lmm_queries_backward(dq: np.ndarray, cache, dbuffer_out: np.ndarray | None = None):
    """Adjoint of lmm_queries_forward. Returns (dx (T, B, D), {"W_q", "conv_q"}, dbuffer)."""
    x, params, cc, sc, nc = cache
    T, B, _ = x.shape
    dz = silu_backward(l2norm_backward(dq, nc).reshape(T, B, -1), sc)
    dz, dconv, dbuffer = causal_conv_backward(dz, cc, dbuffer_out)
    return _rows_at(dz, params["W_q"].T), {"W_q": _rows_T_at(x, dz), "conv_q": dconv}, dbuffer


def lmm_queries_autodiff(x, tparams: Mapping[str, ad.Tensor], H: int, eps_n: float = 1e-6, buffer=None):
    """Autodiff twin of lmm_queries_forward: (q, new buffer) Tensors."""
    x = ad.as_tensor(x)
    T, B, _ = x.shape
    C = tparams["W_q"].shape[1]
    z, new_buffer = causal_conv_autodiff(ad.matmul(x, tparams["W_q"]), tparams["conv_q"], buffer)
    return l2norm_autodiff(ad.reshape(silu_autodiff(z), (T, B, H, C // H)), eps_n), new_buffer


# ----------------------------------------------------------------- output path, (A20)-(A21)
class OutputCache(NamedTuple):
    x: np.ndarray        # (T, B, D) layer inputs (the gate's input)
    y: np.ndarray        # (T, B, H, d) memory read-out
    n: np.ndarray        # (T, B, H, 1) RMS of y (r = y / n g is recomputed by the backward)
    gate: np.ndarray     # (T, B, C) SiLU(x W_gate)
    silu: np.ndarray     # cache of the gate's SiLU
    params: Mapping


def lmm_output_forward(y: np.ndarray, x: np.ndarray, params: Mapping[str, np.ndarray]):
    """Output normalisation and gate, eqs. (A20)-(A21).

    Args:
        y: (T, B, H, d) memory read-out; x: (T, B, D) the layer inputs.
        params: "out_norm.g" (d,), "W_gate" (D, C), "W_o" (C, D).
    Returns:
        o (T, B, D) and the cache.
    """
    T, B, H, d = y.shape
    n = np.sqrt(np.mean(y * y, axis=-1, keepdims=True) + RMS_EPS)    # (T, B, H, 1)
    r = y / n
    r *= params["out_norm.g"]                                          # (T, B, H, d)  (A20)
    gate, sc = silu_forward(_rows_at(x, params["W_gate"]))             # (T, B, C)
    r = r.reshape(T, B, H * d)
    r *= gate
    o = _rows_at(r, params["W_o"])                                     # (T, B, D)  (A21)
    return o, OutputCache(x, y, n, gate, sc, params)


def lmm_output_backward(do: np.ndarray, cache: OutputCache):
    """Adjoint of lmm_output_forward. Returns (dy (T, B, H, d), dx (T, B, D), grads of OUTPUT_NAMES)."""
    x, y, n, gate, sc, params = cache
    T, B, H, d = y.shape
    g = params["out_norm.g"]
    # (T, B, C) buffers, at most four alive at a time: r is formed again from y rather than kept
    dgated = _rows_at(do, params["W_o"].T)                             # (T, B, C)
    yhat = y / n                                                       # (T, B, H, d)
    r = (yhat * g).reshape(T, B, H * d)                                # (A20)
    dgate_in = silu_backward(dgated * r, sc)                           # (A21) through the gate's SiLU
    r *= gate
    dW_o = _rows_T_at(r, do)                                           # (r * gate)^T do
    del r
    dW_gate = _rows_T_at(x, dgate_in)
    dx = _rows_at(dgate_in, params["W_gate"].T)
    del dgate_in
    dr = dgated                                                        # dr = dgated * gate, in place
    dr *= gate
    dr = dr.reshape(T, B, H, d)
    dg = _sum_rows(dr * yhat)
    dr *= g                                                            # dL/dyhat
    c = np.mean(dr * yhat, axis=-1, keepdims=True)
    yhat *= c
    np.subtract(dr, yhat, out=dr)
    dr /= n                                                            # (dyhat - yhat mean(dyhat yhat)) / n
    dy = dr
    return dy, dx, {"out_norm.g": dg, "W_gate": dW_gate, "W_o": dW_o}


def lmm_output_autodiff(y, x, tparams: Mapping[str, ad.Tensor]) -> ad.Tensor:
    """Autodiff twin of lmm_output_forward: o (T, B, D)."""
    T, B, H, d = y.shape
    n = ad.sqrt(ad.mean(y * y, axis=-1, keepdims=True) + RMS_EPS)
    r = ad.reshape(y / n * tparams["out_norm.g"], (T, B, H * d))
    gate = silu_autodiff(ad.matmul(x, tparams["W_gate"]))
    return ad.matmul(r * gate, tparams["W_o"])
