"""Tests of the Sparse DNC (minimem.memory.sdnc, minimem.memory.sdnc_link), spec D.9 and the SDNC column of
E.1: the sparse engines equal the dense oracle of eqs. [11], [17-22] + C.3 at K = N, K_L = N (and at
small K, K_L away from ties), link structure along a sequence, the one-hot link oracle, Pl = Nl^T
without truncation, manual == autodiff, both == central differences with frozen choices and links,
the exact memory revert, chunked sequences, batch independence, float32, planted bugs, bad input,
and a short copy run whose loss falls."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from gradcheck.cases import sdnc as sdnc_cases
from gradcheck.cases.sdnc import random_state
from gradcheck.core import check_model
from minimem import autodiff as ad
from minimem.memory import sdnc as sdnc_module
from minimem.memory.sam_sparse import write_weights_csr
from minimem.memory.sdnc import SDNC, SDNCConfig, _dense_blocks, param_shapes
from minimem.memory.sdnc_link import (
    _merge_and_cut, empty_links, link_update, links_from_csr, links_to_csr, temporal_select, temporal_values,
    write_support,
)

TOL = 1e-12
CASES = {case.name: case for case in sdnc_cases.sdnc_cases()}


def _model(seed=0, **config):
    config = SDNCConfig(**{"X": 3, "Y": 4, "N": 8, "W": 4, "R": 2, "K": 3, "K_L": 2, "H": 6, **config})
    rng = np.random.default_rng(seed)
    model = SDNC(config, rng)
    for key in ("interface.b", "output.b"):
        model.params[key] = 0.5 * rng.standard_normal(model.params[key].shape)
    return model, rng


def _link_step(Nl, Pl, p, Ww, K_L, zero_diagonal=True):
    """One link update on CSR matrices (the layout of SDNCState) through the fixed-width layout."""
    N = Nl.shape[0] // p.shape[0]
    Ww = sp.csr_matrix(Ww)
    links = link_update(links_from_csr(Nl, Pl, p, K_L, zero_diagonal),
                        write_support(Ww.indices.astype(np.int64), Ww.indptr.astype(np.int64), Ww.data, N), zero_diagonal)
    return links_to_csr(links)


def _select(Nl, Pl, p, index, weight, K_L):
    return temporal_select(links_from_csr(Nl, Pl, p, K_L), index, weight, K_L)


def _tparams(model):
    return {k: ad.Tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}


def _assert_grads_close(manual, tensors, rtol=1e-10):
    for name, g in manual.items():
        scale = max(1e-12, np.max(np.abs(g)))
        err = np.max(np.abs(g - tensors[name].grad))
        assert err <= rtol * scale, f"{name}: max abs diff {err:.3e}, scale {scale:.3e}"


# ----------------------------------------------------------------- D.9: the dense oracle
@pytest.mark.parametrize("start", ["zero", "random"])
def test_sparse_equals_dense_oracle_at_k_and_k_l_equal_n(start):
    """K = N, K_L = N: outputs, memory, links, precedence, access times and every parameter gradient of
    the sparse manual engine equal the dense implementation of eqs. [11], [17-22] + C.3 (1e-12 abs;
    gradients 1e-10 relative to the tensor's largest entry)."""
    model, rng = _model(2, N=8, K=8, K_L=8)
    B, N = 2, 8
    xs = rng.standard_normal((7, B, 3))
    state = None if start == "zero" else random_state(rng, model.config, B)
    ys, cache = model.forward(xs, state)
    dys = rng.standard_normal(ys.shape)
    grads = model.backward(dys, cache)
    tparams = _tparams(model)
    ys_d, final_d = model.forward_dense(tparams, xs, state)
    (ys_d * dys).sum().backward()
    np.testing.assert_allclose(ys, ys_d.data, rtol=0, atol=TOL)
    final = cache.final_state
    np.testing.assert_allclose(final.M, final_d["M"], rtol=0, atol=TOL)
    np.testing.assert_allclose(_dense_blocks(final.Nl, B, N), final_d["L_f"], rtol=0, atol=TOL)
    np.testing.assert_allclose(_dense_blocks(final.Pl, B, N), final_d["L_b"], rtol=0, atol=TOL)
    np.testing.assert_allclose(_dense_blocks(final.p, B, N), final_d["p"], rtol=0, atol=TOL)
    np.testing.assert_array_equal(final.last, final_d["last"])
    w_sparse = np.zeros((B, model.config.R, N))
    np.add.at(w_sparse, (np.arange(B)[:, None, None], np.arange(model.config.R)[None, :, None], final.read_index),
              final.read_weight)
    np.testing.assert_allclose(w_sparse, final_d["w_read"], rtol=0, atol=TOL)
    assert final.Nl.nnz > 0 and final.Pl.nnz > 0                      # the links were exercised
    _assert_grads_close(grads, tparams)


@pytest.mark.parametrize("K, K_L", [(3, 2), (4, 3), (2, 5)])
def test_sparse_equals_masked_dense_at_small_k_and_k_l(K, K_L):
    """Any K, K_L: the dense oracle choosing its own sets (top-K of D, K_L largest of f, b, every row of
    Nl, Pl and p) agrees with the sparse engine away from ties (E.1 "sparse == masked dense")."""
    model, rng = _model(3, N=10, K=K, K_L=K_L)
    xs = rng.standard_normal((8, 2, 3))
    state = random_state(rng, model.config, 2)
    ys, cache = model.forward(xs, state)
    dys = rng.standard_normal(ys.shape)
    grads = model.backward(dys, cache)
    tparams = _tparams(model)
    ys_d, final_d = model.forward_dense(tparams, xs, state)
    (ys_d * dys).sum().backward()
    np.testing.assert_allclose(ys, ys_d.data, rtol=0, atol=TOL)
    np.testing.assert_allclose(_dense_blocks(cache.final_state.Nl, 2, 10), final_d["L_f"], rtol=0, atol=TOL)
    _assert_grads_close(grads, tparams)


def test_relation_to_the_dense_dnc_linkage_primitives():
    """D.9: the SDNC at K_L = N is NOT the DNC of Part B. Against the DNC's own primitives
    (minimem.memory.linkage) from the same L_{t-1}, w, p_{t-1}: the precedence is identical, the links
    differ by exactly the DNC's extra column decay w(j) L_{t-1}(i, j) (off the diagonal), and f, b from
    equal links are the DNC's directional weightings. So a copied DNC link rule would be caught, and
    the shared parts are checked against the DNC code."""
    from minimem.memory.linkage import directional_forward, link_forward, precedence_forward

    rng = np.random.default_rng(21)
    B, N, R = 2, 6, 2
    L_prev = rng.uniform(0, 0.15, size=(B, N, N))
    L_prev[:, np.arange(N), np.arange(N)] = 0.0
    p_prev = 0.9 * rng.dirichlet(np.ones(N), size=B)
    w = 0.8 * rng.dirichlet(np.ones(N), size=B)
    block = lambda L: sp.block_diag(list(L), format="csr")
    flat = lambda v: sp.csr_matrix((v.reshape(-1), (np.repeat(np.arange(B), N), np.arange(B * N))), shape=(B, B * N))
    Nl, Pl, p = _link_step(block(L_prev), block(np.swapaxes(L_prev, 1, 2)), flat(p_prev), flat(w), K_L=N)
    L_dnc, _ = link_forward(L_prev, w, p_prev)
    p_dnc, _ = precedence_forward(p_prev, w)
    np.testing.assert_allclose(_dense_blocks(p, B, N), p_dnc, rtol=0, atol=TOL)
    extra = w[:, None, :] * L_prev                                    # what the DNC also subtracts
    np.testing.assert_allclose(_dense_blocks(Nl, B, N) - L_dnc, extra, rtol=0, atol=TOL)
    assert np.max(extra) > 1e-3                                       # so the two rules really differ
    np.testing.assert_allclose(_dense_blocks(Pl, B, N), np.swapaxes(_dense_blocks(Nl, B, N), 1, 2), rtol=0, atol=TOL)
    w_read = 0.9 * rng.dirichlet(np.ones(N), size=(B, R))
    index = np.broadcast_to(np.arange(N), (B, R, N)).copy()
    rec = _select(Nl, Pl, p, index, w_read, N)
    (f_dnc, b_dnc), _ = directional_forward(_dense_blocks(Nl, B, N), w_read)
    for kept, links, expected in ((rec.fwd_index, rec.fwd_links, f_dnc), (rec.bwd_index, rec.bwd_links, b_dnc)):
        np.testing.assert_array_equal(kept, index)                   # K_L = N keeps every slot, in order
        np.testing.assert_allclose(temporal_values(links, w_read), expected, rtol=0, atol=TOL)


# ----------------------------------------------------------------- D.9: structure and oracles
def test_link_structure_at_every_step():
    """Every row of Nl_t and Pl_t has <= K_L nonzeros, entries in [0, 1], zero diagonal; p_t has <= K_L
    nonzeros in [0, 1]; read weightings are >= 0 with sums <= 1 and support <= K + 2 K_L; the batch
    blocks stay separate. Columns are NOT bounded by K_L: eqs. [17-20] and D.3 truncate rows only, and
    a slot can be the predecessor of more than K_L slots (measured: N = 32, K_L = 4, 40 steps, up to
    9 entries in a column of Nl)."""
    model, rng = _model(4, N=12, R=2, K=3, K_L=3)
    B, N, K, K_L = 3, 12, 3, 3
    xs = 2 * rng.standard_normal((10, B, 3))
    state = None
    for t in range(10):
        _, cache = model.forward(xs[t:t + 1], state)
        state = cache.final_state
        for A in (state.Nl, state.Pl):
            assert np.max(np.diff(A.indptr), initial=0) <= K_L
            assert A.nnz == 0 or (A.data.min() > 0 and A.data.max() <= 1)
            assert np.all(A.diagonal() == 0)
            rows = np.repeat(np.arange(B * N), np.diff(A.indptr))
            assert np.all(A.indices // N == rows // N)
        assert np.max(np.diff(state.p.indptr)) <= K_L and state.p.data.max() <= 1 + 1e-15
        w = state.read_weight
        assert np.all(w >= 0) and np.all(w.sum(-1) <= 1 + 1e-12)
        for b in range(B):
            for i in range(model.config.R):
                assert len(np.unique(state.read_index[b, i][w[b, i] > 0])) <= K + 2 * K_L
    assert state.Nl.nnz > B * K_L and state.Pl.nnz > B * K_L          # links did fill up


def test_the_row_cut_breaks_ties_to_the_lower_column():
    """Rows [0.2, 0.5, 0.2, 0.2, 0] and [0.1, 0, 0.3, 0.3, 0.3] given as 2 old places + 2 candidates
    each (N = 5, K_L = 2): the 2 largest, ties to the lower column, in column order."""
    N, empty = 5, 5
    cols, vals = _merge_and_cut(None, np.array([[0, 2], [2, 3]]), np.array([[0.2, 0.2], [0.3, 0.3]]),
                                np.array([[1, 3], [0, 4]]), np.array([[0.5, 0.2], [0.1, 0.3]]), 2, N, False)
    np.testing.assert_array_equal(cols, [[0, 1], [2, 3]])
    np.testing.assert_array_equal(vals, [[0.2, 0.5], [0.3, 0.3]])
    # a candidate in a column the row holds adds to it; the diagonal goes; an empty place is (N, 0)
    # and keeps its place among the entries (which stay in column order)
    cols, vals = _merge_and_cut(np.array([1]), np.array([[1, 3]]), np.array([[0.4, 0.25]]),
                                np.array([[3, empty]]), np.array([[0.5, 0.0]]), 2, N, True)
    np.testing.assert_array_equal(cols, [[empty, 3]])
    np.testing.assert_array_equal(vals, [[0.0, 0.75]])


def test_one_hot_writes_3_then_7_link_them_both_ways():
    """D.9: one-hot writes to slots 3 then 7 (gamma = 0, alpha = 1, LRA forced) give Nl(7, 3) = 1 and
    Pl(3, 7) = 1; f from a read at 3 reaches 7, b from a read at 7 reaches 3."""
    B, N, R, K_L = 1, 10, 1, 2
    Nl, Pl, p = empty_links(B, N)
    none_i, none_w = np.zeros((B, R, 1), np.int64), np.zeros((B, R, 1))
    one, zero = np.ones((B, 1)), np.zeros((B, 1))
    for slot in (3, 7):
        Ww, _ = write_weights_csr(none_i, none_w, np.array([slot]), one, zero, N)
        Nl, Pl, p = _link_step(Nl, Pl, p, Ww, K_L)
    assert Nl[7, 3] == 1.0 and Pl[3, 7] == 1.0 and Nl.nnz == 1 and Pl.nnz == 1
    assert p.toarray()[0, 7] == 1.0 and p.nnz == 1                    # p_t = (1 - 1) p + w
    for read, direction, expected in ((3, "fwd", 7), (7, "bwd", 3)):
        rec = _select(Nl, Pl, p, np.array([[[read]]]), np.ones((B, R, 1)), K_L)
        index, links = (rec.fwd_index, rec.fwd_links) if direction == "fwd" else (rec.bwd_index, rec.bwd_links)
        values = temporal_values(links, np.ones((B, R, 1)))
        assert values[0, 0, list(index[0, 0]).index(expected)] == 1.0 and values.sum() == 1.0


def test_backward_links_are_the_transposed_forward_links_without_truncation():
    """At K_L = N the recurrences [17-18] and [19-20] are transposes of each other: Pl_t == Nl_t^T exactly."""
    model, rng = _model(5, N=8, K=4, K_L=8)
    _, cache = model.forward(rng.standard_normal((9, 2, 3)))
    Nl, Pl = cache.final_state.Nl, cache.final_state.Pl
    assert Nl.nnz > 10
    assert (Nl - Pl.T).count_nonzero() == 0


def test_diagonal_option():
    """D.10.1: with zero_diagonal=False a slot written twice in a row gets a self-link w(i) p(i)."""
    B, N = 1, 5
    for zero, expected in ((True, 0.0), (False, 0.25)):
        Nl, Pl, p = empty_links(B, N)
        w = sp.csr_matrix(np.array([[0.0, 0.5, 0.0, 0.0, 0.0]]))
        for _ in range(2):
            Nl, Pl, p = _link_step(Nl, Pl, p, w, K_L=N, zero_diagonal=zero)
        assert Nl[1, 1] == expected and Pl[1, 1] == expected


# ----------------------------------------------------------------- gradients (E.1)
@pytest.mark.parametrize("name", sorted(CASES))
def test_engines_agree_and_match_central_differences(name):
    """manual == autodiff (1e-10 rel), both == central differences (1e-6 rel) with frozen sets and links:
    fast mode on every tensor, full mode on every bias coordinate (python -m gradcheck --family sdnc
    runs full mode on all of them)."""
    case = CASES[name]
    rows, ok = check_model(case, mode="fast", directions=2)
    assert ok, [r for r in rows if not r.ok]
    rows, ok = check_model(case, mode="full", tensors=["interface.b", "output.b", "controller.b"])
    assert ok, [r for r in rows if not r.ok]


def test_links_are_stop_gradient_so_unfrozen_differences_disagree():
    """D.4: the links carry a real dependence on the parameters that the backward drops (the paper's
    choice). A central difference along a random direction of interface.b agrees with the backward
    when the record (links included) is replayed, and clearly disagrees when every perturbed pass
    rebuilds its own links (the sets themselves do not change for so small a step)."""
    case = CASES["sdnc.sparse"]
    replay = case.model
    model, state0, xs = replay.model, replay.state0, case.inputs
    ys, cache = model.forward(xs, state0)
    _, dys = case.loss(ys)
    analytic = model.backward(dys, cache)["interface.b"]
    direction = np.random.default_rng(5).standard_normal(analytic.shape)
    base, h = model.params["interface.b"].copy(), 1e-6

    def slope(frozen):
        values = []
        for sign in (1.0, -1.0):
            model.params["interface.b"] = base + sign * h * direction
            out, c = model.forward(xs, state0, frozen)
            if frozen is None:                                        # same discrete choices, new links
                for name in ("read_index", "lra", "fwd_index", "bwd_index"):
                    np.testing.assert_array_equal(getattr(c.record, name), getattr(cache.record, name))
            values.append(case.loss(out)[0])
        model.params["interface.b"] = base
        return (values[0] - values[1]) / (2 * h)

    expected = float(np.sum(analytic * direction))
    assert abs(slope(cache.record) - expected) <= 1e-6 * abs(expected)
    assert abs(slope(None) - expected) > 1e-3 * abs(expected)


def test_manual_equals_autodiff_on_a_larger_model():
    """No finite differences: N = 20, W = 5, R = 3, K = 4, K_L = 3, T = 10, B = 3, random state, the
    autodiff engine choosing afresh (it must make the same choices)."""
    model, rng = _model(7, X=4, Y=5, N=20, W=5, R=3, K=4, K_L=3, H=7)
    xs = rng.standard_normal((10, 3, 4))
    state0 = random_state(rng, model.config, 3)
    ys, cache = model.forward(xs, state0)
    dys = rng.standard_normal(ys.shape)
    grads = model.backward(dys, cache)
    tparams = _tparams(model)
    ys_t = model.forward_autodiff(tparams, xs, state0)
    (ys_t * dys).sum().backward()
    np.testing.assert_allclose(ys_t.data, ys, rtol=0, atol=1e-13)
    _assert_grads_close(grads, tparams)


def test_controller_with_hoisted_work_equals_the_per_step_formulas():
    """Steps 1-2 with x_t's share of the LSTM's eq. (1) formed before the time loop and the weight
    gradients after it (issue 11) against the plain per-step formulas - lstm_step_forward on
    [x_t; r_{t-1}], p_t = h_t W + b, the SAM interface and the read-mode softmax, and the adjoints
    lstm_step_backward / linear_backward with per-step weight gradients summed - over T steps with
    random r_{t-1} and upstream gradients: equal up to the order of additions."""
    from minimem.memory.sam import controller_weight_gradients
    from minimem.memory.sam_interface import SAMInterface, interface_forward, interface_size
    from minimem.nn.linear import linear_backward, linear_forward, strip_prefix
    from minimem.nn.lstm import (
        lstm_external_share, lstm_feedback_params, lstm_step_backward, lstm_step_forward,
    )

    model, rng = _model(9, H=5)
    config, params = model.config, model.params
    T, B, R, W, H, P_sam = 4, 3, config.R, config.W, config.H, interface_size(config.R, config.W)
    xs, rs = rng.standard_normal((T, B, config.X)), rng.standard_normal((T, B, R, W))   # r_{t-1}, given
    lstm = lstm_feedback_params(strip_prefix("controller", params), config.X)
    z_ext = lstm_external_share(xs, lstm)
    h, c, h_ref, c_ref = (np.zeros((B, H)) for _ in range(4))
    caches, hs, ref = [], [], []
    for t in range(T):
        h, c, iface, cache = sdnc_module.controller_step_forward(z_ext[t], rs[t], h, c, lstm, params, config)
        caches.append(cache), hs.append(h)
        chi = np.concatenate([xs[t], rs[t].reshape(B, R * W)], axis=1)
        (h_ref, c_ref), c_lstm = lstm_step_forward(chi, h_ref, c_ref, strip_prefix("controller", params))
        p, c_linear = linear_forward(h_ref, params["interface.W"], params["interface.b"])
        z = p[:, P_sam:].reshape(B, R, 3)
        pi = np.exp(z - z.max(axis=-1, keepdims=True))
        pi /= pi.sum(axis=-1, keepdims=True)
        ref.append((c_lstm, c_linear, pi))
        np.testing.assert_allclose(h, h_ref, rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(c, c_ref, rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(iface.sam.q, interface_forward(p[:, :P_sam], R, W)[0].q, rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(iface.pi, pi, rtol=1e-13, atol=1e-14)
    dhs = rng.standard_normal((T, B, H))
    dZ, dP = np.empty((T, B, 4 * H)), np.empty((T, B, config.P))
    dh, dc, dh_ref, dc_ref = (np.zeros((B, H)) for _ in range(4))
    total = {}
    for t in reversed(range(T)):
        dsam = SAMInterface(*(rng.standard_normal(np.shape(v)) for v in caches[t].sam_interface.parsed))
        dpi = rng.standard_normal((B, R, 3))
        dr, dh, dc, dZ[t], dP[t] = sdnc_module.controller_step_backward(dhs[t] + dh, dc, dsam, dpi, caches[t],
                                                                        lstm, params)
        c_lstm, c_linear, pi = ref[t]
        dz_pi = pi * (dpi - np.sum(pi * dpi, axis=-1, keepdims=True))
        dp = np.concatenate([sdnc_module.sam_interface_backward(dsam, caches[t].sam_interface),
                             dz_pi.reshape(B, -1)], axis=1)
        dh_p, dW_p, db_p = linear_backward(dp, c_linear)
        dchi, dh_ref, dc_ref, g = lstm_step_backward(dhs[t] + dh_ref + dh_p, dc_ref, c_lstm)
        np.testing.assert_allclose(dr, dchi[:, config.X:].reshape(B, R, W), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(dh, dh_ref, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(dc, dc_ref, rtol=1e-12, atol=1e-13)
        for name, value in {**{f"controller.{k}": v for k, v in g.items()}, "interface.W": dW_p,
                            "interface.b": db_p}.items():
            total[name] = total.get(name, 0.0) + value
    grads = controller_weight_gradients(xs, np.stack(hs), caches, dZ, dP, lstm)
    assert set(grads) == set(total)
    for name, value in total.items():
        np.testing.assert_allclose(grads[name], value, rtol=1e-12, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("bug", ["drop_link_carry", "swap_link_blocks"])
def test_planted_bug_is_caught(monkeypatch, bug):
    """A manual backward that drops dwR_{t-1} += Nl^T df + Pl^T db, or applies the forward links to the
    backward weights, must FAIL against central differences while the autodiff engine stays ok."""
    real = sdnc_module.read_backward

    def buggy(dr, dweight, M, dM, record, K_L):
        if bug == "swap_link_blocks":
            t = record.temporal
            record = record._replace(temporal=t._replace(fwd_links=t.bwd_links, bwd_links=t.fwd_links))
        dq, dbeta, dpi, dprev = real(dr, dweight, M, dM, record, K_L)
        return dq, dbeta, dpi, (np.zeros_like(dprev) if bug == "drop_link_carry" else dprev)

    monkeypatch.setattr(sdnc_module, "read_backward", buggy)
    rows, ok = check_model(CASES["sdnc.sparse"], mode="fast", tensors=["interface.b"])
    assert not ok
    by_engine = {r.engine: r for r in rows}
    assert by_engine["manual"].verdict == "FAIL" and by_engine["autodiff"].ok


# ----------------------------------------------------------------- revert, chunks, batch, dtype
def test_memory_buffer_is_reverted_bit_for_bit_and_a_second_backward_agrees():
    model, rng = _model(8)
    xs = rng.standard_normal((6, 2, 3))
    state = random_state(rng, model.config, 2)
    ys, cache = model.forward(xs, state)
    dys = rng.standard_normal(ys.shape)
    g1 = model.backward(dys, cache)
    np.testing.assert_array_equal(cache.memory, state.M)
    g2 = model.backward(dys, cache)                                   # replays the writes first
    for name in g1:
        np.testing.assert_array_equal(g1[name], g2[name])


def test_whole_sequence_equals_two_halves_with_carried_state():
    model, rng = _model(10)
    xs = rng.standard_normal((8, 2, 3))
    dys = rng.standard_normal((8, 2, 4))
    ys, cache = model.forward(xs)
    ys1, c1 = model.forward(xs[:4])
    ys2, c2 = model.forward(xs[4:], c1.final_state)
    np.testing.assert_array_equal(ys, np.concatenate([ys1, ys2]))
    for a, b in zip(cache.final_state, c2.final_state):
        if sp.issparse(a):
            assert (a != b).nnz == 0
        else:
            np.testing.assert_array_equal(a, b)
    grads = model.backward(dys, cache)
    g2, dstate = model.backward_with_state(dys[4:], c2)
    g1, _ = model.backward_with_state(dys[:4], c1, dstate)
    for name in grads:
        np.testing.assert_allclose(grads[name], g1[name] + g2[name], rtol=0,
                                   atol=1e-12 * max(1.0, np.max(np.abs(grads[name]))), err_msg=name)


def test_replaying_the_record_reproduces_the_forward_exactly():
    model, rng = _model(11)
    xs = rng.standard_normal((6, 2, 3))
    ys, cache = model.forward(xs)
    ys2, cache2 = model.forward(xs, frozen=cache.record)
    np.testing.assert_array_equal(ys, ys2)
    for a, b in zip(cache.record, cache2.record):
        np.testing.assert_array_equal(a, b)


def test_batch_elements_are_independent():
    model, rng = _model(12)
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


def test_float32_forward_matches_float64_with_the_same_record():
    model, rng = _model(13)
    xs = rng.standard_normal((6, 2, 3))
    ys, cache = model.forward(xs)
    single = SDNC(SDNCConfig(**{**model.config.__dict__, "dtype": "float32"}))
    single.params = {k: v.astype(np.float32) for k, v in model.params.items()}
    ys32, cache32 = single.forward(xs.astype(np.float32), frozen=cache.record)
    assert ys32.dtype == np.float32 and cache32.final_state.M.dtype == np.float32
    np.testing.assert_allclose(ys32, ys, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------- layout and bad input
def test_param_names_and_layouts():
    config = SDNCConfig(X=3, Y=4, N=8, W=4, R=2, K=3, K_L=2, H=6)
    assert param_shapes(config) == {
        "controller.W_x": (3 + 8, 24), "controller.W_h": (6, 24), "controller.b": (24,),
        "interface.W": (6, 2 * 5 + 4 + 2 + 6), "interface.b": (22,), "output.W": (6 + 8, 4), "output.b": (4,)}
    assert list(SDNC(config).params) == list(param_shapes(config))
    assert config.Kp == 2 * 2 + 3


@pytest.mark.parametrize("field, value", [("K_L", 9), ("K_L", 0), ("K_L", 2.5), ("K", 9), ("N", 0),
                                          ("delta", -0.1), ("zero_diagonal", "yes"), ("write_squash", "relu"),
                                          ("dtype", "float16")])
def test_bad_config_raises_value_error(field, value):
    with pytest.raises(ValueError, match=field):
        SDNCConfig(**{"X": 3, "Y": 4, "N": 8, "K": 3, "K_L": 2, field: value})


def test_bad_inputs_raise_value_errors():
    model, rng = _model(14)
    xs = rng.standard_normal((3, 2, 3))
    state = random_state(rng, model.config, 2)
    N, K_L = 8, 2
    with pytest.raises(ValueError, match=r"\(T, B, X\)"):
        model.forward(np.zeros((3, 2, 5)))
    with pytest.raises(ValueError, match="empty"):
        model.forward(np.zeros((0, 2, 3)))
    with pytest.raises(ValueError, match="finite"):
        model.forward(np.full((3, 2, 3), np.nan))
    with pytest.raises(ValueError, match=r"state.M must have shape \(B, N, W\)"):
        model.forward(xs, state._replace(M=np.zeros((2, 9, 4))))
    dense_row = sp.csr_matrix(np.ones((2 * N, 2 * N)) * 0.01)
    with pytest.raises(ValueError, match="at most K_L = 2 nonzeros per row"):
        model.forward(xs, state._replace(Nl=dense_row))
    with pytest.raises(ValueError, match=r"state.Pl must be a scipy.sparse matrix of shape"):
        model.forward(xs, state._replace(Pl=np.zeros((2 * N, 2 * N))))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.forward(xs, state._replace(p=state.p * 5.0))
    across = sp.csr_matrix(([0.5], ([0], [N + 1])), shape=(2 * N, 2 * N))
    with pytest.raises(ValueError, match="batch-stacked"):
        model.forward(xs, state._replace(Nl=across))
    with pytest.raises(ValueError, match="read_weight"):
        model.forward(xs, state._replace(read_weight=np.full(state.read_weight.shape, 0.5)))
    with pytest.raises(ValueError, match="read_index"):
        model.forward(xs, state._replace(read_index=state.read_index + N))
    _, cache = model.forward(xs, state)
    with pytest.raises(ValueError, match="frozen.fwd_links must have shape"):
        model.forward(xs, state, cache.record._replace(fwd_links=cache.record.fwd_links[:, :, :, :1]))
    with pytest.raises(ValueError, match="SDNCRecord"):
        model.forward(xs, state, frozen=tuple(cache.record))
    with pytest.raises(ValueError, match="dys"):
        model.backward(np.zeros((3, 2, 5)), cache)
    with pytest.raises(ValueError, match="SDNCGrad"):
        model.backward_with_state(np.zeros((3, 2, 4)), cache, dstate=(1, 2))
    with pytest.raises(ValueError, match="SDNCConfig"):
        SDNC({"X": 3})
    bad = dict(model.params)
    bad["interface.W"] = bad["interface.W"][:, :-1]
    model.params = bad
    with pytest.raises(ValueError, match="interface.W"):
        model.forward(xs)


# ----------------------------------------------------------------- a short training run
def test_copy_loss_falls_below_chance_in_a_short_run():
    """Sanity, not a benchmark: an SDNC (N = 16, W = 8, R = 1, K = 4, K_L = 4, LSTM 32) on the copy task
    with 4-bit vectors of length 1-4, 150 Adam steps (lr 1e-2, batch 8, global-norm clip 10). On a fixed
    held-out batch of 32 the loss must fall below 85% of chance (ln 2 per target bit, the best any model
    without memory of the bits can do). Measured while writing: 7.54 at the start, 4.95 after 150 steps
    (chance 6.93 on this batch; another seed: 7.56 -> 5.30); about 6 s of CPU."""
    from minimem.nn.losses import sigmoid_cross_entropy_backward, sigmoid_cross_entropy_forward
    from minimem.optim import Adam, clip_grad_norm
    from minimem.tasks import make_copy

    model = SDNC(SDNCConfig(X=5, Y=4, N=16, W=8, R=1, K=4, K_L=4, H=32), rng=np.random.default_rng(0))
    optimizer = Adam(model.params, lr=1e-2)
    rng = np.random.default_rng(1)
    held = make_copy(np.random.default_rng(99), 32, num_bits=4, min_len=1, max_len=4)
    chance = np.log(2.0) * 4 * np.sum(held.mask) / 32

    def held_out_loss():
        ys, _ = model.forward(held.inputs)
        return float(sigmoid_cross_entropy_forward(ys, held.targets, held.mask, reduction="batch")[0])

    start = held_out_loss()
    for _ in range(150):
        data = make_copy(rng, 8, num_bits=4, min_len=1, max_len=4, same_length=True)
        ys, cache = model.forward(data.inputs)
        _, lcache = sigmoid_cross_entropy_forward(ys, data.targets, data.mask, reduction="batch")
        grads, _ = clip_grad_norm(model.backward(sigmoid_cross_entropy_backward(1.0, lcache), cache), 10.0)
        optimizer.step(grads)
    end = held_out_loss()
    assert end < 0.85 * chance < start, (start, end, chance)


def test_per_step_records_do_not_grow_with_n():
    """The cache holds per step the touched rows, the pairs and the link blocks (O(R K_L Kp)), never an
    N-sized array: the step records at N = 4096 are no larger than at N = 16 plus the few entries that
    duplicated slots save at small N (an N-sized float array per step would add 32 KB per element)."""
    def record_bytes(N):
        model, _ = _model(6, N=N)
        _, cache = model.forward(np.random.default_rng(0).standard_normal((4, 2, 3)))
        return sum(_nbytes(step) for step in cache.steps)

    small, large = record_bytes(16), record_bytes(4096)
    assert large <= small + 2048, (small, large)


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
