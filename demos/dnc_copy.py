"""DNC learns the copy task (6-bit vectors, sequences of length 1 to 8), spec B.3 paper mode with the
calibration of spec E.4: N 16, W 8, R 2, LSTM 64, oneplus strengths, usage floor 1e-6, batch 16
with one length per batch, Adam 3e-3 halved after the first solve, global-norm clip 10; evaluation
= bit errors per sequence on 4 fresh batches of 32 every 100 steps (chance is about 13.5).

    python demos/dnc_copy.py          # 67 s on a quiet machine (2026-11-22, after the speed work;
                                      # earlier 119-282 s on 2 busy cores); final eval 0 bit errors
                                      # per sequence (measured, seed 0)
    python demos/dnc_copy.py --quick  # 2.5-6 s (measured); the tests run this and check that the
                                      # loss fell (measured 8.7 -> 4.7 nats per sequence)

Measured with seed 0 (the four runs above gave identical numbers): eval bit errors 5-12 up to
step 700, 0.66 at 800, 0 at 900 (the first solve; the rate halves to 1.5e-3), 0 at 1,000 and
1,100, 0.12 at 1,200, then 0 at 14 of the 18 evaluations from 1,300 to 3,000 (the others 0.03 to
0.23) and 0 at 3,000; training loss 16.5 -> 0.0049 nats per sequence (mean of the first and last
300 steps). Spec E.4's reference run reached ~4 errors at 1,000 steps, 0.12 at 1,100 and 0.05 at
1,200, so this run solves the task about 200-300 steps earlier, with the same late blips.

Generalisation (measured, seed 0, after the 3,000 steps): bit errors per sequence for every
length 1..16 (16 = N, the longest whose vectors each get their own slot; --gen-max-len goes
further), 64 fresh sequences per length, and the fraction of them copied without a wrong bit:

    length                    1-8 each   9      10     11     12     13     14     15     16
    bit errors per sequence   0          0      1.98   4.97   12.2   18.4   24.0   35.0   44.0
    perfect copies            1.00       1.00   0.92   0.84   0.62   0.42   0.31   0.06   0.00

Chance is half the target bits, 3 per vector (48 at length 16). So the learned copy extends one
length beyond training and then degrades steadily, to near chance at 16; it does not generalise
far as the NTM paper's copy does (trained on 1-20, good to ~120), and the cause was not diagnosed.

Float32 (--dtype float32, seed 0, 3,000 steps, 108 s at a load average of ~4): the same course as
float64 up to the solve (eval bit errors 5-12 to step 700, 1.34 at 800, 0.16 at 900 - the first
solve - and 0 from 1,000), then 0 at every evaluation but 0.14, 0.008 and 0.04 at steps 2,100,
2,500 and 2,700. Generalisation: 0 / 1.00 up to length 8, 0.47 / 0.98 at 9, 6.1 / 0.72 at 10,
18.8 / 0.27 at 12, 41.9 / 0.00 at 16: the same one-length reach, degrading somewhat faster than
the float64 run above. A DNC training step at bench_dnc's size is 1.9x faster in float32.

Writes dnc_copy_loss.png (training loss and evaluation bit errors), dnc_copy_memory.png (one
sequence: its bits, the write weighting, both read weightings and the usage over time) and
dnc_copy_generalisation.png (bit errors and the fraction of perfect copies against length) to --out.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import minimem  # noqa: F401  (first: single-threaded BLAS before NumPy loads, see minimem/__init__.py)
import numpy as np

from minimem.demo_options import config_from_args, config_parser
from minimem.demo_plots import plot_image_rows, plot_length_generalisation, plot_training_curve
from minimem.memory.dnc import DNC, DNCConfig
from minimem.optim import Adam
from minimem.tasks import make_copy
from minimem.train import (TrainConfig, bit_error_metric, bit_sequence_loss, length_generalisation, loss_ends,
                           mean_bit_errors, summary_line, train)


@dataclass(frozen=True)
class Config:
    seed: int = 0
    steps: int = 3000            # training batches
    batch: int = 16              # sequences per batch (one length L per batch, spec E.4)
    num_bits: int = 6            # bits per vector
    min_len: int = 1             # L ~ U{min_len..max_len}
    max_len: int = 8
    N: int = 16                  # memory slots
    W: int = 8                   # word size
    R: int = 2                   # read heads
    H: int = 64                  # LSTM size
    layers: int = 1              # controller depth
    lr: float = 3e-3             # Adam learning rate
    solved_below: float = 0.25   # eval bit errors per sequence that count as the first solve (lr halves)
    clip: float = 10.0           # global gradient-norm clip
    dtype: str = "float64"       # "float32": the same training in single precision, faster
    eval_every: int = 100        # steps between evaluations
    eval_batches: int = 4        # fresh batches of eval_batch sequences per evaluation
    eval_batch: int = 32
    log_every: int = 100         # steps between progress lines
    gen_max_len: int = 16        # after training: bit errors at lengths 1..gen_max_len (16 = N: a slot per vector)
    gen_sequences: int = 64      # fresh sequences per length in that evaluation


QUICK = dict(steps=150, max_len=3, H=32, eval_every=50, log_every=50, gen_max_len=6, gen_sequences=16)


def build_parser() -> argparse.ArgumentParser:
    parser = config_parser(Config, __doc__, QUICK)
    parser.add_argument("--out", default=".", help="directory for the PNGs (default: current directory)")
    parser.add_argument("--no-plots", action="store_true", help="write no PNGs (matplotlib not needed)")
    return parser


def batch(rng: np.random.Generator, config: Config, size: int):
    """One copy batch, time-first: inputs (T, B, num_bits + 1), targets (T, B, num_bits), mask (T, B)."""
    return make_copy(rng, size, num_bits=config.num_bits, min_len=config.min_len, max_len=config.max_len,
                     same_length=True)


def evaluate(model: DNC, config: Config, step: int) -> float:
    """Bit errors per sequence on fresh batches (seeded by the step, so a rerun sees the same ones)."""
    rng = np.random.default_rng([config.seed, 1, step])
    return mean_bit_errors(model, (batch(rng, config, config.eval_batch) for _ in range(config.eval_batches)))


def generalisation(model: DNC, config: Config) -> list[dict]:
    """Bit errors per sequence, and the fraction of sequences copied without a single wrong bit, for
    every length 1..gen_max_len (gen_sequences fresh sequences each, seeded by the length). Lengths
    above max_len were never trained on; up to N the memory has a free slot for every vector."""
    return length_generalisation(
        model, lambda length: make_copy(np.random.default_rng([config.seed, 3, length]), config.gen_sequences,
                                        num_bits=config.num_bits, min_len=length, max_len=length),
        range(1, config.gen_max_len + 1))


def plot(out: Path, result, evals: list, model: DNC, config: Config, gen_rows: list[dict]) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "dnc_copy_loss.png", out / "dnc_copy_memory.png", out / "dnc_copy_generalisation.png"]

    fig, (ax_loss, ax_err) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    plot_training_curve(ax_loss, result.losses)
    ax_loss.set_ylabel("loss (nats per sequence)")
    ax_loss.legend()
    ax_err.plot([e["step"] for e in evals], [e["bit_errors"] for e in evals], "o-", color="C3")
    ax_err.set_ylabel("eval bit errors per sequence")
    ax_err.set_xlabel("training step")
    ax_err.set_yscale("symlog", linthresh=0.1)
    fig.suptitle(f"DNC copy: N={config.N} W={config.W} R={config.R} H={config.H}, lengths "
                 f"{config.min_len}-{config.max_len}")
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    data = make_copy(np.random.default_rng([config.seed, 2]), 1, num_bits=config.num_bits,
                     min_len=config.max_len, max_len=config.max_len)
    logits, cache = model.forward(data.inputs)
    column = lambda name: np.stack([getattr(s, name)[0] for s in cache.states], axis=-1)   # (..., T)
    panels = [("inputs (last channel: delimiter)", data.inputs[:, 0].T, "Greys", "bit"),
              ("targets (answer steps only)", data.targets[:, 0].T, "Greys", "bit"),
              ("outputs sigmoid(y)", 1 / (1 + np.exp(-logits[:, 0].T)), "Greys", "bit"),
              ("write weighting w^w", column("w_w"), "viridis", "slot")]
    w_r = column("w_r")                                                                   # (R, N, T)
    panels += [(f"read weighting w^r, head {i}", w_r[i], "viridis", "slot") for i in range(config.R)]
    panels.append(("usage u", column("u"), "magma", "slot"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 1.6 * len(panels) + 0.6), sharex=True)
    plot_image_rows(axes, panels)
    axes[-1].set_xlabel("time step")
    fig.suptitle(f"DNC copy, one sequence of length {config.max_len}: write, then read back in order")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)

    fig, (ax_err, ax_ok) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    plot_length_generalisation(ax_err, ax_ok, gen_rows, (config.min_len, config.max_len), config.num_bits,
                               "DNC", config.gen_sequences, config.N)
    fig.suptitle(f"DNC copy: generalisation beyond the trained lengths {config.min_len}-{config.max_len}")
    fig.tight_layout()
    fig.savefig(paths[2], dpi=110)
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    config = config_from_args(Config, args, QUICK)
    print(f"dnc_copy: {config}", flush=True)
    started = time.perf_counter()

    model = DNC(DNCConfig(X=config.num_bits + 1, Y=config.num_bits, N=config.N, W=config.W, R=config.R,
                          H=config.H, layers=config.layers, dtype=config.dtype), rng=np.random.default_rng(config.seed))
    optimizer = Adam(model.params, lr=config.lr)
    # train() tells eval_fn nothing but the model: lr_schedule, called before every update, keeps
    # the step count, and the first evaluation below solved_below halves the rate from then on.
    progress = {"step": 0, "solved": None}

    def batch_fn(rng, step):
        data = batch(rng, config, config.batch)
        return data.inputs, (data.targets, data.mask)

    def lr_schedule(step):
        progress["step"] = step + 1              # evaluations run after this step's update
        return config.lr if progress["solved"] is None else config.lr / 2

    def eval_fn(model):
        errors = evaluate(model, config, progress["step"])
        if progress["solved"] is None and errors < config.solved_below:
            progress["solved"] = progress["step"]
        return {"bit_errors": errors}

    result = train(model, optimizer, batch_fn, bit_sequence_loss,
                   TrainConfig(steps=config.steps, log_every=config.log_every, eval_every=config.eval_every,
                               clip=config.clip, seed=config.seed),
                   eval_fn=eval_fn, metric_fn=bit_error_metric, lr_schedule=lr_schedule,
                   log=lambda line: print(line, flush=True), metric_name="bit errors")
    best = min(result.evals, key=lambda e: e["bit_errors"])
    first_loss, final_loss = loss_ends(result.losses)
    summary = {
        "final_loss": final_loss,
        "first_loss": first_loss,
        "bit_errors": result.evals[-1]["bit_errors"],
        "best_bit_errors": best["bit_errors"],
        "best_step": best["step"],
        "solved_step": progress["solved"],
    }
    gen_rows = generalisation(model, config)
    print("dnc_copy: generalisation (length: bit errors per sequence, fraction copied perfectly)", flush=True)
    for row in gen_rows:
        trained = "" if row["length"] <= config.max_len else "   (longer than trained)"
        print(f"  {row['length']:3d}: {row['bit_errors']:7.3f}  {row['perfect']:5.2f}{trained}", flush=True)
    summary["generalisation"] = gen_rows
    summary["seconds"] = time.perf_counter() - started
    if not args.no_plots:
        summary["plots"] = [str(p) for p in plot(Path(args.out), result, result.evals, model, config, gen_rows)]
    print(summary_line("dnc_copy", summary, skip=("generalisation",)), flush=True)
    return summary


if __name__ == "__main__":
    main()
