"""The Titans memory network M (Behrouz, Zhong & Mirrokni, 2024, arXiv:2501.00663, section 3.1):
reading it, its associative loss, the closed-form inner gradient, and the exact adjoint of that
gradient (the second-order terms of the outer gradient). Spec: specs/titans_mnm.md A3.3, A4.2, B4.

Shapes: L = L_M weight matrices W_1..W_L, W_l (..., n_{l-1}, n_l) with n_0 = n_L = d (key and
value width) and hidden widths h in between; a linear memory is L = 1, W_1 (..., d, d).
Vectors are rows (spec section 0): a key is k (..., d) and the memory is read as `k W`.
Weights and vectors pair up in one of two ways, told apart by the number of axes:
    one weight set per vector:   x (..., a) with W (..., a, b)       (W.ndim == x.ndim + 1)
    weights shared by n rows:    x (..., n, a) with W (..., a, b)    (W.ndim == x.ndim)
e.g. one token per state: k (B, H, d), W (B, H, d, h); a chunk of n tokens at the chunk-start
weights: k (B, H, n, d), W (B, H, d, h); per-token weights inside a chunk: W (B, H, n, d, h).
The leading axes must match (no broadcasting of weights over the batch).

Equations (paper numbering, row-vector form):
    (15)        a_1 = k W_1,  z_l = phi(a_l),  a_{l+1} = z_l W_{l+1},  M(k) = a_L     read (no
                activation after the last layer; z_0 = k, z_L = a_L)
    (12)/(A8)   l(M; k, v) = ||M(k) - v||^2          associative loss (sum over features, no 1/2)
    (A9)/(A11)  e = M(k) - v,  delta_L = 2 e,  delta_l = (delta_{l+1} W_{l+1}^T) * phi'(a_l),
                grad_{W_l} l = z_{l-1}^T delta_l     one outer product per token (never summed here)
    ADJ (A4.2, the general L-layer recipe of B4 in row-major layout with c = 1): given upstream
                G_l = dL/d(grad_{W_l} l), the gradients of <G, grad l> with respect to the weights
                (the Hessian-vector product), the key and the value. G_l acts only through
                z_{l-1} G_l and G_l delta_l^T (u_l is an outer product), so
                mem_inner_grad_adjoint_projected takes just those two vectors per token.
Activations phi: "silu" (the minimem default), "tanh". Exact GELU (lucidrains) needs erf, which
minimem.autodiff does not have, so it is not offered.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from minimem import autodiff as ad

ACTIVATIONS = ("silu", "tanh")


# ----------------------------------------------------------------- activation and its derivatives
def _sigmoid(a: np.ndarray) -> np.ndarray:
    """Logistic function 1 / (1 + exp(-a)): one exp, one add, one division, within a few ulp
    everywhere. Far below zero (float64: a < -709) exp(-a) overflows to inf (the warning is
    silenced) and the result is 0, against a true value below the smallest normal number."""
    e = np.empty(np.shape(a), dtype=np.result_type(a, 0.0))     # one buffer for every step
    np.negative(a, out=e)
    with np.errstate(over="ignore"):
        np.exp(e, out=e)
    e += 1.0
    return np.divide(1.0, e, out=e)                              # the same numbers as np.reciprocal, ~3x faster


def _product(x: np.ndarray, y, take) -> np.ndarray:
    """x * y (shaped like x), written to take(x.shape) when a `take` is given (see
    activation_derivatives), else a fresh array (the plain product: fewer calls for small arrays)."""
    return x * y if take is None else np.multiply(x, y, out=take(x.shape))


def check_activation(phi: str) -> str:
    if phi not in ACTIVATIONS:
        raise ValueError(f"memory activation phi must be one of {ACTIVATIONS}; got {phi!r}")
    return phi


def activation_derivatives(a: np.ndarray, phi: str, second: bool = True, take=None):
    """(phi(a), phi'(a), phi''(a)), spec A3.3:
    SiLU: phi = a s, phi' = s (1 + a (1 - s)), phi'' = s (1 - s) (2 + a (1 - 2 s)), s = sigma(a);
    tanh: phi' = 1 - tanh^2, phi'' = -2 tanh (1 - tanh^2).
    second=False skips phi'' and returns None in its place (the reads need only phi and phi').
    take: shape -> array, where the results are written (the chunked scan keeps them in one
    block of memory, titans_lmm.ChunkArena); default fresh arrays."""
    if phi == "silu":
        s = _sigmoid(a)
        one_minus = 1.0 - s
        d1 = _product(a, one_minus, take)
        d1 += 1.0
        d1 *= s                                                  # s (1 + a (1 - s))
        d2 = None
        if second:
            d2 = _product(s, -2.0, take)
            d2 += 1.0                                            # 1 - 2 s
            d2 *= a
            d2 += 2.0
            d2 *= one_minus
            d2 *= s                                              # s (1 - s) (2 + a (1 - 2 s)), as one_minus s (..)
        return _product(a, s, take), d1, d2
    if phi == "tanh":
        t = np.tanh(a) if take is None else np.tanh(a, out=take(a.shape))
        d1 = _product(t, t, take)
        np.subtract(1.0, d1, out=d1)                             # 1 - tanh^2
        return t, d1, (_product(-2.0 * t, d1, take) if second else None)
    raise ValueError(f"memory activation phi must be one of {ACTIVATIONS}; got {phi!r}")


def activation_autodiff(a, phi: str) -> ad.Tensor:
    """Autodiff twin of phi; differentiable any number of times (create_graph)."""
    if phi == "silu":
        return a * ad.sigmoid(a)
    if phi == "tanh":
        return ad.tanh(a)
    raise ValueError(f"memory activation phi must be one of {ACTIVATIONS}; got {phi!r}")


# ----------------------------------------------------------------- rows times weights
def _times(x: np.ndarray, W: np.ndarray) -> np.ndarray:
    """x W: rows (..., n, a) sharing W (..., a, b) -> (..., n, b) (one matrix product), or one
    vector (..., a) per weight set (..., a, b) -> (..., b)."""
    if W.ndim == x.ndim:
        return x @ W
    return (x[..., None, :] @ W)[..., 0, :]


def _times_T(y: np.ndarray, W: np.ndarray) -> np.ndarray:
    """y W^T, in the same two pairings as _times: (..., n, b) or (..., b) -> (..., n, a) or (..., a)."""
    if W.ndim == y.ndim:
        return y @ W.swapaxes(-1, -2)                            # the method: no np.swapaxes wrapper
    return (W @ y[..., :, None])[..., 0]


def _weight_grad(x: np.ndarray, y: np.ndarray, W: np.ndarray) -> np.ndarray:
    """x^T y shaped like W: summed over the rows when they share W, one outer product per weight set otherwise."""
    if W.ndim == x.ndim:
        if x.shape[-2] == 1:                                     # one row: an outer product by broadcasting
            return x.swapaxes(-1, -2) * y                        # (a batched matmul over 1 term is ~3x slower)
        return x.swapaxes(-1, -2) @ y                            # (..., a, n) @ (..., n, b)
    return x[..., :, None] * y[..., None, :]


def _per_row_outer(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x^T y for every row separately: (..., a), (..., b) -> (..., a, b)."""
    return x[..., :, None] * y[..., None, :]


def check_memory(Ws: Sequence[np.ndarray], d: int | None = None) -> tuple[int, ...]:
    """ValueError unless Ws is a chain W_1 (., d, n_1), ..., W_L (., n_{L-1}, d); returns the widths."""
    if not isinstance(Ws, (tuple, list)) or len(Ws) == 0:
        raise ValueError("memory weights must be a non-empty tuple (W_1, ..., W_L) of arrays (..., n_{l-1}, n_l)")
    widths = [np.shape(Ws[0])[-2]]
    for l, W in enumerate(Ws, start=1):
        shape = np.shape(W)
        if len(shape) < 2 or shape[-2] != widths[-1]:
            raise ValueError(f"memory weight W_{l} must have shape (..., {widths[-1]}, n_{l}); got {shape}")
        widths.append(shape[-1])
    if widths[-1] != widths[0] or (d is not None and widths[0] != d):
        raise ValueError(f"the memory must map width d={d if d is not None else widths[0]} to itself; "
                         f"layer widths are {widths}")
    return tuple(widths)


# ----------------------------------------------------------------- read: y = M(x), eq. (15)
class ReadCache(NamedTuple):
    Ws: tuple            # L weights (..., n_{l-1}, n_l)
    zs: list             # z_0 = x, z_1 .. z_{L-1}: layer inputs (..., n_{l-1})
    d1: list             # phi'(a_l), l = 1 .. L-1


def mem_read_forward(Ws: Sequence[np.ndarray], x: np.ndarray, phi: str = "silu"):
    """Read the memory, eq. (15): y = M(x), a plain forward pass of the MLP (no state change).

    Args:
        Ws: (W_1, ..., W_L), W_l (..., n_{l-1}, n_l): one set per query, or shared by rows of queries.
        x: (..., d) queries, one per weight set, or (..., n, d) rows sharing the weights.
        phi: hidden activation ("silu" or "tanh").
    Returns:
        y shaped like x, and the cache for mem_read_backward.
    """
    Ws = tuple(Ws)
    zs, d1 = [x], []
    z = x
    for l, W in enumerate(Ws):
        a = _times(z, W)                                         # (..., n_l)
        if l < len(Ws) - 1:
            z, dphi, _ = activation_derivatives(a, phi, second=False)
            zs.append(z)
            d1.append(dphi)
        else:
            z = a                                                # identity on the last layer
    return z, ReadCache(Ws, zs, d1)


def mem_read_backward(dy: np.ndarray, cache: ReadCache):
    """Adjoint of mem_read_forward. Returns (dx shaped like x, (dW_1, ..., dW_L) shaped like the
    weights: summed over the rows when they share the weights)."""
    Ws, zs, d1 = cache
    L = len(Ws)
    dWs = [None] * L
    dz = dy
    for l in reversed(range(L)):
        da = dz if l == L - 1 else dz * d1[l]                    # (..., n_{l+1})
        dWs[l] = _weight_grad(zs[l], da, Ws[l])
        dz = _times_T(da, Ws[l])                                 # (..., n_l)
    return dz, tuple(dWs)


def mem_read_autodiff(Ws: Sequence[ad.Tensor], x, phi: str = "silu") -> ad.Tensor:
    """Autodiff twin of mem_read_forward: y shaped like x."""
    z = ad.as_tensor(x)
    for l, W in enumerate(Ws):
        if W.ndim == z.ndim:                                     # rows sharing the weights
            a = ad.matmul(z, W)                                  # (..., n, n_l)
        else:                                                    # one weight set per vector
            a = ad.matmul(ad.reshape(z, z.shape[:-1] + (1, z.shape[-1])), W)    # (..., 1, n_l)
            a = ad.reshape(a, a.shape[:-2] + (a.shape[-1],))     # (..., n_l)
        z = activation_autodiff(a, phi) if l < len(Ws) - 1 else a
    return z


# ----------------------------------------------------------------- inner gradient, eqs. (A8)-(A11)
class InnerGradCache(NamedTuple):
    Ws: tuple            # L weights (..., n_{l-1}, n_l) at which the gradient is taken
    v: np.ndarray        # (..., d) values
    zs: list             # z_0 = k, z_1 .. z_L (z_L = M(k))
    d1: list             # phi'(a_l), l = 1 .. L-1
    pd2: list            # p_l phi''(a_l), l = 1 .. L-1, p_l = delta_{l+1} W_{l+1}^T (the dz of eq. (A11)):
                         # the adjoint needs p_l and phi''(a_l) only as this product
    deltas: list         # delta_1 .. delta_L (..., n_l)
    e: np.ndarray        # (..., d) residual M(k) - v


def mem_inner_grad_forward(Ws: Sequence[np.ndarray], k: np.ndarray, v: np.ndarray, phi: str = "silu",
                           per_token: bool = True, take=None):
    """Momentary surprise, eqs. (A8)-(A11): u_l = grad_{W_l} ||M(k) - v||^2, one per token.

    Args:
        Ws: (W_1, ..., W_L), W_l (..., n_{l-1}, n_l), the weights every token's gradient is taken at.
        k: keys (..., d), one token per weight set, or (..., n, d), n tokens sharing the weights;
            v: values, the same shape.
        phi: hidden activation.
        per_token: build the outer products u_l; False returns None for them and only the cache,
            whose factors give u_l = zs[l-1]^T deltas[l-1] (the chunked form's dual path needs no more).
        take: shape -> array, where the cache's hidden-layer arrays (z_l, phi', p phi'', l < L) and
            the deltas are written (see activation_derivatives); default fresh arrays.
    Returns:
        (u_1, ..., u_L), u_l (..., n_{l-1}, n_l) or (..., n, n_{l-1}, n_l): one gradient per token,
        never summed (the chunked form needs them one by one, A3.3); the loss per token; the cache.
    """
    Ws = tuple(Ws)
    L = len(Ws)
    zs, d1, pd2 = [k], [], []
    z = k
    for l, W in enumerate(Ws):
        a = _times(z, W)                                         # (..., n_l)
        if l < L - 1:
            z, p1, p2 = activation_derivatives(a, phi, take=take)
            d1.append(p1)
            pd2.append(p2)                                       # times p_l below, in place
        else:
            z = a
        zs.append(z)
    e = zs[L] - v                                                # (..., d)
    deltas = [None] * L
    deltas[L - 1] = _product(e, 2.0, take)                       # (A9): grad of ||e||^2 w.r.t. the output
    for l in reversed(range(L - 1)):
        p = _times_T(deltas[l + 1], Ws[l + 1])                   # (..., n_l)  dz of (A11)
        deltas[l] = _product(p, d1[l], take)                     # da of (A11)
        pd2[l] *= p
    us = tuple(_per_row_outer(zs[l], deltas[l]) for l in range(L)) if per_token else None   # z_{l-1}^T delta_l
    loss = np.sum(e * e, axis=-1)
    return us, loss, InnerGradCache(Ws, v, zs, d1, pd2, deltas, e)


def mem_inner_grad_adjoint(dus: Sequence[np.ndarray], cache: InnerGradCache):
    """Exact adjoint of mem_inner_grad_forward (spec A4.2 ADJ; B4 general recipe, row-major).

    Args:
        dus: (G_1, ..., G_L), G_l shaped like u_l: the outer loss's gradient w.r.t. each token's u_l.
        cache: from mem_inner_grad_forward.
    Returns:
        (dW_1, ..., dW_L) shaped like the weights (summed over the tokens sharing them: the
        Hessian-vector products), dk and dv shaped like k and v (the mixed second derivatives).
    """
    zs, deltas = cache.zs, cache.deltas
    zG = [(zs[l][..., None, :] @ G)[..., 0, :] for l, G in enumerate(dus)]     # z_{l-1} G_l   (..., n_l)
    Gdelta = [(G @ deltas[l][..., :, None])[..., 0] for l, G in enumerate(dus)]  # G_l delta_l^T (..., n_{l-1})
    return mem_inner_grad_adjoint_projected(zG, Gdelta, cache)


def mem_inner_grad_adjoint_projected(zG: Sequence[np.ndarray], Gdelta: Sequence[np.ndarray], cache: InnerGradCache):
    """mem_inner_grad_adjoint given only the two projections of each G_l through which it acts:
    u_l = z_{l-1}^T delta_l, so <G_l, u_l> depends on delta_l through z_{l-1} G_l and on z_{l-1}
    through G_l delta_l^T. The chunked LMM computes these projections without ever forming G_l.

    Args:
        zG: (z_0 G_1, ..., z_{L-1} G_L), each (..., n_l) (per token: the rows of the cache's zs).
        Gdelta: (G_1 delta_1^T, ..., G_L delta_L^T), each (..., n_{l-1}).
    Returns:
        the same as mem_inner_grad_adjoint.
    """
    Ws, v, zs, d1, pd2, deltas, _ = cache                  # e and z_L are not needed (the chunked form drops them)
    L = len(Ws)
    dWs = [None] * L                        # filled by their first term (no zeros to add to)
    dzs = [0.0] * (L + 1)
    das = [0.0] * (L + 1)                   # das[l] collects d_a for layer l (1-indexed)
    ddeltas = [0.0] * (L + 1)
    dv = None
    for l in range(1, L + 1):              # increasing: delta_l depends on delta_{l+1}
        ddeltas[l] = ddeltas[l] + zG[l - 1]                      # u_l = z_{l-1}^T delta_l
        dzs[l - 1] = dzs[l - 1] + Gdelta[l - 1]
        if l < L:                           # delta_l = p_l * phi'(a_l), p_l = delta_{l+1} W_{l+1}^T
            dp = ddeltas[l] * d1[l - 1]
            das[l] = das[l] + ddeltas[l] * pd2[l - 1]
            ddeltas[l + 1] = ddeltas[l + 1] + _times(dp, Ws[l])
            _accumulate(dWs, l, _weight_grad(dp, deltas[l], Ws[l]), Ws[l], deltas[-1].dtype)
        else:                               # delta_L = 2 (z_L - v)
            dzs[L] = dzs[L] + 2.0 * ddeltas[L]
            dv = -2.0 * ddeltas[L]
    for l in range(L, 0, -1):              # back through the forward pass a_l = z_{l-1} W_l
        da = dzs[l] + das[l] if l == L else dzs[l] * d1[l - 1] + das[l]
        _accumulate(dWs, l - 1, _weight_grad(zs[l - 1], da, Ws[l - 1]), Ws[l - 1], deltas[-1].dtype)
        dzs[l - 1] = dzs[l - 1] + _times_T(da, Ws[l - 1])
    return tuple(dWs), dzs[0], dv


def _accumulate(dWs: list, l: int, term: np.ndarray, W: np.ndarray, dtype) -> None:
    """dWs[l] += term, where dWs[l] is None before the first term (a fresh array: kept as it is)."""
    if dWs[l] is not None:
        dWs[l] += term
    elif term.shape == W.shape and term.dtype == dtype:
        dWs[l] = term
    else:
        dWs[l] = np.zeros(W.shape, dtype=dtype) + term


def mem_inner_grad_autodiff(Ws: Sequence[ad.Tensor], k, v, phi: str = "silu") -> tuple:
    """Autodiff twin of mem_inner_grad_forward: the per-token gradients (u_1, ..., u_L) as Tensors,
    computed by minimem.autodiff itself with create_graph=True, so an outer backward differentiates
    through them (second order). Every token gets its own broadcast copy of the weights, so the
    gradient with respect to that copy is the token's own u_l."""
    k, v = ad.as_tensor(k), ad.as_tensor(v)
    copies = []
    for W in Ws:
        W = ad.as_tensor(W)
        if W.ndim == k.ndim:                # n rows share W: one copy per row
            W = ad.reshape(W, W.shape[:-2] + (1,) + W.shape[-2:])
        copy = ad.broadcast_to(W, k.shape[:-1] + W.shape[-2:])
        if not copy.requires_grad:          # the values of u are needed even when W is a constant
            copy = ad.Tensor(copy.data, requires_grad=True)
        copies.append(copy)
    # k and v enter through alias nodes that are part of the sweep's boundary too: the sweep then
    # stops at the copies and the aliases and never walks the history behind them, so a scan of T
    # tokens costs O(T), not O(T^2); the aliases still link u to k and v for the outer backward.
    k_alias, v_alias = ad.reshape(k, k.shape), ad.reshape(v, v.shape)
    boundary = [x for x in (k_alias, v_alias) if x.requires_grad]
    residual = mem_read_autodiff(copies, k_alias, phi) - v_alias   # (..., d)
    loss = ad.sum(residual * residual)                           # (A8), summed over the tokens
    return ad.grad(loss, copies + boundary, create_graph=True, stop_at_inputs=True)[:len(copies)]
