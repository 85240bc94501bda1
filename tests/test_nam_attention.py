"""Tests for minimem.memory.nam_attention (specs/nam_hma.md A6, A9.1-A9.4, A9.7).

The kernel and the multi-head layer: backward == central differences for every array input (causal
and not, masked and not, chunk sizes that do and do not divide T), autodiff twin and custom op ==
manual pair; causal attention does not see the future; pads change nothing; the A9 oracles
(associativity, sequential NAM writes, prefix sums, the bound and scale invariance); a planted
wrong backward; bad inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gradcheck.core import Case, assert_grads_close, check_model, numeric_vjp, projection_loss
from minimem import autodiff as ad
from minimem.memory.nam import nam_read_forward, nam_write_forward, unit_forward
from minimem.memory.nam_attention import (
    NAMAttentionModel, nam_attention_autodiff, nam_attention_backward, nam_attention_forward,
    nam_attention_init, nam_attention_layer_autodiff, nam_attention_layer_backward,
    nam_attention_layer_forward, nam_attention_op,
)

FAST = settings(max_examples=20, deadline=None, database=None)
seeds = st.integers(0, 2**32 - 1)


def qkv(rng, B=2, H=2, Tq=5, Tk=5, d_k=3, d_v=4):
    return (rng.standard_normal((B, H, Tq, d_k)), rng.standard_normal((B, H, Tk, d_k)),
            rng.standard_normal((B, H, Tk, d_v)))


def random_mask(rng, B, T):
    mask = rng.random((B, T)) < 0.7
    mask[:, 0] = True                                            # at least one real token per row
    return mask


def autodiff_grads(fn, arrays, dout, **kwargs):
    tensors = [ad.Tensor(np.array(a), requires_grad=True) for a in arrays]
    out = fn(*tensors, **kwargs)
    (out * dout).sum().backward()
    return out.data, [t.grad for t in tensors]


# ----------------------------------------------------------------- the kernel against finite differences
@FAST
@given(B=st.integers(1, 2), H=st.integers(1, 3), T=st.integers(1, 7), d_k=st.integers(1, 4),
       d_v=st.integers(1, 4), causal=st.booleans(), masked=st.booleans(), chunk=st.integers(1, 8), seed=seeds)
def test_kernel_backward_matches_central_differences(B, H, T, d_k, d_v, causal, masked, chunk, seed):
    rng = np.random.default_rng(seed)
    Tq = T if causal else int(rng.integers(1, 6))
    Q, K, V = qkv(rng, B, H, Tq, T, d_k, d_v)
    mask = random_mask(rng, B, T) if masked else None
    kwargs = dict(key_mask=mask, causal=causal, chunk=chunk)
    Y, cache = nam_attention_forward(Q, K, V, **kwargs)
    dY = rng.standard_normal(Y.shape)
    numeric = numeric_vjp(lambda *a: nam_attention_forward(*a, **kwargs)[0], (Q, K, V), dY)
    assert_grads_close(nam_attention_backward(dY, cache), numeric, names=("Q", "K", "V"))


@pytest.mark.parametrize("causal, masked, chunk", [(False, False, 64), (False, True, 64), (True, False, 3),
                                                   (True, True, 2), (True, True, 64)])
def test_kernel_autodiff_twin_and_op_match_the_manual_pair(causal, masked, chunk):
    rng = np.random.default_rng(1)
    Q, K, V = qkv(rng, Tq=7, Tk=7)
    kwargs = dict(key_mask=random_mask(rng, 2, 7) if masked else None, causal=causal, chunk=chunk)
    Y, cache = nam_attention_forward(Q, K, V, **kwargs)
    dY = rng.standard_normal(Y.shape)
    manual = nam_attention_backward(dY, cache)
    for fn in (nam_attention_autodiff, nam_attention_op):
        value, grads = autodiff_grads(fn, [Q, K, V], dY, **kwargs)
        np.testing.assert_allclose(value, Y, rtol=1e-12, atol=1e-13)
        for name, a, m in zip("QKV", grads, manual):
            np.testing.assert_allclose(a, m, rtol=1e-10, atol=1e-12, err_msg=f"{fn.__name__}: d{name}")


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 8, 100])
def test_causal_result_does_not_depend_on_the_chunk_size(chunk):
    rng = np.random.default_rng(2)
    Q, K, V = qkv(rng, Tq=8, Tk=8)
    dY = rng.standard_normal((2, 2, 8, 4))
    Y_ref, cache_ref = nam_attention_forward(Q, K, V, causal=True, chunk=8)
    Y, cache = nam_attention_forward(Q, K, V, causal=True, chunk=chunk)
    np.testing.assert_allclose(Y, Y_ref, rtol=1e-12, atol=1e-13)
    for a, b in zip(nam_attention_backward(dY, cache), nam_attention_backward(dY, cache_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)


# ----------------------------------------------------------------- causality and padding
def test_causal_attention_does_not_see_the_future():
    """Changing positions > l changes no output at positions <= l, and no gradient flows backwards
    in time: d Y_l / d (Q, K, V)_s = 0 for s > l."""
    rng = np.random.default_rng(3)
    Q, K, V = qkv(rng, Tq=9, Tk=9)
    Y, _ = nam_attention_forward(Q, K, V, causal=True, chunk=4)
    for l in range(9):
        Q2, K2, V2 = (x.copy() for x in (Q, K, V))
        for x in (Q2, K2, V2):
            x[:, :, l + 1:] = rng.standard_normal(x[:, :, l + 1:].shape)
        Y2, _ = nam_attention_forward(Q2, K2, V2, causal=True, chunk=4)
        np.testing.assert_array_equal(Y2[:, :, :l + 1], Y[:, :, :l + 1])
        dY = np.zeros_like(Y)
        dY[:, :, l] = rng.standard_normal(dY[:, :, l].shape)
        _, cache = nam_attention_forward(Q, K, V, causal=True, chunk=4)
        for name, g in zip("QKV", nam_attention_backward(dY, cache)):
            assert np.all(g[:, :, l + 1:] == 0), f"d{name} leaks from position {l} into the future"
    # and the non-causal kernel does see it (the test can fail)
    Q2 = Q.copy()
    K2 = K.copy()
    K2[:, :, -1] += 1.0
    assert not np.allclose(nam_attention_forward(Q2, K2, V)[0][:, :, 0], nam_attention_forward(Q, K, V)[0][:, :, 0])


@pytest.mark.parametrize("causal", [False, True])
def test_padded_positions_change_nothing(causal):
    """Whatever the pads hold, and however many are appended, the outputs at real tokens are the
    same (spec A9.7), and pads receive no key/value gradient."""
    rng = np.random.default_rng(4)
    B, H, T, pads = 2, 2, 6, 3
    Q, K, V = qkv(rng, B, H, T, T)
    mask = np.ones((B, T), dtype=bool)
    Y, _ = nam_attention_forward(Q, K, V, key_mask=mask, causal=causal, chunk=4)
    longer = [np.concatenate([x, rng.standard_normal(x.shape[:2] + (pads,) + x.shape[3:])], axis=2)
              for x in (Q, K, V)]
    long_mask = np.concatenate([mask, np.zeros((B, pads), dtype=bool)], axis=1)
    Y_long, cache = nam_attention_forward(*longer, key_mask=long_mask, causal=causal, chunk=4)
    np.testing.assert_allclose(Y_long[:, :, :T], Y, rtol=1e-13, atol=1e-14)
    dY = rng.standard_normal(Y_long.shape)
    dY[:, :, T:] = 0.0                                           # a loss on the real tokens only
    _, dK, dV = nam_attention_backward(dY, cache)
    assert np.all(dK[:, :, T:] == 0) and np.all(dV[:, :, T:] == 0)
    # Interior pads too: scrambling the masked tokens' keys and values changes no real output.
    inner = random_mask(rng, B, T)
    Y1, _ = nam_attention_forward(Q, K, V, key_mask=inner, causal=causal)
    K2, V2 = K.copy(), V.copy()
    K2[~np.broadcast_to(inner[:, None], (B, H, T))] = 7.0
    V2[~np.broadcast_to(inner[:, None], (B, H, T))] = -3.0
    Y2, _ = nam_attention_forward(Q, K2, V2, key_mask=inner, causal=causal)
    np.testing.assert_allclose(Y2, Y1, rtol=1e-13, atol=1e-14)
    # Without the mask (the reference behaviour) the pads do leak in: the test can fail.
    # (Causal reads never see pads appended at the end, so only the full form shows it.)
    if not causal:
        Y_ref, _ = nam_attention_forward(*longer)
        assert not np.allclose(Y_ref[:, :, :T], Y)


def test_layer_with_padding_mask_ignores_appended_pads():
    rng = np.random.default_rng(5)
    B, T, D, H = 2, 5, 8, 2
    params = nam_attention_init(rng, D, H)
    x = rng.standard_normal((B, T, D))
    out, _ = nam_attention_layer_forward(x, params, H, key_mask=np.ones((B, T), dtype=bool))
    x_long = np.concatenate([x, rng.standard_normal((B, 4, D))], axis=1)
    mask = np.concatenate([np.ones((B, T), dtype=bool), np.zeros((B, 4), dtype=bool)], axis=1)
    out_long, _ = nam_attention_layer_forward(x_long, params, H, key_mask=mask)
    np.testing.assert_allclose(out_long[:, :T], out, rtol=1e-13, atol=1e-14)


# ----------------------------------------------------------------- oracles, spec A9
def test_associativity_and_the_quadratic_form():                                  # A9.1, A9.3
    rng = np.random.default_rng(6)
    Q, K, V = qkv(rng, Tq=6, Tk=6)
    Q_hat, K_hat = unit_forward(Q)[0], unit_forward(K)[0]
    cosines = Q_hat @ np.swapaxes(K_hat, -1, -2)                  # (B, H, T, T)
    np.testing.assert_allclose(nam_attention_forward(Q, K, V)[0], cosines @ V, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(nam_attention_forward(Q, K, V, causal=True, chunk=4)[0],
                               (cosines * np.tril(np.ones((6, 6)))) @ V, rtol=1e-10, atol=1e-12)


def test_equals_sequential_nam_writes_then_reads():                                # A9.2, A9.3
    rng = np.random.default_rng(7)
    B, H, T, d_k, d_v = 2, 3, 6, 4, 5
    Q, K, V = qkv(rng, B, H, T, T, d_k, d_v)
    ones, zeros = np.ones((B, H)), np.zeros((B, H))
    M = np.zeros((B, H, d_v, d_k))
    causal_reads = []
    for s in range(T):
        M = nam_write_forward(M, K[:, :, s], V[:, :, s], ones, zeros)[0]
        causal_reads.append(nam_read_forward(M, Q[:, :, s], ones)[0])
    full_reads = np.stack([nam_read_forward(M, Q[:, :, l], ones)[0] for l in range(T)], axis=2)
    np.testing.assert_allclose(nam_attention_forward(Q, K, V)[0], full_reads, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(nam_attention_forward(Q, K, V, causal=True, chunk=4)[0],
                               np.stack(causal_reads, axis=2), rtol=1e-10, atol=1e-12)


@FAST
@given(c=st.floats(1e-3, 1e3), causal=st.booleans(), seed=seeds)
def test_bounded_by_the_value_norms_and_scale_invariant(c, causal, seed):          # A9.4
    rng = np.random.default_rng(seed)
    Q, K, V = qkv(rng, Tq=5, Tk=5)
    Y = nam_attention_forward(Q, K, V, causal=causal)[0]
    bound = np.sum(np.linalg.norm(V, axis=-1), axis=-1)          # (B, H)
    assert np.all(np.linalg.norm(Y, axis=-1) <= bound[..., None] * (1 + 1e-12))
    scale = np.exp(rng.uniform(np.log(1e-3), np.log(1e3), (2, 2, 5, 1))) * c
    np.testing.assert_allclose(nam_attention_forward(Q * scale, K / scale, V, causal=causal)[0], Y,
                               rtol=1e-11, atol=1e-12)


# ----------------------------------------------------------------- the layer and the block
def test_layer_backward_matches_central_differences_and_its_twin():
    rng = np.random.default_rng(8)
    B, T, D, H = 2, 5, 6, 2
    params = nam_attention_init(rng, D, H)
    x = rng.standard_normal((B, T, D))
    mask = random_mask(rng, B, T)
    for causal in (False, True):
        kwargs = dict(key_mask=mask, causal=causal, chunk=2)
        out, cache = nam_attention_layer_forward(x, params, H, **kwargs)
        dout = rng.standard_normal(out.shape)
        dx, grads = nam_attention_layer_backward(dout, cache)
        names = ("x",) + tuple(params)

        def f(x_, *weights):
            return nam_attention_layer_forward(x_, dict(zip(params, weights)), H, **kwargs)[0]

        numeric = numeric_vjp(f, (x,) + tuple(params.values()), dout)
        assert_grads_close((dx,) + tuple(grads[n] for n in params), numeric, names=names)
        tx = ad.Tensor(x.copy(), requires_grad=True)
        tparams = {n: ad.Tensor(p.copy(), requires_grad=True) for n, p in params.items()}
        tout = nam_attention_layer_autodiff(tx, tparams, H, **kwargs)
        (tout * dout).sum().backward()
        np.testing.assert_allclose(tout.data, out, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(tx.grad, dx, rtol=1e-10, atol=1e-12)
        for n in params:
            np.testing.assert_allclose(tparams[n].grad, grads[n], rtol=1e-10, atol=1e-12, err_msg=n)


@pytest.mark.parametrize("causal", [False, True])
def test_block_model_passes_the_full_gradcheck(causal):
    rng = np.random.default_rng(9)
    model = NAMAttentionModel(D=6, heads=2, causal=causal, chunk=3, rng=rng)
    model.params["ln.gain"] = 1.0 + 0.3 * rng.standard_normal(6)
    model.params["ln.bias"] = 0.3 * rng.standard_normal(6)
    x = rng.standard_normal((2, 5, 6))
    inputs = (x, random_mask(rng, 2, 5))
    case = Case("nam.attention.test", model, inputs, projection_loss(rng, model.forward(inputs)[0]))
    result = check_model(case, "full")
    assert result.ok, [(r.engine, r.tensor, r.verdict, r.max_rel) for r in result.rows if not r.ok]


# ----------------------------------------------------------------- a planted bug and bad input
def test_a_planted_wrong_causal_backward_is_caught():
    """Forgetting the carried state gradient (the earlier chunks' keys and values lose the later
    queries' reads) must be caught, on K and V."""
    rng = np.random.default_rng(10)
    Q, K, V = qkv(rng, Tq=6, Tk=6)
    Y, cache = nam_attention_forward(Q, K, V, causal=True, chunk=2)
    dY = rng.standard_normal(Y.shape)
    numeric = numeric_vjp(lambda *a: nam_attention_forward(*a, causal=True, chunk=2)[0], (Q, K, V), dY)
    # dropping the carry == treating every chunk as the last one: run each chunk on its own
    wrong_K, wrong_V = np.empty_like(K), np.empty_like(V)
    for t0 in range(0, 6, 2):
        sl = slice(t0, t0 + 2)
        part, c = nam_attention_forward(Q[:, :, sl], K[:, :, sl], V[:, :, sl], causal=True, chunk=2)
        _, wrong_K[:, :, sl], wrong_V[:, :, sl] = nam_attention_backward(dY[:, :, sl], c)
    dQ = nam_attention_backward(dY, cache)[0]
    with pytest.raises(AssertionError, match=r"^K:"):
        assert_grads_close((dQ, wrong_K, wrong_V), numeric, names=("Q", "K", "V"))


@pytest.mark.parametrize("change, message", [
    (dict(Q=np.ones((2, 5, 3))), r"Q must have shape \(B, H, Tq, d_k\)"),
    (dict(K=np.ones((2, 2, 5, 4))), r"K must have shape \(B, H, Tk, d_k\) with \(B, H, d_k\) = \(2, 2, 3\)"),
    (dict(V=np.ones((2, 2, 4, 4))), r"V must have shape \(B, H, Tk, d_v\) with \(B, H, Tk\) = \(2, 2, 5\)"),
    (dict(key_mask=np.ones((2, 5))), r"key_mask must be a boolean array of shape \(B, Tk\) = \(2, 5\)"),
    (dict(key_mask=np.ones((2, 4), dtype=bool)), r"key_mask must be a boolean array"),
    (dict(chunk=0), r"chunk must be an integer >= 1"),
    (dict(Q=np.ones((2, 2, 4, 3)), causal=True), r"causal=True needs Tq == Tk"),
    (dict(Q=np.ones((2, 2, 0, 3))), r"at least one position"),
])
def test_bad_kernel_input_raises_value_error(change, message):
    rng = np.random.default_rng(11)
    inputs = dict(zip("QKV", qkv(rng)))
    inputs.update(change)
    with pytest.raises(ValueError, match=message):
        nam_attention_forward(**inputs)
    with pytest.raises(ValueError, match=message):
        nam_attention_autodiff(**inputs)


def test_bad_layer_input_raises_value_error():
    rng = np.random.default_rng(12)
    params = nam_attention_init(rng, 6, 2)
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, D\) with T >= 1 and D=6"):
        nam_attention_layer_forward(np.ones((2, 3, 5)), params, 2)
    with pytest.raises(ValueError, match=r"must split into H=4 heads"):
        nam_attention_layer_forward(np.ones((2, 3, 6)), params, 4)
    _, cache = nam_attention_forward(*qkv(rng))
    with pytest.raises(ValueError, match=r"dY must have the output's shape \(B, H, Tq, d_v\) = \(2, 2, 5, 4\)"):
        nam_attention_backward(np.ones((2, 2, 5, 3)), cache)
    model = NAMAttentionModel(D=6, heads=2, rng=rng)
    with pytest.raises(ValueError, match=r"inputs must be finite"):
        model.forward(np.full((1, 2, 6), np.nan))
