"""minimem.nn.conv: conv2d (im2col), max / average / global average pooling against central
differences for every input and parameter, a direct-loop reference, the autodiff twins, the CNN
backbone, a planted wrong col2im, and bad input."""

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import minimem.nn.conv as conv_module
from gradcheck.cases import all_cases
from gradcheck.core import assert_grads_close, check_model, numeric_vjp
from minimem import autodiff as ad
from minimem.nn.conv import (
    CNNModel, avg_pool_autodiff, avg_pool_backward, avg_pool_forward, col2im, conv2d_autodiff, conv2d_backward,
    conv2d_forward, conv2d_op, global_avg_pool_autodiff, global_avg_pool_backward, global_avg_pool_forward,
    max_pool_autodiff, max_pool_backward, max_pool_forward, output_size,
)


def reference_conv2d(x, W, b, stride, padding):
    """Eqs. (1)-(4) as loops over output pixels: the slow, obvious version."""
    kh, kw, _, F = W.shape
    x_p = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    Ho, Wo = output_size(x.shape[1], kh, stride, padding), output_size(x.shape[2], kw, stride, padding)
    y = np.zeros((x.shape[0], Ho, Wo, F))
    for i in range(Ho):
        for j in range(Wo):
            window = x_p[:, stride * i:stride * i + kh, stride * j:stride * j + kw, :]
            y[:, i, j] = np.einsum("bhwc,hwcf->bf", window, W) + b
    return y


def assert_engines_agree(manual, tensors, tol=1e-10):
    for name, g, t in manual:
        assert np.max(np.abs(g - t.grad), initial=0.0) <= tol * max(1.0, np.max(np.abs(g), initial=0.0)), name


conv_shapes = dict(B=st.integers(1, 2), Hi=st.integers(1, 5), Wi=st.integers(1, 5), C=st.integers(1, 2),
                   F=st.integers(1, 2), kh=st.integers(1, 3), kw=st.integers(1, 3), stride=st.integers(1, 3),
                   padding=st.integers(0, 2), bias=st.booleans(), seed=st.integers(0, 2**16))


@settings(max_examples=25, deadline=None)
@given(**conv_shapes)
def test_conv2d_backward_matches_central_differences(B, Hi, Wi, C, F, kh, kw, stride, padding, bias, seed):
    assume(Hi + 2 * padding >= kh and Wi + 2 * padding >= kw)
    rng = np.random.default_rng(seed)
    x, W = rng.standard_normal((B, Hi, Wi, C)), rng.standard_normal((kh, kw, C, F))
    b = rng.standard_normal(F) if bias else None
    y, cache = conv2d_forward(x, W, b, stride, padding)
    np.testing.assert_allclose(y, reference_conv2d(x, W, 0.0 if b is None else b, stride, padding), atol=1e-12)
    dout = rng.standard_normal(y.shape)
    dx, dW, db = conv2d_backward(dout, cache)
    inputs = (x, W) + ((b,) if bias else ())
    numeric = numeric_vjp(lambda *a: conv2d_forward(*a[:2], a[2] if bias else None, stride, padding)[0],
                          inputs, dout)
    assert_grads_close((dx, dW) + ((db,) if bias else ()), numeric, names=("x", "W", "b")[:len(inputs)])
    assert db is None or bias


@settings(max_examples=15, deadline=None)
@given(**conv_shapes)
def test_conv2d_autodiff_twin_and_custom_op_agree_with_manual(B, Hi, Wi, C, F, kh, kw, stride, padding, bias, seed):
    assume(Hi + 2 * padding >= kh and Wi + 2 * padding >= kw)
    rng = np.random.default_rng(seed)
    x, W, b = rng.standard_normal((B, Hi, Wi, C)), rng.standard_normal((kh, kw, C, F)), rng.standard_normal(F)
    y, cache = conv2d_forward(x, W, b, stride, padding)
    dout = rng.standard_normal(y.shape)
    grads = conv2d_backward(dout, cache)
    for fn in (conv2d_autodiff, conv2d_op):
        tensors = [ad.Tensor(a.copy(), requires_grad=True) for a in (x, W, b)]
        out = fn(*tensors, stride=stride, padding=padding)
        np.testing.assert_allclose(out.data, y, rtol=0, atol=1e-12)
        out.backward(dout)
        assert_engines_agree(zip(("x", "W", "b"), grads, tensors), tensors)


def separated(rng, shape, gap=1e-2):
    """Standard normals whose sorted values are at least `gap` apart: no ties and no near-ties in
    any pooling window, so the winners stay fixed under a finite-difference step."""
    n = int(np.prod(shape))
    values = np.sort(rng.standard_normal(n)) + gap * np.arange(n)
    return rng.permutation(values).reshape(shape)


pool_shapes = dict(B=st.integers(1, 2), Hi=st.integers(1, 5), Wi=st.integers(1, 5), C=st.integers(1, 2),
                   size=st.integers(1, 3), stride=st.one_of(st.none(), st.integers(1, 3)), seed=st.integers(0, 2**16))


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(["max", "avg"]), **pool_shapes)
def test_pooling_backward_matches_central_differences_and_the_twin(kind, B, Hi, Wi, C, size, stride, seed):
    assume(Hi >= size and Wi >= size)
    rng = np.random.default_rng(seed)
    x = separated(rng, (B, Hi, Wi, C))
    forward, backward, twin = {"max": (max_pool_forward, max_pool_backward, max_pool_autodiff),
                               "avg": (avg_pool_forward, avg_pool_backward, avg_pool_autodiff)}[kind]
    y, cache = forward(x, size, stride)
    s = size if stride is None else stride
    windows = [x[:, s * i:s * i + size, s * j:s * j + size] for i in range(y.shape[1]) for j in range(y.shape[2])]
    reduce = np.max if kind == "max" else np.mean
    np.testing.assert_allclose(y.reshape(B, -1, C), np.stack([reduce(w, axis=(1, 2)) for w in windows], 1), atol=1e-14)
    dout = rng.standard_normal(y.shape)
    dx = backward(dout, cache)
    numeric = numeric_vjp(lambda x: forward(x, size, stride)[0], (x,), dout)
    assert_grads_close((dx,), numeric, names=("x",))
    tx = ad.Tensor(x.copy(), requires_grad=True)
    out = twin(tx, size, stride)
    np.testing.assert_allclose(out.data, y, rtol=0, atol=1e-14)
    out.backward(dout)
    np.testing.assert_allclose(tx.grad, dx, rtol=0, atol=1e-12)


def test_max_pool_ties_go_to_the_first_maximum_in_both_engines():
    x = np.zeros((1, 2, 2, 1))                                   # one window, four tied maxima
    y, cache = max_pool_forward(x, 2)
    dx = max_pool_backward(np.ones_like(y), cache)
    np.testing.assert_array_equal(dx[0, :, :, 0], [[1.0, 0.0], [0.0, 0.0]])
    tx = ad.Tensor(x, requires_grad=True)
    max_pool_autodiff(tx, 2).backward(np.ones((1, 1, 1, 1)))
    np.testing.assert_array_equal(tx.grad, dx)


def test_global_average_pool():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 5))
    y, cache = global_avg_pool_forward(x)
    np.testing.assert_allclose(y, x.mean(axis=(1, 2)))
    dout = rng.standard_normal((2, 5))
    dx = global_avg_pool_backward(dout, cache)
    assert_grads_close((dx,), numeric_vjp(lambda x: global_avg_pool_forward(x)[0], (x,), dout), names=("x",))
    tx = ad.Tensor(x, requires_grad=True)
    global_avg_pool_autodiff(tx).backward(dout)
    np.testing.assert_allclose(tx.grad, dx, rtol=0, atol=1e-15)


# ----------------------------------------------------------------- the CNN backbone
@pytest.mark.parametrize("pool", ["max", "avg", "none"])
def test_cnn_autodiff_twin_agrees_with_manual(pool):
    rng = np.random.default_rng(1)
    model = CNNModel(C=2, channels=(3, 4), pool=pool, rng=rng)
    for name in model.params:
        if name.endswith(".b"):
            model.params[name] = 0.1 * rng.standard_normal(model.params[name].shape)
    x = rng.standard_normal((3, 8, 8, 2))
    h, cache = model.forward(x)
    assert h.shape == (3, model.D) == (3, 4)
    dh = rng.standard_normal(h.shape)
    grads = model.backward(dh, cache)
    assert list(grads) == list(model.params)
    tparams = {n: ad.Tensor(p.copy(), requires_grad=True) for n, p in model.params.items()}
    out = model.forward_autodiff(tparams, x)
    np.testing.assert_allclose(out.data, h, rtol=0, atol=1e-13)
    out.backward(dh)
    assert_engines_agree(((n, grads[n], tparams[n]) for n in grads), tparams)


CONV_CASES = [c.name for c in all_cases("hma") if c.name.startswith(("hma.conv2d", "hma.cnn"))]


def test_the_conv_cases_are_registered():
    assert {"hma.conv2d.stride2_pad1", "hma.cnn.max", "hma.cnn.avg"} <= set(CONV_CASES)


@pytest.mark.parametrize("name", CONV_CASES)
def test_conv_case_passes_full_gradcheck(name):
    case = {c.name: c for c in all_cases("hma")}[name]
    result = check_model(case)
    assert result.ok, [(r.engine, r.tensor, r.verdict, r.max_abs) for r in result.rows if not r.ok]


# ----------------------------------------------------------------- a planted bug and bad input
def test_planted_col2im_that_assigns_instead_of_adding_is_caught(monkeypatch):
    """Overlapping windows (stride 1 < kernel 3) share pixels; a col2im that assigns keeps only the
    last window's contribution and must be caught on x (and only on x)."""
    def assigning_col2im(dpatches, padded_shape, stride):
        B, Ho, Wo, kh, kw, C = dpatches.shape
        dx_p = np.zeros(padded_shape)
        for i in range(kh):
            for j in range(kw):
                rows, cols = slice(i, i + stride * (Ho - 1) + 1, stride), slice(j, j + stride * (Wo - 1) + 1, stride)
                dx_p[:, rows, cols, :] = dpatches[:, :, :, i, j, :]
        return dx_p

    rng = np.random.default_rng(2)
    x, W, b = rng.standard_normal((1, 4, 4, 2)), rng.standard_normal((3, 3, 2, 2)), rng.standard_normal(2)
    y, cache = conv2d_forward(x, W, b, 1, 1)
    dout = rng.standard_normal(y.shape)
    numeric = numeric_vjp(lambda *a: conv2d_forward(*a, 1, 1)[0], (x, W, b), dout)
    assert_grads_close(conv2d_backward(dout, cache), numeric, names=("x", "W", "b"))
    monkeypatch.setattr(conv_module, "col2im", assigning_col2im)
    with pytest.raises(AssertionError, match=r"^x:"):
        assert_grads_close(conv2d_backward(dout, cache), numeric, names=("x", "W", "b"))


def test_col2im_is_the_adjoint_of_im2col():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 6, 3))
    windows = conv_module.im2col(x, 3, 2, 2)
    dwindows = rng.standard_normal(windows.shape)
    np.testing.assert_allclose(np.sum(windows * dwindows), np.sum(x * col2im(dwindows, x.shape, 2)), rtol=1e-12)


def test_inputs_are_not_mutated_and_float32_stays_float32():
    rng = np.random.default_rng(4)
    x, W, b = (rng.standard_normal(s).astype(np.float32) for s in ((2, 4, 4, 2), (2, 2, 2, 3), (3,)))
    copies = [a.copy() for a in (x, W, b)]
    y, cache = conv2d_forward(x, W, b, 2, 1)
    dx, dW, db = conv2d_backward(np.ones_like(y), cache)
    assert y.dtype == dx.dtype == dW.dtype == np.float32
    for a, c in zip((x, W, b), copies):
        np.testing.assert_array_equal(a, c)


def test_bad_input_raises_value_error():
    rng = np.random.default_rng(5)
    x, W = rng.standard_normal((2, 4, 4, 3)), rng.standard_normal((3, 3, 3, 2))
    with pytest.raises(ValueError, match=r"x must have shape \(B, Hi, Wi, C\)"):
        conv2d_forward(x[0], W)
    with pytest.raises(ValueError, match=r"with C=3 channels"):
        conv2d_forward(x[..., :2], W)
    with pytest.raises(ValueError, match=r"W must have shape \(kh, kw, C, F\)"):
        conv2d_forward(x, W[0])
    with pytest.raises(ValueError, match=r"b must have shape \(F,\) with F=2"):
        conv2d_forward(x, W, np.zeros(3))
    with pytest.raises(ValueError, match=r"a window of 5 does not fit an image side of 4"):
        conv2d_forward(x, rng.standard_normal((5, 5, 3, 2)))
    with pytest.raises(ValueError, match=r"stride must be an integer >= 1"):
        conv2d_forward(x, W, stride=0)
    with pytest.raises(ValueError, match=r"padding must be an integer >= 0"):
        conv2d_forward(x, W, padding=-1)
    y, cache = conv2d_forward(x, W)
    with pytest.raises(ValueError, match=r"dout must have the output's shape \(B, Ho, Wo, F\) = \(2, 2, 2, 2\)"):
        conv2d_backward(y[..., :1], cache)
    with pytest.raises(ValueError, match=r"a window of 5 does not fit"):
        max_pool_forward(x, 5)
    with pytest.raises(ValueError, match=r"size must be an integer >= 1"):
        avg_pool_forward(x, 0)
    with pytest.raises(ValueError, match=r"x must be a float32 or float64 array"):
        global_avg_pool_forward(x.astype(np.complex128))
    with pytest.raises(ValueError, match=r"pool must be one of"):
        CNNModel(C=3, channels=(2,), pool="sum")
    model = CNNModel(C=3, channels=(2, 2))
    with pytest.raises(ValueError, match=r"inputs must have shape \(B, Hi, Wi, C\) with C=3"):
        model.forward(x[..., :1])
    with pytest.raises(ValueError, match=r"a window of 2 does not fit an image side of 1"):
        model.forward(x[:, :3, :3])                              # 3 -> pool -> 1 -> pool: too small
    with pytest.raises(ValueError, match=r"inputs must be finite"):
        model.forward(np.full((1, 4, 4, 3), np.nan))
    model.params["conv0.W"] = np.zeros((2, 2, 3, 2))
    with pytest.raises(ValueError, match=r"parameter conv0.W must have shape \(3, 3, 3, 2\)"):
        model.forward(x)
