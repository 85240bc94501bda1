"""LSAM, Long Short-term Attention Memory (Nam & Seo, 2023, arXiv:2302.09422; spec
specs/nam_hma.md A2): an LSTM-like recurrent cell whose cell state is a per-head NAM memory and
whose hidden state is a gated NAM read of it. Besides the two gates there is no nonlinearity, and no
separate short-term state: h is entirely the read (the reference code, `LSAMCell`; A2.10).

Shapes: B batch, T time, X input width, D state width, H heads, d = D / H head width, Y readout width.
Equations (one step; the spec's labels, the paper's numbering could not be consulted):
    (LSAM-1)  z_t = [x_t ; h_{t-1}]                                    (B, X + D)
    (LSAM-2)  [q~ ; k~ ; v] = z_t W_qkv + b_qkv, three contiguous blocks of D, each (B, H, d) head-major
    (LSAM-3)  q = unit(q~), k = unit(k~) per head (norm over d, floor 1e-12)
    (LSAM-4)  w_t = sigmoid(z_t W_w + b_w)                             (B, H) write gate = erase gate
    (LSAM-5)  u_t = M_{t-1} k                                          (B, H, d) old value at k
    (LSAM-6)  M_t = M_{t-1} + (w_t (v - u_t)) k^T  = WR(M_{t-1}, k~, v, w_t, w_t)   (B, H, d, d)
    (LSAM-7)  r_t = sigmoid(z_t W_r + b_r)                             (B, H) read gate
    (LSAM-8)  h_t = concat_heads(r_t M_t q)  = RD(M_t, q~, r_t), read AFTER the write   (B, D)
h_0 = 0 and M_0 = 0 unless given (the decoder of the spec's sequence model starts from the encoder's
memory, A2.3). Memories are "value x key", (B, H, d_v, d_k) with d_v = d_k = d (spec A1.10).

Cell parameters (plain names; the model prefixes them with `cell.`), all used as `z @ W`, rows
[0:X] acting on x_t and rows [X:X+D] on h_{t-1}:
    `W_qkv` (X + D, 3D), `b_qkv` (3D,)   columns q | k | v, each head-major (head h: [h d, (h+1) d))
    `W_w` (X + D, H), `b_w` (H,)          write/erase gate
    `W_r` (X + D, H), `b_r` (H,)          read gate
The reference's nn.Linear layers map as W = weight.T, b = bias; its init U(+-1/sqrt(X + D)) for
weights and biases is lsam_init's. The model adds an optional per-step readout `readout.W` (D, Y),
`readout.b` (Y,).

BPTT runs through two chains (A2.4): the memory M_t (LSAM-6) and the state h_t, which enters every
projection of step t+1 through z_{t+1}. The gate w is both write and erase probability, so its
gradient is dp_w + dp_e. Nothing is non-differentiable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem import init
from minimem.checks import check_int
from minimem.memory.nam import (
    NAMReadCache, NAMWriteCache, _read_forward, _write_forward, _write_read_backward,
    nam_read_autodiff, nam_write_autodiff,
)
from minimem.nn.linear import (
    as_float_array, check_finite, check_params, linear_autodiff, linear_backward, linear_forward,
    linear_init, strip_prefix, with_prefix,
)

CELL_PARAM_NAMES = ("W_qkv", "b_qkv", "W_w", "b_w", "W_r", "b_r")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function that never overflows (exp of a non-positive number only)."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def lsam_param_shapes(X: int, D: int, H: int) -> dict[str, tuple]:
    """{name: shape} of the cell parameters, in the order of CELL_PARAM_NAMES."""
    return {"W_qkv": (X + D, 3 * D), "b_qkv": (3 * D,), "W_w": (X + D, H), "b_w": (H,),
            "W_r": (X + D, H), "b_r": (H,)}


def _cell_sizes(params: Mapping[str, np.ndarray]) -> tuple[int, int, int]:
    """(X, D, H) from the parameter shapes, checked against each other."""
    b_qkv, W_w = np.shape(params.get("b_qkv")), np.shape(params.get("W_w"))
    if len(b_qkv) != 1 or b_qkv[0] % 3 or b_qkv[0] == 0 or len(W_w) != 2 or W_w[1] == 0:
        raise ValueError(f"b_qkv must have shape (3D,) and W_w (X + D, H); got {b_qkv}, {W_w}")
    D, H = b_qkv[0] // 3, W_w[1]
    X = W_w[0] - D
    if X < 0 or D % H:
        raise ValueError(f"W_w must have shape (X + D, H) with D = {D} divisible by H; got {W_w}")
    check_params(params, lsam_param_shapes(X, D, H))
    return X, D, H


# ----------------------------------------------------------------- one step
class LSAMStepCache(NamedTuple):
    z: np.ndarray            # (B, X + D) [x_t ; h_{t-1}]
    w: np.ndarray            # (B, H) write/erase gate
    r: np.ndarray            # (B, H) read gate
    write: NAMWriteCache     # (LSAM-3, 5, 6), unit(k) inside
    read: NAMReadCache       # (LSAM-3, 8), unit(q) inside
    params: Mapping[str, np.ndarray]


def lsam_step_forward(x: np.ndarray, h_prev: np.ndarray, M_prev: np.ndarray, params: Mapping[str, np.ndarray]):
    """One LSAM step, (LSAM-1)-(LSAM-8).

    Args:
        x: (B, X) input x_t.
        h_prev: (B, D) state h_{t-1}.
        M_prev: (B, H, d, d) memory M_{t-1} (value x key).
        params: the cell parameters (module docstring).
    Returns:
        (h, M): (B, D) and (B, H, d, d), and the cache for lsam_step_backward.
    """
    X, D, H = _cell_sizes(params)
    d = D // H
    x, h_prev, M_prev = as_float_array("x", x), as_float_array("h_prev", h_prev), as_float_array("M_prev", M_prev)
    if x.ndim != 2 or x.shape[1] != X:
        raise ValueError(f"x must have shape (B, X) with X={X}; got {x.shape}")
    B = x.shape[0]
    if h_prev.shape != (B, D):
        raise ValueError(f"h_prev must have shape (B, D) = {(B, D)}; got {h_prev.shape}")
    if M_prev.shape != (B, H, d, d):
        raise ValueError(f"M_prev must have shape (B, H, d, d) = {(B, H, d, d)}; got {M_prev.shape}")
    z = np.concatenate([x, h_prev], axis=1)                          # (B, X + D)   (LSAM-1)
    W, b = _fused_weights(params)
    return _step_forward(z, z @ W + b, M_prev, params)


def _fused_weights(params: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """[W_qkv | W_w | W_r] (X + D, 3D + 2H) and [b_qkv | b_w | b_r] (3D + 2H,): one matmul gives
    every projection of a step, columns q | k | v | write gate | read gate."""
    return (np.concatenate([params["W_qkv"], params["W_w"], params["W_r"]], axis=1),
            np.concatenate([params["b_qkv"], params["b_w"], params["b_r"]]))


def _step_forward(z: np.ndarray, a: np.ndarray, M_prev: np.ndarray, params: Mapping[str, np.ndarray]):
    """(LSAM-2)-(LSAM-8) from z (B, X + D) and its fused projection a = z W + b (B, 3D + 2H)."""
    B, H = z.shape[0], params["b_w"].shape[0]
    D = params["b_qkv"].shape[0] // 3
    d = D // H
    q, k, v = (a[:, i * D:(i + 1) * D].reshape(B, H, d) for i in range(3))   # (B, H, d) each (LSAM-2)
    gates = _sigmoid(a[:, 3 * D:])                                   # (B, 2H)      (LSAM-4), (LSAM-7)
    w, r = gates[:, :H], gates[:, H:]                                # (B, H) each
    M, write_cache = _write_forward(M_prev, k, v, w, w)              # (B, H, d, d) (LSAM-3, 5, 6)
    h_heads, read_cache = _read_forward(M, q, r)                     # (B, H, d)    (LSAM-3, 8)
    h = h_heads.reshape(B, D)                                        # (B, D)
    return (h, M), LSAMStepCache(z, w, r, write_cache, read_cache, params)


def lsam_step_backward(dh: np.ndarray, dM: np.ndarray, cache: LSAMStepCache):
    """Adjoint of one step. dh (B, D) is the whole gradient w.r.t. h_t (this step's loss plus what
    step t+1 sends back through z_{t+1}); dM (B, H, d, d) the gradient w.r.t. M_t from step t+1.

    Returns (dx (B, X), dh_prev (B, D), dM_prev (B, H, d, d), {cell parameter gradients}).
    """
    z, params = cache.z, cache.params
    B, H = cache.w.shape
    D = params["b_qkv"].shape[0] // 3
    X = z.shape[1] - D
    da, dM_prev = _step_backward(dh, dM, cache, np.empty((B, 3 * D + 2 * H), dtype=np.result_type(dh, dM, z)))
    dz = da @ _fused_weights(params)[0].T                            # (B, X + D)
    return dz[:, :X], dz[:, X:], dM_prev, _split_grads(z.T @ da, da.sum(axis=0), D, H)   # 1.


def _step_backward(dh: np.ndarray, dM: np.ndarray, cache: LSAMStepCache, out: np.ndarray):
    """Adjoint of _step_forward: writes da, the gradient w.r.t. the fused projection a = z W + b,
    into out (B, 3D + 2H) and returns (out, dM_prev (B, H, d, d)). dM is not modified."""
    w, r = cache.w, cache.r
    B, H = w.shape
    D = (out.shape[1] - 2 * H) // 3
    dM_prev, dk, dv, dp_w, dp_e, dq, dr = _write_read_backward(        # 8., 6.-5.: M_t feeds h_t and M_{t+1}
        dh.reshape(B, H, D // H), dM, cache.write, cache.read)
    out[:, :D] = dq.reshape(B, D)                                    # 3.-2.
    out[:, D:2 * D] = dk.reshape(B, D)
    out[:, 2 * D:3 * D] = dv.reshape(B, D)
    out[:, 3 * D:3 * D + H] = (dp_w + dp_e) * w * (1.0 - w)          # 4. w is both probabilities
    out[:, 3 * D + H:] = dr * r * (1.0 - r)                          # 7.
    return out, dM_prev


# ----------------------------------------------------------------- a sequence
class LSAMCache(NamedTuple):
    params: Mapping[str, np.ndarray]   # the cell parameters (shared by every step)
    xs: np.ndarray                     # (T, B, X) inputs
    steps: list                        # T LSAMStepCache
    Z: np.ndarray | None = None        # (T, B, X + D) every step's z_t = [x_t ; h_{t-1}], stacked
    W: np.ndarray | None = None        # (X + D, 3D + 2H) the fused weight of _fused_weights


def _split_grads(dW: np.ndarray, db: np.ndarray, D: int, H: int) -> dict:
    """{cell parameter: gradient} from the gradients of the fused weight and bias."""
    cols = {"qkv": slice(0, 3 * D), "w": slice(3 * D, 3 * D + H), "r": slice(3 * D + H, 3 * D + 2 * H)}
    grads = {}
    for name, c in cols.items():
        grads[f"W_{name}"] = np.ascontiguousarray(dW[:, c])
        grads[f"b_{name}"] = db[c].copy()
    return {name: grads[name] for name in CELL_PARAM_NAMES}


def _check_shapes(xs, h0, M0, params) -> tuple[int, int, int, int]:
    """(B, D, H, d) after checking xs (T, B, X), h0 (B, D) and M0 (B, H, d, d) (None allowed for the
    states). Works on arrays and Tensors alike: only shapes are read."""
    X, D, H = _cell_sizes(params)
    d = D // H
    if len(xs.shape) != 3 or xs.shape[2] != X or xs.shape[0] == 0:
        raise ValueError(f"xs must have shape (T, B, X) with T >= 1 and X={X}; got {tuple(xs.shape)}")
    B = xs.shape[1]
    if h0 is not None and tuple(h0.shape) != (B, D):
        raise ValueError(f"h0 must have shape (B, D) = {(B, D)}; got {tuple(h0.shape)}")
    if M0 is not None and tuple(M0.shape) != (B, H, d, d):
        raise ValueError(f"M0 must have shape (B, H, d, d) = {(B, H, d, d)}; got {tuple(M0.shape)}")
    return B, D, H, d


def lsam_forward(xs: np.ndarray, params: Mapping[str, np.ndarray], h0: np.ndarray | None = None,
                 M0: np.ndarray | None = None):
    """Run the cell over a sequence.

    Args:
        xs: (T, B, X) inputs, T >= 1.
        params: the cell parameters (module docstring).
        h0: (B, D) initial state, None for zeros.
        M0: (B, H, d, d) initial memory, None for zeros.
    Returns:
        (hs, M_T): hs (T, B, D) the states h_1..h_T and M_T (B, H, d, d) the final memory, and the
        cache for lsam_backward.

    The step's projections are one product with [W_qkv | W_w | W_r] (_fused_weights); lsam_backward
    forms the weight gradients as one product over all T B rows (cache.Z stacks every z_t).
    """
    xs = as_float_array("xs", xs)
    h0 = None if h0 is None else as_float_array("h0", h0)
    M0 = None if M0 is None else as_float_array("M0", M0)
    B, D, H, d = _check_shapes(xs, h0, M0, params)
    dtype = np.result_type(xs, *params.values())
    h = np.zeros((B, D), dtype=dtype) if h0 is None else h0
    M = np.zeros((B, H, d, d), dtype=dtype) if M0 is None else M0
    T, X = xs.shape[0], xs.shape[2]
    hs = np.empty((T,) + h.shape, dtype=np.result_type(h, M))
    W, b = _fused_weights(params)
    steps = []
    for t in range(T):
        z = np.concatenate([xs[t], h], axis=1)                       # (B, X + D)   (LSAM-1)
        (h, M), step = _step_forward(z, z @ W + b, M, params)        # a_t = z_t W + b, split in the step
        hs[t] = h
        steps.append(step)
    return (hs, M), LSAMCache(params, xs, steps, np.stack([step.z for step in steps]), W)


def lsam_backward(dhs: np.ndarray, dM_T: np.ndarray | None, cache: LSAMCache):
    """BPTT through lsam_forward. dhs (T, B, D) holds only the per-step losses' gradients w.r.t.
    h_t, and dM_T (B, H, d, d) the gradient w.r.t. the final memory (None for 0); the gradients
    carried from step t+1 (through z_{t+1} and M_{t+1}) are added here.

    Returns dxs (T, B, X), dh0 (B, D), dM0 (B, H, d, d) and a dict of cell parameter gradients.
    """
    T, B = cache.xs.shape[:2]
    X, D, H = _cell_sizes(cache.params)
    d = D // H
    if np.shape(dhs) != (T, B, D):
        raise ValueError(f"dhs must have the shape of hs (T, B, D) = {(T, B, D)}; got {np.shape(dhs)}")
    dM_carry = np.zeros((B, H, d, d), dtype=dhs.dtype) if dM_T is None else np.asarray(dM_T)
    if dM_carry.shape != (B, H, d, d):
        raise ValueError(f"dM_T must have the shape of M_T (B, H, d, d) = {(B, H, d, d)}; got {dM_carry.shape}")
    Z, W = cache.Z, cache.W
    dA = np.empty(Z.shape[:2] + (W.shape[1],), dtype=np.result_type(dhs, dM_carry, Z))   # (T, B, 3D + 2H)
    W_hT = W[X:].T                                                   # (3D + 2H, D)
    dh_carry = np.zeros((B, D), dtype=dhs.dtype)
    for t in reversed(range(T)):
        da, dM_carry = _step_backward(dhs[t] + dh_carry, dM_carry, cache.steps[t], dA[t])
        dh_carry = da @ W_hT                                         # through z_t's h_{t-1} rows
    dA_flat = dA.reshape(T * B, -1)
    dxs = (dA_flat @ W[:X].T).reshape(T, B, X).astype(cache.xs.dtype, copy=False)   # (T, B, X)
    grads = _split_grads(Z.reshape(T * B, -1).T @ dA_flat, dA_flat.sum(axis=0), D, H)   # shared over steps
    grads = {name: grads[name].astype(p.dtype, copy=False) for name, p in cache.params.items()}
    return dxs, dh_carry, dM_carry, grads


# ----------------------------------------------------------------- autodiff twin
def lsam_step_autodiff(x, h_prev, M_prev, tparams: Mapping[str, ad.Tensor]):
    """Autodiff twin of lsam_step_forward: returns (h (B, D), M (B, H, d, d)) Tensors."""
    B = x.shape[0]
    D, H = tparams["b_qkv"].shape[0] // 3, tparams["b_w"].shape[0]
    d = D // H
    z = ad.concatenate([x, h_prev], axis=1)                          # (B, X + D)   (LSAM-1)
    qkv = ad.matmul(z, tparams["W_qkv"]) + tparams["b_qkv"]          # (B, 3D)      (LSAM-2)
    q, k, v = (ad.reshape(qkv[:, i * D:(i + 1) * D], (B, H, d)) for i in range(3))
    w = ad.sigmoid(ad.matmul(z, tparams["W_w"]) + tparams["b_w"])    # (B, H)       (LSAM-4)
    M = nam_write_autodiff(M_prev, k, v, w, w)                       # (LSAM-3, 5, 6)
    r = ad.sigmoid(ad.matmul(z, tparams["W_r"]) + tparams["b_r"])    # (B, H)       (LSAM-7)
    h = ad.reshape(nam_read_autodiff(M, q, r), (B, D))               # (LSAM-3, 8)
    return h, M


def lsam_autodiff(xs, tparams: Mapping[str, ad.Tensor], h0=None, M0=None):
    """Autodiff twin of lsam_forward: (hs (T, B, D), M_T (B, H, d, d)) as Tensors."""
    xs = ad.as_tensor(xs)
    B, D, H, d = _check_shapes(xs, h0, M0, {name: t.data for name, t in tparams.items()})
    h = ad.Tensor(np.zeros((B, D), dtype=xs.dtype)) if h0 is None else ad.as_tensor(h0)
    M = ad.Tensor(np.zeros((B, H, d, d), dtype=xs.dtype)) if M0 is None else ad.as_tensor(M0)
    hs = []
    for t in range(xs.shape[0]):
        h, M = lsam_step_autodiff(xs[t], h, M, tparams)
        hs.append(h)
    return ad.stack(hs, axis=0), M                                   # (T, B, D), (B, H, d, d)


# ----------------------------------------------------------------- initialisation and model
def lsam_init(rng: np.random.Generator, X: int, D: int, H: int, dtype=np.float64) -> dict:
    """The reference's init (PyTorch nn.Linear default): every weight and bias U(+-1/sqrt(X + D))."""
    scale = 1.0 / math.sqrt(X + D)
    return {name: init.uniform(rng, shape, scale, dtype=dtype) for name, shape in lsam_param_shapes(X, D, H).items()}


@dataclass(frozen=True)
class LSAMConfig:
    """Sizes of an LSAM model. X: input width. D: state width. H: heads (D % H == 0).
    Y: width of the per-step readout y_t = h_t readout.W + readout.b, None for no readout (the
    outputs are then the states h_t). dtype: "float64" | "float32" of the initial parameters."""
    X: int
    D: int
    H: int
    Y: int | None = None
    dtype: str = "float64"

    def __post_init__(self) -> None:
        for name in ("X", "D", "H") + (("Y",) if self.Y is not None else ()):
            check_int(f"LSAMConfig.{name}", getattr(self, name), 1)
        if self.D % self.H:
            raise ValueError(f"LSAMConfig.D must be divisible by H (d = D / H); got D={self.D}, H={self.H}")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"LSAMConfig.dtype must be 'float64' or 'float32'; got {self.dtype!r}")


def lsam_model_param_shapes(config: LSAMConfig) -> dict[str, tuple]:
    """Every model parameter's name and shape, in the order of model.params."""
    shapes = with_prefix("cell", lsam_param_shapes(config.X, config.D, config.H))
    if config.Y is not None:
        shapes.update({"readout.W": (config.D, config.Y), "readout.b": (config.Y,)})
    return shapes


class LSAM:
    """A unidirectional LSAM over a sequence, h_0 = 0 and M_0 = 0: xs (T, B, X) -> outputs
    (T, B, Y) through the per-step readout, or the states hs (T, B, D) when config.Y is None.

    Parameters: `cell.W_qkv`, `cell.b_qkv`, `cell.W_w`, `cell.b_w`, `cell.W_r`, `cell.b_r` (module
    docstring), then `readout.W` (D, Y), `readout.b` (Y,) if config.Y is set. The memory is not
    read back into the input: what the cell can compute is limited to gated reads (spec A8).
    """

    def __init__(self, config: LSAMConfig, rng: np.random.Generator | None = None):
        if not isinstance(config, LSAMConfig):
            raise ValueError(f"config must be an LSAMConfig; got {type(config).__name__}")
        rng = np.random.default_rng(0) if rng is None else rng
        self.config = config
        dtype = np.dtype(config.dtype)
        self.params = with_prefix("cell", lsam_init(rng, config.X, config.D, config.H, dtype))
        if config.Y is not None:
            self.params.update(with_prefix("readout", linear_init(rng, config.D, config.Y, dtype=dtype)))

    def _check(self, xs) -> np.ndarray:
        check_params(self.params, lsam_model_param_shapes(self.config))
        for name, value in self.params.items():
            check_finite(f"parameter {name}", value)
        xs = as_float_array("inputs", xs)
        if xs.ndim != 3 or xs.shape[2] != self.config.X or xs.shape[0] == 0:
            raise ValueError(f"inputs must have shape (T, B, X) with T >= 1 and X={self.config.X}; got {xs.shape}")
        check_finite("inputs", xs)
        return xs

    def forward(self, xs):
        """outputs (T, B, Y) (or hs (T, B, D) without a readout) and the cache for backward.
        The final memory is cache[0].steps[-1].read.M."""
        xs = self._check(xs)
        (hs, _), cell_cache = lsam_forward(xs, strip_prefix("cell", self.params))             # 1.
        if self.config.Y is None:
            return hs, (cell_cache, None)
        ys, readout_cache = linear_forward(hs, self.params["readout.W"], self.params["readout.b"])  # 2.
        return ys, (cell_cache, readout_cache)

    def backward(self, doutputs, cache) -> dict:
        cell_cache, readout_cache = cache
        grads = {}
        if readout_cache is None:
            dhs = doutputs
        else:
            dhs, grads["readout.W"], grads["readout.b"] = linear_backward(doutputs, readout_cache)  # 2.
        _, _, _, cell_grads = lsam_backward(dhs, None, cell_cache)                               # 1.
        grads.update(with_prefix("cell", cell_grads))
        return {name: grads[name] for name in self.params}

    def forward_autodiff(self, tparams: Mapping[str, ad.Tensor], xs) -> ad.Tensor:
        xs = self._check(xs)
        hs, _ = lsam_autodiff(xs, strip_prefix("cell", tparams))
        if self.config.Y is None:
            return hs
        return linear_autodiff(hs, tparams["readout.W"], tparams["readout.b"])
