"""minimem.memory.hma and hma_mab: the MAB block and GELU against central differences and their
autodiff twins, the spec's B9 invariants (attention rows, the plain head, permutations, no label
leakage, queue FIFO and EMA, batch dependence, no gradient to the queue, momentum extremes), the
queue being written after it is read, the registered gradcheck cases, a planted per-sample
backward of block A, and the constraints that raise ValueError."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minimem.memory.hma as hma_module
from gradcheck.cases import all_cases
from gradcheck.cases.hma import random_graphs
from gradcheck.core import assert_grads_close, check_model, numeric_vjp
from minimem import autodiff as ad
from minimem.memory.hma import (
    HMA, HMAConfig, HMAInputs, attention_maps, batch_dependence, hma_dropout, hma_head_shapes, predict_in_batches,
)
from minimem.memory.hma_mab import (
    mab_autodiff, mab_backward, mab_dropout, mab_forward, mab_init,
)
from minimem.nn.graph import GCNModel
from minimem.nn.mlp import MLPModel

SMALL = dict(D=4, K_c=3, L_h=2, N_r=6, m=2, heads=2, mu=0.5, ff_mult=1)     # Dc = 6


def make_model(seed=0, X=5, writes=2, B=4, **options):
    """A small HMA on an MLP backbone whose queue holds `writes` written batches."""
    rng = np.random.default_rng(seed)
    backbone = MLPModel((X, 6, SMALL["D"]), activation="relu", output_activation="relu", rng=rng)
    model = HMA(HMAConfig(**{**SMALL, **options}), backbone, rng=rng)
    if "G" in model.params:
        G = model.params["G"]
        model.params["G"] = (0.5 * rng.standard_normal(G.shape)).astype(G.dtype)   # distinct tokens
    for _ in range(writes if model.config.rmem else 0):
        model.write_memory(rng.standard_normal((B, X)), rng.integers(0, model.config.K_c, B))
    return model, rng


# ----------------------------------------------------------------- GELU and the MAB block
@settings(max_examples=15, deadline=None)
@given(B=st.integers(1, 2), Tq=st.integers(1, 2), Tk=st.integers(0, 2), Ts=st.integers(0, 2),
       heads=st.sampled_from([1, 2]), res_linear=st.booleans(), masked=st.booleans(), dropped=st.booleans(),
       seed=st.integers(0, 2**16))
def test_mab_backward_matches_central_differences_and_the_twin(B, Tq, Tk, Ts, heads, res_linear, masked, dropped,
                                                               seed):
    if Tk + Ts == 0:
        Tk = 1
    rng = np.random.default_rng(seed)
    Dc = 4
    params = {n: p + 0.3 * rng.standard_normal(p.shape) for n, p in mab_init(rng, Dc, 1, res_linear).items()}
    X = rng.standard_normal((B, Tq, Dc))
    Y = rng.standard_normal((B, Tk, Dc)) if Tk else None
    Y_shared = rng.standard_normal((Ts, Dc)) if Ts else None
    mask = None
    if masked:
        mask = rng.random((B, Tq, Tk + Ts)) < 0.6
        mask[..., 0] = True
    dropout = mab_dropout(rng, 0.3, B, Tq, Dc, Dc) if dropped else None
    out, cache = mab_forward(X, Y, params, heads, 0.6, Y_shared, mask, dropout)
    np.testing.assert_allclose(cache.attn.A.sum(axis=-1), 1.0, rtol=1e-12)        # B9.1: rows sum to 1
    dout = rng.standard_normal(out.shape)
    dX, dY, dY_shared, grads = mab_backward(dout, cache)
    assert list(grads) == list(params)
    names = list(params)
    arrays = [a for a in (X, Y, Y_shared) if a is not None]
    labels = [n for n, a in zip(("X", "Y", "Y_shared"), (X, Y, Y_shared)) if a is not None]

    def f(*args):
        given_ = dict(zip(labels, args))
        return mab_forward(given_["X"], given_.get("Y"), dict(zip(names, args[len(labels):])), heads, 0.6,
                           given_.get("Y_shared"), mask, dropout)[0]

    numeric = numeric_vjp(f, arrays + [params[n] for n in names], dout)
    analytic = [g for g, a in zip((dX, dY, dY_shared), (X, Y, Y_shared)) if a is not None] + [grads[n] for n in names]
    assert_grads_close(analytic, numeric, names=labels + names)
    tparams = {n: ad.Tensor(p.copy(), requires_grad=True) for n, p in params.items()}
    tinputs = [None if a is None else ad.Tensor(a.copy(), requires_grad=True) for a in (X, Y, Y_shared)]
    out_t = mab_autodiff(tinputs[0], tinputs[1], tparams, heads, 0.6, tinputs[2], mask, dropout)
    np.testing.assert_allclose(out_t.data, out, rtol=0, atol=1e-13)
    out_t.backward(dout)
    for name, g, t in [*zip(("X", "Y", "Y_shared"), (dX, dY, dY_shared), tinputs),
                       *((n, grads[n], tparams[n]) for n in names)]:
        if t is not None:
            assert np.max(np.abs(g - t.grad)) <= 1e-10 * max(1.0, np.max(np.abs(g))), name


def test_mab_scale_is_what_the_scores_are_multiplied_by():
    """MAB-2 with HMA's default scale uses sqrt of the FULL width Dc, not of d_s (B8.5)."""
    rng = np.random.default_rng(1)
    Dc, H = 8, 4
    params = mab_init(rng, Dc)
    X, Y = rng.standard_normal((1, 2, Dc)), rng.standard_normal((1, 3, Dc))
    config = HMAConfig(D=6, K_c=2, L_h=2, heads=H)
    assert config.score_scale == pytest.approx(1 / math.sqrt(8))
    per_head = HMAConfig(D=6, K_c=2, L_h=2, heads=H, scale="head", temperature=2.0)
    assert per_head.score_scale == pytest.approx(2 / math.sqrt(2))
    _, cache = mab_forward(X, Y, params, H, config.score_scale)
    Q = cache.attn.Q                                            # (1, H, 2, d_s)
    K = cache.attn.K
    scores = Q @ np.swapaxes(K, -1, -2) / math.sqrt(Dc)
    expected = np.exp(scores - scores.max(-1, keepdims=True))
    np.testing.assert_allclose(cache.attn.A, expected / expected.sum(-1, keepdims=True), rtol=1e-12)


# ----------------------------------------------------------------- gradcheck cases
HEAD_CASES = sorted(c.name for c in all_cases("hma") if c.name.startswith("hma.head"))


def test_the_head_cases_are_registered():
    assert {"hma.head.mlp", "hma.head.mlp.label_emb", "hma.head.mlp.no_abd", "hma.head.mlp.no_rmem", "hma.head.plain",
            "hma.head.mlp.dropout_exclude_self", "hma.head.cnn", "hma.head.gcn"} <= set(HEAD_CASES)
    for case in all_cases("hma"):
        assert case.family == "hma"
        assert all(p.dtype == np.float64 for p in case.model.params.values())


def test_default_head_passes_full_gradcheck_with_both_engines():
    """Every coordinate, queue held constant (B9.7), manual == autodiff to 1e-10 (B9.8)."""
    case = {c.name: c for c in all_cases("hma")}["hma.head.mlp"]
    result = check_model(case)
    assert result.ok, [(r.engine, r.tensor, r.verdict, r.max_abs) for r in result.rows if not r.ok]
    assert {"manual", "autodiff", "manual~autodiff"} <= {r.engine for r in result.rows}


@pytest.mark.parametrize("name", [n for n in HEAD_CASES if n != "hma.head.mlp"])
def test_head_case_passes_fast_gradcheck(name):
    case = {c.name: c for c in all_cases("hma")}[name]
    result = check_model(case, mode="fast", directions=2)
    assert result.ok, [(r.engine, r.tensor, r.verdict, r.max_abs) for r in result.rows if not r.ok]


@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 5), rmem=st.booleans(), abd=st.booleans(), m=st.integers(0, 2),
       logits_from=st.sampled_from(["all", "label_emb", "feature"]), scale=st.sampled_from(["full", "head"]),
       res_linear=st.booleans(), heads=st.sampled_from([1, 2, 3]), seed=st.integers(0, 2**16))
def test_manual_and_autodiff_engines_agree_over_options_and_batch_sizes(B, rmem, abd, m, logits_from, scale,
                                                                        res_linear, heads, seed):
    model, rng = make_model(seed, B=2, rmem=rmem, abd=abd, m=m, logits_from=logits_from, scale=scale,
                            res_linear=res_linear, heads=heads)
    X = rng.standard_normal((B, 5))
    logits, cache = model.forward(X)
    assert logits.shape == (B, 3)
    dlogits = rng.standard_normal(logits.shape)
    grads = model.backward(dlogits, cache)
    tparams = {n: ad.Tensor(p.copy(), requires_grad=True) for n, p in model.params.items()}
    out = model.forward_autodiff(tparams, X)
    np.testing.assert_allclose(out.data, logits, rtol=0, atol=1e-12)
    out.backward(dlogits)
    for name, g in grads.items():
        auto = np.zeros_like(g) if tparams[name].grad is None else tparams[name].grad
        assert np.max(np.abs(g - auto)) <= 1e-10 * max(1.0, np.max(np.abs(g))), name


def test_planted_per_sample_backward_of_block_a_is_caught(monkeypatch):
    """B3b: block A couples the batch; a backward that drops the keys'/values' gradient into the
    batch rows (as if samples were independent) must FAIL the manual engine, not the autodiff one."""
    real = hma_module.mab_backward

    def per_sample(dout, cache):
        dX, dY, dY_shared, grads = real(dout, cache)
        if dout.shape[0] == 1 and dY is not None:              # block A: the batch is the one set
            dY = np.zeros_like(dY)
        return dX, dY, dY_shared, grads

    monkeypatch.setattr(hma_module, "mab_backward", per_sample)
    case = {c.name: c for c in all_cases("hma")}["hma.head.mlp"]
    rows, ok = check_model(case, mode="fast", tensors=["backbone.layer0.W", "E_lab"])
    assert not ok
    assert all(r.verdict == "FAIL" for r in rows if r.engine == "manual")
    assert all(r.ok for r in rows if r.engine == "autodiff")


# ----------------------------------------------------------------- B9 invariants
def test_b9_1_attention_rows_sum_to_one_and_the_plain_head():
    model, rng = make_model()
    X = rng.standard_normal((4, 5))
    logits, cache = model.forward(X)
    maps = attention_maps(cache)
    assert maps["block_r"].shape == (4, 2, 1 + 6) and maps["block_a"].shape == (4, 2, 4 + 2 * 3)
    for A in maps.values():
        np.testing.assert_allclose(A.sum(axis=-1), 1.0, rtol=1e-12)
    plain, rng = make_model(rmem=False, abd=False, m=0)
    assert set(plain.params) == {n for n in plain.params if n.startswith("backbone.")} | {"classifier.W",
                                                                                         "classifier.b"}
    h, _ = plain.backbone.forward(X)                            # the backbone holds HMA's backbone.* view
    logits, _ = plain.forward(X)
    np.testing.assert_allclose(logits, np.maximum(h, 0) @ plain.params["classifier.W"] + plain.params["classifier.b"],
                               rtol=1e-14)


def test_b9_2_block_a_is_permutation_equivariant_over_the_batch():
    model, rng = make_model()
    X = rng.standard_normal((4, 5))
    perm = np.array([2, 0, 3, 1])
    np.testing.assert_allclose(model.forward(X[perm])[0], model.forward(X)[0][perm], rtol=1e-10, atol=1e-12)


def test_b9_3_queue_row_order_and_token_order_within_a_class_do_not_matter():
    model, rng = make_model()
    X = rng.standard_normal((4, 5))
    logits, _ = model.forward(X)
    model.queue = model.queue[rng.permutation(6)]
    np.testing.assert_allclose(model.forward(X)[0], logits, rtol=1e-10, atol=1e-12)
    G = model.params["G"]                                       # (m K_c, D), classes consecutive, m = 2
    model.params["G"] = G[[1, 0, 3, 2, 5, 4]]                   # swap the two tokens of every class
    np.testing.assert_allclose(model.forward(X)[0], logits, rtol=1e-10, atol=1e-12)
    model.params["G"] = G[[2, 1, 0, 3, 4, 5]]                   # a token changes class: it does matter
    assert np.max(np.abs(model.forward(X)[0] - logits)) > 1e-6


def test_b9_4_no_label_leakage():
    """The labels reach only the write, which happens after the logits are computed."""
    model, rng = make_model()
    X = rng.standard_normal((4, 5))
    state = (model.queue, model.queue_ptr, model.momentum_params)
    logits_a, _ = model.training_forward(X, np.array([0, 1, 2, 0]))
    model.queue, model.queue_ptr, model.momentum_params = state
    logits_b, _ = model.training_forward(X, np.array([2, 2, 1, 1]))
    np.testing.assert_array_equal(logits_a, logits_b)


def test_b9_5_queue_is_a_fifo_ring_and_the_ema_is_exact():
    model, rng = make_model(writes=0, mu=0.9)
    xi0 = {k: v.copy() for k, v in model.momentum_params.items()}
    batches = []
    for n in range(1, 6):                                       # b = 2, N_r = 6: ring of 3 batches
        X, y = rng.standard_normal((2, 5)), rng.integers(0, 3, 2)
        if n == 1:
            theta = {k[len("backbone."):]: v for k, v in model.params.items() if k.startswith("backbone.")}
        model.write_memory(X, y)
        if n == 1:
            for name, xi in model.momentum_params.items():     # xi = mu xi_0 + (1 - mu) theta, exactly
                np.testing.assert_array_equal(xi, 0.9 * xi0[name] + (1 - 0.9) * theta[name])
        batches.append(np.concatenate([model.momentum_encoder.forward(X)[0], model.params["E_lab"][y]], axis=1))
        assert model.queue_ptr == (2 * n) % 6
    ring = np.concatenate([batches[3], batches[4], batches[2]])   # rows 0-1: batch 4, 2-3: batch 5, 4-5: batch 3
    np.testing.assert_allclose(model.queue, ring, rtol=1e-14)
    model.write_memory(rng.standard_normal((4, 5)), np.zeros(4, dtype=int))  # a batch of 4 wraps: rows 4, 5, 0, 1
    assert model.queue_ptr == (10 + 4) % 6
    np.testing.assert_array_equal(model.queue[2:4], ring[2:4])


def test_b9_6_batch_dependence_is_real_and_abd_false_removes_it():
    model, rng = make_model()
    X = rng.standard_normal((5, 5))
    gap = batch_dependence(model, X)
    assert gap.logit_gap.shape == gap.flipped.shape == (5,)
    assert np.all(gap.logit_gap > 1e-6)
    for options in (dict(abd=False), dict(abd=False, rmem=False)):
        independent, rng = make_model(**options)
        assert np.max(batch_dependence(independent, X).logit_gap) < 1e-12
    graph_model = HMA(HMAConfig(**SMALL), GCNModel(X=3, widths=(4, 4), rng=rng), rng=rng)
    graphs = random_graphs(rng, (3, 1, 4), X=3)
    assert np.all(batch_dependence(graph_model, graphs).logit_gap > 1e-8)
    whole = predict_in_batches(model, X, 5)                    # evaluation in fixed batches
    np.testing.assert_array_equal(whole, model.forward(X)[0])
    in_twos = predict_in_batches(model, X, 2)                  # batches [0, 1], [2, 3], [4]
    np.testing.assert_array_equal(in_twos[4], model.forward(X[4:])[0][0])
    assert np.max(np.abs(in_twos - whole)) > 1e-6             # the batch size changes the predictions
    np.testing.assert_array_equal(predict_in_batches(graph_model, graphs, 3), graph_model.forward(graphs)[0])


def test_b9_7_no_gradient_to_the_queue_and_where_e_lab_gets_its_gradient():
    model, rng = make_model(m=0)
    X = rng.standard_normal((4, 5))
    logits, cache = model.forward(X)
    dlogits = rng.standard_normal(logits.shape)
    grads = model.backward(dlogits, cache)
    assert set(grads) == set(model.params)                      # no queue, no momentum encoder
    # the queue is read (perturbing it moves the logits) ...
    queue = model.queue
    model.queue = queue + 0.1 * rng.standard_normal(queue.shape)
    assert np.max(np.abs(model.forward(X)[0] - logits)) > 1e-6
    model.queue = queue
    # ... but E_lab's class rows, whose copies sit in the queue's label slices, get nothing from it:
    # without memory tokens only the unknown row (HMA-2) has a gradient.
    assert np.all(grads["E_lab"][:3] == 0.0) and np.all(np.abs(grads["E_lab"][3]) > 0)
    with_tokens, rng = make_model(m=2)
    logits, cache = with_tokens.forward(X)
    grads = with_tokens.backward(rng.standard_normal(logits.shape), cache)
    assert np.all(np.abs(grads["E_lab"]) > 0)                   # class rows through the tokens (HMA-5)
    tparams = {n: ad.Tensor(p, requires_grad=True) for n, p in model.params.items()}
    out = model.forward_autodiff(tparams, X)
    out.backward(dlogits)
    np.testing.assert_array_equal(tparams["E_lab"].grad[:3], 0.0)


def test_b9_9_momentum_one_freezes_the_encoder_and_zero_copies_it():
    frozen, rng = make_model(writes=0, mu=1.0)
    xi0 = {k: v.copy() for k, v in frozen.momentum_params.items()}
    frozen.params["backbone.layer0.W"] = frozen.params["backbone.layer0.W"] + 1.0    # an "optimiser step"
    frozen.write_memory(rng.standard_normal((2, 5)), np.array([0, 1]))
    for name, xi in frozen.momentum_params.items():
        np.testing.assert_array_equal(xi, xi0[name])
    current, rng = make_model(writes=0, mu=0.0)
    current.params["backbone.layer0.W"] = current.params["backbone.layer0.W"] + 1.0
    X = rng.standard_normal((2, 5))
    h = current.forward(X)[1].h
    current.write_memory(X, np.array([2, 0]))
    np.testing.assert_array_equal(current.queue[:2, :4], h)    # the queue holds f_theta(X)
    np.testing.assert_array_equal(current.queue[:2, 4:], current.params["E_lab"][[2, 0]])


def test_the_queue_is_written_after_the_step_has_read_it():
    model, rng = make_model()
    X, y = rng.standard_normal((4, 5)), np.array([0, 1, 2, 1])
    old_queue = model.queue
    expected, expected_cache = model.forward(X)
    logits, cache = model.training_forward(X, y)
    np.testing.assert_array_equal(logits, expected)            # the step read the old queue
    assert cache.queue is old_queue and model.queue is not old_queue
    assert not np.array_equal(model.queue, old_queue)          # ... and then wrote the new rows
    assert np.max(np.abs(model.forward(X)[0] - logits)) > 1e-8
    dlogits = rng.standard_normal(logits.shape)
    after_write, before_write = model.backward(dlogits, cache), model.backward(dlogits, expected_cache)
    for name in model.params:                                  # the write did not touch the cache
        np.testing.assert_array_equal(after_write[name], before_write[name])


def test_exclude_self_masks_exactly_the_rows_with_the_sample_id():
    model, rng = make_model(writes=0, exclude_self=True)
    model.write_memory(HMAInputs(rng.standard_normal((4, 5)), ids=np.array([7, 8, 9, 10])), np.array([0, 1, 2, 0]))
    _, cache = model.forward(HMAInputs(rng.standard_normal((2, 5)), ids=np.array([8, 3])))
    A = attention_maps(cache)["block_r"]                        # (2, H, 1 + N_r) over [itself ; queue]
    assert np.all(A[0, :, 1 + 1] == 0.0)                        # sample 8 cannot read queue row 1 (id 8)
    assert np.all(A[0, :, [1, 3, 4]] > 0) and np.all(A[1, :, 1:] > 0)


def test_dropout_masks_are_explicit_inputs():
    model, rng = make_model(dropout=0.5)
    X = rng.standard_normal((4, 5))
    masks = hma_dropout(rng, model.config, 4)
    dropped = model.forward(HMAInputs(X, dropout=masks))[0]
    np.testing.assert_array_equal(model.forward(HMAInputs(X, dropout=masks))[0], dropped)   # deterministic
    assert np.max(np.abs(model.forward(X)[0] - dropped)) > 1e-6
    assert hma_dropout(rng, make_model()[0].config, 4) is None


def test_float32_and_parameter_names():
    model, rng = make_model(dtype="float32")
    logits, cache = model.forward(rng.standard_normal((4, 5)))
    assert logits.dtype == np.float32 and model.queue.dtype == np.float32
    assert all(g.dtype == np.float32 for g in model.backward(np.ones_like(logits), cache).values())
    head = hma_head_shapes(model.config)
    assert list(model.params)[:4] == ["backbone.layer0.W", "backbone.layer0.b", "backbone.layer1.W",
                                      "backbone.layer1.b"]
    assert list(model.params)[4:] == list(head)
    assert head["E_lab"] == (4, 2) and head["G"] == (6, 4) and head["classifier.W"] == (6, 3)


# ----------------------------------------------------------------- constraints and bad input
def test_constraints_and_bad_input_raise_value_error():
    with pytest.raises(ValueError, match=r"D \+ L_h = 6 must be divisible by heads = 4"):
        HMAConfig(D=4, K_c=3, L_h=2, heads=4)
    with pytest.raises(ValueError, match=r"HMAConfig.K_c must be an integer >= 2 \(a single-logit binary head"):
        HMAConfig(D=4, K_c=1)
    with pytest.raises(ValueError, match=r"HMAConfig.N_r must be an integer >= 1"):
        HMAConfig(D=4, K_c=2, N_r=0)
    with pytest.raises(ValueError, match=r"HMAConfig.heads must be an integer >= 1"):
        HMAConfig(D=4, K_c=2, heads=0)
    with pytest.raises(ValueError, match=r"HMAConfig.mu must be a number in \[0, 1\]"):
        HMAConfig(D=4, K_c=2, mu=1.5)
    with pytest.raises(ValueError, match=r"HMAConfig.logits_from must be one of"):
        HMAConfig(D=4, K_c=2, logits_from="both")
    with pytest.raises(ValueError, match=r"HMAConfig.scale must be one of"):
        HMAConfig(D=4, K_c=2, scale="sqrt")
    with pytest.raises(ValueError, match=r"exclude_self masks queue rows, so it needs rmem=True"):
        HMAConfig(D=4, K_c=2, rmem=False, exclude_self=True)
    with pytest.raises(ValueError, match=r"HMAConfig.dropout must be in \[0, 1\)"):
        HMAConfig(D=4, K_c=2, dropout=1.0)
    with pytest.raises(ValueError, match=r"config must be an HMAConfig"):
        HMA(dict(D=4, K_c=2), MLPModel((3, 4)))
    with pytest.raises(ValueError, match=r"backbone must follow the model protocol"):
        HMA(HMAConfig(**SMALL), object())
    model, rng = make_model()
    with pytest.raises(ValueError, match=r"a training batch of B=8 is larger than the queue \(N_r=6\)"):
        model.write_memory(rng.standard_normal((8, 5)), np.zeros(8, dtype=int))
    with pytest.raises(ValueError, match=r"labels must be a \(B,\) integer array of classes in \[0, K_c\) = \[0, 3\)"):
        model.write_memory(rng.standard_normal((2, 5)), np.array([0, 3]))
    with pytest.raises(ValueError, match=r"labels must have one entry per sample: B=2; got 3"):
        model.write_memory(rng.standard_normal((2, 5)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"the backbone must return features h of shape \(B, D\) with D=3"):
        HMA(HMAConfig(**{**SMALL, "D": 3, "L_h": 3}), MLPModel((5, 4)), rng=rng).forward(np.ones((2, 5)))
    logits, cache = model.forward(rng.standard_normal((2, 5)))
    with pytest.raises(ValueError, match=r"dlogits must have the logits' shape \(B, K_c\) = \(2, 3\)"):
        model.backward(logits[:, :2], cache)
    with pytest.raises(ValueError, match=r"ids must be a \(B,\) array of sample ids >= 0"):
        model.forward(HMAInputs(np.ones((2, 5)), ids=np.array([-1, 0])))
    with pytest.raises(ValueError, match=r"dropout must be an HMADropout"):
        model.forward(HMAInputs(np.ones((2, 5)), dropout=0.1))
    with pytest.raises(ValueError, match=r"dropout.block_r must hold multipliers of shapes \(2, 1, 6\)"):
        model.forward(HMAInputs(np.ones((2, 5)), dropout=hma_dropout(rng, HMAConfig(**{**SMALL, "dropout": 0.1}), 3)))
    selfish, rng = make_model(exclude_self=True, writes=0)
    with pytest.raises(ValueError, match=r"exclude_self needs the samples' ids"):
        selfish.write_memory(np.ones((2, 5)), np.array([0, 1]))
    model.params["E_lab"] = np.full((4, 2), np.nan)
    with pytest.raises(ValueError, match=r"parameter E_lab must be finite"):
        model.forward(np.ones((2, 5)))
    model.params["E_lab"] = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"parameter E_lab must have shape \(4, 2\)"):
        model.forward(np.ones((2, 5)))
