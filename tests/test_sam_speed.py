"""The sparse SAM step's fast paths (issue 11) give the same numbers as the plain CSR formulas:
records keep the CSR arrays and build the scipy matrices on demand, the write's row sums replace
Ww @ dM, usage is stamped from the arrays, and the read adjoint uses the rows the forward read.
Steps 1-2 and 9 with their work hoisted out of the time loop equal the per-step formulas."""

import minimem  # noqa: F401  (pins BLAS threads before numpy)
import numpy as np
import pytest
import scipy.sparse as sp

from minimem.memory.addressing import content_backward, content_forward
from minimem.memory.sam import (
    SAMConfig, controller_prepare, controller_step_backward, controller_step_forward, controller_weight_gradients,
    output_backward, output_forward, outputs_forward, sam_init,
)
from minimem.memory.sam_interface import SAMInterface, interface_backward, interface_forward, interface_size
from minimem.nn.linear import linear_backward, linear_forward, strip_prefix
from minimem.nn.lstm import lstm_step_backward, lstm_step_forward
from minimem.memory.sam_sparse import (
    INDEX_DTYPE, _csr, _row_sums, read_weights_csr, sparse_read_backward, sparse_read_forward,
    sparse_write_forward, stamp_accesses, usage_update, write_weights_csr,
)


def _step(seed=0, B=3, N=10, W=4, R=2, K=3):
    """One write then one read on a random memory, with shared slots between heads."""
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((B, N, W))
    prev_index = np.sort(np.stack([[rng.choice(N, K, replace=False) for _ in range(R)] for _ in range(B)]), -1)
    prev_weight = rng.dirichlet(np.ones(K), size=(B, R))
    lra = rng.integers(0, N, B).astype(INDEX_DTYPE)
    a, alpha, gamma = rng.standard_normal((B, W)), rng.random((B, 1)), rng.random((B, 1))
    write = sparse_write_forward(M, prev_index, prev_weight, lra, a, alpha, gamma)
    q, beta = rng.standard_normal((B, R, W)), 1 + rng.random((B, R, 1))
    r, read = sparse_read_forward(M, q, beta, K)
    return rng, M, (prev_index, prev_weight, lra, alpha, gamma), write, read


def _same_csr(A, B):
    assert isinstance(A, sp.csr_matrix) and A.shape == B.shape
    for name in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(getattr(A, name), getattr(B, name))
    assert A.indices.dtype == A.indptr.dtype == INDEX_DTYPE


def test_records_build_the_documented_csr_matrices():
    _, M, (prev_index, prev_weight, lra, alpha, gamma), write, read = _step()
    B, N, _ = M.shape
    Ww, write_map = write_weights_csr(prev_index, prev_weight, lra, alpha, gamma, N)
    _same_csr(write.Ww, Ww)
    np.testing.assert_array_equal(write.write_map, write_map)
    np.testing.assert_array_equal(write.element, np.repeat(np.arange(B), np.diff(Ww.indptr)))
    _same_csr(read.Wr, read_weights_csr(read.index, read.w, N))
    np.testing.assert_array_equal(read.rows, read.Wr.indices)
    assert read.Wr.has_canonical_format and write.Ww.has_canonical_format


def test_csr_keeps_int64_indices_without_a_copy():
    data, indices, indptr = np.ones(3), np.array([0, 2, 5], INDEX_DTYPE), np.array([0, 1, 3], INDEX_DTYPE)
    A = _csr(data, indices, indptr, (2, 6))
    assert isinstance(A, sp.csr_matrix) and A.indices.dtype == INDEX_DTYPE and A.indptr.dtype == INDEX_DTYPE
    np.testing.assert_array_equal(A.toarray(), [[1, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 1]])


def test_row_sums_equal_the_csr_product_bit_for_bit():
    rng, M, _, write, _ = _step(1, B=4, N=12, R=3, K=4)
    X = rng.standard_normal((M.shape[0] * M.shape[1], M.shape[2]))
    fast = _row_sums(write.data, write.element, X[write.rows], M.shape[0])
    np.testing.assert_array_equal(fast, write.Ww @ X)
    one = _step(2, B=1)[3]
    X1 = rng.standard_normal((one.N, M.shape[2]))
    np.testing.assert_array_equal(_row_sums(one.data, one.element, X1[one.rows], 1), one.Ww @ X1)


def test_stamp_accesses_equals_usage_update():
    _, M, _, write, read = _step(3)
    B, N, _ = M.shape
    for discount in (None, 0.9):
        last_a, last_b = np.zeros((B, N), INDEX_DTYPE), np.zeros((B, N), INDEX_DTYPE)
        usage_a, usage_b = np.full((B, N), 0.5), np.full((B, N), 0.5)
        got_a = usage_update(last_a, usage_a if discount else None, write.Ww, read.Wr, 7, 0.005, discount)
        got_b = stamp_accesses(last_b, usage_b if discount else None, np.concatenate([write.rows, read.rows]),
                               np.concatenate([write.data, read.w.reshape(-1)]), 7, 0.005, discount)
        np.testing.assert_array_equal(got_a, got_b)
        np.testing.assert_array_equal(last_a, last_b)
        np.testing.assert_array_equal(usage_a, usage_b)
        assert got_a.size > 0


def test_read_adjoint_on_recorded_rows_equals_a_fresh_gather():
    """The adjoint uses the rows and similarities the forward kept; recomputing them from the buffer
    (the previous design) gives the same bits."""
    rng, M, _, _, read = _step(4, B=2, N=6, R=3, K=4)         # R K > N: heads share slots
    B, N, W = M.shape
    R, K = read.index.shape[1:]
    dr, dweight = rng.standard_normal((B, R, W)), rng.standard_normal((B, R, K))
    dM = np.zeros_like(M)
    dq, dbeta = sparse_read_backward(dr, dweight, M, dM, read)
    M_sel = M.reshape(B * N, W)[read.rows].reshape(B, R, K, W)
    np.testing.assert_array_equal(M_sel, read.content.cosine.M)
    _, fresh = content_forward(M_sel, read.q, read.beta)
    dM_sel, dq_ref, dbeta_ref = content_backward(np.einsum("brkw,brw->brk", M_sel, dr) + dweight, fresh)
    dM_ref = np.zeros((B * N, W))
    np.add.at(dM_ref, read.rows, (read.w[..., None] * dr[:, :, None, :] + dM_sel).reshape(-1, W))
    np.testing.assert_array_equal(dq, dq_ref)
    np.testing.assert_array_equal(dbeta, dbeta_ref)
    np.testing.assert_array_equal(dM.reshape(B * N, W), dM_ref)


def test_interface_slope_from_the_forward_equals_the_recomputed_one():
    """interface_forward keeps sigmoid(beta_hat) (one sigmoid with the gates); the backward gives the
    same bits as with a cache that lacks it (recomputed), and validate=False changes nothing."""
    rng = np.random.default_rng(5)
    R, W, B = 3, 4, 5
    p = 3.0 * rng.standard_normal((B, interface_size(R, W)))
    for squash in (None, "tanh"):
        parsed, cache = interface_forward(p, R, W, squash)
        unchecked, cache_u = interface_forward(p, R, W, squash, validate=False)
        for a, b in zip(parsed, unchecked):
            np.testing.assert_array_equal(a, b)
        d = SAMInterface(*(rng.standard_normal(np.shape(f)) for f in parsed))
        np.testing.assert_array_equal(interface_backward(d, cache), interface_backward(d, cache._replace(slope=None)))
    with pytest.raises(ValueError, match="P = R"):
        interface_forward(p[:, 1:], R, W)


def test_output_layer_over_all_steps_equals_step_by_step():
    """Step 9 runs once over (T, B) after the loop, forward and adjoint: the outputs and input
    gradients are the per-step ones and dW_o, db_o the per-step sums, up to rounding."""
    rng = np.random.default_rng(6)
    config = SAMConfig(X=3, Y=4, N=8, W=5, R=2, K=3, H=6)
    params = {"output.W": rng.standard_normal((config.H + config.R * config.W, config.Y)),
              "output.b": rng.standard_normal(config.Y)}
    T, B = 5, 3
    hs, rs = rng.standard_normal((T, B, config.H)), rng.standard_normal((T, B, config.R, config.W))
    dys = rng.standard_normal((T, B, config.Y))
    ys, cache = outputs_forward(np.concatenate([hs, rs.reshape(T, B, -1)], axis=2), params, config)
    dhs, drs, grads = output_backward(dys, cache, config)
    assert ys.shape == (T, B, config.Y) and dhs.shape == (T, B, config.H) and drs.shape == (T, B, config.R, config.W)
    total = {name: np.zeros_like(value) for name, value in params.items()}
    for t in range(T):
        y, step_cache = output_forward(hs[t], rs[t], params)
        np.testing.assert_allclose(ys[t], y, rtol=1e-13, atol=1e-13)
        dh, dr, g = output_backward(dys[t], step_cache, config)
        np.testing.assert_allclose(dhs[t], dh, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(drs[t], dr, rtol=1e-13, atol=1e-13)
        for name in total:
            total[name] += g[name]
    for name in total:
        np.testing.assert_allclose(grads[name], total[name], rtol=1e-13, atol=1e-13)


def test_controller_with_hoisted_work_equals_the_per_step_formulas():
    """Steps 1-2 over T steps, with x_t's share of the LSTM's eq. (1) formed before the loop and
    every weight gradient after it, against lstm_step_forward / lstm_step_backward and
    linear_forward / linear_backward per step (weight gradients summed): the same h, c, interface
    and gradients up to the order of additions."""
    rng = np.random.default_rng(8)
    config = SAMConfig(X=3, Y=2, N=8, W=4, R=2, K=3, H=5)
    params = sam_init(rng, config)
    T, B, R, W, H = 4, 3, config.R, config.W, config.H
    xs, rs = rng.standard_normal((T, B, config.X)), rng.standard_normal((T, B, R, W))   # r_{t-1}, given
    dhs, dps = rng.standard_normal((T, B, H)), rng.standard_normal((T, B, config.P))
    lstm, z_ext = controller_prepare(params, xs, config)
    h, c, caches, hs = np.zeros((B, H)), np.zeros((B, H)), [], []
    h_ref, c_ref, ref = np.zeros((B, H)), np.zeros((B, H)), []
    for t in range(T):
        h, c, iface, cache = controller_step_forward(z_ext[t], rs[t], h, c, lstm, params, config)
        caches.append(cache), hs.append(h)
        chi = np.concatenate([xs[t], rs[t].reshape(B, R * W)], axis=1)
        (h_ref, c_ref), c_lstm = lstm_step_forward(chi, h_ref, c_ref, strip_prefix("controller", params))
        p, c_linear = linear_forward(h_ref, params["interface.W"], params["interface.b"])
        ref.append((c_lstm, c_linear))
        np.testing.assert_allclose(h, h_ref, rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(c, c_ref, rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(iface.q, interface_forward(p, R, W)[0].q, rtol=1e-13, atol=1e-14)
    dZ, dP = np.empty((T, B, 4 * H)), np.empty((T, B, config.P))
    dh, dc, dh_ref, dc_ref = np.zeros((B, H)), np.zeros((B, H)), np.zeros((B, H)), np.zeros((B, H))
    total = {}
    for t in reversed(range(T)):
        dinterface = caches[t].interface.parsed._replace(q=dps[t, :, :R * (W + 1)].reshape(B, R, W + 1)[:, :, :W])
        dr, dh, dc, dZ[t], dP[t] = controller_step_backward(dhs[t] + dh, dc, dinterface, caches[t], lstm, params)
        dp = interface_backward(dinterface, caches[t].interface)
        dh_p, dW_p, db_p = linear_backward(dp, ref[t][1])
        dchi, dh_ref, dc_ref, g = lstm_step_backward(dhs[t] + dh_ref + dh_p, dc_ref, ref[t][0])
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
