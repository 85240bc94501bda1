"""The DNC repeat-copy demo's quick mode runs, learns (the loss falls) and writes its two PNGs."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")


def test_quick_mode_learns_and_writes_plots(tmp_path, capsys, load_demo):
    demo = load_demo("dnc_repeat_copy")
    result = demo.main(["--quick", "--out", str(tmp_path)])
    assert result["final_loss"] < 0.9 * result["first_loss"]        # measured 11.0 -> 9.1 nats per sequence
    assert result["best_bit_errors"] < 5.0                           # untrained: ~5.5 (measured)
    for name in ("dnc_repeat_copy_loss.png", "dnc_repeat_copy_memory.png"):
        path = tmp_path / name
        assert path.exists() and path.stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "step 120/120" in out and "strengths='softplus'" in out and "usage_write_grad=False" in out


def test_the_model_follows_deepmind_dnc_and_the_b6_cpu_size(load_demo):
    demo = load_demo("dnc_repeat_copy")
    config = demo.Config()
    model = demo.make_model(config)
    c = model.config
    assert (c.X, c.Y, c.N, c.W, c.R, c.H, c.layers) == (6, 5, 16, 16, 4, 64, 1)
    assert (c.strengths, c.usage_write_grad, c.clip) == ("softplus", False, 20.0)
    assert model.controller_grad_clip is None
    assert (config.batch, config.lr, config.clip) == (16, 1e-3, 50.0)
    paper = demo.make_model(demo.Config(strengths="oneplus", usage_write_grad=True, controller_clip=0.0,
                                        controller_grad_clip=10.0))
    assert (paper.config.strengths, paper.config.usage_write_grad, paper.config.clip) == ("oneplus", True, None)
    assert paper.controller_grad_clip == 10.0


def test_flags_parse_booleans_and_reject_unknown_ones(load_demo):
    demo = load_demo("dnc_repeat_copy")
    args = demo.build_parser().parse_args(["--usage-write-grad", "false", "--controller-grad-clip", "10"])
    assert args.usage_write_grad is False and args.controller_grad_clip == 10.0
    assert demo.build_parser().parse_args(["--usage-write-grad", "True"]).usage_write_grad is True
    with pytest.raises(SystemExit):
        demo.build_parser().parse_args(["--usage-write-grad", "maybe"])
    with pytest.raises(SystemExit):
        demo.main(["--no-such-flag"])
