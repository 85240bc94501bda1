"""The memory of Metalearned Neural Memory (Munkhdalai, Sordoni, Wang & Trischler, NeurIPS 2019,
arXiv:1907.09720): a small tanh network f_phi whose weights phi are the memory, read by a forward
pass and written in one shot, either by a gradient step (MNM-g) or by a learned local rule (MNM-p).

Equation numbers are those of specs/titans_mnm.md Part B (B3 forward, B4 backward), which follows
a port of the authors' MNM-p code; the paper's own numbering of these formulas is not available.

Shapes: B batch, Nh interaction heads (N_h in the spec: key/value pairs written and read per step),
d key/value width, h hidden width, L depth (number of weight matrices), n_l width of layer l
(n_0 = n_L = d, n_l = h in between). Rows are heads (row vectors, spec section 0).
Fast weights phi = (W_1, ..., W_L), W_l: (B, n_l, n_{l-1}) in the (out, in) layout of the
reference code (PyTorch's nn.Linear.weight): a layer computes A_l = Z_{l-1} W_l^T. One copy per
batch element; everything below is vectorised over B and Nh and loops only over layers.

Equations:
    (B4)  Z_0 = K;  A_l = Z_{l-1} W_l^T;  Z_l = tanh(A_l) for l < L,  Z_L = A_L;  f_phi(K) = Z_L
    (B5)  L^up(phi) = c sum_n ||f_phi(k_n) - v_n||^2,  c = 1 / (Nh d)      reconstruction loss
          phi_t = phi_{t-1} - beta grad_phi L^up(phi_{t-1})                 MNM-g writer
    (B6)  W_l,t = W_l,t-1 - beta (2 / (Nh n_l)) (Z_l - Z'_l)^T Z_{l-1}       MNM-p writer, every
          layer from the pre-write activations Z_l on the write keys and targets Z'_l
    (B7)  v^r = (1 / Nh) sum_n f_phi(k^r_n)                                  read
    (B9)  L^meta = L^up(phi_t), the reconstruction loss after the write       meta-objective

Pairs (`<thing>_forward -> (out, cache)`, `<thing>_backward(dout, cache)`) and autodiff twins:
    mnm_mem           (B4) the network on a batch of keys; the backward takes gradients for every Z_l
    mnm_recon         (B5)/(B9) L^up per batch element
    mnm_inner_grad    grad_phi L^up and its adjoint, the second-order part of MNM-g (B4, "MNM-g")
    mnm_write_grad    (B5) MNM-g; its backward is exact to second order
    mnm_write_local   (B6) MNM-p; first order is exact (no derivative inside the rule)
    mnm_read          (B7)
    mnm_read_recon_backward  the adjoints of a read and L^meta through the same weights, as one pass
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from minimem import autodiff as ad

Weights = tuple  # (W_1, ..., W_L), each (B, n_l, n_{l-1})


# ----------------------------------------------------------------- validation
def check_memory(weights: Sequence, keys, name: str = "keys") -> tuple[int, int]:
    """ValueError unless weights is a chain of (B, n_l, n_{l-1}) arrays and keys is (B, Nh, n_0).

    Returns (B, Nh). Works on ndarrays and Tensors (only shapes are read).
    """
    if not isinstance(weights, (tuple, list)) or len(weights) == 0:
        raise ValueError(f"weights must be a non-empty tuple (W_1, ..., W_L); got {type(weights).__name__}")
    first = np.shape(weights[0])
    if len(first) != 3:
        raise ValueError(f"W_1 must have shape (B, n_1, n_0); got {first}")
    B = first[0]
    for l in range(1, len(weights)):
        prev, shape = np.shape(weights[l - 1]), np.shape(weights[l])
        if len(shape) != 3 or shape[0] != B or shape[2] != prev[1]:
            raise ValueError(f"W_{l + 1} must have shape (B, n_{l + 1}, n_{l}) = ({B}, n_{l + 1}, {prev[1]}); "
                             f"got {shape}")
    key_shape = np.shape(keys)
    if len(key_shape) != 3 or key_shape[0] != B or key_shape[2] != first[2] or key_shape[1] == 0:
        raise ValueError(f"{name} must have shape (B, Nh, d) = ({B}, Nh, {first[2]}) with Nh >= 1; got {key_shape}")
    return B, key_shape[1]


def _check_like(name: str, x, shape: tuple) -> None:
    if np.shape(x) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}; got {np.shape(x)}")


def _check_beta(beta, B: int) -> None:
    if np.shape(beta) != (B,):
        raise ValueError(f"beta must have shape (B,) = ({B},), one update rate per batch element; "
                         f"got {np.shape(beta)}")


def _T(x: np.ndarray) -> np.ndarray:
    """Swap the last two axes (a batched transpose)."""
    return x.swapaxes(-1, -2)


def _minus_outer(W: np.ndarray, D: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """W - D^T Z per batch element ((B, p, q), (B, Nh, p), (B, Nh, q)) as one new array: the
    product is overwritten by the result, so no second (B, p, q) array is allocated (at these sizes
    a fresh array's pages cost about as much as the arithmetic)."""
    new = _outer(D, Z)
    np.subtract(W, new, out=new)
    return new


def _outer(D: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """D^T Z per batch element, summed over the heads: (B, Nh, p), (B, Nh, q) -> (B, p, q).

    This is _T(D) @ Z. With one head the inner dimension is 1, and np.matmul then runs a generic
    loop that is about 4x slower than np.einsum at B = 32, p = q = 32; the single product per
    entry is the same, so both give identical numbers.
    """
    if D.shape[1] == 1:
        return np.einsum("bni,bnj->bij", D, Z)
    return _T(D) @ Z


# ----------------------------------------------------------------- the network, eq. (B4)
class MemCache(NamedTuple):
    weights: Weights     # L arrays (B, n_l, n_{l-1})
    Zs: list             # L + 1 arrays (B, Nh, n_l): Z_0 = keys, ..., Z_L = f_phi(keys)


def mnm_mem_forward(weights: Sequence[np.ndarray], keys: np.ndarray):
    """The memory network f_phi, eq. (B4): tanh hidden layers, a linear output layer, no biases.

    Args:
        weights: (W_1, ..., W_L), W_l (B, n_l, n_{l-1}), used as Z_{l-1} W_l^T.
        keys: (B, Nh, d) one key per head, Z_0.
    Returns:
        Z_L = f_phi(keys): (B, Nh, n_L), and the cache for mnm_mem_backward (all Z_l).
    """
    check_memory(weights, keys)
    return _mem_forward(weights, keys)


def _mem_forward(weights: Sequence[np.ndarray], keys: np.ndarray):
    """mnm_mem_forward without the shape check, for callers that have already made it."""
    Zs = [keys]
    L = len(weights)
    for l, W in enumerate(weights, start=1):
        A = Zs[-1] @ _T(W)                                          # (B, Nh, n_l)
        Zs.append(np.tanh(A) if l < L else A)
    return Zs[-1], MemCache(tuple(weights), Zs)


def _tanh_derivatives(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(s', s'') of tanh at A, from Z = tanh(A): 1 - Z^2 and -2 Z (1 - Z^2)."""
    d1 = 1.0 - Z * Z
    return d1, -2.0 * Z * d1


def mnm_mem_backward(dZs: Sequence[np.ndarray | None], cache: MemCache,
                     dAs: Sequence[np.ndarray | None] | None = None, extra: Sequence | None = None):
    """Adjoint of eq. (B4) with gradients arriving at every layer.

    Args:
        dZs: L entries, the gradients w.r.t. Z_1, ..., Z_L (each (B, Nh, n_l), or None for zero).
            A plain read passes (None, ..., None, dZ_L).
        cache: from mnm_mem_forward.
        dAs: optionally L extra gradients w.r.t. the pre-activations A_l (the MNM-g adjoint has them).
        extra: optionally L entries (D, Z) or None: D^T Z (D (B, K, n_l), Z (B, K, n_{l-1})) is
            added to the gradient of W_l, in the same product as the layer's own dA_l^T Z_{l-1}
            (the factors are stacked along the heads axis).
    Returns:
        (dweights, dkeys): a tuple of L arrays (B, n_l, n_{l-1}) and (B, Nh, d).
    """
    weights, Zs = cache
    L = len(weights)
    if len(dZs) != L:
        raise ValueError(f"dZs must hold one gradient per layer (L={L}); got {len(dZs)}")
    dweights = [None] * L
    dZ = dZs[L - 1]
    dZ = np.zeros_like(Zs[L]) if dZ is None else dZ
    for l in range(L, 0, -1):                                       # l = L .. 1
        dA = dZ if l == L else dZ * (1.0 - Zs[l] * Zs[l])           # (B, Nh, n_l)
        if dAs is not None and dAs[l - 1] is not None:
            dA = dA + dAs[l - 1]
        if extra is not None and extra[l - 1] is not None:
            D, Z = extra[l - 1]
            dweights[l - 1] = _outer(np.concatenate([dA, D], axis=1), np.concatenate([Zs[l - 1], Z], axis=1))
        else:
            dweights[l - 1] = _outer(dA, Zs[l - 1])                  # (B, n_l, n_{l-1})
        dZ = dA @ weights[l - 1]                                    # (B, Nh, n_{l-1})
        if l > 1 and dZs[l - 2] is not None:
            dZ = dZ + dZs[l - 2]
    return tuple(dweights), dZ


def mnm_mem_autodiff(weights: Sequence, keys) -> ad.Tensor:
    """Autodiff twin of mnm_mem_forward: f_phi(keys) (B, Nh, n_L) as a Tensor."""
    check_memory(weights, keys)
    Z = ad.as_tensor(keys)
    L = len(weights)
    for l, W in enumerate(weights, start=1):
        A = ad.matmul(Z, ad.swapaxes(W, -1, -2))                    # (B, Nh, n_l)
        Z = ad.tanh(A) if l < L else A
    return Z


# ----------------------------------------------------------------- reconstruction loss, eqs. (B5), (B9)
class ReconCache(NamedTuple):
    mem: MemCache
    error: np.ndarray    # (B, Nh, d) f_phi(K) - V
    c: float             # 1 / (Nh d)


def mnm_recon_forward(weights: Sequence[np.ndarray], keys: np.ndarray, values: np.ndarray):
    """L^up(phi) = 1/(Nh d) sum_n ||f_phi(k_n) - v_n||^2 per batch element, eqs. (B5) and (B9).

    Args:
        weights: (W_1, ..., W_L), W_l (B, n_l, n_{l-1}).
        keys, values: (B, Nh, d) write keys k^w and values v^w.
    Returns:
        loss (B,), and the cache for mnm_recon_backward.
    """
    B, Nh = check_memory(weights, keys)
    d = np.shape(weights[-1])[1]
    _check_like("values", values, (B, Nh, d))
    out, mem = _mem_forward(weights, keys)                          # checked above
    error = out - values                                            # (B, Nh, d)
    c = 1.0 / (Nh * d)
    return c * np.sum(error * error, axis=(1, 2)), ReconCache(mem, error, c)


def mnm_recon_backward(dloss: np.ndarray, cache: ReconCache):
    """Adjoint of mnm_recon_forward. dloss (B,). Returns (dweights, dkeys, dvalues)."""
    mem, error, c = cache
    derror = 2.0 * c * dloss[:, None, None] * error                 # (B, Nh, d)
    dweights, dkeys = mnm_mem_backward([None] * (len(mem.weights) - 1) + [derror], mem)
    return dweights, dkeys, -derror


def mnm_recon_autodiff(weights: Sequence, keys, values) -> ad.Tensor:
    """Autodiff twin of mnm_recon_forward: (B,) Tensor."""
    error = mnm_mem_autodiff(weights, keys) - values                # (B, Nh, d)
    Nh, d = error.shape[1], error.shape[2]
    return (error * error).sum(axis=(1, 2)) * (1.0 / (Nh * d))


# ----------------------------------------------------------------- the inner gradient and its adjoint
class InnerGradCache(NamedTuple):
    mem: MemCache
    error: np.ndarray    # (B, Nh, d) Z_L - V
    deltas: list         # L arrays (B, Nh, n_l): Delta_l = dL^up / dA_l
    c: float


def mnm_inner_grad_forward(weights: Sequence[np.ndarray], keys: np.ndarray, values: np.ndarray):
    """g = grad_phi L^up(phi; K, V), the MNM-g write direction of eq. (B5), by back-propagation
    inside the memory (spec B4, "forward backward"):

        Delta_L = 2c (Z_L - V);   Delta_l = (Delta_{l+1} W_{l+1}) * tanh'(A_l);   g_l = Delta_l^T Z_{l-1}

    Args:
        weights: (W_1, ..., W_L), W_l (B, n_l, n_{l-1}).
        keys, values: (B, Nh, d).
    Returns:
        g: a tuple of L arrays (B, n_l, n_{l-1}) (each batch element's own gradient), and the cache.
    """
    cache = _inner_grad_deltas(weights, keys, values)
    Zs, deltas = cache.mem.Zs, cache.deltas
    g = tuple(_outer(deltas[l], Zs[l]) for l in range(len(weights)))   # (B, n_l, n_{l-1})
    return g, cache


def _inner_grad_deltas(weights: Sequence[np.ndarray], keys: np.ndarray, values: np.ndarray) -> InnerGradCache:
    """The Delta recursion of mnm_inner_grad_forward (checked inputs), without forming g."""
    B, Nh = check_memory(weights, keys)
    d = np.shape(weights[-1])[1]
    _check_like("values", values, (B, Nh, d))
    out, mem = _mem_forward(weights, keys)                          # checked above
    L, Zs, c = len(weights), mem.Zs, 1.0 / (Nh * d)
    error = out - values                                            # (B, Nh, d)
    deltas = [None] * L
    deltas[L - 1] = 2.0 * c * error                                 # the output layer is linear
    for l in range(L - 1, 0, -1):                                   # l = L-1 .. 1
        deltas[l - 1] = (deltas[l] @ weights[l]) * (1.0 - Zs[l] * Zs[l])   # (B, Nh, n_l)
    return InnerGradCache(mem, error, deltas, c)


def mnm_inner_grad_backward(dg: Sequence[np.ndarray], cache: InnerGradCache):
    """Adjoint of mnm_inner_grad_forward: the Hessian-vector and mixed second derivatives that
    MNM-g needs (spec P.1 and B4, "adjoint"). dg: L arrays (B, n_l, n_{l-1}), the gradient w.r.t. g.

    Walks l = 1 .. L through the Delta recursion (dDelta_l is complete when reached), then
    l = L .. 1 back through the forward pass of the keys (mnm_mem_backward with the extra dA_l
    from tanh''). Returns (dweights, dkeys, dvalues).
    """
    mem, error, deltas, c = cache
    weights, Zs = mem
    L = len(weights)
    ddeltas = [np.zeros_like(delta) for delta in deltas]            # (B, Nh, n_l)
    dZs = [None] * L                                                # w.r.t. Z_1 .. Z_L
    dAs = [None] * L
    from_deltas = [None] * L                                        # W_{l+1} inside Delta_l: (Delta_{l+1}, dQ_l)
    dkeys = np.zeros_like(Zs[0])
    for l in range(1, L + 1):                                       # l = 1 .. L
        G = dg[l - 1]                                               # (B, n_l, n_{l-1})
        ddeltas[l - 1] = ddeltas[l - 1] + Zs[l - 1] @ _T(G)         # g_l = Delta_l^T Z_{l-1}
        dZ_prev = deltas[l - 1] @ G                                 # (B, Nh, n_{l-1})
        if l == 1:
            dkeys = dkeys + dZ_prev
        else:
            dZs[l - 2] = dZ_prev if dZs[l - 2] is None else dZs[l - 2] + dZ_prev
        if l < L:                                                   # Delta_l = Q_l * s'(A_l)
            Q = deltas[l] @ weights[l]                              # (B, Nh, n_l)
            s1, s2 = _tanh_derivatives(Zs[l])
            dQ = ddeltas[l - 1] * s1
            dAs[l - 1] = ddeltas[l - 1] * Q * s2
            ddeltas[l] = ddeltas[l] + dQ @ _T(weights[l])           # (B, Nh, n_{l+1})
            from_deltas[l] = (deltas[l], dQ)                        # dW_{l+1} += Delta_{l+1}^T dQ_l
        else:                                                       # Delta_L = 2c (Z_L - V), linear
            derror = 2.0 * c * ddeltas[L - 1]                       # (B, Nh, d)
            dZs[L - 1] = derror if dZs[L - 1] is None else dZs[L - 1] + derror
            dvalues = -derror
    dweights, dkeys_fwd = mnm_mem_backward(dZs, mem, dAs, extra=from_deltas)
    return dweights, dkeys + dkeys_fwd, dvalues


def mnm_inner_grad_autodiff(weights: Sequence, keys, values, method: str = "tape") -> tuple:
    """Autodiff twin of mnm_inner_grad_forward, differentiable again.

    method "tape": ad.grad(L^up, phi, create_graph=True), the generic route (an independent check
    of the hand-written Delta recursion); "closed_form": the recursion of mnm_inner_grad_forward
    written in Tensor ops.

    The tape needs the PARTIAL derivative with respect to phi as the network's weights. In a model
    the keys and values themselves depend on phi_{t-1} (through the read-out and the controller),
    so ad.grad(L^up, phi_{t-1}) would return the total derivative. Each weight therefore enters
    L^up through its own alias node (a reshape onto the same shape): the gradient at the alias is
    the partial one, and the alias still links to phi_{t-1} for the second-order backward. A
    weight that is a constant (e.g. a fixed phi_0) becomes a fresh leaf instead.
    """
    if method == "tape":
        aliases = [ad.reshape(w, w.shape) if isinstance(w, ad.Tensor) and w.requires_grad
                   else ad.Tensor(ad.as_tensor(w).data, requires_grad=True) for w in weights]
        # keys and values get alias nodes too, and the sweep stops at every alias (stop_at_inputs):
        # it never walks the history behind them, so T steps cost O(T) instead of O(T^2).
        key_alias, value_alias = (ad.reshape(x, x.shape) for x in (ad.as_tensor(keys), ad.as_tensor(values)))
        boundary = [x for x in (key_alias, value_alias) if x.requires_grad]
        loss = mnm_recon_autodiff(aliases, key_alias, value_alias).sum()   # batch elements are independent
        return ad.grad(loss, aliases + boundary, create_graph=True, stop_at_inputs=True)[:len(aliases)]
    if method != "closed_form":
        raise ValueError(f"method must be 'tape' or 'closed_form'; got {method!r}")
    check_memory(weights, keys)
    L = len(weights)
    Zs = [ad.as_tensor(keys)]
    for l, W in enumerate(weights, start=1):
        A = ad.matmul(Zs[-1], ad.swapaxes(W, -1, -2))
        Zs.append(ad.tanh(A) if l < L else A)
    Nh, d = Zs[-1].shape[1], Zs[-1].shape[2]
    delta = (Zs[-1] - values) * (2.0 / (Nh * d))
    g = [None] * L
    for l in range(L, 0, -1):
        g[l - 1] = ad.matmul(ad.swapaxes(delta, -1, -2), Zs[l - 1])
        if l > 1:
            delta = ad.matmul(delta, weights[l - 1]) * (1.0 - Zs[l - 1] * Zs[l - 1])
    return tuple(g)


# ----------------------------------------------------------------- MNM-g writer, eq. (B5)
class WriteGradCache(NamedTuple):
    inner: InnerGradCache  # g_l = Delta_l^T Z_{l-1} is never stored: the backward needs only Delta_l, Z_l
    beta: np.ndarray     # (B,)


def mnm_write_grad_forward(weights: Sequence[np.ndarray], keys: np.ndarray, values: np.ndarray, beta: np.ndarray):
    """MNM-g, eq. (B5): phi_t = phi_{t-1} - beta grad_phi L^up(phi_{t-1}; K^w, V^w).

    Args:
        weights: phi_{t-1} = (W_1, ..., W_L), W_l (B, n_l, n_{l-1}).
        keys, values: (B, Nh, d) write keys and values.
        beta: (B,) update rate per batch element (0 leaves the memory unchanged).
    Returns:
        phi_t (a tuple shaped like weights), and the cache for mnm_write_grad_backward.
    """
    inner = _inner_grad_deltas(weights, keys, values)
    _check_beta(beta, np.shape(keys)[0])
    b = beta[:, None, None]
    Zs, deltas = inner.mem.Zs, inner.deltas
    # W_l - beta g_l = W_l - (beta Delta_l)^T Z_{l-1}: beta scales the small Delta_l (B, Nh, n_l)
    new = tuple(_minus_outer(W, b * delta, Z) for W, delta, Z in zip(weights, deltas, Zs))
    return new, WriteGradCache(inner, beta)


def mnm_write_grad_backward(dnew: Sequence[np.ndarray], cache: WriteGradCache):
    """Exact (second-order) adjoint of eq. (B5), spec B4 "MNM-g":
    dphi_{t-1} = G + ADJ(-beta G), dbeta = -<G, g>, dK^w and dV^w from ADJ.

    Args:
        dnew: L arrays (B, n_l, n_{l-1}), G = dL/dphi_t.
    Returns:
        (dweights, dkeys, dvalues, dbeta (B,)).
    """
    inner, beta = cache
    Zs = inner.mem.Zs
    # dbeta = -<G, g> = -sum_l sum_n (Delta_l G_l)_n . z_{l-1,n}: from the small (B, Nh, n_{l-1})
    # products Delta_l G_l instead of g_l, which the forward never forms.
    dbeta = -sum(np.sum((delta @ G) * Z, axis=(1, 2)) for G, delta, Z in zip(dnew, inner.deltas, Zs))   # (B,)
    # ADJ is linear in its argument and acts on each batch element separately, so ADJ(-beta G) =
    # -beta ADJ(G): the factor goes on ADJ's new arrays in place instead of a scaled copy of G.
    dweights, dkeys, dvalues = mnm_inner_grad_backward(dnew, inner)
    s = -beta[:, None, None]
    for dw, G in zip(dweights, dnew):
        dw *= s
        dw += G                                                     # dphi_{t-1} = G + ADJ(-beta G)
    return dweights, dkeys * s, dvalues * s, dbeta


def mnm_write_grad_autodiff(weights: Sequence, keys, values, beta, method: str = "tape") -> tuple:
    """Autodiff twin of mnm_write_grad_forward (the inner gradient by mnm_inner_grad_autodiff, so a
    backward through it is second order)."""
    g = mnm_inner_grad_autodiff(weights, keys, values, method)
    b = ad.reshape(ad.as_tensor(beta), (-1, 1, 1))
    return tuple(W - b * gl for W, gl in zip(weights, g))


# ----------------------------------------------------------------- MNM-p writer, eq. (B6)
class WriteLocalCache(NamedTuple):
    mem: MemCache        # the write keys through phi_{t-1}
    diffs: list          # L arrays (B, Nh, n_l): D_l = Z_l - Z'_l
    rates: list          # L floats 2 / (Nh n_l)
    beta: np.ndarray     # (B,)


def mnm_write_local_forward(weights: Sequence[np.ndarray], keys: np.ndarray, targets: Sequence[np.ndarray],
                            beta: np.ndarray):
    """MNM-p, eq. (B6): every layer moves its own post-activation output on the write keys towards
    a target activation, with no derivative of tanh and no back-propagated error:

        W_l,t = W_l,t-1 - beta (2 / (Nh n_l)) (Z_l - Z'_l)^T Z_{l-1},   l = 1 .. L,

    all from the pre-write activations Z_l of the keys through phi_{t-1}.

    Args:
        weights: phi_{t-1} = (W_1, ..., W_L), W_l (B, n_l, n_{l-1}).
        keys: (B, Nh, d) write keys, Z_0.
        targets: L arrays (B, Nh, n_l), the target activations Z'_l (the model predicts them
            from v^w by the target map).
        beta: (B,) update rate.
    Returns:
        phi_t (a tuple shaped like weights), and the cache for mnm_write_local_backward.
    """
    B, Nh = check_memory(weights, keys)
    L = len(weights)
    if not isinstance(targets, (tuple, list)) or len(targets) != L:
        raise ValueError(f"targets must be a tuple of L={L} arrays (B, Nh, n_l); got {type(targets).__name__}")
    for l, (Tl, W) in enumerate(zip(targets, weights), start=1):
        _check_like(f"targets[{l - 1}] (Z'_{l})", Tl, (B, Nh, np.shape(W)[1]))
    _check_beta(beta, B)
    _, mem = _mem_forward(weights, keys)                            # checked above
    Zs, b = mem.Zs, beta[:, None, None]
    diffs = [Zs[l] - targets[l - 1] for l in range(1, L + 1)]       # (B, Nh, n_l)
    rates = [2.0 / (Nh * np.shape(W)[1]) for W in weights]
    # W_l - beta r_l U_l with U_l = D_l^T Z_{l-1}: the factor scales the small D_l (B, Nh, n_l), and
    # U_l is never stored (the backward needs only D_l and Z_l).
    new = tuple(_minus_outer(W, (b * r) * D, Z) for W, r, D, Z in zip(weights, rates, diffs, Zs))
    return new, WriteLocalCache(mem, diffs, rates, beta)


def mnm_write_local_backward(dnew: Sequence[np.ndarray], cache: WriteLocalCache):
    """First-order adjoint of eq. (B6) (exact: the rule contains no derivative), spec B4 "MNM-p".
    With G_l = dnew[l] and r_l = 2 / (Nh n_l):

        dW_l,t-1 += G_l;   dD_l = -beta r_l Z_{l-1} G_l^T;   dZ_{l-1} += -beta r_l D_l G_l;
        dbeta += -r_l <G_l, U_l>;   dZ_l += dD_l;   dZ'_l = -dD_l,

    then the accumulated dZ_l go back through the forward pass of the keys (mnm_mem_backward).
    Returns (dweights, dkeys, dtargets (a tuple of L arrays (B, Nh, n_l)), dbeta (B,)).
    """
    mem, diffs, rates, beta = cache
    Zs, L = mem.Zs, len(mem.weights)
    b = beta[:, None, None]
    dbeta = np.zeros_like(beta)                                     # (B,)
    dZs = [None] * L                                                # w.r.t. Z_1 .. Z_L
    dtargets = [None] * L
    dkeys = np.zeros_like(Zs[0])
    for l in range(1, L + 1):
        DG = diffs[l - 1] @ dnew[l - 1]                             # (B, Nh, n_{l-1}) D_l G_l
        dbeta -= rates[l - 1] * np.sum(DG * Zs[l - 1], axis=(1, 2))   # <G_l, U_l> = sum_n (D_l G_l)_n . z_{l-1,n}
        # dU = -beta r_l G_l; both products are linear in dU, so the factor -beta r_l scales
        # their small (B, Nh, .) results instead of the (B, n_l, n_{l-1}) matrix G_l.
        scale = -b * rates[l - 1]                                   # (B, 1, 1)
        dD = (Zs[l - 1] @ _T(dnew[l - 1])) * scale                  # (B, Nh, n_l)
        dZ_prev = DG * scale                                        # (B, Nh, n_{l-1})
        if l == 1:
            dkeys = dkeys + dZ_prev
        else:
            dZs[l - 2] = dZ_prev if dZs[l - 2] is None else dZs[l - 2] + dZ_prev
        dZs[l - 1] = dD if dZs[l - 1] is None else dZs[l - 1] + dD
        dtargets[l - 1] = -dD
    dweights, dkeys_fwd = mnm_mem_backward(dZs, mem)
    for dw, G in zip(dweights, dnew):
        dw += G                                                     # dW_l,t-1 += G_l, in place (a new array)
    return dweights, dkeys + dkeys_fwd, tuple(dtargets), dbeta


def mnm_write_local_autodiff(weights: Sequence, keys, targets: Sequence, beta) -> tuple:
    """Autodiff twin of mnm_write_local_forward."""
    check_memory(weights, keys)
    L, Nh = len(weights), np.shape(keys)[1]
    b = ad.reshape(ad.as_tensor(beta), (-1, 1, 1))
    Z = ad.as_tensor(keys)
    new = []
    for l, (W, target) in enumerate(zip(weights, targets), start=1):
        A = ad.matmul(Z, ad.swapaxes(W, -1, -2))                    # (B, Nh, n_l)
        Z_next = ad.tanh(A) if l < L else A
        update = ad.matmul(ad.swapaxes(Z_next - target, -1, -2), Z)  # (B, n_l, n_{l-1})
        new.append(W - b * (2.0 / (Nh * W.shape[1])) * update)
        Z = Z_next
    return tuple(new)


# ----------------------------------------------------------------- read, eq. (B7)
def mnm_read_forward(weights: Sequence[np.ndarray], keys: np.ndarray):
    """v^r = (1/Nh) sum_n f_phi(k^r_n), eq. (B7). Reading never changes phi.

    Args:
        weights: (W_1, ..., W_L), W_l (B, n_l, n_{l-1}) (phi_t, after this step's write).
        keys: (B, Nh, d) read keys k^r.
    Returns:
        v^r (B, d), and the cache for mnm_read_backward.
    """
    out, mem = mnm_mem_forward(weights, keys)
    return out.mean(axis=1), mem                                    # (B, d)


def mnm_read_backward(dread: np.ndarray, cache: MemCache):
    """Adjoint of eq. (B7). dread (B, d). Returns (dweights, dkeys (B, Nh, d))."""
    Nh = cache.Zs[0].shape[1]
    dout = np.repeat(dread[:, None, :] / Nh, Nh, axis=1)            # (B, Nh, d)
    return mnm_mem_backward([None] * (len(cache.weights) - 1) + [dout], cache)


def mnm_read_recon_backward(dread: np.ndarray, read: MemCache, dloss: np.ndarray, recon: ReconCache):
    """mnm_read_backward and mnm_recon_backward together, for a read and a reconstruction loss
    through the same weights (a step's read (B7) and its L^meta (B9) both see phi_t).

    The two passes differ only in their keys, so one backward pass over the stacked keys
    [k^r ; k^w] (B, 2 Nh, d) gives both: its weight gradient per layer is one product, the sum of
    the two passes' gradients (equal up to round-off).
    Returns (dweights, dread_keys (B, Nh, d), dkeys (B, Nh, d), dvalues (B, Nh, d)).
    """
    if len(read.weights) != len(recon.mem.weights) or any(a is not b for a, b in zip(read.weights, recon.mem.weights)):
        raise ValueError("the read and the reconstruction loss must go through the same weight arrays")
    Nh = read.Zs[0].shape[1]
    dout = np.repeat(dread[:, None, :] / Nh, Nh, axis=1)            # (B, Nh, d), eq. (B7)
    derror = 2.0 * recon.c * dloss[:, None, None] * recon.error     # (B, Nh, d), eq. (B9)
    stacked = MemCache(read.weights, [np.concatenate([a, b], axis=1) for a, b in zip(read.Zs, recon.mem.Zs)])
    dZ_out = np.concatenate([dout, derror], axis=1)                 # (B, 2 Nh, d)
    dweights, dkeys = mnm_mem_backward([None] * (len(read.weights) - 1) + [dZ_out], stacked)
    return dweights, dkeys[:, :Nh], dkeys[:, Nh:], -derror


def mnm_read_autodiff(weights: Sequence, keys) -> ad.Tensor:
    """Autodiff twin of mnm_read_forward: (B, d)."""
    return mnm_mem_autodiff(weights, keys).mean(axis=1)
