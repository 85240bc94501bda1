"""A tiny reverse-mode automatic differentiation core, the "autodiff twin" engine of every model.

A `Tensor` wraps an ndarray (float64 by default, float32 kept when given). Every op computes its
value with NumPy and defines its vector-Jacobian product (VJP) right beside it. The VJPs are written
with Tensor ops themselves, so `backward(create_graph=True)` records the backward pass as a graph
and a gradient can be differentiated again (Titans and MNM need this); otherwise the VJPs run under
`no_grad()` and build nothing.

    x = Tensor(np.ones(3), requires_grad=True)
    y = (x * x).sum()
    y.backward()            # x.grad == 2 * x.data  (an ndarray)

Rules the engine keeps:
- backward() sorts the graph topologically with an explicit stack (no recursion), so a chain of
  100,000 ops is fine; the graph is freed afterwards unless retain_graph=True.
- Gradients of broadcast inputs are summed back to the input's shape (`unbroadcast`).
- Leaves accumulate `.grad` across backward calls (an ndarray, or a Tensor with create_graph=True);
  `grad(outputs, inputs)` returns gradients without touching `.grad`.
- Integer results (argmax, top-k indices, sort orders) are plain arrays, never Tensors.
- `custom_op(forward, backward)` turns a hand-written forward/backward pair into one op.
- `anomaly_mode()` raises AnomalyError naming the first op whose value or gradient is NaN/inf.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import numpy as np


class _Mode:
    grad_enabled = True
    anomaly = False


class AnomalyError(FloatingPointError):
    """Raised in anomaly mode when an op's value or gradient contains NaN or inf."""


@contextlib.contextmanager
def no_grad():
    """Within this block ops record no graph (results have requires_grad=False)."""
    previous, _Mode.grad_enabled = _Mode.grad_enabled, False
    try:
        yield
    finally:
        _Mode.grad_enabled = previous


@contextlib.contextmanager
def anomaly_mode(enabled: bool = True):
    """Check every op's value and every VJP for NaN/inf and name the op that produced the first one."""
    previous, _Mode.anomaly = _Mode.anomaly, enabled
    try:
        yield
    finally:
        _Mode.anomaly = previous


def _check_finite(array: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(array)):
        raise AnomalyError(f"{what} contains NaN or inf")


class Tensor:
    """An ndarray that remembers how it was computed.

    Attributes:
        data: the value (float64 or float32 ndarray).
        grad: accumulated gradient of a leaf after backward(): an ndarray (a Tensor if
            backward(create_graph=True) was used); None before.
        requires_grad: whether gradients flow to this tensor.
        op: name of the op that made it ("leaf" for inputs).
    """

    __array_ufunc__ = None        # make `ndarray * Tensor` call Tensor.__rmul__
    __slots__ = ("data", "grad", "requires_grad", "op", "_parents", "_vjp", "_freed")

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        array = np.asarray(data.data if isinstance(data, Tensor) else data, dtype=dtype)
        if array.dtype not in (np.float32, np.float64):
            array = array.astype(np.float64)
        self.data, self.grad, self.requires_grad, self.op = array, None, bool(requires_grad), "leaf"
        self._parents: tuple[Tensor, ...] = ()
        self._vjp, self._freed = None, False

    @staticmethod
    def from_op(data: np.ndarray, parents: Sequence["Tensor"], vjp: Callable, op: str) -> "Tensor":
        """Wrap an op's value; record parents and VJP when some parent needs a gradient."""
        if _Mode.anomaly:
            _check_finite(data, f"value of op '{op}'")
        out = Tensor(data)
        out.op = op
        if _Mode.grad_enabled and any(p.requires_grad for p in parents):
            out.requires_grad, out._parents, out._vjp = True, tuple(parents), vjp
        return out

    # -- array-like conveniences
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    dtype = property(lambda self: self.data.dtype)
    T = property(lambda self: transpose(self))

    def __len__(self): return len(self.data)
    def __repr__(self): return f"Tensor({self.data!r}, op={self.op}, requires_grad={self.requires_grad})"
    def numpy(self) -> np.ndarray: return self.data
    def item(self) -> float: return self.data.item()
    def detach(self) -> "Tensor": return Tensor(self.data)

    def backward(self, grad=None, create_graph: bool = False, retain_graph: bool | None = None) -> None:
        """Accumulate d self / d leaf into every leaf's .grad (grad defaults to 1 for a scalar)."""
        leaves = _backprop([self], [grad], create_graph, retain_graph, targets=None)
        for leaf, g in leaves:
            g = g if create_graph else g.data
            leaf.grad = g if leaf.grad is None else leaf.grad + g

    # -- operators
    __add__ = lambda a, b: add(a, b)
    __radd__ = lambda a, b: add(b, a)
    __sub__ = lambda a, b: sub(a, b)
    __rsub__ = lambda a, b: sub(b, a)
    __mul__ = lambda a, b: mul(a, b)
    __rmul__ = lambda a, b: mul(b, a)
    __truediv__ = lambda a, b: div(a, b)
    __rtruediv__ = lambda a, b: div(b, a)
    __pow__ = lambda a, b: power(a, b)
    __rpow__ = lambda a, b: power(b, a)
    __matmul__ = lambda a, b: matmul(a, b)
    __rmatmul__ = lambda a, b: matmul(b, a)
    __neg__ = lambda a: neg(a)
    __getitem__ = lambda a, index: getitem(a, index)

    # -- methods mirroring the functions below
    def sum(self, axis=None, keepdims=False): return sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return mean(self, axis, keepdims)
    def max(self, axis=None, keepdims=False): return max(self, axis, keepdims)
    def exp(self): return exp(self)
    def log(self): return log(self)
    def sqrt(self): return sqrt(self)
    def tanh(self): return tanh(self)
    def sigmoid(self): return sigmoid(self)
    def relu(self): return relu(self)
    def abs(self): return abs(self)
    def reshape(self, *shape): return reshape(self, shape[0] if len(shape) == 1 else shape)
    def transpose(self, *axes): return transpose(self, (axes[0] if len(axes) == 1 else axes) or None)


def as_tensor(x, like: Tensor | None = None) -> Tensor:
    """x as a Tensor; Python numbers take the dtype of `like` so float32 stays float32."""
    if isinstance(x, Tensor):
        return x
    if like is not None and isinstance(x, (int, float)):
        return Tensor(np.asarray(x, dtype=like.dtype))
    return Tensor(x)


def _pair(a, b) -> tuple[Tensor, Tensor]:
    a = as_tensor(a, b if isinstance(b, Tensor) else None)
    return a, as_tensor(b, a)


# ----------------------------------------------------------------- backward
def _topological_order(roots: Sequence[Tensor], boundary: frozenset = frozenset()) -> list[Tensor]:
    """Nodes that need gradients, parents before children, by an iterative depth-first search.
    The search does not go past a node whose id is in `boundary`."""
    order, seen = [], set()
    stack = [(root, False) for root in roots if root.requires_grad]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node._freed:
            raise RuntimeError(f"the graph through op '{node.op}' was freed by an earlier backward(); "
                               "pass retain_graph=True to the first call to backward twice")
        stack.append((node, True))
        if id(node) not in boundary:
            stack.extend((p, False) for p in node._parents if p.requires_grad and id(p) not in seen)
    return order


def _backprop(roots, root_grads, create_graph, retain_graph, targets, stop_at_targets=False):
    """Reverse sweep. Returns [(leaf, grad)] for every leaf, or the grads of `targets` if given;
    with stop_at_targets the sweep treats the targets as its boundary and goes no further."""
    retain_graph = create_graph if retain_graph is None else retain_graph
    boundary = frozenset(id(t) for t in targets) if stop_at_targets else frozenset()
    order = _topological_order(roots, boundary)
    grads: dict[int, Tensor] = {}
    for root, g in zip(roots, root_grads):
        if not root.requires_grad:
            continue
        if g is None:
            if root.size != 1:
                raise ValueError(f"backward() needs an upstream gradient for a non-scalar output of shape {root.shape}")
            g = np.ones_like(root.data)
        g = as_tensor(g)
        if g.shape != root.shape:
            raise ValueError(f"upstream gradient must have the output's shape {root.shape}; got {g.shape}")
        grads[id(root)] = grads[id(root)] + g if id(root) in grads else g
    wanted = {id(t): i for i, t in enumerate(targets)} if targets is not None else None
    found: list = [None] * len(targets) if targets is not None else []
    context = contextlib.nullcontext() if create_graph else no_grad()
    with context:
        for node in reversed(order):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if wanted is not None and id(node) in wanted:
                found[wanted[id(node)]] = g
                if stop_at_targets:
                    continue
            if not node._parents:
                if wanted is None:
                    found.append((node, g))
                continue
            try:
                parent_grads = node._vjp(g)
                if _Mode.anomaly:
                    for pg in parent_grads:
                        if pg is not None:
                            _check_finite(as_tensor(pg).data, "its gradient")
            except AnomalyError as error:
                raise AnomalyError(f"in the backward of op '{node.op}': {error}") from None
            for parent, pg in zip(node._parents, parent_grads):
                if pg is None or not parent.requires_grad:
                    continue
                pid = id(parent)
                grads[pid] = grads[pid] + pg if pid in grads else as_tensor(pg)
            if not retain_graph:
                node._parents, node._vjp, node._freed = (), None, True
    return found


def grad(outputs, inputs, grad_outputs=None, create_graph: bool = False, retain_graph: bool | None = None,
         stop_at_inputs: bool = False):
    """Gradients of outputs w.r.t. inputs, returned (not accumulated into .grad).

    Args:
        outputs: a Tensor or a list of Tensors.
        inputs: a Tensor or a list of Tensors (leaves or intermediate values).
        grad_outputs: upstream gradients, one per output (None means 1 for a scalar output).
        create_graph: record the backward pass so the result can be differentiated again.
        stop_at_inputs: treat the inputs as independent variables: the sweep stops at them, so
            paths that pass through one input on the way to another are not followed (partial
            derivatives), and the graph upstream of the inputs is never visited. This is what an
            inner gradient step needs (Titans, MNM: d loss_t / d M_{t-1} without walking the whole
            history, so T steps cost O(T), not O(T^2)).
    Returns:
        A tuple with one gradient per input: Tensors if create_graph, else ndarrays; zeros for an
        input the outputs do not depend on.
    """
    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    grad_outputs = [None] * len(outputs) if grad_outputs is None else (
        [grad_outputs] if not isinstance(grad_outputs, (list, tuple)) else list(grad_outputs))
    found = _backprop(outputs, grad_outputs, create_graph, retain_graph, targets=inputs,
                      stop_at_targets=stop_at_inputs)
    result = []
    for x, g in zip(inputs, found):
        g = Tensor(np.zeros_like(x.data)) if g is None else g
        result.append(g if create_graph else g.data)
    return tuple(result)


def unbroadcast(g: Tensor, shape: tuple) -> Tensor:
    """Sum g over the axes that broadcasting added or stretched, so it has `shape` again."""
    if g.shape == tuple(shape):
        return g
    extra = g.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(i + extra for i, n in enumerate(shape) if n == 1 and g.shape[i + extra] != 1)
    return reshape(sum(g, axis=axes), shape)


# ----------------------------------------------------------------- elementwise binary
def add(a, b) -> Tensor:
    """a + b with broadcasting."""
    a, b = _pair(a, b)
    return Tensor.from_op(a.data + b.data, (a, b),
                          lambda g: (unbroadcast(g, a.shape), unbroadcast(g, b.shape)), "add")


def sub(a, b) -> Tensor:
    """a - b with broadcasting."""
    a, b = _pair(a, b)
    return Tensor.from_op(a.data - b.data, (a, b),
                          lambda g: (unbroadcast(g, a.shape), unbroadcast(-g, b.shape)), "sub")


def mul(a, b) -> Tensor:
    """a * b, elementwise, with broadcasting."""
    a, b = _pair(a, b)

    def vjp(g):                                    # d(ab)/da = b, d(ab)/db = a
        return unbroadcast(g * b, a.shape), unbroadcast(g * a, b.shape)

    return Tensor.from_op(a.data * b.data, (a, b), vjp, "mul")


def div(a, b) -> Tensor:
    """a / b, elementwise, with broadcasting."""
    a, b = _pair(a, b)

    def vjp(g):                                    # d(a/b)/da = 1/b, d(a/b)/db = -a/b^2
        return unbroadcast(g / b, a.shape), unbroadcast(-g * a / (b * b), b.shape)

    return Tensor.from_op(a.data / b.data, (a, b), vjp, "div")


def power(a, b) -> Tensor:
    """a ** b. A constant exponent needs no log; a Tensor exponent needs a > 0."""
    if not isinstance(b, Tensor):
        a = as_tensor(a)
        exponent = float(b)
        return Tensor.from_op(a.data ** exponent, (a,),
                              lambda g: (g * exponent * a ** (exponent - 1.0),), "pow")
    a, b = _pair(a, b)

    def vjp(g):                                    # d(a^b)/da = b a^(b-1), d(a^b)/db = a^b log a
        return (unbroadcast(g * b * a ** (b - 1.0), a.shape),
                unbroadcast(g * a ** b * log(a), b.shape))

    return Tensor.from_op(a.data ** b.data, (a, b), vjp, "pow")


def neg(a) -> Tensor:
    a = as_tensor(a)
    return Tensor.from_op(-a.data, (a,), lambda g: (-g,), "neg")


def where(condition, a, b) -> Tensor:
    """Elementwise choice: a where condition (a constant boolean array) holds, else b."""
    condition = np.asarray(condition, dtype=bool)
    a, b = _pair(a, b)
    out = np.where(condition, a.data, b.data)

    def vjp(g):
        zero = np.zeros((), dtype=g.dtype)
        return (unbroadcast(where(condition, g, zero), a.shape),
                unbroadcast(where(condition, zero, g), b.shape))

    return Tensor.from_op(out, (a, b), vjp, "where")


# ----------------------------------------------------------------- elementwise unary
def exp(x) -> Tensor:
    x = as_tensor(x)
    out = Tensor.from_op(np.exp(x.data), (x,), lambda g: (g * out,), "exp")
    return out


def log(x) -> Tensor:
    x = as_tensor(x)
    return Tensor.from_op(np.log(x.data), (x,), lambda g: (g / x,), "log")


def sqrt(x) -> Tensor:
    x = as_tensor(x)
    out = Tensor.from_op(np.sqrt(x.data), (x,), lambda g: (g * 0.5 / out,), "sqrt")
    return out


def tanh(x) -> Tensor:
    x = as_tensor(x)
    out = Tensor.from_op(np.tanh(x.data), (x,), lambda g: (g * (1.0 - out * out),), "tanh")
    return out


def _stable_sigmoid(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))                          # never overflows
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(z.dtype, copy=False)


def sigmoid(x) -> Tensor:
    x = as_tensor(x)
    out = Tensor.from_op(_stable_sigmoid(x.data), (x,), lambda g: (g * out * (1.0 - out),), "sigmoid")
    return out


def relu(x) -> Tensor:
    x = as_tensor(x)
    mask = (x.data > 0).astype(x.dtype)             # the kink at 0 gets gradient 0
    return Tensor.from_op(x.data * mask, (x,), lambda g: (g * mask,), "relu")


def softplus(x) -> Tensor:
    """log(1 + e^x), computed stably; its derivative is sigmoid(x)."""
    x = as_tensor(x)
    return Tensor.from_op(np.logaddexp(0.0, x.data).astype(x.dtype, copy=False), (x,),
                          lambda g: (g * sigmoid(x),), "softplus")


def abs(x) -> Tensor:
    x = as_tensor(x)
    sign = np.sign(x.data)                          # subgradient 0 at 0
    return Tensor.from_op(np.abs(x.data), (x,), lambda g: (g * sign,), "abs")


def clip(x, lo: float | None, hi: float | None) -> Tensor:
    """Clamp to [lo, hi]; the gradient passes where x is inside the interval (ends included)."""
    x = as_tensor(x)
    inside = np.ones(x.shape, dtype=x.dtype)
    if lo is not None:
        inside *= x.data >= lo
    if hi is not None:
        inside *= x.data <= hi
    return Tensor.from_op(np.clip(x.data, lo, hi), (x,), lambda g: (g * inside,), "clip")


# ----------------------------------------------------------------- reductions
def _keepdims_shape(shape, axis):
    axes = range(len(shape)) if axis is None else [a % len(shape) for a in np.atleast_1d(axis)]
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


def broadcast_to(x, shape) -> Tensor:
    x = as_tensor(x)
    return Tensor.from_op(np.broadcast_to(x.data, shape).copy(), (x,),
                          lambda g: (unbroadcast(g, x.shape),), "broadcast_to")


def sum(x, axis=None, keepdims: bool = False) -> Tensor:
    x = as_tensor(x)
    axis = tuple(axis) if isinstance(axis, list) else axis
    kept = _keepdims_shape(x.shape, axis)
    return Tensor.from_op(np.sum(x.data, axis=axis, keepdims=keepdims), (x,),
                          lambda g: (broadcast_to(reshape(g, kept), x.shape),), "sum")


def mean(x, axis=None, keepdims: bool = False) -> Tensor:
    x = as_tensor(x)
    reduced = [n for n, k in zip(x.shape, _keepdims_shape(x.shape, axis)) if k == 1 and n != 1]
    return sum(x, axis, keepdims) / float(np.prod(reduced))


def max(x, axis=None, keepdims: bool = False) -> Tensor:
    """Maximum over axes; ties share the gradient equally."""
    x = as_tensor(x)
    kept = _keepdims_shape(x.shape, axis)
    out = np.max(x.data, axis=axis, keepdims=True)
    winners = (x.data == out).astype(x.dtype)
    winners /= np.sum(winners, axis=axis, keepdims=True)
    return Tensor.from_op(out if keepdims else out.reshape(np.max(x.data, axis=axis).shape), (x,),
                          lambda g: (reshape(g, kept) * winners,), "max")


def logsumexp(x, axis=-1, keepdims: bool = False) -> Tensor:
    """log sum exp over an axis, shifted by the max so it never overflows."""
    x = as_tensor(x)
    shift = np.max(x.data, axis=axis, keepdims=True)
    shift = np.where(np.isfinite(shift), shift, 0.0)
    out_kept = np.log(np.sum(np.exp(x.data - shift), axis=axis, keepdims=True)) + shift
    kept = out_kept.shape

    def vjp(g):                                     # d lse / dx = softmax(x)
        return (reshape(g, kept) * softmax(x, axis=axis),)

    return Tensor.from_op(out_kept if keepdims else np.squeeze(out_kept, axis=axis), (x,), vjp, "logsumexp")


def softmax(x, axis=-1) -> Tensor:
    """Numerically stable softmax; VJP: y * (g - sum(g * y))."""
    x = as_tensor(x)
    z = np.exp(x.data - np.max(x.data, axis=axis, keepdims=True))
    out = Tensor.from_op(z / np.sum(z, axis=axis, keepdims=True), (x,),
                         lambda g: (out * (g - sum(g * out, axis=axis, keepdims=True)),), "softmax")
    return out


def log_softmax(x, axis=-1) -> Tensor:
    """x - logsumexp(x); VJP: g - softmax(x) * sum(g)."""
    x = as_tensor(x)
    shift = np.max(x.data, axis=axis, keepdims=True)
    value = x.data - shift - np.log(np.sum(np.exp(x.data - shift), axis=axis, keepdims=True))
    out = Tensor.from_op(value, (x,), lambda g: (g - exp(out) * sum(g, axis=axis, keepdims=True),), "log_softmax")
    return out


# ----------------------------------------------------------------- shape and indexing
def reshape(x, shape) -> Tensor:
    x = as_tensor(x)
    return Tensor.from_op(np.reshape(x.data, shape), (x,), lambda g: (reshape(g, x.shape),), "reshape")


def transpose(x, axes=None) -> Tensor:
    x = as_tensor(x)
    inverse = None if axes is None else tuple(np.argsort(axes))
    return Tensor.from_op(np.transpose(x.data, axes), (x,), lambda g: (transpose(g, inverse),), "transpose")


def swapaxes(x, a: int, b: int) -> Tensor:
    axes = list(range(as_tensor(x).ndim))
    axes[a], axes[b] = axes[b], axes[a]
    return transpose(x, tuple(axes))


def _as_index(index):
    if isinstance(index, Tensor):
        return index.data.astype(np.intp)
    if isinstance(index, np.ndarray) and index.dtype == bool:
        raise ValueError("boolean-mask indexing is not supported; index with np.nonzero(mask) instead")
    return index


def getitem(x, index) -> Tensor:
    """x[index] for basic and advanced indexing; repeated indices accumulate in the gradient."""
    x = as_tensor(x)
    index = tuple(_as_index(i) for i in index) if isinstance(index, tuple) else _as_index(index)
    return Tensor.from_op(x.data[index], (x,),
                          lambda g: (scatter_add(Tensor(np.zeros(x.shape, dtype=g.dtype)), index, g),), "getitem")


def scatter_add(target, index, values) -> Tensor:
    """out = target.copy(); out[index] += values, with repeated indices summed (np.add.at)."""
    target, values = _pair(target, values)
    out = target.data.copy()
    np.add.at(out, index, values.data)
    return Tensor.from_op(out, (target, values),
                          lambda g: (g, unbroadcast(getitem(g, index), values.shape)), "scatter_add")


def gather(x, indices: np.ndarray, axis: int) -> Tensor:
    """np.take_along_axis(x, indices, axis) as a differentiable op."""
    x = as_tensor(x)
    indices = np.asarray(indices, dtype=np.intp)
    axis = axis % x.ndim
    grids = np.ogrid[tuple(slice(n) for n in indices.shape)]
    index = tuple(indices if i == axis else np.broadcast_to(grids[i], indices.shape) for i in range(x.ndim))
    return getitem(x, index)


def concatenate(tensors: Sequence, axis: int = 0) -> Tensor:
    tensors = [as_tensor(t) for t in tensors]
    bounds = np.cumsum([0] + [t.shape[axis] for t in tensors])

    def vjp(g):
        cut = [slice(None)] * g.ndim
        grads = []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            cut[axis] = slice(int(lo), int(hi))
            grads.append(getitem(g, tuple(cut)))
        return tuple(grads)

    return Tensor.from_op(np.concatenate([t.data for t in tensors], axis=axis), tensors, vjp, "concatenate")


def stack(tensors: Sequence, axis: int = 0) -> Tensor:
    tensors = [as_tensor(t) for t in tensors]
    out = np.stack([t.data for t in tensors], axis=axis)
    axis = axis % out.ndim

    def vjp(g):
        return tuple(getitem(g, (slice(None),) * axis + (i,)) for i in range(len(tensors)))

    return Tensor.from_op(out, tensors, vjp, "stack")


# ----------------------------------------------------------------- products
def matmul(a, b) -> Tensor:
    """a @ b with NumPy's batching rules; 1-D operands are promoted and the result squeezed."""
    a, b = _pair(a, b)
    if a.ndim == 1:
        return reshape(matmul(reshape(a, (1, a.shape[0])), b), b.shape[:-2] + b.shape[-1:])
    if b.ndim == 1:
        return reshape(matmul(a, reshape(b, (b.shape[0], 1))), a.shape[:-1])

    def vjp(g):                                    # dA = G B^T, dB = A^T G, summed over broadcast batch
        return (unbroadcast(matmul(g, swapaxes(b, -1, -2)), a.shape),
                unbroadcast(matmul(swapaxes(a, -1, -2), g), b.shape))

    return Tensor.from_op(a.data @ b.data, (a, b), vjp, "matmul")


def outer(a, b) -> Tensor:
    """Batched outer product: out[..., i, j] = a[..., i] * b[..., j]."""
    a, b = _pair(a, b)
    return reshape(a, a.shape + (1,)) * reshape(b, b.shape[:-1] + (1, b.shape[-1]))


def einsum(subscripts: str, *operands) -> Tensor:
    """np.einsum in explicit form ('ij,jk->ik'); no ellipsis, no index repeated within an operand.

    The VJP for operand i is another einsum: contract the upstream gradient with the other operands
    onto operand i's indices; an index that only operand i carries is broadcast back.
    """
    if "->" not in subscripts or "." in subscripts:
        raise ValueError(f"einsum needs the explicit form 'ab,bc->ac' without ellipsis; got {subscripts!r}")
    inputs, output = subscripts.replace(" ", "").split("->")
    inputs = inputs.split(",")
    if len(inputs) != len(operands):
        raise ValueError(f"einsum {subscripts!r} names {len(inputs)} operands; got {len(operands)}")
    if any(len(set(s)) != len(s) for s in inputs):
        raise ValueError(f"einsum {subscripts!r}: an index repeated within one operand is not supported")
    operands = [as_tensor(t) for t in operands]

    def vjp(g):
        grads = []
        for i, (sub_i, x_i) in enumerate(zip(inputs, operands)):
            others = [(s, t) for j, (s, t) in enumerate(zip(inputs, operands)) if j != i]
            reachable = set(output).union(*[set(s) for s, _ in others])
            kept = "".join(c for c in sub_i if c in reachable)
            spec = ",".join([output] + [s for s, _ in others]) + "->" + kept
            partial = einsum(spec, g, *[t for _, t in others])
            if kept != sub_i:                        # indices summed only inside operand i
                partial = broadcast_to(reshape(partial, tuple(n if c in kept else 1
                                                              for c, n in zip(sub_i, x_i.shape))), x_i.shape)
            grads.append(partial)
        return tuple(grads)

    return Tensor.from_op(np.einsum(subscripts, *[t.data for t in operands]), operands, vjp, "einsum")


def sparse_matmul(A, x) -> Tensor:
    """A @ x for a constant scipy.sparse matrix A (M, N) and x (N,) or (N, K)."""
    x = as_tensor(x)
    if A.shape[1] != x.shape[0]:
        raise ValueError(f"sparse_matmul: x must have {A.shape[1]} rows to match A {A.shape}; got {x.shape}")
    A_T = A.T.tocsr()
    return Tensor.from_op(np.asarray(A @ x.data), (x,), lambda g: (sparse_matmul(A_T, g),), "sparse_matmul")


# ----------------------------------------------------------------- custom ops
def custom_op(forward: Callable, backward: Callable, name: str) -> Callable[..., Tensor]:
    """Turn a hand-written pair into one op.

    forward(*arrays, **kwargs) -> (out, cache); backward(dout, cache) -> one gradient per
    positional input (a tuple, or a bare array for a single input; None for no gradient).
    The backward is NumPy code, so the op is first-order only: differentiating it twice
    (create_graph=True) raises instead of silently returning a wrong second derivative.
    """
    def op(*inputs, **kwargs) -> Tensor:
        tensors = [as_tensor(x) for x in inputs]
        out, cache = forward(*[t.data for t in tensors], **kwargs)

        def vjp(g):
            if _Mode.grad_enabled:
                raise NotImplementedError(f"custom op '{name}' has a NumPy backward and cannot be "
                                          "differentiated twice (create_graph=True)")
            grads = backward(g.data, cache)
            grads = grads if isinstance(grads, (tuple, list)) else (grads,)
            if len(grads) != len(tensors):
                raise ValueError(f"custom op '{name}': backward returned {len(grads)} gradients "
                                 f"for {len(tensors)} inputs")
            return tuple(None if d is None else Tensor(np.asarray(d)) for d in grads)

        return Tensor.from_op(np.asarray(out), tensors, vjp, name)

    op.__name__ = name
    op.__doc__ = f"Autodiff op from the pair {forward.__name__} / {backward.__name__}."
    return op
