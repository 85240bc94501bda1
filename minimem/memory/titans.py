"""Titans neural long-term memory (LMM): a small MLP whose weights are the recurrent state of a
sequence layer, trained while it reads by gradient descent with momentum and weight decay
(Behrouz, Zhong & Mirrokni, "Titans: Learning to Memorize at Test Time", 2024, arXiv:2501.00663;
spec specs/titans_mnm.md Part A).

Shapes: T time, B batch, D model width, H heads, d width per head, C = H d, h hidden width of the
memory MLP, L_M memory depth (weight matrices), b chunk size, K_c convolution width, N_p
persistent tokens. Sequences are time-first: x (T, B, D).
The layer (spec numbering; paper equations in brackets):
    (A1)-(A4)   q, k, v = l2norm/SiLU(conv(x W_q / W_k / W_v))  [eqs. 11, 15, section 4.4]   titans_features
    (A5)-(A7)   alpha, eta = sigma(x w + b), theta = theta_max sigma(x w_theta + b_theta)      titans_features
    (A8)-(A11)  l(M; k, v) = ||M(k) - v||^2 and its closed-form gradient  [eqs. 8, 12]         titans_memory
    (A12)-(A18) S_t = eta_t S_{t-1} - theta_t u_t,  M_t = (1 - alpha_t) M_{t-1} + S_t, with every
                u_t of a chunk taken at the chunk's starting weights  [eqs. 9-10, 13-18]        titans_lmm
    (A15)       y_t = M_t(q_t)  (read after write; an option reads M_{t-1})  [eq. 15]          titans_lmm
    (A20)-(A21) o_t = (RMSNorm_g(y_t) * SiLU(x_t W_gate)) W_o  [section 4.4]                 titans_features
    (A3.7)      persistent memory: x~ = P || x, outputs at the N_p prefix positions dropped  [eq. 19]
State per sequence (LMMState): M and S, L_M arrays (B, H, n_{l-1}, n_l) each; the convolutions'
last K_c - 1 inputs (K_c - 1, B, C) for q, k, v. Passing the returned state to the next call
continues the sequence (streaming); a new call always starts a new chunk.

Parameters (model.params, in this order; weights used as `x @ W`):
    lmm.W_q, lmm.W_k, lmm.W_v (D, C)            lmm.conv_q, lmm.conv_k, lmm.conv_v (C, K_c)
    lmm.w_alpha, lmm.w_eta, lmm.w_theta (D, H)  lmm.b_alpha, lmm.b_eta, lmm.b_theta (H,)
    lmm.mem0.W1 (H, d, h), lmm.mem0.W2 (H, h, h) .., lmm.mem0.W{L_M} (H, h, d)   (linear: W1 (H, d, d))
    lmm.out_norm.g (d,), lmm.W_gate (D, C), lmm.W_o (C, D)     only with output_path=True
    persist.P (N_p, D)                                          only with N_p > 0
Channel c = i d + j of C is feature j of head i. M_0 = lmm.mem0.* (learned, shared by the batch).

Two engines share these parameters: the manual one (lmm_layer_forward / lmm_layer_backward: the
adjoint of A4.2 with its second-order terms, chunks in matrix form) and the autodiff one
(lmm_layer_autodiff: inner gradients by minimem.autodiff with create_graph=True).

Modules of the family: titans_memory (the memory MLP: read, inner gradient, its adjoint),
titans_features (A1-A7, A20-A21), titans_lmm (the recurrence: chunked, reference, autodiff),
titans (this layer and the one-layer model TitansLMM), titans_blocks (RMSNorm, SwiGLU, gate,
masks) and titans_arch (MAC, MAG, MAL and stacked LMM blocks: TitansModel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem import init
from minimem.checks import check_int
from minimem.memory.titans_features import (
    lmm_features_autodiff, lmm_features_backward, lmm_features_forward,
    lmm_output_autodiff, lmm_output_backward, lmm_output_forward,
)
from minimem.memory.titans_lmm import lmm_scan_autodiff, lmm_scan_backward, lmm_scan_forward
from minimem.memory.titans_memory import ACTIVATIONS
from minimem.nn.linear import as_float_array, check_finite, check_params, strip_prefix, with_prefix


# ----------------------------------------------------------------- config
@dataclass(frozen=True)
class TitansLMMConfig:
    """Sizes and choices of an LMM layer (defaults: the spec's CPU defaults, A5, with D given).

    Attributes:
        D: model width. H: heads (independent memories). d: width per head (default D // H).
        L_M: memory depth, weight matrices (1 = linear memory). h: hidden width (default 2 d, A10.7).
        phi: memory activation, "silu" or "tanh". K_c: convolution width (1 = no temporal mixing).
        theta_max: bound of the inner step size theta (default 0.1 for an MLP memory, 0.5 linear;
            pitfall P5). chunk: chunk size b (1 = the sequential model; b > 1 is a different model).
        read_after_write: y_t = M_t(q_t) (True, default) or M_{t-1}(q_t).
        eps_n: epsilon of the key/query l2 normalisation (A4).
        output_path: apply (A20)-(A21) and return (T, B, D); False returns the raw read-out
            y (T, B, C) (heads concatenated), e.g. for a task head on the memory alone.
        N_p: persistent memory tokens prepended to each sequence (A3.7).
        conv_init: "normal" (N(0, 0.3^2)) or "identity" (last tap 1, the others 0).
    """
    D: int
    H: int = 1
    d: int | None = None
    L_M: int = 2
    h: int | None = None
    phi: str = "silu"
    K_c: int = 4
    theta_max: float | None = None
    chunk: int = 1
    read_after_write: bool = True
    eps_n: float = 1e-6
    output_path: bool = True
    N_p: int = 0
    conv_init: str = "normal"

    def __post_init__(self):
        for name in ("D", "H", "L_M", "K_c", "chunk"):
            check_int(name, getattr(self, name), 1)
        for name in ("d", "h"):
            if getattr(self, name) is not None:
                check_int(f"{name} (if not None)", getattr(self, name), 1)
        if self.d is None and self.D % self.H != 0:
            raise ValueError(f"D={self.D} is not divisible by H={self.H}; give d explicitly")
        check_int("N_p", self.N_p, 0)
        if self.phi not in ACTIVATIONS:
            raise ValueError(f"phi must be one of {ACTIVATIONS}; got {self.phi!r}")
        if self.theta_max is not None and not (np.isfinite(self.theta_max) and self.theta_max > 0):
            raise ValueError(f"theta_max must be a finite number > 0 or None; got {self.theta_max!r}")
        if not (np.isfinite(self.eps_n) and self.eps_n >= 0):
            raise ValueError(f"eps_n must be a finite number >= 0; got {self.eps_n!r}")
        if self.conv_init not in ("normal", "identity"):
            raise ValueError(f"conv_init must be 'normal' or 'identity'; got {self.conv_init!r}")

    @property
    def head_width(self) -> int:
        return self.d if self.d is not None else self.D // self.H

    @property
    def hidden_width(self) -> int:
        return self.h if self.h is not None else 2 * self.head_width

    @property
    def step_bound(self) -> float:
        if self.theta_max is not None:
            return float(self.theta_max)
        return 0.5 if self.L_M == 1 else 0.1

    def memory_widths(self) -> tuple[int, ...]:
        """(n_0, ..., n_L) = (d, h, ..., h, d)."""
        d, h = self.head_width, self.hidden_width
        return (d,) + (h,) * (self.L_M - 1) + (d,)

    def param_shapes(self) -> dict:
        """Unprefixed LMM parameter names and shapes, in order."""
        D, H, C, K = self.D, self.H, self.H * self.head_width, self.K_c
        shapes = {"W_q": (D, C), "W_k": (D, C), "W_v": (D, C),
                  "conv_q": (C, K), "conv_k": (C, K), "conv_v": (C, K),
                  "w_alpha": (D, H), "w_eta": (D, H), "w_theta": (D, H),
                  "b_alpha": (H,), "b_eta": (H,), "b_theta": (H,)}
        widths = self.memory_widths()
        for l in range(self.L_M):
            shapes[f"mem0.W{l + 1}"] = (H, widths[l], widths[l + 1])
        if self.output_path:
            shapes.update({"out_norm.g": (self.head_width,), "W_gate": (D, C), "W_o": (C, D)})
        return shapes


class LMMState(NamedTuple):
    """Per-sequence state of an LMM layer (fast weights and convolution buffers)."""
    M: tuple             # L_M arrays (B, H, n_{l-1}, n_l): memory weights M_t
    S: tuple             # L_M arrays, the same shapes: momentum (past surprise) S_t
    conv: tuple          # (buffer_q, buffer_k, buffer_v), each (K_c - 1, B, C)


def _memory_names(config: TitansLMMConfig) -> list[str]:
    return [f"mem0.W{l + 1}" for l in range(config.L_M)]


def check_state(state: LMMState, config: TitansLMMConfig, B: int) -> None:
    """ValueError unless state fits the config and batch size B."""
    if not isinstance(state, LMMState):
        raise ValueError(f"state must be an LMMState (M, S, conv); got {type(state).__name__}")
    widths, H, C = config.memory_widths(), config.H, config.H * config.head_width
    for name, arrays in (("M", state.M), ("S", state.S)):
        if len(arrays) != config.L_M:
            raise ValueError(f"state.{name} must hold L_M={config.L_M} arrays; got {len(arrays)}")
        for l, W in enumerate(arrays):
            expected = (B, H, widths[l], widths[l + 1])
            if np.shape(W) != expected:
                raise ValueError(f"state.{name}[{l}] must have shape (B, H, n_{l}, n_{l + 1}) = {expected}; "
                                 f"got {np.shape(W)}")
    if len(state.conv) != 3 or any(np.shape(b) != (config.K_c - 1, B, C) for b in state.conv):
        raise ValueError(f"state.conv must be three buffers of shape (K_c - 1, B, C) = "
                         f"{(config.K_c - 1, B, C)}; got {[np.shape(b) for b in state.conv]}")


# ----------------------------------------------------------------- the layer: manual engine
class LayerCache(NamedTuple):
    features: object     # FeaturesCache
    scan: object         # ScanCache
    output: object       # OutputCache or None
    from_params: bool    # the initial memory came from mem0 (no state given)
    shape: tuple         # (T, B, H, d)


def lmm_layer_forward(x: np.ndarray, params: Mapping[str, np.ndarray], config: TitansLMMConfig,
                      state: LMMState | None = None):
    """The LMM layer over a sequence: features, the chunked recurrence, the output path.

    Args:
        x: (T, B, D) inputs (already validated).
        params: unprefixed parameters (config.param_shapes()).
        config: the layer's config.
        state: LMMState from a previous call to continue the sequence, or None (M_0 = mem0, S_0 = 0,
            zero convolution buffers).
    Returns:
        out (T, B, D) (or the raw read-out (T, B, C) when config.output_path is False), the final
        LMMState, and the cache for lmm_layer_backward.
    """
    T, B, _ = x.shape
    H, d = config.H, config.head_width
    (q, k, v), (alpha, eta, theta), conv_state, fcache = lmm_features_forward(        # 1. (A1)-(A7)
        x, params, H, config.step_bound, config.eps_n, None if state is None else state.conv)
    if state is None:                                                                 # 2. M_0, S_0
        M0 = tuple(np.broadcast_to(params[name], (B,) + params[name].shape) for name in _memory_names(config))
        S0 = tuple(np.zeros(W.shape, dtype=W.dtype) for W in M0)
    else:
        M0, S0 = tuple(state.M), tuple(state.S)
    y, (M, S), scache = lmm_scan_forward(M0, S0, q, k, v, alpha, eta, theta, config.chunk,   # 3. (A12)-(A18)
                                         config.phi, config.read_after_write)
    if config.output_path:                                                            # 4. (A20)-(A21)
        out, ocache = lmm_output_forward(y, x, params)
    else:
        out, ocache = y.reshape(T, B, H * d), None
    cache = LayerCache(fcache, scache, ocache, state is None, (T, B, H, d))
    return out, LMMState(M, S, conv_state), cache


def lmm_layer_backward(dout: np.ndarray, cache: LayerCache, dstate: LMMState | None = None,
                       second_order: bool = True):
    """Adjoint of lmm_layer_forward.

    Args:
        dout: gradient of the layer's output.
        dstate: gradients of the returned state (an LMMState) if it was used downstream, or None.
        second_order: False drops the ADJ terms (pitfall P1, for tests only).
    Returns:
        dx (T, B, D), unprefixed parameter gradients, and the gradient of the incoming state (an
        LMMState; None when the initial state came from the parameters).
    """
    T, B, H, d = cache.shape
    if cache.output is not None:                                                      # 4.
        dy, dx_out, grads = lmm_output_backward(dout, cache.output)
    else:
        dy, dx_out, grads = dout.reshape(T, B, H, d), 0.0, {}
    (dq, dk, dv), dgates, (dM0, dS0) = lmm_scan_backward(                             # 3.
        dy, cache.scan, None if dstate is None else (dstate.M, dstate.S), second_order)
    dx, fgrads, dconv = lmm_features_backward((dq, dk, dv), dgates, cache.features,   # 1.
                                              None if dstate is None else dstate.conv)
    grads.update(fgrads)
    L = len(dM0)
    if cache.from_params:                                                             # 2. M_0 is shared by the batch
        grads.update({f"mem0.W{l + 1}": dM0[l].sum(axis=0) for l in range(L)})
        dstate0 = None
    else:
        grads.update({f"mem0.W{l + 1}": np.zeros(dM0[l].shape[1:], dtype=dM0[l].dtype) for l in range(L)})
        dstate0 = LMMState(dM0, dS0, dconv)
    return dx + dx_out, grads, dstate0


# ----------------------------------------------------------------- the layer: autodiff twin
def lmm_layer_autodiff(x, tparams: Mapping[str, ad.Tensor], config: TitansLMMConfig, state=None):
    """Autodiff twin of lmm_layer_forward: (out Tensor, final LMMState of Tensors)."""
    x = ad.as_tensor(x)
    T, B, _ = x.shape
    H, d = config.H, config.head_width
    (q, k, v), (alpha, eta, theta), conv_state = lmm_features_autodiff(
        x, tparams, H, config.step_bound, config.eps_n, None if state is None else state.conv)
    if state is None:
        M0 = tuple(ad.broadcast_to(tparams[name], (B,) + tparams[name].shape) for name in _memory_names(config))
        S0 = tuple(ad.Tensor(np.zeros(W.shape, dtype=W.dtype)) for W in M0)
    else:
        M0, S0 = tuple(state.M), tuple(state.S)
    y, (M, S) = lmm_scan_autodiff(M0, S0, q, k, v, alpha, eta, theta, config.chunk, config.phi,
                                  config.read_after_write)
    out = lmm_output_autodiff(y, x, tparams) if config.output_path else ad.reshape(y, (T, B, H * d))
    return out, LMMState(M, S, conv_state)


# ----------------------------------------------------------------- initialisation
def lmm_init(rng: np.random.Generator, config: TitansLMMConfig, dtype=np.float64) -> dict:
    """Unprefixed LMM parameters, spec A2: projections N(0, 1/D), convolutions N(0, 0.3^2) (or
    identity taps), gate weights 0, biases b_alpha = -4 (little forgetting at the start),
    b_eta = b_theta = 0, M_0 Xavier-normal per head, RMSNorm gain 1, W_gate N(0, 1/D), W_o N(0, 1/C)."""
    shapes = config.param_shapes()
    D, H, C = config.D, config.H, config.H * config.head_width
    params = {}
    for name in ("W_q", "W_k", "W_v"):
        params[name] = init.normal(rng, shapes[name], std=1.0 / np.sqrt(D), dtype=dtype)
    for name in ("conv_q", "conv_k", "conv_v"):
        if config.conv_init == "identity":
            params[name] = init.zeros(rng, shapes[name], dtype=dtype)
            params[name][:, -1] = 1.0
        else:
            params[name] = init.normal(rng, shapes[name], std=0.3, dtype=dtype)
    for name in ("w_alpha", "w_eta", "w_theta"):
        params[name] = init.zeros(rng, (D, H), dtype=dtype)
    params["b_alpha"] = np.full(H, -4.0, dtype=dtype)
    params["b_eta"] = init.zeros(rng, H, dtype=dtype)
    params["b_theta"] = init.zeros(rng, H, dtype=dtype)
    for name in _memory_names(config):
        params[name] = np.stack([init.xavier_normal(rng, shapes[name][1:], dtype=dtype) for _ in range(H)])
    if config.output_path:
        params["out_norm.g"] = np.ones(config.head_width, dtype=dtype)
        params["W_gate"] = init.normal(rng, (D, C), std=1.0 / np.sqrt(D), dtype=dtype)
        params["W_o"] = init.normal(rng, (C, D), std=1.0 / np.sqrt(C), dtype=dtype)
    return {name: params[name] for name in shapes}


# ----------------------------------------------------------------- the model
class LMMCache(NamedTuple):
    layer: LayerCache
    state: LMMState      # the final state (pass it to the next forward to stream)
    N_p: int             # persistent positions prepended in this call (0 when streaming)
    B: int


class TitansLMM:
    """One LMM layer as a model ("Titans (LMM)" with one block and no residual), following the
    model protocol: inputs x (T, B, D) -> outputs (T, B, D) (or (T, B, C) without the output path).

    forward(x, state=None) continues a sequence when given the state of cache.state from the
    previous call; persistent tokens are prepended only at the start of a sequence (state None).
    Attribute second_order (default True): False makes backward drop the second-order terms, the
    planted error of pitfall P1 that the gradient checks must catch (tests only).
    """

    def __init__(self, config: TitansLMMConfig, rng: np.random.Generator | None = None, dtype=np.float64):
        rng = np.random.default_rng(0) if rng is None else rng
        self.config = config
        self.second_order = True
        self.params = with_prefix("lmm", lmm_init(rng, config, dtype))
        if config.N_p > 0:
            self.params["persist.P"] = init.normal(rng, (config.N_p, config.D), std=0.02, dtype=dtype)

    def _expected_shapes(self) -> dict:
        shapes = with_prefix("lmm", self.config.param_shapes())
        if self.config.N_p > 0:
            shapes["persist.P"] = (self.config.N_p, self.config.D)
        return shapes

    def _check(self, x, state) -> np.ndarray:
        check_params(self.params, self._expected_shapes())
        for name, value in self.params.items():
            check_finite(f"parameter {name}", value)
        x = as_float_array("inputs", x)
        if x.ndim != 3 or x.shape[2] != self.config.D or x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"inputs must have shape (T, B, D) with T >= 1, B >= 1 and D={self.config.D}; "
                             f"got {x.shape}")
        check_finite("inputs", x)
        if state is not None:
            check_state(state, self.config, x.shape[1])
        return x

    def initial_state(self, B: int) -> LMMState:
        """The state at the start of a sequence: M_0 = mem0 for every row, S_0 = 0, zero buffers."""
        params = strip_prefix("lmm", self.params)
        M = tuple(np.broadcast_to(params[n], (B,) + params[n].shape).copy() for n in _memory_names(self.config))
        C = self.config.H * self.config.head_width
        conv = tuple(np.zeros((self.config.K_c - 1, B, C), dtype=M[0].dtype) for _ in range(3))
        return LMMState(M, tuple(np.zeros_like(W) for W in M), conv)

    def forward(self, inputs, state: LMMState | None = None):
        """outputs (T, B, D) and the cache (cache.state is the final state)."""
        x = self._check(inputs, state)
        T, B, _ = x.shape
        N_p = self.config.N_p if state is None else 0
        if N_p:                                                  # (A3.7): x~ = P || x
            P = np.broadcast_to(self.params["persist.P"][:, None, :], (N_p, B, self.config.D))
            x = np.concatenate([P, x], axis=0)                   # (N_p + T, B, D)
        out, new_state, layer_cache = lmm_layer_forward(x, strip_prefix("lmm", self.params), self.config, state)
        return out[N_p:], LMMCache(layer_cache, new_state, N_p, B)

    def backward(self, doutputs, cache: LMMCache, dstate: LMMState | None = None) -> dict:
        N_p = cache.N_p
        dout = np.concatenate([np.zeros((N_p,) + doutputs.shape[1:], dtype=doutputs.dtype), doutputs], axis=0)
        dx, grads, _ = lmm_layer_backward(dout, cache.layer, dstate, self.second_order)
        grads = with_prefix("lmm", grads)
        if self.config.N_p > 0:
            grads["persist.P"] = dx[:N_p].sum(axis=1) if N_p else np.zeros_like(self.params["persist.P"])
        return {name: grads[name] for name in self.params}

    def forward_autodiff(self, tparams: Mapping[str, ad.Tensor], inputs, state=None) -> ad.Tensor:
        x = self._check(inputs, state)
        T, B, _ = x.shape
        N_p = self.config.N_p if state is None else 0
        x = ad.Tensor(x)
        if N_p:
            P = ad.broadcast_to(ad.reshape(tparams["persist.P"], (N_p, 1, self.config.D)), (N_p, B, self.config.D))
            x = ad.concatenate([P, x], axis=0)
        out, _ = lmm_layer_autodiff(x, strip_prefix("lmm", tparams), self.config, state)
        return out[N_p:]
