"""The generative-memory benchmark functions run at tiny sizes and return minimem.bench rows (no
timing checks), and the full size is the demos' configuration."""

import math

from minimem import bench
from minimem.bench_generative import SIZES, benchmarks


def test_benchmarks_return_bench_rows_at_the_quick_size():
    found = benchmarks(quick=True)
    assert set(found) == {"vma_engines", "vsm_engines"}
    rows = {name: fn(1) for name, fn in found.items()}
    assert len(rows["vma_engines"]) == 2 and len(rows["vsm_engines"]) == 2
    for row in rows["vma_engines"] + rows["vsm_engines"]:
        assert set(row) == {"benchmark", "baseline", "baseline_s", "candidate", "candidate_s"}
        assert row["baseline"] == "manual" and row["candidate"] == "autodiff"
        assert math.isfinite(row["baseline_s"]) and row["baseline_s"] > 0
        assert math.isfinite(row["candidate_s"]) and row["candidate_s"] > 0
    assert [r["benchmark"].split()[0] for r in rows["vsm_engines"]] == ["VSM-HVAE", "VSM-VAE"]
    table = bench.format_table(rows["vma_engines"] + rows["vsm_engines"])
    assert "| manual |" in table and "| autodiff |" in table
    assert {"vma_engines", "vsm_engines"} <= set(bench.all_benchmarks(quick=True))


def test_full_size_is_the_demo_configuration():
    vma, vsm = SIZES["full"]["vma"], SIZES["full"]["vsm"]
    assert (vma["X"], vma["Z"], vma["E"], vma["He"], vma["H"], vma["B"], vma["N"], vma["S"]) == (400, 16, 32, 64, 128, 32, 8, 4)
    assert (vsm["X"], vsm["Ns"], vsm["Zc"], vsm["Z"], vsm["H"], vsm["Hk"], vsm["B"], vsm["Ne"], vsm["n_t"]) == \
        (400, 16, 8, 8, 128, 32, 32, 5, 2)
    assert set(SIZES["full"]) == set(SIZES["quick"])
