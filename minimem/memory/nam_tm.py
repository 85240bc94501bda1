"""NAM-TM, the NAM Turing Machine (Nam & Seo, 2023, arXiv:2302.09422; spec specs/nam_hma.md A3),
canonical form = `NAMTuring` of the authors' final code: a multi-tape differentiable Turing machine
whose tapes are NAM memories addressed by soft position vectors.

Each tape has a value tape Phi (L cells x C), a key tape Psi (L x C) mapping content keys to
positions, a read position psi_r and a write position psi_w (L). The heads move by mixing
"previous cell", "stay", "next cell" and "jump", where the jump target is a NAM read of the key tape.
An LSTM controller runs once over the input embeddings BEFORE any memory operation: the reads never
feed back into the controller (a design choice of the reference, not a bug; it limits what the
machine can compute, e.g. carries in addition, spec A8).

Shapes: T time (the spec's S), B batch, V vocabulary, D model width, P tapes (the spec's T_p),
C cell width, L cells per tape (circular). As NAM memories (value x key, spec A1.10) the value tape
is stored as M_Phi = Phi^T (B, P, C, L) (key = position) and the key tape as Psi (B, P, L, C)
(key = content, value = position).
Equations (the spec's labels; the paper's numbering could not be consulted):
 Precomputed for all t (per tape, every weight used as `x @ W`, columns tape-major):
    x_t = LN(E[token_t] W_e + b_e)                          (D) input embedding (A3.2)
    g_1..g_T = LSTM(x_1..x_T)                               (D) controller
    a_t = g_t W_a + b_a, as (P, 11)
    rho = softmax(a[0:4]), omega = softmax(a[4:8])          read / write moves (prev, stay, next, jump)
    (p_r, p_w, p_e) = sigmoid(a[8:11])
    v_t = x_t W_v + b_v;  k_t = unit(x_t W_k + b_k);  q_t = unit(g_t W_q + b_q)     (P, C) each
 Then, for t = 1..T and every tape in parallel, in exactly this order:
    (TM-1)  psi_r_hat = unit(psi_r), psi_w_hat = unit(psi_w)     over the L cells, floor 1e-12
    (TM-2)  u = Phi^T psi_w_hat                                   value under the write head
    (TM-3)  Phi <- Phi + psi_w_hat (p_w v_t - p_e u)^T            = WR(M_Phi, psi_w, v_t, p_w, p_e)
    (TM-4)  o_t = p_r Phi^T psi_r_hat                             = RD(M_Phi, psi_r, p_r), after the write
    (TM-5)  pi = Psi k_t                                          position stored under k_t
    (TM-6)  Psi <- Psi + (p_w psi_w - p_e pi) k_t^T               = WR(Psi, k_t, psi_w, p_w, p_e), the
                                                                  RAW psi_w is stored, k_t already unit
    (TM-7)  j = Psi q_t                                           jump target, not normalised
    (TM-8)  psi_w <- omega_0 S- psi_w + omega_1 psi_w + omega_2 S+ psi_w + omega_3 j
    (TM-9)  psi_r <- rho_0 S- psi_r + rho_1 psi_r + rho_2 S+ psi_r + rho_3 j
 with (S+ psi)[l] = psi[(l - 1) mod L] (mass moves to the next cell) and (S- psi)[l] = psi[(l + 1) mod L].
 Output: y_t = [o_t^1; ...; o_t^P] W_o + b_o;  logits_t = relu(LN(y_t)) W_c + b_c.
Initial state: Phi = Psi = 0, psi_r = psi_w = e_0 (one-hot at cell 0). Positions are not
probability vectors: j can be negative and of any norm; only their direction addresses (TM-1).

Departures from the reference, all documented choices: no dropout (the reference has 0.2 after the
embedding and 0.1 in the classifier; a deterministic objective is needed for gradient checks, and
the CPU demos of spec A4 do without); `head_norm=False` drops the classifier's LayerNorm (the
"simplified head" of A4); the v1 (`iclr`) machine and the ablations of A3.3b are not implemented.

Parameters (model.params, in this order):
    embed.E (V, D) N(0, 1);  embed.W (D, D), embed.b (D,);  embed_ln.gain, embed_ln.bias (D,)
    controller.W_x (D, 4D), controller.W_h (D, 4D), controller.b (4D,)   LSTM, gates i, f, g, o
    actions.W (D, 11P), actions.b (11P,)      columns per tape p: [11p, 11p + 11) = rho | omega | p_r p_w p_e
    value.W, key.W, query.W (D, PC) and .b (PC,)   columns per tape p: [Cp, C(p + 1))
    output.W (PC, D), output.b (D,);  head_ln.gain, head_ln.bias (D,) (if head_norm)
    classifier.W (D, V), classifier.b (V,)
Linear layers start at PyTorch's default U(+-1/sqrt(fan_in)) for weights and biases, as in the
reference; the LSTM uses minimem's lstm_init.
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
    NAMReadCache, NAMWriteCache, _read_forward, _write_forward, _write_read_backward, nam_read_autodiff,
    nam_read_forward, nam_write_autodiff, nam_write_forward, unit_autodiff, unit_backward, unit_forward,
)
from minimem.nn.layernorm import layernorm_autodiff, layernorm_backward, layernorm_forward
from minimem.nn.linear import (
    as_float_array, check_finite, check_params, linear_autodiff, linear_backward, linear_forward,
    scatter_add_rows, strip_prefix, with_prefix,
)
from minimem.nn.lstm import lstm_autodiff, lstm_backward, lstm_forward, lstm_init

ACTIONS = 11        # per tape: 4 read moves, 4 write moves, p_r, p_w, p_e


def _sigmoid(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))                                           # never overflows
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softmax(z: np.ndarray) -> np.ndarray:
    """Softmax over a short last axis (the 4 moves); the max and the sum go column by column."""
    top = z[..., 0]
    for i in range(1, z.shape[-1]):                                  # z.max(-1), column by column
        top = np.maximum(top, z[..., i])
    e = np.exp(z - top[..., None])
    return e / _sum_last(e)[..., None]


def _sum_last(x: np.ndarray) -> np.ndarray:
    """x.sum(axis=-1) for a short last axis (the 4 moves), column by column: the same numbers,
    ~3x faster than numpy's reduction along a 4-long axis."""
    total = x[..., 0].copy()
    for i in range(1, x.shape[-1]):
        total += x[..., i]
    return total


# ----------------------------------------------------------------- head moves, (TM-8)-(TM-9)
def shift_next(psi: np.ndarray) -> np.ndarray:
    """S+ psi: (S+ psi)[l] = psi[(l - 1) mod L], mass moves one cell forward. Its adjoint is S-."""
    return np.concatenate([psi[..., -1:], psi[..., :-1]], axis=-1)   # np.roll(psi, 1, -1), as two slices


def shift_prev(psi: np.ndarray) -> np.ndarray:
    """S- psi: (S- psi)[l] = psi[(l + 1) mod L], mass moves one cell back. Its adjoint is S+."""
    return np.concatenate([psi[..., 1:], psi[..., :1]], axis=-1)     # np.roll(psi, -1, -1)


def _wrapped(psi: np.ndarray) -> np.ndarray:
    """The circular tape padded by one cell on each side, (..., L + 2): its windows [:-2] and [2:]
    are S+ psi and S- psi, both shifts from one copy."""
    return np.concatenate([psi[..., -1:], psi, psi[..., :1]], axis=-1)


class MoveCache(NamedTuple):
    psi: np.ndarray          # (B, P, L) position before the move
    weights: np.ndarray      # (B, P, 4) move weights (prev, stay, next, jump)
    j: np.ndarray            # (B, P, L) jump target


def move_forward(psi: np.ndarray, weights: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, MoveCache]:
    """A head move, (TM-8) or (TM-9): w_0 S- psi + w_1 psi + w_2 S+ psi + w_3 j.

    Args:
        psi: (B, P, L) position; weights: (B, P, 4) softmax over (prev, stay, next, jump);
        j: (B, P, L) jump target. Any leading axes work alike (the tape step moves both heads at
        once: psi (B, P, 2, L), weights (B, P, 2, 4), j (B, P, 1, L) broadcast over the heads).
    Returns:
        the new position (B, P, L), and the cache for move_backward.
    """
    w, wrapped = weights[..., None], _wrapped(psi)                   # (B, P, 4, 1), (B, P, L + 2)
    new = w[..., 0, :] * wrapped[..., 2:] + w[..., 1, :] * psi + w[..., 2, :] * wrapped[..., :-2] + w[..., 3, :] * j
    return new, MoveCache(psi, weights, j)                           # S- psi, psi, S+ psi, j


def move_backward(dnew: np.ndarray, cache: MoveCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Adjoint of move_forward (the roll's adjoint is the opposite roll, spec A3.4). Returns
    (dpsi (B, P, L), dweights (B, P, 4), dj (B, P, L))."""
    psi, weights, j = cache
    return _move_psi_backward(dnew, weights), _move_weights_backward(psi, j, dnew), weights[..., 3, None] * dnew


def _move_psi_backward(dnew: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """dpsi of move_forward: w_0 S+ dnew + w_1 dnew + w_2 S- dnew (S-^T = S+), any leading axes."""
    w, wrapped = weights[..., None], _wrapped(dnew)
    return w[..., 0, :] * wrapped[..., :-2] + w[..., 1, :] * dnew + w[..., 2, :] * wrapped[..., 2:]


def _move_weights_backward(psi: np.ndarray, j: np.ndarray, dnew: np.ndarray) -> np.ndarray:
    """dweights of move_forward, (..., 4): the cell sums <S- psi, dnew>, <psi, dnew>, <S+ psi, dnew>,
    <j, dnew>, the shifted ones on slices (no shifted copy). Any leading axes (j broadcasts):
    nam_tm_backward takes it once for every step and both heads after its loop, as nothing inside
    the loop needs it."""
    dweights = np.empty(dnew.shape[:-1] + (4,), dtype=np.result_type(psi, j, dnew))
    dweights[..., 0] = _dot(psi[..., 1:], dnew[..., :-1]) + psi[..., 0] * dnew[..., -1]    # (S- psi)[l] = psi[l + 1]
    dweights[..., 1] = _dot(psi, dnew)
    dweights[..., 2] = _dot(psi[..., :-1], dnew[..., 1:]) + psi[..., -1] * dnew[..., 0]    # (S+ psi)[l] = psi[l - 1]
    dweights[..., 3] = _dot(j, dnew)
    return dweights


def _dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inner products over the last axis, broadcasting the others, without an (..., L) product."""
    return np.einsum("...l,...l->...", x, y)


def move_autodiff(psi, weights, j) -> ad.Tensor:
    """Autodiff twin of move_forward; the rolls are two slices and a concatenation."""
    psi, weights = ad.as_tensor(psi), ad.as_tensor(weights)
    prev = ad.concatenate([psi[..., 1:], psi[..., :1]], axis=-1)    # S- psi
    nxt = ad.concatenate([psi[..., -1:], psi[..., :-1]], axis=-1)   # S+ psi
    w = ad.reshape(weights, weights.shape + (1,))                   # (B, P, 4, 1)
    return w[..., 0, :] * prev + w[..., 1, :] * psi + w[..., 2, :] * nxt + w[..., 3, :] * j


# ----------------------------------------------------------------- one tape step, (TM-1)-(TM-9)
class TapeState(NamedTuple):
    """The machine state carried through time, every tape at once."""
    Phi: np.ndarray          # (B, P, C, L) value tape as a NAM memory, Phi^T of the tape picture
    Psi: np.ndarray          # (B, P, L, C) key tape
    pos_r: np.ndarray        # (B, P, L) read position psi_r
    pos_w: np.ndarray        # (B, P, L) write position psi_w


class TapeControls(NamedTuple):
    """What the controller decides for one step, every tape at once."""
    rho: np.ndarray          # (B, P, 4) read moves
    omega: np.ndarray        # (B, P, 4) write moves
    p_r: np.ndarray          # (B, P) read probability
    p_w: np.ndarray          # (B, P) write probability
    p_e: np.ndarray          # (B, P) erase probability
    v: np.ndarray            # (B, P, C) value
    k: np.ndarray            # (B, P, C) unit content key
    q: np.ndarray            # (B, P, C) unit query


class TapeStepCache(NamedTuple):
    value_write: NAMWriteCache   # (TM-1)-(TM-3)
    read: NAMReadCache           # (TM-1), (TM-4)
    key_write: NAMWriteCache     # (TM-5)-(TM-6)
    jump: NAMReadCache           # (TM-7)
    move_w: MoveCache            # (TM-8)
    move_r: MoveCache            # (TM-9)


def tape_step_forward(state: TapeState, controls: TapeControls) -> tuple[tuple[np.ndarray, TapeState], TapeStepCache]:
    """One NAM-TM step on every tape, (TM-1)-(TM-9) in the spec's order.

    Args:
        state: TapeState (Phi, Psi, pos_r, pos_w) before the step.
        controls: TapeControls of this step.
    Returns:
        (o, new_state): o (B, P, C) the reads, and the cache for tape_step_backward.
    """
    heads = np.stack([state.pos_r, state.pos_w], axis=-2)                         # (B, P, 2, L)
    moves = np.stack([controls.rho, controls.omega], axis=-2)                     # (B, P, 2, 4)
    o, Phi_new, Psi_new, heads_new, cache = _step(state.Phi, state.Psi, heads, moves, *controls[2:], checked=False)
    return (o, TapeState(Phi_new, Psi_new, heads_new[..., 0, :], heads_new[..., 1, :])), cache


def _step(Phi, Psi, heads, moves, p_r, p_w, p_e, v, k, q, checked: bool):
    """tape_step_forward with both heads in one array, as nam_tm_forward keeps them: heads
    (B, P, 2, L) = [psi_r, psi_w] and moves (B, P, 2, 4) = [rho, omega] (the order of the action
    columns). Returns (o, Phi_new, Psi_new, heads_new, cache). checked=True skips the NAM operations'
    input checks (nam_tm_forward made every array itself, with the right shapes and dtypes)."""
    write, read_ = (_write_forward, _read_forward) if checked else (nam_write_forward, nam_read_forward)
    pos_r, pos_w = heads[..., 0, :], heads[..., 1, :]
    Phi_new, value_write = write(Phi, pos_w, v, p_w, p_e)                         # (TM-1)-(TM-3)
    o, read = read_(Phi_new, pos_r, p_r)                                          # (TM-1), (TM-4)
    Psi_new, key_write = write(Psi, k, pos_w, p_w, p_e, normalize=False)          # (TM-5)-(TM-6)
    j, jump = read_(Psi_new, q, np.ones_like(p_r), normalize=False)               # (TM-7), (B, P, L)
    heads_new, _ = move_forward(heads, moves, j[..., None, :])                    # (TM-8), (TM-9) as one move
    return o, Phi_new, Psi_new, heads_new, TapeStepCache(
        value_write, read, key_write, jump, MoveCache(pos_w, moves[..., 1, :], j), MoveCache(pos_r, moves[..., 0, :], j))


def tape_step_backward(do: np.ndarray, dstate: TapeState, cache: TapeStepCache) -> tuple[TapeState, TapeControls]:
    """Adjoint of one step. do (B, P, C) is this step's gradient w.r.t. the reads; dstate the
    gradient w.r.t. the state after the step, carried from step t+1.

    Returns (dstate_prev, dcontrols). psi_w reaches the step along three paths (its move, the
    normalised key of TM-3, the raw value of TM-6) and psi_r along two (its move, the read of
    TM-4); j feeds both moves (spec A3.4).
    """
    dPhi_new, dPsi_new, dpos_r_new, dpos_w_new = dstate
    for name, g, like in (("do", do, cache.read.M.shape[:-1]), ("dstate.Phi", dPhi_new, cache.read.M.shape),
                          ("dstate.Psi", dPsi_new, cache.jump.M.shape)):
        if np.shape(g) != like:
            raise ValueError(f"{name} must have the forward output's shape {like}; got {np.shape(g)}")
    dheads_new = np.stack([dpos_r_new, dpos_w_new], axis=-2)                     # (B, P, 2, L)
    moves = np.stack([cache.move_r.weights, cache.move_w.weights], axis=-2)      # (B, P, 2, 4)
    dPhi, dPsi, dheads, (dp_r, dp_w, dp_e, dv, dk, dq) = _step_backward(do, dPhi_new, dPsi_new, dheads_new, cache, moves)
    dmoves = _move_weights_backward(np.stack([cache.move_r.psi, cache.move_w.psi], axis=-2),
                                    cache.move_r.j[..., None, :], dheads_new)    # (B, P, 2, 4)
    return (TapeState(dPhi, dPsi, dheads[..., 0, :], dheads[..., 1, :]),
            TapeControls(dmoves[..., 0, :], dmoves[..., 1, :], dp_r, dp_w, dp_e, dv, dk, dq))


def _step_backward(do, dPhi_new, dPsi_new, dheads_new, cache: TapeStepCache, moves):
    """tape_step_backward on the heads of _step, dheads_new and moves (B, P, 2, .) = [read, write],
    without the move weights' gradient (_move_weights_backward; nam_tm_backward takes it for all
    steps at once). Returns (dPhi, dPsi, dheads, (dp_r, dp_w, dp_e, dv, dk, dq))."""
    value_write, read, key_write, jump, _, _ = cache
    dheads = _move_psi_backward(dheads_new, moves)                               # 9. and 8. as one move
    dj = moves[..., 3, None] * dheads_new                                         # (B, P, 2, L), j feeds both
    # each tape is written, then read: one fused adjoint per tape, with the carried dPsi_new / dPhi_new
    dPsi, dk, dpos_w_value, dp_w_key, dp_e_key, dq, _ = _write_read_backward(dj[..., 0, :] + dj[..., 1, :], dPsi_new,
                                                                             key_write, jump)       # 7., 6.-5.
    dPhi, dpos_w_key, dv, dp_w_value, dp_e_value, dpos_r_read, dp_r = _write_read_backward(
        do, dPhi_new, value_write, read)                                                             # 4., 3.-1.
    dheads[..., 0, :] += dpos_r_read
    dheads[..., 1, :] += dpos_w_value
    dheads[..., 1, :] += dpos_w_key
    return dPhi, dPsi, dheads, (dp_r, dp_w_key + dp_w_value, dp_e_key + dp_e_value, dv, dk, dq)


def tape_step_autodiff(state, controls):
    """Autodiff twin of tape_step_forward: (o, TapeState) of Tensors."""
    Phi, Psi, pos_r, pos_w = state
    rho, omega, p_r, p_w, p_e, v, k, q = controls
    Phi_new = nam_write_autodiff(Phi, pos_w, v, p_w, p_e)                         # (TM-1)-(TM-3)
    o = nam_read_autodiff(Phi_new, pos_r, p_r)                                    # (TM-4)
    Psi_new = nam_write_autodiff(Psi, k, pos_w, p_w, p_e, normalize=False)       # (TM-5)-(TM-6)
    j = nam_read_autodiff(Psi_new, q, np.ones(p_r.shape, dtype=Phi_new.dtype), normalize=False)  # (TM-7)
    return o, TapeState(Phi_new, Psi_new, move_autodiff(pos_r, rho, j), move_autodiff(pos_w, omega, j))


def initial_tape_state(B: int, P: int, C: int, L: int, dtype=np.float64) -> TapeState:
    """Empty tapes and both heads one-hot at cell 0 (spec A3.2)."""
    start = np.zeros((B, P, L), dtype=dtype)
    start[..., 0] = 1.0
    return TapeState(np.zeros((B, P, C, L), dtype=dtype), np.zeros((B, P, L, C), dtype=dtype), start, start.copy())


# ----------------------------------------------------------------- config and parameters
@dataclass(frozen=True)
class NAMTMConfig:
    """Sizes and choices of a NAM-TM (CPU demo defaults of spec A4: D 64, 2 tapes, C 16, L 16).

    V: vocabulary. D: model and controller width. P: tapes (the spec's T_p). C: cell width.
    L: cells per tape (circular; choose L >= the longest string to store). head_norm: the
    classifier's LayerNorm (reference) or not (the spec's simplified head). forget_bias: the LSTM's
    b_f init. dtype: "float64" | "float32" of the initial parameters.
    """
    V: int
    D: int = 64
    P: int = 2
    C: int = 16
    L: int = 16
    head_norm: bool = True
    forget_bias: float = 1.0
    dtype: str = "float64"

    def __post_init__(self) -> None:
        for name in ("V", "D", "P", "C", "L"):
            check_int(f"NAMTMConfig.{name}", getattr(self, name), 1)
        if self.L < 2:
            raise ValueError(f"NAMTMConfig.L (cells per tape) must be >= 2; got {self.L}")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"NAMTMConfig.dtype must be 'float64' or 'float32'; got {self.dtype!r}")


def nam_tm_param_shapes(config: NAMTMConfig) -> dict[str, tuple]:
    """Every parameter's name and shape, in the order of model.params."""
    V, D, P, C = config.V, config.D, config.P, config.C
    shapes = {"embed.E": (V, D), "embed.W": (D, D), "embed.b": (D,), "embed_ln.gain": (D,), "embed_ln.bias": (D,),
              "controller.W_x": (D, 4 * D), "controller.W_h": (D, 4 * D), "controller.b": (4 * D,),
              "actions.W": (D, ACTIONS * P), "actions.b": (ACTIONS * P,)}
    for name in ("value", "key", "query"):
        shapes.update({f"{name}.W": (D, P * C), f"{name}.b": (P * C,)})
    shapes.update({"output.W": (P * C, D), "output.b": (D,)})
    if config.head_norm:
        shapes.update({"head_ln.gain": (D,), "head_ln.bias": (D,)})
    shapes.update({"classifier.W": (D, V), "classifier.b": (V,)})
    return shapes


def nam_tm_init(rng: np.random.Generator, config: NAMTMConfig) -> dict:
    """Embedding N(0, 1); linear layers U(+-1/sqrt(fan_in)) (PyTorch's default, the reference's);
    layer norms ones / zeros; the LSTM from minimem's lstm_init."""
    dtype = np.dtype(config.dtype)
    shapes = nam_tm_param_shapes(config)
    params = {}
    for name, shape in shapes.items():
        if name == "embed.E":
            params[name] = init.normal(rng, shape, 1.0, dtype=dtype)
        elif name.startswith("controller."):
            if name == "controller.W_x":
                params.update(with_prefix("controller", lstm_init(rng, config.D, config.D, config.forget_bias, dtype)))
        elif name.endswith(".gain"):
            params[name] = np.ones(shape, dtype=dtype)
        elif name.endswith(".bias"):
            params[name] = np.zeros(shape, dtype=dtype)
        else:                                                        # a linear layer's W or b
            fan_in = shapes[name[:-1] + "W"][0]
            params[name] = init.uniform(rng, shape, 1.0 / math.sqrt(fan_in), dtype=dtype)
    return {name: params[name] for name in shapes}


# ----------------------------------------------------------------- the sequence
class NAMTMCache(NamedTuple):
    config: NAMTMConfig
    params: Mapping[str, np.ndarray]
    tokens: np.ndarray       # (T, B) int
    embed: tuple             # (LinearCache, LayerNormCache) of x_t
    controller: object       # LSTMCache
    a: np.ndarray            # (T, B, P, 11) action logits
    actions: object          # LinearCache of a
    value: object            # LinearCache of v
    key: tuple               # (LinearCache, UnitCache) of k
    query: tuple             # (LinearCache, UnitCache) of q
    steps: list              # T TapeStepCache
    output: object           # LinearCache of y
    head: tuple              # (LayerNormCache or None, relu input, LinearCache)
    moves: np.ndarray        # (T, B, P, 2, 4) [rho, omega], softmaxes of a
    probs: np.ndarray        # (T, B, P, 3) (p_r, p_w, p_e), sigmoids of a
    heads: np.ndarray        # (T + 1, B, P, 2, L) [psi_r, psi_w] before each step and after the last
    jumps: np.ndarray        # (T, B, P, L) each step's jump target j

    def positions(self) -> dict[str, np.ndarray]:
        """Head positions before each step, for plots: {"read", "write"} each (T, B, P, L)."""
        return {"read": self.heads[:-1, ..., 0, :].copy(), "write": self.heads[:-1, ..., 1, :].copy()}


def _check_tokens(tokens, V: int) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.dtype.kind not in "iu" or tokens.ndim != 2 or tokens.shape[0] == 0:
        raise ValueError(f"tokens must be an integer array of shape (T, B) with T >= 1; "
                         f"got dtype {tokens.dtype}, shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= V):
        raise ValueError(f"tokens must lie in [0, V) = [0, {V}); got values in [{tokens.min()}, {tokens.max()}]")
    return tokens


def _controls(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The head moves and probabilities of every step from the action logits a (T, B, P, 11), taken
    once over all T: moves (T, B, P, 2, 4) = [rho, omega] (softmaxes), probs (T, B, P, 3) = (p_r,
    p_w, p_e) (sigmoids)."""
    return _softmax(a[..., 0:8].reshape(a.shape[:-1] + (2, 4))), _sigmoid(a[..., 8:11])


def nam_tm_forward(tokens: np.ndarray, params: Mapping[str, np.ndarray], config: NAMTMConfig):
    """Run the machine over a sequence (module docstring, steps numbered as in the backward).

    Args:
        tokens: (T, B) integer tokens in [0, V).
        params: the parameters of nam_tm_param_shapes(config).
        config: NAMTMConfig.
    Returns:
        logits (T, B, V), and the cache for nam_tm_backward (cache.positions() for plots).
    """
    V, D, P, C, L = config.V, config.D, config.P, config.C, config.L
    tokens = _check_tokens(tokens, V)
    T, B = tokens.shape
    e = params["embed.E"][tokens]                                    # (T, B, D)  1. embedding
    x_lin, embed_lin = linear_forward(e, params["embed.W"], params["embed.b"])
    x, embed_ln = layernorm_forward(x_lin, params["embed_ln.gain"], params["embed_ln.bias"])
    g, controller = lstm_forward(x, None, None, strip_prefix("controller", params))   # 2. (T, B, D)
    a, actions = linear_forward(g, params["actions.W"], params["actions.b"])          # 3. (T, B, 11P)
    a = a.reshape(T, B, P, ACTIONS)
    v, value = linear_forward(x, params["value.W"], params["value.b"])                # 4. (T, B, PC)
    k_raw, key_lin = linear_forward(x, params["key.W"], params["key.b"])
    k, key_unit = unit_forward(k_raw.reshape(T, B, P, C))
    q_raw, query_lin = linear_forward(g, params["query.W"], params["query.b"])
    q, query_unit = unit_forward(q_raw.reshape(T, B, P, C))
    v = v.reshape(T, B, P, C)
    Phi, Psi, pos_r, pos_w = initial_tape_state(B, P, C, L, dtype=np.result_type(x, *params.values()))
    moves, probs = _controls(a)                                      # (T, B, P, 2, 4), (T, B, P, 3)
    heads = np.empty((T + 1, B, P, 2, L), dtype=Phi.dtype)           # [psi_r, psi_w] before each step
    heads[0, ..., 0, :], heads[0, ..., 1, :] = pos_r, pos_w
    reads, jumps, steps = np.empty((T, B, P, C), dtype=Phi.dtype), np.empty((T, B, P, L), dtype=Phi.dtype), []
    for t in range(T):                                               # 5. the tapes, (TM-1)-(TM-9)
        reads[t], Phi, Psi, heads[t + 1], step = _step(Phi, Psi, heads[t], moves[t], probs[t, ..., 0], probs[t, ..., 1],
                                                       probs[t, ..., 2], v[t], k[t], q[t], checked=True)
        jumps[t] = step.move_r.j
        steps.append(step)
    y, output = linear_forward(reads.reshape(T, B, P * C), params["output.W"], params["output.b"])  # 6. (T, B, D)
    head_ln = None
    if config.head_norm:
        y, head_ln = layernorm_forward(y, params["head_ln.gain"], params["head_ln.bias"])
    hidden = np.maximum(y, 0.0)                                      # 7. relu, then the classifier
    logits, classifier = linear_forward(hidden, params["classifier.W"], params["classifier.b"])
    return logits, NAMTMCache(config, params, tokens, (embed_lin, embed_ln), controller, a, actions, value,
                              (key_lin, key_unit), (query_lin, query_unit), steps, output, (head_ln, y, classifier),
                              moves, probs, heads, jumps)


def nam_tm_backward(dlogits: np.ndarray, cache: NAMTMCache) -> dict[str, np.ndarray]:
    """BPTT through nam_tm_forward: the tape loop first, collecting the gradients of every step's
    controls, then the precomputed heads, the LSTM and the embedding (spec A3.4). dlogits (T, B, V).
    Returns the parameter gradients, keyed like params."""
    config, params, tokens = cache.config, cache.params, cache.tokens
    T, B = tokens.shape
    P, C, L = config.P, config.C, config.L
    if np.shape(dlogits) != (T, B, config.V):
        raise ValueError(f"dlogits must have the shape of the logits (T, B, V) = {(T, B, config.V)}; "
                         f"got {np.shape(dlogits)}")
    grads = {}
    head_ln, y, classifier = cache.head                              # 7.
    dhidden, grads["classifier.W"], grads["classifier.b"] = linear_backward(dlogits, classifier)
    dy = dhidden * (y > 0)
    if head_ln is not None:
        dy, grads["head_ln.gain"], grads["head_ln.bias"] = layernorm_backward(dy, head_ln)
    dos, grads["output.W"], grads["output.b"] = linear_backward(dy, cache.output)   # 6.
    dos = dos.reshape(T, B, P, C)
    moves, probs = cache.moves, cache.probs                          # (T, B, P, 2, 4), (T, B, P, 3)
    dPhi, dPsi = np.zeros((B, P, C, L), dtype=dos.dtype), np.zeros((B, P, L, C), dtype=dos.dtype)
    dheads = np.zeros((B, P, 2, L), dtype=dos.dtype)                 # d [psi_r, psi_w] after step t
    dheads_after = np.empty((T, B, P, 2, L), dtype=dos.dtype)        # ... kept for the moves' gradient
    dprobs = np.empty(probs.shape, dtype=np.result_type(probs, dos))  # (T, B, P, 3) d (p_r, p_w, p_e)
    dv, dk, dq = (np.empty((T, B, P, C), dtype=dos.dtype) for _ in range(3))
    for t in reversed(range(T)):                                     # 5.
        dheads_after[t] = dheads
        dPhi, dPsi, dheads, dc = _step_backward(dos[t], dPhi, dPsi, dheads, cache.steps[t], moves[t])
        dprobs[t, ..., 0], dprobs[t, ..., 1], dprobs[t, ..., 2], dv[t], dk[t], dq[t] = dc
    dmoves = _move_weights_backward(cache.heads[:-1], cache.jumps[..., None, :], dheads_after)  # (T, B, P, 2, 4)
    da = np.empty(cache.a.shape, dtype=np.result_type(cache.a, dos))
    da[..., 0:8] = (moves * (dmoves - _sum_last(dmoves * moves)[..., None])).reshape(T, B, P, 8)   # softmax
    da[..., 8:11] = dprobs * probs * (1.0 - probs)                   # sigmoid
    da = da.astype(cache.a.dtype, copy=False)
    key_lin, key_unit = cache.key                                    # 4.
    query_lin, query_unit = cache.query
    dx_v, grads["value.W"], grads["value.b"] = linear_backward(dv.reshape(T, B, P * C), cache.value)
    dk_raw = unit_backward(dk, key_unit).reshape(T, B, P * C)
    dx_k, grads["key.W"], grads["key.b"] = linear_backward(dk_raw, key_lin)
    dq_raw = unit_backward(dq, query_unit).reshape(T, B, P * C)
    dg_q, grads["query.W"], grads["query.b"] = linear_backward(dq_raw, query_lin)
    dg_a, grads["actions.W"], grads["actions.b"] = linear_backward(da.reshape(T, B, -1), cache.actions)  # 3.
    dx_g, _, _, lstm_grads = lstm_backward(dg_a + dg_q, cache.controller)                              # 2.
    grads.update(with_prefix("controller", lstm_grads))
    embed_lin, embed_ln = cache.embed                                # 1.
    dx_lin, grads["embed_ln.gain"], grads["embed_ln.bias"] = layernorm_backward(dx_v + dx_k + dx_g, embed_ln)
    de, grads["embed.W"], grads["embed.b"] = linear_backward(dx_lin, embed_lin)
    dE = np.zeros_like(params["embed.E"])
    scatter_add_rows(dE, tokens, de)                                 # repeated tokens accumulate
    grads["embed.E"] = dE
    return {name: grads[name] for name in params}


def nam_tm_autodiff(tparams: Mapping[str, ad.Tensor], tokens: np.ndarray, config: NAMTMConfig) -> ad.Tensor:
    """Autodiff twin of nam_tm_forward: logits (T, B, V) as a Tensor."""
    V, D, P, C, L = config.V, config.D, config.P, config.C, config.L
    tokens = _check_tokens(tokens, V)
    T, B = tokens.shape
    e = ad.getitem(tparams["embed.E"], tokens)                       # (T, B, D)
    x = layernorm_autodiff(linear_autodiff(e, tparams["embed.W"], tparams["embed.b"]),
                           tparams["embed_ln.gain"], tparams["embed_ln.bias"])
    g = lstm_autodiff(x, None, None, strip_prefix("controller", tparams))
    a = ad.reshape(linear_autodiff(g, tparams["actions.W"], tparams["actions.b"]), (T, B, P, ACTIONS))
    v = ad.reshape(linear_autodiff(x, tparams["value.W"], tparams["value.b"]), (T, B, P, C))
    k = unit_autodiff(ad.reshape(linear_autodiff(x, tparams["key.W"], tparams["key.b"]), (T, B, P, C)))
    q = unit_autodiff(ad.reshape(linear_autodiff(g, tparams["query.W"], tparams["query.b"]), (T, B, P, C)))
    state = TapeState(*(ad.Tensor(s) for s in initial_tape_state(B, P, C, L, dtype=x.dtype)))
    reads = []
    for t in range(T):
        probs = ad.sigmoid(a[t, :, :, 8:11])
        controls = TapeControls(ad.softmax(a[t, :, :, 0:4]), ad.softmax(a[t, :, :, 4:8]), probs[..., 0],
                                probs[..., 1], probs[..., 2], v[t], k[t], q[t])
        o, state = tape_step_autodiff(state, controls)
        reads.append(o)
    y = linear_autodiff(ad.reshape(ad.stack(reads, axis=0), (T, B, P * C)), tparams["output.W"], tparams["output.b"])
    if config.head_norm:
        y = layernorm_autodiff(y, tparams["head_ln.gain"], tparams["head_ln.bias"])
    return linear_autodiff(ad.relu(y), tparams["classifier.W"], tparams["classifier.b"])


# ----------------------------------------------------------------- the model
class NAMTM:
    """NAM Turing Machine as a model: tokens (T, B) int -> logits (T, B, V).

    Follows the model protocol (params, forward, backward, forward_autodiff); the loss (token
    cross-entropy over every position, spec A4) is separate. cache.positions() gives the head
    positions over time.
    """

    def __init__(self, config: NAMTMConfig, rng: np.random.Generator | None = None):
        if not isinstance(config, NAMTMConfig):
            raise ValueError(f"config must be a NAMTMConfig; got {type(config).__name__}")
        self.config = config
        self.params = nam_tm_init(np.random.default_rng(0) if rng is None else rng, config)

    def _check(self) -> None:
        check_params(self.params, nam_tm_param_shapes(self.config))
        for name, value in self.params.items():
            as_float_array(f"parameter {name}", value)
            check_finite(f"parameter {name}", value)

    def forward(self, tokens):
        """logits (T, B, V) and the cache for backward."""
        self._check()
        return nam_tm_forward(tokens, self.params, self.config)

    def backward(self, dlogits, cache: NAMTMCache) -> dict:
        return nam_tm_backward(dlogits, cache)

    def forward_autodiff(self, tparams: Mapping[str, ad.Tensor], tokens) -> ad.Tensor:
        self._check()
        return nam_tm_autodiff(tparams, tokens, self.config)
