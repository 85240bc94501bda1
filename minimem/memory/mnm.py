"""Metalearned Neural Memory (Munkhdalai, Sordoni, Wang & Trischler, NeurIPS 2019, arXiv:1907.09720):
an LSTM controller whose memory is a small feed-forward network f_phi. Every step it writes by
changing phi in one shot so that f maps its write keys to its write values, then reads by pushing
read keys through the new network.

Equation numbers are those of specs/titans_mnm.md Part B (B3 forward, B4 backward); the spec
follows a port of the authors' MNM-p code and says which details come from the paper.

Shapes: B batch, T time, X input width, Y output width, H controller width (H_c in the spec),
Nh interaction heads (N_h), d key/value width, h memory hidden width, L memory depth.
One step t (spec B3):
    (B1)  u_t = [x_t ; v^r_{t-1}];  (h_t, c_t) = LSTM(u_t, h_{t-1}, c_{t-1})           gates i, f, g, o
    (B2)  xi_t = tanh(h_t W_iface + b_iface)                            (B, (3 Nh + 1) d)
          beta'_t = xi_t[:, 0:d];  xi_t[:, d:] as (B, Nh, 3d) = k^w | v^w | k^r per head
    (B3)  beta_t = beta_max sigma(beta'_t w_beta + b_beta)               (B,) one rate per sequence
    (B5)  MNM-g ('grad'):  phi_t = phi_{t-1} - beta_t grad L^up(phi_{t-1}; K^w, V^w)
    (B6)  MNM-p ('local'): [Z'_1 | ... | Z'_L] = V^w W_target + b_target;
          W_l,t = W_l,t-1 - beta_t (2 / (Nh n_l)) (Z_l - Z'_l)^T Z_{l-1}
    (B7)  v^r_t = (1/Nh) sum_n f_{phi_t}(k^r_{t,n})                      read AFTER the write (P.4)
    (B8)  o_t = [h_t ; v^r_t] W_out + b_out;  y_t = o_t W_head + b_head
    (B9)  L^meta_t = 1/(Nh d) sum_n ||f_{phi_t}(k^w_{t,n}) - v^w_{t,n}||^2
The memory network (B4: tanh hidden layers, a linear output layer, no biases) and both writers
are in mnm_memory, the interface (B2)-(B3) and the MNM-p target map in mnm_interface.
Training loss (reference code): L_task(ys) + the mean of L^meta_t over time and batch, so the model
returns both: outputs = (ys (T, B, Y), meta (T, B)).

Parameters (model.params, in this order; `x @ W` layout unless said otherwise):
    ctrl.W_x (X + d, 4H), ctrl.W_h (H, 4H), ctrl.b (4H,)     LSTM on [x_t ; v^r_{t-1}]
    iface.W (H, (3 Nh + 1) d), iface.b ((3 Nh + 1) d,)      columns beta' | head 0: k^w v^w k^r | head 1 ...
    beta.w (d, 1), beta.b (1,)
    mem0.W1 (h, d), ..., mem0.WL (d, h)                     phi_0 in the (out, in) layout of the reference
                                                            code (z W^T); only with learn_init, else the
                                                            fixed buffers model.mem0 (spec B10.4)
    target.W (d, S), target.b (S,)                          MNM-p only: S = (L-1) h + d, columns Z'_1 | ...
                                                            | Z'_L ('learned'), or (L-1) h ('value', Z'_L = v^w)
    out.W (H + d, H), out.b (H,)                            rows h_t, then v^r_t
    head.W (H, Y), head.b (Y,)
State carried through time (MNMState): h, c (B, H), the read-out r = v^r (B, d), the fast weights
phi = (W_1, ..., W_L), W_l (B, n_l, n_{l-1}). Initially h = c = r = 0 and phi = phi_0 per batch element.

Two engines share the parameters: mnm_forward / mnm_backward (hand-derived BPTT; the MNM-g write has
the exact second-order adjoint, the MNM-p write its exact first-order one) and mnm_autodiff (the same
equations in minimem.autodiff; MNM-g's inner gradient by ad.grad(..., create_graph=True)).
Truncated back-propagation (config.truncate = s): the state entering steps s, 2s, ... is treated as a
constant by both backward passes (the forward is unchanged), like `unchain_state` in the reference code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem import init
from minimem.checks import check_int
from minimem.memory.mnm_interface import (
    Interface, InterfaceCache, mnm_interface_autodiff, mnm_interface_backward, mnm_interface_forward,
    mnm_targets_autodiff, mnm_targets_backward, mnm_targets_forward,
)
from minimem.memory.mnm_memory import (
    mnm_read_autodiff, mnm_read_forward, mnm_read_recon_backward, mnm_recon_autodiff, mnm_recon_forward,
    mnm_write_grad_autodiff, mnm_write_grad_backward, mnm_write_grad_forward, mnm_write_local_autodiff,
    mnm_write_local_backward, mnm_write_local_forward,
)
from minimem.nn.linear import (
    as_float_array, check_finite, check_params, linear_autodiff, linear_backward, linear_forward,
    strip_prefix, with_prefix,
)
from minimem.nn.lstm import (
    lstm_feedback_params, lstm_feedback_step_backward, lstm_feedback_step_forward, lstm_feedback_weight_gradients,
    lstm_step_autodiff,
)

WRITERS = ("local", "grad")            # MNM-p (B6), MNM-g (B5)
OUTPUT_TARGETS = ("learned", "value")  # the output layer's MNM-p target: projected, or v^w itself (B10.2)


# ----------------------------------------------------------------- config
@dataclass(frozen=True)
class MNMConfig:
    """Sizes and choices of an MNM (defaults: the minimem CPU defaults of spec B5 and the reference code).

    X, Y: input and output widths. H: controller width. d: key/value width. h: memory hidden width.
    L: memory depth (number of weight matrices, >= 1). n_heads: Nh key/value pairs per step.
    writer: "local" (MNM-p, B6) | "grad" (MNM-g, B5). beta_max: bound of the update rate (B3).
    learn_init: phi_0 is trained (params mem0.*) instead of a fixed buffer (B10.4).
    output_target: "learned" | "value", the output layer's MNM-p target (B10.2).
    extra_read_step: run one more step with a zero input after the last one (reference code).
    truncate: cut the backward pass into segments of this many steps: the state entering steps
        truncate, 2 truncate, ... is a constant for both backward passes (None: full BPTT).
    dtype: "float64" | "float32", the dtype of the initial parameters.
    """
    X: int
    Y: int
    H: int = 64
    d: int = 32
    h: int = 32
    L: int = 3
    n_heads: int = 1
    writer: str = "local"
    beta_max: float = 1.0
    learn_init: bool = False
    output_target: str = "learned"
    extra_read_step: bool = False
    truncate: int | None = None
    dtype: str = "float64"

    def __post_init__(self) -> None:
        for name in ("X", "Y", "H", "d", "h", "L", "n_heads"):
            check_int(f"MNMConfig.{name}", getattr(self, name), 1)
        if self.writer not in WRITERS:
            raise ValueError(f"MNMConfig.writer must be one of {WRITERS}; got {self.writer!r}")
        if self.output_target not in OUTPUT_TARGETS:
            raise ValueError(f"MNMConfig.output_target must be one of {OUTPUT_TARGETS}; got {self.output_target!r}")
        if isinstance(self.beta_max, bool) or not isinstance(self.beta_max, (int, float, np.floating)) \
                or not (np.isfinite(self.beta_max) and self.beta_max > 0):
            raise ValueError(f"MNMConfig.beta_max must be a positive number; got {self.beta_max!r}")
        if self.truncate is not None:
            check_int("MNMConfig.truncate (if not None)", self.truncate, 1)
        for name in ("learn_init", "extra_read_step"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"MNMConfig.{name} must be a bool; got {getattr(self, name)!r}")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"MNMConfig.dtype must be 'float64' or 'float32'; got {self.dtype!r}")

    @property
    def widths(self) -> tuple[int, ...]:
        """(n_0, ..., n_L) = (d, h, ..., h, d), the widths of the memory network's layers."""
        return (self.d,) + (self.h,) * (self.L - 1) + (self.d,)

    @property
    def target_widths(self) -> tuple[int, ...]:
        """Widths of the target map's blocks: n_1..n_L ('learned') or n_1..n_{L-1} ('value')."""
        widths = self.widths[1:]
        return widths if self.output_target == "learned" else widths[:-1]


def mnm_param_shapes(config: MNMConfig) -> dict[str, tuple]:
    """Parameter names and shapes, in the order of model.params (module docstring)."""
    X, Y, H, d, Nh = config.X, config.Y, config.H, config.d, config.n_heads
    shapes = {"ctrl.W_x": (X + d, 4 * H), "ctrl.W_h": (H, 4 * H), "ctrl.b": (4 * H,),
              "iface.W": (H, (3 * Nh + 1) * d), "iface.b": ((3 * Nh + 1) * d,),
              "beta.w": (d, 1), "beta.b": (1,)}
    if config.learn_init:
        shapes.update(mem0_shapes(config))
    S = sum(config.target_widths)
    if config.writer == "local" and S > 0:
        shapes.update({"target.W": (d, S), "target.b": (S,)})
    shapes.update({"out.W": (H + d, H), "out.b": (H,), "head.W": (H, Y), "head.b": (Y,)})
    return shapes


def mem0_shapes(config: MNMConfig) -> dict[str, tuple]:
    """{"mem0.W1": (n_1, n_0), ..., "mem0.WL": (n_L, n_{L-1})}, the (out, in) layout."""
    n = config.widths
    return {f"mem0.W{l}": (n[l], n[l - 1]) for l in range(1, config.L + 1)}


class MNMState(NamedTuple):
    h: object            # (B, H) controller hidden state
    c: object            # (B, H) controller cell state
    r: object            # (B, d) read-out v^r of the previous step
    phi: tuple           # L arrays (B, n_l, n_{l-1}), the fast weights


# ----------------------------------------------------------------- input validation
def _check_mnm_params(params: Mapping[str, np.ndarray], config: MNMConfig) -> np.dtype:
    check_params(params, mnm_param_shapes(config))
    dtypes = {np.asarray(p).dtype for p in params.values()}
    if len(dtypes) != 1 or next(iter(dtypes)) not in (np.float32, np.float64):
        raise ValueError(f"parameters must all be float32 or all float64; got {sorted(map(str, dtypes))}")
    for name, value in params.items():
        check_finite(f"parameter {name}", np.asarray(value))
    return next(iter(dtypes))


def _check_xs(xs, config: MNMConfig, dtype) -> np.ndarray:
    xs = as_float_array("inputs", xs)
    if xs.ndim != 3 or xs.shape[0] == 0 or xs.shape[1] == 0 or xs.shape[2] != config.X:
        raise ValueError(f"inputs must have shape (T, B, X) with T, B >= 1 and X={config.X}; got {xs.shape}")
    check_finite("inputs", xs)
    return xs.astype(dtype, copy=False)


def _check_mem0(mem0, config: MNMConfig, dtype) -> dict | None:
    """The fixed phi_0 buffers, checked (None with learn_init: phi_0 is in the params)."""
    if config.learn_init:
        return None
    if not isinstance(mem0, Mapping):
        raise ValueError("without learn_init the model needs the fixed initial memory mem0, a dict "
                         f"{list(mem0_shapes(config))}; got {type(mem0).__name__}")
    check_params(mem0, mem0_shapes(config))
    for name, value in mem0.items():
        check_finite(name, np.asarray(value))
    return {name: np.asarray(value, dtype=dtype) for name, value in mem0.items()}


def _state_shapes(config: MNMConfig, B: int) -> MNMState:
    n = config.widths
    return MNMState((B, config.H), (B, config.H), (B, config.d),
                    tuple((B, n[l], n[l - 1]) for l in range(1, config.L + 1)))


def _zero_state(config: MNMConfig, B: int, dtype) -> MNMState:
    shapes = _state_shapes(config, B)
    zeros = lambda shape: np.zeros(shape, dtype=dtype)
    return MNMState(zeros(shapes.h), zeros(shapes.c), zeros(shapes.r), tuple(map(zeros, shapes.phi)))


def _check_state(state, config: MNMConfig, B: int, dtype, what: str = "state") -> MNMState:
    if not isinstance(state, MNMState):
        raise ValueError(f"{what} must be an MNMState(h, c, r, phi); got {type(state).__name__}")
    expected = _state_shapes(config, B)
    phi = state.phi
    if not isinstance(phi, (tuple, list)) or len(phi) != config.L:
        raise ValueError(f"{what}.phi must be a tuple of L={config.L} arrays; got {type(phi).__name__}")
    arrays = [state.h, state.c, state.r] + list(phi)
    shapes = [expected.h, expected.c, expected.r] + list(expected.phi)
    names = ["h", "c", "r"] + [f"phi[{l}]" for l in range(config.L)]
    checked = []
    for name, array, shape in zip(names, arrays, shapes):
        array = as_float_array(f"{what}.{name}", array)
        if array.shape != shape:
            raise ValueError(f"{what}.{name} must have shape {shape}; got {array.shape}")
        check_finite(f"{what}.{name}", array)
        checked.append(array.astype(dtype, copy=False))
    return MNMState(checked[0], checked[1], checked[2], tuple(checked[3:]))


# ----------------------------------------------------------------- one step
class MNMStepCache(NamedTuple):
    ctrl: object         # LSTMFeedbackCache, eq. (B1)
    iface: InterfaceCache
    interface: Interface  # the step's keys, values and rate (for inspection)
    targets: object      # LinearCache of the target map (MNM-p), or None
    write: object        # WriteGradCache or WriteLocalCache, eq. (B5) or (B6)
    read: object         # MemCache of the read, eq. (B7)
    out: object          # LinearCache, eq. (B8)
    head: object         # LinearCache
    meta: object         # ReconCache, eq. (B9)
    lstm: object = None  # the ctrl.* parameters as LSTMFeedbackParams (shared by every step)


def mnm_step_forward(x: np.ndarray, state: MNMState, params: Mapping[str, np.ndarray], config: MNMConfig):
    """One MNM step, eqs. (B1)-(B9): control, interface, write, read (after the write), output.

    Args:
        x: (B, X) input x_t.
        state: MNMState at t - 1.
        params: the parameters (mnm_param_shapes).
    Returns:
        (y (B, Y), meta (B,), state at t), and the cache for mnm_step_backward.
    """
    (meta, state), cache = _recurrent_step(x, state, params, _ctrl_params(params), config)
    o, out = linear_forward(np.concatenate([state.h, state.r], axis=1), params["out.W"], params["out.b"])  # 6. (B8)
    y, head = linear_forward(o, params["head.W"], params["head.b"])                 # (B, Y)
    return (y, meta, state), cache._replace(out=out, head=head)


def _ctrl_params(params: Mapping[str, np.ndarray]):
    """The ctrl.* parameters split for minimem.nn.lstm's feedback steps (once per sequence): all of
    u_t = [x_t ; v^r_{t-1}] is fed per step, the weight gradients are formed from the steps' dz."""
    return lstm_feedback_params(strip_prefix("ctrl", params), 0)


def _recurrent_step(x: np.ndarray, state: MNMState, params: Mapping[str, np.ndarray], ctrl, config: MNMConfig):
    """Steps 1.-5. and 7. of mnm_step_forward: everything but the output layers (B8), which do not
    feed back into the recurrence (mnm_forward runs them for all steps at once). ctrl: _ctrl_params.
    Returns ((meta (B,), state at t), cache with out = head = None)."""
    u = np.concatenate([x, state.r], axis=1)                                         # 1. (B, X + d)
    (h, c), ctrl_cache = lstm_feedback_step_forward(ctrl.b_s, u, state.h, state.c, ctrl)   # eq. (B1)
    io, iface = mnm_interface_forward(h, params["iface.W"], params["iface.b"], params["beta.w"],
                                      params["beta.b"], config.n_heads, config.beta_max)   # 2.-3. (B2)-(B3)
    targets_cache = None
    if config.writer == "grad":
        phi, write = mnm_write_grad_forward(state.phi, io.k_write, io.v_write, io.beta)      # 4. eq. (B5)
    else:
        targets, targets_cache = mnm_targets_forward(io.v_write, params.get("target.W"), params.get("target.b"),
                                                     config.target_widths, config.output_target)
        phi, write = mnm_write_local_forward(state.phi, io.k_write, targets, io.beta)         # 4. eq. (B6)
    r, read = mnm_read_forward(phi, io.k_read)                                       # 5. (B, d) eq. (B7)
    meta, meta_cache = mnm_recon_forward(phi, io.k_write, io.v_write)               # 7. (B,) eq. (B9)
    cache = MNMStepCache(ctrl_cache, iface, io, targets_cache, write, read, None, None, meta_cache, ctrl)
    return (meta, MNMState(h, c, r, phi)), cache


def mnm_step_backward(dy: np.ndarray, dmeta: np.ndarray, dstate: MNMState, cache: MNMStepCache,
                      config: MNMConfig):
    """Adjoint of mnm_step_forward.

    Args:
        dy: (B, Y) and dmeta: (B,), this step's loss gradients (arrive from outside).
        dstate: gradients w.r.t. the state at t (h, c, r, phi), carried from step t + 1.
    Returns:
        (dx (B, X), dstate at t - 1, grads): grads has this step's parameter gradients by full name.
    """
    H = config.H
    do, dW_head, db_head = linear_backward(dy, cache.head)                           # 6.
    dhr, dW_out, db_out = linear_backward(do, cache.out)
    dx, dstate_prev, grads, dz = _recurrent_step_backward(dhr[:, :H], dhr[:, H:], dmeta, dstate, cache, config)
    grads.update(with_prefix("ctrl", lstm_feedback_weight_gradients(
        None, [cache.ctrl], dz[None], cache.lstm)))
    grads.update({"out.W": dW_out, "out.b": db_out, "head.W": dW_head, "head.b": db_head})
    return dx, dstate_prev, grads


def _recurrent_step_backward(dh_out: np.ndarray, dr_out: np.ndarray, dmeta: np.ndarray, dstate: MNMState,
                             cache: MNMStepCache, config: MNMConfig):
    """Adjoint of _recurrent_step. dh_out (B, H), dr_out (B, d): this step's gradients w.r.t. h_t and
    v^r_t from the output layers (B8). Returns (dx, dstate at t - 1, grads, dz) like mnm_step_backward,
    without the output layers' and the controller's parameters: dz (B, 4H) is the controller's
    pre-activation gradient, whose weight gradients are formed over all steps at once."""
    dh, dr = dstate.h + dh_out, dstate.r + dr_out
    dphi_read_meta, dk_read, dk_write, dv_write = mnm_read_recon_backward(dr, cache.read, dmeta, cache.meta)  # 5., 7.
    dphi = dphi_read_meta                                                           # everything on phi_t,
    for dW, carried in zip(dphi, dstate.phi):                                       # added in place into the
        dW += carried                                                               # read/meta's new arrays
    grads = {}
    if config.writer == "grad":                                                      # 4.
        dphi_prev, dk_w, dv_w, dbeta = mnm_write_grad_backward(dphi, cache.write)
    else:
        dphi_prev, dk_w, dtargets, dbeta = mnm_write_local_backward(dphi, cache.write)
        dv_w, grads = mnm_targets_backward(dtargets, cache.targets, config.output_target)
    dio = Interface(dk_write + dk_w, dv_write + dv_w, dk_read, dbeta)
    dh_iface, iface_grads = mnm_interface_backward(dio, cache.iface)                 # 2.-3.
    du, dh_prev, dc_prev, dz = lstm_feedback_step_backward(dh + dh_iface, dstate.c, cache.ctrl, cache.lstm)  # 1.
    grads.update(iface_grads)
    X = config.X
    return du[:, :X], MNMState(dh_prev, dc_prev, du[:, X:], dphi_prev), grads, dz


# ----------------------------------------------------------------- a sequence
class MNMCache(NamedTuple):
    """Everything mnm_backward needs, the final state, and per-step values for plotting. The steps'
    own out and head caches are None: the output layers ran once over the whole sequence."""
    config: MNMConfig
    shapes: dict         # parameter name -> shape, in the order of model.params
    xs: np.ndarray       # (T', B, X) the inputs actually run (with the extra zero step if any)
    steps: list          # T' MNMStepCache
    initial: bool        # whether the run started from phi_0 (mem0 gets a gradient with learn_init)
    final_state: MNMState
    out: object = None   # LinearCache of eq. (B8) over all steps, [h_t ; v^r_t] (T', B, H + d) -> o_t
    head: object = None  # LinearCache of the head over all steps, o_t (T', B, H) -> y_t

    def internals(self) -> dict[str, np.ndarray]:
        """Per-step values stacked over time: beta (T', B), read_outs (T', B, d), keys_write,
        values_write, keys_read (T', B, Nh, d)."""
        stack = lambda get: np.stack([get(s) for s in self.steps])
        return {"beta": stack(lambda s: s.interface.beta),
                "read_outs": stack(lambda s: s.read.Zs[-1].mean(axis=1)),
                "keys_write": stack(lambda s: s.interface.k_write),
                "values_write": stack(lambda s: s.interface.v_write),
                "keys_read": stack(lambda s: s.interface.k_read)}


def _initial_state(params, config: MNMConfig, mem0, B: int, dtype) -> MNMState:
    source = params if config.learn_init else mem0
    phi = tuple(np.broadcast_to(np.asarray(source[f"mem0.W{l}"], dtype=dtype),
                                (B,) + np.shape(source[f"mem0.W{l}"])).copy() for l in range(1, config.L + 1))
    zeros = lambda n: np.zeros((B, n), dtype=dtype)
    return MNMState(zeros(config.H), zeros(config.H), zeros(config.d), phi)


def _with_extra_step(xs: np.ndarray, config: MNMConfig) -> np.ndarray:
    if not config.extra_read_step:
        return xs
    return np.concatenate([xs, np.zeros((1,) + xs.shape[1:], dtype=xs.dtype)], axis=0)


def mnm_forward(xs: np.ndarray, params: Mapping[str, np.ndarray], config: MNMConfig,
                mem0: Mapping[str, np.ndarray] | None = None, state: MNMState | None = None):
    """Run the MNM over a sequence (the manual engine).

    Args:
        xs: (T, B, X) inputs, T >= 1.
        params: the parameters (mnm_param_shapes), read now; all computation is in their dtype.
        mem0: the fixed phi_0 {"mem0.W1": (n_1, n_0), ...} when not learn_init (model.mem0).
        state: an MNMState to continue from (e.g. a previous cache.final_state; a constant), or None
            for the initial state (h = c = r = 0, phi = phi_0).
    Returns:
        ((ys (T', B, Y), meta (T', B)), cache), T' = T + 1 with extra_read_step; meta[t] is L^meta_t
        of eq. (B9) per batch element.
    """
    dtype = _check_mnm_params(params, config)
    xs = _with_extra_step(_check_xs(xs, config, dtype), config)
    T, B, _ = xs.shape
    initial = state is None
    if initial:
        state = _initial_state(params, config, _check_mem0(mem0, config, dtype), B, dtype)
    else:
        state = _check_state(state, config, B, dtype)
    H = config.H
    meta = np.empty((T, B), dtype=dtype)
    hr = np.empty((T, B, H + config.d), dtype=dtype)                # [h_t ; v^r_t], the input of eq. (B8)
    ctrl = _ctrl_params(params)                                     # split once, not per step
    steps = []
    for t in range(T):
        (meta[t], state), step = _recurrent_step(xs[t], state, params, ctrl, config)
        hr[t, :, :H], hr[t, :, H:] = state.h, state.r
        steps.append(step)
    # 6. eq. (B8) for every step in one product each: the outputs do not feed back.
    o, out = linear_forward(hr, params["out.W"], params["out.b"])                   # (T, B, H)
    ys, head = linear_forward(o, params["head.W"], params["head.b"])                # (T, B, Y)
    shapes = {name: np.shape(p) for name, p in params.items()}
    return (ys, meta), MNMCache(config, shapes, xs, steps, initial, state, out, head)


def _cut(t: int, config: MNMConfig) -> bool:
    """Whether the state entering step t is detached (truncated back-propagation)."""
    return config.truncate is not None and t > 0 and t % config.truncate == 0


def mnm_backward(doutputs, cache: MNMCache, dstate: MNMState | None = None):
    """BPTT through mnm_forward.

    Gradients that arrive from outside: doutputs = (dys (T', B, Y), dmeta (T', B)), one per step, and
    optionally dstate w.r.t. cache.final_state (None: zero). Carried from step t + 1 to step t:
    dh, dc (B, H), dr (B, d) (the read-out feeds the controller) and dphi (the fast weights); they are
    dropped where config.truncate cuts the sequence.

    Returns:
        (grads, dxs, dstate0): parameter gradients (keys and order of the params), dxs (T', B, X) and
        the gradient w.r.t. the initial state (mem0.* gets dstate0.phi summed over the batch when
        learn_init and the run started from phi_0).
    """
    config, steps = cache.config, cache.steps
    T, B = cache.xs.shape[:2]
    if not isinstance(doutputs, (tuple, list)) or len(doutputs) != 2:
        raise ValueError("doutputs must be (dys (T, B, Y), dmeta (T, B)), like the outputs")
    dys, dmeta = (as_float_array(n, a) for n, a in zip(("dys", "dmeta"), doutputs))
    if dys.shape != (T, B, config.Y) or dmeta.shape != (T, B):
        raise ValueError(f"doutputs must have shapes (T, B, Y) = {(T, B, config.Y)} and (T, B) = {(T, B)}; "
                         f"got {dys.shape} and {dmeta.shape}")
    dtype = cache.xs.dtype
    dys, dmeta = dys.astype(dtype, copy=False), dmeta.astype(dtype, copy=False)   # computed in the model's dtype
    dstate = _zero_state(config, B, dtype) if dstate is None else _check_state(dstate, config, B, dtype, "dstate")
    grads = {name: np.zeros(shape, dtype=dtype) for name, shape in cache.shapes.items()}
    # 6. eq. (B8) backwards for every step at once (the weights' gradients are summed over all steps).
    do, grads["head.W"], grads["head.b"] = linear_backward(dys, cache.head)         # (T, B, H)
    dhr, grads["out.W"], grads["out.b"] = linear_backward(do, cache.out)            # (T, B, H + d)
    H = config.H
    dxs = np.empty_like(cache.xs)
    dZ = np.empty((T, B, 4 * H), dtype=dtype)                       # every step's controller dz
    for t in reversed(range(T)):
        dxs[t], dstate, step_grads, dZ[t] = _recurrent_step_backward(dhr[t, :, :H], dhr[t, :, H:], dmeta[t], dstate,
                                                                     steps[t], config)
        for name, value in step_grads.items():
            grads[name] += value                                    # the weights are shared by every step
        if _cut(t, config):
            dstate = _zero_state(config, B, dtype)                  # the state entering step t is a constant
    # 1. eq. (B1)'s weights: one product each over all steps
    for name, value in lstm_feedback_weight_gradients(None, [s.ctrl for s in steps], dZ, steps[0].lstm).items():
        grads[f"ctrl.{name}"] += value
    if config.learn_init and cache.initial:
        for l, dW in enumerate(dstate.phi, start=1):
            grads[f"mem0.W{l}"] += dW.sum(axis=0)                   # phi_0 is shared by the batch
    return grads, dxs, dstate


# ----------------------------------------------------------------- autodiff twin
def mnm_autodiff(tparams: Mapping[str, ad.Tensor], xs, config: MNMConfig, mem0: Mapping | None = None,
                 state: MNMState | None = None, inner_grad: str = "tape") -> tuple[ad.Tensor, ad.Tensor]:
    """Autodiff twin of mnm_forward: (ys (T', B, Y), meta (T', B)) as Tensors.

    The MNM-g inner gradient is taken by inner_grad = "tape" (ad.grad(L^up, phi, create_graph=True),
    so the outer backward differentiates it again) or "closed_form" (the Delta recursion in Tensor
    ops). The tape is the independent check but walks the whole graph built so far at every step,
    so its cost grows like T^2; closed_form is linear in T. Truncation detaches the state entering
    steps s, 2s, ...; a given state is a constant.
    """
    tparams = {name: ad.as_tensor(p) for name, p in tparams.items()}
    dtype = _check_mnm_params({n: t.data for n, t in tparams.items()}, config)
    xs = _with_extra_step(_check_xs(xs, config, dtype), config)
    T, B, _ = xs.shape
    if state is None:
        mem0 = _check_mem0(mem0, config, dtype)
        source = tparams if config.learn_init else {k: ad.Tensor(v) for k, v in mem0.items()}
        phi = tuple(ad.broadcast_to(source[f"mem0.W{l}"], (B,) + source[f"mem0.W{l}"].shape)
                    for l in range(1, config.L + 1))
        zeros = lambda n: ad.Tensor(np.zeros((B, n), dtype=dtype))
        h, c, r = zeros(config.H), zeros(config.H), zeros(config.d)
    else:
        state = _check_state(state, config, B, dtype)
        h, c, r = (ad.Tensor(s) for s in state[:3])
        phi = tuple(ad.Tensor(W) for W in state.phi)
    ctrl = strip_prefix("ctrl", tparams)
    ys, metas = [], []
    for t in range(T):
        if _cut(t, config):
            h, c, r = h.detach(), c.detach(), r.detach()
            phi = tuple(W.detach() for W in phi)
        u = ad.concatenate([ad.Tensor(xs[t]), r], axis=1)                                 # 1.
        h, c = lstm_step_autodiff(u, h, c, ctrl)
        io = mnm_interface_autodiff(h, tparams["iface.W"], tparams["iface.b"], tparams["beta.w"],
                                    tparams["beta.b"], config.n_heads, config.beta_max)   # 2.-3.
        if config.writer == "grad":                                                       # 4.
            phi = mnm_write_grad_autodiff(phi, io.k_write, io.v_write, io.beta, method=inner_grad)
        else:
            targets = mnm_targets_autodiff(io.v_write, tparams.get("target.W"), tparams.get("target.b"),
                                           config.target_widths, config.output_target)
            phi = mnm_write_local_autodiff(phi, io.k_write, targets, io.beta)
        r = mnm_read_autodiff(phi, io.k_read)                                             # 5.
        o = linear_autodiff(ad.concatenate([h, r], axis=1), tparams["out.W"], tparams["out.b"])   # 6.
        ys.append(linear_autodiff(o, tparams["head.W"], tparams["head.b"]))
        metas.append(mnm_recon_autodiff(phi, io.k_write, io.v_write))                    # 7.
    return ad.stack(ys, axis=0), ad.stack(metas, axis=0)


# ----------------------------------------------------------------- initialisation and model
def mnm_init(rng: np.random.Generator, config: MNMConfig) -> tuple[dict, dict | None]:
    """(params, mem0) with the reference code's initialisation (spec B2): the LSTM U(+-1/sqrt(H))
    (PyTorch LSTMCell), every linear map and bias U(+-1/sqrt(fan_in)) (PyTorch Linear), phi_0
    U(+-1/sqrt(n_{l-1})). mem0 holds phi_0 as fixed buffers, or is None with learn_init. (PyTorch's
    LSTM has two biases b_ih + b_hh; ctrl.b is their sum, here drawn once.)"""
    dtype, shapes = config.dtype, mnm_param_shapes(config)
    params = {}
    for name, shape in shapes.items():
        group = name.rsplit(".", 1)[0]
        if group == "ctrl":
            bound = 1.0 / np.sqrt(config.H)
        elif group == "mem0":
            bound = 1.0 / np.sqrt(shape[1])                        # (out, in) layout: fan_in = n_{l-1}
        else:                                                      # weight and bias share the fan_in
            bound = 1.0 / np.sqrt(shapes[group + (".w" if group == "beta" else ".W")][0])
        params[name] = init.uniform(rng, shape, bound, dtype=dtype)
    mem0 = None
    if not config.learn_init:
        mem0 = {name: init.uniform(rng, shape, 1.0 / np.sqrt(shape[1]), dtype=dtype)
                for name, shape in mem0_shapes(config).items()}
    return params, mem0


class MNM:
    """Metalearned Neural Memory as a model: xs (T, B, X) -> (ys (T', B, Y), meta (T', B)).

    model.params: ordered dict (names and layouts in the module docstring), read at call time.
    model.mem0: the fixed phi_0 buffers {"mem0.W1", ...}, or None with learn_init.
    forward(xs, state=None) -> (outputs, cache); backward(doutputs, cache) -> grads;
    forward_autodiff(tparams, xs, state=None, inner_grad="tape") -> (ys, meta) Tensors.
    The training objective of the reference code is L_task(ys) + meta.mean().
    """

    def __init__(self, config: MNMConfig, rng: np.random.Generator | None = None):
        if not isinstance(config, MNMConfig):
            raise ValueError(f"config must be an MNMConfig; got {type(config).__name__}")
        self.config = config
        self.params, self.mem0 = mnm_init(np.random.default_rng(0) if rng is None else rng, config)

    def forward(self, xs, state: MNMState | None = None):
        """((ys (T', B, Y), meta (T', B)), cache) (see mnm_forward)."""
        return mnm_forward(xs, self.params, self.config, self.mem0, state)

    def backward(self, doutputs, cache: MNMCache) -> dict:
        """Parameter gradients of sum(dys * ys) + sum(dmeta * meta) by BPTT (see mnm_backward)."""
        return mnm_backward(doutputs, cache)[0]

    def forward_autodiff(self, tparams: Mapping[str, ad.Tensor], xs, state: MNMState | None = None,
                         inner_grad: str = "tape") -> tuple[ad.Tensor, ad.Tensor]:
        return mnm_autodiff(tparams, xs, self.config, self.mem0, state, inner_grad)
