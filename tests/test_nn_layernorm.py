"""minimem.nn.layernorm: the pair against central differences (D = 1 included), known values, eps,
the autodiff twin and custom op, and bad input."""

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from gradcheck.core import assert_grads_close, numeric_vjp
from minimem import autodiff as ad
from minimem.nn.layernorm import (
    LayerNormModel, layernorm_autodiff, layernorm_backward, layernorm_forward, layernorm_op,
)


@settings(max_examples=25, deadline=None)
@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=3).map(tuple), D=st.integers(1, 5),
       eps=st.sampled_from([1e-5, 1e-3, 1e-12]), seed=st.integers(0, 2**16))
def test_layernorm_backward_matches_central_differences(lead, D, eps, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(lead + (D,))
    assume(D == 1 or np.all(x.std(axis=-1) > 0.1))             # rows off the var = 0 singularity
    gain, bias = 1.0 + 0.5 * rng.standard_normal(D), rng.standard_normal(D)
    dout = rng.standard_normal(lead + (D,))
    _, cache = layernorm_forward(x, gain, bias, eps)
    numeric = numeric_vjp(lambda *a: layernorm_forward(*a, eps)[0], (x, gain, bias), dout)
    assert_grads_close(layernorm_backward(dout, cache), numeric, names=("x", "gain", "bias"))


def test_known_values_and_eps():
    x = np.array([[1.0, 2.0, 3.0, 6.0]])                        # mean 3, biased variance 3.5
    y, _ = layernorm_forward(x, np.ones(4), np.zeros(4), eps=0.5)
    np.testing.assert_allclose(y, (x - 3.0) / 2.0, rtol=1e-14)   # sqrt(3.5 + 0.5) = 2
    y, _ = layernorm_forward(x, np.array([1.0, 2.0, 1.0, 1.0]), np.array([0.0, 0.0, 0.0, 10.0]), eps=1e-12)
    np.testing.assert_allclose(y, [[-2.0 / np.sqrt(3.5), -2.0 / np.sqrt(3.5), 0.0, 10.0 + 3.0 / np.sqrt(3.5)]],
                               rtol=1e-12)
    rows, _ = layernorm_forward(np.random.default_rng(0).standard_normal((5, 7)) * 4 + 2, np.ones(7), np.zeros(7))
    np.testing.assert_allclose(rows.mean(axis=-1), 0.0, atol=1e-14)
    np.testing.assert_allclose(rows.var(axis=-1), 1.0, rtol=1e-4)   # var / (var + 1e-5)


def test_constant_rows_are_finite_and_map_to_bias():
    y, cache = layernorm_forward(np.full((2, 3), 7.0), np.full(3, 2.0), np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(y, [[1.0, 2.0, 3.0]] * 2)
    dx, _, _ = layernorm_backward(np.ones((2, 3)), cache)
    assert np.all(np.isfinite(dx))


@pytest.mark.parametrize("engine", ["twin", "custom_op"])
def test_autodiff_agrees_with_manual(engine):
    rng = np.random.default_rng(1)
    x, gain, bias = rng.standard_normal((2, 3, 5)), rng.standard_normal(5), rng.standard_normal(5)
    dout = rng.standard_normal((2, 3, 5))
    y, cache = layernorm_forward(x, gain, bias, 1e-3)
    grads = layernorm_backward(dout, cache)
    tensors = [ad.Tensor(a.copy(), requires_grad=True) for a in (x, gain, bias)]
    out = layernorm_autodiff(*tensors, eps=1e-3) if engine == "twin" else layernorm_op(*tensors, eps=1e-3)
    np.testing.assert_allclose(out.data, y, rtol=0, atol=1e-12)
    out.backward(dout)
    for t, g in zip(tensors, grads):
        np.testing.assert_allclose(t.grad, g, rtol=0, atol=1e-10)


def test_model_float32_and_protocol():
    rng = np.random.default_rng(2)
    model = LayerNormModel(4, rng=rng, dtype=np.float32)
    y, cache = model.forward(rng.standard_normal((3, 4)).astype(np.float32))
    assert y.dtype == np.float32
    grads = model.backward(np.ones_like(y), cache)
    assert list(grads) == ["gain", "bias"] and grads["gain"].dtype == np.float32
    default = LayerNormModel(4)
    np.testing.assert_array_equal(default.params["gain"], 1.0)
    np.testing.assert_array_equal(default.params["bias"], 0.0)


def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match=r"\(\.\.\., D\) with D=3"):
        layernorm_forward(np.zeros((2, 4)), np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match=r"both have shape \(D,\)"):
        layernorm_forward(np.zeros((2, 3)), np.ones(3), np.zeros(2))
    with pytest.raises(ValueError, match="eps must be > 0"):
        layernorm_forward(np.zeros((2, 3)), np.ones(3), np.zeros(3), eps=0.0)
    model = LayerNormModel(3)
    with pytest.raises(ValueError, match="D=3"):
        model.forward(np.zeros(4))
    with pytest.raises(ValueError, match="inputs must be finite"):
        model.forward(np.array([0.0, np.nan, 1.0]))
    model.params["gain"] = np.array([1.0, np.inf, 1.0])
    with pytest.raises(ValueError, match="parameter gain must be finite"):
        model.forward(np.zeros(3))
