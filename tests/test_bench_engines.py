"""The manual-vs-autodiff engine benchmark runs at tiny sizes and returns well-formed minimem.bench
rows (no timing checks), and the two engines it times compute the same gradients."""

import math

import numpy as np
import pytest

from minimem import bench
from minimem.bench_engines import (
    PROBLEMS, autodiff_step, bench_problems, benchmarks, engine_gradient_difference, manual_forward, manual_step,
)

EXPECTED = {"engines_sam": ["SAM sparse", "SAM dense"], "engines_sdnc": ["SDNC"], "engines_lsam": ["LSAM"],
            "engines_nam_tm": ["NAM-TM"], "engines_nam_fewshot": ["NAM few-shot head"],
            "engines_nam_transformer": ["NAM Transformer"], "engines_hma": ["HMA head (MLP 5-4)"],
            "engines_titans_mac": ["Titans MAC"], "engines_titans_mal": ["Titans MAL"]}


def test_every_missing_model_has_a_benchmark():
    assert set(benchmarks(quick=True)) == set(EXPECTED)
    assert "minimem.bench_engines" in bench.FAMILY_MODULES


def test_quick_rows_are_well_formed():
    found = benchmarks(quick=True)
    for name, labels in EXPECTED.items():
        rows = found[name](2)
        assert [r["benchmark"].split(" fwd+bwd")[0] for r in rows] == labels, name
        for row in rows:
            assert set(row) == {"benchmark", "baseline", "baseline_s", "candidate", "candidate_s",
                                "baseline_bytes", "candidate_bytes", "grad_diff", "manual_forward_s"}
            assert math.isfinite(row["manual_forward_s"]) and row["manual_forward_s"] > 0
            assert (row["baseline"], row["candidate"]) == ("manual", "autodiff")
            for key in ("baseline_s", "candidate_s"):
                assert math.isfinite(row[key]) and row[key] > 0, (name, key)
            for key in ("baseline_bytes", "candidate_bytes"):
                assert isinstance(row[key], int) and row[key] > 0, (name, key)
            assert 0.0 <= row["grad_diff"] <= 1e-9
        table = bench.format_table(rows)
        assert table.count("| manual |") == len(rows)
        assert " kB |" in table or " MB |" in table


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_timed_engines_compute_the_same_gradients(name):
    for problem in PROBLEMS[name](True):
        manual, auto = manual_step(problem)(), autodiff_step(problem)()
        assert set(manual) == set(auto) == set(problem.model.params)
        assert any(np.any(g != 0) for g in manual.values())
        for key, g in manual.items():
            np.testing.assert_allclose(auto[key], g, rtol=1e-9, atol=1e-9, err_msg=f"{problem.label}: {key}")
        assert engine_gradient_difference(problem) <= 1e-9


def test_a_wrong_backward_is_caught_before_timing(monkeypatch):
    problem = PROBLEMS["engines_lsam"](True)[0]
    assert engine_gradient_difference(problem) <= 1e-9
    model = problem.model
    right = type(model).backward

    def off_by_one_percent(self, douts, cache):
        grads = right(self, douts, cache)
        key = next(iter(grads))
        return {**grads, key: 1.01 * grads[key]}

    monkeypatch.setattr(type(model), "backward", off_by_one_percent)
    assert engine_gradient_difference(problem) > 1e-6
    with pytest.raises(RuntimeError, match="gradients differ"):
        bench_problems("engines_lsam", 1, quick=True)


def test_main_prints_the_machine_and_the_table(capsys):
    from minimem.bench_engines import main

    assert main(["--quick", "--only", "engines_nam_fewshot"]) == 0
    out = capsys.readouterr().out
    assert "# machine:" in out and "BLAS threads:" in out
    assert out.count("| manual |") == 1
    assert "# ceiling of each ratio, autodiff step / manual forward alone" in out and "NAM few-shot head " in out


def test_manual_forward_is_the_forward_of_the_manual_step():
    problem = PROBLEMS["engines_nam_fewshot"](True)[0]
    outputs, _ = manual_forward(problem)()
    expected, _ = problem.model.forward(problem.inputs, *problem.extra)
    np.testing.assert_array_equal(outputs, expected)
