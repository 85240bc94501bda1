"""Hostile input for the NTM (minimem.memory.ntm), spec A.8 (the four NaN causes), E.2 item 3 and
the issue's test list.

Hostile but valid input must give finite numbers, forward and backward, in both engines: all-zero
memory and keys (the guarded cosine), head outputs at and beyond the +-20 clip bounds (gamma ~ 21,
beta ~ 20, gates within 2e-9 of 0 or 1), pre-activations of +-1000 without the clip (gates exactly
0 or 1, one-hot shifts, erase exactly 1, gamma ~ 1000), parameters scaled by 1000 (saturated LSTM,
logits of ~1e4 into the loss), inputs of 1e3, one-hot weightings whose neighbours underflow, float32.

Invalid input (shapes, R or N out of range, wrong dtype, NaN/inf, weightings outside [0, 1]) must
raise ValueError with a message naming the expected shape or range.
"""

from __future__ import annotations

import numpy as np
import pytest

from minimem import autodiff as ad
from minimem.memory.addressing import address_forward
from minimem.memory.ntm import NTM, NTMConfig, NTMState, ntm_backward
from minimem.memory.ntm_heads import HeadLayout, head_outputs_forward
from minimem.nn.losses import sigmoid_cross_entropy_backward, sigmoid_cross_entropy_forward

SMALL = dict(X=3, Y=3, N=6, W=4, H=8)
BIG = 1e3                  # sigmoid(+-1000) is exactly 1.0 / 0.0 in float64 and float32
TOL = 1e-12
VARIANTS = {
    "lstm": dict(),
    "feedforward": dict(controller="feedforward"),
    "multihead": dict(R=2, write_heads=2, S=5),
    "read_after_write": dict(read_after_write=True, key_squash="identity", add_squash="identity"),
}


def _all_finite(arrays) -> bool:
    return all(np.all(np.isfinite(np.asarray(a))) for a in arrays)


def _model(variant: str = "lstm", seed: int = 0, **overrides) -> NTM:
    return NTM(NTMConfig(**{**SMALL, **VARIANTS[variant], **overrides}), rng=np.random.default_rng(seed))


def _inputs(seed: int, T: int = 5, B: int = 2, X: int = 3, scale: float = 1.0) -> np.ndarray:
    return scale * np.random.default_rng(seed).standard_normal((T, B, X))


def _set_head_part(model: NTM, part: str, value, heads: str = "all") -> None:
    """Drive one part of every head's output (k, beta, g, s, gamma, e, a) to a fixed pre-activation:
    its columns of the head's W become 0 and of its b the given value (a scalar or a vector)."""
    config = model.config
    W, S = config.W, config.S
    offsets = {"k": (0, W), "beta": (W, W + 1), "g": (W + 1, W + 2), "s": (W + 2, W + 2 + S),
               "gamma": (W + 2 + S, W + 3 + S), "e": (W + 3 + S, 2 * W + 3 + S), "a": (2 * W + 3 + S, 3 * W + 3 + S)}
    lo, hi = offsets[part]
    names = [f"read{i}" for i in range(config.R)] * (heads in ("all", "read")) + \
            [f"write{j}" for j in range(config.write_heads)] * (heads in ("all", "write"))
    for name in names:
        if part in ("e", "a") and name.startswith("read"):
            continue
        model.params[f"{name}.W"][:, lo:hi] = 0.0
        model.params[f"{name}.b"][lo:hi] = value


def _check_forward_backward(model: NTM, xs: np.ndarray, state: NTMState | None = None, autodiff: bool = True,
                            rtol: float = 1e-9):
    """Forward, manual backward (with the gradient w.r.t. the initial state) and, optionally, the
    autodiff engine: every output, internal, gradient finite; every weighting on the simplex; the
    engines agree to rtol of each gradient's scale."""
    ys, cache = model.forward(xs, state)
    assert _all_finite([ys]), "outputs"
    internals = cache.internals()
    for name, value in internals.items():
        assert _all_finite([value]), name
    for name in ("read_weightings", "write_weightings", "content_weightings"):
        w = internals[name]
        assert np.all(w >= 0) and np.all(w <= 1 + TOL), name
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-9, err_msg=name)
    dys = np.random.default_rng(99).standard_normal(ys.shape)            # random upstream, never ones
    grads, dstate0 = ntm_backward(dys, cache)
    for name, g in grads.items():
        assert _all_finite([g]), name
    for name, g in zip(NTMState._fields, dstate0):
        assert _all_finite([g]), f"dstate0.{name}"
    if autodiff:
        tparams = {k: ad.Tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}
        ys_t = model.forward_autodiff(tparams, xs, state)
        np.testing.assert_allclose(ys_t.data, ys, rtol=1e-9, atol=1e-9 * max(1.0, np.max(np.abs(ys))))
        (ys_t * dys).sum().backward()
        for name, g in grads.items():
            g_t = np.zeros_like(g) if tparams[name].grad is None else tparams[name].grad
            assert _all_finite([g_t]), f"autodiff {name}"
            assert np.max(np.abs(g_t - g)) <= rtol * max(1.0, np.max(np.abs(g))), name
    return ys, cache, grads


# ----------------------------------------------------------------- zero memory and keys (spec A.8 (a))
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_all_zero_memory_and_keys_stay_finite(variant):
    model = _model(variant)
    _set_head_part(model, "k", 0.0)                                      # k = tanh(0) = 0 (or identity 0)
    state = model.initial_state(2)
    state = state._replace(M=np.zeros_like(state.M), r=np.zeros_like(state.r))
    _, cache, _ = _check_forward_backward(model, _inputs(1), state)
    content = cache.internals()["content_weightings"]
    np.testing.assert_allclose(content[0], 1.0 / model.config.N, atol=1e-15)   # D = 0: uniform at t = 1


def test_all_zero_everything_including_parameters():
    model = _model("lstm", memory_init="learned")
    for value in model.params.values():
        value[...] = 0.0                                                 # M_0 = tanh(0) = 0, k = 0, a = 0
    ys, cache, _ = _check_forward_backward(model, np.zeros((4, 2, 3)))
    np.testing.assert_array_equal(ys, 0.0)
    np.testing.assert_array_equal(cache.internals()["memory"], 0.0)      # a = 0 keeps memory at 0


# ----------------------------------------------------------------- head outputs at the clip bounds
@pytest.mark.parametrize("sign", [+1.0, -1.0])
@pytest.mark.parametrize("variant", ["lstm", "multihead"])
def test_head_outputs_at_the_clip_bounds_stay_finite(variant, sign):
    """Every head output exactly at +-20 (inside the clip, so gradients flow): gamma = 1 +
    softplus(20) ~ 21, beta ~ 20 or ~2e-9, gates and erase within 2e-9 of 1 or 0."""
    model = _model(variant)
    for part in ("k", "beta", "g", "gamma", "e", "a"):
        _set_head_part(model, part, sign * 20.0)
    shifts = np.full(model.config.S, -20.0)
    shifts[model.config.S // 2 + 1] = 20.0                               # s ~ one_hot(+1)
    _set_head_part(model, "s", shifts)
    _, cache, _ = _check_forward_backward(model, _inputs(2, T=8))
    gamma = cache.internals()["sharpening"]
    expected = 1.0 + np.logaddexp(0.0, sign * 20.0)
    np.testing.assert_allclose(gamma, expected, rtol=1e-15)
    if sign > 0:
        assert np.all(gamma > 20.9)


def test_head_outputs_beyond_the_clip_bounds_are_clipped_and_stay_finite():
    model = _model("lstm")
    for part, value in (("beta", 500.0), ("g", -500.0), ("gamma", 500.0), ("e", 500.0)):
        _set_head_part(model, part, value)
    _, cache, grads = _check_forward_backward(model, _inputs(3))
    internals = cache.internals()
    np.testing.assert_allclose(internals["sharpening"], 1.0 + np.logaddexp(0.0, 20.0), rtol=1e-15)
    np.testing.assert_allclose(internals["key_strengths"], np.logaddexp(0.0, 20.0), rtol=1e-15)
    # the clipped columns pass no gradient to their biases (spec A.4)
    W, S = model.config.W, model.config.S
    for column in (W, W + 1, W + 2 + S):                                 # beta, g, gamma
        assert grads["read0.b"][column] == 0.0 and grads["write0.b"][column] == 0.0


# ----------------------------------------------------------------- saturated gates without the clip
@pytest.mark.parametrize("g", [BIG, -BIG])
@pytest.mark.parametrize("e", [BIG, -BIG])
@pytest.mark.parametrize("gamma", [BIG, 0.0])
def test_saturated_gates_without_the_clip_stay_finite(g, e, gamma):
    """clip=None and pre-activations of +-1000: g and e exactly 0 or 1, s exactly one-hot, gamma
    ~ 1000 or 1.69; erase = 1 with a one-hot write zeroes a row exactly (the cosine guard again)."""
    model = _model("lstm", clip=None)
    _set_head_part(model, "g", g)
    _set_head_part(model, "e", e)
    _set_head_part(model, "gamma", gamma)
    _set_head_part(model, "beta", BIG)
    shifts = np.full(model.config.S, -BIG)
    shifts[-1] = BIG                                                     # s = one_hot(+1) exactly
    _set_head_part(model, "s", shifts)
    ys, cache, _ = _check_forward_backward(model, _inputs(4, T=6))
    internals = cache.internals()
    assert set(np.unique(internals["gates"])) <= {0.0, 1.0}
    assert set(np.unique(internals["erase"])) <= {0.0, 1.0}
    np.testing.assert_array_equal(internals["shifts"][..., -1], 1.0)


def test_one_hot_weightings_with_underflowing_neighbours_stay_finite():
    """gamma ~ 21 on one-hot weightings for many steps: neighbours of the peak fall to ~1e-250 and
    below (eq. (9) as written would give 0/0 or 0 * log 0 in d/dgamma; spec A.8 (b), (c))."""
    model = _model("lstm")
    _set_head_part(model, "g", -20.0)                                    # keep w_{t-1}: location only
    _set_head_part(model, "gamma", 20.0)
    shifts = np.full(model.config.S, -20.0)
    shifts[-1] = 20.0
    _set_head_part(model, "s", shifts)
    state = model.initial_state(2)
    one_hot = np.zeros_like(state.w_read)
    one_hot[..., 0] = 1.0
    state = state._replace(w_read=one_hot, w_write=one_hot.copy())
    _, cache, _ = _check_forward_backward(model, _inputs(5, T=12), state)
    w = cache.internals()["write_weightings"][-1, 0, 0]
    assert np.max(w) > 1 - 1e-6 and np.min(w) < 1e-100


# ----------------------------------------------------------------- large parameters, inputs and logits
def test_huge_parameters_and_logits_stay_finite_through_the_loss():
    """Parameters x 1000 without the clip: saturated LSTM, head pre-activations ~1e3-1e4 (gamma and
    beta huge), logits ~1e4 into the loss; loss and every gradient finite."""
    model = _model("lstm", clip=None)
    for value in model.params.values():
        value *= 1000.0
    xs = _inputs(6, T=6)
    ys, cache = model.forward(xs)
    assert _all_finite([ys]) and np.max(np.abs(ys)) > 1e3
    targets = (np.random.default_rng(7).random(ys.shape) < 0.5).astype(float)
    loss, loss_cache = sigmoid_cross_entropy_forward(ys, targets, np.ones(ys.shape[:2]), reduction="batch")
    assert np.isfinite(loss) and loss > 100.0
    grads, dstate0 = ntm_backward(sigmoid_cross_entropy_backward(1.0, loss_cache), cache)
    assert _all_finite(grads.values()) and _all_finite(dstate0)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_large_inputs_saturate_the_controller_and_stay_finite(variant):
    _check_forward_backward(_model(variant), _inputs(8, scale=1e3))


def test_logits_at_the_output_clip_stay_finite():
    model = _model("lstm")
    model.params["output.W"][...] = 0.0
    model.params["output.b"][...] = [20.0, -20.0, 50.0]                  # the last one is clipped to 20
    ys, _, grads = _check_forward_backward(model, _inputs(9))
    np.testing.assert_array_equal(ys[..., 2], 20.0)
    assert grads["output.b"][2] == 0.0 and grads["output.b"][0] != 0.0


def test_float32_saturated_forward_and_backward_stay_finite():
    model = _model("multihead", dtype="float32")
    for part in ("beta", "gamma", "e"):
        _set_head_part(model, part, 20.0)
    _set_head_part(model, "k", 0.0)
    state = model.initial_state(2)
    state = state._replace(M=np.zeros_like(state.M))
    xs = _inputs(10, scale=100.0).astype(np.float32)
    ys, cache = model.forward(xs, state)
    assert ys.dtype == np.float32 and _all_finite([ys])
    grads, dstate0 = ntm_backward(np.ones_like(ys), cache)
    assert all(g.dtype == np.float32 for g in grads.values())
    assert _all_finite(grads.values()) and _all_finite(dstate0)


def test_weightings_at_the_edges_of_their_range_are_accepted():
    model = _model("lstm")
    state = model.initial_state(2)
    state = state._replace(w_read=np.zeros_like(state.w_read),              # all 0: sum 0, still allowed
                           w_write=np.ones_like(state.w_write))             # all 1: sum N
    _check_forward_backward(model, _inputs(11), state)


# ----------------------------------------------------------------- invalid input -> ValueError
@pytest.mark.parametrize("field, value, match", [
    ("R", 0, r"NTMConfig.R must be an integer >= 1; got 0"),
    ("R", -2, r"NTMConfig.R must be an integer >= 1; got -2"),
    ("R", True, r"NTMConfig.R must be an integer >= 1; got True"),
    ("N", 0, r"NTMConfig.N must be an integer >= 1; got 0"),
    ("N", 4.0, r"NTMConfig.N must be an integer >= 1; got 4.0"),
    ("write_heads", 0, r"NTMConfig.write_heads must be an integer >= 1"),
    ("W", 0, r"NTMConfig.W must be an integer >= 1"),
    ("S", 2, r"S \(allowed shifts\) must be odd"),
    ("clip", 0.0, r"clip must be a positive number or None"),
    ("dtype", "int32", r"dtype must be 'float64' or 'float32'"),
])
def test_config_out_of_range_raises_value_error(field, value, match):
    with pytest.raises(ValueError, match=match):
        NTMConfig(**{**SMALL, field: value})


@pytest.mark.parametrize("xs, match", [
    (np.zeros((4, 2, 3), dtype=np.float16), r"xs must be a float32 or float64 array; got dtype float16"),
    (np.zeros((4, 2, 3), dtype=np.complex128), r"xs must be a float32 or float64 array"),
    (np.full((4, 2, 3), "a"), r"xs must be a float32 or float64 array"),
    (np.full((4, 2, 3), np.nan), r"xs must be finite"),
    (np.full((4, 2, 3), np.inf), r"xs must be finite"),
    (np.zeros((4, 2)), r"xs must have shape \(T, B, X\)"),
    (np.zeros((4, 2, 5)), r"X = 3"),
    (np.zeros((0, 2, 3)), r"T >= 1"),
])
def test_bad_inputs_raise_value_error(xs, match):
    model = _model("lstm")
    with pytest.raises(ValueError, match=match):
        model.forward(xs)
    with pytest.raises(ValueError, match=match):
        model.forward_autodiff({k: ad.Tensor(v) for k, v in model.params.items()}, xs)


def test_integer_inputs_are_valid_and_equal_float_inputs():
    model = _model("lstm")
    xs = (np.random.default_rng(0).random((4, 2, 3)) < 0.5)
    np.testing.assert_array_equal(model.forward(xs.astype(int))[0], model.forward(xs.astype(float))[0])


def _state_with(model: NTM, B: int = 2, **fields) -> NTMState:
    return model.initial_state(B)._replace(**fields)


@pytest.mark.parametrize("field, make, match", [
    ("w_read", lambda s: s.w_read[:, :, :-1], r"state.w_read must have shape \(B, R, N\) = \(2, 1, 6\)"),
    ("w_read", lambda s: np.concatenate([s.w_read] * 2, axis=1),
     r"state.w_read must have shape \(B, R, N\) = \(2, 1, 6\); got \(2, 2, 6\)"),
    ("w_write", lambda s: np.concatenate([s.w_write] * 3, axis=1), r"state.w_write must have shape \(B, Rw, N\)"),
    ("M", lambda s: np.zeros((2, 7, 4)), r"state.M must have shape \(B, N, W\) = \(2, 6, 4\); got \(2, 7, 4\)"),
    ("r", lambda s: np.zeros((2, 1, 5)), r"state.r must have shape \(B, R, W\) = \(2, 1, 4\)"),
    ("h", lambda s: np.zeros((2, 9)), r"state.h must have shape \(B, H\) = \(2, 8\)"),
    ("w_read", lambda s: -s.w_read, r"state.w_read must be a weighting over the N slots with entries in \[0, 1\]"),
    ("w_write", lambda s: 1.5 * np.ones_like(s.w_write), r"state.w_write must be a weighting .* \[0, 1\]"),
    ("M", lambda s: np.full_like(s.M, np.nan), r"state.M must be finite"),
    ("c", lambda s: np.full_like(s.c, -np.inf), r"state.c must be finite"),
    ("r", lambda s: s.r.astype(np.complex128), r"state.r must be a float32 or float64 array"),
])
def test_bad_states_raise_value_error(field, make, match):
    model = _model("lstm")
    state = _state_with(model, **{field: make(model.initial_state(2))})
    xs = _inputs(12)
    with pytest.raises(ValueError, match=match):
        model.forward(xs, state)
    with pytest.raises(ValueError, match=match):
        model.forward_autodiff({k: ad.Tensor(v) for k, v in model.params.items()}, xs, state)


@pytest.mark.parametrize("B", [0, -1, 1.5, True])
def test_initial_state_with_a_bad_batch_size_raises_value_error(B):
    with pytest.raises(ValueError, match=r"batch size B must be an integer >= 1"):
        _model("lstm").initial_state(B)


def test_bad_parameters_raise_value_error():
    model = _model("lstm")
    model.params["controller.W_h"] = model.params["controller.W_h"].astype(np.float16)
    with pytest.raises(ValueError, match=r"parameter controller.W_h must be a float32 or float64 array"):
        model.forward(_inputs(13))
    model = _model("lstm")
    model.params["init.write0.w_bias"] = np.full(6, np.inf)
    with pytest.raises(ValueError, match=r"parameter init.write0.w_bias must be finite"):
        model.forward(_inputs(13))
    model = _model("lstm")
    model.params["read0.W"] = np.zeros((8, 4 + 3 + 3 + 1))             # one column too many
    with pytest.raises(ValueError, match=r"parameter read0.W must have shape \(8, 10\)"):
        model.forward(_inputs(13))


def test_bad_upstream_gradients_raise_value_error():
    model = _model("lstm")
    ys, cache = model.forward(_inputs(14))
    with pytest.raises(ValueError, match=r"dys must be finite"):
        model.backward(np.full_like(ys, np.nan), cache)
    with pytest.raises(ValueError, match=r"dys must be a float32 or float64 array"):
        model.backward(ys.astype(np.complex128), cache)
    with pytest.raises(ValueError, match=r"dys must have the shape of ys \(T, B, Y\) = \(5, 2, 3\)"):
        model.backward(ys[:, :1], cache)
    with pytest.raises(ValueError, match=r"dstate.w_read must have shape \(B, R, N\)"):
        ntm_backward(np.ones_like(ys), cache, dstate=_state_with(model, w_read=np.zeros((2, 1, 5))))
    negative = _state_with(model, w_read=-np.ones((2, 1, 6)))          # gradients may be negative
    assert _all_finite(ntm_backward(np.ones_like(ys), cache, dstate=negative)[0].values())


def test_bad_memory0_raises_value_error():
    model = _model("lstm", memory_init="random")
    model.memory0 = np.zeros((5, 4))
    with pytest.raises(ValueError, match=r"memory0 must have shape \(N, W\) = \(6, 4\)"):
        model.forward(_inputs(15))
    model.memory0 = np.full((6, 4), np.nan)
    with pytest.raises(ValueError, match=r"memory0 must be finite"):
        model.forward(_inputs(15))


@pytest.mark.parametrize("change, match", [
    (dict(w_prev=np.full((2, 1, 5), 0.2)), r"w_prev must have shape \(B, R, N\) = \(2, 1, 6\)"),
    (dict(k=np.zeros((2, 1, 3))), r"k must have shape \(B, R, W\) with M's word size W = 4"),
    (dict(s=np.full((2, 1, 4), 0.25)), r"S must be odd"),
    (dict(gamma=np.ones((2, 2, 1))), r"gamma must have shape \(B, R, 1\) = \(2, 1, 1\)"),
    (dict(M=np.zeros((2, 6))), r"M must have shape \(B, N, W\)"),
])
def test_the_addressing_primitive_names_the_expected_shape(change, match):
    rng = np.random.default_rng(16)
    inputs = dict(M=rng.standard_normal((2, 6, 4)), k=rng.standard_normal((2, 1, 4)), beta=np.ones((2, 1, 1)),
                  g=np.full((2, 1, 1), 0.5), s=np.full((2, 1, 3), 1 / 3), gamma=np.full((2, 1, 1), 2.0),
                  w_prev=np.full((2, 1, 6), 1 / 6))
    address_forward(**inputs)                                            # the unchanged inputs are valid
    with pytest.raises(ValueError, match=match):
        address_forward(**{**inputs, **change})


def test_head_outputs_reject_a_bad_squash_and_width():
    layout = HeadLayout(R=1, Rw=1, W=4, S=3, key_squash="relu")
    with pytest.raises(ValueError, match=r"key_squash must be one of"):
        head_outputs_forward(np.zeros((2, layout.width)), layout)
    with pytest.raises(ValueError, match=r"head outputs must have shape \(B, P\) .* = 28; got \(2, 25\)"):
        head_outputs_forward(np.zeros((2, 25)), HeadLayout(R=1, Rw=1, W=4, S=3))
