"""The SAM scaling benchmark (Rae et al. 2016, arXiv:1610.09027, Fig. 1; spec specs/ntm_dnc_sam.md
C.4, C.9; issue 4): one time step of forward + backward, sparse against dense, as N grows.

    python -m minimem.bench_sam                      # N = 2^10 .. 2^20 (about 15 minutes on 2 busy cores)
    python -m minimem.bench_sam --quick              # tiny N, seconds; what the tests run
    python -m minimem.bench_sam --max-log-n 16       # stop earlier
    python -m minimem.bench_sam --long 10000         # T = 10,000 steps at N = 2^20: peak memory

Setup (the paper's benchmark, Supplementary E): LSTM controller H = 100, word size W = 32, R = 4
read heads, K = 4, batch B = 1 (the paper used 8 for speed and 1 for memory; B = 8 at N = 2^20 needs
2 GiB per float64 memory copy, too much for a shared laptop-class machine), float64, X = Y = 8,
random N(0, 1) memory, distinct random access times, empty previous read weightings.
Contestants, each a SAM with the same parameters:
    dense        engine="dense", K = N: minimem's dense path (C.3), which keeps every M_t and
                 scores every slot (the NTM/DAM cost model: O(N W) time and space per step).
    sam exact    the sparse engine with exact top-K ("SAM linear"): O(N W) time per step for the
                 scores, O(R K W) space per step.
    sam lsh      the sparse engine with the random-hyperplane LSH index (8 tables of log2(N) - 4 bits:
                 about 16 rows per bucket): O(log N) per query.
    sam kdtree   (--kdtree) the sparse engine with the cKDTree index, eps = 4.
The sparse contestants run the way a training loop would: `lookup=` carries the index and the LRA
order built once for the state (their build time is reported, not timed per step), `in_place=True`
uses the state's memory as the buffer (forward + backward leave it bit for bit unchanged), and the
backward's gradient buffer is allocated lazily. Their per-call O(N W) input check stays in the
time. Each contestant runs a sequence of T steps (sparse: T = 100; dense: T = 8 down to 2 as N grows,
to bound its memory); time per step = (forward + backward) / T, median of interleaved rounds
(minimem.bench.time_side_by_side).

Memory growth per step: tracemalloc's peak during forward + backward of T1 and T2 steps,
(peak(T2) - peak(T1)) / (T2 - T1) - the memory that grows with sequence length (per-step records
for the sparse engine, every M_t and (B, R, N) weighting for the dense one), not the memory the
model needs once. The records' own size (bytes of the cached arrays per step) is printed beside it.
Recall@K of an approximate index is measured on the benchmark memory for random queries (the
benchmark's regime: nothing is near anything in random 32-d data) and for queries near a stored
row (q = row + noise, cosine about 0.95: the regime of a trained memory reading back what it wrote).

benchmarks(quick=False) returns {name: fn(rounds) -> rows} with the rows of minimem.bench (baseline =
the sparse contestant, candidate = dense, so "candidate / baseline" is the speed-up); each row also
carries the per-step bytes ("baseline_bytes", "candidate_bytes") and the sizes.
"""

from __future__ import annotations

import argparse
import functools
import gc
import platform
import resource
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from minimem.bench import time_side_by_side
from minimem.memory.sam import SAM, SAMConfig, SAMState
from minimem.memory.sam_index import recall_at_k


@dataclass(frozen=True)
class Sizes:
    """One scaling run. T_dense(N) = clamp(dense_budget // N, 2, 8) keeps the dense records bounded."""
    log_ns: tuple = tuple(range(10, 21))
    T: int = 100                 # steps per timed call of the exact and k-d tree contestants
    T_lsh: int = 500             # ... of the LSH contestant (about as long a call as the dense one's)
    dense_budget: int = 1 << 21  # N * T_dense <= this: T_dense = 2 at N = 2^20 (about 1.3 GB per step)
    dense_max_log_n: int = 20
    H: int = 100
    W: int = 32
    R: int = 4
    K: int = 4
    X: int = 8
    kdtree: bool = False
    contestants: tuple = field(default=("dense", "sam exact", "sam lsh"))

    def T_dense(self, N: int) -> int:
        return int(min(8, max(2, self.dense_budget // N)))


SIZES = {"full": Sizes(),
         "quick": Sizes(log_ns=(6, 8), T=4, T_lsh=6, dense_budget=1 << 9, H=8, W=4, R=2, K=2, X=3)}


def _config(sizes: Sizes, N: int, name: str) -> SAMConfig:
    common = dict(X=sizes.X, Y=sizes.X, N=N, W=sizes.W, R=sizes.R, H=sizes.H)
    if name == "dense":
        return SAMConfig(**common, K=N, engine="dense")
    if name == "sam exact":
        return SAMConfig(**common, K=sizes.K)
    if name == "sam lsh":
        return SAMConfig(**common, K=sizes.K, index="lsh", lsh_tables=8,
                         lsh_bits=int(min(30, max(1, np.log2(N) - 4))))
    if name == "sam kdtree":
        return SAMConfig(**common, K=sizes.K, index="kdtree", index_eps=4.0)
    raise ValueError(f"unknown contestant {name!r}")


def benchmark_state(config: SAMConfig, rng: np.random.Generator) -> SAMState:
    """B = 1: memory N(0, 1), access times a random permutation of 0..N-1 at t = N (no LRA ties),
    empty previous read weightings, zero read words and controller state."""
    state = SAM(config).initial_state(1)
    return state._replace(M=rng.standard_normal((1, config.N, config.W)),
                          last=rng.permutation(config.N)[None].astype(np.int64), t=config.N)


class Contestant:
    """A model, its state (and lookup), inputs for T steps: call() runs forward + backward once."""

    def __init__(self, sizes: Sizes, N: int, name: str, params: dict | None, seed: int = 0):
        self.name, self.N = name, N
        self.config = _config(sizes, N, name)
        self.model = SAM(self.config, np.random.default_rng(seed))
        if params is not None:
            self.model.params = params                       # the same parameters for every contestant
        rng = np.random.default_rng(seed + 1)
        self.state = benchmark_state(self.config, rng)
        self.T = sizes.T_dense(N) if name == "dense" else sizes.T_lsh if name == "sam lsh" else sizes.T
        self.xs = rng.standard_normal((self.T, 1, self.config.X))
        self.dys = rng.standard_normal((self.T, 1, self.config.Y))
        start = time.perf_counter()
        self.lookup = None if name == "dense" else self.model.lookup(self.state)
        self.build_s = time.perf_counter() - start

    def call(self, T: int | None = None) -> None:
        T = self.T if T is None else T
        xs, dys = self.xs[:T], self.dys[:T]
        if self.lookup is None:
            ys, cache = self.model.forward(xs, self.state)
        else:
            ys, cache = self.model.forward(xs, self.state, copy_final_memory=False, lookup=self.lookup,
                                           in_place=True)
        self.model.backward(dys, cache)

    def record_bytes(self) -> float:
        """Bytes of the arrays the cache keeps per step (the records), averaged over T steps."""
        if self.lookup is None:
            ys, cache = self.model.forward(self.xs, self.state)
        else:
            ys, cache = self.model.forward(self.xs, self.state, copy_final_memory=False, lookup=self.lookup,
                                           in_place=True)
        total = records_bytes(cache, self.model.params)
        self.model.backward(self.dys, cache)                 # reverts the in-place buffer
        return total / self.T

    def growth_per_step(self) -> float:
        """tracemalloc: (peak of T2 steps - peak of T1 steps) / (T2 - T1), bytes."""
        T2 = self.T
        T1 = max(1, T2 // 2)
        peaks = []
        for T in (T1, T2):
            gc.collect()
            tracemalloc.start()
            self.call(T)
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        return (peaks[1] - peaks[0]) / (T2 - T1)

    def recall(self, queries: int = 64) -> dict:
        """The lookup's index on the state's memory: recall@K for random queries and for queries near
        a stored row (module docstring), and how often that stored row is among the K found."""
        rng = np.random.default_rng(7)
        M, W, K = self.state.M, self.config.W, self.config.K
        source = rng.integers(0, self.N, size=queries)
        rows = M[0, source]
        near = rows + 0.3 * np.linalg.norm(rows, axis=-1, keepdims=True) / np.sqrt(W) * rng.standard_normal(rows.shape)
        found = self.lookup.index.query(M, near[None], K)[0]                          # (queries, K)
        return {"recall_random": recall_at_k(self.lookup.index, M, rng.standard_normal((1, queries, W)), K),
                "recall_near": recall_at_k(self.lookup.index, M, near[None], K),
                "near_found": float(np.mean(np.any(found == source[:, None], axis=1)))}


def records_bytes(cache, params: dict) -> int:
    """Bytes of the distinct arrays a SAM cache keeps for the backward: the per-step records
    (cache.steps) and step 9's input rows [h_t; r_t] of all t (cache.output), not counting the
    parameters the caches refer to (one copy, shared by every step) or views of arrays counted elsewhere."""
    return _nbytes((cache.steps, cache.output), {id(value) for value in params.values()})


def _nbytes(x, seen=None) -> int:
    seen = set() if seen is None else seen
    if id(x) in seen:
        return 0
    seen.add(id(x))
    if isinstance(x, np.ndarray):
        return x.nbytes if x.base is None else 0             # views share their base's bytes
    if hasattr(x, "indptr"):                                 # a CSR matrix
        return x.data.nbytes + x.indices.nbytes + x.indptr.nbytes
    if isinstance(x, (tuple, list)):
        return sum(_nbytes(v, seen) for v in x)
    if isinstance(x, dict):
        return sum(_nbytes(v, seen) for v in x.values())
    return 0


def measure_scaling(rounds: int, sizes: Sizes, log=print) -> list[dict]:
    """One dict per N: for every contestant its seconds per step, bytes per step (tracemalloc
    growth and record size), T, lookup build seconds, and recall for approximate indexes."""
    results = []
    names = list(sizes.contestants) + (["sam kdtree"] if sizes.kdtree and "sam kdtree" not in sizes.contestants
                                       else [])
    for log_n in sizes.log_ns:
        N = 1 << log_n
        present = [n for n in names if n != "dense" or log_n <= sizes.dense_max_log_n]
        params = SAM(_config(sizes, N, "sam exact"), np.random.default_rng(0)).params
        contestants = {name: Contestant(sizes, N, name, params) for name in present}
        seconds = time_side_by_side({name: c.call for name, c in contestants.items()}, rounds, inner=1)
        entry = {"N": N, "log_n": log_n, "contestants": {}}
        for name, c in contestants.items():
            entry["contestants"][name] = {
                "s_per_step": seconds[name] / c.T, "T": c.T, "build_s": c.build_s,
                "growth_bytes": c.growth_per_step(),
                "record_bytes": None if name == "dense" else c.record_bytes(),
                **(c.recall() if c.config.index != "exact" else
                   {"recall_random": None, "recall_near": None, "near_found": None})}
        results.append(entry)
        log(_format_entry(entry))
        del contestants
        gc.collect()
    return results


def rows_from(results: list[dict]) -> list[dict]:
    """minimem.bench rows: baseline = a sparse contestant, candidate = dense (candidate / baseline is
    the speed-up); N without a dense measurement give no rows."""
    rows = []
    for entry in results:
        dense = entry["contestants"].get("dense")
        if dense is None:
            continue
        for name, c in entry["contestants"].items():
            if name == "dense":
                continue
            rows.append({"benchmark": f"SAM step fwd+bwd N=2^{entry['log_n']}", "baseline": name,
                         "baseline_s": c["s_per_step"], "candidate": "dense", "candidate_s": dense["s_per_step"],
                         "baseline_bytes": c["growth_bytes"], "candidate_bytes": dense["growth_bytes"],
                         "N": entry["N"]})
    return rows


def bench_sam_scaling(rounds: int, quick: bool = False) -> list[dict]:
    """Per-step forward + backward of SAM (exact and LSH) against the dense path, N = 2^10 .. 2^20."""
    return rows_from(measure_scaling(rounds, SIZES["quick" if quick else "full"], log=lambda line: None))


def benchmarks(quick: bool = False) -> dict[str, Callable[[int], list[dict]]]:
    """{name: fn(rounds) -> rows} for minimem.bench."""
    return {"sam_scaling": functools.partial(bench_sam_scaling, quick=quick)}


# ----------------------------------------------------------------- printing
def _fmt_s(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _fmt_b(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _fmt_ratio(ratio: float) -> str:
    """1234x, 12.3x, 0.12x."""
    return f"{ratio:.0f}x" if ratio >= 100 else f"{ratio:.1f}x" if ratio >= 1 else f"{ratio:.2f}x"


def _format_entry(entry: dict) -> str:
    parts = [f"N=2^{entry['log_n']}"]
    for name, c in entry["contestants"].items():
        extra = "" if c["recall_random"] is None else (f", recall@K {c['recall_random']:.2f} random / "
                                                        f"{c['recall_near']:.2f} near, row found {c['near_found']:.2f}")
        parts.append(f"{name}: {_fmt_s(c['s_per_step'])}/step (T={c['T']}), +{_fmt_b(c['growth_bytes'])}/step{extra}")
    return " | ".join(parts)


def format_scaling_table(results: list[dict]) -> str:
    """Markdown: time and memory growth per step of every contestant, and dense / sparse ratios."""
    names = []
    for entry in results:
        names += [n for n in entry["contestants"] if n not in names]
    sparse = [n for n in names if n != "dense"]
    head = ["N"] + [f"{n} time/step" for n in names] + [f"dense / {n} time" for n in sparse] \
        + [f"{n} growth/step" for n in names] + [f"dense / {n} growth" for n in sparse]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for entry in results:
        c = entry["contestants"]
        dense = c.get("dense")
        cells = [f"2^{entry['log_n']}"]
        cells += [_fmt_s(c[n]["s_per_step"]) if n in c else "not run" for n in names]
        cells += [_fmt_ratio(dense["s_per_step"] / c[n]["s_per_step"]) if dense and n in c else "-" for n in sparse]
        cells += [_fmt_b(c[n]["growth_bytes"]) if n in c else "not run" for n in names]
        cells += [_fmt_ratio(dense["growth_bytes"] / c[n]["growth_bytes"]) if dense and n in c and c[n]["growth_bytes"] > 0
                  else "-" for n in sparse]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_details(results: list[dict]) -> str:
    lines = ["| N | contestant | T | lookup build | records/step | recall@K random | recall@K near | near: row found |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for entry in results:
        for name, c in entry["contestants"].items():
            recall = ["-"] * 3 if c["recall_random"] is None else [
                f"{c[key]:.2f}" for key in ("recall_random", "recall_near", "near_found")]
            lines.append(f"| 2^{entry['log_n']} | {name} | {c['T']} | {_fmt_s(c['build_s']) if name != 'dense' else '-'} | "
                         f"{'-' if c['record_bytes'] is None else _fmt_b(c['record_bytes'])} | " + " | ".join(recall) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------- a long sequence
def long_run(T: int, log_n: int = 20, index: str = "lsh", log=print) -> dict:
    """Forward over T steps then backward, at N = 2^log_n with the sparse engine and an approximate
    index, the benchmark's setup otherwise: time, the records' size, and the peak resident memory
    of this process (ru_maxrss: everything - memory, index, records, gradient buffer, Python)."""
    sizes = SIZES["full"]
    N = 1 << log_n
    config = _config(sizes, N, "sam " + index)
    model = SAM(config, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    state = benchmark_state(config, rng)
    start = time.perf_counter()
    lookup = model.lookup(state)
    build_s = time.perf_counter() - start
    xs = rng.standard_normal((T, 1, config.X))
    dys = rng.standard_normal((T, 1, config.Y))
    flat = state.M.reshape(-1)
    fingerprint = (float(np.sum(flat)), float(np.dot(flat, flat)))       # the same bits give the same sums
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    ys, cache = model.forward(xs, state, copy_final_memory=False, lookup=lookup, in_place=True)
    forward_s = time.perf_counter() - start
    records = records_bytes(cache, model.params)
    rss_forward = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    log(f"forward {T} steps at N=2^{log_n} ({index}): {forward_s:.0f} s, records {_fmt_b(records)} "
        f"({_fmt_b(records / T)}/step), peak RSS so far {_fmt_b(rss_forward)}")
    start = time.perf_counter()
    model.backward(dys, cache)
    backward_s = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    restored = (float(np.sum(flat)), float(np.dot(flat, flat))) == fingerprint
    result = {"T": T, "N": N, "index": index, "lookup_build_s": build_s, "forward_s": forward_s,
              "backward_s": backward_s, "records_bytes": records, "peak_rss_bytes": rss,
              "rss_before_bytes": rss0, "memory_bytes": state.M.nbytes, "restored": restored}
    log(f"backward: {backward_s:.0f} s; peak RSS of the process {_fmt_b(rss)} (before the forward: "
        f"{_fmt_b(rss0)}, of which the memory itself {_fmt_b(state.M.nbytes)}); memory restored: {restored}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minimem.bench_sam", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, quick 1)")
    parser.add_argument("--min-log-n", type=int, default=None)
    parser.add_argument("--max-log-n", type=int, default=None)
    parser.add_argument("--dense-max-log-n", type=int, default=None, help="largest N for the dense path")
    parser.add_argument("--kdtree", action="store_true", help="also time the k-d tree index (eps = 4)")
    parser.add_argument("--long", type=int, default=None, metavar="T",
                        help="instead: forward + backward over T steps at N = 2^20 (or --max-log-n); peak memory")
    args = parser.parse_args(argv)
    if args.long is not None:
        long_run(args.long, args.max_log_n or 20)
        return 0
    sizes = SIZES["quick" if args.quick else "full"]
    lo = args.min_log_n if args.min_log_n is not None else min(sizes.log_ns)
    hi = args.max_log_n if args.max_log_n is not None else max(sizes.log_ns)
    step = 2 if args.quick else 1
    sizes = Sizes(**{**sizes.__dict__, "log_ns": tuple(range(lo, hi + 1, step)), "kdtree": args.kdtree,
                     "dense_max_log_n": args.dense_max_log_n if args.dense_max_log_n is not None
                     else sizes.dense_max_log_n})
    rounds = args.rounds or (1 if args.quick else 3)
    print(f"# SAM scaling ({platform.python_implementation()} {platform.python_version()}, numpy {np.__version__}, "
          f"B=1 H={sizes.H} W={sizes.W} R={sizes.R} K={sizes.K} float64, {rounds} interleaved rounds, medians)")
    results = measure_scaling(rounds, sizes)
    print(format_scaling_table(results))
    print()
    print(format_details(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
