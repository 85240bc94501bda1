"""NAM few-shot head (Nam & Seo, 2023, arXiv:2302.09422; spec specs/nam_hma.md A5) and the cosine
classifier baseline it is compared with (Gidaris & Komodakis, CVPR 2018, "feature averaging").

The classifier weight matrix is a NAM memory M (C x F, "value x key", C = K_b + N classes): keys are
unit feature vectors, values are one-hot labels over the joint K_b base + N novel classes. Learning a
novel class from its shots is a NAM write per shot; classifying a query is a cosine read of every row.
The erase term also removes each shot's direction from the base rows, which is what lowers the base
false positives on novel queries (A5.5).

Shapes: B episodes, S = N*K support shots, Q queries, F feature width, K_b base classes, N novel
classes (ways), C = K_b + N, E eraser hidden width.
Equations (labels are the spec's; the paper's numbering could not be consulted):
    (FS-1)  k_i = unit(f(x_i)),  y_i one-hot over C at K_b + label_i                  (B, S, F), (B, S, C)
    (FS-2)  e_i = sigmoid(eraser(k_i)),  eraser: F -> E (ReLU) -> 1                    (B, S)
    (FS-3)  p_w,i = e_i, p_e,i = e_i  (the reference computes p_w with the ERASER net; its `writer`
            net is created but unused. Reproduced; erase=False sets p_e = 0 as an ablation)
    M_0 = [unit(W_b); 0_N]                                                             (B, C, F)
    sequential (canonical, A5.3 / A10):  M_i = WR(M_{i-1}, k_i, y_i, p_w,i, p_e,i)     (NAM-2)
            computed in closed form, M_S = M_0 + Delta^T K with the written columns Delta from one
            unit lower-triangular solve over the shots (sequential_write_forward)
    batched_reference (FS-4, FS-5):      M = M_0 + sum_i (p_w,i y_i - p_e,i M_0 k_i) k_i^T
            (one episode per batch row; the reference's mean over the episodes of a mini-batch
            mixes episodes and is a training-time bug, not reproduced)
    (FS-6)  logits[q, c] = s (cos(f(q), M_c) + beta)                                   (B, Q, C)
Baseline (cosine): M = [unit(W_b); phi * mean_{i: y_i = c} k_i] with a learnable diagonal phi.
The feature extractor f is outside the head (frozen in the spec's stage 2): inputs are features.

Parameters (ordered dict, dotted names):
    `base.W` (K_b, F) base class weights (rows normalised in the forward), init N(0, 2/F);
    `scale` (1,) s, init 10;  `bias` (1,) beta, init 0;
    head "nam":    `eraser.layer0.W` (F, E) used as `k @ W`, `eraser.layer0.b` (E,),
                   `eraser.layer1.W` (E, 1), `eraser.layer1.b` (1,);
    head "cosine": `phi` (F,) the diagonal, init 1.
Model protocol: forward(inputs) -> (logits, cache), backward(dlogits, cache) -> grads,
forward_autodiff(tparams, inputs) -> logits Tensor. fewshot_backward also returns the gradients of
the support and query features, for training a backbone through the head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem.checks import check_int
from minimem.memory.nam import (
    nam_write_autodiff, unit_autodiff, unit_backward, unit_forward,
)
from minimem.nn.linear import as_float_array, check_finite, check_params, strip_prefix, with_prefix
from minimem.nn.mlp import mlp_autodiff, mlp_backward, mlp_forward, mlp_init

HEADS = ("nam", "cosine")
MODES = ("sequential", "batched_reference")


# ----------------------------------------------------------------- config and inputs
@dataclass(frozen=True)
class NAMFewShotConfig:
    F: int = 64                   # feature width
    K_b: int = 60                 # base classes
    N: int = 5                    # novel classes (ways)
    E: int = 64                   # eraser hidden width (head "nam")
    head: str = "nam"             # "nam" or "cosine" (the baseline)
    mode: str = "sequential"      # "sequential" (canonical) or "batched_reference" (the code's form)
    erase: bool = True            # False: p_e = 0 (ablation; base rows stay unit(W_b))
    scale_init: float = 10.0
    dtype: str = "float64"

    def __post_init__(self):
        for name in ("F", "K_b", "N", "E"):
            check_int(name, getattr(self, name), 1)
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}; got {self.head!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {self.mode!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64'; got {self.dtype!r}")

    @property
    def C(self) -> int:
        return self.K_b + self.N


class FewShotInputs(NamedTuple):
    support: np.ndarray          # (B, S, F) support features f(x_i)
    support_labels: np.ndarray   # (B, S) int in 0..N-1, every novel class at least once
    query: np.ndarray            # (B, Q, F) query features f(q)


def validate_inputs(config: NAMFewShotConfig, inputs) -> FewShotInputs:
    """Shapes, dtypes, finiteness and labels of the inputs; ValueError naming what was expected."""
    if not isinstance(inputs, tuple) or len(inputs) != 3:
        raise ValueError("inputs must be FewShotInputs(support (B, S, F), support_labels (B, S), query (B, Q, F))")
    support, labels, query = inputs
    support, query = as_float_array("support", support), as_float_array("query", query)
    F, N = config.F, config.N
    if support.ndim != 3 or support.shape[-1] != F or support.shape[1] < 1 or support.shape[0] < 1:
        raise ValueError(f"support must have shape (B, S, F) with S >= 1, F={F}; got {support.shape}")
    B = support.shape[0]
    if query.ndim != 3 or query.shape[0] != B or query.shape[-1] != F or query.shape[1] < 1:
        raise ValueError(f"query must have shape (B, Q, F) = ({B}, Q >= 1, {F}); got {query.shape}")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" or labels.shape != support.shape[:2]:
        raise ValueError(f"support_labels must be an int array of shape (B, S) = {support.shape[:2]}; "
                         f"got {labels.dtype} {labels.shape}")
    if np.any(labels < 0) or np.any(labels >= N):
        raise ValueError(f"support_labels must lie in 0..N-1 = 0..{N - 1}")
    present = np.zeros((B, N), bool)
    present[np.arange(B)[:, None], labels] = True
    if not np.all(present):
        raise ValueError(f"every episode's support must hold at least one shot of each of the N={N} novel classes")
    check_finite("support", support)
    check_finite("query", query)
    return FewShotInputs(support, labels, query)


def _one_hot(labels: np.ndarray, config: NAMFewShotConfig, dtype) -> np.ndarray:
    """y_i over the joint classes: (B, S, C), 1 at K_b + label."""
    return (config.K_b + labels[..., None] == np.arange(config.C)).astype(dtype)


# ----------------------------------------------------------------- sequential (canonical) write
class SequentialWriteCache(NamedTuple):
    M0: np.ndarray       # (C, F) memory before the writes, shared by the B episodes
    k: np.ndarray        # (B, S, F) keys
    y: np.ndarray        # (B, S, C) one-hot values
    p_w: np.ndarray      # (B, S)
    p_e: np.ndarray      # (B, S)
    lower: np.ndarray    # (B, S, S) L[i, j] = k_i . k_j below the diagonal (j < i), 0 elsewhere
    T: np.ndarray        # (B, S, S) I + diag(p_e) L, the unit lower-triangular system matrix
    u: np.ndarray        # (B, S, C) old values M_{i-1} k_i
    delta: np.ndarray    # (B, S, C) written columns p_w,i y_i - p_e,i u_i


def sequential_write_forward(M0, k, y, p_w, p_e):
    """S NAM writes (NAM-2) in a row, M_i = M_{i-1} + delta_i k_i^T with delta_i = p_w,i y_i -
    p_e,i M_{i-1} k_i, in closed form. Every write adds a column along a key, so M_i = M0 +
    sum_{j<=i} delta_j k_j^T and the old value read by write i is
        u_i = M_{i-1} k_i = M0 k_i + sum_{j<i} (k_j . k_i) delta_j.
    Stacking the S writes: (I + diag(p_e) L) Delta = diag(p_w) Y - diag(p_e) K M0^T, with L the
    strictly lower triangle of the Gram matrix K K^T; then M_S = M0 + Delta^T K. The same numbers
    as the loop of nam_write_forward(normalize=False) up to round-off, without S copies of M.

    Args:
        M0: (C, F) memory before the writes, the same for every episode (the head's [unit(W_b); 0]).
        k: (B, S, F) keys, used as given (normalised by the caller); y: (B, S, C) values;
        p_w, p_e: (B, S) write and erase probabilities.
    Returns:
        M: (B, C, F) after the S writes, and the cache for sequential_write_backward.
    """
    S = k.shape[1]
    U0 = k @ M0.T                                                    # (B, S, C)  M0 k_i
    lower = np.tril(k @ k.swapaxes(-1, -2), -1)                      # (B, S, S)  k_i . k_j, j < i
    T = p_e[..., None] * lower                                       # (B, S, S)
    T[:, np.arange(S), np.arange(S)] = 1.0                           # I + diag(p_e) L
    # T is unit lower triangular and, for unit keys, |T_ij| <= 1: LAPACK's pivoting never swaps
    # rows and the solve is plain forward substitution, the writes taken one after another.
    delta = np.linalg.solve(T, p_w[..., None] * y - p_e[..., None] * U0)   # (B, S, C)
    u = U0 + lower @ delta                                           # (B, S, C)  M_{i-1} k_i
    M = M0 + delta.swapaxes(-1, -2) @ k                              # (B, C, F)
    return M, SequentialWriteCache(M0, k, y, p_w, p_e, lower, T, u, delta)


def sequential_write_backward(dM, cache: SequentialWriteCache):
    """Adjoint of sequential_write_forward, with G = dM (B, C, F). Returns (dM0 (C, F) summed over
    the episodes, dk, dy, dp_w, dp_e). The gradient of delta_i collects G k_i and, through the old
    values u_j of the later writes j > i, their erase terms: X = T^-T (K G^T) (back substitution,
    the reverse walk over the shots). Then, per shot,
        dy_i = p_w,i X_i     dp_w,i = y_i . X_i     dp_e,i = -u_i . X_i
    and with du_i = -p_e,i X_i the gradient of the old value (u_i = M0 k_i + sum_{j<i} L_ij delta_j),
        dM0 = sum_b (G + du^T K)     dL_ij = du_i . delta_j (j < i)
        dk = Delta G + du M0 + (dL + dL^T) K    (G^T delta_i, M0^T du_i, the Gram matrix's two uses).
    """
    M0, k, y, p_w, p_e, lower, T, u, delta = cache
    X = np.linalg.solve(T.swapaxes(-1, -2), k @ dM.swapaxes(-1, -2))   # (B, S, C)  total d delta
    dy = p_w[..., None] * X
    dp_w = np.sum(y * X, axis=-1)                                    # (B, S)
    dp_e = -np.sum(u * X, axis=-1)
    du = -p_e[..., None] * X                                         # (B, S, C)
    dlower = np.tril(du @ delta.swapaxes(-1, -2), -1)                # (B, S, S)
    dk = delta @ dM + du @ M0 + (dlower + dlower.swapaxes(-1, -2)) @ k   # (B, S, F)
    B, S, C = du.shape
    dM0 = dM.sum(axis=0) + du.reshape(B * S, C).T @ k.reshape(B * S, -1)   # (C, F)
    return dM0, dk, dy, dp_w, dp_e


# ----------------------------------------------------------------- batched (reference) write
class BatchedWriteCache(NamedTuple):
    M0: np.ndarray       # (B, C, F) memory before the writes
    k: np.ndarray        # (B, S, F) unit keys
    y: np.ndarray        # (B, S, C) one-hot values
    p_w: np.ndarray      # (B, S)
    p_e: np.ndarray      # (B, S)
    u: np.ndarray        # (B, S, C) old values M0 k_i
    delta: np.ndarray    # (B, S, C) p_w y - p_e u


def batched_write_forward(M0, k, y, p_w, p_e):
    """(FS-4)-(FS-5), the reference's parallel NAM write of a whole support set:
    M = M0 + sum_i (p_w,i y_i - p_e,i M0 k_i) k_i^T. Equals the sequential writes only when the keys
    are orthogonal; with many similar shots and e ~ 1 it over-erases (I - sum e k k^T can turn negative).

    Args:
        M0: (B, C, F) memory; k: (B, S, F) keys (used as given, normalised by the caller);
        y: (B, S, C) values; p_w, p_e: (B, S) write and erase probabilities.
    Returns:
        M: (B, C, F), and the cache for batched_write_backward.
    """
    u = np.einsum("bcf,bsf->bsc", M0, k)                             # (B, S, C)  M0 k_i
    delta = p_w[..., None] * y - p_e[..., None] * u                  # (B, S, C)
    M = M0 + np.einsum("bsc,bsf->bcf", delta, k)                     # (B, C, F)
    return M, BatchedWriteCache(M0, k, y, p_w, p_e, u, delta)


def batched_write_backward(dM, cache: BatchedWriteCache):
    """Adjoint of batched_write_forward, with G = dM. Returns (dM0, dk, dy, dp_w, dp_e):
        dM0 = G - sum_i p_e,i (G k_i) k_i^T     dy_i = p_w,i G k_i
        dp_w,i = y_i . G k_i                    dp_e,i = -u_i . G k_i
        dk_i = G^T delta_i - p_e,i M0^T G k_i
    """
    M0, k, y, p_w, p_e, u, delta = cache
    Gk = np.einsum("bcf,bsf->bsc", dM, k)                            # (B, S, C)  G k_i
    dM0 = dM - np.einsum("bs,bsc,bsf->bcf", p_e, Gk, k)              # (B, C, F)
    dy = p_w[..., None] * Gk
    dp_w = np.sum(y * Gk, axis=-1)                                   # (B, S)
    dp_e = -np.sum(u * Gk, axis=-1)
    dk = np.einsum("bcf,bsc->bsf", dM, delta) - p_e[..., None] * np.einsum("bcf,bsc->bsf", M0, Gk)
    return dM0, dk, dy, dp_w, dp_e


def batched_write_autodiff(M0, k, y, p_w, p_e) -> ad.Tensor:
    """Autodiff twin of batched_write_forward."""
    B, S = p_w.shape
    u = ad.einsum("bcf,bsf->bsc", M0, k)
    delta = ad.reshape(p_w, (B, S, 1)) * y - ad.reshape(p_e, (B, S, 1)) * u
    return M0 + ad.einsum("bsc,bsf->bcf", delta, k)


# ----------------------------------------------------------------- cosine logits, (FS-6)
class CosineCache(NamedTuple):
    rows: object         # UnitCache of the memory rows
    q: object            # UnitCache of the queries
    cos: np.ndarray      # (B, Q, C)
    scale: np.ndarray    # (1,) s
    bias: np.ndarray     # (1,) beta


def cosine_logits_forward(M, query, scale, bias):
    """(FS-6): logits = s (cos(query, M_c) + beta) for every row c of M.

    Args:
        M: (B, C, F) classifier rows; query: (B, Q, F); scale, bias: (1,).
    Returns:
        logits (B, Q, C), and the cache for cosine_logits_backward.
    """
    rows, c_rows = unit_forward(M)                                   # (B, C, F)
    q_hat, c_q = unit_forward(query)                                 # (B, Q, F)
    cos = q_hat @ rows.swapaxes(-1, -2)                              # (B, Q, C)
    return scale * (cos + bias), CosineCache(c_rows, c_q, cos, scale, bias)


def cosine_logits_backward(dlogits, cache: CosineCache):
    """Adjoint of (FS-6). Returns (dM, dquery, dscale, dbias)."""
    c_rows, c_q, cos, scale, bias = cache
    dscale = np.sum(dlogits * (cos + bias)).reshape(1)               # (1,)
    dbias = scale * np.sum(dlogits)                                  # (1,)
    dcos = scale * dlogits                                           # (B, Q, C)
    drows = dcos.swapaxes(-1, -2) @ c_q.x_hat                        # (B, C, F)
    dq_hat = dcos @ c_rows.x_hat                                     # (B, Q, F)
    return unit_backward(drows, c_rows), unit_backward(dq_hat, c_q), dscale, dbias


# ----------------------------------------------------------------- the head, forward / backward
class FewShotCache(NamedTuple):
    config: NAMFewShotConfig
    params: dict
    support: object      # UnitCache of the support features (k_i = support.x_hat)
    base: object         # UnitCache of base.W
    y: np.ndarray        # (B, S, C) one-hot values
    eraser: object       # (MLPCache, e (B, S)) or None for the cosine head
    write: object        # SequentialWriteCache, BatchedWriteCache, or the cosine's (mean, counts)
    cosine: CosineCache


def fewshot_forward(params: Mapping[str, np.ndarray], inputs, config: NAMFewShotConfig):
    """The whole head: (FS-1)-(FS-6) for head "nam", the feature-averaging baseline for "cosine".

    Args:
        params: the parameters of the module docstring.
        inputs: FewShotInputs(support (B, S, F), support_labels (B, S), query (B, Q, F)).
        config: NAMFewShotConfig.
    Returns:
        logits (B, Q, C), columns 0..K_b-1 base classes, K_b..C-1 novel labels 0..N-1; and the cache.
    """
    support, labels, query = validate_inputs(config, inputs)
    B = support.shape[0]
    k, c_support = unit_forward(support)                             # (B, S, F)  (FS-1)
    y = _one_hot(labels, config, k.dtype)                            # (B, S, C)
    Wb_hat, c_base = unit_forward(params["base.W"])                  # (K_b, F)
    if config.head == "nam":
        h, c_mlp = mlp_forward(k, strip_prefix("eraser", params), activation="relu")   # (B, S, 1)
        e = 1.0 / (1.0 + np.exp(-h[..., 0]))                         # (B, S)  (FS-2)
        p_w, p_e = e, (e if config.erase else np.zeros_like(e))      # (FS-3)
        M0 = np.concatenate([Wb_hat, np.zeros((config.N, config.F), k.dtype)])   # (C, F)  M_0
        if config.mode == "sequential":                              # NAM writes, one shot after another
            M, write = sequential_write_forward(M0, k, y, p_w, p_e)  # (B, C, F)
        else:
            M, write = batched_write_forward(np.broadcast_to(M0, (B,) + M0.shape), k, y, p_w, p_e)   # (FS-4)-(FS-5)
        eraser = (c_mlp, e)
    else:
        y_novel = y[..., config.K_b:]                                # (B, S, N)
        counts = y_novel.sum(axis=1)                                 # (B, N)
        mean = np.einsum("bsn,bsf->bnf", y_novel, k) / counts[..., None]   # (B, N, F)
        M = np.concatenate([np.broadcast_to(Wb_hat, (B,) + Wb_hat.shape), params["phi"] * mean], axis=1)
        eraser, write = None, (mean, counts)
    logits, c_cos = cosine_logits_forward(M, query, params["scale"], params["bias"])   # (FS-6)
    return logits, FewShotCache(config, dict(params), c_support, c_base, y, eraser, write, c_cos)


def fewshot_backward(dlogits: np.ndarray, cache: FewShotCache):
    """Adjoint of fewshot_forward (steps walked back in reverse). Returns (dsupport (B, S, F),
    dquery (B, Q, F), grads keyed like the parameters). The eraser gets the sum of its two roles,
    p_w and p_e (A5.3b); base.W gets the base rows of M_0 through the row unit norm."""
    config, params = cache.config, cache.params
    K_b = config.K_b
    expected = cache.cosine.cos.shape
    if np.shape(dlogits) != expected:
        raise ValueError(f"dlogits must have the logits' shape (B, Q, C) = {expected}; got {np.shape(dlogits)}")
    grads = {}
    dM, dquery, grads["scale"], grads["bias"] = cosine_logits_backward(dlogits, cache.cosine)   # (FS-6)
    if config.head == "nam":
        c_mlp, e = cache.eraser
        if config.mode == "sequential":
            dM0, dk, _, dp_w, dp_e = sequential_write_backward(dM, cache.write)   # dM0 (C, F)
        else:
            dM0, dk, _, dp_w, dp_e = batched_write_backward(dM, cache.write)
            dM0 = dM0.sum(axis=0)                                    # M_0 is shared by the episodes
        de = dp_w + dp_e if config.erase else dp_w                   # one net, two roles  (FS-3)
        dh = (de * e * (1.0 - e))[..., None]                         # (B, S, 1)  (FS-2)
        dk_eraser, eraser_grads = mlp_backward(dh, c_mlp)
        dk = dk + dk_eraser
        grads.update(with_prefix("eraser", eraser_grads))
    else:
        mean, counts = cache.write
        dW_n = dM[:, K_b:]                                           # (B, N, F)
        grads["phi"] = np.sum(dW_n * mean, axis=(0, 1))
        dmean = params["phi"] * dW_n / counts[..., None]
        dk = np.einsum("bsn,bnf->bsf", cache.y[..., K_b:], dmean)    # (B, S, F)
        dM0 = dM.sum(axis=0)
    grads["base.W"] = unit_backward(dM0[:K_b], cache.base)           # M_0 = [unit(W_b); 0]
    dsupport = unit_backward(dk, cache.support)                      # (FS-1)
    return dsupport, dquery, {name: grads[name] for name in params}


def fewshot_autodiff(tparams: Mapping[str, ad.Tensor], inputs, config: NAMFewShotConfig) -> ad.Tensor:
    """Autodiff twin of fewshot_forward, the same steps in minimem.autodiff ops."""
    support, labels, query = validate_inputs(config, inputs)
    B, S, F = support.shape
    k = unit_autodiff(support)                                       # (FS-1)
    y = _one_hot(labels, config, support.dtype)
    Wb_hat = unit_autodiff(tparams["base.W"])
    base = ad.broadcast_to(Wb_hat, (B, config.K_b, F))
    if config.head == "nam":
        h = mlp_autodiff(k, strip_prefix("eraser", tparams), activation="relu")
        e = ad.sigmoid(ad.reshape(h, (B, S)))                        # (FS-2)
        p_w, p_e = e, (e if config.erase else ad.as_tensor(np.zeros((B, S))))
        M = ad.concatenate([base, np.zeros((B, config.N, F), support.dtype)], axis=1)
        if config.mode == "sequential":
            for i in range(S):
                M = nam_write_autodiff(M, ad.getitem(k, (slice(None), i)), y[:, i],
                                       ad.getitem(p_w, (slice(None), i)), ad.getitem(p_e, (slice(None), i)),
                                       normalize=False)
        else:
            M = batched_write_autodiff(M, k, y, p_w, p_e)
    else:
        y_novel = y[..., config.K_b:]
        mean = ad.einsum("bsn,bsf->bnf", y_novel, k) / y_novel.sum(axis=1)[..., None]
        M = ad.concatenate([base, tparams["phi"] * mean], axis=1)
    rows, q_hat = unit_autodiff(M), unit_autodiff(query)
    cos = ad.einsum("bqf,bcf->bqc", q_hat, rows)
    return tparams["scale"] * (cos + tparams["bias"])                # (FS-6)


# ----------------------------------------------------------------- metrics, A5.5
def few_shot_metrics(logits: np.ndarray, labels: np.ndarray, K_b: int) -> dict:
    """The three accuracies of the reference code and the two false-positive rates of A5.5.

    Args:
        logits: (..., C) joint logits, columns 0..K_b-1 base, K_b..C-1 novel.
        labels: (...) int joint labels: base queries 0..K_b-1, novel queries K_b..C-1.
        K_b: number of base classes.
    Returns:
        accuracy_novel (novel queries, argmax over the novel columns only), accuracy_base (base
        queries, argmax over base only), accuracy_both (all queries, argmax over all C),
        fp_novel_to_base (novel queries predicted as any base class, joint argmax), fp_base_to_novel
        (base queries predicted as any novel class), and the counts n_novel, n_base. A rate over an
        empty group is nan.
    """
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim < 1 or labels.shape != logits.shape[:-1] or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be an int array shaped like logits without C, {logits.shape[:-1]}; "
                         f"got {labels.dtype} {labels.shape}")
    C = logits.shape[-1]
    if isinstance(K_b, (bool, np.bool_)) or not (isinstance(K_b, (int, np.integer)) and 1 <= K_b < C):
        raise ValueError(f"K_b must be an int in 1..C-1 = 1..{C - 1}; got {K_b!r}")
    if np.any(labels < 0) or np.any(labels >= C):
        raise ValueError(f"labels must lie in 0..C-1 = 0..{C - 1}")
    logits, labels = logits.reshape(-1, C), labels.reshape(-1)
    novel = labels >= K_b
    joint = np.argmax(logits, axis=-1)

    def rate(hits, group):
        return float(np.mean(hits[group])) if np.any(group) else float("nan")

    return {
        "accuracy_novel": rate(K_b + np.argmax(logits[:, K_b:], axis=-1) == labels, novel),
        "accuracy_base": rate(np.argmax(logits[:, :K_b], axis=-1) == labels, ~novel),
        "accuracy_both": float(np.mean(joint == labels)),
        "fp_novel_to_base": rate(joint < K_b, novel),
        "fp_base_to_novel": rate(joint >= K_b, ~novel),
        "n_novel": int(np.sum(novel)), "n_base": int(np.sum(~novel)),
    }


# ----------------------------------------------------------------- initialisation and model
def fewshot_init(rng: np.random.Generator, config: NAMFewShotConfig) -> dict:
    """base.W ~ N(0, 2/F); scale = scale_init; bias = 0; the eraser as mlp_init (Xavier, zero
    biases) or phi = 1 for the cosine baseline."""
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a np.random.Generator; got {type(rng).__name__}")
    dtype = np.dtype(config.dtype)
    params = {"base.W": rng.normal(0.0, np.sqrt(2.0 / config.F), (config.K_b, config.F))}
    if config.head == "nam":
        params.update(with_prefix("eraser", mlp_init(rng, (config.F, config.E, 1))))
    else:
        params["phi"] = np.ones(config.F)
    params["scale"] = np.full(1, float(config.scale_init))
    params["bias"] = np.zeros(1)
    return {name: np.asarray(p, dtype=dtype) for name, p in params.items()}


def param_shapes(config: NAMFewShotConfig) -> dict:
    shapes = {"base.W": (config.K_b, config.F)}
    if config.head == "nam":
        shapes.update({"eraser.layer0.W": (config.F, config.E), "eraser.layer0.b": (config.E,),
                       "eraser.layer1.W": (config.E, 1), "eraser.layer1.b": (1,)})
    else:
        shapes["phi"] = (config.F,)
    shapes.update({"scale": (1,), "bias": (1,)})
    return shapes


class NAMFewShotHead:
    """The few-shot head as a model (protocol: params, forward, backward, forward_autodiff).

    inputs: FewShotInputs(support (B, S, F), support_labels (B, S), query (B, Q, F)); outputs:
    logits (B, Q, K_b + N). head="cosine" gives the baseline with the same protocol.
    """

    def __init__(self, config: NAMFewShotConfig | None = None, rng: np.random.Generator | None = None,
                 params: Mapping[str, np.ndarray] | None = None):
        self.config = NAMFewShotConfig() if config is None else config
        if not isinstance(self.config, NAMFewShotConfig):
            raise ValueError(f"config must be a NAMFewShotConfig; got {type(self.config).__name__}")
        if params is None:
            params = fewshot_init(np.random.default_rng(0) if rng is None else rng, self.config)
        check_params(params, param_shapes(self.config))
        self.params = {name: np.array(params[name]) for name in param_shapes(self.config)}

    def forward(self, inputs):
        for name, p in self.params.items():
            check_finite(name, p)
        return fewshot_forward(self.params, inputs, self.config)

    def backward(self, doutputs, cache) -> dict:
        return fewshot_backward(doutputs, cache)[2]

    def forward_autodiff(self, tparams: Mapping[str, ad.Tensor], inputs) -> ad.Tensor:
        return fewshot_autodiff(tparams, inputs, self.config)
