"""Tests for minimem.train on a toy linear-regression model with a hand-written backward."""

from __future__ import annotations

import numpy as np
import pytest

from minimem import init
from minimem.checkpoint import load_checkpoint
from minimem.optim import SGD, Adam, RMSProp
from minimem.train import TrainConfig, TrainingDiverged, step_rng, train

X, Y, B = 3, 2, 16
TRUE_W = np.array([[1.0, -2.0], [0.5, 0.0], [-1.0, 3.0]])     # (X, Y)
TRUE_B = np.array([0.25, -0.5])                                # (Y,)


class LinearModel:
    """y = x @ W + b; params "linear.W" (X, Y) used as x @ W, "linear.b" (Y,)."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.params = {"linear.W": init.xavier_uniform(rng, (X, Y)),
                       "linear.b": init.zeros(rng, (Y,))}

    def forward(self, x):
        return x @ self.params["linear.W"] + self.params["linear.b"], x      # (B, Y), cache x

    def backward(self, dout, x):
        return {"linear.W": x.T @ dout, "linear.b": dout.sum(axis=0)}


def batch_fn(rng, step):
    x = rng.standard_normal((B, X))                                          # (B, X)
    return x, x @ TRUE_W + TRUE_B + 0.01 * rng.standard_normal((B, Y))


def mse(outputs, targets):
    diff = outputs - targets                                                 # (B, Y)
    return 0.5 * np.sum(diff ** 2) / len(diff), diff / len(diff)


def mean_abs_error(outputs, targets):
    return float(np.mean(np.abs(outputs - targets)))


def interrupt_at(k, inner=batch_fn):
    def fn(rng, step):
        if step == k:
            raise KeyboardInterrupt
        return inner(rng, step)
    return fn


# ----------------------------------------------------------------- learning and logging
def test_loss_falls_and_progress_is_logged():
    model, lines = LinearModel(), []
    opt = Adam(model.params, lr=0.05)
    evals = []

    def eval_fn(m):
        x, y = batch_fn(np.random.default_rng(123), 0)
        evals.append(1)
        return {"held_out_loss": mse(m.forward(x)[0], y)[0]}

    result = train(model, opt, batch_fn, mse, TrainConfig(steps=300, log_every=100, eval_every=150),
                   metric_fn=mean_abs_error, metric_name="mae", eval_fn=eval_fn, log=lines.append)
    assert result.step == 300 and not result.interrupted
    assert len(result.losses) == len(result.metrics) == len(result.grad_norms) == 300
    assert np.mean(result.losses[-20:]) < 0.01 * np.mean(result.losses[:20])
    np.testing.assert_allclose(model.params["linear.W"], TRUE_W, atol=0.05)
    progress = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in progress] == ["100/300", "200/300", "300/300"]
    for line in progress:
        for word in ("loss", "mae", "lr", "eta"):
            assert f" {word} " in line, line
    # The progress loss is the mean over the window since the previous line.
    assert f"loss {np.mean(result.losses[200:]):.4g} " in progress[-1]
    assert [e["step"] for e in result.evals] == [150, 300] and len(evals) == 2
    assert result.evals[-1]["held_out_loss"] < 1e-3
    assert any(line.startswith("eval step 300: held_out_loss") for line in lines)
    assert result.checkpoint_path is None and result.seconds > 0


def test_same_seed_same_run_and_step_rng():
    a, b = LinearModel(), LinearModel()
    cfg = TrainConfig(steps=20, log_every=0, seed=5)
    ra = train(a, SGD(a.params, lr=0.1), batch_fn, mse, cfg, log=None)
    rb = train(b, SGD(b.params, lr=0.1), batch_fn, mse, cfg, log=None)
    assert ra.losses == rb.losses
    assert step_rng(5, 3).standard_normal() == np.random.default_rng([5, 3]).standard_normal()


def test_lr_schedule_sets_the_learning_rate_per_step():
    model, seen = LinearModel(), []
    opt = SGD(model.params, lr=1.0)

    class Spy:
        params = model.params
        forward = staticmethod(model.forward)

        @staticmethod
        def backward(dout, cache):
            seen.append(opt.lr)
            return model.backward(dout, cache)

    train(Spy(), opt, batch_fn, mse, TrainConfig(steps=4, log_every=0),
          lr_schedule=lambda step: 0.1 / (step + 1), log=None)
    assert seen == [0.1, 0.05, 0.1 / 3, 0.025]


def test_clipping_bounds_the_update():
    model = LinearModel()
    before = model.params["linear.W"].copy()
    # Targets far away: the raw gradient norm is large, so the SGD step is clip * lr at most.
    result = train(model, SGD(model.params, lr=1.0), lambda rng, s: (np.ones((B, X)),
                                                                      np.full((B, Y), 1e3)),
                   mse, TrainConfig(steps=1, log_every=0, clip=0.5), log=None)
    assert result.grad_norms[0] > 100
    step = np.sqrt(np.sum((model.params["linear.W"] - before) ** 2)
                   + np.sum(model.params["linear.b"] ** 2))
    assert step == pytest.approx(0.5, rel=1e-12)


# ----------------------------------------------------------------- divergence
def test_nan_loss_stops_and_names_the_step():
    def poisoned(rng, step):
        x, y = batch_fn(rng, step)
        if step == 7:
            y[0, 0] = np.nan
        return x, y

    model = LinearModel()
    with pytest.raises(TrainingDiverged, match=r"step 7\b.*loss is nan") as err:
        train(model, Adam(model.params), poisoned, mse, TrainConfig(steps=20, log_every=0),
              log=None)
    assert err.value.step == 7 and isinstance(err.value, RuntimeError)
    assert len(err.value.result.losses) == 7 and err.value.result.step == 7


def test_infinite_gradient_stops_and_names_the_array():
    model = LinearModel()
    real_backward = model.backward

    def backward(dout, cache):
        grads = real_backward(dout, cache)
        grads["linear.b"] = grads["linear.b"] * np.inf
        return grads

    model.backward = backward
    with pytest.raises(TrainingDiverged, match=r"step 0\b.*'linear\.b'"):
        train(model, Adam(model.params), batch_fn, mse, TrainConfig(steps=3, log_every=0),
              log=None)


# ----------------------------------------------------------------- checkpoints, Ctrl-C, resume
def test_checkpoint_holds_params_optimizer_state_and_step(tmp_path):
    path = str(tmp_path / "run.npz")
    model = LinearModel()
    train(model, Adam(model.params, lr=0.01), batch_fn, mse,
          TrainConfig(steps=25, log_every=0, checkpoint_every=10, checkpoint_path=path),
          metric_fn=mean_abs_error, log=None)
    params, config, extra = load_checkpoint(path, expected=model.params)
    for name in model.params:
        assert params[name].tobytes() == model.params[name].tobytes()
    assert int(extra["train.step"]) == 25 and int(extra["adam.step"]) == 25
    assert extra["adam.m.linear.W"].shape == (X, Y)
    assert extra["train.losses"].shape == (25,) and extra["train.metrics"].shape == (25,)
    assert config["train"]["steps"] == 25 and config["optimizer"]["type"] == "Adam"


def test_keyboard_interrupt_keeps_a_checkpoint_that_loads(tmp_path):
    path = str(tmp_path / "run.npz")
    model, lines = LinearModel(), []
    result = train(model, Adam(model.params), interrupt_at(13), mse,
                   TrainConfig(steps=50, log_every=5, checkpoint_every=10, checkpoint_path=path),
                   log=lines.append)
    assert result.interrupted and result.step == 13 and len(result.losses) == 13
    assert result.checkpoint_path == path
    assert "interrupted after 13 steps" in lines[-1]
    params, _, extra = load_checkpoint(path, expected=model.params)
    assert int(extra["train.step"]) == 13
    for name in model.params:
        assert params[name].tobytes() == model.params[name].tobytes()


@pytest.mark.parametrize("make_opt", [
    lambda p: Adam(p, lr=0.05),
    lambda p: RMSProp(p, lr=0.01, momentum=0.9, centered=True),
], ids=["adam", "rmsprop"])
def test_resume_reaches_the_same_final_params_bit_exactly(tmp_path, make_opt):
    def run(model, batches, resume, path, eval_fn):
        cfg = TrainConfig(steps=30, log_every=0, eval_every=8, checkpoint_every=10,
                          checkpoint_path=path, clip=1.0, seed=3)
        return train(model, make_opt(model.params), batches, mse, cfg, metric_fn=mean_abs_error,
                     lr_schedule=lambda s: 0.9 ** (s // 5), eval_fn=eval_fn, log=None,
                     resume=resume)

    def eval_fn(m):
        x, y = batch_fn(np.random.default_rng(99), 0)
        return {"loss": mse(m.forward(x)[0], y)[0]}

    straight = LinearModel()
    expected = run(straight, batch_fn, False, str(tmp_path / "straight.npz"), eval_fn)

    path = str(tmp_path / "resumed.npz")
    first = run(LinearModel(), interrupt_at(17), False, path, eval_fn)
    assert first.interrupted and first.step == 17
    resumed_model = LinearModel(seed=42)                    # different init: must be overwritten
    lines = []
    second = train(resumed_model, make_opt(resumed_model.params), batch_fn, mse,
                   TrainConfig(steps=30, log_every=0, eval_every=8, checkpoint_every=10,
                               checkpoint_path=path, clip=1.0, seed=3),
                   metric_fn=mean_abs_error, lr_schedule=lambda s: 0.9 ** (s // 5),
                   eval_fn=eval_fn, log=lines.append, resume=True)
    assert lines[0] == f"resumed from {path} at step 17"
    assert second.step == 30 and not second.interrupted
    for name in straight.params:
        assert resumed_model.params[name].tobytes() == straight.params[name].tobytes(), name
    assert second.losses == expected.losses
    assert second.metrics == expected.metrics
    assert second.grad_norms == expected.grad_norms
    assert second.evals == expected.evals
    assert [e["step"] for e in second.evals] == [8, 16, 24, 30]

    # Resuming a finished run does nothing more.
    again = train(resumed_model, make_opt(resumed_model.params), batch_fn, mse,
                  TrainConfig(steps=30, log_every=0, eval_every=8, checkpoint_path=path, seed=3),
                  eval_fn=eval_fn, log=None, resume=True)
    assert again.step == 30 and again.losses == expected.losses and again.evals == expected.evals


def test_interrupt_inside_the_update_keeps_the_previous_checkpoint(tmp_path):
    path = str(tmp_path / "run.npz")
    model, lines = LinearModel(), []

    class Fragile(SGD):
        def _update(self, name, param, grad):
            super()._update(name, param, grad)
            if self.num_steps == 7 and name == "linear.W":   # half of the params updated
                raise KeyboardInterrupt

    result = train(model, Fragile(model.params, lr=0.1), batch_fn, mse,
                   TrainConfig(steps=20, log_every=0, checkpoint_every=5, checkpoint_path=path),
                   log=lines.append)
    assert result.interrupted and "partially updated" in lines[-1]
    _, _, extra = load_checkpoint(path)
    assert int(extra["train.step"]) == 5


def test_resume_without_a_checkpoint_starts_fresh(tmp_path):
    path = str(tmp_path / "absent.npz")
    model, lines = LinearModel(), []
    result = train(model, SGD(model.params, lr=0.1), batch_fn, mse,
                   TrainConfig(steps=3, log_every=0, checkpoint_path=path), log=lines.append,
                   resume=True)
    assert lines[0].startswith("no checkpoint at") and result.step == 3
    assert load_checkpoint(path)[2]["train.step"] == 3       # written at the end


def test_resume_errors(tmp_path):
    model = LinearModel()
    with pytest.raises(ValueError, match="checkpoint_path"):
        train(model, SGD(model.params), batch_fn, mse, TrainConfig(steps=1), resume=True)
    path = str(tmp_path / "run.npz")
    train(model, SGD(model.params), batch_fn, mse,
          TrainConfig(steps=2, log_every=0, checkpoint_path=path), log=None)

    class Wider(LinearModel):
        def __init__(self):
            super().__init__()
            self.params["linear.W"] = np.zeros((X + 1, Y))

    wider = Wider()
    with pytest.raises(ValueError, match=r"'linear\.W': expected shape \(4, 2\)"):
        train(wider, SGD(wider.params), batch_fn, mse, TrainConfig(steps=5, checkpoint_path=path),
              resume=True, log=None)
    other = LinearModel()
    with pytest.raises(ValueError, match="unexpected"):        # Adam cannot load SGD state
        train(other, Adam(other.params), batch_fn, mse,
              TrainConfig(steps=5, checkpoint_path=path), resume=True, log=None)
    with pytest.raises(ValueError, match="beyond config.steps"):
        train(other, SGD(other.params), batch_fn, mse,
              TrainConfig(steps=1, checkpoint_path=path), resume=True, log=None)


def test_bad_gradients_from_the_model_are_named():
    model = LinearModel()
    model.backward = lambda dout, cache: {"linear.W": np.zeros((X, Y))}
    with pytest.raises(ValueError, match=r"linear\.b.*missing"):
        train(model, SGD(model.params), batch_fn, mse, TrainConfig(steps=1, log_every=0), log=None)


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": -1}, "steps"),
    ({"steps": 1.5}, "steps"),
    ({"steps": 1, "checkpoint_every": 5}, "checkpoint_path"),
    ({"steps": 1, "checkpoint_path": "run.pt"}, r"\.npz"),
    ({"steps": 1, "clip": 0.0}, "clip"),
    ({"steps": 1, "seed": -3}, "seed"),
])
def test_train_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_optimizer_must_be_bound_to_model_params():
    model = LinearModel()
    copy = {k: v.copy() for k, v in model.params.items()}
    with pytest.raises(ValueError, match="bound to a different dict"):
        train(model, SGD(copy), batch_fn, mse, TrainConfig(steps=1), log=None)


def test_checkpoint_path_may_be_a_path_object(tmp_path):
    model = LinearModel()
    cfg = TrainConfig(steps=2, log_every=0, checkpoint_path=tmp_path / "run.npz")
    assert cfg.checkpoint_path == str(tmp_path / "run.npz")
    train(model, SGD(model.params), batch_fn, mse, cfg, log=None)
    saved_config = load_checkpoint(tmp_path / "run.npz")[1]
    assert saved_config["train"]["checkpoint_path"] == cfg.checkpoint_path


def test_bit_sequence_loss_is_the_masked_cross_entropy_per_sequence_with_its_gradient():
    from gradcheck.core import assert_grads_close, numeric_vjp
    from minimem.train import bit_sequence_loss
    rng = np.random.default_rng(0)
    logits, bits = rng.standard_normal((5, 3, 4)), (rng.random((5, 3, 4)) < 0.5).astype(float)
    mask = np.zeros((5, 3))
    mask[3:] = 1.0                                                  # only the answer steps count
    loss, dlogits = bit_sequence_loss(logits, (bits, mask))
    p = 1.0 / (1.0 + np.exp(-logits))
    expected = -np.sum(mask[..., None] * (bits * np.log(p) + (1 - bits) * np.log(1 - p))) / 3    # nats per sequence
    assert isinstance(loss, float) and abs(loss - expected) < 1e-12
    assert not dlogits[:3].any()
    assert_grads_close((dlogits,), numeric_vjp(lambda z: np.array(bit_sequence_loss(z, (bits, mask))[0]),
                                               (logits,), np.array(1.0)), names=("logits",))


# ----------------------------------------------------------------- the bit-sequence demos' helpers
class FixedLogits:
    """A stand-in model whose forward returns the next of the given logits (and no cache)."""

    def __init__(self, *logits):
        self.logits, self.seen = list(logits), []

    def forward(self, inputs):
        self.seen.append(inputs)
        return self.logits.pop(0), None


def test_wrong_bits_per_sequence_counts_scored_wrong_bits_of_each_sequence():
    from minimem.tasks import bit_errors_per_sequence
    from minimem.train import bit_error_metric, wrong_bits_per_sequence
    logits = np.array([[[2.0, -1.0], [0.5, 0.5]],                  # (T=2, B=2, Y=2)
                       [[-3.0, 0.0], [1.0, -2.0]]])
    targets = np.array([[[1.0, 1.0], [0.0, 0.0]],
                        [[1.0, 0.0], [1.0, 0.0]]])
    mask = np.array([[1.0, 0.0], [1.0, 1.0]])                       # step 0 of sequence 1 is not scored
    # sequence 0: step 0 wrong in bit 1, step 1 wrong in bit 0 (-3 predicts 0; a logit of 0 predicts 0)
    np.testing.assert_array_equal(wrong_bits_per_sequence(logits, targets, mask), [2.0, 0.0])
    rng = np.random.default_rng(1)
    logits, targets = rng.standard_normal((6, 5, 3)), (rng.random((6, 5, 3)) < 0.5).astype(float)
    mask = (rng.random((6, 5)) < 0.6).astype(float)
    wrong = wrong_bits_per_sequence(logits, targets, mask)
    assert wrong.shape == (5,)
    assert np.mean(wrong) == bit_errors_per_sequence(logits, targets, mask)
    assert bit_error_metric(logits, (targets, mask)) == bit_errors_per_sequence(logits, targets, mask)
    with pytest.raises(ValueError, match=r"mask \(T, B\)"):
        wrong_bits_per_sequence(logits, targets, mask[:, :4])
    with pytest.raises(ValueError, match=r"\(T, B, Y\)"):
        wrong_bits_per_sequence(logits, targets[..., :2], mask)


def test_mean_bit_errors_averages_over_batches_each_counting_once():
    from minimem.train import mean_bit_errors
    ones = np.ones((1, 2, 1))                                       # targets: every bit 1
    all_wrong, half_wrong = -np.ones((1, 2, 1)), np.array([[[1.0], [-1.0]]])
    model = FixedLogits(all_wrong, -np.ones((1, 1, 1)), half_wrong)
    batches = [("a", ones, np.ones((1, 2))), ("b", ones[:, :1], np.ones((1, 1))), ("c", ones, np.ones((1, 2)))]
    assert mean_bit_errors(model, iter(batches)) == pytest.approx((1.0 + 1.0 + 0.5) / 3)
    assert model.seen == ["a", "b", "c"]
    with pytest.raises(ValueError, match="at least one"):
        mean_bit_errors(model, [])


def test_length_generalisation_rows():
    from minimem.train import length_generalisation
    targets = np.ones((3, 4, 2))
    logits = np.ones((3, 4, 2))
    logits[0, 1, 0] = logits[2, 1, 1] = logits[1, 3, 0] = -1.0      # sequence 1: 2 wrong, sequence 3: 1
    model = FixedLogits(np.ones((3, 4, 2)), logits)
    asked = []

    def batch_for_length(length):
        asked.append(length)
        return f"inputs{length}", targets, np.ones((3, 4))

    rows = length_generalisation(model, batch_for_length, range(2, 4))
    assert asked == [2, 3] and model.seen == ["inputs2", "inputs3"]
    assert rows == [{"length": 2, "bit_errors": 0.0, "perfect": 1.0},
                    {"length": 3, "bit_errors": 0.75, "perfect": 0.5}]


def test_loss_ends_are_the_first_and_last_tenth():
    from minimem.train import loss_ends
    first, last = loss_ends(list(np.arange(1.0, 101.0)))
    assert (first, last) == (5.5, 95.5)                             # means of 1..10 and 91..100
    assert loss_ends([4.0, 2.0, 3.0]) == (4.0, 3.0)                 # fewer than 10 steps: one each
    with pytest.raises(ValueError, match="non-empty"):
        loss_ends([])


def test_summary_line():
    from minimem.train import summary_line
    summary = {"final_loss": 0.123456, "steps": 3, "solved": None, "rows": [1]}
    assert summary_line("demo", summary, skip=("rows",)) == "demo: final_loss 0.1235  steps 3  solved None"
    assert summary_line("demo", {"x": 2.0}) == "demo: x 2"
