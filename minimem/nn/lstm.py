"""Long short-term memory without peepholes (Hochreiter & Schmidhuber, 1997; forget gate: Gers et
al., 2000), in the form of Graves (2013, arXiv:1308.0850) eqs. (3)-(7) minus the peephole terms.
It is the controller of the NTM, DNC and SAM.

Shapes: B batch, T time, X input width, H hidden size, Y readout width.
Equations (one step):
    (1) z = x_t @ W_x + h_{t-1} @ W_h + b                       (B, 4H) pre-activations
    (2) i = sigmoid(z[:, 0:H])      input gate
        f = sigmoid(z[:, H:2H])     forget gate
        g = tanh(z[:, 2H:3H])       candidate cell
        o = sigmoid(z[:, 3H:4H])    output gate
    (3) c_t = f * c_{t-1} + i * g
    (4) h_t = o * tanh(c_t)
Parameters (plain names; a model prefixes them, e.g. `controller.W_x`):
    `W_x`: (X, 4H), used as `x @ W_x`;  `W_h`: (H, 4H), used as `h @ W_h`;  `b`: (4H,).
    Gate order along the 4H columns: i, f, g, o (the blocks [0:H], [H:2H], [2H:3H], [3H:4H]).
Mapping to other libraries: PyTorch nn.LSTM has the same gate order: W_x = weight_ih_l0.T,
W_h = weight_hh_l0.T, b = bias_ih_l0 + bias_hh_l0. Keras LSTM: kernel = W_x, recurrent_kernel = W_h,
bias = b (order i, f, c, o). TensorFlow 1 BasicLSTMCell splits i, j, f, o (j = our g) over one
kernel acting on [x; h] and adds forget_bias at run time: reorder the blocks and fold it into b.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem import init
from minimem.nn.linear import (
    as_float_array, check_finite, check_params, linear_autodiff, linear_backward, linear_forward,
    linear_init, strip_prefix, with_prefix,
)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function that never overflows (exp of a non-positive number only)."""
    e = np.exp(-np.abs(z))
    d = 1.0 + e
    return np.where(z >= 0, 1.0 / d, e / d)


def _lstm_shapes(params: Mapping[str, np.ndarray]) -> tuple[int, int]:
    """(X, H) from the parameter shapes, checking that W_x, W_h and b agree."""
    W_x = np.shape(params.get("W_x"))
    if len(W_x) != 2 or W_x[1] % 4 != 0 or W_x[1] == 0:
        raise ValueError(f"W_x must have shape (X, 4H); got {W_x}")
    X, H = W_x[0], W_x[1] // 4
    check_params(params, {"W_x": (X, 4 * H), "W_h": (H, 4 * H), "b": (4 * H,)})
    return X, H


# ----------------------------------------------------------------- one step
class LSTMStepCache(NamedTuple):
    x: np.ndarray        # (B, X) input
    h_prev: np.ndarray   # (B, H) previous hidden state
    c_prev: np.ndarray   # (B, H) previous cell state
    i: np.ndarray        # (B, H) input gate
    f: np.ndarray        # (B, H) forget gate
    g: np.ndarray        # (B, H) candidate cell
    o: np.ndarray        # (B, H) output gate
    c: np.ndarray        # (B, H) new cell state
    tanh_c: np.ndarray   # (B, H) tanh(c)
    W_x: np.ndarray      # (X, 4H)
    W_h: np.ndarray      # (H, 4H)


def lstm_step_forward(x: np.ndarray, h_prev: np.ndarray, c_prev: np.ndarray, params: Mapping[str, np.ndarray]):
    """One LSTM step, eqs. (1)-(4).

    Args:
        x: (B, X) input x_t.
        h_prev: (B, H) hidden state h_{t-1}.
        c_prev: (B, H) cell state c_{t-1}.
        params: {"W_x": (X, 4H), "W_h": (H, 4H), "b": (4H,)}, gate order i, f, g, o.
    Returns:
        (h, c), each (B, H), and the cache for lstm_step_backward.
    """
    X, H = _lstm_shapes(params)
    x, h_prev, c_prev = (as_float_array(n, a) for n, a in (("x", x), ("h_prev", h_prev), ("c_prev", c_prev)))
    if x.ndim != 2 or x.shape[1] != X:
        raise ValueError(f"x must have shape (B, X) with X={X}; got {x.shape}")
    B = x.shape[0]
    for name, state in (("h_prev", h_prev), ("c_prev", c_prev)):
        if state.shape != (B, H):
            raise ValueError(f"{name} must have shape (B, H) = {(B, H)}; got {state.shape}")
    W_x, W_h, b = params["W_x"], params["W_h"], params["b"]
    z = x @ W_x + h_prev @ W_h + b                              # (B, 4H)  eq. (1)
    return _cell(z, x, h_prev, c_prev, W_x, W_h)


def _cell(z: np.ndarray, x, h_prev: np.ndarray, c_prev: np.ndarray, W_x, W_h):
    """Eqs. (2)-(4) from the pre-activations z (B, 4H): ((h, c), LSTMStepCache)."""
    H = z.shape[1] // 4
    gates = _sigmoid(z)                                         # (B, 4H)  eq. (2), one call for i, f, o
    i = gates[:, 0:H]                                           # (the g block's sigmoid is unused)
    f = gates[:, H:2 * H]
    g = np.tanh(z[:, 2 * H:3 * H])
    o = gates[:, 3 * H:4 * H]
    c = f * c_prev + i * g                                      # eq. (3)
    tanh_c = np.tanh(c)
    h = o * tanh_c                                              # eq. (4)
    return (h, c), LSTMStepCache(x, h_prev, c_prev, i, f, g, o, c, tanh_c, W_x, W_h)


def lstm_step_backward(dh: np.ndarray, dc: np.ndarray, cache: LSTMStepCache):
    """Adjoint of one step. dh (B, H) is the whole gradient w.r.t. h_t (this step's loss plus the
    gradient carried from step t+1); dc (B, H) the gradient w.r.t. c_t carried from step t+1.

    Returns (dx (B, X), dh_prev (B, H), dc_prev (B, H), {"W_x", "W_h", "b"} gradients).
    """
    x, h_prev, W_x, W_h = cache.x, cache.h_prev, cache.W_x, cache.W_h
    dz, dc_prev = _cell_backward(dh, dc, cache)
    dx = dz @ W_x.T                                             # (B, X)   eq. (1)
    dh_prev = dz @ W_h.T                                        # (B, H)
    grads = {"W_x": x.T @ dz, "W_h": h_prev.T @ dz, "b": dz.sum(axis=0)}
    return dx, dh_prev, dc_prev, grads


def _cell_backward(dh: np.ndarray, dc: np.ndarray, cache: LSTMStepCache):
    """Adjoint of eqs. (2)-(4): (dz (B, 4H), dc_prev (B, H)) from dh and dc as in lstm_step_backward."""
    _, _, c_prev, i, f, g, o, _, tanh_c, _, _ = cache
    H = i.shape[1]
    do = dh * tanh_c                                            # eq. (4)
    dc_total = dc + dh * o * (1.0 - tanh_c * tanh_c)            # c_t feeds h_t and c_{t+1}
    di = dc_total * g                                           # eq. (3)
    df = dc_total * c_prev
    dg = dc_total * i
    dc_prev = dc_total * f
    dz = np.empty((di.shape[0], 4 * H), dtype=np.result_type(di, do))   # (B, 4H)  eq. (2)
    dz[:, 0:H] = di * i * (1.0 - i)
    dz[:, H:2 * H] = df * f * (1.0 - f)
    dz[:, 2 * H:3 * H] = dg * (1.0 - g * g)
    dz[:, 3 * H:] = do * o * (1.0 - o)
    return dz, dc_prev


# ----------------------------------------------------------------- a sequence
class LSTMCache(NamedTuple):
    params: Mapping[str, np.ndarray]   # the parameters used (shared by every step)
    xs: np.ndarray                     # (T, B, X) inputs
    steps: list                        # T LSTMStepCache, one per step
    c_last: np.ndarray                 # (B, H) final cell state c_T


def lstm_forward(xs: np.ndarray, h0: np.ndarray | None, c0: np.ndarray | None,
                 params: Mapping[str, np.ndarray]):
    """Run the LSTM over a sequence.

    Args:
        xs: (T, B, X) inputs, T >= 1.
        h0, c0: (B, H) initial states, or None for zeros.
        params: {"W_x": (X, 4H), "W_h": (H, 4H), "b": (4H,)}.
    Returns:
        hs: (T, B, H) hidden states h_1..h_T, and the cache for lstm_backward (the final cell
        state is cache.c_last).
    """
    X, H = _lstm_shapes(params)
    xs = as_float_array("xs", xs)
    if xs.ndim != 3 or xs.shape[2] != X or xs.shape[0] == 0:
        raise ValueError(f"xs must have shape (T, B, X) with T >= 1 and X={X}; got {xs.shape}")
    T, B, _ = xs.shape
    h = np.zeros((B, H), dtype=xs.dtype) if h0 is None else as_float_array("h0", h0)
    c = np.zeros((B, H), dtype=xs.dtype) if c0 is None else as_float_array("c0", c0)
    for name, state in (("h0", h), ("c0", c)):
        if state.shape != (B, H):
            raise ValueError(f"{name} must have shape (B, H) = {(B, H)}; got {state.shape}")
    W_x, W_h, b = params["W_x"], params["W_h"], params["b"]
    # The input half of eq. (1) for every step in one product; only h_{t-1} @ W_h stays in the loop.
    zx = (xs.reshape(T * B, X) @ W_x + b).reshape(T, B, 4 * H)  # (T, B, 4H)
    hs = np.empty((T, B, H), dtype=np.result_type(xs, W_x))
    steps = []
    for t in range(T):
        (h, c), step = _cell(zx[t] + h @ W_h, xs[t], h, c, W_x, W_h)   # eqs. (1)-(4)
        hs[t] = h
        steps.append(step)
    return hs, LSTMCache(params, xs, steps, c)


def lstm_backward(dhs: np.ndarray, cache: LSTMCache):
    """BPTT through lstm_forward. dhs (T, B, H) holds only the per-step losses' gradients
    w.r.t. h_t; the gradient carried from step t+1 is added here. Returns dxs (T, B, X),
    dh0 (B, H), dc0 (B, H) and a dict of parameter gradients."""
    T, B, H = cache.xs.shape[0], cache.xs.shape[1], cache.c_last.shape[1]
    if dhs.shape != (T, B, H):
        raise ValueError(f"dhs must have the shape of hs (T, B, H) = {(T, B, H)}; got {dhs.shape}")
    W_x, W_h = cache.params["W_x"], cache.params["W_h"]
    X = W_x.shape[0]
    dh_carry = np.zeros((B, H), dtype=dhs.dtype)
    dc_carry = np.zeros((B, H), dtype=dhs.dtype)
    dZ = np.empty((T, B, 4 * H), dtype=np.result_type(dhs, W_x))   # every step's dz
    h_prevs = np.empty((T, B, H), dtype=dZ.dtype)                  # every step's h_{t-1}
    for t in reversed(range(T)):
        dZ[t], dc_carry = _cell_backward(dhs[t] + dh_carry, dc_carry, cache.steps[t])
        dh_carry = dZ[t] @ W_h.T                                # (B, H) to step t-1
        h_prevs[t] = cache.steps[t].h_prev
    # The weights are shared across steps: their gradients (and dxs) are one product over all steps.
    dZ_flat = dZ.reshape(T * B, 4 * H)
    grads = {"W_x": cache.xs.reshape(T * B, X).T @ dZ_flat,
             "W_h": h_prevs.reshape(T * B, H).T @ dZ_flat,
             "b": dZ_flat.sum(axis=0)}
    dxs = (dZ_flat @ W_x.T).reshape(T, B, X)                    # (T, B, X)
    return dxs.astype(cache.xs.dtype, copy=False), dh_carry, dc_carry, grads


# ----------------------------------------------------------------- autodiff twin
def lstm_step_autodiff(x, h_prev, c_prev, tparams: Mapping[str, ad.Tensor]):
    """Autodiff twin of lstm_step_forward: returns (h, c) Tensors, each (B, H)."""
    H = tparams["W_h"].shape[0]
    z = ad.matmul(x, tparams["W_x"]) + ad.matmul(h_prev, tparams["W_h"]) + tparams["b"]  # (B, 4H)
    i = ad.sigmoid(z[:, 0:H])
    f = ad.sigmoid(z[:, H:2 * H])
    g = ad.tanh(z[:, 2 * H:3 * H])
    o = ad.sigmoid(z[:, 3 * H:4 * H])
    c = f * c_prev + i * g
    h = o * ad.tanh(c)
    return h, c


def lstm_autodiff(xs, h0, c0, tparams: Mapping[str, ad.Tensor]) -> ad.Tensor:
    """Autodiff twin of lstm_forward: hs (T, B, H) as a Tensor (None initial states are zeros)."""
    xs = ad.as_tensor(xs)
    T, B, _ = xs.shape
    H = tparams["W_h"].shape[0]
    h = ad.Tensor(np.zeros((B, H), dtype=xs.dtype)) if h0 is None else h0
    c = ad.Tensor(np.zeros((B, H), dtype=xs.dtype)) if c0 is None else c0
    hs = []
    for t in range(T):
        h, c = lstm_step_autodiff(xs[t], h, c, tparams)
        hs.append(h)
    return ad.stack(hs, axis=0)                                 # (T, B, H)


# ----------------------------------------------------------------- initialisation and model
def lstm_init(rng: np.random.Generator, X: int, H: int, forget_bias: float = 1.0, dtype=np.float64) -> dict:
    """{"W_x", "W_h", "b"}: each gate's (X, H) block of W_x Xavier-uniform, each (H, H) block of
    W_h orthogonal, b zero except the forget gate's block b[H:2H] = forget_bias (1.0 as in
    TensorFlow's BasicLSTMCell and sonnet; 0.0 gives PyTorch's zero bias)."""
    W_x = np.concatenate([init.xavier_uniform(rng, (X, H), dtype=dtype) for _ in range(4)], axis=1)
    W_h = np.concatenate([init.orthogonal(rng, (H, H), dtype=dtype) for _ in range(4)], axis=1)
    b = init.zeros(rng, 4 * H, dtype=dtype)
    b[H:2 * H] = forget_bias
    return {"W_x": W_x, "W_h": W_h, "b": b}


class LSTMModel:
    """An LSTM with a linear readout at every step: xs (T, B, X) -> ys (T, B, Y), zero initial state.

    Parameters: `lstm.W_x` (X, 4H), `lstm.W_h` (H, 4H), `lstm.b` (4H,) (gate order i, f, g, o),
    `readout.W` (H, Y) used as `h @ readout.W`, `readout.b` (Y,).
    """

    def __init__(self, X: int, H: int, Y: int, rng: np.random.Generator | None = None,
                 forget_bias: float = 1.0, dtype=np.float64):
        rng = np.random.default_rng(0) if rng is None else rng
        self.X, self.H, self.Y = X, H, Y
        self.params = {**with_prefix("lstm", lstm_init(rng, X, H, forget_bias, dtype)),
                       **with_prefix("readout", linear_init(rng, H, Y, dtype=dtype))}

    def _check(self, xs) -> np.ndarray:
        X, H, Y = self.X, self.H, self.Y
        check_params(self.params, {"lstm.W_x": (X, 4 * H), "lstm.W_h": (H, 4 * H), "lstm.b": (4 * H,),
                                   "readout.W": (H, Y), "readout.b": (Y,)})
        for name, value in self.params.items():
            check_finite(f"parameter {name}", value)
        xs = as_float_array("inputs", xs)
        if xs.ndim != 3 or xs.shape[2] != X or xs.shape[0] == 0:
            raise ValueError(f"inputs must have shape (T, B, X) with T >= 1 and X={X}; got {xs.shape}")
        check_finite("inputs", xs)
        return xs

    def forward(self, xs):
        """ys (T, B, Y) and the cache for backward."""
        xs = self._check(xs)
        hs, lstm_cache = lstm_forward(xs, None, None, strip_prefix("lstm", self.params))       # 1.
        ys, readout_cache = linear_forward(hs, self.params["readout.W"], self.params["readout.b"])  # 2.
        return ys, (lstm_cache, readout_cache)

    def backward(self, dys, cache) -> dict:
        lstm_cache, readout_cache = cache
        dhs, dW, db = linear_backward(dys, readout_cache)                                    # 2.
        _, _, _, lstm_grads = lstm_backward(dhs, lstm_cache)                                 # 1.
        grads = {**with_prefix("lstm", lstm_grads), "readout.W": dW, "readout.b": db}
        return {name: grads[name] for name in self.params}

    def forward_autodiff(self, tparams: Mapping[str, ad.Tensor], xs) -> ad.Tensor:
        xs = self._check(xs)
        hs = lstm_autodiff(xs, None, None, strip_prefix("lstm", tparams))
        return linear_autodiff(hs, tparams["readout.W"], tparams["readout.b"])
