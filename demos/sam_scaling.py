"""How a SAM step's time and memory grow with the number of slots N, sparse against dense - the
paper's Fig. 1 (Rae et al. 2016, arXiv:1610.09027; spec C.9) measured with minimem.bench_sam: one
time step of forward + backward, LSTM 100, W 32, R 4, K 4, B 1, float64, N = 2^10 .. 2^20.

    python demos/sam_scaling.py          # 8 min on a quiet machine; at N = 2^20 the LSH step 1,104x faster (measured)
    python demos/sam_scaling.py --quick  # a few seconds; the tests run this (tiny N, numbers meaningless)

Measured 2026-11-21 on a quiet moment of the 2-core machine (load ~1-2; 3 interleaved rounds per N,
medians; 7.7 min), after the SAM speed work:
    N      dense/step  exact/step  lsh/step   dense/exact  dense/lsh  growth/step dense, exact, lsh
    2^10   3.47 ms     2.32 ms     2.89 ms      1.5x        1.2x       496 KiB, 21.3 KiB, 21.2 KiB
    2^12   7.26 ms     2.41 ms     3.25 ms      3.0x        2.2x       1.9 MiB, 21.3 KiB, 22.2 KiB
    2^14   20.6 ms     3.29 ms     3.00 ms      6.3x        6.9x       7.5 MiB, 21.2 KiB, 23.8 KiB
    2^16   167 ms      6.35 ms     3.36 ms     26x          50x        30 MiB,  21.3 KiB, 23.8 KiB
    2^18   820 ms      20.3 ms     3.78 ms     41x         217x        120 MiB, 21.2 KiB, 23.8 KiB
    2^19   1.75 s      30.4 ms     3.85 ms     58x         455x        240 MiB, 21.3 KiB, 23.8 KiB
    2^20   5.34 s      81.5 ms     4.84 ms     66x        1104x        737 MiB, 21.3 KiB, 23.8 KiB
Targets (issue 4): at N = 2^20 the approximate-index step >= 1,000x faster than dense: 1,104x; the
memory that grows per step >= 3,000x smaller: 31,681x (dense 737 MiB against LSH 23.8 KiB).
Log-log slopes: dense time 1.10 and memory 1.02 (linear in N); exact top-K time 0.50 (its O(N W)
scan shows from 2^15); LSH time 0.07 and memory 0.01 (flat). An earlier run on the loaded machine
(load ~7, before the speed work) gave 1,254x and 33,079x at 2^20, with LSH steps inflated to ~20 ms
at 2^14-2^18. Caveats: the default LSH (8 tables of log2(N) - 4 bits) is a weak index on this
random 32-d memory: recall@4 0.08 for random queries and 0.28 for near queries at 2^20, and the
stored row a near query came from is found 83% of the time (k-d tree and exact top-K are the
accurate choices; demos/sam_curriculum.py trains with the k-d tree). The paper measured 12 s vs
7 ms (1,600x) with a C++ k-d tree at N = 1M.

Writes sam_scaling.png (log-log: seconds per step, and memory that grows per step, against N, for
the dense path, SAM with exact top-K and SAM with the LSH index) and sam_scaling.json (every number
of the table) to --out. The method (side-by-side timing, tracemalloc growth, where the dense path
stops) is minimem.bench_sam's docstring.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import minimem  # noqa: F401  (before NumPy: single-threaded BLAS)
import numpy as np

from minimem.bench_sam import SIZES, Sizes, _fmt_ratio, format_details, format_scaling_table, measure_scaling

STYLE = {"dense": ("C3", "s"), "sam exact": ("C0", "o"), "sam lsh": ("C2", "^"), "sam kdtree": ("C1", "v")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round: checks the script runs")
    parser.add_argument("--min-log-n", type=int, default=None, help="smallest N = 2^this (default 10)")
    parser.add_argument("--max-log-n", type=int, default=None, help="largest N = 2^this (default 20)")
    parser.add_argument("--dense-max-log-n", type=int, default=None,
                        help="largest N for the dense path (default 20: it needs about 3 GB there)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 3)")
    parser.add_argument("--kdtree", action="store_true", help="also the k-d tree index (eps = 4)")
    parser.add_argument("--out", default=".", help="directory for the PNG and the JSON")
    parser.add_argument("--no-plots", action="store_true", help="write no PNG (matplotlib not needed)")
    return parser


def slope(results: list[dict], name: str, key: str) -> float | None:
    """Least-squares slope of log(value) against log(N) over the N where `name` ran (1 = linear in N)."""
    points = [(e["N"], e["contestants"][name][key]) for e in results if name in e["contestants"]]
    points = [(n, v) for n, v in points if v and v > 0]
    if len(points) < 2:
        return None
    n, v = np.log(np.array(points, dtype=float)).T
    return float(np.polyfit(n, v, 1)[0])


def plot(out: Path, results: list[dict], sizes: Sizes) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    path = out / "sam_scaling.png"
    names = []
    for entry in results:
        names += [n for n in entry["contestants"] if n not in names]
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.6))
    for name in names:
        color, marker = STYLE.get(name, ("0.4", "x"))
        Ns = [e["N"] for e in results if name in e["contestants"]]
        for ax, key, scale in ((ax_time, "s_per_step", 1.0), (ax_mem, "growth_bytes", 1.0 / 2 ** 20)):
            values = [e["contestants"][name][key] * scale for e in results if name in e["contestants"]]
            fitted = slope(results, name, key)
            label = name if fitted is None else f"{name} (slope {fitted:.2f})"
            ax.plot(Ns, values, marker=marker, color=color, label=label)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
    last = results[-1]
    for ax, key, scale, unit in ((ax_time, "s_per_step", 1.0, "s"), (ax_mem, "growth_bytes", 1.0 / 2 ** 20, "MiB")):
        c = last["contestants"]
        if "dense" in c:
            for name in names[1:] if names[0] == "dense" else names:
                if name != "dense" and name in c and c[name][key] > 0:
                    ratio = c["dense"][key] / c[name][key]
                    ax.annotate(_fmt_ratio(ratio), (last["N"], c[name][key] * scale), textcoords="offset points",
                                xytext=(6, 0), fontsize=8, color=STYLE.get(name, ("0.4",))[0], va="center")
        ax.set_xlabel("memory slots N")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax_time.set_ylabel("seconds per time step (forward + backward)")
    ax_mem.set_ylabel("memory growth per time step (MiB)")
    ax_time.set_title("time (labels at the right: dense / sparse)", fontsize=10)
    ax_mem.set_title("memory that grows with sequence length", fontsize=10)
    fig.suptitle(f"SAM scaling: LSTM {sizes.H}, W={sizes.W}, R={sizes.R}, K={sizes.K}, B=1, float64 "
                 f"(slope 1 = linear in N)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    base = SIZES["quick" if args.quick else "full"]
    lo = args.min_log_n if args.min_log_n is not None else min(base.log_ns)
    hi = args.max_log_n if args.max_log_n is not None else max(base.log_ns)
    sizes = Sizes(**{**base.__dict__, "log_ns": tuple(range(lo, hi + 1, 2 if args.quick else 1)),
                     "kdtree": args.kdtree,
                     "dense_max_log_n": base.dense_max_log_n if args.dense_max_log_n is None else args.dense_max_log_n})
    rounds = args.rounds or (1 if args.quick else 3)
    print(f"sam_scaling: N = 2^{lo} .. 2^{hi}, dense up to 2^{min(hi, sizes.dense_max_log_n)}, {rounds} rounds",
          flush=True)
    started = time.perf_counter()
    results = measure_scaling(rounds, sizes, log=lambda line: print(line, flush=True))
    table = format_scaling_table(results)
    print(table)
    print()
    print(format_details(results))
    summary = {"results": results, "seconds": time.perf_counter() - started,
               "slopes": {name: {key: slope(results, name, key) for key in ("s_per_step", "growth_bytes")}
                          for name in results[-1]["contestants"]}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sam_scaling.json").write_text(json.dumps(summary, indent=1))
    if not args.no_plots:
        summary["plots"] = [str(plot(out, results, sizes))]
    print(f"sam_scaling: {summary['seconds']:.0f} s; slopes (log-log, 1 = linear in N): " + "; ".join(
        f"{name} time {s['s_per_step']:.2f} memory {s['growth_bytes']:.2f}" for name, s in summary["slopes"].items()
        if s["s_per_step"] is not None), flush=True)
    return summary


if __name__ == "__main__":
    main()
