"""minimem.nn.mlp: the activation and stack pairs against central differences, the autodiff twin,
parameter naming and bad input."""

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from gradcheck.core import assert_grads_close, numeric_vjp
from minimem import autodiff as ad
from minimem.nn.mlp import (
    MLPModel, activation_backward, activation_forward, mlp_autodiff, mlp_backward, mlp_forward, mlp_init,
)


def away_from_zero(rng, shape, margin=0.05):
    """Standard normals with |z| >= margin, so relu's kink is out of the finite differences' reach."""
    z = rng.standard_normal(shape)
    return np.where(np.abs(z) < margin, np.sign(z + 1e-300) * margin, z)


@pytest.mark.parametrize("kind", ["tanh", "relu", "identity"])
def test_activation_backward_matches_central_differences(kind):
    rng = np.random.default_rng(0)
    z = away_from_zero(rng, (3, 4))
    dout = rng.standard_normal((3, 4))
    _, cache = activation_forward(z, kind)
    numeric = numeric_vjp(lambda z: activation_forward(z, kind)[0], (z,), dout)
    assert_grads_close((activation_backward(dout, cache),), numeric, names=("z",))


@settings(max_examples=20, deadline=None)
@given(sizes=st.lists(st.integers(1, 4), min_size=2, max_size=4), lead=st.lists(st.integers(1, 3), min_size=1,
       max_size=2).map(tuple), activation=st.sampled_from(["tanh", "relu"]),
       output_activation=st.sampled_from(["identity", "tanh"]), seed=st.integers(0, 2**16))
def test_mlp_backward_matches_central_differences(sizes, lead, activation, output_activation, seed):
    rng = np.random.default_rng(seed)
    params = mlp_init(rng, sizes)
    for name in params:
        if name.endswith(".b"):
            params[name] = 0.5 * rng.standard_normal(params[name].shape)
    x = rng.standard_normal(lead + (sizes[0],))
    y, cache = mlp_forward(x, params, activation, output_activation)
    if activation == "relu":                                    # keep every hidden pre-activation off the kink
        assume(all(np.min(np.abs(ac[1])) > 1e-4 for ac in cache.activation[:-1]))
    dout = rng.standard_normal(y.shape)
    dx, grads = mlp_backward(dout, cache)
    assert list(grads) == list(params)
    names = list(params)

    def f(x, *values):
        return mlp_forward(x, dict(zip(names, values)), activation, output_activation)[0]

    numeric = numeric_vjp(f, (x,) + tuple(params.values()), dout)
    assert_grads_close((dx,) + tuple(grads[n] for n in names), numeric, names=["x"] + names)


def test_known_values_one_hidden_layer():
    params = {"layer0.W": np.array([[1.0, -1.0]]), "layer0.b": np.array([0.0, 0.5]),
              "layer1.W": np.array([[2.0], [3.0]]), "layer1.b": np.array([0.25])}
    x = np.array([[1.0], [-2.0]])
    y, _ = mlp_forward(x, params, "relu")
    # hidden relu([x, 0.5 - x]) = [[1, 0], [0, 2.5]]
    np.testing.assert_allclose(y, [[2.25], [7.75]])
    y, _ = mlp_forward(x, params, "tanh", "tanh")
    np.testing.assert_allclose(y, np.tanh(np.tanh(np.array([[1.0, -0.5], [-2.0, 2.5]])) @ [[2.0], [3.0]] + 0.25))


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_autodiff_twin_agrees_with_manual(activation):
    rng = np.random.default_rng(1)
    model = MLPModel((3, 6, 5, 2), activation=activation, rng=rng)
    x = rng.standard_normal((2, 4, 3))
    y, cache = model.forward(x)
    dout = rng.standard_normal(y.shape)
    grads = model.backward(dout, cache)
    tparams = {n: ad.Tensor(p.copy(), requires_grad=True) for n, p in model.params.items()}
    out = model.forward_autodiff(tparams, x)
    np.testing.assert_allclose(out.data, y, rtol=0, atol=1e-12)
    out.backward(dout)
    for name, g in grads.items():
        np.testing.assert_allclose(tparams[name].grad, g, rtol=0, atol=1e-10)
    tx = ad.Tensor(x.copy(), requires_grad=True)
    mlp_autodiff(tx, {n: ad.Tensor(p) for n, p in model.params.items()}, activation).backward(dout)
    np.testing.assert_allclose(tx.grad, mlp_backward(dout, cache)[0], rtol=0, atol=1e-10)


def test_model_float32_and_parameter_names():
    rng = np.random.default_rng(2)
    model = MLPModel((4, 3, 2), activation="relu", rng=rng, dtype=np.float32)
    assert list(model.params) == ["layer0.W", "layer0.b", "layer1.W", "layer1.b"]
    y, cache = model.forward(rng.standard_normal((5, 4)).astype(np.float32))
    assert y.dtype == np.float32 and y.shape == (5, 2)
    assert all(g.dtype == np.float32 for g in model.backward(np.ones_like(y), cache).values())


def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match="activation must be one of"):
        MLPModel((2, 3), activation="sigmoid")
    with pytest.raises(ValueError, match="at least"):
        mlp_init(np.random.default_rng(0), (3,))
    params = mlp_init(np.random.default_rng(0), (2, 3, 1))
    with pytest.raises(ValueError, match=r"\(\.\.\., X\) with X=2"):
        mlp_forward(np.zeros((4, 3)), params)
    with pytest.raises(ValueError, match="layer0.W, layer0.b"):
        mlp_forward(np.zeros((4, 2)), {**params, "extra.W": np.zeros((1, 1))})
    with pytest.raises(ValueError, match="layer1.W must have shape"):
        mlp_forward(np.zeros((4, 2)), {**params, "layer1.W": np.zeros((2, 1))})
    with pytest.raises(ValueError, match="activation must be one of"):
        activation_forward(np.zeros(2), "gelu")
    model = MLPModel((2, 3))
    with pytest.raises(ValueError, match="X=2"):
        model.forward(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="inputs must be finite"):
        model.forward(np.array([[np.inf, 0.0]]))
    model.params["layer0.b"] = np.array([0.0, np.nan, 0.0])
    with pytest.raises(ValueError, match="parameter layer0.b must be finite"):
        model.forward(np.zeros((1, 2)))
