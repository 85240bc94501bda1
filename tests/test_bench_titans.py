"""The Titans benchmark functions run at tiny sizes and return minimem.bench rows (no timing checks)."""

import functools
import math

import pytest

from minimem import bench, bench_titans
from minimem.bench_titans import SIZES, benchmarks


def test_benchmarks_return_bench_rows_at_the_quick_size():
    found = benchmarks(quick=True)
    assert set(found) == {"titans_chunked", "titans_engines", "titans_torch"}
    rows = {name: fn(1) for name, fn in found.items()}
    quick = SIZES["quick"]
    assert len(rows["titans_chunked"]) == len(quick["lengths"]) * len(quick["chunks"])
    assert len(rows["titans_engines"]) == len(quick["engines"]["chunks"]) + 1
    assert len(rows["titans_torch"]) == (len(quick["torch"]["lengths"]) if bench_titans.torch_available() else 0)
    for row in rows["titans_chunked"] + rows["titans_engines"] + rows["titans_torch"]:
        assert set(row) == {"benchmark", "baseline", "baseline_s", "candidate", "candidate_s"}
        assert math.isfinite(row["baseline_s"]) and row["baseline_s"] > 0
        assert math.isfinite(row["candidate_s"]) and row["candidate_s"] > 0
    assert [r["candidate"] for r in rows["titans_chunked"]] == [f"chunked b={b}" for b in quick["chunks"]]
    assert {r["baseline"] for r in rows["titans_engines"]} == {"manual"}
    table = bench.format_table(rows["titans_chunked"] + rows["titans_engines"])
    assert "| sequential b=1 |" in table and "| autodiff |" in table


def test_full_size_is_the_issue_configuration():
    full = SIZES["full"]
    assert full["lengths"] == (1024, 4096) and full["D"] == 64 and full["B"] == 2 and full["chunks"] == (16, 64)
    assert set(benchmarks()) == set(benchmarks(quick=True))


def test_torch_rows_are_omitted_without_torch(monkeypatch):
    monkeypatch.setattr(bench_titans, "torch_available", lambda: False)
    assert bench_titans.bench_titans_torch(1, quick=True) == []


def test_torch_port_computes_minimems_reads_and_gradients():
    pytest.importorskip("torch")
    errors = bench_titans.check_torch_port()
    assert set(errors) == {"y", "dq", "dk", "dv", "dalpha", "deta", "dtheta", "dM0_1", "dM0_2", "dS0_1", "dS0_2"}
    assert max(errors.values()) < 1e-10, errors


def test_torch_port_check_notices_a_missing_second_order_term(monkeypatch):
    """The comparison can fail: minimem without the ADJ term (pitfall P1) loses dk and dv."""
    pytest.importorskip("torch")
    monkeypatch.setattr(bench_titans, "lmm_scan_backward",
                        functools.partial(bench_titans.lmm_scan_backward, second_order=False))
    errors = bench_titans.check_torch_port()
    assert errors["dk"] > 1e-3 and errors["dv"] > 1e-3
    with pytest.raises(RuntimeError, match="differs"):
        bench_titans.bench_titans_torch(1, quick=True)
