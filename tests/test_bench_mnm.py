"""The MNM benchmark runs at tiny sizes and returns minimem.bench rows (no timing checks), and the
two engines it times compute the same gradients; the speed paths of the manual engine equal the
plain formulas they replace."""

import math

import numpy as np
import pytest

from minimem import bench
from minimem.memory import mnm_memory
from minimem.bench_mnm import SIZES, _autodiff_step, _manual_step, _model_and_data, benchmarks


def test_benchmark_rows_at_the_quick_size():
    rows = benchmarks(quick=True)["mnm_engines"](1)
    assert [r["benchmark"].split()[0] for r in rows] == ["MNM-p", "MNM-g"]
    for row in rows:
        assert set(row) == {"benchmark", "baseline", "baseline_s", "candidate", "candidate_s"}
        assert math.isfinite(row["baseline_s"]) and row["baseline_s"] > 0
        assert math.isfinite(row["candidate_s"]) and row["candidate_s"] > 0
    assert "| manual |" in bench.format_table(rows)


def test_the_timed_engines_agree():
    for writer in ("local", "grad"):
        model, xs, dys, dmeta = _model_and_data(SIZES["quick"], writer)
        manual = _manual_step(model, xs, dys, dmeta)()
        auto = _autodiff_step(model, xs, dys, dmeta)()
        assert set(manual) == set(auto)
        for name in manual:
            np.testing.assert_allclose(auto[name], manual[name], rtol=1e-9, atol=1e-12, err_msg=name)


def test_full_size_is_the_m2_demo_configuration():
    full = SIZES["full"]
    assert (full["X"], full["Y"], full["H"], full["d"], full["h"], full["L"], full["B"]) == (34, 16, 64, 32, 32, 3, 32)


# ----------------------------------------------------------------- the speed paths equal the plain formulas
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("Nh", [1, 3])
def test_outer_is_the_batched_transpose_product(Nh, dtype):
    """_outer (einsum for one head, matmul otherwise) is _T(D) @ Z, in the input dtype."""
    rng = np.random.default_rng(Nh)
    D, Z = rng.standard_normal((4, Nh, 5)).astype(dtype), rng.standard_normal((4, Nh, 6)).astype(dtype)
    out = mnm_memory._outer(D, Z)
    assert out.shape == (4, 5, 6) and out.dtype == dtype
    plain = sum(D[:, n, :, None] * Z[:, n, None, :] for n in range(Nh))
    np.testing.assert_allclose(out, plain, rtol=1e-5 if dtype == np.float32 else 1e-13, atol=1e-6)


@pytest.mark.parametrize("Nh", [1, 2])
def test_read_recon_backward_is_the_sum_of_the_two_backward_passes(Nh):
    """One backward pass over the stacked read and write keys = mnm_read_backward + mnm_recon_backward."""
    rng = np.random.default_rng(7)
    B, d, h = 3, 4, 5
    weights = tuple(rng.standard_normal(s) for s in ((B, h, d), (B, h, h), (B, d, h)))
    k_read, k_write, v_write = (rng.standard_normal((B, Nh, d)) for _ in range(3))
    _, read = mnm_memory.mnm_read_forward(weights, k_read)
    _, recon = mnm_memory.mnm_recon_forward(weights, k_write, v_write)
    dread, dloss = rng.standard_normal((B, d)), rng.standard_normal(B)
    dW, dk_read, dk_write, dv_write = mnm_memory.mnm_read_recon_backward(dread, read, dloss, recon)
    dW_read, dk_read_ref = mnm_memory.mnm_read_backward(dread, read)
    dW_recon, dk_write_ref, dv_write_ref = mnm_memory.mnm_recon_backward(dloss, recon)
    for a, b, c in zip(dW, dW_read, dW_recon):
        np.testing.assert_allclose(a, b + c, rtol=1e-12, atol=1e-14)
    for a, b in ((dk_read, dk_read_ref), (dk_write, dk_write_ref), (dv_write, dv_write_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    other = tuple(W.copy() for W in weights)
    _, read_elsewhere = mnm_memory.mnm_read_forward(other, k_read)
    with pytest.raises(ValueError, match="same weight"):
        mnm_memory.mnm_read_recon_backward(dread, read_elsewhere, dloss, recon)


def test_mem_backward_extra_products_are_added_to_the_weight_gradients():
    """The extra (D, Z) pairs (MNM-g's Delta terms, stacked into the layer's own product) add D^T Z."""
    rng = np.random.default_rng(3)
    B, Nh, d, h = 3, 2, 4, 5
    weights = tuple(rng.standard_normal(s) for s in ((B, h, d), (B, h, h), (B, d, h)))
    _, cache = mnm_memory.mnm_mem_forward(weights, rng.standard_normal((B, Nh, d)))
    dZs = [None, rng.standard_normal((B, Nh, h)), rng.standard_normal((B, Nh, d))]
    extra = [None, (rng.standard_normal((B, 1, h)), rng.standard_normal((B, 1, h))), None]
    plain, dkeys = mnm_memory.mnm_mem_backward(dZs, cache)
    fused, dkeys_fused = mnm_memory.mnm_mem_backward(dZs, cache, extra=extra)
    D, Z = extra[1]
    np.testing.assert_allclose(fused[1], plain[1] + np.swapaxes(D, 1, 2) @ Z, rtol=1e-12, atol=1e-14)
    for l in (0, 2):
        np.testing.assert_array_equal(fused[l], plain[l])
    np.testing.assert_array_equal(dkeys_fused, dkeys)


@pytest.mark.parametrize("writer", ["local", "grad"])
def test_the_step_functions_agree_with_the_sequence_engine(writer):
    """mnm_step_forward / mnm_step_backward (output layers per step) give the outputs and gradients
    of mnm_forward / mnm_backward (output layers once over all steps)."""
    from minimem.memory import mnm
    config = mnm.MNMConfig(X=3, Y=2, H=4, d=3, h=4, L=2, n_heads=2, writer=writer)
    model = mnm.MNM(config, rng=np.random.default_rng(5))
    rng = np.random.default_rng(6)
    xs = rng.standard_normal((3, 2, 3))
    (ys, meta), cache = model.forward(xs)
    dys, dmeta = rng.standard_normal(ys.shape), rng.standard_normal(meta.shape)
    grads, dxs, _ = mnm.mnm_backward((dys, dmeta), cache)
    state = cache.final_state._replace(h=np.zeros((2, 4)), c=np.zeros((2, 4)), r=np.zeros((2, 3)),
                                       phi=tuple(np.broadcast_to(model.mem0[f"mem0.W{l}"], W.shape).copy()
                                                 for l, W in enumerate(cache.final_state.phi, start=1)))
    step_caches = []
    for t in range(3):
        (y, m, state), step = mnm.mnm_step_forward(xs[t], state, model.params, config)
        np.testing.assert_allclose(y, ys[t], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(m, meta[t], rtol=1e-12, atol=1e-14)
        step_caches.append(step)
    dstate = mnm._zero_state(config, 2, np.float64)
    step_grads = {name: np.zeros_like(p) for name, p in model.params.items()}
    for t in reversed(range(3)):
        dx, dstate, g = mnm.mnm_step_backward(dys[t], dmeta[t], dstate, step_caches[t], config)
        np.testing.assert_allclose(dx, dxs[t], rtol=1e-10, atol=1e-13)
        for name, value in g.items():
            step_grads[name] += value
    for name in grads:
        np.testing.assert_allclose(step_grads[name], grads[name], rtol=1e-10, atol=1e-13, err_msg=name)
