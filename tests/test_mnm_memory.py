"""Tests for minimem.memory.mnm_memory, the memory network of MNM and its two writers: every pair
against central differences (all array inputs), manual == autodiff to 1e-10 (the MNM-g write to
second order, through both of its autodiff routes), and the oracles of specs/titans_mnm.md B9 that
concern the memory alone.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcheck.core import assert_grads_close, numeric_vjp
from minimem import autodiff as ad
from minimem.memory import mnm_memory
from minimem.memory.mnm_memory import (
    mnm_inner_grad_autodiff, mnm_inner_grad_backward, mnm_inner_grad_forward, mnm_mem_autodiff,
    mnm_mem_backward, mnm_mem_forward, mnm_read_autodiff, mnm_read_backward, mnm_read_forward,
    mnm_recon_autodiff, mnm_recon_backward, mnm_recon_forward, mnm_write_grad_autodiff, mnm_write_grad_backward,
    mnm_write_grad_forward, mnm_write_local_autodiff, mnm_write_local_backward, mnm_write_local_forward,
)


def widths(L, d, h):
    return (d,) + (h,) * (L - 1) + (d,)


def memory(rng, B=2, Nh=2, d=3, h=4, L=3, scale=1.0):
    """Fast weights phi (B, n_l, n_{l-1}) at the reference init scale times `scale`, keys and
    values (B, Nh, d) in the range the tanh interface gives, and rates beta (B,) inside (0, 1)."""
    n = widths(L, d, h)
    weights = tuple(scale * rng.uniform(-1, 1, (B, n[l], n[l - 1])) / np.sqrt(n[l - 1]) for l in range(1, L + 1))
    keys = rng.uniform(-1, 1, (B, Nh, d))
    values = rng.uniform(-1, 1, (B, Nh, d))
    beta = rng.uniform(0.2, 0.8, B)
    return weights, keys, values, beta


def assert_engines_agree(a, b, rtol=1e-10, what=""):
    a, b = np.asarray(a), np.asarray(b)
    floor = 1e-12 * max(1.0, float(np.max(np.abs(a), initial=0.0)))
    bad = np.abs(a - b) > rtol * np.maximum(np.abs(a), np.abs(b)) + floor
    assert not np.any(bad), f"{what}: engines differ, max |diff| {np.max(np.abs(a - b)):.3g}"


def leaves(*arrays):
    return [ad.Tensor(np.array(a), requires_grad=True) for a in arrays]


# ----------------------------------------------------------------- finite differences
@pytest.mark.parametrize("L", [1, 2, 3])
def test_mem_backward_with_gradients_at_every_layer(L):
    rng = np.random.default_rng(L)
    weights, keys, _, _ = memory(rng, L=L)
    _, cache = mnm_mem_forward(weights, keys)
    dZs = [rng.standard_normal(Z.shape) for Z in cache.Zs[1:]]      # a loss on every Z_l, l = 1..L

    def every_layer(*args):
        return tuple(mnm_mem_forward(args[:L], args[L])[1].Zs[1:])

    dweights, dkeys = mnm_mem_backward(dZs, cache)
    numeric = numeric_vjp(every_layer, list(weights) + [keys], tuple(dZs))
    assert_grads_close(list(dweights) + [dkeys], numeric, names=[f"W{l}" for l in range(1, L + 1)] + ["keys"])


@pytest.mark.parametrize("L", [1, 3])
def test_recon_and_read_match_central_differences(L):
    rng = np.random.default_rng(10 + L)
    weights, keys, values, _ = memory(rng, L=L)
    names = [f"W{l}" for l in range(1, L + 1)]
    dloss = rng.standard_normal(2)
    _, cache = mnm_recon_forward(weights, keys, values)
    dweights, dkeys, dvalues = mnm_recon_backward(dloss, cache)
    numeric = numeric_vjp(lambda *a: mnm_recon_forward(a[:L], a[L], a[L + 1])[0],
                          list(weights) + [keys, values], dloss)
    assert_grads_close(list(dweights) + [dkeys, dvalues], numeric, names=names + ["keys", "values"])

    dread = rng.standard_normal((2, 3))
    _, cache = mnm_read_forward(weights, keys)
    dweights, dkeys = mnm_read_backward(dread, cache)
    numeric = numeric_vjp(lambda *a: mnm_read_forward(a[:L], a[L])[0], list(weights) + [keys], dread)
    assert_grads_close(list(dweights) + [dkeys], numeric, names=names + ["keys"])


@pytest.mark.parametrize("L", [1, 2, 3])
def test_inner_grad_is_the_gradient_of_the_reconstruction_loss(L):
    rng = np.random.default_rng(20 + L)
    weights, keys, values, _ = memory(rng, L=L)
    g, _ = mnm_inner_grad_forward(weights, keys, values)
    numeric = numeric_vjp(lambda *w: mnm_recon_forward(w, keys, values)[0], weights, np.ones(2))
    assert_grads_close(g, numeric, names=[f"g{l}" for l in range(1, L + 1)])


@pytest.mark.parametrize("L", [1, 2, 3])
def test_inner_grad_adjoint_second_order_matches_central_differences(L):
    rng = np.random.default_rng(30 + L)
    weights, keys, values, _ = memory(rng, L=L)
    g, cache = mnm_inner_grad_forward(weights, keys, values)
    dg = tuple(rng.standard_normal(gl.shape) for gl in g)
    dweights, dkeys, dvalues = mnm_inner_grad_backward(dg, cache)
    numeric = numeric_vjp(lambda *a: mnm_inner_grad_forward(a[:L], a[L], a[L + 1])[0],
                          list(weights) + [keys, values], dg)
    assert_grads_close(list(dweights) + [dkeys, dvalues], numeric,
                       names=[f"W{l}" for l in range(1, L + 1)] + ["keys", "values"])


@pytest.mark.parametrize("L", [1, 2, 3])
def test_write_grad_adjoint_matches_central_differences(L):
    rng = np.random.default_rng(40 + L)
    weights, keys, values, beta = memory(rng, L=L)
    new, cache = mnm_write_grad_forward(weights, keys, values, beta)
    dnew = tuple(rng.standard_normal(W.shape) for W in new)
    analytic = mnm_write_grad_backward(dnew, cache)
    numeric = numeric_vjp(lambda *a: mnm_write_grad_forward(a[:L], a[L], a[L + 1], a[L + 2])[0],
                          list(weights) + [keys, values, beta], dnew)
    assert_grads_close(list(analytic[0]) + list(analytic[1:]), numeric,
                       names=[f"W{l}" for l in range(1, L + 1)] + ["keys", "values", "beta"])


@pytest.mark.parametrize("L", [1, 2, 3])
def test_write_local_adjoint_matches_central_differences(L):
    rng = np.random.default_rng(50 + L)
    weights, keys, _, beta = memory(rng, L=L)
    targets = tuple(rng.uniform(-1, 1, (2, 2, n)) for n in widths(L, 3, 4)[1:])
    new, cache = mnm_write_local_forward(weights, keys, targets, beta)
    dnew = tuple(rng.standard_normal(W.shape) for W in new)
    dweights, dkeys, dtargets, dbeta = mnm_write_local_backward(dnew, cache)
    numeric = numeric_vjp(lambda *a: mnm_write_local_forward(a[:L], a[L], a[L + 1:2 * L + 1], a[2 * L + 1])[0],
                          list(weights) + [keys] + list(targets) + [beta], dnew)
    names = [f"W{l}" for l in range(1, L + 1)] + ["keys"] + [f"target{l}" for l in range(1, L + 1)] + ["beta"]
    assert_grads_close(list(dweights) + [dkeys] + list(dtargets) + [dbeta], numeric, names=names)


@settings(max_examples=8)
@given(B=st.integers(1, 3), Nh=st.integers(1, 3), d=st.integers(1, 3), h=st.integers(1, 4), L=st.integers(1, 3),
       seed=st.integers(0, 2 ** 16))
def test_write_grad_adjoint_for_any_shape(B, Nh, d, h, L, seed):
    rng = np.random.default_rng(seed)
    weights, keys, values, beta = memory(rng, B=B, Nh=Nh, d=d, h=h, L=L)
    new, cache = mnm_write_grad_forward(weights, keys, values, beta)
    dnew = tuple(rng.standard_normal(W.shape) for W in new)
    analytic = mnm_write_grad_backward(dnew, cache)
    numeric = numeric_vjp(lambda *a: mnm_write_grad_forward(a[:L], a[L], a[L + 1], a[L + 2])[0],
                          list(weights) + [keys, values, beta], dnew)
    assert_grads_close(list(analytic[0]) + list(analytic[1:]), numeric)


# ----------------------------------------------------------------- manual == autodiff
@pytest.mark.parametrize("method", ["tape", "closed_form"])
@pytest.mark.parametrize("L", [1, 3])
def test_write_grad_autodiff_agrees_to_second_order(method, L):
    """The backward of the autodiff write differentiates its inner gradient again (create_graph):
    it must equal the hand-written second-order adjoint."""
    rng = np.random.default_rng(60 + L)
    weights, keys, values, beta = memory(rng, L=L)
    new, cache = mnm_write_grad_forward(weights, keys, values, beta)
    dnew = tuple(rng.standard_normal(W.shape) for W in new)
    dweights, *dothers = mnm_write_grad_backward(dnew, cache)
    manual = list(dweights) + dothers
    *tweights, tkeys, tvalues, tbeta = leaves(*weights, keys, values, beta)
    tnew = mnm_write_grad_autodiff(tweights, tkeys, tvalues, tbeta, method=method)
    for a, b in zip(tnew, new):
        assert_engines_agree(a.data, b, what="phi_t")
    total = sum((W * dW).sum() for W, dW in zip(tnew, dnew))
    auto = ad.grad(total, tweights + [tkeys, tvalues, tbeta])
    for name, a, b in zip(["W"] * L + ["keys", "values", "beta"], manual, auto):
        assert_engines_agree(a, b, what=name)


def test_inner_grad_tape_takes_the_partial_derivative_when_keys_depend_on_the_weights():
    """In a model k^w depends on phi_{t-1}; the write direction is still the partial gradient."""
    rng = np.random.default_rng(7)
    weights, keys, values, _ = memory(rng, L=2)
    tweights = leaves(*weights)
    tkeys = ad.tanh(ad.as_tensor(keys) + tweights[0].sum() * 0.1)   # keys that depend on W_1
    expected, _ = mnm_inner_grad_forward(weights, np.tanh(keys + weights[0].sum() * 0.1), values)
    for method in ("tape", "closed_form"):
        g = mnm_inner_grad_autodiff(tweights, tkeys, values, method=method)
        for a, b in zip(g, expected):
            assert_engines_agree(a.data, b, what=method)


def check_twin(forward, backward, twin, arrays, rng):
    """forward(*arrays) -> (tuple of outputs, cache); backward(douts, cache) -> one gradient per
    array; twin(*tensors) -> tuple of Tensors. Values and gradients must agree to 1e-10."""
    outs, cache = forward(*arrays)
    douts = tuple(rng.standard_normal(o.shape) for o in outs)
    expected = backward(douts, cache)
    tensors = leaves(*arrays)
    touts = twin(*tensors)
    for a, b in zip(touts, outs):
        assert_engines_agree(a.data, b, what="forward")
    got = ad.grad(sum((o * d).sum() for o, d in zip(touts, douts)), tensors)
    assert len(expected) == len(got) == len(arrays)
    for i, (a, b) in enumerate(zip(expected, got)):
        assert_engines_agree(a, b, what=f"gradient of input {i}")


@pytest.mark.parametrize("L", [1, 3])
def test_other_pairs_agree_with_their_autodiff_twins(L):
    rng = np.random.default_rng(70 + L)
    weights, keys, values, beta = memory(rng, L=L)
    targets = tuple(rng.uniform(-1, 1, (2, 2, n)) for n in widths(L, 3, 4)[1:])
    last = lambda d: [None] * (L - 1) + [d]                           # a gradient at Z_L only

    def mem_backward(douts, cache):
        dweights, dkeys = mnm_mem_backward(last(douts[0]), cache)
        return (*dweights, dkeys)

    check_twin(lambda *a: ((mnm_mem_forward(a[:L], a[L])[0],), mnm_mem_forward(a[:L], a[L])[1]),
               mem_backward, lambda *t: (mnm_mem_autodiff(t[:L], t[L]),), (*weights, keys), rng)

    def recon_forward(*a):
        loss, cache = mnm_recon_forward(a[:L], a[L], a[L + 1])
        return (loss,), cache

    def recon_backward(douts, cache):
        dweights, dkeys, dvalues = mnm_recon_backward(douts[0], cache)
        return (*dweights, dkeys, dvalues)

    check_twin(recon_forward, recon_backward, lambda *t: (mnm_recon_autodiff(t[:L], t[L], t[L + 1]),),
               (*weights, keys, values), rng)

    def read_forward(*a):
        read, cache = mnm_read_forward(a[:L], a[L])
        return (read,), cache

    def read_backward(douts, cache):
        dweights, dkeys = mnm_read_backward(douts[0], cache)
        return (*dweights, dkeys)

    check_twin(read_forward, read_backward, lambda *t: (mnm_read_autodiff(t[:L], t[L]),), (*weights, keys), rng)

    def local_backward(douts, cache):
        dweights, dkeys, dtargets, dbeta = mnm_write_local_backward(douts, cache)
        return (*dweights, dkeys, *dtargets, dbeta)

    check_twin(lambda *a: mnm_write_local_forward(a[:L], a[L], a[L + 1:2 * L + 1], a[2 * L + 1]), local_backward,
               lambda *t: mnm_write_local_autodiff(t[:L], t[L], t[L + 1:2 * L + 1], t[2 * L + 1]),
               (*weights, keys, *targets, beta), rng)


# ----------------------------------------------------------------- oracles of B9
def test_delta_rule_for_one_linear_layer_and_the_exact_write():
    """B9.1: L = 1, Nh = 1: W_t = W - beta (2/d) (f(k) - v)^T k; exact when beta (2/d) |k|^2 = 1."""
    rng = np.random.default_rng(1)
    weights, keys, values, beta = memory(rng, B=3, Nh=1, d=4, L=1)
    (W_t,), _ = mnm_write_grad_forward(weights, keys, values, beta)
    W, k, v = weights[0], keys[:, 0], values[:, 0]
    f = np.einsum("boi,bi->bo", W, k)
    delta = W - (beta * 2 / 4)[:, None, None] * np.einsum("bo,bi->boi", f - v, k)
    np.testing.assert_allclose(W_t, delta, rtol=1e-13, atol=1e-15)

    exact_beta = 4 / (2 * np.sum(k * k, axis=1))                     # beta (2/d) |k|^2 = 1
    new, _ = mnm_write_grad_forward(weights, keys, values, exact_beta)
    np.testing.assert_allclose(mnm_mem_forward(new, keys)[0], values, rtol=1e-12, atol=1e-13)


def test_local_rule_equals_the_gradient_step_for_one_layer_with_identity_targets():
    """B9.2: L = 1 and the target map the identity (Z'_1 = v^w): MNM-p == MNM-g."""
    rng = np.random.default_rng(2)
    weights, keys, values, beta = memory(rng, B=3, Nh=2, d=4, L=1)
    local, _ = mnm_write_local_forward(weights, keys, (values,), beta)
    grad, _ = mnm_write_grad_forward(weights, keys, values, beta)
    np.testing.assert_allclose(local[0], grad[0], rtol=1e-14, atol=1e-15)


def test_local_rule_differs_from_the_gradient_step_for_deeper_memories():
    """B9.2: for L > 1 they differ, even with the most favourable targets (output target v^w, hidden
    targets equal to the current activations, so the local rule moves only the output layer)."""
    rng = np.random.default_rng(3)
    for L in (2, 3):
        weights, keys, values, beta = memory(rng, L=L)
        _, cache = mnm_mem_forward(weights, keys)
        targets = tuple(cache.Zs[1:L]) + (values,)
        local, _ = mnm_write_local_forward(weights, keys, targets, beta)
        grad, _ = mnm_write_grad_forward(weights, keys, values, beta)
        np.testing.assert_allclose(local[-1], grad[-1], rtol=1e-13, atol=1e-15)  # the output layer agrees
        np.testing.assert_array_equal(local[0], weights[0])                    # hidden layers stay for MNM-p
        assert np.max(np.abs(grad[0] - weights[0])) > 1e-3                     # but move for MNM-g


def test_beta_zero_leaves_the_memory_alone():
    """B9.3: beta = 0 gives phi_t = phi_{t-1} exactly; the loss after the write is the loss before."""
    rng = np.random.default_rng(4)
    weights, keys, values, _ = memory(rng)
    beta = np.zeros(2)
    targets = tuple(rng.uniform(-1, 1, (2, 2, n)) for n in widths(3, 3, 4)[1:])
    for new in (mnm_write_grad_forward(weights, keys, values, beta)[0],
                mnm_write_local_forward(weights, keys, targets, beta)[0]):
        for a, b in zip(new, weights):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(mnm_recon_forward(new, keys, values)[0],
                                      mnm_recon_forward(weights, keys, values)[0])


def test_a_small_gradient_step_descends():
    """B9.4: MNM-g with beta = 1e-3 lowers L^up whenever its gradient is non-zero."""
    rng = np.random.default_rng(5)
    for L in (1, 2, 3):
        weights, keys, values, _ = memory(rng, B=4, L=L)
        new, _ = mnm_write_grad_forward(weights, keys, values, np.full(4, 1e-3))
        before, after = mnm_recon_forward(weights, keys, values)[0], mnm_recon_forward(new, keys, values)[0]
        assert np.all(after < before)


def test_identical_heads_write_and_read_like_one_head():
    """B9.5: Nh copies of one key/value pair give the same update and read as one head."""
    rng = np.random.default_rng(6)
    weights, keys, values, beta = memory(rng, B=2, Nh=1)
    targets = tuple(rng.uniform(-1, 1, (2, 1, n)) for n in widths(3, 3, 4)[1:])
    copies = lambda x: np.repeat(x, 3, axis=1)                        # (B, 3, n)
    pairs = [(mnm_write_grad_forward(weights, keys, values, beta)[0],
              mnm_write_grad_forward(weights, copies(keys), copies(values), beta)[0]),
             (mnm_write_local_forward(weights, keys, targets, beta)[0],
              mnm_write_local_forward(weights, copies(keys), tuple(map(copies, targets)), beta)[0])]
    for one, three in pairs:
        for a, b in zip(one, three):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(mnm_read_forward(one, keys)[0], mnm_read_forward(three, copies(keys))[0],
                                   rtol=1e-13, atol=1e-15)


def test_reading_changes_nothing():
    """B9.6: a read leaves phi and the keys untouched, and reading twice gives the same bits."""
    rng = np.random.default_rng(8)
    weights, keys, _, _ = memory(rng)
    saved = [W.copy() for W in weights], keys.copy()
    first, _ = mnm_read_forward(weights, keys)
    second, _ = mnm_read_forward(weights, keys)
    np.testing.assert_array_equal(first, second)
    for a, b in zip(weights, saved[0]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(keys, saved[1])


def test_hand_computed_two_by_two_local_write():
    """B9.10: one head, L = 1, W = [[1, 2], [0, 1]], k = [1, 1], target Z' = [1, 0].
    f(k) = k W^T = [3, 1];  D = [2, 1];  D^T k = [[2, 2], [1, 1]];  rate 2 / (Nh n_1) = 1.
    beta = 0.5: W_t = [[0, 1], [-0.5, 0.5]] and f(k) = [1, 0], the target (beta |k|^2 = 1: exact);
    beta = 0.25: W_t = [[0.5, 1.5], [-0.25, 0.75]] and f(k) = [2, 0.5], halfway."""
    W = np.array([[[1.0, 2.0], [0.0, 1.0]]])                          # (B=1, 2, 2)
    k = np.array([[[1.0, 1.0]]])                                      # (1, Nh=1, 2)
    target = np.array([[[1.0, 0.0]]])
    for beta, W_expected, f_expected in (
        (0.5, [[0.0, 1.0], [-0.5, 0.5]], [1.0, 0.0]),
        (0.25, [[0.5, 1.5], [-0.25, 0.75]], [2.0, 0.5]),
    ):
        (W_t,), _ = mnm_write_local_forward((W,), k, (target,), np.array([beta]))
        np.testing.assert_array_equal(W_t[0], W_expected)
        np.testing.assert_array_equal(mnm_mem_forward((W_t,), k)[0][0, 0], f_expected)
        (W_g,), _ = mnm_write_grad_forward((W,), k, target, np.array([beta]))   # and MNM-g (B9.2)
        np.testing.assert_array_equal(W_g[0], W_expected)


# ----------------------------------------------------------------- bad input
def test_bad_shapes_raise_value_errors_naming_the_expected_shape():
    rng = np.random.default_rng(9)
    weights, keys, values, beta = memory(rng)
    with pytest.raises(ValueError, match=r"keys must have shape \(B, Nh, d\)"):
        mnm_mem_forward(weights, keys[:, :, :2])
    with pytest.raises(ValueError, match=r"W_2 must have shape"):
        mnm_mem_forward((weights[0], weights[0], weights[2]), keys)
    with pytest.raises(ValueError, match=r"values must have shape"):
        mnm_write_grad_forward(weights, keys, values[:1], beta)
    with pytest.raises(ValueError, match=r"beta must have shape \(B,\)"):
        mnm_write_grad_forward(weights, keys, values, beta[:, None])
    with pytest.raises(ValueError, match=r"targets must be a tuple of L=3"):
        mnm_write_local_forward(weights, keys, (values,), beta)
    with pytest.raises(ValueError, match=r"targets\[0\]"):
        mnm_write_local_forward(weights, keys, (values, values, values), beta)
    with pytest.raises(ValueError, match="method"):
        mnm_inner_grad_autodiff(weights, keys, values, method="finite")
    with pytest.raises(ValueError, match="non-empty tuple"):
        mnm_read_forward((), keys)


def test_planted_error_in_the_inner_adjoint_is_caught(monkeypatch):
    """Dropping the second-order terms (g treated as a constant) must fail the finite differences."""
    rng = np.random.default_rng(11)
    weights, keys, values, beta = memory(rng)
    zero = lambda dg, cache: (tuple(np.zeros_like(W) for W in cache.mem.weights),
                              np.zeros_like(cache.mem.Zs[0]), np.zeros_like(cache.error))
    monkeypatch.setattr(mnm_memory, "mnm_inner_grad_backward", zero)
    new, cache = mnm_write_grad_forward(weights, keys, values, beta)
    dnew = tuple(rng.standard_normal(W.shape) for W in new)
    analytic = mnm_write_grad_backward(dnew, cache)
    numeric = numeric_vjp(lambda *a: mnm_write_grad_forward(a[:3], a[3], a[4], a[5])[0],
                          list(weights) + [keys, values, beta], dnew)
    with pytest.raises(AssertionError, match="keys"):
        assert_grads_close(list(analytic[1:]), numeric[3:], names=["keys", "values", "beta"])
