"""The Titans benchmark functions run at tiny sizes and return minimem.bench rows (no timing checks)."""

import math

from minimem import bench
from minimem.bench_titans import SIZES, benchmarks


def test_benchmarks_return_bench_rows_at_the_quick_size():
    found = benchmarks(quick=True)
    assert set(found) == {"titans_chunked", "titans_engines"}
    rows = {name: fn(1) for name, fn in found.items()}
    quick = SIZES["quick"]
    assert len(rows["titans_chunked"]) == len(quick["lengths"]) * len(quick["chunks"])
    assert len(rows["titans_engines"]) == len(quick["engines"]["chunks"]) + 1
    for row in rows["titans_chunked"] + rows["titans_engines"]:
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
