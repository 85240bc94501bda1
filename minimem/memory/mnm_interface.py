"""The interface of Metalearned Neural Memory (Munkhdalai et al., NeurIPS 2019, arXiv:1907.09720):
from the controller output h_t to the write keys, write values, read keys and update rate of a step,
eqs. (B2)-(B3) of specs/titans_mnm.md Part B, and the MNM-p target map of eq. (B6).

Shapes: B batch, H controller width, Nh heads, d key/value width, S target width, n_l the width of
memory layer l. Layouts: `x @ W` (iface.W (H, (3 Nh + 1) d), beta.w (d, 1), target.W (d, S)).
    (B2)  xi = tanh(h W_iface + b_iface);  beta' = xi[:, 0:d];  xi[:, d:] as (B, Nh, 3d) = k^w | v^w | k^r
    (B3)  beta = beta_max sigma(beta' w_beta + b_beta)                           (B,)
    (B6)  [Z'_1 | ... | Z'_L] = V^w W_target + b_target  (or Z'_L = V^w with output_target 'value')
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from minimem import autodiff as ad
from minimem.nn.linear import linear_autodiff, linear_backward, linear_forward


# ----------------------------------------------------------------- interface, eqs. (B2)-(B3)
class Interface(NamedTuple):
    """The interface vectors of one step (the backward passes their gradients in the same tuple)."""
    k_write: object      # (B, Nh, d) k^w
    v_write: object      # (B, Nh, d) v^w
    k_read: object       # (B, Nh, d) k^r
    beta: object         # (B,) update rate


class InterfaceCache(NamedTuple):
    iface: object        # LinearCache of h_t W_iface + b_iface
    xi: np.ndarray       # (B, (3 Nh + 1) d)
    rate: object         # LinearCache of beta'_t w_beta + b_beta
    sigma: np.ndarray    # (B,) sigma(.)
    beta_max: float


def _sigmoid(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))                                          # never overflows
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def mnm_interface_forward(h: np.ndarray, W: np.ndarray, b: np.ndarray, w_beta: np.ndarray, b_beta: np.ndarray,
                          n_heads: int, beta_max: float):
    """Interface vectors, eqs. (B2)-(B3).

    Args:
        h: (B, H) controller output h_t.
        W, b: iface.W (H, (3 Nh + 1) d), iface.b ((3 Nh + 1) d,).
        w_beta, b_beta: beta.w (d, 1), beta.b (1,).
        n_heads: Nh. beta_max: bound of the update rate.
    Returns:
        Interface(k_write, v_write, k_read (each (B, Nh, d)), beta (B,)), and the cache.
    """
    B, d = h.shape[0], w_beta.shape[0]
    if W.shape[1] != (3 * n_heads + 1) * d:
        raise ValueError(f"iface.W must have (3 Nh + 1) d = {(3 * n_heads + 1) * d} columns; got {W.shape}")
    pre, iface = linear_forward(h, W, b)
    xi = np.tanh(pre)                                               # (B, (3 Nh + 1) d)  eq. (B2)
    heads = xi[:, d:].reshape(B, n_heads, 3 * d)                    # (B, Nh, 3d)
    z, rate = linear_forward(xi[:, :d], w_beta, b_beta)             # (B, 1)
    sigma = _sigmoid(z[:, 0])                                       # (B,)
    out = Interface(heads[..., :d], heads[..., d:2 * d], heads[..., 2 * d:], beta_max * sigma)  # eq. (B3)
    return out, InterfaceCache(iface, xi, rate, sigma, beta_max)


def mnm_interface_backward(dout: Interface, cache: InterfaceCache):
    """Adjoint of eqs. (B2)-(B3). Returns (dh (B, H), {"iface.W", "iface.b", "beta.w", "beta.b"})."""
    iface, xi, rate, sigma, beta_max = cache
    B, d = xi.shape[0], rate.W.shape[0]
    dz = (dout.beta * beta_max * sigma * (1.0 - sigma))[:, None]    # (B, 1)
    dbeta_pre, dw_beta, db_beta = linear_backward(dz, rate)         # (B, d)
    dheads = np.concatenate([dout.k_write, dout.v_write, dout.k_read], axis=-1)  # (B, Nh, 3d)
    dxi = np.concatenate([dbeta_pre, dheads.reshape(B, -1)], axis=1)
    dh, dW, db = linear_backward(dxi * (1.0 - xi * xi), iface)
    return dh, {"iface.W": dW, "iface.b": db, "beta.w": dw_beta, "beta.b": db_beta}


def mnm_interface_autodiff(h, W, b, w_beta, b_beta, n_heads: int, beta_max: float) -> Interface:
    """Autodiff twin of mnm_interface_forward."""
    B, d = h.shape[0], w_beta.shape[0]
    xi = ad.tanh(linear_autodiff(h, W, b))
    heads = ad.reshape(xi[:, d:], (B, n_heads, 3 * d))
    beta = beta_max * ad.sigmoid(linear_autodiff(xi[:, :d], w_beta, b_beta))[:, 0]
    return Interface(heads[:, :, :d], heads[:, :, d:2 * d], heads[:, :, 2 * d:], beta)


# ----------------------------------------------------------------- MNM-p targets, eq. (B6)
def mnm_targets_forward(v_write: np.ndarray, W: np.ndarray | None, b: np.ndarray | None,
                        widths: Sequence[int], output_target: str):
    """Target activations [Z'_1 | ... | Z'_L] = V^w W_target + b_target, eq. (B6); with
    output_target 'value' the map gives Z'_1..Z'_{L-1} and Z'_L = V^w (spec B10.2: the output
    layer's rule is then the exact gradient step).

    Args:
        v_write: (B, Nh, d) write values V^w.
        W, b: target.W (d, S), target.b (S,), or None when the map has no columns (L = 1, 'value').
        widths: the widths of the mapped blocks, n_1..n_L ('learned') or n_1..n_{L-1} ('value');
            they sum to S.
        output_target: 'learned' | 'value'.
    Returns:
        A tuple of L arrays (B, Nh, n_l), and the cache (the LinearCache, or None without a map).
    """
    targets, cache = [], None
    if W is not None:
        projected, cache = linear_forward(v_write, W, b)            # (B, Nh, S)
        cuts = np.cumsum(widths)[:-1]
        targets = list(np.split(projected, cuts, axis=-1))
    if output_target == "value":
        targets.append(v_write)
    return tuple(targets), cache


def mnm_targets_backward(dtargets: Sequence[np.ndarray], cache, output_target: str):
    """Adjoint of mnm_targets_forward. Returns (dv_write (B, Nh, d), {"target.W", "target.b"} or {})."""
    dv, grads = 0.0, {}
    if output_target == "value":
        dv, dtargets = dtargets[-1], dtargets[:-1]
    if cache is not None:
        dv_map, dW, db = linear_backward(np.concatenate(dtargets, axis=-1), cache)
        dv, grads = dv + dv_map, {"target.W": dW, "target.b": db}
    return dv, grads


def mnm_targets_autodiff(v_write, W, b, widths: Sequence[int], output_target: str) -> tuple:
    """Autodiff twin of mnm_targets_forward."""
    targets = []
    if W is not None:
        projected = linear_autodiff(v_write, W, b)
        start = 0
        for width in widths:
            targets.append(projected[:, :, start:start + width])
            start += width
    if output_target == "value":
        targets.append(v_write)
    return tuple(targets)
