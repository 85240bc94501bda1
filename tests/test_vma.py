"""minimem.memory.vma and vma_bound: the invariants of spec A.9, the gradient checks of part D
(registered cases and the planted-wrong estimators that must fail), hostile-but-valid inputs and
the errors raised for invalid ones."""

import math

import numpy as np
import pytest
from scipy import stats
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcheck.cases import all_cases
from gradcheck.cases.vma import negative_controls
from gradcheck.core import assert_grads_close, check_model, numeric_grad, numeric_vjp
from minimem import autodiff as ad
from minimem.memory.vma import VMA, VMAConfig, VMAInputs
from minimem.memory.vma_bound import (
    bernoulli_log_likelihood_backward, bernoulli_log_likelihood_forward, exact_bound_backward,
    exact_bound_forward, gaussian_log_density_backward, gaussian_log_density_forward, leave_one_out_bounds,
    log_softmax_backward, log_softmax_forward, logsumexp, sample_addresses, top_k_mask, vimco_signals,
)
from minimem.memory.vma_networks import template_vae_forward

SIZES = dict(X=12, Z=3, E=4, He=5, H=5)


def make_model(seed=0, scale=0.3, **options) -> VMA:
    rng = np.random.default_rng(seed)
    model = VMA(VMAConfig(**SIZES, **options), rng=rng)
    for name, value in model.params.items():
        model.params[name] = value + scale * rng.standard_normal(value.shape)
    return model


def make_data(seed=0, B=3, N=4, X=12):
    rng = np.random.default_rng(100 + seed)
    x = (rng.random((B, X)) < 0.3).astype(float)
    M = None if N is None else (rng.random((B, N, X)) < 0.3).astype(float)
    return x, M


def sampled(model, x, M, S, seed=0, a=None):
    """Inputs with S addresses drawn from q itself (so never outside a top-k set) and noise eps."""
    rng = np.random.default_rng(200 + seed)
    B = x.shape[0]
    if a is None:
        a = sample_addresses(model.address_posterior(x, M), rng.random((S, B)))
    return VMAInputs(x, M, a=np.asarray(a), eps=rng.standard_normal((S, B, model.config.Z)))


def autodiff_grads(model, inputs, dL):
    tparams = {k: ad.Tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}
    (model.forward_autodiff(tparams, inputs) * dL).sum().backward()
    return {k: t.grad for k, t in tparams.items()}


# ----------------------------------------------------------------- A.9 invariants
@pytest.mark.parametrize("options", [dict(), dict(memory="learned", N=5), dict(n_dummy=2, top_k=3)])
def test_posterior_and_prior_are_normalised_and_kl_is_bounded(options):      # A.9.1, A.9.2
    model = make_model(**options, estimator="pathwise")
    x, M = make_data(N=None if options.get("memory") else 4)
    _, cache = model.forward(sampled(model, x, M, S=2))
    Np = cache.log_q.shape[1]
    for log_dist in (cache.log_q, cache.log_p):
        np.testing.assert_allclose(np.exp(log_dist).sum(axis=1), 1.0, atol=1e-12)
        assert np.all(log_dist <= 0)
    diag = model.diagnostics(cache)
    assert np.all(diag["KL_a"] >= -1e-15) and np.all(diag["KL_a"] <= math.log(Np) + 1e-12)
    assert np.all(diag["KL_z"] >= 0)
    if options.get("memory") != "learned":                                  # uniform prior over N'
        np.testing.assert_allclose(diag["KL_a"], math.log(Np) - diag["H_a"], atol=1e-12)


def test_one_slot_memory_is_a_conditional_vae():                            # A.9.3
    model = make_model(estimator="vimco")
    x, M = make_data(N=1)
    inputs = sampled(model, x, M, S=3)
    L, cache = model.forward(inputs)
    np.testing.assert_array_equal(cache.log_q, 0.0)
    np.testing.assert_array_equal(model.diagnostics(cache)["KL_a"], 0.0)
    inner, _ = template_vae_forward(model.params, x, M, inputs.a, inputs.eps)
    np.testing.assert_allclose(L, logsumexp(inner, axis=0) - math.log(3), atol=1e-12, rtol=0)
    dL = np.array([0.3, -1.0, 0.7])
    vimco = model.backward(dL, cache)
    pathwise = make_model(estimator="pathwise")                               # same seed, same weights
    pathwise_grads = pathwise.backward(dL, pathwise.forward(inputs)[1])
    for name in vimco:                                                       # the score term is exactly 0
        np.testing.assert_array_equal(vimco[name], pathwise_grads[name])


def test_identical_entries_give_uniform_posterior_and_duplicates_equal_mass():   # A.9.3, A.9.5
    model = make_model(estimator="exact")
    x, M = make_data(N=4)
    same = np.repeat(M[:, :1], 4, axis=1)
    log_q = model.address_posterior(x, same)
    np.testing.assert_allclose(log_q, -math.log(4), atol=1e-12)
    M = M.copy()
    M[:, 3] = M[:, 1]                                                         # slot 3 duplicates slot 1
    log_q = model.address_posterior(x, M)
    np.testing.assert_allclose(log_q[:, 3], log_q[:, 1], atol=1e-12)


def test_permuting_slots_permutes_q_and_keeps_the_bounds():                 # A.9.4
    x, M = make_data(N=4)
    perm = np.array([2, 0, 3, 1])
    exact = make_model(estimator="exact")
    eps = np.random.default_rng(1).standard_normal((4, 3, 3))
    L, cache = exact.forward(VMAInputs(x, M, eps=eps))
    L_perm, cache_perm = exact.forward(VMAInputs(x, M[:, perm], eps=eps[perm]))
    np.testing.assert_allclose(cache_perm.log_q, cache.log_q[:, perm], atol=1e-12)
    np.testing.assert_allclose(L_perm, L, atol=1e-12, rtol=0)
    model = make_model(estimator="vimco")
    inputs = sampled(model, x, M, S=3)
    inverse = np.argsort(perm)                                                # slot n moves to inverse[n]
    permuted = inputs._replace(M=M[:, perm], a=inverse[inputs.a])
    np.testing.assert_allclose(model.forward(permuted)[0], model.forward(inputs)[0], atol=1e-12, rtol=0)


def test_one_sample_bound_is_log_w_and_samples_commute():                   # A.9.6
    model = make_model(estimator="pathwise")
    x, M = make_data(N=4)
    one = sampled(model, x, M, S=1)
    L, cache = model.forward(one)
    np.testing.assert_array_equal(L, cache.log_w[0])
    inputs = sampled(model, x, M, S=4)
    order = np.array([3, 1, 0, 2])
    shuffled = inputs._replace(a=inputs.a[order], eps=inputs.eps[order])
    np.testing.assert_allclose(model.forward(shuffled)[0], model.forward(inputs)[0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("options", [dict(), dict(memory="learned", N=3), dict(n_dummy=1, top_k=2)])
def test_exact_mode_equals_slot_by_slot_enumeration(options):               # A.9.7
    exact = make_model(estimator="exact", **options)
    pathwise = make_model(estimator="pathwise", **options)
    x, M = make_data(N=None if options.get("memory") else 3)
    Np = exact.slots(M)
    eps = np.random.default_rng(2).standard_normal((Np, 3, 3))
    L, cache = exact.forward(VMAInputs(x, M, eps=eps))
    q = np.exp(cache.log_q)                                                   # (B, N')
    total = np.zeros(3)
    for n in range(Np):
        kept = q[:, n] > 0                                                    # top-k may drop slot n
        a = np.where(kept, n, np.argmax(q, axis=1))[None, :]                  # any kept slot elsewhere
        log_w = pathwise.forward(VMAInputs(x, M, a=a, eps=eps[n:n + 1]))[0]
        total += np.where(kept, q[:, n] * log_w, 0.0)
    np.testing.assert_allclose(total, L, atol=1e-12, rtol=0)


def test_more_samples_give_a_tighter_bound_on_average():                    # A.9.8
    model = make_model(estimator="pathwise", scale=0.5)
    x, M = make_data(B=200, N=4)
    rng = np.random.default_rng(3)
    bounds = [model.forward(VMAInputs(x, M, **model.sample_noise(rng, 200, S)))[0] for S in (1, 4, 100)]
    for lower, upper in zip(bounds[:-1], bounds[1:]):
        diff = upper - lower
        assert diff.mean() >= -3 * diff.std(ddof=1) / math.sqrt(len(diff))
    assert bounds[2].mean() > bounds[0].mean()                               # and strictly, here


def test_inverse_cdf_sampler_matches_q_and_never_returns_N():               # A.9.9
    rng = np.random.default_rng(4)
    log_q = np.log(rng.dirichlet(np.ones(5), size=2))                         # (B, N) = (2, 5)
    a = sample_addresses(log_q, rng.random((100_000, 2)))
    for b in range(2):
        counts = np.bincount(a[:, b], minlength=5)
        assert stats.chisquare(counts, 100_000 * np.exp(log_q[b])).pvalue > 1e-3
    top = np.nextafter(1.0, 0.0)
    assert sample_addresses(log_q, np.full((1, 2), top)).max() == 4
    masked = np.array([[math.log(0.5), math.log(0.5), -np.inf, -np.inf]])     # top-k dropped slots 2, 3
    draws = sample_addresses(masked, np.array([[0.0], [0.49], [0.5], [top]]))
    np.testing.assert_array_equal(draws[:, 0], [0, 0, 1, 1])


def test_sampling_from_u_is_replayable_with_a():
    model = make_model(estimator="vimco", n_dummy=1)
    x, M = make_data(N=4)
    noise = model.sample_noise(np.random.default_rng(5), 3, S=4)
    L, cache = model.forward(VMAInputs(x, M, **noise))
    replay = VMAInputs(x, M, a=cache.a, eps=noise["eps"])
    np.testing.assert_array_equal(model.forward(replay)[0], L)
    grads_u, grads_a = model.backward(-np.ones(3), cache), model.backward(-np.ones(3), model.forward(replay)[1])
    for name in grads_u:
        np.testing.assert_array_equal(grads_u[name], grads_a[name])


def test_top_k_with_K_equal_N_is_the_dense_path():                          # A.9.11
    dense, full_k = make_model(estimator="exact"), make_model(estimator="exact", top_k=4)
    x, M = make_data(N=4)
    inputs = VMAInputs(x, M, eps=np.random.default_rng(6).standard_normal((4, 3, 3)))
    (L1, c1), (L2, c2) = dense.forward(inputs), full_k.forward(inputs)
    np.testing.assert_allclose(L2, L1, atol=1e-14, rtol=0)
    g1, g2 = dense.backward(np.ones(3), c1), full_k.backward(np.ones(3), c2)
    for name in g1:
        np.testing.assert_allclose(g2[name], g1[name], atol=1e-14, rtol=0)


def test_duplicate_addresses_accumulate_in_learned_memory():                # A.9.12
    model = make_model(estimator="pathwise", memory="learned", N=3)
    x, _ = make_data(B=1, N=None)
    inputs = sampled(model, x, None, S=2, a=[[1], [1]])                       # both samples pick slot 1
    _, cache = model.forward(inputs)
    analytic = model.backward(np.ones(1), cache)["mem.M"]

    def objective(row):
        saved = model.params["mem.M"].copy()
        model.params["mem.M"][1] = row
        try:
            return model.forward(inputs)[0][0]
        finally:
            model.params["mem.M"] = saved
    numeric = numeric_grad(objective, model.params["mem.M"][1].copy())
    np.testing.assert_allclose(analytic[1], numeric, rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------- primitive pairs of vma_bound
@settings(max_examples=15, deadline=None)
@given(S=st.integers(1, 3), B=st.integers(1, 3), Z=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_density_pairs_match_central_differences(S, B, Z, seed):
    rng = np.random.default_rng(seed)
    z, mu, log_sig = rng.standard_normal((3, S, B, Z)) * np.array([1.0, 1.0, 0.3])[:, None, None, None]
    dout = rng.standard_normal((S, B))
    _, cache = gaussian_log_density_forward(z, mu, log_sig)
    numeric = numeric_vjp(lambda *v: gaussian_log_density_forward(*v)[0], (z, mu, log_sig), dout)
    assert_grads_close(gaussian_log_density_backward(dout, cache), numeric, names=("z", "mu", "log_sig"),
                       rtol=1e-6, atol=1e-8)
    x = (rng.random((S, B, Z)) < 0.5).astype(float)
    logit = 3 * rng.standard_normal((S, B, Z))
    _, cache = bernoulli_log_likelihood_forward(x, logit)
    numeric = numeric_vjp(lambda t: bernoulli_log_likelihood_forward(x, t)[0], (logit,), dout)
    assert_grads_close((bernoulli_log_likelihood_backward(dout, cache),), numeric, names=("logit",),
                       rtol=1e-6, atol=1e-8)


@settings(max_examples=15, deadline=None)
@given(B=st.integers(1, 3), N=st.integers(1, 6), K=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_masked_log_softmax_and_exact_bound_match_central_differences(B, N, K, seed):
    rng = np.random.default_rng(seed)
    l = rng.permutation(np.arange(B * N)).reshape(B, N) * 0.1 + 0.01 * rng.random((B, N))  # top-k gaps >= 0.08
    kept = top_k_mask(l, K)
    log_p, inner = np.log(rng.dirichlet(np.ones(N), size=B)), rng.standard_normal((B, N))
    dL = rng.standard_normal(B)

    def bound(l_, log_p_, inner_):
        return exact_bound_forward(log_softmax_forward(l_, kept)[0], log_p_, inner_, kept)[0]

    log_q, cq = log_softmax_forward(l, kept)
    _, cache = exact_bound_forward(log_q, log_p, inner, kept)
    dlog_q, dlog_p, dinner = exact_bound_backward(dL, cache)
    analytic = (log_softmax_backward(dlog_q, cq), dlog_p, dinner)
    assert_grads_close(analytic, numeric_vjp(bound, (l, log_p, inner), dL), names=("l", "log_p", "inner"),
                       rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(np.exp(log_q).sum(axis=1), 1.0, atol=1e-12)
    assert np.all(np.exp(log_q)[~kept] == 0)


# ----------------------------------------------------------------- VIMCO signals (G1-G3)
def test_leave_one_out_never_cancels_when_one_sample_dominates():
    log_w = np.array([[0.0], [-800.0]])                                       # W_0 = 1, W_1 = e^-800
    L_loo = leave_one_out_bounds(log_w, "geometric")
    np.testing.assert_allclose(L_loo[:, 0], [-800.0, 0.0 + math.log(2) - math.log(2)], atol=1e-12)
    np.testing.assert_allclose(leave_one_out_bounds(log_w, "arithmetic")[:, 0], [-800.0, 0.0], atol=1e-12)
    assert np.all(np.isfinite(vimco_signals(log_w)[0]))


def test_baselines_match_their_definitions():
    rng = np.random.default_rng(7)
    log_w = 5 * rng.standard_normal((4, 3))
    S = 4
    for s in range(S):
        others = np.delete(log_w, s, axis=0)
        geometric = logsumexp(np.concatenate([others, others.mean(axis=0, keepdims=True)]), axis=0) - math.log(S)
        np.testing.assert_allclose(leave_one_out_bounds(log_w, "geometric")[s], geometric, atol=1e-12)
        stand_in = logsumexp(others, axis=0) - math.log(S - 1)                # arithmetic mean, as a stand-in
        arithmetic = logsumexp(np.concatenate([others, stand_in[None]]), axis=0) - math.log(S)
        np.testing.assert_allclose(leave_one_out_bounds(log_w, "arithmetic")[s], arithmetic, atol=1e-12)
    c, _ = vimco_signals(log_w, "none")
    np.testing.assert_allclose(c, np.broadcast_to(logsumexp(log_w, axis=0) - math.log(S), (S, 3)), atol=1e-15)


def test_vimco_with_one_sample_raises():
    model = make_model(estimator="vimco")
    x, M = make_data(N=4)
    with pytest.raises(ValueError, match="S >= 2"):
        model.forward(sampled(model, x, M, S=1))
    with pytest.raises(ValueError, match="S >= 2"):
        vimco_signals(np.zeros((1, 3)))


# ----------------------------------------------------------------- part D: gradient checks
CASES = {case.name: case for case in all_cases("vma")}


def test_the_promised_cases_are_registered():
    assert {"vma.pathwise.few_shot", "vma.pathwise.learned", "vma.exact.learned", "vma.exact.top_k",
            "vma.surrogate.geometric", "vma.surrogate.arithmetic", "vma.enum.geometric",
            "vma.enum.arithmetic", "vma.enum.no_baseline"} <= set(CASES)
    for case in CASES.values():
        assert all(p.dtype == np.float64 for p in case.model.params.values())
        assert sum(p.size for p in case.model.params.values()) <= 2000      # full mode is the spec here


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_passes_full_gradcheck_with_both_engines(name):
    case = {c.name: c for c in all_cases("vma")}[name]
    result = check_model(case)
    assert result.ok, [(r.engine, r.tensor, r.verdict, r.max_rel) for r in result.rows if not r.ok]
    assert {"manual", "autodiff", "manual~autodiff"} <= {r.engine for r in result.rows}


@pytest.mark.parametrize("case", negative_controls(), ids=lambda c: c.name)
def test_planted_wrong_estimators_are_caught_in_the_key_network(case):
    result = check_model(case, engines=("manual",))
    failed = {r.tensor for r in result.rows if not r.ok}
    assert not result.ok
    assert failed and all(name.startswith("key.") for name in failed)      # the score path, and only it


def test_vimco_engines_agree_on_a_larger_batch():                            # D.5, organisation 1 vs 2
    for baseline in ("geometric", "arithmetic"):
        model = make_model(estimator="vimco", baseline=baseline, n_dummy=2, top_k=4)
        x, M = make_data(B=5, N=5)
        inputs = sampled(model, x, M, S=4)
        dL = np.random.default_rng(8).standard_normal(5)
        manual = model.backward(dL, model.forward(inputs)[1])
        auto = autodiff_grads(model, inputs, dL)
        for name in manual:
            np.testing.assert_allclose(manual[name], auto[name], rtol=1e-10, atol=1e-12)


def test_monte_carlo_mean_of_vimco_draws_matches_the_enumerated_gradient():   # D.5, Monte Carlo sanity
    from gradcheck.cases.vma import EnumeratedObjective
    K, groups, S = 1000, 20, 2
    model = make_model(seed=3, estimator="vimco")
    x, M = make_data(seed=3, B=1, N=3)
    xs, Ms = np.repeat(x, K, axis=0), np.repeat(M, K, axis=0)                # K independent draws
    noise = model.sample_noise(np.random.default_rng(15), K, S=S)
    _, cache = model.forward(VMAInputs(xs, Ms, **noise))
    group_means = []                                                          # batch means for the SE
    for g in range(groups):
        dL = np.zeros(K)
        dL[g::groups] = groups / K
        group_means.append(model.backward(dL, cache))
    enum = EnumeratedObjective(model)
    target_inputs = VMAInputs(xs, Ms, eps=noise["eps"])                       # the same eps draws
    rng, h = np.random.default_rng(16), 1e-5
    for name in ["key.W2", "key.b1", "dec.skip", "enc.Wm"]:                   # score-function and pathwise
        for _ in range(2):                                                    # random directions v
            v = rng.standard_normal(model.params[name].shape)
            draws = np.array([np.sum(gm[name] * v) for gm in group_means])    # (groups,) <g, v>
            mean, se = draws.mean(), draws.std(ddof=1) / math.sqrt(groups)
            J = [_with_param(model, name, model.params[name] + sign * h * v,
                             lambda: enum.forward(target_inputs)[0].mean()) for sign in (1, -1)]
            target = (J[0] - J[1]) / (2 * h)                                  # d/dt mean_k J_enum(eps_k)
            assert abs(mean - target) <= 4 * se + 1e-9, (name, (mean - target) / se)


def _with_param(model, name, value, f):
    saved = model.params[name]
    model.params[name] = value
    try:
        return f()
    finally:
        model.params[name] = saved


def test_relu_and_float32_variants_run_and_agree():
    relu = make_model(estimator="vimco", activation="relu", n_dummy=1)
    x, M = make_data(N=4)
    inputs = sampled(relu, x, M, S=3)
    manual = relu.backward(-np.ones(3), relu.forward(inputs)[1])
    auto = autodiff_grads(relu, inputs, -np.ones(3))
    for name in manual:
        np.testing.assert_allclose(manual[name], auto[name], rtol=1e-10, atol=1e-12)
    single = VMA(VMAConfig(**SIZES, dtype="float32"), rng=np.random.default_rng(0))
    L, cache = single.forward(VMAInputs(x, M, **single.sample_noise(np.random.default_rng(1), 3, S=2)))
    grads = single.backward(-np.ones(3, dtype=np.float32), cache)
    assert L.dtype == np.float32 and all(g.dtype == np.float32 for g in grads.values())


# ----------------------------------------------------------------- hostile but valid inputs
def _all_finite(model, inputs):
    L, cache = model.forward(inputs)
    grads = model.backward(-np.ones_like(L), cache)
    auto = autodiff_grads(model, inputs, -np.ones_like(L))
    assert np.all(np.isfinite(L))
    for name in grads:
        assert np.all(np.isfinite(grads[name])) and np.all(np.isfinite(auto[name])), name
    return L, cache


@pytest.mark.parametrize("estimator", ["vimco", "pathwise", "exact"])
def test_all_zero_images(estimator):
    model = make_model(estimator=estimator, n_dummy=1)
    x, M = np.zeros((2, 12)), np.zeros((2, 3, 12))
    inputs = VMAInputs(x, M, **model.sample_noise(np.random.default_rng(9), 2, S=3, M=M))
    _all_finite(model, inputs)


@pytest.mark.parametrize("estimator", ["vimco", "exact"])
def test_saturated_logits(estimator):
    model = make_model(estimator=estimator, top_k=None)
    model.params["key.W2"] = 1e4 * model.params["key.W2"]                      # address logits ~1e8
    model.params["dec.bo"] = np.full(12, 1e3)                                  # pixel logits +1000
    model.params["dec.skip"] = np.full(12, -1e3)
    x, M = make_data(N=4)
    inputs = VMAInputs(x, M, **model.sample_noise(np.random.default_rng(10), 3, S=3, M=M))
    L, cache = _all_finite(model, inputs)
    assert np.all(L < -100)


def test_one_slot_memory_has_no_nan_and_zero_address_kl():
    for estimator in ("vimco", "exact"):
        model = make_model(estimator=estimator)
        x, M = make_data(N=1)
        _, cache = _all_finite(model, VMAInputs(x, M, **model.sample_noise(np.random.default_rng(11), 3, S=2, M=M)))
        np.testing.assert_array_equal(model.diagnostics(cache)["KL_a"], 0.0)


def test_retrieval_mass_diagnostic():
    model = make_model(estimator="pathwise", n_dummy=1)
    x, M = make_data(B=2, N=4)
    _, cache = model.forward(sampled(model, x, M, S=2))
    mem_class, x_class = np.array([[0, 1, 0, 2], [5, 5, 5, 5]]), np.array([0, 5])
    mass = model.diagnostics(cache, mem_class, x_class)["mass"]
    q = np.exp(cache.log_q)
    np.testing.assert_allclose(mass, [q[0, 0] + q[0, 2], q[1, :4].sum()], atol=1e-15)


def test_generation_is_seeded_and_copies_the_addressed_template():
    model = make_model(estimator="vimco", n_dummy=1)
    x, M = make_data(B=3, N=4)
    first = model.generate(np.random.default_rng(12), M, samples=5)
    again = model.generate(np.random.default_rng(12), M, samples=5)
    for key in ("a", "probs", "x"):
        np.testing.assert_array_equal(first[key], again[key])
    assert first["x"].shape == (5, 3, 12) and first["a"].max() <= 4
    assert np.all((first["probs"] >= 0) & (first["probs"] <= 1))
    model.params["dec.Wo"][:] = 0.0                                          # logit = -20 + 40 m_a
    model.params["dec.bo"][:], model.params["dec.skip"][:] = -20.0, 40.0
    model.params["mem.dummy"][:] = 0.0                                       # a blank dummy entry
    out = model.generate(np.random.default_rng(13), M, samples=4)
    slots = np.concatenate([M, np.broadcast_to(model.params["mem.dummy"], (3, 1, 12))], axis=1)
    np.testing.assert_array_equal(out["x"], slots[np.arange(3)[None, :], out["a"]] > 0.5)
    learned = make_model(estimator="exact", memory="learned", N=3)
    assert learned.generate(np.random.default_rng(14), B=2, samples=3)["x"].shape == (3, 2, 12)


# ----------------------------------------------------------------- invalid inputs
def _inputs_for_errors():
    model = make_model(estimator="vimco")
    x, M = make_data(N=4)
    return model, sampled(model, x, M, S=3)


@pytest.mark.parametrize("change, match", [
    (lambda i: i._replace(x=i.x[:, :5]), "x must have shape"),
    (lambda i: i._replace(x=i.x[0]), "x must have shape"),
    (lambda i: i._replace(M=i.M[:2]), "M must have shape"),
    (lambda i: i._replace(M=None), "few-shot mode needs a memory"),
    (lambda i: i._replace(eps=i.eps[..., :2]), "eps must have shape"),
    (lambda i: i._replace(eps=None), "eps"),
    (lambda i: i._replace(a=i.a + 4), "addresses in 0..N'-1"),
    (lambda i: i._replace(a=-i.a - 1), "addresses in 0..N'-1"),
    (lambda i: i._replace(a=i.a.astype(float)), "a must be an int array"),
    (lambda i: i._replace(a=i.a[:2]), "a must be an int array"),
    (lambda i: i._replace(a=None), "exactly one of a"),
    (lambda i: i._replace(u=np.zeros((3, 3))), "exactly one of a"),
    (lambda i: i._replace(a=None, u=np.ones((3, 3))), "u must have shape"),
    (lambda i: i._replace(x=np.where(i.x > 0, np.nan, 0.0)), "finite"),
])
def test_invalid_inputs_raise(change, match):
    model, inputs = _inputs_for_errors()
    with pytest.raises(ValueError, match=match):
        model.forward(change(inputs))


def test_addresses_outside_the_top_k_set_raise():
    model = make_model(estimator="vimco", top_k=2)
    x, M = make_data(N=4)
    log_q = model.address_posterior(x, M)
    dropped = np.argmin(log_q, axis=1)[None, :].repeat(2, axis=0)            # q = 0 there
    with pytest.raises(ValueError, match="top-k set"):
        model.forward(sampled(model, x, M, S=2, a=dropped))


def test_invalid_mode_specific_inputs_raise():
    exact = make_model(estimator="exact")
    x, M = make_data(N=4)
    with pytest.raises(ValueError, match=r"\(N', B, Z\)"):
        exact.forward(VMAInputs(x, M, eps=np.zeros((3, 3, 3))))
    with pytest.raises(ValueError, match="neither a nor u"):
        exact.forward(VMAInputs(x, M, a=np.zeros((4, 3), dtype=int), eps=np.zeros((4, 3, 3))))
    learned = make_model(estimator="pathwise", memory="learned", N=3)
    with pytest.raises(ValueError, match="M=None"):
        learned.forward(sampled(learned, x, M, S=2, a=np.zeros((2, 3), dtype=int)))
    model, inputs = _inputs_for_errors()
    _, cache = model.forward(inputs)
    with pytest.raises(ValueError, match=r"dL must have the output's shape"):
        model.backward(np.ones(2), cache)
    model.params["dec.bo"] = np.zeros(11)
    with pytest.raises(ValueError, match="dec.bo must have shape"):
        model.forward(inputs)
    with pytest.raises(ValueError, match="VMAInputs"):
        exact.forward((x, M))


@pytest.mark.parametrize("bad", [dict(X=0), dict(X=12, estimator="reinforce"), dict(X=12, baseline="mean"),
                                 dict(X=12, memory="learned"), dict(X=12, N=3), dict(X=12, top_k=0),
                                 dict(X=12, memory="learned", N=3, n_dummy=1), dict(X=12, mean_pixel=1.0)])
def test_invalid_config_raises(bad):
    with pytest.raises(ValueError):
        VMAConfig(**bad)
