"""The SDNC's fixed-width link layout (minimem.memory.sdnc_link, issue 11) against the CSR implementation it
replaced and against the dense twins (spec D.3 steps 7-9, D.9, D.10).

The CSR reference below is the pre-issue-11 code of sdnc_link (link_update and temporal_select on
batch-stacked scipy CSR matrices, rebuilt from COO triplets every step), kept verbatim as an oracle. For
random sequences - dyadic values with many exact ties, explicit zero and full (= 1) write weights, empty
rows, K_L = 1 and K_L = N, with and without the zero diagonal - the new layout must give the same kept
index sets and the same values bit for bit at every step, and the same f / b records. No timing here
(speed targets are not unit tests); see minimem.bench_engines for the SDNC engine row."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minimem.memory import sdnc_link
from minimem.memory.sam_sparse import INDEX_DTYPE, _csr, _unique_inverse, top_k_slots
from minimem.memory.sdnc import _dense_blocks
from minimem.memory.sdnc_link import (
    Links, empty_links, link_update, link_update_dense, links_from_csr, links_to_csr, temporal_select, write_support,
)


# ----------------------------------------------------------------- the CSR reference (pre-issue-11 sdnc_link)
def _ref_canonical(A) -> sp.csr_matrix:
    A = sp.csr_matrix(A)
    A.sum_duplicates()
    A.eliminate_zeros()
    A.indices = A.indices.astype(INDEX_DTYPE, copy=False)
    A.indptr = A.indptr.astype(INDEX_DTYPE, copy=False)
    return A


def _ref_row_top(vals, indptr, k):
    keep = np.ones(vals.size, dtype=bool)
    count = np.diff(indptr)
    full = np.flatnonzero(count > k)
    if full.size == 0:
        return keep
    start, n = indptr[full][:, None], count[full][:, None]
    slot = np.arange(int(n.max()))
    valid = slot < n
    key = np.where(valid, -vals[np.where(valid, start + slot, 0)], np.inf)
    cut = np.argsort(key, axis=1, kind="stable")[:, k:]
    keep[(start + cut)[cut < n]] = False
    return keep


def _ref_build(rows, cols, vals, shape, k, drop_diagonal=False):
    rows, cols, vals = np.asarray(rows, INDEX_DTYPE), np.asarray(cols, INDEX_DTYPE), np.asarray(vals)
    key, where = _unique_inverse(rows * shape[1] + cols)
    vals = np.bincount(where, weights=vals, minlength=key.size).astype(vals.dtype)
    rows, cols = np.divmod(key, shape[1])
    keep = vals != 0
    if drop_diagonal:
        keep &= rows != cols
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    indptr = np.zeros(shape[0] + 1, dtype=INDEX_DTYPE)
    np.cumsum(np.bincount(rows, minlength=shape[0]), out=indptr[1:])
    keep = _ref_row_top(vals, indptr, k)
    if not keep.all():
        cols, vals = cols[keep], vals[keep]
        np.cumsum(np.minimum(np.diff(indptr), k), out=indptr[1:])
    return _csr(vals, cols, indptr, shape, canonical=True)


def _ref_coo(A):
    return np.repeat(np.arange(A.shape[0], dtype=INDEX_DTYPE), np.diff(A.indptr)), A.indices, A.data


def _ref_outer(u, v):
    bu, iu, du = _ref_coo(u)
    count = np.diff(v.indptr)[bu]
    left = np.repeat(np.arange(bu.size), count)
    right = np.repeat(v.indptr[:-1][bu], count) + (np.arange(left.size) - np.repeat(np.cumsum(count) - count, count))
    return iu[left], v.indices[right], du[left] * v.data[right]


def ref_link_update(Nl, Pl, p, Ww, K_L, zero_diagonal=True):
    BN = Nl.shape[0]
    w = np.zeros(BN, dtype=Ww.dtype)
    np.add.at(w, Ww.indices, Ww.data)
    i, j, v = _ref_coo(Nl)
    ni, nj, nv = _ref_outer(Ww, p)
    Nl_new = _ref_build(np.concatenate([i, ni]), np.concatenate([j, nj]), np.concatenate([(1.0 - w[i]) * v, nv]),
                        Nl.shape, K_L, zero_diagonal)
    i, j, v = _ref_coo(Pl)
    Pl_new = _ref_build(np.concatenate([i, nj]), np.concatenate([j, ni]), np.concatenate([(1.0 - w[j]) * v, nv]),
                        Pl.shape, K_L, zero_diagonal)
    written = np.asarray(Ww.sum(axis=1)).reshape(-1)
    b, j, v = _ref_coo(p)
    wb, wj, wv = _ref_coo(Ww)
    p_new = _ref_build(np.concatenate([b, wb]), np.concatenate([j, wj]), np.concatenate([(1.0 - written[b]) * v, wv]),
                       p.shape, K_L)
    return Nl_new, Pl_new, p_new


def _ref_gather(A, rows, cols):
    if A.nnz == 0:
        return np.zeros(rows.shape, dtype=A.dtype)
    stored = _ref_coo(A)[0] * A.shape[1] + A.indices
    wanted = rows * A.shape[1] + cols
    at = np.minimum(np.searchsorted(stored, wanted), A.nnz - 1)
    return np.where(stored[at] == wanted, A.data[at], 0).astype(A.dtype, copy=False)


def ref_temporal_select(Nl, Pl, prev_index, prev_weight, K_L):
    B, R, Kp = prev_index.shape
    N = Nl.shape[0] // B
    offsets = N * np.arange(B, dtype=INDEX_DTYPE)[:, None, None]
    columns = np.zeros((B * N, R), dtype=np.result_type(prev_weight, Nl.dtype))
    np.add.at(columns, (prev_index + offsets, np.arange(R)[None, :, None]), prev_weight)
    out = []
    for links in (Nl, Pl):
        F = (links @ columns).reshape(B, N, R).transpose(0, 2, 1)
        index = top_k_slots(F, K_L)
        rows = np.broadcast_to((index + offsets)[..., None], (B, R, K_L, Kp))
        cols = np.broadcast_to((prev_index + offsets)[:, :, None, :], (B, R, K_L, Kp))
        out += [index, _ref_gather(links, rows, cols)]
    return out


# ----------------------------------------------------------------- random inputs
def _values(rng, size, dyadic):
    """Link / precedence / read values: dyadic (exact sums, many exact ties) or uniform."""
    if dyadic:
        return rng.choice([1 / 64, 1 / 32, 1 / 16, 3 / 32, 1 / 8], size=size)
    return rng.uniform(0.01, 0.15, size=size)


def _random_links(rng, B, N, K_L, zero_diagonal, dyadic, empty_rows):
    """A batch-stacked (B N, B N) CSR with <= K_L entries per row, some rows empty."""
    rows, cols = [], []
    for r in range(B * N):
        b, i = divmod(r, N)
        if rng.random() < empty_rows:
            continue
        choices = [j for j in range(N) if j != i or not zero_diagonal]
        picked = rng.choice(choices, size=rng.integers(0, min(K_L, len(choices)) + 1), replace=False)
        rows += [r] * len(picked)
        cols += list(b * N + picked)
    return sp.csr_matrix((_values(rng, len(rows), dyadic), (rows, cols)), shape=(B * N, B * N))


def _random_precedence(rng, B, N, K_L, dyadic):
    rows, cols = [], []
    for b in range(B):
        picked = rng.choice(N, size=rng.integers(0, K_L + 1), replace=False)
        rows += [b] * len(picked)
        cols += list(b * N + picked)
    return sp.csr_matrix((_values(rng, len(rows), dyadic), (rows, cols)), shape=(B, B * N))


def _random_write(rng, B, N, dyadic):
    """Write weights (B, B N) as a canonical CSR, sum <= 1 per element: a mixture over a random support
    (explicit zeros included), a full one-hot write (weight 1) or nothing at all."""
    rows, cols, data = [0], [], []
    for b in range(B):
        kind = rng.random()
        if kind < 0.15:                                   # a one-hot write: alpha = 1, gamma = 0
            slots, weights = [rng.integers(N)], [1.0]
        elif kind < 0.2:                                  # no entry
            slots, weights = [], []
        else:
            slots = np.sort(rng.choice(N, size=rng.integers(1, N + 1), replace=False))
            if dyadic:                                    # one large weight 1/2 (ties (1 - w) v = w p)
                weights = rng.choice([0.0, 1 / 128, 1 / 64, 1 / 32], size=len(slots))
                if rng.random() < 0.5:
                    weights[rng.integers(len(slots))] = 0.5
            else:
                weights = rng.uniform(0, 1, len(slots)) * rng.uniform(0, 1) / len(slots)
                weights[rng.random(len(slots)) < 0.1] = 0.0
        cols += list(b * N + np.asarray(slots, dtype=np.int64))
        data += list(weights)
        rows.append(len(cols))
    return _csr(np.asarray(data, dtype=np.float64), np.asarray(cols, dtype=np.int64), np.asarray(rows, dtype=np.int64),
                (B, B * N), canonical=True)


def _random_reads(rng, B, N, dyadic):
    R, Kp = int(rng.integers(1, 3)), int(rng.integers(1, 7))
    index = rng.integers(0, N, size=(B, R, Kp))          # duplicated slots allowed
    weight = _values(rng, (B, R, Kp), dyadic) if dyadic else rng.dirichlet(np.ones(Kp), size=(B, R)) * 0.9
    return index.astype(np.int64), weight


def _support(Ww, N):
    return write_support(Ww.indices, Ww.indptr, Ww.data, N)


def _assert_same_csr(new, ref, what):
    assert np.array_equal(new.indptr, ref.indptr), f"{what}: row counts differ"
    assert np.array_equal(new.indices, ref.indices), f"{what}: kept columns differ"
    assert np.array_equal(new.data, ref.data), f"{what}: values differ (max {np.max(np.abs(new.data - ref.data))})"


# ----------------------------------------------------------------- new layout == CSR reference, bit for bit
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), B=st.integers(1, 3), N=st.integers(2, 9), K_L_kind=st.sampled_from(["1", "N", "any"]),
       T=st.integers(1, 8), dyadic=st.booleans(), zero_diagonal=st.booleans(), start=st.sampled_from(["empty", "random"]))
def test_fixed_width_layout_equals_the_csr_reference_at_every_step(seed, B, N, K_L_kind, T, dyadic, zero_diagonal, start):
    """Same kept columns, same values bit for bit (Nl, Pl, p) and the same f / b records (kept slots and
    link blocks) as the CSR code, step after step, from an empty or a random start."""
    rng = np.random.default_rng(seed)
    K_L = {"1": 1, "N": N, "any": int(rng.integers(1, N + 1))}[K_L_kind]
    if start == "empty":
        Nl, Pl, p = empty_links(B, N)
    else:
        Nl = _ref_canonical(_random_links(rng, B, N, K_L, zero_diagonal, dyadic, empty_rows=0.3))
        Pl = _ref_canonical(_random_links(rng, B, N, K_L, zero_diagonal, dyadic, empty_rows=0.3))
        p = _ref_canonical(_random_precedence(rng, B, N, K_L, dyadic))
    links = links_from_csr(Nl, Pl, p, K_L, zero_diagonal)
    for t in range(T):
        Ww = _random_write(rng, B, N, dyadic)
        Nl, Pl, p = ref_link_update(Nl, Pl, p, Ww, K_L, zero_diagonal)
        links = link_update(links, _support(Ww, N), zero_diagonal)
        for new, ref, what in zip(links_to_csr(links), (Nl, Pl, p), ("Nl", "Pl", "p")):
            _assert_same_csr(new, ref, f"step {t}, {what}")
        index, weight = _random_reads(rng, B, N, dyadic)
        record = temporal_select(links, index, weight, K_L)
        for got, expected, what in zip(record, ref_temporal_select(Nl, Pl, index, weight, K_L), record._fields):
            assert np.array_equal(got, expected), f"step {t}, {what}"


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), B=st.integers(1, 3), N=st.integers(2, 8), T=st.integers(1, 6),
       zero_diagonal=st.booleans(), K_L_kind=st.sampled_from(["1", "N", "any"]))
def test_fixed_width_layout_equals_the_dense_twin(seed, B, N, T, zero_diagonal, K_L_kind):
    """link_update_dense (the oracle of D.9, same cut rule) from the same start: equal links and precedence
    (1e-15; the dense precedence sums wW_t in another order) at every step, dyadic values with ties."""
    rng = np.random.default_rng(seed)
    K_L = {"1": 1, "N": N, "any": int(rng.integers(1, N + 1))}[K_L_kind]
    Nl = _ref_canonical(_random_links(rng, B, N, K_L, zero_diagonal, True, empty_rows=0.3))
    Pl = _ref_canonical(_random_links(rng, B, N, K_L, zero_diagonal, True, empty_rows=0.3))
    p = _ref_canonical(_random_precedence(rng, B, N, K_L, True))
    L_f, L_b, p_d = _dense_blocks(Nl, B, N), _dense_blocks(Pl, B, N), _dense_blocks(p, B, N)
    links = links_from_csr(Nl, Pl, p, K_L, zero_diagonal)
    for t in range(T):
        Ww = _random_write(rng, B, N, True)
        w = _dense_blocks(Ww, B, N)                                   # (B, N)
        L_f, L_b, p_d = link_update_dense(L_f, L_b, p_d, w, K_L, zero_diagonal)
        links = link_update(links, _support(Ww, N), zero_diagonal)
        Nl, Pl, p = links_to_csr(links)
        for sparse, dense, what in ((Nl, L_f, "Nl"), (Pl, L_b, "Pl"), (p, p_d, "p")):
            np.testing.assert_allclose(_dense_blocks(sparse, B, N), dense, rtol=0, atol=1e-15, err_msg=f"step {t} {what}")


def test_both_row_paths_are_taken_and_agree():
    """forward/backward_links_update update most rows at their own columns and merge only the rows a
    candidate can enter; a longer random sequence takes both paths (counted here), and the result still
    equals the CSR reference (so the row test cannot be vacuous)."""
    rng = np.random.default_rng(7)
    B, N, K_L, T = 4, 24, 4, 12
    merged_rows = []
    original = sdnc_link._merge_and_cut

    def counting(row, old_cols, *args, **kwargs):
        merged_rows.append(old_cols.shape[0])
        return original(row, old_cols, *args, **kwargs)

    Nl, Pl, p = empty_links(B, N)
    links = links_from_csr(Nl, Pl, p, K_L)
    written_rows = 0
    sdnc_link._merge_and_cut = counting
    try:
        for t in range(T):
            Ww = _random_write(rng, B, N, dyadic=False)
            written_rows += int(np.count_nonzero(Ww.data))
            Nl, Pl, p = ref_link_update(Nl, Pl, p, Ww, K_L)
            links = link_update(links, _support(Ww, N))
            for new, ref, what in zip(links_to_csr(links), (Nl, Pl, p), ("Nl", "Pl", "p")):
                _assert_same_csr(new, ref, f"step {t}, {what}")
    finally:
        sdnc_link._merge_and_cut = original
    nl_merged = sum(merged_rows[0::3])                               # calls: Nl, Pl, p per step
    assert 0 < nl_merged < written_rows, (nl_merged, written_rows)
    assert Nl.nnz > B * N                                             # the links filled up


def test_conversions_round_trip_and_validate_nothing_away():
    """links_from_csr / links_to_csr at the sequence boundaries: a canonical CSR state comes back
    unchanged; explicit zeros are dropped; with zero_diagonal a given diagonal entry is emptied."""
    rng = np.random.default_rng(3)
    B, N, K_L = 2, 6, 3
    Nl = _ref_canonical(_random_links(rng, B, N, K_L, True, False, 0.2))
    Pl = _ref_canonical(_random_links(rng, B, N, K_L, True, False, 0.2))
    p = _ref_canonical(_random_precedence(rng, B, N, K_L, False))
    links = links_from_csr(Nl, Pl, p, K_L)
    assert isinstance(links, Links) and links.cols.shape == (2, B, N, K_L) and links.prec_cols.shape == (B, K_L)
    for back, original in zip(links_to_csr(links), (Nl, Pl, p)):
        _assert_same_csr(back, original, "round trip")
    diagonal = Nl.tolil()
    diagonal[1, 1] = 0.5
    Nl_back = links_to_csr(links_from_csr(diagonal.tocsr(), Pl, p, K_L + 1, zero_diagonal=True))[0]
    assert Nl_back[1, 1] == 0 and Nl_back.nnz == Nl.nnz
    Nl_back = links_to_csr(links_from_csr(diagonal.tocsr(), Pl, p, K_L + 1, zero_diagonal=False))[0]
    assert Nl_back[1, 1] == 0.5
