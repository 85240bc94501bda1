"""The SAM interface vector (Rae et al. 2016, arXiv:1610.09027, section 3 and Supplementary A): how
the controller output p_t = h_t W_p + b_p is cut into the read queries, their strengths, the write
word and the two write gates (spec specs/ntm_dnc_sam.md C.2, C.3 step 2, C.12.1).

Shapes: B batch, R read heads, W word size, P = R (W + 1) + W + 2 interface size.

Layout of p_t (B, P), 0-based slices along the last axis, head i = 0..R-1:

    name          slice                                   shape   after         meaning
    q^i           [i (W+1) : i (W+1) + W]                 (W,)    identity      read query of head i
    beta_hat^i    [i (W+1) + W]                           ()      oneplus       its key strength
    a             [R (W+1) : R (W+1) + W]                 (W,)    identity/tanh write word a_t
    alpha_hat     [R (W+1) + W]                           ()      sigmoid       write gate alpha_t
    gamma_hat     [R (W+1) + W + 1]                       ()      sigmoid       interpolation gate gamma_t

Each read head's block is its query followed by its strength, head after head. The strength is
a minimem addition (C.12.1: the paper's interface (q, a, alpha, gamma) has none, and a cosine
softmax without one is nearly uniform); the write word is unsquashed by default (C.12.8), tanh on
request. Strengths: oneplus(z) = 1 + softplus(z), derivative sigmoid(z).

interface_forward(p) -> (SAMInterface, cache); interface_backward(dinterface, cache) -> dp;
interface_autodiff(p) -> SAMInterface of Tensors.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minimem import autodiff as ad

WRITE_SQUASHES = (None, "tanh")


def interface_size(R: int, W: int) -> int:
    """P = R (W + 1) + W + 2 (spec C.2)."""
    return R * (W + 1) + W + 2


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) in the two-branch form (exp of a non-positive number only)."""
    e = np.exp(-np.abs(z))
    d = 1.0 + e
    return np.where(z >= 0, 1.0 / d, e / d).astype(z.dtype, copy=False)


class SAMInterface(NamedTuple):
    """The heads' parameters at one step, each shaped for the memory primitive that uses it."""
    q: np.ndarray        # (B, R, W) read queries q^i_t
    beta: np.ndarray     # (B, R, 1) key strengths beta^i_t >= 1
    a: np.ndarray        # (B, W) write word a_t
    alpha: np.ndarray    # (B, 1) write gate alpha_t in (0, 1)
    gamma: np.ndarray    # (B, 1) interpolation gate gamma_t in (0, 1)


class InterfaceCache(NamedTuple):
    p: np.ndarray                # (B, P) raw interface vector
    parsed: SAMInterface         # the constrained values
    R: int
    W: int
    write_squash: str | None     # None or "tanh"
    slope: np.ndarray | None = None   # (B, R, 1) sigmoid(beta_hat) = d beta / d beta_hat (None: recomputed)


def _check_p(p, R: int, W: int, write_squash) -> None:
    if write_squash not in WRITE_SQUASHES:
        raise ValueError(f"write_squash must be one of {WRITE_SQUASHES}; got {write_squash!r}")
    P = interface_size(R, W)
    if p.ndim != 2 or p.shape[1] != P:
        raise ValueError(f"p must have shape (B, P) with P = R (W + 1) + W + 2 = {P} (R={R}, W={W}); "
                         f"got {tuple(p.shape)}")


def interface_forward(p: np.ndarray, R: int, W: int, write_squash: str | None = None, *,
                      validate: bool = True) -> tuple[SAMInterface, InterfaceCache]:
    """Split and constrain the interface vector, spec C.3 step 2 (layout in the module docstring).

    Args:
        p: (B, P) interface vector p_t = h_t @ W_p + b_p.
        R, W: read heads and word size. write_squash: None (paper) or "tanh" for a_t.
        validate: False skips checking p and write_squash (sam_forward's time loop: p is the
            product it just formed with parameters checked at the sequence entry).
    Returns:
        SAMInterface (fields shaped as in its definition), and the cache for interface_backward.
    """
    if validate:
        p = np.asarray(p)
        _check_p(p, R, W, write_squash)
    B = p.shape[0]
    heads = p[:, :R * (W + 1)].reshape(B, R, W + 1)                      # (B, R, W + 1)
    a = p[:, R * (W + 1):R * (W + 1) + W]                                # (B, W)
    # one sigmoid for the R strengths' slopes and both gates: (B, R + 2)
    squashed = _sigmoid(np.concatenate([heads[:, :, W], p[:, -2:]], axis=1))
    parsed = SAMInterface(
        q=heads[:, :, :W],                                               # (B, R, W)
        beta=1.0 + np.logaddexp(0.0, heads[:, :, W:]).astype(p.dtype, copy=False),  # (B, R, 1) oneplus
        a=np.tanh(a) if write_squash == "tanh" else a,                   # (B, W)
        alpha=squashed[:, R:R + 1],                                      # (B, 1)
        gamma=squashed[:, R + 1:],                                       # (B, 1)
    )
    return parsed, InterfaceCache(p, parsed, R, W, write_squash, squashed[:, :R, None])


def interface_backward(dinterface: SAMInterface, cache: InterfaceCache) -> np.ndarray:
    """Adjoint of interface_forward. dinterface holds one gradient per field, shaped like it.
    Returns dp (B, P): identity pieces pass through; d beta_hat = d beta sigmoid(beta_hat);
    tanh: d a_hat = d a (1 - a^2); gates: d hat = d g g (1 - g)."""
    p, parsed, R, W, write_squash, slope = cache
    B = p.shape[0]
    if slope is None:                                                    # a cache assembled by hand
        slope = _sigmoid(p[:, :R * (W + 1)].reshape(B, R, W + 1)[:, :, W:])
    d = dinterface
    dp = np.empty_like(p)                                                # (B, P), every entry set below
    dheads = dp[:, :R * (W + 1)].reshape(B, R, W + 1)                    # a view into dp
    dheads[:, :, :W] = d.q
    dheads[:, :, W:] = d.beta * slope                                    # oneplus' = sigmoid
    da = d.a * (1.0 - parsed.a * parsed.a) if write_squash == "tanh" else d.a
    dp[:, R * (W + 1):R * (W + 1) + W] = da
    dp[:, -2:-1] = d.alpha * parsed.alpha * (1.0 - parsed.alpha)
    dp[:, -1:] = d.gamma * parsed.gamma * (1.0 - parsed.gamma)
    return dp


def interface_autodiff(p, R: int, W: int, write_squash: str | None = None) -> SAMInterface:
    """Autodiff twin of interface_forward: the same SAMInterface, every field a Tensor."""
    p = ad.as_tensor(p)
    _check_p(p, R, W, write_squash)
    B = p.shape[0]
    heads = ad.reshape(p[:, :R * (W + 1)], (B, R, W + 1))
    a = p[:, R * (W + 1):R * (W + 1) + W]
    return SAMInterface(
        q=heads[:, :, :W],
        beta=1.0 + ad.softplus(heads[:, :, W:]),
        a=ad.tanh(a) if write_squash == "tanh" else a,
        alpha=ad.sigmoid(p[:, -2:-1]),
        gamma=ad.sigmoid(p[:, -1:]),
    )
