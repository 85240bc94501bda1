"""Titans benchmarks for minimem.bench: the chunked LMM against the token-by-token one, and the
manual engine against the autodiff twin. Timed side by side in one run (bench.time_side_by_side);
only ratios are claimed.

    chunked      forward + backward of one LMM layer (TitansLMM, spec A5 defaults with D = 64: one
                 head, d = 64, two-layer SiLU memory h = 128, K_c = 4, output path) at T = 1024 and
                 4096, batch 2: the sequential model (chunk b = 1, one token per step) against the
                 chunked form with b = 16 and b = 64. The chunked form is a different model (spec
                 pitfall P2), so this compares the cost of the two ways to run an LMM layer, not
                 two schedules of one computation. lucidrains/titans-pytorch is commonly run at this
                 configuration (dim 64, chunk 16/64, seq 1024/4096, batch 2); its times per forward +
                 backward can be set beside the rows' times.
    engines      manual (hand-derived adjoint, A4.2) against autodiff (minimem.autodiff with
                 create_graph for the inner gradients) at a small size: a TitansLMM layer with
                 b = 1 and b = 8, and a one-block MAG model.

benchmarks(quick=False) returns {name: fn(rounds) -> rows} with the rows of minimem.bench;
quick=True shrinks every size so that the functions run in about a second (tests).
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from minimem import autodiff as ad
from minimem.bench import time_side_by_side
from minimem.memory.titans import TitansLMM, TitansLMMConfig
from minimem.memory.titans_arch import TitansConfig, TitansModel

SIZES = {
    "full": {"lengths": (1024, 4096), "D": 64, "B": 2, "chunks": (16, 64),
             "engines": {"T": 32, "D": 16, "B": 2, "chunks": (1, 8)}},
    "quick": {"lengths": (24,), "D": 8, "B": 2, "chunks": (4, 16),
              "engines": {"T": 6, "D": 4, "B": 1, "chunks": (1, 3)}},
}


def _lmm_step(model: TitansLMM, x: np.ndarray, dout: np.ndarray) -> Callable[[], object]:
    """One forward + backward of the manual engine."""
    def run():
        out, cache = model.forward(x)
        return model.backward(dout, cache)
    return run


def _autodiff_step(model, x: np.ndarray, dout: np.ndarray) -> Callable[[], object]:
    """One forward + backward of the autodiff engine (fresh leaf Tensors every call)."""
    def run():
        tparams = {name: ad.Tensor(value, requires_grad=True) for name, value in model.params.items()}
        out = model.forward_autodiff(tparams, x)
        out.backward(dout)
        return {name: t.grad for name, t in tparams.items()}
    return run


def bench_titans_chunked(rounds: int, quick: bool = False) -> list[dict]:
    """LMM layer forward + backward: sequential (b = 1) against chunked b = 16 and b = 64."""
    size = SIZES["quick" if quick else "full"]
    D, B = size["D"], size["B"]
    rows = []
    for T in size["lengths"]:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((T, B, D))                        # (T, B, D)
        dout = rng.standard_normal((T, B, D))
        contestants = {}
        for b in (1,) + tuple(size["chunks"]):
            model = TitansLMM(TitansLMMConfig(D=D, chunk=b), rng=np.random.default_rng(1))   # same params for every b
            contestants[b] = _lmm_step(model, x, dout)
        t = time_side_by_side(contestants, rounds, inner=1)
        for b in size["chunks"]:
            rows.append({"benchmark": f"Titans LMM fwd+bwd T={T} D={D} B={B}", "baseline": "sequential b=1",
                         "baseline_s": t[1], "candidate": f"chunked b={b}", "candidate_s": t[b]})
    return rows


def bench_titans_engines(rounds: int, quick: bool = False) -> list[dict]:
    """Manual against autodiff engine, forward + backward, at a small size."""
    size = SIZES["quick" if quick else "full"]["engines"]
    T, D, B = size["T"], size["D"], size["B"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, D))
    dout = rng.standard_normal((T, B, D))
    rows = []
    for b in size["chunks"]:
        model = TitansLMM(TitansLMMConfig(D=D, chunk=b), rng=np.random.default_rng(1))
        t = time_side_by_side({"manual": _lmm_step(model, x, dout), "autodiff": _autodiff_step(model, x, dout)},
                              rounds, inner=1)
        rows.append({"benchmark": f"Titans LMM fwd+bwd T={T} D={D} B={B} b={b}", "baseline": "manual",
                     "baseline_s": t["manual"], "candidate": "autodiff", "candidate_s": t["autodiff"]})
    model = TitansModel(TitansConfig(variant="mag", X=D, Y=D, D=D, N_p=2, window=max(2, T // 4), attn_heads=2,
                                     memory=TitansLMMConfig(D=D, chunk=size["chunks"][-1])),
                        rng=np.random.default_rng(1))
    t = time_side_by_side({"manual": _lmm_step(model, x, dout), "autodiff": _autodiff_step(model, x, dout)},
                          rounds, inner=1)
    rows.append({"benchmark": f"Titans MAG fwd+bwd T={T} D={D} B={B} b={size['chunks'][-1]}", "baseline": "manual",
                 "baseline_s": t["manual"], "candidate": "autodiff", "candidate_s": t["autodiff"]})
    return rows


def benchmarks(quick: bool = False) -> dict[str, Callable[[int], list[dict]]]:
    """{name: fn(rounds) -> rows} for minimem.bench; quick=True for tiny sizes (tests)."""
    return {"titans_chunked": functools.partial(bench_titans_chunked, quick=quick),
            "titans_engines": functools.partial(bench_titans_engines, quick=quick)}


if __name__ == "__main__":
    import argparse
    import platform

    from minimem.bench import format_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round (checks the code runs)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians are reported)")
    parser.add_argument("--only", choices=sorted(benchmarks()), action="append", help="run only these")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    found = benchmarks(args.quick)
    rows = []
    for name in args.only or list(found):
        rows += found[name](rounds)
    print(f"# minimem Titans benchmarks ({platform.python_implementation()} {platform.python_version()}, "
          f"numpy {np.__version__}, {rounds} interleaved rounds, medians)")
    print(format_table(rows))
