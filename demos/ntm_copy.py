"""NTM learns the copy task (6-bit vectors, sequences of length 1 to 8; spec A.6 CPU size, E.4).

    python demos/ntm_copy.py          # 3.9-5.8 min on 2 busy cores (two runs); held-out bit errors per
                                      # sequence 0.10 at step 8000 (best 0.05 at 7900), first < 0.5 at 6000
    python demos/ntm_copy.py --quick  # 5 s; the tests run this and check the loss fell (9.1 -> 4.6 nats)

Writes ntm_copy_loss.png (training cost and held-out bit errors) and ntm_copy_heads.png (input,
target, output, and the write and read weightings over time for one length-8 sequence) to --out.

Setup (spec E.4 / A.6): N 16 slots of W 8, LSTM controller of 64, 1 read + 1 write head, S 3,
constant 1e-6 memory, +-20 clipping; batches of 16 with one L ~ U{1..8} per batch; Adam 3e-3, halved
once when the held-out bit errors first fall below `solved_below` (E.4's advice after the first
solve); global-norm clip 10. Held-out set: 4 batches of 32 (fixed, so the points are comparable),
evaluated every 100 steps; chance is about 13.5 bit errors per sequence.

Measured (this script, manual engine, ~20-40 ms per step on a shared 2-core machine): the step at
which the held-out bit errors first fell below 0.5 varies a lot with the seed - seed 0: 6000,
seed 1: 3400, seed 2: 5300, seed 3: 800, seed 4: not by 6000 (0.58 there). Seeds 1 and 3 then sat at
0.00; seed 1's plot shows the textbook algorithm (the write head steps one slot per input, the read
head replays the same slots), while seed 0 ends in a hybrid (the read head counts the inputs, part of
the sequence is held by the controller) and declines slowly instead of dropping abruptly. Spec E.4's reference run (a different implementation, seed 0) first
reached ~0 at 2,400 steps, so our median is slower than that single run; the early curve is also
smoother here (about 5 errors at step 1000, where E.4 reports 9-11 up to step 900).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minimem.memory.ntm import NTM, NTMConfig
from minimem.nn.losses import sigmoid_cross_entropy_backward, sigmoid_cross_entropy_forward
from minimem.optim import Adam
from minimem.tasks import bit_errors_per_sequence, bits_per_sequence, make_copy
from minimem.train import TrainConfig, train


@dataclass(frozen=True)
class Config:
    seed: int = 0
    steps: int = 8000            # training batches
    batch: int = 16              # sequences per batch
    bits: int = 6                # width of the copied vectors
    min_len: int = 1             # L ~ U{min_len..max_len}, one L per batch
    max_len: int = 8
    N: int = 16                  # memory slots
    W: int = 8                   # word size
    H: int = 64                  # LSTM controller size
    lr: float = 3e-3             # Adam learning rate
    solved_below: float = 0.5    # held-out bit errors per sequence that count as the first solve
    clip: float = 10.0           # global gradient-norm clip
    eval_every: int = 100        # steps between held-out evaluations
    eval_batches: int = 4        # held-out set: eval_batches x eval_batch sequences
    eval_batch: int = 32
    log_every: int = 100         # steps between progress lines
    out: str = "."               # directory for the PNGs
    quick: bool = False          # a few seconds: short sequences, few steps


QUICK = dict(steps=150, max_len=3, eval_every=50, eval_batches=2, eval_batch=16, log_every=50)


def parse_config(argv=None) -> Config:
    """argparse built from Config (unknown flags are errors); --quick swaps in QUICK for every
    field not given on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field in dataclasses.fields(Config):
        flag = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            parser.add_argument(flag, dest=field.name, action="store_true", default=None)
        else:
            kind = {"int": int, "float": float, "str": str}[field.type]
            parser.add_argument(flag, dest=field.name, type=kind, default=None,
                                help=f"default {field.default}")
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    base = dataclasses.replace(Config(), **QUICK) if given.get("quick") else Config()
    return dataclasses.replace(base, **given)


def copy_batch(rng: np.random.Generator, cfg: Config, batch: int, same_length: bool = True):
    b = make_copy(rng, batch, num_bits=cfg.bits, min_len=cfg.min_len, max_len=cfg.max_len, same_length=same_length)
    return b.inputs, (b.targets, b.mask)


def loss_fn(outputs, targets):
    """Cross-entropy in nats per sequence on the answer steps (spec section 0) and its gradient."""
    target, mask = targets
    loss, cache = sigmoid_cross_entropy_forward(outputs, target, mask, reduction="batch")
    return float(loss), sigmoid_cross_entropy_backward(1.0, cache)


def evaluate(model: NTM, held_out: list) -> dict[str, float]:
    """Mean loss (nats), cost in bits and bit errors per sequence over the held-out batches."""
    values = {"loss": [], "bits": [], "bit_errors": []}
    for inputs, (target, mask) in held_out:
        ys, _ = model.forward(inputs)
        values["loss"].append(loss_fn(ys, (target, mask))[0])
        values["bits"].append(bits_per_sequence(ys, target, mask))
        values["bit_errors"].append(bit_errors_per_sequence(ys, target, mask))
    return {name: float(np.mean(v)) for name, v in values.items()}


def plot(cfg: Config, result, evals: list, model: NTM, example) -> list[str]:
    """The two PNGs; matplotlib is imported here so that minimem never needs it."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [str(out / "ntm_copy_loss.png"), str(out / "ntm_copy_heads.png")]

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    bits = np.asarray(result.losses) / np.log(2.0)
    window = max(1, min(50, len(bits) // 10))
    smooth = np.convolve(bits, np.ones(window) / window, mode="valid")
    top.plot(np.arange(1, len(bits) + 1), bits, color="0.8", lw=0.5, label="per batch")
    top.plot(np.arange(window, len(bits) + 1), smooth, color="C0", label=f"mean of {window}")
    top.set_ylabel("training cost (bits / sequence)")
    top.legend()
    steps = [e["step"] for e in evals]
    bottom.plot(steps, [e["bit_errors"] for e in evals], "o-", color="C3", ms=3)
    bottom.axhline(cfg.bits * (cfg.min_len + cfg.max_len) / 4, color="0.5", ls="--", label="chance")
    bottom.set_ylabel("held-out bit errors / sequence")
    bottom.set_xlabel("training step (batches of %d)" % cfg.batch)
    bottom.set_ylim(bottom=0)
    bottom.legend()
    fig.suptitle("NTM copy: N=%d, W=%d, LSTM %d, L in %d..%d" % (cfg.N, cfg.W, cfg.H, cfg.min_len, cfg.max_len))
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    inputs, (target, mask) = example                          # one sequence, B = 1
    ys, cache = model.forward(inputs)
    internals = cache.internals()
    panels = [("input", inputs[:, 0].T, "Greys"), ("target", (target[:, 0] * mask[:, :1]).T, "Greys"),
              ("output sigmoid(y)", (1 / (1 + np.exp(-ys[:, 0])) * mask[:, :1]).T, "Greys"),
              ("write weighting", internals["write_weightings"][:, 0, 0].T, "viridis"),
              ("read weighting", internals["read_weightings"][:, 0, 0].T, "viridis")]
    fig, axes = plt.subplots(len(panels), 1, figsize=(6, 9), sharex=True)
    for ax, (title, image, cmap) in zip(axes, panels):
        ax.imshow(image, aspect="auto", cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("slot" if "weighting" in title else "bit", fontsize=8)
    axes[-1].set_xlabel("time step")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


def main(argv=None) -> dict:
    cfg = parse_config(argv)
    started = time.perf_counter()
    model = NTM(NTMConfig(X=cfg.bits + 1, Y=cfg.bits, N=cfg.N, W=cfg.W, H=cfg.H),
                rng=np.random.default_rng(cfg.seed))
    held_out_rng = np.random.default_rng([cfg.seed, 1_000_003])             # apart from the training stream
    held_out = [copy_batch(held_out_rng, cfg, cfg.eval_batch, same_length=False) for _ in range(cfg.eval_batches)]
    initial = evaluate(model, held_out)
    print(f"NTM copy: {sum(p.size for p in model.params.values())} parameters; before training: "
          f"loss {initial['loss']:.3f}, bit errors {initial['bit_errors']:.2f} per sequence")

    best = {"bit_errors": np.inf}
    solved_at = []                                             # the step of the first solve, once known
    progress = {"step": 0}                                     # updates done; eval_fn runs after an update

    def batch_fn(rng, step):
        progress["step"] = step + 1
        return copy_batch(rng, cfg, cfg.batch)

    def eval_fn(m):
        values = evaluate(m, held_out)
        step = progress["step"]
        if values["bit_errors"] < best["bit_errors"]:
            best.update(values, step=step)
        if not solved_at and values["bit_errors"] < cfg.solved_below:
            solved_at.append(step)
            print(f"first solve at step {step}: learning rate halved to {cfg.lr / 2:g}")
        return values

    optimizer = Adam(model.params, lr=cfg.lr)
    result = train(model, optimizer, batch_fn, loss_fn,
                   TrainConfig(steps=cfg.steps, log_every=cfg.log_every, eval_every=cfg.eval_every,
                               clip=cfg.clip, seed=cfg.seed),
                   eval_fn=eval_fn, metric_name="bit_errors",
                   metric_fn=lambda ys, t: bit_errors_per_sequence(ys, t[0], t[1]),
                   lr_schedule=lambda step: cfg.lr / 2 if solved_at else cfg.lr)
    final = evaluate(model, held_out)
    example_rng = np.random.default_rng([cfg.seed, 2_000_003])
    example = copy_batch(example_rng, dataclasses.replace(cfg, min_len=cfg.max_len), 1)
    paths = plot(cfg, result, result.evals, model, example)
    seconds = time.perf_counter() - started
    summary = {"initial_loss": initial["loss"], "final_loss": final["loss"],
               "bits_per_sequence": final["bits"], "bit_errors": final["bit_errors"],
               "best_bit_errors": float(best["bit_errors"]), "best_step": best.get("step"),
               "first_solve_step": solved_at[0] if solved_at else None,
               "steps": result.step, "seconds": seconds, "plots": paths}
    print(f"done in {seconds / 60:.1f} min: held-out loss {initial['loss']:.3f} -> {final['loss']:.3f} nats, "
          f"bit errors per sequence {final['bit_errors']:.2f} (best {best['bit_errors']:.2f} at step "
          f"{best.get('step')}; first solve {summary['first_solve_step']})")
    for path in paths:
        print("wrote", path)
    return summary


if __name__ == "__main__":
    main()
