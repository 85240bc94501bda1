"""demos/ntm_associative_recall.py and demos/ntm_priority_sort.py --quick: each runs in seconds,
its held-out loss falls below the untrained model's, its bit errors are below chance, and it
writes its PNGs."""

from __future__ import annotations

from pathlib import Path

import pytest


def assert_pngs(directory: Path, names) -> None:
    for name in names:
        path = directory / name
        assert path.exists() and path.stat().st_size > 1000, name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_associative_recall_quick_learns_and_writes_the_plots(tmp_path, load_demo):
    pytest.importorskip("matplotlib")
    demo = load_demo("ntm_associative_recall")
    summary = demo.main(["--quick", "--out", str(tmp_path)])
    assert summary["steps"] == demo.QUICK["steps"]
    assert summary["final_loss"] < 0.9 * summary["initial_loss"]
    assert summary["last_train_loss"] < summary["first_train_loss"]
    chance = demo.Config().bits * demo.Config().item_len / 2                   # half the 8 answer bits
    assert 0.0 <= summary["bit_errors"] < chance
    assert 0.0 <= summary["perfect"] <= 1.0
    assert_pngs(tmp_path, ["ntm_associative_recall_loss.png", "ntm_associative_recall_heads.png"])


def test_priority_sort_quick_learns_and_writes_the_plots(tmp_path, load_demo):
    pytest.importorskip("matplotlib")
    demo = load_demo("ntm_priority_sort")
    summary = demo.main(["--quick", "--out", str(tmp_path)])
    assert summary["steps"] == demo.QUICK["steps"]
    assert summary["final_loss"] < 0.9 * summary["initial_loss"]
    assert 0.0 <= summary["bit_errors"] < 8.0                                  # chance: half of 16 answer bits
    assert len(summary["positions"]) == demo.Config().top
    assert abs(sum(summary["positions"]) - summary["bit_errors"]) < 1e-9       # the positions split the errors
    assert_pngs(tmp_path, ["ntm_priority_sort_loss.png", "ntm_priority_sort_heads.png"])


def test_order_blind_reference_is_the_binomial_minority(load_demo):
    demo = load_demo("ntm_priority_sort")
    assert demo.order_blind_errors(demo.Config()) == pytest.approx(5.5)          # 132/64/6 per bit x 16 bits
    assert demo.order_blind_errors(demo.Config(items=2, top=1, bits=1)) == pytest.approx(0.25)
    assert demo.order_blind_errors(demo.Config(items=1, top=1)) == 0.0


@pytest.mark.parametrize("name", ["ntm_associative_recall", "ntm_priority_sort"])
def test_unknown_flags_are_errors_and_quick_keeps_given_flags(name, load_demo):
    demo = load_demo(name)
    with pytest.raises(SystemExit):
        demo.main(["--no-such-flag"])
    assert demo.parse_config(["--quick", "--steps", "7"]).steps == 7
    assert demo.parse_config(["--quick"]).steps == demo.QUICK["steps"]
    assert demo.parse_config([]).steps == demo.Config().steps
