"""Benchmarks: things that are compared are timed side by side in one run, and only ratios are claimed.

    python -m minimem.bench            # or: minimem bench
    python -m minimem.bench --quick    # fewer repeats (what the tests run, to keep this script alive)

Each benchmark interleaves its contestants (a, b, a, b, ...) over several rounds and reports the
median time of each, so a load spike on the shared machine hits both sides alike. Speed targets live
here, never in unit tests.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
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

        t = time_side_by_side({"numpy": numpy_mul, "tensor": tensor_mul_forward,
                               "numpy_vjp": numpy_mul_with_vjp, "tensor_vjp": tensor_mul_backward},
                              rounds, inner=200)
        rows.append({"benchmark": f"mul {shape[0]}x{shape[1]} forward", "baseline": "numpy",
                     "baseline_s": t["numpy"], "candidate": "autodiff", "candidate_s": t["tensor"]})
        rows.append({"benchmark": f"mul {shape[0]}x{shape[1]} forward+backward", "baseline": "numpy",
                     "baseline_s": t["numpy_vjp"], "candidate": "autodiff", "candidate_s": t["tensor_vjp"]})
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

    t = time_side_by_side({"manual": manual, "autodiff": autodiff}, rounds, inner=1)
    return [{"benchmark": f"LSTM fwd+bwd T={T} B={B} H={H}", "baseline": "manual",
             "baseline_s": t["manual"], "candidate": "autodiff", "candidate_s": t["autodiff"]}]


BENCHMARKS = {"op_overhead": bench_op_overhead, "lstm": bench_lstm}

# Each model family with a benchmark module contributes its own entries via benchmarks(quick).
FAMILY_MODULES = ("minimem.bench_dnc", "minimem.bench_sam", "minimem.bench_nam", "minimem.bench_hma",
                  "minimem.bench_titans", "minimem.bench_mnm", "minimem.bench_generative")


def all_benchmarks(quick: bool = False) -> dict[str, Callable[[int], list[dict]]]:
    """The core benchmarks plus every family module's, at the quick or the full size."""
    import importlib

    found = dict(BENCHMARKS)
    for module_name in FAMILY_MODULES:
        found.update(importlib.import_module(module_name).benchmarks(quick=quick))
    return found


def format_table(rows: list[dict]) -> str:
    lines = ["| benchmark | baseline | time | candidate | time | candidate / baseline |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['benchmark']} | {r['baseline']} | {_fmt(r['baseline_s'])} | {r['candidate']} | "
                     f"{_fmt(r['candidate_s'])} | {r['candidate_s'] / r['baseline_s']:.1f}x |")
    return "\n".join(lines)


def _fmt(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="minimem bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: checks the script runs, numbers are rough")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only these benchmarks (repeatable; default: all)")
    args = parser.parse_args(argv)
    rounds = 2 if args.quick else 7
    found = all_benchmarks(quick=args.quick)
    unknown = sorted(set(args.only or ()) - set(found))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; expected some of {sorted(found)}")
    rows = []
    for name in args.only or list(found):
        rows += found[name](rounds)
    print(f"# minimem benchmarks ({platform.python_implementation()} {platform.python_version()}, "
          f"numpy {np.__version__}, {rounds} interleaved rounds, medians)")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
