"""The DNC copy demo's quick mode runs, learns (the loss falls), evaluates generalisation to longer
sequences and writes its three PNGs."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")


def test_quick_mode_learns_and_writes_plots(tmp_path, capsys, load_demo):
    demo = load_demo("dnc_copy")
    result = demo.main(["--quick", "--out", str(tmp_path)])
    assert result["final_loss"] < 0.8 * result["first_loss"]
    assert result["best_bit_errors"] < 4.0            # chance: half of ~12 target bits per sequence
    for name in ("dnc_copy_loss.png", "dnc_copy_memory.png", "dnc_copy_generalisation.png"):
        path = tmp_path / name
        assert path.exists() and path.stat().st_size > 10_000
    rows = result["generalisation"]
    assert [row["length"] for row in rows] == list(range(1, 7))           # quick: lengths 1..6
    assert all(0.0 <= row["perfect"] <= 1.0 and row["bit_errors"] >= 0.0 for row in rows)
    assert rows[0]["bit_errors"] < rows[-1]["bit_errors"]                 # longer is harder (measured 0 vs 15.6)
    out = capsys.readouterr().out
    assert "step 150/150" in out and "generalisation" in out and "(longer than trained)" in out


def test_unknown_flags_are_errors(load_demo):
    demo = load_demo("dnc_copy")
    with pytest.raises(SystemExit):
        demo.main(["--no-such-flag"])
