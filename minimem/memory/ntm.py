"""Neural Turing Machine (Graves, Wayne & Danihelka, 2014, arXiv:1410.5401): an LSTM (or
feedforward) controller with heads that read and write an N x W memory by content and location.

Shapes: B batch, T time, X input width, Y output width, N slots, W word size, R read heads,
Rw write heads, Rh = R + Rw heads in all (read heads first), H controller size, S allowed shifts.
Equations (paper numbering; spec specs/ntm_dnc_sam.md Part A, step numbers of A.3):
    1.       chi_t = [x_t; r^1_{t-1}; ...; r^R_{t-1}]                    controller input
    2.       h_t = LSTM(chi_t, h_{t-1}, c_{t-1})  or  tanh(chi_t W + b)  controller (A.10.7)
    3.-4.    o_t = clip(h_t W_heads + b_heads); k, beta, g, s, gamma, e, a  head outputs (ntm_heads)
    5.  (5)  w^c_t = softmax(beta K(k, M_{t-1}))                         content addressing
        (6)  K(u, v) = u.v / (|u| |v|), guarded                          cosine similarity
        (7)  w^g_t = g w^c_t + (1 - g) w_{t-1}                           interpolation
        (8)  w~_t(i) = sum_j w^g_t(j) s(i - j)                           circular shift
        (9)  w_t(i) = w~_t(i)^gamma / sum_j w~_t(j)^gamma                sharpening (log domain)
    6.  (2)  r_t = sum_i w^r_t(i) M_{t-1}(i)                             read
    7.  (3)  M~_t(i) = M_{t-1}(i) prod_h (1 - w^h_t(i) e^h_t)            erase
        (4)  M_t(i) = M~_t(i) + sum_h w^h_t(i) a^h_t                     add
    8.       y_t = clip([h_t; r^1_t; ...; r^R_t] W_y + b_y)              output logits
By default every head addresses and reads M_{t-1} and the write makes M_t afterwards (A.10.1,
both popular reimplementations). With read_after_write=True the write heads address M_{t-1} and
write first (steps 5w, 7), then the read heads address and read the new M_t (steps 5r, 6).

State carried through time (NTMState, minimem.memory.ntm_state): M (B, N, W), w_read (B, R, N),
w_write (B, Rw, N), r (B, R, W), h (B, H), c (B, H) (the feedforward controller carries c = 0 and
ignores h). Initial state (A.2, A.10.6): M_0 = 1e-6 everywhere ("constant"), tanh(init.memory_bias)
("learned") or a fixed uniform(+-1/sqrt(N + W)) buffer drawn at construction ("random");
w_0 = softmax(init.<head>.w_bias) per head; r_0 = tanh(init.read<i>.r_bias); h_0 = c_0 = 0.
Head outputs and the clip are minimem.memory.ntm_heads.

Parameters (model.params, in this order; every weight is used as `x @ W`):
    controller.W_x (X + R W, 4H), controller.W_h (H, 4H), controller.b (4H,)  LSTM, gates i, f, g, o
        (or controller.W (X + R W, H), controller.b (H,) for the feedforward controller)
    read<i>.W (H, W + S + 3), read<i>.b (W + S + 3,)        columns k | beta | g | s | gamma
    write<j>.W (H, 3W + S + 3), write<j>.b (3W + S + 3,)    the same, then e | a
    output.W (H + R W, Y), output.b (Y,)                    rows h_t, then r^1_t, ..., r^R_t
    init.read<i>.w_bias (N,), init.read<i>.r_bias (W,), init.write<j>.w_bias (N,)
    init.memory_bias (N, W)                                 only with memory_init = "learned"

Two engines share these parameters: NTM.forward/backward (hand-derived BPTT over the whole
sequence, built from the primitive pairs of addressing, read_write, ntm_heads and nn) and
NTM.forward_autodiff (the same equations in minimem.autodiff ops, through the primitives'
autodiff twins; custom_ops=True uses the manual pairs as single ops instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem import init
from minimem.checks import check_int
from minimem.memory.addressing import (
    address_autodiff, address_backward, address_forward, address_op,
)
from minimem.memory.ntm_heads import (
    SQUASHES, ClipCache, HeadLayout, HeadOutputs, HeadOutputsCache, clip_autodiff, clip_backward, clip_forward,
    head_outputs_autodiff, head_outputs_backward, head_outputs_forward, select_heads,
)
from minimem.memory.ntm_state import (
    MEMORY_CONSTANT, InitCache, NTMState, check_batch_size, check_memory0, check_state, initial_state_autodiff,
    initial_state_backward, initial_state_forward, state_shapes,
)
from minimem.memory.read_write import (
    ReadCache, WriteCache, read_autodiff, read_backward, read_forward, read_op,
    write_autodiff, write_backward, write_forward, write_op,
)
from minimem.nn.linear import (
    LinearCache, as_float_array, check_finite, check_params, linear_autodiff, linear_backward, linear_forward,
    strip_prefix, with_prefix,
)
from minimem.nn.lstm import (
    LSTMFeedbackCache, LSTMFeedbackParams, lstm_feedback_params, lstm_feedback_step_backward,
    lstm_feedback_step_forward, lstm_feedback_weight_gradients, lstm_init, lstm_step_autodiff,
)
from minimem.nn.mlp import activation_backward, activation_forward

CONTROLLERS = ("lstm", "feedforward")
MEMORY_INITS = ("constant", "learned", "random")


# ----------------------------------------------------------------- config
@dataclass(frozen=True)
class NTMConfig:
    """Sizes and choices of an NTM (defaults: spec A.3 and A.10; sizes of the paper, section 4).

    X, Y: input and output widths. N, W: memory slots and word size. R: read heads.
    write_heads: Rw. H: controller size. controller: "lstm" | "feedforward" (one tanh layer).
    S: allowed shifts (odd; 3 means -1, 0, +1). clip: bound on head outputs and logits, None = off.
    key_squash, add_squash: "tanh" | "identity" for k and a (A.10.2).
    memory_init: "constant" (1e-6) | "learned" (tanh of a bias) | "random" (fixed buffer).
    read_after_write: read heads see M_t instead of M_{t-1} (A.10.1). forget_bias: LSTM b_f init.
    dtype: "float64" | "float32", the dtype of the initial parameters.
    """
    X: int
    Y: int
    N: int = 128
    W: int = 20
    R: int = 1
    write_heads: int = 1
    H: int = 100
    controller: str = "lstm"
    S: int = 3
    clip: float | None = 20.0
    key_squash: str = "tanh"
    add_squash: str = "tanh"
    memory_init: str = "constant"
    read_after_write: bool = False
    forget_bias: float = 1.0
    dtype: str = "float64"

    def __post_init__(self) -> None:
        for name in ("X", "Y", "N", "W", "R", "write_heads", "H", "S"):
            check_int(f"NTMConfig.{name}", getattr(self, name), 1)
        if self.S % 2 == 0:
            raise ValueError(f"NTMConfig.S (allowed shifts) must be odd, S = 2q + 1; got {self.S}")
        if self.controller not in CONTROLLERS:
            raise ValueError(f"NTMConfig.controller must be one of {CONTROLLERS}; got {self.controller!r}")
        if self.clip is not None and not (np.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"NTMConfig.clip must be a positive number or None; got {self.clip!r}")
        for name in ("key_squash", "add_squash"):
            if getattr(self, name) not in SQUASHES:
                raise ValueError(f"NTMConfig.{name} must be one of {SQUASHES}; got {getattr(self, name)!r}")
        if self.memory_init not in MEMORY_INITS:
            raise ValueError(f"NTMConfig.memory_init must be one of {MEMORY_INITS}; got {self.memory_init!r}")
        if not isinstance(self.read_after_write, (bool, np.bool_)):
            raise ValueError(f"NTMConfig.read_after_write must be True or False; got {self.read_after_write!r}")
        if not np.isfinite(self.forget_bias):
            raise ValueError(f"NTMConfig.forget_bias must be finite; got {self.forget_bias!r}")
        try:
            dtype = np.dtype(self.dtype)
        except TypeError:
            dtype = None
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"NTMConfig.dtype must be 'float64' or 'float32'; got {self.dtype!r}")
        object.__setattr__(self, "dtype", dtype.name)     # a plain string, so the config is JSON

    @property
    def layout(self) -> HeadLayout:
        return HeadLayout(self.R, self.write_heads, self.W, self.S, self.key_squash, self.add_squash)


def ntm_param_shapes(config: NTMConfig) -> dict[str, tuple]:
    """Every parameter's name and shape, in the order of model.params."""
    X, Y, N, W, R, Rw, H = config.X, config.Y, config.N, config.W, config.R, config.write_heads, config.H
    layout, C = config.layout, config.X + config.R * config.W
    if config.controller == "lstm":
        shapes = {"controller.W_x": (C, 4 * H), "controller.W_h": (H, 4 * H), "controller.b": (4 * H,)}
    else:
        shapes = {"controller.W": (C, H), "controller.b": (H,)}
    for i in range(R):
        shapes.update({f"read{i}.W": (H, layout.read_width), f"read{i}.b": (layout.read_width,)})
    for j in range(Rw):
        shapes.update({f"write{j}.W": (H, layout.write_width), f"write{j}.b": (layout.write_width,)})
    shapes.update({"output.W": (H + R * W, Y), "output.b": (Y,)})
    for i in range(R):
        shapes.update({f"init.read{i}.w_bias": (N,), f"init.read{i}.r_bias": (W,)})
    for j in range(Rw):
        shapes[f"init.write{j}.w_bias"] = (N,)
    if config.memory_init == "learned":
        shapes["init.memory_bias"] = (N, W)
    return shapes


# ----------------------------------------------------------------- input validation
def _check_ntm_params(params: Mapping[str, np.ndarray], config: NTMConfig) -> np.dtype:
    """Names, shapes and finiteness of the parameters; returns their common float dtype."""
    if not isinstance(config, NTMConfig):
        raise ValueError(f"config must be an NTMConfig; got {type(config).__name__}")
    check_params(params, ntm_param_shapes(config))
    for name, value in params.items():
        value = as_float_array(f"parameter {name}", value)
        check_finite(f"parameter {name}", value)
    return np.result_type(np.float32, *[np.asarray(p) for p in params.values()])   # float32 or float64


def _check_xs(xs, config: NTMConfig, dtype) -> np.ndarray:
    if isinstance(xs, ad.Tensor):
        xs = xs.data
    xs = as_float_array("xs", xs)
    if xs.ndim != 3 or xs.shape[2] != config.X or xs.shape[1] == 0:
        raise ValueError(f"xs must have shape (T, B, X) with B >= 1 and X = {config.X}; got {xs.shape}")
    if xs.shape[0] == 0:
        raise ValueError(f"xs must have shape (T, B, X) with T >= 1 (the sequence is empty); got {xs.shape}")
    check_finite("xs", xs)
    return xs.astype(dtype, copy=False)


# ----------------------------------------------------------------- controller pair, step 2
class FeedforwardCache(NamedTuple):
    linear: LinearCache  # chi_t @ W + b
    tanh: tuple          # activation cache


def controller_step_forward(chi: np.ndarray, h_prev: np.ndarray, c_prev: np.ndarray, params, kind: str):
    """Step 2: the controller. "lstm": minimem.nn.lstm's feedback step, params the LSTMFeedbackParams
    of W_x, W_h, b (lstm_feedback_params(., 0): all of chi_t is fed per step, its weight gradients
    are formed after the time loop); "feedforward": one tanh layer h_t = tanh(chi_t @ W + b) (spec
    A.10.7, params W, b), which ignores h_prev and carries c unchanged.

    Args:
        chi: (B, X + R W) input [x_t; r_{t-1}]. h_prev, c_prev: (B, H).
    Returns:
        (h, c), each (B, H), and the cache for controller_step_backward.
    """
    if kind == "lstm":
        return lstm_feedback_step_forward(params.b_s, chi, h_prev, c_prev, params)
    z, linear = linear_forward(chi, params["W"], params["b"])         # (B, H)
    h, tanh = activation_forward(z, "tanh")
    return (h, c_prev), FeedforwardCache(linear, tanh)


def controller_step_backward(dh: np.ndarray, dc: np.ndarray, cache, lstm: LSTMFeedbackParams | None):
    """Adjoint of controller_step_forward: (dchi, dh_prev, dc_prev, parameter gradients, dz). The
    LSTM's gradients are left to ntm_backward (one product each over all steps): it returns {} and
    dz (B, 4H); the feedforward controller returns {W, b} and dz None."""
    if isinstance(cache, LSTMFeedbackCache):
        dchi, dh_prev, dc_prev, dz = lstm_feedback_step_backward(dh, dc, cache, lstm)
        return dchi, dh_prev, dc_prev, {}, dz
    dchi, dW, db = linear_backward(activation_backward(dh, cache.tanh), cache.linear)
    return dchi, np.zeros_like(dh), dc, {"W": dW, "b": db}, None


def controller_step_autodiff(chi, h_prev, c_prev, tparams: Mapping[str, ad.Tensor], kind: str):
    """Autodiff twin of controller_step_forward: (h, c) Tensors."""
    if kind == "lstm":
        return lstm_step_autodiff(chi, h_prev, c_prev, tparams)
    return ad.tanh(linear_autodiff(chi, tparams["W"], tparams["b"])), c_prev


# ----------------------------------------------------------------- the parameters arranged for a step
class NTMWeights(NamedTuple):
    """The parameters arranged for a step: every head's map concatenated along its output axis."""
    controller: object   # plain names: W_x, W_h, b (lstm) or W, b (feedforward); the manual engine's
                         # LSTM: their LSTMFeedbackParams (ntm_forward)
    heads_W: np.ndarray  # (H, P) = [read0.W | ... | write0.W | ...]
    heads_b: np.ndarray  # (P,)
    output_W: np.ndarray  # (H + R W, Y)
    output_b: np.ndarray  # (Y,)


def _arrange_weights(params: Mapping, config: NTMConfig, concatenate=np.concatenate) -> NTMWeights:
    names = [name for name, _ in config.layout.head_columns()]
    return NTMWeights(strip_prefix("controller", params),
                      concatenate([params[f"{n}.W"] for n in names], axis=1),
                      concatenate([params[f"{n}.b"] for n in names], axis=0),
                      params["output.W"], params["output.b"])


# ----------------------------------------------------------------- one step
class NTMStepCache(NamedTuple):
    controller: object           # LSTMFeedbackCache or FeedforwardCache, step 2
    heads_linear: LinearCache    # step 3
    heads_clip: ClipCache
    heads: HeadOutputsCache      # step 4
    address: tuple               # step 5: (all heads,) or (write heads, read heads) after a write
    read: ReadCache              # step 6
    write: WriteCache            # step 7
    output_linear: LinearCache   # step 8
    output_clip: ClipCache


def ntm_step_forward(x: np.ndarray, state: NTMState, weights: NTMWeights, config: NTMConfig):
    """One NTM step, spec A.3 steps 1-8 (eqs. (2)-(9)).

    Args:
        x: (B, X) input x_t.
        state: NTMState at t - 1.
        weights: the parameters arranged by _arrange_weights.
    Returns:
        (y, state): y (B, Y) logits and the NTMState at t; and the cache for ntm_step_backward.
    """
    B, R, W = x.shape[0], config.R, config.W
    chi = np.concatenate([x, state.r.reshape(B, R * W)], axis=1)                     # 1. (B, X + R W)
    (h, c), controller = controller_step_forward(chi, state.h, state.c, weights.controller,
                                                 config.controller)                  # 2. (B, H)
    o, heads_linear = linear_forward(h, weights.heads_W, weights.heads_b)           # 3. (B, P)
    o, heads_clip = clip_forward(o, config.clip)
    heads, heads_cache = head_outputs_forward(o, config.layout)                     # 4.
    reads, writes = slice(0, R), slice(R, None)
    if not config.read_after_write:
        w_prev = np.concatenate([state.w_read, state.w_write], axis=1)              # (B, Rh, N)
        w, address = address_forward(state.M, *select_heads(heads, slice(None)), w_prev)   # 5. eqs. (5)-(9)
        w_read, w_write = w[:, reads], w[:, writes]
        r, read = read_forward(state.M, w_read)                                     # 6. eq. (2), M_{t-1}
        M, write = write_forward(state.M, w_write, heads.e, heads.a)                # 7. eqs. (3)-(4)
        address = (address,)
    else:
        w_write, address_w = address_forward(state.M, *select_heads(heads, writes), state.w_write)  # 5w.
        M, write = write_forward(state.M, w_write, heads.e, heads.a)                # 7. eqs. (3)-(4)
        w_read, address_r = address_forward(M, *select_heads(heads, reads), state.w_read)           # 5r.
        r, read = read_forward(M, w_read)                                           # 6. eq. (2), M_t
        address = (address_w, address_r)
    y, output_linear = linear_forward(np.concatenate([h, r.reshape(B, R * W)], axis=1),
                                      weights.output_W, weights.output_b)            # 8. (B, Y)
    y, output_clip = clip_forward(y, config.clip)
    cache = NTMStepCache(controller, heads_linear, heads_clip, heads_cache, address, read, write,
                         output_linear, output_clip)
    return (y, NTMState(M, w_read, w_write, r, h, c)), cache


def ntm_step_backward(dy: np.ndarray, dstate: NTMState, cache: NTMStepCache, config: NTMConfig,
                      lstm: LSTMFeedbackParams | None = None):
    """Adjoint of ntm_step_forward.

    Args:
        dy: (B, Y) gradient of the loss w.r.t. this step's logits (arrives from outside).
        dstate: gradients w.r.t. the state at t (M_t, w_t, r_t, h_t, c_t), carried from step t+1.
        lstm: the LSTMFeedbackParams of the forward (NTMCache.lstm); None for feedforward.
    Returns:
        (dstate_prev, grads, dz_lstm): the gradients w.r.t. the state at t - 1, to carry to step
        t - 1; this step's parameter gradients: controller.* (feedforward only), output.W, output.b,
        and heads.W (H, P), heads.b (P,) for the concatenated head maps of NTMWeights; and the LSTM
        controller's pre-activation gradient dz_lstm (B, 4H) (None for feedforward), whose weight
        gradients ntm_backward forms over all steps at once.
    """
    B, R, W, H = dy.shape[0], config.R, config.W, config.H
    dz, doutput_W, doutput_b = linear_backward(clip_backward(dy, cache.output_clip), cache.output_linear)  # 8.
    dh = dstate.h + dz[:, :H]                                                        # (B, H)
    dr = dstate.r + dz[:, H:].reshape(B, R, W)                                       # (B, R, W)
    if not config.read_after_write:
        dM_prev, dw_write, de, da = write_backward(dstate.M, cache.write)           # 7.
        dM_read, dw_read = read_backward(dr, cache.read)                            # 6.
        dw = np.concatenate([dstate.w_read + dw_read, dstate.w_write + dw_write], axis=1)  # (B, Rh, N)
        dM_address, dk, dbeta, dg, ds, dgamma, dw_prev = address_backward(dw, cache.address[0])  # 5.
        dM_prev = dM_prev + dM_read + dM_address
        dw_read_prev, dw_write_prev = dw_prev[:, :R], dw_prev[:, R:]
    else:
        address_w, address_r = cache.address
        dM_read, dw_read = read_backward(dr, cache.read)                            # 6.
        *dread_heads, dw_read_prev = address_backward(dstate.w_read + dw_read, address_r)     # 5r.
        dM = dstate.M + dM_read + dread_heads[0]                                     # everything on M_t
        dM_prev, dw_write, de, da = write_backward(dM, cache.write)                 # 7.
        *dwrite_heads, dw_write_prev = address_backward(dstate.w_write + dw_write, address_w)  # 5w.
        dM_prev = dM_prev + dwrite_heads[0]
        dk, dbeta, dg, ds, dgamma = (np.concatenate([r_, w_], axis=1)
                                     for r_, w_ in zip(dread_heads[1:], dwrite_heads[1:]))
    do = head_outputs_backward(HeadOutputs(dk, dbeta, dg, ds, dgamma, de, da), cache.heads)   # 4.
    dh_heads, dheads_W, dheads_b = linear_backward(clip_backward(do, cache.heads_clip), cache.heads_linear)  # 3.
    dchi, dh_prev, dc_prev, dcontroller, dz_lstm = controller_step_backward(dh + dh_heads, dstate.c,
                                                                            cache.controller, lstm)   # 2.
    dr_prev = dchi[:, config.X:].reshape(B, R, W)                                    # 1. (dx_t is not needed)
    grads = {**with_prefix("controller", dcontroller), "heads.W": dheads_W, "heads.b": dheads_b,
             "output.W": doutput_W, "output.b": doutput_b}
    return NTMState(dM_prev, dw_read_prev, dw_write_prev, dr_prev, dh_prev, dc_prev), grads, dz_lstm


# ----------------------------------------------------------------- a sequence
class NTMCache(NamedTuple):
    """Everything ntm_backward needs, the final state, and per-step values for plotting."""
    config: NTMConfig
    shapes: dict                 # parameter name -> shape, in the order of model.params
    steps: list                  # T NTMStepCache
    init: InitCache | None       # None when the caller passed the initial state
    final_state: NTMState        # the state after step T (pass it to the next call to continue)
    lstm: LSTMFeedbackParams | None = None   # the LSTM controller's split parameters (None: feedforward)

    def internals(self) -> dict[str, np.ndarray]:
        """Per-step values stacked over time: read_weightings (T, B, R, N), write_weightings
        (T, B, Rw, N), read_vectors (T, B, R, W), erase and add (T, B, Rw, W), memory (T, B, N, W)
        after each step's write, and for every head (read heads first) content_weightings
        (T, B, Rh, N), key_strengths, gates and sharpening (T, B, Rh), shifts (T, B, Rh, S)."""
        steps = self.steps
        stack = lambda get: np.stack([get(s) for s in steps])
        heads = lambda name: stack(lambda s: getattr(s.heads.heads, name))
        content = stack(lambda s: np.concatenate([a.content.w_c for a in s.address[::-1]], axis=1)
                        if len(s.address) == 2 else s.address[0].content.w_c)
        return {
            "read_weightings": stack(lambda s: s.read.w), "write_weightings": stack(lambda s: s.write.w),
            "read_vectors": stack(lambda s: np.einsum("brn,bnw->brw", s.read.w, s.read.M)),
            "erase": heads("e"), "add": heads("a"),
            "memory": np.stack([s.write.M for s in steps[1:]] + [self.final_state.M]),
            "content_weightings": content, "key_strengths": heads("beta")[..., 0],
            "gates": heads("g")[..., 0], "sharpening": heads("gamma")[..., 0], "shifts": heads("s"),
        }


def ntm_forward(xs: np.ndarray, params: Mapping[str, np.ndarray], config: NTMConfig,
                memory0: np.ndarray | None = None, state: NTMState | None = None):
    """Run the NTM over a sequence (the manual engine).

    Args:
        xs: (T, B, X) inputs, T >= 1.
        params: the parameters (ntm_param_shapes), read now; all computation is in their dtype.
        memory0: (N, W) fixed initial memory for memory_init "random" (None gives the 1e-6
            constant for "constant"; unused for "learned").
        state: an NTMState to continue from (e.g. the previous call's cache.final_state; finite,
            weightings with entries in [0, 1]), or None to start from the initial state of spec A.2.
    Returns:
        ys: (T, B, Y) logits, and the NTMCache (cache.final_state is the state after step T, so
        T steps at once equal two calls of T/2 with the carried state, exactly).
    """
    dtype = _check_ntm_params(params, config)
    xs = _check_xs(xs, config, dtype)
    T, B, _ = xs.shape
    memory0 = check_memory0(memory0, config, dtype)
    init_cache = None
    if state is None:
        state, init_cache = initial_state_forward(params, config, memory0, B, dtype)
    else:
        state = check_state(state, config, B, dtype)
    weights = _arrange_weights(params, config)
    lstm = None
    if config.controller == "lstm":                     # split once; chi_t = [x_t; r_{t-1}] is fed per step
        lstm = lstm_feedback_params(weights.controller, 0)
        weights = weights._replace(controller=lstm)
    ys = np.empty((T, B, config.Y), dtype=dtype)
    steps = []
    for t in range(T):
        (ys[t], state), step = ntm_step_forward(xs[t], state, weights, config)
        steps.append(step)
    shapes = {name: np.shape(p) for name, p in params.items()}
    return ys, NTMCache(config, shapes, steps, init_cache, state, lstm)


def ntm_backward(dys: np.ndarray, cache: NTMCache, dstate: NTMState | None = None):
    """BPTT through ntm_forward.

    Gradients that arrive from outside: dys (T, B, Y), one per step's logits, and optionally
    dstate, the gradient w.r.t. cache.final_state (to chain calls; None means zero). Carried from
    step t+1 to step t: dM (B, N, W), dw per head (B, R, N) and (B, Rw, N), dr (B, R, W), dh and dc
    (B, H) - the recurrences of memory, weightings (eq. (7)), reads (step 1) and controller.

    Returns:
        (grads, dstate0): the parameter gradients (keys and order of the params) and the gradient
        w.r.t. the initial state. When the caller passed the initial state to ntm_forward, the
        init.* gradients are zero and dstate0 is the gradient w.r.t. that state.
    """
    config, steps = cache.config, cache.steps
    T, B, Y = len(steps), cache.final_state.h.shape[0], config.Y
    dys = as_float_array("dys", dys)
    if dys.shape != (T, B, Y):
        raise ValueError(f"dys must have the shape of ys (T, B, Y) = {(T, B, Y)}; got {dys.shape}")
    check_finite("dys", dys)
    dtype = cache.final_state.M.dtype
    if dstate is None:
        dstate = NTMState(*(np.zeros(s, dtype=dtype) for s in state_shapes(config, B)))
    else:
        dstate = check_state(dstate, config, B, dtype, what="dstate", weightings=False)
    total: dict[str, np.ndarray] = {}
    dZ = None if cache.lstm is None else np.empty((T, B, 4 * config.H), dtype=dtype)   # every step's dz
    for t in reversed(range(T)):
        dstate, step_grads, dz_lstm = ntm_step_backward(dys[t], dstate, steps[t], config, cache.lstm)
        if dZ is not None:
            dZ[t] = dz_lstm
        for name, value in step_grads.items():          # the weights are shared by every step
            if name in total:
                total[name] += value                    # in place into the copy made at t = T - 1
            else:
                total[name] = np.array(value, copy=True)
    if dZ is not None:                                  # the LSTM's weights: one product each over all steps
        total.update(with_prefix("controller", lstm_feedback_weight_gradients(
            None, [step.controller for step in steps], dZ, cache.lstm)))
    grads = {name: value for name, value in total.items() if not name.startswith("heads.")}
    for name, columns in config.layout.head_columns():   # split [read0.W | ... | write0.W | ...]
        grads[f"{name}.W"] = np.ascontiguousarray(total["heads.W"][:, columns])
        grads[f"{name}.b"] = np.ascontiguousarray(total["heads.b"][columns])
    if cache.init is not None:
        grads.update(initial_state_backward(dstate, cache.init))
    return {name: grads.get(name, np.zeros(shape, dtype=dtype)) for name, shape in cache.shapes.items()}, dstate


# ----------------------------------------------------------------- autodiff twin
def ntm_autodiff(tparams: Mapping[str, ad.Tensor], xs, config: NTMConfig, memory0: np.ndarray | None = None,
                 state: NTMState | None = None, custom_ops: bool = False) -> ad.Tensor:
    """Autodiff twin of ntm_forward: ys (T, B, Y) as a Tensor.

    The equations are repeated with the primitives' autodiff twins (address_autodiff,
    read_autodiff, write_autodiff, lstm_step_autodiff, ...), so the tape is an independent check of
    the manual BPTT; custom_ops=True uses the manual pairs address_op, read_op, write_op instead.
    A given state is a constant (ndarrays).
    """
    tparams = {name: ad.as_tensor(p) for name, p in tparams.items()}
    dtype = _check_ntm_params({n: t.data for n, t in tparams.items()}, config)
    xs = _check_xs(xs, config, dtype)
    T, B, _ = xs.shape
    R, W, clip = config.R, config.W, config.clip
    address, read, write = (address_op, read_op, write_op) if custom_ops else \
        (address_autodiff, read_autodiff, write_autodiff)
    if state is None:
        state = initial_state_autodiff(tparams, config, check_memory0(memory0, config, dtype), B, dtype)
    else:
        state = NTMState(*(ad.Tensor(s) for s in check_state(state, config, B, dtype)))
    weights = _arrange_weights(tparams, config, concatenate=ad.concatenate)
    M, w_read, w_write, r, h, c = state
    reads, writes = slice(0, R), slice(R, None)
    ys = []
    for t in range(T):
        chi = ad.concatenate([ad.Tensor(xs[t]), r.reshape((B, R * W))], axis=1)          # 1.
        h, c = controller_step_autodiff(chi, h, c, weights.controller, config.controller)  # 2.
        o = clip_autodiff(linear_autodiff(h, weights.heads_W, weights.heads_b), clip)     # 3.
        heads = head_outputs_autodiff(o, config.layout)                                   # 4.
        if not config.read_after_write:
            w = address(M, *select_heads(heads, slice(None)),
                        ad.concatenate([w_read, w_write], axis=1))                        # 5.
            w_read, w_write = w[:, reads], w[:, writes]
            r = read(M, w_read)                                                           # 6.
            M = write(M, w_write, heads.e, heads.a)                                       # 7.
        else:
            w_write = address(M, *select_heads(heads, writes), w_write)                   # 5w.
            M = write(M, w_write, heads.e, heads.a)                                       # 7.
            w_read = address(M, *select_heads(heads, reads), w_read)                      # 5r.
            r = read(M, w_read)                                                           # 6.
        y = linear_autodiff(ad.concatenate([h, r.reshape((B, R * W))], axis=1),
                            weights.output_W, weights.output_b)                           # 8.
        ys.append(clip_autodiff(y, clip))
    return ad.stack(ys, axis=0)                                                           # (T, B, Y)


# ----------------------------------------------------------------- initialisation and model
def ntm_init(rng: np.random.Generator, config: NTMConfig) -> tuple[dict, np.ndarray | None]:
    """(params, memory0). Controller: minimem.nn.lstm.lstm_init (Xavier W_x, orthogonal W_h, forget
    bias config.forget_bias) or Xavier W with zero b; head and output maps Xavier with zero biases;
    init.*.w_bias, init.*.r_bias and init.memory_bias Xavier-uniform over (1, n), like Collier &
    Beel's `learned_init` (a linear map of a constant 1): the initial weightings are NOT uniform,
    which breaks the symmetry of a constant memory (uniform weightings on identical rows would stay
    uniform forever). memory0 (N, W): the 1e-6 constant, the fixed uniform(+-1/sqrt(N + W)) buffer
    ("random"), or None ("learned")."""
    dtype, C = config.dtype, config.X + config.R * config.W
    params = {}
    if config.controller == "lstm":
        params.update(with_prefix("controller", lstm_init(rng, C, config.H, config.forget_bias, dtype)))
    else:
        params["controller.W"] = init.xavier_uniform(rng, (C, config.H), dtype=dtype)
        params["controller.b"] = init.zeros(rng, config.H, dtype=dtype)
    shapes = ntm_param_shapes(config)
    for name, shape in shapes.items():
        if name.startswith("controller."):
            continue
        if name.startswith("init."):
            params[name] = init.xavier_uniform(rng, (1, int(np.prod(shape))), dtype=dtype).reshape(shape)
        elif name.endswith(".W"):
            params[name] = init.xavier_uniform(rng, shape, dtype=dtype)
        else:
            params[name] = init.zeros(rng, shape, dtype=dtype)
    params = {name: params[name] for name in shapes}
    if config.memory_init == "constant":
        memory0 = np.full((config.N, config.W), MEMORY_CONSTANT, dtype=dtype)
    elif config.memory_init == "random":
        memory0 = init.uniform(rng, (config.N, config.W), 1.0 / np.sqrt(config.N + config.W), dtype=dtype)
    else:
        memory0 = None
    return params, memory0


class NTM:
    """The Neural Turing Machine as a model: xs (T, B, X) -> logits ys (T, B, Y).

    model.params: ordered dict (names and layouts in the module docstring), read at call time.
    model.memory0: (N, W) fixed initial memory, or None for memory_init = "learned".
    forward(xs, state=None) -> (ys, cache); backward(dys, cache) -> grads;
    forward_autodiff(tparams, xs, state=None, custom_ops=False) -> Tensor ys.
    cache.final_state continues a sequence; cache.internals() gives the per-step weightings.
    """

    def __init__(self, config: NTMConfig, rng: np.random.Generator | None = None):
        if not isinstance(config, NTMConfig):
            raise ValueError(f"config must be an NTMConfig; got {type(config).__name__}")
        self.config = config
        self.params, self.memory0 = ntm_init(np.random.default_rng(0) if rng is None else rng, config)

    def forward(self, xs, state: NTMState | None = None):
        """ys (T, B, Y) logits and the cache for backward (see ntm_forward)."""
        return ntm_forward(xs, self.params, self.config, self.memory0, state)

    def backward(self, dys, cache: NTMCache) -> dict:
        """Parameter gradients (the keys of params) of sum(dys * ys), by BPTT (see ntm_backward)."""
        return ntm_backward(dys, cache)[0]

    def forward_autodiff(self, tparams: Mapping[str, ad.Tensor], xs, state: NTMState | None = None,
                         custom_ops: bool = False) -> ad.Tensor:
        """ys (T, B, Y) as a Tensor from Tensor parameters (see ntm_autodiff)."""
        return ntm_autodiff(tparams, xs, self.config, self.memory0, state, custom_ops)

    def initial_state(self, B: int) -> NTMState:
        """The state at t = 0 for a batch of B >= 1 (spec A.2)."""
        B = check_batch_size(B)
        dtype = _check_ntm_params(self.params, self.config)
        return initial_state_forward(self.params, self.config, check_memory0(self.memory0, self.config, dtype),
                                     B, dtype)[0]
