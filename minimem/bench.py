"""Benchmarks: things that are compared are timed side by side in one run, and only ratios are claimed.

    python -m minimem.bench            # or: minimem bench
    python -m minimem.bench --quick    # fewer repeats (what the tests run, to keep this script alive)
    python -m minimem.bench --isolate  # every benchmark in a fresh Python process of its own
    python -m minimem.bench --json     # the rows as JSON (one list) instead of the table

Each benchmark interleaves its contestants (a, b, a, b, ...) over several rounds and reports the
median time of each, so a load spike on the shared machine hits both sides alike. Speed targets live
here, never in unit tests.

Memory: peak_memory(fn) is tracemalloc's peak during one call of fn, above what was traced when the
call began (NumPy reports its array buffers to tracemalloc, so this counts arrays and Python objects,
not the interpreter or BLAS workspaces). It is measured in calls of its own, after the timing, never
during it (tracing slows every allocation). Rows may carry "baseline_bytes" and "candidate_bytes";
format_table prints them, "-" where a row has none. Most families store the peak of one call there;
the SAM scaling rows (minimem.bench_sam) store the memory growth per time step instead.

Isolation: by default every benchmark runs in this one process, one after the other. What ran
before can move a ratio: the heap the earlier benchmarks leave behind changes how often a step's
arrays need fresh pages from the system (measured: LSAM's manual / autodiff ratio ranged 2.4-4.1x in
one process and stayed at ~3.2x run alone). --isolate runs each benchmark in a fresh interpreter
(`python -m minimem.bench --only NAME --json`, sequentially, never two at once) and gathers the rows.

The header states the machine: machine_description() gives the CPU count, the BLAS NumPy is linked
to, the BLAS thread variables in force, the Python, NumPy and (when importable) PyTorch versions.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from typing import Callable

import numpy as np

from minimem import autodiff as ad


def time_side_by_side(contestants: dict[str, Callable[[], object]], rounds: int, inner: int) -> dict[str, float]:
    """Median seconds per call of each contestant, measured in interleaved rounds."""
    for fn in contestants.values():                  # warm-up: caches, lazy imports
        fn()
    samples: dict[str, list[float]] = {name: [] for name in contestants}
    for _ in range(rounds):
        for name, fn in contestants.items():
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[name].append((time.perf_counter() - start) / inner)
    return {name: statistics.median(s) for name, s in samples.items()}


def peak_memory(fn: Callable[[], object]) -> int:
    """Bytes: tracemalloc's peak during one call of fn(), above the memory traced when it began.

    Call it outside any timing (tracing makes every allocation slower). If tracemalloc is already
    tracing, its peak is reset and tracing is left on; otherwise tracing starts and stops here.
    """
    gc.collect()
    was_tracing = tracemalloc.is_tracing()
    if was_tracing:
        tracemalloc.reset_peak()
    else:
        tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        if not was_tracing:
            tracemalloc.stop()
    return max(0, peak - base)


def peak_memory_of(contestants: dict[str, Callable[[], object]]) -> dict[str, int]:
    """{name: peak_memory(fn)} for the contestants of time_side_by_side, one call each (run it after
    the timing, so the timed calls are not traced)."""
    return {name: peak_memory(fn) for name, fn in contestants.items()}


BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")   # what minimem sets


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor(), else ""."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _blas_description() -> str:
    """Name, version and build of the BLAS NumPy is linked to (numpy >= 2: show_config(mode="dicts"))."""
    try:
        config = np.show_config(mode="dicts")
    except TypeError:                                   # numpy < 2 has no machine-readable form
        return "unknown (numpy < 2; see numpy.show_config())"
    blas = (config or {}).get("Build Dependencies", {}).get("blas", {})
    if not blas:
        return "unknown (numpy.show_config names none)"
    text = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    extra = blas.get("openblas configuration")
    return f"{text} ({' '.join(extra.split())})" if extra else text


def machine_description() -> str:
    """The machine and thread settings, as '# '-prefixed lines for a benchmark header: CPU model and
    count (os.cpu_count, and the CPUs this process may use, os.sched_getaffinity, where available),
    the BLAS NumPy is linked to, the BLAS thread variables in force (minimem sets them to 1 unless
    already set; they only act if set before NumPy is imported), Python and NumPy versions, and
    PyTorch's version and torch.get_num_threads() when torch is importable."""
    cpus = f"{os.cpu_count()} CPUs (os.cpu_count)"
    if hasattr(os, "sched_getaffinity"):
        cpus += f", {len(os.sched_getaffinity(0))} usable by this process (os.sched_getaffinity)"
    model = _cpu_model()
    lines = [f"# machine: {platform.system()} {platform.machine()}" + (f", {model}" if model else "") + f", {cpus}",
             f"# python {platform.python_implementation()} {platform.python_version()}, numpy {np.__version__}, "
             f"BLAS {_blas_description()}",
             "# BLAS threads: " + ", ".join(f"{name}={os.environ.get(name, 'unset')}" for name in BLAS_THREAD_VARIABLES)]
    if importlib.util.find_spec("torch") is not None:
        try:
            import torch
            lines.append(f"# torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}")
        except Exception as error:                      # installed but broken: say so, do not fail the header
            lines.append(f"# torch: installed but not importable ({type(error).__name__}: {error})")
    else:
        lines.append("# torch: not installed")
    return "\n".join(lines)


def bench_op_overhead(rounds: int) -> list[dict]:
    """Per-op cost of the autodiff core (forward + backward) against the raw NumPy call."""
    rng = np.random.default_rng(0)
    rows = []
    for shape in [(16, 128), (64, 512)]:
        a_np, b_np = rng.standard_normal(shape), rng.standard_normal(shape)

        def numpy_mul():
            return a_np * b_np

        def tensor_mul_forward():
            with ad.no_grad():
                return ad.Tensor(a_np) * ad.Tensor(b_np)

        def tensor_mul_backward():
            a, b = ad.Tensor(a_np, requires_grad=True), ad.Tensor(b_np, requires_grad=True)
            (a * b).backward(np.ones(shape))

        def numpy_mul_with_vjp():                    # what a hand-written pair computes
            out = a_np * b_np
            return out, np.ones(shape) * b_np, np.ones(shape) * a_np

        contestants = {"numpy": numpy_mul, "tensor": tensor_mul_forward,
                       "numpy_vjp": numpy_mul_with_vjp, "tensor_vjp": tensor_mul_backward}
        t = time_side_by_side(contestants, rounds, inner=200)
        mem = peak_memory_of(contestants)
        rows.append({"benchmark": f"mul {shape[0]}x{shape[1]} forward", "baseline": "numpy",
                     "baseline_s": t["numpy"], "candidate": "autodiff", "candidate_s": t["tensor"],
                     "baseline_bytes": mem["numpy"], "candidate_bytes": mem["tensor"]})
        rows.append({"benchmark": f"mul {shape[0]}x{shape[1]} forward+backward", "baseline": "numpy",
                     "baseline_s": t["numpy_vjp"], "candidate": "autodiff", "candidate_s": t["tensor_vjp"],
                     "baseline_bytes": mem["numpy_vjp"], "candidate_bytes": mem["tensor_vjp"]})
    return rows


def bench_lstm(rounds: int, T: int = 50, B: int = 16, H: int = 128, X: int = 32) -> list[dict]:
    """Manual BPTT against the autodiff twin for an LSTM forward + backward over T steps."""
    from minimem.nn import lstm

    rng = np.random.default_rng(0)
    params = lstm.lstm_init(rng, X, H)
    xs = rng.standard_normal((T, B, X))
    dhs = rng.standard_normal((T, B, H))
    h0, c0 = np.zeros((B, H)), np.zeros((B, H))

    def manual():
        hs, cache = lstm.lstm_forward(xs, h0, c0, params)
        return lstm.lstm_backward(dhs, cache)

    def autodiff():
        tparams = {k: ad.Tensor(v, requires_grad=True) for k, v in params.items()}
        hs = lstm.lstm_autodiff(ad.Tensor(xs), ad.Tensor(h0), ad.Tensor(c0), tparams)
        hs.backward(dhs)

    contestants = {"manual": manual, "autodiff": autodiff}
    t = time_side_by_side(contestants, rounds, inner=1)
    mem = peak_memory_of(contestants)
    return [{"benchmark": f"LSTM fwd+bwd T={T} B={B} H={H}", "baseline": "manual",
             "baseline_s": t["manual"], "candidate": "autodiff", "candidate_s": t["autodiff"],
             "baseline_bytes": mem["manual"], "candidate_bytes": mem["autodiff"]}]


BENCHMARKS = {"op_overhead": bench_op_overhead, "lstm": bench_lstm}

# Each model family with a benchmark module contributes its own entries via benchmarks(quick).
FAMILY_MODULES = ("minimem.bench_dnc", "minimem.bench_sam", "minimem.bench_nam", "minimem.bench_hma",
                  "minimem.bench_titans", "minimem.bench_mnm", "minimem.bench_generative",
                  "minimem.bench_engines", "minimem.bench_sam_torch")


def all_benchmarks(quick: bool = False) -> dict[str, Callable[[int], list[dict]]]:
    """The core benchmarks plus every family module's, at the quick or the full size."""
    import importlib

    found = dict(BENCHMARKS)
    for module_name in FAMILY_MODULES:
        found.update(importlib.import_module(module_name).benchmarks(quick=quick))
    return found


def format_table(rows: list[dict]) -> str:
    """Markdown table: both times, their ratio, and both sides' memory ("baseline_bytes",
    "candidate_bytes"; "-" where a row has none)."""
    lines = ["| benchmark | baseline | time | candidate | time | candidate / baseline | baseline memory | "
             "candidate memory |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['benchmark']} | {r['baseline']} | {_fmt(r['baseline_s'])} | {r['candidate']} | "
                     f"{_fmt(r['candidate_s'])} | {format_ratio(r['candidate_s'] / r['baseline_s'])} | "
                     f"{format_bytes(r.get('baseline_bytes'))} | {format_bytes(r.get('candidate_bytes'))} |")
    return "\n".join(lines)


def format_ratio(ratio: float) -> str:
    """candidate / baseline as "3.2x"; below 1 (the candidate is the faster one) it also reads the
    other way round, "0.15x (6.8x faster)", so a speed-up is never a number to invert in one's head."""
    if ratio >= 0.95:
        return f"{ratio:.1f}x"
    return f"{ratio:.2f}x ({1.0 / ratio:.1f}x faster)"


def format_bytes(n: float | None) -> str:
    """Decimal units (B, kB, MB, GB); "-" for None."""
    if n is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _fmt(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def family_main(benchmarks: Callable[[bool], dict], title: str, prog: str, doc: str | None,
                argv: list[str] | None = None) -> int:
    """The command line of a family module run alone (`python -m minimem.bench_hma` ...): its
    benchmarks(quick) as one table under a header naming the machine. Options: --quick (tiny sizes,
    one round: checks the code runs), --rounds N (interleaved rounds, default 5), --only NAME."""
    parser = argparse.ArgumentParser(prog=prog, description=(doc or title).strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round (checks the code runs)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians are reported)")
    parser.add_argument("--only", choices=sorted(benchmarks(True)), action="append",
                        help="run only these (repeatable)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1; got {args.rounds}")
    rounds = 1 if args.quick else args.rounds
    found = benchmarks(args.quick)
    rows, skipped = [], []
    for name in args.only or list(found):
        new_rows = found[name](rounds)
        rows += new_rows
        if not new_rows:
            skipped.append(name)                # e.g. a PyTorch comparison without torch installed
    print(f"# minimem {title} ({rounds} interleaved rounds, medians)")
    print(machine_description())
    if skipped:
        print(f"# no rows (skipped; see each benchmark's docstring): {', '.join(skipped)}")
    print(format_table(rows))
    return 0


def _plain_number(value):
    """json.dumps' fallback: NumPy scalars (a row's np.int64 byte count, say) as Python numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"a benchmark row holds {type(value).__name__}, which JSON cannot store")


def run_isolated(name: str, quick: bool) -> list[dict]:
    """The rows of one benchmark, run in a fresh Python process (`python -m minimem.bench --only NAME
    --json`); RuntimeError with the child's error output if it fails."""
    command = [sys.executable, "-m", "minimem.bench", "--only", name, "--json"] + (["--quick"] if quick else [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark {name} failed in its own process (exit {done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="minimem bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: checks the script runs, numbers are rough")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only these benchmarks (repeatable; default: all)")
    parser.add_argument("--isolate", action="store_true",
                        help="run every benchmark in a fresh Python process of its own (one at a time)")
    parser.add_argument("--json", action="store_true", help="print the rows as a JSON list instead of the table")
    args = parser.parse_args(argv)
    rounds = 2 if args.quick else 7
    found = all_benchmarks(quick=args.quick)
    unknown = sorted(set(args.only or ()) - set(found))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; expected some of {sorted(found)}")
    rows = []
    for name in args.only or list(found):
        rows += run_isolated(name, args.quick) if args.isolate else found[name](rounds)
    if args.json:
        print(json.dumps(rows, default=_plain_number))
        return 0
    print(f"# minimem benchmarks ({rounds} interleaved rounds, medians; memory: tracemalloc peak of one call, "
          f"measured apart from the timing; SAM scaling rows: memory growth per step"
          f"{'; every benchmark in a fresh process' if args.isolate else ''})")
    print(machine_description())
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
