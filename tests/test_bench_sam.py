"""The SAM scaling benchmark runs at tiny sizes and returns minimem.bench rows (no timing checks)."""

import math

from minimem import bench
from minimem import bench_sam
from minimem.bench_sam import SIZES, benchmarks, format_details, format_scaling_table, measure_scaling


def test_benchmarks_return_bench_rows_at_the_quick_size():
    found = benchmarks(quick=True)
    assert set(found) == {"sam_scaling"}
    rows = found["sam_scaling"](1)
    quick = SIZES["quick"]
    assert len(rows) == 2 * len(quick.log_ns)                       # exact and LSH against dense, per N
    for row in rows:
        assert {"benchmark", "baseline", "baseline_s", "candidate", "candidate_s"} <= set(row)
        assert row["candidate"] == "dense" and row["baseline"] in ("sam exact", "sam lsh")
        for key in ("baseline_s", "candidate_s"):
            assert math.isfinite(row[key]) and row[key] > 0
        assert row["baseline_bytes"] > 0 and row["candidate_bytes"] > 0
    assert "| sam lsh |" in bench.format_table(rows)


def test_scaling_measurement_reports_every_contestant_and_stops_dense_where_told():
    sizes = bench_sam.Sizes(**{**SIZES["quick"].__dict__, "dense_max_log_n": 6, "kdtree": True})
    lines = []
    results = measure_scaling(1, sizes, log=lines.append)
    assert [e["N"] for e in results] == [64, 256] and len(lines) == 2
    assert set(results[0]["contestants"]) == {"dense", "sam exact", "sam lsh", "sam kdtree"}
    assert "dense" not in results[1]["contestants"]                   # beyond dense_max_log_n: not run
    for entry in results:
        for name, c in entry["contestants"].items():
            assert c["s_per_step"] > 0 and c["T"] >= 1
            assert (c["recall_random"] is None) == (name in ("dense", "sam exact"))
            if c["recall_random"] is not None:
                assert 0 <= c["recall_random"] <= 1 and 0 <= c["near_found"] <= 1
    sparse = [c["record_bytes"] for e in results for n, c in e["contestants"].items() if n != "dense"]
    assert max(sparse) <= 1.05 * min(sparse)      # the records do not grow with N (a write's rows vary a little)
    table = format_scaling_table(results)
    assert "| 2^8 |" in table and "not run" in table
    assert "| 2^6 | sam kdtree |" in format_details(results)
    assert bench_sam.rows_from(results)[-1]["benchmark"].endswith("N=2^6")   # no dense: no rows at 2^8


def test_main_quick_prints_the_tables(capsys):
    assert bench_sam.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "dense / sam lsh time" in out and "recall@K random" in out
