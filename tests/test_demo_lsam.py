"""demos/lsam_recall.py with --quick: it runs in seconds, both models' training loss falls, the
summary holds accuracy for every n of the protocol, the memory probe reads the example's own keys,
and both PNGs are written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def assert_pngs(directory: Path, names) -> None:
    for name in names:
        path = directory / name
        assert path.exists() and path.stat().st_size > 1000, name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lsam_recall_quick_learns_and_writes_the_plots(tmp_path, load_demo):
    pytest.importorskip("matplotlib")
    demo = load_demo("lsam_recall")
    summary = demo.main(["--quick", "--out", str(tmp_path)])
    for name in ("lsam", "lstm"):
        run = summary[name]
        assert run["steps"] == demo.QUICK["steps"]
        assert run["final_loss"] < 0.95 * run["initial_loss"]
        assert sorted(run["by_n"]) == list(range(2, 13))
        assert all(0.0 <= a <= 1.0 for a in run["by_n"].values())
        assert run["id"] == pytest.approx(np.mean([run["by_n"][n] for n in range(2, 7)]))
        assert run["ood"] == pytest.approx(np.mean([run["by_n"][n] for n in range(7, 13)]))
    assert 0.0 <= summary["probe_correct"] <= 1.0
    assert_pngs(tmp_path, ("lsam_recall.png", "lsam_recall_memory.png"))


def test_memory_probe_queries_every_stored_key_of_the_row(load_demo):
    demo = load_demo("lsam_recall")
    cfg = demo.parse_config(["--quick"])
    model = demo.make_model("lsam", cfg)
    example = demo.nt.make_lsam_recall(np.random.default_rng(0), 1, n_min=5, n_max=5, maxlen=demo.T_ROW)
    probe = demo.probe_memory(model, example, np.float32)
    tokens = example.tokens[:, 0]
    assert probe["probs"].shape == (5, 10)
    np.testing.assert_allclose(probe["probs"].sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probe["values"], tokens[-11:-2:2])
    np.testing.assert_array_equal(probe["keys"], tokens[-12:-2:2] - demo.VOCAB["key0"])
    assert tokens[-1] - demo.VOCAB["key0"] in probe["keys"]      # the real query is one of them
    assert probe["gates"].shape == (demo.T_ROW, cfg.H)


def test_loss_scores_only_the_last_step(load_demo):
    demo = load_demo("lsam_recall")
    outputs = np.random.default_rng(1).standard_normal((4, 3, 10))
    loss, doutputs = demo.loss_fn(outputs, np.array([1, 2, 3]))
    assert loss > 0 and np.all(doutputs[:-1] == 0) and np.any(doutputs[-1] != 0)


def test_unknown_flags_and_bad_ranges_are_errors_and_quick_keeps_given_flags(load_demo):
    demo = load_demo("lsam_recall")
    for bad in (["--no-such-flag"], ["--dtype", "float16"], ["--models", "lsam,dnc"], ["--train-max", "12"],
                ["--H", "3"]):
        with pytest.raises(SystemExit):
            demo.parse_config(bad)
    assert demo.parse_config(["--quick", "--steps", "7"]).steps == 7
    assert demo.parse_config(["--quick"]).batch == demo.QUICK["batch"]
    assert demo.parse_config([]).steps == demo.Config().steps == 3000
