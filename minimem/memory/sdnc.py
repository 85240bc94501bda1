"""Sparse Differentiable Neural Computer (SDNC; Rae, Hunt et al. 2016, arXiv:1610.09027,
Supplementary D): SAM's sparse reads and writes plus the DNC's read modes and temporal links, made
sparse - two link matrices with at most K_L nonzeros per row, a precedence with at most K_L
nonzeros, and forward/backward weightings cut to their K_L largest entries (spec
specs/ntm_dnc_sam.md, Part D; SAM is Part C, the DNC Part B).

Shapes: B batch, T time, X input width, Y output width, N slots, W word size, R read heads, K slots
of the content read per head, K_L link sparsity, H LSTM size, Kp = K_L + K + K_L the (slot, weight)
pairs of one head's read weighting, P = R (W + 1) + W + 2 + 3 R interface size.

One time step, spec D.3 (Supplementary eq. numbers in brackets):
    1.-2.       h_t = LSTM([x_t; r_{t-1}], h_{t-1}, c_{t-1}); the SAM interface (q^i, beta^i, a_t,
                alpha_t, gamma_t) and read modes pi^i = softmax(pi_hat^i) ordered (backward, content, forward)
    3.-6.       SAM's LRA slot and sparse write on wbar_{t-1} = mean_i wR^i_{t-1}      (sam_sparse)
    7. [17-20]  Nl_t, Pl_t from the OLD precedence, zero diagonal, K_L largest per row  (sdnc_link)
    8. [11]     p_t = (1 - sum wW_t) p_{t-1} + wW_t, K_L largest kept
    9. [21-22]  f^i_t = Nl_t wR^i_{t-1}, b^i_t = Pl_t wR^i_{t-1}, each cut to K_L entries
    10.         c^i_t = softmax of beta^i D(q^i, M_t(s)) over the top-K set S^i_t (NEW memory)
    11.         wR^i_t = pi^i[1] b^i_t + pi^i[2] c^i_t + pi^i[3] f^i_t;  r^i_t = M_t^T wR^i_t;
                last_t(j) = t where wW_t(j) + sum_i wR^i_t(j) > delta;  y_t = [h_t; r_t] W_o + b_o

A read weighting is kept as Kp (slot, weight) pairs per head, in the order [b: K_L | c: K | f: K_L]
(a slot can appear in several parts; its weights add up). SAM's write (write_weights_csr) already
sums duplicated slots, so the write rule, the usage and the read all take the pairs as they are.

Not differentiated (spec D.4, the paper's choice): Nl, Pl, p (stop-gradient), the kept sets of f and
b, the top-K sets S^i_t and the LRA slots. So the only new gradient path is
dwR_{t-1} += Nl_t^T df restricted to the kept entries (and Pl_t^T db), which needs only the
recorded blocks of link values (sdnc_link.TemporalRecord), O(R K_L Kp) numbers per step.
Everything a step chooses goes into cache.record (an SDNCRecord); forward(..., frozen=record)
replays it, links included, so gradient checks hold the links of the unperturbed pass (D.9).

Parameters (an ordered dict, the SAM layout with a wider interface):
    `controller.W_x` (X + R W, 4H), `controller.W_h` (H, 4H), `controller.b` (4H,)    minimem.nn.lstm
    `interface.W` (H, P), `interface.b` (P,)       p_t = h_t @ W + b; columns [0 : P - 3R] as SAM's
                                                   interface (minimem.memory.sam_interface), then
                                                   pi_hat (R, 3) head after head (backward, content, forward)
    `output.W` (H + R W, Y), `output.b` (Y,)       y_t = [h_t; r^1_t; ..; r^R_t] @ W + b

Engines (all share the parameters):
- forward / backward (manual): ONE memory buffer modified in place, memory-revert BPTT as in SAM
  (spec C.4). The links are batch-stacked CSR (scipy.sparse) in SDNCState, at the sequence boundaries;
  inside the time loop both engines keep them in sdnc_link's fixed-width rows (sdnc_link.Links), with
  no sparse matrix built per step. The usage stamp takes the write and read pairs as they are.
  As in SAM, the time loop keeps only what feeds back: x_t's share of step 1's LSTM pre-activation
  is one product over all T before it, y_t one product after it (sam.outputs_forward), and the
  backward forms the weight gradients of steps 1-2 and of y_t after its loop, one product per weight
  (sam.controller_weight_gradients, sam.output_backward).
- forward_autodiff: the same step with minimem.autodiff ops in gather/scatter form.
- sdnc_dense_autodiff: the dense oracle of spec D.9 - (B, N, N) link arrays, (B, R, N) weightings,
  masked softmax, every M_t a new array - equal to the sparse engines at K = N, K_L = N (and at
  any K, K_L away from ties). It is NOT the DNC of Part B (LRA allocation, link decay 1 - w(i)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np
import scipy.sparse as sp

from minimem import autodiff as ad
from minimem.checks import check_int
from minimem.memory.addressing import (
    content_autodiff, content_backward, content_forward, cosine_similarity_autodiff, cosine_similarity_forward,
)
from minimem.memory.sam import controller_weight_gradients, output_backward, outputs_forward
from minimem.memory.sam_interface import SAMInterface
from minimem.memory.sam_interface import interface_autodiff as sam_interface_autodiff
from minimem.memory.sam_interface import interface_backward as sam_interface_backward
from minimem.memory.sam_interface import interface_forward as sam_interface_forward
from minimem.memory.sam_interface import interface_size as sam_interface_size, WRITE_SQUASHES
from minimem.memory.sam_lra import lra_order
from minimem.memory.sam_sparse import (
    INDEX_DTYPE, WriteRecord, check_K, lra_slots, sparse_write_backward, sparse_write_forward,
    sparse_write_replay, sparse_write_revert, stamp_accesses, top_k_slots, write_weights,
)
from minimem.memory.sdnc_link import (
    TemporalRecord, check_K_L, empty_links, largest_dense, link_update, link_update_dense, links_from_csr,
    links_to_csr, temporal_select, temporal_values, temporal_values_backward, write_support,
)
from minimem.nn.linear import (
    LinearCache, as_float_array, check_finite, check_params, linear_autodiff, linear_init, strip_prefix, with_prefix,
)
from minimem.nn.lstm import (
    LSTMFeedbackCache, LSTMFeedbackParams, lstm_external_share, lstm_feedback_params, lstm_feedback_step_backward,
    lstm_feedback_step_forward, lstm_init, lstm_step_autodiff,
)

__all__ = ["SDNC", "SDNCConfig", "SDNCState", "SDNCGrad", "SDNCRecord", "SDNCCache", "sdnc_forward",
           "sdnc_backward", "sdnc_autodiff", "sdnc_dense_autodiff", "sdnc_init", "initial_state", "param_shapes"]

MODES = 3    # read modes, paper order: backward, content, forward


# ----------------------------------------------------------------- configuration
@dataclass(frozen=True)
class SDNCConfig:
    """Sizes and options of an SDNC (spec D.2, D.5, D.10; SAM's C.2 options where they carry over).

    X, Y: input and output widths. N, W: slots and word size. R: read heads. K: content slots per
    head (1 <= K <= N). K_L: link sparsity (1 <= K_L <= N; 8 in the paper). H: LSTM size.
    delta: usage threshold (0.005). zero_diagonal: D.10.1 (True: the DNC's rule, no self-links).
    write_squash: None (paper) or "tanh". forget_bias: LSTM b_f init. dtype: "float64" or "float32".
    """
    X: int
    Y: int
    N: int = 32
    W: int = 8
    R: int = 2
    K: int = 4
    K_L: int = 8
    H: int = 64
    delta: float = 0.005
    zero_diagonal: bool = True
    write_squash: str | None = None
    forget_bias: float = 1.0
    dtype: str = "float64"

    def __post_init__(self) -> None:
        for name in ("X", "Y", "N", "W", "R", "K", "K_L", "H"):
            check_int(f"SDNCConfig.{name}", getattr(self, name), 1)
        check_K(self.K, self.N)
        check_K_L(self.K_L, self.N)
        if not (isinstance(self.delta, (int, float)) and np.isfinite(self.delta) and self.delta >= 0):
            raise ValueError(f"SDNCConfig.delta must be a finite number >= 0; got {self.delta!r}")
        if not isinstance(self.zero_diagonal, (bool, np.bool_)):
            raise ValueError(f"SDNCConfig.zero_diagonal must be True or False; got {self.zero_diagonal!r}")
        if self.write_squash not in WRITE_SQUASHES:
            raise ValueError(f"SDNCConfig.write_squash must be one of {WRITE_SQUASHES}; got {self.write_squash!r}")
        if not (isinstance(self.forget_bias, (int, float)) and np.isfinite(self.forget_bias)):
            raise ValueError(f"SDNCConfig.forget_bias must be a finite number; got {self.forget_bias!r}")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"SDNCConfig.dtype must be 'float64' or 'float32'; got {self.dtype!r}")

    @property
    def P(self) -> int:
        """Interface size R (W + 1) + W + 2 + 3 R."""
        return sam_interface_size(self.R, self.W) + MODES * self.R

    @property
    def Kp(self) -> int:
        """(slot, weight) pairs per read head: K_L backward + K content + K_L forward."""
        return 2 * self.K_L + self.K


def param_shapes(config: SDNCConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in the order of model.params (layouts: module docstring)."""
    X, Y, R, W, H = config.X, config.Y, config.R, config.W, config.H
    return {"controller.W_x": (X + R * W, 4 * H), "controller.W_h": (H, 4 * H), "controller.b": (4 * H,),
            "interface.W": (H, config.P), "interface.b": (config.P,),
            "output.W": (H + R * W, Y), "output.b": (Y,)}


# ----------------------------------------------------------------- state, gradients, record
class SDNCState(NamedTuple):
    """Everything carried from step t to t+1 (spec D.2 = SAM's C.2 plus links and precedence)."""
    M: np.ndarray              # (B, N, W) memory
    last: np.ndarray           # (B, N) int, time of the last access above delta
    read_index: np.ndarray     # (B, R, Kp) int, slots of the read weightings' pairs [b | c | f]
    read_weight: np.ndarray    # (B, R, Kp) their weights (a slot's weight is the sum of its pairs)
    r: np.ndarray              # (B, R, W) read words
    h: np.ndarray              # (B, H)
    c: np.ndarray              # (B, H)
    Nl: sp.csr_matrix          # (B N, B N) forward links, <= K_L nonzeros per row
    Pl: sp.csr_matrix          # (B N, B N) backward links, <= K_L nonzeros per row
    p: sp.csr_matrix           # (B, B N) precedence, <= K_L nonzeros per row
    t: int                     # steps taken so far


class SDNCGrad(NamedTuple):
    """Gradients w.r.t. the differentiable fields of an SDNCState (links and precedence are constants)."""
    M: np.ndarray
    read_weight: np.ndarray
    r: np.ndarray
    h: np.ndarray
    c: np.ndarray


class SDNCRecord(NamedTuple):
    """The discrete choices and stop-gradient links of a forward pass, replayable with frozen=."""
    read_index: np.ndarray     # (T, B, R, K) int, content sets S^i_t
    lra: np.ndarray            # (T, B) int, LRA slots l_t
    fwd_index: np.ndarray      # (T, B, R, K_L) int, kept slots of f
    fwd_links: np.ndarray      # (T, B, R, K_L, Kp) Nl_t at (kept slot, previous read slot)
    bwd_index: np.ndarray      # (T, B, R, K_L) int, kept slots of b
    bwd_links: np.ndarray      # (T, B, R, K_L, Kp) Pl_t likewise


def initial_state(config: SDNCConfig, B: int) -> SDNCState:
    """A sequence start: zero memory, links and precedence, last = 0, read weightings all zero
    (their pairs sit on slots 0.. with weight 0), zero read words and controller state."""
    check_int("B", B, 1)
    N, W, R, K, K_L, H, dtype = config.N, config.W, config.R, config.K, config.K_L, config.H, np.dtype(config.dtype)
    pairs = np.concatenate([np.arange(K_L), np.arange(K), np.arange(K_L)]).astype(INDEX_DTYPE)
    Nl, Pl, p = empty_links(B, N, dtype)
    return SDNCState(np.zeros((B, N, W), dtype), np.zeros((B, N), INDEX_DTYPE),
                     np.broadcast_to(pairs, (B, R, config.Kp)).copy(), np.zeros((B, R, config.Kp), dtype),
                     np.zeros((B, R, W), dtype), np.zeros((B, H), dtype), np.zeros((B, H), dtype), Nl, Pl, p, 0)


def _check_links(name: str, A, shape: tuple, K_L: int) -> sp.csr_matrix:
    if not sp.issparse(A) or A.shape != shape:
        raise ValueError(f"state.{name} must be a scipy.sparse matrix of shape {shape}; "
                         f"got {type(A).__name__} {getattr(A, 'shape', None)}")
    A = sp.csr_matrix(A)
    A.sum_duplicates()
    if A.nnz and (not np.all(np.isfinite(A.data)) or A.data.min() < 0 or A.data.max() > 1):
        raise ValueError(f"state.{name} must hold entries in [0, 1]")
    if A.nnz and np.max(np.diff(A.indptr)) > K_L:
        raise ValueError(f"state.{name} must have at most K_L = {K_L} nonzeros per row; "
                         f"got {np.max(np.diff(A.indptr))}")
    return A


def check_inputs(xs, config: SDNCConfig) -> np.ndarray:
    xs = as_float_array("xs", xs.data if isinstance(xs, ad.Tensor) else xs)
    if xs.ndim != 3 or xs.shape[2] != config.X or xs.shape[1] == 0:
        raise ValueError(f"xs must have shape (T, B, X) with B >= 1 and X = {config.X}; got {xs.shape}")
    if xs.shape[0] == 0:
        raise ValueError(f"xs must have shape (T, B, X) with T >= 1 (the sequence is empty); got {xs.shape}")
    check_finite("xs", xs)
    return xs.astype(config.dtype, copy=False)


def _block_diagonal(A: sp.csr_matrix, B: int, N: int, name: str) -> None:
    """ValueError if a batch-stacked matrix has an entry outside its element's block."""
    rows = np.repeat(np.arange(A.shape[0]), np.diff(A.indptr))
    owner = rows // N if A.shape[0] == B * N else rows
    if A.nnz and np.any(A.indices // N != owner):
        raise ValueError(f"state.{name} must be batch-stacked (entries of element b only in columns "
                         f"[b N, (b+1) N)); found an entry across elements")


def check_state(state, config: SDNCConfig, B: int) -> SDNCState:
    """An SDNCState with the shapes of the module legend, finite, read weights >= 0 summing to <= 1,
    links and precedence in [0, 1] with at most K_L nonzeros per row."""
    if not isinstance(state, SDNCState):
        raise ValueError(f"state must be an SDNCState {SDNCState._fields}; got {type(state).__name__}")
    N, W, R, H, Kp, K_L, dtype = config.N, config.W, config.R, config.H, config.Kp, config.K_L, np.dtype(config.dtype)
    t = state.t
    check_int("state.t", t, 0)
    M = as_float_array("state.M", state.M)
    if M.shape != (B, N, W):
        raise ValueError(f"state.M must have shape (B, N, W) = {(B, N, W)}; got {M.shape}")
    last = np.asarray(state.last)
    if last.shape != (B, N) or last.dtype.kind not in "iu" or (last.size and (last.min() < 0 or last.max() > t)):
        raise ValueError(f"state.last must be an integer array of shape (B, N) = {(B, N)} with times in "
                         f"[0, t = {t}]; got {last.dtype} {last.shape}")
    index = np.asarray(state.read_index)
    if index.shape != (B, R, Kp) or index.dtype.kind not in "iu" or index.min() < 0 or index.max() >= N:
        raise ValueError(f"state.read_index must be an integer array of shape (B, R, Kp) = {(B, R, Kp)} "
                         f"with slots in [0, N = {N}); got {index.dtype} {index.shape}")
    arrays = {"M": (M, (B, N, W)), "read_weight": (as_float_array("state.read_weight", state.read_weight), (B, R, Kp)),
              "r": (as_float_array("state.r", state.r), (B, R, W)),
              "h": (as_float_array("state.h", state.h), (B, H)), "c": (as_float_array("state.c", state.c), (B, H))}
    for name, (value, shape) in arrays.items():
        if value.shape != shape:
            raise ValueError(f"state.{name} must have shape {shape}; got {value.shape}")
        check_finite(f"state.{name}", value)
    weight = arrays["read_weight"][0]
    tol = 1e-9 if dtype == np.float64 else 1e-4
    if np.any(weight < 0) or np.any(np.sum(weight, -1) > 1 + tol):
        raise ValueError("state.read_weight must hold weightings in Delta_N (entries >= 0, sums <= 1)")
    links = []
    for name, shape in (("Nl", (B * N, B * N)), ("Pl", (B * N, B * N)), ("p", (B, B * N))):
        A = _check_links(name, getattr(state, name), shape, K_L)
        _block_diagonal(A, B, N, name)
        links.append(A.astype(dtype))
    cast = lambda x: np.asarray(x, dtype=dtype)
    return SDNCState(cast(M), last.astype(INDEX_DTYPE), index.astype(INDEX_DTYPE), cast(weight),
                     cast(arrays["r"][0]), cast(arrays["h"][0]), cast(arrays["c"][0]), *links, int(t))


def check_frozen(frozen, config: SDNCConfig, T: int, B: int) -> SDNCRecord:
    """An SDNCRecord for T steps of B sequences (shapes of the SDNCRecord legend, slots in [0, N))."""
    if not isinstance(frozen, SDNCRecord):
        raise ValueError(f"frozen must be an SDNCRecord (cache.record of an earlier forward); "
                         f"got {type(frozen).__name__}")
    N, R, K, K_L, Kp = config.N, config.R, config.K, config.K_L, config.Kp
    expected = {"read_index": (T, B, R, K), "lra": (T, B), "fwd_index": (T, B, R, K_L),
                "fwd_links": (T, B, R, K_L, Kp), "bwd_index": (T, B, R, K_L), "bwd_links": (T, B, R, K_L, Kp)}
    out = {}
    for name, shape in expected.items():
        value = np.asarray(getattr(frozen, name))
        if value.shape != shape:
            raise ValueError(f"frozen.{name} must have shape {shape}; got {value.shape}")
        if name.endswith("links"):
            value = as_float_array(f"frozen.{name}", value)
            check_finite(f"frozen.{name}", value)
        elif value.dtype.kind not in "iu" or (value.size and (value.min() < 0 or value.max() >= N)):
            raise ValueError(f"frozen.{name} must hold integer slots in [0, N = {N}); got {value.dtype}")
        else:
            value = value.astype(INDEX_DTYPE)
        out[name] = value
    return SDNCRecord(**out)


def check_grad_state(dstate, state: SDNCState) -> SDNCGrad:
    if not isinstance(dstate, SDNCGrad):
        raise ValueError(f"dstate must be an SDNCGrad {SDNCGrad._fields}; got {type(dstate).__name__}")
    out = []
    for name, value in zip(SDNCGrad._fields, dstate):
        value = as_float_array(f"dstate.{name}", value)
        if value.shape != np.shape(getattr(state, name)):
            raise ValueError(f"dstate.{name} must have the shape of the final state's {name} "
                             f"{np.shape(getattr(state, name))}; got {value.shape}")
        check_finite(f"dstate.{name}", value)
        out.append(value)
    return SDNCGrad(*out)


# ----------------------------------------------------------------- interface and controller, steps 1-2
class SDNCInterface(NamedTuple):
    sam: SAMInterface          # q (B, R, W), beta (B, R, 1), a (B, W), alpha, gamma (B, 1)
    pi: np.ndarray             # (B, R, 3) read modes (backward, content, forward)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


# The controller input is chi_t = [x_t; r_{t-1}] as in SAM, so the same split applies (minimem.memory.sam,
# minimem.nn.lstm's lstm_feedback_*): x_t's share of the LSTM's eq. (1) is one product over all T before
# the time loop, the weight gradients of steps 1-2 one product per weight after it
# (sam.controller_weight_gradients), and step 11's output y_t one product after it (sam.outputs_forward).
class ControllerCache(NamedTuple):
    lstm: LSTMFeedbackCache    # step 1, the LSTM cell
    sam_interface: object      # step 2, sam_interface.InterfaceCache
    pi: np.ndarray             # (B, R, 3)


def controller_step_forward(z_ext, r_prev, h_prev, c_prev, lstm: LSTMFeedbackParams, params: Mapping,
                            config: SDNCConfig):
    """Steps 1-2: (h, c, SDNCInterface, cache) from x_t's share z_ext (B, 4H) of the LSTM's eq. (1)
    (lstm_external_share before the loop), r_{t-1} (B, R, W), h, c (B, H). params: the parameter
    dict (interface.W, interface.b), checked at the sequence entry."""
    B, R, W = r_prev.shape
    (h, c), c_lstm = lstm_feedback_step_forward(z_ext, r_prev.reshape(B, R * W), h_prev, c_prev, lstm)   # 1.
    p = h @ params["interface.W"]                                                    # (B, P)
    p += params["interface.b"]
    P_sam = sam_interface_size(R, W)
    sam_iface, c_iface = sam_interface_forward(p[:, :P_sam], R, W, config.write_squash, validate=False)  # 2.
    pi = _softmax(p[:, P_sam:].reshape(B, R, MODES))                                 # (B, R, 3)
    return h, c, SDNCInterface(sam_iface, pi), ControllerCache(c_lstm, c_iface, pi)


def controller_step_backward(dh, dc, dsam: SAMInterface, dpi, cache: ControllerCache, lstm: LSTMFeedbackParams,
                             params: Mapping):
    """Adjoint of steps 1-2 without the weight gradients. dh (B, H): the gradient w.r.t. h_t from
    the output and from step t+1; dc likewise. Returns (dr_prev (B, R, W), dh_prev, dc_prev,
    dz (B, 4H) the LSTM's pre-activation gradient, dp (B, P)), dz and dp for
    sam.controller_weight_gradients after the loop."""
    B = dh.shape[0]
    pi = cache.pi
    dpi_hat = pi * (dpi - np.sum(pi * dpi, axis=-1, keepdims=True))                  # softmax VJP
    dp = np.concatenate([sam_interface_backward(dsam, cache.sam_interface), dpi_hat.reshape(B, -1)], axis=1)
    dh = dh + dp @ params["interface.W"].T                                           # p_t = h_t W_p + b_p
    dr_prev, dh_prev, dc_prev, dz = lstm_feedback_step_backward(dh, dc, cache.lstm, lstm)   # 1.
    return dr_prev.reshape(B, pi.shape[1], -1), dh_prev, dc_prev, dz, dp


def _interface_autodiff(h, tparams, config: SDNCConfig):
    B, R, W = h.shape[0], config.R, config.W
    p = linear_autodiff(h, tparams["interface.W"], tparams["interface.b"])
    P_sam = sam_interface_size(R, W)
    return sam_interface_autodiff(p[:, :P_sam], R, W, config.write_squash), \
        ad.softmax(ad.reshape(p[:, P_sam:], (B, R, MODES)), axis=-1)


# ----------------------------------------------------------------- the read, steps 9-11
class ReadRecord(NamedTuple):
    index: np.ndarray          # (B, R, Kp) int, pairs [T_b | S | T_f]
    weight: np.ndarray         # (B, R, Kp) wR_t on those pairs
    temporal: TemporalRecord   # T_f, T_b and the link blocks (constants)
    prev_weight: np.ndarray    # (B, R, Kp) wR_{t-1} (what f and b were made of)
    b: np.ndarray              # (B, R, K_L) kept backward weights
    cw: np.ndarray             # (B, R, K) content weights on S
    f: np.ndarray              # (B, R, K_L) kept forward weights
    q: np.ndarray              # (B, R, W)
    beta: np.ndarray           # (B, R, 1)
    pi: np.ndarray             # (B, R, 3)
    content: object            # addressing.ContentCache of the content read on S (O(B R K W))


def _add_at_rows(target: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """np.add.at(target, rows, values) for target (n, W), rows (m,), values (m, W), done on the flat
    buffer: the same additions in the same order, but NumPy's 1-d add.at is about twice as fast."""
    W = target.shape[1]
    np.add.at(target.reshape(-1), (rows[:, None] * W + np.arange(W)).reshape(-1), values.reshape(-1))


def _rows(index: np.ndarray, N: int) -> np.ndarray:
    """Global rows b N + slot of (B, R, k) slots."""
    return index + N * np.arange(index.shape[0], dtype=INDEX_DTYPE)[:, None, None]


def read_forward(M: np.ndarray, prev_index, prev_weight, temporal: TemporalRecord, S, q, beta, pi):
    """Steps 9-11 on the memory M_t (B, N, W): the kept f and b, the content weights on S (B, R, K),
    the mixture as (slot, weight) pairs and the read words. Returns (r (B, R, W), ReadRecord)."""
    B, N, W = M.shape
    M2 = M.reshape(B * N, W)
    f = temporal_values(temporal.fwd_links, prev_weight)                            # 9. (B, R, K_L)
    b = temporal_values(temporal.bwd_links, prev_weight)
    cw, content = content_forward(M2[_rows(S, N)], q, beta)                         # 10. (B, R, K)
    index = np.concatenate([temporal.bwd_index, S, temporal.fwd_index], axis=-1)    # 11. (B, R, Kp)
    weight = np.concatenate([pi[:, :, 0:1] * b, pi[:, :, 1:2] * cw, pi[:, :, 2:3] * f], axis=-1)
    r = np.einsum("brk,brkw->brw", weight, M2[_rows(index, N)])                     # (B, R, W)
    return r, ReadRecord(index, weight, temporal, prev_weight, b, cw, f, q, beta, pi, content)


def read_backward(dr, dweight, M, dM, record: ReadRecord, K_L: int):
    """Adjoint of steps 9-11, adding into the gradient buffer dM (B, N, W); M holds M_t.

        d pair weight = M_t(slot) . dr + dweight (carried from step t+1)
        dpi = (b . d_b, c . d_c, f . d_f);  db = pi[1] d_b, dc = pi[2] d_c, df = pi[3] d_f
        content adjoint on the K rows of S;  dwR_{t-1} = links_f^T df + links_b^T db   (links constant)

    Returns (dq (B, R, W), dbeta (B, R, 1), dpi (B, R, 3), dprev_weight (B, R, Kp)).
    """
    B, N, W = M.shape
    K = record.cw.shape[-1]
    M2, dM2 = M.reshape(B * N, W), dM.reshape(B * N, W)
    rows = _rows(record.index, N)                                                   # (B, R, Kp)
    M_sel = M2[rows]                                                                # (B, R, Kp, W)
    dpair = np.einsum("brkw,brw->brk", M_sel, dr) + dweight                         # 11.
    _add_at_rows(dM2, rows.reshape(-1), (record.weight[..., None] * dr[:, :, None, :]).reshape(-1, W))
    d_b, d_c, d_f = dpair[..., :K_L], dpair[..., K_L:K_L + K], dpair[..., K_L + K:]
    pi = record.pi
    dpi = np.stack([np.sum(record.b * d_b, -1), np.sum(record.cw * d_c, -1), np.sum(record.f * d_f, -1)], -1)
    S_rows = rows[..., K_L:K_L + K]
    dM_sel, dq, dbeta = content_backward(pi[:, :, 1:2] * d_c, record.content)                # 10.
    _add_at_rows(dM2, S_rows.reshape(-1), dM_sel.reshape(-1, W))
    dprev = (temporal_values_backward(pi[:, :, 2:3] * d_f, record.temporal.fwd_links)
             + temporal_values_backward(pi[:, :, 0:1] * d_b, record.temporal.bwd_links))  # 9.
    return dq, dbeta, dpi, dprev


# ----------------------------------------------------------------- a sequence
class SparseStep(NamedTuple):
    controller: ControllerCache
    write: WriteRecord
    read: ReadRecord


@dataclass
class SDNCCache:
    """What backward needs; `memory` is THE memory buffer and `applied` the number of recorded writes
    it holds (T after forward, 0 after backward)."""
    config: SDNCConfig
    xs: np.ndarray
    state0: SDNCState
    steps: list
    final_state: SDNCState
    record: SDNCRecord
    memory: np.ndarray
    applied: int = 0
    lstm: LSTMFeedbackParams | None = None   # the controller's split parameters (lstm_feedback_params)
    output: LinearCache | None = None       # y_t over all t: x = the (T, B, H + R W) rows [h_t; r_t]
    params: Mapping | None = None           # the parameter dict of the forward (interface.W)


def sdnc_forward(params: Mapping, xs, config: SDNCConfig, state: SDNCState | None = None,
                 frozen: SDNCRecord | None = None) -> tuple[np.ndarray, SDNCCache]:
    """Run the SDNC over a sequence with the manual engine (no parameter validation: SDNC.forward
    does that).

    Args:
        params: the parameter dict. xs: (T, B, X). state: SDNCState to continue from (None: a start).
        frozen: an SDNCRecord to replay (content sets, LRA slots, kept sets of f and b and the link
            values behind them); the links then computed are only carried into the final state.
    Returns:
        ys (T, B, Y) and the SDNCCache (cache.final_state, cache.record).
    """
    xs = check_inputs(xs, config)
    T, B, _ = xs.shape
    state = initial_state(config, B) if state is None else check_state(state, config, B)
    frozen = None if frozen is None else check_frozen(frozen, config, T, B)
    N, R, K, K_L = config.N, config.R, config.K, config.K_L
    M = np.array(state.M, order="C", copy=True)                      # THE memory buffer (B, N, W)
    last = np.array(state.last, copy=True)
    index, weight, r, h, c = state.read_index, state.read_weight, state.r, state.h, state.c
    links = links_from_csr(state.Nl, state.Pl, state.p, K_L, config.zero_diagonal)  # fixed-width rows in the loop
    order = lra_order(last, state.t) if frozen is None else None
    lstm = lstm_feedback_params(strip_prefix("controller", params), config.X)   # split once per sequence
    z_ext = lstm_external_share(xs, lstm)                            # 1. x_t's share for every t (T, B, 4H)
    hr = np.empty((T, B, config.H + R * config.W), dtype=config.dtype)    # y_t's input rows [h_t; r_t]
    steps = []
    rec = {"read_index": np.empty((T, B, R, K), INDEX_DTYPE), "lra": np.empty((T, B), INDEX_DTYPE),
           "fwd_index": np.empty((T, B, R, K_L), INDEX_DTYPE), "fwd_links": np.empty((T, B, R, K_L, config.Kp)),
           "bwd_index": np.empty((T, B, R, K_L), INDEX_DTYPE), "bwd_links": np.empty((T, B, R, K_L, config.Kp))}
    for t in range(T):
        now = state.t + t + 1
        h, c, iface, c_controller = controller_step_forward(z_ext[t], r, h, c, lstm, params, config)  # 1.-2.
        s = iface.sam
        lra = order.head(last) if frozen is None else frozen.lra[t]                                 # 3.
        write = sparse_write_forward(M, index, weight, lra, s.a, s.alpha, s.gamma)                  # 4.-6.
        links = link_update(links, write_support(write.rows, write.bounds, write.data, N),
                            config.zero_diagonal)                                                   # 7.-8.
        if frozen is None:
            temporal = temporal_select(links, index, weight, K_L)                                   # 9.
            S = top_k_slots(cosine_similarity_forward(M, s.q)[0], K)                                # 10.
        else:
            temporal = TemporalRecord(frozen.fwd_index[t], frozen.fwd_links[t], frozen.bwd_index[t],
                                      frozen.bwd_links[t])
            S = frozen.read_index[t]
        r, read = read_forward(M, index, weight, temporal, S, s.q, s.beta, iface.pi)                # 9.-11.
        accessed = stamp_accesses(last, None, np.concatenate([write.rows, _rows(read.index, N).reshape(-1)]),
                                  np.concatenate([write.data, read.weight.reshape(-1)]), now, config.delta)  # 11. usage
        if order is not None:
            order.touch(accessed, now)
        hr[t, :, :config.H], hr[t, :, config.H:] = h, r.reshape(B, -1)                            # y_t after the loop
        steps.append(SparseStep(c_controller, write, read))
        index, weight = read.index, read.weight
        for name, value in (("read_index", S), ("lra", lra)) + tuple(zip(TemporalRecord._fields, temporal)):
            rec[name][t] = value
    ys, c_output = outputs_forward(hr, params, config)                                              # 11. y_t
    final = SDNCState(M.copy(), last, index, weight, r, h, c, *links_to_csr(links), state.t + T)
    return ys, SDNCCache(config, xs, state, steps, final, SDNCRecord(**rec), M, T, lstm=lstm, output=c_output,
                         params=params)


def sdnc_backward(dys, cache: SDNCCache, dstate: SDNCGrad | None = None):
    """BPTT through sdnc_forward with the memory revert of spec C.4.

    From outside: dys (T, B, Y) and optionally dstate, the gradient w.r.t. cache.final_state's
    differentiable fields. Carried from step t+1 to t: dM (one buffer), dwR_t (through the write at
    t+1 AND through f, b at t+1), dr_t (controller input), dh_t, dc_t. Links get no gradient (D.4).
    Returns (grads keyed like the params, SDNCGrad w.r.t. the initial state).
    """
    config = cache.config
    T, B = cache.xs.shape[:2]
    dys = as_float_array("dys", dys)
    if dys.shape != (T, B, config.Y):
        raise ValueError(f"dys must have the outputs' shape (T, B, Y) = {(T, B, config.Y)}; got {dys.shape}")
    check_finite("dys", dys)
    final = cache.final_state
    if dstate is None:
        dstate = SDNCGrad(np.zeros(final.M.shape, final.M.dtype), np.zeros_like(final.read_weight),
                          np.zeros_like(final.r), np.zeros_like(final.h), np.zeros_like(final.c))
    else:
        dstate = check_grad_state(dstate, final)
    grads = {name: np.zeros(shape, dtype=dys.dtype) for name, shape in param_shapes(config).items()}
    steps, M = cache.steps, cache.memory
    for step in steps[cache.applied:]:                        # a reverted buffer: redo the writes first
        sparse_write_replay(M, step.write)
    cache.applied = len(steps)
    dM = np.array(dstate.M, order="C", copy=True)             # THE gradient buffer (B, N, W)
    dweight, dr_carry, dh, dc = dstate.read_weight, dstate.r, dstate.h, dstate.c
    dh_out, dr, g_out = output_backward(dys, cache.output, config)       # 11. y_t, all t: (T, B, H), (T, B, R, W)
    dZ = np.empty((T, B, 4 * config.H), dtype=dys.dtype)                  # every step's dz and dp, for the
    dP = np.empty((T, B, config.P), dtype=dys.dtype)                      # weight gradients after the loop
    for t in reversed(range(len(steps))):
        step = steps[t]
        dq, dbeta, dpi, dprev_links = read_backward(dr[t] + dr_carry, dweight, M, dM, step.read, config.K_L)  # 11.-9.
        sparse_write_revert(M, step.write)                                                                # M_{t-1}
        cache.applied = t
        da, dalpha, dgamma, dprev_write = sparse_write_backward(dM, step.write)                            # 6.-4.
        dweight = dprev_links + dprev_write
        dr_carry, dh, dc, dZ[t], dP[t] = controller_step_backward(
            dh_out[t] + dh, dc, SAMInterface(dq, dbeta, da, dalpha, dgamma), dpi, step.controller, cache.lstm,
            cache.params)                                                                                  # 2.-1.
    g_controller = controller_weight_gradients(cache.xs, cache.output.x[..., :config.H],
                                               [s.controller for s in steps], dZ, dP, cache.lstm)
    for name, value in {**g_out, **g_controller}.items():
        grads[name] += value                                              # the weights are shared by every step
    return grads, SDNCGrad(dM, dweight, dr_carry, dh, dc)


# ----------------------------------------------------------------- autodiff twin
def sdnc_autodiff(tparams: Mapping[str, ad.Tensor], xs, config: SDNCConfig, state: SDNCState | None = None,
                  frozen: SDNCRecord | None = None) -> ad.Tensor:
    """Autodiff twin of sdnc_forward: ys (T, B, Y) as a Tensor of tparams.

    Gather/scatter form: the write is erase-by-mask plus ad.scatter_add of the pairs (duplicates
    summed); f and b are the recorded (or freshly selected) link blocks applied with ad.einsum; the
    content softmax runs over each head's K gathered rows. Links and precedence are updated in NumPy
    from the write weights' values (stop-gradient, D.4); LRA slots by argmin over `last`.
    """
    xs = check_inputs(xs, config)
    T, B, _ = xs.shape
    state = initial_state(config, B) if state is None else check_state(state, config, B)
    frozen = None if frozen is None else check_frozen(frozen, config, T, B)
    N, W, R, K, K_L = config.N, config.W, config.R, config.K, config.K_L
    offsets = N * np.arange(B, dtype=INDEX_DTYPE)
    M2 = ad.Tensor(state.M.reshape(B * N, W))
    last = state.last.copy()
    index, weight = state.read_index, ad.Tensor(state.read_weight)
    r, h, c = ad.Tensor(state.r), ad.Tensor(state.h), ad.Tensor(state.c)
    links = links_from_csr(state.Nl, state.Pl, state.p, K_L, config.zero_diagonal)
    controller = strip_prefix("controller", tparams)
    ys = []
    for t in range(T):
        chi = ad.concatenate([ad.Tensor(xs[t]), ad.reshape(r, (B, R * W))], axis=1)                  # 1.
        h, c = lstm_step_autodiff(chi, h, c, controller)
        s, pi = _interface_autodiff(h, tparams, config)                                               # 2.
        lra = lra_slots(last) if frozen is None else frozen.lra[t]                                    # 3.
        Kp = index.shape[2]
        columns = np.concatenate([(index + offsets[:, None, None]).reshape(-1), offsets + lra])
        batch = np.concatenate([np.repeat(np.arange(B), R * Kp), np.arange(B)])
        values = ad.concatenate([
            ad.reshape(ad.reshape(s.alpha * s.gamma / R, (B, 1, 1)) * weight, (B * R * Kp,)),
            ad.reshape(s.alpha * (1.0 - s.gamma), (B,))])                                              # 4.-5.
        keep = np.ones((B * N, 1), dtype=config.dtype)
        keep[offsets + lra] = 0.0
        M2 = ad.scatter_add(M2 * keep, columns, ad.reshape(values, (-1, 1)) * s.a[batch])            # 6.
        w_rows, w_bounds, w_data, _ = write_weights(index, weight.data, lra, s.alpha.data, s.gamma.data, N)
        links = link_update(links, write_support(w_rows, w_bounds, w_data, N), config.zero_diagonal)  # 7.-8.
        if frozen is None:
            temporal = temporal_select(links, index, weight.data, K_L)                                # 9.
            S = top_k_slots(cosine_similarity_forward(M2.data.reshape(B, N, W), s.q.data)[0], K)     # 10.
        else:
            temporal = TemporalRecord(frozen.fwd_index[t], frozen.fwd_links[t], frozen.bwd_index[t],
                                      frozen.bwd_links[t])
            S = frozen.read_index[t]
        f = ad.einsum("brkm,brm->brk", ad.Tensor(temporal.fwd_links), weight)                         # 9.
        b = ad.einsum("brkm,brm->brk", ad.Tensor(temporal.bwd_links), weight)
        cw = content_autodiff(M2[S + offsets[:, None, None]], s.q, s.beta)                            # 10.
        index = np.concatenate([temporal.bwd_index, S, temporal.fwd_index], axis=-1)                  # 11.
        weight = ad.concatenate([pi[:, :, 0:1] * b, pi[:, :, 1:2] * cw, pi[:, :, 2:3] * f], axis=2)
        r = ad.einsum("brk,brkw->brw", weight, M2[index + offsets[:, None, None]])
        access = np.zeros(B * N)
        np.add.at(access, columns, values.data)
        np.add.at(access, (index + offsets[:, None, None]).reshape(-1), weight.data.reshape(-1))
        last.reshape(-1)[access > config.delta] = state.t + t + 1
        ys.append(linear_autodiff(ad.concatenate([h, ad.reshape(r, (B, R * W))], axis=1),
                                  tparams["output.W"], tparams["output.b"]))
    return ad.stack(ys, axis=0)


# ----------------------------------------------------------------- the dense oracle (spec D.9)
def _dense_blocks(A: sp.csr_matrix, B: int, N: int) -> np.ndarray:
    """The (B, N, N) diagonal blocks of a batch-stacked (B N, B N) matrix, or (B, N) rows of a (B, B N) one."""
    dense = A.toarray()
    if A.shape[0] == B:
        return dense.reshape(B, B, N)[np.arange(B), np.arange(B)]
    return dense.reshape(B, N, B, N)[np.arange(B), :, np.arange(B), :]


def sdnc_dense_autodiff(tparams: Mapping[str, ad.Tensor], xs, config: SDNCConfig, state: SDNCState | None = None):
    """Dense reference of eqs. [11], [17-22] plus SAM's C.3 (spec D.9): (B, N, N) link arrays,
    (B, R, N) weightings, a masked softmax for the top-K read, the K_L truncations as masks chosen
    with the same rule (largest, ties to the lower index) on the dense vectors. O(N^2) per step; for
    tests only. Returns (ys Tensor (T, B, Y), final dict with M, L_f, L_b, p, w_read, last).
    """
    xs = check_inputs(xs, config)
    T, B, _ = xs.shape
    state = initial_state(config, B) if state is None else check_state(state, config, B)
    N, W, R, K, K_L = config.N, config.W, config.R, config.K, config.K_L
    M = ad.Tensor(state.M)
    w0 = np.zeros((B, R, N))
    np.add.at(w0, (np.arange(B)[:, None, None], np.arange(R)[None, :, None], state.read_index), state.read_weight)
    w_read = ad.Tensor(w0)
    L_f, L_b, p = _dense_blocks(state.Nl, B, N), _dense_blocks(state.Pl, B, N), _dense_blocks(state.p, B, N)
    last = state.last.copy()
    r, h, c = ad.Tensor(state.r), ad.Tensor(state.h), ad.Tensor(state.c)
    controller = strip_prefix("controller", tparams)
    ys = []
    for t in range(T):
        chi = ad.concatenate([ad.Tensor(xs[t]), ad.reshape(r, (B, R * W))], axis=1)
        h, c = lstm_step_autodiff(chi, h, c, controller)
        s, pi = _interface_autodiff(h, tparams, config)
        lra = lra_slots(last)
        one_hot = np.zeros((B, N))
        one_hot[np.arange(B), lra] = 1.0
        w_write = s.alpha * (s.gamma * ad.mean(w_read, axis=1) + (1.0 - s.gamma) * one_hot)          # (B, N)
        M = M * (1.0 - one_hot)[:, :, None] + ad.reshape(w_write, (B, N, 1)) * ad.reshape(s.a, (B, 1, W))
        L_f, L_b, p = link_update_dense(L_f, L_b, p, w_write.data, K_L, config.zero_diagonal)
        f = ad.einsum("bij,brj->bri", ad.Tensor(L_f), w_read)                                        # (B, R, N)
        b = ad.einsum("bij,brj->bri", ad.Tensor(L_b), w_read)
        f = f * _mask(largest_dense(f.data, K_L), N)
        b = b * _mask(largest_dense(b.data, K_L), N)
        z = s.beta * cosine_similarity_autodiff(M, s.q)                                               # (B, R, N)
        S = top_k_slots(cosine_similarity_forward(M.data, s.q.data)[0], K)
        cw = ad.softmax(ad.where(_mask(S, N) > 0, z, -1e30), axis=-1)
        w_read = pi[:, :, 0:1] * b + pi[:, :, 1:2] * cw + pi[:, :, 2:3] * f
        r = ad.einsum("brn,bnw->brw", w_read, M)
        access = w_write.data + np.sum(w_read.data, axis=1)
        last = np.where(access > config.delta, state.t + t + 1, last)
        ys.append(linear_autodiff(ad.concatenate([h, ad.reshape(r, (B, R * W))], axis=1),
                                  tparams["output.W"], tparams["output.b"]))
    final = {"M": M.data, "L_f": L_f, "L_b": L_b, "p": p, "w_read": w_read.data, "last": last}
    return ad.stack(ys, axis=0), final


def _mask(index: np.ndarray, N: int) -> np.ndarray:
    mask = np.zeros(index.shape[:-1] + (N,))
    np.put_along_axis(mask, index, 1.0, axis=-1)
    return mask


# ----------------------------------------------------------------- initialisation and model
def sdnc_init(rng: np.random.Generator, config: SDNCConfig) -> dict[str, np.ndarray]:
    """Parameters in the order of param_shapes (as SAM: Xavier input and linear weights, orthogonal
    recurrent weights, forget bias config.forget_bias, zero biases)."""
    X, Y, R, W, H, dtype = config.X, config.Y, config.R, config.W, config.H, config.dtype
    params = with_prefix("controller", lstm_init(rng, X + R * W, H, config.forget_bias, dtype))
    params.update(with_prefix("interface", linear_init(rng, H, config.P, dtype=dtype)))
    params.update(with_prefix("output", linear_init(rng, H + R * W, Y, dtype=dtype)))
    return params


class SDNC:
    """The SDNC as a model (protocol of DESIGN.md): xs (T, B, X) -> logits ys (T, B, Y).

        model = SDNC(SDNCConfig(X=8, Y=6, N=64, K=4, K_L=8), rng=np.random.default_rng(0))
        ys, cache = model.forward(xs)                # cache.final_state, cache.record
        grads = model.backward(dys, cache)           # memory buffer reverted to M_0
        ys_t = model.forward_autodiff(tparams, xs)   # Tensor, the independent engine
    """

    def __init__(self, config: SDNCConfig, rng: np.random.Generator | None = None):
        if not isinstance(config, SDNCConfig):
            raise ValueError(f"config must be an SDNCConfig; got {type(config).__name__}")
        self.config = config
        self.params = sdnc_init(np.random.default_rng(0) if rng is None else rng, config)

    def initial_state(self, B: int) -> SDNCState:
        return initial_state(self.config, B)

    def _check_params(self, params: Mapping) -> None:
        check_params(params, param_shapes(self.config))
        for name, value in params.items():
            value = np.asarray(value.data if isinstance(value, ad.Tensor) else value)
            if value.dtype not in (np.float32, np.float64):
                raise ValueError(f"parameter {name} must be a float32 or float64 array; got dtype {value.dtype}")
            check_finite(f"parameter {name}", value)

    def forward(self, xs, state: SDNCState | None = None, frozen: SDNCRecord | None = None):
        """ys (T, B, Y) and the cache (see sdnc_forward)."""
        self._check_params(self.params)
        return sdnc_forward(self.params, xs, self.config, state, frozen)

    def backward(self, dys, cache: SDNCCache) -> dict[str, np.ndarray]:
        """Gradients of sum(dys * ys) w.r.t. every parameter (see sdnc_backward)."""
        return sdnc_backward(dys, cache)[0]

    def backward_with_state(self, dys, cache: SDNCCache, dstate: SDNCGrad | None = None):
        """(grads, dstate0), to chain BPTT across chunks."""
        return sdnc_backward(dys, cache, dstate)

    def forward_autodiff(self, tparams: Mapping[str, ad.Tensor], xs, state: SDNCState | None = None,
                         frozen: SDNCRecord | None = None) -> ad.Tensor:
        """The autodiff engine (see sdnc_autodiff)."""
        self._check_params(tparams)
        return sdnc_autodiff(tparams, xs, self.config, state, frozen)

    def forward_dense(self, tparams: Mapping[str, ad.Tensor], xs, state: SDNCState | None = None):
        """The dense oracle (see sdnc_dense_autodiff): (ys Tensor, final dense state)."""
        self._check_params(tparams)
        return sdnc_dense_autodiff(tparams, xs, self.config, state)
