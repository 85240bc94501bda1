"""gradcheck.check, the public API for a user's own NumPy function: it must pass right gradients,
catch wrong ones with the input (and Hessian block) named, call kinks kinks, and return the
numerical gradient when no gradient is given."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcheck import Report, check


def layer(W, x):
    """f(W, x) = sum(tanh(x @ W)^2), W (X, Y), x (B, X)."""
    return np.sum(np.tanh(x @ W) ** 2)


def layer_grad(W, x):
    y = np.tanh(x @ W)
    dz = 2.0 * y * (1.0 - y ** 2)                                   # (B, Y)
    return x.T @ dz, dz @ W.T


@pytest.fixture
def point():
    rng = np.random.default_rng(0)
    return rng.standard_normal((3, 2)), rng.standard_normal((4, 3))


@pytest.mark.parametrize("mode", ["full", "fast"])
def test_a_right_gradient_passes(point, mode):
    result = check(layer, point, grad=layer_grad, mode=mode)
    assert isinstance(result, Report) and result.ok
    assert [(r.engine, r.tensor) for r in result.rows] == [("grad", "x0"), ("grad", "x1")]
    assert result.rows[0].checked == (6 if mode == "full" else 3)
    rows, ok = result                                               # unpacks like check_model's result
    assert ok and "x0" in str(result) and "2 rows: 2 ok" in str(result)


def test_precomputed_arrays_and_names(point):
    result = check(layer, point, grad=layer_grad(*point), names=("W", "x"))
    assert result.ok and [r.tensor for r in result.rows] == ["W", "x"]


@pytest.mark.parametrize("mode", ["full", "fast"])
def test_a_wrong_gradient_is_caught_and_named(point, mode):
    wrong = lambda W, x: (layer_grad(W, x)[0], 2.0 * layer_grad(W, x)[1])
    result = check(layer, point, grad=wrong, mode=mode, names=("W", "x"))
    verdicts = {r.tensor: r.verdict for r in result.rows}
    assert verdicts == {"W": "ok", "x": "FAIL"} and not result.ok
    bad = result.rows[1]
    assert bad.analytic == pytest.approx(2.0 * bad.numeric, rel=1e-6) and bad.failures > 0
    assert bad.mode == ("full" if mode == "full" else "rerun")
    assert "x: " in str(result) and "FAIL" in str(result)


def test_dict_inputs_and_integer_constants():
    rng = np.random.default_rng(1)
    W, labels = rng.standard_normal((3, 4)), np.array([0, 2, 1])

    def nll(p):                                                      # softmax cross entropy of rows of W
        z = p["W"] - p["W"].max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return -np.sum(logp[np.arange(3), p["labels"]])

    def nll_grad(p):
        z = np.exp(p["W"] - p["W"].max(axis=1, keepdims=True))
        probs = z / z.sum(axis=1, keepdims=True)
        probs[np.arange(3), p["labels"]] -= 1.0
        return {"W": probs}

    inputs = {"W": W, "labels": labels}
    result = check(nll, inputs, grad=nll_grad)
    assert result.ok and [r.tensor for r in result.rows] == ["W"]   # integer labels are constants
    numeric = check(nll, inputs)
    assert set(numeric) == {"W", "labels"} and numeric["labels"] is None
    np.testing.assert_allclose(numeric["W"], nll_grad(inputs)["W"], rtol=1e-7, atol=1e-9)


def test_numeric_gradient_without_grad(point):
    W, x = point
    dW, dx = check(layer, (W, x))
    eW, ex = layer_grad(W, x)
    np.testing.assert_allclose(dW, eW, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(dx, ex, rtol=1e-7, atol=1e-9)
    single = check(lambda v: np.sum(v ** 3), np.array([1.0, -2.0]))
    np.testing.assert_allclose(single, [3.0, 12.0], rtol=1e-8)
    with pytest.raises(ValueError, match="needs? a grad"):
        check(layer, point, mode="fast")


def test_array_output_through_doutput(point):
    W, x = point
    dout = np.random.default_rng(2).standard_normal((4, 2))
    f = lambda W, x: np.tanh(x @ W)                                   # (B, Y)

    def vjp(W, x):
        dz = dout * (1.0 - np.tanh(x @ W) ** 2)
        return x.T @ dz, dz @ W.T

    assert check(f, point, grad=vjp, doutput=dout).ok
    with pytest.raises(ValueError, match="doutput"):
        check(f, point, grad=vjp)
    with pytest.raises(ValueError, match="shape"):
        check(f, point, grad=vjp, doutput=dout.T)
    two = lambda W, x: (np.tanh(x @ W), x @ W)
    with pytest.raises(ValueError, match="doutput"):
        check(two, point, grad=vjp)


def test_a_kink_is_reported_as_kink_not_fail():
    x = np.array([3e-7, 1.0, -0.5])                                  # |x| has its kink within eps of x[0]
    result = check(lambda v: np.sum(np.abs(v)), x, grad=np.sign(x))
    row = result.rows[0]
    assert row.verdict == "kink" and row.kinks == [(0,)] and not result.ok
    assert "non-smooth" in str(result)


def test_inputs_are_never_modified_and_float32_is_upcast(point):
    W, x = point
    W32, before = W.astype(np.float32), x.copy()
    with pytest.warns(UserWarning, match="float64"):
        result = check(layer, (W32, x), grad=layer_grad)
    assert result.ok and W32.dtype == np.float32 and np.array_equal(x, before)
    with pytest.raises(ValueError, match="float32"):
        check(lambda W, x: np.float32(layer(W, x)), point, grad=layer_grad)


def test_bad_calls_raise_clear_errors(point):
    rng = np.random.default_rng(3)
    with pytest.raises(ValueError, match="not deterministic"):
        check(lambda W, x: layer(W, x) + rng.standard_normal(), point, grad=layer_grad)
    with pytest.raises(ValueError, match="shape"):
        check(layer, point, grad=lambda W, x: (layer_grad(W, x)[0].T, layer_grad(W, x)[1]))
    with pytest.raises(ValueError, match="tuple of 2"):
        check(layer, point, grad=layer_grad(*point)[0])
    with pytest.raises(ValueError, match="mode"):
        check(layer, point, grad=layer_grad, mode="slow")
    with pytest.raises(ValueError, match="no floating-point input"):
        check(lambda i: float(np.sum(i)), np.arange(3))
    with pytest.raises(ValueError, match="NaN"):
        check(layer, (point[0], np.full((4, 3), np.nan)), grad=layer_grad)


# ----------------------------------------------------------------- second order
def quartic(W, x):
    """sum((x @ W)^4) / 4: its Hessian couples W and x."""
    return np.sum((x @ W) ** 4) / 4.0


def quartic_grad(W, x):
    z3 = (x @ W) ** 3
    return x.T @ z3, z3 @ W.T


def quartic_hvp(W, x, v, cross=True):
    """H v for v = (vW, vx): differentiate the gradient along v by hand."""
    vW, vx = v
    z = x @ W
    dz = x @ vW + vx @ W                                             # d z along v
    dz3 = 3.0 * z ** 2 * dz
    hW = x.T @ dz3 + (vx.T @ z ** 3 if cross else 0.0)
    hx = dz3 @ W.T + (z ** 3 @ vW.T if cross else 0.0)
    return hW, hx


@pytest.mark.parametrize("mode", ["full", "fast"])
def test_second_order_hvp(point, mode):
    result = check(quartic, point, grad=quartic_grad, second_order=True, hvp=quartic_hvp, mode=mode, names=("W", "x"))
    assert result.ok, str(result)
    tensors = [r.tensor for r in result.rows if r.engine == "hvp"]
    assert tensors == (["hess[W, W]", "hess[W, x]", "hess[x, W]", "hess[x, x]"] if mode == "full"
                       else ["hess[W, :]", "hess[x, :]"])


def test_second_order_catches_a_dropped_cross_term(point):
    no_cross = lambda W, x, v: quartic_hvp(W, x, v, cross=False)
    result = check(quartic, point, grad=quartic_grad, second_order=True, hvp=no_cross, names=("W", "x"))
    verdicts = {r.tensor: r.verdict for r in result.rows if r.engine == "hvp"}
    assert verdicts == {"hess[W, W]": "ok", "hess[W, x]": "FAIL", "hess[x, W]": "FAIL", "hess[x, x]": "ok"}
    fast = check(quartic, point, grad=quartic_grad, second_order=True, hvp=no_cross, mode="fast", names=("W", "x"))
    assert not fast.ok and {r.mode for r in fast.rows if r.engine == "hvp"} == {"rerun"}


def test_second_order_symmetry_without_hvp():
    rng = np.random.default_rng(4)
    A = rng.standard_normal((3, 3))
    x = rng.standard_normal(3)
    f = lambda x: 0.5 * x @ (A + A.T) @ x + np.sum(np.sin(x))
    g = lambda x: (A + A.T) @ x + np.cos(x)
    for mode in ("full", "fast"):
        result = check(f, x, grad=g, second_order=True, mode=mode)
        assert result.ok and result.rows[-1].engine == "symmetry"
    # a field that is no gradient: (A x) has the non-symmetric Jacobian A. The first-order check
    # fails too (f has no such gradient); the symmetry row says why independently of f.
    result = check(f, x, grad=lambda x: A @ x, second_order=True)
    assert result.rows[-1].engine == "symmetry" and result.rows[-1].verdict == "FAIL"


def test_second_order_needs_a_gradient_function(point):
    with pytest.raises(ValueError, match="grad as a function"):
        check(quartic, point, grad=quartic_grad(*point), second_order=True)


# ----------------------------------------------------------------- any shape
@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 3), min_size=0, max_size=3), seed=st.integers(0, 2 ** 16))
def test_any_shape_including_scalars_and_size_one_axes(shape, seed):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(shape), rng.standard_normal(shape)
    f = lambda x: np.sum(w * np.sin(x))
    result = check(f, x, grad=lambda x: w * np.cos(x))
    assert result.ok and result.rows[0].checked == x.size
    with warnings.catch_warnings():
        warnings.simplefilter("error")                               # float64 input: no warning
        np.testing.assert_allclose(check(f, x), w * np.cos(x), rtol=1e-6, atol=1e-8)
