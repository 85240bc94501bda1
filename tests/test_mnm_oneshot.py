"""Tests for minimem.memory.mnm_oneshot, the controller-free one-shot writer of spec B6.2 (M1): both
engines against central differences and each other, the episode generator and the metric, the
first write's exact equality of the writers for a linear memory, and bad input.
"""

from __future__ import annotations

import numpy as np
import pytest

from gradcheck.cases.mnm import oneshot_cases
from gradcheck.core import check_model
from minimem import autodiff as ad
from minimem.memory.mnm_oneshot import (
    MNMOneShot, OneShotConfig, make_episodes, nearest_value_accuracy, oneshot_param_shapes,
)


@pytest.mark.parametrize("name", ["mnm.oneshot.local", "mnm.oneshot.grad", "mnm.oneshot.queries"])
def test_case_passes_the_full_gradcheck_with_both_engines(name):
    case = {c.name: c for c in oneshot_cases()}[name]
    result = check_model(case, "full")
    assert result.ok, [(r.engine, r.tensor, r.max_abs, r.worst) for r in result.rows if not r.ok]


def test_closed_form_twin_agrees_for_the_gradient_writer():
    model = MNMOneShot(OneShotConfig(d=4, h=5, writer="grad", beta_max=2.0), rng=np.random.default_rng(1))
    episodes = make_episodes(np.random.default_rng(2), 5, 3, 4)
    (reads, meta), cache = model.forward(episodes)
    rng = np.random.default_rng(3)
    douts = (rng.standard_normal(reads.shape), rng.standard_normal(meta.shape))
    manual = model.backward(douts, cache)
    tparams = {k: ad.Tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}
    treads, tmeta = model.forward_autodiff(tparams, episodes, inner_grad="closed_form")
    ((treads * douts[0]).sum() + (tmeta * douts[1]).sum()).backward()
    np.testing.assert_allclose(treads.data, reads, rtol=1e-12, atol=1e-14)
    for name, value in manual.items():
        np.testing.assert_allclose(tparams[name].grad, value, rtol=1e-10, atol=1e-13)


def test_episodes_have_the_m1_statistics():
    keys, values = make_episodes(np.random.default_rng(4), 6, 5, 16)
    assert keys.shape == values.shape == (6, 5, 16)
    np.testing.assert_allclose(np.linalg.norm(keys, axis=-1), 0.5 * np.sqrt(16))
    assert np.all(np.abs(values) < 1.0)


def test_nearest_value_accuracy_is_the_argmax_of_dot_products():
    values = np.stack([np.eye(3), -np.eye(3)], axis=1)              # (P=3, B=2, d=3), orthogonal values
    assert nearest_value_accuracy(values, values) == 1.0
    assert nearest_value_accuracy(values[[1, 0, 2]], values) == pytest.approx(1 / 3)   # two read-outs swapped
    reads = 0.1 * values + 0.05                                       # scale does not matter, only the argmax
    assert nearest_value_accuracy(reads, values) == 1.0


def test_one_linear_layer_writes_the_same_with_both_rules_when_the_target_is_the_value():
    """B9.2 inside the one-shot model: L = 1 with output_target 'value' has no target map, and the
    local rule is then the gradient step, so every read and meta term agrees."""
    episodes = make_episodes(np.random.default_rng(6), 5, 2, 4)
    outs = []
    for writer in ("local", "grad"):
        model = MNMOneShot(OneShotConfig(d=4, L=1, writer=writer, output_target="value"),
                           rng=np.random.default_rng(7))
        assert list(model.params) == ["mem0.W1", "beta.b"]
        outs.append(model.forward(episodes)[0])
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


def test_reading_the_written_keys_as_queries_is_the_default():
    model = MNMOneShot(OneShotConfig(d=4, h=5, writer="local"), rng=np.random.default_rng(1))
    keys, values = make_episodes(np.random.default_rng(2), 4, 3, 4)
    (reads, meta), cache = model.forward((keys, values))
    (reads_q, meta_q), cache_q = model.forward((keys, values, keys))
    np.testing.assert_array_equal(reads_q, reads)
    np.testing.assert_array_equal(meta_q, meta)
    douts = (np.ones_like(reads), np.ones_like(meta))
    for name, value in model.backward(douts, cache).items():
        np.testing.assert_array_equal(model.backward(douts, cache_q)[name], value)


def test_param_shapes_and_bad_input():
    assert oneshot_param_shapes(OneShotConfig(d=4, h=6, L=2)) == {
        "mem0.W1": (6, 4), "mem0.W2": (4, 6), "target.W": (4, 10), "target.b": (10,), "beta.b": (1,)}
    model = MNMOneShot(OneShotConfig(d=4, h=6, L=2))
    keys, values = make_episodes(np.random.default_rng(8), 3, 2, 4)
    with pytest.raises(ValueError, match=r"keys must have shape \(P, B, d\)"):
        model.forward((keys[..., :3], values[..., :3]))
    with pytest.raises(ValueError, match="values must have the keys' shape"):
        model.forward((keys, values[:2]))
    with pytest.raises(ValueError, match=r"inputs must be \(keys, values\)"):
        model.forward(keys)
    bad = keys.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="keys must be finite"):
        model.forward((bad, values))
    (reads, meta), cache = model.forward((keys, values))
    with pytest.raises(ValueError, match="doutputs must have shapes"):
        model.backward((reads, meta[:1]), cache)
    with pytest.raises(ValueError, match=r"queries must have shape \(Q, B, d\)"):
        model.forward((keys, values, keys[:, :1]))
    (reads, meta), cache = model.forward((keys, values, keys[:2]))
    assert reads.shape == (2, 2, 4) and meta.shape == (3, 2)
    with pytest.raises(ValueError, match=r"doutputs must have shapes \(Q, B, d\) = \(2, 2, 4\)"):
        model.backward((np.zeros((3, 2, 4)), meta), cache)
    with pytest.raises(ValueError, match="writer"):
        OneShotConfig(writer="slow")
    with pytest.raises(ValueError, match="config must be a OneShotConfig"):
        MNMOneShot({"d": 4})
