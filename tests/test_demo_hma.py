"""The HMA demos' quick modes (demos/hma_images.py, demos/hma_graphs.py): they train ERM and HMA on
every backbone, measure the batch-dependence gap (zero for ERM, non-zero for HMA: spec B9.6) and
write their PNGs. Nothing here asks HMA to beat ERM (spec B7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def assert_png(path: Path) -> None:
    assert path.exists() and path.stat().st_size > 5_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def check_runs(results: list) -> None:
    for r in results:
        assert 0.0 <= r["test_id"] <= 1.0 and 0.0 <= r["test_ood"] <= 1.0
        assert np.isfinite(r["first_loss"]) and np.isfinite(r["final_loss"])
        dep = r["dependence"]
        if r["model"] == "erm":      # row-wise model: alone, in a batch or reshuffled, the same logits
            assert dep["alone_max_logit_change"] < 1e-10
            assert dep["alone_flip_rate"] == 0.0 and dep["reshuffle_flip_rate"] == 0.0
        else:                        # attention between datapoints: the rest of the batch matters
            assert dep["alone_max_logit_change"] > 1e-4
            att = r["attention"]
            assert 0.0 < att["token_mass"] < 1.0          # the rest of block A's mass is on the batch rows
            assert np.all(att["tokens"] >= 0) and np.all(att["tokens"].sum(axis=1) <= 1.0 + 1e-12)


def test_images_quick_trains_every_backbone_and_measures_the_gap(tmp_path, load_demo):
    pytest.importorskip("matplotlib")
    demo = load_demo("hma_images")
    summary = demo.main(["--quick", "--out", str(tmp_path)])
    runs = {(r["backbone"], r["model"]): r for r in summary["results"]}
    assert set(runs) == {(b, m) for b in ("mlp", "cnn", "transformer") for m in ("erm", "hma")}
    check_runs(summary["results"])
    for which in ("erm", "hma"):
        mlp = runs[("mlp", which)]
        assert mlp["steps"] == demo.QUICK["steps_mlp"]
        assert mlp["final_loss"] < 0.7 * mlp["first_loss"]          # from ln 5 = 1.61
        assert mlp["test_id"] > 0.4                                   # chance 0.2
    erm = runs[("mlp", "erm")]
    assert erm["test_id"] - erm["test_ood"] > 0.1                    # the colour shortcut is learned (the task works)
    rows = {(r["backbone"], r["model"]): r for r in summary["rows"]}
    assert rows[("mlp", "erm")]["test_id"] == (erm["test_id"], 0.0)  # one seed: std 0
    assert_png(tmp_path / "hma_images_accuracy.png")
    assert_png(tmp_path / "hma_images_attention.png")


def test_graphs_quick_trains_and_measures_the_gap(tmp_path, load_demo):
    pytest.importorskip("matplotlib")
    demo = load_demo("hma_graphs")
    summary = demo.main(["--quick", "--out", str(tmp_path)])
    runs = {r["model"]: r for r in summary["results"]}
    assert set(runs) == {"erm", "hma"}
    check_runs(summary["results"])
    per_epoch = demo.QUICK["n_train"] // demo.Config.batch
    assert all(r["steps"] == demo.QUICK["epochs"] * per_epoch for r in runs.values())
    assert runs["hma"]["attention"]["class_mass"].shape == (3, 3)
    assert_png(tmp_path / "hma_graphs_accuracy.png")
    assert_png(tmp_path / "hma_graphs_attention.png")


@pytest.mark.parametrize("name", ["hma_images", "hma_graphs"])
def test_flags(name, load_demo):
    demo = load_demo(name)
    with pytest.raises(SystemExit):
        demo.main(["--no-such-flag"])
    assert demo.parse_config(["--quick", "--seeds", "3"]).seeds == "3"
    assert demo.parse_config([]) == demo.Config()
    with pytest.raises(ValueError, match="--seeds"):
        demo.main(["--no-plots", "--seeds", "one"])
    with pytest.raises(ValueError, match="--batch"):
        demo.main(["--no-plots", "--quick", "--batch", "48"])          # does not divide N_r


def test_images_backbone_option_is_checked(load_demo):
    with pytest.raises(ValueError, match="--backbones"):
        load_demo("hma_images").main(["--no-plots", "--backbones", "mlp,rnn"])
