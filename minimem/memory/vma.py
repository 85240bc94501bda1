"""Variational Memory Addressing (Bornschein, Mnih, Zoran & Rezende, NeurIPS 2017, arXiv 1709.07116):
a memory read is a discrete latent address a; a conditional VAE then models how x deviates from
the retrieved template m_a, so p(x|M) = sum_a p(a|M) p(x|m_a) (specs/generative_memory.md, part A).

Shapes: B episodes, N memory slots, N' = N + n_dummy addressable slots, X pixels, S importance
samples (S' = S, or N' in exact mode), Z latent, E key size, He entry embedding, H hidden size.
Equations (spec numbering; "act" is tanh unless activation="relu"):
    (V1)  k_x = h(x),  k_n = h(m_n),  h(v) = act(v @ key.W1 + key.b1) @ key.W2 + key.b2   (B, E), (B, N', E)
    (V2)  l_bn = <k_x[b], k_n[b]>   (times 1/sqrt(E) with addr_scale)                    (B, N')
    (V3)  log q(a=n | M, x) = l_bn - lse_n(l_b.)                                        (B, N')
    (V4)  log p(a=n | M) = -log N' (few-shot mode),  theta_n - lse(theta) (learned mode)
    (V5)  a from uniforms u by the inverse CDF; optional top-k restriction of q
    (V6)  m_sb = M'[b, a_sb];  e = act(m @ emb.W + emb.b)                                (S', B, He)
    (V7)  mu_p = e @ prior.Wm + prior.bm,  log sig_p = e @ prior.Ws + prior.bs             (S', B, Z)
    (V8)  g = act(x @ enc.Wx + e @ enc.We + enc.b);  mu_q = g @ enc.Wm + enc.bm,
          log sig_q = g @ enc.Ws + enc.bs                                                 (S', B, Z)
    (V9)  z = mu_q + exp(log sig_q) * eps                 reparameterisation, eps an input
    (V10) r = act(z @ dec.Wz + e @ dec.We + dec.b);  logit = r @ dec.Wo + dec.bo + dec.skip * m
          log p(x | z, m_a) = sum_i x_i logit_i - softplus(logit_i)                       (S', B)
    (V12) log w = log p(x|z,m) + log N(z; mu_p, sig_p) + log p(a) - log N(z; mu_q, sig_q) - log q(a)
    (V13) L_S = lse_s(log w_s) - log S                    the model's output, (B,)
    (V14) L_exact = sum_n q_n [inner_n + log p_n - log q_n], one eps per slot   (exact mode)
The bound, densities, sampler and VIMCO signals are in minimem/memory/vma_bound.py; the key
network and the conditional VAE pairs (V1, V6-V11) in minimem/memory/vma_networks.py.

Estimators (config.estimator) - what backward() returns for an upstream dL (B,):
    "vimco"     the VIMCO estimate of grad E[L_S] (A.4): pathwise through z and every network,
                plus the score term with leave-one-out signals c_s = L - L_-s (G3), S >= 2.
                Manual engine: organisation 2 of A.4, dl_bn = sum_s dL_b (c_sb - w~_sb)
                ([a_sb = n] - q_bn) (G5); autodiff engine: organisation 1, the surrogate
                L + sum_s stopgrad(c_s) log q(a_s) (its value is exactly L). This is the
                gradient of the frozen-signal surrogate (spec D.3), not of the output L itself.
    "pathwise"  the exact gradient of L_S(theta; a, eps) with a and eps held fixed, log q(a_s)
                differentiated inside log w_s (spec D.2); no score term, so not an estimator of
                grad E[L_S] on its own.
    "exact"     the exact gradient of L_exact (V14); eps has shape (N', B, Z), no a or u.

Manual engine: what the hand-derived backward does that a tape does not (issue 11; each step is
commented where it is used, and tests/test_bench_generative.py pins it to the plain formulas):
    slot keys never formed: <k_x, k_n> = <s_n, key.W2 k_x> + <key.b2, k_x> (s_n the slot's hidden
        layer), so the slots' second layer becomes one (B, E) x (E, H) product on the query side;
    products merged by concatenating weights: e @ [prior.Wm | prior.Ws | enc.We | dec.We],
        g @ [enc.Wm | enc.Ws], and in exact mode M' @ [key.W1 | emb.W] (both read every slot);
        their adjoints are written side by side into one buffer and need one product each;
    rows stacked: a query sharing the key network runs its first layer with the slots, [M'; x] @ key.W1;
    the x-part of the encoder, x @ enc.Wx, on the B rows of x once (shared by every sample);
    log N(z; mu_q, sig_q) at z = mu_q + sig_q eps is sum(-eps^2 / 2 - log sig_q) - const: its
        adjoint is +dinner on log sig_q only (no Gaussian adjoint pass for q);
    exact mode runs the VAE on M' itself in its (B, N') order: no gather, no scatter;
    the Bernoulli term with one exp per pixel and logs of block products (vma_bound), its
        Bernoulli mean written into the logits' buffer; activations applied in place;
    VIMCO's L and every L_-s from one masked log-sum-exp; log p(a) and its scatter skipped when
        the prior is uniform (few-shot mode); no top-k bookkeeping on the dense path.
The autodiff engine keeps the plain equations; the two agree to rounding (tests/test_vma.py).

Noise is an input (DESIGN.md): VMAInputs(x, M, a or u, eps). With u the model samples a itself
(V5) and returns it in the cache (cache.a), so a step can be replayed with the same a.
Memory modes: "few_shot" (M is data (B, N, X), no gradient; n_dummy learned entries `mem.dummy`
are appended to every episode) and "learned" (M is the parameter `mem.M` (N, X), the prior has
learned logits `addr.theta`). The key network is shared by the query and the slots (A.2);
separate_query=True gives the query its own `query.*` network.

Parameters (every weight used as `v @ W`; init of spec A.2):
    key.W1 (X, H), key.b1 (H,), key.W2 (H, E), key.b2 (E,)     [query.* the same, if separate_query]
    emb.W (X, He), emb.b (He,)
    prior.Wm (He, Z), prior.bm (Z,), prior.Ws (He, Z), prior.bs (Z,)
    enc.Wx (X, H), enc.We (He, H), enc.b (H,), enc.Wm (H, Z), enc.bm (Z,), enc.Ws (H, Z), enc.bs (Z,)
    dec.Wz (Z, H), dec.We (He, H), dec.b (H,), dec.Wo (H, X), dec.bo (X,), dec.skip (X,)
    mem.dummy (n_dummy, X)                                      few-shot mode with n_dummy > 0
    mem.M (N, X), addr.theta (N,)                               learned mode
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem import init
from minimem.checks import check_int
from minimem.memory.vma_bound import (
    BASELINES, address_entropy, address_kl, check_finite, exact_bound_backward, exact_bound_forward,
    iw_bound_autodiff, iw_bound_backward, iw_bound_forward, log_softmax_backward, log_softmax_forward, sample_addresses,
    sigmoid, top_k_mask, vimco_signals,
)
from minimem.memory.vma_networks import (
    AddressCache, TemplateVAECache, address_logits_backward, address_logits_forward, key_net_autodiff,
    key_net_forward, memory_first_layers_backward, memory_first_layers_forward, template_vae_autodiff,
    template_vae_backward, template_vae_forward,
)
from minimem.nn.mlp import activation_forward

ESTIMATORS = ("vimco", "pathwise", "exact")
MEMORY_MODES = ("few_shot", "learned")


# ----------------------------------------------------------------- config and inputs
@dataclass(frozen=True)
class VMAConfig:
    """Sizes and choices of a VMA model (defaults: spec A.5, minimem CPU configuration).

    X: pixels. Z, E, He, H: latent, key, entry-embedding and hidden sizes.
    memory: "few_shot" (M is data) or "learned" (M is the parameter mem.M with N templates).
    N: learned templates (learned mode only; few-shot memories bring their own N).
    n_dummy: learned entries appended to every few-shot memory (the reference code uses 2).
    estimator: "vimco", "pathwise" or "exact" (module docstring). baseline: VIMCO's leave-one-out
    stand-in, "geometric" (default), "arithmetic" (reference code) or "none" (c_s = L).
    top_k: keep only the K largest address logits (None = off; K >= N' is the dense path).
    addr_scale: multiply the logits by 1/sqrt(E). separate_query: a query network of its own.
    activation: "tanh" (every gradcheck case) or "relu" (speed runs).
    mean_pixel: dec.bo is initialised to logit(mean_pixel). dtype: "float64" or "float32".
    """
    X: int
    Z: int = 16
    E: int = 32
    He: int = 64
    H: int = 128
    memory: str = "few_shot"
    N: int = 0
    n_dummy: int = 0
    estimator: str = "vimco"
    baseline: str = "geometric"
    top_k: int | None = None
    addr_scale: bool = False
    separate_query: bool = False
    activation: str = "tanh"
    mean_pixel: float = 0.1
    dtype: str = "float64"

    def __post_init__(self) -> None:
        for name in ("X", "Z", "E", "He", "H"):
            check_int(name, getattr(self, name), 1)
        for name, value, allowed in (("memory", self.memory, MEMORY_MODES), ("estimator", self.estimator, ESTIMATORS),
                                     ("baseline", self.baseline, BASELINES), ("activation", self.activation, ("tanh", "relu")),
                                     ("dtype", self.dtype, ("float64", "float32"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}; got {value!r}")
        if self.memory == "learned" and (isinstance(self.N, (bool, np.bool_)) or not isinstance(self.N, (int, np.integer))
                                         or self.N < 1):
            raise ValueError(f"learned mode needs N >= 1 templates; got N={self.N!r}")
        if self.memory == "few_shot" and self.N != 0:
            raise ValueError(f"N is set by the memory in few-shot mode (M is (B, N, X)); leave N=0, got {self.N}")
        check_int("n_dummy", self.n_dummy, 0)
        if self.memory == "learned" and self.n_dummy:
            raise ValueError("n_dummy entries are for few-shot mode; in learned mode every slot is learned")
        if self.top_k is not None:
            check_int("top_k (if not None)", self.top_k, 1)
        if not 0.0 < self.mean_pixel < 1.0:
            raise ValueError(f"mean_pixel must be in (0, 1); got {self.mean_pixel}")


class VMAInputs(NamedTuple):
    """One batch of episodes with its noise (spec D.1). Give exactly one of a and u, except in
    exact mode, which takes neither."""
    x: np.ndarray                    # (B, X) targets in [0, 1]
    M: np.ndarray | None = None      # (B, N, X) memory in [0, 1] (few-shot mode); None in learned mode
    a: np.ndarray | None = None      # (S, B) int addresses in 0..N'-1
    u: np.ndarray | None = None      # (S, B) uniforms in [0, 1), sampled into a by (V5)
    eps: np.ndarray | None = None    # (S, B, Z) standard normal; (N', B, Z) in exact mode


# ----------------------------------------------------------------- the model
class VMACache(NamedTuple):
    B: int
    memory: np.ndarray         # (B, N', X) addressable slots M'
    a: np.ndarray              # (S', B) int addresses used (sampled from u, given, or arange in exact mode)
    address: AddressCache      # (V1)-(V2), the slot keys folded away (vma_networks.address_logits_forward)
    kept: np.ndarray | None    # (B, N') bool top-k set; None on the dense path (top_k None or >= N')
    log_q: np.ndarray          # (B, N') (V3)
    q_cache: tuple             # LogSoftmaxCache
    log_p: np.ndarray          # (B, N') (V4)
    p_cache: tuple | None      # LogSoftmaxCache of theta (learned mode) or None
    vae: TemplateVAECache      # rows (S, B); in exact mode (B, N'), the memory's own order
    inner: np.ndarray          # (S, B); (B, N') in exact mode
    log_w: np.ndarray | None   # (S, B) (V12); None in exact mode
    w_tilde: np.ndarray | None  # (S, B) softmax_s(log w)
    signal: np.ndarray | None  # (S, B) VIMCO signals c (vimco estimator only)
    L_loo: np.ndarray | None   # (S, B) leave-one-out bounds (vimco estimator only)
    exact: tuple | None        # ExactBoundCache (exact mode)
    L: np.ndarray              # (B,) the output
    first: object | None       # exact mode: LinearCache of M' @ [key.W1 | emb.W] (memory_first_layers_forward)


class VMA:
    """VMA as a model: VMAInputs -> the bound L (B,) (V13, or V14 in exact mode); see the module
    docstring for the parameters and for what backward() returns under each estimator."""

    def __init__(self, config: VMAConfig, rng: np.random.Generator | None = None):
        if not isinstance(config, VMAConfig):
            raise ValueError(f"config must be a VMAConfig; got {type(config).__name__}")
        self.config = config
        self._shapes = vma_param_shapes(config)            # the config is frozen: computed once
        self.params = vma_init(config, np.random.default_rng(0) if rng is None else rng)

    # -- shapes and validation
    @property
    def query_prefix(self) -> str:
        return "query" if self.config.separate_query else "key"

    def param_shapes(self) -> dict:
        """Parameter name -> shape, in the order of model.params."""
        return dict(self._shapes)

    def slots(self, M: np.ndarray | None = None) -> int:
        """N', the number of addressable slots for a few-shot memory M (B, N, X) or in learned mode."""
        return self.config.N if self.config.memory == "learned" else np.shape(M)[1] + self.config.n_dummy

    def _check_params(self, params: Mapping) -> None:
        shapes = self._shapes
        if params.keys() != shapes.keys():
            raise ValueError(f"parameters must be {sorted(shapes)}; got {sorted(params)}")
        for name, shape in shapes.items():
            value = params[name]
            if (value.shape if isinstance(value, np.ndarray) else np.shape(value)) != shape:
                raise ValueError(f"parameter {name} must have shape {shape}; got {np.shape(params[name])}")

    def _float(self, name: str, value, shape_text: str) -> np.ndarray:
        value = np.asarray(value)
        if value.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be a float array of shape {shape_text}; got dtype {value.dtype}")
        value = value.astype(self.config.dtype, copy=False)
        check_finite(name, value)
        return value

    def check_data(self, x, M):
        """Validate and cast the data (and the parameters' shapes). Returns (x (B, X), M (B, N, X) or None)."""
        cfg = self.config
        self._check_params(self.params)
        x = self._float("x", x, "(B, X)")
        if x.ndim != 2 or x.shape[1] != cfg.X or x.shape[0] < 1:
            raise ValueError(f"x must have shape (B, X) with X={cfg.X}, B >= 1; got {x.shape}")
        B = x.shape[0]
        if cfg.memory == "learned":
            if M is not None:
                raise ValueError("learned mode reads its memory from the parameter mem.M; pass M=None")
            return x, None
        if M is None:
            raise ValueError(f"few-shot mode needs a memory M of shape (B, N, X) = ({B}, N, {cfg.X})")
        M = self._float("M", M, "(B, N, X)")
        if M.ndim != 3 or M.shape[0] != B or M.shape[2] != cfg.X or M.shape[1] + cfg.n_dummy < 1:
            raise ValueError(f"M must have shape (B, N, X) = ({B}, N, {cfg.X}) with N + n_dummy >= 1; got {M.shape}")
        return x, M

    def check_inputs(self, inputs: VMAInputs):
        """Validate and cast inputs. Returns (x, M or None, a or None, u or None, eps)."""
        cfg = self.config
        if not isinstance(inputs, VMAInputs):
            raise ValueError(f"inputs must be a VMAInputs(x, M, a, u, eps); got {type(inputs).__name__}")
        x, M = self.check_data(inputs.x, inputs.M)
        B, Np = x.shape[0], self.slots(M)
        a, u, eps = inputs.a, inputs.u, inputs.eps
        if eps is None:
            raise ValueError("eps (standard normal noise) is required: (S, B, Z), or (N', B, Z) in exact mode")
        eps = self._float("eps", eps, "(S, B, Z)")
        if cfg.estimator == "exact":
            if a is not None or u is not None:
                raise ValueError("exact mode sums over every address; pass neither a nor u")
            if eps.shape != (Np, B, cfg.Z):
                raise ValueError(f"exact mode needs eps of shape (N', B, Z) = ({Np}, {B}, {cfg.Z}); got {eps.shape}")
            return x, M, None, None, eps
        if (a is None) == (u is None):
            raise ValueError("give exactly one of a (S, B) int addresses and u (S, B) uniforms")
        if eps.ndim != 3 or eps.shape[1:] != (B, cfg.Z) or eps.shape[0] < 1:
            raise ValueError(f"eps must have shape (S, B, Z) = (S, {B}, {cfg.Z}); got {eps.shape}")
        S = eps.shape[0]
        if cfg.estimator == "vimco" and S < 2:
            raise ValueError(f"VIMCO needs S >= 2 samples per episode (leave-one-out baselines); got S={S}. "
                             "Use estimator='pathwise' or 'exact' for one sample")
        if a is not None:
            a = np.asarray(a)
            if a.dtype.kind not in "iu" or a.shape != (S, B):
                raise ValueError(f"a must be an int array of shape (S, B) = ({S}, {B}); got {a.dtype} {a.shape}")
            if a.min() < 0 or a.max() >= Np:
                raise ValueError(f"a must hold addresses in 0..N'-1 = 0..{Np - 1}; got {a.min()}..{a.max()}")
            a = a.astype(np.int64)
        else:
            u = self._float("u", u, "(S, B)")
            if u.shape != (S, B) or u.min() < 0 or u.max() >= 1:
                raise ValueError(f"u must have shape (S, B) = ({S}, {B}) with values in [0, 1); got {u.shape}")
        return x, M, a, u, eps

    # -- helpers shared by the engines
    def _memory(self, params, M, B: int) -> np.ndarray:
        """M' (B, N', X): the episode memory with the dummies appended, or mem.M broadcast."""
        if self.config.memory == "learned":
            return np.broadcast_to(params["mem.M"][None], (B,) + params["mem.M"].shape)
        if self.config.n_dummy:
            dummy = np.broadcast_to(params["mem.dummy"][None], (B,) + params["mem.dummy"].shape)
            return np.concatenate([M, dummy], axis=1)
        return M

    def _scale(self) -> float:
        return 1.0 / math.sqrt(self.config.E) if self.config.addr_scale else 1.0

    @staticmethod
    def _check_kept(a: np.ndarray, kept: np.ndarray) -> None:
        """Given addresses must have q > 0: a slot the top-k restriction dropped has log q = -inf."""
        if not np.all(kept[np.arange(kept.shape[0])[None, :], a]):
            raise ValueError(f"a must address slots inside the top-k set (top_k={kept.sum(axis=1).max()}); "
                             "a dropped slot has q = 0 and log q = -inf")

    def learning_signal(self, log_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """VIMCO signals (G3) from the log weights (S, B): (c, L_loo). A method so that a gradient
        check can plant a wrong baseline (spec D.4, negative control ii)."""
        return vimco_signals(log_w, self.config.baseline)

    def score_coefficients(self, dL: np.ndarray, w_tilde: np.ndarray, signal: np.ndarray | None) -> np.ndarray:
        """Upstream gradient of log q(a_s) (S, B), organisation 2 of A.4: -dL w~_s from log q(a_s)
        inside log w_s (pathwise), plus dL c_s from the score term (vimco): dL (c_s - w~_s), (G5).
        A method so that a gradient check can plant the classic bug (D.4, negative control i)."""
        coefficient = -dL[None, :] * w_tilde
        if signal is not None:
            coefficient = coefficient + dL[None, :] * signal
        return coefficient

    # -- manual engine
    def forward(self, inputs: VMAInputs):
        """Eqs. (V1)-(V13) (or V14 in exact mode). Returns L (B,) and the cache for backward."""
        cfg, p = self.config, self.params
        x, M, a, u, eps = self.check_inputs(inputs)
        B = x.shape[0]
        memory = self._memory(p, M, B)                                           # (B, N', X)
        Np = memory.shape[1]
        pre_key = pre_e = cfirst = None
        if cfg.estimator == "exact":            # key layer 1 and the embedding read the same slots: one product
            pre_key, pre_e, cfirst = memory_first_layers_forward(memory, p)     # (B, N', H), (B, N', He)
        l, caddr = address_logits_forward(x, memory, p, self.query_prefix, cfg.activation,
                                          self._scale(), pre_key)               # (B, N')     (V1)-(V2)
        kept = None if cfg.top_k is None or cfg.top_k >= Np else top_k_mask(l, cfg.top_k)   # (V5) top-k
        log_q, cq = log_softmax_forward(l, kept)                                # (B, N')     (V3)
        if cfg.memory == "learned":                                             # (V4)
            log_prior, cp = log_softmax_forward(p["addr.theta"])
            log_p = np.broadcast_to(log_prior[None], (B, Np))
        else:
            log_p, cp = np.full((B, Np), -math.log(Np), dtype=l.dtype), None
        if cfg.estimator == "exact":
            a = np.repeat(np.arange(Np)[:, None], B, axis=1)                    # (N', B) every slot once
        elif a is None:
            a = sample_addresses(log_q, u, q=cq.q)                              # (S, B)      (V5)
        elif kept is not None:
            self._check_kept(a, kept)
        log_w = w_tilde = signal = L_loo = exact = None
        if cfg.estimator == "exact":            # every slot once: the VAE runs on M' itself, rows (B, N')
            inner, cvae = template_vae_forward(p, x, memory, None, eps.transpose(1, 0, 2), cfg.activation, pre_e)
            L, exact = exact_bound_forward(log_q, log_p, inner, kept)           # (B,)        (V14)
        else:
            inner, cvae = template_vae_forward(p, x, memory, a, eps, cfg.activation)   # (S, B)  (V6)-(V11)
            slot = a + np.arange(B) * Np                                        # (S, B) flat index of (b, a_sb)
            log_p_a = np.take(log_p, slot) if cfg.memory == "learned" else log_p[0, 0]   # few-shot: -log N' for all
            log_w = inner + log_p_a - np.take(log_q, slot)                      # (S, B)      (V12)
            L, w_tilde = iw_bound_forward(log_w)                                # (B,)        (V13)
            if cfg.estimator == "vimco":
                signal, L_loo = self.learning_signal(log_w)                     # (S, B)      (G2)-(G3)
        return L, VMACache(B, memory, a, caddr, kept, log_q, cq, log_p, cp, cvae, inner,
                           log_w, w_tilde, signal, L_loo, exact, L, cfirst)

    def backward(self, dL, cache: VMACache) -> dict:
        """The gradient (estimator) of sum_b dL_b L_b, by config.estimator (module docstring)."""
        cfg, p = self.config, self.params
        dL = np.asarray(dL, dtype=cache.L.dtype)
        if dL.shape != cache.L.shape:
            raise ValueError(f"dL must have the output's shape (B,) = {cache.L.shape}; got {dL.shape}")
        B, Np = cache.log_q.shape
        if cfg.estimator == "exact":
            dlog_q, dlog_p, dinner = exact_bound_backward(dL, cache.exact)      # (V14), dinner (B, N')
        else:
            dinner = iw_bound_backward(dL, cache.w_tilde)                       # (S, B)      (V13)
            slot = cache.a + np.arange(B) * Np                                  # (S, B) flat index of (b, a_sb)
            dlog_q = scatter_to_slots(self.score_coefficients(dL, cache.w_tilde, cache.signal), slot, (B, Np))  # (G5)
            if cfg.memory == "learned":                                          # p is fixed in few-shot mode
                dlog_p = scatter_to_slots(dinner, slot, (B, Np))                # (V12) + log p(a_s)
        need_memory = cfg.memory == "learned" or cfg.n_dummy > 0
        dfirst = dpre_key = dpre_e = None
        if cache.first is not None:             # exact mode: [dpre_key | dpre_e] filled in place, one product
            H = p["key.W1"].shape[1]
            dfirst = np.empty((B, Np, H + p["emb.W"].shape[1]), dtype=cache.L.dtype)
            dpre_key, dpre_e = dfirst.reshape(B * Np, -1)[:, :H], dfirst.reshape(B * Np, -1)[:, H:]   # 2-D views
        grads, dmemory = template_vae_backward(dinner, cache.vae, cache.memory.shape if need_memory else None, dpre_e)
        dl = log_softmax_backward(dlog_q, cache.q_cache)                        # (B, N')     (V3)
        dmemory_key, key_grads = address_logits_backward(dl, cache.address, self.query_prefix, need_memory,
                                                         dpre_key)              # (V2)-(V1)
        if dfirst is not None:
            dmemory_key, first_grads = memory_first_layers_backward(dfirst, cache.first, H, need_memory)
            for name, value in first_grads.items():             # key.* also has the query branch (in place)
                if name in key_grads:
                    value += key_grads[name]                          # a column block of this step's product
                key_grads[name] = value
        grads.update(key_grads)
        if cfg.memory == "learned":
            grads["mem.M"] = np.sum(dmemory + dmemory_key, axis=0)              # gather + key branch
            grads["addr.theta"] = log_softmax_backward(np.sum(dlog_p, axis=0), cache.p_cache)   # (V4)
        elif cfg.n_dummy:
            grads["mem.dummy"] = np.sum((dmemory + dmemory_key)[:, Np - cfg.n_dummy:], axis=0)
        return {name: grads[name].astype(p[name].dtype, copy=False) for name in p}

    # -- autodiff engine
    def forward_autodiff(self, tparams: Mapping[str, ad.Tensor], inputs: VMAInputs) -> ad.Tensor:
        """The same equations with minimem.autodiff ops. Returns L (B,) as a Tensor whose gradient
        is the configured estimator's (vimco: organisation 1 of A.4, the stop-gradient surrogate)."""
        cfg = self.config
        x, M, a, u, eps = self.check_inputs(inputs)
        B = x.shape[0]
        if cfg.memory == "learned":
            memory = ad.broadcast_to(tparams["mem.M"], (B,) + tparams["mem.M"].shape)
        elif cfg.n_dummy:
            dummy = ad.broadcast_to(tparams["mem.dummy"], (B,) + tparams["mem.dummy"].shape)
            memory = ad.concatenate([ad.Tensor(M), dummy], axis=1)
        else:
            memory = ad.Tensor(M)
        Np = memory.shape[1]
        k_x = key_net_autodiff(x, tparams, self.query_prefix, cfg.activation)             # (V1)
        k_n = key_net_autodiff(memory, tparams, "key", cfg.activation)
        l = ad.einsum("be,bne->bn", k_x, k_n) * self._scale()                             # (V2)
        kept = top_k_mask(l.data, cfg.top_k)
        dense = bool(kept.all())
        log_q = ad.log_softmax(l if dense else ad.where(kept, l, -np.inf), axis=-1)       # (V3)
        if cfg.memory == "learned":                                                       # (V4)
            log_p = ad.broadcast_to(ad.log_softmax(tparams["addr.theta"], axis=-1), (B, Np))
        else:
            log_p = ad.Tensor(np.full((B, Np), -math.log(Np), dtype=l.dtype))
        if cfg.estimator == "exact":
            a = np.broadcast_to(np.arange(Np)[:, None], (Np, B))
        elif a is None:
            a = sample_addresses(log_q.data, u)                                           # (V5)
        else:
            self._check_kept(a, kept)
        index = (np.broadcast_to(np.arange(B)[None, :], a.shape), a)
        m = memory[index]                                                                 # (S', B, X) (V6)
        inner = template_vae_autodiff(tparams, x, m, eps, cfg.activation)                 # (S', B)
        if cfg.estimator == "exact":                                                      # (V14)
            q = ad.exp(log_q)
            safe_log_q = log_q if dense else ad.where(kept, log_q, 0.0)                   # no 0 * inf
            terms = q * (ad.transpose(inner) + log_p - safe_log_q)                        # (B, N')
            return ad.sum(terms if dense else ad.where(kept, terms, 0.0), axis=-1)
        log_q_a = log_q[index]                                                            # (S, B)
        log_w = inner + log_p[index] - log_q_a                                            # (V12)
        L = iw_bound_autodiff(log_w)                                                      # (V13)
        if cfg.estimator == "vimco":                # + sum_s stopgrad(c_s) (log q(a_s) - stopgrad(...)): value 0
            signal, _ = self.learning_signal(log_w.data)
            L = L + ad.sum(signal * (log_q_a - log_q_a.detach()), axis=0)
        return L

    # -- noise and monitoring
    def address_posterior(self, x, M=None, params: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """log q(a | M, x) (B, N'), eqs. (V1)-(V3) (with top-k), at `params` (default self.params)."""
        cfg = self.config
        p = self.params if params is None else params
        x, M = self.check_data(x, M)
        memory = self._memory(p, M, x.shape[0])
        k_x, _ = key_net_forward(x, p, self.query_prefix, cfg.activation)
        k_n, _ = key_net_forward(memory, p, "key", cfg.activation)
        l = np.einsum("be,bne->bn", k_x, k_n) * self._scale()
        kept = top_k_mask(l, cfg.top_k)
        return log_softmax_forward(l, None if kept.all() else kept)[0]

    def sample_noise(self, rng: np.random.Generator, B: int, S: int | None = None, M=None) -> dict:
        """Fresh noise for one batch: {"u": (S, B), "eps": (S, B, Z)}, or {"eps": (N', B, Z)} in
        exact mode (M, the few-shot memory, gives N'). Use as VMAInputs(x, M, **noise)."""
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a np.random.Generator; got {type(rng).__name__}")
        if self.config.estimator == "exact":
            return {"eps": rng.standard_normal((self.slots(M), B, self.config.Z)).astype(self.config.dtype)}
        if S is None or S < 1:
            raise ValueError(f"S (samples per episode) must be >= 1; got {S}")
        return {"u": rng.random((S, B)).astype(self.config.dtype),
                "eps": rng.standard_normal((S, B, self.config.Z)).astype(self.config.dtype)}

    def generate(self, rng: np.random.Generator, M=None, B: int | None = None, samples: int = 1) -> dict:
        """Generation (spec A.3): a ~ p(a|M), z ~ p(z|m_a), x ~ Bernoulli(sigmoid(logit)), eqs.
        (V4), (V6), (V7), (V10) with z drawn from the prior instead of q.

        Args:
            rng: the only source of randomness.
            M: (B, N, X) few-shot memory; None in learned mode, where B gives the batch size.
            samples: S images per episode.
        Returns:
            {"a": (S, B) int, "probs": (S, B, X) Bernoulli means, "x": (S, B, X) binary samples}.
        """
        cfg, p = self.config, self.params
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a np.random.Generator; got {type(rng).__name__}")
        if cfg.memory == "learned":
            if B is None or B < 1:
                raise ValueError(f"learned mode needs the batch size B >= 1; got {B}")
            M = None
        else:
            if M is None:
                raise ValueError("few-shot mode needs a memory M of shape (B, N, X)")
            B = np.shape(M)[0]
        x_dummy = np.zeros((B, cfg.X), dtype=cfg.dtype)
        _, M = self.check_data(x_dummy, M)
        memory = self._memory(p, M, B)                                          # (B, N', X)
        Np = memory.shape[1]
        if cfg.memory == "learned":
            log_p = np.broadcast_to(log_softmax_forward(p["addr.theta"])[0][None], (B, Np))
        else:
            log_p = np.full((B, Np), -math.log(Np))
        a = sample_addresses(log_p, rng.random((samples, B)))                   # (S, B)      (V4)
        m = memory[np.arange(B)[None, :], a]                                    # (S, B, X)   (V6)
        act = lambda t: activation_forward(t, cfg.activation)[0]
        e = act(m @ p["emb.W"] + p["emb.b"])
        mu_p, log_sig_p = e @ p["prior.Wm"] + p["prior.bm"], e @ p["prior.Ws"] + p["prior.bs"]   # (V7)
        z = mu_p + np.exp(log_sig_p) * rng.standard_normal(mu_p.shape)
        r = act(z @ p["dec.Wz"] + e @ p["dec.We"] + p["dec.b"])                 # (V10)
        probs = sigmoid(r @ p["dec.Wo"] + p["dec.bo"] + p["dec.skip"] * m)
        return {"a": a, "probs": probs, "x": (rng.random(probs.shape) < probs).astype(probs.dtype)}

    def diagnostics(self, cache: VMACache, mem_class=None, x_class=None) -> dict:
        """Monitoring quantities of spec A.3 (not part of the gradient), each (B,):
        KL_a = KL(q(a|M,x) || p(a|M)), H_a = entropy of q, KL_z = closed-form KL(q(z|x,m_a) ||
        p(z|m_a)) averaged over the samples (q-weighted over slots in exact mode), and, when
        mem_class (B, N) and x_class (B,) are given, mass = q on slots of the target's class
        (dummy slots never count)."""
        v = cache.vae
        var_ratio = np.exp(2.0 * (v.log_sig_q - v.log_sig_p))
        kl_z = 0.5 * np.sum(var_ratio + ((v.mu_q - v.mu_p) / np.exp(v.log_sig_p)) ** 2 - 1.0
                            - 2.0 * (v.log_sig_q - v.log_sig_p), axis=-1)           # (S, B) or (B, N')
        if cache.exact is not None:                                                 # exact mode: rows (B, N')
            kl_z_mean = np.sum(cache.exact.q * kl_z, axis=-1)                       # q = 0 off the top-k set
        else:
            kl_z_mean = np.mean(kl_z, axis=0)
        out = {"KL_a": address_kl(cache.log_q, cache.log_p), "H_a": address_entropy(cache.log_q),
               "KL_z": kl_z_mean}
        if mem_class is not None and x_class is not None:
            mem_class, x_class = np.asarray(mem_class), np.asarray(x_class)
            B, Np = cache.log_q.shape
            if mem_class.ndim != 2 or mem_class.shape[0] != B or mem_class.shape[1] > Np or x_class.shape != (B,):
                raise ValueError(f"mem_class must be (B, N) with B={B}, N <= N'={Np}, and x_class (B,); "
                                 f"got {mem_class.shape} and {x_class.shape}")
            target = np.zeros((B, Np), dtype=bool)
            target[:, :mem_class.shape[1]] = mem_class == x_class[:, None]
            out["mass"] = np.sum(np.where(target, np.exp(cache.log_q), 0.0), axis=-1)
        return out


# ----------------------------------------------------------------- helpers
def scatter_to_slots(values: np.ndarray, slot: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum per-sample values (S, B) onto their slots: out[b, n] = sum_s [a_sb = n] values_sb, with
    slot = b * N' + a (S, B). One np.bincount (it accumulates in float64, in the samples' order)
    instead of np.add.at, which is several times slower on these small arrays. Returns shape
    (B, N') in the values' dtype."""
    total = np.bincount(slot.ravel(), weights=values.ravel(), minlength=shape[0] * shape[1])
    return total.reshape(shape).astype(values.dtype, copy=False)


# ----------------------------------------------------------------- initialisation
def vma_param_shapes(config: VMAConfig) -> dict:
    """Parameter name -> shape, in the order of model.params (module docstring)."""
    cfg = config
    X, Z, E, He, H = cfg.X, cfg.Z, cfg.E, cfg.He, cfg.H
    shapes = {"key.W1": (X, H), "key.b1": (H,), "key.W2": (H, E), "key.b2": (E,)}
    if cfg.separate_query:
        shapes.update({"query.W1": (X, H), "query.b1": (H,), "query.W2": (H, E), "query.b2": (E,)})
    shapes.update({"emb.W": (X, He), "emb.b": (He,),
                   "prior.Wm": (He, Z), "prior.bm": (Z,), "prior.Ws": (He, Z), "prior.bs": (Z,),
                   "enc.Wx": (X, H), "enc.We": (He, H), "enc.b": (H,),
                   "enc.Wm": (H, Z), "enc.bm": (Z,), "enc.Ws": (H, Z), "enc.bs": (Z,),
                   "dec.Wz": (Z, H), "dec.We": (He, H), "dec.b": (H,),
                   "dec.Wo": (H, X), "dec.bo": (X,), "dec.skip": (X,)})
    if cfg.n_dummy:
        shapes["mem.dummy"] = (cfg.n_dummy, X)
    if cfg.memory == "learned":
        shapes.update({"mem.M": (cfg.N, X), "addr.theta": (cfg.N,)})
    return shapes


def vma_init(config: VMAConfig, rng: np.random.Generator) -> dict:
    """Parameters of spec A.2 in the order of VMA.param_shapes: N(0, 1/fan_in) weights, heads for
    means and log std N(0, 0.01/fan_in), zero biases, dec.bo = logit(mean_pixel), dec.skip = 0,
    mem.dummy = 0, mem.M ~ N(0.5, 0.1^2) clipped to [0, 1], addr.theta = 0."""
    cfg = config
    X, Z, E, He, H = cfg.X, cfg.Z, cfg.E, cfg.He, cfg.H
    std = lambda fan_in, scale=1.0: math.sqrt(scale / fan_in)
    weights = {"key.W1": std(X), "key.W2": std(H), "query.W1": std(X), "query.W2": std(H), "emb.W": std(X),
               "prior.Wm": std(He, 0.01), "prior.Ws": std(He, 0.01), "enc.Wx": std(X), "enc.We": std(He),
               "enc.Wm": std(H, 0.01), "enc.Ws": std(H, 0.01), "dec.Wz": std(Z), "dec.We": std(He),
               "dec.Wo": std(H)}
    params = {}
    for name, shape in vma_param_shapes(cfg).items():
        if name in weights:
            params[name] = init.normal(rng, shape, weights[name])
        elif name == "dec.bo":
            params[name] = np.full(shape, math.log(cfg.mean_pixel / (1.0 - cfg.mean_pixel)))
        elif name == "mem.M":
            params[name] = np.clip(0.5 + init.normal(rng, shape, 0.1), 0.0, 1.0)
        else:
            params[name] = np.zeros(shape)
    return {name: value.astype(cfg.dtype) for name, value in params.items()}

