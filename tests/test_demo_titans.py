"""The Titans demos' quick modes (demos/titans_memorisation.py, titans_needles.py, titans_forgetting.py):
each runs in seconds, shows what its docstring claims at a small size, and writes its PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def assert_png(path: Path) -> None:
    assert path.exists() and path.stat().st_size > 5_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_memorisation_quick_reproduces_the_spec_table(tmp_path, load_demo):
    pytest.importorskip("matplotlib")
    demo = load_demo("titans_memorisation")
    result = demo.main(["--quick", "--out", str(tmp_path)])
    cells = {(r["memory"], r["theta"], r["N"]): (round(r["cos"], 2), round(r["acc"], 2)) for r in result["rows"]}
    # spec A6.2, T1 (linear memory): N = 8, 32, 128 at theta = 0.5 and 0.25
    assert cells[("linear", 0.5, 8)] == (0.93, 1.0)
    assert cells[("linear", 0.5, 32)] == (0.68, 0.81)
    assert cells[("linear", 0.5, 128)] == (0.23, 0.2)
    assert cells[("linear", 0.25, 32)] == (0.75, 1.0)
    assert cells[("mlp", 0.5, 32)][1] == 0.81                      # the untrained MLP is no better
    assert_png(tmp_path / "titans_memorisation.png")


def test_forgetting_quick_shows_recency_and_the_momentum_delay(tmp_path, load_demo):
    pytest.importorskip("matplotlib")
    demo = load_demo("titans_forgetting")
    result = demo.main(["--quick", "--out", str(tmp_path)])
    runs = {(r["eta"], r["alpha"]): r for r in result["results"]}
    assert len(runs) == 6
    plain = runs[(0.0, 0.0)]
    assert plain["cos"][0] > 0.99                                  # theta = 0.5 writes a unit key exactly
    assert plain["cos"][0] > plain["cos"][16] > plain["cos"][64]    # newer pairs are recalled better
    assert runs[(0.0, 0.1)]["recalled"] < plain["recalled"]         # forgetting shortens the memory
    momentum = runs[(0.9, 0.0)]
    assert momentum["cos"][0] < 0.5 < momentum["cos"][8]            # momentum writes late
    assert_png(tmp_path / "titans_forgetting.png")


def test_needles_quick_trains_every_model_and_the_lmm_learns(tmp_path, capsys, load_demo):
    pytest.importorskip("matplotlib")
    demo = load_demo("titans_needles")
    result = demo.main(["--quick", "--out", str(tmp_path)])
    runs = {r["model"]: r for r in result["runs"]}
    assert set(runs) == {"lmm", "mag", "attn"}
    assert result["lengths"] == [16, 32]
    for run in runs.values():
        assert len(run["losses"]) == demo.QUICK["steps"] and np.all(np.isfinite(run["losses"]))
        assert all(0.0 <= acc <= 1.0 for acc in run["accuracy"].values())
    lmm = runs["lmm"]
    assert lmm["final_loss"] < 0.5 * lmm["first_loss"]               # from ln 16 towards 0 in 60 steps
    assert lmm["accuracy"][16] > 0.5                                # chance is 1/16
    assert "step 60/60" in capsys.readouterr().out
    assert_png(tmp_path / "titans_needles.png")
    assert len(lmm["correct"]) == len(lmm["distance"]) == 2 * demo.QUICK["eval_sequences"]


@pytest.mark.parametrize("name", ["titans_memorisation", "titans_needles", "titans_forgetting"])
def test_bad_flags_are_errors(name, load_demo):
    demo = load_demo(name)
    with pytest.raises(SystemExit):
        demo.main(["--no-such-flag"])
    assert demo.parse_config(["--quick", "--seed", "3"]).seed == 3
    assert demo.parse_config([]) == demo.Config()


def test_bad_option_values_name_the_option(load_demo):
    with pytest.raises(ValueError, match="--pairs"):
        load_demo("titans_memorisation").main(["--no-plots", "--pairs", "eight"])
    with pytest.raises(ValueError, match="--alphas"):
        load_demo("titans_forgetting").main(["--no-plots", "--alphas", "1.5"])
    with pytest.raises(ValueError, match="--models"):
        load_demo("titans_needles").main(["--no-plots", "--models", "rnn"])
