"""The generative-memory benchmark functions run at tiny sizes and return minimem.bench rows (no
timing checks), and the full size is the demos' configuration. The second half pins the code that
issue 11 rewrote for speed (VMA/VSM affine and Bernoulli pairs, the one-exp LSTM cell, the
finiteness check, the log-sum-exp fast path, the dense log-softmax adjoint, the bincount scatter
of the VIMCO score terms) to plain reference formulas, so that a faster version cannot silently
change the numbers."""

import math

import numpy as np
import pytest

from minimem import bench
from minimem.bench_generative import SIZES, benchmarks
from minimem.memory.vma import scatter_to_slots
from minimem.memory.vma_bound import (
    bernoulli_log_likelihood_backward, bernoulli_log_likelihood_forward, check_finite, log_softmax_backward,
    log_softmax_forward, logsumexp,
)
from minimem.memory.vma_networks import affine_backward, affine_forward
from minimem.memory.vsm_memory import recall_backward, recall_forward
from minimem.nn.linear import linear_backward, linear_forward
from minimem.nn.lstm import LSTMCache, LSTMStepCache, lstm_backward, lstm_forward, lstm_step_backward, lstm_step_forward


def test_benchmarks_return_bench_rows_at_the_quick_size():
    found = benchmarks(quick=True)
    assert set(found) == {"vma_engines", "vsm_engines"}
    rows = {name: fn(1) for name, fn in found.items()}
    assert len(rows["vma_engines"]) == 2 and len(rows["vsm_engines"]) == 2
    for row in rows["vma_engines"] + rows["vsm_engines"]:
        assert set(row) == {"benchmark", "baseline", "baseline_s", "candidate", "candidate_s"}
        assert row["baseline"] == "manual" and row["candidate"] == "autodiff"
        assert math.isfinite(row["baseline_s"]) and row["baseline_s"] > 0
        assert math.isfinite(row["candidate_s"]) and row["candidate_s"] > 0
    assert [r["benchmark"].split()[0] for r in rows["vsm_engines"]] == ["VSM-HVAE", "VSM-VAE"]
    table = bench.format_table(rows["vma_engines"] + rows["vsm_engines"])
    assert "| manual |" in table and "| autodiff |" in table
    assert {"vma_engines", "vsm_engines"} <= set(bench.all_benchmarks(quick=True))


def test_full_size_is_the_demo_configuration():
    vma, vsm = SIZES["full"]["vma"], SIZES["full"]["vsm"]
    assert (vma["X"], vma["Z"], vma["E"], vma["He"], vma["H"], vma["B"], vma["N"], vma["S"]) == (400, 16, 32, 64, 128, 32, 8, 4)
    assert (vsm["X"], vsm["Ns"], vsm["Zc"], vsm["Z"], vsm["H"], vsm["Hk"], vsm["B"], vsm["Ne"], vsm["n_t"]) == \
        (400, 16, 8, 8, 128, 32, 32, 5, 2)
    assert set(SIZES["full"]) == set(SIZES["quick"])


# ----------------------------------------------------------------- the speed work keeps the numbers
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-13), ("float32", 2e-6)])
def test_bernoulli_pair_matches_logaddexp_and_the_logistic(dtype, tol):
    rng = np.random.default_rng(0)
    logit = np.concatenate([8 * rng.standard_normal((3, 50)), [np.linspace(-900, 900, 50)]]).astype(dtype)
    x = rng.random((4, 50)).astype(dtype)
    value, cache = bernoulli_log_likelihood_forward(x, logit)
    l64, x64 = logit.astype(np.float64), x.astype(np.float64)
    reference = np.sum(x64 * l64 - np.logaddexp(0.0, l64), axis=-1)
    assert value.dtype == np.dtype(dtype) and np.all(np.isfinite(value))
    np.testing.assert_allclose(value, reference, rtol=tol, atol=tol * 50)
    dout = rng.standard_normal(4).astype(dtype)
    sigmoid = 0.5 * (1.0 + np.tanh(0.5 * l64))
    np.testing.assert_allclose(bernoulli_log_likelihood_backward(dout, cache), dout[:, None] * (x64 - sigmoid),
                               rtol=tol, atol=tol)


def test_bernoulli_pair_on_a_large_broadcast_input():
    rng = np.random.default_rng(5)
    logit = 4 * rng.standard_normal((3, 100, 200))
    x = rng.random((1, 100, 200))                               # broadcast over the leading axis, as in VMA
    value, (_, prob) = bernoulli_log_likelihood_forward(x, logit)
    assert value.shape == (3, 100) and prob.shape == (3, 100, 200)
    reference = np.sum(x * logit - np.logaddexp(0.0, logit), axis=-1)
    np.testing.assert_allclose(value, reference, rtol=1e-13, atol=1e-11)
    np.testing.assert_allclose(prob, 0.5 * (1.0 + np.tanh(0.5 * logit)), rtol=1e-13, atol=1e-15)


def test_min_max_finite_check_raises_exactly_on_nan_and_inf():
    check_finite("x", np.full(8, 3e38, dtype=np.float32))      # finite entries whose sum would overflow: no error
    check_finite("x", np.zeros((2, 3)))
    check_finite("x", np.zeros((0, 3)))                         # empty: nothing to check (shape errors come later)
    bads = (np.array([1.0, np.nan]), np.array([np.inf, 1.0]), np.array([-np.inf, np.inf]), np.array([np.nan], np.float32),
            np.array([[2.0, np.nan, -1.0]]), np.array([-np.inf, -3.0]))
    for bad in bads:
        with pytest.raises(ValueError, match="x must be finite"):
            check_finite("x", bad)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_bernoulli_mean_keeps_its_relative_precision_far_in_the_tail(dtype):
    """sigmoid(t) for t < 0 is e/(1+e) itself, never 1 - (something near 1): tiny means stay exact
    relative to the logistic, and t = 0 gives 0.5 exactly."""
    t = np.array([[-80.0, -30.0, -5.0, -1e-3, 0.0, 1e-3, 5.0, 30.0, 80.0]], dtype=dtype)
    _, (_, prob) = bernoulli_log_likelihood_forward(np.zeros_like(t), t)
    t64 = t.astype(np.float64)
    reference = np.where(t64 < 0, np.exp(t64) / (1.0 + np.exp(t64)), 1.0 / (1.0 + np.exp(-t64)))
    assert prob.dtype == np.dtype(dtype) and prob[0, 4] == 0.5
    np.testing.assert_allclose(prob, reference, rtol=4 * np.finfo(dtype).eps, atol=0)


def test_logsumexp_fast_path_and_infinite_rows():
    rng = np.random.default_rng(6)
    v = 30 * rng.standard_normal((5, 7))
    reference = np.log(np.sum(np.exp(v - v.max(axis=1, keepdims=True)), axis=1)) + v.max(axis=1)
    np.testing.assert_allclose(logsumexp(v, axis=1), reference, rtol=1e-15, atol=1e-13)
    np.testing.assert_allclose(logsumexp(v.T, axis=0, keepdims=True), reference[None], rtol=1e-15, atol=1e-13)
    w = np.array([[-np.inf, -np.inf], [-np.inf, 2.0], [np.inf, 0.0]])
    with np.errstate(all="raise"):                              # the -inf row must not warn
        out = logsumexp(w, axis=1)
    assert out[0] == -np.inf and out[1] == 2.0 and out[2] == np.inf


def test_dense_log_softmax_adjoint_equals_the_masked_one_with_every_slot_kept():
    rng = np.random.default_rng(7)
    l, dlog_q = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    log_q, dense = log_softmax_forward(l)
    log_q_masked, masked = log_softmax_forward(l, np.ones((4, 6), dtype=bool))
    assert dense.kept is None
    np.testing.assert_array_equal(log_q, log_q_masked)
    np.testing.assert_allclose(log_softmax_backward(dlog_q, dense), log_softmax_backward(dlog_q, masked), rtol=0, atol=1e-15)
    q = np.exp(log_q)
    np.testing.assert_allclose(log_softmax_backward(dlog_q, dense), dlog_q - q * dlog_q.sum(axis=1, keepdims=True),
                               rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_bincount_scatter_equals_add_at_with_repeated_addresses(dtype):
    rng = np.random.default_rng(8)
    S, B, N = 6, 5, 3                                           # S > N: every episode repeats a slot
    a = rng.integers(0, N, size=(S, B))
    values = rng.standard_normal((S, B)).astype(dtype)
    reference = np.zeros((B, N), dtype=dtype)
    np.add.at(reference, (np.arange(B)[None, :], a), values)
    got = scatter_to_slots(values, np.arange(B)[None, :] * N + a, (B, N))
    assert got.dtype == np.dtype(dtype) and got.shape == (B, N)
    np.testing.assert_allclose(got, reference, rtol=0, atol=4 * np.finfo(dtype).eps * np.abs(values).sum())
    if dtype == "float64":                                      # same order of summation: identical
        np.testing.assert_array_equal(got, reference)


def test_affine_pair_equals_linear_pair_and_skips_only_the_input_gradient():
    rng = np.random.default_rng(1)
    v, W, b = rng.standard_normal((3, 4, 5)), rng.standard_normal((5, 6)), rng.standard_normal(6)
    dout = rng.standard_normal((3, 4, 6))
    y, cache = affine_forward(v, W, b)
    y_ref, cache_ref = linear_forward(v, W, b)
    np.testing.assert_allclose(y, y_ref, rtol=1e-14, atol=1e-14)
    dv, dW, db = affine_backward(dout, cache)
    for got, want in zip((dv, dW, db), linear_backward(dout, cache_ref)):
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
    dv_skipped, dW2, db2 = affine_backward(dout, cache, need_dv=False)
    assert dv_skipped is None and np.array_equal(dW2, dW) and np.array_equal(db2, db)


def test_recall_backward_without_state_gradients_gives_the_same_input_gradients():
    rng = np.random.default_rng(2)
    B, Ns, Zc = 3, 4, 2
    chat, pi = rng.standard_normal((B, Zc)), rng.random((B, Zc))
    mu, lam = rng.standard_normal((Ns, Zc)), 0.5 + rng.random((Ns, Zc))
    _, cache = recall_forward(chat, pi, mu, lam, 0.1)
    upstream = (rng.standard_normal((B, Ns)), rng.standard_normal((B, Ns, Zc)), rng.standard_normal((B, Ns, Zc)))
    full = recall_backward(*upstream, cache)
    short = recall_backward(*upstream, cache, need_state=False)
    assert short[2] is None and short[3] is None
    np.testing.assert_array_equal(short[0], full[0])
    np.testing.assert_array_equal(short[1], full[1])


def _reference_lstm(xs, h, c, p):
    """The textbook cell with np.tanh and the logistic (what lstm.py computed before issue 11)."""
    H = h.shape[1]
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))
    hs = []
    for x in xs:
        z = x @ p["W_x"] + h @ p["W_h"] + p["b"]
        i, f, g, o = sig(z[:, :H]), sig(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), sig(z[:, 3 * H:])
        c = f * c + i * g
        h = o * np.tanh(c)
        hs.append(h)
    return np.stack(hs), c


@pytest.mark.parametrize("scale", [1.0, 40.0])           # 40: saturated gates (e^-z overflows to inf)
def test_lstm_one_exp_cell_matches_the_textbook_cell(scale):
    rng = np.random.default_rng(3)
    T, B, X, H = 2 if scale > 1 else 6, 3, 4, 5          # saturated LSTMs are chaotic: compare few steps
    p = {"W_x": scale * rng.standard_normal((X, 4 * H)), "W_h": scale * rng.standard_normal((H, 4 * H)),
         "b": rng.standard_normal(4 * H)}
    xs, h0, c0 = rng.standard_normal((T, B, X)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    with np.errstate(over="ignore"):
        hs_ref, c_ref = _reference_lstm(xs, h0, c0, p)
    hs, cache = lstm_forward(xs, h0, c0, p)
    assert np.all(np.isfinite(hs))
    np.testing.assert_allclose(hs, hs_ref, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(cache.c_last, c_ref, rtol=0, atol=1e-12 * scale)
    (h1, c1), _ = lstm_step_forward(xs[0], h0, c0, p)
    np.testing.assert_allclose(h1, hs_ref[0], rtol=0, atol=1e-13 * scale)


def test_lstm_backward_accepts_caches_without_the_stacked_arrays():
    rng = np.random.default_rng(4)
    T, B, X, H = 4, 2, 3, 5
    p = {"W_x": rng.standard_normal((X, 4 * H)), "W_h": rng.standard_normal((H, 4 * H)),
         "b": rng.standard_normal(4 * H)}
    xs, dhs = rng.standard_normal((T, B, X)), rng.standard_normal((T, B, H))
    h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    _, cache = lstm_forward(xs, h0, c0, p)
    bare_steps = [LSTMStepCache(*step[:11]) for step in cache.steps]          # as assembled by hand, no gates
    bare = LSTMCache(cache.params, cache.xs, bare_steps, cache.c_last)
    for got, want in zip(lstm_backward(dhs, bare)[:3], lstm_backward(dhs, cache)[:3]):
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
    g_bare, g_full = lstm_backward(dhs, bare)[3], lstm_backward(dhs, cache)[3]
    for name in g_full:
        np.testing.assert_allclose(g_bare[name], g_full[name], rtol=1e-13, atol=1e-13)
    _, step_cache = lstm_step_forward(xs[0], h0, c0, p)
    a = lstm_step_backward(dhs[0], dhs[1], step_cache)
    b = lstm_step_backward(dhs[0], dhs[1], LSTMStepCache(*step_cache[:11]))
    for got, want in zip(a[:3], b[:3]):
        np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-14)


# ----------------------------------------------------------------- VMA manual engine, third round (issue 11)
from minimem.memory.vma import VMA, VMAConfig, VMAInputs                      # noqa: E402
from minimem.memory.vma_bound import (                                      # noqa: E402
    bernoulli_log_likelihood_forward_inplace, gaussian_log_density_forward, leave_one_out_bounds, sum_log_bounded,
    vimco_signals,
)
from minimem.memory.vma_networks import (                                   # noqa: E402
    address_logits_backward, address_logits_forward, key_net_backward, key_net_forward, template_vae_backward,
    template_vae_forward,
)


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-13), ("float32", 2e-6)])
@pytest.mark.parametrize("shapes", [((1, 3, 50), (4, 3, 50)), ((3, 1, 37), (3, 5, 37)), ((2, 1), (2, 1)), ((1, 2, 400), (3, 2, 400))])
def test_inplace_bernoulli_equals_the_reference_pair_and_consumes_the_logits(dtype, tol, shapes):
    """One exp, block products for the log (any X, also X < 32 and X not a multiple of 32), x - 1/2
    on x's own rows: the value and the Bernoulli mean equal the plain formulas, and the mean is
    written into the logits' own buffer."""
    rng = np.random.default_rng(11)
    x_shape, t_shape = shapes
    x = rng.random(x_shape).astype(dtype)
    logit = (6 * rng.standard_normal(t_shape)).astype(dtype)
    logit.flat[:4] = [0.0, 80.0, -80.0, -1e-8][:logit.size]           # (beyond -87 float32 means are subnormal)
    l64, x64 = logit.astype(np.float64), x.astype(np.float64)
    reference = np.sum(x64 * l64 - np.logaddexp(0.0, l64), axis=-1)
    mean = np.where(l64 < 0, np.exp(l64) / (1.0 + np.exp(l64)), 1.0 / (1.0 + np.exp(-l64)))
    buffer = logit.copy()
    value, (x_cached, prob) = bernoulli_log_likelihood_forward_inplace(x, buffer)
    assert value.shape == t_shape[:-1] and value.dtype == np.dtype(dtype) and prob.dtype == np.dtype(dtype)
    assert np.shares_memory(prob, buffer) and x_cached is x
    np.testing.assert_allclose(value, reference, rtol=tol, atol=tol * 50)
    np.testing.assert_allclose(prob, mean, rtol=4 * np.finfo(dtype).eps, atol=0)
    old_value, (_, old_prob) = bernoulli_log_likelihood_forward(x, logit)
    np.testing.assert_allclose(value, old_value, rtol=tol, atol=tol * 50)
    np.testing.assert_allclose(prob, old_prob, rtol=4 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("X", [1, 31, 32, 33, 400, 1000])
def test_block_product_log_sum_equals_the_sum_of_logs_without_overflow(X):
    rng = np.random.default_rng(12)
    for dtype, tol in (("float64", 1e-13), ("float32", 3e-6)):
        w = (1.0 + rng.random((3, 2, X))).astype(dtype)
        w[0, 0] = 2.0                                           # the largest factor everywhere: 2^X in one row
        got = sum_log_bounded(w)
        assert got.shape == (3, 2) and got.dtype == np.dtype(dtype) and np.all(np.isfinite(got))
        np.testing.assert_allclose(got, np.log(w.astype(np.float64)).sum(axis=-1), rtol=tol, atol=tol)
        assert abs(got[0, 0] - X * math.log(2.0)) <= tol * X


@pytest.mark.parametrize("baseline", ["geometric", "arithmetic", "none"])
def test_vimco_signals_with_one_log_sum_exp_equal_the_separate_bounds(baseline):
    rng = np.random.default_rng(13)
    for S in (2, 3, 4, 9):
        log_w = 20 * rng.standard_normal((S, 5))
        log_w[0, 0], log_w[1, 1] = -800.0, -np.inf               # a vanishing sample and a zero weight
        c, L_loo = vimco_signals(log_w, baseline)
        L = logsumexp(log_w, axis=0) - math.log(S)
        np.testing.assert_array_equal(L_loo, leave_one_out_bounds(log_w, baseline))
        np.testing.assert_array_equal(c, L[None, :] - L_loo)


def test_lean_log_softmax_and_gaussian_match_the_plain_formulas():
    rng = np.random.default_rng(14)
    l = 30 * rng.standard_normal((5, 7))
    log_q, cache = log_softmax_forward(l)
    reference = l - l.max(axis=1, keepdims=True) - np.log(np.exp(l - l.max(axis=1, keepdims=True)).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(log_q, reference, rtol=0, atol=1e-13)
    np.testing.assert_allclose(cache.q, np.exp(reference), rtol=1e-14, atol=1e-300)
    z, mu, log_sig = rng.standard_normal((3, 4, 5, 6))
    value, (standardised, sig) = gaussian_log_density_forward(z, mu, log_sig)
    s = (z - mu) / np.exp(log_sig)
    np.testing.assert_array_equal(standardised, s)
    np.testing.assert_array_equal(value, np.sum(-0.5 * s ** 2 - log_sig, axis=-1) - 0.5 * math.log(2 * math.pi) * 6)


def _small_vma(seed, **options):
    cfg = VMAConfig(X=10, Z=3, E=4, He=5, H=6, **options)
    model = VMA(cfg, rng=np.random.default_rng(seed))
    rng = np.random.default_rng(100 + seed)
    for name, value in model.params.items():
        model.params[name] = value + 0.3 * rng.standard_normal(value.shape)
    return model


@pytest.mark.parametrize("options", [dict(), dict(separate_query=True, addr_scale=True, activation="relu")])
def test_address_logits_without_slot_keys_equal_the_key_network_formulation(options):
    """<k_x, k_n> = <s_n, W2 k_x> + <b2, k_x>: the logits and every key/query gradient equal those
    of the explicit slot keys k_n = key_net(m_n) (what vma.py computed before)."""
    model = _small_vma(15, **options)
    p, act = model.params, model.config.activation
    rng = np.random.default_rng(16)
    x, memory = rng.random((3, 10)), rng.random((3, 4, 10))
    scale = model._scale()
    l, cache = address_logits_forward(x, memory, p, model.query_prefix, act, scale)
    k_x, ckx = key_net_forward(x, p, model.query_prefix, act)
    k_n, ckn = key_net_forward(memory, p, "key", act)
    np.testing.assert_allclose(l, np.einsum("be,bne->bn", k_x, k_n) * scale, rtol=1e-13, atol=1e-13)
    dl = rng.standard_normal((3, 4))
    dmemory, grads = address_logits_backward(dl, cache, model.query_prefix, need_dmemory=True)
    _, reference = key_net_backward(np.einsum("bn,bne->be", dl, k_n) * scale, ckx, model.query_prefix, need_dv=False)
    dmemory_ref, slot_grads = key_net_backward(dl[:, :, None] * k_x[:, None, :] * scale, ckn, "key")
    for name, value in slot_grads.items():
        reference[name] = reference[name] + value if name in reference else value
    assert set(grads) == set(reference)
    for name in grads:
        np.testing.assert_allclose(grads[name], reference[name], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(dmemory, dmemory_ref, rtol=1e-12, atol=1e-13)


def test_template_vae_on_the_memory_itself_equals_the_gathered_layout():
    """a = None (exact mode: the memory's own (B, N') rows, no gather) gives the same inner values
    and gradients as gathering every slot with a = arange (rows (N', B))."""
    model = _small_vma(17, n_dummy=1)
    rng = np.random.default_rng(18)
    B, Np = 3, 4
    x, memory = rng.random((B, 10)), rng.random((B, Np, 10))
    eps = rng.standard_normal((Np, B, 3))
    a = np.repeat(np.arange(Np)[:, None], B, axis=1)
    inner_gathered, c_gathered = template_vae_forward(model.params, x, memory, a, eps)
    inner_direct, c_direct = template_vae_forward(model.params, x, memory, None, eps.transpose(1, 0, 2))
    np.testing.assert_allclose(inner_direct, inner_gathered.T, rtol=1e-13, atol=1e-12)
    dinner = rng.standard_normal((Np, B))
    g_gathered, dm_gathered = template_vae_backward(dinner, c_gathered, memory.shape)
    g_direct, dm_direct = template_vae_backward(dinner.T, c_direct, memory.shape)
    for name in g_gathered:
        np.testing.assert_allclose(g_direct[name], g_gathered[name], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dm_direct, dm_gathered, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("estimator", ["vimco", "exact"])
def test_benchmark_configuration_float32_manual_matches_autodiff(estimator):
    """The benchmark's own setting (relu, float32, X = 400, the merged products, block logs, in-place
    Bernoulli): manual and autodiff agree to float32 rounding on every parameter."""
    s = SIZES["full"]["vma"]
    rng = np.random.default_rng(0)
    x = (rng.random((8, s["X"])) < 0.1).astype("float32")
    M = (rng.random((8, 5, s["X"])) < 0.1).astype("float32")
    model = VMA(VMAConfig(X=s["X"], Z=s["Z"], E=s["E"], He=s["He"], H=s["H"], estimator=estimator, activation="relu",
                          dtype="float32"), rng=np.random.default_rng(1))
    inputs = VMAInputs(x, M, **model.sample_noise(np.random.default_rng(2), 8, s["S"], M))
    dL = np.full(8, -1.0 / 8, dtype="float32")
    L, cache = model.forward(inputs)
    manual = model.backward(dL, cache)
    from minimem import autodiff as ad
    tparams = {name: ad.Tensor(value, requires_grad=True) for name, value in model.params.items()}
    L_auto = model.forward_autodiff(tparams, inputs)
    L_auto.backward(dL)
    np.testing.assert_allclose(L, L_auto.data, rtol=2e-6, atol=1e-4)
    top = max(float(np.max(np.abs(g))) for g in manual.values())
    for name, value in manual.items():
        assert value.dtype == np.float32 and value.shape == model.params[name].shape
        np.testing.assert_allclose(value, tparams[name].grad, rtol=2e-3, atol=2e-5 * top, err_msg=name)
