"""Configuration, state and recorded choices of Sparse Access Memory (minimem.memory.sam; spec
specs/ntm_dnc_sam.md C.2, C.7, C.12), with the input validation both engines share.

Shapes: B batch, T time, N slots, W word size, R read heads, K slots read per head, H controller size.

SAMState (spec C.2) is everything carried from step t to t+1:
    M (B, N, W)            memory M_t
    last (B, N) int        time of the last access of each slot above delta (U^(2); 0 at the start)
    usage (B, N)           discounted usage U^(1) (DAM option; stays 0 with usage="lra")
    read_index (B, R, K')  int, S^i_t ascending per head; K' = K, or 0 for the empty weightings
    read_weight (B, R, K') wR^i_t on those slots (rows sum to 1; nothing at a sequence start)
    r (B, R, W)            read words r^i_t
    h, c (B, H)            LSTM output and cell state
    t int                  steps taken so far (the time stamps in `last` are absolute)
SAMGrad holds the gradients w.r.t. the differentiable fields (M, read_weight, r, h, c).
SAMRecord holds a forward pass's discrete choices, replayable with forward(..., frozen=record):
    read_index (T, B, R, K) int and lra (T, B) int.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem.checks import check_int
from minimem.memory.sam_interface import WRITE_SQUASHES, interface_size
from minimem.memory.sam_sparse import INDEX_DTYPE, check_index_sets, check_K
from minimem.nn.linear import as_float_array, check_finite

ENGINES = ("sparse", "dense")
USAGES = ("lra", "discounted")
INDEXES = ("exact", "kdtree", "lsh")


@dataclass(frozen=True)
class SAMConfig:
    """Sizes and options of a SAM (spec C.2, C.7, C.12; defaults: the CPU sizes of C.8).

    X, Y: input and output widths. N, W: memory slots and word size. R: read heads. K: slots read
    per head (1 <= K <= N; K = N is the dense path). H: LSTM size.
    delta: usage threshold (0.005, the paper's value). usage: "lra" (SAM's U^(2), time of last
    access) or "discounted" (DAM's U^(1) with factor `discount`, not given in the paper).
    engine: "sparse" (in-place memory, memory-revert BPTT, O(T K W) records) or "dense" (every
    M_t kept, (B, R, N) weightings; minimem.memory.sam_dense).
    index: how the sparse engine finds each head's K slots (minimem.memory.sam_index): "exact"
    (argpartition over all N, the default), "kdtree" or "lsh" (approximate, snapshot + dirty set,
    exact re-scoring); index_eps: the k-d tree's approximation; lsh_tables, lsh_bits (None: auto);
    index_rebuild_after: row modifications per element before a snapshot rebuild (None: N);
    index_seed: seed of the LSH hyperplanes. The dense engine always scores every slot.
    write_squash: None (paper, a_t unconstrained) or "tanh". forget_bias: LSTM b_f init.
    dtype: "float64" or "float32".
    """
    X: int
    Y: int
    N: int = 32
    W: int = 8
    R: int = 2
    K: int = 4
    H: int = 64
    delta: float = 0.005
    usage: str = "lra"
    discount: float = 0.99
    engine: str = "sparse"
    index: str = "exact"
    index_eps: float = 0.0
    lsh_tables: int = 8
    lsh_bits: int | None = None
    index_rebuild_after: int | None = None
    index_seed: int = 0
    write_squash: str | None = None
    forget_bias: float = 1.0
    dtype: str = "float64"

    def __post_init__(self) -> None:
        for name in ("X", "Y", "N", "W", "R", "K", "H"):
            check_int(f"SAMConfig.{name}", getattr(self, name), 1)
        check_K(self.K, self.N)
        if not (isinstance(self.delta, (int, float)) and np.isfinite(self.delta) and self.delta >= 0):
            raise ValueError(f"SAMConfig.delta must be a finite number >= 0; got {self.delta!r}")
        if self.usage not in USAGES:
            raise ValueError(f"SAMConfig.usage must be one of {USAGES}; got {self.usage!r}")
        if not (isinstance(self.discount, (int, float)) and 0 < self.discount <= 1):
            raise ValueError(f"SAMConfig.discount must be a number in (0, 1]; got {self.discount!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"SAMConfig.engine must be one of {ENGINES}; got {self.engine!r}")
        if self.index not in INDEXES:
            raise ValueError(f"SAMConfig.index must be one of {INDEXES}; got {self.index!r}")
        if self.engine == "dense" and self.index != "exact":
            raise ValueError(f"SAMConfig.index must be 'exact' with engine='dense' (the dense path scores "
                             f"every slot); got {self.index!r}")
        if not (isinstance(self.index_eps, (int, float)) and np.isfinite(self.index_eps) and self.index_eps >= 0):
            raise ValueError(f"SAMConfig.index_eps must be a finite number >= 0; got {self.index_eps!r}")
        check_int("SAMConfig.lsh_tables", self.lsh_tables, 1)
        for name in ("lsh_bits", "index_rebuild_after"):
            if getattr(self, name) is not None:
                check_int(f"SAMConfig.{name} (if not None)", getattr(self, name), 1)
        if self.write_squash not in WRITE_SQUASHES:
            raise ValueError(f"SAMConfig.write_squash must be one of {WRITE_SQUASHES}; got {self.write_squash!r}")
        if not (isinstance(self.forget_bias, (int, float)) and np.isfinite(self.forget_bias)):
            raise ValueError(f"SAMConfig.forget_bias must be a finite number; got {self.forget_bias!r}")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"SAMConfig.dtype must be 'float64' or 'float32'; got {self.dtype!r}")

    @property
    def P(self) -> int:
        """Interface size R (W + 1) + W + 2."""
        return interface_size(self.R, self.W)

    @property
    def discount_or_none(self) -> float | None:
        """lambda when the LRA slot comes from the discounted usage, else None."""
        return self.discount if self.usage == "discounted" else None


def param_shapes(config: SAMConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in the order of model.params (layouts: sam module docstring)."""
    X, Y, R, W, H = config.X, config.Y, config.R, config.W, config.H
    return {"controller.W_x": (X + R * W, 4 * H), "controller.W_h": (H, 4 * H), "controller.b": (4 * H,),
            "interface.W": (H, config.P), "interface.b": (config.P,),
            "output.W": (H + R * W, Y), "output.b": (Y,)}


class SAMState(NamedTuple):
    """Everything carried from step t to t+1 (module docstring; spec C.2)."""
    M: np.ndarray
    last: np.ndarray
    usage: np.ndarray
    read_index: np.ndarray
    read_weight: np.ndarray
    r: np.ndarray
    h: np.ndarray
    c: np.ndarray
    t: int


class SAMGrad(NamedTuple):
    """Gradients w.r.t. the differentiable fields of a SAMState."""
    M: np.ndarray            # (B, N, W)
    read_weight: np.ndarray  # (B, R, K')
    r: np.ndarray            # (B, R, W)
    h: np.ndarray            # (B, H)
    c: np.ndarray            # (B, H)


class SAMRecord(NamedTuple):
    """The discrete choices of a forward pass (constants of the backward, spec C.4)."""
    read_index: np.ndarray   # (T, B, R, K) int, S^i_t
    lra: np.ndarray          # (T, B) int, l_t


def initial_state(config: SAMConfig, B: int) -> SAMState:
    """The state at a sequence start (C.2): zero memory, last = 0, empty read weightings (K' = 0),
    zero read words and controller state, t = 0."""
    check_int("B", B, 1)
    N, W, R, H, dtype = config.N, config.W, config.R, config.H, np.dtype(config.dtype)
    return SAMState(np.zeros((B, N, W), dtype), np.zeros((B, N), INDEX_DTYPE), np.zeros((B, N), dtype),
                    np.zeros((B, R, 0), INDEX_DTYPE), np.zeros((B, R, 0), dtype), np.zeros((B, R, W), dtype),
                    np.zeros((B, H), dtype), np.zeros((B, H), dtype), 0)


# ----------------------------------------------------------------- validation
def check_inputs(xs, config: SAMConfig) -> np.ndarray:
    xs = as_float_array("xs", xs.data if isinstance(xs, ad.Tensor) else xs)
    if xs.ndim != 3 or xs.shape[2] != config.X or xs.shape[1] == 0:
        raise ValueError(f"xs must have shape (T, B, X) with B >= 1 and X = {config.X}; got {xs.shape}")
    if xs.shape[0] == 0:
        raise ValueError(f"xs must have shape (T, B, X) with T >= 1 (the sequence is empty); got {xs.shape}")
    check_finite("xs", xs)
    return xs.astype(config.dtype, copy=False)


def check_state(state, config: SAMConfig, B: int) -> SAMState:
    """A SAMState with the legend's shapes, finite, N = config.N, read weightings in Delta_K."""
    if not isinstance(state, SAMState):
        raise ValueError(f"state must be a SAMState {SAMState._fields}; got {type(state).__name__}")
    N, W, R, H, dtype = config.N, config.W, config.R, config.H, np.dtype(config.dtype)
    M = as_float_array("state.M", state.M)
    if M.ndim != 3 or M.shape[0] != B or M.shape[2] != W:
        raise ValueError(f"state.M must have shape (B, N, W) = {(B, N, W)}; got {M.shape}")
    if M.shape[1] != N:
        raise ValueError(f"state.M has N = {M.shape[1]} slots but the model has N = {N} (SAMConfig.N); "
                         f"the memory and the config must match")
    t = state.t
    check_int("state.t", t, 0)
    last = np.asarray(state.last)
    if last.shape != (B, N) or last.dtype.kind not in "iu" or (last.size and (last.min() < 0 or last.max() > t)):
        raise ValueError(f"state.last must be an integer array of shape (B, N) = {(B, N)} with times in "
                         f"[0, t = {t}]; got {last.dtype} {last.shape}")
    usage = as_float_array("state.usage", state.usage)
    K_prev = np.shape(state.read_index)[-1] if np.ndim(state.read_index) == 3 else -1
    if K_prev not in (0, config.K):
        raise ValueError(f"state.read_index must have shape (B, R, K) with K = {config.K}, or (B, R, 0) for "
                         f"empty weightings; got {np.shape(state.read_index)}")
    read_index = check_index_sets(state.read_index, B, R, N, "state.read_index")
    read_weight = as_float_array("state.read_weight", state.read_weight)
    expected = {"usage": (usage, (B, N), "(B, N)"), "read_weight": (read_weight, (B, R, K_prev), "(B, R, K)"),
                "r": (as_float_array("state.r", state.r), (B, R, W), "(B, R, W)"),
                "h": (as_float_array("state.h", state.h), (B, H), "(B, H)"),
                "c": (as_float_array("state.c", state.c), (B, H), "(B, H)")}
    for name, (value, shape, legend) in expected.items():
        if value.shape != shape:
            raise ValueError(f"state.{name} must have shape {legend} = {shape}; got {value.shape}")
        check_finite(f"state.{name}", value)
    if not np.isfinite(np.sum(M)):         # a finite sum means every entry is finite (NaN and inf spread)
        check_finite("state.M", M)        # without an (B, N, W) temporary; here: which is it, or overflow
    tol = 1e-9 if dtype == np.float64 else 1e-4
    if read_weight.size and (np.any(read_weight < -tol) or np.any(np.sum(read_weight, -1) > 1 + tol)):
        raise ValueError("state.read_weight must hold weightings in Delta_K (entries >= 0, sums <= 1)")
    cast = lambda x: x.astype(dtype, copy=False)
    return SAMState(cast(M), last.astype(INDEX_DTYPE), cast(usage), read_index, cast(read_weight),
                    cast(expected["r"][0]), cast(expected["h"][0]), cast(expected["c"][0]), int(t))


def check_grad_state(dstate, state: SAMState) -> SAMGrad:
    """A SAMGrad shaped like the differentiable fields of `state`, finite."""
    if not isinstance(dstate, SAMGrad):
        raise ValueError(f"dstate must be a SAMGrad {SAMGrad._fields}; got {type(dstate).__name__}")
    out = []
    for name, value in zip(SAMGrad._fields, dstate):
        value = as_float_array(f"dstate.{name}", value)
        expected = np.shape(getattr(state, name))
        if value.shape != expected:
            raise ValueError(f"dstate.{name} must have the shape of the final state's {name} {expected}; "
                             f"got {value.shape}")
        check_finite(f"dstate.{name}", value)
        out.append(value)
    return SAMGrad(*out)


def check_frozen(frozen, config: SAMConfig, T: int, B: int) -> SAMRecord:
    """A SAMRecord for T steps of B sequences: index sets (T, B, R, K) ascending in [0, N), LRA
    slots (T, B) in [0, N)."""
    if not isinstance(frozen, SAMRecord):
        raise ValueError(f"frozen must be a SAMRecord (cache.record of an earlier forward); "
                         f"got {type(frozen).__name__}")
    N, R, K = config.N, config.R, config.K
    index = np.asarray(frozen.read_index)
    if index.shape != (T, B, R, K):
        raise ValueError(f"frozen.read_index must have shape (T, B, R, K) = {(T, B, R, K)}; got {index.shape}")
    index = check_index_sets(index.reshape(T * B, R, K), T * B, R, N, "frozen.read_index").reshape(T, B, R, K)
    lra = np.asarray(frozen.lra)
    if lra.shape != (T, B) or lra.dtype.kind not in "iu" or (lra.size and (lra.min() < 0 or lra.max() >= N)):
        raise ValueError(f"frozen.lra must be an integer array of shape (T, B) = {(T, B)} with slots in "
                         f"[0, N = {N}); got {lra.dtype} {lra.shape}")
    return SAMRecord(index, lra.astype(INDEX_DTYPE))
