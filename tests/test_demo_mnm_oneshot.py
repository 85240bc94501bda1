"""The MNM one-shot writer demo's quick mode runs, learns (every run's loss falls, the trained
MNM-p beats its initialisation) and writes its two PNGs."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")


def test_quick_mode_learns_and_writes_plots(tmp_path, capsys, load_demo):
    demo = load_demo("mnm_oneshot")
    result = demo.main(["--quick", "--out", str(tmp_path)])
    assert {(r["writer"], r["P"]) for r in result["runs"]} == {("local", 4), ("local", 8), ("grad", 4), ("grad", 8)}
    for r in result["runs"]:
        assert r["final_loss"] < 0.8 * r["first_loss"]
        if r["writer"] == "local":
            assert r["after"] > r["before"] + 0.3                   # from about chance (1/P) to well above
    for name in ("mnm_oneshot_recall.png", "mnm_oneshot_curves.png"):
        path = tmp_path / name
        assert path.exists() and path.stat().st_size > 10_000
    assert "step 150/150" in capsys.readouterr().out


def test_bad_flags_are_errors(load_demo):
    demo = load_demo("mnm_oneshot")
    with pytest.raises(SystemExit):
        demo.main(["--no-such-flag"])
    with pytest.raises(ValueError, match="--pairs"):
        demo.main(["--quick", "--no-plots", "--pairs", "four"])
