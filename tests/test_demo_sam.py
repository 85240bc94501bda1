"""The SAM demos' quick modes run: the copy demo learns (the loss falls) and draws the sparse access
pattern; the scaling demo measures tiny sizes and draws its log-log plot (numbers not checked)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")


def test_copy_quick_mode_learns_and_draws_the_access_pattern(tmp_path, capsys, load_demo):
    demo = load_demo("sam_copy")
    result = demo.main(["--quick", "--out", str(tmp_path)])
    assert result["final_loss"] < 0.8 * result["first_loss"]     # measured 8.7 -> 4.8 nats per sequence
    assert result["best_bit_errors"] < 4.0                       # chance: half of ~12 target bits
    for name in ("sam_copy_loss.png", "sam_copy_access.png"):
        path = tmp_path / name
        assert path.exists() and path.stat().st_size > 10_000
    assert "step 150/150" in capsys.readouterr().out


def test_copy_access_pattern_is_sparse(load_demo):
    """K nonzeros per head and step; at most R K + 1 written slots; the LRA slot is written."""
    demo = load_demo("sam_copy")
    config = demo.Config(**{**demo.QUICK, "steps": 1})
    from minimem.memory.sam import SAM, SAMConfig
    model = SAM(SAMConfig(X=config.num_bits + 1, Y=config.num_bits, N=config.N, W=config.W, R=config.R,
                          K=config.K, H=config.H), rng=np.random.default_rng(0))
    pattern = demo.access_pattern(model, config)
    T = pattern["write"].shape[1]
    assert pattern["read"].shape == (config.R, config.N, T)
    assert np.all(np.count_nonzero(pattern["read"], axis=1) <= config.K)
    np.testing.assert_allclose(pattern["read"].sum(axis=1), 1.0, atol=1e-12)
    assert np.all(np.count_nonzero(pattern["write"], axis=0) <= config.R * config.K + 1)
    assert np.all(pattern["write"][pattern["lra"], np.arange(T)] > 0)


def test_scaling_quick_mode_writes_the_plot_and_the_numbers(tmp_path, load_demo):
    demo = load_demo("sam_scaling")
    summary = demo.main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "sam_scaling.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "sam_scaling.json").read_text())
    assert [e["N"] for e in saved["results"]] == [64, 256]
    assert set(saved["results"][0]["contestants"]) == {"dense", "sam exact", "sam lsh"}
    assert set(summary["slopes"]) == {"dense", "sam exact", "sam lsh"}


def test_unknown_flags_are_errors(load_demo):
    for name in ("sam_copy", "sam_scaling"):
        demo = load_demo(name)
        with pytest.raises(SystemExit):
            demo.main(["--no-such-flag"])
