"""The benchmark script must keep running (its numbers are not checked here: no timings in tests)."""

from minimem import bench


def test_bench_quick_prints_a_ratio_table(capsys):
    assert bench.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "| LSTM fwd+bwd T=50 B=16 H=128 | manual |" in out
    assert out.count("\n| mul ") == 4


def test_format_table_reports_candidate_over_baseline():
    rows = [{"benchmark": "x", "baseline": "a", "baseline_s": 2e-3, "candidate": "b", "candidate_s": 5e-3}]
    assert "| x | a | 2.0 ms | b | 5.0 ms | 2.5x |" in bench.format_table(rows)
