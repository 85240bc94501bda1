"""DNC temporal memory linkage (minimem/memory/linkage.py): precedence, link matrix, forward and
backward weightings, read-mode mix. Finite differences in float64 are the oracle (spec B.9, E.1)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcheck.core import assert_grads_close, numeric_vjp
from minimem import autodiff as ad
from minimem.memory import allocation as A
from minimem.memory import linkage as K

FAST = settings(max_examples=12, deadline=None)
shape_B = st.integers(1, 3)
shape_R = st.integers(1, 3)
shape_N = st.integers(1, 6)
seeds = st.integers(0, 2**32 - 1)


def check_pair(forward, backward, inputs, names, rng):
    """Backward of a pair vs central differences, for every array input, random upstream gradient."""
    out, cache = forward(*inputs)
    dout = rng.standard_normal(out.shape)
    numeric = numeric_vjp(lambda *a: forward(*a)[0], inputs, dout)
    assert_grads_close(backward(dout, cache), numeric, names)
    return out, cache, dout


def twin_grads(twin, inputs, dout):
    """Value and input gradients of an autodiff twin (or op) for the upstream gradient dout."""
    tensors = [ad.Tensor(x, requires_grad=True) for x in inputs]
    out = twin(*tensors)
    out.backward(dout)
    return out.data, tuple(t.grad for t in tensors)


def read_weightings(rng, B, R, N):
    return rng.dirichlet(np.ones(N), size=(B, R)) * rng.uniform(0.5, 1.0, size=(B, R, 1))   # in Delta_N


def in_delta(rng, lead, N):
    """Weightings in Delta_N (entries in [0, 1], sums <= 1)."""
    return rng.dirichlet(np.ones(N), size=lead) * rng.uniform(0.2, 1.0, size=lead + (1,))


def random_links(rng, lead, N):
    """A link matrix in the reachable set: run a few random link/precedence updates from zero."""
    L, p = np.zeros(lead + (N, N)), np.zeros(lead + (N,))
    for _ in range(4):
        w_w = in_delta(rng, lead, N)
        L, _ = K.link_forward(L, w_w, p)
        p, _ = K.precedence_forward(p, w_w)
    return L, p


def one_hot(N, i, B=1):
    return np.tile(np.eye(N)[i], (B, 1))


# ----------------------------------------------------------------- precedence
@FAST
@given(B=shape_B, N=shape_N, H=st.sampled_from([None, 2]), seed=seeds)
def test_precedence_backward_matches_central_differences(B, N, H, seed):
    rng = np.random.default_rng(seed)
    lead = (B,) if H is None else (B, H)
    p, _, _ = check_pair(K.precedence_forward, K.precedence_backward,
                         (in_delta(rng, lead, N), in_delta(rng, lead, N)), ("p_prev", "w_w"), rng)
    assert np.all((p >= 0) & (p <= 1)) and np.all(p.sum(-1) <= 1 + 1e-12)            # Delta_N


def test_precedence_unchanged_without_a_write_and_equal_to_a_full_write():
    rng = np.random.default_rng(1)
    p_prev = in_delta(rng, (3,), 6)
    np.testing.assert_array_equal(K.precedence_forward(p_prev, np.zeros((3, 6)))[0], p_prev)
    np.testing.assert_array_equal(K.precedence_forward(p_prev, one_hot(6, 4, 3))[0], one_hot(6, 4, 3))


def test_planted_dropped_term_in_precedence_backward_is_caught():
    def precedence_backward_without_the_decay_term(dp, cache):   # forgets that sum(w) scales p_prev
        return (1.0 - cache.write_total) * dp, dp

    rng = np.random.default_rng(2)
    with pytest.raises(AssertionError, match="w_w"):
        check_pair(K.precedence_forward, precedence_backward_without_the_decay_term,
                   (in_delta(rng, (2,), 4), in_delta(rng, (2,), 4)), ("p_prev", "w_w"), rng)


# ----------------------------------------------------------------- link matrix
@FAST
@given(B=shape_B, N=shape_N, H=st.sampled_from([None, 2]), seed=seeds)
def test_link_backward_matches_central_differences(B, N, H, seed):
    rng = np.random.default_rng(seed)
    lead = (B,) if H is None else (B, H)
    L_prev = rng.uniform(0, 1, lead + (N, N))                     # arbitrary, incl. a nonzero diagonal
    check_pair(K.link_forward, K.link_backward, (L_prev, in_delta(rng, lead, N), in_delta(rng, lead, N)),
               ("L_prev", "w_w", "p_prev"), rng)


def test_link_diagonal_is_exactly_zero_and_gets_no_gradient():
    rng = np.random.default_rng(3)
    L_prev = rng.uniform(0, 1, (2, 5, 5))
    L, cache = K.link_forward(L_prev, in_delta(rng, (2,), 5), in_delta(rng, (2,), 5))
    assert np.all(np.diagonal(L, axis1=-2, axis2=-1) == 0.0)
    dL = np.zeros_like(L)
    dL[:, np.arange(5), np.arange(5)] = rng.standard_normal((2, 5))   # gradient only on the diagonal
    for grad in K.link_backward(dL, cache):
        assert np.all(grad == 0.0)
    assert np.all(dL[:, np.arange(5), np.arange(5)] != 0.0)          # upstream gradient not mutated


@pytest.mark.parametrize("planted", ["unmasked_diagonal", "dropped_column_term"])
def test_planted_wrong_link_backward_is_caught(planted):
    def link_backward_planted(dL, cache):
        L_prev, w_w, p_prev = cache
        G = dL if planted == "unmasked_diagonal" else K._zero_diagonal(dL.copy())
        dL_prev = (1.0 - w_w[..., :, None] - w_w[..., None, :]) * G
        dw_w = np.sum(G * (p_prev[..., None, :] - L_prev), axis=-1)
        if planted == "unmasked_diagonal":
            dw_w = dw_w - np.sum(G * L_prev, axis=-2)
        dp_prev = np.sum(G * w_w[..., :, None], axis=-2)
        return dL_prev, dw_w, dp_prev

    rng = np.random.default_rng(4)
    L_prev = rng.uniform(0, 1, (2, 4, 4))
    name = "L_prev" if planted == "unmasked_diagonal" else "w_w"
    with pytest.raises(AssertionError, match=name):
        check_pair(K.link_forward, link_backward_planted, (L_prev, in_delta(rng, (2,), 4), in_delta(rng, (2,), 4)),
                   ("L_prev", "w_w", "p_prev"), rng)


def test_link_invariants_over_a_random_write_sequence():
    rng = np.random.default_rng(5)
    B, N = 8, 7
    L, p = np.zeros((B, N, N)), np.zeros((B, N))
    for _ in range(25):
        w_w = in_delta(rng, (B,), N)
        w_w[: B // 2] *= rng.uniform(0.9, 1.0, size=(B // 2, 1)) / w_w[: B // 2].sum(-1, keepdims=True)  # near-full
        L, _ = K.link_forward(L, w_w, p)
        p, _ = K.precedence_forward(p, w_w)
        assert np.all(np.diagonal(L, axis1=-2, axis2=-1) == 0.0)
        assert np.all((L >= 0.0) & (L <= 1.0))
        assert np.all(L.sum(-1) <= 1 + 1e-12) and np.all(L.sum(-2) <= 1 + 1e-12)
        assert np.all(p >= 0.0) and np.all(p.sum(-1) <= 1 + 1e-12)


def test_one_hot_writes_record_their_order():
    # deepmind/dnc oracle: writes to slot 0, then 1 give L[1, 0] = 1
    N = 4
    L, p = np.zeros((1, N, N)), np.zeros((1, N))
    for slot in (0, 1):
        L, _ = K.link_forward(L, one_hot(N, slot), p)
        p, _ = K.precedence_forward(p, one_hot(N, slot))
    assert L[0, 1, 0] == 1.0 and np.count_nonzero(L) == 1


def test_writes_steered_by_allocation_to_3_then_7_then_1_are_followed_by_the_links():
    """Spec B.9: one-hot writes (g^w = g^a = 1, usages forcing slots 3, 7, 1) give L[7,3] = L[1,7] = 1,
    f = L one_hot(3) = one_hot(7), b = L^T one_hot(7) = one_hot(3)."""
    N, B = 9, 2
    L, p = np.zeros((B, N, N)), np.zeros((B, N))
    gate = np.ones((B, 1))
    for slot in (3, 7, 1):
        usage = 1.0 - one_hot(N, slot, B)                          # every other slot fully used
        a, _ = A.allocation_forward(usage, eps=0.0)                # unfloored, so a is exactly one-hot
        w_w, _ = A.write_weighting_forward(a, np.full((B, N), 1.0 / N), gate, gate)
        np.testing.assert_array_equal(w_w, one_hot(N, slot, B))
        L, _ = K.link_forward(L, w_w, p)
        p, _ = K.precedence_forward(p, w_w)
    assert np.all(L[:, 7, 3] == 1.0) and np.all(L[:, 1, 7] == 1.0)
    assert np.all(L[:, 1, 3] == 0.0)                               # 3 -> 1 was overwritten by the write to 1
    w_r_prev = np.stack([one_hot(N, 3, B), one_hot(N, 7, B)], axis=1)          # (B, R=2, N)
    (f, b), _ = K.directional_forward(L, w_r_prev)
    np.testing.assert_array_equal(f[:, 0], one_hot(N, 7, B))       # forward from 3 reaches 7
    np.testing.assert_array_equal(f[:, 1], one_hot(N, 1, B))       # forward from 7 reaches 1
    np.testing.assert_array_equal(b[:, 1], one_hot(N, 3, B))       # backward from 7 reaches 3
    # with the default floor the same writes are one-hot up to O(eps_a)
    a, _ = A.allocation_forward(1.0 - one_hot(N, 3, B))
    np.testing.assert_allclose(a, one_hot(N, 3, B), atol=2e-6)


def test_no_write_leaves_links_and_precedence_bit_for_bit():
    rng = np.random.default_rng(6)
    L_prev, p_prev = random_links(rng, (3,), 5)
    a, c_w, g_a, _ = (rng.dirichlet(np.ones(5), size=3), rng.dirichlet(np.ones(5), size=3),
                      rng.uniform(0, 1, (3, 1)), None)
    w_w, _ = A.write_weighting_forward(a, c_w, g_a, np.zeros((3, 1)))   # g^w = 0
    np.testing.assert_array_equal(K.link_forward(L_prev, w_w, p_prev)[0], L_prev)
    np.testing.assert_array_equal(K.precedence_forward(p_prev, w_w)[0], p_prev)


def test_link_errors_name_the_shape():
    with pytest.raises(ValueError, match=r"L_prev must have shape \(B, N, N\)"):
        K.link_forward(np.zeros((2, 4, 5)), np.zeros((2, 4)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"L_prev must have shape \(B, H, N, N\)"):
        K.link_forward(np.zeros((2, 4, 4)), np.zeros((2, 3, 4)), np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"p_prev must have shape"):
        K.link_forward(np.zeros((2, 4, 4)), np.zeros((2, 4)), np.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"w_w must have shape"):
        K.precedence_forward(np.zeros((2, 4)), np.zeros((4,)))


# ----------------------------------------------------------------- forward and backward weightings
@FAST
@given(B=shape_B, R=shape_R, N=shape_N, seed=seeds)
def test_directional_backward_matches_central_differences(B, R, N, seed):
    rng = np.random.default_rng(seed)
    L, _ = random_links(rng, (B,), N)
    L = L + rng.uniform(0, 0.1, L.shape)                          # generic values, diagonal included
    w_r_prev = read_weightings(rng, B, R, N)
    (f, b), cache = K.directional_forward(L, w_r_prev)
    dout = (rng.standard_normal(f.shape), rng.standard_normal(b.shape))
    analytic = K.directional_backward(dout, cache)
    numeric = numeric_vjp(lambda *a: K.directional_forward(*a)[0], (L, w_r_prev), dout)
    assert_grads_close(analytic, numeric, ("L", "w_r_prev"))


def test_planted_transposed_directional_backward_is_caught():
    def directional_backward_transposed(dout, cache):             # uses L where L^T belongs
        df, db = dout
        dL, _ = K.directional_backward(dout, cache)
        return dL, df @ np.swapaxes(cache.L, -1, -2) + db @ cache.L

    rng = np.random.default_rng(7)
    L = rng.uniform(0, 0.3, (2, 4, 4))
    w_r_prev = read_weightings(rng, 2, 2, 4)
    (f, b), cache = K.directional_forward(L, w_r_prev)
    dout = (rng.standard_normal(f.shape), rng.standard_normal(b.shape))
    numeric = numeric_vjp(lambda *a: K.directional_forward(*a)[0], (L, w_r_prev), dout)
    with pytest.raises(AssertionError, match="w_r_prev"):
        assert_grads_close(directional_backward_transposed(dout, cache), numeric, ("L", "w_r_prev"))


def test_directional_weightings_stay_in_delta_and_errors():
    rng = np.random.default_rng(8)
    L, _ = random_links(rng, (4,), 6)
    (f, b), _ = K.directional_forward(L, read_weightings(rng, 4, 3, 6))
    for x in (f, b):
        assert np.all(x >= 0) and np.all(x.sum(-1) <= 1 + 1e-12)
    with pytest.raises(ValueError, match=r"L must have shape \(B, N, N\)"):
        K.directional_forward(np.zeros((2, 4, 5)), np.zeros((2, 1, 4)))
    with pytest.raises(ValueError, match=r"w_r_prev must have shape \(B, R, N\)"):
        K.directional_forward(np.zeros((2, 4, 4)), np.zeros((2, 4)))


# ----------------------------------------------------------------- read modes
def read_mode_inputs(rng, B, R, N):
    pi = rng.dirichlet(np.ones(3), size=(B, R))                    # after the softmax
    return read_weightings(rng, B, R, N), rng.dirichlet(np.ones(N), size=(B, R)), read_weightings(rng, B, R, N), pi


@FAST
@given(B=shape_B, R=shape_R, N=shape_N, seed=seeds)
def test_read_weighting_backward_matches_central_differences(B, R, N, seed):
    rng = np.random.default_rng(seed)
    w_r, _, _ = check_pair(K.read_weighting_forward, K.read_weighting_backward, read_mode_inputs(rng, B, R, N),
                           ("b", "c", "f", "pi"), rng)
    assert np.all(w_r >= 0) and np.all(w_r.sum(-1) <= 1 + 1e-12)


def test_read_mode_order_is_backward_content_forward():
    """Spec B.10.3 / E.2 item 4: pi[..., 0] weighs b, pi[..., 1] the content weighting, pi[..., 2] f
    (deepmind/dnc and ixaxaar/pytorch-dnc order (backward, forward, content) must fail this)."""
    assert K.READ_MODES == ("backward", "content", "forward")
    rng = np.random.default_rng(9)
    b, c, f, _ = read_mode_inputs(rng, 2, 2, 5)
    for mode, expected in enumerate((b, c, f)):
        pi = np.zeros((2, 2, 3))
        pi[..., mode] = 1.0
        np.testing.assert_array_equal(K.read_weighting_forward(b, c, f, pi)[0], expected)
    _, cache = K.read_weighting_forward(b, c, f, rng.dirichlet(np.ones(3), size=(2, 2)))
    dw_r = rng.standard_normal(b.shape)
    dpi = K.read_weighting_backward(dw_r, cache)[3]
    np.testing.assert_allclose(dpi[..., 1], np.sum(c * dw_r, axis=-1), rtol=1e-14)   # slot 1 is content


def test_read_weighting_errors():
    b = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match=r"pi must have shape \(B, R, 3\)"):
        K.read_weighting_forward(b, b, b, np.zeros((2, 3, 2)))
    with pytest.raises(ValueError, match=r"f must have shape \(B, R, N\)"):
        K.read_weighting_forward(b, b, b[..., :3], np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match=r"b must have shape \(B, R, N\)"):
        K.read_weighting_forward(b[0], b[0], b[0], np.zeros((3, 3)))


# ----------------------------------------------------------------- autodiff twins and custom ops
def assert_agree(manual_value, manual_grads, value, grads):
    np.testing.assert_allclose(value, manual_value, rtol=1e-12, atol=1e-14)
    for m, g in zip(manual_grads, grads):
        np.testing.assert_allclose(g, m, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("B, R, N", [(1, 1, 1), (2, 3, 5)])
def test_twins_and_ops_agree_with_the_manual_pairs(B, R, N):
    rng = np.random.default_rng(10)
    cases = [
        (K.precedence_forward, K.precedence_backward, (K.precedence_autodiff, K.precedence_op),
         (in_delta(rng, (B,), N), in_delta(rng, (B,), N))),
        (K.link_forward, K.link_backward, (K.link_autodiff, K.link_op),
         (rng.uniform(0, 1, (B, N, N)), in_delta(rng, (B,), N), in_delta(rng, (B,), N))),
        (K.read_weighting_forward, K.read_weighting_backward, (K.read_weighting_autodiff, K.read_weighting_op),
         read_mode_inputs(rng, B, R, N)),
    ]
    for forward, backward, twins, inputs in cases:
        out, cache = forward(*inputs)
        dout = rng.standard_normal(out.shape)
        manual = backward(dout, cache)
        for twin in twins:
            assert_agree(out, manual, *twin_grads(twin, inputs, dout))
    # directional: two outputs
    L, w_r_prev = rng.uniform(0, 1, (B, N, N)), read_weightings(rng, B, R, N)
    (f, b), cache = K.directional_forward(L, w_r_prev)
    df, db = rng.standard_normal(f.shape), rng.standard_normal(b.shape)
    manual = K.directional_backward((df, db), cache)
    tensors = [ad.Tensor(x, requires_grad=True) for x in (L, w_r_prev)]
    f_t, b_t = K.directional_autodiff(*tensors)
    ((f_t * df).sum() + (b_t * db).sum()).backward()
    assert_agree(f, manual, f_t.data, [t.grad for t in tensors])
    np.testing.assert_allclose(b_t.data, b, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------- one DNC addressing step, all primitives
def addressing_step(u_prev, w_w_prev, free_gates, w_r_prev, c_w, g_a, g_w, L_prev, p_prev, c_r, pi, phi=None):
    """B.3 steps 5-7, 9, 11-13, 15 (content weightings given): manual forward, returning the caches."""
    u, c1 = A.usage_update_forward(u_prev, w_w_prev, free_gates, w_r_prev)
    a, c2 = A.allocation_forward(u, phi=phi)
    w_w, c3 = A.write_weighting_forward(a, c_w, g_a, g_w)
    L, c4 = K.link_forward(L_prev, w_w, p_prev)
    p, c5 = K.precedence_forward(p_prev, w_w)
    (f, b), c6 = K.directional_forward(L, w_r_prev)
    w_r, c7 = K.read_weighting_forward(b, c_r, f, pi)
    return (u, w_w, L, p, w_r), (c1, c2, c3, c4, c5, c6, c7)


def addressing_step_backward(douts, caches):
    du, dw_w, dL, dp, dw_r = douts
    c1, c2, c3, c4, c5, c6, c7 = caches
    db, dc_r, df, dpi = K.read_weighting_backward(dw_r, c7)                   # 7.
    dL_dir, dw_r_prev = K.directional_backward((df, db), c6)                  # 6.
    dp_prev, dw_w_p = K.precedence_backward(dp, c5)                           # 5.
    dL_prev, dw_w_l, dp_prev_l = K.link_backward(dL + dL_dir, c4)             # 4.
    da, dc_w, dg_a, dg_w = A.write_weighting_backward(dw_w + dw_w_p + dw_w_l, c3)   # 3.
    du_total = du + A.allocation_backward(da, c2)                             # 2.
    du_prev, dw_w_prev, dfree, dw_r_prev_u = A.usage_update_backward(du_total, c1)  # 1.
    return (du_prev, dw_w_prev, dfree, dw_r_prev + dw_r_prev_u, dc_w, dg_a, dg_w, dL_prev,
            dp_prev + dp_prev_l, dc_r, dpi)


def test_one_addressing_step_composes_against_central_differences():
    rng = np.random.default_rng(11)
    B, R, N = 2, 2, 4
    L_prev, p_prev = random_links(rng, (B,), N)
    inputs = (separated_usages_for_step(rng, B, N), in_delta(rng, (B,), N), rng.uniform(0.1, 0.9, (B, R)),
              read_weightings(rng, B, R, N), rng.dirichlet(np.ones(N), size=B), rng.uniform(0.1, 0.9, (B, 1)),
              rng.uniform(0.1, 0.9, (B, 1)), L_prev, p_prev, rng.dirichlet(np.ones(N), size=(B, R)),
              rng.dirichlet(np.ones(3), size=(B, R)))
    names = ("u_prev", "w_w_prev", "free_gates", "w_r_prev", "c_w", "g_a", "g_w", "L_prev", "p_prev", "c_r", "pi")
    outs, caches = addressing_step(*inputs)
    douts = tuple(rng.standard_normal(o.shape) for o in outs)
    analytic = addressing_step_backward(douts, caches)
    phi = caches[1].phi                                            # frozen free list for the perturbed passes
    numeric = numeric_vjp(lambda *a: addressing_step(*a, phi=phi)[0], inputs, douts)
    assert_grads_close(analytic, numeric, names)


def separated_usages_for_step(rng, B, N):
    return np.stack([rng.permutation(N) / N + 0.05 for _ in range(B)])


def test_link_entries_never_go_negative_from_round_off():
    # 1 - w_0 - w_1 is -5.6e-17 in floating point although w sums to 1: without the clamp the
    # off-diagonal entries would be about -1.7e-17.
    w = np.array([[0.6, 0.4000000000000001]])
    assert 1.0 - w[0, 0] - w[0, 1] < 0
    L, _ = K.link_forward(np.full((1, 2, 2), 0.3), w, np.zeros((1, 2)))
    assert np.all(L >= 0.0)
