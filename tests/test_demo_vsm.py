"""The VSM-style few-shot demo's quick mode runs, learns (the held-out bound of every model improves
during training), reports metrics within their ranges, consolidates the semantic memory only for
the VSM model, and writes its two PNGs."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("matplotlib")


def test_quick_mode_improves_the_bound_and_writes_plots(tmp_path, capsys, load_demo):
    demo = load_demo("vsm_fewshot")
    result = demo.main(["--quick", "--out", str(tmp_path)])
    Ns = result["config"]["Ns"]
    for name in ("vsm", "nosem", "vae"):
        curve = result["train"][name]["curve"]
        assert curve[0]["step"] == 0 and curve[-1]["step"] == result["config"]["steps"]
        assert curve[-1]["nll"] < curve[0]["nll"] - 10.0                    # held-out NLL (nats) fell
        assert np.isfinite(result["train"][name]["losses"]).all()
    for row in result["rows"]:
        v = row["vsm"]
        assert -1e-4 <= v["KL_a"] and 0.0 <= v["H_a"] <= math.log(Ns) + 1e-4
        for name in ("vsm", "nosem"):
            assert row[name]["nll"] <= row[name]["neg_elbo"] + 1.0          # the S-sample bound is the tighter one
        if row["n_c"] == 0:                                                 # no context: the recall prior is uniform
            assert v["KL_a"] == pytest.approx(math.log(Ns) - v["H_a"], abs=1e-3)
    for d in result["distractor"].values():
        assert 0.0 <= d["mass"] <= 1.0 + 1e-6
    assert result["slots_used"] >= 1                                        # consolidation ran (counts grew)
    for name in ("vsm_fewshot_metrics.png", "vsm_fewshot_samples.png"):
        path = tmp_path / name
        assert path.exists() and path.stat().st_size > 10_000
    out = capsys.readouterr().out
    assert f"step {result['config']['steps']}/{result['config']['steps']}" in out and "memoryless VAE" in out


def test_bad_flags_are_errors(load_demo):
    demo = load_demo("vsm_fewshot")
    with pytest.raises(SystemExit):
        demo.main(["--no-such-flag"])
    with pytest.raises(ValueError, match="--test-context"):
        demo.main(["--quick", "--no-plots", "--test-context", "one"])
    with pytest.raises(ValueError, match="--test-context"):
        demo.main(["--quick", "--no-plots", "--test-context", "9"])
    with pytest.raises(ValueError, match="--distractor-context"):
        demo.main(["--quick", "--no-plots", "--distractor-context", "0"])
