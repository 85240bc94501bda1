"""MNM associative recall with the full model (spec titans_mnm.md B6.2, task M2): the LSTM controller
must learn to write (key, value) pairs into the memory network and read a value back by its key.

Per step an input of width 34: one-hot key (16) | one-hot value (16) | write flag | query flag.
P write steps (distinct keys, values uniform with replacement), then P query steps (keys drawn from
the written ones, value part zero); the target of a query step is the stored value (16 classes).
Loss = mean cross-entropy over the query steps + mean L^meta over all steps. Model: the spec's CPU
defaults (H = 64, d = 32, h = 32, L = 3, N_h = 1), MNM-p, phi_0 fixed (reference init), beta_max = 8,
Adam 3e-3, batch 32, clip 5, float32. Metric: query accuracy on 256 fresh episodes.

    python demos/mnm_recall.py          # 8000 steps: 14.6 min wall (3.9 min CPU) at load ~7 (measured)
    python demos/mnm_recall.py --quick  # 3-4 s (measured, P = 2, tiny sizes); the tests check it runs
                                        # and stays finite (learning needs thousands of steps)

The spec's prototype (JAX) found this task fragile: with beta_max = 8 and lr 3e-3, P = 4 sits near
0.3 accuracy (the level of guessing among the written values) for about 5,000 steps and then jumps
to 1.00 by step 6,000; with beta_max = 1 it never left the plateau in 11,000 steps; P = 8 did not
learn. Measured here with seed 0 (P = 4, beta_max = 8, MNM-p, the defaults):
    eval accuracy 0.056 at init; 0.336 / 0.317 / 0.311 / 0.285 / 0.308 / 0.312 / 0.309 / 0.317 at
    steps 500 .. 4000 (the plateau: the guess-among-written-values level of these episodes is
    0.280; the model predicts only values that were written, not which one belongs to the queried
    key); then 0.572 at 4,500, 0.984 at 5,000, 0.999 at 6,500 and 8,000. Training loss 2.12 (steps
    1-250) -> 1.30 (step 4,250) -> 0.14 (5,000) -> 0.007-0.014 (7,750-8,000). So the spec's
    plateau-then-jump reproduces, the jump a little earlier (4,000-5,000 against 5,000-6,000).
    P = 8 (--P 8 --steps 6000, 5.8 min wall at load ~2): 0.068 at init, 0.209 / 0.228 / 0.248 at
    500 / 1,000 / 1,500 (guess-among-written level 0.155), 0.981 at 2,000, 0.998-1.000 from 2,500 to
    6,000. Unlike the spec's prototype, P = 8 learned here, and sooner than P = 4 did (one seed
    each, so this says the plateau's length varies a lot between runs, not that P = 8 is easier).
    MNM-g was not run on M2.

Writes mnm_recall_curves.png (training loss and eval accuracy, with the chance and
guess-among-written levels) and mnm_recall_episode.png (one episode: the update rate beta_t per step
and the predicted value distribution at every query step against the stored value) to --out.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import minimem  # noqa: F401  (first: single-threaded BLAS before NumPy loads, see minimem/__init__.py)
import numpy as np

from minimem.demo_options import config_from_args, config_parser
from minimem.demo_plots import running_mean
from minimem.memory.mnm import MNM, MNMConfig
from minimem.optim import Adam
from minimem.train import TrainConfig, TrainingDiverged, loss_ends, train

K = 16   # key and value vocabulary


@dataclass(frozen=True)
class Config:
    seed: int = 0
    steps: int = 8000            # training batches
    batch: int = 32
    P: int = 4                   # pairs written (and queries asked) per episode
    writer: str = "local"        # "local" = MNM-p, "grad" = MNM-g
    H: int = 64                  # controller width
    d: int = 32                  # key/value width of the memory
    h: int = 32                  # memory hidden width
    L: int = 3                   # memory depth
    beta_max: float = 8.0        # beta = beta_max sigma(.)
    lr: float = 3e-3
    clip: float = 5.0
    dtype: str = "float32"
    eval_episodes: int = 256
    eval_every: int = 500
    log_every: int = 250


QUICK = dict(steps=60, P=2, H=16, d=8, h=8, eval_episodes=64, eval_every=30, log_every=20)


def make_recall(rng: np.random.Generator, P: int, B: int, dtype="float32") -> tuple[np.ndarray, np.ndarray]:
    """Episodes: inputs (2P, B, 34) and the targets (P, B) of the P query steps (value classes)."""
    keys = np.argsort(rng.random((B, K)), axis=1)[:, :P].T                  # (P, B) distinct per episode
    values = rng.integers(0, K, (P, B))
    asked = rng.integers(0, P, (P, B))                                      # which written pair each query asks
    queried = np.take_along_axis(keys, asked, axis=0)
    xs = np.zeros((2 * P, B, 2 * K + 2), dtype=dtype)
    b = np.arange(B)
    for t in range(P):
        xs[t, b, keys[t]] = 1.0
        xs[t, b, K + values[t]] = 1.0
        xs[t, :, 2 * K] = 1.0
        xs[P + t, b, queried[t]] = 1.0
        xs[P + t, :, 2 * K + 1] = 1.0
    return xs, np.take_along_axis(values, asked, axis=0)


def make_loss_fn(P: int):
    def loss_fn(outputs, targets):
        """Mean cross-entropy over the query steps + mean L^meta; gradient w.r.t. (ys, meta)."""
        ys, meta = outputs
        logits = ys[P:2 * P]                                               # (P, B, K)
        shifted = logits - logits.max(axis=-1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        picked = np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        loss = float(-picked.mean() + meta.mean())
        dlogits = np.exp(logp)
        np.put_along_axis(dlogits, targets[..., None], np.take_along_axis(dlogits, targets[..., None], -1) - 1, -1)
        dys = np.zeros_like(ys)
        dys[P:2 * P] = dlogits / picked.size
        return loss, (dys, np.full_like(meta, 1.0 / meta.size))
    return loss_fn


def accuracy(model: MNM, episodes, P: int) -> float:
    return float(np.mean([np.mean(np.argmax(model.forward(xs)[0][0][P:2 * P], -1) == targets)
                          for xs, targets in episodes]))


def guess_level(episodes, P: int) -> float:
    """Accuracy of guessing uniformly among the values written in the episode (the plateau)."""
    levels = []
    for xs, targets in episodes:
        written = xs[:P, :, K:2 * K].sum(axis=0) > 0                       # (B, K)
        levels.append(np.mean(written[np.arange(written.shape[0]), targets].astype(float)
                              / written.sum(axis=1)))
    return float(np.mean(levels))


def build_parser() -> argparse.ArgumentParser:
    parser = config_parser(Config, __doc__, QUICK)
    parser.add_argument("--out", default=".", help="directory for the PNGs (default: current directory)")
    parser.add_argument("--no-plots", action="store_true", help="write no PNGs (matplotlib not needed)")
    return parser


def plot(out: Path, result, evals: list, model: MNM, config: Config, levels: dict) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "mnm_recall_curves.png", out / "mnm_recall_episode.png"]
    fig, (ax_loss, ax_acc) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    ax_loss.plot(*running_mean(result.losses, 100)[:2])
    ax_loss.set_ylabel("training loss")
    ax_acc.plot([e["step"] for e in evals], [e["accuracy"] for e in evals], "o-", ms=3, label="MNM eval accuracy")
    ax_acc.axhline(levels["guess"], color="0.4", ls="--", label="guess among written values")
    ax_acc.axhline(1.0 / K, color="0.6", ls=":", label="chance 1/16")
    ax_acc.set_ylim(0, 1.05)
    ax_acc.set_xlabel("training step")
    ax_acc.set_ylabel("query accuracy")
    ax_acc.legend(fontsize=8)
    fig.suptitle(f"MNM associative recall, P={config.P}, beta_max={config.beta_max}, {config.writer}")
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    xs, targets = make_recall(np.random.default_rng([config.seed, 3]), config.P, 1, config.dtype)
    (ys, _), cache = model.forward(xs)
    internals = cache.internals() if callable(getattr(cache, "internals", None)) else {}
    logits = ys[config.P:2 * config.P, 0]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    fig, (ax_beta, ax_prob) = plt.subplots(1, 2, figsize=(11, 3.8))
    beta = internals.get("beta")
    if beta is not None:
        ax_beta.bar(np.arange(len(beta)), np.asarray(beta).reshape(len(beta), -1)[:, 0])
        ax_beta.axvline(config.P - 0.5, color="0.5", ls="--")
        ax_beta.set_xlabel("step (writes | queries)")
        ax_beta.set_ylabel("update rate beta_t")
        ax_beta.set_title("how strongly each step writes")
    ax_prob.imshow(probs, aspect="auto", cmap="Blues", vmin=0, vmax=1)
    ax_prob.scatter(targets[:, 0], np.arange(config.P), marker="x", color="C3", label="stored value")
    ax_prob.set_xlabel("value class")
    ax_prob.set_yticks(np.arange(config.P))
    ax_prob.set_ylabel("query step")
    ax_prob.legend(fontsize=8)
    ax_prob.set_title("predicted value distribution per query")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    config = config_from_args(Config, args, QUICK)
    if not 1 <= config.P <= K:
        raise ValueError(f"--P must be in 1..{K}; got {config.P}")
    print(f"mnm_recall: {config}", flush=True)
    started = time.perf_counter()
    model = MNM(MNMConfig(X=2 * K + 2, Y=K, H=config.H, d=config.d, h=config.h, L=config.L, writer=config.writer,
                          beta_max=config.beta_max, dtype=config.dtype), rng=np.random.default_rng([config.seed, 0]))
    erng = np.random.default_rng([config.seed, 1])
    episodes = [make_recall(erng, config.P, config.batch, config.dtype)
                for _ in range(max(1, config.eval_episodes // config.batch))]
    levels = {"guess": guess_level(episodes, config.P), "chance": 1.0 / K}
    before = accuracy(model, episodes, config.P)
    print(f"mnm_recall: accuracy at init {before:.3f}; guess among written values {levels['guess']:.3f}", flush=True)
    diverged = None
    try:
        result = train(model, Adam(model.params, lr=config.lr),
                       lambda rng, step: make_recall(rng, config.P, config.batch, config.dtype),
                       make_loss_fn(config.P),
                       TrainConfig(steps=config.steps, log_every=config.log_every, eval_every=config.eval_every,
                                   clip=config.clip, seed=config.seed),
                       eval_fn=lambda m: {"accuracy": accuracy(m, episodes, config.P)},
                       log=lambda line: print(f"  {line}", flush=True))
    except TrainingDiverged as error:                                      # reported, not hidden
        diverged, result = str(error), error.result
        print(f"mnm_recall: DIVERGED: {diverged}", flush=True)
    evals = [{"step": 0, "accuracy": before}] + list(result.evals)
    after = evals[-1]["accuracy"]
    first_high = next((e["step"] for e in evals if e["accuracy"] >= 0.9), None)
    first_loss, final_loss = loss_ends(result.losses) if result.losses else (None, None)
    summary = {"before": before, "after": after, "after_step": evals[-1]["step"], "guess": levels["guess"],
               "first_step_above_0.9": first_high, "diverged": diverged, "steps_done": result.step,
               "first_loss": first_loss, "final_loss": final_loss,
               "seconds": time.perf_counter() - started}
    print(f"mnm_recall: accuracy {before:.3f} -> {after:.3f} (eval at step {evals[-1]['step']}) after "
          f"{result.step} steps; first eval >= 0.9 at {first_high}; {summary['seconds']:.0f}s", flush=True)
    if not args.no_plots:
        summary["plots"] = [str(p) for p in plot(Path(args.out), result, evals, model, config, levels)]
    return summary


if __name__ == "__main__":
    main()
