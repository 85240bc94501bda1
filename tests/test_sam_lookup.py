"""Tests of what a SAM step looks things up in (minimem.memory.sam_lra, minimem.memory.sam_index,
SAMLookup in minimem.memory.sam): the speed structures must not change a single result.

- the LRA order (a lazy-deletion queue, the paper's LRA ring) equals lra_slots' argmin with ties
  to the lowest index at every step, across forks, B > 1 and states that need the sort;
- the exact index's BLAS band gives exactly the sets of top-K over D's einsum (zero rows, tied
  rows, float32, the fall-back for many near-ties), and so does a model that uses it;
- the snapshot indexes' band over many dirty rows and the k-d tree's growing k change nothing;
- a carried lookup (cache.lookup) gives the results of one long call, and can be reused;
- in_place=True: forward + backward leave the caller's memory bit for bit as it was.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcheck.cases.sam import random_state
from minimem.memory import sam_index, sam_lra
from minimem.memory.sam import SAM, SAMConfig, SAMLookup
from minimem.memory.sam_index import ExactIndex, KDTreeIndex, LSHIndex, band_candidates, row_norms
from minimem.memory.sam_lra import LRAOrder
from minimem.memory.sam_sparse import lra_slots, top_k_slots
from minimem.memory.addressing import cosine_similarity_forward


# ----------------------------------------------------------------- the LRA order
def _random_accesses(rng, B, N, most):
    """Global rows b N + j, ascending: every element accesses 0..most distinct slots."""
    counts = rng.integers(0, min(N, most) + 1, size=B)
    return np.concatenate([b * N + np.sort(rng.choice(N, size=counts[b], replace=False))
                           for b in range(B)]).astype(np.int64)


@settings(max_examples=60, deadline=None)
@given(B=st.integers(1, 3), N=st.integers(1, 24), t0=st.integers(0, 4), fresh=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_lra_order_head_equals_the_argmin_at_every_step(B, N, t0, fresh, seed):
    """C.3 step 3 / C.11: ties to the lowest index, from a fresh memory (no sort) or a state whose
    times tie in many places (stable sort), with forks taken along the way."""
    rng = np.random.default_rng(seed)
    last = np.zeros((B, N), np.int64) if fresh else rng.integers(0, t0 + 1, size=(B, N))
    order = LRAOrder(last, t0)
    for t in range(t0 + 1, t0 + 60):
        np.testing.assert_array_equal(order.head(last), lra_slots(last))
        if rng.random() < 0.2:
            order = order.fork()
        rows = _random_accesses(rng, B, N, 5)
        last.reshape(-1)[rows] = t
        order.touch(rows, t)


def test_lra_order_survives_compaction_and_a_fork_is_independent():
    rng = np.random.default_rng(0)
    B, N = 2, 5
    last = np.zeros((B, N), np.int64)
    order = LRAOrder(last, 0)
    for t in range(1, 400):                           # every slot accessed many times: the queue compacts
        rows = _random_accesses(rng, B, N, 3)
        last.reshape(-1)[rows] = t
        order.touch(rows, t)
        assert list(order.head(last)) == list(lra_slots(last))
    assert order.log.shape[1] < 400                  # compacted, not grown without bound
    twin, twin_last = order.fork(), last.copy()
    rows = np.array([0, 1, 2, 3, 4, 5, 6])
    last.reshape(-1)[rows] = 400
    order.touch(rows, 400)
    np.testing.assert_array_equal(twin.head(twin_last), lra_slots(twin_last))    # unaffected
    np.testing.assert_array_equal(order.head(last), lra_slots(last))


def test_lra_order_rejects_bad_input():
    with pytest.raises(ValueError, match="integer array of shape"):
        LRAOrder(np.zeros((2, 3)), 0)
    with pytest.raises(ValueError, match="<= t"):
        LRAOrder(np.full((1, 3), 5), 4)
    with pytest.raises(ValueError, match="shape"):
        LRAOrder(np.zeros((1, 3), np.int64), 0).head(np.zeros((1, 4), np.int64))


@pytest.mark.parametrize("queue", [True, False])
def test_model_lra_choices_equal_the_argmin_over_a_long_sequence(queue, monkeypatch):
    """The model's recorded LRA slots equal argmin_j last(j) rebuilt by hand from every step's
    accesses (large T, a state with tied times, B = 3, a delta that skips some accesses); with the
    LRAOrder queue forced (queue=True; at N = 12 the model would take the argmin) and without."""
    if queue:
        monkeypatch.setattr(sam_lra, "ARGMIN_MAX_N", 0)
    config = SAMConfig(X=3, Y=2, N=12, W=4, R=2, K=3, H=6, delta=0.05)
    model = SAM(config, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    state = random_state(rng, config, 3)
    state = state._replace(last=rng.integers(0, 3, size=(3, 12)))            # many ties
    xs = rng.standard_normal((80, 3, 3))
    _, cache = model.forward(xs, state)
    last = state.last.copy()
    for t, step in enumerate(cache.steps):
        np.testing.assert_array_equal(step.write.lra, lra_slots(last))
        J, where = np.unique(np.concatenate([step.write.Ww.indices, step.read.Wr.indices]), return_inverse=True)
        access = np.bincount(where, np.concatenate([step.write.Ww.data, step.read.Wr.data]))
        last.reshape(-1)[J[access > config.delta]] = state.t + t + 1
    np.testing.assert_array_equal(cache.final_state.last, last)


# ----------------------------------------------------------------- the exact index's band
def _memory(rng, B, N, W, dtype=np.float64):
    M = rng.standard_normal((B, N, W)).astype(dtype)
    M[:, rng.choice(N, size=N // 5, replace=False)] = 0.0                    # zero rows tie at D = 0
    M[:, 3] = M[:, 7]                                                        # two identical rows tie
    return M


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("B, N, W, R, K", [(1, 300, 8, 4, 4), (2, 97, 5, 3, 6), (3, 40, 3, 2, 1)])
def test_exact_index_band_equals_top_k_over_every_row(B, N, W, R, K, dtype):
    rng = np.random.default_rng(N)
    M = _memory(rng, B, N, W, dtype)
    sparse = np.zeros_like(M)                                                # a fresh memory: K-th best is a zero row
    sparse[:, [2, N - 1]] = M[:, [3, 5]]
    for memory in (M, sparse):
        reference, fast = ExactIndex(), ExactIndex(memory, blas_min_n=1)
        assert fast.norms is not None
        for trial in range(12):
            q = rng.standard_normal((B, R, W)).astype(dtype)
            if trial % 3 == 0:
                q[:, 0] = M[:, 7]                                            # exact tie between slots 3 and 7
            np.testing.assert_array_equal(fast.query(memory, q, K), reference.query(memory, q, K))


def test_exact_index_band_tracks_writes_and_falls_back_on_many_near_ties():
    rng = np.random.default_rng(3)
    B, N, W, R, K = 2, 200, 6, 3, 4
    M = _memory(rng, B, N, W)
    fast = ExactIndex(M, blas_min_n=1)
    rows = np.array([5, 9, N + 11])
    M.reshape(-1, W)[rows] = rng.standard_normal((3, W))                     # a write ...
    fast.update(M, rows)                                                     # ... and its notice
    q = rng.standard_normal((B, R, W))
    np.testing.assert_array_equal(fast.query(M, q, K), ExactIndex().query(M, q, K))
    M[:, 20:180] = M[:, 20:21] * (1 + 1e-15 * np.arange(160))[:, None]       # 160 near-identical rows
    fast = ExactIndex(M, blas_min_n=1)
    q[:, :] = M[:, 20:21]
    positions = band_candidates(M, q, *[a.reshape(B, N) for a in row_norms(M.reshape(-1, W))], K)
    assert positions.shape[-1] == K                                          # the exact fall-back answered
    np.testing.assert_array_equal(fast.query(M, q, K), ExactIndex().query(M, q, K))


def test_band_candidates_respects_invalid_rows():
    rng = np.random.default_rng(4)
    G, q = rng.standard_normal((2, 50, 4)), rng.standard_normal((2, 3, 4))
    valid = rng.random((2, 50)) < 0.5
    norms, zero = row_norms(G)
    positions = band_candidates(G, q, norms, zero, 3, valid)
    D = np.where(valid[:, None, :], cosine_similarity_forward(G, q)[0], -np.inf)
    best = top_k_slots(D, 3)
    for b in range(2):
        for r in range(3):
            chosen = set(positions[b, r][positions[b, r] >= 0])
            assert set(best[b, r]) <= chosen and all(valid[b, p] for p in chosen)


@pytest.mark.parametrize("engine_N", [300])
def test_model_with_the_band_equals_the_model_without(monkeypatch, engine_N):
    """The whole model: the same outputs, sets, LRA slots and gradients bit for bit."""
    config = SAMConfig(X=3, Y=2, N=engine_N, W=8, R=2, K=3, H=6)
    model = SAM(config, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    state = random_state(rng, config, 2)
    xs, dys = rng.standard_normal((15, 2, 3)), rng.standard_normal((15, 2, 2))
    runs = []
    for threshold in (10 ** 9, 1):
        monkeypatch.setattr(sam_index, "EXACT_BLAS_MIN_N", threshold)
        ys, cache = model.forward(xs, state)
        assert (cache.lookup.index.norms is not None) == (threshold == 1)
        runs.append((ys, cache.record, model.backward(dys, cache)))
    (ys0, rec0, g0), (ys1, rec1, g1) = runs
    np.testing.assert_array_equal(ys0, ys1)
    np.testing.assert_array_equal(rec0.read_index, rec1.read_index)
    np.testing.assert_array_equal(rec0.lra, rec1.lra)
    for name in g0:
        np.testing.assert_array_equal(g0[name], g1[name])


# ----------------------------------------------------------------- snapshot indexes with many dirty rows
@pytest.mark.parametrize("kind", ["kdtree", "lsh"])
def test_snapshot_band_over_many_dirty_rows_changes_nothing(kind, monkeypatch):
    """With eps = 0 (k-d tree) or one bit in 64 tables (LSH) the search is exact; after 150 dirty
    rows per element (the k-d tree must grow its k past them) the result is still ExactIndex's,
    whether the shared rows are re-scored directly or through the band."""
    rng = np.random.default_rng(5)
    B, N, W, R, K = 2, 400, 5, 3, 4
    M = rng.standard_normal((B, N, W))
    M[:, 350:] = 0.0
    make = (lambda m: KDTreeIndex(m)) if kind == "kdtree" else (lambda m: LSHIndex(m, np.random.default_rng(1),
                                                                                     tables=64, bits=1))
    index = make(M)
    rows = np.concatenate([rng.choice(N, 150, replace=False) + b * N for b in range(B)])
    q = rng.standard_normal((B, R, W))
    M.reshape(-1, W)[rows] = q[rows // N, 0] * rng.uniform(0.5, 2.0, size=(rows.size, 1))   # near the queries
    index.update(M, rows)
    expected = ExactIndex().query(M, q, K)
    for direct in (10 ** 6, 0):
        monkeypatch.setattr(sam_index, "SHARED_DIRECT", direct)
        np.testing.assert_array_equal(index.query(M, q, K), expected)


# ----------------------------------------------------------------- carried lookups and in-place memory
@pytest.mark.parametrize("index", ["exact", "kdtree", "lsh"])
def test_carried_lookup_equals_one_long_call_and_can_be_reused(index):
    config = SAMConfig(X=3, Y=2, N=40, W=4, R=2, K=3, H=6, index=index, index_eps=0.5, lsh_bits=3)
    model = SAM(config, np.random.default_rng(0))
    rng = np.random.default_rng(2)
    state = random_state(rng, config, 2)
    xs = rng.standard_normal((12, 2, 3))
    ys, cache = model.forward(xs, state)
    ys1, c1 = model.forward(xs[:5], state)
    ys2, c2 = model.forward(xs[5:], c1.final_state, lookup=c1.lookup)
    np.testing.assert_array_equal(ys, np.concatenate([ys1, ys2]))
    np.testing.assert_array_equal(cache.record.read_index[5:], c2.record.read_index)
    again, c3 = model.forward(xs[5:], c1.final_state, lookup=c1.lookup)      # the same lookup, reused
    np.testing.assert_array_equal(again, ys2)
    assert c2.lookup.t == c3.lookup.t == state.t + 12


def test_lookup_must_belong_to_the_state():
    config = SAMConfig(X=3, Y=2, N=10, W=4, R=2, K=3, H=6)
    model = SAM(config, np.random.default_rng(0))
    xs = np.ones((3, 1, 3))
    _, cache = model.forward(xs)
    with pytest.raises(ValueError, match="lookup describes a state"):
        model.forward(xs, lookup=cache.lookup)                               # t = 3 lookup, t = 0 state
    other = SAM(SAMConfig(X=3, Y=2, N=10, W=4, R=2, K=3, H=6, index="kdtree"))
    with pytest.raises(ValueError, match="index"):
        other.forward(xs, cache.final_state, lookup=cache.lookup)
    dense = SAM(SAMConfig(X=3, Y=2, N=10, W=4, R=2, K=3, H=6, engine="dense"))
    with pytest.raises(ValueError, match="sparse engine"):
        dense.forward(xs, cache.final_state, lookup=cache.lookup)
    assert isinstance(model.lookup(cache.final_state), SAMLookup)


def test_in_place_forward_and_backward_restore_the_callers_memory():
    config = SAMConfig(X=3, Y=2, N=30, W=4, R=2, K=3, H=6)
    model = SAM(config, np.random.default_rng(0))
    rng = np.random.default_rng(3)
    state = random_state(rng, config, 2)
    M0 = state.M.copy()
    xs, dys = rng.standard_normal((9, 2, 3)), rng.standard_normal((9, 2, 2))
    ys, cache = model.forward(xs, state)
    grads = model.backward(dys, cache)
    ys_in, cache_in = model.forward(xs, state, copy_final_memory=False, in_place=True)
    assert cache_in.memory is state.M and not np.array_equal(state.M, M0)   # M_T lives in the caller's array
    grads_in = model.backward(dys, cache_in)
    assert np.array_equal(state.M, M0)                                       # reverted bit for bit
    np.testing.assert_array_equal(ys_in, ys)
    for name in grads:
        np.testing.assert_array_equal(grads_in[name], grads[name])
    with pytest.raises(ValueError, match="in_place"):
        model.forward(xs, None, in_place=True)
    with pytest.raises(ValueError, match="in_place"):
        model.forward(xs, state._replace(M=state.M.astype(np.float32)), in_place=True)
