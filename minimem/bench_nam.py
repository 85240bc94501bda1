"""NAM attention against softmax attention: time and peak memory of one forward + backward as the
sequence grows (spec specs/nam_hma.md A6.1, A6.4; issue 5). NAM attention costs O(T d^2) time and
O(T d) memory (it never forms the T x T matrix), softmax attention O(T^2 d) time and O(T^2) memory.

    python -m minimem.bench_nam                  # T = 256 .. 16,384 (3.5 min on 2 cores shared with ~7 jobs)
    python -m minimem.bench_nam --quick          # tiny T, seconds; what the tests run
    python -m minimem.bench_nam --softmax-gb 2   # skip softmax where its estimate exceeds 2 GB

Contestants (the kernels only, no projections): Q, K, V (B, H, T, d) ~ N(0, 1), one upstream
gradient dY ~ N(0, 1); B = 1, H = 1, d = 64, float32 (a T x T float32 matrix is 1 GiB at T = 16,384,
and the softmax backward holds several of them; float64 would double every byte).
    softmax   minimem.nn.attention.dot_product_attention_forward / _backward: S = Q K^T / sqrt(d),
              A = softmax(S), Y = A V, and the adjoint through A.
    NAM       minimem.memory.nam_attention.nam_attention_forward / _backward (non-causal, no mask):
              S = unit(K)^T V (d x d), Y = unit(Q) S, and the adjoint (spec A6.4).
Time: median seconds per forward + backward over interleaved rounds (minimem.bench.time_side_by_side;
short calls are repeated within a sample until it lasts 50 ms).
Memory: tracemalloc's peak during one forward + backward, above what was allocated before it (the
inputs are not counted; the cache and every temporary are). NumPy reports its array buffers to
tracemalloc, so this is the arrays' memory, not the process's.
Softmax is skipped (and the table says so) at lengths where its estimated peak, 5 T^2 bytes per
element size (S, its shifted copy, A, dA and dS), exceeds the budget --softmax-gb (default 6 GB).

Growth exponents: for each contestant, the slope of log(time) and log(bytes) against log(T)
between consecutive lengths; linear growth gives 1, quadratic 2. Small T is dominated by call
overhead (exponents below 1).

benchmarks(quick=False) returns {"nam_attention_scaling": fn(rounds) -> rows} with the rows of
minimem.bench (baseline softmax, candidate NAM, one row per length where both ran, with
"baseline_bytes" and "candidate_bytes" added).

Measured (3 interleaved rounds, medians; numpy 2.4.6, one BLAS thread, a 2-core machine with a load
average of ~7, so times are rough; the bytes are exact):
    T        softmax    NAM       time ratio  softmax peak  NAM peak  memory ratio
    256      2.53 ms    0.73 ms      3.5x       1.1 MB      0.67 MB      1.6x
    1,024    34.8 ms    2.20 ms     15.8x      13.6 MB      2.4 MB       5.6x
    4,096    726 ms     11.2 ms     65.0x       206 MB      9.6 MB      21.5x
    8,192    3.02 s     24.8 ms      122x       814 MB     19.1 MB      42.7x
    16,384   12.2 s     55.1 ms      222x       3.2 GB     38.0 MB      85.1x
Growth exponents from 1,024 to 16,384: softmax time 2.07-2.31 per doubling step (quadratic), NAM
time 0.96-1.38 (linear, noisy); memory softmax 1.94-1.99, NAM 0.98-1.00. Softmax ran at every length
(its real peak, 3 T^2 float32 at 16,384, stays under the 5 T^2 estimate).
"""

from __future__ import annotations

import argparse
import functools
import gc
import math
import platform
from dataclasses import dataclass
from typing import Callable

import numpy as np

from minimem.bench import peak_memory, time_side_by_side
from minimem.memory.nam_attention import nam_attention_backward, nam_attention_forward
from minimem.nn.attention import dot_product_attention_backward, dot_product_attention_forward


@dataclass(frozen=True)
class Sizes:
    lengths: tuple = (256, 512, 1024, 2048, 4096, 8192, 16384)
    B: int = 1
    H: int = 1
    d: int = 64
    dtype: str = "float32"
    softmax_gb: float = 6.0          # skip softmax where 5 T^2 itemsize exceeds this (decimal GB)
    min_call_s: float = 0.05         # repeat short calls within one timed sample up to this long

    def softmax_estimate(self, T: int) -> float:
        """Bytes softmax needs at its peak, roughly: five (B, H, T, T) arrays."""
        return 5.0 * self.B * self.H * T * T * np.dtype(self.dtype).itemsize


SIZES = {"full": Sizes(), "quick": Sizes(lengths=(32, 128), d=8, softmax_gb=1.0, min_call_s=0.0)}


def _inputs(sizes: Sizes, T: int, seed: int = 0):
    rng = np.random.default_rng([seed, T])
    shape = (sizes.B, sizes.H, T, sizes.d)
    return tuple(rng.standard_normal(shape).astype(sizes.dtype) for _ in range(4))   # Q, K, V, dY


def contestants(sizes: Sizes, T: int) -> dict[str, Callable[[], object]]:
    """{"softmax": fn, "nam": fn} (softmax only where it fits the budget), each one forward + backward."""
    Q, K, V, dY = _inputs(sizes, T)

    def nam():
        Y, cache = nam_attention_forward(Q, K, V)
        return nam_attention_backward(dY, cache)

    def softmax():
        Y, cache = dot_product_attention_forward(Q, K, V)
        return dot_product_attention_backward(dY, cache)

    found = {"nam": nam}
    if sizes.softmax_estimate(T) <= sizes.softmax_gb * 1e9:
        found = {"softmax": softmax, "nam": nam}
    return found


def _inner(fns: dict, min_call_s: float) -> int:
    """Calls per timed sample: enough that the fastest contestant's sample lasts min_call_s (short
    calls are swamped by timer and scheduler noise on a shared machine)."""
    fastest = min(time_side_by_side({name: fn}, 1, 1)[name] for name, fn in fns.items())
    return int(min(1000, max(1, math.ceil(min_call_s / max(fastest, 1e-9)))))


def measure(rounds: int, sizes: Sizes, log=None) -> list[dict]:
    """One dict per length: {"T", "seconds": {name: s}, "bytes": {name: b}, "skipped": {name: why}}."""
    results = []
    for T in sizes.lengths:
        fns = contestants(sizes, T)
        entry = {"T": T, "seconds": {}, "bytes": {}, "skipped": {}}
        if "softmax" not in fns:
            entry["skipped"]["softmax"] = (f"needs ~{sizes.softmax_estimate(T) / 1e9:.1f} GB > budget "
                                           f"{sizes.softmax_gb:g} GB")
        for name, fn in fns.items():
            entry["bytes"][name] = peak_memory(fn)
        entry["seconds"] = time_side_by_side(fns, rounds, inner=_inner(fns, sizes.min_call_s))
        results.append(entry)
        del fns
        gc.collect()
        if log is not None:
            log(_format_entry(entry))
    return results


def rows_from(results: list[dict], sizes: Sizes) -> list[dict]:
    """minimem.bench rows (baseline softmax, candidate NAM) for the lengths where both ran."""
    rows = []
    for entry in results:
        if "softmax" in entry["seconds"]:
            rows.append({"benchmark": f"attention fwd+bwd T={entry['T']} d={sizes.d} B={sizes.B} H={sizes.H} "
                                      f"{sizes.dtype}",
                         "baseline": "softmax", "baseline_s": entry["seconds"]["softmax"],
                         "candidate": "NAM", "candidate_s": entry["seconds"]["nam"],
                         "baseline_bytes": entry["bytes"]["softmax"], "candidate_bytes": entry["bytes"]["nam"]})
    return rows


def bench_nam_attention_scaling(rounds: int, quick: bool = False) -> list[dict]:
    sizes = SIZES["quick" if quick else "full"]
    return rows_from(measure(rounds, sizes), sizes)


def benchmarks(quick: bool = False) -> dict[str, Callable[[int], list[dict]]]:
    """{name: fn(rounds) -> rows} for minimem.bench; quick=True for tiny sizes (tests)."""
    return {"nam_attention_scaling": functools.partial(bench_nam_attention_scaling, quick=quick)}


# ----------------------------------------------------------------- printing
def growth_exponents(results: list[dict], key: str, name: str) -> list[float | None]:
    """Slope of log(value) against log(T) from the previous length to this one (None at the first
    length or where either value is missing)."""
    out, previous = [], None
    for entry in results:
        value = entry[key].get(name)
        if previous is not None and value is not None and previous[1] is not None and value > 0 < previous[1]:
            out.append(math.log(value / previous[1]) / math.log(entry["T"] / previous[0]))
        else:
            out.append(None)
        previous = (entry["T"], value)
    return out


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _fmt_b(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _fmt_x(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _format_entry(entry: dict) -> str:
    parts = [f"T={entry['T']}"]
    for name in ("softmax", "nam"):
        if name in entry["seconds"]:
            parts.append(f"{name} {_fmt_s(entry['seconds'][name])}, peak {_fmt_b(entry['bytes'][name])}")
        elif name in entry["skipped"]:
            parts.append(f"{name} skipped ({entry['skipped'][name]})")
    return "; ".join(parts)


def format_scaling_table(results: list[dict]) -> str:
    """T, both contestants' time and peak memory, the ratios softmax / NAM and the growth exponents."""
    exps = {(key, name): growth_exponents(results, key, name)
            for key in ("seconds", "bytes") for name in ("softmax", "nam")}
    lines = ["| T | softmax time | NAM time | softmax / NAM time | softmax peak | NAM peak | softmax / NAM memory "
             "| time exponent softmax / NAM | memory exponent softmax / NAM |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for i, entry in enumerate(results):
        s, b = entry["seconds"], entry["bytes"]
        time_ratio = _fmt_x(s["softmax"] / s["nam"]) + "x" if "softmax" in s else "-"
        memory_ratio = _fmt_x(b["softmax"] / b["nam"]) + "x" if "softmax" in b else "-"
        softmax_time = _fmt_s(s.get("softmax")) if "softmax" in s else f"skipped ({entry['skipped']['softmax']})"
        lines.append(f"| {entry['T']} | {softmax_time} | {_fmt_s(s['nam'])} | {time_ratio} | "
                     f"{_fmt_b(b.get('softmax'))} | {_fmt_b(b['nam'])} | {memory_ratio} | "
                     f"{_fmt_x(exps['seconds', 'softmax'][i])} / {_fmt_x(exps['seconds', 'nam'][i])} | "
                     f"{_fmt_x(exps['bytes', 'softmax'][i])} / {_fmt_x(exps['bytes', 'nam'][i])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minimem.bench_nam", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny T, one round (checks the code runs)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are reported)")
    parser.add_argument("--softmax-gb", type=float, default=None,
                        help="skip softmax where its estimated peak exceeds this many GB")
    parser.add_argument("--max-t", type=int, default=None, help="stop at this sequence length")
    args = parser.parse_args(argv)
    sizes = SIZES["quick" if args.quick else "full"]
    if args.softmax_gb is not None:
        if not args.softmax_gb > 0:
            parser.error(f"--softmax-gb must be > 0; got {args.softmax_gb}")
        sizes = Sizes(**{**sizes.__dict__, "softmax_gb": args.softmax_gb})
    if args.max_t is not None:
        sizes = Sizes(**{**sizes.__dict__, "lengths": tuple(T for T in sizes.lengths if T <= args.max_t)})
        if not sizes.lengths:
            parser.error(f"--max-t {args.max_t} leaves no length")
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1; got {args.rounds}")
    rounds = 1 if args.quick else args.rounds
    print(f"# NAM vs softmax attention scaling ({platform.python_implementation()} {platform.python_version()}, "
          f"numpy {np.__version__}, B={sizes.B} H={sizes.H} d={sizes.d} {sizes.dtype}, {rounds} interleaved "
          f"rounds, medians; memory = tracemalloc peak of one forward + backward)")
    results = measure(rounds, sizes, log=print)
    print(format_scaling_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
