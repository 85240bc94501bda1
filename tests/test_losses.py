"""minimem.nn.losses: known values, stability at logits of +-1000, mask semantics, the four
normalisations, backward against central differences, the autodiff twins, and bad input."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gradcheck.core import assert_grads_close, numeric_vjp
from minimem import autodiff as ad
from minimem.nn.losses import (
    REDUCTIONS, mse_autodiff, mse_backward, mse_forward, sigmoid_cross_entropy_autodiff,
    sigmoid_cross_entropy_backward, sigmoid_cross_entropy_forward, softmax_cross_entropy_autodiff,
    softmax_cross_entropy_backward, softmax_cross_entropy_forward,
)

LOSSES = {
    "sigmoid_ce": (sigmoid_cross_entropy_forward, sigmoid_cross_entropy_backward, sigmoid_cross_entropy_autodiff),
    "softmax_ce": (softmax_cross_entropy_forward, softmax_cross_entropy_backward, softmax_cross_entropy_autodiff),
    "softmax_ce_probs": (softmax_cross_entropy_forward, softmax_cross_entropy_backward,
                         softmax_cross_entropy_autodiff),
    "mse": (mse_forward, mse_backward, mse_autodiff),
}


def make_targets(kind, rng, shape):
    if kind == "sigmoid_ce":
        return rng.integers(0, 2, shape).astype(float)
    if kind == "softmax_ce":
        return rng.integers(0, shape[-1], shape[:-1])
    if kind == "softmax_ce_probs":
        return rng.dirichlet(np.ones(shape[-1]), size=shape[:-1])
    return rng.standard_normal(shape)


# ----------------------------------------------------------------- known values
def test_sigmoid_cross_entropy_known_values():
    logits = np.array([[0.0, 2.0], [-1.0, 3.0]])                # (B=2, Y=2)
    targets = np.array([[1.0, 0.0], [0.0, 1.0]])
    p = 1.0 / (1.0 + np.exp(-logits))
    per_bit = -(targets * np.log(p) + (1 - targets) * np.log(1 - p))
    loss, cache = sigmoid_cross_entropy_forward(logits, targets)
    np.testing.assert_allclose(loss, per_bit.sum() / 2, rtol=1e-14)
    np.testing.assert_allclose(sigmoid_cross_entropy_backward(1.0, cache), (p - targets) / 2, rtol=1e-14)
    loss, _ = sigmoid_cross_entropy_forward(np.zeros((1, 8)), np.ones((1, 8)))
    np.testing.assert_allclose(loss, 8 * np.log(2.0), rtol=1e-14)   # 8 bits per sequence at chance


def test_softmax_cross_entropy_known_values_and_target_forms_agree():
    logits = np.array([[0.0, 0.0], [1.0, 2.0], [3.0, -1.0]])   # (B=3, Y=2)
    classes = np.array([0, 1, 1])
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -log_p[np.arange(3), classes].sum() / 3
    loss, cache = softmax_cross_entropy_forward(logits, classes)
    np.testing.assert_allclose(loss, expected, rtol=1e-14)
    one_hot = np.eye(2)[classes]
    loss2, cache2 = softmax_cross_entropy_forward(logits, one_hot)
    np.testing.assert_allclose(loss2, loss, rtol=1e-14)
    np.testing.assert_allclose(softmax_cross_entropy_backward(1.0, cache),
                               (np.exp(log_p) - one_hot) / 3, rtol=1e-14)
    np.testing.assert_array_equal(softmax_cross_entropy_backward(1.0, cache2),
                                  softmax_cross_entropy_backward(1.0, cache))
    loss, _ = softmax_cross_entropy_forward(np.zeros((1, 2)), np.array([1]))
    np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-14)


def test_mse_known_values_and_mean_reduction_is_np_mean():
    p, y = np.array([[1.0, 2.0], [3.0, 5.0]]), np.array([[0.0, 2.0], [1.0, 1.0]])
    loss, cache = mse_forward(p, y, reduction="mean")
    np.testing.assert_allclose(loss, np.mean((p - y) ** 2), rtol=1e-14)    # (1 + 0 + 4 + 16) / 4
    np.testing.assert_allclose(mse_backward(2.0, cache), 2.0 * 2 * (p - y) / 4, rtol=1e-14)
    np.testing.assert_allclose(mse_forward(p, y)[0], 21.0 / 2, rtol=1e-14)   # default "batch": / B


# ----------------------------------------------------------------- stability
@pytest.mark.parametrize("kind", ["sigmoid_ce", "softmax_ce", "softmax_ce_probs"])
def test_extreme_logits_give_finite_loss_and_gradient(kind):
    rng = np.random.default_rng(0)
    logits = rng.choice([-1000.0, 1000.0, 0.0, -999.0], size=(3, 2, 4))
    forward, backward, _ = LOSSES[kind]
    loss, cache = forward(logits, make_targets(kind, rng, logits.shape))
    dlogits = backward(1.0, cache)
    assert np.isfinite(loss) and np.all(np.isfinite(dlogits))
    assert np.all(np.abs(dlogits) <= 1.0 + 1e-12)


def test_extreme_logits_have_the_right_values():
    loss, cache = sigmoid_cross_entropy_forward(np.array([[1000.0, -1000.0, 1000.0]]), np.array([[0.0, 0.0, 1.0]]),
                                                reduction="sum")
    assert loss == 1000.0                                       # confident and wrong, right, right
    np.testing.assert_array_equal(sigmoid_cross_entropy_backward(1.0, cache), [[1.0, 0.0, 0.0]])
    loss, cache = softmax_cross_entropy_forward(np.array([[1000.0, -1000.0]]), np.array([1]), reduction="sum")
    assert loss == 2000.0
    np.testing.assert_array_equal(softmax_cross_entropy_backward(1.0, cache), [[1.0, -1.0]])


# ----------------------------------------------------------------- masks and normalisers
@pytest.mark.parametrize("kind", list(LOSSES))
def test_masked_steps_contribute_zero_loss_and_zero_gradient(kind):
    rng = np.random.default_rng(1)
    forward, backward, _ = LOSSES[kind]
    T, B, Y = 4, 3, 5
    outputs = rng.standard_normal((T, B, Y))
    targets = make_targets(kind, rng, (T, B, Y))
    mask = rng.random((T, B)) < 0.5
    mask[0, 0], mask[1, 1] = True, False
    loss, cache = forward(outputs, targets, mask)
    d = backward(1.0, cache)
    assert np.all(d[~mask] == 0.0) and np.all(np.any(d[mask] != 0.0, axis=-1))
    garbage = outputs.copy()
    garbage[~mask] = np.nan                                     # padding may hold anything
    with np.errstate(invalid="ignore"):
        loss2, cache2 = forward(garbage, targets, mask)
        d2 = backward(1.0, cache2)
    assert loss2 == loss
    np.testing.assert_array_equal(d2, d)
    # the same as keeping only the counted steps, with "sum" reduction
    kept = sum(forward(outputs[t, b][None], targets[t, b][None] if np.ndim(targets) == 3 else targets[t, b:b + 1],
                       reduction="sum")[0] for t, b in zip(*np.nonzero(mask)))
    np.testing.assert_allclose(forward(outputs, targets, mask, "sum")[0], kept, rtol=1e-13)


@pytest.mark.parametrize("kind", list(LOSSES))
def test_normalisers(kind):
    rng = np.random.default_rng(2)
    forward = LOSSES[kind][0]
    T, B, Y = 3, 4, 2
    outputs = rng.standard_normal((T, B, Y))
    targets = make_targets(kind, rng, (T, B, Y))
    mask = np.array([[1.0], [0.0], [1.0]])                      # (T, 1): per step, every sequence
    total = forward(outputs, targets, mask, "sum")[0]
    counted = 2 * B                                             # steps counted: 2 time steps x B
    np.testing.assert_allclose(forward(outputs, targets, mask, "batch")[0], total / B, rtol=1e-14)
    np.testing.assert_allclose(forward(outputs, targets, mask, "steps")[0], total / counted, rtol=1e-14)
    np.testing.assert_allclose(forward(outputs, targets, mask, "mean")[0], total / (counted * Y), rtol=1e-14)
    np.testing.assert_allclose(forward(outputs, targets, None, "batch")[0],
                               forward(outputs, targets, np.ones((T, B)), "batch")[0], rtol=1e-14)
    loss, cache = forward(outputs, targets, np.zeros((T, B)), "steps")
    assert loss == 0.0 and not np.any(LOSSES[kind][1](1.0, cache))   # an empty mask is 0, not NaN


def test_mask_weights_scale_steps():
    rng = np.random.default_rng(3)
    logits, targets = rng.standard_normal((2, 1, 3)), rng.integers(0, 2, (2, 1, 3)).astype(float)
    one = sigmoid_cross_entropy_forward(logits[:1], targets[:1], reduction="sum")[0]
    two = sigmoid_cross_entropy_forward(logits[1:], targets[1:], reduction="sum")[0]
    loss = sigmoid_cross_entropy_forward(logits, targets, np.array([[0.5], [2.0]]), reduction="sum")[0]
    np.testing.assert_allclose(loss, 0.5 * one + 2.0 * two, rtol=1e-14)


# ----------------------------------------------------------------- gradients
@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(list(LOSSES)), lead=st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple),
       Y=st.integers(1, 4), reduction=st.sampled_from(REDUCTIONS), masked=st.booleans(), seed=st.integers(0, 2**16))
def test_backward_matches_central_differences(kind, lead, Y, reduction, masked, seed):
    rng = np.random.default_rng(seed)
    forward, backward, _ = LOSSES[kind]
    shape = lead + (Y,)
    outputs = 2.0 * rng.standard_normal(shape)
    targets = make_targets(kind, rng, shape)
    mask = (rng.random(lead) < 0.7).astype(float) if masked else None
    _, cache = forward(outputs, targets, mask, reduction)
    dout = rng.standard_normal()
    numeric = numeric_vjp(lambda z: forward(z, targets, mask, reduction)[0], (outputs,), np.array(dout))
    assert_grads_close((backward(dout, cache),), numeric, names=("outputs",))


@pytest.mark.parametrize("kind", list(LOSSES))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_autodiff_twin_agrees_with_manual(kind, reduction):
    rng = np.random.default_rng(4)
    forward, backward, twin = LOSSES[kind]
    outputs = 3.0 * rng.standard_normal((3, 2, 4))
    targets = make_targets(kind, rng, outputs.shape)
    mask = np.array([[1, 0], [1, 1], [0, 1]])
    loss, cache = forward(outputs, targets, mask, reduction)
    t = ad.Tensor(outputs.copy(), requires_grad=True)
    out = twin(t, targets, mask, reduction)
    np.testing.assert_allclose(out.data, loss, rtol=1e-13, atol=1e-13)
    out.backward(np.array(0.7))
    np.testing.assert_allclose(t.grad, backward(0.7, cache), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", list(LOSSES))
def test_float32_stays_float32(kind):
    rng = np.random.default_rng(5)
    forward, backward, _ = LOSSES[kind]
    outputs = rng.standard_normal((3, 2, 4)).astype(np.float32)
    targets = make_targets(kind, rng, outputs.shape)
    if kind != "softmax_ce":
        targets = targets.astype(np.float32)
    loss, cache = forward(outputs, targets, np.ones((3, 2), dtype=bool))
    assert loss.dtype == np.float32 and backward(1.0, cache).dtype == np.float32


# ----------------------------------------------------------------- bad input
def test_bad_input_raises_value_error():
    z = np.zeros((3, 2, 4))
    with pytest.raises(ValueError, match=r"targets must have the logits' shape \(3, 2, 4\)"):
        sigmoid_cross_entropy_forward(z, np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sigmoid_cross_entropy_forward(z, np.full(z.shape, 2.0))
    with pytest.raises(ValueError, match=r"integer targets must have shape \(3, 2\)"):
        softmax_cross_entropy_forward(z, np.zeros((3, 2, 1), dtype=int))
    with pytest.raises(ValueError, match=r"\[0, Y\) = \[0, 4\)"):
        softmax_cross_entropy_forward(z, np.full((3, 2), 4))
    with pytest.raises(ValueError, match=r"probability targets must have the logits' shape"):
        softmax_cross_entropy_forward(z, np.zeros((3, 4)))
    with pytest.raises(ValueError, match=">= 0"):
        softmax_cross_entropy_forward(z, np.full(z.shape, -0.5))
    with pytest.raises(ValueError, match=r"predictions' shape"):
        mse_forward(z, z[0])
    with pytest.raises(ValueError, match=r"mask must have shape \(3, 2\)"):
        mse_forward(z, z, mask=np.ones(3))                       # (T,) would align with B: refused
    with pytest.raises(ValueError, match=r"mask must have shape \(3, 2\)"):
        mse_forward(z, z, mask=np.ones((2, 2)))
    with pytest.raises(ValueError, match=">= 0"):
        mse_forward(z, z, mask=-np.ones((3, 2)))
    with pytest.raises(ValueError, match="reduction must be one of"):
        mse_forward(z, z, reduction="avg")
    with pytest.raises(ValueError, match="Y >= 1"):
        mse_forward(np.zeros((3, 0)), np.zeros((3, 0)))


@pytest.mark.parametrize("name", ["sigmoid", "softmax", "mse"])
def test_gradient_keeps_the_outputs_float32_dtype_with_float64_targets(name):
    """A float32 model trains in float32: float64 targets must not promote the gradient."""
    rng = np.random.default_rng(3)
    z32 = rng.standard_normal((4, 3, 5)).astype(np.float32)
    targets = (rng.random((4, 3, 5)) > 0.5).astype(np.float64)
    if name == "softmax":
        targets = np.eye(5)[rng.integers(0, 5, (4, 3))]
    forward, backward = {"sigmoid": (sigmoid_cross_entropy_forward, sigmoid_cross_entropy_backward),
                         "softmax": (softmax_cross_entropy_forward, softmax_cross_entropy_backward),
                         "mse": (mse_forward, mse_backward)}[name]
    loss32, cache32 = forward(z32, targets)
    dz32 = backward(1.0, cache32)
    assert dz32.dtype == np.float32 and loss32.dtype == np.float32
    loss64, cache64 = forward(z32.astype(np.float64), targets)
    np.testing.assert_allclose(dz32, backward(1.0, cache64), rtol=1e-5, atol=1e-6)
