"""The NAM few-shot demo's quick mode runs, learns (stage-1 and every head's stage-2 loss fall,
novel accuracy well above chance) and writes its two PNGs; bad flags are errors."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")


def test_quick_mode_learns_and_writes_plots(tmp_path, capsys, load_demo):
    demo = load_demo("nam_fewshot")
    result = demo.main(["--quick", "--out", str(tmp_path)])
    assert result["stage1_final_loss"] < 0.2 * result["stage1_first_loss"]
    assert {(r["head"], r["shots"]) for r in result["runs"]} == {(h, k) for h in ("cosine", "nam") for k in (1, 5)}
    for r in result["runs"]:
        assert r["final_loss"] < r["first_loss"]
        assert r["test"]["accuracy_novel"] > 0.5                      # chance is 0.2
        for key in ("fp_novel_to_base", "fp_base_to_novel"):
            assert 0.0 <= r["test"][key] <= 1.0
    for name in ("nam_fewshot_metrics.png", "nam_fewshot_memory.png"):
        path = tmp_path / name
        assert path.exists() and path.stat().st_size > 10_000
    assert "stage 1 step 150/150" in capsys.readouterr().out


def test_bad_flags_are_errors(load_demo):
    demo = load_demo("nam_fewshot")
    with pytest.raises(SystemExit):
        demo.main(["--no-such-flag"])
    with pytest.raises(ValueError):
        demo.main(["--quick", "--no-plots", "--mode", "parallel"])
    with pytest.raises(ValueError):
        demo.main(["--quick", "--no-plots", "--K_b", "1000"])
