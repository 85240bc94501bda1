"""The DNC interface vector (Graves et al. 2016, Nature 538:471, Methods "Interface parameters"):
how the controller's output xi_t is cut into the read and write heads' parameters, and the
functions that put each piece in its range.

Shapes: B batch, R read heads, W word size, I = W*R + 3W + 5R + 3 interface size.

Layout of xi_t (B, I), 0-based slices along the last axis (spec B.3 step 4, r = R, w = W):

    name         slice                                  shape   after               meaning
    k_r          [0 : rw]                               (R, W)  identity            read keys
    beta_hat_r   [rw : rw+r]                            (R,)    oneplus             read strengths
    k_w          [rw+r : rw+r+w]                        (W,)    identity            write key
    beta_hat_w   [rw+r+w]                               ()      oneplus             write strength
    e_hat        [rw+r+w+1 : rw+r+2w+1]                 (W,)    sigmoid             erase vector
    nu           [rw+r+2w+1 : rw+r+3w+1]                (W,)    identity            write vector
    f_hat        [rw+r+3w+1 : rw+2r+3w+1]               (R,)    sigmoid             free gates
    g_hat_a      [rw+2r+3w+1]                           ()      sigmoid             allocation gate
    g_hat_w      [rw+2r+3w+2]                           ()      sigmoid             write gate
    pi_hat       [rw+2r+3w+3 : rw+5r+3w+3]              (R, 3)  softmax over the 3  read modes

The read keys are stored head after head (row-major (R, W)); the read modes likewise, each head's
three entries in the paper's order (backward, content, forward) [B.10.3]. deepmind/dnc orders the
modes (backward, forward, content) and ixaxaar/pytorch-dnc passes keys and the write vector
through tanh: map both when comparing weights [B.8, E.2 item 4].

Strengths (`strengths=`): "oneplus" (paper, 1 + softplus, range [1, inf), the default) or "softplus"
(deepmind/dnc, range (0, inf)) [B.10.2]. Both have derivative sigmoid(beta_hat).

interface_forward(xi) -> (Interface, cache); interface_backward(dInterface, cache) -> dxi;
interface_autodiff(xi) -> Interface of Tensors. Every field of Interface is shaped for the
memory primitives it feeds (minimem.memory.dnc_access), so the access step never reshapes.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np
from scipy.special import expit

from minimem import autodiff as ad

STRENGTHS = ("oneplus", "softplus")
READ_MODE_COUNT = 3        # backward, content, forward (minimem.memory.linkage.READ_MODES)


def interface_size(R: int, W: int) -> int:
    """I = W*R + 3W + 5R + 3 (spec B.2)."""
    return W * R + 3 * W + 5 * R + 3


def interface_layout(R: int, W: int) -> dict[str, slice]:
    """The slices of xi_t along its last axis, in storage order (the table of the module docstring)."""
    return dict(_layout(R, W))


@lru_cache(maxsize=32)
def _layout(R: int, W: int) -> dict[str, slice]:
    """interface_layout, computed once per (R, W) for the per-step functions (which only read it)."""
    sizes = (("k_r", R * W), ("beta_hat_r", R), ("k_w", W), ("beta_hat_w", 1), ("e_hat", W),
             ("nu", W), ("f_hat", R), ("g_hat_a", 1), ("g_hat_w", 1), ("pi_hat", 3 * R))
    layout, start = {}, 0
    for name, size in sizes:
        layout[name] = slice(start, start + size)
        start += size
    return layout


# ----------------------------------------------------------------- elementwise maps (spec section 0)
def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)), as scipy.special.expit: one ufunc with one exp per entry, in the two-branch
    form (exp(z) / (1 + exp(z)) for z < 0, so exp never overflows); float32 stays float32."""
    return expit(z)


def softplus(z: np.ndarray) -> np.ndarray:
    """log(1 + exp(z)) computed as logaddexp(0, z); derivative sigmoid(z)."""
    return np.logaddexp(0.0, z).astype(z.dtype, copy=False)


def strength(z: np.ndarray, kind: str) -> np.ndarray:
    """oneplus(z) = 1 + softplus(z) (paper) or softplus(z) (deepmind/dnc)."""
    return 1.0 + softplus(z) if kind == "oneplus" else softplus(z)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.exp(z - np.max(z, axis=-1, keepdims=True))
    z /= z.sum(axis=-1, keepdims=True)
    return z


# ----------------------------------------------------------------- the parsed interface
class Interface(NamedTuple):
    """The heads' parameters at one step, each shaped for the primitive that uses it."""
    k_r: np.ndarray          # (B, R, W) read keys k^{r,i}_t
    beta_r: np.ndarray       # (B, R, 1) read strengths beta^{r,i}_t
    k_w: np.ndarray          # (B, 1, W) write key k^w_t (one write head)
    beta_w: np.ndarray       # (B, 1, 1) write strength beta^w_t
    e: np.ndarray            # (B, 1, W) erase vector e_t in [0, 1]
    nu: np.ndarray           # (B, 1, W) write vector nu_t
    free_gates: np.ndarray   # (B, R) free gates f^i_t in [0, 1]
    g_a: np.ndarray          # (B, 1) allocation gate g^a_t
    g_w: np.ndarray          # (B, 1) write gate g^w_t
    pi: np.ndarray           # (B, R, 3) read modes (backward, content, forward), each row on the simplex


class InterfaceCache(NamedTuple):
    xi: np.ndarray           # (B, I) the raw interface vector
    parsed: Interface        # the constrained values (sigmoid outputs and softmax are reused)
    R: int
    W: int
    strengths: str           # "oneplus" or "softplus"


def _check_xi(xi, R: int, W: int, strengths: str) -> None:
    if strengths not in STRENGTHS:
        raise ValueError(f"strengths must be one of {STRENGTHS}; got {strengths!r}")
    I = interface_size(R, W)
    if xi.ndim != 2 or xi.shape[1] != I:
        raise ValueError(f"xi must have shape (B, I) with I = W*R + 3W + 5R + 3 = {I} (R={R}, W={W}); "
                         f"got {tuple(xi.shape)}")


def interface_forward(xi: np.ndarray, R: int, W: int,
                      strengths: str = "oneplus") -> tuple[Interface, InterfaceCache]:
    """Split and constrain the interface vector, spec B.3 step 4 (layout in the module docstring).

    Args:
        xi: (B, I) interface vector xi_t = h_t @ W_xi + b_xi.
        R, W: read heads and word size.
        strengths: "oneplus" (paper) or "softplus" (deepmind/dnc) for beta^r and beta^w.
    Returns:
        Interface (fields shaped as in its definition), and the cache for interface_backward.
    """
    xi = np.asarray(xi)
    _check_xi(xi, R, W, strengths)
    B = xi.shape[0]
    s = _layout(R, W)
    # The squashing functions act elementwise, so each is applied once to the contiguous block of
    # columns that holds all its pieces (the strengths sit in [beta_hat_r .. beta_hat_w], the gates
    # in [e_hat .. g_hat_w]; the identity columns in between are squashed too and never used).
    # Each entry gets exactly the value the per-piece formula gives.
    lo, hi = s["beta_hat_r"].start, s["beta_hat_w"].stop
    strengths_block = strength(xi[:, lo:hi], strengths)                       # (B, R + W + 1)
    beta_r, beta_w = strengths_block[:, :R], strengths_block[:, hi - lo - 1:]
    g0, g1 = s["e_hat"].start, s["g_hat_w"].stop
    gates = sigmoid(xi[:, g0:g1])                                             # (B, 2W + R + 2)
    cut = lambda name: gates[:, s[name].start - g0:s[name].stop - g0]
    parsed = Interface(
        k_r=xi[:, s["k_r"]].reshape(B, R, W),                                 # (B, R, W)
        beta_r=beta_r[..., None],                                             # (B, R, 1)
        k_w=xi[:, None, s["k_w"]],                                            # (B, 1, W)
        beta_w=beta_w[:, None],                                               # (B, 1, 1)
        e=cut("e_hat")[:, None],                                              # (B, 1, W)
        nu=xi[:, None, s["nu"]],                                              # (B, 1, W)
        free_gates=cut("f_hat"),                                              # (B, R)
        g_a=cut("g_hat_a"),                                                   # (B, 1)
        g_w=cut("g_hat_w"),                                                   # (B, 1)
        pi=_softmax(xi[:, s["pi_hat"]].reshape(B, R, READ_MODE_COUNT)),       # (B, R, 3)
    )
    return parsed, InterfaceCache(xi, parsed, R, W, strengths)


def interface_backward(dinterface: Interface, cache: InterfaceCache) -> np.ndarray:
    """Adjoint of interface_forward. dinterface holds one gradient per Interface field, shaped like
    it. Returns dxi (B, I):

        identity pieces pass through; strengths: d beta_hat = d beta * sigmoid(beta_hat);
        sigmoid pieces: d hat = d g * g (1 - g); modes: d pi_hat = pi (d pi - sum_k pi_k d pi_k).
    """
    xi, parsed, R, W, _ = cache
    B = xi.shape[0]
    s = _layout(R, W)
    d = dinterface
    gate_grad = lambda dg, g: dg * g * (1.0 - g)                              # sigmoid'
    dxi = np.empty_like(xi)                                                   # (B, I), every entry set below
    dxi[:, s["k_r"]] = d.k_r.reshape(B, R * W)
    lo, hi = s["beta_hat_r"].start, s["beta_hat_w"].stop
    slope = sigmoid(xi[:, lo:hi])                                             # strengths' derivative, one call
    dxi[:, s["beta_hat_r"]] = d.beta_r[..., 0] * slope[:, :R]
    dxi[:, s["k_w"]] = d.k_w[:, 0]
    dxi[:, s["beta_hat_w"]] = d.beta_w[:, 0] * slope[:, hi - lo - 1:]
    dxi[:, s["e_hat"]] = gate_grad(d.e, parsed.e)[:, 0]
    dxi[:, s["nu"]] = d.nu[:, 0]
    dxi[:, s["f_hat"]] = gate_grad(d.free_gates, parsed.free_gates)
    dxi[:, s["g_hat_a"]] = gate_grad(d.g_a, parsed.g_a)
    dxi[:, s["g_hat_w"]] = gate_grad(d.g_w, parsed.g_w)
    pi = parsed.pi
    dpi_hat = pi * (d.pi - (pi * d.pi).sum(axis=-1, keepdims=True))       # (B, R, 3) softmax VJP
    dxi[:, s["pi_hat"]] = dpi_hat.reshape(B, R * READ_MODE_COUNT)
    return dxi


def interface_autodiff(xi, R: int, W: int, strengths: str = "oneplus") -> Interface:
    """Autodiff twin of interface_forward: the same Interface, every field a Tensor."""
    xi = ad.as_tensor(xi)
    _check_xi(xi, R, W, strengths)
    B = xi.shape[0]
    s = _layout(R, W)

    def positive(z):
        return 1.0 + ad.softplus(z) if strengths == "oneplus" else ad.softplus(z)

    return Interface(
        k_r=ad.reshape(xi[:, s["k_r"]], (B, R, W)),
        beta_r=ad.reshape(positive(xi[:, s["beta_hat_r"]]), (B, R, 1)),
        k_w=ad.reshape(xi[:, s["k_w"]], (B, 1, W)),
        beta_w=ad.reshape(positive(xi[:, s["beta_hat_w"]]), (B, 1, 1)),
        e=ad.reshape(ad.sigmoid(xi[:, s["e_hat"]]), (B, 1, W)),
        nu=ad.reshape(xi[:, s["nu"]], (B, 1, W)),
        free_gates=ad.sigmoid(xi[:, s["f_hat"]]),
        g_a=ad.sigmoid(xi[:, s["g_hat_a"]]),
        g_w=ad.sigmoid(xi[:, s["g_hat_w"]]),
        pi=ad.softmax(ad.reshape(xi[:, s["pi_hat"]], (B, R, READ_MODE_COUNT)), axis=-1),
    )
