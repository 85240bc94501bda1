"""A SAM copy curriculum with N = 2^16 memory slots: the sequence length doubles whenever the current
level is solved (spec C.8 "exponential curriculum", paper section 4.3), and the sparse model keeps
training at lengths where a dense model's BPTT would need gigabytes (spec C.4, C.9).

    python demos/sam_curriculum.py          # 8.0 min on 2 busy cores; seed 0 solved h = 2, 4, 8, 16 and
                                            # was training at h = 32 when the budget ran out (measured)
    python demos/sam_curriculum.py --quick  # ~10 s: 150 batches at N = 2^12; the tests run this

Curriculum (spec C.8; the paper gives no threshold or window, these are minimem's): a level h;
every batch draws its length L ~ U{1..h} (one L per batch of 16); h doubles when the mean training
bit errors per sequence over the last `window` = 50 batches at this level fall below `threshold` =
0.25. h starts at 2. Copy task with 6-bit vectors (spec A.6), T = 2 L + 1. The run stops when
`budget_s` of training time is spent or h passes `max_level`: it reports how far it got.

Model (spec C.8 sizes, except N): W 8, R 2, K 4, LSTM 64, oneplus strengths, delta 0.005, the k-d
tree index (scipy cKDTree over a snapshot plus a dirty set, eps 0; spec C.6), Adam 3e-3, global-norm
clip 10. How a step stays cheap at this N (spec C.4):
- ONE memory buffer (B, N, W) for the whole run: every sequence starts from an empty memory, the
  forward writes into the buffer in place (in_place=True) and the memory-revert backward restores
  it to all zeros bit for bit, so nothing of size N is copied per batch (checked at the end).
- The index and LRA order of the empty memory are built once and forked per batch (lookup=).
  Starting from an empty memory the k-d tree's snapshot holds no rows: every query re-scores the
  rows written in this sequence (the dirty set) plus the lowest still-zero rows, so its reads are
  exactly the exact top-K (tested: same sets and outputs as --index exact) at a cost that grows
  with T, not N. --index exact scores all N rows (about 5 s per batch of L = 8 at N = 2^16 on this
  machine: too slow here); --index lsh hashes the dirty rows too, so its reads are approximate
  (measured: 21-39% of the sets differ from exact ones on a batch of L = 12). A first full run
  with LSH was stopped at step 1,350, at level 4, where the k-d tree run below also still was at
  that step: it says nothing either way about how LSH's approximate reads affect learning.
- Per step the records hold only the touched rows (O(R K W) numbers).
A gradient buffer dM (B, N, W) is allocated once per backward with np.zeros (its pages are only
touched where gradients land).

Memory footprint, printed per level for one batch of the level's longest sequences (L = h):
    memory buffer     B N W 8 bytes, allocated once
    records           the bytes of the arrays the forward keeps for BPTT (minimem.bench_sam.records_bytes)
    tracemalloc peak  everything allocated during that forward + backward (records, the index fork,
                      the gradient buffer dM as requested - B N W 8 bytes, though mostly untouched)
and, for a dense model at the same N, B and T (the dense engine of minimem.memory.sam, which is
SAM with K = N: the NTM/DAM cost model), what its BPTT would have to keep:
    dense lower bound   T B N W 8 bytes: one N x W memory copy per step (spec C.4)
    dense estimate      T B (a + b N) bytes, with a and b the measured per-step, per-sequence record
                        bytes of that dense engine fitted at two small N (256 and 1024): b = 8 times
                        the floats it keeps per slot and step (M_t's W, the write/erase vectors, the
                        (R, N) similarities, norms and read weightings), a its N-independent part.
The machine's RAM is printed next to them.

Measured (seed 0, defaults, 481 s wall in all, 451 s of training = 2,458 batches, on 2 cores shared
with other jobs; memory for one batch of 16 at the level's longest length L = h; the dense columns
are computed, the sparse ones measured; dense records fitted as 4,944 + 176 N bytes per step and
sequence, i.e. 22 floats per slot):

    level h  steps  time/step  solved  T    SAM records  SAM peak (+64 MiB buffer)  dense >= (copies)  dense ~ (all)
    2        506    76 ms      yes     5    0.43 MiB     90.2 MiB                   320 MiB            880 MiB
    4        940    70 ms      yes     9    0.76 MiB     90.6 MiB                   576 MiB            1.5 GiB
    8        206    114 ms     yes     17   1.4 MiB      91.3 MiB                   1.1 GiB            2.9 GiB
    16       298    195 ms     yes     33   2.7 MiB      92.8 MiB                   2.1 GiB            5.7 GiB
    32       508    512 ms     no      65   5.4 MiB      95.7 MiB                   4.1 GiB            11.2 GiB

The curriculum solved h = 2, 4, 8 and 16 (after h = 4 each doubling took only 200-300 batches:
the copy algorithm learnt on short sequences carried over) and was still at h = 32 when the 450 s
budget ran out (training bit errors per sequence, mean of the last 50 batches, 3.43; individual
stretches below 1). On fresh batches of exactly L after training: 0 bit errors for L = 1, 2, 4, 8,
16, 1.81 for L = 32 and 103 of 384 bits for L = 64 (no generalisation past the trained lengths).
The records stay at 85-88 KiB per step at every length (Theta(1) per step) and the peak is the
gradient buffer dM (64 MiB as requested) plus the records. After training, one training step's
forward + backward of a batch at L = 64 (T = 129) took 7.4 s under tracemalloc with records of
10.7 MiB and a peak of 102 MiB (a dense BPTT: >= 8.1 GiB, ~22.2 GiB - about this machine's 23.5 GiB
of RAM), and at L = 256 (T = 513) 14.3 s, records 43.2 MiB, peak 138 MiB, where a dense BPTT would
need >= 32.1 GiB for the memory copies alone (~88 GiB in all): more than this machine has. Time
per step grows with T (the dirty set every query re-scores grows with the sequence) and with the
load of the shared machine, not with N. The memory buffer was all zeros again after training.
One sequence of L = 32 touched 162 of the 65,536 slots (access plot: each input step writes the
next LRA slot, each answer step reads the slot written L + 1 steps earlier).

Writes sam_curriculum.png (training bit errors and level against step; memory per level: sparse
peak and records against the dense lower bound and estimate) and sam_curriculum_access.png (one
sequence at the final level: which of the N slots each step writes and reads) to --out.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import minimem  # noqa: F401  (before NumPy: single-threaded BLAS)
import numpy as np

from minimem.bench_sam import records_bytes
from minimem.demo_options import config_from_args, config_parser
from minimem.memory.sam import SAM, SAMConfig
from minimem.optim import Adam, clip_grad_norm
from minimem.tasks import bit_errors_per_sequence, make_copy
from minimem.train import bit_sequence_loss, step_rng


@dataclass(frozen=True)
class Config:
    seed: int = 0
    log_n: int = 16              # N = 2^log_n memory slots
    batch: int = 16              # sequences per batch (one length per batch)
    num_bits: int = 6            # bits per vector
    W: int = 8                   # word size
    R: int = 2                   # read heads
    K: int = 4                   # slots read per head
    H: int = 64                  # LSTM size
    delta: float = 0.005         # usage threshold of the LRA rule
    index: str = "kdtree"        # "kdtree" | "lsh" | "exact" (see the docstring)
    start_level: int = 2         # the first h (L ~ U{1..h})
    max_level: int = 1024        # stop after solving this h
    threshold: float = 0.25      # mean training bit errors per sequence over `window` batches that solve a level
    window: int = 50             # batches (at the current level) in that mean
    lr: float = 3e-3             # Adam learning rate
    clip: float = 10.0           # global gradient-norm clip
    max_steps: int = 20000       # at most this many batches
    budget_s: float = 450.0      # training wall time (seconds) after which the curriculum stops
    log_every: int = 50          # steps between progress lines
    probe_lengths: str = "64,256"  # after training: one forward + backward of a batch of each L (comma list)


QUICK = dict(log_n=12, H=32, budget_s=60.0, max_steps=150, window=20, threshold=1.0, log_every=30,
             probe_lengths="16")


def build_parser() -> argparse.ArgumentParser:
    parser = config_parser(Config, __doc__, QUICK)
    parser.add_argument("--out", default=".", help="directory for the PNGs (default: current directory)")
    parser.add_argument("--no-plots", action="store_true", help="write no PNGs (matplotlib not needed)")
    return parser


def sam_config(config: Config, **changes) -> SAMConfig:
    N = 1 << config.log_n
    options = dict(X=config.num_bits + 1, Y=config.num_bits, N=N, W=config.W, R=config.R, K=config.K, H=config.H,
                   delta=config.delta, index=config.index)
    if config.index == "lsh":
        options.update(lsh_tables=8, lsh_bits=int(min(30, max(1, config.log_n - 4))))
    options.update(changes)
    return SAMConfig(**options)


class Runner:
    """A SAM whose sequences all start from the empty memory of ONE in-place buffer (docstring)."""

    def __init__(self, config: Config):
        self.config = config
        self.model = SAM(sam_config(config), rng=np.random.default_rng(config.seed))
        self.state = self.model.initial_state(config.batch)       # M: the buffer, all zeros
        started = time.perf_counter()
        self.lookup = self.model.lookup(self.state)                # index + LRA order of the empty memory
        self.lookup_build_s = time.perf_counter() - started

    def forward(self, xs):
        """ys (T, B, Y) and the cache; the buffer holds M_T until backward reverts it."""
        return self.model.forward(xs, self.state, copy_final_memory=False, lookup=self.lookup, in_place=True)

    def outputs(self, xs):
        """ys only: forward, then a backward with zero output gradients, which reverts the buffer."""
        ys, cache = self.forward(xs)
        self.model.backward(np.zeros_like(ys), cache)
        return ys

    def memory_is_empty(self) -> bool:
        return not np.any(self.state.M)


def copy_batch(config: Config, rng: np.random.Generator, max_len: int, min_len: int = 1):
    return make_copy(rng, config.batch, num_bits=config.num_bits, min_len=min_len, max_len=max_len,
                     same_length=True)


# ----------------------------------------------------------------- memory accounting
def dense_per_step_bytes(config: Config, sizes=(256, 1024), T: int = 4, B: int = 2) -> tuple[float, float]:
    """(a, b): bytes per step and sequence that the dense engine's BPTT records keep, a + b N,
    fitted exactly through two small N (the dense engine at the demo's N would not fit)."""
    per = []
    for N in sizes:
        dense = SAMConfig(X=config.num_bits + 1, Y=config.num_bits, N=N, W=config.W, R=config.R, K=N, H=config.H,
                          delta=config.delta, engine="dense")
        model = SAM(dense, rng=np.random.default_rng(0))
        xs = np.random.default_rng(1).standard_normal((T, B, config.num_bits + 1))
        _, cache = model.forward(xs)
        per.append(records_bytes(cache, model.params) / (T * B))
    b = (per[1] - per[0]) / (sizes[1] - sizes[0])
    return per[0] - b * sizes[0], b


def footprint(runner: Runner, level: int, dense_ab: tuple[float, float]) -> dict:
    """Memory of one batch of the level's longest sequences (L = h, T = 2h + 1), sparse measured,
    dense computed (module docstring)."""
    config = runner.config
    data = copy_batch(config, np.random.default_rng([config.seed, 3, level]), level, level)
    T, B = data.inputs.shape[:2]
    N = 1 << config.log_n
    gc.collect()
    tracemalloc.start()
    started = time.perf_counter()
    ys, cache = runner.forward(data.inputs)
    records = records_bytes(cache, runner.model.params)
    runner.model.backward(np.zeros_like(ys), cache)
    seconds = time.perf_counter() - started                    # with tracemalloc on: slower than a step
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del cache
    a, b = dense_ab
    return {"level": level, "T": T, "fwd_bwd_s": seconds, "memory_bytes": runner.state.M.nbytes, "records_bytes": records,
            "records_per_step": records / T, "peak_bytes": peak,
            "dense_lower_bytes": T * B * N * config.W * 8, "dense_estimate_bytes": T * B * (a + b * N)}


def machine_ram() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _fmt_b(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


# ----------------------------------------------------------------- access pattern
def access_pattern(runner: Runner, level: int) -> dict:
    """One sequence (element 0 of a batch with L = level): per step the slots written (with weights),
    read by each head (with weights) and the LRA slot, as (step, slot, weight) lists."""
    config = runner.config
    data = copy_batch(config, np.random.default_rng([config.seed, 2]), level, level)
    ys, cache = runner.forward(data.inputs)
    N, R = 1 << config.log_n, config.R
    writes, reads = [], [[] for _ in range(R)]
    for t, step in enumerate(cache.steps):
        Ww = step.write.Ww
        for j, w in zip(Ww.indices[Ww.indptr[0]:Ww.indptr[1]], Ww.data[Ww.indptr[0]:Ww.indptr[1]]):
            writes.append((t, int(j), float(w)))                  # row 0: element 0, columns 0..N-1
        Wr = step.read.Wr
        for i in range(R):
            span = slice(Wr.indptr[i], Wr.indptr[i + 1])
            reads[i] += [(t, int(j), float(w)) for j, w in zip(Wr.indices[span], Wr.data[span])]
    lra = cache.record.lra[:, 0].copy()
    runner.model.backward(np.zeros_like(ys), cache)               # revert the buffer
    slots = {j for _, j, _ in writes} | {j for head in reads for _, j, _ in head}
    assert all(0 <= j < N for j in slots)
    return {"T": data.inputs.shape[0], "L": level, "writes": np.array(writes), "reads": [np.array(r) for r in reads],
            "lra": lra, "distinct_slots": len(slots), "N": N}


# ----------------------------------------------------------------- the curriculum
def run(config: Config, log=print) -> dict:
    started = time.perf_counter()
    dense_ab = dense_per_step_bytes(config)
    runner = Runner(config)
    optimizer = Adam(runner.model.params, lr=config.lr)
    N = 1 << config.log_n
    log(f"sam_curriculum: N = 2^{config.log_n} = {N:,} slots, B = {config.batch}, index {config.index!r} "
        f"(empty-memory lookup built in {runner.lookup_build_s:.2f} s); memory buffer "
        f"{_fmt_b(runner.state.M.nbytes)}; dense records per step and sequence: {dense_ab[0]:.0f} + "
        f"{dense_ab[1]:.1f} N bytes ({dense_ab[1] / 8:.1f} floats per slot)")
    losses, errors, level_of_step, step_seconds = [], [], [], []
    levels = []
    level, level_start, level_clock = config.start_level, 0, time.perf_counter()
    current = footprint(runner, level, dense_ab)
    train_started = time.perf_counter()
    step = 0
    stop_reason = "max_steps"
    while step < config.max_steps:
        if time.perf_counter() - train_started > config.budget_s:
            stop_reason = "budget"
            break
        tick = time.perf_counter()
        data = copy_batch(config, step_rng(config.seed, step), level)
        ys, cache = runner.forward(data.inputs)
        loss, dys = bit_sequence_loss(ys, (data.targets, data.mask))
        grads = runner.model.backward(dys, cache)                  # reverts the buffer to the empty memory
        grads, _ = clip_grad_norm(grads, config.clip)
        optimizer.step(grads)
        step_seconds.append(time.perf_counter() - tick)
        losses.append(loss)
        errors.append(bit_errors_per_sequence(ys, data.targets, data.mask))
        level_of_step.append(level)
        step += 1
        at_level = step - level_start
        recent = float(np.mean(errors[-min(at_level, config.window):]))
        if config.log_every and step % config.log_every == 0:
            log(f"step {step}  level {level}  loss {np.mean(losses[-config.log_every:]):.3f}  bit errors "
                f"{np.mean(errors[-config.log_every:]):.3f}  {np.mean(step_seconds[-config.log_every:]) * 1e3:.0f} "
                f"ms/step  {time.perf_counter() - started:.0f} s")
        if at_level >= config.window and recent < config.threshold:
            levels.append(_level_entry(current, level_start, step, level_clock, step_seconds, solved=True))
            log(_format_level(levels[-1]))
            if level >= config.max_level:
                stop_reason = "max_level"
                break
            level, level_start, level_clock = level * 2, step, time.perf_counter()
            current = footprint(runner, level, dense_ab)
    if not levels or levels[-1]["level"] != level:
        levels.append(_level_entry(current, level_start, step, level_clock, step_seconds, solved=False,
                                   recent=float(np.mean(errors[max(level_start, step - config.window):]))
                                   if step > level_start else None))
        log(_format_level(levels[-1]))
    train_seconds = time.perf_counter() - train_started
    # generalisation: fresh batches of exactly L for L = 1, 2, 4, ... up to twice the last level
    lengths = [L for L in (1 << np.arange(0, 12)) if L <= 2 * level]
    generalisation = {int(L): bit_errors_per_sequence(
        runner.outputs((d := copy_batch(config, np.random.default_rng([config.seed, 4, int(L)]), int(L), int(L))).inputs),
        d.targets, d.mask) for L in lengths}
    # what one training step (forward + backward) costs at lengths far beyond the curriculum
    probes = []
    for L in [int(x) for x in config.probe_lengths.split(",") if x.strip()]:
        probes.append(footprint(runner, L, dense_ab))
        log(_format_probe(probes[-1], machine_ram()))
    pattern = access_pattern(runner, level)
    empty = runner.memory_is_empty()
    solved = [e["level"] for e in levels if e["solved"]]
    summary = {"N": N, "steps": step, "stop_reason": stop_reason, "levels": levels,
               "highest_solved_level": max(solved) if solved else None, "final_level": level,
               "generalisation": generalisation, "probes": probes, "train_seconds": train_seconds,
               "seconds": time.perf_counter() - started, "memory_empty_after": empty,
               "dense_per_step": dense_ab, "ram_bytes": machine_ram(), "losses": losses, "errors": errors,
               "level_of_step": level_of_step, "pattern": pattern,
               "first_loss": float(np.mean(losses[:max(1, len(losses) // 10)])),
               "final_loss": float(np.mean(losses[-max(1, len(losses) // 10):]))}
    log(f"sam_curriculum: {step} steps in {train_seconds:.0f} s of training ({stop_reason}); highest solved level "
        f"{summary['highest_solved_level']}, stopped at level {level}; memory buffer back to empty: {empty}")
    log("sam_curriculum: bit errors per sequence at exactly L (fresh batch of 16): "
        + "  ".join(f"L={L}: {e:.2f}" for L, e in generalisation.items()))
    log(f"sam_curriculum: one sequence of L = {pattern['L']} (T = {pattern['T']}) touched {pattern['distinct_slots']} "
        f"distinct slots of {N:,}")
    return summary


def _level_entry(current: dict, level_start: int, step: int, clock: float, step_seconds: list, solved: bool,
                 recent: float | None = None) -> dict:
    steps = step - level_start
    return {**current, "solved": solved, "steps": steps, "end_step": step, "seconds": time.perf_counter() - clock,
            "s_per_step": float(np.mean(step_seconds[level_start:step])) if steps else float("nan"),
            "mean_errors": recent}


def _format_level(e: dict) -> str:
    status = "solved" if e["solved"] else "NOT solved" + (f" (bit errors {e['mean_errors']:.2f}, mean of the last batches)"
                                                           if e["mean_errors"] is not None else "")
    return (f"level h={e['level']} {status}: {e['steps']} steps ({e['seconds']:.0f} s, {e['s_per_step'] * 1e3:.0f} "
            f"ms/step); at L={e['level']} (T={e['T']}): memory buffer {_fmt_b(e['memory_bytes'])}, records "
            f"{_fmt_b(e['records_bytes'])} ({_fmt_b(e['records_per_step'])}/step), tracemalloc peak "
            f"{_fmt_b(e['peak_bytes'])} | dense BPTT: >= {_fmt_b(e['dense_lower_bytes'])} (memory copies), "
            f"~{_fmt_b(e['dense_estimate_bytes'])} (all records)")


def _format_probe(e: dict, ram: int | None) -> str:
    over = "" if ram is None else (" - more than this machine's RAM" if e["dense_lower_bytes"] > ram else
                                   " - more than this machine's RAM for all records" if e["dense_estimate_bytes"] > ram
                                   else "")
    return (f"one training step at L={e['level']} (T={e['T']}): forward + backward {e['fwd_bwd_s']:.1f} s (under "
            f"tracemalloc), records {_fmt_b(e['records_bytes'])} ({_fmt_b(e['records_per_step'])}/step), tracemalloc "
            f"peak {_fmt_b(e['peak_bytes'])} + the {_fmt_b(e['memory_bytes'])} buffer | dense BPTT: >= "
            f"{_fmt_b(e['dense_lower_bytes'])}, ~{_fmt_b(e['dense_estimate_bytes'])}{over}")


# ----------------------------------------------------------------- plots
def plot(out: Path, summary: dict, config: Config) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "sam_curriculum.png", out / "sam_curriculum_access.png"]
    N = summary["N"]

    fig, (ax_err, ax_mem) = plt.subplots(2, 1, figsize=(7.5, 7.5))
    errors = np.asarray(summary["errors"])
    steps = np.arange(1, len(errors) + 1)
    window = max(1, min(25, len(errors) // 10))
    ax_err.plot(steps, errors, color="0.8", lw=0.5, label="per batch")
    if len(errors) >= window:
        ax_err.plot(steps[window - 1:], np.convolve(errors, np.ones(window) / window, mode="valid"), color="C3",
                    label=f"mean of {window}")
    ax_err.set_yscale("symlog", linthresh=0.1)
    ax_err.set_ylabel("training bit errors per sequence")
    ax_err.set_xlabel("training step (batches of %d)" % config.batch)
    twin = ax_err.twinx()
    twin.step(steps, summary["level_of_step"], where="post", color="C0", lw=1.5)
    twin.set_yscale("log", base=2)
    twin.set_ylabel("level h (L ~ U{1..h})", color="C0")
    ax_err.legend(loc="upper left", fontsize=8)
    ax_err.set_title(f"SAM copy curriculum, N = 2^{config.log_n}, index {config.index}", fontsize=10)

    levels = summary["levels"] + summary["probes"]              # the probes: lengths beyond the curriculum
    Ts = [e["T"] for e in levels]
    for key, label, style in (("dense_estimate_bytes", "dense BPTT, all records (computed)", "s--"),
                              ("dense_lower_bytes", "dense BPTT, memory copies only (computed)", "s:"),
                              ("peak_bytes", "SAM tracemalloc peak (measured)", "o-"),
                              ("records_bytes", "SAM records (measured)", "o-")):
        ax_mem.plot(Ts, [e[key] / 2 ** 20 for e in levels], style, label=label)
    if summary["ram_bytes"]:
        ax_mem.axhline(summary["ram_bytes"] / 2 ** 20, color="k", lw=1, ls="-.", label="this machine's RAM")
    ax_mem.set_xscale("log", base=2)
    ax_mem.set_yscale("log")
    ax_mem.set_xlabel("T = 2L + 1 (the levels' longest sequences, then the probe lengths)")
    ax_mem.set_ylabel("MiB for one batch's forward + backward")
    ax_mem.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    pattern = summary["pattern"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    if len(pattern["writes"]):
        w = pattern["writes"]
        ax.scatter(w[:, 0], w[:, 1], s=10 + 60 * np.clip(w[:, 2], 0, 1), marker="s", color="C2", alpha=0.6,
                   label="write (size: weight)")
    for i, r in enumerate(pattern["reads"]):
        ax.scatter(r[:, 0] + 0.15 * (i + 1), r[:, 1], s=10 + 60 * r[:, 2], marker="o", facecolors="none",
                   edgecolors=f"C{i}", label=f"read head {i} (K = {config.K})")
    ax.scatter(np.arange(pattern["T"]), pattern["lra"], marker="x", color="C3", s=20, label="LRA slot")
    ax.set_xlabel("time step")
    ax.set_ylabel(f"slot (of N = {N:,})")
    ax.set_title(f"One copy sequence of L = {pattern['L']}: {pattern['distinct_slots']} distinct slots of {N:,} "
                 f"touched in {pattern['T']} steps", fontsize=10)
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    config = config_from_args(Config, args, QUICK)
    if config.start_level < 1 or config.log_n < 3 or config.batch < 1:
        raise ValueError(f"start_level >= 1, log_n >= 3 and batch >= 1 expected; got {config}")
    print(f"sam_curriculum: {config}", flush=True)
    summary = run(config, log=lambda line: print(line, flush=True))
    if not args.no_plots:
        summary["plots"] = [str(p) for p in plot(Path(args.out), summary, config)]
    ram = summary["ram_bytes"]
    print(f"sam_curriculum: done in {summary['seconds']:.0f} s" + (f"; this machine has {_fmt_b(ram)} of RAM" if ram else ""),
          flush=True)
    return summary


if __name__ == "__main__":
    main()
