"""minimem.memory.vsm and vsm_memory (VSM-style, reconstructed): the invariants of spec C.9, the
registered gradient checks, consolidation, state save/load, hostile-but-valid and invalid inputs."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcheck.cases import all_cases
from gradcheck.cases.vsm import small_tasks, small_vsm
from gradcheck.core import assert_grads_close, check_model, numeric_vjp
from minimem import autodiff as ad
from minimem.checkpoint import load_checkpoint, save_checkpoint
from minimem.memory.vma_bound import logsumexp
from minimem.memory.vsm import VSM, VSMConfig, VSMInputs, VSMVAE
from minimem.optim import Adam
from minimem.train import TrainConfig, train
from minimem.memory.vsm_memory import (
    SemanticState, concept_term_backward, concept_term_forward, consolidate, gaussian_kl_autodiff,
    gaussian_kl_backward, gaussian_kl_forward, masked_softmax_backward, masked_softmax_forward,
    mixture_log_prior, recall_backward, recall_forward,
)


def model_and_tasks(seed=0, n_c=(2, 0, 3), Ne=3, n_t=2):
    rng = np.random.default_rng(seed)
    return small_vsm(rng), small_tasks(rng, list(n_c), Ne=Ne, n_t=n_t)


def recall_inputs(seed=0, B=3, Ns=4, Zc=3):
    rng = np.random.default_rng(seed)
    chat, pi = rng.standard_normal((B, Zc)), rng.uniform(0.2, 3.0, (B, Zc))
    mu, lam = rng.standard_normal((Ns, Zc)), rng.uniform(0.5, 2.0, (Ns, Zc))
    return chat, pi, mu, lam


def concept_inputs(seed=0, B=3, Ns=4, Zc=3):
    rng = np.random.default_rng(seed)
    (log_prior, m, P), _ = recall_forward(*recall_inputs(seed, B, Ns, Zc), tau_r2=0.1)
    return rng.standard_normal((B, Zc)), 0.3 * rng.standard_normal((B, Zc)), log_prior, m, P


# ----------------------------------------------------------------- C.9: the concept term
def test_concept_term_identity():                                             # C.9.1
    mu_c, log_var_c, log_prior, m, P = concept_inputs()
    (T_c, log_q_a), _ = concept_term_forward(mu_c, log_var_c, log_prior, m, P)
    q = np.exp(log_q_a)
    kl_c, _ = gaussian_kl_forward(mu_c[:, None], 0.5 * log_var_c[:, None], m, -0.5 * np.log(P))   # (B, Ns)
    kl_form = np.sum(q * (log_q_a - log_prior), axis=1) + np.sum(q * kl_c, axis=1)
    np.testing.assert_allclose(T_c, -kl_form, atol=1e-12, rtol=0)


def test_closed_form_address_posterior_is_the_maximiser():                   # C.9.2
    mu_c, log_var_c, log_prior, m, P = concept_inputs(1)
    (T_c, log_q_a), _ = concept_term_forward(mu_c, log_var_c, log_prior, m, P)
    entropy = np.sum(0.5 * (math.log(2 * math.pi) + 1.0 + log_var_c), axis=1)   # H[q(c)]
    joint = log_q_a + (T_c - entropy)[:, None]                                # log p(a) + e = log q + Lambda
    rng = np.random.default_rng(2)
    for _ in range(1000):                     # the address part of the bound at any other r(a)
        r = rng.dirichlet(0.5 * np.ones(4), size=3)
        value = np.sum(r * (joint - np.log(r)), axis=1) + entropy
        assert np.all(value <= T_c + 1e-12)


def test_envelope_frozen_posterior_gives_the_same_gradient():               # C.9.3
    arrays = concept_inputs(3)
    (T_c, log_q_a), cache = concept_term_forward(*arrays)
    dT = np.array([0.4, -1.2, 0.9])
    manual = concept_term_backward(dT, cache)
    tensors = [ad.Tensor(a, requires_grad=True) for a in arrays]
    mu_c, log_var_c, log_prior, m, P = tensors
    q = np.exp(log_q_a)                                                       # frozen: a constant
    kl_c = gaussian_kl_autodiff(ad.reshape(mu_c, (3, 1, 3)), 0.5 * ad.reshape(log_var_c, (3, 1, 3)), m, -0.5 * ad.log(P))
    kl_form = -(ad.sum(q * (np.log(q) - log_prior), axis=1) + ad.sum(q * kl_c, axis=1))
    (kl_form * dT).sum().backward()
    for mine, t in zip(manual, tensors):
        np.testing.assert_allclose(mine, t.grad, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------- C.9: recall and fusion
def test_fusion_limits():                                                     # C.9.4
    chat, pi, mu, lam = recall_inputs()
    (log_prior, m, P), _ = recall_forward(chat, np.zeros_like(pi), mu, lam, tau_r2=0.1)
    v = 1.0 / lam + 0.1
    np.testing.assert_allclose(m, np.broadcast_to(mu, m.shape), atol=1e-12)
    np.testing.assert_allclose(P, np.broadcast_to(1.0 / v, P.shape), atol=1e-12)
    np.testing.assert_allclose(log_prior, -math.log(4), atol=1e-12)
    (_, m, P), _ = recall_forward(chat, pi, mu, np.full_like(lam, 1e-12), tau_r2=0.0)   # v = 1e12
    np.testing.assert_allclose(m, np.broadcast_to(chat[:, None], m.shape), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(P, np.broadcast_to(pi[:, None], P.shape), rtol=1e-9)


def test_fusion_matches_a_numerical_posterior_on_a_grid():                   # C.9.5
    mu, v, chat, pi = 0.7, 0.8, -0.4, 2.5
    grid = np.linspace(-12, 12, 240_001)
    step = grid[1] - grid[0]
    normal = lambda x, mean, var: np.exp(-0.5 * (x - mean) ** 2 / var) / math.sqrt(2 * math.pi * var)
    product = normal(grid, mu, v) * normal(chat, grid, 1.0 / pi)
    evidence = np.sum(product) * step
    lam = np.array([[1.0 / (v - 0.1)]])                                       # v = 1/lam + tau_r2
    (_, m, P), _ = recall_forward(np.array([[chat]]), np.array([[pi]]), np.array([[mu]]), lam, tau_r2=0.1)
    np.testing.assert_allclose(product / evidence, normal(grid, m[0, 0, 0], 1.0 / P[0, 0, 0]), atol=1e-6)
    np.testing.assert_allclose(evidence, normal(chat, mu, v + 1.0 / pi), rtol=1e-6)


def test_recall_prior_is_the_normalised_cue_evidence():                      # (S5)
    chat, pi, mu, lam = recall_inputs(4)
    (log_prior, _, _), _ = recall_forward(chat, pi, mu, lam, tau_r2=0.1)
    s = 1.0 / lam + 0.1 + 1.0 / pi[:, None]                                   # v + 1/pi, (B, Ns, Zc)
    evidence = np.sum(-0.5 * (chat[:, None] - mu) ** 2 / s - 0.5 * np.log(2 * math.pi * s), axis=-1)
    np.testing.assert_allclose(log_prior, evidence - logsumexp(evidence, axis=1, keepdims=True), atol=1e-12)


def test_mixture_prior_integrates_to_one():                                   # C.9.10
    chat, pi, mu, lam = recall_inputs(5, B=1, Ns=3, Zc=1)
    (log_prior, m, P), _ = recall_forward(chat, pi, mu, lam, tau_r2=0.1)
    grid = np.linspace(-15, 15, 120_001)[:, None, None]                       # (G, B=1, Zc=1)
    density = np.exp(mixture_log_prior(grid, log_prior, m, P))
    np.testing.assert_allclose(np.sum(density) * (grid[1] - grid[0]).item(), 1.0, atol=1e-6)


# ----------------------------------------------------------------- C.9: consolidation
def _traces(seed=6, B=5, Ns=4, Zc=3):
    rng = np.random.default_rng(seed)
    state = SemanticState(rng.standard_normal((Ns, Zc)), rng.uniform(0.5, 2.0, (Ns, Zc)), np.zeros(Ns))
    return state, rng.standard_normal((B, Zc)), rng.uniform(0.1, 1.0, (B, Zc)), rng.dirichlet(np.ones(Ns), size=B)


def test_batched_consolidation_equals_trace_by_trace():                      # C.9.6
    state, mu_c, var_c, q_a = _traces()
    batched = consolidate(state, mu_c, var_c, q_a, tau_t2=0.1, gamma=0.9, lam0=1.0)
    sequential = consolidate(state, mu_c[:0], var_c[:0], q_a[:0], tau_t2=0.1, gamma=0.9, lam0=1.0)   # U1 once
    for b in range(len(mu_c)):
        sequential = consolidate(sequential, mu_c[b:b + 1], var_c[b:b + 1], q_a[b:b + 1], 0.1, 1.0, 1.0)
    for new, old in zip(batched, sequential):
        np.testing.assert_allclose(new, old, atol=1e-12, rtol=0)
    forgotten = 0.9 * state.lam + 0.1
    assert np.all(batched.lam >= forgotten)                                   # U3 only adds precision
    np.testing.assert_allclose(batched.count, q_a.sum(axis=0), atol=1e-12)


def test_consolidation_limits():                                              # C.9.6
    state, mu_c, var_c, _ = _traces(7, B=1)
    q_a = np.array([[0.0, 1.0, 0.0, 0.0]])
    tiny = state._replace(lam=np.full_like(state.lam, 1e-14))
    copied = consolidate(tiny, mu_c, var_c, q_a, tau_t2=0.0, gamma=1.0, lam0=1e-14)
    np.testing.assert_allclose(copied.mu[1], mu_c[0], atol=1e-10)             # a single trace is copied
    np.testing.assert_allclose(copied.mu[[0, 2, 3]], tiny.mu[[0, 2, 3]], atol=1e-15)   # untouched slots
    relaxed = state
    for _ in range(5):                                                        # no traces: geometric relaxation
        relaxed = consolidate(relaxed, mu_c[:0], var_c[:0], q_a[:0], tau_t2=0.1, gamma=0.8, lam0=1.0)
    np.testing.assert_allclose(relaxed.lam - 1.0, 0.8 ** 5 * (state.lam - 1.0), atol=1e-12)
    np.testing.assert_allclose(relaxed.mu, state.mu, atol=1e-15)


def test_model_consolidation_and_checkpoint_round_trip(tmp_path):
    model, tasks = model_and_tasks(8)
    _, cache = model.forward(tasks)
    model.consolidate(cache)
    np.testing.assert_allclose(model.state.count, np.exp(cache.log_q_a).sum(axis=0), atol=1e-12)
    path = tmp_path / "vsm.npz"
    save_checkpoint(path, model.params, extra=model.state_dict())
    params, _, extra = load_checkpoint(path, expected=model.params)
    restored = VSM(model.config, rng=np.random.default_rng(99))
    restored.params = params
    restored.load_state_dict(extra)
    np.testing.assert_array_equal(restored.forward(tasks)[0], model.forward(tasks)[0])
    with pytest.raises(ValueError, match="sem.lam"):
        restored.load_state_dict({**extra, "sem.lam": np.zeros((4, 3))})


# ----------------------------------------------------------------- C.9: masking and symmetries
def test_masked_slots_and_context_order_change_nothing():                    # C.9.7
    model, tasks = model_and_tasks(9)
    L, cache = model.forward(tasks)
    garbage = tasks.context.copy()
    garbage[~tasks.mask] = np.random.default_rng(10).standard_normal(garbage[~tasks.mask].shape) * 100
    L2, cache2 = model.forward(tasks._replace(context=garbage))
    np.testing.assert_array_equal(L2, L)
    g1, g2 = model.backward(np.ones(3), cache), model.backward(np.ones(3), cache2)
    for name in g1:
        np.testing.assert_array_equal(g1[name], g2[name])
    perm = np.array([2, 0, 1])
    moved = tasks._replace(context=tasks.context[:, perm], mask=tasks.mask[:, perm])
    np.testing.assert_allclose(model.forward(moved)[0], L, atol=1e-12, rtol=0)


def test_permuting_semantic_slots_permutes_q_and_keeps_the_bound():          # C.9.7
    model, tasks = model_and_tasks(11)
    L, cache = model.forward(tasks)
    perm = np.array([3, 1, 0, 2])
    model.state = model.state._replace(mu=model.state.mu[perm], lam=model.state.lam[perm])
    L2, cache2 = model.forward(tasks)
    np.testing.assert_allclose(L2, L, atol=1e-12, rtol=0)
    np.testing.assert_allclose(cache2.log_q_a, cache.log_q_a[:, perm], atol=1e-12)


def test_zero_shot_ignores_the_cue_and_reads_nothing():                      # C.9.8
    model, tasks = model_and_tasks(12, n_c=(0, 0))
    L, cache = model.forward(tasks)
    grads = model.backward(np.array([1.0, -0.5]), cache)
    for name in ("cue.Wm", "cue.bm", "cue.Ws", "cue.bs", "att.Wk"):
        np.testing.assert_array_equal(grads[name], 0.0)
    for value in (cache.beta, cache.r, cache.t):
        np.testing.assert_array_equal(value, 0.0)
    np.testing.assert_allclose(cache.log_prior, -math.log(4), atol=1e-12)
    empty = tasks._replace(context=np.zeros((2, 0, 12)), mask=np.zeros((2, 0), dtype=bool))   # Ne = 0
    np.testing.assert_allclose(model.forward(empty)[0], L, atol=1e-12, rtol=0)


def test_importance_weighted_bound_ordering():                               # C.9.9
    rng = np.random.default_rng(13)
    model = small_vsm(rng, scale=0.5)
    B, n_t = 200, 2
    tasks = small_tasks(rng, rng.integers(0, 4, B), Ne=3, n_t=n_t)
    L15 = model.forward(tasks)[0]
    bounds = {}
    for S in (1, 10, 50):
        noisy = tasks._replace(eps_c=rng.standard_normal((S, B, 3)), eps_z=rng.standard_normal((S, B, n_t, 3)))
        log_w = model.log_weights(noisy)
        bounds[S] = logsumexp(log_w, axis=0) - math.log(S)
    se = lambda d: d.std(ddof=1) / math.sqrt(len(d))
    # The S16 weights use the exact mixture prior, which is at least the S15 concept term in
    # expectation (Jensen over the slots), so E[L_1] >= L_S15 rather than equal (see report).
    assert np.mean(bounds[1] - L15) >= -3 * se(bounds[1] - L15)
    for low, high in ((1, 10), (10, 50)):
        diff = bounds[high] - bounds[low]
        assert diff.mean() >= -3 * se(diff)
    assert bounds[50].mean() > bounds[1].mean()
    np.testing.assert_allclose(model.nll(noisy), -bounds[50] / n_t, atol=1e-12)


def test_mixture_term_is_at_least_the_concept_term_and_equal_for_one_slot():
    # T_c = lse_k(log p_k + E_c log N_k) + H <= E_c[lse_k(log p_k + log N_k(c))] + H (Jensen), so the
    # S16 weights bound E[L_1] >= L_S15, with equality when Ns = 1 (spec C.9.9 says "equals").
    for Ns in (4, 1):
        rng = np.random.default_rng(13)
        model = small_vsm(rng, scale=0.5)
        model.state = model.state._replace(mu=model.state.mu[:Ns], lam=model.state.lam[:Ns], count=model.state.count[:Ns])
        _, k = model.forward(small_tasks(rng, [2, 0, 3]))
        c = k.mu_c + np.exp(0.5 * k.log_var_c) * rng.standard_normal((20_000,) + k.mu_c.shape)
        log_q = np.sum(-0.5 * (c - k.mu_c) ** 2 / np.exp(k.log_var_c) - 0.5 * (math.log(2 * math.pi) + k.log_var_c), axis=-1)
        term = mixture_log_prior(c, k.log_prior, k.m, k.P) - log_q                # (draws, B)
        mean, se = term.mean(axis=0), term.std(axis=0) / math.sqrt(len(term))
        if Ns == 1:
            assert np.all(np.abs(mean - k.T_c) <= 4 * se)
        else:
            assert np.all(mean - k.T_c > 4 * se)


# ----------------------------------------------------------------- primitive pairs
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), B=st.integers(1, 3), Ns=st.integers(1, 4), Zc=st.integers(1, 3))
def test_recall_and_concept_pairs_match_central_differences(seed, B, Ns, Zc):
    arrays = recall_inputs(seed, B, Ns, Zc)
    rng = np.random.default_rng(seed)
    outs, cache = recall_forward(*arrays, tau_r2=0.1)
    douts = tuple(rng.standard_normal(o.shape) for o in outs)
    numeric = numeric_vjp(lambda *a: recall_forward(*a, tau_r2=0.1)[0], arrays, douts)
    assert_grads_close(recall_backward(*douts, cache), numeric, names=("chat", "pi", "mu", "lam"), rtol=1e-5, atol=1e-8)
    arrays = concept_inputs(seed, B, Ns, Zc)
    (T_c, _), cache = concept_term_forward(*arrays)
    dT = rng.standard_normal(B)
    numeric = numeric_vjp(lambda *a: concept_term_forward(*a)[0][0], arrays, dT)
    assert_grads_close(concept_term_backward(dT, cache), numeric, names=("mu_c", "log_var_c", "log_prior", "m", "P"),
                       rtol=1e-5, atol=1e-8)


def test_masked_softmax_and_kl_pairs_match_central_differences():
    rng = np.random.default_rng(14)
    s = rng.standard_normal((2, 3, 4))
    mask = np.array([[True, False, True, True], [False, False, False, False]])[:, None, :]   # one empty row
    beta, cache = masked_softmax_forward(s, mask)
    np.testing.assert_array_equal(beta[1], 0.0)
    np.testing.assert_allclose(beta[0].sum(axis=-1), 1.0, atol=1e-15)
    dbeta = rng.standard_normal(s.shape)
    numeric = numeric_vjp(lambda v: masked_softmax_forward(v, mask)[0], (s,), dbeta)
    assert_grads_close((masked_softmax_backward(dbeta, cache),), numeric, names=("s",))
    arrays = tuple(rng.standard_normal((2, 3)) * 0.5 for _ in range(4))
    dout = rng.standard_normal(2)
    _, cache = gaussian_kl_forward(*arrays)
    numeric = numeric_vjp(lambda *a: gaussian_kl_forward(*a)[0], arrays, dout)
    assert_grads_close(gaussian_kl_backward(dout, cache), numeric, names=("mu_q", "log_sig_q", "mu_p", "log_sig_p"))


# ----------------------------------------------------------------- gradient checks (D.2)
CASES = {case.name: case for case in all_cases("vsm")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_passes_full_gradcheck_with_both_engines(name):
    case = {c.name: c for c in all_cases("vsm")}[name]
    result = check_model(case)
    assert result.ok, [(r.engine, r.tensor, r.verdict, r.max_rel) for r in result.rows if not r.ok]
    assert {"vsm.hvae.mixed", "vsm.hvae.zero_shot", "vsm.hvae.state_as_input", "vsm.vae.mixed",
            "vsm.vae.zero_shot", "vsm.vae.state_as_input"} <= set(CASES)


def test_engines_agree_on_a_larger_batch():
    model, tasks = model_and_tasks(15, n_c=(0, 1, 2, 3, 4, 5), Ne=5, n_t=3)
    dL = np.random.default_rng(16).standard_normal(6)
    manual = model.backward(dL, model.forward(tasks)[1])
    tparams = {k: ad.Tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}
    (model.forward_autodiff(tparams, tasks) * dL).sum().backward()
    for name in manual:
        np.testing.assert_allclose(manual[name], tparams[name].grad, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------- hostile but valid inputs
@pytest.mark.parametrize("kind", ["zeros", "saturated"])
def test_hostile_inputs_give_no_nan(kind):
    model, tasks = model_and_tasks(17, n_c=(0, 2, 3))
    if kind == "zeros":
        tasks = tasks._replace(context=np.zeros_like(tasks.context), targets=np.zeros_like(tasks.targets))
    else:
        model.params["dec.bo"] = np.full(12, 1e3)
        model.params["dec.skip"] = np.full(12, -1e3)
        model.params["att.Wk"] = 1e4 * model.params["att.Wk"]                  # one-hot attention
    L, cache = model.forward(tasks)
    grads = model.backward(-np.ones(3), cache)
    assert np.all(np.isfinite(L)) and all(np.all(np.isfinite(g)) for g in grads.values())


def test_generation_is_seeded():
    model, tasks = model_and_tasks(18)
    first = model.generate(np.random.default_rng(19), tasks.context, tasks.mask, samples=4)
    again = model.generate(np.random.default_rng(19), tasks.context, tasks.mask, samples=4)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert first["x"].shape == (3, 4, 12) and first["a"].shape == (3,)
    assert np.all((first["probs"] >= 0) & (first["probs"] <= 1))


# ----------------------------------------------------------------- invalid inputs
@pytest.mark.parametrize("change, match", [
    (lambda t: t._replace(targets=t.targets[:, :, :5]), "targets must have shape"),
    (lambda t: t._replace(targets=t.targets[:, :0]), "targets must have shape"),
    (lambda t: t._replace(context=t.context[:2]), "context must have shape"),
    (lambda t: t._replace(mask=t.mask.astype(int)), "mask must be a bool"),
    (lambda t: t._replace(mask=t.mask[:, :2]), "mask must be a bool"),
    (lambda t: t._replace(eps_c=t.eps_c[:, :2]), "eps_c must have shape"),
    (lambda t: t._replace(eps_z=t.eps_z[:, :1]), "eps_z must have shape"),
    (lambda t: t._replace(targets=np.full_like(t.targets, np.nan)), "finite"),
])
def test_invalid_inputs_raise(change, match):
    model, tasks = model_and_tasks(20)
    with pytest.raises(ValueError, match=match):
        model.forward(change(tasks))


def test_invalid_config_and_backward_raise():
    for bad in (dict(X=0), dict(X=12, gamma=0.0), dict(X=12, tau_r2=-1.0), dict(X=12, lam0=0.0), dict(X=12, dtype="f16")):
        with pytest.raises(ValueError):
            VSMConfig(**bad)
    model, tasks = model_and_tasks(21)
    _, cache = model.forward(tasks)
    with pytest.raises(ValueError, match="dL must have"):
        model.backward(np.ones(2), cache)
    with pytest.raises(ValueError, match="VSMInputs"):
        model.forward(tuple(tasks))


# ----------------------------------------------------------------- the VSM-VAE plug-in (C.3)
def vae_and_tasks(seed=0, n_c=(2, 0, 3), Ne=3, n_t=3, **options):
    rng = np.random.default_rng(seed)
    return small_vsm(rng, variant="vae", **options), small_tasks(rng, list(n_c), Ne=Ne, n_t=n_t, variant="vae")


def test_vae_variant_is_a_configuration_of_vsm():
    model, _ = vae_and_tasks(40)
    assert isinstance(model, VSMVAE) and isinstance(model, VSM)
    assert type(VSM(VSMConfig(X=12))) is VSM
    assert "pz.Wm" not in model.params and "dec.Wz" not in model.params and model.params["att.Wq"].shape == (3, 4)
    with pytest.raises(ValueError, match="variant"):
        VSMConfig(X=12, variant="ladder")
    with pytest.raises(ValueError, match="variant='vae'"):
        VSMVAE(VSMConfig(X=12))


def test_vae_scores_each_target_on_its_own():
    # no shared task latent: the bound of n_t targets is the sum of the single-target bounds
    model, tasks = vae_and_tasks(41)
    L, _ = model.forward(tasks)
    singles = sum(model.forward(tasks._replace(targets=tasks.targets[:, i:i + 1], eps_c=tasks.eps_c[:, i:i + 1]))[0]
                  for i in range(3))
    np.testing.assert_allclose(L, singles, atol=1e-12, rtol=0)
    hvae, htasks = model_and_tasks(41)                                          # the hierarchical one is not separable
    split = sum(hvae.forward(htasks._replace(targets=htasks.targets[:, i:i + 1], eps_z=htasks.eps_z[:, i:i + 1]))[0]
                for i in range(2))
    assert np.max(np.abs(hvae.forward(htasks)[0] - split)) > 1e-3


def test_vae_engines_agree_on_a_larger_batch():
    model, tasks = vae_and_tasks(42, n_c=(0, 1, 2, 3, 4, 5), Ne=5, n_t=2)
    dL = np.random.default_rng(43).standard_normal(6)
    manual = model.backward(dL, model.forward(tasks)[1])
    tparams = {k: ad.Tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}
    (model.forward_autodiff(tparams, tasks) * dL).sum().backward()
    for name in manual:
        np.testing.assert_allclose(manual[name], tparams[name].grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("variant", ["hvae", "vae"])
def test_no_episodic_read_reads_nothing(variant):
    rng = np.random.default_rng(44)
    model = small_vsm(rng, variant=variant, episodic_read=False)
    tasks = small_tasks(rng, [2, 3], variant=variant)
    _, cache = model.forward(tasks)
    grads = model.backward(np.ones(2), cache)
    for value in (cache.beta, cache.r, cache.t, grads["att.Wq"], grads["att.Wk"], grads["dec.skip"]):
        np.testing.assert_array_equal(value, 0.0)
    assert np.any(grads["cue.Wm"] != 0)                                        # the cue still informs the recall


def test_vae_importance_weighted_bound_ordering():
    rng = np.random.default_rng(45)
    model = small_vsm(rng, scale=0.5, variant="vae")
    B, n_t = 200, 2
    tasks = small_tasks(rng, rng.integers(0, 4, B), n_t=n_t, variant="vae")
    bounds = {}
    for S in (1, 10, 50):
        noisy = tasks._replace(eps_c=rng.standard_normal((S, B, n_t, 3)))
        bounds[S] = logsumexp(model.log_weights(noisy), axis=0) - math.log(S)
    se = lambda d: d.std(ddof=1) / math.sqrt(len(d))
    for low, high in ((1, 10), (10, 50)):
        diff = bounds[high] - bounds[low]
        assert diff.mean() >= -3 * se(diff)
    assert bounds[50].mean() > bounds[1].mean()
    np.testing.assert_allclose(model.nll(noisy), -bounds[50] / n_t, atol=1e-12)
    # with one slot the concept term is exact in expectation: E[log w_1] = L (C.9.9)
    model.state = model.state._replace(mu=model.state.mu[:1], lam=model.state.lam[:1], count=model.state.count[:1])
    L = model.forward(tasks)[0]
    draws = np.stack([model.log_weights(tasks._replace(eps_c=rng.standard_normal((1, B, n_t, 3))))[0] for _ in range(4)])
    d = (draws - L).ravel()
    assert abs(d.mean()) <= 4 * se(d) + 1e-9


def test_vae_consolidation_generation_and_invalid_inputs():
    model, tasks = vae_and_tasks(46)
    _, cache = model.forward(tasks)
    model.consolidate(cache)
    np.testing.assert_allclose(model.state.count, np.exp(cache.log_q_a).sum(axis=(0, 1)), atol=1e-12)
    assert model.state.count.sum() == pytest.approx(9.0)                      # B * n_t = 9 traces
    first = model.generate(np.random.default_rng(47), tasks.context, tasks.mask, samples=4)
    again = model.generate(np.random.default_rng(47), tasks.context, tasks.mask, samples=4)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert first["x"].shape == (3, 4, 12) and first["a"].shape == (3, 4) and first["c"].shape == (3, 4, 3)
    with pytest.raises(ValueError, match="eps_z must be None"):
        model.forward(tasks._replace(eps_z=np.zeros((3, 3, 3))))
    with pytest.raises(ValueError, match=r"eps_c must have shape \(B, n_t, Zc\)"):
        model.forward(tasks._replace(eps_c=tasks.eps_c[:, 0]))


# ----------------------------------------------------------------- the semantic state and the training loop
def _vsm_batch(variant):
    def batch_fn(rng, step):
        tasks = small_tasks(rng, rng.integers(0, 4, 4), variant=variant)
        return tasks, None
    return batch_fn


def _negative_bound(L, _):
    return -float(np.mean(L)), -np.ones_like(L) / L.size


@pytest.mark.parametrize("variant", ["hvae", "vae"])
def test_training_loop_consolidates_and_resumes_bit_exactly(tmp_path, variant):
    """train(..., after_step=consolidate) updates the semantic memory after every optimiser step;
    the training checkpoint carries it (model.sem.*), so an interrupted-and-resumed run ends with
    params AND semantic state bit-identical to an uninterrupted one."""
    def run(steps, path, resume=False):
        model = small_vsm(np.random.default_rng(48), variant=variant)
        config = TrainConfig(steps=steps, log_every=0, checkpoint_path=str(path), seed=3)
        train(model, Adam(model.params, lr=1e-2), _vsm_batch(variant), _negative_bound, config, log=None,
              resume=resume, after_step=lambda m, cache, step: m.consolidate(cache))
        return model

    straight = run(6, tmp_path / "a.npz")
    start = small_vsm(np.random.default_rng(48), variant=variant)
    assert np.all(straight.state.count > 0) and not np.array_equal(straight.state.mu, start.state.mu)
    # (had the checkpoint lost the semantic state, steps 3-5 would start from the init state: not equal)
    run(3, tmp_path / "b.npz")                                                 # stop after 3 steps ...
    resumed = run(6, tmp_path / "b.npz", resume=True)                          # ... resume in a fresh model
    for name in straight.params:
        np.testing.assert_array_equal(resumed.params[name], straight.params[name])
    for name, value in straight.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[name], value)
    _, _, extra = load_checkpoint(tmp_path / "a.npz")
    np.testing.assert_array_equal(extra["model.sem.mu"], straight.state.mu)


def test_semantic_state_checkpoint_round_trip_is_bit_exact(tmp_path):
    for variant in ("hvae", "vae"):
        rng = np.random.default_rng(49)
        model = small_vsm(rng, variant=variant)
        tasks = small_tasks(rng, [1, 2, 0], variant=variant)
        model.consolidate(model.forward(tasks)[1])
        save_checkpoint(tmp_path / f"{variant}.npz", model.params, extra=model.state_dict())
        params, _, extra = load_checkpoint(tmp_path / f"{variant}.npz", expected=model.params)
        restored = VSM(model.config, rng=np.random.default_rng(0))
        restored.params = params
        restored.load_state_dict(extra)
        for name, value in model.state_dict().items():
            np.testing.assert_array_equal(restored.state_dict()[name], value)
            assert restored.state_dict()[name].dtype == value.dtype
        np.testing.assert_array_equal(restored.forward(tasks)[0], model.forward(tasks)[0])
        model.consolidate(model.forward(tasks)[1])                             # and they keep evolving alike
        restored.consolidate(restored.forward(tasks)[1])
        np.testing.assert_array_equal(restored.state.mu, model.state.mu)
