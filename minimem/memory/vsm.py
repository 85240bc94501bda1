"""VSM-style episodic-semantic memory for few-shot generation, RECONSTRUCTED (specs/generative_memory.md
part C; hierarchical variant "VSM-HVAE").

After "Few-shot Generation via Recalling Brain-Inspired Episodic-Semantic Memory" (Duan, Lv, Wang,
Chen, An & Zhou, NeurIPS 2023, OpenReview dxPcdEeQk9). Only that paper's abstract could be read
and no code exists: everything below is minimem's reconstruction of the abstract's components
(episodic and semantic memories, a memory update that converts between them and models the
uncertainty of the conversion, a VAE/hierarchical-VAE generator). No number from the paper is
claimed, and results of this model must be reported as "VSM-style, reconstructed".

A task has context images X_C (episodic memory, n_c valid of Ne slots) and targets X_T (n_t,
scored). The semantic memory is a set of Ns diagonal-Gaussian concept slots (state, not trained
by gradient): recalled as a prior over the task concept c, fused with the context's evidence by
Bayes' rule, summed over slots exactly; after each optimiser step the tasks' concept posteriors
are consolidated into it (minimem/memory/vsm_memory.py, U1-U3, `VSM.consolidate`).

Shapes: B tasks, Ne episodic slots, n_t targets, X pixels, Hu feature size, H hidden size,
Zc concept size, Z latent size, Hk attention size, Ns semantic slots. Every weight used as `v @ W`.
Equations (spec numbering):
    (S1)  u = tanh(x @ feat.W + feat.b) for context and target items           (B, *, Hu)
    (S2)  ubar_C = masked mean of u_C;  chat = ubar_C @ cue.Wm + cue.bm;
          pi = n_c exp(-(ubar_C @ cue.Ws + cue.bs))      (n_c = 0: chat = 0, pi = 0)  (B, Zc)
    (S3)-(S5) recall: fused p(c | a=k, X_C) = N(m_bk, 1/P_bk) and log p(a=k | X_C)   (vsm_memory)
    (S6)  ubar = mean of u over context and targets;  mu_c = ubar @ post.Wm + post.bm,
          log var_c = ubar @ post.Ws + post.bs - log(n_c + n_t)                   (B, Zc)
    (S7)-(S8) T_c = lse_k(log p(a=k|X_C) + e_bk) + H[q(c)], q(a|X) in closed form  (vsm_memory)
    (S9)  c = mu_c + exp(0.5 log var_c) eps_c                                     (B, Zc)
    (S10) mu_z = c @ pz.Wm + pz.bm,  log sig_z = c @ pz.Ws + pz.bs                 (B, Z)
    (S11) g = tanh(x_i @ qz.Wx + c @ qz.Wc + qz.b);  mu_qz, log sig_qz = g @ qz.W{m,s} + qz.b{m,s};
          z_i = mu_qz + exp(log sig_qz) eps_z,i                                    (B, n_t, Z)
    (S12) query = [z_i; c] @ att.Wq, keys = u_C @ att.Wk, beta = masked softmax(<q, k> / sqrt(Hk));
          r_i = sum_j beta_ij u_j,  t_i = sum_j beta_ij x_j  (no valid slot: beta = 0)  (B, n_t, Ne)
    (S13) h = tanh(z @ dec.Wz + c @ dec.Wc + r @ dec.Wr + dec.b);
          logit = h @ dec.Wo + dec.bo + dec.skip * t;  log p(x_i | z_i, c, E) Bernoulli
    (S14) KL_z,i = KL(q(z_i | x_i, c) || p(z_i | c))
    (S15) L_b = sum_i [log p(x_i | z_i, c, E) - KL_z,i] + T_c[b]      the output (B,); maximise
    (S16) log w_s, the importance-weighted evaluation bound (VSM.log_weights)
The address is summed out exactly, so there is no score-function term: the gradient is pathwise
and checks like a plain VAE (spec D.2). Targets are never written to episodic memory.

Noise is an input: VSMInputs(context, mask, targets, eps_c (B, Zc), eps_z (B, n_t, Z)).
Semantic state (model.state, a SemanticState; checkpoint names `sem.mu`, `sem.lam`, `sem.count`
via state_dict/load_state_dict) is read at call time and never differentiated.

Parameters (spec C.2):
    feat.W (X, Hu), feat.b (Hu,)
    cue.Wm, post.Wm (Hu, Zc), cue.bm, post.bm (Zc,), cue.Ws, post.Ws (Hu, Zc), cue.bs, post.bs (Zc,)
    pz.Wm, pz.Ws (Zc, Z), pz.bm, pz.bs (Z,)
    qz.Wx (X, H), qz.Wc (Zc, H), qz.b (H,), qz.Wm, qz.Ws (H, Z), qz.bm, qz.bs (Z,)
    att.Wq (Z + Zc, Hk) (rows for z first, then c), att.Wk (Hu, Hk)
    dec.Wz (Z, H), dec.Wc (Zc, H), dec.Wr (Hu, H), dec.b (H,), dec.Wo (H, X), dec.bo (X,), dec.skip (X,)
The non-hierarchical plug-in "VSM-VAE" (spec C.3, last paragraph) is VSMVAE below, selected by
VSMConfig(variant="vae"); the episodic-read ablation (C.6 b) is VSMConfig(episodic_read=False).
The other ablations of C.6 need no switch: (a) Ns = 1 with the state mu = 0, lam = lam0 and no
consolidation; (c) never calling consolidate; (d) gamma = 1.
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
    bernoulli_log_likelihood_autodiff, bernoulli_log_likelihood_backward, bernoulli_log_likelihood_forward,
    check_finite, gaussian_log_density_forward, logsumexp, sample_addresses, sigmoid,
)
from minimem.memory.vsm_memory import (
    SemanticState, concept_term_autodiff, concept_term_backward, concept_term_forward, consolidate,
    gaussian_kl_autodiff, gaussian_kl_backward, gaussian_kl_forward, initial_semantic_state,
    masked_softmax_autodiff, masked_softmax_backward, masked_softmax_forward, mixture_log_prior,
    recall_autodiff, recall_backward, recall_forward, semantic_address_entropy,
)
from minimem.memory.vma_networks import affine_backward, affine_forward
from minimem.nn.linear import linear_autodiff


@dataclass(frozen=True)
class VSMConfig:
    """Sizes and fixed hyperparameters of the VSM-style model (defaults: spec C.6).

    tau_r2, tau_t2: recall and conversion noise variances. gamma: forgetting factor in (0, 1].
    lam0: prior precision of a semantic slot. mean_pixel: dec.bo = logit(mean_pixel).
    variant: "hvae" (the hierarchical plug-in VSM-HVAE: task concept c, per-target z; class VSM) or
        "vae" (the non-hierarchical plug-in VSM-VAE: one concept c_i per target, no z; class
        VSMVAE, also what VSM(config) returns for this variant). Z is unused by "vae".
    episodic_read: False removes the episodic read (S12): beta = 0, so r = 0 and t = 0 (ablation
        (b) of spec C.6; the att.* parameters then get zero gradient).
    """
    X: int
    Z: int = 8
    Zc: int = 8
    Hu: int = 128
    H: int = 128
    Hk: int = 32
    Ns: int = 16
    tau_r2: float = 0.1
    tau_t2: float = 0.1
    gamma: float = 0.995
    lam0: float = 1.0
    mean_pixel: float = 0.1
    dtype: str = "float64"
    variant: str = "hvae"
    episodic_read: bool = True

    def __post_init__(self) -> None:
        for name in ("X", "Z", "Zc", "Hu", "H", "Hk", "Ns"):
            check_int(name, getattr(self, name), 1)
        for name in ("tau_r2", "tau_t2"):
            if not (np.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a finite number >= 0; got {getattr(self, name)}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1]; got {self.gamma}")
        if not (np.isfinite(self.lam0) and self.lam0 > 0):
            raise ValueError(f"lam0 must be a finite number > 0; got {self.lam0}")
        if not 0.0 < self.mean_pixel < 1.0:
            raise ValueError(f"mean_pixel must be in (0, 1); got {self.mean_pixel}")
        if self.variant not in ("hvae", "vae"):
            raise ValueError(f"variant must be 'hvae' or 'vae'; got {self.variant!r}")
        if not isinstance(self.episodic_read, bool):
            raise ValueError(f"episodic_read must be a bool; got {self.episodic_read!r}")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be 'float64' or 'float32'; got {self.dtype!r}")


class VSMInputs(NamedTuple):
    """One batch of tasks with its noise (spec D.1)."""
    context: np.ndarray     # (B, Ne, X) context images; entries where mask is False are ignored
    mask: np.ndarray        # (B, Ne) bool, valid context slots (n_c = mask.sum(1), 0 allowed)
    targets: np.ndarray     # (B, n_t, X) target images, n_t >= 1
    eps_c: np.ndarray       # (B, Zc) standard normal; VSM-VAE: (B, n_t, Zc), one per target
    eps_z: np.ndarray       # (B, n_t, Z) standard normal; VSM-VAE: None (no z)


def vsm_param_shapes(config: VSMConfig) -> dict:
    """Parameter name -> shape, in the order of model.params (module docstring; the VSM-VAE
    variant has no pz.*, qz.* or dec.Wz, and att.Wq is (Zc, Hk))."""
    X, Z, Zc, Hu, H, Hk = config.X, config.Z, config.Zc, config.Hu, config.H, config.Hk
    shapes = {"feat.W": (X, Hu), "feat.b": (Hu,)}
    for head in ("cue", "post"):
        shapes.update({f"{head}.Wm": (Hu, Zc), f"{head}.bm": (Zc,), f"{head}.Ws": (Hu, Zc), f"{head}.bs": (Zc,)})
    if config.variant == "vae":
        shapes.update({"att.Wq": (Zc, Hk), "att.Wk": (Hu, Hk), "dec.Wc": (Zc, H), "dec.Wr": (Hu, H), "dec.b": (H,),
                       "dec.Wo": (H, X), "dec.bo": (X,), "dec.skip": (X,)})
        return shapes
    shapes.update({"pz.Wm": (Zc, Z), "pz.bm": (Z,), "pz.Ws": (Zc, Z), "pz.bs": (Z,),
                   "qz.Wx": (X, H), "qz.Wc": (Zc, H), "qz.b": (H,), "qz.Wm": (H, Z), "qz.bm": (Z,),
                   "qz.Ws": (H, Z), "qz.bs": (Z,), "att.Wq": (Z + Zc, Hk), "att.Wk": (Hu, Hk),
                   "dec.Wz": (Z, H), "dec.Wc": (Zc, H), "dec.Wr": (Hu, H), "dec.b": (H,),
                   "dec.Wo": (H, X), "dec.bo": (X,), "dec.skip": (X,)})
    return shapes


class VSMCache(NamedTuple):
    """Everything VSM.backward needs, by equation; shapes in the module docstring."""
    mask: np.ndarray            # (B, Ne) bool
    n_c: np.ndarray             # (B,) float, context items per task
    has_c: np.ndarray           # (B,) bool, n_c > 0
    context: np.ndarray         # (B, Ne, X), zero on masked slots
    targets: np.ndarray         # (B, n_t, X)
    u_C: np.ndarray             # (B, Ne, Hu)                           (S1)
    u_T: np.ndarray             # (B, n_t, Hu)
    feat: object                # LinearCache of the features of [context; targets] (one product)
    ubar_C_den: np.ndarray      # (B, 1) max(n_c, 1)                    (S2)
    cue: tuple                  # LinearCaches of chat and rho
    pi: np.ndarray              # (B, Zc) episodic precision
    recall: tuple               # RecallCache                           (S3)-(S5)
    log_prior: np.ndarray       # (B, Ns) log p(a | X_C)
    m: np.ndarray               # (B, Ns, Zc) fused means
    P: np.ndarray               # (B, Ns, Zc) fused precisions
    ubar_den: np.ndarray        # (B, 1) n_c + n_t                      (S6)
    post: tuple                 # LinearCaches of mu_c and log var_c
    mu_c: np.ndarray            # (B, Zc)
    log_var_c: np.ndarray       # (B, Zc)
    concept: tuple              # ConceptCache                          (S7)-(S8)
    log_q_a: np.ndarray         # (B, Ns) log q(a | X)
    T_c: np.ndarray             # (B,)
    sd_c: np.ndarray            # (B, Zc) exp(0.5 log var_c)           (S9)
    eps_c: np.ndarray           # (B, Zc)
    c: np.ndarray               # (B, Zc)
    pz: tuple                   # LinearCaches of mu_z and log sig_z    (S10)
    mu_z: np.ndarray            # (B, Z)
    log_sig_z: np.ndarray       # (B, Z)
    qz: tuple                   # LinearCaches of x @ qz.Wx, c @ qz.Wc, mu_qz, log sig_qz   (S11)
    g: np.ndarray               # (B, n_t, H)
    mu_qz: np.ndarray           # (B, n_t, Z)
    log_sig_qz: np.ndarray      # (B, n_t, Z)
    sig_qz: np.ndarray          # (B, n_t, Z)
    eps_z: np.ndarray           # (B, n_t, Z)
    z: np.ndarray               # (B, n_t, Z)
    att: tuple                  # LinearCaches of the query and the keys   (S12)
    query: np.ndarray           # (B, n_t, Hk)
    keys: np.ndarray            # (B, Ne, Hk)
    beta: np.ndarray            # (B, n_t, Ne), 0 on masked slots and empty rows
    r: np.ndarray               # (B, n_t, Hu)
    t: np.ndarray               # (B, n_t, X)
    dec: tuple                  # LinearCaches of z, c, r and the output  (S13)
    h: np.ndarray               # (B, n_t, H)
    log_px: np.ndarray          # (B, n_t)
    px: tuple                   # Bernoulli cache
    kl_z: np.ndarray            # (B, n_t)                              (S14)
    kl: tuple                   # Gaussian KL cache
    L: np.ndarray               # (B,)                                  (S15)


def _recall_cue_features_backward(k, grads: dict, params: Mapping, du_C, du_T, dlog_prior, dm, dP,
                                  state_grads: bool) -> dict:
    """The end of both plug-ins' backward, (S5)-(S1): the semantic recall, the cue network and the
    shared feature network, from the gradients w.r.t. the recalled prior (dlog_prior, dm, dP) and the
    features (du_C (B, Ne, H), du_T (B, n_t, H)) the plug-in's own terms produced. k is the plug-in's
    cache; grads collects the parameter gradients. Returns every gradient in its parameter's dtype
    (plus "sem.mu" and "sem.lam" when state_grads)."""
    dchat, dpi, dsem_mu, dsem_lam = recall_backward(dlog_prior, dm, dP, k.recall, state_grads)   # (S3)-(S5)
    dchat = np.where(k.has_c[:, None], dchat, 0.0)                              # (S2)
    drho = -dpi * k.pi
    dubC_m, grads["cue.Wm"], grads["cue.bm"] = affine_backward(dchat, k.cue[0])
    dubC_s, grads["cue.Ws"], grads["cue.bs"] = affine_backward(drho, k.cue[1])
    valid = k.mask[..., None].astype(du_C.dtype)
    du_C = du_C + valid * ((dubC_m + dubC_s) / k.ubar_C_den)[:, None]
    Ne = k.u_C.shape[1]                                                         # (S1), shared net:
    dpre_u = np.empty(k.u_C.shape[:1] + (Ne + k.u_T.shape[1],) + k.u_C.shape[2:], dtype=du_C.dtype)   # one product
    np.multiply(du_C, 1.0 - k.u_C ** 2, out=dpre_u[:, :Ne])
    np.multiply(du_T, 1.0 - k.u_T ** 2, out=dpre_u[:, Ne:])
    _, grads["feat.W"], grads["feat.b"] = affine_backward(dpre_u, k.feat, need_dv=False)
    out = {name: grads[name].astype(params[name].dtype, copy=False) for name in params}
    if state_grads:
        out["sem.mu"], out["sem.lam"] = dsem_mu, dsem_lam
    return out


class VSM:
    """The VSM-style model (reconstructed): VSMInputs -> L (B,), eq. (S15). See the module docstring."""

    def __new__(cls, config: VSMConfig, rng: np.random.Generator | None = None):
        if cls is VSM and isinstance(config, VSMConfig) and config.variant == "vae":
            cls = VSMVAE                                   # the non-hierarchical plug-in
        return super().__new__(cls)

    def __init__(self, config: VSMConfig, rng: np.random.Generator | None = None):
        if not isinstance(config, VSMConfig):
            raise ValueError(f"config must be a VSMConfig; got {type(config).__name__}")
        rng = np.random.default_rng(0) if rng is None else rng
        self.config = config
        self.params = vsm_init(config, rng)
        self.state = initial_semantic_state(rng, config.Ns, config.Zc, config.lam0, np.dtype(config.dtype))

    # -- state
    def state_dict(self) -> dict:
        """The semantic memory as arrays for a checkpoint's `extra`: sem.mu, sem.lam, sem.count."""
        return {"sem.mu": self.state.mu.copy(), "sem.lam": self.state.lam.copy(), "sem.count": self.state.count.copy()}

    def load_state_dict(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Restore the semantic memory saved by state_dict (ValueError on missing keys or shapes)."""
        cfg = self.config
        shapes = {"sem.mu": (cfg.Ns, cfg.Zc), "sem.lam": (cfg.Ns, cfg.Zc), "sem.count": (cfg.Ns,)}
        for name, shape in shapes.items():
            if name not in arrays or np.shape(arrays[name]) != shape:
                raise ValueError(f"{name} must be given with shape {shape}; got "
                                 f"{np.shape(arrays[name]) if name in arrays else 'nothing'}")
        lam = np.array(arrays["sem.lam"], dtype=cfg.dtype)
        if not np.all(lam > 0):
            raise ValueError("sem.lam (slot precisions) must be > 0")
        self.state = SemanticState(np.array(arrays["sem.mu"], dtype=cfg.dtype), lam,
                                   np.array(arrays["sem.count"], dtype=cfg.dtype))

    def consolidate(self, cache: VSMCache) -> None:
        """Episodic -> semantic conversion (U1)-(U3) from a forward's cache; call once after each
        optimiser step. Uses detached values only; the memory is never differentiated."""
        cfg = self.config
        self.state = consolidate(self.state, cache.mu_c, np.exp(cache.log_var_c), np.exp(cache.log_q_a),
                                 cfg.tau_t2, cfg.gamma, cfg.lam0)

    def read_mask(self, mask: np.ndarray) -> np.ndarray:
        """The slots the episodic read (S12) may attend to: mask, or none without episodic_read."""
        return mask if self.config.episodic_read else np.zeros_like(mask)

    # -- validation
    def check_inputs(self, inputs: VSMInputs):
        """Validate and cast. Returns (context with masked slots zeroed, mask, targets, eps_c, eps_z)."""
        cfg = self.config
        if not isinstance(inputs, VSMInputs):
            raise ValueError(f"inputs must be a VSMInputs(context, mask, targets, eps_c, eps_z); got {type(inputs).__name__}")
        shapes = vsm_param_shapes(cfg)
        if set(self.params) != set(shapes) or any(np.shape(self.params[k]) != s for k, s in shapes.items()):
            raise ValueError(f"parameters must have the shapes {shapes}")
        targets = np.asarray(inputs.targets)
        if targets.ndim != 3 or targets.shape[2] != cfg.X or min(targets.shape[:2]) < 1:
            raise ValueError(f"targets must have shape (B, n_t, X) with X={cfg.X}, B, n_t >= 1; got {targets.shape}")
        B, n_t = targets.shape[:2]
        context, mask = np.asarray(inputs.context), np.asarray(inputs.mask)
        if context.ndim != 3 or context.shape[0] != B or context.shape[2] != cfg.X:
            raise ValueError(f"context must have shape (B, Ne, X) = ({B}, Ne, {cfg.X}); got {context.shape}")
        if mask.dtype != bool or mask.shape != context.shape[:2]:
            raise ValueError(f"mask must be a bool array of shape (B, Ne) = {context.shape[:2]}; got {mask.dtype} {mask.shape}")
        eps_c = np.asarray(inputs.eps_c)
        if cfg.variant == "vae":
            if eps_c.shape != (B, n_t, cfg.Zc):
                raise ValueError(f"eps_c must have shape (B, n_t, Zc) = ({B}, {n_t}, {cfg.Zc}) for VSM-VAE; got {eps_c.shape}")
            if inputs.eps_z is not None:
                raise ValueError("eps_z must be None for VSM-VAE (the model has no z)")
            eps_z = np.zeros((B, n_t, 0), dtype=eps_c.dtype)
        else:
            eps_z = np.asarray(inputs.eps_z)
            if eps_c.shape != (B, cfg.Zc):
                raise ValueError(f"eps_c must have shape (B, Zc) = ({B}, {cfg.Zc}); got {eps_c.shape}")
            if eps_z.shape != (B, n_t, cfg.Z):
                raise ValueError(f"eps_z must have shape (B, n_t, Z) = ({B}, {n_t}, {cfg.Z}); got {eps_z.shape}")
        arrays = {}
        for name, value in (("targets", targets), ("context", context), ("eps_c", eps_c), ("eps_z", eps_z)):
            if value.dtype.kind not in "biuf":
                raise ValueError(f"{name} must be a float array; got dtype {value.dtype}")
            arrays[name] = value.astype(cfg.dtype, copy=False)
        context = np.where(mask[..., None], arrays["context"], 0.0)   # masked slots never enter (C.9.7)
        for name in ("targets", "eps_c", "eps_z"):
            check_finite(name, arrays[name])
        check_finite("context (valid slots)", context)
        return context, mask, arrays["targets"], arrays["eps_c"], arrays["eps_z"]

    # -- manual engine
    def forward(self, inputs: VSMInputs):
        """Eqs. (S1)-(S15). Returns L (B,) and the cache for backward."""
        cfg, p, state = self.config, self.params, self.state
        context, mask, targets, eps_c, eps_z = self.check_inputs(inputs)
        n_t = targets.shape[1]
        n_c = mask.sum(axis=1).astype(context.dtype)                                # (B,)
        has_c = n_c > 0
        valid = mask[..., None].astype(context.dtype)                               # (B, Ne, 1)
        Ne = context.shape[1]                                                       # (S1) one product for both
        pre_u, c_feat = affine_forward(np.concatenate([context, targets], axis=1), p["feat.W"], p["feat.b"])
        u = np.tanh(pre_u)                                                          # (B, Ne + n_t, Hu)
        u_C, u_T = u[:, :Ne], u[:, Ne:]                                             # (B, Ne, Hu), (B, n_t, Hu)
        ubar_C_den = np.maximum(n_c, 1.0)[:, None]
        ubar_C = np.sum(valid * u_C, axis=1) / ubar_C_den                           # (B, Hu)     (S2)
        chat_raw, c_cm = affine_forward(ubar_C, p["cue.Wm"], p["cue.bm"])
        rho, c_cs = affine_forward(ubar_C, p["cue.Ws"], p["cue.bs"])
        chat = np.where(has_c[:, None], chat_raw, 0.0)                              # (B, Zc)
        pi = n_c[:, None] * np.exp(-rho)                                            # 0 when n_c = 0
        (log_prior, m, P), c_rec = recall_forward(chat, pi, state.mu, state.lam, cfg.tau_r2)   # (S3)-(S5)
        ubar_den = (n_c + n_t)[:, None]
        ubar = (np.sum(valid * u_C, axis=1) + np.sum(u_T, axis=1)) / ubar_den       # (B, Hu)     (S6)
        mu_c, c_pm = affine_forward(ubar, p["post.Wm"], p["post.bm"])
        lv_raw, c_ps = affine_forward(ubar, p["post.Ws"], p["post.bs"])
        log_var_c = lv_raw - np.log(ubar_den)
        (T_c, log_q_a), c_con = concept_term_forward(mu_c, log_var_c, log_prior, m, P)   # (S7)-(S8)
        sd_c = np.exp(0.5 * log_var_c)
        c = mu_c + sd_c * eps_c                                                     # (B, Zc)     (S9)
        mu_z, c_zm = affine_forward(c, p["pz.Wm"], p["pz.bm"])                      # (B, Z)      (S10)
        log_sig_z, c_zs = affine_forward(c, p["pz.Ws"], p["pz.bs"])
        xw, c_qx = affine_forward(targets, p["qz.Wx"])                              # (B, n_t, H) (S11)
        cw, c_qc = affine_forward(c, p["qz.Wc"], p["qz.b"])                         # (B, H)
        g = np.tanh(xw + cw[:, None])
        mu_qz, c_qm = affine_forward(g, p["qz.Wm"], p["qz.bm"])                     # (B, n_t, Z)
        log_sig_qz, c_qs = affine_forward(g, p["qz.Ws"], p["qz.bs"])
        sig_qz = np.exp(log_sig_qz)
        z = mu_qz + sig_qz * eps_z
        zc = np.concatenate([z, np.broadcast_to(c[:, None], (c.shape[0], n_t, cfg.Zc))], axis=-1)
        query, c_aq = affine_forward(zc, p["att.Wq"])                               # (B, n_t, Hk) (S12)
        keys, c_ak = affine_forward(u_C, p["att.Wk"])                               # (B, Ne, Hk)
        scores = np.einsum("bih,bjh->bij", query, keys) / math.sqrt(cfg.Hk)         # (B, n_t, Ne)
        beta, _ = masked_softmax_forward(scores, self.read_mask(mask)[:, None, :])
        r = np.einsum("bij,bjh->bih", beta, u_C)                                    # (B, n_t, Hu)
        t = np.einsum("bij,bjx->bix", beta, context)                                # (B, n_t, X)
        hz, c_dz = affine_forward(z, p["dec.Wz"], p["dec.b"])                       # (S13)
        hc, c_dc = affine_forward(c, p["dec.Wc"])
        hr, c_dr = affine_forward(r, p["dec.Wr"])
        h = np.tanh(hz + hc[:, None] + hr)                                          # (B, n_t, H)
        out, c_do = affine_forward(h, p["dec.Wo"], p["dec.bo"])
        logit = out + p["dec.skip"] * t
        log_px, c_px = bernoulli_log_likelihood_forward(targets, logit)             # (B, n_t)
        kl_z, c_kl = gaussian_kl_forward(mu_qz, log_sig_qz, mu_z[:, None], log_sig_z[:, None])   # (S14)
        L = np.sum(log_px - kl_z, axis=1) + T_c                                     # (B,)        (S15)
        return L, VSMCache(mask, n_c, has_c, context, targets, u_C, u_T, c_feat, ubar_C_den, (c_cm, c_cs), pi,
                           c_rec, log_prior, m, P, ubar_den, (c_pm, c_ps), mu_c, log_var_c, c_con, log_q_a, T_c,
                           sd_c, eps_c, c, (c_zm, c_zs), mu_z, log_sig_z, (c_qx, c_qc, c_qm, c_qs), g, mu_qz,
                           log_sig_qz, sig_qz, eps_z, z, (c_aq, c_ak), query, keys, beta, r, t,
                           (c_dz, c_dc, c_dr, c_do), h, log_px, c_px, kl_z, c_kl, L)

    def backward(self, dL, cache: VSMCache, state_grads: bool = False) -> dict:
        """Exact gradient of sum_b dL_b L_b (pathwise; the address is summed out). Steps walked
        back from (S15) to (S1). With state_grads=True the dict also holds "sem.mu" and "sem.lam",
        the gradients w.r.t. the semantic state as if it were an input (for checking foreign
        implementations; the memory is never updated by gradient)."""
        cfg, p, k = self.config, self.params, cache
        dL = np.asarray(dL, dtype=k.L.dtype)
        if dL.shape != k.L.shape:
            raise ValueError(f"dL must have the output's shape (B,) = {k.L.shape}; got {dL.shape}")
        n_t, grads = k.targets.shape[1], {}
        d_item = np.broadcast_to(dL[:, None], k.log_px.shape)                      # (B, n_t)    (S15)
        dlogit = bernoulli_log_likelihood_backward(d_item, k.px)                   # (S13)
        grads["dec.skip"] = np.einsum("bix,bix->x", dlogit, k.t)
        dt = dlogit * p["dec.skip"]
        dh, grads["dec.Wo"], grads["dec.bo"] = affine_backward(dlogit, k.dec[3])
        dpre_h = dh * (1.0 - k.h ** 2)
        dz, grads["dec.Wz"], grads["dec.b"] = affine_backward(dpre_h, k.dec[0])
        dc, grads["dec.Wc"], _ = affine_backward(np.sum(dpre_h, axis=1), k.dec[1])
        dr, grads["dec.Wr"], _ = affine_backward(dpre_h, k.dec[2])
        dbeta = np.einsum("bih,bjh->bij", dr, k.u_C) + np.einsum("bix,bjx->bij", dt, k.context)   # (S12)
        du_C = np.einsum("bij,bih->bjh", k.beta, dr)                                # (B, Ne, Hu)
        dscores = masked_softmax_backward(dbeta, k.beta) / math.sqrt(cfg.Hk)
        dquery = np.einsum("bij,bjh->bih", dscores, k.keys)
        dkeys = np.einsum("bij,bih->bjh", dscores, k.query)
        dzc, grads["att.Wq"], _ = affine_backward(dquery, k.att[0])
        dz = dz + dzc[..., :cfg.Z]
        dc = dc + np.sum(dzc[..., cfg.Z:], axis=1)
        du_keys, grads["att.Wk"], _ = affine_backward(dkeys, k.att[1])
        du_C = du_C + du_keys
        dmu_qz, dls_qz, dmu_z, dls_z = gaussian_kl_backward(-d_item, k.kl)          # (S14)
        dmu_qz = dmu_qz + dz                                                        # (S11): dz/dmu = 1
        dls_qz = dls_qz + dz * k.sig_qz * k.eps_z                                   # dz/dlog sig = sig eps
        dg_m, grads["qz.Wm"], grads["qz.bm"] = affine_backward(dmu_qz, k.qz[2])
        dg_s, grads["qz.Ws"], grads["qz.bs"] = affine_backward(dls_qz, k.qz[3])
        dpre_g = (dg_m + dg_s) * (1.0 - k.g ** 2)
        _, grads["qz.Wx"], _ = affine_backward(dpre_g, k.qz[0], need_dv=False)
        dc_q, grads["qz.Wc"], grads["qz.b"] = affine_backward(np.sum(dpre_g, axis=1), k.qz[1])
        dc_zm, grads["pz.Wm"], grads["pz.bm"] = affine_backward(np.sum(dmu_z, axis=1), k.pz[0])   # (S10)
        dc_zs, grads["pz.Ws"], grads["pz.bs"] = affine_backward(np.sum(dls_z, axis=1), k.pz[1])
        dc = dc + dc_q + dc_zm + dc_zs                                              # (B, Zc)
        dmu_c, dlog_var_c = dc, dc * 0.5 * k.sd_c * k.eps_c                         # (S9)
        dmu_c2, dlv2, dlog_prior, dm, dP = concept_term_backward(dL, k.concept)    # (S7)-(S8)
        dmu_c, dlog_var_c = dmu_c + dmu_c2, dlog_var_c + dlv2
        dub_m, grads["post.Wm"], grads["post.bm"] = affine_backward(dmu_c, k.post[0])   # (S6)
        dub_s, grads["post.Ws"], grads["post.bs"] = affine_backward(dlog_var_c, k.post[1])
        dubar = (dub_m + dub_s) / k.ubar_den                                        # (B, Hu)
        valid = k.mask[..., None].astype(dubar.dtype)
        du_C = du_C + valid * dubar[:, None]
        du_T = np.broadcast_to(dubar[:, None], k.u_T.shape)
        return _recall_cue_features_backward(k, grads, p, du_C, du_T, dlog_prior, dm, dP, state_grads)

    # -- autodiff engine
    def forward_autodiff(self, tparams: Mapping[str, ad.Tensor], inputs: VSMInputs) -> ad.Tensor:
        """The same equations (S1)-(S15) with minimem.autodiff ops. Returns L (B,). Tensors named
        "sem.mu" and "sem.lam" in tparams, if present, replace the semantic state (state as input)."""
        cfg, p, state = self.config, tparams, self.state
        context, mask, targets, eps_c, eps_z = self.check_inputs(inputs)
        B, n_t = targets.shape[:2]
        n_c = mask.sum(axis=1).astype(context.dtype)
        has_c = np.broadcast_to((n_c > 0)[:, None], (B, cfg.Zc))
        valid = mask[..., None].astype(context.dtype)
        u_C = ad.tanh(linear_autodiff(context, p["feat.W"], p["feat.b"]))                      # (S1)
        u_T = ad.tanh(linear_autodiff(targets, p["feat.W"], p["feat.b"]))
        ubar_C = ad.sum(u_C * valid, axis=1) / np.maximum(n_c, 1.0)[:, None]                     # (S2)
        chat = ad.where(has_c, linear_autodiff(ubar_C, p["cue.Wm"], p["cue.bm"]), 0.0)
        pi = n_c[:, None] * ad.exp(-linear_autodiff(ubar_C, p["cue.Ws"], p["cue.bs"]))
        sem_mu, sem_lam = p.get("sem.mu", state.mu), p.get("sem.lam", state.lam)
        log_prior, m, P = recall_autodiff(chat, pi, sem_mu, sem_lam, cfg.tau_r2)                 # (S3)-(S5)
        ubar = (ad.sum(u_C * valid, axis=1) + ad.sum(u_T, axis=1)) / (n_c + n_t)[:, None]        # (S6)
        mu_c = linear_autodiff(ubar, p["post.Wm"], p["post.bm"])
        log_var_c = linear_autodiff(ubar, p["post.Ws"], p["post.bs"]) - np.log(n_c + n_t)[:, None]
        T_c, _ = concept_term_autodiff(mu_c, log_var_c, log_prior, m, P)                         # (S7)-(S8)
        c = mu_c + ad.exp(0.5 * log_var_c) * eps_c                                               # (S9)
        mu_z = ad.reshape(linear_autodiff(c, p["pz.Wm"], p["pz.bm"]), (B, 1, cfg.Z))             # (S10)
        log_sig_z = ad.reshape(linear_autodiff(c, p["pz.Ws"], p["pz.bs"]), (B, 1, cfg.Z))
        c3 = ad.reshape(c, (B, 1, cfg.Zc))
        g = ad.tanh(linear_autodiff(targets, p["qz.Wx"]) + linear_autodiff(c3, p["qz.Wc"], p["qz.b"]))   # (S11)
        mu_qz = linear_autodiff(g, p["qz.Wm"], p["qz.bm"])
        log_sig_qz = linear_autodiff(g, p["qz.Ws"], p["qz.bs"])
        z = mu_qz + ad.exp(log_sig_qz) * eps_z
        zc = ad.concatenate([z, ad.broadcast_to(c3, (B, n_t, cfg.Zc))], axis=-1)
        query = linear_autodiff(zc, p["att.Wq"])                                                  # (S12)
        keys = linear_autodiff(u_C, p["att.Wk"])
        scores = ad.einsum("bih,bjh->bij", query, keys) / math.sqrt(cfg.Hk)
        beta = masked_softmax_autodiff(scores, self.read_mask(mask)[:, None, :])
        r = ad.einsum("bij,bjh->bih", beta, u_C)
        t = ad.einsum("bij,bjx->bix", beta, ad.Tensor(context))
        h = ad.tanh(linear_autodiff(z, p["dec.Wz"], p["dec.b"]) + linear_autodiff(c3, p["dec.Wc"])
                    + linear_autodiff(r, p["dec.Wr"]))                                            # (S13)
        logit = linear_autodiff(h, p["dec.Wo"], p["dec.bo"]) + p["dec.skip"] * t
        log_px = bernoulli_log_likelihood_autodiff(targets, logit)
        kl_z = gaussian_kl_autodiff(mu_qz, log_sig_qz, mu_z, log_sig_z)                           # (S14)
        return ad.sum(log_px - kl_z, axis=1) + T_c                                                # (S15)

    # -- evaluation, generation, monitoring
    def log_weights(self, inputs: VSMInputs) -> np.ndarray:
        """Importance weights of the evaluation bound, eq. (S16), for S samples of (c, z).

        Args:
            inputs: VSMInputs whose eps_c is (S, B, Zc) and eps_z (S, B, n_t, Z).
        Returns:
            log_w: (S, B). The bound is lse_s(log w) - log S; NLL per target image is
            -(lse_s(log w) - log S) / n_t (see nll). Forward only; the S samples run as one batch.
        """
        eps_c, eps_z = np.asarray(inputs.eps_c), np.asarray(inputs.eps_z)
        if eps_c.ndim != 3 or eps_z.ndim != 4 or eps_c.shape[0] != eps_z.shape[0]:
            raise ValueError(f"log_weights needs eps_c (S, B, Zc) and eps_z (S, B, n_t, Z); got {eps_c.shape} and {eps_z.shape}")
        S, B = eps_c.shape[:2]
        tile = lambda v: np.broadcast_to(v, (S,) + np.shape(v)).reshape((S * B,) + np.shape(v)[1:])
        flat = VSMInputs(tile(inputs.context), tile(inputs.mask), tile(inputs.targets),
                         eps_c.reshape((S * B,) + eps_c.shape[2:]), eps_z.reshape((S * B,) + eps_z.shape[2:]))
        _, k = self.forward(flat)
        log_pz, _ = gaussian_log_density_forward(k.z, k.mu_z[:, None], k.log_sig_z[:, None])
        log_qz, _ = gaussian_log_density_forward(k.z, k.mu_qz, k.log_sig_qz)
        log_qc, _ = gaussian_log_density_forward(k.c, k.mu_c, 0.5 * k.log_var_c)
        log_w = np.sum(k.log_px + log_pz - log_qz, axis=1) + mixture_log_prior(k.c, k.log_prior, k.m, k.P) - log_qc
        return log_w.reshape(S, B)

    def nll(self, inputs: VSMInputs) -> np.ndarray:
        """Conditional NLL per target image (B,) from the S-sample bound of eq. (S16), in nats."""
        log_w = self.log_weights(inputs)
        return -(logsumexp(log_w, axis=0) - math.log(log_w.shape[0])) / np.shape(inputs.targets)[1]

    def generate(self, rng: np.random.Generator, context, mask, samples: int = 1) -> dict:
        """Generation from a context (spec C.3): a ~ p(a | X_C), c ~ N(m_a, 1/P_a), z ~ p(z | c),
        x ~ Bernoulli(sigmoid(logit)) with the episodic read over the context.
        Returns {"a": (B,), "c": (B, Zc), "probs": (B, samples, X), "x": (B, samples, X)}."""
        cfg, p = self.config, self.params
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a np.random.Generator; got {type(rng).__name__}")
        B = np.shape(context)[0]
        dummy = VSMInputs(context, mask, np.zeros((B, samples, cfg.X)), np.zeros((B, cfg.Zc)),
                          np.zeros((B, samples, cfg.Z)))
        _, k = self.forward(dummy)                       # S1-S5 depend on the context only
        a = sample_addresses(k.log_prior, rng.random((1, B)))[0]                    # (B,)
        rows = np.arange(B)
        c = k.m[rows, a] + rng.standard_normal((B, cfg.Zc)) / np.sqrt(k.P[rows, a])
        mu_z, log_sig_z = c @ p["pz.Wm"] + p["pz.bm"], c @ p["pz.Ws"] + p["pz.bs"]
        z = mu_z[:, None] + np.exp(log_sig_z)[:, None] * rng.standard_normal((B, samples, cfg.Z))
        zc = np.concatenate([z, np.broadcast_to(c[:, None], (B, samples, cfg.Zc))], axis=-1)
        scores = np.einsum("bih,bjh->bij", zc @ p["att.Wq"], k.keys) / math.sqrt(cfg.Hk)
        beta, _ = masked_softmax_forward(scores, self.read_mask(k.mask)[:, None, :])
        r, t = np.einsum("bij,bjh->bih", beta, k.u_C), np.einsum("bij,bjx->bix", beta, k.context)
        h = np.tanh(z @ p["dec.Wz"] + (c @ p["dec.Wc"])[:, None] + r @ p["dec.Wr"] + p["dec.b"])
        probs = sigmoid(h @ p["dec.Wo"] + p["dec.bo"] + p["dec.skip"] * t)
        return {"a": a, "c": c, "probs": probs, "x": (rng.random(probs.shape) < probs).astype(probs.dtype)}

    def diagnostics(self, cache: VSMCache) -> dict:
        """Monitoring: H[q(a|X)] (B,), the semantic address posterior q(a|X) (B, Ns), KL_z per
        task (B,), T_c (B,), and the number of slots with count > 1 (an int)."""
        return {"H_a": semantic_address_entropy(cache.log_q_a), "q_a": np.exp(cache.log_q_a),
                "KL_z": np.sum(cache.kl_z, axis=1), "T_c": cache.T_c,
                "slots_used": int(np.sum(self.state.count > 1))}


# ----------------------------------------------------------------- the VSM-VAE plug-in
class VSMVAECache(NamedTuple):
    """Everything VSMVAE.backward needs; n_t targets, each with its own concept c_i."""
    mask: np.ndarray            # (B, Ne) bool
    n_c: np.ndarray             # (B,)
    has_c: np.ndarray           # (B,) bool
    context: np.ndarray         # (B, Ne, X), zero on masked slots
    targets: np.ndarray         # (B, n_t, X)
    u_C: np.ndarray             # (B, Ne, Hu)                           (S1)
    u_T: np.ndarray             # (B, n_t, Hu)
    feat: object                # LinearCache of the features of [context; targets] (one product)
    ubar_C_den: np.ndarray      # (B, 1)                                (S2)
    cue: tuple
    pi: np.ndarray              # (B, Zc)
    recall: tuple               # RecallCache                           (S3)-(S5)
    log_prior: np.ndarray       # (B, Ns)
    m: np.ndarray               # (B, Ns, Zc)
    P: np.ndarray               # (B, Ns, Zc)
    post: tuple                 # LinearCaches of mu_c and log var_c    (S6 with n = 1)
    mu_c: np.ndarray            # (B, n_t, Zc)
    log_var_c: np.ndarray       # (B, n_t, Zc)
    concept: tuple              # ConceptCache over the B * n_t targets (S7)-(S8)
    log_q_a: np.ndarray         # (B, n_t, Ns)
    T_c: np.ndarray             # (B, n_t)
    sd_c: np.ndarray            # (B, n_t, Zc)                          (S9)
    eps_c: np.ndarray           # (B, n_t, Zc)
    c: np.ndarray               # (B, n_t, Zc)
    att: tuple                  # LinearCaches of the query and keys    (S12)
    query: np.ndarray           # (B, n_t, Hk)
    keys: np.ndarray            # (B, Ne, Hk)
    beta: np.ndarray            # (B, n_t, Ne)
    r: np.ndarray               # (B, n_t, Hu)
    t: np.ndarray               # (B, n_t, X)
    dec: tuple                  # LinearCaches of c, r and the output    (S13)
    h: np.ndarray               # (B, n_t, H)
    log_px: np.ndarray          # (B, n_t)
    px: tuple
    L: np.ndarray               # (B,)


class VSMVAE(VSM):
    """The non-hierarchical plug-in "VSM-VAE" (spec C.3, last paragraph; [M], reconstructed):
    no z; every target i has its own concept latent c_i with q(c_i | x_i) from the `post` heads
    applied to u_i alone (S6 with n = 1: no -log n offset); S7-S9 run per target against the same
    recall prior (S3-S5) of its task; the decoder reads (c_i, r_i, t_i), the attention query is
    c_i @ att.Wq with att.Wq (Zc, Hk).

        (S6')  mu_c,i = u_i @ post.Wm + post.bm,  log var_c,i = u_i @ post.Ws + post.bs     (B, n_t, Zc)
        (S7'-S9') T_c,i as (S7)-(S8) per target;  c_i = mu_c,i + exp(0.5 log var_c,i) eps_c,i
        (S12') query = c_i @ att.Wq;  beta, r_i, t_i as (S12)
        (S13') h = tanh(c_i @ dec.Wc + r_i @ dec.Wr + dec.b);  logit = h @ dec.Wo + dec.bo + dec.skip * t_i
        (S15') L_b = sum_i [log p(x_i | c_i, E) + T_c,i]
        (S16') log w_s = sum_i [log p(x_i | c_is, E) + log p(c_is | X_C, memory) - log q(c_is | x_i)]
    Noise: VSMInputs with eps_c (B, n_t, Zc) and eps_z None. Consolidation (U1-U3) takes every
    target's trace (B * n_t traces per step).
    """

    def __init__(self, config: VSMConfig, rng: np.random.Generator | None = None):
        if not isinstance(config, VSMConfig) or config.variant != "vae":
            raise ValueError("VSMVAE needs a VSMConfig with variant='vae'")
        super().__init__(config, rng)

    def consolidate(self, cache: VSMVAECache) -> None:
        """(U1)-(U3) with one trace per target; call once after each optimiser step."""
        cfg, Zc = self.config, self.config.Zc
        self.state = consolidate(self.state, cache.mu_c.reshape(-1, Zc), np.exp(cache.log_var_c).reshape(-1, Zc),
                                 np.exp(cache.log_q_a).reshape(-1, cache.log_q_a.shape[-1]), cfg.tau_t2, cfg.gamma, cfg.lam0)

    # -- manual engine
    def forward(self, inputs: VSMInputs):
        """Eqs. (S1)-(S5), (S6')-(S15'). Returns L (B,) and the cache for backward."""
        cfg, p, state = self.config, self.params, self.state
        context, mask, targets, eps_c, _ = self.check_inputs(inputs)
        B, n_t = targets.shape[:2]
        n_c = mask.sum(axis=1).astype(context.dtype)
        has_c = n_c > 0
        valid = mask[..., None].astype(context.dtype)
        Ne = context.shape[1]                                                       # (S1) one product for both
        pre_u, c_feat = affine_forward(np.concatenate([context, targets], axis=1), p["feat.W"], p["feat.b"])
        u = np.tanh(pre_u)                                                          # (B, Ne + n_t, Hu)
        u_C, u_T = u[:, :Ne], u[:, Ne:]                                             # (B, Ne, Hu), (B, n_t, Hu)
        ubar_C_den = np.maximum(n_c, 1.0)[:, None]
        ubar_C = np.sum(valid * u_C, axis=1) / ubar_C_den                           # (S2)
        chat_raw, c_cm = affine_forward(ubar_C, p["cue.Wm"], p["cue.bm"])
        rho, c_cs = affine_forward(ubar_C, p["cue.Ws"], p["cue.bs"])
        chat = np.where(has_c[:, None], chat_raw, 0.0)
        pi = n_c[:, None] * np.exp(-rho)
        (log_prior, m, P), c_rec = recall_forward(chat, pi, state.mu, state.lam, cfg.tau_r2)   # (S3)-(S5)
        mu_c, c_pm = affine_forward(u_T, p["post.Wm"], p["post.bm"])                # (B, n_t, Zc) (S6')
        log_var_c, c_ps = affine_forward(u_T, p["post.Ws"], p["post.bs"])
        rep = lambda a: np.repeat(a, n_t, axis=0)                                   # task -> its targets
        (T_flat, lq_flat), c_con = concept_term_forward(mu_c.reshape(B * n_t, -1), log_var_c.reshape(B * n_t, -1),
                                                        rep(log_prior), rep(m), rep(P))          # (S7'-S8')
        T_c, log_q_a = T_flat.reshape(B, n_t), lq_flat.reshape(B, n_t, -1)
        sd_c = np.exp(0.5 * log_var_c)
        c = mu_c + sd_c * eps_c                                                     # (B, n_t, Zc) (S9')
        query, c_aq = affine_forward(c, p["att.Wq"])                                # (S12')
        keys, c_ak = affine_forward(u_C, p["att.Wk"])
        scores = np.einsum("bih,bjh->bij", query, keys) / math.sqrt(cfg.Hk)
        beta, _ = masked_softmax_forward(scores, self.read_mask(mask)[:, None, :])
        r = np.einsum("bij,bjh->bih", beta, u_C)
        t = np.einsum("bij,bjx->bix", beta, context)
        hc, c_dc = affine_forward(c, p["dec.Wc"], p["dec.b"])                       # (S13')
        hr, c_dr = affine_forward(r, p["dec.Wr"])
        h = np.tanh(hc + hr)
        out, c_do = affine_forward(h, p["dec.Wo"], p["dec.bo"])
        logit = out + p["dec.skip"] * t
        log_px, c_px = bernoulli_log_likelihood_forward(targets, logit)             # (B, n_t)
        L = np.sum(log_px + T_c, axis=1)                                            # (S15')
        return L, VSMVAECache(mask, n_c, has_c, context, targets, u_C, u_T, c_feat, ubar_C_den, (c_cm, c_cs),
                              pi, c_rec, log_prior, m, P, (c_pm, c_ps), mu_c, log_var_c, c_con, log_q_a, T_c, sd_c,
                              eps_c, c, (c_aq, c_ak), query, keys, beta, r, t, (c_dc, c_dr, c_do), h, log_px, c_px, L)

    def backward(self, dL, cache: VSMVAECache, state_grads: bool = False) -> dict:
        """Exact gradient of sum_b dL_b L_b, walked back from (S15') to (S1); state_grads as in VSM."""
        cfg, p, k = self.config, self.params, cache
        dL = np.asarray(dL, dtype=k.L.dtype)
        if dL.shape != k.L.shape:
            raise ValueError(f"dL must have the output's shape (B,) = {k.L.shape}; got {dL.shape}")
        (B, n_t), grads = k.targets.shape[:2], {}
        d_item = np.broadcast_to(dL[:, None], k.log_px.shape)                      # (B, n_t)   (S15')
        dlogit = bernoulli_log_likelihood_backward(d_item, k.px)                   # (S13')
        grads["dec.skip"] = np.einsum("bix,bix->x", dlogit, k.t)
        dt = dlogit * p["dec.skip"]
        dh, grads["dec.Wo"], grads["dec.bo"] = affine_backward(dlogit, k.dec[2])
        dpre_h = dh * (1.0 - k.h ** 2)
        dc, grads["dec.Wc"], grads["dec.b"] = affine_backward(dpre_h, k.dec[0])
        dr, grads["dec.Wr"], _ = affine_backward(dpre_h, k.dec[1])
        dbeta = np.einsum("bih,bjh->bij", dr, k.u_C) + np.einsum("bix,bjx->bij", dt, k.context)   # (S12')
        du_C = np.einsum("bij,bih->bjh", k.beta, dr)
        dscores = masked_softmax_backward(dbeta, k.beta) / math.sqrt(cfg.Hk)
        dquery = np.einsum("bij,bjh->bih", dscores, k.keys)
        dkeys = np.einsum("bij,bih->bjh", dscores, k.query)
        dc_q, grads["att.Wq"], _ = affine_backward(dquery, k.att[0])
        du_keys, grads["att.Wk"], _ = affine_backward(dkeys, k.att[1])
        dc, du_C = dc + dc_q, du_C + du_keys
        dmu_c, dlog_var_c = dc, dc * 0.5 * k.sd_c * k.eps_c                         # (S9')
        dmu2, dlv2, dlp, dm, dP = concept_term_backward(d_item.reshape(-1), k.concept)   # (S7'-S8')
        dmu_c = dmu_c + dmu2.reshape(dmu_c.shape)
        dlog_var_c = dlog_var_c + dlv2.reshape(dlog_var_c.shape)
        dlog_prior = dlp.reshape(B, n_t, -1).sum(axis=1)                           # shared by the targets
        dm = dm.reshape((B, n_t) + dm.shape[1:]).sum(axis=1)
        dP = dP.reshape((B, n_t) + dP.shape[1:]).sum(axis=1)
        du_T_m, grads["post.Wm"], grads["post.bm"] = affine_backward(dmu_c, k.post[0])   # (S6')
        du_T_s, grads["post.Ws"], grads["post.bs"] = affine_backward(dlog_var_c, k.post[1])
        du_T = du_T_m + du_T_s
        return _recall_cue_features_backward(k, grads, p, du_C, du_T, dlog_prior, dm, dP, state_grads)

    # -- autodiff engine
    def forward_autodiff(self, tparams: Mapping[str, ad.Tensor], inputs: VSMInputs) -> ad.Tensor:
        """The same equations with minimem.autodiff ops. Returns L (B,); "sem.mu"/"sem.lam" in
        tparams, if present, replace the semantic state."""
        cfg, p, state = self.config, tparams, self.state
        context, mask, targets, eps_c, _ = self.check_inputs(inputs)
        B, n_t = targets.shape[:2]
        Ns, Zc = cfg.Ns, cfg.Zc
        n_c = mask.sum(axis=1).astype(context.dtype)
        has_c = np.broadcast_to((n_c > 0)[:, None], (B, Zc))
        valid = mask[..., None].astype(context.dtype)
        u_C = ad.tanh(linear_autodiff(context, p["feat.W"], p["feat.b"]))                      # (S1)
        u_T = ad.tanh(linear_autodiff(targets, p["feat.W"], p["feat.b"]))
        ubar_C = ad.sum(u_C * valid, axis=1) / np.maximum(n_c, 1.0)[:, None]                     # (S2)
        chat = ad.where(has_c, linear_autodiff(ubar_C, p["cue.Wm"], p["cue.bm"]), 0.0)
        pi = n_c[:, None] * ad.exp(-linear_autodiff(ubar_C, p["cue.Ws"], p["cue.bs"]))
        sem_mu, sem_lam = p.get("sem.mu", state.mu), p.get("sem.lam", state.lam)
        log_prior, m, P = recall_autodiff(chat, pi, sem_mu, sem_lam, cfg.tau_r2)                 # (S3)-(S5)
        mu_c = linear_autodiff(u_T, p["post.Wm"], p["post.bm"])                                  # (S6')
        log_var_c = linear_autodiff(u_T, p["post.Ws"], p["post.bs"])
        per_target = lambda a, shape: ad.reshape(ad.broadcast_to(ad.reshape(a, (B, 1) + shape), (B, n_t) + shape),
                                                 (B * n_t,) + shape)
        T_c, _ = concept_term_autodiff(ad.reshape(mu_c, (B * n_t, Zc)), ad.reshape(log_var_c, (B * n_t, Zc)),
                                       per_target(log_prior, (Ns,)), per_target(m, (Ns, Zc)), per_target(P, (Ns, Zc)))
        c = mu_c + ad.exp(0.5 * log_var_c) * eps_c                                               # (S9')
        query = linear_autodiff(c, p["att.Wq"])                                                  # (S12')
        keys = linear_autodiff(u_C, p["att.Wk"])
        scores = ad.einsum("bih,bjh->bij", query, keys) / math.sqrt(cfg.Hk)
        beta = masked_softmax_autodiff(scores, self.read_mask(mask)[:, None, :])
        r = ad.einsum("bij,bjh->bih", beta, u_C)
        t = ad.einsum("bij,bjx->bix", beta, ad.Tensor(context))
        h = ad.tanh(linear_autodiff(c, p["dec.Wc"], p["dec.b"]) + linear_autodiff(r, p["dec.Wr"]))   # (S13')
        logit = linear_autodiff(h, p["dec.Wo"], p["dec.bo"]) + p["dec.skip"] * t
        log_px = bernoulli_log_likelihood_autodiff(targets, logit)
        return ad.sum(log_px + ad.reshape(T_c, (B, n_t)), axis=1)                                 # (S15')

    # -- evaluation, generation, monitoring
    def log_weights(self, inputs: VSMInputs) -> np.ndarray:
        """Importance weights of eq. (S16'): eps_c (S, B, n_t, Zc), eps_z None. Returns (S, B)."""
        eps_c = np.asarray(inputs.eps_c)
        if eps_c.ndim != 4 or inputs.eps_z is not None:
            raise ValueError(f"log_weights of VSM-VAE needs eps_c (S, B, n_t, Zc) and eps_z None; got {eps_c.shape}")
        S, B = eps_c.shape[:2]
        tile = lambda v: np.broadcast_to(v, (S,) + np.shape(v)).reshape((S * B,) + np.shape(v)[1:])
        flat = VSMInputs(tile(inputs.context), tile(inputs.mask), tile(inputs.targets),
                         eps_c.reshape((S * B,) + eps_c.shape[2:]), None)
        _, k = self.forward(flat)
        log_qc, _ = gaussian_log_density_forward(k.c, k.mu_c, 0.5 * k.log_var_c)                 # (SB, n_t)
        log_pc = mixture_log_prior(np.moveaxis(k.c, 1, 0), k.log_prior, k.m, k.P).T              # (SB, n_t)
        return np.sum(k.log_px + log_pc - log_qc, axis=1).reshape(S, B)

    def generate(self, rng: np.random.Generator, context, mask, samples: int = 1) -> dict:
        """Generation from a context: per sample a ~ p(a | X_C), c ~ N(m_a, 1/P_a), x ~ Bernoulli
        with the episodic read over the context. Returns {"a": (B, samples), "c": (B, samples, Zc),
        "probs": (B, samples, X), "x": (B, samples, X)}."""
        cfg, p = self.config, self.params
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a np.random.Generator; got {type(rng).__name__}")
        B = np.shape(context)[0]
        dummy = VSMInputs(context, mask, np.zeros((B, samples, cfg.X)), np.zeros((B, samples, cfg.Zc)), None)
        _, k = self.forward(dummy)
        a = sample_addresses(k.log_prior, rng.random((samples, B))).T                # (B, samples)
        rows = np.arange(B)[:, None]
        c = k.m[rows, a] + rng.standard_normal((B, samples, cfg.Zc)) / np.sqrt(k.P[rows, a])
        scores = np.einsum("bih,bjh->bij", c @ p["att.Wq"], k.keys) / math.sqrt(cfg.Hk)
        beta, _ = masked_softmax_forward(scores, self.read_mask(k.mask)[:, None, :])
        r, t = np.einsum("bij,bjh->bih", beta, k.u_C), np.einsum("bij,bjx->bix", beta, k.context)
        h = np.tanh(c @ p["dec.Wc"] + r @ p["dec.Wr"] + p["dec.b"])
        probs = sigmoid(h @ p["dec.Wo"] + p["dec.bo"] + p["dec.skip"] * t)
        return {"a": a, "c": c, "probs": probs, "x": (rng.random(probs.shape) < probs).astype(probs.dtype)}

    def diagnostics(self, cache: VSMVAECache) -> dict:
        """Monitoring, averaged over each task's targets: H_a (B,), q_a (B, Ns); KL_z is 0 (no z);
        T_c (B,) summed over targets; slots with count > 1."""
        return {"H_a": semantic_address_entropy(cache.log_q_a).mean(axis=1), "q_a": np.exp(cache.log_q_a).mean(axis=1),
                "KL_z": np.zeros(cache.L.shape), "T_c": cache.T_c.sum(axis=1),
                "slots_used": int(np.sum(self.state.count > 1))}


# ----------------------------------------------------------------- initialisation
def vsm_init(config: VSMConfig, rng: np.random.Generator) -> dict:
    """Parameters of spec C.2: weights N(0, 1/fan_in), heads producing means and log variances
    scaled by 0.1 (cue, post, pz, qz.Wm, qz.Ws), biases 0, dec.bo = logit(mean_pixel), skip 0."""
    heads = {"cue.Wm", "cue.Ws", "post.Wm", "post.Ws", "pz.Wm", "pz.Ws", "qz.Wm", "qz.Ws"}
    params = {}
    for name, shape in vsm_param_shapes(config).items():
        if len(shape) == 2:
            std = (0.1 if name in heads else 1.0) / math.sqrt(shape[0])
            params[name] = init.normal(rng, shape, std)
        elif name == "dec.bo":
            params[name] = np.full(shape, math.log(config.mean_pixel / (1.0 - config.mean_pixel)))
        else:
            params[name] = np.zeros(shape)
    return {name: value.astype(config.dtype) for name, value in params.items()}
