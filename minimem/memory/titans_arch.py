"""Titans architectures: the LMM combined with attention as a context (MAC), as a gate (MAG) and
as a layer (MAL), and the LMM alone (Behrouz et al., 2024, arXiv:2501.00663, section 4, eqs.
19-31; spec specs/titans_mnm.md A3.7-A3.11). The LMM layer is minimem.memory.titans.

Shapes: T time, B batch, X input width, Y output width, D model width, N_p persistent tokens,
w attention window (MAG, MAL), C segment length (MAC), c <= C the length of one segment.
Model (A3.11, Llama-like pre-norm blocks):
    z = x W_in;  z = P || z (LMM, MAG, MAL: persistent tokens once, eq. 19)
    per block:   z <- z + Mixer(RMSNorm(z));  z <- z + SwiGLU(RMSNorm(z))
    out = RMSNorm(z) W_out, the N_p prefix positions dropped
Mixers (h = RMSNorm(z)):
    LMM  (A3.10)  LMM(h)
    MAL  (A31)    two residual sub-layers: z <- z + LMM(RMSNorm(z)); z <- z + SW-Attn(RMSNorm(z))
    MAG  (A27)-(A30)  o = RMSNorm_{g_y}(SW-Attn(h)) * sigma(RMSNorm_{g_m}(LMM(h)))
    MAC  (A22)-(A26)  for each segment S of h, with memory state (M, S) carried across segments:
            (A22) r = M*(q(S)): the LMM query path on the segment, read without update, mapped to
                  width D by the LMM output path (A20-A21)
            (A23) window = P || r || S              (N_p + 2c tokens, per-layer persistent tokens)
            (A24) y = Attn(window), mask of A3.8, the c outputs at the segment positions kept
            (A25) the LMM recurrence over keys/values from y, from the carried state
            (A26) o = RMSNorm_{g_y}(y) * sigma(RMSNorm_{g_m}(m)), m = the LMM layer's output on y
SW-Attn: position t attends to the N_p prefix and to the last w positions up to t (A28).
minimem choices (spec A10.6): in (A26) every token t of a segment reads the memory right after its
own write (read after write, A15) with its own query from y_t, so the model stays causal; the
paper's M*_t(y_t) is this read at the segment's last token. The retrieval query path of (A22)
carries its own convolution buffer over the input stream; the LMM's buffers run over the y stream.

Parameters (model.params, in this order; weights used as `x @ W`):
    W_in (X, D);  persist.P (N_p, D) (LMM, MAG, MAL with N_p > 0)
    layers.{i}.norm1.g (D,)                                  pre-norm of the mixer
    layers.{i}.lmm.*                                         an LMM layer (titans.py names, output path on)
    layers.{i}.attn.W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o   MAG, MAL, MAC (minimem.nn.attention layout)
    layers.{i}.norm_attn.g (D,)                              MAL: pre-norm of the attention sub-layer
    layers.{i}.gate.g_y, layers.{i}.gate.g_m (D,)            MAG, MAC (A30)
    layers.{i}.persist.P (N_p, D)                            MAC: persistent tokens of every window
    layers.{i}.norm2.g (D,); layers.{i}.ff.W_gate, ff.W_up (D, F), ff.W_down (F, D)
    norm_f.g (D,);  W_out (D, Y)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem import init
from minimem.checks import check_int
from minimem.memory.titans import (
    LMMState, TitansLMMConfig, lmm_init, lmm_layer_autodiff, lmm_layer_backward, lmm_layer_forward,
)
from minimem.memory.titans_blocks import (
    attention_tf_autodiff, attention_tf_backward, attention_tf_forward, gate_autodiff, gate_backward,
    gate_forward, mac_window_mask, rmsnorm_autodiff, rmsnorm_backward, rmsnorm_forward, sliding_window_mask,
    swiglu_autodiff, swiglu_backward, swiglu_forward,
)
from minimem.memory.titans_features import (
    lmm_output_autodiff, lmm_output_backward, lmm_output_forward, lmm_queries_autodiff, lmm_queries_backward,
    lmm_queries_forward,
)
from minimem.memory.titans_memory import mem_read_autodiff, mem_read_backward, mem_read_forward
from minimem.nn.attention import attention_init
from minimem.nn.linear import as_float_array, check_finite, check_params, strip_prefix, with_prefix

VARIANTS = ("lmm", "mal", "mag", "mac")


# ----------------------------------------------------------------- config
@dataclass(frozen=True)
class TitansConfig:
    """A Titans model (defaults: the spec's CPU defaults for MAC/MAG/MAL, A5).

    Attributes:
        variant: "lmm", "mal", "mag" or "mac". X, Y: input and output widths. D: model width.
        layers: number of blocks. memory: the LMM layer's config (its D must equal D; output_path
            must be True and N_p 0: persistent tokens belong to the model). Default TitansLMMConfig(D).
        N_p: persistent tokens. window: w of SW-Attn (MAG, MAL). segment: C (MAC).
        attn_heads: attention heads. F: SwiGLU width (default 2 D).
        plain_causal_mac: use the literal plain causal mask in the MAC window, which leaks the
            segment's future (A3.8); only for documenting the leak.
    """
    variant: str = "mag"
    X: int = 8
    Y: int = 8
    D: int = 32
    layers: int = 1
    memory: TitansLMMConfig | None = None
    N_p: int = 4
    window: int = 16
    segment: int = 16
    attn_heads: int = 2
    F: int | None = None
    plain_causal_mac: bool = False

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}; got {self.variant!r}")
        for name in ("X", "Y", "D", "layers", "window", "segment", "attn_heads"):
            check_int(name, getattr(self, name), 1)
        check_int("N_p", self.N_p, 0)
        if self.F is not None:
            check_int("F (if not None)", self.F, 1)
        if self.D % self.attn_heads:
            raise ValueError(f"D={self.D} is not divisible by attn_heads={self.attn_heads}")
        memory = TitansLMMConfig(D=self.D) if self.memory is None else self.memory
        if memory.D != self.D or not memory.output_path or memory.N_p != 0:
            raise ValueError(f"memory must be a TitansLMMConfig with D={self.D}, output_path=True and N_p=0; "
                             f"got D={memory.D}, output_path={memory.output_path}, N_p={memory.N_p}")
        object.__setattr__(self, "memory", memory)

    @property
    def ff_width(self) -> int:
        return self.F if self.F is not None else 2 * self.D

    @property
    def model_prefix(self) -> int:
        """Persistent tokens prepended to the whole sequence (MAC puts them in every window instead)."""
        return 0 if self.variant == "mac" else self.N_p

    def layer_shapes(self) -> dict:
        """Unprefixed parameter names and shapes of one block, in order."""
        D, F = self.D, self.ff_width
        shapes = {"norm1.g": (D,), **with_prefix("lmm", self.memory.param_shapes())}
        if self.variant != "lmm":
            shapes.update({"attn.W_q": (D, D), "attn.b_q": (D,), "attn.W_k": (D, D), "attn.b_k": (D,),
                           "attn.W_v": (D, D), "attn.b_v": (D,), "attn.W_o": (D, D), "attn.b_o": (D,)})
        if self.variant == "mal":
            shapes["norm_attn.g"] = (D,)
        if self.variant in ("mag", "mac"):
            shapes.update({"gate.g_y": (D,), "gate.g_m": (D,)})
        if self.variant == "mac" and self.N_p > 0:
            shapes["persist.P"] = (self.N_p, D)
        shapes.update({"norm2.g": (D,), "ff.W_gate": (D, F), "ff.W_up": (D, F), "ff.W_down": (F, D)})
        return shapes

    def param_shapes(self) -> dict:
        shapes = {"W_in": (self.X, self.D)}
        if self.model_prefix > 0:
            shapes["persist.P"] = (self.N_p, self.D)
        for i in range(self.layers):
            shapes.update(with_prefix(f"layers.{i}", self.layer_shapes()))
        shapes.update({"norm_f.g": (self.D,), "W_out": (self.D, self.Y)})
        return shapes


def _initial_memory(lp: Mapping, memory: TitansLMMConfig, B: int, like) -> LMMState:
    """The LMM state at the start of a sequence as explicit arrays: M_0 = mem0 per row, S_0 = 0, zero buffers."""
    names = [f"mem0.W{l + 1}" for l in range(memory.L_M)]
    M = tuple(np.broadcast_to(lp[n], (B,) + lp[n].shape) for n in names)
    C = memory.H * memory.head_width
    conv = tuple(np.zeros((memory.K_c - 1, B, C), dtype=like.dtype) for _ in range(3))
    return LMMState(M, tuple(np.zeros(W.shape, dtype=W.dtype) for W in M), conv)


# ----------------------------------------------------------------- MAC mixer (A22)-(A26)
class MACSegmentCache(NamedTuple):
    bounds: tuple        # (s, e) of the segment
    query: tuple         # lmm_queries cache (A22)
    read: object         # ReadCache of the retrieval
    retrieve: object     # OutputCache mapping the retrieval to width D
    attention: object    # attention cache (A24)
    lmm: object          # LayerCache of the LMM on y (A25)
    gate: tuple          # gate cache (A26)


def mac_forward(h: np.ndarray, lp: Mapping[str, np.ndarray], config: TitansConfig):
    """Memory as a context over a sequence, eqs. (A22)-(A26).

    Args:
        h: (T, B, D) the normalised block input; lp: the block's unprefixed parameters.
    Returns:
        o (T, B, D) and the cache.
    """
    T, B, D = h.shape
    memory, N_p = config.memory, config.N_p
    lmm_params = strip_prefix("lmm", lp)
    attn_params = strip_prefix("attn", lp)
    state = _initial_memory(lmm_params, memory, B, h)
    query_buffer = None
    o = np.empty_like(h)
    segments = []
    for s in range(0, T, config.segment):
        e = min(s + config.segment, T)
        x_seg, c = h[s:e], e - s
        q, query_buffer, qc = lmm_queries_forward(x_seg, lmm_params, memory.H, memory.eps_n, query_buffer)
        r, rc = mem_read_forward(state.M, np.moveaxis(q, 0, 2), memory.phi)            # (A22) (B, H, c, d), no update
        retrieved, oc = lmm_output_forward(np.moveaxis(r, 2, 0), x_seg, lmm_params)     # (c, B, D)
        parts = [retrieved, x_seg]
        if N_p:
            parts.insert(0, np.broadcast_to(lp["persist.P"][:, None, :], (N_p, B, D)))
        window = np.concatenate(parts, axis=0)                                           # (A23) (N_p + 2c, B, D)
        a, ac = attention_tf_forward(window, attn_params, config.attn_heads,
                                     mac_window_mask(N_p, c, config.plain_causal_mac))   # (A24)
        y = a[N_p + c:]                                                                  # (c, B, D)
        m, state, lc = lmm_layer_forward(y, lmm_params, memory, state)                  # (A25)
        o[s:e], gc = gate_forward(y, m, lp["gate.g_y"], lp["gate.g_m"])                 # (A26)
        segments.append(MACSegmentCache((s, e), qc, rc, oc, ac, lc, gc))
    return o, (segments, lp, h.shape)


def mac_backward(do: np.ndarray, cache, config: TitansConfig):
    """Adjoint of mac_forward, segments last to first with the memory state's gradient carried.
    Returns (dh (T, B, D), unprefixed parameter gradients of the mixer)."""
    segments, lp, (T, B, D) = cache
    memory, N_p = config.memory, config.N_p
    grads = {name: np.zeros_like(value) for name, value in lp.items()}

    def add(prefix, found):
        for name, value in found.items():
            grads[f"{prefix}{name}"] += value

    dh = np.empty((T, B, D), dtype=do.dtype)
    dstate, dquery_buffer = None, None
    for sc in reversed(segments):
        s, e = sc.bounds
        c = e - s
        dy, dm, dg_y, dg_m = gate_backward(do[s:e], sc.gate)                            # (A26)
        grads["gate.g_y"] += dg_y
        grads["gate.g_m"] += dg_m
        dy_lmm, lmm_grads, dstate = lmm_layer_backward(dm, sc.lmm, dstate)              # (A25)
        add("lmm.", lmm_grads)
        da = np.zeros((N_p + 2 * c, B, D), dtype=do.dtype)
        da[N_p + c:] = dy + dy_lmm
        dwindow, attn_grads = attention_tf_backward(da, sc.attention)                   # (A24)
        add("attn.", attn_grads)
        if N_p:
            grads["persist.P"] += dwindow[:N_p].sum(axis=1)                              # (A23)
        dr, dx_gate, out_grads = lmm_output_backward(dwindow[N_p:N_p + c], sc.retrieve)  # (A22)
        add("lmm.", out_grads)
        dq, dM_read = mem_read_backward(np.moveaxis(dr, 0, 2), sc.read)
        dstate = dstate._replace(M=tuple(a + b for a, b in zip(dstate.M, dM_read)))     # read the incoming state
        dx_q, q_grads, dquery_buffer = lmm_queries_backward(np.moveaxis(dq, 2, 0), sc.query, dquery_buffer)
        add("lmm.", q_grads)
        dh[s:e] = dwindow[N_p + c:] + dx_gate + dx_q
    for l in range(memory.L_M):                                                          # M_0 = mem0 for every row
        grads[f"lmm.mem0.W{l + 1}"] += dstate.M[l].sum(axis=0)
    return dh, grads


def mac_autodiff(h, tlp: Mapping[str, ad.Tensor], config: TitansConfig) -> ad.Tensor:
    """Autodiff twin of mac_forward."""
    h = ad.as_tensor(h)
    T, B, D = h.shape
    memory, N_p = config.memory, config.N_p
    lmm_params, attn_params = strip_prefix("lmm", tlp), strip_prefix("attn", tlp)
    names = [f"mem0.W{l + 1}" for l in range(memory.L_M)]
    M = tuple(ad.broadcast_to(lmm_params[n], (B,) + lmm_params[n].shape) for n in names)
    C = memory.H * memory.head_width
    zeros = lambda shape: ad.Tensor(np.zeros(shape, dtype=h.dtype))
    state = LMMState(M, tuple(zeros(W.shape) for W in M), tuple(zeros((memory.K_c - 1, B, C)) for _ in range(3)))
    query_buffer = None
    outs = []
    for s in range(0, T, config.segment):
        e = min(s + config.segment, T)
        x_seg, c = h[s:e], e - s
        q, query_buffer = lmm_queries_autodiff(x_seg, lmm_params, memory.H, memory.eps_n, query_buffer)
        r = mem_read_autodiff(state.M, ad.transpose(q, (1, 2, 0, 3)), memory.phi)      # (B, H, c, d)
        retrieved = lmm_output_autodiff(ad.transpose(r, (2, 0, 1, 3)), x_seg, lmm_params)
        parts = [retrieved, x_seg]
        if N_p:
            parts.insert(0, ad.broadcast_to(ad.reshape(tlp["persist.P"], (N_p, 1, D)), (N_p, B, D)))
        a = attention_tf_autodiff(ad.concatenate(parts, axis=0), attn_params, config.attn_heads,
                                  mac_window_mask(N_p, c, config.plain_causal_mac))
        y = a[N_p + c:]
        m, state = lmm_layer_autodiff(y, lmm_params, memory, state)
        outs.append(gate_autodiff(y, m, tlp["gate.g_y"], tlp["gate.g_m"]))
    return ad.concatenate(outs, axis=0)


# ----------------------------------------------------------------- one block
def block_forward(z: np.ndarray, lp: Mapping[str, np.ndarray], config: TitansConfig):
    """One pre-norm residual block (A3.11) on z (T, B, D) (T includes any persistent prefix)."""
    T = z.shape[0]
    lmm_params, attn_params = strip_prefix("lmm", lp), strip_prefix("attn", lp)
    mask = sliding_window_mask(T, config.window, config.model_prefix)                   # (A28)
    caches = {}
    h, caches["norm1"] = rmsnorm_forward(z, lp["norm1.g"])
    if config.variant in ("lmm", "mal"):                                                  # (A3.10), (A31)
        m, _, caches["lmm"] = lmm_layer_forward(h, lmm_params, config.memory)
        z = z + m
        if config.variant == "mal":
            h2, caches["norm_attn"] = rmsnorm_forward(z, lp["norm_attn.g"])
            a, caches["attn"] = attention_tf_forward(h2, attn_params, config.attn_heads, mask)
            z = z + a
    elif config.variant == "mag":                                                         # (A27)-(A30)
        y, caches["attn"] = attention_tf_forward(h, attn_params, config.attn_heads, mask)
        m, _, caches["lmm"] = lmm_layer_forward(h, lmm_params, config.memory)
        o, caches["gate"] = gate_forward(y, m, lp["gate.g_y"], lp["gate.g_m"])
        z = z + o
    else:                                                                                 # (A22)-(A26)
        o, caches["mac"] = mac_forward(h, lp, config)
        z = z + o
    h, caches["norm2"] = rmsnorm_forward(z, lp["norm2.g"])
    f, caches["ff"] = swiglu_forward(h, strip_prefix("ff", lp))
    return z + f, caches


def block_backward(dz: np.ndarray, caches: dict, lp: Mapping[str, np.ndarray], config: TitansConfig):
    """Adjoint of block_forward. Returns (dz_in (T, B, D), unprefixed parameter gradients)."""
    grads = {name: np.zeros_like(value) for name, value in lp.items()}

    def add(prefix, found):
        for name, value in found.items():
            grads[f"{prefix}{name}"] += value

    dh, ff_grads = swiglu_backward(dz, caches["ff"])
    add("ff.", ff_grads)
    dh, grads["norm2.g"] = rmsnorm_backward(dh, caches["norm2"])
    dz = dz + dh
    if config.variant in ("lmm", "mal"):
        if config.variant == "mal":
            dh2, attn_grads = attention_tf_backward(dz, caches["attn"])
            add("attn.", attn_grads)
            dh2, grads["norm_attn.g"] = rmsnorm_backward(dh2, caches["norm_attn"])
            dz = dz + dh2
        dh, lmm_grads, _ = lmm_layer_backward(dz, caches["lmm"])
        add("lmm.", lmm_grads)
    elif config.variant == "mag":
        dy, dm, grads["gate.g_y"], grads["gate.g_m"] = gate_backward(dz, caches["gate"])
        dh_m, lmm_grads, _ = lmm_layer_backward(dm, caches["lmm"])
        dh_y, attn_grads = attention_tf_backward(dy, caches["attn"])
        add("lmm.", lmm_grads)
        add("attn.", attn_grads)
        dh = dh_m + dh_y
    else:
        dh, mac_grads = mac_backward(dz, caches["mac"], config)
        add("", mac_grads)
    dh, dg = rmsnorm_backward(dh, caches["norm1"])
    grads["norm1.g"] += dg
    return dz + dh, grads


def block_autodiff(z, tlp: Mapping[str, ad.Tensor], config: TitansConfig) -> ad.Tensor:
    """Autodiff twin of block_forward."""
    mask = sliding_window_mask(z.shape[0], config.window, config.model_prefix)
    lmm_params, attn_params = strip_prefix("lmm", tlp), strip_prefix("attn", tlp)
    h = rmsnorm_autodiff(z, tlp["norm1.g"])
    if config.variant in ("lmm", "mal"):
        z = z + lmm_layer_autodiff(h, lmm_params, config.memory)[0]
        if config.variant == "mal":
            z = z + attention_tf_autodiff(rmsnorm_autodiff(z, tlp["norm_attn.g"]), attn_params,
                                          config.attn_heads, mask)
    elif config.variant == "mag":
        y = attention_tf_autodiff(h, attn_params, config.attn_heads, mask)
        m = lmm_layer_autodiff(h, lmm_params, config.memory)[0]
        z = z + gate_autodiff(y, m, tlp["gate.g_y"], tlp["gate.g_m"])
    else:
        z = z + mac_autodiff(h, tlp, config)
    return z + swiglu_autodiff(rmsnorm_autodiff(z, tlp["norm2.g"]), strip_prefix("ff", tlp))


# ----------------------------------------------------------------- initialisation and model
def titans_init(rng: np.random.Generator, config: TitansConfig, dtype=np.float64) -> dict:
    """Parameters of a Titans model: W_in, W_out Xavier-uniform; persistent tokens N(0, 0.02^2);
    gains 1; the LMM as lmm_init; attention as minimem.nn.attention_init; SwiGLU N(0, 1/D), N(0, 1/F)."""
    D, F = config.D, config.ff_width
    params = {"W_in": init.xavier_uniform(rng, (config.X, D), dtype=dtype)}
    if config.model_prefix > 0:
        params["persist.P"] = init.normal(rng, (config.N_p, D), std=0.02, dtype=dtype)
    for i in range(config.layers):
        layer = {"norm1.g": np.ones(D, dtype=dtype), **with_prefix("lmm", lmm_init(rng, config.memory, dtype))}
        if config.variant != "lmm":
            layer.update(with_prefix("attn", attention_init(rng, D, config.attn_heads, dtype=dtype)))
        if config.variant == "mal":
            layer["norm_attn.g"] = np.ones(D, dtype=dtype)
        if config.variant in ("mag", "mac"):
            layer["gate.g_y"], layer["gate.g_m"] = np.ones(D, dtype=dtype), np.ones(D, dtype=dtype)
        if config.variant == "mac" and config.N_p > 0:
            layer["persist.P"] = init.normal(rng, (config.N_p, D), std=0.02, dtype=dtype)
        layer.update({"norm2.g": np.ones(D, dtype=dtype),
                      "ff.W_gate": init.normal(rng, (D, F), std=1.0 / np.sqrt(D), dtype=dtype),
                      "ff.W_up": init.normal(rng, (D, F), std=1.0 / np.sqrt(D), dtype=dtype),
                      "ff.W_down": init.normal(rng, (F, D), std=1.0 / np.sqrt(F), dtype=dtype)})
        params.update(with_prefix(f"layers.{i}", {name: layer[name] for name in config.layer_shapes()}))
    params["norm_f.g"] = np.ones(D, dtype=dtype)
    params["W_out"] = init.xavier_uniform(rng, (D, config.Y), dtype=dtype)
    return {name: params[name] for name in config.param_shapes()}


class TitansModel:
    """A Titans model (LMM, MAL, MAG or MAC blocks) following the model protocol:
    inputs x (T, B, X) -> outputs (T, B, Y) (per-position read-out; tasks pick the positions they score)."""

    def __init__(self, config: TitansConfig, rng: np.random.Generator | None = None, dtype=np.float64):
        rng = np.random.default_rng(0) if rng is None else rng
        self.config = config
        self.params = titans_init(rng, config, dtype)

    def _check(self, x) -> np.ndarray:
        check_params(self.params, self.config.param_shapes())
        for name, value in self.params.items():
            check_finite(f"parameter {name}", value)
        x = as_float_array("inputs", x)
        if x.ndim != 3 or x.shape[2] != self.config.X or x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"inputs must have shape (T, B, X) with T >= 1, B >= 1 and X={self.config.X}; "
                             f"got {x.shape}")
        check_finite("inputs", x)
        return x

    def forward(self, inputs):
        """outputs (T, B, Y) and the cache."""
        x = self._check(inputs)
        config, N = self.config, self.config.model_prefix
        z = x @ self.params["W_in"]                                                      # (T, B, D)
        if N:
            P = np.broadcast_to(self.params["persist.P"][:, None, :], (N,) + z.shape[1:])
            z = np.concatenate([P, z], axis=0)                                           # (N_p + T, B, D)  eq. (19)
        blocks = []
        for i in range(config.layers):
            z, cache = block_forward(z, strip_prefix(f"layers.{i}", self.params), config)
            blocks.append(cache)
        h, norm_cache = rmsnorm_forward(z[N:], self.params["norm_f.g"])
        return h @ self.params["W_out"], (x, blocks, norm_cache, h)

    def backward(self, doutputs, cache) -> dict:
        x, blocks, norm_cache, h = cache
        config, N = self.config, self.config.model_prefix
        grads = {"W_out": h.reshape(-1, h.shape[-1]).T @ doutputs.reshape(-1, doutputs.shape[-1])}
        dh, grads["norm_f.g"] = rmsnorm_backward(doutputs @ self.params["W_out"].T, norm_cache)
        dz = np.concatenate([np.zeros((N,) + dh.shape[1:], dtype=dh.dtype), dh], axis=0)
        for i in reversed(range(config.layers)):
            dz, layer_grads = block_backward(dz, blocks[i], strip_prefix(f"layers.{i}", self.params), config)
            grads.update(with_prefix(f"layers.{i}", layer_grads))
        if N:
            grads["persist.P"] = dz[:N].sum(axis=1)
        grads["W_in"] = x.reshape(-1, x.shape[-1]).T @ dz[N:].reshape(-1, dz.shape[-1])
        return {name: grads[name] for name in self.params}

    def forward_autodiff(self, tparams: Mapping[str, ad.Tensor], inputs) -> ad.Tensor:
        x = self._check(inputs)
        config, N = self.config, self.config.model_prefix
        z = ad.matmul(ad.Tensor(x), tparams["W_in"])
        if N:
            P = ad.broadcast_to(ad.reshape(tparams["persist.P"], (N, 1, config.D)), (N,) + z.shape[1:])
            z = ad.concatenate([P, z], axis=0)
        for i in range(config.layers):
            z = block_autodiff(z, strip_prefix(f"layers.{i}", tparams), config)
        return ad.matmul(rmsnorm_autodiff(z[N:], tparams["norm_f.g"]), tparams["W_out"])
