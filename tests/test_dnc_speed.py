"""The DNC speed work (issue 11) rewrote some memory primitives to make fewer temporaries and calls
and keeps the T link matrices of a sequence in one (T, B, N, N) array; these tests pin that each
rewrite computes exactly (bit for bit) what the plain one-line formula of its docstring computes, in
float64 and float32, so a later "simplification" cannot drift silently. The controller's eq. (1) is
split around the time loop (x_t's share before it, y_t and the weight gradients after it); the last
tests pin that split against the per-step autodiff twin. (Gradients against finite differences are
checked in test_linkage / test_allocation / test_ntm / test_dnc.)"""

import numpy as np
import pytest

from minimem.memory import allocation as A
from minimem.memory import linkage as K
from minimem.memory import read_write as RW

DTYPES = (np.float64, np.float32)


def simplex(rng, shape, dtype):
    w = rng.dirichlet(np.ones(shape[-1]), size=shape[:-1]) * rng.uniform(0.5, 1.0, size=shape[:-1] + (1,))
    return w.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_link_forward_equals_the_one_line_formula(dtype):
    rng = np.random.default_rng(0)
    B, N = 3, 7
    L_prev = rng.uniform(0, 0.2, (B, N, N)).astype(dtype)
    w_w, p_prev = simplex(rng, (B, N), dtype), simplex(rng, (B, N), dtype)
    L, _ = K.link_forward(L_prev, w_w, p_prev)
    expected = (1.0 - w_w[:, :, None] - w_w[:, None, :]) * L_prev + w_w[:, :, None] * p_prev[:, None, :]
    expected = np.maximum(expected, 0.0)
    expected[:, np.arange(N), np.arange(N)] = 0.0
    assert L.dtype == dtype
    np.testing.assert_array_equal(L, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_link_backward_equals_the_formulas(dtype):
    rng = np.random.default_rng(1)
    B, N = 2, 6
    L_prev = rng.uniform(0, 0.2, (B, N, N)).astype(dtype)
    w_w, p_prev = simplex(rng, (B, N), dtype), simplex(rng, (B, N), dtype)
    _, cache = K.link_forward(L_prev, w_w, p_prev)
    dL = rng.standard_normal((B, N, N)).astype(dtype)
    dL_copy = dL.copy()
    dL_prev, _, _ = K.link_backward(dL, cache)
    np.testing.assert_array_equal(dL, dL_copy)                 # the default leaves dL untouched
    G = dL.copy()
    G[:, np.arange(N), np.arange(N)] = 0.0
    expected = (1.0 - w_w[:, :, None] - w_w[:, None, :]) * G
    assert dL_prev.dtype == dtype
    np.testing.assert_array_equal(dL_prev, expected)
    assert not np.shares_memory(dL_prev, dL)


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_head_write_backward_equals_the_general_formula(dtype):
    """The one-write-head branch (the DNC) against the formulas of the docstring with keep cached."""
    rng = np.random.default_rng(2)
    B, N, W = 2, 5, 4
    M = rng.standard_normal((B, N, W)).astype(dtype)
    w = simplex(rng, (B, 1, N), dtype)
    e = rng.uniform(0, 1, (B, 1, W)).astype(dtype)
    a = rng.standard_normal((B, 1, W)).astype(dtype)
    _, cache = RW.write_forward(M, w, e, a)
    assert cache.keep is None                                   # the branch under test
    dM_new = rng.standard_normal((B, N, W)).astype(dtype)
    dM, dw, de, da = RW.write_backward(dM_new, cache)
    keep = 1.0 - w[:, 0, :, None] * e[:, 0, None, :]
    np.testing.assert_array_equal(dM, dM_new * keep)
    general = RW.write_backward(dM_new, cache._replace(keep=keep))
    for mine, theirs in zip((dM, dw, de, da), general):
        np.testing.assert_array_equal(mine, theirs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K_heads", [1, 2, 4, 5])
def test_product_of_others_is_the_direct_product_bit_for_bit(dtype, K_heads):
    rng = np.random.default_rng(3)
    q = rng.uniform(-1, 1, size=(2, K_heads, 3)).astype(dtype)
    q[0, 0, 0] = 0.0
    others = A.product_of_others(q, axis=1)
    assert others.shape == q.shape and others.dtype == dtype
    for i in range(K_heads):
        expected = np.ones_like(q[:, 0])
        for j in range(K_heads):                                 # the factors in slot order, sequentially
            if j != i:
                expected = expected * q[:, j]
        np.testing.assert_array_equal(others[:, i], expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_and_scatter_match_take_and_put_along_axis(dtype):
    rng = np.random.default_rng(4)
    for shape in [(3, 7), (2, 3, 5), (1, 1)]:
        x = rng.standard_normal(shape).astype(dtype)
        phi = np.argsort(rng.random(shape), axis=-1, kind="stable")
        np.testing.assert_array_equal(A._gather_last(x, phi), np.take_along_axis(x, phi, axis=-1))
        expected = np.empty_like(x)
        np.put_along_axis(expected, phi, x, axis=-1)
        np.testing.assert_array_equal(A._scatter_last(x, phi), expected)
        x_t = np.asfortranarray(x)                               # a non-C-ordered input
        np.testing.assert_array_equal(A._gather_last(x_t, phi), np.take_along_axis(x, phi, axis=-1))
        np.testing.assert_array_equal(A._scatter_last(x_t, phi), expected)
        np.testing.assert_array_equal(A._gather_last(x[..., ::-1], phi),
                                      np.take_along_axis(x[..., ::-1], phi, axis=-1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_link_forward_writes_into_out_of_the_right_dtype_only(dtype):
    rng = np.random.default_rng(5)
    B, N = 2, 5
    L_prev = rng.uniform(0, 0.2, (B, N, N)).astype(dtype)
    w_w, p_prev = simplex(rng, (B, N), dtype), simplex(rng, (B, N), dtype)
    expected, _ = K.link_forward(L_prev, w_w, p_prev)
    out = np.full((B, N, N), np.nan, dtype=dtype)
    L, cache = K.link_forward(L_prev, w_w, p_prev, out=out)
    assert L is out
    np.testing.assert_array_equal(L, expected)
    other = np.float32 if dtype == np.float64 else np.float64
    wrong_dtype = np.full((B, N, N), np.nan, dtype=other)
    L2, _ = K.link_forward(L_prev, w_w, p_prev, out=wrong_dtype)
    assert L2 is not wrong_dtype and L2.dtype == dtype and np.all(np.isnan(wrong_dtype))
    np.testing.assert_array_equal(L2, expected)
    with pytest.raises(ValueError, match="out must have"):
        K.link_forward(L_prev, w_w, p_prev, out=np.empty((B, N, N + 1), dtype=dtype))


def test_dnc_forward_keeps_its_links_in_one_array_with_unchanged_results():
    """dnc_forward writes L_1..L_T into one (T, B, N, N) array; each step's state and caches see
    their own slice, and the outputs equal a step-by-step run with fresh link arrays."""
    from minimem.memory import dnc as D
    config = D.DNCConfig(X=3, Y=2, N=5, W=4, R=2, H=6)
    model = D.DNC(config, np.random.default_rng(6))
    xs = np.random.default_rng(7).standard_normal((4, 2, 3))
    ys, cache = model.forward(xs)
    links = [s.L for s in cache.states]
    base = links[0].base
    assert base is not None and base.shape == (4, 2, 5, 5) and all(L.base is base for L in links)
    for t, step in enumerate(cache.steps):
        assert step.access.link.L_prev is (cache.state0.L if t == 0 else links[t - 1])
    state, ys_steps = D.initial_state(config, 2), []
    for t in range(4):                                           # no link_out: a new array every step
        y, state, _ = D.dnc_step_forward(xs[t], state, model.params, config)
        ys_steps.append(y)
        np.testing.assert_array_equal(state.L, links[t])
    np.testing.assert_array_equal(ys, np.stack(ys_steps))


# ----------------------------------------------------------------- the hoisted controller and outputs
@pytest.mark.parametrize("layers, clip, usage_write_grad", [(1, None, True), (2, 0.3, False), (3, None, True)])
def test_hoisted_engine_equals_the_per_step_autodiff_twin(layers, clip, usage_write_grad):
    """dnc_forward / dnc_backward form x_t's share of every controller layer's eq. (1) before the
    time loop, y_t after it and every weight gradient after BPTT's loop (one product each); the
    autodiff twin keeps the plain per-step formulas. Both agree to rounding on a deep, clipped,
    deepmind-mode model from a random state."""
    from gradcheck.cases.dnc import random_state
    from minimem import autodiff as ad
    from minimem.memory import dnc as D
    config = D.DNCConfig(X=3, Y=4, N=6, W=4, R=2, H=5, layers=layers, clip=clip, usage_write_grad=usage_write_grad)
    rng = np.random.default_rng(11)
    model = D.DNC(config, rng)
    xs = 2.0 * rng.standard_normal((5, 3, 3))
    state0 = random_state(rng, config, 3)
    ys, cache = model.forward(xs, state0)
    dys = rng.standard_normal(ys.shape)
    grads, dstate0 = model.backward_with_state(dys, cache)
    tparams = {k: ad.Tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}
    ys_t = D.dnc_autodiff(tparams, xs, config, state0, cache.record)
    np.testing.assert_allclose(ys_t.data, ys, rtol=1e-12, atol=1e-14)
    (ys_t * dys).sum().backward()
    assert list(grads) == list(model.params)
    for name in model.params:
        assert grads[name].shape == model.params[name].shape, name
        scale = np.max(np.abs(tparams[name].grad))
        assert scale > 0 and np.max(np.abs(grads[name] - tparams[name].grad)) <= 1e-11 * scale, name
    if clip is not None:                                          # the deepmind clip is active somewhere
        assert any(not np.all(m) for step in cache.steps for pair in step.controller.masks for m in pair)


def test_dnc_forward_output_rows_and_dtypes():
    """cache.hr holds [h_t; r_t] of every step (steps 3 and 17 run after the loop from it); ys and
    every gradient keep the model's dtype in float32."""
    from minimem.memory import dnc as D
    config = D.DNCConfig(X=3, Y=2, N=5, W=4, R=2, H=6, layers=2, dtype="float32")
    model = D.DNC(config, np.random.default_rng(8))
    xs = np.random.default_rng(9).standard_normal((4, 2, 3)).astype(np.float32)
    ys, cache = model.forward(xs)
    assert ys.dtype == np.float32 and cache.hr.shape == (4, 2, 2 * 6 + 2 * 4)
    for t, state in enumerate(cache.states):
        np.testing.assert_array_equal(cache.hr[t, :, :6], state.h[0])
        np.testing.assert_array_equal(cache.hr[t, :, 6:12], state.h[1])
        np.testing.assert_array_equal(cache.hr[t, :, 12:], state.r.reshape(2, 8))
    grads = model.backward(np.ones_like(ys), cache)
    assert all(g.dtype == np.float32 for g in grads.values())


# ------------------------------------------------------------ issue 11, third round (BLAS outer products)
@pytest.mark.parametrize("dtype", DTYPES)
def test_outer_product_is_the_broadcast_product_bit_for_bit(dtype):
    """outer_product ([x, 0] @ [y; 0], a BLAS product) gives exactly x_i * y_j, with or without out=,
    for one or two leading axes, including zeros, negative numbers and large/small magnitudes."""
    from minimem.memory.addressing import outer_product
    rng = np.random.default_rng(20)
    for lead, n, m in [((3,), 7, 5), ((2, 3), 4, 6), ((1,), 1, 1)]:
        x = (rng.standard_normal(lead + (n,)) * 10.0 ** rng.integers(-20, 20, lead + (n,))).astype(dtype)
        y = (rng.standard_normal(lead + (m,)) * 10.0 ** rng.integers(-20, 20, lead + (m,))).astype(dtype)
        x.flat[0] = 0.0
        expected = x[..., :, None] * y[..., None, :]
        got = outer_product(x, y)
        assert got.dtype == dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
        out = np.full(expected.shape, np.nan, dtype)
        assert outer_product(x, y, out=out) is out
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_link_factor_is_the_broadcast_subtraction_bit_for_bit(dtype):
    """The factor 1 - w_i - w_j as a BLAS product equals np.subtract(1 - w_i, w_j) exactly, also
    where w_i + w_j rounds to more than 1 (the case link_forward's clamp exists for)."""
    rng = np.random.default_rng(21)
    w = simplex(rng, (4, 9), dtype)
    w[0, :2] = np.array([0.7, 0.3 + 1e-7], dtype)                     # w_0 + w_1 > 1 by round-off size
    expected = np.subtract(1.0 - w[:, :, None], w[:, None, :])
    got = K._link_factor(w)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_link_backward_in_place_equals_the_copying_default(dtype):
    """overwrite_dL=True scales dL's own buffer into dL_prev; every gradient equals the default's."""
    rng = np.random.default_rng(22)
    B, N = 3, 6
    L_prev = rng.uniform(0, 0.2, (B, N, N)).astype(dtype)
    w_w, p_prev = simplex(rng, (B, N), dtype), simplex(rng, (B, N), dtype)
    _, cache = K.link_forward(L_prev, w_w, p_prev)
    dL = rng.standard_normal((B, N, N)).astype(dtype)
    default = K.link_backward(dL, cache)
    owned = dL.copy()
    in_place = K.link_backward(owned, cache, overwrite_dL=True)
    assert in_place[0] is owned
    for mine, theirs in zip(in_place, default):
        np.testing.assert_array_equal(mine, theirs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_head_write_forward_equals_the_one_line_formula(dtype):
    rng = np.random.default_rng(23)
    B, N, W = 2, 5, 4
    M = rng.standard_normal((B, N, W)).astype(dtype)
    w = simplex(rng, (B, 1, N), dtype)
    e = rng.uniform(0, 1, (B, 1, W)).astype(dtype)
    a = rng.standard_normal((B, 1, W)).astype(dtype)
    M_new, cache = RW.write_forward(M, w, e, a)
    assert cache.keep is None and M_new.dtype == dtype
    expected = M * (1.0 - w[:, 0, :, None] * e[:, 0, None, :]) + w[:, 0, :, None] * a[:, 0, None, :]
    np.testing.assert_array_equal(M_new, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_product_of_others_along_any_axis(dtype):
    rng = np.random.default_rng(24)
    q = rng.uniform(-1, 1, size=(3, 4, 5)).astype(dtype)
    for axis in (0, 1, 2, -1):
        moved = np.moveaxis(q, axis, 0)
        expected = np.stack([np.prod(np.delete(moved, i, axis=0), axis=0) for i in range(moved.shape[0])])
        np.testing.assert_allclose(A.product_of_others(q, axis), np.moveaxis(expected, 0, axis),
                                   rtol=4 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_dot_and_norm(dtype):
    from minimem.memory import addressing as AD
    rng = np.random.default_rng(25)
    x, y = rng.standard_normal((3, 4, 7)).astype(dtype), rng.standard_normal((3, 1, 7)).astype(dtype)
    got = AD.row_dot(x, y)
    assert got.shape == (3, 4) and got.dtype == dtype
    np.testing.assert_allclose(got, (x * y).sum(-1), rtol=0, atol=16 * np.finfo(dtype).eps)
    np.testing.assert_array_equal(AD._norm(x), np.sqrt((x[..., None, :] @ x[..., :, None])[..., 0, 0]
                                                       + AD.EPS_NORM))


@pytest.mark.parametrize("dtype", DTYPES)
def test_interface_sigmoid_matches_the_two_branch_form(dtype):
    """The one-ufunc sigmoid (scipy's expit) keeps the dtype, saturates to exactly 0 and 1 without
    warnings, and equals the two-branch form to a few ulp."""
    from minimem.memory.dnc_interface import sigmoid
    z = np.concatenate([np.linspace(-30, 30, 601), [-1000.0, 1000.0, 0.0]]).astype(dtype)
    e = np.exp(-np.abs(z))
    expected = np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    with np.errstate(all="raise"):
        got = sigmoid(z)
    assert got.dtype == dtype
    assert got[-3] == 0.0 and got[-2] == 1.0 and got[-1] == 0.5
    np.testing.assert_allclose(got, expected, rtol=4 * np.finfo(dtype).eps, atol=0)
