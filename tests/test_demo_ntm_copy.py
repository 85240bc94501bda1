"""demos/ntm_copy.py --quick: runs in seconds, the held-out loss falls, the PNGs are written; the
length curriculum widens when (and only when) the held-out errors allow it."""

from __future__ import annotations

import pytest


def test_quick_demo_learns_and_writes_the_plots(tmp_path, load_demo):
    pytest.importorskip("matplotlib")
    demo = load_demo("ntm_copy")
    summary = demo.main(["--quick", "--out", str(tmp_path)])
    assert summary["steps"] == demo.QUICK["steps"]
    assert summary["final_loss"] < 0.8 * summary["initial_loss"]
    assert 0.0 <= summary["bit_errors"] < 13.5
    assert summary["seconds"] > 0
    rows = summary["generalisation"]
    assert [row["length"] for row in rows] == list(range(1, demo.QUICK["gen_max_len"] + 1))
    assert all(0.0 <= row["perfect"] <= 1.0 and row["bit_errors"] >= 0.0 for row in rows)
    assert rows[0]["bit_errors"] < rows[-1]["bit_errors"]           # short sequences are copied better
    for name in ("ntm_copy_loss.png", "ntm_copy_heads.png", "ntm_copy_generalisation.png"):
        path = tmp_path / name
        assert path.exists() and path.stat().st_size > 1000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_curriculum_widens_only_when_the_errors_allow(load_demo):
    demo = load_demo("ntm_copy")
    quick = ["--quick", "--steps", "40", "--eval-every", "20", "--gen-max-len", "3", "--no-plots"]
    always = demo.main(quick + ["--widen-below", "1e9"])            # every evaluation may widen
    assert always["widened_at"] == [20]                              # start_len 2 -> max_len 3, then stop
    assert always["full_length_step"] == 20
    never = demo.main(quick + ["--widen-below", "0"])                # errors are never below 0
    assert never["widened_at"] == [] and never["full_length_step"] is None
    assert never["plots"] == []
    off = demo.main(quick + ["--start-len", "3"])                    # no curriculum at all
    assert off["widened_at"] == [] and off["full_length_step"] == 0


def test_evaluate_restricts_to_the_lengths_trained_so_far(load_demo):
    import numpy as np
    demo = load_demo("ntm_copy")
    cfg = demo.parse_config(["--quick"])
    model = demo.NTM(demo.NTMConfig(X=cfg.bits + 1, Y=cfg.bits, N=cfg.N, W=cfg.W, H=cfg.H),
                     rng=np.random.default_rng(0))
    held_out = [demo.copy_batch(np.random.default_rng(s), cfg, 16, same_length=False) for s in range(2)]
    everything = demo.evaluate(model, held_out, upto=cfg.max_len)
    assert everything["bit_errors_upto"] == pytest.approx(everything["bit_errors"])
    short = demo.evaluate(model, held_out, upto=1)["bit_errors_upto"]
    assert 0.0 <= short <= cfg.bits                                  # one vector: at most `bits` errors


def test_unknown_flags_and_bad_lengths_are_errors(load_demo):
    demo = load_demo("ntm_copy")
    with pytest.raises(SystemExit):
        demo.main(["--no-such-flag"])
    with pytest.raises(SystemExit):
        demo.parse_config(["--max-len", "20"])                       # beyond gen_max_len = 16
    assert demo.parse_config(["--quick", "--steps", "7"]).steps == 7
    assert demo.parse_config(["--quick"]).max_len == demo.QUICK["max_len"]
    assert demo.parse_config([]).steps == demo.Config().steps


def test_quick_demo_trains_in_float32(monkeypatch, load_demo):
    """--dtype float32: parameters and gradients stay float32 (the loss gradient does not promote
    them), and the quick run still learns."""
    demo = load_demo("ntm_copy")
    seen = set()
    original_step = demo.Adam.step

    def step(self, grads):
        seen.update(str(g.dtype) for g in grads.values())
        seen.update(str(p.dtype) for p in self.params.values())
        return original_step(self, grads)

    monkeypatch.setattr(demo.Adam, "step", step)
    summary = demo.main(["--quick", "--no-plots", "--dtype", "float32"])
    assert seen == {"float32"}
    assert summary["final_loss"] < 0.8 * summary["initial_loss"]
