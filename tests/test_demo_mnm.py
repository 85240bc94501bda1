"""The MNM demos beyond M1 (spec B6.2): the dictionary-inference demo (M3) runs in quick mode, learns
(both writers' loss falls, MNM-p beats predicting zero and the nearest-key slot memory on unseen
keys) and writes its PNGs; its model's hand-written backward agrees with the autodiff twin and with
central differences; its baselines do what they say."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from minimem import autodiff as ad
from minimem.memory.mnm_oneshot import OneShotConfig

DEMOS = Path(__file__).resolve().parents[1] / "demos"


def _load_demo(monkeypatch, name: str):
    """Import demos/<name>.py as a module (registered in sys.modules, which dataclasses need)."""
    spec = importlib.util.spec_from_file_location(f"{name}_demo", DEMOS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_dictionary_quick_mode_learns_and_writes_plots(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    demo = _load_demo(monkeypatch, "mnm_dictionary")
    result = demo.main(["--quick", "--out", str(tmp_path)])
    runs = {r["writer"]: r for r in result["runs"]}
    assert set(runs) == {"local", "grad"}
    base = result["baselines"]
    assert 0.3 < base["zero"] < 0.5 and base["nearest"] > base["zero"]   # the slot memory is worse than zero
    for r in runs.values():
        assert r["final_loss"] < 0.8 * r["first_loss"]
        assert r["after"] < r["before"]
    assert runs["local"]["after"] < 0.85 * base["zero"]                   # generalises to unseen keys
    for name in ("mnm_dictionary_mse.png", "mnm_dictionary_reads.png"):
        path = tmp_path / name
        assert path.exists() and path.stat().st_size > 10_000
    assert "step 150/150" in capsys.readouterr().out


@pytest.mark.parametrize("writer", ["local", "grad"])
def test_dictionary_backward_matches_autodiff_and_finite_differences(monkeypatch, writer):
    demo = _load_demo(monkeypatch, "mnm_dictionary")
    model = demo.MNMDictionary(OneShotConfig(d=4, h=5, writer=writer, beta_max=2.0), rng=np.random.default_rng(1))
    keys, values = demo.make_dictionary(np.random.default_rng(2), 3, 2, 2, 4)
    inputs = (keys, values[:3])
    (reads, meta), cache = model.forward(inputs)
    assert reads.shape == (2, 2, 4) and meta.shape == (3, 2)
    rng = np.random.default_rng(3)
    douts = (rng.standard_normal(reads.shape), rng.standard_normal(meta.shape))
    manual = model.backward(douts, cache)
    tparams = {k: ad.Tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}
    treads, tmeta = model.forward_autodiff(tparams, inputs)
    ((treads * douts[0]).sum() + (tmeta * douts[1]).sum()).backward()
    np.testing.assert_allclose(treads.data, reads, rtol=1e-12, atol=1e-14)
    for name, value in manual.items():
        np.testing.assert_allclose(tparams[name].grad, value, rtol=1e-8, atol=1e-11)

    def objective() -> float:
        (r, m), _ = model.forward(inputs)
        return float(np.sum(r * douts[0]) + np.sum(m * douts[1]))

    eps = 1e-6
    for name, value in model.params.items():
        flat = value.reshape(-1)
        for i in range(0, flat.size, max(1, flat.size // 4)):        # a few entries of every tensor
            saved = flat[i]
            flat[i] = saved + eps
            up = objective()
            flat[i] = saved - eps
            down = objective()
            flat[i] = saved
            exact = manual[name].reshape(-1)[i]
            assert abs((up - down) / (2 * eps) - exact) < 1e-6 * (1 + abs(exact))


def test_dictionary_task_and_baselines(monkeypatch):
    demo = _load_demo(monkeypatch, "mnm_dictionary")
    keys, values = demo.make_dictionary(np.random.default_rng(0), 16, 16, 256, 16)
    assert keys.shape == values.shape == (32, 256, 16)
    assert abs(keys.std() - 0.5) < 0.01
    assert abs(np.mean(values ** 2) - 0.39) < 0.02                       # E tanh(N(0, 1))^2 = 0.394
    # A query equal to a stored key gets exactly that key's value back from the slot memory.
    keys[16] = keys[5]
    looked_up = demo.nearest_key_lookup(keys, values, 16)
    np.testing.assert_array_equal(looked_up[0], values[5])


def test_dictionary_bad_flags_are_errors(monkeypatch):
    demo = _load_demo(monkeypatch, "mnm_dictionary")
    with pytest.raises(SystemExit):
        demo.main(["--no-such-flag"])
    with pytest.raises(ValueError, match="--writers"):
        demo.main(["--quick", "--no-plots", "--writers", "slots"])


def test_recall_quick_mode_runs_and_writes_plots(tmp_path, monkeypatch):
    """M2 needs thousands of steps to leave its plateau (spec B6.2), so the quick run only checks that
    the pipeline runs, stays finite, is already above chance and writes its PNGs."""
    pytest.importorskip("matplotlib")
    demo = _load_demo(monkeypatch, "mnm_recall")
    result = demo.main(["--quick", "--out", str(tmp_path)])
    assert result["diverged"] is None and result["steps_done"] == 60
    assert np.isfinite(result["final_loss"]) and result["final_loss"] < result["first_loss"]
    assert 0.0 <= result["after"] <= 1.0 and 0.4 < result["guess"] < 0.7          # P = 2: about 1 / 1.94
    for name in ("mnm_recall_curves.png", "mnm_recall_episode.png"):
        path = tmp_path / name
        assert path.exists() and path.stat().st_size > 10_000


def test_recall_episodes(monkeypatch):
    demo = _load_demo(monkeypatch, "mnm_recall")
    xs, targets = demo.make_recall(np.random.default_rng(0), 4, 64)
    assert xs.shape == (8, 64, 34) and targets.shape == (4, 64)
    write, query = xs[:4], xs[4:]
    assert np.all(write[..., 32] == 1) and np.all(write[..., 33] == 0) and np.all(query[..., 33] == 1)
    assert np.all(query[..., 16:32] == 0)
    for b in range(64):
        keys = np.argmax(write[:, b, :16], axis=1)
        assert len(set(keys)) == 4                                                   # distinct keys
        for t in range(4):                                                           # target = stored value
            asked = np.argmax(query[t, b, :16])
            slot = list(keys).index(asked)
            assert targets[t, b] == np.argmax(write[slot, b, 16:32])
    with pytest.raises(ValueError, match="--P"):
        demo.main(["--quick", "--no-plots", "--P", "17"])
