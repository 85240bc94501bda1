"""minimem.nn.attention: the kernel and multi-head pairs against central differences (self and
cross, with and without masks), a per-head loop reference, masks that really block, the autodiff
twin, the residual block model, and bad input."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gradcheck.core import assert_grads_close, numeric_vjp
from minimem import autodiff as ad
from minimem.nn.attention import (
    PARAM_NAMES, AttentionModel, attention_autodiff, attention_backward, attention_forward, attention_init,
    causal_mask, dot_product_attention_autodiff, dot_product_attention_backward, dot_product_attention_forward,
)


def random_params(rng, D, heads, Dkv=None, E=2):
    params = attention_init(rng, D, heads, Dkv=Dkv, head_width=E)
    return {n: p + 0.3 * rng.standard_normal(p.shape) for n, p in params.items()}   # nonzero biases too


def random_mask(rng, shape):
    """A boolean mask with at least one allowed key per query."""
    mask = rng.random(shape) < 0.6
    mask[..., 0] = True
    return mask


def check_attention(x_q, x_kv, params, heads, mask=None, causal=False, scale=None, seed=0):
    rng = np.random.default_rng(seed)
    y, cache = attention_forward(x_q, x_kv, params, heads, mask, causal, scale)
    dout = rng.standard_normal(y.shape)
    dx_q, dx_kv, grads = attention_backward(dout, cache)
    assert list(grads) == list(PARAM_NAMES)

    def f(x_q, x_kv, *values):
        return attention_forward(x_q, x_kv, dict(zip(PARAM_NAMES, values)), heads, mask, causal, scale)[0]

    numeric = numeric_vjp(f, (x_q, x_kv) + tuple(params[n] for n in PARAM_NAMES), dout)
    assert_grads_close((dx_q, dx_kv) + tuple(grads[n] for n in PARAM_NAMES), numeric,
                       names=("x_q", "x_kv") + PARAM_NAMES)


@settings(max_examples=20, deadline=None)
@given(lead=st.lists(st.integers(1, 2), min_size=1, max_size=2).map(tuple), Tq=st.integers(1, 3),
       Tk=st.integers(1, 3), E=st.integers(1, 3), Ev=st.integers(1, 3), masked=st.booleans(),
       seed=st.integers(0, 2**16))
def test_kernel_backward_matches_central_differences(lead, Tq, Tk, E, Ev, masked, seed):
    rng = np.random.default_rng(seed)
    Q, K = rng.standard_normal(lead + (Tq, E)), rng.standard_normal(lead + (Tk, E))
    V = rng.standard_normal(lead + (Tk, Ev))
    mask = random_mask(rng, (Tq, Tk)) if masked else None
    out, cache = dot_product_attention_forward(Q, K, V, mask)
    dout = rng.standard_normal(out.shape)
    numeric = numeric_vjp(lambda *a: dot_product_attention_forward(*a, mask)[0], (Q, K, V), dout)
    assert_grads_close(dot_product_attention_backward(dout, cache), numeric, names=("Q", "K", "V"))


@settings(max_examples=15, deadline=None)
@given(B=st.integers(1, 2), Tq=st.integers(1, 3), Tk=st.integers(1, 3), heads=st.integers(1, 3),
       E=st.integers(1, 2), cross=st.booleans(), mask_kind=st.sampled_from(["none", "causal", "given", "padding"]),
       seed=st.integers(0, 2**16))
def test_multihead_backward_matches_central_differences(B, Tq, Tk, heads, E, cross, mask_kind, seed):
    rng = np.random.default_rng(seed)
    D, Dkv = 3, (2 if cross else 3)
    Tk = Tk if cross else Tq
    if mask_kind == "causal":
        Tk = Tq
    params = random_params(rng, D, heads, Dkv=Dkv, E=E)
    x_q = rng.standard_normal((B, Tq, D))
    x_kv = rng.standard_normal((B, Tk, Dkv))
    mask = {"none": None, "causal": None, "given": random_mask(rng, (B, Tq, Tk)),
            "padding": random_mask(rng, (B, 1, Tk))}[mask_kind]
    check_attention(x_q, x_kv, params, heads, mask=mask, causal=mask_kind == "causal", seed=seed)


def test_self_attention_gradient_is_the_sum_of_both_roles():
    rng = np.random.default_rng(1)
    params = random_params(rng, 4, 2)
    x = rng.standard_normal((2, 3, 4))
    y, cache = attention_forward(x, x, params, 2, causal=True)
    dout = rng.standard_normal(y.shape)
    dx_q, dx_kv, _ = attention_backward(dout, cache)
    numeric = numeric_vjp(lambda x: attention_forward(x, x, params, 2, causal=True)[0], (x,), dout)
    assert_grads_close((dx_q + dx_kv,), numeric, names=("x",))


def reference_attention(x_q, x_kv, params, heads, mask, scale):
    """Per-head, per-batch loops: the slow, obvious version of eqs. (1)-(7)."""
    B, Tq, _ = x_q.shape
    E = params["W_q"].shape[1] // heads
    Ev = params["W_v"].shape[1] // heads
    Q, K, V = (x @ params[f"W_{n}"] + params[f"b_{n}"] for x, n in ((x_q, "q"), (x_kv, "k"), (x_kv, "v")))
    O = np.zeros((B, Tq, heads * Ev))
    for b in range(B):
        for h in range(heads):
            q, k, v = Q[b, :, h * E:(h + 1) * E], K[b, :, h * E:(h + 1) * E], V[b, :, h * Ev:(h + 1) * Ev]
            scores = scale * q @ k.T
            weights = np.exp(scores) * mask[b]
            weights /= weights.sum(axis=1, keepdims=True)
            O[b, :, h * Ev:(h + 1) * Ev] = weights @ v
    return O @ params["W_o"] + params["b_o"]


@pytest.mark.parametrize("scale", [None, 0.2])
def test_matches_a_per_head_loop_reference(scale):
    rng = np.random.default_rng(2)
    B, Tq, Tk, heads = 2, 3, 4, 3
    params = random_params(rng, 5, heads, Dkv=2, E=2)
    x_q, x_kv = rng.standard_normal((B, Tq, 5)), rng.standard_normal((B, Tk, 2))
    mask = random_mask(rng, (B, Tq, Tk))
    y, cache = attention_forward(x_q, x_kv, params, heads, mask=mask, scale=scale)
    expected = reference_attention(x_q, x_kv, params, heads, mask, 1.0 / math.sqrt(2) if scale is None else scale)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    A = cache.sdpa.A
    assert A.shape == (B, heads, Tq, Tk)
    np.testing.assert_allclose(A.sum(axis=-1), 1.0, rtol=1e-14)
    assert np.all(A[np.broadcast_to(~mask[:, None], A.shape)] == 0.0)


def test_causal_mask_blocks_the_future():
    rng = np.random.default_rng(3)
    params = random_params(rng, 4, 2)
    x = rng.standard_normal((2, 5, 4))
    y, _ = attention_forward(x, x, params, 2, causal=True)
    for t in range(5):
        perturbed = x.copy()
        perturbed[:, t + 1:] += 10.0 * rng.standard_normal(perturbed[:, t + 1:].shape)
        y2, _ = attention_forward(perturbed, perturbed, params, 2, causal=True)
        np.testing.assert_array_equal(y2[:, :t + 1], y[:, :t + 1])     # exactly unchanged
        if t < 4:
            assert np.max(np.abs(y2[:, t + 1:] - y[:, t + 1:])) > 1e-3  # the future did see it
    dout = np.zeros_like(y)
    dout[:, 1] = rng.standard_normal((2, 4))                   # gradient of the output at position 1 only
    _, cache = attention_forward(x, x, params, 2, causal=True)
    dx_q, dx_kv, _ = attention_backward(dout, cache)
    assert np.all(dx_q[:, 2:] == 0.0) and np.all(dx_kv[:, 2:] == 0.0)
    assert np.all(np.abs(dx_kv[:, :2]) > 0)


def test_given_mask_blocks_the_masked_keys():
    rng = np.random.default_rng(4)
    params = random_params(rng, 3, 1)
    x_q, x_kv = rng.standard_normal((2, 2, 3)), rng.standard_normal((2, 4, 3))
    mask = np.ones((2, 2, 4), dtype=bool)
    mask[0, 1, 2] = False                                       # batch 0, query 1 may not see key 2
    y, _ = attention_forward(x_q, x_kv, params, 1, mask=mask)
    perturbed = x_kv.copy()
    perturbed[0, 2] += 5.0
    y2, _ = attention_forward(x_q, perturbed, params, 1, mask=mask)
    np.testing.assert_array_equal(y2[0, 1], y[0, 1])
    assert np.max(np.abs(y2[0, 0] - y[0, 0])) > 1e-3            # query 0 may see key 2
    np.testing.assert_array_equal(y2[1], y[1])                  # batch 1 was not perturbed


def test_autodiff_twin_agrees_with_manual():
    rng = np.random.default_rng(5)
    params = random_params(rng, 4, 2, Dkv=3, E=3)
    x_q, x_kv = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 3))
    mask = random_mask(rng, (2, 1, 5))
    y, cache = attention_forward(x_q, x_kv, params, 2, mask=mask, scale=0.7)
    dout = rng.standard_normal(y.shape)
    dx_q, dx_kv, grads = attention_backward(dout, cache)
    tq, tkv = ad.Tensor(x_q.copy(), requires_grad=True), ad.Tensor(x_kv.copy(), requires_grad=True)
    tparams = {n: ad.Tensor(p.copy(), requires_grad=True) for n, p in params.items()}
    out = attention_autodiff(tq, tkv, tparams, 2, mask=mask, scale=0.7)
    np.testing.assert_allclose(out.data, y, rtol=0, atol=1e-12)
    out.backward(dout)
    np.testing.assert_allclose(tq.grad, dx_q, rtol=0, atol=1e-10)
    np.testing.assert_allclose(tkv.grad, dx_kv, rtol=0, atol=1e-10)
    for name in PARAM_NAMES:
        np.testing.assert_allclose(tparams[name].grad, grads[name], rtol=0, atol=1e-10)
    Q, K, V = (rng.standard_normal((2, 3, 4, 2)) for _ in range(3))
    np.testing.assert_allclose(dot_product_attention_autodiff(Q, K, V, causal_mask(4)).data,
                               dot_product_attention_forward(Q, K, V, causal_mask(4))[0], atol=1e-14)


def test_block_model_twin_float32_and_names():
    rng = np.random.default_rng(6)
    model = AttentionModel(D=4, heads=2, rng=rng)
    assert list(model.params)[:2] == ["ln.gain", "ln.bias"] and "attn.W_o" in model.params
    x = rng.standard_normal((2, 3, 4))
    y, cache = model.forward(x)
    dout = rng.standard_normal(y.shape)
    grads = model.backward(dout, cache)
    assert list(grads) == list(model.params)
    tparams = {n: ad.Tensor(p.copy(), requires_grad=True) for n, p in model.params.items()}
    out = model.forward_autodiff(tparams, x)
    np.testing.assert_allclose(out.data, y, rtol=0, atol=1e-12)
    out.backward(dout)
    for name, g in grads.items():
        np.testing.assert_allclose(tparams[name].grad, g, rtol=0, atol=1e-10)
    model32 = AttentionModel(D=4, heads=2, rng=np.random.default_rng(6), dtype=np.float32)
    y32, cache32 = model32.forward(x.astype(np.float32))
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y, rtol=1e-4, atol=1e-5)
    assert all(g.dtype == np.float32 for g in model32.backward(dout.astype(np.float32), cache32).values())


def test_bad_input_raises_value_error():
    rng = np.random.default_rng(7)
    params = attention_init(rng, 4, 2)
    x = rng.standard_normal((2, 3, 4))
    with pytest.raises(ValueError, match=r"x_q must have shape \(B, Tq, D\) with Tq >= 1 and D=4"):
        attention_forward(x[..., :3], x, params, 2)
    with pytest.raises(ValueError, match=r"x_kv must have shape \(B, Tk, Dkv\)"):
        attention_forward(x, x[:1], params, 2)
    with pytest.raises(ValueError, match="split into H=3 heads"):
        attention_forward(x, x, params, 3)
    with pytest.raises(ValueError, match="boolean"):
        attention_forward(x, x, params, 2, mask=np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"mask must have shape \(Tq, Tk\) = \(3, 3\)"):
        attention_forward(x, x, params, 2, mask=np.ones((3, 2), dtype=bool))
    blind = np.ones((3, 3), dtype=bool)
    blind[1] = False                                            # query 1 may see nothing
    with pytest.raises(ValueError, match="no allowed key"):
        attention_forward(x, x, params, 2, mask=blind)
    with pytest.raises(ValueError, match="causal=True needs Tq == Tk"):
        attention_forward(x, x[:, :2], params, 2, causal=True)
    with pytest.raises(ValueError, match="not divisible"):
        attention_init(rng, 5, 2)
    with pytest.raises(ValueError, match=r"W_o must have shape"):
        attention_forward(x, x, {**params, "W_o": np.zeros((4, 3))}, 2)
    model = AttentionModel(4, 2)
    with pytest.raises(ValueError, match=r"\(B, T, D\)"):
        model.forward(x[0])
    with pytest.raises(ValueError, match="inputs must be finite"):
        model.forward(np.where(x > 1, np.nan, x))
    model.params["attn.W_q"] = np.full((4, 4), np.nan)
    with pytest.raises(ValueError, match="parameter attn.W_q must be finite"):
        model.forward(x)
