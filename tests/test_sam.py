"""Tests of Sparse Access Memory (minimem.memory.sam), spec C.5 test plan 1-6, C.11 and the SAM column of
E.1: sparse == dense at K = N, sparse == masked dense at any K, the exact memory revert, CSR
structure along a sequence, duplicate slots across heads, manual == autodiff, both == central
differences with frozen choices, records that do not grow with N, chunked sequences, batch
independence, float32, planted bugs, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from gradcheck.cases import sam as sam_cases
from gradcheck.cases.sam import ReplaySAM, random_state
from gradcheck.core import Case, check_model
from minimem import autodiff as ad
from minimem.memory import sam as sam_module
from minimem.memory.sam import SAM, SAMConfig, SAMGrad, SAMRecord, param_shapes
from minimem.memory.sam_sparse import read_weights_dense

TOL = 1e-12
CASES = {case.name: case for case in sam_cases.sparse_cases() + sam_cases.dense_cases()}


def _model(seed=0, **config):
    config = SAMConfig(**{"X": 3, "Y": 4, "N": 8, "W": 4, "R": 2, "K": 3, "H": 6, **config})
    rng = np.random.default_rng(seed)
    model = SAM(config, rng)
    for key in ("interface.b", "output.b"):
        model.params[key] = 0.5 * rng.standard_normal(model.params[key].shape)
    return model, rng


def _twin(model, **changes):
    """A model with the same parameters and a changed config (e.g. the other engine)."""
    twin = SAM(SAMConfig(**{**model.config.__dict__, **changes}))
    twin.params = {k: v.copy() for k, v in model.params.items()}
    return twin


def _run(model, xs, state=None, frozen=None, dys=None, seed=1):
    """forward + backward_with_state with random dys and a random gradient on the final state."""
    ys, cache = model.forward(xs, state, frozen)
    rng = np.random.default_rng(seed)
    dys = rng.standard_normal(ys.shape) if dys is None else dys
    final = cache.final_state
    dstate = SAMGrad(*(rng.standard_normal(np.shape(getattr(final, f))) for f in SAMGrad._fields))
    grads, dstate0 = model.backward_with_state(dys, cache, dstate)
    return ys, cache, grads, dstate0


def _assert_close(a, b, tol=TOL, what=""):
    np.testing.assert_allclose(a, b, rtol=0, atol=tol, err_msg=what)


def _assert_states_close(s, d, tol=TOL):
    _assert_close(s.M, d.M, tol, "M")
    np.testing.assert_array_equal(s.last, d.last)
    np.testing.assert_array_equal(s.read_index, d.read_index)
    for name in ("usage", "read_weight", "r", "h", "c"):
        _assert_close(getattr(s, name), getattr(d, name), tol, name)
    assert s.t == d.t


# ----------------------------------------------------------------- C.5 test plan 1: K = N
@pytest.mark.parametrize("usage", ["lra", "discounted"])
def test_sparse_equals_dense_at_k_equals_n(usage):
    """Every output, state, choice and gradient (params and initial state) agree to 1e-12, both
    engines choosing afresh; the CSR read weightings equal the dense softmax weightings."""
    model, rng = _model(2, K=8, usage=usage, discount=0.9)
    dense = _twin(model, engine="dense")
    xs = rng.standard_normal((6, 3, 3))
    state = random_state(rng, model.config, 3)
    ys_s, cache_s, g_s, d0_s = _run(model, xs, state)
    ys_d, cache_d, g_d, d0_d = _run(dense, xs, state)
    np.testing.assert_array_equal(cache_s.record.lra, cache_d.record.lra)
    np.testing.assert_array_equal(cache_s.record.read_index, cache_d.record.read_index)
    _assert_close(ys_s, ys_d)
    _assert_states_close(cache_s.final_state, cache_d.final_state)
    for name in model.params:
        _assert_close(g_s[name], g_d[name], what=name)
    for name in SAMGrad._fields:
        _assert_close(getattr(d0_s, name), getattr(d0_d, name), what=f"dstate0.{name}")
    B, R, N = 3, model.config.R, model.config.N
    for step_s, step_d in zip(cache_s.steps, cache_d.steps):
        _assert_close(read_weights_dense(step_s.read.Wr, B, R, N), step_d.access.read.w)


def test_dense_path_from_the_empty_state_equals_sparse():
    model, rng = _model(3, K=8)
    xs = rng.standard_normal((7, 2, 3))
    ys_s, cache_s, g_s, d0_s = _run(model, xs)
    ys_d, cache_d, g_d, d0_d = _run(_twin(model, engine="dense"), xs)
    _assert_close(ys_s, ys_d)
    _assert_states_close(cache_s.final_state, cache_d.final_state)
    for name in model.params:
        _assert_close(g_s[name], g_d[name], what=name)
    assert d0_s.read_weight.shape == d0_d.read_weight.shape == (2, 2, 0)


# ----------------------------------------------------------------- C.5 test plan 2 and 3: any K, revert
@pytest.mark.parametrize("K", [1, 3, 5])
def test_sparse_equals_masked_dense_at_any_k_and_reverts_exactly(K):
    """The dense engine with the sparse pass's index sets frozen is the masked-dense reference and
    stores every M_t: all outputs, states and gradients agree to 1e-12, and after the backward the
    sparse memory buffer equals M_0 bit for bit."""
    model, rng = _model(4, K=K)
    xs = rng.standard_normal((6, 2, 3))
    state = random_state(rng, model.config, 2)
    M0 = state.M.copy()
    ys_s, cache_s, g_s, d0_s = _run(model, xs, state)
    assert np.array_equal(cache_s.memory, M0)                               # C.4: bit-exact revert
    assert np.array_equal(state.M, M0)                                      # the caller's array untouched
    ys_d, cache_d, g_d, d0_d = _run(_twin(model, engine="dense"), xs, state, frozen=cache_s.record)
    _assert_close(ys_s, ys_d)
    _assert_states_close(cache_s.final_state, cache_d.final_state)
    for name in model.params:
        _assert_close(g_s[name], g_d[name], what=name)
    for name in SAMGrad._fields:
        _assert_close(getattr(d0_s, name), getattr(d0_d, name), what=f"dstate0.{name}")


def test_final_memory_buffer_and_a_second_backward():
    """copy_final_memory=False hands out THE buffer: after backward it holds M_0; a second backward
    replays the recorded writes first and gives the same gradients; the default keeps a copy of M_T."""
    model, rng = _model(5)
    xs = rng.standard_normal((5, 2, 3))
    state = random_state(rng, model.config, 2)
    dys = rng.standard_normal((5, 2, 4))
    _, kept = model.forward(xs, state)
    M_T = kept.final_state.M.copy()
    _, cache = model.forward(xs, state, copy_final_memory=False)
    assert cache.final_state.M is cache.memory and np.array_equal(cache.memory, M_T)
    first = model.backward(dys, cache)
    assert np.array_equal(cache.final_state.M, state.M)                     # reverted to M_0
    second = model.backward(dys, cache)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
    model.backward(dys, kept)
    assert np.array_equal(kept.final_state.M, M_T)                          # the copy survives backward


def test_per_step_records_do_not_grow_with_n():
    """C.4: the sparse cache holds O(T (R K + 1) W) numbers per step, none of them N-sized: the
    bytes of the step records are the same at N = 16 and N = 4096."""
    def record_bytes(N):
        model, rng = _model(6, N=N)
        _, cache = model.forward(np.random.default_rng(0).standard_normal((4, 2, 3)))
        return sum(_nbytes(step) for step in cache.steps)

    assert record_bytes(16) == record_bytes(4096)


def _nbytes(x, seen=None):
    seen = set() if seen is None else seen
    if id(x) in seen:
        return 0
    seen.add(id(x))
    if isinstance(x, np.ndarray):
        return x.nbytes
    if hasattr(x, "indptr"):                                                # a CSR matrix
        return x.data.nbytes + x.indices.nbytes + x.indptr.nbytes
    if isinstance(x, (tuple, list)):
        return sum(_nbytes(v, seen) for v in x)
    return 0


# ----------------------------------------------------------------- C.5 test plan 4: gradients
@pytest.mark.parametrize("name", sorted(CASES))
def test_engines_agree_and_match_central_differences(name):
    """E.1: manual == autodiff (rel 1e-10), both == central differences (rel 1e-6, or abs 1e-8) with
    frozen S and l. Fast mode screens every tensor; full mode checks every bias coordinate."""
    case = CASES[name]
    rows, ok = check_model(case, mode="fast", directions=2)
    assert ok, [r for r in rows if not r.ok]
    rows, ok = check_model(case, mode="full", tensors=["interface.b", "output.b", "controller.b"])
    assert ok, [r for r in rows if not r.ok]


def test_shared_slots_case_really_shares_slots():
    case = CASES["sam.sparse.shared_slots"]
    _, cache = case.model.forward(case.inputs)
    index = cache.record.read_index                                         # (T, B, R, K)
    flat = index.reshape(index.shape[0] * index.shape[1], -1)
    assert all(len(np.unique(row)) < row.size for row in flat)             # every step has duplicates
    assert any(step.write.Ww.nnz < step.write.write_map.size for step in cache.steps[1:])


def test_unfrozen_objective_has_the_same_gradient_away_from_ties():
    """From a random state the scores are > 1e-6 apart and the last-access times distinct, so the
    plain forward (choosing afresh in every perturbed pass) has the frozen pass's gradient."""
    case = CASES["sam.sparse"]
    free = ReplaySAM(case.model.model, case.model.state0, None)
    rows, ok = check_model(Case(case.name + ".unfrozen", free, case.inputs, case.loss), mode="fast", directions=2)
    assert ok, [r for r in rows if not r.ok]


@pytest.mark.parametrize("engine", ["sparse", "dense"])
def test_manual_equals_autodiff_on_a_larger_model(engine):
    """No finite differences: N = 20, W = 5, R = 3, K = 4, T = 8, B = 3, random state, the
    autodiff engine choosing afresh (it must make the same choices)."""
    model, rng = _model(7, X=4, Y=5, N=20, W=5, R=3, K=4, H=7, engine=engine)
    xs = rng.standard_normal((8, 3, 4))
    state0 = random_state(rng, model.config, 3)
    ys, cache = model.forward(xs, state0)
    dys = rng.standard_normal(ys.shape)
    grads = model.backward(dys, cache)
    tparams = {k: ad.Tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}
    ys_t = model.forward_autodiff(tparams, xs, state0)
    (ys_t * dys).sum().backward()
    _assert_close(ys_t.data, ys, 1e-13)
    for name in model.params:
        scale = np.max(np.abs(grads[name]))
        assert np.max(np.abs(grads[name] - tparams[name].grad)) <= 1e-10 * scale, name


def test_planted_bug_dropping_the_read_weight_carry_is_caught(monkeypatch):
    """Zeroing dwR_{t-1} (the gradient the write at t sends to the reads at t-1, C.4) must make the
    manual engine FAIL against central differences while the autodiff engine stays ok."""
    real = sam_module.sparse_write_backward

    def buggy(dM, record):
        da, dalpha, dgamma, dweight = real(dM, record)
        return da, dalpha, dgamma, np.zeros_like(dweight)

    monkeypatch.setattr(sam_module, "sparse_write_backward", buggy)
    rows, ok = check_model(CASES["sam.sparse"], mode="fast", tensors=["interface.b"])
    assert not ok
    by_engine = {r.engine: r for r in rows}
    assert by_engine["manual"].verdict == "FAIL" and by_engine["autodiff"].ok


# ----------------------------------------------------------------- C.5 test plan 5 along a sequence, C.11
def test_csr_structure_and_c11_invariants_at_every_step():
    model, rng = _model(8, N=10, R=3, K=4)
    B, R, K, N = 2, 3, 4, 10
    xs = 2 * rng.standard_normal((8, B, 3))
    ys, cache = model.forward(xs)
    last_seen = np.zeros((B, N), dtype=np.int64)
    for t, step in enumerate(cache.steps, start=1):
        Wr, Ww, lra = step.read.Wr, step.write.Ww, step.write.lra
        assert Wr.indptr[-1] == B * R * K and np.all(np.diff(Wr.indptr) == K)
        cols = Wr.indices.reshape(B, R, K)
        assert np.all(np.diff(cols, axis=-1) > 0) and np.all(Wr.data >= 0)
        b = np.arange(B)[:, None, None]
        assert np.all((cols >= b * N) & (cols < (b + 1) * N))
        _assert_close(np.asarray(Wr.sum(axis=1)).ravel(), 1.0)
        assert Ww.has_canonical_format and np.all(np.diff(Ww.indptr) <= R * K + 1)
        alpha, gamma = step.write.alpha, step.write.gamma
        assert np.all(np.asarray(Ww.sum(axis=1)) <= alpha + 1e-15)
        w_lra = np.asarray(Ww[np.arange(B), N * np.arange(B) + lra]).ravel()
        assert np.all(w_lra >= (alpha * (1 - gamma)).ravel() - 1e-15)
        assert list(lra) == list(np.argmin(last_seen, -1))                  # LRA: least last, lowest index
        access = read_weights_dense(Ww, B, 1, N)[:, 0] + read_weights_dense(Wr, B, R, N).sum(1)
        last_seen = np.where(access > model.config.delta, t, last_seen)     # usage U^(2), by hand
    np.testing.assert_array_equal(cache.final_state.last, last_seen)
    assert list(cache.record.lra[0]) == [0, 0]                              # fresh memory: slot 0 first


def test_lra_row_holds_exactly_the_written_word():
    """C.11: after a step the LRA row equals wW(l_t) a_t exactly (erased, then added)."""
    model, rng = _model(9)
    xs = rng.standard_normal((4, 2, 3))
    state = random_state(rng, model.config, 2)
    _, cache = model.forward(xs, state, copy_final_memory=False)
    M = cache.memory                                                        # holds M_T
    step = cache.steps[-1]
    B, N = 2, model.config.N
    w_lra = np.asarray(step.write.Ww[np.arange(B), N * np.arange(B) + step.write.lra]).ravel()
    np.testing.assert_array_equal(M[np.arange(B), step.write.lra], w_lra[:, None] * step.write.a)


# ----------------------------------------------------------------- E.1 rows
@pytest.mark.parametrize("engine", ["sparse", "dense"])
def test_whole_sequence_equals_two_halves_with_carried_state(engine):
    """Forward outputs and the final state exactly; gradients chained with backward_with_state agree."""
    model, rng = _model(10, engine=engine)
    xs = rng.standard_normal((8, 2, 3))
    dys = rng.standard_normal((8, 2, 4))
    ys, cache = model.forward(xs)
    ys1, c1 = model.forward(xs[:4])
    ys2, c2 = model.forward(xs[4:], c1.final_state)
    np.testing.assert_array_equal(ys, np.concatenate([ys1, ys2]))
    for a, b in zip(cache.final_state, c2.final_state):
        np.testing.assert_array_equal(a, b)
    grads = model.backward(dys, cache)
    g2, dstate = model.backward_with_state(dys[4:], c2)
    g1, _ = model.backward_with_state(dys[:4], c1, dstate)
    for name in grads:
        _assert_close(grads[name], g1[name] + g2[name], 1e-12 * max(1.0, np.max(np.abs(grads[name]))), name)


def test_replaying_the_record_reproduces_the_forward_exactly():
    model, rng = _model(11)
    xs = rng.standard_normal((6, 2, 3))
    ys, cache = model.forward(xs)
    ys2, cache2 = model.forward(xs, frozen=cache.record)
    np.testing.assert_array_equal(ys, ys2)
    np.testing.assert_array_equal(cache.record.read_index, cache2.record.read_index)


@pytest.mark.parametrize("engine", ["sparse", "dense"])
def test_batch_elements_are_independent(engine):
    model, rng = _model(12, engine=engine)
    xs = rng.standard_normal((5, 3, 3))
    state = random_state(rng, model.config, 3)
    ys, _ = model.forward(xs, state)
    xs2 = xs.copy()
    xs2[:, 1] += rng.standard_normal((5, 3))
    M2 = state.M.copy()
    M2[1] += 1.0
    ys2, _ = model.forward(xs2, state._replace(M=M2))
    np.testing.assert_array_equal(ys[:, [0, 2]], ys2[:, [0, 2]])
    assert not np.allclose(ys[:, 1], ys2[:, 1])


def test_float32_forward_matches_float64_with_the_same_index_sets():
    model, rng = _model(13)
    xs = rng.standard_normal((6, 2, 3))
    ys, cache = model.forward(xs)
    single = _twin(model, dtype="float32")
    single.params = {k: v.astype(np.float32) for k, v in model.params.items()}
    ys32, cache32 = single.forward(xs.astype(np.float32), frozen=cache.record)
    assert ys32.dtype == np.float32 and cache32.final_state.M.dtype == np.float32
    np.testing.assert_allclose(ys32, ys, rtol=1e-4, atol=1e-5)
    grads32 = single.backward(np.ones_like(ys32), cache32)
    assert all(g.dtype == np.float32 for g in grads32.values())


# ----------------------------------------------------------------- layout and bad input
def test_param_names_and_layouts():
    config = SAMConfig(X=3, Y=4, N=8, W=4, R=2, K=3, H=6)
    assert param_shapes(config) == {
        "controller.W_x": (3 + 8, 24), "controller.W_h": (6, 24), "controller.b": (24,),
        "interface.W": (6, 2 * 5 + 4 + 2), "interface.b": (16,), "output.W": (6 + 8, 4), "output.b": (4,)}
    model = SAM(config)
    assert list(model.params) == list(param_shapes(config))
    assert np.all(model.params["controller.b"][6:12] == 1.0)                # forget bias


@pytest.mark.parametrize("field, value", [("K", 9), ("K", 0), ("K", -1), ("N", 0), ("engine", "faiss"),
                                          ("usage", "u1"), ("discount", 0.0), ("delta", -0.1),
                                          ("write_squash", "relu"), ("dtype", "float16"), ("index", "lsh?")])
def test_bad_config_raises_value_error(field, value):
    with pytest.raises(ValueError, match=field if field != "N" else "N"):
        SAMConfig(**{"X": 3, "Y": 4, "N": 8, "K": 3, field: value})


def test_bad_inputs_raise_value_errors():
    model, rng = _model(14)
    xs = rng.standard_normal((3, 2, 3))
    state = random_state(rng, model.config, 2)
    with pytest.raises(ValueError, match="N = 9 slots but the model has N = 8"):
        model.forward(xs, state._replace(M=np.zeros((2, 9, 4))))
    with pytest.raises(ValueError, match=r"\(T, B, X\)"):
        model.forward(np.zeros((3, 2, 5)))
    with pytest.raises(ValueError, match="empty"):
        model.forward(np.zeros((0, 2, 3)))
    with pytest.raises(ValueError, match="finite"):
        model.forward(np.full((3, 2, 3), np.nan))
    with pytest.raises(ValueError, match="read_index"):
        model.forward(xs, state._replace(read_index=state.read_index[..., ::-1]))
    with pytest.raises(ValueError, match="read_index"):
        model.forward(xs, state._replace(read_index=state.read_index[..., :2], read_weight=state.read_weight[..., :2]))
    with pytest.raises(ValueError, match="last"):
        model.forward(xs, state._replace(last=state.last + 1000))
    _, cache = model.forward(xs, state)
    rec = cache.record
    with pytest.raises(ValueError, match="frozen.read_index"):
        model.forward(xs, state, SAMRecord(rec.read_index[:2], rec.lra))
    with pytest.raises(ValueError, match="frozen.read_index"):
        model.forward(xs, state, SAMRecord(np.full_like(rec.read_index, 8), rec.lra))
    with pytest.raises(ValueError, match="frozen.lra"):
        model.forward(xs, state, SAMRecord(rec.read_index, rec.lra + 8))
    with pytest.raises(ValueError, match="SAMRecord"):
        model.forward(xs, state, frozen=(rec.read_index, rec.lra))
    with pytest.raises(ValueError, match="dys"):
        model.backward(np.zeros((3, 2, 5)), cache)
    with pytest.raises(ValueError, match="SAMConfig"):
        SAM(dict(X=3))
