"""The NAM attention benchmark (minimem.bench_nam): bench rows at the quick size, the softmax
budget skip, the table, and the one claim that does not depend on timing noise: peak memory of a
forward + backward grows about linearly in T for NAM and quadratically for softmax (tracemalloc
counts bytes, which are deterministic). No timing checks."""

import math

from minimem import bench
from minimem import bench_nam
from minimem.bench_nam import SIZES, Sizes, benchmarks, format_scaling_table, growth_exponents, measure, rows_from


def test_benchmarks_return_bench_rows_at_the_quick_size():
    found = benchmarks(quick=True)
    assert set(found) == {"nam_attention_scaling"} == set(benchmarks())
    rows = found["nam_attention_scaling"](1)
    assert [r["benchmark"].split()[2] for r in rows] == [f"T={T}" for T in SIZES["quick"].lengths]
    for row in rows:
        assert set(row) == {"benchmark", "baseline", "baseline_s", "candidate", "candidate_s", "baseline_bytes",
                            "candidate_bytes"}
        assert (row["baseline"], row["candidate"]) == ("softmax", "NAM")
        for key in ("baseline_s", "candidate_s", "baseline_bytes", "candidate_bytes"):
            assert math.isfinite(row[key]) and row[key] > 0
    assert "| softmax |" in bench.format_table(rows)


def test_full_size_is_the_issue_range():
    full = SIZES["full"]
    assert full.lengths[0] == 256 and full.lengths[-1] == 16384 and full.B == 1 and full.H == 1
    assert full.softmax_estimate(16384) == 5 * 16384 ** 2 * 4


def test_memory_grows_linearly_for_nam_and_quadratically_for_softmax():
    sizes = Sizes(lengths=(256, 1024), d=8, min_call_s=0.0)
    results = measure(1, sizes)
    softmax = growth_exponents(results, "bytes", "softmax")[1]
    nam = growth_exponents(results, "bytes", "nam")[1]
    assert 1.8 < softmax < 2.1, softmax
    assert 0.8 < nam < 1.2, nam


def test_softmax_is_skipped_beyond_the_budget_and_the_table_says_so():
    sizes = Sizes(lengths=(16, 64), d=4, softmax_gb=5 * 32 * 32 * 4 / 1e9, min_call_s=0.0)   # fits T=16 only
    results = measure(1, sizes)
    assert "softmax" in results[0]["seconds"] and "softmax" not in results[1]["seconds"]
    assert "needs" in results[1]["skipped"]["softmax"]
    assert [r["benchmark"].split()[2] for r in rows_from(results, sizes)] == ["T=16"]
    table = format_scaling_table(results)
    assert "skipped (needs" in table and table.count("\n") == 3


def test_main_quick_runs_and_rejects_bad_flags(capsys):
    assert bench_nam.main(["--quick"]) == 0
    assert "| T | softmax time |" in capsys.readouterr().out
    for bad in (["--softmax-gb", "0"], ["--rounds", "0"], ["--max-t", "1"]):
        try:
            bench_nam.main(["--quick"] + bad)
        except SystemExit as stop:
            assert stop.code == 2
        else:
            raise AssertionError(f"{bad} accepted")
