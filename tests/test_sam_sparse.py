"""Tests of the SAM memory-step primitives (minimem.memory.sam_sparse, minimem.memory.sam_interface,
minimem.memory.sam_dense), spec C.3-C.5 and C.11: the choices (exact top-K with ties to the lowest
index, the LRA slot against a reference LRA ring), the CSR layouts, the write and read adjoints
against central differences (duplicate slots across heads included), the exact revert, the C.11
oracles of one step, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gradcheck.core import assert_grads_close, numeric_vjp
from minimem.memory.sam_dense import dense_access_backward, dense_access_forward
from minimem.memory.sam_interface import (
    interface_autodiff, interface_backward, interface_forward, interface_size,
)
from minimem.memory.sam_sparse import (
    check_K, lra_slots, read_weights_csr, read_weights_dense, sparse_read_backward, sparse_read_forward,
    sparse_write_backward, sparse_write_forward, sparse_write_replay, sparse_write_revert, top_k_slots,
    usage_update, write_weights_csr,
)
from minimem import autodiff as ad


def _random_sets(rng, B, R, K, N):
    return np.sort(np.stack([[rng.choice(N, size=K, replace=False) for _ in range(R)] for _ in range(B)]), -1)


# ----------------------------------------------------------------- choices
def _top_k_oracle(scores, K):
    """Sort by (-score, index) - a stable argsort of -scores - keep K, return them ascending."""
    order = np.argsort(-scores, axis=-1, kind="stable")[..., :K]
    return np.sort(order, axis=-1)


@settings(max_examples=60)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 12), st.data())
def test_top_k_equals_a_stable_sort_with_ties_to_the_lowest_index(B, R, N, data):
    """Scores drawn from a few integers tie often; the chosen set must be the stable-sort one."""
    K = data.draw(st.integers(1, N))
    seed = data.draw(st.integers(0, 2**31 - 1))
    scores = np.random.default_rng(seed).integers(-2, 3, size=(B, R, N)).astype(float)
    index = top_k_slots(scores, K)
    assert index.dtype == np.int64 and index.shape == (B, R, K)
    np.testing.assert_array_equal(index, _top_k_oracle(scores, K))


def test_top_k_on_distinct_scores_keeps_the_k_largest():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((2, 3, 50))
    index = top_k_slots(scores, 5)
    kept = np.take_along_axis(scores, index, -1)
    assert np.all(np.min(kept, -1) > np.sort(scores, -1)[..., -6])


class LRARing:
    """Reference LRA ring (paper 3.3, C.3 step 8): a list in access order, the head is the least
    recently accessed slot; the slots accessed at one step move to the back in ascending order."""

    def __init__(self, N):
        self.order = list(range(N))

    def access(self, slots):
        moved = sorted(set(int(s) for s in slots))
        self.order = [s for s in self.order if s not in moved] + moved

    def head(self):
        return self.order[0]


def test_lra_argmin_equals_the_head_of_an_lra_ring():
    """C.11: argmin of last (lowest index on ties) is the head of the ring, at every step."""
    rng = np.random.default_rng(1)
    N, B = 12, 3
    last = np.zeros((B, N), dtype=np.int64)
    rings = [LRARing(N) for _ in range(B)]
    for t in range(1, 40):
        assert list(lra_slots(last)) == [ring.head() for ring in rings]
        for b in range(B):
            accessed = rng.choice(N, size=rng.integers(0, 5), replace=False)
            last[b, accessed] = t
            rings[b].access(accessed)


# ----------------------------------------------------------------- CSR layouts (C.5)
def _check_read_csr(Wr, B, R, N, K):
    assert Wr.shape == (B * R, B * N) and Wr.indices.dtype == np.int64 and Wr.indptr.dtype == np.int64
    assert np.all(np.diff(Wr.indptr) == K) and Wr.indptr[-1] == B * R * K
    cols = Wr.indices.reshape(B, R, K)
    assert np.all(np.diff(cols, axis=-1) > 0)                               # sorted, unique per row
    b = np.arange(B)[:, None, None]
    assert np.all((cols >= b * N) & (cols < (b + 1) * N))                   # inside the element's block
    assert np.all(Wr.data >= 0)
    np.testing.assert_allclose(np.asarray(Wr.sum(axis=1)).ravel(), 1.0, rtol=0, atol=1e-12)


def test_read_and_write_csr_structure():
    """C.5 item 5, on a step where three heads share slots and the LRA slot is also read."""
    rng = np.random.default_rng(2)
    B, R, K, N, W = 2, 3, 4, 6, 3
    M = rng.standard_normal((B, N, W))
    q, beta = rng.standard_normal((B, R, W)), 1 + rng.random((B, R, 1))
    r, read = sparse_read_forward(M, q, beta, K)
    _check_read_csr(read.Wr, B, R, N, K)
    dense = read_weights_dense(read.Wr, B, R, N)
    blocks = np.stack([read.Wr.toarray()[b * R:(b + 1) * R, b * N:(b + 1) * N] for b in range(B)])
    np.testing.assert_array_equal(dense, blocks)                            # toarray() is block diagonal
    assert np.count_nonzero(read.Wr.toarray()) == B * R * K
    alpha, gamma = np.array([[0.7], [0.4]]), np.array([[0.6], [0.3]])
    lra = read.index[:, 0, 0]                                               # an LRA slot that was also read
    Ww, write_map = write_weights_csr(read.index, read.Wr.data.reshape(B, R, K), lra, alpha, gamma, N)
    assert Ww.shape == (B, B * N) and Ww.has_canonical_format and Ww.indices.dtype == np.int64
    assert np.all(np.diff(Ww.indptr) <= R * K + 1) and np.all(np.diff(Ww.indptr) < R * K + 1)  # merged
    assert np.all(np.diff(Ww.indptr) >= 0) and Ww.indptr[-1] == Ww.nnz
    assert np.all(Ww.data >= 0)
    np.testing.assert_allclose(np.asarray(Ww.sum(axis=1)), alpha * (gamma + (1 - gamma)), atol=1e-15)
    expected = alpha * (gamma * dense.mean(axis=1) + (1 - gamma) * np.eye(N)[lra])   # (B, N)
    np.testing.assert_allclose(read_weights_dense(Ww, B, 1, N)[:, 0], expected, rtol=0, atol=1e-15)
    assert write_map.shape == (B * R * K + B,)


def test_write_weights_keep_a_zero_lra_entry():
    """alpha = 0: every weight is 0, the LRA entry stays stored (never eliminate_zeros)."""
    B, R, K, N = 2, 1, 2, 5
    index = np.array([[[1, 3]], [[0, 4]]])
    Ww, _ = write_weights_csr(index, np.full((B, R, K), 0.5), np.array([2, 2]), np.zeros((B, 1)),
                              np.full((B, 1), 0.5), N)
    assert Ww.nnz == B * (K + 1) and np.all(Ww.data == 0)
    assert 2 in Ww.indices[:3] and N + 2 in Ww.indices[3:]


# ----------------------------------------------------------------- write: adjoint, revert, oracles
def _write_case(seed, B=2, R=3, K=3, N=5, W=4):
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((B, N, W))
    index = _random_sets(rng, B, R, K, N)                     # 3 heads x 3 of 5 slots: duplicates
    weight = rng.dirichlet(np.ones(K), size=(B, R))
    lra = np.array([index[0, 0, 1], 4])[:B]                  # element 0's LRA slot was read too
    a = rng.standard_normal((B, W))
    alpha, gamma = rng.uniform(0.2, 0.8, (B, 1)), rng.uniform(0.2, 0.8, (B, 1))
    return M, index, weight, lra, a, alpha, gamma


def test_sparse_write_backward_matches_central_differences_with_duplicate_slots():
    M, index, weight, lra, a, alpha, gamma = _write_case(3)
    dout = np.random.default_rng(4).standard_normal(M.shape)

    def write(M, weight, a, alpha, gamma):
        buffer = M.copy()
        sparse_write_forward(buffer, index, weight, lra, a, alpha, gamma)
        return buffer

    numeric = numeric_vjp(write, (M, weight, a, alpha, gamma), dout)
    buffer = M.copy()
    record = sparse_write_forward(buffer, index, weight, lra, a, alpha, gamma)
    dM = dout.copy()
    da, dalpha, dgamma, dweight = sparse_write_backward(dM, record)
    assert_grads_close((dM, dweight, da, dalpha, dgamma), numeric, names=("M", "weight", "a", "alpha", "gamma"))


def test_revert_is_exact_and_replay_redoes_the_write_bit_for_bit():
    M, index, weight, lra, a, alpha, gamma = _write_case(5)
    buffer = M.copy()
    records, states = [], [M.copy()]
    rng = np.random.default_rng(6)
    for _ in range(6):                                         # several writes, overlapping rows
        records.append(sparse_write_forward(buffer, index, weight, rng.integers(0, 5, size=2), a, alpha, gamma))
        states.append(buffer.copy())
    for t in reversed(range(6)):
        sparse_write_revert(buffer, records[t])
        assert np.array_equal(buffer, states[t])               # bit for bit, every step
    for t in range(6):
        sparse_write_replay(buffer, records[t])
        assert np.array_equal(buffer, states[t + 1])


def test_write_oracles_of_c11():
    """LRA row == wW(l) a exactly; alpha = 0 only zeroes the LRA row; gamma = 0, alpha = 1 writes a
    to the LRA slot alone."""
    M, index, weight, lra, a, alpha, gamma = _write_case(7)
    B, N = M.shape[:2]
    buffer = M.copy()
    record = sparse_write_forward(buffer, index, weight, lra, a, alpha, gamma)
    w_lra = record.Ww[np.arange(B), N * np.arange(B) + lra].A1
    assert np.all(w_lra >= (alpha * (1 - gamma))[:, 0] - 1e-15)
    np.testing.assert_array_equal(buffer[np.arange(B), lra], w_lra[:, None] * a)
    buffer = M.copy()
    sparse_write_forward(buffer, index, weight, lra, a, np.zeros((B, 1)), gamma)
    changed = np.any(buffer != M, axis=-1)
    np.testing.assert_array_equal(changed, np.eye(N, dtype=bool)[lra])
    assert np.all(buffer[np.arange(B), lra] == 0)
    buffer = M.copy()
    sparse_write_forward(buffer, index, weight, lra, a, np.ones((B, 1)), np.zeros((B, 1)))
    np.testing.assert_array_equal(buffer[np.arange(B), lra], a)
    keep = ~np.eye(N, dtype=bool)[lra]
    np.testing.assert_array_equal(buffer[keep], M[keep])


def test_first_writes_on_a_fresh_memory_go_to_slot_order_and_skip_read_slots():
    """C.11: gamma = 0, alpha = 1 from last = 0: the first write goes to slot 0; slots read above
    delta at step 1 are skipped at step 2."""
    B, N, W, R, K = 1, 6, 3, 1, 2
    M, last = np.zeros((B, N, W)), np.zeros((B, N), dtype=np.int64)
    lra = lra_slots(last)
    assert lra[0] == 0
    record = sparse_write_forward(M, np.zeros((B, R, 0), int), np.zeros((B, R, 0)), lra, np.ones((B, W)),
                                  np.ones((B, 1)), np.zeros((B, 1)))
    q = np.zeros((B, R, W))
    _, read = sparse_read_forward(M, q, np.ones((B, R, 1)), K, index=np.array([[[1, 2]]]))
    usage_update(last, None, record.Ww, read.Wr, 1, 0.005)
    np.testing.assert_array_equal(last, [[1, 1, 1, 0, 0, 0]])
    assert lra_slots(last)[0] == 3


# ----------------------------------------------------------------- read: adjoint, oracles
@pytest.mark.parametrize("B, R, K, N", [(1, 1, 1, 4), (2, 3, 4, 6), (2, 2, 5, 5)])
def test_sparse_read_backward_matches_central_differences(B, R, K, N):
    """Gradients of (r, wR) w.r.t. M, q, beta with the sets frozen; R K > N forces shared slots."""
    rng = np.random.default_rng(B * 100 + R * 10 + K)
    W = 3
    M, q = rng.standard_normal((B, N, W)), rng.standard_normal((B, R, W))
    beta = 1 + 2 * rng.random((B, R, 1))
    index = _random_sets(rng, B, R, K, N)
    dr, dweight = rng.standard_normal((B, R, W)), rng.standard_normal((B, R, K))

    def read(M, q, beta):
        r, record = sparse_read_forward(M, q, beta, K, index=index)
        return r, record.Wr.data.reshape(B, R, K)

    numeric = numeric_vjp(read, (M, q, beta), (dr, dweight))
    _, record = sparse_read_forward(M, q, beta, K, index=index)
    dM = np.zeros_like(M)
    dq, dbeta = sparse_read_backward(dr, dweight, M, dM, record)
    assert_grads_close((dM, dq, dbeta), numeric, names=("M", "q", "beta"))


def test_duplicate_slots_need_add_at():
    """Two heads read slot 1. Fancy-index += would keep one head's contribution only; the read
    adjoint (np.add.at) must match central differences on the shared slot."""
    rng = np.random.default_rng(8)
    B, R, K, N, W = 1, 2, 2, 3, 2
    M, q, beta = rng.standard_normal((B, N, W)), rng.standard_normal((B, R, W)), np.ones((B, R, 1))
    index = np.array([[[0, 1], [1, 2]]])                        # slot 1 read by both heads
    _, record = sparse_read_forward(M, q, beta, K, index=index)
    dr = rng.standard_normal((B, R, W))
    rows, terms = record.Wr.indices, record.Wr.data[:, None] * np.repeat(dr[0], K, axis=0)
    buggy, correct = np.zeros((N, W)), np.zeros((N, W))
    buggy[rows] += terms                                        # the trap: the duplicate row is dropped
    np.add.at(correct, rows, terms)
    assert not np.allclose(buggy[1], correct[1]) and np.allclose(buggy[[0, 2]], correct[[0, 2]])
    dM = np.zeros_like(M)
    sparse_read_backward(dr, np.zeros((B, R, K)), M, dM, record)
    numeric = numeric_vjp(lambda M: sparse_read_forward(M, q, beta, K, index=index)[0], (M,), dr)
    assert_grads_close((dM,), numeric, names=("M",))


def test_orthonormal_words_are_read_back():
    """C.11: orthonormal stored words, query = a stored word, beta = 50: read error < 1e-6, top-1 slot."""
    rng = np.random.default_rng(9)
    N, W = 8, 8
    Q, _ = np.linalg.qr(rng.standard_normal((W, W)))
    M = Q.T[None]                                                # (1, N, W), rows orthonormal
    for slot in range(N):
        q = M[:, slot][:, None]                                  # (1, 1, W)
        r, read = sparse_read_forward(M, q, np.full((1, 1, 1), 50.0), 3)
        assert np.max(np.abs(r[0, 0] - M[0, slot])) < 1e-6
        top1 = top_k_slots(np.einsum("bw,bnw->bn", q[:, 0], M)[:, None], 1)
        assert top1[0, 0, 0] == slot and slot in read.index[0, 0]


# ----------------------------------------------------------------- dense step vs sparse step
def test_dense_step_equals_sparse_step_at_k_equals_n():
    """One step of each form from the same previous read sets: equal memory (bit for bit), reads,
    weightings and usage; K = N makes the dense weights the full softmax."""
    rng = np.random.default_rng(10)
    B, R, N, W = 2, 2, 6, 3
    M, index, weight, lra, a, alpha, gamma = _write_case(11, B=B, R=R, K=N, N=N, W=W)
    q, beta = rng.standard_normal((B, R, W)), 1 + rng.random((B, R, 1))
    last = rng.permutation(12)[:N][None].repeat(B, 0)
    w_prev = np.zeros((B, R, N))
    np.put_along_axis(w_prev, index, weight, -1)
    (M_d, last_d, _, w_d, r_d), _ = dense_access_forward(M, last, np.zeros((B, N)), w_prev, q, beta, a, alpha,
                                                         gamma, 13, N, 0.005)
    buffer, last_s = M.copy(), last.copy()
    write = sparse_write_forward(buffer, index, weight, lra_slots(last), a, alpha, gamma)
    r_s, read = sparse_read_forward(buffer, q, beta, N)
    usage_update(last_s, None, write.Ww, read.Wr, 13, 0.005)
    np.testing.assert_array_equal(buffer, M_d)
    np.testing.assert_allclose(r_s, r_d, rtol=0, atol=1e-12)
    np.testing.assert_allclose(read_weights_dense(read.Wr, B, R, N), w_d, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(last_s, last_d)


def test_dense_step_backward_matches_central_differences():
    rng = np.random.default_rng(12)
    B, R, N, W, K = 2, 2, 6, 3, 3
    M, index, weight, lra, a, alpha, gamma = _write_case(13, B=B, R=R, K=K, N=N, W=W)
    w_prev = np.zeros((B, R, N))
    np.put_along_axis(w_prev, index, weight, -1)
    q, beta = rng.standard_normal((B, R, W)), 1 + rng.random((B, R, 1))
    sets = _random_sets(rng, B, R, K, N)
    douts = rng.standard_normal((B, N, W)), rng.standard_normal((B, R, N)), rng.standard_normal((B, R, W))

    def step(M, w_prev, q, beta, a, alpha, gamma):
        (M_t, _, _, w, r), _ = dense_access_forward(M, np.zeros((B, N), int), np.zeros((B, N)), w_prev, q, beta,
                                                    a, alpha, gamma, 1, K, 0.005, lra=lra, index=sets)
        return M_t, w, r

    inputs = (M, w_prev, q, beta, a, alpha, gamma)
    numeric = numeric_vjp(step, inputs, douts)
    _, cache = dense_access_forward(M, np.zeros((B, N), int), np.zeros((B, N)), w_prev, q, beta, a, alpha,
                                    gamma, 1, K, 0.005, lra=lra, index=sets)
    analytic = dense_access_backward(*douts, cache)
    assert_grads_close(analytic, numeric, names=("M", "w_prev", "q", "beta", "a", "alpha", "gamma"))


# ----------------------------------------------------------------- interface
@pytest.mark.parametrize("write_squash", [None, "tanh"])
def test_interface_backward_matches_central_differences_and_autodiff(write_squash):
    rng = np.random.default_rng(14)
    B, R, W = 2, 3, 4
    p = rng.standard_normal((B, interface_size(R, W)))
    iface, cache = interface_forward(p, R, W, write_squash)
    assert iface.q.shape == (B, R, W) and iface.beta.shape == (B, R, 1) and np.all(iface.beta >= 1)
    np.testing.assert_array_equal(iface.q[:, 1], p[:, W + 1:2 * W + 1])      # head 1's block follows head 0's
    douts = [rng.standard_normal(np.shape(x)) for x in iface]
    numeric = numeric_vjp(lambda p: tuple(interface_forward(p, R, W, write_squash)[0]), (p,), douts)
    analytic = interface_backward(type(iface)(*douts), cache)
    assert_grads_close((analytic,), numeric, names=("p",))
    tp = ad.Tensor(p, requires_grad=True)
    total = sum((t * d).sum() for t, d in zip(interface_autodiff(tp, R, W, write_squash), douts))
    total.backward()
    np.testing.assert_allclose(tp.grad, analytic, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------- bad input
def test_bad_k_raises_value_error():
    scores = np.zeros((1, 1, 4))
    for K in (0, -1, 5, 2.0, True):
        with pytest.raises(ValueError, match="K"):
            top_k_slots(scores, K)
    M = np.zeros((1, 4, 2))
    with pytest.raises(ValueError, match="1 <= K <= N = 4"):
        sparse_read_forward(M, np.zeros((1, 1, 2)), np.ones((1, 1, 1)), 5)
    with pytest.raises(ValueError, match="K"):
        check_K(0, 3)


def test_bad_index_sets_and_buffers_raise_value_error():
    M = np.zeros((1, 4, 2))
    q, beta = np.zeros((1, 1, 2)), np.ones((1, 1, 1))
    for index in (np.array([[[0, 4]]]), np.array([[[2, 1]]]), np.array([[[1, 1]]]), np.array([[[0, 1, 2]]])):
        with pytest.raises(ValueError, match="index"):
            sparse_read_forward(M, q, beta, 2, index=index)
    with pytest.raises(ValueError, match="C-contiguous"):
        sparse_write_forward(np.zeros((1, 2, 4)).transpose(0, 2, 1), np.zeros((1, 1, 0), int), np.zeros((1, 1, 0)),
                             np.array([0]), np.ones((1, 2)), np.ones((1, 1)), np.ones((1, 1)))
    with pytest.raises(ValueError, match="shape"):
        read_weights_csr(np.zeros((2, 2), int), np.zeros((2, 2)), 4)


@pytest.mark.parametrize("add_at_max_rows", [0, 1 << 15])
def test_add_rows_equals_np_add_at_bit_for_bit_with_repeated_rows(add_at_max_rows, monkeypatch):
    """_add_rows adds like np.add.at (a repeated row gets its values in order), through the layered
    fancy `+=` (add_at_max_rows = 0) and through np.add.at on a small buffer."""
    from minimem.memory import sam_sparse
    monkeypatch.setattr(sam_sparse, "ADD_AT_MAX_ROWS", add_at_max_rows)
    rng = np.random.default_rng(3)
    target = rng.standard_normal((12, 3))
    rows = np.array([5, 1, 5, 7, 1, 5, 0, 11])                      # 5 three times, 1 twice
    values = rng.standard_normal((rows.size, 3)) * 10.0 ** rng.integers(-8, 8, size=(rows.size, 1))
    expected = target.copy()
    np.add.at(expected, rows, values)
    sam_sparse._add_rows(target, rows, values)
    np.testing.assert_array_equal(target, expected)
