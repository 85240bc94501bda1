"""The NAM-TM speed paths (issue 11) against the plain formulas they replace: the column-by-column
softmax and sums, the move weights' gradient on slices for all steps at once, the heads kept in one
(T + 1, ..., 2, L) buffer, and the whole machine's manual gradients against its autodiff twin."""

from __future__ import annotations

import minimem  # noqa: F401

import numpy as np

from minimem import autodiff as ad
from minimem.memory import nam_tm
from minimem.memory.nam_tm import NAMTM, NAMTMConfig, TapeControls, TapeState, shift_next, shift_prev


def test_softmax_and_short_sums_equal_numpys_reductions():
    rng = np.random.default_rng(0)
    z = 3.0 * rng.standard_normal((5, 4, 2, 2, 4))
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(nam_tm._softmax(z), e / e.sum(axis=-1, keepdims=True), rtol=1e-14, atol=0)
    np.testing.assert_allclose(nam_tm._sum_last(z), z.sum(axis=-1), rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(nam_tm._softmax(np.array([1000.0, 0.0, -1000.0])), [1.0, 0.0, 0.0])   # no overflow


def test_move_weights_backward_equals_the_candidate_formula():
    rng = np.random.default_rng(1)
    for lead in ((3, 2), (4, 3, 2)):                                 # one step, or (T, ...) at once
        psi, dnew = rng.standard_normal(lead + (2, 7)), rng.standard_normal(lead + (2, 7))
        j = rng.standard_normal(lead + (1, 7))                       # shared by both heads
        candidates = np.stack([shift_prev(psi), psi, shift_next(psi), np.broadcast_to(j, psi.shape)], axis=-2)
        expected = (candidates * dnew[..., None, :]).sum(axis=-1)
        np.testing.assert_allclose(nam_tm._move_weights_backward(psi, j, dnew), expected, rtol=1e-13, atol=1e-13)


def test_the_machine_loop_equals_the_public_step_loop():
    """nam_tm_forward's heads buffer and stacked moves reproduce tape_step_forward run step by step
    on the controls of the module docstring (softmaxes, sigmoids of the action logits)."""
    config = NAMTMConfig(V=6, D=5, P=2, C=3, L=7)
    model = NAMTM(config, rng=np.random.default_rng(2))
    tokens = np.random.default_rng(3).integers(0, 6, (6, 4))
    _, cache = model.forward(tokens)
    T, B = tokens.shape
    a = cache.a                                                      # (T, B, P, 11)
    e_r, e_w = np.exp(a[..., 0:4]), np.exp(a[..., 4:8])
    rho, omega = e_r / e_r.sum(-1, keepdims=True), e_w / e_w.sum(-1, keepdims=True)
    probs = 1.0 / (1.0 + np.exp(-a[..., 8:11]))
    state = nam_tm.initial_tape_state(B, config.P, config.C, config.L)
    positions = cache.positions()
    for t, step in enumerate(cache.steps):
        np.testing.assert_allclose(positions["read"][t], state.pos_r, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(positions["write"][t], state.pos_w, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(step.value_write.M, state.Phi, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(step.key_write.M, state.Psi, rtol=1e-12, atol=1e-12)
        controls = TapeControls(rho[t], omega[t], probs[t, ..., 0], probs[t, ..., 1], probs[t, ..., 2],
                                step.value_write.v, step.key_write.k_hat, step.jump.q_hat)
        (o, state), _ = nam_tm.tape_step_forward(state, controls)
        np.testing.assert_allclose(o, step.read.p_r[..., None] * step.read.read, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(cache.jumps[t], step.move_r.j, rtol=0, atol=0)
    np.testing.assert_allclose(cache.heads[-1, ..., 0, :], state.pos_r, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cache.heads[-1, ..., 1, :], state.pos_w, rtol=1e-12, atol=1e-12)


def test_manual_gradients_equal_the_autodiff_twin_with_unequal_sizes():
    """C != L, P = 2, T = 7: the deferred move-weight gradient and the cached controls against the
    twin, every parameter."""
    config = NAMTMConfig(V=5, D=6, P=2, C=3, L=6, head_norm=False)
    model = NAMTM(config, rng=np.random.default_rng(4))
    tokens = np.random.default_rng(5).integers(0, 5, (7, 3))
    logits, cache = model.forward(tokens)
    dlogits = np.random.default_rng(6).standard_normal(logits.shape)
    grads = model.backward(dlogits, cache)
    tparams = {name: ad.Tensor(value.copy(), requires_grad=True) for name, value in model.params.items()}
    out = model.forward_autodiff(tparams, tokens)
    np.testing.assert_allclose(out.data, logits, rtol=1e-12, atol=1e-13)
    (out * dlogits).sum().backward()
    for name, tensor in tparams.items():
        np.testing.assert_allclose(grads[name], tensor.grad, rtol=1e-9, atol=1e-12, err_msg=name)


def test_float32_gradients_stay_float32_and_close_to_float64():
    config = NAMTMConfig(V=5, D=6, P=2, C=3, L=6, dtype="float32")
    model = NAMTM(config, rng=np.random.default_rng(7))
    tokens = np.random.default_rng(8).integers(0, 5, (5, 2))
    logits, cache = model.forward(tokens)
    dlogits = np.random.default_rng(9).standard_normal(logits.shape).astype(np.float32)
    grads = model.backward(dlogits, cache)
    assert logits.dtype == np.float32 and all(g.dtype == np.float32 for g in grads.values())
    params64 = {name: value.astype(np.float64) for name, value in model.params.items()}
    logits64, cache64 = nam_tm.nam_tm_forward(tokens, params64, config)
    grads64 = nam_tm.nam_tm_backward(dlogits.astype(np.float64), cache64)
    for name in grads:
        scale = max(1.0, float(np.max(np.abs(grads64[name]))))
        assert np.max(np.abs(grads[name] - grads64[name])) / scale < 1e-4, name
