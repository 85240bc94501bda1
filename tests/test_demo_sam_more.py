"""The associative recall and curriculum SAM demos: their quick modes run and learn, the recall access
pattern is sparse, and the curriculum's memory accounting is what its docstring says (sparse records
independent of N, the dense estimate equal to the dense engine's records, the approximate index
exact from an empty memory, the in-place buffer empty again after training)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")


# ----------------------------------------------------------------- associative recall
def test_recall_quick_mode_learns_and_draws_the_access_pattern(tmp_path, capsys, load_demo):
    demo = load_demo("sam_recall")
    result = demo.main(["--quick", "--out", str(tmp_path)])
    assert result["final_loss"] < 0.95 * result["first_loss"]                 # measured 8.34 -> 7.61 nats
    assert result["best_bit_errors"] < 0.8 * result["initial_bit_errors"]     # measured 6.06 -> 3.88 (chance 6)
    for name in ("sam_recall_loss.png", "sam_recall_access.png"):
        path = tmp_path / name
        assert path.exists() and path.stat().st_size > 10_000
    assert "step 120/120" in capsys.readouterr().out


def test_recall_access_pattern_is_sparse(load_demo):
    """K nonzeros per head and step, rows sum to 1; at most R K + 1 written slots; the LRA slot is written;
    the answer steps are the only masked-in target steps."""
    demo = load_demo("sam_recall")
    config = demo.Config(**{**demo.QUICK, "steps": 1})
    from minimem.memory.sam import SAM, SAMConfig
    model = SAM(SAMConfig(X=config.num_bits + 2, Y=config.num_bits, N=config.N, W=config.W, R=config.R,
                          K=config.K, H=config.H), rng=np.random.default_rng(0))
    pattern = demo.access_pattern(model, config)
    T = pattern["write"].shape[1]
    assert T == (config.item_len + 1) * config.max_items + 2 * config.item_len + 2
    assert pattern["read"].shape == (config.R, config.N, T)
    assert np.all(np.count_nonzero(pattern["read"], axis=1) == config.K)
    np.testing.assert_allclose(pattern["read"].sum(axis=1), 1.0, atol=1e-12)
    assert np.all(np.count_nonzero(pattern["write"], axis=0) <= config.R * config.K + 1)
    assert np.all(pattern["write"][pattern["lra"], np.arange(T)] > 0)
    assert pattern["mask"].sum() == config.item_len


# ----------------------------------------------------------------- curriculum
def test_curriculum_quick_mode_trains_and_restores_the_buffer(tmp_path, capsys, load_demo):
    demo = load_demo("sam_curriculum")
    summary = demo.main(["--quick", "--out", str(tmp_path)])
    assert summary["memory_empty_after"]                                   # in-place buffer reverted every time
    assert summary["steps"] == 150 and summary["stop_reason"] == "max_steps"   # not the wall-clock budget
    assert summary["final_loss"] < 0.8 * summary["first_loss"]             # level 2 throughout; measured 6.5 -> 2.4 nats
    config = demo.Config(**demo.QUICK)
    N, B, W = 1 << config.log_n, config.batch, config.W
    for entry in summary["levels"]:
        assert entry["T"] == 2 * entry["level"] + 1
        assert entry["memory_bytes"] == B * N * W * 8
        assert entry["dense_lower_bytes"] == entry["T"] * B * N * W * 8
        assert entry["dense_estimate_bytes"] > entry["dense_lower_bytes"]
        assert entry["records_bytes"] < entry["dense_lower_bytes"] / 10
    assert sum(e["steps"] for e in summary["levels"]) == summary["steps"] == len(summary["errors"])
    for name in ("sam_curriculum.png", "sam_curriculum_access.png"):
        path = tmp_path / name
        assert path.exists() and path.stat().st_size > 10_000
    assert "memory buffer back to empty: True" in capsys.readouterr().out


def test_curriculum_doubles_the_level_when_solved(load_demo):
    """A threshold every batch meets: each level is solved after exactly `window` batches and h doubles."""
    demo = load_demo("sam_curriculum")
    config = demo.Config(log_n=6, H=8, batch=2, window=3, threshold=1e9, max_steps=7, log_every=0, probe_lengths="4")
    summary = demo.run(config, log=lambda line: None)
    assert [(e["level"], e["solved"], e["steps"]) for e in summary["levels"]] == [
        (2, True, 3), (4, True, 3), (8, False, 1)]
    assert summary["level_of_step"] == [2, 2, 2, 4, 4, 4, 8]
    assert summary["highest_solved_level"] == 4 and summary["final_level"] == 8
    assert [p["T"] for p in summary["probes"]] == [9]
    assert summary["memory_empty_after"]


def test_curriculum_records_do_not_grow_with_N(load_demo):
    """Same parameters and batch at N = 2^8 and 2^12: the per-step records are identical in size (the
    sparse path's Theta(1) space per step), while the dense bound grows 16x."""
    demo = load_demo("sam_curriculum")
    prints = {}
    for log_n in (8, 12):
        config = demo.Config(log_n=log_n, H=16)
        runner = demo.Runner(config)
        prints[log_n] = demo.footprint(runner, 4, (0.0, 8.0))
        assert runner.memory_is_empty()
    assert prints[8]["records_bytes"] == prints[12]["records_bytes"] > 0
    assert prints[12]["dense_lower_bytes"] == 16 * prints[8]["dense_lower_bytes"]
    assert prints[12]["dense_estimate_bytes"] == 16 * prints[8]["dense_estimate_bytes"]


def test_curriculum_dense_estimate_matches_the_dense_engine(load_demo):
    """The two-point fit a + b N reproduces the dense engine's record bytes at a third N, and b is at
    least the W floats of one memory copy per slot."""
    demo = load_demo("sam_curriculum")
    config = demo.Config(H=16)
    a, b = demo.dense_per_step_bytes(config)
    assert b >= 8 * config.W
    from minimem.bench_sam import records_bytes
    from minimem.memory.sam import SAM, SAMConfig
    N, T, B = 512, 3, 3
    model = SAM(SAMConfig(X=config.num_bits + 1, Y=config.num_bits, N=N, W=config.W, R=config.R, K=N, H=config.H,
                          engine="dense"), rng=np.random.default_rng(0))
    _, cache = model.forward(np.random.default_rng(2).standard_normal((T, B, config.num_bits + 1)))
    measured = records_bytes(cache, model.params) / (T * B)
    assert abs(measured - (a + b * N)) < 0.01 * measured


def test_curriculum_approximate_index_is_exact_from_an_empty_memory(load_demo):
    """From the empty memory every sequence starts with, the k-d tree lookup (the demo's default) chooses
    exactly the exact top-K sets, so the outputs agree bit for bit (the docstring's claim; LSH does not:
    it hashes the written rows too)."""
    demo = load_demo("sam_curriculum")
    results = {}
    for index in ("exact", "kdtree"):
        runner = demo.Runner(demo.Config(log_n=9, H=16, index=index))
        data = demo.copy_batch(runner.config, np.random.default_rng(5), 12, 12)
        ys, cache = runner.forward(data.inputs)
        results[index] = (ys, cache.record.read_index.copy(), cache.record.lra.copy())
        runner.model.backward(np.zeros_like(ys), cache)
        assert runner.memory_is_empty()
    for index in ("kdtree",):
        np.testing.assert_array_equal(results[index][1], results["exact"][1])
        np.testing.assert_array_equal(results[index][2], results["exact"][2])
        np.testing.assert_array_equal(results[index][0], results["exact"][0])


def test_unknown_flags_are_errors(load_demo):
    for name in ("sam_recall", "sam_curriculum"):
        demo = load_demo(name)
        with pytest.raises(SystemExit):
            demo.main(["--no-such-flag"])
