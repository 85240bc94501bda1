"""DNC learns deepmind/dnc's repeat-copy task (4-bit patterns, lengths 1-2, repeats 1-2).

The official demo's task and model (deepmind/dnc train.py) at the CPU size of spec B.6: N 16, W 16,
R 4, LSTM 64, batch 16, but Adam 1e-3 for 5,000 steps (deepmind/dnc: RMSProp 1e-4 for 100,000
iterations). The model follows deepmind/dnc's choices [spec B.8]: softplus strengths,
stop-gradient on w^w_{t-1} in the usage, controller output and state clipped to +-20, global-norm
gradient clip 50 (its final-output clip to +-20 is not reproduced: minimem's DNC has no such
option). --strengths oneplus --usage-write-grad true --controller-clip 0 gives the paper's model.

    python demos/dnc_repeat_copy.py          # 5.5-11 min on 2 busy cores (measured 643 s at load
                                             # average ~9; the same seed reached step 5,000 in 322 s
                                             # at load ~3); final eval 0 bit errors per sequence
    python demos/dnc_repeat_copy.py --quick  # 3.5 s of training, 6 s in all (measured); the tests
                                             # run this and check the loss fell (measured 11.0 -> 9.1)

Measured with seed 0: eval bit errors per sequence 3.5 at step 100, 1.4 at 1,000, 0.70 at 2,000,
0.23 at 2,400, 0.04 at 2,700, 0.008 at 2,800, 0.11 at 2,900, the first 0 at 3,100; then 0 at
3,100, 3,200 and 3,400 but 1 to 9 wrong bits in the 128 evaluation sequences (0.008-0.07 per
sequence) at 3,300 and 3,500-3,700, with loss spikes visible in the curve; 0 at every evaluation
from 3,800 to 5,000. Training loss 6.94 -> 0.013 nats per
sequence (means of the first and last 500 steps); eval loss 0.012 at 5,000. B.7 expects "loss to
~0 in a few thousand steps at the small size", which is what happened.

What the memory does (dnc_repeat_copy_memory.png, after training): the pattern steps write weakly
(w^w peaks 0.4-0.6) and most memory traffic is in the answer phase, where a head often reads the
slot written at the same step. At this size the pattern (at most 8 bits) fits in the LSTM state,
so the task does not force the textbook write-once, read-n-times use of the memory; whether the
trained net depends on the memory at all was not tested (no ablation).

Task layout (minimem.tasks.make_deepmind_repeat_copy, deepmind/dnc's repeat_copy.py): inputs are a
start flag, the pattern, then the repeat count n / 10 on its own channel; the targets are the
pattern n times and an end marker (Y = 5); only those L*n + 1 steps are scored. Each sequence
draws its own L and n and a batch is zero-padded (mask 0) to its longest, T <= 9. Loss: sigmoid
cross-entropy summed over bits and scored steps, divided by the batch size (nats per sequence);
evaluation: bit errors per sequence (spec section 0, metric 2) and the loss on 4 fresh batches
of 32 every 100 steps. Outputs that are all 0 make ~5.5 bit errors per sequence (the target ones).

Writes dnc_repeat_copy_loss.png (training and evaluation loss, evaluation bit errors) and
dnc_repeat_copy_memory.png (one sequence: its bits, the write weighting, the four read weightings,
the usage, and the write, allocation and free gates over time) to --out.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import minimem  # noqa: F401  (first: single-threaded BLAS before NumPy loads, see minimem/__init__.py)
import numpy as np

from minimem.demo_options import config_from_args, config_parser
from minimem.demo_plots import plot_image_rows, plot_training_curve
from minimem.memory.dnc import DNC, DNCConfig
from minimem.optim import Adam
from minimem.tasks import bit_errors_per_sequence, make_deepmind_repeat_copy
from minimem.train import TrainConfig, bit_error_metric, bit_sequence_loss, loss_ends, summary_line, train


@dataclass(frozen=True)
class Config:
    seed: int = 0
    steps: int = 5000                # training batches
    batch: int = 16                  # sequences per batch (each draws its own L and n)
    num_bits: int = 4                # bits per pattern vector
    min_len: int = 1                 # pattern length L ~ U{min_len..max_len}
    max_len: int = 2
    min_reps: int = 1                # repeats n ~ U{min_reps..max_reps}
    max_reps: int = 2
    norm_max: float = 10.0           # the count channel holds n / norm_max
    N: int = 16                      # memory slots
    W: int = 16                      # word size
    R: int = 4                       # read heads
    H: int = 64                      # LSTM size
    layers: int = 1                  # controller depth (deepmind/dnc: one LSTM)
    strengths: str = "softplus"      # key strengths: "softplus" (deepmind/dnc) or "oneplus" (paper)
    usage_write_grad: bool = False   # False: deepmind/dnc's stop-gradient in the usage; True: paper
    controller_clip: float = 20.0    # deepmind/dnc's clip of the controller output and state (0: off)
    controller_grad_clip: float = 0.0  # the paper's clip of the controller-activation gradients (0: off)
    lr: float = 1e-3                 # Adam learning rate
    clip: float = 50.0               # global gradient-norm clip (deepmind/dnc max_grad_norm)
    eval_every: int = 100            # steps between evaluations
    eval_batches: int = 4            # fresh batches of eval_batch sequences per evaluation
    eval_batch: int = 32
    log_every: int = 100             # steps between progress lines


QUICK = dict(steps=120, H=32, eval_every=40, log_every=40)


def build_parser() -> argparse.ArgumentParser:
    parser = config_parser(Config, __doc__, QUICK)
    parser.add_argument("--out", default=".", help="directory for the PNGs (default: current directory)")
    parser.add_argument("--no-plots", action="store_true", help="write no PNGs (matplotlib not needed)")
    return parser


def batch(rng: np.random.Generator, config: Config, size: int, **lengths):
    """One repeat-copy batch, time-first: inputs (T, B, num_bits + 2), targets (T, B, num_bits + 1),
    mask (T, B). `lengths` may override min_len/max_len/min_reps/max_reps (the memory plot)."""
    options = dict(min_len=config.min_len, max_len=config.max_len, min_reps=config.min_reps,
                   max_reps=config.max_reps)
    options.update(lengths)
    return make_deepmind_repeat_copy(rng, size, num_bits=config.num_bits, norm_max=config.norm_max, **options)


def make_model(config: Config) -> DNC:
    dnc_config = DNCConfig(X=config.num_bits + 2, Y=config.num_bits + 1, N=config.N, W=config.W, R=config.R,
                           H=config.H, layers=config.layers, strengths=config.strengths,
                           usage_write_grad=config.usage_write_grad,
                           clip=config.controller_clip if config.controller_clip > 0 else None)
    return DNC(dnc_config, rng=np.random.default_rng(config.seed),
               controller_grad_clip=config.controller_grad_clip if config.controller_grad_clip > 0 else None)


def evaluate(model: DNC, config: Config, step: int) -> dict:
    """Bit errors and loss per sequence on fresh batches (seeded by the step: a rerun sees the same)."""
    rng = np.random.default_rng([config.seed, 1, step])
    errors, losses = [], []
    for _ in range(config.eval_batches):
        data = batch(rng, config, config.eval_batch)
        logits, _ = model.forward(data.inputs)
        errors.append(bit_errors_per_sequence(logits, data.targets, data.mask))
        losses.append(bit_sequence_loss(logits, (data.targets, data.mask))[0])
    return {"bit_errors": float(np.mean(errors)), "loss": float(np.mean(losses))}


def plot(out: Path, result, model: DNC, config: Config) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "dnc_repeat_copy_loss.png", out / "dnc_repeat_copy_memory.png"]

    fig, (ax_loss, ax_err) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    plot_training_curve(ax_loss, result.losses)
    ax_loss.plot([e["step"] for e in result.evals], [e["loss"] for e in result.evals], "o", ms=3,
                 color="C1", label="evaluation")
    ax_loss.set_ylabel("loss (nats per sequence)")
    ax_loss.legend()
    ax_err.plot([e["step"] for e in result.evals], [e["bit_errors"] for e in result.evals], "o-", color="C3")
    ax_err.set_ylabel("eval bit errors per sequence")
    ax_err.set_xlabel("training step")
    ax_err.set_yscale("symlog", linthresh=0.01)
    fig.suptitle(f"DNC repeat copy (deepmind/dnc task): N={config.N} W={config.W} R={config.R} "
                 f"H={config.H}, L {config.min_len}-{config.max_len}, n {config.min_reps}-{config.max_reps}")
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    data = batch(np.random.default_rng([config.seed, 2]), config, 1, min_len=config.max_len,
                 min_reps=config.max_reps)                                          # the longest sequence
    logits, cache = model.forward(data.inputs)
    column = lambda name: np.stack([getattr(s, name)[0] for s in cache.states], axis=-1)   # (..., T)
    nb = config.num_bits
    panels = [(f"inputs (channel {nb}: start flag, {nb + 1}: repeat count n/{config.norm_max:g})",
               data.inputs[:, 0].T, "Greys", "bit"),
              (f"targets (channel {nb}: end marker)", data.targets[:, 0].T, "Greys", "bit"),
              ("outputs sigmoid(y)", 1 / (1 + np.exp(-logits[:, 0].T)), "Greys", "bit"),
              ("write weighting w^w", column("w_w"), "viridis", "slot")]
    w_r = column("w_r")                                                                   # (R, N, T)
    panels += [(f"read weighting w^r, head {i}", w_r[i], "viridis", "slot") for i in range(config.R)]
    panels.append(("usage u", column("u"), "magma", "slot"))
    fig, axes = plt.subplots(len(panels) + 1, 1, figsize=(7, 1.35 * len(panels) + 2.2), sharex=True)
    plot_image_rows(axes, panels)                                             # the last Axes: the gates
    gates = [s.interface.parsed for s in cache.steps]
    steps = np.arange(len(gates))
    ax = axes[-1]
    ax.plot(steps, [g.g_w[0, 0] for g in gates], "o-", color="C0", label="write gate g^w")
    ax.plot(steps, [g.g_a[0, 0] for g in gates], "s-", color="C1", label="allocation gate g^a")
    for i in range(config.R):
        ax.plot(steps, [g.free_gates[0, i] for g in gates], ":", color=f"C{i + 2}", label=f"free gate, head {i}")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("gates", fontsize=9)
    ax.legend(fontsize=6, ncol=3, loc="lower left")
    ax.set_xlabel("time step")
    fig.suptitle(f"DNC repeat copy, one sequence (L={config.max_len}, n={config.max_reps}): "
                 f"write the pattern, read it n times, free")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    config = config_from_args(Config, args, QUICK)
    print(f"dnc_repeat_copy: {config}", flush=True)
    started = time.perf_counter()

    model = make_model(config)
    optimizer = Adam(model.params, lr=config.lr)
    progress = {"step": 0}

    def batch_fn(rng, step):
        progress["step"] = step + 1              # evaluations run after this step's update
        data = batch(rng, config, config.batch)
        return data.inputs, (data.targets, data.mask)

    result = train(model, optimizer, batch_fn, bit_sequence_loss,
                   TrainConfig(steps=config.steps, log_every=config.log_every, eval_every=config.eval_every,
                               clip=config.clip, seed=config.seed),
                   eval_fn=lambda model: evaluate(model, config, progress["step"]), metric_fn=bit_error_metric,
                   log=lambda line: print(line, flush=True), metric_name="bit errors")
    best = min(result.evals, key=lambda e: e["bit_errors"])
    first_zero = next((e["step"] for e in result.evals if e["bit_errors"] == 0.0), None)
    first_loss, final_loss = loss_ends(result.losses)
    summary = {
        "final_loss": final_loss,
        "first_loss": first_loss,
        "bit_errors": result.evals[-1]["bit_errors"],
        "eval_loss": result.evals[-1]["loss"],
        "best_bit_errors": best["bit_errors"],
        "best_step": best["step"],
        "first_zero_step": first_zero,
        "seconds": time.perf_counter() - started,
    }
    if not args.no_plots:
        summary["plots"] = [str(p) for p in plot(Path(args.out), result, model, config)]
    print(summary_line("dnc_repeat_copy", summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
