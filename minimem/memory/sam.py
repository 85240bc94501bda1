"""Sparse Access Memory (Rae, Hunt et al. 2016, "Scaling Memory-Augmented Neural Networks with
Sparse Reads and Writes", arXiv:1610.09027, NIPS 2016): an LSTM controller whose reads touch only
the K words most similar to each query and whose write touches only the previously read words plus
the least recently accessed one, so the memory is modified in place and BPTT reverts the few rows
each step changed (spec specs/ntm_dnc_sam.md, Part C).

Shapes: B batch, T time, X input width, Y output width, N slots, W word size, R read heads,
K slots read per head, H LSTM size, P = R (W + 1) + W + 2 interface size.

One time step, spec C.3 (paper eq. numbers in brackets):
    1.          h_t = LSTM([x_t; r^1_{t-1}; ..; r^R_{t-1}], h_{t-1}, c_{t-1});  p_t = h_t W_p + b_p
    2.          q^i, beta^i = oneplus(.), a_t, alpha_t = sigmoid(.), gamma_t = sigmoid(.)  (sam_interface)
    3. [6]      l_t = argmin_j last_{t-1}(j), ties to the lowest index                   LRA slot
    4.-5. [5]/[9] wW_t = alpha_t (gamma_t mean_i wR^i_{t-1} + (1 - gamma_t) I^U_t)        write weights
    6. [3]/[8]  M_t = M_{t-1} - M_{t-1} o (I^U_t 1^T) + wW_t a_t^T                        WRITE FIRST
    7. [4]/[7]  wR^i_t = softmax of beta^i D(q^i, M_t(s)) over the top-K set S^i_t;
                r^i_t = sum_s wR^i_t(s) M_t(s)                                           then read M_t
    8. [U(2)]   last_t(j) = t where wW_t(j) + sum_i wR^i_t(j) > delta                    usage
    9.          y_t = [h_t; r^1_t; ..; r^R_t] W_o + b_o
Steps 3-8 are minimem.memory.sam_sparse (and its dense twin minimem.memory.sam_dense). The time
loop keeps only what feeds back: x_t's share of step 1's LSTM pre-activations is one product over
all T before it (controller_prepare), step 9 one product after it (outputs_forward), and the
backward forms the weight gradients of steps 1, 2 and 9 after its loop, one product per weight
(controller_weight_gradients).

Parameters (an ordered dict; the same names key gradients, checkpoints and golden files):
    `controller.W_x` (X + R W, 4H)  used as [x_t; r^1_{t-1}; ..; r^R_{t-1}] @ W_x (rows [0:X] act on
                                    x_t, then the read words head after head); gates i, f, g, o
    `controller.W_h` (H, 4H), `controller.b` (4H,)   minimem.nn.lstm; forget bias starts at 1
    `interface.W` (H, P), `interface.b` (P,)          p_t = h_t @ W + b; columns in sam_interface
    `output.W` (H + R W, Y), `output.b` (Y,)           y_t = [h_t; r_t] @ W + b (rows h, then r^1..r^R)

Engines (config.engine picks the manual one; all three share the parameters):
- "sparse" (default): ONE memory buffer modified in place and per-step records of the touched rows
  only (written and read), O(T (2 R K + 1) W) numbers instead of O(T N W); BPTT reads the buffer,
  reverts each write with the saved rows in reverse time order and keeps ONE gradient buffer dM (spec C.4). After
  backward the buffer equals M_0 bit for bit. Read weights are batch-stacked CSR (spec C.5).
- "dense": the dense twin (minimem.memory.sam_dense): (B, R, N) weightings and every M_t kept.
  K = N is the dense path; usage="discounted" with K = N is DAM.
- forward_autodiff: the same step with minimem.autodiff ops in gather/scatter form (the K rows of
  each head are gathered, the write is a scatter_add that sums duplicate slots).
Discrete choices (top-K sets, LRA slots) are recorded in cache.record (a SAMRecord); passing it
back as `frozen=` replays them, so finite differences never straddle a change of index set.
Nearest neighbours (config.index, minimem.memory.sam_index): "exact" top-K over all N rows (the
default and the oracle) or an approximate "kdtree" / "lsh" index, built on the starting memory at
every forward (never consulted in backward: the sets are recorded), told after each write which
rows changed, and whose candidates are re-scored exactly with D before the top K are kept.
The final memory after a sparse backward: forward(..., copy_final_memory=True) (the default)
copies M_T into cache.final_state (O(N W) once); with False, cache.final_state.M IS the buffer,
which the backward reverts to M_0 (a later backward replays the recorded writes first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem.memory.addressing import content_autodiff, cosine_similarity_forward
from minimem.memory.sam_dense import DenseAccessCache, dense_access_backward, dense_access_forward
from minimem.memory.sam_index import ExactIndex, make_index
from minimem.memory.sam_lra import ArgminOrder, LRAOrder, lra_order
from minimem.memory.sam_interface import (
    SAMInterface, interface_autodiff, interface_backward, interface_forward,
)
from minimem.memory.sam_sparse import (
    INDEX_DTYPE, ReadRecord, WriteRecord, lra_slots, sparse_read_backward, sparse_read_forward,
    sparse_write_backward, sparse_write_forward, sparse_write_replay, sparse_write_revert, stamp_accesses,
    top_k_slots,
)
from minimem.memory.sam_state import (
    SAMConfig, SAMGrad, SAMRecord, SAMState, check_frozen, check_grad_state, check_inputs, check_state,
    initial_state, param_shapes,
)
from minimem.nn.linear import (
    LinearCache, as_float_array, check_finite, check_params, linear_autodiff, linear_backward, linear_forward,
    linear_init, strip_prefix, with_prefix,
)
from minimem.nn.lstm import (
    LSTMFeedbackCache, LSTMFeedbackParams, lstm_external_share, lstm_feedback_params, lstm_feedback_step_backward,
    lstm_feedback_step_forward, lstm_feedback_weight_gradients, lstm_init, lstm_step_autodiff,
)

__all__ = ["SAM", "SAMConfig", "SAMState", "SAMGrad", "SAMRecord", "SAMCache", "SAMLookup", "sam_forward",
           "sam_backward", "sam_autodiff", "sam_init", "initial_state", "param_shapes"]


# ----------------------------------------------------------------- controller and output, steps 1-2 and 9
# The controller input is chi_t = [x_t; r_{t-1}]: x_t's share of the LSTM's eq. (1) is formed for all T
# before the loop (controller_prepare) and the weight gradients of steps 1-2 after it
# (controller_weight_gradients); the loop keeps only what the recurrence needs (minimem.nn.lstm's
# lstm_feedback_* functions).
class ControllerCache(NamedTuple):
    lstm: LSTMFeedbackCache      # step 1, the LSTM cell
    interface: object            # step 2, sam_interface.InterfaceCache


def controller_prepare(params: Mapping, xs: np.ndarray, config: SAMConfig):
    """Once per sequence: (the controller.* parameters split for chi_t = [x_t; r_{t-1}] (an
    LSTMFeedbackParams), x_t's share of eq. (1) for every step (T, B, 4H))."""
    lstm = lstm_feedback_params(strip_prefix("controller", params), config.X)
    return lstm, lstm_external_share(xs, lstm)


def controller_step_forward(z_ext, r_prev, h_prev, c_prev, lstm: LSTMFeedbackParams, params: Mapping,
                            config: SAMConfig):
    """Steps 1-2: (h, c, SAMInterface, cache) from x_t's share z_ext (B, 4H) of the LSTM's eq. (1)
    (controller_prepare), r_{t-1} (B, R, W), h, c (B, H). params: the parameter dict (interface.W,
    interface.b), checked at the sequence entry."""
    B, R, W = r_prev.shape
    (h, c), c_lstm = lstm_feedback_step_forward(z_ext, r_prev.reshape(B, R * W), h_prev, c_prev, lstm)   # 1.
    p = h @ params["interface.W"]                                                    # (B, P)
    p += params["interface.b"]
    iface, c_iface = interface_forward(p, R, W, config.write_squash, validate=False)  # 2.
    return h, c, iface, ControllerCache(c_lstm, c_iface)


def controller_step_backward(dh, dc, dinterface: SAMInterface, cache: ControllerCache, lstm: LSTMFeedbackParams,
                             params: Mapping):
    """Adjoint of steps 1-2 without the weight gradients. dh: (B, H) gradient w.r.t. h_t from the
    output and from step t+1; dc likewise. Returns (dr_prev (B, R, W), dh_prev, dc_prev, dz (B, 4H)
    the LSTM's pre-activation gradient, dp (B, P)), dz and dp for controller_weight_gradients."""
    dp = interface_backward(dinterface, cache.interface)                           # 2.
    dh = dh + dp @ params["interface.W"].T                                         # 1. p_t = h_t W_p + b_p
    dr_prev, dh_prev, dc_prev, dz = lstm_feedback_step_backward(dh, dc, cache.lstm, lstm)
    B, R, W = dp.shape[0], cache.interface.R, cache.interface.W
    return dr_prev.reshape(B, R, W), dh_prev, dc_prev, dz, dp


def controller_weight_gradients(xs, hs, caches: list, dZ, dP, lstm: LSTMFeedbackParams) -> dict:
    """The controller.* and interface.* gradients of a whole sequence, after the time loop (the
    weights are shared by every step): xs (T, B, X), hs (T, B, H) the h_t, caches the T
    ControllerCache, dZ (T, B, 4H) and dP (T, B, P) the steps' dz and dp. One product per weight
    over all (T, B) rows."""
    T, B, P = dP.shape
    grads = with_prefix("controller", lstm_feedback_weight_gradients(xs, [c.lstm for c in caches], dZ, lstm))
    dP_flat = dP.reshape(T * B, P)
    grads["interface.W"] = hs.reshape(T * B, -1).T @ dP_flat
    grads["interface.b"] = dP_flat.sum(axis=0)
    return grads


def output_forward(h, r, params: Mapping):
    """Step 9: y_t = [h_t; r^1_t; ..; r^R_t] @ W_o + b_o, (B, Y)."""
    return linear_forward(np.concatenate([h, r.reshape(r.shape[0], -1)], axis=1),
                          params["output.W"], params["output.b"])


def output_backward(dy, cache: LinearCache, config: SAMConfig):
    """Adjoint of step 9: (dh (..., H), dr (..., R, W), {output.W, output.b}) for dy (..., Y), with
    the leading axes of output_forward ((B,) or (T, B))."""
    dhr, dW, db = linear_backward(dy, cache)
    H = config.H
    return dhr[..., :H], dhr[..., H:].reshape(dy.shape[:-1] + (config.R, config.W)), {"output.W": dW, "output.b": db}


def outputs_forward(hr, params: Mapping, config: SAMConfig):
    """Step 9 for every t at once, after the time loop (y_t feeds nothing back into the recurrence):
    one product over the (T, B) rows [h_t; r^1_t; ..; r^R_t] the loop wrote into hr (T, B, H + R W)
    instead of T small ones. Returns ys (T, B, Y) and the cache for output_backward, which then
    also runs once over all t."""
    ys, cache = linear_forward(hr, params["output.W"], params["output.b"])
    return ys.astype(config.dtype, copy=False), cache


def _controller_buffers(dys, config: SAMConfig):
    """Empty (T, B, 4H) and (T, B, P) arrays for every step's dz and dp (controller_weight_gradients)."""
    T, B = dys.shape[:2]
    return np.empty((T, B, 4 * config.H), dys.dtype), np.empty((T, B, config.P), dys.dtype)


def _accumulate(total: dict, grads: dict) -> None:
    for name, value in grads.items():
        total[name] += value                                      # the weights are shared by every step


# ----------------------------------------------------------------- what a step looks things up in
class SAMLookup:
    """The non-differentiable structures a sparse step consults, derived from a state's memory M and
    access times `last` (spec C.2 "index", C.3 steps 3 and 7, C.6):

        index   which K slots each query reads: minimem.memory.sam_index (ExactIndex with its row-norm
                cache, or the k-d tree / LSH snapshot with its dirty set)
        lra     the LRA order (minimem.memory.sam_lra.lra_order: the LRAOrder queue, or an argmin at
                N <= ARGMIN_MAX_N); None with DAM's discounted usage

    Building one costs O(N W) (exact) to O(N W log N) (an approximate index) - far more than a step.
    SAM.forward builds one from its starting state unless it is given `lookup=`, and returns the
    one that describes its final state as cache.lookup: passing it to the next call with
    cache.final_state (a sequence in chunks, or repeated calls from one state) carries it instead
    of rebuilding it. forward works on a fork, so a lookup can be passed any number of times.
    A lookup belongs to one state: forward checks B, N, W, the time t and the index kind, but
    cannot see a memory edited by hand - give such a state no lookup.
    """

    def __init__(self, index, lra: LRAOrder | ArgminOrder | None, t: int, shape: tuple[int, int, int]):
        self.index, self.lra, self.t, self.shape = index, lra, int(t), tuple(shape)

    @classmethod
    def build(cls, config: SAMConfig, M: np.ndarray, last: np.ndarray, t: int) -> "SAMLookup":
        """The lookup of a state with memory M (B, N, W) and access times last (B, N) at time t."""
        if config.index == "exact":
            index = ExactIndex(M)
        else:
            index = make_index(config.index, M, eps=config.index_eps, tables=config.lsh_tables,
                               bits=config.lsh_bits, rebuild_after=config.index_rebuild_after,
                               seed=config.index_seed)
        order = lra_order(last, t) if config.discount_or_none is None else None
        return cls(index, order, t, M.shape)

    def fork(self) -> "SAMLookup":
        """An independent copy (what forward works on)."""
        return SAMLookup(self.index.fork(), None if self.lra is None else self.lra.fork(), self.t, self.shape)

    def check(self, config: SAMConfig, state: SAMState) -> None:
        """ValueError unless this lookup can describe `state` (shape, time, index kind, usage)."""
        if not isinstance(self, SAMLookup):
            raise ValueError(f"lookup must be a SAMLookup (cache.lookup of an earlier forward); "
                             f"got {type(self).__name__}")
        if self.shape != state.M.shape or self.t != state.t:
            raise ValueError(f"lookup describes a state of shape {self.shape} at t = {self.t}, but the state "
                             f"has shape {state.M.shape} at t = {state.t}: pass the cache.lookup that came "
                             f"with this state, or none")
        if self.index.kind != config.index or (self.lra is None) != (config.discount_or_none is not None):
            raise ValueError(f"lookup was built for index {self.index.kind!r} and "
                             f"{'discounted' if self.lra is None else 'lra'} usage; the config has index "
                             f"{config.index!r} and usage {config.usage!r}")


# ----------------------------------------------------------------- a sequence
class SparseStep(NamedTuple):
    controller: ControllerCache
    write: WriteRecord           # steps 3-6: l_t, Ww, saved rows, a_t, gates
    read: ReadRecord             # step 7: S^i_t, Wr, q, beta


class DenseStep(NamedTuple):
    controller: ControllerCache
    access: DenseAccessCache     # steps 3-8, every array (B, N, .) of the dense twin


@dataclass
class SAMCache:
    """What backward needs. For the sparse engine `memory` is THE memory buffer and `applied` the
    number of recorded writes it currently holds (T after forward, 0 after backward)."""
    config: SAMConfig
    xs: np.ndarray               # (T, B, X)
    state0: SAMState             # the (validated) initial state
    steps: list                  # T SparseStep or DenseStep
    final_state: SAMState
    record: SAMRecord            # the discrete choices, to replay with frozen=
    memory: np.ndarray | None = None
    applied: int = 0
    lookup: "SAMLookup | None" = None   # index and LRA order of final_state (sparse engine, not frozen)
    lstm: LSTMFeedbackParams | None = None   # the controller's split parameters (controller_prepare)
    output: LinearCache | None = None       # step 9 over all t: x = the (T, B, H + R W) rows [h_t; r_t]
    params: Mapping | None = None           # the parameter dict of the forward (interface.W)


def sam_forward(params: Mapping, xs: np.ndarray, config: SAMConfig, state: SAMState | None = None,
                frozen: SAMRecord | None = None, copy_final_memory: bool = True, lookup: SAMLookup | None = None,
                in_place: bool = False) -> tuple[np.ndarray, SAMCache]:
    """Run SAM over a sequence with the manual engine config.engine (no parameter validation:
    SAM.forward does that).

    Args:
        params: the parameter dict. xs: (T, B, X). config: SAMConfig.
        state: a SAMState to continue from (None: initial_state). frozen: a SAMRecord to replay.
        copy_final_memory: sparse engine only, see the module docstring.
        lookup: sparse engine only: the SAMLookup of `state` (cache.lookup of the forward that made
            it), used instead of building one; None: built here.
        in_place: sparse engine only: use state.M itself as THE memory buffer instead of a copy
            (which costs O(N W) per call): forward leaves M_T in it, backward reverts it to M_0 bit
            for bit. state.M must be a writeable C-contiguous array of config.dtype.
    Returns:
        ys (T, B, Y) and the SAMCache (cache.final_state, cache.record, cache.lookup).
    """
    xs = check_inputs(xs, config)
    T, B, _ = xs.shape
    given = state
    state = initial_state(config, B) if state is None else check_state(state, config, B)
    frozen = None if frozen is None else check_frozen(frozen, config, T, B)
    if config.engine == "dense":
        if lookup is not None or in_place:
            raise ValueError("lookup= and in_place= belong to the sparse engine (config.engine='sparse')")
        return _dense_forward(params, xs, config, state, frozen, copy_final_memory)
    if in_place and (given is None or state.M is not given.M or not (
            state.M.flags.c_contiguous and state.M.flags.writeable)):
        raise ValueError(f"in_place=True needs a state whose M is a writeable C-contiguous {config.dtype} "
                         f"array (it becomes the memory buffer)")
    if lookup is not None:
        SAMLookup.check(lookup, config, state)
    return _sparse_forward(params, xs, config, state, frozen, copy_final_memory, lookup, in_place)


def _sparse_forward(params, xs, config: SAMConfig, state: SAMState, frozen, copy_final_memory: bool,
                    lookup: SAMLookup | None, in_place: bool):
    T, B, _ = xs.shape
    R, K, discount = config.R, config.K, config.discount_or_none
    lstm, z_ext = controller_prepare(params, xs, config)             # split once; x_t's share for all t
    M = state.M if in_place else np.array(state.M, order="C", copy=True)   # THE memory buffer (B, N, W)
    last, usage = np.array(state.last, copy=True), np.array(state.usage, copy=True)
    index, weight, r, h, c = state.read_index, state.read_weight, state.r, state.h, state.c
    if frozen is None:
        lookup = SAMLookup.build(config, M, last, state.t) if lookup is None else lookup.fork()
        ann, order = lookup.index, lookup.lra
    else:
        lookup = ann = order = None                                  # the record makes every choice
    hr = np.empty((T, B, config.H + R * config.W), dtype=config.dtype)    # step 9's input rows [h_t; r_t]
    steps, lras, indexes = [], np.empty((T, B), INDEX_DTYPE), np.empty((T, B, R, K), INDEX_DTYPE)
    for t in range(T):
        now = state.t + t + 1
        h, c, iface, c_controller = controller_step_forward(z_ext[t], r, h, c, lstm, params, config)   # 1.-2.
        if frozen is not None:
            lra = frozen.lra[t]
        else:
            lra = order.head(last) if order is not None else lra_slots(usage)                      # 3.
        write = sparse_write_forward(M, index, weight, lra, iface.a, iface.alpha, iface.gamma)    # 4.-6.
        if ann is not None:
            ann.update(M, write.rows)                                                              # 6. index
        r, read = sparse_read_forward(M, iface.q, iface.beta, K,
                                      None if frozen is None else frozen.read_index[t],
                                      None if ann is None else (lambda q: ann.query(M, q, K)),
                                      validate=False)                                              # 7.
        accessed = stamp_accesses(last, None if discount is None else usage,
                                  np.concatenate([write.rows, read.rows]),
                                  np.concatenate([write.data, read.w.reshape(-1)]), now, config.delta,
                                  discount)                                                        # 8.
        if order is not None:
            order.touch(accessed, now)                                                             # 8. LRA order
        hr[t, :, :config.H], hr[t, :, config.H:] = h, r.reshape(B, -1)                            # 9. after the loop
        steps.append(SparseStep(c_controller, write, read))
        index, weight = read.index, read.w
        lras[t], indexes[t] = write.lra, index
    ys, c_output = outputs_forward(hr, params, config)                                             # 9.
    final = SAMState(M.copy() if copy_final_memory else M, last, usage, index, weight, r, h, c, state.t + T)
    if lookup is not None:
        lookup.t = state.t + T
    return ys, SAMCache(config, xs, state, steps, final, SAMRecord(indexes, lras), memory=M, applied=T,
                        lookup=lookup, lstm=lstm, output=c_output, params=params)


def _make_index(config: SAMConfig, M: np.ndarray):
    """The approximate nearest-neighbour index of config.index, built on M (minimem.memory.sam_index)."""
    return make_index(config.index, M, eps=config.index_eps, tables=config.lsh_tables, bits=config.lsh_bits,
                      rebuild_after=config.index_rebuild_after, seed=config.index_seed)


def _dense_forward(params, xs, config: SAMConfig, state: SAMState, frozen, copy_final_memory: bool):
    T, B, _ = xs.shape
    N, R, K = config.N, config.R, config.K
    lstm, z_ext = controller_prepare(params, xs, config)             # split once; x_t's share for all t
    M, last, usage, r, h, c = state.M, state.last, state.usage, state.r, state.h, state.c
    w_read = np.zeros((B, R, N), dtype=config.dtype)
    np.put_along_axis(w_read, state.read_index, state.read_weight, axis=-1)      # (B, R, N), 0 if empty
    hr = np.empty((T, B, config.H + R * config.W), dtype=config.dtype)    # step 9's input rows [h_t; r_t]
    steps, lras, indexes = [], np.empty((T, B), INDEX_DTYPE), np.empty((T, B, R, K), INDEX_DTYPE)
    for t in range(T):
        h, c, iface, c_controller = controller_step_forward(z_ext[t], r, h, c, lstm, params, config)   # 1.-2.
        (M, last, usage, w_read, r), c_access = dense_access_forward(
            M, last, usage, w_read, iface.q, iface.beta, iface.a, iface.alpha, iface.gamma, state.t + t + 1,
            K, config.delta, config.discount_or_none, None if frozen is None else frozen.lra[t],
            None if frozen is None else frozen.read_index[t])                                     # 3.-8.
        hr[t, :, :config.H], hr[t, :, config.H:] = h, r.reshape(B, -1)                            # 9. after the loop
        steps.append(DenseStep(c_controller, c_access))
        lras[t], indexes[t] = c_access.lra, c_access.index
    ys, c_output = outputs_forward(hr, params, config)                                             # 9.
    index = indexes[-1]
    final = SAMState(M, last, usage, index, np.take_along_axis(w_read, index, axis=-1), r, h, c, state.t + T)
    return ys, SAMCache(config, xs, state, steps, final, SAMRecord(indexes, lras), lstm=lstm,
                        output=c_output, params=params)


def sam_backward(dys: np.ndarray, cache: SAMCache, dstate: SAMGrad | None = None):
    """BPTT through sam_forward.

    From outside: dys (T, B, Y), each step's loss gradient w.r.t. y_t, and optionally dstate, the
    gradient w.r.t. cache.final_state's differentiable fields (to chain chunks; None: zero).
    Carried from step t+1 to t: dM (the one gradient buffer), dwR_t (through the write at t+1,
    the recurrence write-at-t+1 <- read-at-t of C.4), dr_t (through the controller input of t+1),
    dh_t and dc_t.
    Returns (grads keyed like the params, SAMGrad w.r.t. the initial state).
    """
    config = cache.config
    T, B = cache.xs.shape[:2]
    dys = as_float_array("dys", dys)
    if dys.shape != (T, B, config.Y):
        raise ValueError(f"dys must have the outputs' shape (T, B, Y) = {(T, B, config.Y)}; got {dys.shape}")
    check_finite("dys", dys)
    final = cache.final_state
    if dstate is None:
        # np.zeros, not zeros_like: the (B, N, W) buffer gets its pages only where gradients land
        dstate = SAMGrad(np.zeros(final.M.shape, final.M.dtype), np.zeros_like(final.read_weight),
                         np.zeros_like(final.r), np.zeros_like(final.h), np.zeros_like(final.c))
        owned = True
    else:
        dstate = check_grad_state(dstate, final)
        owned = False
    grads = {name: np.zeros(shape, dtype=dys.dtype) for name, shape in param_shapes(config).items()}
    if config.engine == "sparse":
        return grads, _sparse_backward(dys, cache, dstate, grads, owned)
    return grads, _dense_backward(dys, cache, dstate, grads)


def _sparse_backward(dys, cache: SAMCache, dstate: SAMGrad, grads: dict, owned: bool) -> SAMGrad:
    config, steps, M = cache.config, cache.steps, cache.memory
    for step in steps[cache.applied:]:                       # a reverted buffer: redo the writes first
        sparse_write_replay(M, step.write)
    cache.applied = len(steps)
    dM = dstate.M if owned else np.array(dstate.M, order="C", copy=True)   # THE gradient buffer (B, N, W)
    dweight, dr_carry, dh, dc = dstate.read_weight, dstate.r, dstate.h, dstate.c
    dh_out, dr, g_out = output_backward(dys, cache.output, config)         # 9. (T, B, H), (T, B, R, W)
    _accumulate(grads, g_out)
    dZ, dP = _controller_buffers(dys, config)                              # every step's dz, dp
    for t in reversed(range(len(steps))):
        step = steps[t]
        dq, dbeta = sparse_read_backward(dr[t] + dr_carry, dweight, M, dM, step.read)             # 7. M holds M_t
        sparse_write_revert(M, step.write)                                                         # 6. M holds M_{t-1}
        cache.applied = t
        da, dalpha, dgamma, dweight = sparse_write_backward(dM, step.write)                       # 6.-4.
        dr_carry, dh, dc, dZ[t], dP[t] = controller_step_backward(
            dh_out[t] + dh, dc, SAMInterface(dq, dbeta, da, dalpha, dgamma), step.controller, cache.lstm,
            cache.params)                                                                          # 2.-1.
    _accumulate(grads, controller_weight_gradients(cache.xs, cache.output.x[..., :config.H],
                                                    [s.controller for s in steps], dZ, dP, cache.lstm))
    return SAMGrad(dM, dweight, dr_carry, dh, dc)


def _dense_backward(dys, cache: SAMCache, dstate: SAMGrad, grads: dict) -> SAMGrad:
    config, steps = cache.config, cache.steps
    B, R, N = dys.shape[1], config.R, config.N
    dM, dr_carry, dh, dc = dstate.M, dstate.r, dstate.h, dstate.c
    dw_read = np.zeros((B, R, N), dtype=dys.dtype)
    np.put_along_axis(dw_read, cache.final_state.read_index, dstate.read_weight, axis=-1)
    dh_out, dr, g_out = output_backward(dys, cache.output, config)         # 9. (T, B, H), (T, B, R, W)
    _accumulate(grads, g_out)
    dZ, dP = _controller_buffers(dys, config)                              # every step's dz, dp
    for t in reversed(range(len(steps))):
        step = steps[t]
        dM, dw_read, dq, dbeta, da, dalpha, dgamma = dense_access_backward(
            dM, dw_read, dr[t] + dr_carry, step.access)                                            # 8.-3.
        dr_carry, dh, dc, dZ[t], dP[t] = controller_step_backward(
            dh_out[t] + dh, dc, SAMInterface(dq, dbeta, da, dalpha, dgamma), step.controller, cache.lstm,
            cache.params)                                                                          # 2.-1.
    _accumulate(grads, controller_weight_gradients(cache.xs, cache.output.x[..., :config.H],
                                                    [s.controller for s in steps], dZ, dP, cache.lstm))
    dweight0 = np.take_along_axis(dw_read, cache.state0.read_index, axis=-1)
    return SAMGrad(dM, dweight0, dr_carry, dh, dc)


# ----------------------------------------------------------------- autodiff twin
def sam_autodiff(tparams: Mapping[str, ad.Tensor], xs, config: SAMConfig, state: SAMState | None = None,
                 frozen: SAMRecord | None = None) -> ad.Tensor:
    """Autodiff twin of sam_forward: ys (T, B, Y) as a Tensor of tparams.

    The memory step in gather/scatter form (the same function as both manual engines): the write is
    erase-by-mask then ad.scatter_add of the R Kp + 1 triplets (duplicates summed), the read gathers
    each head's K rows (B, R, K, W) and applies content_autodiff's softmax over them. Index sets and
    LRA slots come from `frozen` or are chosen on the Tensor values as the manual engines do. A given
    state is a constant.
    """
    xs = check_inputs(xs, config)
    T, B, _ = xs.shape
    state = initial_state(config, B) if state is None else check_state(state, config, B)
    frozen = None if frozen is None else check_frozen(frozen, config, T, B)
    N, W, R, K, discount = config.N, config.W, config.R, config.K, config.discount_or_none
    offsets = N * np.arange(B, dtype=INDEX_DTYPE)
    M2 = ad.Tensor(state.M.reshape(B * N, W))                                     # (B N, W)
    last, usage = state.last.copy(), state.usage.copy()
    index, weight = state.read_index, ad.Tensor(state.read_weight)
    r, h, c = ad.Tensor(state.r), ad.Tensor(state.h), ad.Tensor(state.c)
    ann = None if frozen is not None or config.index == "exact" else _make_index(config, state.M.copy())
    controller = strip_prefix("controller", tparams)
    ys = []
    for t in range(T):
        chi = ad.concatenate([ad.Tensor(xs[t]), ad.reshape(r, (B, R * W))], axis=1)             # 1.
        h, c = lstm_step_autodiff(chi, h, c, controller)
        p = linear_autodiff(h, tparams["interface.W"], tparams["interface.b"])
        iface = interface_autodiff(p, R, W, config.write_squash)                                 # 2.
        lra = lra_slots(last if discount is None else usage) if frozen is None else frozen.lra[t]  # 3.
        Kp = index.shape[2]
        columns = np.concatenate([(index + offsets[:, None, None]).reshape(-1), offsets + lra])
        batch = np.concatenate([np.repeat(np.arange(B), R * Kp), np.arange(B)])
        values = ad.concatenate([
            ad.reshape(ad.reshape(iface.alpha * iface.gamma / R, (B, 1, 1)) * weight, (B * R * Kp,)),
            ad.reshape(iface.alpha * (1.0 - iface.gamma), (B,))])                                # 4.-5.
        keep = np.ones((B * N, 1), dtype=config.dtype)
        keep[offsets + lra] = 0.0
        M2 = ad.scatter_add(M2 * keep, columns, ad.reshape(values, (-1, 1)) * iface.a[batch])   # 6.
        M_now = M2.data.reshape(B, N, W)
        if ann is not None:
            ann.update(M_now, np.unique(columns))                                               # 6. index
        if frozen is not None:                                                                   # 7.
            S = frozen.read_index[t]
        elif ann is not None:
            S = ann.query(M_now, iface.q.data, K)
        else:
            S = top_k_slots(cosine_similarity_forward(M_now, iface.q.data)[0], K)
        rows = S + offsets[:, None, None]                                                        # (B, R, K)
        M_sel = M2[rows]                                                                         # (B, R, K, W)
        w = content_autodiff(M_sel, iface.q, iface.beta)                                        # (B, R, K)
        r = ad.einsum("brk,brkw->brw", w, M_sel)                                                 # (B, R, W)
        access = np.zeros(B * N)                                                                 # 8.
        np.add.at(access, columns, values.data)
        np.add.at(access, rows.reshape(-1), w.data.reshape(-1))
        last.reshape(-1)[access > config.delta] = state.t + t + 1
        if discount is not None:
            usage = discount * usage + access.reshape(B, N)
        ys.append(linear_autodiff(ad.concatenate([h, ad.reshape(r, (B, R * W))], axis=1),
                                  tparams["output.W"], tparams["output.b"]))                    # 9.
        index, weight = S, w
    return ad.stack(ys, axis=0)                                                                  # (T, B, Y)


# ----------------------------------------------------------------- initialisation and model
def sam_init(rng: np.random.Generator, config: SAMConfig) -> dict[str, np.ndarray]:
    """Parameters in the order of param_shapes: the LSTM as minimem.nn.lstm.lstm_init (Xavier input
    weights, orthogonal recurrent weights, forget bias config.forget_bias), Xavier-uniform linear
    maps with zero biases."""
    X, Y, R, W, H, dtype = config.X, config.Y, config.R, config.W, config.H, config.dtype
    params = with_prefix("controller", lstm_init(rng, X + R * W, H, config.forget_bias, dtype))
    params.update(with_prefix("interface", linear_init(rng, H, config.P, dtype=dtype)))
    params.update(with_prefix("output", linear_init(rng, H + R * W, Y, dtype=dtype)))
    return params


class SAM:
    """SAM as a model (protocol of DESIGN.md): xs (T, B, X) -> logits ys (T, B, Y).

        model = SAM(SAMConfig(X=8, Y=6, N=64, K=4), rng=np.random.default_rng(0))
        ys, cache = model.forward(xs)                # cache.final_state, cache.record
        grads = model.backward(dys, cache)           # keys of model.params; memory buffer reverted
        ys_t = model.forward_autodiff(tparams, xs)   # Tensor, the independent engine

    model.params is read at call time (optimisers update it in place).
    """

    def __init__(self, config: SAMConfig, rng: np.random.Generator | None = None):
        if not isinstance(config, SAMConfig):
            raise ValueError(f"config must be a SAMConfig; got {type(config).__name__}")
        self.config = config
        self.params = sam_init(np.random.default_rng(0) if rng is None else rng, config)

    def initial_state(self, B: int) -> SAMState:
        """The state at a sequence start for B sequences (spec C.2)."""
        return initial_state(self.config, B)

    def _check_params(self, params: Mapping) -> None:
        check_params(params, param_shapes(self.config))
        for name, value in params.items():
            value = np.asarray(value.data if isinstance(value, ad.Tensor) else value)
            if value.dtype not in (np.float32, np.float64):
                raise ValueError(f"parameter {name} must be a float32 or float64 array; got dtype {value.dtype}")
            check_finite(f"parameter {name}", value)

    def forward(self, xs, state: SAMState | None = None, frozen: SAMRecord | None = None,
                copy_final_memory: bool = True, lookup: SAMLookup | None = None,
                in_place: bool = False) -> tuple[np.ndarray, SAMCache]:
        """ys (T, B, Y) and the cache (see sam_forward)."""
        self._check_params(self.params)
        return sam_forward(self.params, xs, self.config, state, frozen, copy_final_memory, lookup, in_place)

    def lookup(self, state: SAMState) -> SAMLookup:
        """The SAMLookup (index and LRA order) of a state, to pass to forward(..., lookup=) - e.g.
        once for a large memory that many forward calls start from."""
        state = check_state(state, self.config, np.shape(state.M)[0] if isinstance(state, SAMState) else 0)
        return SAMLookup.build(self.config, state.M, state.last, state.t)

    def backward(self, dys, cache: SAMCache) -> dict[str, np.ndarray]:
        """Gradients of sum(dys * ys) w.r.t. every parameter (BPTT, see sam_backward)."""
        return sam_backward(dys, cache)[0]

    def backward_with_state(self, dys, cache: SAMCache, dstate: SAMGrad | None = None):
        """(grads, dstate0): also takes the gradient w.r.t. the final state and returns the one
        w.r.t. the initial state, to chain BPTT across chunks of a sequence."""
        return sam_backward(dys, cache, dstate)

    def forward_autodiff(self, tparams: Mapping[str, ad.Tensor], xs, state: SAMState | None = None,
                         frozen: SAMRecord | None = None) -> ad.Tensor:
        """The autodiff engine: ys (T, B, Y) as a Tensor of tparams (see sam_autodiff)."""
        self._check_params(tparams)
        return sam_autodiff(tparams, xs, self.config, state, frozen)
