"""The state a Neural Turing Machine carries through time, and where it starts (Graves et al., 2014,
arXiv:1410.5401, section 4; spec specs/ntm_dnc_sam.md A.2 and A.10.6). The model that moves it
forward is minimem.memory.ntm.

Shapes: B batch, N slots, W word size, R read heads, Rw write heads, H controller size.
State after step t (NTMState; in the backward the same tuple holds the gradients w.r.t. it):
    M (B, N, W), w_read (B, R, N), w_write (B, Rw, N), r (B, R, W), h (B, H), c (B, H).
Initial state, the same for every element of the batch:
    M_0 = memory0 (N, W): the constant 1e-6 (memory_init "constant", Collier & Beel's best) or a
          fixed uniform(+-1/sqrt(N + W)) buffer ("random", pytorch-ntm); tanh(init.memory_bias)
          when "learned"
    w_0 = softmax(init.read<i>.w_bias), softmax(init.write<j>.w_bias)      one (N,) bias per head
    r_0 = tanh(init.read<i>.r_bias)                                         one (W,) bias per read head
    h_0 = c_0 = 0
The functions take the model's NTMConfig (only its sizes and memory_init are read).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem.checks import check_int
from minimem.nn.linear import as_float_array, check_finite

MEMORY_CONSTANT = 1e-6      # Collier & Beel's best initial memory value (spec A.2)


# ----------------------------------------------------------------- the state and its checks
class NTMState(NamedTuple):
    """The recurrent state after a step (or the gradients w.r.t. it, in the backward)."""
    M: np.ndarray        # (B, N, W) memory M_t
    w_read: np.ndarray   # (B, R, N) read weightings
    w_write: np.ndarray  # (B, Rw, N) write weightings
    r: np.ndarray        # (B, R, W) read vectors
    h: np.ndarray        # (B, H) controller output
    c: np.ndarray        # (B, H) LSTM cell (zeros for the feedforward controller)


def state_shapes(config, B: int) -> NTMState:
    """The shape of every state array for a batch of B."""
    N, W, R, Rw, H = config.N, config.W, config.R, config.write_heads, config.H
    return NTMState((B, N, W), (B, R, N), (B, Rw, N), (B, R, W), (B, H), (B, H))


def check_state(state, config, B: int, dtype, what: str = "state", weightings: bool = True) -> NTMState:
    """ValueError naming the array and its expected shape unless `state` fits; returns it in dtype.

    weightings=True also asks w_read and w_write to lie in [0, 1] (a weighting over slots; a
    negative entry would reach the log of the sharpening step as NaN). Gradients w.r.t. a state
    (what="dstate") take any finite values: pass weightings=False.
    """
    if not isinstance(state, NTMState):
        raise ValueError(f"{what} must be an NTMState (M, w_read, w_write, r, h, c); got {type(state).__name__}")
    legend = NTMState("(B, N, W)", "(B, R, N)", "(B, Rw, N)", "(B, R, W)", "(B, H)", "(B, H)")
    checked = []
    for name, value, shape, text in zip(NTMState._fields, state, state_shapes(config, B), legend):
        value = as_float_array(f"{what}.{name}", value)
        if value.shape != shape:
            raise ValueError(f"{what}.{name} must have shape {text} = {shape}; got {value.shape}")
        check_finite(f"{what}.{name}", value)
        if weightings and name in ("w_read", "w_write") and not np.all((value >= 0) & (value <= 1)):
            raise ValueError(f"{what}.{name} must be a weighting over the N slots with entries in [0, 1]; "
                             f"got values in [{value.min():.3g}, {value.max():.3g}]")
        checked.append(value.astype(dtype, copy=False))
    return NTMState(*checked)


def check_batch_size(B) -> int:
    """B as an int >= 1, or ValueError."""
    return check_int("the batch size B", B, 1)


def check_memory0(memory0, config, dtype) -> np.ndarray | None:
    """The fixed initial memory (N, W) in dtype (None when it is learned); None means the 1e-6
    constant for memory_init "constant"."""
    if config.memory_init == "learned":
        return None
    if memory0 is None:
        if config.memory_init == "constant":
            return np.full((config.N, config.W), MEMORY_CONSTANT, dtype=dtype)
        raise ValueError("memory_init 'random' needs the model's fixed memory0 buffer (N, W)")
    memory0 = as_float_array("memory0", memory0)
    if memory0.shape != (config.N, config.W):
        raise ValueError(f"memory0 must have shape (N, W) = {(config.N, config.W)}; got {memory0.shape}")
    check_finite("memory0", memory0)
    return memory0.astype(dtype, copy=False)


# ----------------------------------------------------------------- initial state pair
class InitCache(NamedTuple):
    w_read: np.ndarray   # (R, N) softmax(init.read<i>.w_bias)
    w_write: np.ndarray  # (Rw, N) softmax(init.write<j>.w_bias)
    r: np.ndarray        # (R, W) tanh(init.read<i>.r_bias)
    M: np.ndarray | None  # (N, W) tanh(init.memory_bias) when learned, else None (a fixed buffer)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return z / np.sum(z, axis=-1, keepdims=True)


def initial_state_forward(params: Mapping[str, np.ndarray], config, memory0: np.ndarray | None,
                          B: int, dtype) -> tuple[NTMState, InitCache]:
    """The state at t = 0 (spec A.2): M_0, w_0 = softmax(bias) per head, r_0 = tanh(bias), h_0 = c_0 = 0.

    Args:
        memory0: (N, W) fixed initial memory ("constant" or "random"); ignored when "learned".
    Returns:
        NTMState with batch size B (every element starts from the same state), and the cache.
    """
    R, Rw, H = config.R, config.write_heads, config.H
    w_read = _softmax(np.stack([params[f"init.read{i}.w_bias"] for i in range(R)]))      # (R, N)
    w_write = _softmax(np.stack([params[f"init.write{j}.w_bias"] for j in range(Rw)]))  # (Rw, N)
    r = np.tanh(np.stack([params[f"init.read{i}.r_bias"] for i in range(R)]))           # (R, W)
    M = np.tanh(params["init.memory_bias"]) if config.memory_init == "learned" else None
    batch = lambda x: np.ascontiguousarray(np.broadcast_to(x, (B,) + x.shape), dtype=dtype)
    state = NTMState(batch(memory0 if M is None else M), batch(w_read), batch(w_write), batch(r),
                     np.zeros((B, H), dtype=dtype), np.zeros((B, H), dtype=dtype))
    return state, InitCache(w_read, w_write, r, M)


def initial_state_backward(dstate: NTMState, cache: InitCache) -> dict[str, np.ndarray]:
    """Adjoint of initial_state_forward: the init.* gradients (summed over the batch, which shares
    one initial state). dh_0, dc_0 have no parameter to go to (h_0 = c_0 = 0)."""
    softmax_vjp = lambda dw, w: w * (dw - np.sum(w * dw, axis=-1, keepdims=True))
    dw_read = softmax_vjp(dstate.w_read.sum(axis=0), cache.w_read)       # (R, N)
    dw_write = softmax_vjp(dstate.w_write.sum(axis=0), cache.w_write)    # (Rw, N)
    dr = dstate.r.sum(axis=0) * (1.0 - cache.r * cache.r)                 # (R, W)
    grads = {}
    for i in range(len(cache.w_read)):
        grads[f"init.read{i}.w_bias"] = dw_read[i]
        grads[f"init.read{i}.r_bias"] = dr[i]
    for j in range(len(cache.w_write)):
        grads[f"init.write{j}.w_bias"] = dw_write[j]
    if cache.M is not None:
        grads["init.memory_bias"] = dstate.M.sum(axis=0) * (1.0 - cache.M * cache.M)   # (N, W)
    return grads


def initial_state_autodiff(tparams: Mapping[str, ad.Tensor], config, memory0: np.ndarray | None,
                           B: int, dtype) -> NTMState:
    """Autodiff twin of initial_state_forward: an NTMState of Tensors."""
    R, Rw, H = config.R, config.write_heads, config.H
    stack = lambda names: ad.stack([tparams[n] for n in names], axis=0)
    w_read = ad.softmax(stack([f"init.read{i}.w_bias" for i in range(R)]), axis=-1)      # (R, N)
    w_write = ad.softmax(stack([f"init.write{j}.w_bias" for j in range(Rw)]), axis=-1)  # (Rw, N)
    r = ad.tanh(stack([f"init.read{i}.r_bias" for i in range(R)]))                      # (R, W)
    M = ad.tanh(tparams["init.memory_bias"]) if config.memory_init == "learned" else ad.Tensor(memory0)
    batch = lambda x: ad.broadcast_to(x, (B,) + x.shape)
    zeros = ad.Tensor(np.zeros((B, H), dtype=dtype))
    return NTMState(batch(M), batch(w_read), batch(w_write), batch(r), zeros, zeros)
