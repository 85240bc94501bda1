"""minimem.nn.linear: the pair against central differences, its autodiff twin, layouts, the model
class, the shared helpers (prefixes, initialisers) and bad input."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gradcheck.core import assert_grads_close, numeric_vjp
from minimem import autodiff as ad
from minimem.nn.linear import (
    LinearModel, linear_autodiff, linear_backward, linear_forward, linear_init, linear_op, strip_prefix, with_prefix,
)

sizes = st.integers(1, 4)
leading_shapes = st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple)


@settings(max_examples=25, deadline=None)
@given(lead=leading_shapes, X=sizes, Y=sizes, bias=st.booleans(), seed=st.integers(0, 2**16))
def test_linear_backward_matches_central_differences(lead, X, Y, bias, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(lead + (X,))
    W = rng.standard_normal((X, Y))
    b = rng.standard_normal(Y)
    dout = rng.standard_normal(lead + (Y,))                     # random upstream, never ones
    if bias:
        _, cache = linear_forward(x, W, b)
        analytic = linear_backward(dout, cache)
        numeric = numeric_vjp(lambda *a: linear_forward(*a)[0], (x, W, b), dout)
        assert_grads_close(analytic, numeric, names=("x", "W", "b"))
    else:
        _, cache = linear_forward(x, W)
        dx, dW, db = linear_backward(dout, cache)
        assert db is None
        numeric = numeric_vjp(lambda *a: linear_forward(*a)[0], (x, W), dout)
        assert_grads_close((dx, dW), numeric, names=("x", "W"))


def test_linear_layout_is_x_at_W_plus_b():
    x = np.array([[1.0, 2.0]])                                  # (B=1, X=2)
    W = np.array([[1.0, 10.0, 100.0], [2.0, 20.0, 200.0]])     # (X=2, Y=3)
    y, _ = linear_forward(x, W, np.array([0.5, 0.0, -0.5]))
    np.testing.assert_array_equal(y, [[5.5, 50.0, 499.5]])


def test_planted_doubled_bias_gradient_is_caught_and_named():
    rng = np.random.default_rng(0)
    x, W, b = rng.standard_normal((2, 3)), rng.standard_normal((3, 4)), rng.standard_normal(4)
    dout = rng.standard_normal((2, 4))
    _, cache = linear_forward(x, W, b)
    dx, dW, db = linear_backward(dout, cache)
    numeric = numeric_vjp(lambda *a: linear_forward(*a)[0], (x, W, b), dout)
    with pytest.raises(AssertionError, match="^b:"):
        assert_grads_close((dx, dW, 2.0 * db), numeric, names=("x", "W", "b"))


@pytest.mark.parametrize("use_custom_op", [False, True])
def test_autodiff_twin_agrees_with_manual(use_custom_op):
    rng = np.random.default_rng(1)
    x, W, b = rng.standard_normal((3, 2, 4)), rng.standard_normal((4, 5)), rng.standard_normal(5)
    dout = rng.standard_normal((3, 2, 5))
    y, cache = linear_forward(x, W, b)
    grads = linear_backward(dout, cache)
    tensors = [ad.Tensor(a.copy(), requires_grad=True) for a in (x, W, b)]
    out = (linear_op if use_custom_op else linear_autodiff)(*tensors)
    np.testing.assert_allclose(out.data, y, rtol=0, atol=1e-12)
    out.backward(dout)
    for t, g in zip(tensors, grads):
        np.testing.assert_allclose(t.grad, g, rtol=0, atol=1e-10)


def test_model_protocol_and_float32():
    rng = np.random.default_rng(2)
    model = LinearModel(3, 2, rng=rng, dtype=np.float32)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    y, cache = model.forward(x)
    assert y.dtype == np.float32 and y.shape == (4, 2)
    grads = model.backward(np.ones_like(y), cache)
    assert list(grads) == list(model.params) == ["W", "b"]
    assert grads["W"].dtype == np.float32


def test_model_reads_params_at_call_time():
    model = LinearModel(2, 2)
    x = np.ones((1, 2))
    model.params["b"] = np.array([5.0, -5.0])
    y, _ = model.forward(x)
    np.testing.assert_allclose(y, x @ model.params["W"] + [5.0, -5.0])


def test_bad_input_raises_value_error_naming_the_shape():
    W, b = np.zeros((3, 2)), np.zeros(2)
    with pytest.raises(ValueError, match=r"\(\.\.\., X\) with X=3"):
        linear_forward(np.zeros((4, 2)), W, b)
    with pytest.raises(ValueError, match=r"\(X, Y\)"):
        linear_forward(np.zeros((4, 3)), np.zeros(3), b)
    with pytest.raises(ValueError, match=r"\(Y,\) with Y=2"):
        linear_forward(np.zeros((4, 3)), W, np.zeros(3))
    with pytest.raises(ValueError, match="dtype"):
        linear_forward(np.zeros((4, 3), dtype=complex), W, b)
    model = LinearModel(3, 2)
    with pytest.raises(ValueError, match="X=3"):
        model.forward(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="inputs must be finite"):
        model.forward(np.array([[0.0, np.nan, 1.0]]))
    model.params["W"] = np.full((3, 2), np.inf)
    with pytest.raises(ValueError, match="parameter W must be finite"):
        model.forward(np.zeros((1, 3)))
    model.params["W"] = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"W must have shape \(3, 2\)"):
        model.forward(np.zeros((1, 3)))


def test_prefix_helpers_round_trip_and_keep_order():
    params = {"W_x": 1, "W_h": 2, "b": 3}
    prefixed = with_prefix("controller", params)
    assert list(prefixed) == ["controller.W_x", "controller.W_h", "controller.b"]
    mixed = {**prefixed, "readout.W": 4, "controller2.b": 5}
    assert strip_prefix("controller", mixed) == params


def test_init_is_seeded_and_shaped():
    a = linear_init(np.random.default_rng(3), 4, 6)
    b = linear_init(np.random.default_rng(3), 4, 6)
    np.testing.assert_array_equal(a["W"], b["W"])
    assert a["W"].shape == (4, 6) and np.all(np.abs(a["W"]) <= np.sqrt(6.0 / 10.0)) and not np.any(a["b"])
    assert "b" not in linear_init(np.random.default_rng(3), 4, 6, bias=False)
    assert linear_init(np.random.default_rng(3), 2, 3, dtype=np.float32)["W"].dtype == np.float32
