"""The MNM benchmark runs at tiny sizes and returns minimem.bench rows (no timing checks), and the
two engines it times compute the same gradients."""

import math

import numpy as np

from minimem import bench
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
