"""Heterogeneous Memory Augmentation (HMA; Qiu, Liu, Yan, Zhang & Fu, 2023, arXiv:2310.10909): a
classification head that lets any backbone's feature vector attend to two memories, a queue of
real training samples (RMem) and learnable memory tokens (SMem), both tagged with label embeddings.

Spec: specs/nam_hma.md Part B, from the authors' released code qiuzh20/HMA (the paper's body and
equation numbers could not be consulted; the labels HMA-1 .. HMA-10 are the spec's).
Shapes: B batch, D backbone feature width, L_h label-embedding width, Dc = D + L_h, K_c classes,
m memory tokens per class, N_r queue rows, H heads (d_s = Dc / H).
Forward (one mini-batch; the MAB blocks are minimem.memory.hma_mab):
    (HMA-1)  h = f_theta(X)                                  (B, D)   any backbone, see below
    (HMA-2)  c = [h ; E_lab[K_c]]                            (B, Dc)  the query's "unknown" label
    (HMA-3)  KV_r[b] = [c_b ; Q_r]                           (B, 1 + N_r, Dc)  itself + the queue
    (HMA-4)  c = MAB_R(c_b as a 1-token set, KV_r[b])        (B, Dc)  block R, per sample
    (HMA-5)  G_hat_j = [G_j ; E_lab[class(j)]],  class(j) = floor(j / m)      (m K_c, Dc)
    (HMA-6)  c = MAB_A({c_1..c_B} as ONE set, {c_1..c_B} u G_hat)            (B, Dc)  block A
    (HMA-7)  logits = slice(c) W_c + b_c,  slice = all of c | its label part | its feature part
MAB scores are scaled by tau / sqrt(Dc), the FULL key width (the reference, B8.5), or, with
scale="head", by the usual tau / sqrt(d_s).
Memory write (training steps only, no gradient, AFTER the step's forward has read the queue):
    (HMA-8)  xi <- mu xi + (1 - mu) theta              EMA of the backbone's parameters
    (HMA-9)  z_b = [f_xi(X_b) ; E_lab[y_b]]            momentum features, label embedding as it is now
    (HMA-10) Q_r[(ptr + i) mod N_r] <- z_i, i < B;  ptr <- (ptr + B) mod N_r
Switches: rmem (block R and the queue), abd (the batch rows among block A's keys: attention between
datapoints) and m (tokens per class; 0 = no SMem). Block A runs when abd or m > 0. With everything
off the head is the reference's plain path, logits = ReLU(h) W_c + b_c with W_c (D, K_c).
Batch dependence (B8, B9.6): with abd on, a sample's logits depend on every other sample of the
batch, at evaluation too, so accuracy depends on the evaluation batch size and order.
`batch_dependence` measures it, `predict_in_batches` evaluates with a fixed batch size and order;
abd=False removes it.

The backbone is any object following the model protocol whose forward maps inputs X to h (B, D):
`params`, `forward(X) -> (h, cache)`, `backward(dh, cache) -> grads`, `forward_autodiff(tparams, X)`
(minimem.nn: MLPModel with output_activation="relu", CNNModel, GCNModel, PatchTransformerModel).
HMA owns the backbone's parameters under "backbone." and hands them to it before every call (its
`params` is replaced by that view).
The momentum encoder f_xi is a deep copy of the backbone made at construction; its parameters and
the queue are buffers (`model.momentum_params`, `model.queue`, `model.queue_ptr`), not parameters:
neither gradient engine ever sees them, and the write replaces the queue array instead of mutating
it, so a cache taken before a write still holds the queue that forward read.

Parameters (model.params, in this order; layouts `x @ W`):
    backbone.<name>                     the backbone's own parameters
    E_lab (K_c + 1, L_h)                label embeddings, row K_c = "unknown"; N(0, 1)   [unless plain]
    G (m K_c, D)                        memory tokens, token j of class floor(j / m)     [m > 0]
    block_r.<MAB names>                 block R (hma_mab docstring)                      [rmem]
    block_a.<MAB names>                 block A                                          [abd or m > 0]
    classifier.W (S, K_c), classifier.b (K_c,)   S = Dc, L_h or D by logits_from; D when plain
Deviations from the reference, each deliberate (spec B10): labels always reach the write (B8.1-2),
partial batches are written with wrap-around instead of skipped (B8.4), top-k masking and null
key/value slots are not offered (off in the reference; B8.6-7), no backbone dropout.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem import init
from minimem.checks import check_int
from minimem.memory.hma_mab import (
    LN_EPS, MABDropout, mab_autodiff, mab_backward, mab_dropout, mab_forward, mab_init, mab_param_shapes,
)
from minimem.nn.graph import GraphBatch, select_graphs
from minimem.nn.linear import as_float_array, check_finite, check_params, linear_init, strip_prefix, with_prefix

LOGITS_FROM = ("all", "label_emb", "feature")
SCALES = ("full", "head")
TOKEN_INITS = ("zeros", "normal")


@dataclass(frozen=True)
class HMAConfig:
    """Sizes and switches of the head (defaults: spec B6 task 1, the MLP image task).

    D: backbone feature width. K_c: classes (>= 2). L_h: label-embedding width. N_r: queue rows.
    m: memory tokens per class (0 = none). heads: H, must divide D + L_h. mu: momentum in [0, 1].
    rmem / abd: block R with the queue / the batch among block A's keys. logits_from: "all" |
    "label_emb" | "feature". scale: "full" (sqrt(Dc), the reference) | "head" (sqrt(d_s)).
    temperature: tau of MAB-2. res_linear: a Linear residual map instead of the identity.
    token_init: "zeros" (graph code) | "normal" (N(0, 0.02^2), ViT option). ff_mult: feed-forward
    width / Dc. dropout: MAB dropout rate (masks come in as inputs, see hma_dropout).
    exclude_self: mask queue rows holding the same sample id (B8.11; needs ids). dtype.
    """
    D: int
    K_c: int
    L_h: int = 16
    N_r: int = 256
    m: int = 8
    heads: int = 4
    mu: float = 0.99
    rmem: bool = True
    abd: bool = True
    logits_from: str = "all"
    scale: str = "full"
    temperature: float = 1.0
    res_linear: bool = False
    token_init: str = "zeros"
    ff_mult: int = 4
    dropout: float = 0.0
    exclude_self: bool = False
    dtype: str = "float64"

    def __post_init__(self) -> None:
        for name, minimum in (("D", 1), ("K_c", 2), ("L_h", 1), ("N_r", 1), ("m", 0), ("heads", 1), ("ff_mult", 1)):
            value = getattr(self, name)
            if name != "K_c":
                check_int(f"HMAConfig.{name}", value, minimum)
            elif isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ValueError(f"HMAConfig.K_c must be an integer >= {minimum} (a single-logit binary head "
                                 f"is not offered; use K_c = 2); got {value!r}")
        if (self.D + self.L_h) % self.heads:
            raise ValueError(f"HMAConfig: D + L_h = {self.D + self.L_h} must be divisible by heads = {self.heads} "
                             "(each head takes an equal slice of the width)")
        if not (isinstance(self.mu, (int, float)) and 0.0 <= self.mu <= 1.0):
            raise ValueError(f"HMAConfig.mu must be a number in [0, 1]; got {self.mu!r}")
        if not (isinstance(self.temperature, (int, float)) and np.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"HMAConfig.temperature must be a positive number; got {self.temperature!r}")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"HMAConfig.dropout must be in [0, 1); got {self.dropout!r}")
        for name, allowed in (("logits_from", LOGITS_FROM), ("scale", SCALES), ("token_init", TOKEN_INITS),
                              ("dtype", ("float64", "float32"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"HMAConfig.{name} must be one of {allowed}; got {getattr(self, name)!r}")
        if self.exclude_self and not self.rmem:
            raise ValueError("HMAConfig.exclude_self masks queue rows, so it needs rmem=True")

    @property
    def Dc(self) -> int:
        return self.D + self.L_h

    @property
    def plain(self) -> bool:
        """No memory at all: logits = ReLU(h) W_c + b_c."""
        return not (self.rmem or self.abd or self.m > 0)

    @property
    def block_a(self) -> bool:
        return self.abd or self.m > 0

    @property
    def score_scale(self) -> float:
        """The factor of MAB-2: tau / sqrt(Dc) ("full") or tau / sqrt(Dc / H) ("head")."""
        width = self.Dc if self.scale == "full" else self.Dc // self.heads
        return self.temperature / math.sqrt(width)

    @property
    def logit_slice(self) -> slice:
        return {"all": slice(0, self.Dc), "label_emb": slice(self.D, self.Dc), "feature": slice(0, self.D)}[
            self.logits_from]

    @property
    def token_class(self) -> np.ndarray:
        """(m K_c,) int: the class of each memory token, classes repeated consecutively."""
        return np.repeat(np.arange(self.K_c), self.m)


def hma_head_shapes(config: HMAConfig) -> dict:
    """Names and shapes of the head's own parameters (everything but backbone.*), in order."""
    if config.plain:
        return {"classifier.W": (config.D, config.K_c), "classifier.b": (config.K_c,)}
    shapes = {"E_lab": (config.K_c + 1, config.L_h)}
    if config.m > 0:
        shapes["G"] = (config.m * config.K_c, config.D)
    for prefix, used in (("block_r", config.rmem), ("block_a", config.block_a)):
        if used:
            shapes.update(with_prefix(prefix, mab_param_shapes(config.Dc, config.ff_mult, config.res_linear)))
    width = config.logit_slice.stop - config.logit_slice.start
    shapes.update({"classifier.W": (width, config.K_c), "classifier.b": (config.K_c,)})
    return shapes


class HMAInputs(NamedTuple):
    """What forward takes besides the parameters (a bare X is also accepted)."""
    X: object                        # the backbone's inputs (an array, a GraphBatch, ...)
    ids: np.ndarray | None = None    # (B,) int sample ids, for exclude_self
    dropout: "HMADropout | None" = None


class HMADropout(NamedTuple):
    """Dropout multipliers of both blocks (hma_dropout draws them); None for a block that is off."""
    block_r: MABDropout | None
    block_a: MABDropout | None


def hma_dropout(rng: np.random.Generator, config: HMAConfig, B: int) -> HMADropout | None:
    """Draw the dropout multipliers of one training step (None when config.dropout == 0)."""
    if config.dropout == 0:
        return None
    F = config.ff_mult * config.Dc
    return HMADropout(mab_dropout(rng, config.dropout, B, 1, config.Dc, F) if config.rmem else None,
                      mab_dropout(rng, config.dropout, 1, B, config.Dc, F) if config.block_a else None)


class HMACache(NamedTuple):
    backbone: object       # the backbone's cache
    h: np.ndarray          # (B, D)
    c: tuple               # (c0, c1, c2): c after HMA-2, HMA-4, HMA-6, each (B, Dc)
    block_r: object        # MABCache or None; block_r.attn.A (B, H, 1, 1 + N_r)
    block_a: object        # MABCache or None; block_a.attn.A (1, H, B, B + m K_c) (batch keys first)
    queue: np.ndarray | None   # (N_r, Dc) the queue this forward read
    params: dict           # the parameters this forward used (the backward needs W_c)


# ----------------------------------------------------------------- the model
class HMA:
    """The HMA head on a backbone; the model protocol of DESIGN.md plus the memory write.

        logits, cache = model.forward(X)                  # read only: evaluation, or a step's read
        logits, cache = model.training_forward(X, y)      # forward, then the write HMA-8..10
        grads = model.backward(dlogits, cache)            # keys of model.params
    Inputs: X for the backbone, or HMAInputs(X, ids, dropout). Outputs: logits (B, K_c).
    """

    def __init__(self, config: HMAConfig, backbone, rng: np.random.Generator | None = None):
        if not isinstance(config, HMAConfig):
            raise ValueError(f"config must be an HMAConfig; got {type(config).__name__}")
        for method in ("forward", "backward", "forward_autodiff"):
            if not callable(getattr(backbone, method, None)) or not isinstance(getattr(backbone, "params", None), dict):
                raise ValueError("backbone must follow the model protocol: a params dict and forward(X) -> (h, cache), "
                                 "backward(dh, cache) -> grads, forward_autodiff(tparams, X)")
        rng = np.random.default_rng(0) if rng is None else rng
        self.config, self.backbone = config, backbone
        self._backbone_shapes = {k: np.shape(v) for k, v in backbone.params.items()}
        dtype = np.dtype(config.dtype)
        cfg = config
        params = with_prefix("backbone", {k: np.asarray(v, dtype=dtype).copy() for k, v in backbone.params.items()})
        if cfg.plain:
            params.update(with_prefix("classifier", linear_init(rng, cfg.D, cfg.K_c, dtype=dtype)))
        else:
            params["E_lab"] = init.normal(rng, (cfg.K_c + 1, cfg.L_h), 1.0, dtype=dtype)
            if cfg.m > 0:
                shape = (cfg.m * cfg.K_c, cfg.D)
                params["G"] = (init.zeros(rng, shape, dtype=dtype) if cfg.token_init == "zeros"
                               else init.normal(rng, shape, 0.02, dtype=dtype))
            if cfg.rmem:
                params.update(with_prefix("block_r", mab_init(rng, cfg.Dc, cfg.ff_mult, cfg.res_linear, dtype)))
            if cfg.block_a:
                params.update(with_prefix("block_a", mab_init(rng, cfg.Dc, cfg.ff_mult, cfg.res_linear, dtype)))
            width = cfg.logit_slice.stop - cfg.logit_slice.start
            params.update(with_prefix("classifier", linear_init(rng, width, cfg.K_c, dtype=dtype)))
        self.params = params
        self.queue = self.queue_ids = self.momentum_params = self.momentum_encoder = None
        self.queue_ptr = 0
        if cfg.rmem:
            noise = rng.standard_normal((cfg.N_r, cfg.Dc))
            self.queue = (noise / np.linalg.norm(noise, axis=1, keepdims=True)).astype(dtype)  # unit rows (B2)
            self.queue_ids = np.full(cfg.N_r, -1)           # -1: an initial noise row, no sample
            self.momentum_encoder = copy.deepcopy(backbone)
            self.momentum_params = strip_prefix("backbone", {k: v.copy() for k, v in params.items()})

    # -- plumbing
    def _backbone(self, params: Mapping) -> object:
        """The backbone, holding `params` (HMA's backbone.* entries) as its parameters."""
        self.backbone.params = strip_prefix("backbone", params)
        return self.backbone

    def _check(self, inputs) -> HMAInputs:
        cfg = self.config
        shapes = {**with_prefix("backbone", self._backbone_shapes), **hma_head_shapes(cfg)}
        check_params(self.params, shapes)
        for name, value in self.params.items():
            if not name.startswith("backbone."):             # the backbone checks its own
                check_finite(f"parameter {name}", value)
        inputs = inputs if isinstance(inputs, HMAInputs) else HMAInputs(inputs)
        X, dtype = inputs.X, np.dtype(cfg.dtype)
        if isinstance(X, np.ndarray) and X.dtype.kind == "f" and X.dtype != dtype:
            inputs = inputs._replace(X=X.astype(dtype))                 # compute in the parameters' precision
        elif isinstance(X, GraphBatch) and np.asarray(X.x).dtype != dtype:
            inputs = inputs._replace(X=X._replace(x=np.asarray(X.x, dtype=dtype)))
        if inputs.ids is not None:
            ids = np.asarray(inputs.ids)
            if ids.ndim != 1 or ids.dtype.kind not in "iu" or np.any(ids < 0):
                raise ValueError(f"ids must be a (B,) array of sample ids >= 0; got {ids.shape} {ids.dtype}")
            inputs = inputs._replace(ids=ids)
        return inputs

    def _features(self, h) -> np.ndarray:
        if not isinstance(h, np.ndarray) or h.ndim != 2 or h.shape[1] != self.config.D:
            raise ValueError(f"the backbone must return features h of shape (B, D) with D={self.config.D}; "
                             f"got {getattr(h, 'shape', type(h).__name__)}")
        return h

    def _self_mask(self, ids, B: int):
        """(B, 1, 1 + N_r) boolean: a sample may not read queue rows holding its own id (exclude_self)."""
        if not self.config.exclude_self or ids is None:
            return None
        if ids.shape != (B,):
            raise ValueError(f"ids must have shape (B,) = ({B},); got {ids.shape}")
        allowed = self.queue_ids[None, :] != ids[:, None]                           # (B, N_r)
        return np.concatenate([np.ones((B, 1), dtype=bool), allowed], axis=1)[:, None, :]

    def _dropout(self, dropout, B: int):
        if dropout is None:
            return None, None
        cfg, F = self.config, self.config.ff_mult * self.config.Dc
        if not isinstance(dropout, HMADropout):
            raise ValueError(f"dropout must be an HMADropout (see hma_dropout); got {type(dropout).__name__}")
        for part, used, shape in (("block_r", cfg.rmem, (B, 1)), ("block_a", cfg.block_a, (1, B))):
            masks = getattr(dropout, part)
            if used and masks is not None and (np.shape(masks.attn) != shape + (cfg.Dc,) or np.shape(
                    masks.hidden) != shape + (F,) or np.shape(masks.out) != shape + (cfg.Dc,)):
                raise ValueError(f"dropout.{part} must hold multipliers of shapes {shape + (cfg.Dc,)} and "
                                 f"{shape + (F,)}; got {np.shape(masks.attn)} and {np.shape(masks.hidden)}")
        return dropout.block_r, dropout.block_a

    # -- forward and backward
    def forward(self, inputs):
        """HMA-1 .. HMA-7, reading the queue as it is now; nothing is written. Returns logits (B, K_c)
        and the cache for backward."""
        inputs = self._check(inputs)
        cfg, params = self.config, dict(self.params)
        h, backbone_cache = self._backbone(params).forward(inputs.X)              # (B, D)  HMA-1
        h = self._features(h)
        B = h.shape[0]
        if cfg.plain:
            a = np.maximum(h, 0.0)                                                 # the reference's plain path
            logits = a @ params["classifier.W"] + params["classifier.b"]
            return logits, HMACache(backbone_cache, h, (a,), None, None, None, params)
        drop_r, drop_a = self._dropout(inputs.dropout, B)
        E_lab = params["E_lab"]
        c0 = np.concatenate([h, np.broadcast_to(E_lab[cfg.K_c], (B, cfg.L_h))], axis=1)   # (B, Dc)  HMA-2
        c1, cache_r = c0, None
        if cfg.rmem:                                                               # HMA-3, HMA-4
            out, cache_r = mab_forward(c0[:, None], c0[:, None], strip_prefix("block_r", params), cfg.heads,
                                       cfg.score_scale, Y_shared=self.queue,
                                       mask=self._self_mask(inputs.ids, B), dropout=drop_r)
            c1 = out[:, 0]                                                         # (B, Dc)
        c2, cache_a = c1, None
        if cfg.block_a:
            G_hat = None
            if cfg.m > 0:                                                          # HMA-5
                G_hat = np.concatenate([params["G"], E_lab[cfg.token_class]], axis=1)   # (m K_c, Dc)
            out, cache_a = mab_forward(c1[None], c1[None] if cfg.abd else None,    # HMA-6: the batch is ONE set
                                       strip_prefix("block_a", params), cfg.heads, cfg.score_scale,
                                       Y_shared=G_hat, dropout=drop_a)
            c2 = out[0]                                                            # (B, Dc)
        logits = c2[:, cfg.logit_slice] @ params["classifier.W"] + params["classifier.b"]   # HMA-7
        return logits, HMACache(backbone_cache, h, (c0, c1, c2), cache_r, cache_a, self.queue, params)

    def backward(self, dlogits, cache: HMACache) -> dict:
        """Gradients of every parameter (keys of model.params) from dlogits (B, K_c). The queue, the
        momentum encoder and the ids are constants: nothing flows to them."""
        cfg, params = self.config, cache.params
        B = cache.h.shape[0]
        dlogits = as_float_array("dlogits", dlogits)
        if dlogits.shape != (B, cfg.K_c):
            raise ValueError(f"dlogits must have the logits' shape (B, K_c) = {(B, cfg.K_c)}; got {dlogits.shape}")
        grads = {}
        if cfg.plain:
            (a,) = cache.c
            grads["classifier.W"], grads["classifier.b"] = a.T @ dlogits, dlogits.sum(axis=0)
            dh = (dlogits @ params["classifier.W"].T) * (cache.h > 0)
        else:
            c0, c1, c2 = cache.c
            grads["classifier.W"] = c2[:, cfg.logit_slice].T @ dlogits             # 7.
            grads["classifier.b"] = dlogits.sum(axis=0)
            dc = np.zeros_like(c2)
            dc[:, cfg.logit_slice] = dlogits @ params["classifier.W"].T            # (B, Dc)
            dE_lab = np.zeros_like(params["E_lab"])
            if cfg.block_a:                                                        # 6.
                dX, dY, dG_hat, block_grads = mab_backward(dc[None], cache.block_a)
                dc = dX[0] + (dY[0] if cfg.abd else 0.0)      # every c_b is a query AND a key of block A
                grads.update(with_prefix("block_a", block_grads))
                if cfg.m > 0:                                                      # 5.
                    grads["G"] = dG_hat[:, :cfg.D]
                    np.add.at(dE_lab, cfg.token_class, dG_hat[:, cfg.D:])          # m tokens share a class row
            if cfg.rmem:                                                           # 4.-3.
                dX, dY, _, block_grads = mab_backward(dc[:, None], cache.block_r)  # the queue's gradient: dropped
                dc = dX[:, 0] + dY[:, 0]                      # c_b is block R's query and its first key
                grads.update(with_prefix("block_r", block_grads))
            dE_lab[cfg.K_c] += dc[:, cfg.D:].sum(axis=0)                           # 2. all B queries share the row
            grads["E_lab"] = dE_lab
            dh = dc[:, :cfg.D]
        grads.update(with_prefix("backbone", self._backbone(params).backward(dh, cache.backbone)))   # 1.
        return {name: grads[name] for name in self.params}

    def forward_autodiff(self, tparams: Mapping[str, ad.Tensor], inputs) -> ad.Tensor:
        """Autodiff twin of forward: logits (B, K_c) as a Tensor. The queue enters as a constant."""
        inputs = self._check(inputs)
        cfg = self.config
        h = self._backbone(self.params).forward_autodiff(strip_prefix("backbone", tparams), inputs.X)  # HMA-1
        B = h.shape[0]
        if cfg.plain:
            return ad.matmul(ad.relu(h), tparams["classifier.W"]) + tparams["classifier.b"]
        drop_r, drop_a = self._dropout(inputs.dropout, B)
        E_lab = tparams["E_lab"]
        unknown = ad.broadcast_to(ad.reshape(E_lab[cfg.K_c], (1, cfg.L_h)), (B, cfg.L_h))
        c = ad.concatenate([h, unknown], axis=1)                                   # HMA-2
        if cfg.rmem:
            c3 = ad.reshape(c, (B, 1, cfg.Dc))
            c = mab_autodiff(c3, c3, strip_prefix("block_r", tparams), cfg.heads, cfg.score_scale,   # HMA-3, 4
                             Y_shared=ad.Tensor(self.queue), mask=self._self_mask(inputs.ids, B), dropout=drop_r)
            c = ad.reshape(c, (B, cfg.Dc))
        if cfg.block_a:
            G_hat = None
            if cfg.m > 0:
                G_hat = ad.concatenate([tparams["G"], E_lab[cfg.token_class]], axis=1)   # HMA-5
            c1 = ad.reshape(c, (1, B, cfg.Dc))
            c = ad.reshape(mab_autodiff(c1, c1 if cfg.abd else None, strip_prefix("block_a", tparams), cfg.heads,
                                        cfg.score_scale, Y_shared=G_hat, dropout=drop_a), (B, cfg.Dc))  # HMA-6
        return ad.matmul(c[:, cfg.logit_slice], tparams["classifier.W"]) + tparams["classifier.b"]   # HMA-7

    # -- the memory write
    def write_memory(self, inputs, labels) -> None:
        """HMA-8 .. HMA-10, under no gradient: EMA of the encoder, momentum features, enqueue.

        Call it after the step's forward (training_forward does), before the optimiser changes the
        parameters: theta in HMA-8 and E_lab in HMA-9 are the values that forward used. Does nothing
        when rmem is off. The queue array is replaced, not written in place.
        """
        cfg = self.config
        if not cfg.rmem:
            return
        inputs = self._check(inputs)
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or np.any(labels < 0) or np.any(labels >= cfg.K_c):
            raise ValueError(f"labels must be a (B,) integer array of classes in [0, K_c) = [0, {cfg.K_c}); "
                             f"got shape {labels.shape}, dtype {labels.dtype}")
        B = labels.shape[0]
        if B > cfg.N_r:
            raise ValueError(f"a training batch of B={B} is larger than the queue (N_r={cfg.N_r}): it would "
                             "overwrite its own rows; use N_r >= B (the reference needs N_r divisible by B)")
        if cfg.exclude_self and (inputs.ids is None or inputs.ids.shape != (B,)):
            raise ValueError(f"exclude_self needs the samples' ids (B,) = ({B},) in HMAInputs.ids when writing")
        theta = strip_prefix("backbone", self.params)
        self.momentum_params = {name: cfg.mu * xi + (1.0 - cfg.mu) * theta[name]    # HMA-8
                                for name, xi in self.momentum_params.items()}
        self.momentum_encoder.params = dict(self.momentum_params)
        features, _ = self.momentum_encoder.forward(inputs.X)                     # HMA-9
        features = self._features(features)
        if features.shape[0] != B:
            raise ValueError(f"labels must have one entry per sample: B={features.shape[0]}; got {B}")
        z = np.concatenate([features, self.params["E_lab"][labels]], axis=1)      # (B, Dc)
        rows = (self.queue_ptr + np.arange(B)) % cfg.N_r                          # HMA-10, wrapping around
        queue = self.queue.copy()
        queue[rows] = z
        queue_ids = self.queue_ids.copy()
        queue_ids[rows] = -1 if inputs.ids is None else inputs.ids
        self.queue, self.queue_ids = queue, queue_ids
        self.queue_ptr = int((self.queue_ptr + B) % cfg.N_r)

    def training_forward(self, inputs, labels):
        """One training step's forward: logits and cache from the queue as it was, THEN the write
        (the order of the reference: block R reads the old queue). Returns (logits, cache)."""
        logits, cache = self.forward(inputs)
        self.write_memory(inputs, labels)
        return logits, cache


# ----------------------------------------------------------------- batch dependence (B8, B9.6)
class BatchDependence(NamedTuple):
    logit_gap: np.ndarray    # (B,) max |logits in the batch - logits alone| per sample
    flipped: np.ndarray      # (B,) bool, the predicted class changes


def _select(inputs, index: np.ndarray):
    if isinstance(inputs, HMAInputs):
        ids = None if inputs.ids is None else np.asarray(inputs.ids)[index]
        return HMAInputs(_select(inputs.X, index), ids, None)
    if isinstance(inputs, GraphBatch):
        return select_graphs(inputs, index)
    return np.asarray(inputs)[index]


def batch_dependence(model: HMA, inputs, select: Callable | None = None) -> BatchDependence:
    """How much each sample's prediction depends on the rest of its batch: the logits of the batch
    against the logits of each sample evaluated alone (a batch of one).

    Args:
        model: an HMA (nothing is written).
        inputs: a batch X (array or GraphBatch) or HMAInputs (dropout is ignored).
        select: select(inputs, index) -> the sub-batch `index`; default: rows of an array, graphs of
            a GraphBatch.
    Returns:
        BatchDependence(logit_gap (B,), flipped (B,)). With abd=False the gap is rounding only.
    """
    select = _select if select is None else select
    if isinstance(inputs, HMAInputs):
        inputs = inputs._replace(dropout=None)
    logits, _ = model.forward(inputs)
    alone = np.stack([model.forward(select(inputs, np.array([b])))[0][0]        # one forward per sample:
                      for b in range(logits.shape[0])])                         # that is the measurement
    return BatchDependence(np.max(np.abs(logits - alone), axis=1), logits.argmax(1) != alone.argmax(1))


def _count(inputs) -> int:
    X = inputs.X if isinstance(inputs, HMAInputs) else inputs
    return X.B if isinstance(X, GraphBatch) else len(X)


def predict_in_batches(model: HMA, inputs, batch_size: int, select: Callable | None = None) -> np.ndarray:
    """Logits (N, K_c) of N samples evaluated in consecutive batches of batch_size, in the given
    order (the last batch may be smaller); nothing is written. With abd on, the result depends on
    batch_size and on the order (B10): demos evaluate with one fixed batch size and order."""
    check_int("batch_size", batch_size, 1)
    select = _select if select is None else select
    N = _count(inputs)
    return np.concatenate([model.forward(select(inputs, np.arange(start, min(start + batch_size, N))))[0]
                           for start in range(0, N, batch_size)])


def attention_maps(cache: HMACache) -> dict:
    """The attention weights of a forward, for plots: {"block_r": (B, H, 1 + N_r) over [itself ;
    queue rows], "block_a": (B, H, n_keys) over [batch rows (if abd) ; memory tokens]}."""
    maps = {}
    if cache.block_r is not None:
        maps["block_r"] = cache.block_r.attn.A[:, :, 0, :]
    if cache.block_a is not None:
        maps["block_a"] = cache.block_a.attn.A[0].transpose(1, 0, 2)
    return maps
