"""The Titans benchmark functions run at tiny sizes and return minimem.bench rows (no timing checks);
the PyTorch ports compute minimem's numbers; the per-token fast path (b = 1) computes the chunk path's."""

import functools
import math

import pytest

import minimem  # noqa: F401
import numpy as np

from minimem import bench, bench_titans
from minimem.bench_titans import SIZES, benchmarks
from minimem.memory import titans as titans_module
from minimem.memory.titans import TitansLMMConfig
from minimem.memory.titans_lmm import lmm_chunk_backward, lmm_chunk_forward, lmm_scan_backward, lmm_scan_forward


def test_benchmarks_return_bench_rows_at_the_quick_size():
    found = benchmarks(quick=True)
    assert set(found) == {"titans_chunked", "titans_recurrence", "titans_engines", "titans_torch",
                          "titans_torch_recurrence"}
    rows = {name: fn(1) for name, fn in found.items()}
    quick = SIZES["quick"]
    per_family = len(quick["dtypes"]) * len(quick["lengths"]) * len(quick["chunks"])
    assert len(rows["titans_chunked"]) == per_family and len(rows["titans_recurrence"]) == per_family
    assert len(rows["titans_engines"]) == len(quick["engines"]["chunks"]) + 1
    has_torch = bench_titans.torch_available()
    assert len(rows["titans_torch_recurrence"]) == (len(quick["torch"]["lengths"]) if has_torch else 0)
    layer = quick["torch_layer"]
    expected = sum(len(chunks) for *_, chunks in layer["configs"]) * len(layer["dtypes"])
    assert len(rows["titans_torch"]) == (expected if has_torch else 0)
    for row in [r for found_rows in rows.values() for r in found_rows]:
        assert {"benchmark", "baseline", "baseline_s", "candidate", "candidate_s"} <= set(row)
        assert math.isfinite(row["baseline_s"]) and row["baseline_s"] > 0
        assert math.isfinite(row["candidate_s"]) and row["candidate_s"] > 0
    chunked = [f"chunked b={b}" for b in quick["chunks"]] * (len(quick["dtypes"]) * len(quick["lengths"]))
    assert [r["candidate"] for r in rows["titans_chunked"]] == chunked
    assert [r["candidate"] for r in rows["titans_recurrence"]] == chunked
    for name in ("titans_chunked", "titans_recurrence"):                  # both precisions, named in the row
        assert [r["benchmark"].split()[-1] for r in rows[name]] == \
            [dtype for dtype in quick["dtypes"] for _ in range(len(quick["lengths"]) * len(quick["chunks"]))]
    assert {r["baseline"] for r in rows["titans_recurrence"]} == {"per-token loop b=1"}
    assert {r["baseline"] for r in rows["titans_engines"]} == {"manual"}
    if has_torch:
        assert {r["candidate"] for r in rows["titans_torch"]} == {"pytorch eager"}
        assert any("float32" in r["benchmark"] for r in rows["titans_torch"])
    table = bench.format_table(rows["titans_chunked"] + rows["titans_engines"])
    assert "| sequential b=1 |" in table and "| autodiff |" in table


def test_full_size_is_the_issue_configuration():
    full = SIZES["full"]
    assert full["lengths"] == (1024, 4096) and full["D"] == 64 and full["B"] == 2 and full["chunks"] == (16, 64)
    assert full["torch_layer"]["configs"] == ((32, 16, 2, (1, 8)), (1024, 64, 2, (16, 64)))
    assert set(benchmarks()) == set(benchmarks(quick=True))


@pytest.mark.parametrize("chunk", [1, 4, 5])
def test_timed_recurrence_computes_what_the_layer_computes(chunk):
    """The recurrence rows time lmm_scan_forward + lmm_scan_backward on the layer's own inputs: its
    reads are the layer's read-out and its gradients give the layer's feature and mem0 gradients
    (the same functions run: equal to the last bit). T = 13 ends with a short chunk."""
    errors = bench_titans.check_layer_recurrence(T=13, chunk=chunk)
    assert {"y", "lmm.W_k", "lmm.w_theta", "lmm.mem0.W1", "lmm.mem0.W2"} <= set(errors)
    assert max(errors.values()) <= 1e-12, errors


def test_timed_recurrence_check_notices_a_recurrence_unlike_the_layers(monkeypatch):
    """The check can fail: a recurrence without the second-order term (pitfall P1), or read before
    the write while the layer reads after it, gives other numbers, and the benchmark refuses to time it."""
    monkeypatch.setattr(bench_titans, "lmm_scan_backward",
                        functools.partial(bench_titans.lmm_scan_backward, second_order=False))
    errors = bench_titans.check_layer_recurrence()
    assert errors["y"] == 0.0 and errors["lmm.W_k"] > 1e-3 and errors["lmm.W_v"] > 1e-3
    with pytest.raises(RuntimeError, match="differs"):
        bench_titans.bench_titans_recurrence(1, quick=True)
    monkeypatch.undo()
    original = bench_titans.lmm_scan_forward
    monkeypatch.setattr(bench_titans, "lmm_scan_forward",
                        lambda *args: original(*args[:-1], read_after_write=False))
    assert bench_titans.check_layer_recurrence()["y"] > 1e-3


def test_torch_rows_are_omitted_without_torch(monkeypatch):
    monkeypatch.setattr(bench_titans, "torch_available", lambda: False)
    assert bench_titans.bench_titans_torch(1, quick=True) == []
    assert bench_titans.bench_titans_torch_recurrence(1, quick=True) == []


def test_torch_recurrence_port_computes_minimems_reads_and_gradients():
    pytest.importorskip("torch")
    errors = bench_titans.check_torch_port()
    assert set(errors) == {"y", "dq", "dk", "dv", "dalpha", "deta", "dtheta", "dM0_1", "dM0_2", "dS0_1", "dS0_2"}
    assert max(errors.values()) < 1e-10, errors


def test_torch_recurrence_port_check_notices_a_missing_second_order_term(monkeypatch):
    """The comparison can fail: minimem without the ADJ term (pitfall P1) loses dk and dv."""
    pytest.importorskip("torch")
    monkeypatch.setattr(bench_titans, "lmm_scan_backward",
                        functools.partial(bench_titans.lmm_scan_backward, second_order=False))
    errors = bench_titans.check_torch_port()
    assert errors["dk"] > 1e-3 and errors["dv"] > 1e-3
    with pytest.raises(RuntimeError, match="differs"):
        bench_titans.bench_titans_torch_recurrence(1, quick=True)


LAYER_CONFIGS = {
    "default b=4": TitansLMMConfig(D=8, chunk=4),
    "sequential b=1": TitansLMMConfig(D=8, chunk=1),
    "sequential, heads, deep, read before write": TitansLMMConfig(D=8, H=2, L_M=3, chunk=1, read_after_write=False),
    "heads, deep tanh": TitansLMMConfig(D=8, H=2, L_M=3, phi="tanh", chunk=3),
    "read before write, persistent": TitansLMMConfig(D=8, chunk=4, read_after_write=False, N_p=2),
    "linear, raw read-out, K_c=1": TitansLMMConfig(D=6, L_M=1, K_c=1, output_path=False, chunk=5),
    "d, h given, identity conv": TitansLMMConfig(D=8, H=2, d=3, h=5, chunk=2, conv_init="identity"),
}


@pytest.mark.parametrize("name", sorted(LAYER_CONFIGS))
def test_torch_layer_port_computes_minimems_loss_and_every_gradient(name):
    """float64, T = 13 (a last chunk shorter than b): the loss to the last bits, every parameter
    gradient to ~1e-12 (measured: loss within 2 ulp, gradients within 5e-15)."""
    pytest.importorskip("torch")
    check = bench_titans.check_torch_layer(LAYER_CONFIGS[name], T=13)
    assert check["loss_diff"] <= 4 * np.spacing(check["loss_minimem"]), check
    model = bench_titans.layer_problem(LAYER_CONFIGS[name], 13, 2)[0]
    assert set(check["grads"]) == set(model.params)
    assert max(check["grads"].values()) < 1e-12, check


def test_torch_layer_check_notices_a_missing_second_order_term(monkeypatch):
    """The comparison can fail: minimem's backward without the ADJ term (pitfall P1) differs from
    autograd's, and the benchmark refuses to time it."""
    pytest.importorskip("torch")
    original = titans_module.lmm_scan_backward
    monkeypatch.setattr(titans_module, "lmm_scan_backward",
                        lambda dy, cache, dstate=None, second_order=True: original(dy, cache, dstate, False))
    check = bench_titans.check_torch_layer()
    assert check["loss_diff"] <= 4 * np.spacing(check["loss_minimem"])      # the forward is untouched
    assert check["grads"]["lmm.W_k"] > 1e-3 and check["grads"]["lmm.W_v"] > 1e-3
    with pytest.raises(RuntimeError, match="differs"):
        bench_titans.bench_titans_torch(1, quick=True)


def _one_token_chunks(args, dy, read_after_write):
    """The sequential model through the generic chunk path (chunks of one token): the code the
    per-token path of lmm_scan_forward / lmm_scan_backward replaced for b = 1."""
    M, S, q, k, v, alpha, eta, theta = args
    ys, caches = [], []
    for t in range(q.shape[0]):
        y, (M, S), cache = lmm_chunk_forward(M, S, *(x[t:t + 1] for x in (q, k, v, alpha, eta, theta)),
                                             read_after_write=read_after_write)
        ys.append(y)
        caches.append(cache)
    GM, GS = tuple(np.zeros_like(W) for W in M), tuple(np.zeros_like(W) for W in M)
    grads = []
    for t in reversed(range(q.shape[0])):
        *g, GM, GS = lmm_chunk_backward(dy[t:t + 1], caches[t], GM, GS)
        grads.append(g)
    grads = [np.concatenate(parts[::-1], axis=0) for parts in zip(*grads)]
    return np.concatenate(ys, axis=0), (M, S), grads, (GM, GS)


@pytest.mark.parametrize("L, read_after_write", [(1, True), (2, True), (3, False)])
def test_token_path_equals_the_chunk_path_with_one_token_chunks(L, read_after_write):
    problem = bench_titans.recurrence_problem(T=9, B=2, d=3, h=4, seed=L)
    M0, S0, q, k, v, alpha, eta, theta, dy = problem
    rng = np.random.default_rng(L)
    M0 = tuple(rng.standard_normal((2, 1) + W.shape[-2:]) * 0.5 for W in (
        [np.zeros((3, 3))] if L == 1 else [np.zeros((3, 4))] + [np.zeros((4, 4))] * (L - 2) + [np.zeros((4, 3))]))
    S0 = tuple(rng.standard_normal(W.shape) * 0.1 for W in M0)
    args = (M0, S0, q, k, v, alpha, eta, theta)
    y, (M, S), cache = lmm_scan_forward(*args, chunk=1, read_after_write=read_after_write)
    (dq, dk, dv), (dalpha, deta, dtheta), (dM0, dS0) = lmm_scan_backward(dy, cache)
    y_ref, (M_ref, S_ref), grads_ref, (dM0_ref, dS0_ref) = _one_token_chunks(args, dy, read_after_write)
    ours = [y, *M, *S, dq, dk, dv, dalpha, deta, dtheta, *dM0, *dS0]
    theirs = [y_ref, *M_ref, *S_ref, *grads_ref, *dM0_ref, *dS0_ref]
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13 * max(1.0, np.max(np.abs(b))))
    assert np.max(np.abs(dk)) > 1e-3                             # the second-order terms are there
