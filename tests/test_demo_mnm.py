"""The MNM demos beyond M1 (spec B6.2): the dictionary-inference demo (M3) runs in quick mode, learns
(both writers' loss falls, MNM-p beats predicting zero and the nearest-key slot memory on unseen
keys) and writes its PNGs; its model's hand-written backward agrees with the autodiff twin and with
central differences; its baselines do what they say."""

from __future__ import annotations

import numpy as np
import pytest

from minimem.memory.mnm_oneshot import MNMOneShot, OneShotConfig


def test_dictionary_quick_mode_learns_and_writes_plots(tmp_path, capsys, load_demo):
    pytest.importorskip("matplotlib")
    demo = load_demo("mnm_dictionary")
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


def test_dictionary_episode_inputs_read_only_the_unseen_keys(load_demo):
    """The demo's model is mnm_oneshot's writer with the Q unseen keys as queries (their gradients are
    checked by the gradcheck case mnm.oneshot.queries)."""
    demo = load_demo("mnm_dictionary")
    model = MNMOneShot(OneShotConfig(d=4, h=5, writer="grad", beta_max=2.0), rng=np.random.default_rng(1))
    keys, values = demo.make_dictionary(np.random.default_rng(2), 3, 2, 2, 4)
    (reads, meta), _ = model.forward(demo.episode_inputs(keys, values, 3))
    assert reads.shape == (2, 2, 4) and meta.shape == (3, 2)
    (all_reads, _), _ = model.forward((keys[:3], values[:3], keys))
    np.testing.assert_allclose(reads, all_reads[3:], rtol=1e-12, atol=1e-14)


def test_dictionary_task_and_baselines(load_demo):
    demo = load_demo("mnm_dictionary")
    keys, values = demo.make_dictionary(np.random.default_rng(0), 16, 16, 256, 16)
    assert keys.shape == values.shape == (32, 256, 16)
    assert abs(keys.std() - 0.5) < 0.01
    assert abs(np.mean(values ** 2) - 0.39) < 0.02                       # E tanh(N(0, 1))^2 = 0.394
    # A query equal to a stored key gets exactly that key's value back from the slot memory.
    keys[16] = keys[5]
    looked_up = demo.nearest_key_lookup(keys, values, 16)
    np.testing.assert_array_equal(looked_up[0], values[5])


def test_dictionary_bad_flags_are_errors(load_demo):
    demo = load_demo("mnm_dictionary")
    with pytest.raises(SystemExit):
        demo.main(["--no-such-flag"])
    with pytest.raises(ValueError, match="--writers"):
        demo.main(["--quick", "--no-plots", "--writers", "slots"])


def test_recall_quick_mode_runs_and_writes_plots(tmp_path, load_demo):
    """M2 needs thousands of steps to leave its plateau (spec B6.2), so the quick run only checks that
    the pipeline runs, stays finite, is already above chance and writes its PNGs."""
    pytest.importorskip("matplotlib")
    demo = load_demo("mnm_recall")
    result = demo.main(["--quick", "--out", str(tmp_path)])
    assert result["diverged"] is None and result["steps_done"] == 60
    assert np.isfinite(result["final_loss"]) and result["final_loss"] < result["first_loss"]
    assert 0.0 <= result["after"] <= 1.0 and 0.4 < result["guess"] < 0.7          # P = 2: about 1 / 1.94
    for name in ("mnm_recall_curves.png", "mnm_recall_episode.png"):
        path = tmp_path / name
        assert path.exists() and path.stat().st_size > 10_000


def test_recall_episodes(load_demo):
    demo = load_demo("mnm_recall")
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
