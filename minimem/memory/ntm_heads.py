"""Neural Turing Machine heads (Graves et al., 2014, arXiv:1410.5401, section 3): from the
controller output h_t to every head's addressing inputs and every write head's erase and add
vectors. The model itself (controller, memory, BPTT) is minimem.memory.ntm.

Shapes: B batch, H controller size, W word size, S allowed shifts (odd), R read heads,
Rw write heads, Rh = R + Rw heads in all (read heads first, then write heads).

Spec A.2-A.3 step 2 (specs/ntm_dnc_sam.md). Each head h has a linear map o^h = h_t @ W^h + b^h,
clipped to [-clip, clip] (Collier & Beel; clip = None disables it), whose columns are, in order:

    read head  (width W + S + 3):   k_hat (W) | beta_hat (1) | g_hat (1) | s_hat (S) | gamma_hat (1)
    write head (width 3W + S + 3):  the same  | e_hat (W) | a_hat (W)

and the raw parts become the head's inputs to eqs. (2)-(9):

    k     = tanh(k_hat)  (key_squash "tanh"; "identity" leaves it unconstrained, as in the paper)
    beta  = softplus(beta_hat)              >= 0, key strength of eq. (5)
    g     = sigmoid(g_hat)                  in (0, 1), interpolation gate of eq. (7)
    s     = softmax(s_hat)                  over shifts (-q, ..., 0, ..., +q), eq. (8)
    gamma = 1 + softplus(gamma_hat)         >= 1, sharpening exponent of eq. (9)
    e     = sigmoid(e_hat)                  in (0, 1)^W, erase vector of eq. (3)
    a     = tanh(a_hat)  (add_squash "tanh"; or "identity")   add vector of eq. (4)

All heads' linear maps read the same h_t, so the model concatenates their weights along the output
axis, [read0.W | read1.W | ... | write0.W | ...], and computes every head's o in one matmul;
HeadLayout says where each part sits in that concatenation. Nothing here loops over B or heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem.nn.mlp import activation_autodiff, activation_backward, activation_forward

SQUASHES = ("tanh", "identity")


# ----------------------------------------------------------------- elementwise helpers
def _sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function in the two-branch form (spec section 0): exp of a non-positive number only."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softplus(z: np.ndarray) -> np.ndarray:
    """log(1 + e^z) as logaddexp(0, z) (spec section 0); derivative sigmoid(z)."""
    return np.logaddexp(0.0, z)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return z / np.sum(z, axis=-1, keepdims=True)


# ----------------------------------------------------------------- where each part sits
@dataclass(frozen=True)
class HeadLayout:
    """Column layout of the concatenated head outputs o (B, P), P = R (W + S + 3) + Rw (3W + S + 3)."""
    R: int                      # read heads
    Rw: int                     # write heads
    W: int                      # word size
    S: int                      # allowed shifts (odd)
    key_squash: str = "tanh"
    add_squash: str = "tanh"

    @property
    def address_width(self) -> int:
        """Columns every head spends on addressing: k (W), beta, g, s (S), gamma."""
        return self.W + self.S + 3

    @property
    def read_width(self) -> int:
        return self.address_width

    @property
    def write_width(self) -> int:
        return self.address_width + 2 * self.W

    @property
    def width(self) -> int:
        """P, the width of the concatenated head outputs."""
        return self.R * self.read_width + self.Rw * self.write_width

    def head_columns(self) -> list[tuple[str, slice]]:
        """[("read0", cols), ..., ("write0", cols), ...]: each head's columns of o, in order."""
        names = [f"read{i}" for i in range(self.R)] + [f"write{j}" for j in range(self.Rw)]
        widths = [self.read_width] * self.R + [self.write_width] * self.Rw
        bounds = np.cumsum([0] + widths)
        return [(name, slice(int(lo), int(hi))) for name, lo, hi in zip(names, bounds[:-1], bounds[1:])]


class HeadOutputs(NamedTuple):
    """Every head's inputs to eqs. (2)-(9) (or their gradients, in head_outputs_backward)."""
    k: np.ndarray        # (B, Rh, W) keys
    beta: np.ndarray     # (B, Rh, 1) key strengths
    g: np.ndarray        # (B, Rh, 1) interpolation gates
    s: np.ndarray        # (B, Rh, S) shift weightings over (-q..q)
    gamma: np.ndarray    # (B, Rh, 1) sharpening exponents
    e: np.ndarray        # (B, Rw, W) erase vectors
    a: np.ndarray        # (B, Rw, W) add vectors


def select_heads(heads: HeadOutputs, which: slice) -> tuple:
    """(k, beta, g, s, gamma) of the heads `which` (a slice of the Rh axis), for address_forward."""
    return tuple(x[:, which] for x in heads[:5])


def _split(o, layout: HeadLayout):
    """o (B, P) -> (addressing part (B, Rh, W + S + 3), erase/add part (B, Rw, 2W)).

    Works on ndarrays and on autodiff Tensors alike (reshape, slicing and concatenate only).
    """
    R, Rw, A = layout.R, layout.Rw, layout.address_width
    B = o.shape[0]
    cut = R * layout.read_width
    reads = o[:, :cut].reshape((B, R, layout.read_width))                 # (B, R, A)
    writes = o[:, cut:].reshape((B, Rw, layout.write_width))              # (B, Rw, A + 2W)
    if isinstance(o, ad.Tensor):
        addressing = ad.concatenate([reads, writes[:, :, :A]], axis=1)    # (B, Rh, A)
    else:
        addressing = np.concatenate([reads, writes[:, :, :A]], axis=1)
    return addressing, writes[:, :, A:]


# ----------------------------------------------------------------- the clip, spec A.3 steps 2 and 9
class ClipCache(NamedTuple):
    inside: np.ndarray | None   # bool, where -clip <= x <= clip (None when clipping is off)


def clip_forward(x: np.ndarray, clip: float | None) -> tuple[np.ndarray, ClipCache]:
    """clip(x, -clip, clip) elementwise (Collier & Beel's +-20); clip = None returns x unchanged.

    Like a piecewise-linear op the gradient passes where -clip <= x <= clip (ends included, as in
    minimem.autodiff.clip) and is zero where the value was clipped (spec A.4).
    """
    if clip is None:
        return x, ClipCache(None)
    inside = (x >= -clip) & (x <= clip)
    return np.clip(x, -clip, clip), ClipCache(inside)


def clip_backward(dout: np.ndarray, cache: ClipCache) -> np.ndarray:
    """Adjoint of clip_forward: dx = dout where x was inside [-clip, clip], 0 elsewhere."""
    return dout if cache.inside is None else dout * cache.inside


def clip_autodiff(x, clip: float | None) -> ad.Tensor:
    """Autodiff twin of clip_forward."""
    return ad.as_tensor(x) if clip is None else ad.clip(x, -clip, clip)


# ----------------------------------------------------------------- head outputs, spec A.3 step 2
class HeadOutputsCache(NamedTuple):
    layout: HeadLayout
    heads: HeadOutputs          # the forward's values
    key: tuple                  # activation cache of k
    add: tuple                  # activation cache of a
    sigmoid_beta: np.ndarray    # (B, Rh, 1) softplus'(beta_hat)
    sigmoid_gamma: np.ndarray   # (B, Rh, 1) softplus'(gamma_hat)


def _check_layout(o, layout: HeadLayout) -> None:
    if o.ndim != 2 or o.shape[1] != layout.width:
        raise ValueError(f"head outputs must have shape (B, P) with P = R (W + S + 3) + Rw (3W + S + 3) "
                         f"= {layout.width}; got {tuple(o.shape)}")
    for name in ("key_squash", "add_squash"):
        if getattr(layout, name) not in SQUASHES:
            raise ValueError(f"{name} must be one of {SQUASHES}; got {getattr(layout, name)!r}")


def head_outputs_forward(o: np.ndarray, layout: HeadLayout) -> tuple[HeadOutputs, HeadOutputsCache]:
    """Split the (clipped) head outputs and squash each part into its range (spec A.3 step 2).

    Args:
        o: (B, P) concatenated head outputs, columns as in HeadLayout.
        layout: R, Rw, W, S and the squashing of k and a.
    Returns:
        HeadOutputs (k, beta, g, s, gamma for all Rh heads; e, a for the Rw write heads), and
        the cache for head_outputs_backward.
    """
    _check_layout(o, layout)
    W, S = layout.W, layout.S
    addressing, erase_add = _split(o, layout)                        # (B, Rh, W + S + 3), (B, Rw, 2W)
    k, key = activation_forward(addressing[..., :W], layout.key_squash)          # (B, Rh, W)
    # The columns after the key are (beta_hat, g_hat, s_hat (S), gamma_hat). Sigmoid and softplus act
    # elementwise, so each is applied once to that whole block and the pieces are cut from it (every
    # used entry gets exactly its per-piece value; the s_hat columns of both are not used).
    scalars = addressing[..., W:]                                    # (B, Rh, S + 3)
    sigmoid_block, softplus_block = _sigmoid(scalars), _softplus(scalars)
    g = sigmoid_block[..., 1:2]                                      # (B, Rh, 1)
    s = _softmax(scalars[..., 2:2 + S])                              # (B, Rh, S)
    e = _sigmoid(erase_add[..., :W])                                 # (B, Rw, W)
    a, add = activation_forward(erase_add[..., W:], layout.add_squash)           # (B, Rw, W)
    beta, gamma = softplus_block[..., :1], 1.0 + softplus_block[..., -1:]        # (B, Rh, 1) each
    heads = HeadOutputs(k, beta, g, s, gamma, e, a)
    # softplus' = sigmoid: the derivatives of beta and gamma w.r.t. beta_hat and gamma_hat
    return heads, HeadOutputsCache(layout, heads, key, add, sigmoid_block[..., :1], sigmoid_block[..., -1:])


def head_outputs_backward(dheads: HeadOutputs, cache: HeadOutputsCache) -> np.ndarray:
    """Adjoint of head_outputs_forward. dheads holds dk, dbeta, dg, ds, dgamma, de, da shaped like
    the forward's HeadOutputs; returns do (B, P). Derivatives: tanh' = 1 - k^2, softplus' = sigmoid,
    sigmoid' = g (1 - g), softmax VJP ds_hat = s (ds - sum s ds) (spec section 0)."""
    layout, heads = cache.layout, cache.heads
    dk, dbeta, dg, ds, dgamma, de, da = dheads
    d_addressing = np.concatenate([
        activation_backward(dk, cache.key),                              # (B, Rh, W)
        dbeta * cache.sigmoid_beta,                                      # (B, Rh, 1)
        dg * heads.g * (1.0 - heads.g),                                  # (B, Rh, 1)
        heads.s * (ds - np.sum(heads.s * ds, axis=-1, keepdims=True)),   # (B, Rh, S)
        dgamma * cache.sigmoid_gamma,                                    # (B, Rh, 1)
    ], axis=-1)
    d_erase_add = np.concatenate([de * heads.e * (1.0 - heads.e),        # (B, Rw, W)
                                  activation_backward(da, cache.add)], axis=-1)   # (B, Rw, W)
    B, R = d_addressing.shape[0], layout.R
    d_reads = d_addressing[:, :R].reshape(B, R * layout.read_width)
    d_writes = np.concatenate([d_addressing[:, R:], d_erase_add], axis=-1).reshape(B, layout.Rw * layout.write_width)
    return np.concatenate([d_reads, d_writes], axis=1)                   # (B, P)


def head_outputs_autodiff(o, layout: HeadLayout) -> HeadOutputs:
    """Autodiff twin of head_outputs_forward: a HeadOutputs of Tensors."""
    o = ad.as_tensor(o)
    _check_layout(o, layout)
    W, S = layout.W, layout.S
    addressing, erase_add = _split(o, layout)
    return HeadOutputs(
        k=activation_autodiff(addressing[:, :, :W], layout.key_squash),
        beta=ad.softplus(addressing[:, :, W:W + 1]),
        g=ad.sigmoid(addressing[:, :, W + 1:W + 2]),
        s=ad.softmax(addressing[:, :, W + 2:W + 2 + S], axis=-1),
        gamma=1.0 + ad.softplus(addressing[:, :, W + 2 + S:]),
        e=ad.sigmoid(erase_add[:, :, :W]),
        a=activation_autodiff(erase_add[:, :, W:], layout.add_squash),
    )
