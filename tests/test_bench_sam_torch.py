"""The PyTorch SAM port computes minimem's loss and gradients (float64), and the benchmark functions
run at tiny sizes and return minimem.bench rows (no timing checks)."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from minimem import bench, bench_sam_torch  # noqa: E402
from minimem.bench_sam_torch import SIZES  # noqa: E402

KEYS = {"benchmark", "baseline", "baseline_s", "candidate", "candidate_s"}


def test_port_computes_minimems_loss_gradients_and_choices():
    check = bench_sam_torch.check_torch_port()
    assert set(check) == {"sparse", "dense"}
    for engine, result in check.items():
        assert result["loss_minimem"] > 0, engine
        assert result["same_choices"], (engine, result)
        assert result["loss_diff"] < 1e-12 * result["loss_minimem"], (engine, result)
        assert result["grad_abs_diff"] < 1e-12, (engine, result)
        assert result["grad_diff"] < 1e-10, (engine, result)


def test_port_at_the_benchmark_word_size_and_heads():
    """The full configuration's W, R, K, H on a small N (the same code path as the benchmark)."""
    result = bench_sam_torch.check_torch_port(SIZES["full"], N=128)["sparse"]
    assert result["same_choices"] and result["loss_diff"] < 1e-12 * result["loss_minimem"]
    assert result["grad_diff"] < 1e-10, result


def _problem():
    model, state, batch = bench_sam_torch.sam_problem(SIZES["quick"], 64)
    loss, grads, record = bench_sam_torch.minimem_step(model, state, batch)()
    return model, state, batch, loss, grads, record


def test_replaying_minimems_choices_gives_the_same_step_and_other_choices_do_not():
    """Negative control: the comparison notices a different LRA slot (the erase moves)."""
    model, state, batch, loss, grads, record = _problem()
    frozen = {"read_index": torch.from_numpy(record.read_index), "lra": torch.from_numpy(record.lra)}
    loss_pt, port, _ = bench_sam_torch.torch_step(bench_sam_torch.torch_sam(model), state, batch, frozen)()
    assert abs(loss_pt - loss) < 1e-12 * loss
    assert bench_sam_torch.grad_difference(grads, port.minimem_grads()) < 1e-10
    moved = dict(frozen, lra=(frozen["lra"] + 1) % model.config.N)
    loss_moved, port, _ = bench_sam_torch.torch_step(port, state, batch, moved)()
    assert abs(loss_moved - loss) > 1e-6
    assert bench_sam_torch.grad_difference(grads, port.minimem_grads()) > 1e-3


def test_the_comparison_sees_a_different_write_word():
    """Negative control: a tanh on a_t (an option minimem's model does not use here) is noticed."""
    model, state, batch, loss, grads, record = _problem()
    port = bench_sam_torch.torch_sam(model)
    port.config = type(port.config)(**{**port.config.__dict__, "write_squash": "tanh"})
    loss_pt, port, _ = bench_sam_torch.torch_step(port, state, batch)()
    assert bench_sam_torch.grad_difference(grads, port.minimem_grads()) > 1e-4


def test_the_port_leaves_the_state_unchanged_and_repeats_itself():
    model, state, batch, loss, grads, record = _problem()
    M0, last0 = state.M.copy(), state.last.copy()
    step = bench_sam_torch.torch_step(bench_sam_torch.torch_sam(model), state, batch)
    first, second = step()[0], step()[0]
    assert first == second == pytest.approx(loss, rel=1e-12)
    assert np.array_equal(state.M, M0) and np.array_equal(state.last, last0)


def test_float32_port_is_close_to_minimems_float32_step():
    model, state, batch = bench_sam_torch.sam_problem(SIZES["quick"], 64, dtype="float32")
    loss, grads, record = bench_sam_torch.minimem_step(model, state, batch)()
    loss_pt, port, choices = bench_sam_torch.torch_step(bench_sam_torch.torch_sam(model), state, batch)()
    assert next(port.parameters()).dtype == torch.float32
    assert np.array_equal(choices["read_index"].numpy(), record.read_index)
    assert abs(loss_pt - loss) < 1e-5 * loss
    assert bench_sam_torch.grad_difference(grads, port.minimem_grads()) < 1e-3


def test_unported_options_and_states_are_refused():
    from minimem.memory.sam import SAM, SAMConfig
    with pytest.raises(ValueError, match="usage='lra' and index='exact'"):
        bench_sam_torch.torch_sam(SAM(SAMConfig(X=2, Y=2, N=16, W=3, R=1, K=2, H=4, index="lsh")))
    with pytest.raises(ValueError, match="usage='lra' and index='exact'"):
        bench_sam_torch.torch_sam(SAM(SAMConfig(X=2, Y=2, N=16, W=3, R=1, K=2, H=4, usage="discounted")))
    model, state, batch = bench_sam_torch.sam_problem(SIZES["quick"], 64)
    with pytest.raises(ValueError, match="zero r, h, c"):
        bench_sam_torch.torch_step(bench_sam_torch.torch_sam(model), state._replace(h=state.h + 1), batch)
    with pytest.raises(ValueError, match="'exact', 'lsh' or 'dense'"):
        bench_sam_torch.sam_config(SIZES["quick"], 64, "kdtree")


def test_benchmarks_return_bench_rows_at_the_quick_size():
    found = bench_sam_torch.benchmarks(quick=True)
    assert set(found) == {"sam_pytorch", "sam_pytorch_dense"}
    quick = SIZES["quick"]
    rows = found["sam_pytorch"](1)
    assert len(rows) == 2 * len(quick.log_ns) * len(quick.dtypes)
    assert {r["baseline"] for r in rows} == {"minimem exact", "minimem lsh"}
    assert {r["candidate"] for r in rows} == {"pytorch (exact top-K)"}
    dense = found["sam_pytorch_dense"](1)
    assert len(dense) == len(quick.dense_log_ns) * len(quick.dtypes)
    assert {(r["baseline"], r["candidate"]) for r in dense} == {("minimem dense", "pytorch K=N")}
    for row in rows + dense:
        assert KEYS <= set(row)
        for key in ("baseline_s", "candidate_s"):
            assert math.isfinite(row[key]) and row[key] > 0
        assert row["dtype"] in quick.dtypes and row["N"] == 1 << row["log_n"]
    assert "| minimem lsh |" in bench.format_table(rows)


def test_full_sizes_are_the_readme_configuration():
    full = SIZES["full"]
    assert (full.H, full.W, full.R, full.K, full.B, full.T) == (100, 32, 4, 4, 1, 20)
    assert full.log_ns == (10, 14, 18) and full.dtypes == ("float64", "float32") and full.memory


def test_memory_probe_runs_in_a_subprocess_and_feeds_the_memory_table():
    peak = bench_sam_torch.peak_memory("quick", 6, "float64", "pytorch")
    assert peak["peak_bytes"] >= 0 and peak["method"]
    row = {"benchmark": "b", "baseline": "minimem exact", "baseline_s": 1.0, "candidate": "pytorch",
           "candidate_s": 2.0, "baseline_bytes": 1 << 20, "candidate_bytes": 3 << 20, "memory_method": peak["method"]}
    table = bench_sam_torch.format_memory_table([row])
    assert "| 1.0 MiB |" in table and "| 3.0 MiB |" in table and "3.0x" in table


def test_without_torch_there_are_no_benchmarks(monkeypatch):
    monkeypatch.setattr(bench_sam_torch, "torch_available", lambda: False)
    assert bench_sam_torch.benchmarks(quick=True) == {}
    assert bench_sam_torch.bench_sam_pytorch(1, quick=True) == []
