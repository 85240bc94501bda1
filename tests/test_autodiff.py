"""minimem.autodiff: every op against its NumPy forward and central finite differences, plus the
core's classic traps (reused nodes, long chains, backward twice, broadcasting, higher order)."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings, strategies as st

from gradcheck.core import assert_grads_close, numeric_vjp
from minimem import autodiff as ad


def check_op(op, numpy_op, *arrays, atol=1e-8, rtol=1e-6, seed=0):
    """op on Tensors must equal numpy_op on arrays, and its VJP must match central differences."""
    tensors = [ad.Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = op(*tensors)
    np.testing.assert_allclose(out.data, numpy_op(*arrays), rtol=1e-12, atol=1e-12)
    dout = np.random.default_rng(seed).standard_normal(out.shape)
    out.backward(dout)
    numeric = numeric_vjp(numpy_op, arrays, dout)
    assert_grads_close([t.grad for t in tensors], numeric, [f"arg{i}" for i in range(len(arrays))],
                       rtol=rtol, atol=atol)


def logsumexp_np(x, axis=-1):
    m = x.max(axis=axis, keepdims=True)
    return np.squeeze(np.log(np.exp(x - m).sum(axis=axis, keepdims=True)) + m, axis=axis)


def softmax_np(x, axis=-1):
    z = np.exp(x - x.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)


def broadcastable_pair(draw_shape):
    """A shape and a second shape that broadcasts against it (dropped leading axes, size-1 axes)."""
    return draw_shape


@st.composite
def broadcast_shapes(draw):
    shape = draw(shapes)
    drop = draw(st.integers(0, len(shape) - 1))
    other = list(shape[drop:])
    for i in range(len(other)):
        if draw(st.booleans()):
            other[i] = 1
    if draw(st.booleans()):
        return shape, tuple(other)
    return tuple(other), shape


BINARY = {
    "add": (lambda a, b: a + b, lambda a, b: a + b),
    "sub": (lambda a, b: a - b, lambda a, b: a - b),
    "mul": (lambda a, b: a * b, lambda a, b: a * b),
    "div": (lambda a, b: a / b, lambda a, b: a / b),
    "pow": (lambda a, b: a ** b, lambda a, b: a ** b),
}


@pytest.mark.parametrize("name", list(BINARY))
@settings(max_examples=15, deadline=None)
@given(pair=broadcast_shapes(), seed=st.integers(0, 2**16))
def test_binary_ops_broadcast_and_match_finite_differences(name, pair, seed):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.5, 2.0, pair[0])               # positive, away from 0 for div and pow
    b = rng.uniform(0.5, 2.0, pair[1])
    check_op(*BINARY[name], a, b, seed=seed)


UNARY = {
    "neg": (ad.neg, np.negative, (-2, 2)),
    "exp": (ad.exp, np.exp, (-2, 2)),
    "log": (ad.log, np.log, (0.5, 3)),
    "sqrt": (ad.sqrt, np.sqrt, (0.5, 3)),
    "tanh": (ad.tanh, np.tanh, (-2, 2)),
    "sigmoid": (ad.sigmoid, lambda x: 1 / (1 + np.exp(-x)), (-3, 3)),
    "relu": (ad.relu, lambda x: np.maximum(x, 0), (-2, 2)),
    "softplus": (ad.softplus, lambda x: np.log1p(np.exp(x)), (-3, 3)),
    "abs": (ad.abs, np.abs, (-2, 2)),
    "clip": (lambda x: ad.clip(x, -0.5, 0.7), lambda x: np.clip(x, -0.5, 0.7), (-2, 2)),
    "pow_const": (lambda x: x ** 3, lambda x: x ** 3, (-2, 2)),
    "rpow_scalar": (lambda x: 2.0 ** x, lambda x: 2.0 ** x, (-2, 2)),
}


@pytest.mark.parametrize("name", list(UNARY))
@settings(max_examples=10, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_unary_ops_match_finite_differences(name, shape, seed):
    op, numpy_op, (lo, hi) = UNARY[name]
    x = np.random.default_rng(seed).uniform(lo, hi, shape)
    x[np.abs(x) < 1e-3] = 0.3                        # keep relu/abs off their kink
    x[np.abs(x - 0.7) < 1e-3] = 0.2                  # and clip off its ends
    x[np.abs(x + 0.5) < 1e-3] = 0.1
    check_op(op, numpy_op, x)


@settings(max_examples=20, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16), keepdims=st.booleans(), data=st.data())
def test_reductions_match_finite_differences(shape, seed, keepdims, data):
    x = np.random.default_rng(seed).standard_normal(shape)
    axis = data.draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1)))
    check_op(lambda t: ad.sum(t, axis, keepdims), lambda a: np.sum(a, axis=axis, keepdims=keepdims), x)
    check_op(lambda t: ad.mean(t, axis, keepdims), lambda a: np.mean(a, axis=axis, keepdims=keepdims), x)
    check_op(lambda t: ad.max(t, axis, keepdims), lambda a: np.max(a, axis=axis, keepdims=keepdims), x)


@settings(max_examples=20, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16), data=st.data())
def test_softmax_family_matches_finite_differences(shape, seed, data):
    x = 3.0 * np.random.default_rng(seed).standard_normal(shape)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    check_op(lambda t: ad.softmax(t, axis), lambda a: softmax_np(a, axis), x)
    check_op(lambda t: ad.log_softmax(t, axis), lambda a: np.log(softmax_np(a, axis)), x)
    check_op(lambda t: ad.logsumexp(t, axis), lambda a: logsumexp_np(a, axis), x)


def test_softmax_family_is_stable_for_huge_inputs():
    x = ad.Tensor(np.array([[1000.0, -1000.0, 999.0]]), requires_grad=True)
    for out in (ad.softmax(x), ad.log_softmax(x), ad.logsumexp(x)):
        out.backward(np.ones(out.shape))
        assert np.all(np.isfinite(out.data)) and np.all(np.isfinite(x.grad))


@settings(max_examples=20, deadline=None)
@given(batch=st.lists(st.integers(1, 3), max_size=2).map(tuple), n=st.integers(1, 4),
       k=st.integers(1, 4), m=st.integers(1, 4), broadcast=st.booleans(), seed=st.integers(0, 2**16))
def test_batched_matmul_matches_finite_differences(batch, n, k, m, broadcast, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(batch + (n, k))
    b = rng.standard_normal((k, m) if broadcast else batch + (k, m))
    check_op(ad.matmul, np.matmul, a, b)
    check_op(ad.matmul, np.matmul, a, rng.standard_normal(k))      # 1-D right operand
    check_op(ad.matmul, np.matmul, rng.standard_normal(n), rng.standard_normal((n, m)))


def test_shape_ops_match_finite_differences():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4))
    check_op(lambda t: ad.reshape(t, (6, 4)), lambda a: a.reshape(6, 4), x)
    check_op(lambda t: ad.transpose(t, (2, 0, 1)), lambda a: a.transpose(2, 0, 1), x)
    check_op(lambda t: t.T, lambda a: a.T, x)
    check_op(lambda t: ad.broadcast_to(t[:, :1], (2, 5, 4)), lambda a: np.broadcast_to(a[:, :1], (2, 5, 4)), x)
    y = rng.standard_normal((2, 2, 4))
    check_op(lambda a, b: ad.concatenate([a, b], axis=1), lambda a, b: np.concatenate([a, b], axis=1), x, y)
    check_op(lambda a, b: ad.stack([a, b], axis=-1), lambda a, b: np.stack([a, b], axis=-1), y, y + 1)
    check_op(lambda a, b: ad.outer(a, b), lambda a, b: a[..., :, None] * b[..., None, :], x, x[..., :3])


def test_indexing_gather_and_scatter_add_accumulate_repeats():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 3))
    index = np.array([0, 2, 2, 4, 0])                                # repeats must accumulate
    check_op(lambda t: t[index], lambda a: a[index], x)
    check_op(lambda t: t[1:4, ::2], lambda a: a[1:4, ::2], x)
    check_op(lambda t: t[(index, np.array([0, 1, 2, 1, 1]))], lambda a: a[index, [0, 1, 2, 1, 1]], x)
    cols = rng.integers(0, 3, size=(5, 4))
    check_op(lambda t: ad.gather(t, cols, axis=1), lambda a: np.take_along_axis(a, cols, axis=1), x)
    values = rng.standard_normal((5, 3))

    def scatter_np(target, vals):
        out = target.copy()
        np.add.at(out, index, vals)
        return out

    check_op(lambda t, v: ad.scatter_add(t, index, v), scatter_np, x, values)


def test_where_einsum_and_sparse_matmul():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4,))
    cond = rng.random((3, 4)) > 0.5
    check_op(lambda x, y: ad.where(cond, x, y), lambda x, y: np.where(cond, x, y), a, b)
    M, k, w = rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 4, 5))
    check_op(lambda m, q: ad.einsum("bnw,brw->brn", m, q), lambda m, q: np.einsum("bnw,brw->brn", m, q), M, k)
    check_op(lambda q, m: ad.einsum("brn,bnw->brw", q, m), lambda q, m: np.einsum("brn,bnw->brw", q, m), w, M)
    check_op(lambda m: ad.einsum("bnw->b", m), lambda m: np.einsum("bnw->b", m), M)   # summed-only indices
    check_op(lambda x, y: ad.einsum("i,j->ij", x, y), lambda x, y: np.einsum("i,j->ij", x, y), b, a[0])
    A = sp.random(6, 4, density=0.4, random_state=0, format="csr")
    check_op(lambda x: ad.sparse_matmul(A, x), lambda x: A @ x, rng.standard_normal((4, 3)))
    check_op(lambda x: ad.sparse_matmul(A, x), lambda x: A @ x, rng.standard_normal(4))


def test_reused_node_accumulates():
    x = ad.Tensor(np.array([1.5, -2.0]), requires_grad=True)
    ((x + x) * x).sum().backward()                                    # d(2x^2)/dx = 4x
    np.testing.assert_allclose(x.grad, 4 * x.data)


def test_hundred_thousand_op_chain_needs_no_recursion():
    x = ad.Tensor(np.array(0.5), requires_grad=True)
    h = x
    for _ in range(100_000):
        h = h * 1.0 + 1e-6
    h.backward()
    assert x.grad == pytest.approx(1.0)


def test_backward_twice_raises_unless_retained_and_leaves_accumulate():
    x = ad.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="freed"):
        y.backward()
    z = (x * 3.0).sum()
    z.backward(retain_graph=True)
    z.backward()
    np.testing.assert_allclose(x.grad, 2 * x.data + 6.0)             # accumulated over three calls


def test_gradient_of_gradient_is_hessian_vector_product():
    rng = np.random.default_rng(4)
    A = rng.standard_normal((4, 4))
    A = A + A.T
    x = ad.Tensor(rng.standard_normal(4), requires_grad=True)
    v = rng.standard_normal(4)
    # f(x) = 0.5 x^T A x + sum(tanh(x)); Hessian = A + diag(-2 tanh(x) (1 - tanh(x)^2))
    f = 0.5 * (x * (A @ x)).sum() + ad.tanh(x).sum()
    (g,) = ad.grad(f, [x], create_graph=True)
    np.testing.assert_allclose(g.data, A @ x.data + 1 - np.tanh(x.data) ** 2, atol=1e-12)
    (hv,) = ad.grad((g * v).sum(), [x])
    t = np.tanh(x.data)
    np.testing.assert_allclose(hv, A @ v + (-2 * t * (1 - t ** 2)) * v, atol=1e-12)


def test_second_order_through_softmax_family_matches_finite_differences():
    rng = np.random.default_rng(5)
    x0, v = rng.standard_normal(5), rng.standard_normal(5)

    def grad_dot_v(x_np):
        x = ad.Tensor(x_np, requires_grad=True)
        f = (ad.logsumexp(x, axis=-1) * ad.softmax(x)[1] + ad.log_softmax(x)[2]).sum()
        (g,) = ad.grad(f, [x], create_graph=True)
        return (g * v).sum()

    out = grad_dot_v(x0)
    x = ad.Tensor(x0, requires_grad=True)
    f = (ad.logsumexp(x, axis=-1) * ad.softmax(x)[1] + ad.log_softmax(x)[2]).sum()
    (g,) = ad.grad(f, [x], create_graph=True)
    (hv,) = ad.grad((g * v).sum(), [x])
    numeric = numeric_vjp(lambda a: grad_dot_v(a).data, [x0], np.array(1.0))[0]
    assert out.data == pytest.approx(float((g.data * v).sum()))
    assert_grads_close([hv], [numeric], ["x"], rtol=1e-6)


def test_custom_op_wraps_a_manual_pair_and_refuses_second_order():
    def square_forward(x, scale=1.0):
        return scale * x * x, (x, scale)

    def square_backward(dout, cache):
        x, scale = cache
        return 2.0 * scale * x * dout

    square = ad.custom_op(square_forward, square_backward, name="square")
    x = ad.Tensor(np.array([1.0, -3.0]), requires_grad=True)
    (square(x, scale=2.0) * ad.Tensor(np.array([1.0, 0.5]))).sum().backward()
    np.testing.assert_allclose(x.grad, [4.0, -6.0])
    y = ad.Tensor(np.array([1.0]), requires_grad=True)
    with pytest.raises(NotImplementedError, match="square"):
        ad.grad(square(y).sum(), [y], create_graph=True)


def test_float32_stays_float32():
    x = ad.Tensor(np.ones((2, 3), dtype=np.float32), requires_grad=True)
    y = (ad.tanh(x * 2.0 + 1.0) @ np.ones((3, 1), dtype=np.float32)).sum()
    assert y.dtype == np.float32
    y.backward()
    assert x.grad.dtype == np.float32


def test_no_grad_records_nothing():
    x = ad.Tensor(np.ones(3), requires_grad=True)
    with ad.no_grad():
        y = (x * 2).sum()
    assert not y.requires_grad


@pytest.mark.filterwarnings("ignore::RuntimeWarning")          # the NaN/inf here are on purpose
def test_anomaly_mode_names_the_op_that_made_nan():
    x = ad.Tensor(np.array([1.0, -1.0]), requires_grad=True)
    with ad.anomaly_mode():
        y = x * 2.0
        with pytest.raises(ad.AnomalyError, match="'log'"):
            ad.log(y - 2.0)                                           # log(0) = -inf, log(-4) = nan
    with ad.anomaly_mode():
        z = ad.sqrt(x * x)                                            # value fine ...
        with pytest.raises(ad.AnomalyError, match="backward of op 'sqrt'"):
            (z * 0.0 + ad.sqrt(x * 0.0)).sum().backward()             # ... but d sqrt(0) = inf


def test_bad_input_gives_clear_errors():
    x = ad.Tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(ValueError, match=r"upstream gradient must have the output's shape \(2, 3\)"):
        (x * 2).backward(np.ones(3))
    with pytest.raises(ValueError, match="non-scalar"):
        (x * 2).backward()
    with pytest.raises(ValueError, match="explicit form"):
        ad.einsum("ij,jk", x, x.T)
    with pytest.raises(ValueError, match="rows"):
        ad.sparse_matmul(sp.eye(4, format="csr"), x)


def test_planted_wrong_vjp_is_caught():
    """The op checker itself must be able to fail: a mul whose VJP forgets one factor."""
    def bad_mul(a, b):
        return ad.Tensor.from_op(a.data * b.data, (a, b), lambda g: (g * b, g), "bad_mul")

    rng = np.random.default_rng(6)
    with pytest.raises(AssertionError, match="arg1"):
        check_op(bad_mul, lambda a, b: a * b, rng.standard_normal(3) + 2, rng.standard_normal(3))


def test_grad_stop_at_inputs_gives_partial_derivatives_without_walking_the_history():
    x = ad.Tensor(np.array([0.7, -1.2]), requires_grad=True)
    y = ad.tanh(x) * 3.0                                             # y depends on x
    out = (y * x).sum()
    (dx_total, dy) = ad.grad(out, [x, y], retain_graph=True)
    np.testing.assert_allclose(dy, x.data)
    np.testing.assert_allclose(dx_total, y.data + x.data * 3.0 * (1 - np.tanh(x.data) ** 2))
    (dx_partial, dy_partial) = ad.grad(out, [x, y], stop_at_inputs=True)
    np.testing.assert_allclose(dx_partial, y.data)                   # the path through y is cut
    np.testing.assert_allclose(dy_partial, x.data)

    # An inner gradient at the end of a long recurrence never visits the recurrence before it.
    M = ad.Tensor(np.ones(3), requires_grad=True)
    h = M
    for _ in range(1000):
        h = ad.tanh(h * 0.5 + 0.1)
    M_last = h * 1.0
    loss = ((M_last - 2.0) ** 2).sum()
    (g,) = ad.grad(loss, [M_last], create_graph=True, stop_at_inputs=True)
    np.testing.assert_allclose(g.data, 2 * (M_last.data - 2.0))
    (dM,) = ad.grad((g * g).sum(), [M])                               # second order still reaches M
    assert np.all(np.isfinite(dM)) and np.any(dM != 0)
