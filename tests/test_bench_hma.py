"""The HMA benchmark functions run at tiny sizes and return minimem.bench rows (no timing checks)."""

import math

from minimem import bench
from minimem.bench_hma import SIZES, benchmarks


def test_benchmarks_return_bench_rows_at_the_quick_size():
    found = benchmarks(quick=True)
    assert set(found) == {"hma_overhead", "conv2d_engines"}
    rows = {name: fn(1) for name, fn in found.items()}
    quick = SIZES["quick"]
    assert len(rows["hma_overhead"]) == len(quick["backbones"]) + 2       # two more rows split the MLP head's cost
    assert len(rows["conv2d_engines"]) == len(quick["conv"])
    for row in rows["hma_overhead"] + rows["conv2d_engines"]:
        assert set(row) == {"benchmark", "baseline", "baseline_s", "candidate", "candidate_s"}
        assert math.isfinite(row["baseline_s"]) and row["baseline_s"] > 0
        assert math.isfinite(row["candidate_s"]) and row["candidate_s"] > 0
    assert {r["baseline"] for r in rows["hma_overhead"]} == {"backbone + linear head"}
    assert [r["benchmark"].split(", ")[1] for r in rows["hma_overhead"]][:3] == ["mlp backbone"] * 3
    table = bench.format_table(rows["hma_overhead"] + rows["conv2d_engines"])
    assert "| manual im2col |" in table and "| autodiff |" in table


def test_full_size_is_the_demo_configuration():
    full = SIZES["full"]
    assert (full["B"], full["N_r"], full["m"]) == (64, 256, 8)               # spec B6 task 1, demos/hma_images.py
    assert (full["B_graph"], full["N_r_graph"], full["m_graph"]) == (32, 128, 16)   # demos/hma_graphs.py
    assert set(benchmarks()) == set(benchmarks(quick=True))
