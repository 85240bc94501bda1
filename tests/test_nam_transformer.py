"""Tests for minimem.memory.nam_transformer (specs/nam_hma.md A6, A9.7).

The elu-linear kernel and GELU against central differences and their autodiff twins; the whole
model (NAM, softmax, elu-linear attention) through the registered gradcheck cases (manual ==
autodiff == finite differences); causal models do not see the future; appended padding changes
nothing (and does change the reference's unmasked NAM); planted wrong backwards are caught; bad
input raises ValueError.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minimem.memory.nam_transformer as ntm_module
from gradcheck.cases.nam_transformer import nam_transformer_cases, transformer_case
from gradcheck.core import assert_grads_close, check_model, numeric_vjp
from minimem import autodiff as ad
from minimem.memory.nam_transformer import (
    ATTENTIONS, NAMTransformer, NAMTransformerConfig,
    linear_attention_autodiff, linear_attention_backward, linear_attention_forward, nam_transformer_param_shapes,
)

FAST = settings(max_examples=15, deadline=None, database=None)


def tensors_grads(fn, arrays, dout, **kwargs):
    tensors = [ad.Tensor(np.array(a), requires_grad=True) for a in arrays]
    out = fn(*tensors, **kwargs)
    (out * dout).sum().backward()
    return out.data, [t.grad for t in tensors]


# ----------------------------------------------------------------- the pieces
def random_mask(rng, B, T):
    mask = rng.random((B, T)) < 0.7
    mask[:, 0] = True
    return mask


@FAST
@given(B=st.integers(1, 2), H=st.integers(1, 2), T=st.integers(1, 6), d_k=st.integers(1, 3), d_v=st.integers(1, 3),
       causal=st.booleans(), masked=st.booleans(), chunk=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_linear_kernel_matches_central_differences_and_its_twin(B, H, T, d_k, d_v, causal, masked, chunk, seed):
    rng = np.random.default_rng(seed)
    Tq = T if causal else int(rng.integers(1, 5))
    Q = rng.standard_normal((B, H, Tq, d_k))
    K, V = rng.standard_normal((B, H, T, d_k)), rng.standard_normal((B, H, T, d_v))
    kwargs = dict(key_mask=random_mask(rng, B, T) if masked else None, causal=causal, chunk=chunk)
    Y, cache = linear_attention_forward(Q, K, V, **kwargs)
    dY = rng.standard_normal(Y.shape)
    analytic = linear_attention_backward(dY, cache)
    numeric = numeric_vjp(lambda *a: linear_attention_forward(*a, **kwargs)[0], (Q, K, V), dY)
    assert_grads_close(analytic, numeric, names=("Q", "K", "V"))
    out, grads = tensors_grads(linear_attention_autodiff, (Q, K, V), dY, **kwargs)
    np.testing.assert_allclose(out, Y, rtol=1e-10, atol=1e-12)
    for g, a in zip(grads, analytic):
        np.testing.assert_allclose(g, a, rtol=1e-9, atol=1e-11)


def test_linear_kernel_is_the_normalised_elu_formula():
    rng = np.random.default_rng(1)
    Q, K, V = rng.standard_normal((1, 2, 5, 3)), rng.standard_normal((1, 2, 5, 3)), rng.standard_normal((1, 2, 5, 4))
    mask = np.array([[True, True, False, True, True]])
    phi = lambda x: np.where(x > 0, x + 1, np.exp(x))                # elu + 1, written independently
    for causal in (False, True):
        Y, _ = linear_attention_forward(Q, K, V, key_mask=mask, causal=causal, chunk=2)
        for h in range(2):
            for l in range(5):
                keys = [s for s in range(5) if mask[0, s] and (s <= l or not causal)]
                w = np.array([phi(Q[0, h, l]) @ phi(K[0, h, s]) for s in keys])
                expected = (w @ V[0, h, keys]) / (w.sum() + 1e-6)
                np.testing.assert_allclose(Y[0, h, l], expected, rtol=1e-12)


def test_a_causal_linear_row_without_real_keys_reads_zero_not_nan():
    rng = np.random.default_rng(2)
    Q, K, V = (rng.standard_normal((1, 1, 4, 2)) for _ in range(3))
    Y, cache = linear_attention_forward(Q, K, V, key_mask=np.array([[False, True, True, True]]), causal=True)
    assert np.all(Y[0, 0, 0] == 0) and np.all(np.isfinite(linear_attention_backward(np.ones_like(Y), cache)))


# ----------------------------------------------------------------- the model
@pytest.mark.parametrize("case", nam_transformer_cases(), ids=lambda c: c.name)
def test_model_passes_the_full_gradcheck(case):
    rows, ok = check_model(case, mode="full")
    assert ok, [r for r in rows if not r.ok][:3]


def model(attention, seed=0, **config):
    rng = np.random.default_rng(seed)
    config = NAMTransformerConfig(**{**dict(V=9, classes=4, T_max=12, D=8, heads=2, mlp=8, attention=attention),
                                     **config})
    net = NAMTransformer(config, rng=rng)
    for key, value in net.params.items():
        net.params[key] = value + 0.1 * rng.standard_normal(value.shape)
    return net


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_causal_model_does_not_see_the_future(attention):
    net = model(attention, causal=True, readout="tokens", layers=2, chunk=3)
    tokens = np.random.default_rng(3).integers(0, 8, (8, 2))
    logits, _ = net.forward(tokens)
    assert logits.shape == (8, 2, 4)
    for t in (0, 3, 7):
        changed = tokens.copy()
        changed[t] = (changed[t] + 1) % 8
        other, _ = net.forward(changed)
        np.testing.assert_array_equal(other[:t], logits[:t])         # exactly: nothing of t reaches < t
        assert np.all(np.abs(other[t] - logits[t]).max(axis=-1) > 1e-8)


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("readout", ["first", "mean", "tokens"])
def test_appended_padding_changes_nothing(attention, readout):
    net = model(attention, readout=readout, cls=readout == "mean", layers=2)
    rng = np.random.default_rng(4)
    tokens = rng.integers(0, 8, (5, 3))
    mask = np.ones((5, 3), dtype=bool)
    mask[3:, 1] = False                                              # row 1 is already padded
    logits, _ = net.forward((tokens, mask))
    padded = np.concatenate([tokens, np.full((4, 3), 8)], axis=0)    # token 8 as PAD, 4 more positions
    padded_mask = np.concatenate([mask, np.zeros((4, 3), dtype=bool)], axis=0)
    longer, _ = net.forward((padded, padded_mask))
    if readout == "tokens":
        np.testing.assert_allclose(longer[:5][mask], logits[mask], rtol=1e-11, atol=1e-12)   # the real rows
    else:
        np.testing.assert_allclose(longer, logits, rtol=1e-11, atol=1e-12)
    changed = padded.copy()
    changed[5:] = rng.integers(0, 8, (4, 3))                         # what stands under a pad is irrelevant
    again, _ = net.forward((changed, padded_mask))
    if readout != "tokens":
        np.testing.assert_allclose(again, longer, rtol=1e-11, atol=1e-12)


def test_reference_padding_lets_pads_write_into_nam():
    net = model("nam", reference_padding=True)
    tokens = np.random.default_rng(5).integers(0, 8, (5, 2))
    mask = np.ones((5, 2), dtype=bool)
    base, _ = net.forward((tokens, mask))
    longer, _ = net.forward((np.concatenate([tokens, np.full((3, 2), 8)]),
                             np.concatenate([mask, np.zeros((3, 2), bool)])))
    assert np.abs(longer - base).max() > 1e-6                         # the reference's unmasked pads


def test_attention_kinds_share_every_parameter_but_the_softmax_biases():
    names = {kind: set(nam_transformer_param_shapes(NAMTransformerConfig(V=5, classes=2, attention=kind)))
             for kind in ATTENTIONS}
    assert names["nam"] == names["linear"]
    assert names["softmax"] - names["nam"] == {f"block0.attn.b_{x}" for x in "qkvo"}


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_attention_weights_are_what_each_row_read(attention):
    net = model(attention)
    tokens = np.random.default_rng(6).integers(0, 8, (6, 2))
    mask = np.ones((6, 2), dtype=bool)
    mask[4:, 0] = False
    _, cache = net.forward((tokens, mask))
    A = net.attention_weights(cache)
    assert A.shape == (2, 2, 6, 6)
    np.testing.assert_array_equal(A[0, :, :4, 4:], 0.0)              # real rows give pads no weight
    if attention == "nam":
        assert np.all(np.abs(A) <= 1 + 1e-12)                        # cosines
    else:
        np.testing.assert_allclose(A[0, :, :4].sum(axis=-1), 1.0, atol=1e-5)


def test_float32_config_keeps_float32():
    net = NAMTransformer(NAMTransformerConfig(V=5, classes=2, D=8, heads=2, mlp=8, dtype="float32"))
    logits, cache = net.forward(np.zeros((4, 3), dtype=np.int64))
    grads = net.backward(np.ones_like(logits), cache)
    assert logits.dtype == np.float32 and all(g.dtype == np.float32 for g in grads.values())


# ----------------------------------------------------------------- the checker can fail
def test_a_planted_wrong_gelu_backward_is_caught(monkeypatch):
    case = transformer_case("planted", 30, "", attention="nam")
    monkeypatch.setattr(ntm_module, "gelu_tanh_backward", lambda da, cache: 0.5 * da * (1.0 + cache[1]))  # a term dropped
    rows, ok = check_model(case, mode="full", tensors=["block0.mlp.layer0.W", "head.layer0.W"])
    failed = {r.tensor for r in rows if not r.ok}
    assert not ok and "block0.mlp.layer0.W" in failed and "head.layer0.W" not in failed


def test_a_planted_wrong_linear_denominator_is_caught(monkeypatch):
    case = transformer_case("planted", 31, "", attention="linear")
    real = ntm_module.linear_attention_backward

    def wrong(dY, cache):                                            # forget the denominator's gradient
        dQ, dK, dV = real(dY, cache)
        return 1.01 * dQ, dK, dV

    monkeypatch.setattr(ntm_module, "linear_attention_backward", wrong)
    rows, ok = check_model(case, mode="full", tensors=["block0.attn.W_q", "block0.attn.W_v"])
    assert {r.tensor for r in rows if not r.ok} == {"block0.attn.W_q"}


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize("options, match", [
    (dict(attention="performer"), "attention"), (dict(D=6, heads=4), "divisible"), (dict(readout="cls"), "readout"),
    (dict(positions="rotary"), "positions"), (dict(layers=0), "layers"), (dict(causal=1), "causal"),
    (dict(head_mlp=0), "head_mlp"), (dict(dtype="float16"), "dtype"), (dict(ln_eps=0.0), "ln_eps"),
])
def test_bad_config_raises_value_error(options, match):
    with pytest.raises(ValueError, match=match):
        NAMTransformerConfig(**{**dict(V=5, classes=2), **options})


def test_bad_inputs_raise_value_error():
    net = NAMTransformer(NAMTransformerConfig(V=5, classes=2, T_max=6, D=4, heads=2, mlp=4, cls=True))
    tokens = np.zeros((4, 2), dtype=np.int64)
    for inputs, match in [
        (tokens.astype(float), "integer"), (tokens[:, :, None], "integer"), (tokens + 5, r"\[0, V\)"),
        (np.zeros((6, 2), np.int64), "T_max"), ((tokens, np.ones((2, 4), bool)), "key_mask"),
        ((tokens, np.ones((4, 2))), "key_mask"), ((tokens, np.array([[True, False]] * 4)), "without a real token"),
    ]:
        with pytest.raises(ValueError, match=match):
            net.forward(inputs)
    net.params["embed.E"] = net.params["embed.E"][:3]
    with pytest.raises(ValueError, match="embed.E"):
        net.forward(tokens)
    with pytest.raises(ValueError, match="NAMTransformerConfig"):
        NAMTransformer(dict(V=5))
