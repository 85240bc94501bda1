"""demos/ntm_copy.py --quick: runs in seconds, the held-out loss falls, the PNGs are written."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "demos" / "ntm_copy.py"


def load_demo():
    spec = importlib.util.spec_from_file_location("ntm_copy_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module              # dataclasses look their module up while defining Config
    spec.loader.exec_module(module)
    return module


def test_quick_demo_learns_and_writes_the_plots(tmp_path):
    pytest.importorskip("matplotlib")
    demo = load_demo()
    summary = demo.main(["--quick", "--out", str(tmp_path)])
    assert summary["steps"] == demo.QUICK["steps"]
    assert summary["final_loss"] < 0.8 * summary["initial_loss"]
    assert 0.0 <= summary["bit_errors"] < 13.5
    assert summary["seconds"] > 0
    for name in ("ntm_copy_loss.png", "ntm_copy_heads.png"):
        path = tmp_path / name
        assert path.exists() and path.stat().st_size > 1000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_flags_are_errors():
    demo = load_demo()
    with pytest.raises(SystemExit):
        demo.main(["--no-such-flag"])
    assert demo.parse_config(["--quick", "--steps", "7"]).steps == 7
    assert demo.parse_config(["--quick"]).max_len == demo.QUICK["max_len"]
    assert demo.parse_config([]).steps == demo.Config().steps
