"""The DNC's optional sparse link matrix (minimem.memory.sparse_link, spec B.10.9): the dense oracle,
the invariants, replayed choices, gradients (central differences, planted bugs), the DNC option
(off = the committed DNC bit for bit) and bad input."""

import numpy as np
import pytest

import minimem  # noqa: F401  (pins BLAS threads before numpy work)
from gradcheck.cases import dnc_sparse_link as cases
from gradcheck.core import Case, assert_grads_close, check_model, numeric_vjp
from gradcheck.golden import GOLDEN_DIR, load_golden
from minimem import autodiff as ad
from minimem.memory import sparse_link as sl
from minimem.memory.dnc import DNC, DNCConfig, DNCRecord, DNCSparseLinkRecord
from minimem.memory.linkage import link_forward


def random_point(seed: int, B: int = 3, N: int = 7, K: int = 3):
    """A valid sparse link, and peaked w^w_t and p_{t-1} (so some links pass the 1/K threshold)."""
    rng = np.random.default_rng(seed)
    return (cases.random_sparse_link(rng, B, N, K), cases.peaked(rng, 0.9, (B, N)),
            cases.peaked(rng, 0.85, (B, N)))


def run_sparse_dnc(seed: int, K: int, T: int = 12, N: int = 8):
    rng = np.random.default_rng(seed)
    model = DNC(DNCConfig(X=4, Y=3, N=N, W=4, R=2, H=16, link="sparse", link_K=K), rng=rng)
    model.params["interface.b"] = 2.0 * rng.standard_normal(model.params["interface.b"].shape)
    xs = rng.standard_normal((T, 2, 4))
    return model, xs, model.forward(xs)


# ----------------------------------------------------------------- the oracle
@pytest.mark.parametrize("K", [1, 2, 3, 5, 7])
@pytest.mark.parametrize("seed", range(4))
def test_forward_equals_the_dense_reimplementation(seed, K):
    L_prev, w_w, p_prev = random_point(seed, K=K)
    L, cache = sl.sparse_link_forward(L_prev, w_w, p_prev, K)
    reference = sl.sparse_link_reference(L_prev, w_w, p_prev, K)
    np.testing.assert_allclose(L, reference, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(L > 0, reference > 0)           # the same support
    assert np.all(np.sum(cache.w_hat > 0, axis=-1) <= K) and np.allclose(cache.w_hat.sum(-1), 1.0)


def test_oracle_equality_along_a_dnc_path_and_links_are_used():
    """Every step of a sparse DNC equals the oracle applied to that step's w^w_t, p_{t-1} and Lhat_{t-1}."""
    for K in (2, 3, 8):
        # seed 3 keeps links at most steps (at seeds 0, 2 and 4 no link passes 1/K in 12 steps, any K)
        model, xs, (ys, cache) = run_sparse_dnc(seed=3, K=K)
        L_prev, nonzero = np.zeros_like(cache.states[0].L), 0
        for step, state in zip(cache.steps, cache.states):
            a = step.access
            w_w = a.write_weighting.g_w * a.write_weighting.mix
            np.testing.assert_allclose(state.L, sl.sparse_link_reference(L_prev, w_w, a.precedence.p_prev, K),
                                       rtol=0, atol=1e-15)
            L_prev, nonzero = state.L, nonzero + int(np.sum(state.L > 0))
        assert nonzero > 0, f"K={K}: no link ever passed the threshold; the comparison would be empty"


def test_not_the_dense_update_even_at_K_equal_N():
    L_prev, w_w, p_prev = random_point(1, N=6, K=6)
    sparse, _ = sl.sparse_link_forward(L_prev, w_w, p_prev, 6)
    dense, _ = link_forward(L_prev, w_w, p_prev)
    assert np.max(np.abs(sparse - dense)) > 1e-2
    # with a one-hot write after a one-hot precedence the two agree: nothing to renormalise or drop
    w1, p1 = np.eye(6)[[3]], np.eye(6)[[1]]
    np.testing.assert_array_equal(sl.sparse_link_forward(np.zeros((1, 6, 6)), w1, p1, 6)[0],
                                  link_forward(np.zeros((1, 6, 6)), w1, p1)[0])


def test_one_hot_writes_3_7_1_give_the_expected_links():
    N, K = 10, 3
    L, p = np.zeros((1, N, N)), np.zeros((1, N))
    for slot in (3, 7, 1):
        w = np.eye(N)[[slot]]
        L, _ = sl.sparse_link_forward(L, w, p, K)
        p = (1.0 - w.sum(-1, keepdims=True)) * p + w
    assert L[0, 7, 3] == 1.0 and L[0, 1, 7] == 1.0 and np.count_nonzero(L) == 2


# ----------------------------------------------------------------- invariants
@pytest.mark.parametrize("K", [1, 2, 4, 8])
def test_invariants_along_a_dnc_path(K):
    model, xs, (ys, cache) = run_sparse_dnc(seed=10 + K, K=K, T=16)
    for state in cache.states:
        L = state.L
        assert np.all(np.diagonal(L, axis1=-2, axis2=-1) == 0.0)                    # zero diagonal, exactly
        assert np.all(L >= 0.0) and np.all(L <= 1.0)                                # entries in [0, 1]
        assert np.all((L == 0.0) | (L >= 1.0 / K))                                  # nothing below 1/K
        assert np.all(np.sum(L > 0, axis=-1) <= K)                                  # <= K per row
        assert np.all(np.sum(L, axis=-1) <= 1.0 + 1e-12)                           # row sums <= 1


def test_columns_can_hold_more_than_K_links():
    """Spec B.10.9 says at most K nonzeros per row AND column. Rows hold (row sums <= 1), columns
    need not: after a full write to slot 0, faint writes to slots 1, 2, 3 (each renormalised to a full
    write) while the precedence stays on slot 0 link all three to it."""
    N, K = 6, 2
    L, p = np.zeros((1, N, N)), np.eye(N)[[0]]
    for slot in (1, 2, 3):
        w = 0.01 * np.eye(N)[[slot]]                    # write gate 0.01
        L, _ = sl.sparse_link_forward(L, w, p, K)
        p = (1.0 - w.sum(-1, keepdims=True)) * p + w
    assert np.sum(L[0, :, 0] > 0) == 3 > K               # column 0: slots 1, 2, 3 each "written after 0"
    assert np.all(np.sum(L > 0, axis=-1) <= K)           # rows still bounded
    np.testing.assert_allclose(L, sl.sparse_link_reference(*_replay_inputs(N, K)), atol=1e-15)


def _replay_inputs(N, K):
    """The inputs of the last step of test_columns_can_hold_more_than_K_links, for the oracle."""
    L, p = np.zeros((1, N, N)), np.eye(N)[[0]]
    for slot in (1, 2):
        w = 0.01 * np.eye(N)[[slot]]
        L = sl.sparse_link_reference(L, w, p, K)
        p = (1.0 - w.sum(-1, keepdims=True)) * p + w
    return L, 0.01 * np.eye(N)[[3]], p, K


def test_empty_selection_leaves_links_alone_with_zero_gradient():
    L_prev, w_w, p_prev = random_point(2, B=2, N=5, K=2)
    w_w[0] = 0.0                                        # closed write gate in batch element 0
    L, cache = sl.sparse_link_forward(L_prev, w_w, np.zeros_like(p_prev), 2)
    np.testing.assert_array_equal(L[0], np.where(L_prev[0] >= 0.5, L_prev[0], 0.0))
    dL_prev, dw_w, dp_prev = sl.sparse_link_backward(np.ones_like(L), cache)
    assert np.all(dw_w[0] == 0.0) and np.all(dp_prev == 0.0)


# ----------------------------------------------------------------- replay and gradients
@pytest.mark.parametrize("seed, K", [(0, 1), (1, 3), (2, 5), (3, 7)])
def test_backward_matches_central_differences_and_autodiff(seed, K):
    L_prev, w_w, p_prev = random_point(seed, K=K)
    L, cache = sl.sparse_link_forward(L_prev, w_w, p_prev, K)
    dout = np.random.default_rng(seed).standard_normal(L.shape)
    analytic = sl.sparse_link_backward(dout, cache)
    numeric = numeric_vjp(lambda *a: sl.sparse_link_forward(*a, K, cache.choice)[0], (L_prev, w_w, p_prev), dout)
    assert_grads_close(analytic, numeric, names=("L_prev", "w_w", "p_prev"))
    tensors = [ad.Tensor(a, requires_grad=True) for a in (L_prev, w_w, p_prev)]
    for build in (sl.sparse_link_autodiff, sl.sparse_link_op):      # unfrozen twin, and the pair as one node
        for t in tensors:
            t.grad = None
        out = build(*tensors, K)
        np.testing.assert_array_equal(out.data, L)
        ad.sum(out * ad.Tensor(dout)).backward()
        for t, a in zip(tensors, analytic):
            np.testing.assert_allclose(t.grad.data, a, rtol=1e-12, atol=1e-14)


def test_replayed_choices_are_constants():
    """Replaying a recorded choice at a moved point keeps the old kept sets and mask."""
    L_prev, w_w, p_prev = random_point(4)
    _, cache = sl.sparse_link_forward(L_prev, w_w, p_prev, 3)
    moved = w_w[:, ::-1].copy()                                     # a different ranking
    _, replayed = sl.sparse_link_forward(L_prev, moved, p_prev, 3, cache.choice)
    np.testing.assert_array_equal(replayed.choice.top_w, cache.choice.top_w)
    np.testing.assert_array_equal(replayed.choice.keep, cache.choice.keep)
    assert not np.array_equal(sl.sparse_link_forward(L_prev, moved, p_prev, 3)[1].choice.top_w, cache.choice.top_w)


def test_gradcheck_full_mode_on_the_step_case_and_a_dnc_case():
    rows, ok = check_model(cases.sparse_link_step_case(), mode="full")
    assert ok, [r for r in rows if not r.ok]
    case = next(c for c in cases.sparse_link_cases() if c.name == "dnc.sparse_link.K3")
    rows, ok = check_model(case, mode="full", tensors=["interface.b", "output.b", "controller.layer0.b"])
    assert ok, [r for r in rows if not r.ok]
    rows, ok = check_model(case, mode="fast", directions=2)
    assert ok, [r for r in rows if not r.ok]


def test_dnc_sparse_replay_reproduces_the_forward_and_needs_the_sparse_record():
    model, xs, (ys, cache) = run_sparse_dnc(seed=5, K=3, T=6)
    assert isinstance(cache.record, DNCSparseLinkRecord) and cache.record.link_keep.shape == (6, 2, 8, 8)
    again, _ = model.forward(xs, frozen=cache.record)
    np.testing.assert_array_equal(again, ys)
    np.testing.assert_allclose(model.forward_autodiff({k: ad.Tensor(v) for k, v in model.params.items()},
                                                      xs, frozen=cache.record).data, ys, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="DNCSparseLinkRecord"):
        model.forward(xs, frozen=DNCRecord(cache.record.phi, cache.record.usage_w_w))
    with pytest.raises(ValueError, match="link_keep"):
        model.forward(xs, frozen=cache.record._replace(link_keep=cache.record.link_keep[:, :, :4]))


@pytest.mark.parametrize("plant, tensor", [("threshold", "L_prev"), ("renormalise", "w_w")])
def test_planted_wrong_gradient_is_caught(monkeypatch, plant, tensor):
    if plant == "threshold":                # forget the 1/K mask in the backward
        monkeypatch.setattr(sl, "threshold_backward", lambda dL, keep: dL)
    else:                                   # forget that renormalising couples the kept entries
        def no_coupling(dvhat, cache):
            dkept = np.take_along_axis(dvhat, cache.top, axis=-1) / np.where(cache.total > 0, cache.total, 1.0)
            dv = np.zeros_like(dvhat)
            np.put_along_axis(dv, cache.top, dkept, axis=-1)
            return dv
        monkeypatch.setattr(sl, "sparsify_backward", no_coupling)
    rows, ok = check_model(cases.sparse_link_step_case(), mode="full", engines=("manual",))
    assert not ok
    assert any(r.tensor == tensor and not r.ok for r in rows)
    # the same plant is caught through a whole DNC (dnc_access calls sparse_link_backward)
    case = next(c for c in cases.sparse_link_cases() if c.name == "dnc.sparse_link.K3")
    rows, ok = check_model(case, mode="full", engines=("manual",), tensors=["interface.b"])
    assert not ok


# ----------------------------------------------------------------- the DNC option
def test_option_off_never_touches_the_sparse_link_and_matches_the_committed_dnc(monkeypatch):
    """link="dense" (the default) runs the old code path: with every sparse_link entry point made to
    raise, forward, backward and the autodiff twin still run, bit-identical to an explicit
    link="dense", and the golden vectors committed before the option existed are reproduced."""
    from gradcheck.golden import diff_golden, make_golden, select_cases
    import minimem.memory.dnc_access as access

    golden = load_golden(GOLDEN_DIR, "dnc.paper.L1")            # (building the cases runs sparse ones too)
    assert diff_golden(golden, make_golden(select_cases(names=["dnc.paper.L1"])[0])) == []
    def boom(*args, **kwargs):
        raise AssertionError("the sparse link ran with link='dense'")
    for name in ("sparse_link_forward", "sparse_link_backward", "sparse_link_autodiff"):
        monkeypatch.setattr(access, name, boom)
    rng = np.random.default_rng(0)
    default = DNC(DNCConfig(X=4, Y=3, N=8, W=4, R=2, H=16), rng=rng)
    explicit = DNC(DNCConfig(X=4, Y=3, N=8, W=4, R=2, H=16, link="dense", link_K=3))
    explicit.params = {k: v.copy() for k, v in default.params.items()}
    xs, dys = rng.standard_normal((5, 2, 4)), rng.standard_normal((5, 2, 3))
    (y1, c1), (y2, c2) = default.forward(xs), explicit.forward(xs)
    assert y1.tobytes() == y2.tobytes() and isinstance(c1.record, DNCRecord)
    g1, g2 = default.backward(dys, c1), explicit.backward(dys, c2)
    assert all(g1[k].tobytes() == g2[k].tobytes() for k in g1)
    default.forward_autodiff({k: ad.Tensor(v) for k, v in default.params.items()}, xs)


def test_sparse_option_changes_the_links_and_outputs():
    rng = np.random.default_rng(0)
    dense = DNC(DNCConfig(X=4, Y=3, N=8, W=4, R=2, H=16), rng=rng)
    sparse = DNC(DNCConfig(X=4, Y=3, N=8, W=4, R=2, H=16, link="sparse", link_K=3))
    sparse.params = {k: v.copy() for k, v in dense.params.items()}
    xs = rng.standard_normal((6, 2, 4))
    (yd, cd), (ys, cs) = dense.forward(xs), sparse.forward(xs)
    np.testing.assert_array_equal(yd[0], ys[0])                        # links start empty, so step 1 agrees
    assert not np.allclose(cd.final_state.L, cs.final_state.L)


@pytest.mark.parametrize("K", [0, -1, 9, 2.5, True, "8", None])
def test_bad_K_raises_value_error(K):
    L_prev, w_w, p_prev = random_point(0, N=8)
    with pytest.raises(ValueError, match="K"):
        sl.sparse_link_forward(L_prev, w_w, p_prev, K)
    with pytest.raises(ValueError, match="link_K"):
        DNCConfig(X=2, Y=2, N=8, link="sparse", link_K=K)


def test_bad_config_and_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="link must be one of"):
        DNCConfig(X=2, Y=2, link="bogus")
    DNCConfig(X=2, Y=2, N=4)                                           # dense: the default K = 8 > N is unused
    model = DNC(DNCConfig(X=2, Y=2, N=8, W=4, R=1, H=4, link="sparse", link_K=6))
    with pytest.raises(ValueError, match="1 <= K <= N = 4"):          # a smaller memory than K
        model.forward(np.zeros((2, 1, 2)), state=model.initial_state(1, N=4))
    L_prev, w_w, p_prev = random_point(0)
    with pytest.raises(ValueError, match=r"p_prev must have shape"):
        sl.sparse_link_forward(L_prev, w_w, p_prev[:, :-1], 3)
    with pytest.raises(ValueError, match=r"L_prev must have shape"):
        sl.sparse_link_forward(L_prev[:, :-1], w_w, p_prev, 3)
    _, cache = sl.sparse_link_forward(L_prev, w_w, p_prev, 3)
    with pytest.raises(ValueError, match="top must be an integer array"):
        sl.sparse_link_forward(L_prev, w_w, p_prev, 3, cache.choice._replace(top_w=cache.choice.top_w[:, :2]))
    with pytest.raises(ValueError, match="distinct"):
        sl.sparse_link_forward(L_prev, w_w, p_prev, 3, cache.choice._replace(top_w=np.zeros_like(cache.choice.top_w)))
    with pytest.raises(ValueError, match="keep must be a boolean"):
        sl.sparse_link_forward(L_prev, w_w, p_prev, 3, cache.choice._replace(keep=cache.choice.keep.astype(float)))
    with pytest.raises(ValueError, match="SparseLinkChoice"):
        sl.sparse_link_forward(L_prev, w_w, p_prev, 3, (cache.choice.top_w, cache.choice.top_p, cache.choice.keep))
