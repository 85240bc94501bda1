"""Differentiable Neural Computer (Graves et al. 2016, "Hybrid computing using a neural network with
dynamic external memory", Nature 538:471, Methods): a deep LSTM controller that writes to and reads
from an N x W memory through content lookup, dynamic allocation (a differentiable free list) and
temporal links. Paper mode: one write head, R read heads (spec specs/ntm_dnc_sam.md, Part B).

Shapes: B batch, T time, X input width, Y output width, N slots, W word size, R read heads,
H hidden size per controller layer, L controller layers (`layers`), I = W*R + 3W + 5R + 3.

One time step, spec B.3 (the Methods number only eqs. (1) allocation and (2) write weighting):
     1. chi_t = [x_t; r^1_{t-1}; ...; r^R_{t-1}]                               (B, X + RW)
     2. deep LSTM, layer l = 0..L-1 (h^{-1}_t absent):                         (B, H) per layer
        (h^l_t, s^l_t) = LSTM_l([chi_t; h^{l-1}_t], h^l_{t-1}, s^l_{t-1}),  h_t = [h^0_t; ...; h^{L-1}_t]
     3. v_t = h_t W_y + b_y,   xi_t = h_t W_xi + b_xi                           (B, Y), (B, I)
     4. interface split and squashed (minimem.memory.dnc_interface)
     5.-16. free, allocate, write, link, read (minimem.memory.dnc_access)
    17. y_t = v_t + [r^1_t; ...; r^R_t] W_r                                      (B, Y)
The memory writes before it reads: the write content lookup sees M_{t-1}, the reads see M_t.

Parameters (an ordered dict; the same names key gradients, checkpoints and golden files):
    `controller.layer{l}.W_x`  (X + R*W, 4H) for l = 0, (X + R*W + H, 4H) for l >= 1, used as
                               [chi_t; h^{l-1}_t] @ W_x: rows [0:X] act on x_t, rows [X:X+RW] on the
                               read vectors (head after head), rows [X+RW:] on the layer below.
    `controller.layer{l}.W_h`  (H, 4H), used as h^l_{t-1} @ W_h.
    `controller.layer{l}.b`    (4H,). Gate order i, f, g, o (minimem.nn.lstm); the paper's
                               W^l acting on [chi_t; h^l_{t-1}; h^{l-1}_t] is the row stack
                               [W_x[:X+RW]; W_h; W_x[X+RW:]], transposed. Forget bias starts at 1.
    `interface.W` (L*H, I), `interface.b` (I,): xi_t = h_t @ W + b; column layout in dnc_interface.
    `output.W` (L*H, Y), `output.b` (Y,): v_t = h_t @ W + b.
    `read_out.W` (R*W, Y): the read vectors' contribution [r^1_t; ...; r^R_t] @ W (no bias).
The paper has no biases on W_y and W_xi; deepmind/dnc has them on every map; minimem includes them
[B.10.1]. `output` and `read_out` together are deepmind/dnc's final Linear on [h_t; r_t].

Choices [spec B.10]: strengths oneplus (default) or softplus; read modes ordered (backward, content,
forward); usage differentiated w.r.t. w^w_{t-1} (paper, `usage_write_grad=True`) or not (deepmind/dnc
stop-gradient); allocation usage floor eps_a = 1e-6; stable sort, ties to the lower slot; deep LSTM
with skip connections from the input (L = 1 is deepmind/dnc's single LSTM); optional `clip` of
every layer's output h and cell state s to [-clip, clip] before use (deepmind/dnc uses 20; off by
default). The paper's elementwise clipping of controller-activation gradients during training
[B.4, B.10.8] is a training option of the manual backward, not part of the model function:
`DNC(..., controller_grad_clip=c)` (or dnc_backward's argument) clips the gradient w.r.t. every
controller layer's output h^l_t to [-c, c] at each step of BPTT, after the contributions of the
output maps, of step t+1 and of the layer above are summed and before it enters the LSTM cell's
backward. It is off (None) by default and in every gradcheck case; with it on, backward is no
longer the gradient of the forward.

Optional sparse link matrix [B.10.9]: `DNCConfig(link="sparse", link_K=K)` replaces the link
update of step 11 by minimem.memory.sparse_link (top-K of w^w_t and p_{t-1}, renormalised, then
links below 1/K dropped); the default link="dense" is the paper's exact link matrix.

Discrete choices: the free lists phi_t (and, in deepmind mode, the w^w_{t-1} values the usage saw)
are constants of the backward pass. forward records them in cache.record (a DNCRecord); passing
that record back as `frozen=` replays them, so finite differences do not straddle a sort kink.
With link="sparse" the record is a DNCSparseLinkRecord, which also holds each step's kept slots
and 1/K threshold mask.

Engines: DNC.forward / DNC.backward (hand-derived BPTT, vectorised over batch and heads, looping
over time and layers only) and DNC.forward_autodiff (the same equations with the primitives'
autodiff twins). The manual engine's time loop keeps only what feeds back: x_t's share of every
controller layer's eq. (1) is one product over all T before it (minimem.nn.lstm's lstm_feedback_*
functions, each layer reading [x_t; u^l_t] with u^0_t = r_{t-1}, u^l_t = [r_{t-1}; h^{l-1}_t]), steps 3
(v_t) and 17 are one product y_t = [h_t; r_t] @ [output.W; read_out.W] + output.b over all (T, B) rows
after it, and BPTT forms every weight gradient after its loop, one product per weight.
forward(xs, state) carries a DNCState, so T steps at once equal T/2 + T/2 with the final state
passed on; backward_with_state chains gradients across such chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem.checks import check_int
from minimem.memory.allocation import ALLOCATION_EPS
from minimem.memory.dnc_access import MemoryState, access_autodiff, access_backward, access_forward
from minimem.memory.dnc_interface import (
    STRENGTHS, interface_autodiff, interface_backward, interface_forward, interface_size,
)
from minimem.memory.sparse_link import DEFAULT_K, SparseLinkChoice, check_link_K
from minimem.nn.linear import (
    as_float_array, check_finite, check_params, linear_autodiff, linear_init, strip_prefix, with_prefix,
)
from minimem.nn.lstm import (
    lstm_external_share, lstm_feedback_params, lstm_feedback_step_backward, lstm_feedback_step_forward,
    lstm_feedback_weight_gradients, lstm_init, lstm_step_autodiff,
)


# ----------------------------------------------------------------- configuration
LINKS = ("dense", "sparse")     # DNCConfig.link: the paper's link matrix, or the sparse one of B.10.9


@dataclass(frozen=True)
class DNCConfig:
    """Sizes and options of a DNC (spec B.2, B.10).

    X, Y: input and output widths. N, W: memory slots and word size. R: read heads.
    H: hidden size of each controller layer. layers: L, the depth of the controller (1 = one LSTM).
    strengths: "oneplus" (paper) or "softplus" (deepmind/dnc) for the key strengths.
    usage_write_grad: True (paper) or False (deepmind/dnc stop-gradient on w^w_{t-1} in the usage).
    eps_a: allocation usage floor in [0, 1). clip: None, or the bound of deepmind/dnc's clipping of
    the controller output and state. forget_bias: initial forget-gate bias. dtype: "float64" or "float32".
    link: "dense" (paper, B.3 step 11) or "sparse" (Methods "Sparse link matrix", B.10.9).
    link_K: entries kept by the sparse link, 1 <= link_K <= N (used only with link="sparse").
    """
    X: int
    Y: int
    N: int = 16
    W: int = 8
    R: int = 2
    H: int = 64
    layers: int = 1
    strengths: str = "oneplus"
    usage_write_grad: bool = True
    eps_a: float = ALLOCATION_EPS
    clip: float | None = None
    forget_bias: float = 1.0
    dtype: str = "float64"
    link: str = "dense"
    link_K: int = DEFAULT_K

    def __post_init__(self) -> None:
        for name in ("X", "Y", "N", "W", "R", "H", "layers"):
            check_int(f"DNCConfig.{name}", getattr(self, name), 1)
        if self.strengths not in STRENGTHS:
            raise ValueError(f"DNCConfig.strengths must be one of {STRENGTHS}; got {self.strengths!r}")
        if not isinstance(self.usage_write_grad, (bool, np.bool_)):
            raise ValueError(f"DNCConfig.usage_write_grad must be True (paper) or False (deepmind); "
                             f"got {self.usage_write_grad!r}")
        if not (isinstance(self.eps_a, (int, float)) and 0.0 <= self.eps_a < 1.0):
            raise ValueError(f"DNCConfig.eps_a must be a number in [0, 1); got {self.eps_a!r}")
        if self.clip is not None and not (isinstance(self.clip, (int, float)) and np.isfinite(self.clip)
                                          and self.clip > 0):
            raise ValueError(f"DNCConfig.clip must be None or a positive number; got {self.clip!r}")
        if not (isinstance(self.forget_bias, (int, float)) and np.isfinite(self.forget_bias)):
            raise ValueError(f"DNCConfig.forget_bias must be a finite number; got {self.forget_bias!r}")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"DNCConfig.dtype must be 'float64' or 'float32'; got {self.dtype!r}")
        if self.link not in LINKS:
            raise ValueError(f"DNCConfig.link must be one of {LINKS}; got {self.link!r}")
        check_int("DNCConfig.link_K", self.link_K, 1)
        if self.link == "sparse" and self.link_K > self.N:
            raise ValueError(f"DNCConfig.link_K must satisfy 1 <= link_K <= N = {self.N}; got {self.link_K}")

    @property
    def I(self) -> int:
        """Interface size W*R + 3W + 5R + 3."""
        return interface_size(self.R, self.W)


def param_shapes(config: DNCConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in the order of model.params (layouts: module docstring)."""
    X, Y, R, W, H, layers = config.X, config.Y, config.R, config.W, config.H, config.layers
    shapes: dict[str, tuple[int, ...]] = {}
    for l in range(layers):
        shapes[f"controller.layer{l}.W_x"] = (X + R * W + (H if l else 0), 4 * H)
        shapes[f"controller.layer{l}.W_h"] = (H, 4 * H)
        shapes[f"controller.layer{l}.b"] = (4 * H,)
    shapes["interface.W"], shapes["interface.b"] = (layers * H, config.I), (config.I,)
    shapes["output.W"], shapes["output.b"] = (layers * H, Y), (Y,)
    shapes["read_out.W"] = (R * W, Y)
    return shapes


# ----------------------------------------------------------------- state, record, validation
class DNCState(NamedTuple):
    """Everything carried from step t to t+1 (spec B.2); zeros at a sequence start."""
    M: np.ndarray        # (B, N, W) memory
    u: np.ndarray        # (B, N) usage
    p: np.ndarray        # (B, N) precedence
    L: np.ndarray        # (B, N, N) temporal link matrix
    w_w: np.ndarray      # (B, N) write weighting
    w_r: np.ndarray      # (B, R, N) read weightings
    r: np.ndarray        # (B, R, W) read vectors
    h: np.ndarray        # (layers, B, H) controller outputs h^l
    c: np.ndarray        # (layers, B, H) controller cell states (s^l in the paper)

    @property
    def memory(self) -> MemoryState:
        return MemoryState(*self[:7])


class DNCRecord(NamedTuple):
    """The non-differentiated choices of a forward pass, replayable with forward(..., frozen=record)."""
    phi: np.ndarray          # (T, B, N) int, the free list of every step (ascending floored usage)
    usage_w_w: np.ndarray    # (T, B, N) the w^w_{t-1} each usage update used (replayed in deepmind mode only)


class DNCSparseLinkRecord(NamedTuple):
    """A DNCRecord plus the sparse link's choices (config.link == "sparse"), replayable likewise."""
    phi: np.ndarray          # (T, B, N) int, as DNCRecord.phi
    usage_w_w: np.ndarray    # (T, B, N), as DNCRecord.usage_w_w
    link_top_w: np.ndarray   # (T, B, K) int, the slots of w^w_t kept by the sparse link
    link_top_p: np.ndarray   # (T, B, K) int, the slots of p_{t-1} kept
    link_keep: np.ndarray    # (T, B, N, N) bool, the link entries that passed the 1/K threshold


def initial_state(config: DNCConfig, B: int, N: int | None = None) -> DNCState:
    """All-zero state for a batch of B; N overrides config.N (the trained weights do not depend on N)."""
    N = config.N if N is None else N
    check_int("B", B, 1)
    check_int("N", N, 1)
    R, W, H, layers, dtype = config.R, config.W, config.H, config.layers, np.dtype(config.dtype)
    zeros = lambda *shape: np.zeros(shape, dtype=dtype)
    return DNCState(zeros(B, N, W), zeros(B, N), zeros(B, N), zeros(B, N, N), zeros(B, N),
                    zeros(B, R, N), zeros(B, R, W), zeros(layers, B, H), zeros(layers, B, H))


def _check_inputs(xs, config: DNCConfig) -> np.ndarray:
    xs = as_float_array("xs", xs)
    if xs.ndim != 3 or xs.shape[2] != config.X or xs.shape[0] == 0 or xs.shape[1] == 0:
        raise ValueError(f"xs must have shape (T, B, X) with T >= 1, B >= 1 and X={config.X}; got {xs.shape}")
    check_finite("xs", xs)
    return xs.astype(config.dtype, copy=False)


def _check_state(state, config: DNCConfig, B: int, ranges: bool = True) -> DNCState:
    """A DNCState of float arrays with the shapes of the legend below, finite; with `ranges` (a
    state, not a gradient) also in the ranges of spec B.2 (_check_state_ranges)."""
    if not isinstance(state, tuple) or len(state) != len(DNCState._fields):
        raise ValueError(f"state must be a DNCState {DNCState._fields}; got {type(state).__name__}")
    state = DNCState(*(as_float_array(f"state.{n}", a) for n, a in zip(DNCState._fields, state)))
    if state.M.ndim != 3 or state.M.shape[1] < 1:
        raise ValueError(f"state.M must have shape (B, N, W) with N >= 1; got {state.M.shape}")
    N, R, W, H, layers = state.M.shape[1], config.R, config.W, config.H, config.layers
    expected = {"M": (B, N, W), "u": (B, N), "p": (B, N), "L": (B, N, N), "w_w": (B, N), "w_r": (B, R, N),
                "r": (B, R, W), "h": (layers, B, H), "c": (layers, B, H)}
    legend = {"M": "(B, N, W)", "u": "(B, N)", "p": "(B, N)", "L": "(B, N, N)", "w_w": "(B, N)",
              "w_r": "(B, R, N)", "r": "(B, R, W)", "h": "(layers, B, H)", "c": "(layers, B, H)"}
    for name, shape in expected.items():
        value = getattr(state, name)
        if value.shape != shape:
            raise ValueError(f"state.{name} must have shape {legend[name]} = {shape}; got {value.shape}")
        check_finite(f"state.{name}", value)
    if ranges:
        _check_state_ranges(state)
    return state


def _check_state_ranges(state: DNCState) -> None:
    """ValueError unless u_t is in [0, 1]^N, p_t, w^w_t and each w^{r,i}_t are in Delta_N (entries
    in [0, 1], sum <= 1) and L_t has entries in [0, 1] (spec B.2, B.9). The tolerance absorbs
    rounding (1e-9 in float64, 1e-4 in float32); anything further out is not a DNC state, and
    e.g. a usage above 1 would turn allocation weights negative without any error."""
    tol = 1e-9 if state.u.dtype == np.float64 else 1e-4
    for name, legend in (("u", "(B, N) with entries in [0, 1]"), ("L", "(B, N, N) with entries in [0, 1]"),
                         ("p", "(B, N) in Delta_N"), ("w_w", "(B, N) in Delta_N"),
                         ("w_r", "(B, R, N) in Delta_N")):
        value = getattr(state, name)
        if np.any(value < -tol) or np.any(value > 1 + tol):
            raise ValueError(f"state.{name} must be {legend}; got entries in "
                             f"[{np.min(value):.6g}, {np.max(value):.6g}]")
        if "Delta_N" in legend and np.any(np.sum(value, axis=-1) > 1 + tol):
            raise ValueError(f"state.{name} must be {legend} (entries in [0, 1], each weighting summing to "
                             f"at most 1); got a sum of {np.max(np.sum(value, axis=-1)):.6g}")


def _check_frozen(frozen, config: DNCConfig, T: int, B: int, N: int) -> None:
    kind = DNCSparseLinkRecord if config.link == "sparse" else DNCRecord
    if not isinstance(frozen, kind):
        raise ValueError(f"frozen must be a {kind.__name__} (cache.record of an earlier forward); "
                         f"got {type(frozen).__name__}")
    if kind is DNCSparseLinkRecord:
        K = check_link_K(config.link_K, N)
        for name, shape in (("link_top_w", (T, B, K)), ("link_top_p", (T, B, K)), ("link_keep", (T, B, N, N))):
            if np.shape(getattr(frozen, name)) != shape:
                raise ValueError(f"frozen.{name} must have shape {shape}; got {np.shape(getattr(frozen, name))}")
    phi = np.asarray(frozen.phi)
    if phi.shape != (T, B, N) or phi.dtype.kind not in "iu":
        raise ValueError(f"frozen.phi must be an integer array of shape (T, B, N) = {(T, B, N)}; "
                         f"got {phi.dtype} {phi.shape}")
    if not config.usage_write_grad and np.shape(frozen.usage_w_w) != (T, B, N):
        raise ValueError(f"frozen.usage_w_w must have shape (T, B, N) = {(T, B, N)} in deepmind mode "
                         f"(usage_write_grad=False); got {np.shape(frozen.usage_w_w)}")


# ----------------------------------------------------------------- the parameters arranged for the manual engine
# Every controller layer reads [x_t; u^l_t] with u^0_t = r_{t-1} and u^l_t = [r_{t-1}; h^{l-1}_t] for
# l >= 1 (the rows of W_x after the first X are in this order): x_t is known before the time loop, so
# its share of each layer's eq. (1) is one product over all T (lstm_external_share), and the loop forms
# one product [u^l_t; h^l_{t-1}] @ [W_x[X:]; W_h] per layer and step (minimem.nn.lstm's lstm_feedback_*).
# y_t (step 17, with v_t of step 3) feeds nothing back: it is one product over all (T, B) rows
# [h_t; r_t] after the loop, and every weight gradient is one product over all steps after BPTT's loop.
class DNCWeights(NamedTuple):
    """The parameters arranged once per sequence (dnc_weights)."""
    lstm: tuple               # per layer l, the LSTMFeedbackParams of controller.layer{l}.* (X = config.X)
    interface_W: np.ndarray   # (L*H, I)
    interface_b: np.ndarray   # (I,)
    out_W: np.ndarray         # (L*H + R*W, Y) the row stack [output.W; read_out.W]
    out_b: np.ndarray         # (Y,) output.b: y_t = [h_t; r_t] @ out_W + out_b (steps 3 and 17)


def _layer_params(params: Mapping, l: int) -> dict:
    return strip_prefix(f"controller.layer{l}", params)


def dnc_weights(params: Mapping, config: DNCConfig) -> DNCWeights:
    """The manual engine's arrangement of `params` (no validation: DNC.forward does that)."""
    lstm = tuple(lstm_feedback_params(_layer_params(params, l), config.X) for l in range(config.layers))
    out_W = np.concatenate([params["output.W"], params["read_out.W"]], axis=0)
    return DNCWeights(lstm, params["interface.W"], params["interface.b"], out_W, params["output.b"])


# ----------------------------------------------------------------- controller, B.3 step 2
class ControllerCache(NamedTuple):
    layers: tuple        # one LSTMFeedbackCache per layer
    masks: tuple         # per layer (|h| <= clip, |s| <= clip) boolean (B, H) pairs; () without clip


def controller_external_shares(xs: np.ndarray, weights: DNCWeights) -> list:
    """x_t's share x_t W_x[:X] + b of every layer's eq. (1) for all steps at once: a list of L
    arrays (T, B, 4H), sign-scaled for lstm_feedback_step_forward (before the time loop)."""
    return [lstm_external_share(xs, split) for split in weights.lstm]


def controller_step_forward(z_ext, r_prev: np.ndarray, h_prev: np.ndarray, c_prev: np.ndarray,
                            lstm: tuple, clip: float | None = None):
    """Deep LSTM with skip connections from the input, spec B.3 step 2 (chi_t = [x_t; r_{t-1}], step 1,
    enters as x_t's hoisted share and r_{t-1}).

    Args:
        z_ext: per layer, x_t's share (B, 4H) of eq. (1) (controller_external_shares(xs)[l][t]).
        r_prev: (B, R*W) the read vectors r_{t-1}, head after head.
        h_prev, c_prev: (layers, B, H) outputs and cell states of step t-1.
        lstm: per layer, its LSTMFeedbackParams (DNCWeights.lstm).
        clip: None, or the bound applied to each layer's new h and s (deepmind/dnc).
    Returns:
        h, c: (layers, B, H) the new outputs and cell states, and the ControllerCache.
    """
    hs, cs, caches, masks = [], [], [], []
    for l, split in enumerate(lstm):
        u = r_prev if l == 0 else np.concatenate([r_prev, hs[-1]], axis=1)      # (B, RW [+H])
        (h, c), cache = lstm_feedback_step_forward(z_ext[l], u, h_prev[l], c_prev[l], split)
        if clip is not None:
            masks.append((np.abs(h) <= clip, np.abs(c) <= clip))
            h, c = np.clip(h, -clip, clip), np.clip(c, -clip, clip)
        hs.append(h)
        cs.append(c)
        caches.append(cache)
    return np.stack(hs), np.stack(cs), ControllerCache(tuple(caches), tuple(masks))   # (layers, B, H)


def controller_step_backward(dh: np.ndarray, dc: np.ndarray, cache: ControllerCache, lstm: tuple,
                             grad_clip: float | None = None, dz_out: np.ndarray | None = None):
    """Adjoint of controller_step_forward (with grad_clip, a training surrogate of it), without the
    weight gradients: they are formed after BPTT's loop from the returned dz (dnc_backward).

    Args:
        dh: (layers, B, H) gradient w.r.t. each layer's output h^l_t from this step's output maps
            and from step t+1 (the gradient from the layer above at this step is added here).
        dc: (layers, B, H) gradient w.r.t. s^l_t carried from step t+1.
        lstm: per layer, the LSTMFeedbackParams of the forward.
        grad_clip: None, or c > 0: each layer's whole gradient w.r.t. h^l_t (dh[l] plus the layer
            above's) is clipped elementwise to [-c, c] before the cell's backward [B.4, B.10.8].
        dz_out: optional (layers, B, 4H) array to receive each layer's dz; None: a new array.
    Returns:
        dr_prev (B, R*W) (the gradient w.r.t. r_{t-1} through every layer's input; x_t's is not
        needed), dh_prev and dc_prev (layers, B, H), dz (layers, B, 4H) each layer's eq. (1) gradient.
    """
    L, B, H = dh.shape
    dh_prev, dc_prev = np.empty_like(dh), np.empty_like(dc)
    dz = np.empty((L, B, 4 * H), dtype=np.result_type(dh, dc, cache.layers[0].gates)) if dz_out is None else dz_out
    RW = lstm[0].U
    dr, dh_from_above = 0.0, 0.0
    for l in reversed(range(L)):
        dh_l, dc_l = dh[l] + dh_from_above, dc[l]
        if grad_clip is not None:                                # the paper's training-time clip
            dh_l = np.clip(dh_l, -grad_clip, grad_clip)
        if cache.masks:                                          # the clip passes gradient inside
            dh_l, dc_l = dh_l * cache.masks[l][0], dc_l * cache.masks[l][1]
        du, dh_prev[l], dc_prev[l], dz[l] = lstm_feedback_step_backward(dh_l, dc_l, cache.layers[l], lstm[l])
        dr = dr + du[:, :RW]                                     # every layer sees r_{t-1}
        dh_from_above = du[:, RW:]                               # (B, H) to layer l-1 (empty at l = 0)
    return dr, dh_prev, dc_prev, dz


# ----------------------------------------------------------------- one time step, B.3 steps 1-16
class DNCStepCache(NamedTuple):
    controller: ControllerCache   # step 2
    interface: object             # step 4, InterfaceCache
    access: object                # steps 5-16, AccessCache


def _step_forward(z_ext, state: DNCState, weights: DNCWeights, config: DNCConfig, hr: np.ndarray,
                  phi=None, usage_w_w=None, link_choice=None, link_out=None):
    """Steps 1-16 of one step (17 is left to the caller): writes [h_t; r_t] into the row block hr
    (B, L*H + R*W) and returns the DNCState at t and the DNCStepCache. Arguments as dnc_step_forward."""
    B, R, W = state.r.shape
    h, c, c_controller = controller_step_forward(z_ext, state.r.reshape(B, R * W), state.h, state.c,
                                                 weights.lstm, config.clip)             # 1.-2. (layers, B, H)
    h_cat = h[0] if config.layers == 1 else np.concatenate(list(h), axis=1)             # (B, L*H)
    xi = h_cat @ weights.interface_W                                                    # 3. (B, I)
    xi += weights.interface_b
    iface, c_interface = interface_forward(xi, R, W, config.strengths)                  # 4.
    link_K = config.link_K if config.link == "sparse" else None
    memory, c_access = access_forward(state.memory, iface, config.usage_write_grad,
                                      config.eps_a, phi, usage_w_w, link_K, link_choice,
                                      link_out)                                         # 5.-16.
    LH = h_cat.shape[1]
    hr[:, :LH], hr[:, LH:] = h_cat, memory.r.reshape(B, R * W)                          # 3., 17. after the loop
    return DNCState(*memory, h, c), DNCStepCache(c_controller, c_interface, c_access)


def _state_dtype(xs: np.ndarray, state: DNCState, params: Mapping) -> np.dtype:
    return np.result_type(xs, *state, *params.values())


def dnc_step_forward(x: np.ndarray, state: DNCState, params: Mapping, config: DNCConfig,
                     phi: np.ndarray | None = None, usage_w_w: np.ndarray | None = None,
                     link_choice: SparseLinkChoice | None = None, link_out: np.ndarray | None = None):
    """One DNC step alone, spec B.3 steps 1-17 (to run a DNC online; dnc_forward does the same work
    with x_t's share and step 17 hoisted out of its time loop, and returns what BPTT needs).

    Args:
        x: (B, X) input x_t. state: DNCState at t-1. params: the model's params.
        phi: (B, N) int free list to replay (None: sort). usage_w_w: (B, N) recorded w^w_{t-1} for
            the usage update (deepmind mode replay; None: state.w_w). link_choice: the sparse
            link's choices to replay (link="sparse" only; None: choose afresh).
        link_out: optional (B, N, N) array to hold the new dense link matrix L_t; None: a new array.
    Returns:
        y: (B, Y) output, the DNCState at t, and the DNCStepCache.
    """
    weights = dnc_weights(params, config)
    hr = np.empty((x.shape[0], weights.out_W.shape[0]), dtype=_state_dtype(x, state, params))
    z_ext = [z[0] for z in controller_external_shares(x[None], weights)]
    state, cache = _step_forward(z_ext, state, weights, config, hr, phi, usage_w_w, link_choice, link_out)
    y = hr @ weights.out_W                                                              # 17. (B, Y)
    y += weights.out_b
    return y, state, cache


def dnc_step_backward(dhr: np.ndarray, dstate: DNCState, cache: DNCStepCache, weights: DNCWeights,
                      config: DNCConfig, controller_grad_clip: float | None = None,
                      dz_out: np.ndarray | None = None):
    """Adjoint of steps 1-16 of one step, without the weight gradients (dnc_backward forms them
    after its loop from the returned dxi and dz).

    Args:
        dhr: (B, L*H + R*W) this step's gradient w.r.t. [h_t; r_t] from y_t (steps 3 and 17, formed
            for every step at once before the loop).
        dstate: DNCState of gradients w.r.t. the state at t, carried from step t+1 (zeros at t = T).
        weights: the DNCWeights of the forward (DNCCache.weights).
        controller_grad_clip: None, or c: clip the gradients w.r.t. the controller outputs h^l_t
            to [-c, c] (controller_step_backward; a training option, off for gradient checks).
        dz_out: optional (layers, B, 4H) array to receive the controller's dz.
    Returns:
        dstate_prev (gradients w.r.t. the state at t-1, to carry to step t-1), dxi (B, I) the
        gradient w.r.t. the interface vector, dz (layers, B, 4H) each controller layer's eq. (1) gradient.
    """
    B, R, W = dstate.r.shape
    LH = config.layers * config.H
    dmemory = dstate.memory._replace(r=dstate.r + dhr[:, LH:].reshape(B, R, W))          # 17.
    dmemory_prev, dinterface = access_backward(dmemory, cache.access)                 # 16.-5.
    dxi = interface_backward(dinterface, cache.interface)                              # 4.
    dh = dxi @ weights.interface_W.T                                                   # 3. (B, L*H)
    dh += dhr[:, :LH]                                                                  # 3. v_t
    dh = dh.reshape(B, config.layers, config.H).transpose(1, 0, 2) + dstate.h          # (layers, B, H)
    dr_prev, dh_prev, dc_prev, dz = controller_step_backward(dh, dstate.c, cache.controller, weights.lstm,
                                                             controller_grad_clip, dz_out)             # 2.
    return DNCState(*dmemory_prev[:6], dr_prev.reshape(B, R, W), dh_prev, dc_prev), dxi, dz       # 1.


# ----------------------------------------------------------------- a sequence, BPTT
class DNCCache(NamedTuple):
    config: DNCConfig
    xs: np.ndarray           # (T, B, X) inputs
    state0: DNCState         # the initial state
    steps: list              # T DNCStepCache
    states: list             # T DNCState: the state after each step (states[-1] is the final state)
    record: DNCRecord        # free lists and usage write weights, to replay with frozen=
    weights: DNCWeights      # the parameters as the forward arranged them
    hr: np.ndarray           # (T, B, L*H + R*W) the rows [h_t; r_t] of steps 3 and 17

    @property
    def final_state(self) -> DNCState:
        return self.states[-1]


def dnc_forward(params: Mapping, xs: np.ndarray, config: DNCConfig, state: DNCState | None = None,
                frozen: DNCRecord | None = None) -> tuple[np.ndarray, DNCCache]:
    """Run the DNC over a sequence (no validation of params: DNC.forward does that).

    x_t's share of every controller layer's eq. (1) is one product before the time loop, and the
    outputs y_t = [h_t; r_t] @ [output.W; read_out.W] + output.b one product after it.

    Args:
        params: the parameter dict. xs: (T, B, X) inputs. config: DNCConfig.
        state: DNCState to start from (None: zeros with config.N slots; any N works).
        frozen: DNCRecord of an earlier pass to replay its free lists (and, in deepmind mode, the
            usage's w^w_{t-1}); None sorts afresh.
    Returns:
        ys (T, B, Y), and the DNCCache (final state: cache.final_state; choices: cache.record).
    """
    xs = _check_inputs(xs, config)
    T, B, _ = xs.shape
    state = initial_state(config, B) if state is None else _check_state(state, config, B)
    if frozen is not None:
        _check_frozen(frozen, config, T, B, state.M.shape[1])
    replay_usage = frozen is not None and not config.usage_write_grad
    weights = dnc_weights(params, config)
    z_ext = controller_external_shares(xs, weights)                                    # 1.-2., x_t's share
    hr = np.empty((T, B, weights.out_W.shape[0]), dtype=_state_dtype(xs, state, params))
    # The T dense link matrices L_1..L_T (all kept for BPTT) live in one (T, B, N, N) array. Made
    # as T separate (B, N, N) arrays they were handed back to the system by the C allocator at the
    # end of every training step and page-faulted back in by the next (about 2,700 faults per step
    # at N = 64, B = 16, T = 20, float64); one block of this size is kept and reused by glibc's
    # malloc instead. Same values either way. (With parameters of another dtype than the state,
    # link_forward finds this array's dtype wrong and makes its own arrays.)
    links = np.empty((T,) + state.L.shape, dtype=np.result_type(xs, *state)) if config.link == "dense" else None
    state0, steps, states = state, [], []
    for t in range(T):
        phi = None if frozen is None else frozen.phi[t]
        usage_w_w = frozen.usage_w_w[t] if replay_usage else None
        state, step = _step_forward([z[t] for z in z_ext], state, weights, config, hr[t], phi, usage_w_w,
                                    _link_choice(frozen, t, config), None if links is None else links[t])
        steps.append(step)
        states.append(state)
    ys = hr.reshape(T * B, -1) @ weights.out_W                                         # 17. all t at once
    ys += weights.out_b
    ys = ys.reshape(T, B, -1).astype(np.result_type(xs, params["output.W"]), copy=False)
    record = DNCRecord(np.stack([s.access.phi for s in steps]), np.stack([s.access.usage_w_w for s in steps]))
    if config.link == "sparse":
        choices = [np.stack([s.access.link.choice[k] for s in steps]) for k in range(3)]   # top_w, top_p, keep
        record = DNCSparseLinkRecord(*record, *choices)
    return ys, DNCCache(config, xs, state0, steps, states, record, weights, hr)


def _link_choice(frozen, t: int, config: DNCConfig) -> SparseLinkChoice | None:
    """Step t's sparse link choices from a frozen record (None: dense link, or nothing to replay)."""
    if frozen is None or config.link != "sparse":
        return None
    return SparseLinkChoice(frozen.link_top_w[t], frozen.link_top_p[t], frozen.link_keep[t])


def check_controller_grad_clip(value) -> float | None:
    """None (off) or a positive finite number, as a float; ValueError otherwise."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not (np.isfinite(value) and value > 0):
        raise ValueError(f"controller_grad_clip must be None (off) or a positive finite number; got {value!r}")
    return float(value)


def dnc_backward(dys: np.ndarray, cache: DNCCache, dstate: DNCState | None = None,
                 controller_grad_clip: float | None = None):
    """BPTT through dnc_forward.

    dys (T, B, Y) holds only each step's loss gradient w.r.t. y_t. Carried from step t+1 to t, as a
    DNCState of gradients: dM, du, dp, dL, dw^w, dw^r (R heads), dr (through chi_{t+1}) and, per
    controller layer, dh and ds. dstate is the gradient w.r.t. the final state (from a later chunk
    of the sequence; None: zeros). controller_grad_clip: None (the exact gradient), or c > 0 to
    clip the gradient w.r.t. every controller output h^l_t to [-c, c] during BPTT [B.4, B.10.8].
    Steps 3 and 17's share of y_t (which feeds nothing back) is one product over all t before the
    loop; every weight gradient is one product over all (T, B) rows after it (the weights are
    shared by every step; the sums equal the per-step sums up to rounding).
    Returns (grads keyed like the params, dstate0 = gradient w.r.t. the initial state).
    """
    config, weights = cache.config, cache.weights
    T, B = cache.xs.shape[:2]
    controller_grad_clip = check_controller_grad_clip(controller_grad_clip)
    dys = as_float_array("dys", dys)
    if dys.shape != (T, B, config.Y):
        raise ValueError(f"dys must have the outputs' shape (T, B, Y) = {(T, B, config.Y)}; got {dys.shape}")
    check_finite("dys", dys)
    carry = DNCState(*(np.zeros_like(a) for a in cache.final_state)) if dstate is None \
        else _check_state(dstate, config, B, ranges=False)
    L, H, LH = config.layers, config.H, config.layers * config.H
    dtype = np.result_type(dys, cache.hr)
    dys_flat, hr_flat = dys.reshape(T * B, config.Y), cache.hr.reshape(T * B, -1)
    dHR = (dys_flat @ weights.out_W.T).reshape(T, B, -1)                               # 17., 3. v_t
    dXI, dZ = np.empty((T, B, config.I), dtype=dtype), np.empty((L, T, B, 4 * H), dtype=dtype)
    for t in reversed(range(T)):
        carry, dXI[t], _ = dnc_step_backward(dHR[t], carry, cache.steps[t], weights, config,
                                             controller_grad_clip, dZ[:, t])
    grads: dict[str, np.ndarray] = {}
    for l, split in enumerate(weights.lstm):                                           # 2.
        grads.update(with_prefix(f"controller.layer{l}", lstm_feedback_weight_gradients(
            cache.xs, [step.controller.layers[l] for step in cache.steps], dZ[l], split)))
    dXI_flat = dXI.reshape(T * B, config.I)
    grads["interface.W"] = hr_flat[:, :LH].T @ dXI_flat                                # 3. xi_t
    grads["interface.b"] = dXI_flat.sum(axis=0)
    dW_out = hr_flat.T @ dys_flat                                                      # 3. v_t and 17.
    grads["output.W"], grads["output.b"], grads["read_out.W"] = dW_out[:LH], dys_flat.sum(axis=0), dW_out[LH:]
    grads = {name: grads[name].astype(dys.dtype, copy=False) for name in param_shapes(config)}
    return grads, carry


# ----------------------------------------------------------------- autodiff twin
def dnc_autodiff(tparams: Mapping[str, ad.Tensor], xs: np.ndarray, config: DNCConfig,
                 state: DNCState | None = None, frozen: DNCRecord | None = None) -> ad.Tensor:
    """Autodiff twin of dnc_forward: the same equations with the primitives' autodiff twins.

    Returns ys (T, B, Y) as a Tensor. Without `frozen`, the allocation sorts the Tensor values.
    """
    xs = _check_inputs(xs, config)
    T, B, _ = xs.shape
    state = initial_state(config, B) if state is None else _check_state(state, config, B)
    if frozen is not None:
        _check_frozen(frozen, config, T, B, state.M.shape[1])
    R, W, clip = config.R, config.W, config.clip
    state = DNCState(*(ad.Tensor(a) for a in state))
    ys = []
    for t in range(T):
        chi = ad.concatenate([ad.Tensor(xs[t]), ad.reshape(state.r, (B, R * W))], axis=1)       # 1.
        hs, cs = [], []
        for l in range(config.layers):                                                          # 2.
            layer_input = chi if l == 0 else ad.concatenate([chi, hs[-1]], axis=1)
            h, c = lstm_step_autodiff(layer_input, state.h[l], state.c[l], _layer_params(tparams, l))
            if clip is not None:
                h, c = ad.clip(h, -clip, clip), ad.clip(c, -clip, clip)
            hs.append(h)
            cs.append(c)
        h_cat = ad.concatenate(hs, axis=1)                                                      # (B, L*H)
        v = linear_autodiff(h_cat, tparams["output.W"], tparams["output.b"])                   # 3.
        xi = linear_autodiff(h_cat, tparams["interface.W"], tparams["interface.b"])            # 3.
        iface = interface_autodiff(xi, R, W, config.strengths)                                  # 4.
        phi = None if frozen is None else frozen.phi[t]
        usage_w_w = None if frozen is None or config.usage_write_grad else frozen.usage_w_w[t]
        link_K = config.link_K if config.link == "sparse" else None
        memory = access_autodiff(state.memory, iface, config.usage_write_grad, config.eps_a,
                                 phi, usage_w_w, link_K, _link_choice(frozen, t, config))       # 5.-16.
        ys.append(v + linear_autodiff(ad.reshape(memory.r, (B, R * W)), tparams["read_out.W"]))  # 17.
        state = DNCState(*memory, ad.stack(hs), ad.stack(cs))
    return ad.stack(ys, axis=0)                                                                 # (T, B, Y)


# ----------------------------------------------------------------- initialisation and model
def dnc_init(rng: np.random.Generator, config: DNCConfig) -> dict[str, np.ndarray]:
    """Parameters in the order of param_shapes: LSTM layers as minimem.nn.lstm.lstm_init (Xavier
    input weights, orthogonal recurrent weights, forget bias config.forget_bias), Xavier-uniform
    linear maps with zero biases."""
    X, Y, R, W, H, layers, dtype = config.X, config.Y, config.R, config.W, config.H, config.layers, config.dtype
    params: dict[str, np.ndarray] = {}
    for l in range(layers):
        params.update(with_prefix(f"controller.layer{l}",
                                  lstm_init(rng, X + R * W + (H if l else 0), H, config.forget_bias, dtype)))
    params.update(with_prefix("interface", linear_init(rng, layers * H, config.I, dtype=dtype)))
    params.update(with_prefix("output", linear_init(rng, layers * H, Y, dtype=dtype)))
    params.update(with_prefix("read_out", linear_init(rng, R * W, Y, bias=False, dtype=dtype)))
    return params


class DNC:
    """The DNC as a model (protocol of DESIGN.md): xs (T, B, X) -> ys (T, B, Y) logits.

        model = DNC(DNCConfig(X=7, Y=6), rng=np.random.default_rng(0))
        ys, cache = model.forward(xs)                 # cache.final_state, cache.record
        grads = model.backward(dys, cache)            # keys of model.params
        ys_t = model.forward_autodiff(tparams, xs)    # Tensor, the independent engine

    model.params is read at call time (optimisers update it in place). controller_grad_clip (None:
    off) is the paper's training-time clip of the controller-activation gradients, used by
    backward and backward_with_state only [B.10.8]; leave it off to gradient-check.
    """

    def __init__(self, config: DNCConfig, rng: np.random.Generator | None = None, *,
                 controller_grad_clip: float | None = None):
        if not isinstance(config, DNCConfig):
            raise ValueError(f"config must be a DNCConfig; got {type(config).__name__}")
        self.config = config
        self.controller_grad_clip = check_controller_grad_clip(controller_grad_clip)
        self.params = dnc_init(np.random.default_rng(0) if rng is None else rng, config)

    def initial_state(self, B: int, N: int | None = None) -> DNCState:
        """Zero state for B sequences; N overrides config.N (memory-size independence, spec B.9)."""
        return initial_state(self.config, B, N)

    def _check_params(self, params: Mapping) -> None:
        check_params(params, param_shapes(self.config))
        for name, value in params.items():
            value = np.asarray(value.data if isinstance(value, ad.Tensor) else value)
            if value.dtype not in (np.float32, np.float64):
                raise ValueError(f"parameter {name} must be a float32 or float64 array; got dtype {value.dtype}")
            check_finite(f"parameter {name}", value)

    def forward(self, xs: np.ndarray, state: DNCState | None = None,
                frozen: DNCRecord | None = None) -> tuple[np.ndarray, DNCCache]:
        """ys (T, B, Y) and the cache (see dnc_forward for state and frozen)."""
        self._check_params(self.params)
        return dnc_forward(self.params, xs, self.config, state, frozen)

    def backward(self, dys: np.ndarray, cache: DNCCache) -> dict[str, np.ndarray]:
        """Gradients of sum(dys * ys) w.r.t. every parameter (BPTT, see dnc_backward)."""
        return self.backward_with_state(dys, cache)[0]

    def backward_with_state(self, dys: np.ndarray, cache: DNCCache,
                            dstate: DNCState | None = None) -> tuple[dict[str, np.ndarray], DNCState]:
        """(grads, dstate0): also takes the gradient w.r.t. the final state and returns the one
        w.r.t. the initial state, to chain BPTT across chunks of a sequence. Clips the controller
        gradients if self.controller_grad_clip is set."""
        return dnc_backward(dys, cache, dstate, self.controller_grad_clip)

    def forward_autodiff(self, tparams: Mapping[str, ad.Tensor], xs: np.ndarray, state: DNCState | None = None,
                         frozen: DNCRecord | None = None) -> ad.Tensor:
        """The autodiff engine: ys (T, B, Y) as a Tensor of tparams (see dnc_autodiff)."""
        self._check_params(tparams)
        return dnc_autodiff(tparams, xs, self.config, state, frozen)
