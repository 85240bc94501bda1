"""The MNM write rule without a controller (spec specs/titans_mnm.md B6.2, task M1): a meta-learned
one-shot writer. An episode writes P key/value pairs into the memory network f_phi one pair per
step with MNM-p (eq. (B6)) or MNM-g (eq. (B5)), then reads every key with the final weights (or
any other query keys given: the dictionary-inference task M3 reads keys never written). What
is trained is only what the write rule itself owns: the initial weights phi_0, the MNM-p target map
and the update rate beta. This isolates the write rule, so the two writers can be compared.

Shapes: P pairs (the steps of an episode), Q query keys read at the end (Q = P, the written keys,
unless queries are given), B batch, d key/value width, h hidden width, L depth.
Equations (per episode; mnm_memory for the primitives):
    phi_0 = mem0 (one copy per batch element)
    beta = beta_max sigma(b)                                  one scalar for every step and episode
    for t = 1 .. P:  phi_t = write(phi_{t-1}; k_t, v_t, beta)                    (B5) or (B6)
                     L^meta_t = 1/d ||f_{phi_t}(k_t) - v_t||^2                    (B9), Nh = 1
    reads:  r_i = f_{phi_P}(q_i), i = 1 .. Q, q = the keys by default           (B4)
Inputs: (keys, values), each (P, B, d), or (keys, values, queries) with queries (Q, B, d).
Outputs: (reads (Q, B, d), meta (P, B)); the M1 loss is mean((reads - V)^2) + mean(meta).
Parameters (model.params, in this order):
    mem0.W1 (h, d), ..., mem0.WL (d, h)     phi_0, (out, in) layout (z W^T), U(+-1/sqrt(n_{l-1}))
    target.W (d, S), target.b (S,)          MNM-p only (mnm_interface.mnm_targets_forward),
                                            W U(+-1/sqrt(d)), b = 0
    beta.b (1,)                             beta = beta_max sigma(beta.b), 0 at the start (beta = beta_max / 2)
Both engines: oneshot_forward / oneshot_backward (the MNM-g writes back-propagated to second
order) and oneshot_autodiff (MNM-g's inner gradient by create_graph, or the closed form).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem import init
from minimem.checks import check_int
from minimem.memory.mnm_interface import mnm_targets_autodiff, mnm_targets_backward, mnm_targets_forward
from minimem.memory.mnm_memory import (
    mnm_mem_autodiff, mnm_mem_backward, mnm_mem_forward, mnm_recon_autodiff, mnm_recon_backward,
    mnm_recon_forward, mnm_write_grad_autodiff, mnm_write_grad_backward, mnm_write_grad_forward,
    mnm_write_local_autodiff, mnm_write_local_backward, mnm_write_local_forward,
)
from minimem.nn.linear import as_float_array, check_finite, check_params

WRITERS = ("local", "grad")
OUTPUT_TARGETS = ("learned", "value")


@dataclass(frozen=True)
class OneShotConfig:
    """Sizes and choices of the one-shot writer (defaults: spec B6.2, M1).

    d: key/value width. h: hidden width. L: depth. writer: "local" (MNM-p) | "grad" (MNM-g).
    beta_max: bound of the rate beta = beta_max sigma(b). output_target: "learned" | "value".
    dtype: "float64" | "float32".
    """
    d: int = 16
    h: int = 32
    L: int = 3
    writer: str = "local"
    beta_max: float = 1.0
    output_target: str = "learned"
    dtype: str = "float64"

    def __post_init__(self) -> None:
        for name in ("d", "h", "L"):
            check_int(f"OneShotConfig.{name}", getattr(self, name), 1)
        if self.writer not in WRITERS:
            raise ValueError(f"OneShotConfig.writer must be one of {WRITERS}; got {self.writer!r}")
        if self.output_target not in OUTPUT_TARGETS:
            raise ValueError(f"OneShotConfig.output_target must be one of {OUTPUT_TARGETS}; "
                             f"got {self.output_target!r}")
        if isinstance(self.beta_max, bool) or not isinstance(self.beta_max, (int, float, np.floating)) \
                or not (np.isfinite(self.beta_max) and self.beta_max > 0):
            raise ValueError(f"OneShotConfig.beta_max must be a positive number; got {self.beta_max!r}")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"OneShotConfig.dtype must be 'float64' or 'float32'; got {self.dtype!r}")

    @property
    def widths(self) -> tuple[int, ...]:
        """(n_0, ..., n_L) = (d, h, ..., h, d)."""
        return (self.d,) + (self.h,) * (self.L - 1) + (self.d,)

    @property
    def target_widths(self) -> tuple[int, ...]:
        widths = self.widths[1:]
        return widths if self.output_target == "learned" else widths[:-1]


def oneshot_param_shapes(config: OneShotConfig) -> dict[str, tuple]:
    """Parameter names and shapes, in the order of model.params."""
    n = config.widths
    shapes = {f"mem0.W{l}": (n[l], n[l - 1]) for l in range(1, config.L + 1)}
    S = sum(config.target_widths)
    if config.writer == "local" and S > 0:
        shapes.update({"target.W": (config.d, S), "target.b": (S,)})
    shapes["beta.b"] = (1,)
    return shapes


def _check(params: Mapping, inputs, config: OneShotConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.dtype]:
    """(keys, values, queries (the keys if none are given), dtype), validated."""
    check_params(params, oneshot_param_shapes(config))
    dtype = np.result_type(*[np.asarray(p).dtype for p in params.values()])
    for name, value in params.items():
        check_finite(f"parameter {name}", np.asarray(value))
    if not isinstance(inputs, (tuple, list)) or len(inputs) not in (2, 3):
        raise ValueError("inputs must be (keys, values), each (P, B, d), or (keys, values, queries (Q, B, d))")
    keys, values = (as_float_array(n, a) for n, a in zip(("keys", "values"), inputs[:2]))
    if keys.ndim != 3 or keys.shape[2] != config.d or keys.shape[0] == 0 or keys.shape[1] == 0:
        raise ValueError(f"keys must have shape (P, B, d) with P, B >= 1 and d={config.d}; got {keys.shape}")
    if values.shape != keys.shape:
        raise ValueError(f"values must have the keys' shape (P, B, d) = {keys.shape}; got {values.shape}")
    check_finite("keys", keys)
    check_finite("values", values)
    queries = keys
    if len(inputs) == 3:
        queries = as_float_array("queries", inputs[2])
        if queries.ndim != 3 or queries.shape[0] == 0 or queries.shape[1:] != keys.shape[1:]:
            raise ValueError(f"queries must have shape (Q, B, d) with Q >= 1 and (B, d) = {keys.shape[1:]}; "
                             f"got {queries.shape}")
        check_finite("queries", queries)
    return keys.astype(dtype, copy=False), values.astype(dtype, copy=False), queries.astype(dtype, copy=False), dtype


def _sigmoid(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


class OneShotCache(NamedTuple):
    config: OneShotConfig
    shapes: dict         # parameter name -> shape
    sigma: float         # sigma(beta.b)
    writes: list         # P write caches
    targets: list        # P target-map caches (MNM-p) or Nones
    metas: list          # P ReconCache
    read: object         # MemCache of the reads through phi_P


def oneshot_forward(inputs, params: Mapping[str, np.ndarray], config: OneShotConfig):
    """Write P pairs one per step, then read every query key (module docstring).

    Args:
        inputs: (keys, values), each (P, B, d), or (keys, values, queries (Q, B, d)).
        params: oneshot_param_shapes(config).
    Returns:
        ((reads (Q, B, d), meta (P, B)), cache); Q = P and the queries are the keys by default.
    """
    keys, values, queries, dtype = _check(params, inputs, config)
    P, B, _ = keys.shape
    phi = tuple(np.broadcast_to(params[f"mem0.W{l}"], (B,) + params[f"mem0.W{l}"].shape).copy()
                for l in range(1, config.L + 1))                         # (B, n_l, n_{l-1})
    sigma = _sigmoid(params["beta.b"])[0]
    beta = np.full(B, config.beta_max * sigma, dtype=dtype)            # (B,)
    meta = np.empty((P, B), dtype=dtype)
    writes, targets_caches, metas = [], [], []
    for t in range(P):
        k, v = keys[t][:, None, :], values[t][:, None, :]              # (B, 1, d): Nh = 1
        targets_cache = None
        if config.writer == "grad":
            phi, write = mnm_write_grad_forward(phi, k, v, beta)       # eq. (B5)
        else:
            targets, targets_cache = mnm_targets_forward(v, params.get("target.W"), params.get("target.b"),
                                                         config.target_widths, config.output_target)
            phi, write = mnm_write_local_forward(phi, k, targets, beta)   # eq. (B6)
        meta[t], meta_cache = mnm_recon_forward(phi, k, v)             # eq. (B9)
        writes.append(write)
        targets_caches.append(targets_cache)
        metas.append(meta_cache)
    reads, read = mnm_mem_forward(phi, np.swapaxes(queries, 0, 1))     # (B, Q, d): every query at once
    shapes = {name: np.shape(p) for name, p in params.items()}
    cache = OneShotCache(config, shapes, sigma, writes, targets_caches, metas, read)
    return (np.swapaxes(reads, 0, 1), meta), cache


def oneshot_backward(doutputs, cache: OneShotCache) -> dict[str, np.ndarray]:
    """Adjoint of oneshot_forward: doutputs = (dreads (Q, B, d), dmeta (P, B)). The gradient w.r.t.
    phi_t is carried from write t + 1 back to write t; the inputs are data (no gradient)."""
    config = cache.config
    dreads, dmeta = (as_float_array(n, a) for n, a in zip(("dreads", "dmeta"), doutputs))
    P = len(cache.writes)
    B, Q = cache.read.Zs[0].shape[:2]                                   # Z_0 = the queries (B, Q, d)
    if dreads.shape != (Q, B, config.d) or dmeta.shape != (P, B):
        raise ValueError(f"doutputs must have shapes (Q, B, d) = {(Q, B, config.d)} and (P, B) = {(P, B)}; "
                         f"got {dreads.shape} and {dmeta.shape}")
    grads = {name: np.zeros(shape, dtype=dreads.dtype) for name, shape in cache.shapes.items()}
    dphi, _ = mnm_mem_backward([None] * (config.L - 1) + [np.swapaxes(dreads, 0, 1)], cache.read)
    dbeta = np.zeros(B, dtype=dreads.dtype)
    for t in reversed(range(P)):
        dphi_meta, _, _ = mnm_recon_backward(dmeta[t], cache.metas[t])
        dphi = tuple(a + b for a, b in zip(dphi, dphi_meta))
        if config.writer == "grad":
            dphi, _, _, dbeta_t = mnm_write_grad_backward(dphi, cache.writes[t])
        else:
            dphi, _, dtargets, dbeta_t = mnm_write_local_backward(dphi, cache.writes[t])
            _, target_grads = mnm_targets_backward(dtargets, cache.targets[t], config.output_target)
            for name, value in target_grads.items():
                grads[name] += value
        dbeta += dbeta_t
    for l, dW in enumerate(dphi, start=1):
        grads[f"mem0.W{l}"] += dW.sum(axis=0)                          # phi_0 is shared by the batch
    grads["beta.b"] += np.sum(dbeta) * config.beta_max * cache.sigma * (1.0 - cache.sigma)
    return grads


def oneshot_autodiff(tparams: Mapping[str, ad.Tensor], inputs, config: OneShotConfig,
                     inner_grad: str = "tape") -> tuple[ad.Tensor, ad.Tensor]:
    """Autodiff twin of oneshot_forward: (reads (Q, B, d), meta (P, B)) as Tensors."""
    tparams = {name: ad.as_tensor(p) for name, p in tparams.items()}
    keys, values, queries, _ = _check({n: t.data for n, t in tparams.items()}, inputs, config)
    P, B, _ = keys.shape
    phi = tuple(ad.broadcast_to(tparams[f"mem0.W{l}"], (B,) + tparams[f"mem0.W{l}"].shape)
                for l in range(1, config.L + 1))
    beta = ad.broadcast_to(config.beta_max * ad.sigmoid(tparams["beta.b"]), (B,))
    metas = []
    for t in range(P):
        k, v = keys[t][:, None, :], values[t][:, None, :]
        if config.writer == "grad":
            phi = mnm_write_grad_autodiff(phi, k, v, beta, method=inner_grad)
        else:
            targets = mnm_targets_autodiff(ad.Tensor(v), tparams.get("target.W"), tparams.get("target.b"),
                                           config.target_widths, config.output_target)
            phi = mnm_write_local_autodiff(phi, k, targets, beta)
        metas.append(mnm_recon_autodiff(phi, k, v))
    reads = mnm_mem_autodiff(phi, np.swapaxes(queries, 0, 1))          # (B, Q, d)
    return ad.swapaxes(reads, 0, 1), ad.stack(metas, axis=0)


def oneshot_init(rng: np.random.Generator, config: OneShotConfig) -> dict:
    """phi_0 U(+-1/sqrt(n_{l-1})) (reference init), target.W U(+-1/sqrt(d)) with a zero bias, beta.b = 0
    (spec B6.2, M1)."""
    params = {}
    for name, shape in oneshot_param_shapes(config).items():
        if name.startswith("mem0."):
            params[name] = init.uniform(rng, shape, 1.0 / np.sqrt(shape[1]), dtype=config.dtype)
        elif name == "target.W":
            params[name] = init.uniform(rng, shape, 1.0 / np.sqrt(config.d), dtype=config.dtype)
        else:
            params[name] = init.zeros(rng, shape, dtype=config.dtype)
    return params


class MNMOneShot:
    """The one-shot writer as a model: inputs (keys, values), each (P, B, d), and optionally queries
    (Q, B, d) -> (reads (Q, B, d), meta (P, B)); without queries the written keys are read (Q = P).
    Follows the model protocol (params, forward, backward, forward_autodiff)."""

    def __init__(self, config: OneShotConfig, rng: np.random.Generator | None = None):
        if not isinstance(config, OneShotConfig):
            raise ValueError(f"config must be a OneShotConfig; got {type(config).__name__}")
        self.config = config
        self.params = oneshot_init(np.random.default_rng(0) if rng is None else rng, config)

    def forward(self, inputs):
        return oneshot_forward(inputs, self.params, self.config)

    def backward(self, doutputs, cache: OneShotCache) -> dict:
        return oneshot_backward(doutputs, cache)

    def forward_autodiff(self, tparams: Mapping[str, ad.Tensor], inputs,
                         inner_grad: str = "tape") -> tuple[ad.Tensor, ad.Tensor]:
        return oneshot_autodiff(tparams, inputs, self.config, inner_grad)


def make_episodes(rng: np.random.Generator, P: int, B: int, d: int, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """M1 episodes: keys k = 0.5 sqrt(d) g / |g| with g ~ N(0, I_d), values U(-1, 1)^d; each (P, B, d)."""
    g = rng.standard_normal((P, B, d))
    keys = 0.5 * np.sqrt(d) * g / np.linalg.norm(g, axis=-1, keepdims=True)
    values = rng.uniform(-1.0, 1.0, (P, B, d))
    return keys.astype(dtype), values.astype(dtype)


def nearest_value_accuracy(reads: np.ndarray, values: np.ndarray) -> float:
    """Fraction of keys whose read-out has its largest dot product with its own value among the
    episode's P values (argmax over j of r_i . v_j == i). reads, values: (P, B, d)."""
    scores = np.einsum("pbd,qbd->bpq", reads, values)                 # (B, P, P)
    return float(np.mean(np.argmax(scores, axis=-1) == np.arange(reads.shape[0])))
