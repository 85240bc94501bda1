"""The VMA few-shot generation demo's quick mode runs, learns (the held-out importance-weighted
bound of both VMA and the memoryless VAE improves during training), reports the address metrics
within their ranges and writes its two PNGs."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")


def test_quick_mode_improves_the_bound_and_writes_plots(tmp_path, capsys, load_demo):
    demo = load_demo("vma_fewshot")
    result = demo.main(["--quick", "--out", str(tmp_path)])
    for name in ("vma", "vae"):
        curve = result["train"][name]["curve"]
        assert curve[0]["step"] == 0 and curve[-1]["step"] == 150
        assert curve[-1]["nll"] < curve[0]["nll"] - 10.0          # held-out NLL (nats) fell
        assert np.isfinite(result["train"][name]["losses"]).all()
    for row in result["shots"] + result["classes"]:
        v, N = row["vma"], row["C"] * row["n"]
        assert 0.0 <= v["KL_a"] <= np.log(N) + 1e-5               # A.9: 0 <= KL_a <= log N
        assert 0.0 <= v["mass"] <= 1.0 + 1e-6
        assert v["nll"] <= v["neg_elbo"] + 1.0                    # the S-sample bound is the tighter one
    one_class = [r for r in result["classes"] if r["C"] == 1]
    assert one_class and abs(one_class[0]["vma"]["mass"] - 1.0) < 1e-5   # one class in memory: all mass on it
    for name in ("vma_fewshot_metrics.png", "vma_fewshot_samples.png"):
        path = tmp_path / name
        assert path.exists() and path.stat().st_size > 10_000
    assert "step 150/150" in capsys.readouterr().out


def test_bad_flags_are_errors(load_demo):
    demo = load_demo("vma_fewshot")
    with pytest.raises(SystemExit):
        demo.main(["--no-such-flag"])
    with pytest.raises(ValueError, match="--test-shots"):
        demo.main(["--quick", "--no-plots", "--test-shots", "two"])
    with pytest.raises(ValueError, match="--samples"):
        demo.main(["--quick", "--no-plots", "--samples", "1"])
