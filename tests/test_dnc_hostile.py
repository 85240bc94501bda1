"""Hostile input for the DNC (minimem.memory.dnc), spec E.2 item 3 and the issue's test list.

Hostile but valid input must give finite numbers, forward and backward, in both engines: all-zero
memory and keys (the guarded cosine), interface pre-activations of +-1000 that saturate every gate
exactly (free gates 1, allocation and write gates 0 or 1, erase 1, one-hot read modes), key
strengths up to 1e12 on memories with tied rows, parameters scaled by 1000 (saturated LSTM, logits
of ~1e4 into the loss), and usages of exactly 0 and 1, with and without the usage floor eps_a.

Invalid input (shapes, R or N out of range, wrong dtype, NaN/inf, states outside their ranges)
must raise ValueError with a message naming the expected shape or range.
"""

from __future__ import annotations

import numpy as np
import pytest

from minimem import autodiff as ad
from minimem.memory.dnc import DNC, DNCConfig, DNCRecord, DNCState
from minimem.memory.dnc_interface import interface_forward, interface_layout, interface_size
from minimem.nn.losses import sigmoid_cross_entropy_backward, sigmoid_cross_entropy_forward

SMALL = dict(X=3, Y=3, N=6, W=4, R=2, H=8)
BIG = 1e3                  # sigmoid(+-1000) is exactly 1.0 / 0.0 in float64 and float32
TOL = 1e-12
MODES = {"backward": [BIG, -BIG, -BIG], "content": [-BIG, BIG, -BIG], "forward": [-BIG, -BIG, BIG]}


def _all_finite(arrays) -> bool:
    return all(np.all(np.isfinite(np.asarray(a))) for a in arrays)


def _check_forward_backward(model: DNC, xs: np.ndarray, state: DNCState | None = None, autodiff: bool = True):
    """Forward, manual backward and (optionally) the autodiff engine: every output, state, gradient
    and initial-state gradient finite; the weightings still in Delta_N; both engines agree."""
    ys, cache = model.forward(xs, state)
    assert _all_finite([ys]), "outputs"
    for s in cache.states:
        assert _all_finite(s), "state"
        assert np.all(s.u >= 0) and np.all(s.u <= 1)
        for w in (s.w_w, s.p, s.w_r):
            assert np.all(w >= -TOL) and np.all(w <= 1 + TOL) and np.all(w.sum(-1) <= 1 + TOL)
        # L >= -TOL, not >= 0: a softmax that rounds to w_i = 1.0 next to w_j = 1e-288 makes the
        # factor 1 - w_i - w_j = -1e-288, which can leave entries of that size below 0.
        assert np.all(s.L >= -TOL) and np.all(s.L <= 1 + TOL)
    dys = np.random.default_rng(99).standard_normal(ys.shape)            # random upstream, never ones
    grads, dstate0 = model.backward_with_state(dys, cache)
    for name, g in grads.items():
        assert _all_finite([g]), name
    for name, g in zip(DNCState._fields, dstate0):
        assert _all_finite([g]), f"dstate0.{name}"
    if autodiff:
        tparams = {k: ad.Tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}
        ys_t = model.forward_autodiff(tparams, xs, state, cache.record)
        np.testing.assert_allclose(ys_t.data, ys, rtol=1e-12, atol=1e-12)
        (ys_t * dys).sum().backward()
        for name, g in grads.items():
            g_t = tparams[name].grad
            assert _all_finite([g_t]), f"autodiff {name}"
            assert np.max(np.abs(g_t - g)) <= 1e-9 * max(1.0, np.max(np.abs(g))), name
    return ys, cache, grads


def _inputs(seed: int, T: int = 5, B: int = 2, X: int = 3, scale: float = 1.0) -> np.ndarray:
    return scale * np.random.default_rng(seed).standard_normal((T, B, X))


def _set_interface_bias(model: DNC, **values) -> None:
    """Drive interface fields to fixed pre-activations: their columns of interface.W become 0 and
    their biases the given values (a scalar or a vector of the field's width)."""
    layout = interface_layout(model.config.R, model.config.W)
    for name, value in values.items():
        model.params["interface.W"][:, layout[name]] = 0.0
        model.params["interface.b"][layout[name]] = value


def _valid_state(model: DNC, B: int, seed: int, **fields) -> DNCState:
    rng = np.random.default_rng(seed)
    config, N = model.config, model.config.N
    state = model.initial_state(B)._replace(
        M=rng.standard_normal((B, N, config.W)),
        w_r=0.9 * rng.dirichlet(np.ones(N), size=(B, config.R)),
        h=0.5 * np.tanh(rng.standard_normal((config.layers, B, config.H))))
    return state._replace(**fields)


# ----------------------------------------------------------------- hostile but valid
@pytest.mark.parametrize("memory", ["zero", "random"])
def test_all_zero_keys_and_memory_stay_finite(memory):
    """Zero keys against zero (or random) memory: the guarded cosine gives D = 0 and a uniform
    content weighting; every gradient, including the keys', stays finite (spec section 0)."""
    model = DNC(DNCConfig(**SMALL), np.random.default_rng(0))
    _set_interface_bias(model, k_r=0.0, k_w=0.0)
    state = None if memory == "zero" else _valid_state(model, 2, 1)
    _, cache, grads = _check_forward_backward(model, np.zeros((5, 2, 3)), state)
    for step in cache.steps:                                             # D = 0 for every slot
        for content in (step.access.write_content, step.access.read_content):
            np.testing.assert_array_equal(content.D, 0.0)
            np.testing.assert_allclose(content.w_c, 1.0 / 6, rtol=1e-15)
    assert np.any(grads["interface.b"] != 0.0)


def test_all_zero_everything_including_parameters():
    model = DNC(DNCConfig(**SMALL), np.random.default_rng(0))
    for value in model.params.values():
        value[...] = 0.0
    ys, _, _ = _check_forward_backward(model, np.zeros((4, 2, 3)))
    np.testing.assert_array_equal(ys, 0.0)


@pytest.mark.parametrize("free", [BIG, -BIG])
@pytest.mark.parametrize("alloc", [BIG, -BIG])
@pytest.mark.parametrize("write", [BIG, -BIG])
def test_saturated_gates_stay_finite(free, alloc, write):
    """Free gates exactly 1 or 0, allocation gate 1 or 0, write gate 1 or 0, erase 1, strengths
    1 + 1000, from a random valid state: products of exact zeros (retention with f = 1 on a slot
    read with weight ~1) must not divide by zero in the backward (spec B.4: products of others)."""
    model = DNC(DNCConfig(**SMALL), np.random.default_rng(2))
    _set_interface_bias(model, f_hat=free, g_hat_a=alloc, g_hat_w=write, e_hat=BIG, beta_hat_r=BIG,
                        beta_hat_w=BIG)
    one_hot_reads = np.zeros((2, 2, 6))
    one_hot_reads[:, 0, 2] = one_hot_reads[:, 1, 4] = 1.0               # f = 1 frees slots 2, 4 exactly
    state = _valid_state(model, 2, 3, w_r=one_hot_reads, u=np.full((2, 6), 0.5))
    _, cache, _ = _check_forward_backward(model, _inputs(4), state)
    first = cache.steps[0].interface.parsed
    assert np.all(first.free_gates == (1.0 if free > 0 else 0.0))
    assert np.all(first.g_a == (1.0 if alloc > 0 else 0.0)) and np.all(first.g_w == (1.0 if write > 0 else 0.0))
    if free > 0:                                                         # B.9: f = 1, one-hot read
        np.testing.assert_array_equal(cache.states[0].u[:, [2, 4]], 0.0)
    if write < 0:                                                        # B.9: g^w = 0 writes nothing
        np.testing.assert_array_equal(cache.states[0].M, state.M)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("config", [
    DNCConfig(**SMALL),
    DNCConfig(**SMALL, layers=2, strengths="softplus", usage_write_grad=False, clip=20.0),
], ids=["paper", "deepmind-L2"])
def test_one_hot_read_modes_stay_finite(mode, config):
    """Read modes saturated to exactly one of (backward, content, forward), with a write gate of 1
    and allocation 1, so the links fill with exact ones and zeros."""
    model = DNC(config, np.random.default_rng(5))
    _set_interface_bias(model, pi_hat=np.tile(MODES[mode], config.R), g_hat_w=BIG, g_hat_a=BIG)
    _, cache, _ = _check_forward_backward(model, _inputs(6, T=7))
    index = ["backward", "content", "forward"].index(mode)              # the paper's order [B.10.3]
    assert np.all(cache.steps[-1].interface.parsed.pi[..., index] == 1.0)


@pytest.mark.parametrize("strength", [1e6, 1e12])
@pytest.mark.parametrize("strengths", ["oneplus", "softplus"])
def test_huge_strengths_on_tied_memory_rows_stay_finite(strength, strengths):
    """beta ~ 1e6 and 1e12 make the content softmax one-hot except between tied rows (two identical
    memory rows split the weight 1/2, 1/2, where the gradient beta * dz is large but finite)."""
    model = DNC(DNCConfig(**SMALL, strengths=strengths), np.random.default_rng(7))
    _set_interface_bias(model, beta_hat_r=strength, beta_hat_w=strength, g_hat_w=-BIG)  # memory stays as given
    state = _valid_state(model, 2, 8)
    M = state.M.copy()
    M[:, 1] = M[:, 0]                                                    # tied rows 0 and 1
    M[:, 3] = 0.0                                                        # and a zero row
    state = state._replace(M=M)
    _, _, grads = _check_forward_backward(model, _inputs(9, T=4), state, autodiff=strength < 1e9)
    assert np.max(np.abs(grads["interface.W"])) > 0.0


def test_huge_parameters_and_logits_stay_finite_through_the_loss():
    """Parameters x 1000 and inputs x 10 saturate the LSTM and give logits of ~1e4; the sigmoid
    cross-entropy and its gradient stay finite, and so does BPTT from that gradient."""
    model = DNC(DNCConfig(**SMALL), np.random.default_rng(10))
    for name in model.params:
        model.params[name] = 1e3 * model.params[name] + (1e3 if name.endswith(".b") else 0.0)
    xs = _inputs(11, T=6, scale=10.0)
    ys, cache = model.forward(xs)
    assert np.max(np.abs(ys)) > 1e3
    targets = (np.random.default_rng(12).random(ys.shape) < 0.5).astype(float)
    loss, loss_cache = sigmoid_cross_entropy_forward(ys, targets, np.ones(ys.shape[:2]), reduction="batch")
    dys = sigmoid_cross_entropy_backward(1.0, loss_cache)
    assert np.isfinite(loss) and np.all(np.isfinite(dys))
    grads = model.backward(dys, cache)
    assert _all_finite(grads.values())
    _check_forward_backward(model, xs)


@pytest.mark.parametrize("eps_a", [1e-6, 0.0])
@pytest.mark.parametrize("usage", ["zeros", "ones", "mixed"])
def test_usages_exactly_zero_and_one_stay_finite(usage, eps_a):
    """Usages of exactly 0 and 1 (ties everywhere; the stable sort decides): with the floor and,
    for eps_a = 0, the paper's unfloored allocation, whose backward must not divide by a zero usage."""
    model = DNC(DNCConfig(**SMALL, eps_a=eps_a), np.random.default_rng(13))
    if usage == "ones":
        _set_interface_bias(model, f_hat=-BIG)                           # nothing is freed
    u = {"zeros": np.zeros((2, 6)), "ones": np.ones((2, 6)),
         "mixed": np.array([[0, 1, 0, 1, 1, 0], [1, 1, 1, 0, 1, 1]], dtype=float)}[usage]
    w_w = np.zeros((2, 6))
    w_w[:, 3] = 1.0                                                      # a full write last step
    state = _valid_state(model, 2, 14, u=u, w_w=w_w)
    _, cache, _ = _check_forward_backward(model, _inputs(15), state)
    a = cache.steps[0].access.a
    if usage == "ones":                                      # nothing free: a = (1 - uh) prod(...) <= eps_a
        assert np.all(a <= eps_a + 1e-15)


def test_full_write_makes_usage_exactly_one_and_full_free_exactly_zero():
    """B.8/B.9 oracles at the model level: a previous one-hot write with free gates 0 sets that
    slot's usage to exactly 1; free gate 1 on a one-hot read sets it to exactly 0."""
    model = DNC(DNCConfig(**SMALL), np.random.default_rng(16))
    w_w = np.zeros((2, 6))
    w_w[:, 1] = 1.0
    w_r = np.zeros((2, 2, 6))
    w_r[:, 0, 4] = 1.0
    state = _valid_state(model, 2, 17, u=np.full((2, 6), 0.3), w_w=w_w, w_r=w_r)
    _set_interface_bias(model, f_hat=-BIG)
    _, cache = model.forward(_inputs(18, T=1), state)
    np.testing.assert_array_equal(cache.states[0].u[:, 1], 1.0)
    _set_interface_bias(model, f_hat=BIG)
    _, cache = model.forward(_inputs(18, T=1), state)
    np.testing.assert_array_equal(cache.states[0].u[:, 4], 0.0)
    _check_forward_backward(model, _inputs(18, T=3), state)


def test_float32_saturated_forward_and_backward_stay_finite():
    config = DNCConfig(**SMALL, dtype="float32")
    model = DNC(config, np.random.default_rng(19))
    _set_interface_bias(model, f_hat=BIG, g_hat_a=BIG, g_hat_w=BIG, e_hat=BIG, beta_hat_r=1e6, beta_hat_w=1e6)
    xs = _inputs(20, T=6, scale=10.0).astype(np.float32)
    ys, cache = model.forward(xs)
    assert ys.dtype == np.float32 and np.all(np.isfinite(ys))
    grads = model.backward(np.ones_like(ys), cache)
    assert _all_finite(grads.values())


# ----------------------------------------------------------------- invalid input -> ValueError
@pytest.fixture
def model():
    return DNC(DNCConfig(X=3, Y=2, N=5, W=4, R=2, H=6), np.random.default_rng(0))


GOOD = np.zeros((4, 2, 3))


@pytest.mark.parametrize("xs, match", [
    (np.zeros((4, 3)), r"xs must have shape \(T, B, X\)"),
    (np.zeros((4, 2, 5)), r"X=3"),
    (np.zeros((0, 2, 3)), r"T >= 1"),
    (np.zeros((4, 0, 3)), r"B >= 1"),
    (np.zeros((4, 2, 3), dtype=complex), r"xs must be a float32 or float64 array; got dtype complex128"),
    (np.full((4, 2, 3), "a"), r"xs must be a float32 or float64 array"),
    (np.full((4, 2, 3), np.nan), r"xs must be finite"),
    (np.full((4, 2, 3), -np.inf), r"xs must be finite"),
])
def test_bad_inputs_raise_value_error(model, xs, match):
    with pytest.raises(ValueError, match=match):
        model.forward(xs)
    with pytest.raises(ValueError, match=match):
        model.forward_autodiff({k: ad.Tensor(v) for k, v in model.params.items()}, xs)


def _state_with(model, **fields):
    return model.initial_state(2)._replace(**fields)


@pytest.mark.parametrize("field, value, match", [
    ("w_r", np.zeros((2, 3, 5)), r"state.w_r must have shape \(B, R, N\) = \(2, 2, 5\)"),   # R out of range
    ("r", np.zeros((2, 1, 4)), r"state.r must have shape \(B, R, W\) = \(2, 2, 4\)"),
    ("L", np.zeros((2, 5, 4)), r"state.L must have shape \(B, N, N\)"),
    ("u", np.zeros((2, 4)), r"state.u must have shape \(B, N\) = \(2, 5\)"),
    ("c", np.zeros((2, 2, 6)), r"state.c must have shape \(layers, B, H\) = \(1, 2, 6\)"),
    ("M", np.zeros((2, 5, 4), dtype=complex), r"state.M must be a float32 or float64 array"),
    ("M", np.full((2, 5, 4), np.nan), r"state.M must be finite"),
    ("u", np.full((2, 5), 1.5), r"state.u must be \(B, N\) with entries in \[0, 1\]"),
    ("u", np.full((2, 5), -1e-3), r"state.u must be \(B, N\) with entries in \[0, 1\]"),
    ("p", np.full((2, 5), 0.3), r"state.p must be \(B, N\) in Delta_N .*summing to at most 1"),
    ("w_w", np.full((2, 5), -0.1), r"state.w_w must be \(B, N\) in Delta_N"),
    ("w_r", np.full((2, 2, 5), 0.25), r"state.w_r must be \(B, R, N\) in Delta_N"),
    ("L", np.full((2, 5, 5), 2.0), r"state.L must be \(B, N, N\) with entries in \[0, 1\]"),
])
def test_bad_states_raise_value_error(model, field, value, match):
    with pytest.raises(ValueError, match=match):
        model.forward(GOOD, _state_with(model, **{field: value}))


def test_state_with_no_slots_raises_value_error(model):
    B, W = 2, 4
    empty = DNCState(np.zeros((B, 0, W)), np.zeros((B, 0)), np.zeros((B, 0)), np.zeros((B, 0, 0)),
                     np.zeros((B, 0)), np.zeros((B, 2, 0)), np.zeros((B, 2, W)), np.zeros((1, B, 6)),
                     np.zeros((1, B, 6)))
    with pytest.raises(ValueError, match=r"state.M must have shape \(B, N, W\) with N >= 1"):
        model.forward(GOOD, empty)
    with pytest.raises(ValueError, match=r"state must be a DNCState"):
        model.forward(GOOD, np.zeros(9))


def test_states_at_the_edges_of_their_ranges_are_accepted(model):
    """Exactly 0 and 1, one-hot weightings and rounding-sized excursions are valid states."""
    one_hot = np.zeros((2, 5))
    one_hot[:, 0] = 1.0
    state = _state_with(model, u=np.ones((2, 5)), p=one_hot, w_w=one_hot + 1e-13,
                        w_r=np.stack([one_hot, one_hot], axis=1), L=np.eye(5)[None].repeat(2, 0)[:, ::-1])
    model.forward(GOOD, state)


@pytest.mark.parametrize("kwargs, match", [
    (dict(R=0), r"DNCConfig.R must be an integer >= 1; got 0"),
    (dict(N=0), r"DNCConfig.N must be an integer >= 1; got 0"),
    (dict(N=2.5), r"DNCConfig.N must be an integer >= 1"),
    (dict(W=-1), r"DNCConfig.W must be an integer >= 1"),
    (dict(eps_a=float("nan")), r"DNCConfig.eps_a must be a number in \[0, 1\)"),
    (dict(eps_a=-0.1), r"DNCConfig.eps_a must be a number in \[0, 1\)"),
    (dict(clip=float("inf")), r"DNCConfig.clip must be None or a positive number"),
    (dict(dtype="float16"), r"DNCConfig.dtype must be 'float64' or 'float32'"),
])
def test_config_out_of_range_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DNCConfig(X=3, Y=2, **kwargs)


@pytest.mark.parametrize("B, N, match", [(2, 0, r"N must be an integer >= 1; got 0"),
                                          (0, 5, r"B must be an integer >= 1; got 0"),
                                          (2, 3.0, r"N must be an integer >= 1; got 3.0")])
def test_initial_state_out_of_range_raises_value_error(model, B, N, match):
    with pytest.raises(ValueError, match=match):
        model.initial_state(B, N)


def test_bad_frozen_records_raise_value_error(model):
    _, cache = model.forward(GOOD)
    phi = cache.record.phi.copy()
    phi[1, 0, 0] = 5                                                     # slot N: out of range
    with pytest.raises(ValueError, match=r"permutation of the slots 0..N-1"):
        model.forward(GOOD, frozen=DNCRecord(phi, cache.record.usage_w_w))
    with pytest.raises(ValueError, match=r"frozen.phi must be an integer array of shape \(T, B, N\)"):
        model.forward(GOOD, frozen=DNCRecord(cache.record.phi.astype(float), cache.record.usage_w_w))
    with pytest.raises(ValueError, match=r"frozen must be a DNCRecord"):
        model.forward(GOOD, frozen=cache.record.phi)


def test_bad_upstream_gradients_raise_value_error(model):
    ys, cache = model.forward(GOOD)
    with pytest.raises(ValueError, match=r"dys must be finite"):
        model.backward(np.full(ys.shape, np.nan), cache)
    with pytest.raises(ValueError, match=r"dys must be a float32 or float64 array"):
        model.backward(ys.astype(complex), cache)
    with pytest.raises(ValueError, match=r"dys must have the outputs' shape \(T, B, Y\) = \(4, 2, 2\)"):
        model.backward(ys[:, :, :1], cache)
    bad = cache.final_state._replace(L=np.full((2, 5, 5), np.inf))
    with pytest.raises(ValueError, match=r"state.L must be finite"):
        model.backward_with_state(np.zeros_like(ys), cache, bad)
    big = cache.final_state._replace(u=np.full((2, 5), 7.0))          # gradients have no range
    grads, _ = model.backward_with_state(np.zeros_like(ys), cache, big)
    assert np.any(grads["interface.b"] != 0.0)


@pytest.mark.parametrize("value, match", [
    (np.zeros(2, dtype=complex), r"parameter output.b must be a float32 or float64 array; got dtype complex128"),
    (np.array(["a", "b"]), r"parameter output.b must be a float32 or float64 array"),
    (np.array([np.nan, 0.0]), r"parameter output.b must be finite"),
    (np.zeros(3), r"parameter output.b must have shape \(2,\)"),
])
def test_bad_parameters_raise_value_error(model, value, match):
    model.params["output.b"] = value
    with pytest.raises(ValueError, match=match):
        model.forward(GOOD)


def test_interface_vector_of_the_wrong_width_raises_value_error():
    R, W = 2, 4
    with pytest.raises(ValueError, match=rf"xi must have shape \(B, I\) with I = W\*R \+ 3W \+ 5R \+ 3 = "
                                         rf"{interface_size(R, W)}"):
        interface_forward(np.zeros((2, interface_size(R, W) + 1)), R, W)
    with pytest.raises(ValueError, match=r"strengths must be one of"):
        interface_forward(np.zeros((2, interface_size(R, W))), R, W, strengths="exp")
