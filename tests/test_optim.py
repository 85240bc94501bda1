"""Tests for minimem.optim (update equations, clipping, validation, state round trip) and
minimem.init (initialiser distributions and shapes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minimem import init
from minimem.optim import SGD, Adam, RMSProp, clip_grad_norm, global_norm

# Three fixed gradients for a 3-entry parameter, applied in order.
P0 = [0.5, -1.25, 2.0]
GRADS = [[0.3, -0.7, 1.1], [-0.2, 0.4, 0.9], [0.05, -1.5, 0.6]]


def run(optimizer_cls, steps=3, **kwargs):
    params = {"w": np.array(P0)}
    opt = optimizer_cls(params, **kwargs)
    history = []
    for g in GRADS[:steps]:
        opt.step({"w": np.array(g)})
        history.append(params["w"].copy())
    return history


# ----------------------------------------------------------------- hand-computed updates
def test_sgd_plain_matches_hand_computation():
    lr = 0.1
    p = list(P0)
    for k, g in enumerate(GRADS):
        p = [pi - lr * gi for pi, gi in zip(p, g)]
        np.testing.assert_allclose(run(SGD, lr=lr)[k], p, rtol=0, atol=1e-15)


def test_sgd_momentum_matches_hand_computation():
    lr, mu = 0.1, 0.9
    p, v = list(P0), [0.0] * 3
    expected = []
    for g in GRADS:
        v = [mu * vi - lr * gi for vi, gi in zip(v, g)]          # v <- mu v - lr g
        p = [pi + vi for pi, vi in zip(p, v)]                    # p <- p + v
        expected.append(p)
    # Step 2 by hand for the first entry: v1 = -0.03, v2 = 0.9 * -0.03 + 0.02 = -0.007,
    # p2 = 0.5 - 0.03 - 0.007 = 0.463.
    assert expected[1][0] == pytest.approx(0.463, abs=1e-15)
    np.testing.assert_allclose(run(SGD, lr=lr, momentum=mu), expected, rtol=1e-14)


def test_adam_matches_algorithm_1():
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    p, m, v = list(P0), [0.0] * 3, [0.0] * 3
    expected = []
    for t, g in enumerate(GRADS, start=1):
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
        m_hat = [mi / (1 - b1 ** t) for mi in m]
        v_hat = [vi / (1 - b2 ** t) for vi in v]
        p = [pi - lr * mh / (math.sqrt(vh) + eps) for pi, mh, vh in zip(p, m_hat, v_hat)]
        expected.append(p)
    # The first Adam step moves every entry by almost exactly lr against the gradient's sign.
    np.testing.assert_allclose(np.array(expected[0]) - P0, -lr * np.sign(GRADS[0]), rtol=1e-6)
    np.testing.assert_allclose(run(Adam, lr=lr), expected, rtol=1e-14)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("centered", [False, True])
def test_rmsprop_matches_graves_equations(momentum, centered):
    lr, rho, eps = 1e-3, 0.95, 1e-4
    p, s, a, v = list(P0), [0.0] * 3, [0.0] * 3, [0.0] * 3
    expected = []
    for g in GRADS:
        s = [rho * si + (1 - rho) * gi * gi for si, gi in zip(s, g)]   # eq. (38)
        a = [rho * ai + (1 - rho) * gi for ai, gi in zip(a, g)]        # eq. (39)
        if centered:
            d = [math.sqrt(si - ai * ai + eps) for si, ai in zip(s, a)]
        else:
            d = [math.sqrt(si + eps) for si in s]
        step = [-lr * gi / di for gi, di in zip(g, d)]
        if momentum:
            v = [momentum * vi + st for vi, st in zip(v, step)]        # eq. (40)
            step = v
        p = [pi + st for pi, st in zip(p, step)]                      # eq. (41)
        expected.append(p)
    got = run(RMSProp, lr=lr, decay=rho, momentum=momentum, eps=eps, centered=centered)
    np.testing.assert_allclose(got, expected, rtol=1e-14)


@pytest.mark.parametrize("make", [
    lambda p: Adam(p, lr=0.05),
    lambda p: RMSProp(p, lr=0.01, momentum=0.9),
    lambda p: RMSProp(p, lr=0.01, momentum=0.0, centered=True),
    lambda p: SGD(p, lr=0.05, momentum=0.9),
], ids=["adam", "rmsprop", "rmsprop-centered", "sgd-momentum"])
def test_optimisers_minimise_an_ill_conditioned_quadratic(make):
    rng = np.random.default_rng(0)
    curvature = np.array([0.5, 1.0, 4.0, 9.0])            # loss = 0.5 sum c (x - x*)^2
    target = rng.standard_normal(4)
    params = {"x": np.zeros(4), "y.b": np.full((2, 2), 3.0)}
    opt = make(params)

    def loss_and_grads():
        dx = params["x"] - target
        return (0.5 * np.sum(curvature * dx ** 2) + 0.5 * np.sum(params["y.b"] ** 2),
                {"x": curvature * dx, "y.b": params["y.b"].copy()})

    start, _ = loss_and_grads()
    for _ in range(1500):
        _, grads = loss_and_grads()
        opt.step(grads)
    end, _ = loss_and_grads()
    assert end < 1e-3 * start


def test_float32_parameters_stay_float32():
    params = {"w": np.ones(3, dtype=np.float32)}
    opt = Adam(params, lr=0.1)
    arr = params["w"]
    opt.step({"w": np.array([1.0, -1.0, 0.5])})            # float64 gradient, float32 param
    assert params["w"] is arr and arr.dtype == np.float32
    assert all(v.dtype == np.float32 for k, v in opt.state_dict().items() if ".w" in k)


def test_step_updates_arrays_in_place():
    w = np.ones((2, 3))
    params = {"layer.W": w}
    SGD(params, lr=0.5).step({"layer.W": np.ones((2, 3))})
    assert params["layer.W"] is w
    np.testing.assert_array_equal(w, np.full((2, 3), 0.5))


# ----------------------------------------------------------------- validation
def make_params():
    return {"controller.W_x": np.ones((4, 8)), "controller.b": np.zeros(8)}


@pytest.mark.parametrize("cls", [SGD, Adam, RMSProp])
def test_missing_gradient_names_the_key_and_shape(cls):
    opt = cls(make_params())
    with pytest.raises(ValueError, match=r"controller\.b.*missing.*\(8,\)"):
        opt.step({"controller.W_x": np.ones((4, 8))})


def test_extra_gradient_is_named():
    opt = Adam(make_params())
    grads = {"controller.W_x": np.ones((4, 8)), "controller.b": np.zeros(8), "read0.W": np.ones(2)}
    with pytest.raises(ValueError, match=r"read0\.W"):
        opt.step(grads)


def test_misshaped_gradient_names_key_and_expected_shape():
    opt = Adam(make_params())
    grads = {"controller.W_x": np.ones((8, 4)), "controller.b": np.zeros(8)}
    with pytest.raises(ValueError, match=r"controller\.W_x.*\(8, 4\).*expected shape \(4, 8\)"):
        opt.step(grads)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_gradient_is_named_and_nothing_changes(bad):
    params = make_params()
    before = {k: v.copy() for k, v in params.items()}
    opt = RMSProp(params)
    grads = {"controller.W_x": np.ones((4, 8)), "controller.b": np.zeros(8)}
    grads["controller.b"][3] = bad
    with pytest.raises(ValueError, match=r"controller\.b.*non-finite"):
        opt.step(grads)
    for k in params:
        np.testing.assert_array_equal(params[k], before[k])
    assert opt.num_steps == 0


def test_bad_hyperparameters_raise():
    with pytest.raises(ValueError, match="lr"):
        Adam(make_params(), lr=-1.0)
    with pytest.raises(ValueError, match="beta1"):
        Adam(make_params(), beta1=1.0)
    with pytest.raises(ValueError, match="momentum"):
        SGD(make_params(), momentum=1.5)
    with pytest.raises(ValueError, match="eps"):
        RMSProp(make_params(), eps=0.0)
    opt = SGD(make_params())
    with pytest.raises(ValueError, match="lr"):
        opt.lr = float("nan")
    with pytest.raises(ValueError, match="floating-point"):
        SGD({"n": np.arange(3)})


# ----------------------------------------------------------------- clipping
def test_clip_grad_norm_scales_to_max_norm_without_mutation():
    grads = {"a": np.array([3.0, 0.0]), "b.c": np.array([[0.0], [4.0]])}   # global norm 5
    originals = {k: v.copy() for k, v in grads.items()}
    clipped, norm = clip_grad_norm(grads, 1.0)
    assert norm == pytest.approx(5.0, rel=1e-15)
    np.testing.assert_allclose(clipped["a"], [0.6, 0.0], rtol=1e-15)
    np.testing.assert_allclose(clipped["b.c"], [[0.0], [0.8]], rtol=1e-15)
    assert global_norm(clipped) == pytest.approx(1.0, rel=1e-15)
    for k in grads:
        np.testing.assert_array_equal(grads[k], originals[k])        # input untouched
        assert clipped[k] is not grads[k]
    assert list(clipped) == list(grads)


def test_clip_grad_norm_below_limit_returns_equal_copies():
    grads = {"a": np.array([0.3, -0.4])}
    clipped, norm = clip_grad_norm(grads, 1.0)
    assert norm == pytest.approx(0.5)
    np.testing.assert_array_equal(clipped["a"], grads["a"])
    clipped["a"][0] = 99.0
    assert grads["a"][0] == 0.3


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.floats(-1e3, 1e3), min_size=0, max_size=5), min_size=1, max_size=4),
       st.floats(1e-3, 1e3))
def test_clip_grad_norm_property(values, max_norm):
    grads = {f"g{i}": np.array(v) for i, v in enumerate(values)}
    flat = np.concatenate([g.ravel() for g in grads.values()])
    clipped, norm = clip_grad_norm(grads, max_norm)
    # math.hypot is scaled (no underflow of tiny squares), unlike np.linalg.norm.
    assert norm == pytest.approx(math.hypot(*flat), rel=1e-12)
    assert global_norm(clipped) <= max_norm * (1 + 1e-12)
    if norm <= max_norm:
        for k in grads:
            np.testing.assert_array_equal(clipped[k], grads[k])


def test_clip_grad_norm_huge_values_do_not_overflow():
    clipped, norm = clip_grad_norm({"a": np.array([3e200, 4e200])}, 1.0)
    assert norm == pytest.approx(5e200)
    np.testing.assert_allclose(clipped["a"], [0.6, 0.8])


def test_clip_grad_norm_rejects_nan_and_bad_max_norm():
    with pytest.raises(ValueError, match=r"'x'"):
        clip_grad_norm({"x": np.array([1.0, np.nan])}, 1.0)
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm({"x": np.ones(2)}, 0.0)


# ----------------------------------------------------------------- state round trip
OPTIMISERS = {
    "sgd": lambda p: SGD(p, lr=0.05, momentum=0.9),
    "adam": lambda p: Adam(p, lr=0.01),
    "rmsprop": lambda p: RMSProp(p, lr=0.01, momentum=0.9, centered=True),
}


@pytest.mark.parametrize("name", list(OPTIMISERS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_state_dict_resume_is_bit_identical(name, dtype):
    rng = np.random.default_rng(1)
    init_params = {"controller.W_x": rng.standard_normal((3, 4)).astype(dtype),
                   "controller.b": rng.standard_normal(4).astype(dtype)}
    grads = [{k: rng.standard_normal(v.shape) for k, v in init_params.items()} for _ in range(6)]

    straight = {k: v.copy() for k, v in init_params.items()}
    opt = OPTIMISERS[name](straight)
    for g in grads:
        opt.step(g)

    first = {k: v.copy() for k, v in init_params.items()}
    opt1 = OPTIMISERS[name](first)
    for g in grads[:3]:
        opt1.step(g)
    state = opt1.state_dict()
    assert f"{name}.step" in state and int(state[f"{name}.step"]) == 3
    resumed = {k: v.copy() for k, v in first.items()}
    opt2 = OPTIMISERS[name](resumed)
    opt2.load_state_dict(state)
    for g in grads[3:]:
        opt2.step(g)
    for k in straight:
        assert resumed[k].tobytes() == straight[k].tobytes(), k


def test_state_dict_names_are_flat_and_dotted():
    opt = Adam(make_params())
    assert set(opt.state_dict()) == {
        "adam.step", "adam.lr", "adam.m.controller.W_x", "adam.m.controller.b",
        "adam.v.controller.W_x", "adam.v.controller.b"}
    assert set(SGD(make_params()).state_dict()) == {"sgd.step", "sgd.lr"}


def test_state_dict_is_a_copy_and_restores_lr():
    opt = Adam(make_params(), lr=0.01)
    state = opt.state_dict()
    state["adam.m.controller.b"][:] = 7.0
    assert not np.any(opt.slots["m"]["controller.b"])
    other = Adam(make_params(), lr=0.5)
    other.load_state_dict(state)
    assert other.lr == 0.01
    np.testing.assert_array_equal(other.slots["m"]["controller.b"], 7.0)


def test_load_state_dict_mismatches_are_named():
    state = Adam(make_params()).state_dict()
    bad = dict(state)
    bad["adam.v.controller.W_x"] = np.zeros((8, 4))
    with pytest.raises(ValueError, match=r"adam\.v\.controller\.W_x.*\(4, 8\).*\(8, 4\)"):
        Adam(make_params()).load_state_dict(bad)
    bad = dict(state)
    del bad["adam.m.controller.b"]
    with pytest.raises(ValueError, match=r"missing: adam\.m\.controller\.b"):
        Adam(make_params()).load_state_dict(bad)
    with pytest.raises(ValueError, match="unexpected"):
        SGD(make_params()).load_state_dict(state)


# ----------------------------------------------------------------- init
@pytest.mark.parametrize("shape", [(6, 3), (3, 6), (4, 4), (2, 3, 5), (1, 7)])
def test_orthogonal_is_orthonormal_along_the_short_side(shape):
    W = init.orthogonal(np.random.default_rng(0), shape, gain=2.0)
    assert W.shape == shape and W.dtype == np.float64
    M = W.reshape(-1, shape[-1]) / 2.0
    rows, cols = M.shape
    gram = M.T @ M if rows >= cols else M @ M.T
    np.testing.assert_allclose(gram, np.eye(min(rows, cols)), atol=1e-12)


def test_orthogonal_sign_fix_makes_it_unbiased():
    # Without the sign fix, numpy's QR gives a biased diagonal; with it, the mean of many draws
    # of a 2x2 orthogonal matrix is close to zero.
    rng = np.random.default_rng(0)
    mean = np.mean([init.orthogonal(rng, (2, 2)) for _ in range(4000)], axis=0)
    assert np.max(np.abs(mean)) < 0.05


def test_xavier_bounds_and_std():
    rng = np.random.default_rng(0)
    W = init.xavier_uniform(rng, (200, 300))
    bound = math.sqrt(6.0 / 500)
    assert np.max(np.abs(W)) <= bound and np.max(np.abs(W)) > 0.99 * bound
    W = init.xavier_normal(rng, (200, 300), gain=3.0)
    assert np.std(W) == pytest.approx(3.0 * math.sqrt(2.0 / 500), rel=0.02)
    assert init.fans((3, 3, 4, 8)) == (36, 72)             # (kh, kw, C_in, C_out)


def test_float32_init_is_the_float64_init_rounded():
    for fn, args in [(init.xavier_uniform, ()), (init.xavier_normal, ()), (init.orthogonal, ()),
                     (init.uniform, (0.1,)), (init.normal, (0.1,))]:
        w64 = fn(np.random.default_rng(3), (4, 5), *args)
        w32 = fn(np.random.default_rng(3), (4, 5), *args, dtype=np.float32)
        assert w32.dtype == np.float32
        np.testing.assert_array_equal(w32, w64.astype(np.float32))


def test_uniform_zeros_and_validation():
    rng = np.random.default_rng(0)
    u = init.uniform(rng, (1000,), scale=0.25)
    assert u.shape == (1000,) and np.all(np.abs(u) <= 0.25)
    z = init.zeros(rng, (2, 3), dtype=np.float32)
    assert z.dtype == np.float32 and not np.any(z)
    assert init.zeros(None, 3).shape == (3,)
    with pytest.raises(ValueError, match="Generator"):
        init.xavier_uniform(0, (2, 2))
    with pytest.raises(ValueError, match="floating-point"):
        init.uniform(rng, (2,), 1.0, dtype=np.int64)
    with pytest.raises(ValueError, match="at least 2 axes"):
        init.xavier_uniform(rng, (5,))
    with pytest.raises(ValueError, match="non-negative"):
        init.zeros(None, (2, -1))


def test_adamw_is_adam_without_decay_and_decays_the_parameter_apart_from_the_gradient():
    from minimem.optim import AdamW
    np.testing.assert_array_equal(run(AdamW, lr=0.05, weight_decay=0.0), run(Adam, lr=0.05))
    params = {"w": np.array([1.0, -2.0, 4.0])}
    opt = AdamW(params, lr=0.1, weight_decay=0.5)
    for _ in range(3):
        opt.step({"w": np.zeros(3)})                        # no gradient: only the decay moves p
    np.testing.assert_allclose(params["w"], np.array([1.0, -2.0, 4.0]) * (1 - 0.1 * 0.5) ** 3, rtol=1e-15)
    assert "adamw.m.w" in opt.state_dict() and opt.hyperparameters()["weight_decay"] == 0.5
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
        AdamW({"w": np.zeros(2)}, weight_decay=-1.0)


def test_warmup_cosine_schedule():
    from minimem.optim import warmup_cosine
    lr = warmup_cosine(0.1, warmup=4, steps=20)
    np.testing.assert_allclose([lr(s) for s in range(4)], [0.025, 0.05, 0.075, 0.1])
    assert lr(4) == pytest.approx(0.1) and lr(12) == pytest.approx(0.05) and lr(20) == pytest.approx(0.0, abs=1e-15)
    assert all(lr(s) >= lr(s + 1) for s in range(4, 20))       # decays after the warm-up
    demo = warmup_cosine(1e-3, warmup=200, steps=1000)           # the NAM demos' schedule
    assert demo(0) == pytest.approx(1e-3 / 200) and demo(199) == pytest.approx(1e-3) and demo(999) < 1e-7
    short = warmup_cosine(0.1, warmup=100, steps=3)              # warm-up cut to steps - 1
    assert short(1) == pytest.approx(0.1)
