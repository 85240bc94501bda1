"""Tests of the NAM few-shot head and its cosine baseline (minimem.memory.nam_fewshot, spec A5):
finite differences, manual == autodiff, the A5 / A9.8 invariants, the A5.5 metrics, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from gradcheck.cases.nam_fewshot import episode_inputs, fewshot_cases
from gradcheck.core import assert_grads_close, check_model, numeric_vjp
from minimem.memory.nam_fewshot import (
    FewShotInputs, NAMFewShotConfig, NAMFewShotHead, batched_write_backward, batched_write_forward,
    few_shot_metrics, fewshot_backward, sequential_write_backward, sequential_write_forward,
)
from minimem.memory.nam import nam_write_backward, nam_write_forward


def small(head="nam", mode="sequential", erase=True, seed=0, **overrides):
    config = NAMFewShotConfig(**{"F": 6, "K_b": 4, "N": 3, "E": 5, "head": head, "mode": mode, "erase": erase,
                                 **overrides})
    return NAMFewShotHead(config, rng=np.random.default_rng(seed))


# ----------------------------------------------------------------- gradients
@pytest.mark.parametrize("index", range(4))
def test_gradcheck_cases_pass_full_mode(index):
    case = fewshot_cases()[index]
    rows, ok = check_model(case)
    assert ok, [r for r in rows if not r.ok]


@pytest.mark.parametrize("head, mode, erase", [("nam", "sequential", True), ("nam", "batched_reference", True),
                                               ("nam", "sequential", False), ("cosine", "sequential", True)])
def test_feature_gradients_match_central_differences(head, mode, erase):
    model = small(head, mode, erase, seed=1)
    rng = np.random.default_rng(2)
    inputs = episode_inputs(rng, B=2, N=3, shots=2, Q=4, F=6)
    logits, cache = model.forward(inputs)
    dlogits = rng.standard_normal(logits.shape)                      # random upstream, never ones
    dsupport, dquery, _ = fewshot_backward(dlogits, cache)
    numeric = numeric_vjp(lambda s, q: model.forward(FewShotInputs(s, inputs.support_labels, q))[0],
                          (inputs.support, inputs.query), dlogits)
    assert_grads_close((dsupport, dquery), numeric, names=("support", "query"))


def test_batched_write_pair_matches_central_differences():
    rng = np.random.default_rng(3)
    B, S, C, F = 2, 4, 5, 3
    M0, k, y = rng.standard_normal((B, C, F)), rng.standard_normal((B, S, F)), rng.standard_normal((B, S, C))
    p_w, p_e = rng.uniform(0.1, 0.9, (B, S)), rng.uniform(0.1, 0.9, (B, S))
    dM = rng.standard_normal((B, C, F))
    _, cache = batched_write_forward(M0, k, y, p_w, p_e)
    analytic = batched_write_backward(dM, cache)
    numeric = numeric_vjp(lambda *a: batched_write_forward(*a)[0], (M0, k, y, p_w, p_e), dM)
    assert_grads_close(analytic, numeric, names=("M0", "k", "y", "p_w", "p_e"))


def _sequential_write_problem(rng, B, S, C, F):
    """Random M0 (C, F) shared by the episodes; keys near one another (Gram entries up to ~0.9,
    where the erase terms of later writes matter most); p_e up to 0.95."""
    M0 = rng.standard_normal((C, F))
    k = rng.standard_normal(F) + 0.5 * rng.standard_normal((B, S, F))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)                   # unit keys, as in the head
    y, dM = rng.standard_normal((B, S, C)), rng.standard_normal((B, C, F))
    return M0, k, y, rng.uniform(0.05, 0.95, (B, S)), rng.uniform(0.05, 0.95, (B, S)), dM


@pytest.mark.parametrize("S", [1, 2, 7])
def test_sequential_write_closed_form_equals_the_loop_of_nam_writes(S):
    """The closed form (one triangular solve) against S nam_write_forward / nam_write_backward
    calls one after another: the memory, and every gradient (dM0 summed over the episodes)."""
    B, C, F = 3, 5, 4
    M0, k, y, p_w, p_e, dM = _sequential_write_problem(np.random.default_rng(20 + S), B, S, C, F)
    M, caches = np.broadcast_to(M0, (B, C, F)), []
    for i in range(S):
        M, c = nam_write_forward(M, k[:, i], y[:, i], p_w[:, i], p_e[:, i], normalize=False)
        caches.append(c)
    G, loop = dM, [np.empty((B, S) + shape) for shape in ((F,), (C,), (), ())]
    for i in reversed(range(S)):
        G, *step = nam_write_backward(G, caches[i])
        for out, value in zip(loop, step):
            out[:, i] = value
    M_closed, cache = sequential_write_forward(M0, k, y, p_w, p_e)
    np.testing.assert_allclose(M_closed, M, rtol=0, atol=1e-12)
    dM0, *closed = sequential_write_backward(dM, cache)
    np.testing.assert_allclose(dM0, G.sum(axis=0), rtol=0, atol=1e-12)
    for name, a, b in zip(("k", "y", "p_w", "p_e"), closed, loop):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12, err_msg=name)


def test_sequential_write_pair_matches_central_differences():
    M0, k, y, p_w, p_e, dM = _sequential_write_problem(np.random.default_rng(30), B=2, S=5, C=4, F=3)
    _, cache = sequential_write_forward(M0, k, y, p_w, p_e)
    analytic = sequential_write_backward(dM, cache)
    numeric = numeric_vjp(lambda *a: sequential_write_forward(*a)[0], (M0, k, y, p_w, p_e), dM)
    assert_grads_close(analytic, numeric, names=("M0", "k", "y", "p_w", "p_e"))


def test_checker_catches_a_planted_wrong_backward():
    case = fewshot_cases()[0]
    right = case.model.backward

    def doubled(dout, cache):
        grads = right(dout, cache)
        grads["eraser.layer1.W"] = 2 * grads["eraser.layer1.W"]
        return grads

    case.model.backward = doubled
    rows, ok = check_model(case, engines=("manual",))
    assert not ok
    assert {r.tensor for r in rows if not r.ok} == {"eraser.layer1.W"}


# ----------------------------------------------------------------- invariants (A5, A9.8, A1.9)
def test_batched_equals_sequential_for_orthogonal_keys():
    rng = np.random.default_rng(4)
    B, C, F, S = 2, 5, 6, 4
    Q, _ = np.linalg.qr(rng.standard_normal((F, F)))
    k = np.broadcast_to(Q[:S], (B, S, F)).copy()                     # orthonormal keys
    M0, y = rng.standard_normal((B, C, F)), rng.standard_normal((B, S, C))
    p_w, p_e = rng.uniform(0, 1, (B, S)), rng.uniform(0, 1, (B, S))
    M = M0
    for i in range(S):
        M, _ = nam_write_forward(M, k[:, i], y[:, i], p_w[:, i], p_e[:, i], normalize=False)
    np.testing.assert_allclose(batched_write_forward(M0, k, y, p_w, p_e)[0], M, atol=1e-12)


def test_full_erase_removes_shot_directions_from_base_rows():
    """e -> 1 and orthonormal 1-shot keys: a query equal to a shot is orthogonal to every base row
    and has cosine 1 with its own novel row (read-after-write recall, A1.9.3)."""
    model = small(seed=5)
    model.params["eraser.layer1.W"][:] = 0.0
    model.params["eraser.layer1.b"][:] = 60.0                       # sigmoid(60) = 1 - 1e-26
    F = 6
    Q, _ = np.linalg.qr(np.random.default_rng(6).standard_normal((F, F)))
    support = 2.5 * Q[None, :3]                                      # (1, 3, F), norms 2.5
    labels = np.array([[2, 0, 1]])
    logits, _ = model.forward(FewShotInputs(support, labels, support.copy()))
    s, beta = model.params["scale"][0], model.params["bias"][0]
    np.testing.assert_allclose(logits[0, :, :4], s * beta, atol=1e-12)          # base cosines 0
    np.testing.assert_allclose(logits[0, np.arange(3), 4 + labels[0]], s * (1 + beta), atol=1e-12)
    metrics = few_shot_metrics(logits, 4 + labels, K_b=4)
    assert metrics["fp_novel_to_base"] == 0.0 and metrics["accuracy_novel"] == 1.0


@pytest.mark.parametrize("mode", ["sequential", "batched_reference"])
def test_no_erase_keeps_the_baselines_base_logits(mode):
    """A9.8: p_e = 0 leaves the base rows unit(W_b), so the base columns equal the baseline's."""
    nam, cosine = small("nam", mode, erase=False, seed=7), small("cosine", seed=7)
    cosine.params["base.W"] = nam.params["base.W"].copy()
    inputs = episode_inputs(np.random.default_rng(8), B=3, N=3, shots=3, Q=6, F=6)
    np.testing.assert_allclose(nam.forward(inputs)[0][..., :4], cosine.forward(inputs)[0][..., :4], atol=1e-12)


@pytest.mark.parametrize("shots", [1, 5])
def test_constant_write_probability_matches_baseline_novel_accuracy(shots):
    """A5.6 / A9.8: batched form, constant p_w, phi = 1: the novel rows are parallel to the
    baseline's class means, so the novel logits (and AccuracyNovel) are identical."""
    nam, cosine = small("nam", "batched_reference", seed=9), small("cosine", seed=9)
    nam.params["eraser.layer1.W"][:] = 0.0                           # e = sigmoid(b) for every shot
    nam.params["eraser.layer1.b"][:] = 0.3
    cosine.params["base.W"] = nam.params["base.W"].copy()
    rng = np.random.default_rng(10)
    inputs = episode_inputs(rng, B=4, N=3, shots=shots, Q=9, F=6)
    a, b = nam.forward(inputs)[0], cosine.forward(inputs)[0]
    np.testing.assert_allclose(a[..., 4:], b[..., 4:], atol=1e-12)
    labels = rng.integers(0, 7, size=(4, 9))
    assert few_shot_metrics(a, labels, 4)["accuracy_novel"] == few_shot_metrics(b, labels, 4)["accuracy_novel"]


def test_scale_invariance_of_features():
    model = small(seed=11)
    inputs = episode_inputs(np.random.default_rng(12), B=2, N=3, shots=2, Q=4, F=6)
    scaled = FewShotInputs(3.0 * inputs.support, inputs.support_labels, 0.5 * inputs.query)
    np.testing.assert_allclose(model.forward(inputs)[0], model.forward(scaled)[0], atol=1e-12)


def test_forward_does_not_mutate_inputs_or_params():
    model = small(seed=13)
    inputs = episode_inputs(np.random.default_rng(14), B=2, N=3, shots=2, Q=4, F=6)
    copies = [x.copy() for x in inputs]
    params = {k: v.copy() for k, v in model.params.items()}
    logits, cache = model.forward(inputs)
    model.backward(np.ones_like(logits), cache)
    for x, c in zip(inputs, copies):
        np.testing.assert_array_equal(x, c)
    for k in params:
        np.testing.assert_array_equal(model.params[k], params[k])


# ----------------------------------------------------------------- metrics (A5.5)
def test_metrics_by_hand():
    K_b = 2                                                          # columns: base 0, 1; novel 2, 3
    logits = np.array([[5., 0., 1., 0.],     # base 0 -> base 0          ok
                       [0., 1., 3., 0.],     # base 1 -> novel 2          FP b->n; base-only argmax 1 ok
                       [0., 0., 2., 1.],     # novel 2 -> novel 2         ok
                       [4., 0., 1., 2.]])    # novel 3 -> base 0          FP n->b; novel-only argmax 3 ok
    labels = np.array([0, 1, 2, 3])
    m = few_shot_metrics(logits, labels, K_b)
    assert m == {"accuracy_novel": 1.0, "accuracy_base": 1.0, "accuracy_both": 0.5,
                 "fp_novel_to_base": 0.5, "fp_base_to_novel": 0.5, "n_novel": 2, "n_base": 2}


# ----------------------------------------------------------------- bad input
def test_bad_input_raises_value_error():
    model = small()
    good = episode_inputs(np.random.default_rng(15), B=2, N=3, shots=2, Q=4, F=6)
    s, l, q = good
    bad = [
        FewShotInputs(s[..., :5], l, q),                             # wrong F
        FewShotInputs(s, l, q[:1]),                                  # query batch differs
        FewShotInputs(s, l.astype(float), q),                        # float labels
        FewShotInputs(s, np.full_like(l, 3), q),                     # label >= N
        FewShotInputs(s, np.zeros_like(l), q),                       # a novel class without shots
        FewShotInputs(np.where(np.arange(6) == 0, np.nan, s), l, q),  # NaN
        FewShotInputs(s[0], l[0], q[0]),                             # no batch axis
        (s, l),                                                      # not three arrays
    ]
    for inputs in bad:
        with pytest.raises(ValueError):
            model.forward(inputs)
    logits, cache = model.forward(good)
    with pytest.raises(ValueError, match="dlogits"):
        model.backward(logits[:, :2], cache)
    for config in (dict(head="knn"), dict(mode="parallel"), dict(F=0), dict(dtype="int8")):
        with pytest.raises(ValueError):
            NAMFewShotConfig(**config)
    with pytest.raises(ValueError):
        NAMFewShotHead(NAMFewShotConfig(F=6, K_b=4, N=3, E=5), params={"base.W": np.zeros((4, 6))})
    with pytest.raises(ValueError):
        few_shot_metrics(logits, np.zeros((2, 4)), 4)                # float labels
    with pytest.raises(ValueError):
        few_shot_metrics(logits, np.zeros((2, 4), int), 7)           # K_b >= C
