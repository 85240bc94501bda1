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
Controllers whose input feeds back (SAM, NTM, MNM: chi_t = [x_t; r_{t-1}]) use the lstm_feedback_*
functions: the same step, with what does not depend on the recurrence hoisted out of the time loop
(x_t's share of eq. (1) before it, the weight gradients after it, one product each over all steps).
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
    gates: np.ndarray | None = None   # (B, 4H) [i, f, g, o]; i, f, g, o are views of it


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
    u = x @ W_x + h_prev @ W_h + b                              # (B, 4H)  z, eq. (1)
    u *= _gate_signs(H, u.dtype)                                # sign-scaled for _cell (exact)
    dtype = np.result_type(u, c_prev)
    c, tanh_c, h = (np.empty((B, H), dtype=dtype) for _ in range(3))
    _cell(u, c_prev, c, tanh_c, h)                              # eqs. (2)-(4); u now holds the gates
    i, f, g, o = u[:, 0:H], u[:, H:2 * H], u[:, 2 * H:3 * H], u[:, 3 * H:]
    return (h, c), LSTMStepCache(x, h_prev, c_prev, i, f, g, o, c, tanh_c, W_x, W_h, u)


def _cell(u: np.ndarray, c_prev: np.ndarray, c: np.ndarray, tanh_c: np.ndarray, h: np.ndarray) -> None:
    """Eqs. (2)-(4) in place. u (B, 4H) holds the sign-scaled pre-activations (see _gate_signs):
    -z on the i, f, o blocks and -2 z on the g block; it is overwritten with the gates [i, f, g, o].
    c, tanh_c and h (B, H) receive c_t, tanh(c_t) and h_t.

    Float64 exp is the cheapest transcendental NumPy has (tanh costs about twice as much), so every
    nonlinearity is one exp: sigmoid(v) = 1 / (1 + e^-v) on all four blocks at once, the g block
    through tanh(v) = 2 sigmoid(2v) - 1, and tanh(c) = 2 sigmoid(2c) - 1. Both are exact in the
    limits (e^-v = inf gives 0) and within a few units in the last place elsewhere.
    """
    H = c.shape[1]
    with np.errstate(over="ignore"):                            # e^-v = inf -> sigmoid(v) = 0, exactly
        np.exp(u, out=u)
        u += 1.0
        np.reciprocal(u, out=u)                                 # eq. (2): sigmoid of every block
        i, f, g, o = u[:, 0:H], u[:, H:2 * H], u[:, 2 * H:3 * H], u[:, 3 * H:]
        g *= 2.0
        g -= 1.0                                                # g = tanh(z_g) = 2 sigmoid(2 z_g) - 1
        np.multiply(f, c_prev, out=c)
        c += i * g                                              # eq. (3)
        np.multiply(c, -2.0, out=tanh_c)
        np.exp(tanh_c, out=tanh_c)
        tanh_c += 1.0
        np.divide(2.0, tanh_c, out=tanh_c)
        tanh_c -= 1.0                                           # tanh(c_t)
    np.multiply(o, tanh_c, out=h)                               # eq. (4)


def lstm_step_backward(dh: np.ndarray, dc: np.ndarray, cache: LSTMStepCache):
    """Adjoint of one step. dh (B, H) is the whole gradient w.r.t. h_t (this step's loss plus the
    gradient carried from step t+1); dc (B, H) the gradient w.r.t. c_t carried from step t+1.

    Returns (dx (B, X), dh_prev (B, H), dc_prev (B, H), {"W_x", "W_h", "b"} gradients).
    """
    x, h_prev, W_x, W_h = cache.x, cache.h_prev, cache.W_x, cache.W_h
    dz, dc_prev = _cell_backward(dh, dc, cache.c_prev, _step_gates(cache), cache.tanh_c)
    dx = dz @ W_x.T                                             # (B, X)   eq. (1)
    dh_prev = dz @ W_h.T                                        # (B, H)
    grads = {"W_x": x.T @ dz, "W_h": h_prev.T @ dz, "b": dz.sum(axis=0)}
    return dx, dh_prev, dc_prev, grads


def _step_gates(cache: LSTMStepCache) -> np.ndarray:
    """The (B, 4H) block [i, f, g, o] of a step cache (rebuilt for a cache assembled without it)."""
    return np.concatenate([cache.i, cache.f, cache.g, cache.o], axis=1) if cache.gates is None else cache.gates


def _cell_backward(dh: np.ndarray, dc: np.ndarray, c_prev: np.ndarray, gates: np.ndarray, tanh_c: np.ndarray,
                   out: np.ndarray | None = None):
    """Adjoint of eqs. (2)-(4): (dz (B, 4H), dc_prev (B, H)) from dh and dc as in lstm_step_backward,
    the step's c_{t-1}, gates [i, f, g, o] (B, 4H) and tanh(c_t); dz is written into `out` when given."""
    H = tanh_c.shape[1]
    i, f, g, o = gates[:, 0:H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
    dz = np.empty((i.shape[0], 4 * H), dtype=np.result_type(dh, o)) if out is None else out   # (B, 4H)
    dc_total = 1.0 - tanh_c * tanh_c                            # c_t feeds h_t and c_{t+1}
    dc_total *= o
    dc_total *= dh
    dc_total += dc
    np.multiply(dc_total, g, out=dz[:, 0:H])                    # d i     eq. (3)
    np.multiply(dc_total, c_prev, out=dz[:, H:2 * H])           # d f
    np.multiply(dc_total, i, out=dz[:, 2 * H:3 * H])            # d g
    np.multiply(dh, tanh_c, out=dz[:, 3 * H:])                  # d o     eq. (4)
    slope = 1.0 - gates                                         # (B, 4H) eq. (2): s (1 - s) ...
    slope *= gates
    np.multiply(g, g, out=slope[:, 2 * H:3 * H])                # ... and 1 - g^2 for the g block
    np.subtract(1.0, slope[:, 2 * H:3 * H], out=slope[:, 2 * H:3 * H])
    dz *= slope
    return dz, dc_total * f


# ----------------------------------------------------------------- a sequence
class LSTMCache(NamedTuple):
    params: Mapping[str, np.ndarray]   # the parameters used (shared by every step)
    xs: np.ndarray                     # (T, B, X) inputs
    steps: list                        # T LSTMStepCache, one per step
    c_last: np.ndarray                 # (B, H) final cell state c_T
    h_all: np.ndarray | None = None    # (T + 1, B, H) h_0..h_T (the steps' h_prev are views of it);
                                       # None for a cache assembled by hand


def _gate_signs(H: int, dtype) -> np.ndarray:
    """(4H,) -1 on the sigmoid blocks i, f, o and -2 on the g block: multiplying the columns of
    W_x, W_h and b by it gives -z with the g block doubled, exactly (powers of two), so that one
    exp per step serves all four gates (see _cell)."""
    return np.repeat(np.array([-1.0, -1.0, -2.0, -1.0], dtype=dtype), H)


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
    dtype = np.result_type(xs, W_x, W_h, h, c)
    sign = _gate_signs(H, dtype)
    W_hs = W_h * sign                                           # (H, 4H) columns scaled by -1 / -2 (exact)
    # The input half of eq. (1) for every step in one product; only h_{t-1} @ W_h stays in the loop.
    zx = xs.reshape(T * B, X) @ (W_x * sign)                   # (T B, 4H), sign-scaled
    zx += b * sign                                              # in place: a second (T B, 4H) buffer would
    zx = zx.reshape(T, B, 4 * H)                                # cost fresh pages (page faults) every call
    gates = np.empty((T, B, 4 * H), dtype=dtype)                # every step's [i, f, g, o]
    cs, tanh_cs = np.empty((T, B, H), dtype=dtype), np.empty((T, B, H), dtype=dtype)
    h_all = np.empty((T + 1, B, H), dtype=dtype)                # h_0..h_T: h_all[:-1] are the h_{t-1}
    h_all[0] = h
    steps = []
    for t in range(T):
        u = np.matmul(h, W_hs, out=gates[t])
        u += zx[t]                                              # sign-scaled z, eq. (1)
        _cell(u, c, cs[t], tanh_cs[t], h_all[t + 1])            # eqs. (2)-(4); u now holds the gates
        i, f, g, o = u[:, 0:H], u[:, H:2 * H], u[:, 2 * H:3 * H], u[:, 3 * H:]
        steps.append(LSTMStepCache(xs[t], h, c, i, f, g, o, cs[t], tanh_cs[t], W_x, W_h, u))
        h, c = h_all[t + 1], cs[t]
    # hs is a copy, so that a caller writing into it cannot change what lstm_backward reads.
    return h_all[1:].copy(), LSTMCache(params, xs, steps, c, h_all)


def lstm_backward(dhs: np.ndarray, cache: LSTMCache):
    """BPTT through lstm_forward. dhs (T, B, H) holds only the per-step losses' gradients
    w.r.t. h_t; the gradient carried from step t+1 is added here. Returns dxs (T, B, X),
    dh0 (B, H), dc0 (B, H) and a dict of parameter gradients. The loop keeps only the recurrence
    (eqs. (2)-(4) backwards on (B, H) blocks and dz_t @ W_h^T); the weight gradients and dxs are
    products over all steps at once."""
    T, B, H = cache.xs.shape[0], cache.xs.shape[1], cache.c_last.shape[1]
    if dhs.shape != (T, B, H):
        raise ValueError(f"dhs must have the shape of hs (T, B, H) = {(T, B, H)}; got {dhs.shape}")
    W_x, W_h = cache.params["W_x"], cache.params["W_h"]
    X = W_x.shape[0]
    steps = cache.steps
    dh_carry = np.zeros((B, H), dtype=dhs.dtype)
    dc_carry = np.zeros((B, H), dtype=dhs.dtype)
    dZ = np.empty((T, B, 4 * H), dtype=np.result_type(dhs, W_x))   # every step's dz
    W_hT = W_h.T
    for t in reversed(range(T)):
        step = steps[t]
        _, dc_carry = _cell_backward(dhs[t] + dh_carry, dc_carry, step.c_prev, _step_gates(step), step.tanh_c,
                                     out=dZ[t])
        dh_carry = dZ[t] @ W_hT                                 # (B, H) to step t-1
    h_prevs = cache.h_all[:-1] if cache.h_all is not None else np.stack([s.h_prev for s in steps])   # (T, B, H)
    grads = lstm_weight_gradients(cache.xs, h_prevs, dZ)        # the weights are shared across steps
    dxs = (dZ.reshape(T * B, 4 * H) @ W_x.T).reshape(T, B, X)   # (T, B, X), one product too
    return dxs.astype(cache.xs.dtype, copy=False), dh_carry, dc_carry, grads


def lstm_weight_gradients(xs: np.ndarray, h_prevs: np.ndarray, dZ: np.ndarray) -> dict:
    """The parameter gradients of eq. (1) summed over a sequence: {"W_x": sum_t x_t^T dz_t,
    "W_h": sum_t h_{t-1}^T dz_t, "b": sum_t dz_t}, each as ONE product over all (T, B) rows,
    hoisted out of the time loop because the weights are shared by every step and no step's
    recurrence needs them. xs (T, B, X), h_prevs (T, B, H), dZ (T, B, 4H) the steps' dz."""
    T, B, G = dZ.shape
    dZ_flat = dZ.reshape(T * B, G)
    return {"W_x": xs.reshape(T * B, xs.shape[-1]).T @ dZ_flat,
            "W_h": h_prevs.reshape(T * B, h_prevs.shape[-1]).T @ dZ_flat,
            "b": dZ_flat.sum(axis=0)}


# ----------------------------------------------------------------- a sequence whose input feeds back
# A controller (SAM, NTM, MNM) reads chi_t = [x_t; u_t] where u_t is made by the step before (the read
# words r_{t-1}), so it must run step by step, but two parts of its work do not depend on the recurrence
# and leave the time loop: x_t's share of eq. (1) (forward, lstm_external_share) and the weight
# gradients (backward, lstm_feedback_weight_gradients). Inside the loop, eq. (1) is ONE product
# [u_t; h_{t-1}] @ [W_x[X:]; W_h] and the backward ONE product dz_t @ [W_x[X:]; W_h]^T.
# X = 0 feeds all of chi_t per step (u_t = chi_t); b is then the whole hoisted share (z_ext = split.b_s).
class LSTMFeedbackParams(NamedTuple):
    """An LSTM's parameters split for input [x_t; u_t] (lstm_feedback_params, once per sequence).
    The *_s arrays are sign-scaled (see _gate_signs) for the forward's _cell."""
    W_ext_s: np.ndarray  # (X, 4H) rows of W_x acting on x_t, sign-scaled
    b_s: np.ndarray      # (4H,) sign-scaled b
    W_uh_s: np.ndarray   # (U + H, 4H) [W_x[X:]; W_h], sign-scaled
    W_uh: np.ndarray     # (U + H, 4H) [W_x[X:]; W_h] as given (the backward's dz @ W_uh^T)
    X: int               # external input width
    U: int               # fed-back input width


class LSTMFeedbackCache(NamedTuple):
    uh: np.ndarray       # (B, U + H) [u_t; h_{t-1}]
    c_prev: np.ndarray   # (B, H) c_{t-1}
    gates: np.ndarray    # (B, 4H) [i, f, g, o]
    c: np.ndarray        # (B, H) c_t
    tanh_c: np.ndarray   # (B, H) tanh(c_t)


def lstm_feedback_params(params: Mapping[str, np.ndarray], X: int) -> LSTMFeedbackParams:
    """Split {"W_x", "W_h", "b"} for steps whose input is [x_t (X); u_t (rest of W_x's rows)]."""
    X_all, H = _lstm_shapes(params)
    if not 0 <= X <= X_all:
        raise ValueError(f"X (the external input width) must be in [0, {X_all}] (W_x has {X_all} rows); got {X}")
    W_x, W_h, b = params["W_x"], params["W_h"], params["b"]
    W_uh = np.concatenate([W_x[X:], W_h], axis=0)               # (U + H, 4H)
    sign = _gate_signs(H, np.result_type(W_x, W_h, b))
    return LSTMFeedbackParams(W_x[:X] * sign, b * sign, W_uh * sign, W_uh, X, X_all - X)


def lstm_external_share(xs: np.ndarray, split: LSTMFeedbackParams) -> np.ndarray:
    """x_t W_x[:X] + b of eq. (1) for every step at once (T, B, 4H), sign-scaled for
    lstm_feedback_step_forward: hoisted out of the time loop because x_t is known in advance."""
    T, B, X = xs.shape
    if X != split.X:
        raise ValueError(f"xs must have shape (T, B, X) with X={split.X}; got {xs.shape}")
    z = xs.reshape(T * B, X) @ split.W_ext_s
    z += split.b_s                                              # in place: one (T B, 4H) buffer, not two
    return z.reshape(T, B, -1)


def lstm_feedback_step_forward(z_ext: np.ndarray, u: np.ndarray, h_prev: np.ndarray, c_prev: np.ndarray,
                               split: LSTMFeedbackParams):
    """One step, eqs. (1)-(4), given x_t's share z_ext (B, 4H) (lstm_external_share(xs)[t]): eq. (1)
    adds [u_t; h_{t-1}] @ [W_x[X:]; W_h], one product. u (B, U), h_prev and c_prev (B, H); no checks
    (the caller validated the sequence). Returns (h, c), each (B, H), and an LSTMFeedbackCache."""
    B, H = c_prev.shape
    uh = np.concatenate([u, h_prev], axis=1)                    # (B, U + H)
    z = uh @ split.W_uh_s                                       # (B, 4H) sign-scaled, eq. (1) ...
    z += z_ext                                                  # ... plus the hoisted share
    c, tanh_c, h = (np.empty((B, H), dtype=z.dtype) for _ in range(3))
    _cell(z, c_prev, c, tanh_c, h)                              # eqs. (2)-(4); z now holds the gates
    return (h, c), LSTMFeedbackCache(uh, c_prev, z, c, tanh_c)


def lstm_feedback_step_backward(dh: np.ndarray, dc: np.ndarray, cache: LSTMFeedbackCache,
                                split: LSTMFeedbackParams):
    """Adjoint of one lstm_feedback_step_forward, without the weight gradients (they are summed
    after the loop by lstm_feedback_weight_gradients from the returned dz). dh, dc (B, H) as in
    lstm_step_backward. Returns (du (B, U), dh_prev (B, H), dc_prev (B, H), dz (B, 4H))."""
    dz, dc_prev = _cell_backward(dh, dc, cache.c_prev, cache.gates, cache.tanh_c)
    duh = dz @ split.W_uh.T                                     # (B, U + H) eq. (1), one product
    return duh[:, :split.U], duh[:, split.U:], dc_prev, dz


def lstm_feedback_weight_gradients(xs: np.ndarray | None, caches, dZ: np.ndarray, split: LSTMFeedbackParams) -> dict:
    """{"W_x", "W_h", "b"} gradients of a sequence of lstm_feedback steps: xs (T, B, X) the external
    inputs (None when X = 0), caches the T LSTMFeedbackCache, dZ (T, B, 4H) their dz; hoisted out of
    the time loop (one product for the x_t rows, one for the [u_t; h_{t-1}] rows, one sum)."""
    T, B, G = dZ.shape
    dZ_flat = dZ.reshape(T * B, G)
    uh = np.stack([cache.uh for cache in caches]).reshape(T * B, -1)          # (T B, U + H)
    d_uh = uh.T @ dZ_flat                                                     # (U + H, 4H)
    U = split.U
    dW_x = d_uh[:U] if split.X == 0 else np.concatenate([xs.reshape(T * B, split.X).T @ dZ_flat, d_uh[:U]])
    return {"W_x": dW_x, "W_h": d_uh[U:], "b": dZ_flat.sum(axis=0)}


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
