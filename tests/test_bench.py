"""The benchmark script must keep running (its numbers are not checked here: no timings in tests)."""

import json

import numpy as np
import pytest

from minimem import bench


def test_bench_quick_prints_a_ratio_table(capsys):
    assert bench.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "| LSTM fwd+bwd T=50 B=16 H=128 | manual |" in out
    assert out.count("\n| mul ") == 4


def test_format_table_reports_candidate_over_baseline():
    rows = [{"benchmark": "x", "baseline": "a", "baseline_s": 2e-3, "candidate": "b", "candidate_s": 5e-3}]
    assert "| x | a | 2.0 ms | b | 5.0 ms | 2.5x |" in bench.format_table(rows)


def test_format_table_reads_a_faster_candidate_both_ways():
    rows = [{"benchmark": "x", "baseline": "a", "baseline_s": 1.0, "candidate": "b", "candidate_s": 0.125}]
    assert "| 0.12x (8.0x faster) |" in bench.format_table(rows)
    assert bench.format_ratio(1.0) == "1.0x" and bench.format_ratio(2.46) == "2.5x"


def test_format_table_prints_both_sides_memory_or_a_dash():
    rows = [{"benchmark": "x", "baseline": "a", "baseline_s": 2e-3, "candidate": "b", "candidate_s": 5e-3,
             "baseline_bytes": 1500, "candidate_bytes": 2_500_000},
            {"benchmark": "y", "baseline": "a", "baseline_s": 1.0, "candidate": "b", "candidate_s": 1.0}]
    table = bench.format_table(rows)
    assert "| x | a | 2.0 ms | b | 5.0 ms | 2.5x | 1.5 kB | 2.5 MB |" in table
    assert "| y | a | 1.00 s | b | 1.00 s | 1.0x | - | - |" in table


def test_peak_memory_counts_the_arrays_a_call_allocates():
    import numpy as np

    small = bench.peak_memory(lambda: np.ones(1000))
    big = bench.peak_memory(lambda: np.ones(1_000_000))             # 8 MB of float64
    assert 8_000_000 <= big < 8_100_000
    assert small < 100_000
    kept = np.ones(1_000_000)                                         # allocated before: not counted
    assert bench.peak_memory(lambda: kept.sum()) < 100_000
    assert bench.peak_memory_of({"a": lambda: np.ones(10), "b": lambda: np.ones(1_000_000)})["b"] >= 8_000_000


def test_lstm_rows_carry_peak_memory_of_both_engines():
    row = bench.bench_lstm(1, T=3, B=2, H=4, X=3)[0]
    assert row["baseline_bytes"] > 0 and row["candidate_bytes"] > row["baseline_bytes"]


def test_machine_description_names_cpus_blas_threads_and_versions():
    import os
    import platform
    import importlib.util

    import numpy as np

    text = bench.machine_description()
    assert all(line.startswith("# ") for line in text.splitlines())
    assert f"{os.cpu_count()} CPUs (os.cpu_count)" in text
    if hasattr(os, "sched_getaffinity"):
        assert f"{len(os.sched_getaffinity(0))} usable by this process" in text
    assert f"numpy {np.__version__}" in text and platform.python_version() in text
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    assert f"BLAS {blas}" in text
    for name in bench.BLAS_THREAD_VARIABLES:
        assert f"{name}={os.environ.get(name, 'unset')}" in text
    if importlib.util.find_spec("torch") is not None:
        import torch
        assert f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}" in text
    else:
        assert "torch: not installed" in text


def test_main_header_states_the_machine(capsys):
    assert bench.main(["--quick", "--only", "lstm"]) == 0
    out = capsys.readouterr().out
    assert "# machine:" in out and "BLAS threads: OPENBLAS_NUM_THREADS=" in out
    assert "| LSTM fwd+bwd T=50 B=16 H=128 | manual |" in out


def test_family_main_runs_one_module_alone(capsys):
    """family_main (the `python -m minimem.bench_<family>` command line): --only picks, --rounds
    reaches the benchmark, --quick means one round, unknown names and rounds < 1 are errors."""
    from minimem.bench import family_main
    calls = []

    def benchmarks(quick=False):
        def make(name):
            def run(rounds):
                calls.append((name, quick, rounds))
                return [{"benchmark": name, "baseline": "a", "baseline_s": 2e-3, "candidate": "b",
                         "candidate_s": 1e-3}]
            return run
        return {"first": make("first"), "second": make("second")}

    assert family_main(benchmarks, "toy benchmarks", "toy", "Toy.\n\nMore.", ["--only", "second", "--rounds", "3"]) == 0
    out = capsys.readouterr().out
    assert calls == [("second", False, 3)] and "# minimem toy benchmarks (3 interleaved rounds" in out
    assert "| second | a | 2.0 ms | b | 1.0 ms |" in out and "first" not in out.split("# machine")[-1]
    family_main(benchmarks, "toy benchmarks", "toy", None, ["--quick"])
    assert calls[1:] == [("first", True, 1), ("second", True, 1)]
    for argv in (["--only", "third"], ["--rounds", "0"]):
        with pytest.raises(SystemExit):
            family_main(benchmarks, "toy benchmarks", "toy", None, argv)


def test_json_prints_the_rows_the_table_shows(capsys):
    assert bench.main(["--quick", "--only", "op_overhead", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["benchmark"] for r in rows] == ["mul 16x128 forward", "mul 16x128 forward+backward",
                                              "mul 64x512 forward", "mul 64x512 forward+backward"]
    assert all(r["candidate_s"] > 0 and isinstance(r["baseline_bytes"], int) for r in rows)
    assert json.loads(json.dumps({"n": np.int64(3), "t": np.float32(0.5)}, default=bench._plain_number)) == \
        {"n": 3, "t": 0.5}
    with pytest.raises(TypeError, match="ndarray"):
        json.dumps({"x": np.zeros(2)}, default=bench._plain_number)


def test_isolate_runs_each_benchmark_in_a_fresh_process(capsys):
    assert bench.main(["--quick", "--isolate", "--only", "op_overhead", "--only", "lstm"]) == 0
    out = capsys.readouterr().out
    assert "every benchmark in a fresh process" in out and "# machine:" in out
    assert out.count("\n| mul ") == 4 and "| LSTM fwd+bwd T=50 B=16 H=128 | manual |" in out
    with pytest.raises(RuntimeError, match="unknown benchmark"):     # the child's error reaches the caller
        bench.run_isolated("no_such_benchmark", quick=True)
