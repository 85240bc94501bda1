"""HMA against ERM on shifted-glyph images with a spurious colour channel (specs/nam_hma.md B6
tasks 1 and 3), for three backbones: an MLP, a CNN and a patch Transformer.

    python demos/hma_images.py          # ~7 minutes on 2 busy cores; results below (measured)
    python demos/hma_images.py --quick  # ~10-15 seconds; the tests run this

Data (minimem.tasks.hma_tasks.shifted_image_splits): 5 classes, 8 x 8 random binary templates,
channel 0 = template + N(0, 0.8^2) noise rolled by +-1 px, channel 1 = a "colour" that shows the
class with probability 0.9 in training and the ID test, and is independent of the class in the
OOD test (rho = 0). A model that reads the colour does well ID and badly OOD.

For each backbone and seed, two models share the backbone's initial weights and the batches:
    ERM   backbone -> logits = ReLU(h) W_c + b_c (HMA's plain path, all memories off)
    HMA   backbone -> RMem queue (N_r 256, momentum 0.99) + SMem tokens (m 8 per class) + attention
          between the datapoints of the batch (spec B3; L_h 16, 4 heads, no dropout, logits from
          all of c)
Backbones (HMA B4): MLP 128 -> 64 ReLU (D 64, the spec's); CNN two 3x3 conv layers 16, 32 with
2x2 max pooling, global average pooled (D 32); patch Transformer 2x2 patches, D 32, 2 pre-LN
layers, 4 heads, CLS feature (D 32). Adam, batch 64 (epochs of shuffled data, the tail dropped).
Steps per backbone are fewer than the spec's 2,000 (the full run has to fit in ~8 minutes in
NumPy float64; see Config). Evaluation in fixed batches of 128 in a fixed order (spec B10).

Batch dependence (B8, B9.6), measured on 64 OOD test samples: "alone" = max |logit change| of a
sample evaluated alone vs inside its batch of 64 (and how often its predicted class flips);
"reshuffled" = fraction of the 1,000 OOD predictions that change when the OOD set is evaluated
in batches of 128 in a different random order (and the accuracy change). ERM's numbers must be 0
(rounding), which the tests check.

Writes hma_images_accuracy.png (ID/OOD accuracy per backbone, mean and std over seeds) and
hma_images_attention.png (block A's attention over the 40 memory tokens, averaged over heads, for
8 OOD test samples per backbone, seed 0; the samples' true class and colour class are marked) to --out.

Measured (numbers from this script, not from the paper; the spec's calibration (B6.1) found no
OOD gain for HMA, and nothing here was tuned towards one):
RESULTS_FULL: 440 s and 407 s wall (two identical runs, 2 busy cores; per run: MLP ERM ~2 s, HMA
~42-59 s; CNN ERM ~10-18 s, HMA ~27-40 s; Transformer ERM ~12-18 s, HMA ~24-44 s). Seeds 0, 1, 2;
mean +- std over seeds; "alone |dlogit|" = mean over the 64 samples of the max |logit change|
alone vs in the batch, "flips" = fractions of changed predicted classes:
    backbone     model  ID acc          OOD acc         alone |dlogit|  alone flips  reshuffle flips
    mlp          ERM    0.840 +- 0.011  0.549 +- 0.032  2.0e-15         0.000        0.000
    mlp          HMA    0.891 +- 0.012  0.478 +- 0.022  2.0             0.115        0.036
    cnn          ERM    0.841 +- 0.004  0.304 +- 0.016  8.8e-16         0.000        0.000
    cnn          HMA    0.841 +- 0.021  0.272 +- 0.023  1.7             0.234        0.039
    transformer  ERM    0.868 +- 0.010  0.211 +- 0.008  3.7e-16         0.000        0.000
    transformer  HMA    0.868 +- 0.012  0.218 +- 0.009  0.82            0.031        0.006
  Reading: ID, HMA is +5 points on the MLP and level on the CNN and Transformer; OOD, HMA is worse
  on the MLP (-7 points, about 2-3 std) and the CNN (-3) and level on the Transformer, whose OOD
  accuracy is at chance (0.2) for both: with 300-400 steps the CNN and the Transformer learn
  mostly the colour, the MLP (1,000 steps) also the shape. This is the direction the spec's
  calibration found (B6.1: HMA ID slightly up, OOD clearly down for the MLP). HMA's training loss
  on the MLP ends at ~0.02 against ERM's ~0.25. A likely cause is that the queue holds earlier
  copies of training samples with their labels (B8.11), a route for copying labels; not isolated
  here (a run with exclude_self would test it). Batch dependence is real and large: a sample's
  max logit moves by ~1-2 between alone and in-batch evaluation, 3-23% of predicted classes flip,
  and 0.6-4% of OOD predictions change when the same set is evaluated in another order. Block A
  puts 27-37% of its attention on the 40 memory tokens, spread evenly over the classes: for OOD
  samples whose colour shows another class, the true class's 8 tokens get 0.05-0.08 and the colour
  class's 0.05-0.09 (1/5 of the token mass each): the tokens are not class-selective here.
RESULTS_QUICK: ~10 s wall (1 seed, 600 training images, 80 / 25 / 15 steps): ERM ID/OOD 0.640/0.335
  (MLP), 0.460/0.185 (CNN), 0.475/0.200 (Transformer); HMA 0.760/0.295, 0.820/0.180,
  0.420/0.175; ERM batch gaps ~1e-15, HMA 0.24-0.83 (too small a run to read anything else into).
RESULTS_SCARCE (--scarce: B6 task 4, 20 training images per class, rho 0.2; 242 s wall, same steps
and seeds as the full run):
    backbone     model  ID acc          OOD acc         alone |dlogit|  alone flips  reshuffle flips
    mlp          ERM    0.434 +- 0.025  0.427 +- 0.003  2.7e-15         0.000        0.000
    mlp          HMA    0.410 +- 0.014  0.388 +- 0.017  2.4             0.120        0.018
    cnn          ERM    0.482 +- 0.013  0.453 +- 0.005  1.3e-15         0.000        0.000
    cnn          HMA    0.426 +- 0.008  0.406 +- 0.015  5.9             0.516        0.080
    transformer  ERM    0.296 +- 0.028  0.275 +- 0.035  5.6e-16         0.000        0.000
    transformer  HMA    0.291 +- 0.008  0.267 +- 0.020  1.1             0.057        0.014
  Reading: with 100 training images HMA does not help either: it is 2-6 points below ERM, ID and
  OOD, on all three backbones; both models overfit (training loss -> ~0), and HMA's predictions
  depend on the batch even more (half of the CNN's flip when a sample is evaluated alone).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import minimem  # noqa: F401  (first: single-threaded BLAS before NumPy loads, see minimem/__init__.py)
import numpy as np

from minimem.demo_options import config_from_args, config_parser
from minimem.memory.hma import HMA, HMAConfig, attention_maps, batch_dependence, predict_in_batches
from minimem.nn.conv import CNNModel
from minimem.nn.losses import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from minimem.nn.mlp import MLPModel
from minimem.nn.patch_transformer import PatchTransformerModel
from minimem.optim import Adam
from minimem.tasks.hma_tasks import accuracy, shifted_image_splits

BACKBONES = ("mlp", "cnn", "transformer")
MODELS = ("erm", "hma")
EVAL_BATCH = 128


@dataclass(frozen=True)
class Config:
    seeds: str = "0,1,2"          # comma separated; data, initial weights and batches all follow the seed
    backbones: str = "mlp,cnn,transformer"
    n_train: int = 3000
    n_test: int = 1000
    batch: int = 64
    lr: float = 1e-3
    steps_mlp: int = 1000
    steps_cnn: int = 400
    steps_transformer: int = 300
    L_h: int = 16
    N_r: int = 256
    m: int = 8
    heads: int = 4
    mu: float = 0.99
    dependence_samples: int = 64  # OOD samples for the "alone vs in the batch" measurement


QUICK = dict(seeds="0", n_train=600, n_test=200, steps_mlp=80, steps_cnn=25, steps_transformer=15,
             dependence_samples=16)


def build_parser() -> argparse.ArgumentParser:
    parser = config_parser(Config, __doc__, QUICK)
    parser.add_argument("--out", default=".", help="directory for the PNGs")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--scarce", action="store_true",
                        help="the data-scarcity variant (B6 task 4): 20 training images per class, rho 0.2")
    return parser


def parse_config(argv: list[str] | None = None) -> Config:
    args = build_parser().parse_args(argv)
    return config_from_args(Config, args, QUICK)


def _int_list(option: str, text: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise ValueError(f"--{option} must be a comma-separated list of integers >= 0; got {text!r}")
    return values


def check_config(config: Config) -> tuple[list[int], list[str]]:
    seeds = _int_list("seeds", config.seeds)
    backbones = config.backbones.split(",")
    if not backbones or any(b not in BACKBONES for b in backbones):
        raise ValueError(f"--backbones must be a comma-separated subset of {BACKBONES}; got {config.backbones!r}")
    for name in ("n_train", "n_test", "batch", "steps_mlp", "steps_cnn", "steps_transformer", "dependence_samples"):
        if getattr(config, name) < 1:
            raise ValueError(f"--{name} must be >= 1; got {getattr(config, name)}")
    if config.batch > config.n_train or config.N_r % config.batch:
        raise ValueError(f"--batch must be <= --n_train and divide --N_r (={config.N_r}); got {config.batch}")
    if config.dependence_samples > config.n_test:
        raise ValueError(f"--dependence_samples must be <= --n_test; got {config.dependence_samples}")
    return seeds, backbones


# ----------------------------------------------------------------- models
def make_backbone(kind: str, rng: np.random.Generator):
    """(backbone, D, input view) for one of BACKBONES; the input view maps images (N, 8, 8, 2)."""
    if kind == "mlp":
        return MLPModel((128, 64), activation="relu", output_activation="relu", rng=rng), 64, \
            (lambda images: images.reshape(len(images), -1))
    if kind == "cnn":
        return CNNModel(2, (16, 32), kernel=3, padding=1, pool="max", rng=rng), 32, (lambda images: images)
    return PatchTransformerModel((8, 8, 2), patch=2, D=32, heads=4, layers=2, rng=rng), 32, (lambda images: images)


def make_model(kind: str, which: str, seed: int, config: Config):
    """ERM or HMA on a fresh backbone; both draw the backbone first from the same generator, so they
    start from the same backbone weights."""
    rng = np.random.default_rng([seed, BACKBONES.index(kind), 7])
    backbone, D, view = make_backbone(kind, rng)
    if which == "erm":
        head = HMAConfig(D=D, K_c=5, rmem=False, abd=False, m=0)
    else:
        head = HMAConfig(D=D, K_c=5, L_h=config.L_h, N_r=config.N_r, m=config.m, heads=config.heads, mu=config.mu)
    return HMA(head, backbone, rng=rng), view


def train(model: HMA, images: np.ndarray, labels: np.ndarray, steps: int, config: Config,
          rng: np.random.Generator) -> list[float]:
    """Adam on the mean cross-entropy; shuffled epochs of full batches. Returns the step losses."""
    optimizer = Adam(model.params, lr=config.lr)
    per_epoch = len(labels) // config.batch
    losses, order = [], None
    for step in range(steps):
        if step % per_epoch == 0:
            order = rng.permutation(len(labels))
        idx = order[(step % per_epoch) * config.batch:(step % per_epoch + 1) * config.batch]
        logits, cache = model.training_forward(images[idx], labels[idx])   # HMA: read, then write the queue
        loss, loss_cache = softmax_cross_entropy_forward(logits, labels[idx])
        optimizer.step(model.backward(softmax_cross_entropy_backward(1.0, loss_cache), cache))
        losses.append(float(loss))
    return losses


def dependence(model: HMA, inputs: np.ndarray, labels: np.ndarray, n_alone: int, rng: np.random.Generator) -> dict:
    """The batch-dependence gap (module docstring)."""
    gap = batch_dependence(model, inputs[:n_alone])
    fixed = predict_in_batches(model, inputs, EVAL_BATCH)
    perm = rng.permutation(len(labels))
    shuffled = np.empty_like(fixed)
    shuffled[perm] = predict_in_batches(model, inputs[perm], EVAL_BATCH)
    return {"alone_max_logit_change": float(gap.logit_gap.mean()), "alone_flip_rate": float(gap.flipped.mean()),
            "reshuffle_flip_rate": float(np.mean(fixed.argmax(1) != shuffled.argmax(1))),
            "reshuffle_accuracy_change": accuracy(shuffled, labels) - accuracy(fixed, labels)}


def run(kind: str, which: str, seed: int, steps: int, data: dict, config: Config) -> dict:
    started = time.perf_counter()
    model, view = make_model(kind, which, seed, config)
    losses = train(model, view(data["train"].images), data["train"].labels, steps, config,
                   np.random.default_rng([seed, 11]))
    result = {"backbone": kind, "model": which, "seed": seed, "steps": steps,
              "first_loss": float(np.mean(losses[:10])), "final_loss": float(np.mean(losses[-10:]))}
    for split in ("test_id", "test_ood"):
        logits = predict_in_batches(model, view(data[split].images), EVAL_BATCH)
        result[split] = accuracy(logits, data[split].labels)
    ood = data["test_ood"]
    result["dependence"] = dependence(model, view(ood.images), ood.labels, config.dependence_samples,
                                      np.random.default_rng([seed, 13]))
    if which == "hma":                      # attention over the memory tokens for the plot, 8 OOD samples
        batch = view(ood.images[:EVAL_BATCH])
        maps = attention_maps(model.forward(batch)[1])["block_a"]             # (B, H, B + m K_c)
        tokens = maps[:8, :, -model.config.m * model.config.K_c:].mean(axis=1)
        token_class = model.config.token_class                                 # (m K_c,)
        mass = maps[:, :, -len(token_class):].mean(axis=1)                      # (B, m K_c) head mean
        y, colour = ood.labels[:len(mass)], ood.colours[:len(mass)]
        on_true = (mass * (token_class[None] == y[:, None])).sum(1)
        on_colour = (mass * (token_class[None] == colour[:, None])).sum(1)
        differ = y != colour                                                   # colour shows another class
        result["attention"] = {"tokens": tokens, "labels": ood.labels[:8], "colours": ood.colours[:8],
                               "token_mass": float(mass.sum(1).mean()),
                               "true_class_mass": float(on_true[differ].mean()),
                               "colour_class_mass": float(on_colour[differ].mean())}
    result["seconds"] = time.perf_counter() - started
    dep = result["dependence"]
    print(f"{kind:11s} {which} seed {seed}: loss {result['first_loss']:.3f} -> {result['final_loss']:.3f}, "
          f"ID {result['test_id']:.3f} OOD {result['test_ood']:.3f}, alone |dlogit| "
          f"{dep['alone_max_logit_change']:.2e} flips {dep['alone_flip_rate']:.3f}, reshuffle flips "
          f"{dep['reshuffle_flip_rate']:.3f} ({result['seconds']:.1f}s)", flush=True)
    if which == "hma":
        att = result["attention"]
        print(f"{'':11s} block A mass on memory tokens {att['token_mass']:.3f}; for OOD samples whose colour shows "
              f"another class: on the true class's tokens {att['true_class_mass']:.3f}, on the colour class's "
              f"{att['colour_class_mass']:.3f}", flush=True)
    return result


def summarise(results: list) -> list:
    """Mean and std over seeds per (backbone, model)."""
    rows = []
    for kind in BACKBONES:
        for which in MODELS:
            runs = [r for r in results if r["backbone"] == kind and r["model"] == which]
            if not runs:
                continue
            row = {"backbone": kind, "model": which, "seeds": len(runs)}
            for key, get in (("test_id", lambda r: r["test_id"]), ("test_ood", lambda r: r["test_ood"]),
                             ("alone_max_logit_change", lambda r: r["dependence"]["alone_max_logit_change"]),
                             ("alone_flip_rate", lambda r: r["dependence"]["alone_flip_rate"]),
                             ("reshuffle_flip_rate", lambda r: r["dependence"]["reshuffle_flip_rate"])):
                values = np.array([get(r) for r in runs])
                row[key] = (float(values.mean()), float(values.std()))
            rows.append(row)
    return rows


def format_summary(rows: list) -> str:
    lines = ["backbone     model  ID acc          OOD acc         alone |dlogit|  alone flips  reshuffle flips"]
    for r in rows:
        pm = lambda key, f=".3f": f"{r[key][0]:{f}} +- {r[key][1]:{f}}"
        lines.append(f"{r['backbone']:12s} {r['model']:6s} {pm('test_id')}  {pm('test_ood')}  "
                     f"{r['alone_max_logit_change'][0]:.2e}       {r['alone_flip_rate'][0]:.3f}        "
                     f"{r['reshuffle_flip_rate'][0]:.3f}")
    return "\n".join(lines)


# ----------------------------------------------------------------- plots
def plot(out: Path, rows: list, results: list) -> list:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    kinds = [k for k in BACKBONES if any(r["backbone"] == k for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, split in zip(axes, ("test_id", "test_ood")):
        for j, which in enumerate(MODELS):
            sel = [next(r for r in rows if r["backbone"] == k and r["model"] == which) for k in kinds]
            ax.bar(np.arange(len(kinds)) + 0.4 * j - 0.2, [r[split][0] for r in sel], 0.4,
                   yerr=[r[split][1] for r in sel], capsize=3, label=which.upper())
        ax.axhline(0.2, color="grey", lw=0.8, ls=":")
        ax.set_xticks(np.arange(len(kinds)), kinds)
        ax.set_title(f"{'ID (colour agrees 90%)' if split == 'test_id' else 'OOD (colour random)'}")
    axes[0].set_ylabel("accuracy (mean +- std over seeds)")
    axes[0].legend()
    fig.tight_layout()
    paths = [out / "hma_images_accuracy.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    maps = [r for r in results if r["model"] == "hma" and r["seed"] == results[0]["seed"]]
    fig, axes = plt.subplots(1, len(maps), figsize=(4.6 * len(maps), 3.6), squeeze=False)
    for ax, r in zip(axes[0], maps):
        att = r["attention"]
        image = ax.imshow(att["tokens"], aspect="auto", cmap="viridis")
        m = att["tokens"].shape[1] // 5
        for c in range(1, 5):
            ax.axvline(c * m - 0.5, color="white", lw=0.8)
        ax.set_xticks([m * c + m / 2 - 0.5 for c in range(5)], [f"class {c}" for c in range(5)], fontsize=7)
        ax.set_yticks(range(len(att["labels"])), [f"y={y} col={c}" for y, c in zip(att["labels"], att["colours"])],
                      fontsize=7)
        ax.set_title(f"{r['backbone']}: block A attention\non memory tokens (head mean)", fontsize=9)
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    paths.append(out / "hma_images_attention.png")
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


# ----------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    config = parse_config(argv)
    seeds, backbones = check_config(config)
    print(f"hma_images: {config}" + (" (data-scarcity variant)" if args.scarce else ""), flush=True)
    started = time.perf_counter()
    results = []
    for seed in seeds:
        data = shifted_image_splits(seed, n_train=config.n_train, n_test=config.n_test, scarce=args.scarce)
        for kind in backbones:
            steps = getattr(config, f"steps_{kind}")
            for which in MODELS:
                results.append(run(kind, which, seed, steps, data, config))
    rows = summarise(results)
    print(format_summary(rows))
    summary = {"results": results, "rows": rows, "seconds": time.perf_counter() - started}
    if not args.no_plots:
        summary["plots"] = [str(p) for p in plot(Path(args.out), rows, results)]
    print(f"hma_images: {summary['seconds']:.0f}s", flush=True)
    return summary


if __name__ == "__main__":
    main()
