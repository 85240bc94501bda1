"""demos/nam_listops.py with --quick: it runs in seconds, the training loss falls, the summary holds
accuracies by length and the majority-class rate of the test set, the PNG is written."""

from __future__ import annotations

import numpy as np
import pytest


def test_nam_listops_quick_learns_and_writes_the_plot(tmp_path, load_demo):
    pytest.importorskip("matplotlib")
    demo = load_demo("nam_listops")
    summary = demo.main(["--quick", "--out", str(tmp_path)])
    assert set(demo.kind_list(demo.QUICK["kinds"])) == {"nam", "softmax"}
    for kind in ("nam", "softmax"):
        run = summary[kind]
        assert run["steps"] == demo.QUICK["steps"]
        assert run["final_loss"] < run["initial_loss"]
        assert 0.0 <= run["accuracy"] <= 1.0 and run["by_length"]
    assert 0.1 <= summary["majority"] < 0.5
    path = tmp_path / "nam_listops.png"
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_accuracy_by_length_bins_rows_by_token_count(load_demo):
    demo = load_demo("nam_listops")
    correct = np.array([True, False, True, True])
    lengths = np.array([8, 15, 16, 63])
    assert demo.accuracy_by_length(correct, lengths) == {"8-15": 0.5, "16-23": 1.0, "48-63": 1.0}


def test_unknown_flags_are_errors_and_quick_keeps_given_flags(load_demo):
    demo = load_demo("nam_listops")
    for bad in (["--no-such-flag"], ["--dtype", "float16"], ["--kinds", "nam,performer"], ["--kinds", ""]):
        with pytest.raises(SystemExit):
            demo.parse_config(bad)
    assert demo.parse_config(["--quick", "--steps", "7"]).steps == 7
    assert demo.parse_config([]).steps == demo.Config().steps
