"""gradcheck.core, the executable specification: the checker must pass correct gradients, and it
must catch planted bugs (doubled, transposed, a term dropped through time) naming the tensor and
index, tell a crossed kink from a bug, and leave every parameter exactly as it found it."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import gradcheck.__main__ as gradcheck_main
import gradcheck.cases as registry
from gradcheck import report
from gradcheck.core import (Case, CheckResult, ReportRow, assert_grads_close, check_model, numeric_grad,
                            numeric_vjp, projection_loss, relative_error)
from minimem import autodiff as ad


# ----------------------------------------------------------------- toy models (model protocol)
class TanhNet:
    """y = tanh(x @ W1 + b1) @ W2. x (B, X), W1 (X, H) square (X = H) so a transposed dW1 has the
    right shape and only the numbers can catch it, b1 (H,), W2 (H, Y).

    bug: None, "entry_x2" (dW1[1, 2] doubled), "bias_x2" (db1 doubled), "transpose" (dW1.T),
    "autodiff_forward" (the autodiff twin forgets b1).
    """

    def __init__(self, rng, X=3, Y=2, bug=None, scale=1.0):
        self.params = {"layer1.W": scale * rng.standard_normal((X, X)), "layer1.b": 0.5 * rng.standard_normal(X),
                       "layer2.W": rng.standard_normal((X, Y))}
        self.bug = bug

    def forward(self, x):
        p = self.params
        h = np.tanh(x @ p["layer1.W"] + p["layer1.b"])              # (B, H)
        return h @ p["layer2.W"], (x, h)                            # (B, Y)

    def backward(self, dy, cache):
        x, h = cache
        dh = dy @ self.params["layer2.W"].T                         # (B, H)
        dz = dh * (1.0 - h * h)
        grads = {"layer1.W": x.T @ dz, "layer1.b": dz.sum(axis=0), "layer2.W": h.T @ dy}
        if self.bug == "entry_x2":
            grads["layer1.W"][1, 2] *= 2.0
        elif self.bug == "bias_x2":
            grads["layer1.b"] = 2.0 * grads["layer1.b"]
        elif self.bug == "transpose":
            grads["layer1.W"] = grads["layer1.W"].T
        return grads

    def forward_autodiff(self, tp, x):
        z = x @ tp["layer1.W"]
        if self.bug != "autodiff_forward":
            z = z + tp["layer1.b"]
        return ad.tanh(z) @ tp["layer2.W"]


class TanhRNN:
    """h_t = tanh(h_{t-1} @ W + x_t @ U), h_0 = 0; outputs (hs (T, B, H), h_T (B, H)), a tuple.

    bug "drop_carry": the backward forgets the gradient carried from step t+1 into step t.
    """

    def __init__(self, rng, X=2, H=3, bug=None):
        self.params = {"W": 0.8 * rng.standard_normal((H, H)), "U": rng.standard_normal((X, H))}
        self.bug = bug

    def forward(self, xs):
        T, B, _ = xs.shape
        hs = np.zeros((T + 1, B, self.params["W"].shape[0]))       # hs[0] = h_0
        for t in range(T):
            hs[t + 1] = np.tanh(hs[t] @ self.params["W"] + xs[t] @ self.params["U"])
        return (hs[1:], hs[-1].copy()), (xs, hs)

    def backward(self, douts, cache):
        dhs, dh_last = douts
        xs, hs = cache
        grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        dh_carry = dh_last.copy()
        for t in reversed(range(xs.shape[0])):
            dh = dhs[t] + (0.0 if self.bug == "drop_carry" and t < xs.shape[0] - 1 else dh_carry)
            dz = dh * (1.0 - hs[t + 1] ** 2)                        # (B, H)
            grads["W"] += hs[t].T @ dz
            grads["U"] += xs[t].T @ dz
            dh_carry = dz @ self.params["W"].T
        return grads

    def forward_autodiff(self, tp, xs):
        h, hs = ad.Tensor(np.zeros((xs.shape[1], tp["W"].shape[0]))), []
        for t in range(xs.shape[0]):
            h = ad.tanh(h @ tp["W"] + xs[t] @ tp["U"])
            hs.append(h)
        return ad.stack(hs, axis=0), h


class AbsModel:
    """y = |W| * x elementwise, W and x (2, 3): a kink of |.| at W = 0 in each coordinate.

    bug "wrong_at_kink": the manual gradient at (1, 2) is 5 times too large.
    """

    def __init__(self, W, x, bug=None):
        self.params = {"W": W}
        self.x, self.bug = x, bug

    def forward(self, _):
        return np.abs(self.params["W"]) * self.x, None

    def backward(self, dy, _):
        dW = np.sign(self.params["W"]) * self.x * dy
        if self.bug == "wrong_at_kink":
            dW[1, 2] *= 5.0
        return {"W": dW}

    def forward_autodiff(self, tp, _):
        return ad.abs(tp["W"]) * self.x


class TopKModel:
    """s = x @ W (1, N); y = the K largest scores in descending order (1, K). The top-K index set
    is held constant in the backward pass; it flips where two scores cross."""

    def __init__(self, W, x, K):
        self.params = {"W": W}
        self.x, self.K = x, K

    def _top(self, s):
        return np.argsort(-s, axis=-1, kind="stable")[:, :self.K]   # (1, K) int

    def forward(self, _):
        s = self.x @ self.params["W"]
        top = self._top(s)
        return np.take_along_axis(s, top, axis=-1), top

    def backward(self, dy, top):
        ds = np.zeros((1, self.params["W"].shape[1]))
        np.put_along_axis(ds, top, dy, axis=-1)
        return {"W": self.x.T @ ds}

    def forward_autodiff(self, tp, _):
        s = self.x @ tp["W"]
        return ad.gather(s, self._top(s.data), axis=-1)


class SoftmaxModel:
    """y = softmax(beta * x @ W) over the last axis: smooth but sharply curved for large beta."""

    def __init__(self, rng, beta):
        self.params = {"W": rng.standard_normal((3, 4))}
        self.beta = beta

    def forward(self, x):
        z = self.beta * (x @ self.params["W"])
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        y = e / e.sum(axis=-1, keepdims=True)
        return y, (x, y)

    def backward(self, dy, cache):
        x, y = cache
        dz = y * (dy - np.sum(dy * y, axis=-1, keepdims=True))
        return {"W": self.beta * x.T @ dz}

    def forward_autodiff(self, tp, x):
        return ad.softmax(self.beta * (x @ tp["W"]), axis=-1)


def tanh_case(bug=None, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    model = TanhNet(rng, bug=bug, scale=scale)
    x = rng.standard_normal((4, 3))                                 # (B, X)
    return Case(f"toy.tanh.{bug or 'good'}", model, x, projection_loss(rng, model.forward(x)[0]))


def rnn_case(bug=None, seed=0, T=4):
    rng = np.random.default_rng(seed)
    model = TanhRNN(rng, bug=bug)
    xs = rng.standard_normal((T, 2, 2))                             # (T, B, X)
    return Case(f"toy.rnn.{bug or 'good'}", model, xs, projection_loss(rng, model.forward(xs)[0]))


def abs_case(kink_value=3e-7, bug=None):
    rng = np.random.default_rng(1)
    W = rng.uniform(0.5, 1.5, (2, 3)) * rng.choice([-1.0, 1.0], (2, 3))
    W[1, 2] = kink_value                                            # within eps of the kink at 0
    model = AbsModel(W, rng.uniform(0.5, 2.0, (2, 3)), bug=bug)
    return Case("toy.abs", model, None, projection_loss(rng, model.forward(None)[0]))


def topk_case(gap=4e-7):
    rng = np.random.default_rng(2)
    N, K = 6, 3
    W = rng.standard_normal((3, N))
    x = np.array([[1.0, 0.1, -0.1]])                                # (1, X): W[0, :] moves s one to one
    s = (x @ W)[0]
    order = np.argsort(-s)
    kth, next_ = order[K - 1], order[K]
    W[0, kth] += s[next_] + gap - s[kth]                            # s[kth] = s[next] + gap: a near tie
    model = TopKModel(W, x, K)
    return Case("toy.topk", model, None, projection_loss(rng, model.forward(None)[0])), (kth, next_)


def rows_of(result, engine, tensor=None):
    return [r for r in result.rows if r.engine == engine and (tensor is None or r.tensor == tensor)]


def row(result, engine, tensor):
    (found,) = rows_of(result, engine, tensor)
    return found


def snapshot(params):
    return {k: (v, v.dtype, v.shape, v.tobytes()) for k, v in params.items()}


def assert_restored(params, snap):
    assert list(params) == list(snap)
    for k, (obj, dtype, shape, data) in snap.items():
        assert params[k] is obj, f"{k} was replaced"
        assert params[k].dtype == dtype and params[k].shape == shape and params[k].tobytes() == data, k


# ----------------------------------------------------------------- finite-difference tools
def test_numeric_grad_of_quadratic_form():
    rng = np.random.default_rng(0)
    A, b, x = rng.standard_normal((4, 4)), rng.standard_normal(4), rng.standard_normal(4)
    x_before = x.copy()
    numeric = numeric_grad(lambda v: v @ A @ v + b @ v, x)
    np.testing.assert_allclose(numeric, (A + A.T) @ x + b, rtol=1e-8, atol=1e-9)
    assert np.array_equal(x, x_before)                              # x is not mutated


def test_numeric_grad_of_x_sin_x():
    x = np.linspace(-2.0, 2.0, 7).reshape(7, 1)
    numeric = numeric_grad(lambda v: np.sum(v * np.sin(v)), x)
    assert numeric.shape == x.shape
    np.testing.assert_allclose(numeric, np.sin(x) + x * np.cos(x), rtol=1e-8, atol=1e-9)


def test_numeric_vjp_with_tuple_outputs():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((3, 2))
    dp, dq = rng.standard_normal((2, 2)), rng.standard_normal((2, 3))
    da, db = numeric_vjp(lambda a, b: (a @ b, np.sin(a)), (a, b), (dp, dq))
    np.testing.assert_allclose(da, dp @ b.T + dq * np.cos(a), rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(db, a.T @ dp, rtol=1e-8, atol=1e-9)


def test_assert_grads_close_names_tensor_and_index():
    good = np.arange(6.0).reshape(2, 3)
    bad = good.copy()
    bad[1, 0] += 1e-3
    assert_grads_close([good], [good.copy()], names=["W"])
    with pytest.raises(AssertionError, match=r"W: gradients differ at \(1, 0\)"):
        assert_grads_close([good], [bad], names=["W"])


def test_relative_error_is_safe_near_zero():
    assert relative_error(1e-12, -1e-12) < 1e-3                     # both below the floor: equal
    assert relative_error(0.0, 0.0) == 0.0
    assert relative_error(1.0, 1.0 + 1e-9) == pytest.approx(1e-9, rel=1e-3)
    assert relative_error(1e-3, 2e-3) == pytest.approx(0.5)
    assert_grads_close([np.array([1e-12, 0.0])], [np.array([3e-12, -1e-12])])


def test_tiny_and_zero_gradients_are_ok():
    """A parameter the loss ignores (gradient exactly 0) and one it barely sees (~1e-12) pass."""
    case = tanh_case()
    case.model.params["layer2.W"][0] = 0.0
    case.model.params["layer1.W"] *= 1e-12                          # dW2[0] ~ tanh(1e-12 ...) ~ 1e-12
    case.model.params["layer1.b"][:] = 0.0
    rows, ok = check_model(case)
    assert ok, report.format_table(rows)


# ----------------------------------------------------------------- correct models pass
@pytest.mark.parametrize("mode", ["full", "fast"])
def test_correct_models_pass(mode):
    for case in (tanh_case(), rnn_case()):
        result = check_model(case, mode=mode)
        assert isinstance(result, CheckResult) and result.ok, report.format_table(result.rows)
        names = list(case.model.params)
        assert [r.tensor for r in rows_of(result, "manual")] == names
        assert [r.tensor for r in rows_of(result, "autodiff")] == names
        assert [r.tensor for r in rows_of(result, "manual~autodiff")] == names + (
            ["outputs[0]", "outputs[1]"] if case.name.startswith("toy.rnn") else ["outputs"])
        for r in rows_of(result, "manual"):
            size = case.model.params[r.tensor].size
            assert r.checked == (size if mode == "full" else 3) and r.mode == mode and r.verdict == "ok"
            assert r.max_rel < case.rtol and np.isfinite(r.max_abs)


def test_a_subset_of_engines_and_tensors_can_be_checked():
    result = check_model(tanh_case("transpose"), engines=("manual",), tensors=["layer1.W"])
    assert [(r.engine, r.tensor, r.verdict) for r in result.rows] == [("manual", "layer1.W", "FAIL")]
    assert check_model(tanh_case("transpose"), engines=("autodiff",)).ok


def test_report_row_values_are_those_at_the_worst_entry():
    case = tanh_case("transpose")
    x, loss, params = case.inputs, case.loss, case.model.params
    y, cache = case.model.forward(x)
    manual = case.model.backward(loss(y)[1], cache)["layer1.W"]

    def objective(W):
        saved, params["layer1.W"] = params["layer1.W"], W
        try:
            return loss(case.model.forward(x)[0])[0]
        finally:
            params["layer1.W"] = saved

    numeric = numeric_grad(objective, params["layer1.W"])
    r = row(check_model(case), "manual", "layer1.W")
    rel = relative_error(manual, numeric)
    assert r.worst == np.unravel_index(np.argmax(rel), rel.shape)
    assert r.analytic == manual[r.worst] and r.numeric == pytest.approx(numeric[r.worst], rel=1e-9)
    assert r.max_abs == pytest.approx(np.max(np.abs(manual - numeric)), rel=1e-6)
    assert r.max_rel == pytest.approx(np.max(rel), rel=1e-6) and r.checked == 9


# ----------------------------------------------------------------- planted bugs are caught
def test_entry_off_by_factor_two_is_named():
    result = check_model(tanh_case("entry_x2"))
    bad = row(result, "manual", "layer1.W")
    assert (bad.verdict, bad.worst, bad.failures) == ("FAIL", (1, 2), 1)
    assert bad.analytic == pytest.approx(2 * bad.numeric, rel=1e-6)
    assert row(result, "autodiff", "layer1.W").ok                   # the twin is right
    assert row(result, "manual", "layer1.b").ok and row(result, "manual", "layer2.W").ok
    disagreement = row(result, "manual~autodiff", "layer1.W")
    assert disagreement.verdict == "FAIL" and disagreement.worst == (1, 2)
    assert "disagree" in disagreement.note
    assert not result.ok


def test_doubled_bias_gradient_is_caught():
    result = check_model(tanh_case("bias_x2"))
    bad = row(result, "manual", "layer1.b")
    assert bad.verdict == "FAIL" and bad.failures == 3 and bad.max_rel == pytest.approx(0.5, rel=1e-5)
    assert [r.tensor for r in result.rows if not r.ok] == ["layer1.b", "layer1.b"]   # manual + agreement


def test_transposed_square_weight_gradient_is_caught_off_the_diagonal():
    result = check_model(tanh_case("transpose"))
    bad = row(result, "manual", "layer1.W")
    i, j = bad.worst
    assert bad.verdict == "FAIL" and i != j and bad.failures == 6   # 3 x 3: the diagonal still agrees
    auto = row(result, "autodiff", "layer1.W")
    assert auto.ok
    assert row(result, "manual~autodiff", "layer1.W").verdict == "FAIL"


def test_dropped_gradient_through_time_is_caught():
    result = check_model(rnn_case("drop_carry"))
    assert row(result, "manual", "W").verdict == "FAIL" and row(result, "manual", "U").verdict == "FAIL"
    assert row(result, "autodiff", "W").ok and row(result, "autodiff", "U").ok
    assert not check_model(rnn_case("drop_carry", T=1)).rows[0].failures   # T = 1: nothing is carried


def test_wrong_autodiff_forward_is_reported_as_engine_disagreement():
    result = check_model(tanh_case("autodiff_forward"))
    outputs = row(result, "manual~autodiff", "outputs")
    assert outputs.verdict == "FAIL" and "forward outputs differ" in outputs.note
    assert row(result, "autodiff", "layer1.b").verdict == "FAIL"
    assert all(r.ok for r in rows_of(result, "manual"))


@pytest.mark.parametrize("bug, tensor, index", [("entry_x2", "layer1.W", (1, 2)),
                                                 ("bias_x2", "layer1.b", None),
                                                 ("transpose", "layer1.W", None)])
def test_fast_mode_catches_planted_bugs_and_reruns_full_mode(bug, tensor, index):
    result = check_model(tanh_case(bug), mode="fast", directions=3, seed=0)
    bad = row(result, "manual", tensor)
    assert bad.verdict == "FAIL" and bad.mode == "rerun"
    assert bad.checked == tanh_case().model.params[tensor].size and isinstance(bad.worst, tuple)
    assert "fast: manual FAIL at u" in bad.note
    if index is not None:
        assert bad.worst == index
    others = [r for r in rows_of(result, "manual") if r.tensor != tensor]
    assert all(r.ok and r.mode == "fast" and r.checked == 3 for r in others)


def test_fast_mode_catches_dropped_gradient_through_time():
    result = check_model(rnn_case("drop_carry"), mode="fast", directions=2, seed=3)
    for tensor in ("W", "U"):
        assert row(result, "manual", tensor).verdict == "FAIL" and row(result, "manual", tensor).mode == "rerun"


# ----------------------------------------------------------------- kinks
@pytest.mark.parametrize("kink_value", [3e-7, -8e-7, 0.0])
def test_abs_kink_within_eps_is_reported_as_kink(kink_value):
    result = check_model(abs_case(kink_value))
    for engine in ("manual", "autodiff"):
        r = row(result, engine, "W")
        assert (r.verdict, r.kinks, r.failures, r.worst) == ("kink", [(1, 2)], 0, (1, 2))
    assert not result.ok                                            # a kink is not a pass
    assert "non-smooth within eps at (1, 2)" in report.format_notes(result.rows)


def test_abs_away_from_the_kink_is_ok():
    assert check_model(abs_case(kink_value=0.3)).ok


def test_a_kink_does_not_hide_a_wrong_gradient():
    result = check_model(abs_case(3e-7, bug="wrong_at_kink"))
    assert row(result, "manual", "W").verdict == "FAIL" and row(result, "manual", "W").worst == (1, 2)
    assert row(result, "autodiff", "W").verdict == "kink"


def test_topk_set_flip_within_eps_is_reported_as_kink():
    case, (kth, next_) = topk_case()
    result = check_model(case)
    r = row(result, "manual", "W")
    assert r.verdict == "kink" and sorted(r.kinks) == sorted([(0, kth), (0, next_)])
    far, _ = topk_case(gap=0.2)
    assert check_model(far).ok


def test_fast_mode_reruns_full_mode_on_a_kink():
    result = check_model(abs_case(1e-8), mode="fast", seed=0)
    r = row(result, "manual", "W")
    assert (r.verdict, r.mode, r.kinks) == ("kink", "rerun", [(1, 2)])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), which=st.sampled_from(["tanh", "tanh_big", "rnn", "softmax"]))
def test_smooth_models_never_get_kink(seed, which):
    if which == "softmax":
        rng = np.random.default_rng(seed)
        model = SoftmaxModel(rng, beta=8.0)
        x = rng.standard_normal((2, 3))
        case = Case("toy.softmax", model, x, projection_loss(rng, model.forward(x)[0]))
    else:
        case = rnn_case(seed=seed) if which == "rnn" else tanh_case(seed=seed, scale=3.0 if which == "tanh_big" else 1.0)
    result = check_model(case)
    assert not any(r.verdict == "kink" for r in result.rows)
    assert result.ok, report.format_table(result.rows)


# ----------------------------------------------------------------- parameters are left untouched
@pytest.mark.parametrize("make, mode", [(tanh_case, "full"), (lambda: tanh_case("transpose"), "fast"),
                                        (lambda: abs_case(3e-7), "full"), (rnn_case, "fast")])
def test_parameters_are_restored_bit_exactly(make, mode):
    case = make()
    snap = snapshot(case.model.params)
    check_model(case, mode=mode)
    assert_restored(case.model.params, snap)


def test_float32_parameters_are_checked_in_float64_and_left_float32():
    case = tanh_case()
    case.model.params = {k: v.astype(np.float32) for k, v in case.model.params.items()}
    snap = snapshot(case.model.params)
    result = check_model(case)
    assert result.ok, report.format_table(result.rows)
    assert_restored(case.model.params, snap)


def test_parameters_are_restored_after_an_exception():
    case = tanh_case()
    forward, calls = case.model.forward, [0]

    def flaky_forward(x):
        calls[0] += 1
        if calls[0] == 12:                                          # in the middle of the differences
            raise RuntimeError("boom")
        return forward(x)

    case.model.forward = flaky_forward
    snap = snapshot(case.model.params)
    with pytest.raises(RuntimeError, match="boom"):
        check_model(case)
    assert_restored(case.model.params, snap)


# ----------------------------------------------------------------- bad input
def test_wrong_shape_doutputs_raise_naming_the_expected_shape():
    case = tanh_case()
    case.loss = lambda y: (float(np.sum(y)), np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"shape \(4, 2\)"):
        check_model(case)


def test_bad_cases_raise_value_errors():
    case = tanh_case()
    backward = case.model.backward
    case.model.backward = lambda dy, cache: {k: v for k, v in backward(dy, cache).items() if k != "layer1.b"}
    with pytest.raises(ValueError, match="missing \\['layer1.b'\\]"):
        check_model(case)
    with pytest.raises(ValueError, match="mode"):
        check_model(tanh_case(), mode="medium")
    with pytest.raises(ValueError, match="no parameters named"):
        check_model(tanh_case(), tensors=["nope"])
    noisy = tanh_case()
    rng = np.random.default_rng(0)
    noisy.loss = lambda y: (float(np.sum(y)) + rng.standard_normal(), np.ones_like(y))
    with pytest.raises(ValueError, match="not deterministic"):
        check_model(noisy)
    class NoTwin:
        params = {"W": np.ones((2, 2))}
        forward = TanhNet.forward
        backward = TanhNet.backward
    with pytest.raises(ValueError, match="forward_autodiff"):
        check_model(Case("toy.no_twin", NoTwin(), np.ones((1, 2)), lambda y: (0.0, y)))
    loss = projection_loss(np.random.default_rng(0), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        loss(np.zeros((3, 2)))


def test_projection_loss_handles_tuples():
    rng = np.random.default_rng(0)
    like = (np.zeros((2, 3)), np.zeros(4))
    loss = projection_loss(rng, like)
    outs = (rng.standard_normal((2, 3)), rng.standard_normal(4))
    value, douts = loss(outs)
    assert isinstance(douts, tuple) and [d.shape for d in douts] == [(2, 3), (4,)]
    assert value == pytest.approx(np.sum(outs[0] * douts[0]) + np.sum(outs[1] * douts[1]))


# ----------------------------------------------------------------- registry and python -m gradcheck
@pytest.fixture
def toy_registry(monkeypatch):
    """A registry holding only toy cases, so these tests do not depend on other families."""
    monkeypatch.setattr(registry, "_FACTORIES", [])
    monkeypatch.setattr(registry, "case_modules", lambda: [])
    registry.register("toy")(lambda: [tanh_case(), rnn_case()])
    registry.register("toy")(lambda: tanh_case("transpose"))
    registry.register("kinks")(lambda: abs_case(3e-7))
    return registry


def test_registry_builds_cases_by_family(toy_registry):
    names = [c.name for c in toy_registry.all_cases()]
    assert names == ["toy.tanh.good", "toy.rnn.good", "toy.tanh.transpose", "toy.abs"]
    assert [c.name for c in toy_registry.all_cases("kinks")] == ["toy.abs"]
    assert toy_registry.all_cases("kinks")[0].family == "kinks"
    assert toy_registry.families() == ["toy", "kinks"]


def test_registry_rejects_duplicates_and_non_cases(toy_registry):
    toy_registry.register("toy")(lambda: tanh_case())
    with pytest.raises(ValueError, match="unique"):
        toy_registry.all_cases()
    toy_registry._FACTORIES[:] = [("toy", lambda: "not a case")]
    with pytest.raises(ValueError, match="must return a Case"):
        toy_registry.all_cases()


def test_registry_discovers_every_case_module():
    assert "nn" in registry.case_modules()
    assert all(not name.startswith("_") for name in registry.case_modules())


def test_main_list_and_exit_codes(toy_registry, capsys):
    assert gradcheck_main.main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert "toy (3 cases)" in listed and "kinks (1 case)" in listed and "toy.rnn.good" in listed
    assert gradcheck_main.main(["--case", "good"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == list(report.COLUMNS)
    assert "toy.rnn.good" in out and "2 cases, 18 rows: 18 ok, 0 FAIL, 0 kink, 0 errors" in out
    assert gradcheck_main.main(["--case", "transpose", "--mode", "fast"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "rerun" in out and "layer1.W" in out
    assert gradcheck_main.main(["--family", "kinks", "-q"]) == 1
    assert "kink" in capsys.readouterr().out
    assert gradcheck_main.main(["--case", "no-such-case"]) == 1


def test_main_reports_a_broken_case_and_goes_on(toy_registry, capsys):
    def broken():
        case = tanh_case()
        case.name = "toy.broken"
        case.loss = lambda y: (0.0, np.ones((9, 9)))
        return case

    toy_registry.register("toy")(broken)
    assert gradcheck_main.main(["--case", "o"]) == 1                # toy.broken and the good ones
    out = capsys.readouterr().out
    assert "toy.broken  ERROR  ValueError" in out and "toy.rnn.good" in out


def test_report_table_format():
    r = ReportRow("ntm.small", "autodiff", "read0.key.W", 320, 2.0e-4, 1.0, (5, 2), 0.0, 0.0002, "FAIL", failures=3)
    table = report.format_table([r])
    header, line = table.splitlines()
    assert header.split() == list(report.COLUMNS)
    assert line.split() == ["ntm.small", "autodiff", "read0.key.W", "320", "2.0e-04", "1.0e+00", "(5,", "2)",
                            "0.00000", "2.000e-04", "FAIL"]
    assert report.format_value(-0.4172) == "-0.41720" and report.format_value(3e-9) == "3.000e-09"


def test_python_m_gradcheck_help_smoke():
    done = subprocess.run([sys.executable, "-m", "gradcheck", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--mode" in done.stdout and "--case" in done.stdout


def test_assert_grads_close_never_lets_nan_pass():
    """A backward that divides by a saturated factor returns NaN; NaN compares False, so it must be caught explicitly."""
    with pytest.raises(AssertionError, match=r"psi: gradients differ at \(1,\)"):
        assert_grads_close([np.array([1.0, np.nan])], [np.array([1.0, 0.5])], ["psi"])
    with pytest.raises(AssertionError, match="psi"):
        assert_grads_close([np.array([1.0, 0.5])], [np.array([np.inf, 0.5])], ["psi"])
