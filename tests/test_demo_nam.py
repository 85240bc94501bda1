"""demos/nam_tm_reverse.py and demos/nam_transformer_retrieval.py with --quick: they run in seconds,
the training loss falls, the summaries hold what the docstrings report, the PNGs are written."""

from __future__ import annotations

from pathlib import Path

import pytest


def assert_pngs(directory: Path, names) -> None:
    for name in names:
        path = directory / name
        assert path.exists() and path.stat().st_size > 1000, name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nam_tm_reverse_quick_learns_and_writes_the_plots(tmp_path, load_demo):
    pytest.importorskip("matplotlib")
    demo = load_demo("nam_tm_reverse")
    summary = demo.main(["--quick", "--out", str(tmp_path)])
    assert summary["steps"] == demo.QUICK["steps"]
    assert summary["final_loss"] < 0.8 * summary["initial_loss"]
    for model in ("nam_tm", "lstm"):
        accuracy = summary[model]
        assert set(accuracy) >= {"id", "ood_6_8"} | {f"len{n}" for n in range(1, demo.QUICK["test_max"] + 1)}
        assert all(0.0 <= value <= 1.0 for value in accuracy.values())
    assert_pngs(tmp_path, ("nam_tm_reverse_accuracy.png", "nam_tm_reverse_heads.png"))


def test_nam_transformer_retrieval_quick_learns_and_writes_the_plots(tmp_path, load_demo):
    pytest.importorskip("matplotlib")
    demo = load_demo("nam_transformer_retrieval")
    summary = demo.main(["--quick", "--out", str(tmp_path)])
    assert set(k for k in summary if "." in k) == {"one_hop.nam", "one_hop.softmax", "capacity.nam"}
    nam = summary["one_hop.nam"]
    assert nam["steps"] == demo.QUICK["steps"] and nam["final_loss"] < nam["initial_loss"]
    assert all(0.0 <= run["accuracy"] <= 1.0 for key, run in summary.items() if "." in key)
    assert_pngs(tmp_path, ("nam_transformer_retrieval.png", "nam_transformer_retrieval_attention.png"))


@pytest.mark.parametrize("name", ["nam_tm_reverse", "nam_transformer_retrieval"])
def test_unknown_flags_are_errors_and_quick_keeps_given_flags(name, load_demo):
    demo = load_demo(name)
    with pytest.raises(SystemExit):
        demo.main(["--no-such-flag"])
    with pytest.raises(SystemExit):
        demo.main(["--dtype", "float16"])
    assert demo.parse_config(["--quick", "--steps", "7"]).steps == 7
    assert demo.parse_config(["--quick"]).batch == demo.QUICK["batch"]
    assert demo.parse_config([]).steps == demo.Config().steps


def test_retrieval_rejects_unknown_attention_kinds(load_demo):
    demo = load_demo("nam_transformer_retrieval")
    with pytest.raises(SystemExit):
        demo.parse_config(["--kinds", "nam,performer"])
