"""Tests for minimem.memory.mnm, the full Metalearned Neural Memory: both engines against central
differences and each other (gradcheck cases, both writers), the model-level oracles of
specs/titans_mnm.md B9 (identical heads, read after write, causality and batch independence,
truncation), the planted error that drops MNM-g's second-order terms, long episodes at the default
bounds, and bad input.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gradcheck.cases.mnm import mnm_cases
from gradcheck.core import check_model
from minimem import autodiff as ad
from minimem.memory import mnm_memory
from minimem.memory.mnm import MNM, MNMConfig, MNMState, mnm_backward, mnm_param_shapes
from minimem.memory.mnm_memory import mnm_read_forward

SMALL = dict(X=3, Y=2, H=5, d=3, h=4, L=3, n_heads=2)


def make_model(seed=0, **overrides):
    return MNM(MNMConfig(**{**SMALL, **overrides}), rng=np.random.default_rng(seed))


def inputs(seed=1, T=5, B=3, X=3, scale=1.0):
    return scale * np.random.default_rng(seed).standard_normal((T, B, X))


def random_doutputs(outputs, seed=2):
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal(o.shape) for o in outputs)


def autodiff_grads(model, xs, douts, **kwargs):
    tparams = {k: ad.Tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}
    ys, meta = model.forward_autodiff(tparams, xs, **kwargs)
    ((ys * douts[0]).sum() + (meta * douts[1]).sum()).backward()
    return (ys.data, meta.data), {k: t.grad for k, t in tparams.items()}


def assert_engines_agree(a, b, rtol=1e-10, what=""):
    a, b = np.asarray(a), np.asarray(b)
    floor = 1e-12 * max(1.0, float(np.max(np.abs(a), initial=0.0)))
    bad = np.abs(a - b) > rtol * np.maximum(np.abs(a), np.abs(b)) + floor
    assert not np.any(bad), f"{what}: engines differ, max |diff| {np.max(np.abs(a - b)):.3g}"


def failures(result):
    return [(r.engine, r.tensor, r.verdict, r.max_abs, r.worst) for r in result.rows if not r.ok]


# ----------------------------------------------------------------- gradient checks
def test_the_cases_are_small_seeded_float64_and_cover_both_writers():
    cases = {c.name: c for c in mnm_cases()}
    assert {c.model.config.writer for c in cases.values()} == {"local", "grad"}
    again = {c.name: c for c in mnm_cases()}
    for name, case in cases.items():
        assert sum(p.size for p in case.model.params.values()) < 600
        for key, value in case.model.params.items():
            assert value.dtype == np.float64
            np.testing.assert_array_equal(again[name].model.params[key], value)


@pytest.mark.parametrize("name", ["mnm.local", "mnm.grad", "mnm.local.value.learn_init", "mnm.grad.learn_init"])
def test_case_passes_the_full_gradcheck_with_both_engines(name):
    case = {c.name: c for c in mnm_cases()}[name]
    result = check_model(case, "full")
    assert result.ok, failures(result)
    assert {r.tensor for r in result.rows} >= set(case.model.params) | {"outputs[0]", "outputs[1]"}


def test_planted_error_dropping_the_second_order_terms_of_mnm_g_is_caught(monkeypatch):
    """Spec P.1 and B9.7: treating the inner gradient as a constant (no Hessian-vector or mixed
    terms) must fail the finite differences, on the interface that writes keys and values."""
    case = {c.name: c for c in mnm_cases()}["mnm.grad"]
    assert check_model(case, "full", engines=("manual",), tensors=["iface.W", "beta.b"]).ok

    def first_order_only(dg, cache):
        return (tuple(np.zeros_like(W) for W in cache.mem.weights), np.zeros_like(cache.mem.Zs[0]),
                np.zeros_like(cache.error))

    monkeypatch.setattr(mnm_memory, "mnm_inner_grad_backward", first_order_only)
    result = check_model(case, "full", engines=("manual",), tensors=["iface.W", "beta.b"])
    assert not result.ok
    failed = {r.tensor for r in result.rows if not r.ok}
    assert "iface.W" in failed


def test_without_second_order_terms_the_write_interface_of_mnm_g_learns_nothing(monkeypatch):
    """Spec P.1: the write keys and values reach the task loss only through the inner gradient, so
    the first-order shortcut gives their interface columns an identically zero task gradient."""
    model = make_model(13, writer="grad", n_heads=2, beta_max=2.0)
    d = model.config.d
    columns = np.concatenate([d + 3 * d * n + np.arange(2 * d) for n in range(2)])   # k^w, v^w of each head
    outputs, cache = model.forward(inputs(T=4, B=2))
    task_only = (random_doutputs(outputs)[0], np.zeros_like(outputs[1]))
    exact = model.backward(task_only, cache)["iface.W"][:, columns]
    assert np.max(np.abs(exact)) > 1e-4
    monkeypatch.setattr(mnm_memory, "mnm_inner_grad_backward", lambda dg, c: (
        tuple(np.zeros_like(W) for W in c.mem.weights), np.zeros_like(c.mem.Zs[0]), np.zeros_like(c.error)))
    np.testing.assert_array_equal(model.backward(task_only, cache)["iface.W"][:, columns], 0.0)


def test_closed_form_inner_gradient_twin_agrees_with_the_manual_engine():
    model = make_model(3, writer="grad", beta_max=3.0)
    xs = inputs(T=4, B=2)
    outputs, cache = model.forward(xs)
    douts = random_doutputs(outputs)
    manual = model.backward(douts, cache)
    for method in ("tape", "closed_form"):
        auto_outputs, auto = autodiff_grads(model, xs, douts, inner_grad=method)
        for a, b in zip(outputs, auto_outputs):
            assert_engines_agree(a, b, what=f"{method} outputs")
        for name in model.params:
            assert_engines_agree(manual[name], auto[name], what=f"{method} {name}")


# ----------------------------------------------------------------- oracles of B9
@pytest.mark.parametrize("writer", ["local", "grad"])
def test_identical_heads_behave_like_one_head(writer):
    """B9.5: an interface that emits the same key/value pair for all Nh heads (iface columns and
    target map copied) gives the outputs of the one-head model."""
    one = make_model(4, writer=writer, n_heads=1, beta_max=2.0)
    three = make_model(4, writer=writer, n_heads=3, beta_max=2.0)
    d = one.config.d
    for name in three.params:
        if name.startswith("iface."):
            columns = one.params[name][..., :d], one.params[name][..., d:]   # beta' | the head's k v k
            three.params[name] = np.concatenate([columns[0]] + [columns[1]] * 3, axis=-1)
        else:
            three.params[name] = one.params[name].copy()
    three.mem0 = {k: v.copy() for k, v in one.mem0.items()}
    xs = inputs(T=4, B=2)
    for a, b in zip(one.forward(xs)[0], three.forward(xs)[0]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("writer", ["local", "grad"])
def test_the_read_sees_the_memory_after_this_steps_write(writer):
    """B9.6 and P.4: step t reads (and measures L^meta on) phi_t, the weights its own write made."""
    model = make_model(5, writer=writer)
    _, cache = model.forward(inputs(T=3, B=2))
    start = lambda step: (step.write.inner if writer == "grad" else step.write).mem.weights   # phi_{t-1}
    phi_prev = tuple(np.broadcast_to(model.mem0[f"mem0.W{l}"], W.shape) for l, W in
                     enumerate(start(cache.steps[0]), start=1))
    for t, step in enumerate(cache.steps):
        for a, b in zip(start(step), phi_prev):
            np.testing.assert_array_equal(a, b)                      # the write starts from phi_{t-1}
        phi_t = step.read.weights
        assert max(np.max(np.abs(a - b)) for a, b in zip(phi_t, phi_prev)) > 1e-4
        for a, b in zip(step.meta.mem.weights, phi_t):
            np.testing.assert_array_equal(a, b)
        read, _ = mnm_read_forward(phi_t, step.interface.k_read)
        np.testing.assert_array_equal(read, cache.internals()["read_outs"][t])
        phi_prev = phi_t
    for a, b in zip(cache.final_state.phi, phi_prev):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("writer", ["local", "grad"])
def test_causality_and_batch_independence(writer):
    """B9.8: outputs at t do not depend on inputs after t; batch elements do not interact."""
    model = make_model(6, writer=writer)
    xs = inputs(T=5, B=3)
    (ys, meta), _ = model.forward(xs)
    later = xs.copy()
    later[3] += 1.0                                                  # change step 3 only
    (ys2, meta2), _ = model.forward(later)
    np.testing.assert_array_equal(ys2[:3], ys[:3])
    np.testing.assert_array_equal(meta2[:3], meta[:3])
    assert np.max(np.abs(ys2[3:] - ys[3:])) > 1e-6
    other = xs.copy()
    other[:, 1] += 1.0                                               # change batch element 1 only
    (ys3, meta3), _ = model.forward(other)
    for b in (0, 2):
        np.testing.assert_allclose(ys3[:, b], ys[:, b], rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(meta3[:, b], meta[:, b], rtol=1e-14, atol=1e-15)
    assert np.max(np.abs(ys3[:, 1] - ys[:, 1])) > 1e-6


@pytest.mark.parametrize("writer", ["local", "grad"])
def test_truncation_cuts_the_gradient_at_the_boundary(writer):
    """B9.9: with the state detached at step s = 2, the gradients w.r.t. inputs before s come only
    from losses before s, and they equal the untruncated gradients of those losses."""
    model = make_model(7, writer=writer, truncate=2)
    full = make_model(7, writer=writer)
    xs = inputs(T=5, B=2)
    outputs, cache = model.forward(xs)
    douts = random_doutputs(outputs)
    _, dxs, _ = mnm_backward(douts, cache)
    late_only = tuple(d * (np.arange(5) >= 2).reshape((5,) + (1,) * (d.ndim - 1)) for d in douts)
    _, dxs_late, _ = mnm_backward(late_only, cache)
    np.testing.assert_array_equal(dxs_late[:2], 0.0)
    assert np.max(np.abs(dxs_late[2:])) > 1e-6
    early_only = tuple(d - late for d, late in zip(douts, late_only))
    outputs_full, cache_full = full.forward(xs)
    for a, b in zip(outputs, outputs_full):
        np.testing.assert_array_equal(a, b)                          # truncation leaves the forward alone
    _, dxs_early, _ = mnm_backward(early_only, cache_full)
    np.testing.assert_allclose(dxs[:2], dxs_early[:2], rtol=1e-12, atol=1e-15)
    manual = model.backward(douts, cache)                            # and the twin truncates the same way
    _, auto = autodiff_grads(model, xs, douts)
    for name in model.params:
        assert_engines_agree(manual[name], auto[name], what=name)


def test_a_sequence_in_two_calls_equals_one_call():
    model = make_model(8, writer="grad", learn_init=True)
    xs = inputs(T=6, B=2)
    outputs, cache = model.forward(xs)
    first, cache1 = model.forward(xs[:4])
    second, cache2 = model.forward(xs[4:], state=cache1.final_state)
    for whole, a, b in zip(outputs, first, second):
        np.testing.assert_allclose(np.concatenate([a, b]), whole, rtol=1e-13, atol=1e-15)
    douts = random_doutputs(outputs)
    grads, dxs, _ = mnm_backward(douts, cache)
    grads2, dxs2, dstate = mnm_backward(tuple(d[4:] for d in douts), cache2)
    grads1, dxs1, _ = mnm_backward(tuple(d[:4] for d in douts), cache1, dstate=dstate)
    for name in model.params:
        np.testing.assert_allclose(grads1[name] + grads2[name], grads[name], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(np.concatenate([dxs1, dxs2]), dxs, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("writer", ["local", "grad"])
def test_no_nan_over_long_episodes_at_the_default_bounds(writer):
    """P.5: beta_max = 1 with the default sizes keeps the fast weights finite over 300 steps of
    large inputs; the backward stays finite too."""
    model = MNM(MNMConfig(X=6, Y=4, writer=writer), rng=np.random.default_rng(9))
    xs = inputs(T=300, B=2, X=6, scale=3.0)
    (ys, meta), cache = model.forward(xs)
    assert np.all(np.isfinite(ys)) and np.all(np.isfinite(meta))
    assert all(np.all(np.isfinite(W)) for W in cache.final_state.phi)
    grads = model.backward(random_doutputs((ys, meta)), cache)
    assert all(np.all(np.isfinite(g)) for g in grads.values())


def test_extra_read_step_runs_one_more_zero_input_step():
    model = make_model(10, extra_read_step=True)
    plain = make_model(10)
    xs = inputs(T=3, B=2)
    (ys, meta), cache = model.forward(xs)
    (ys0, meta0), _ = plain.forward(xs)
    assert ys.shape == (4, 2, 2) and meta.shape == (4, 2)
    np.testing.assert_array_equal(ys[:3], ys0)
    np.testing.assert_array_equal(cache.xs[3], 0.0)


def test_float32_runs_in_float32_and_internals_have_their_shapes():
    model = MNM(MNMConfig(**SMALL, dtype="float32"), rng=np.random.default_rng(11))
    (ys, meta), cache = model.forward(inputs(T=4, B=2))
    assert ys.dtype == meta.dtype == np.float32
    assert all(g.dtype == np.float32 for g in model.backward(random_doutputs((ys, meta)), cache).values())
    internals = cache.internals()
    assert internals["beta"].shape == (4, 2)
    assert np.all((internals["beta"] > 0) & (internals["beta"] < 1.0))
    assert internals["read_outs"].shape == (4, 2, 3)
    assert internals["keys_write"].shape == internals["values_write"].shape == (4, 2, 2, 3)


def test_param_names_and_shapes_follow_the_spec():
    shapes = mnm_param_shapes(MNMConfig(X=5, Y=7, H=6, d=4, h=8, L=3, n_heads=2))
    assert shapes == {"ctrl.W_x": (9, 24), "ctrl.W_h": (6, 24), "ctrl.b": (24,),
                      "iface.W": (6, 28), "iface.b": (28,), "beta.w": (4, 1), "beta.b": (1,),
                      "target.W": (4, 20), "target.b": (20,), "out.W": (10, 6), "out.b": (6,),
                      "head.W": (6, 7), "head.b": (7,)}
    grad = mnm_param_shapes(MNMConfig(X=5, Y=7, H=6, d=4, h=8, L=3, writer="grad", learn_init=True))
    assert "target.W" not in grad and grad["mem0.W1"] == (8, 4) and grad["mem0.W3"] == (4, 8)
    assert "target.W" not in mnm_param_shapes(MNMConfig(X=1, Y=1, L=1, output_target="value"))


# ----------------------------------------------------------------- bad input
def test_bad_input_raises_value_errors_naming_what_was_expected():
    model = make_model(12)
    xs = inputs(T=3, B=2)
    with pytest.raises(ValueError, match=r"inputs must have shape \(T, B, X\)"):
        model.forward(xs[..., :2])
    with pytest.raises(ValueError, match=r"T, B >= 1"):
        model.forward(xs[:0])
    bad = xs.copy()
    bad[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="inputs must be finite"):
        model.forward(bad)
    with pytest.raises(ValueError, match="float32 or float64"):
        model.forward(xs.astype(np.complex128))
    outputs, cache = model.forward(xs)
    with pytest.raises(ValueError, match="doutputs must have shapes"):
        model.backward((outputs[0][:2], outputs[1]), cache)
    with pytest.raises(ValueError, match="doutputs must be"):
        model.backward(outputs[0], cache)
    with pytest.raises(ValueError, match=r"state must be an MNMState"):
        model.forward(xs, state=(1, 2, 3))
    state = cache.final_state
    with pytest.raises(ValueError, match=r"state.phi\[0\] must have shape"):
        model.forward(xs, state=MNMState(state.h, state.c, state.r, (state.phi[0][:1],) + state.phi[1:]))
    broken = make_model(12)
    broken.params["iface.W"] = broken.params["iface.W"][:, :-1]
    with pytest.raises(ValueError, match="parameter iface.W must have shape"):
        broken.forward(xs)
    broken = make_model(12)
    broken.mem0 = None
    with pytest.raises(ValueError, match="fixed initial memory mem0"):
        broken.forward(xs)
    with pytest.raises(ValueError, match="writer"):
        MNMConfig(X=1, Y=1, writer="hebbian")
    with pytest.raises(ValueError, match="output_target"):
        MNMConfig(X=1, Y=1, output_target="zero")
    with pytest.raises(ValueError, match="beta_max"):
        MNMConfig(X=1, Y=1, beta_max=0.0)
    with pytest.raises(ValueError, match="truncate"):
        MNMConfig(X=1, Y=1, truncate=0)
    with pytest.raises(ValueError, match="L must be an integer"):
        MNMConfig(X=1, Y=1, L=0)
    with pytest.raises(ValueError, match="learn_init must be a bool"):
        MNMConfig(X=1, Y=1, learn_init=1)
    with pytest.raises(ValueError, match="config must be an MNMConfig"):
        MNM(dataclasses.asdict(MNMConfig(X=1, Y=1)))
