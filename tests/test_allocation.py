"""DNC dynamic memory allocation (minimem/memory/allocation.py): retention, usage, sort-based
allocation and write weighting. Finite differences in float64 are the oracle (spec B.9, E.1)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcheck.core import assert_grads_close, numeric_vjp
from minimem import autodiff as ad
from minimem.memory import allocation as A

FAST = settings(max_examples=12, deadline=None)
shape_B = st.integers(1, 3)
shape_R = st.integers(1, 3)
shape_N = st.integers(1, 6)
seeds = st.integers(0, 2**32 - 1)


def check_pair(forward, backward, inputs, names, rng, **kwargs):
    """Backward of a pair vs central differences, for every array input, random upstream gradient."""
    out, cache = forward(*inputs, **kwargs)
    dout = rng.standard_normal(out.shape)
    analytic = backward(dout, cache)
    analytic = analytic if isinstance(analytic, tuple) else (analytic,)
    numeric = numeric_vjp(lambda *a: forward(*a, **kwargs)[0], inputs, dout)
    assert_grads_close(analytic, numeric, names)
    return out, cache, dout


def twin_grads(twin, inputs, dout, **kwargs):
    """Value and input gradients of an autodiff twin for the upstream gradient dout."""
    tensors = [ad.Tensor(x, requires_grad=True) for x in inputs]
    out = twin(*tensors, **kwargs)
    out.backward(dout)
    return out.data, tuple(np.zeros_like(x) if t.grad is None else t.grad for x, t in zip(inputs, tensors))


def assert_twin_agrees(forward, backward, twin, inputs, rng, **kwargs):
    out, cache = forward(*inputs, **kwargs)
    dout = rng.standard_normal(out.shape)
    manual = backward(dout, cache)
    manual = manual if isinstance(manual, tuple) else (manual,)
    value, grads = twin_grads(twin, inputs, dout, **kwargs)
    np.testing.assert_allclose(value, out, rtol=1e-12, atol=1e-14)
    for m, g in zip(manual, grads):
        np.testing.assert_allclose(g, m, rtol=1e-10, atol=1e-12)


def read_weightings(rng, B, R, N):
    return rng.dirichlet(np.ones(N), size=(B, R)) * rng.uniform(0.5, 1.0, size=(B, R, 1))   # in Delta_N


def separated_usages(rng, shape, gap_grid=41):
    """Usages from a grid with step 0.025 (ties impossible, incl. exactly 0 and 1), plus a small jitter
    on the interior points so values are not all round."""
    N = shape[-1]
    grid = np.linspace(0.0, 1.0, gap_grid)
    flat = np.stack([rng.choice(grid, size=N, replace=False) for _ in range(int(np.prod(shape[:-1])))])
    jitter = rng.uniform(-0.005, 0.005, size=flat.shape) * ((flat > 0) & (flat < 1))
    return (flat + jitter).reshape(shape)


# ----------------------------------------------------------------- retention
@FAST
@given(B=shape_B, R=shape_R, N=shape_N, seed=seeds)
def test_retention_backward_matches_central_differences(B, R, N, seed):
    rng = np.random.default_rng(seed)
    free_gates = rng.uniform(0.05, 0.95, size=(B, R))
    w_r_prev = read_weightings(rng, B, R, N)
    check_pair(A.retention_forward, A.retention_backward, (free_gates, w_r_prev),
               ("free_gates", "w_r_prev"), rng)


def saturated_retention_inputs(rng, B=2, R=3, N=5):
    """Head 0 frees slot 2 completely (f = 1, one-hot read): a factor q is exactly 0."""
    free_gates = rng.uniform(0.2, 0.8, size=(B, R))
    w_r_prev = read_weightings(rng, B, R, N)
    free_gates[:, 0] = 1.0
    w_r_prev[:, 0] = np.eye(N)[2]
    return free_gates, w_r_prev


def test_retention_backward_with_a_saturated_gate_uses_products_of_others():
    rng = np.random.default_rng(1)
    inputs = saturated_retention_inputs(rng)
    psi, cache, dout = check_pair(A.retention_forward, A.retention_backward, inputs,
                                  ("free_gates", "w_r_prev"), rng)
    assert np.all(psi[:, 2] == 0.0)
    # the gradient through the zero factor is the product of the other heads' factors: nonzero
    dfree, _ = A.retention_backward(dout, cache)
    assert np.all(dfree[:, 0] != 0.0)


def test_planted_division_in_retention_backward_is_caught():
    def retention_backward_by_division(dpsi, cache):           # psi / q_i: 0/0 where q_i = 0
        free_gates, w_r_prev, q = cache
        with np.errstate(divide="ignore", invalid="ignore"):
            dq = dpsi[:, None, :] * np.prod(q, axis=1)[:, None, :] / q
        return -np.sum(dq * w_r_prev, axis=-1), -free_gates[..., None] * dq

    rng = np.random.default_rng(2)
    inputs = saturated_retention_inputs(rng)
    with pytest.raises(AssertionError, match="free_gates"):
        check_pair(A.retention_forward, retention_backward_by_division, inputs, ("free_gates", "w_r_prev"), rng)


def test_product_of_others_equals_the_direct_products():
    rng = np.random.default_rng(3)
    q = rng.uniform(-1, 1, size=(2, 4, 3))
    q[0, 1, 0] = 0.0
    others = A.product_of_others(q, axis=1)
    for i in range(4):
        expected = np.prod(np.delete(q, i, axis=1), axis=1)
        np.testing.assert_allclose(others[:, i], expected, rtol=1e-14, atol=0)


def test_retention_in_unit_interval_and_errors():
    rng = np.random.default_rng(4)
    psi, _ = A.retention_forward(rng.uniform(0, 1, (3, 2)), read_weightings(rng, 3, 2, 7))
    assert np.all((psi >= 0) & (psi <= 1))
    with pytest.raises(ValueError, match=r"\(B, R, N\)"):
        A.retention_forward(np.ones((3, 2)), np.ones((3, 7)))
    with pytest.raises(ValueError, match=r"\(B, R\)"):
        A.retention_forward(np.ones((3, 1)), np.ones((3, 2, 7)))


# ----------------------------------------------------------------- usage
def usage_inputs(rng, B, N):
    return (rng.uniform(0, 1, (B, N)), rng.dirichlet(np.ones(N), size=B) * rng.uniform(0.2, 1, (B, 1)),
            rng.uniform(0, 1, (B, N)))


@FAST
@given(B=shape_B, N=shape_N, seed=seeds)
def test_usage_backward_matches_central_differences(B, N, seed):
    rng = np.random.default_rng(seed)
    check_pair(A.usage_forward, A.usage_backward, usage_inputs(rng, B, N), ("u_prev", "w_w_prev", "psi"), rng)


def test_usage_deepmind_mode_stops_the_write_gradient_only():
    rng = np.random.default_rng(5)
    u_prev, w_w_prev, psi = usage_inputs(rng, 2, 5)
    u, cache = A.usage_forward(u_prev, w_w_prev, psi, write_grad=False)
    np.testing.assert_array_equal(u, A.usage_forward(u_prev, w_w_prev, psi)[0])   # same forward
    du = rng.standard_normal(u.shape)
    du_prev, dw_w_prev, dpsi = A.usage_backward(du, cache)
    assert np.all(dw_w_prev == 0.0)
    # the other inputs are differentiated as usual, with w_w_prev held at its recorded value
    numeric = numeric_vjp(lambda a, c: A.usage_forward(a, w_w_prev, c)[0], (u_prev, psi), du)
    assert_grads_close((du_prev, dpsi), numeric, ("u_prev", "psi"))


def test_planted_stop_gradient_in_paper_mode_is_caught():
    def usage_backward_dropping_the_write_term(du, cache):
        du_prev, _, dpsi = A.usage_backward(du, cache)
        return du_prev, np.zeros_like(du_prev), dpsi

    rng = np.random.default_rng(6)
    with pytest.raises(AssertionError, match="w_w_prev"):
        check_pair(A.usage_forward, usage_backward_dropping_the_write_term, usage_inputs(rng, 2, 4),
                   ("u_prev", "w_w_prev", "psi"), rng)


def test_usage_invariants_full_write_full_free_and_range():
    rng = np.random.default_rng(7)
    B, R, N = 2, 2, 6
    u_prev = rng.uniform(0, 1, (B, N))
    w_w_prev = np.zeros((B, N))
    w_w_prev[:, 4] = 1.0                                          # full write to slot 4
    psi, _ = A.retention_forward(np.zeros((B, R)), read_weightings(rng, B, R, N))
    u, _ = A.usage_forward(u_prev, w_w_prev, psi)
    assert np.all(u[:, 4] == 1.0)                                 # a full write makes usage exactly 1
    free_gates = np.array([[1.0, 0.3], [1.0, 0.9]])               # head 0 frees slot 2 completely
    w_r_prev = read_weightings(rng, B, R, N)
    w_r_prev[:, 0] = np.eye(N)[2]
    u, _ = A.usage_update_forward(u_prev, w_w_prev, free_gates, w_r_prev)
    assert np.all(u[:, 2] == 0.0)                                 # a full free makes it exactly 0
    u, _ = A.usage_update_forward(*usage_inputs(rng, 4, N)[:2], rng.uniform(0, 1, (4, 3)),
                                  read_weightings(rng, 4, 3, N))
    assert np.all((u >= 0.0) & (u <= 1.0))


@FAST
@given(B=shape_B, R=shape_R, N=shape_N, write_grad=st.booleans(), seed=seeds)
def test_usage_update_backward_matches_central_differences(B, R, N, write_grad, seed):
    rng = np.random.default_rng(seed)
    u_prev, w_w_prev, _ = usage_inputs(rng, B, N)
    inputs = (u_prev, w_w_prev, rng.uniform(0.05, 0.95, (B, R)), read_weightings(rng, B, R, N))
    names = ("u_prev", "w_w_prev", "free_gates", "w_r_prev")
    if write_grad:
        check_pair(A.usage_update_forward, A.usage_update_backward, inputs, names, rng)
    else:                                                         # w_w_prev is a recorded constant
        u, cache = A.usage_update_forward(*inputs, write_grad=False)
        du = rng.standard_normal(u.shape)
        grads = A.usage_update_backward(du, cache)
        assert np.all(grads[1] == 0.0)
        numeric = numeric_vjp(lambda a, f, w: A.usage_update_forward(a, w_w_prev, f, w)[0],
                              (inputs[0], inputs[2], inputs[3]), du)
        assert_grads_close((grads[0], grads[2], grads[3]), numeric, ("u_prev", "free_gates", "w_r_prev"))


def test_usage_errors_name_the_shape():
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        A.usage_forward(np.zeros(4), np.zeros(4), np.ones(4))
    with pytest.raises(ValueError, match=r"psi must have shape \(B, N\)"):
        A.usage_forward(np.zeros((2, 4)), np.zeros((2, 4)), np.ones((2, 5)))
    with pytest.raises(ValueError, match=r"w_r_prev must have shape \(B, R, N\)"):
        A.usage_update_forward(np.zeros((2, 4)), np.zeros((2, 4)), np.ones((2, 1)), np.ones((2, 1, 5)))
    with pytest.raises(ValueError, match="dtype"):
        A.usage_forward(np.zeros((2, 4), dtype=complex), np.zeros((2, 4)), np.ones((2, 4)))


# ----------------------------------------------------------------- allocation
@FAST
@given(B=shape_B, N=shape_N, heads=st.booleans(), seed=seeds)
def test_allocation_backward_matches_central_differences(B, N, heads, seed):
    rng = np.random.default_rng(seed)
    usage = separated_usages(rng, (B, 2, N) if heads else (B, N))
    # usages are 0.015 apart or more, so +-1e-6 cannot reorder them: no replay needed
    a, cache, _ = check_pair(A.allocation_forward, A.allocation_backward, (usage,), ("usage",), rng)
    np.testing.assert_array_equal(cache.phi, np.argsort(usage, axis=-1))


@pytest.mark.parametrize("eps", [A.ALLOCATION_EPS, 0.0, 0.25])   # 0.25 makes a lost (1 - eps) visible
def test_allocation_backward_at_usages_exactly_0_and_1_with_replay(eps):
    rng = np.random.default_rng(8)
    usage = np.array([[0.0, 1.0, 0.0, 0.3, 1.0, 0.0],
                      [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
                      [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                      [0.7, 0.0, 1.0, 0.2, 0.0, 0.5]])
    a, cache = A.allocation_forward(usage, eps=eps)
    da = rng.standard_normal(a.shape)
    analytic = A.allocation_backward(da, cache)
    # ties at 0 and 1: perturbed passes replay the recorded free list
    numeric = numeric_vjp(lambda u: A.allocation_forward(u, phi=cache.phi, eps=eps)[0], (usage,), da)
    assert_grads_close((analytic,), numeric, ("usage",))
    assert analytic[0, 0] != 0.0               # the first exact-zero factor carries gradient (x_k = 0)


def allocation_backward_by_division(da, cache):
    """The spec's division form, dx_k = -da_k P_k + (1/x_k) sum_{j>k} da_j a_j: fine for x >= 1e-6,
    0/0 when eps = 0 and a usage is exactly 0."""
    phi, x, prefix, eps = cache
    da_sorted = np.take_along_axis(da, phi, axis=-1)
    a_sorted = (1.0 - x) * prefix
    later = np.cumsum((da_sorted * a_sorted)[..., ::-1], axis=-1)[..., ::-1] - da_sorted * a_sorted
    with np.errstate(divide="ignore", invalid="ignore"):
        dx = -da_sorted * prefix + later / x
    du = np.empty_like(dx)
    np.put_along_axis(du, phi, (1.0 - eps) * dx, axis=-1)
    return du


def test_division_form_agrees_when_floored_and_is_caught_at_exact_zero():
    rng = np.random.default_rng(9)
    usage = np.array([[0.0, 0.6, 0.0, 0.3, 1.0]])
    a, cache = A.allocation_forward(usage)                        # floored: x >= 1e-6
    da = rng.standard_normal(a.shape)
    np.testing.assert_allclose(allocation_backward_by_division(da, cache),
                               A.allocation_backward(da, cache), rtol=1e-9, atol=1e-15)
    a, cache = A.allocation_forward(usage, eps=0.0)               # unfloored: exact zero factors
    numeric = numeric_vjp(lambda u: A.allocation_forward(u, phi=cache.phi, eps=0.0)[0], (usage,), da)
    assert_grads_close((A.allocation_backward(da, cache),), numeric, ("usage",))
    with pytest.raises(AssertionError, match="usage"):
        assert_grads_close((allocation_backward_by_division(da, cache),), numeric, ("usage",))


def test_planted_dropped_cross_term_in_allocation_backward_is_caught():
    def allocation_backward_diagonal_only(da, cache):            # forgets d a_j / d x_k for k < j
        phi, x, prefix, eps = cache
        du = np.empty_like(x)
        np.put_along_axis(du, phi, -(1.0 - eps) * np.take_along_axis(da, phi, axis=-1) * prefix, axis=-1)
        return du

    rng = np.random.default_rng(10)
    with pytest.raises(AssertionError, match="usage"):
        check_pair(A.allocation_forward, allocation_backward_diagonal_only,
                   (separated_usages(rng, (2, 5)),), ("usage",), rng)


def test_allocation_invariants():
    rng = np.random.default_rng(11)
    eps = A.ALLOCATION_EPS
    usage = rng.uniform(0, 1, size=(16, 9))
    a, _ = A.allocation_forward(usage)
    uh = eps + (1 - eps) * usage
    assert np.all((a >= 0) & (a <= 1)) and np.all(a.sum(-1) <= 1 + 1e-12)            # Delta_N
    np.testing.assert_allclose(a.sum(-1), 1.0 - np.prod(uh, axis=-1), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(a.argmax(-1), usage.argmin(-1))                     # unique minima
    a, _ = A.allocation_forward(np.ones((2, 5)))
    assert np.all(a == 0.0)                                       # all memory used: nothing to allocate


def test_fresh_memory_allocates_slots_in_index_order():
    eps = A.ALLOCATION_EPS
    a, cache = A.allocation_forward(np.zeros((2, 4)))
    expected = (1 - eps) * eps ** np.arange(4)                    # spec B.9: stable sort, ties -> lower index
    np.testing.assert_allclose(a, np.broadcast_to(expected, (2, 4)), rtol=1e-14, atol=0)
    np.testing.assert_array_equal(cache.phi, np.broadcast_to(np.arange(4), (2, 4)))
    a, _ = A.allocation_forward(np.array([[0.5, 0.0, 0.0, 0.7, 0.0]]))
    assert a.argmax() == 1                                        # first of the free slots 1, 2, 4
    assert a[0, 1] > a[0, 2] > a[0, 4] > a[0, 0] > a[0, 3]
    np.testing.assert_array_equal(A.free_list(np.array([[0.5, 0.0, 0.0, 0.7, 0.0]])), [[1, 2, 4, 0, 3]])


def test_allocation_replay_is_bit_identical_and_actually_used():
    rng = np.random.default_rng(12)
    usage = rng.uniform(0, 1, (3, 6))
    a, cache = A.allocation_forward(usage)
    replayed, replay_cache = A.allocation_forward(usage, phi=cache.phi)
    np.testing.assert_array_equal(replayed, a)
    da = rng.standard_normal(a.shape)
    np.testing.assert_array_equal(A.allocation_backward(da, replay_cache), A.allocation_backward(da, cache))
    # a nearby usage that reorders two slots: replay keeps the old list, a fresh sort does not
    nudged = usage.copy()
    order = cache.phi[0]
    nudged[0, order[0]], nudged[0, order[1]] = usage[0, order[1]], usage[0, order[0]]
    assert not np.array_equal(A.allocation_forward(nudged, phi=cache.phi)[0], A.allocation_forward(nudged)[0])


def test_allocation_errors():
    with pytest.raises(ValueError, match=r"\(B, N\) or \(B, H, N\)"):
        A.allocation_forward(np.zeros(5))
    with pytest.raises(ValueError, match="phi"):
        A.allocation_forward(np.zeros((2, 5)), phi=np.zeros((2, 5), dtype=int))       # not a permutation
    with pytest.raises(ValueError, match="phi"):
        A.allocation_forward(np.zeros((2, 5)), phi=np.arange(5))                       # wrong shape
    with pytest.raises(ValueError, match="eps"):
        A.allocation_forward(np.zeros((2, 5)), eps=1.0)


# ----------------------------------------------------------------- write weighting
def write_inputs(rng, B, N, H=None):
    lead = (B,) if H is None else (B, H)
    a, _ = A.allocation_forward(rng.uniform(0, 1, lead + (N,)))
    c_w = rng.dirichlet(np.ones(N), size=lead)
    return a, c_w, rng.uniform(0.05, 0.95, lead + (1,)), rng.uniform(0.05, 0.95, lead + (1,))


@FAST
@given(B=shape_B, N=shape_N, H=st.sampled_from([None, 1, 2]), seed=seeds)
def test_write_weighting_backward_matches_central_differences(B, N, H, seed):
    rng = np.random.default_rng(seed)
    w_w, _, _ = check_pair(A.write_weighting_forward, A.write_weighting_backward, write_inputs(rng, B, N, H),
                           ("a", "c_w", "g_a", "g_w"), rng)
    assert np.all((w_w >= 0) & (w_w <= 1)) and np.all(w_w.sum(-1) <= 1 + 1e-12)     # Delta_N


def test_write_weighting_gates_and_errors():
    rng = np.random.default_rng(13)
    a, c_w, g_a, _ = write_inputs(rng, 2, 5)
    assert np.all(A.write_weighting_forward(a, c_w, g_a, np.zeros((2, 1)))[0] == 0.0)   # g_w = 0: no write
    np.testing.assert_array_equal(A.write_weighting_forward(a, c_w, np.ones((2, 1)), np.ones((2, 1)))[0], a)
    with pytest.raises(ValueError, match=r"g_a must have shape \(B, 1\)"):
        A.write_weighting_forward(a, c_w, np.ones(2), np.ones((2, 1)))
    with pytest.raises(ValueError, match=r"c_w must have shape"):
        A.write_weighting_forward(a, c_w[:, :4], g_a, g_a)


# ----------------------------------------------------------------- autodiff twins and custom ops
@pytest.mark.parametrize("B, R, N", [(1, 1, 1), (2, 3, 5)])
def test_twins_agree_with_the_manual_pairs(B, R, N):
    rng = np.random.default_rng(14)
    free_gates, w_r_prev = saturated_retention_inputs(rng, B, R, N) if N > 2 else (
        rng.uniform(0, 1, (B, R)), read_weightings(rng, B, R, N))
    assert_twin_agrees(A.retention_forward, A.retention_backward, A.retention_autodiff,
                       (free_gates, w_r_prev), rng)
    u_prev, w_w_prev, psi = usage_inputs(rng, B, N)
    for write_grad in (True, False):
        assert_twin_agrees(A.usage_forward, A.usage_backward, A.usage_autodiff,
                           (u_prev, w_w_prev, psi), rng, write_grad=write_grad)
        assert_twin_agrees(A.usage_update_forward, A.usage_update_backward, A.usage_update_autodiff,
                           (u_prev, w_w_prev, free_gates, w_r_prev), rng, write_grad=write_grad)
    for eps in (A.ALLOCATION_EPS, 0.0):
        usage = separated_usages(rng, (B, N))
        usage[:, 0] = 0.0
        assert_twin_agrees(A.allocation_forward, A.allocation_backward, A.allocation_autodiff,
                           (usage,), rng, eps=eps)
    assert_twin_agrees(A.write_weighting_forward, A.write_weighting_backward, A.write_weighting_autodiff,
                       write_inputs(rng, B, N), rng)


def test_custom_ops_match_the_twins():
    rng = np.random.default_rng(15)
    usage = separated_usages(rng, (2, 5))
    dout = rng.standard_normal((2, 5))
    phi = A.free_list(usage)
    value, grads = twin_grads(A.allocation_op, (usage,), dout, phi=phi)
    twin_value, twin_grads_ = twin_grads(A.allocation_autodiff, (usage,), dout, phi=phi)
    np.testing.assert_allclose(value, twin_value, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grads[0], twin_grads_[0], rtol=1e-10, atol=1e-14)
    inputs = saturated_retention_inputs(rng)
    value, grads = twin_grads(A.retention_op, inputs, dout)
    twin_value, twin_grads_ = twin_grads(A.retention_autodiff, inputs, dout)
    np.testing.assert_allclose(value, twin_value, rtol=1e-12, atol=1e-15)
    for g, h in zip(grads, twin_grads_):
        np.testing.assert_allclose(g, h, rtol=1e-10, atol=1e-14)


def test_float32_stays_float32():
    rng = np.random.default_rng(16)
    usage = rng.uniform(0, 1, (2, 5)).astype(np.float32)
    a, cache = A.allocation_forward(usage)
    assert a.dtype == np.float32
    assert A.allocation_backward(np.ones_like(a), cache).dtype == np.float32
    psi, _ = A.retention_forward(np.full((2, 1), 0.5, np.float32), np.full((2, 1, 5), 0.2, np.float32))
    assert psi.dtype == np.float32
