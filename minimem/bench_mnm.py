"""MNM benchmark for minimem.bench: ms per training step (forward + backward), the hand-derived BPTT
(minimem.memory.mnm.mnm_backward, with the exact second-order adjoint for MNM-g) against the
autodiff twin (mnm_autodiff: the same equations on minimem.autodiff, MNM-g's inner gradient taken
by ad.grad with create_graph), timed side by side in one run; only ratios are claimed.

Sizes: the M2 associative-recall demo (demos/mnm_recall.py; spec titans_mnm.md B5 CPU defaults):
X = 34, Y = 16, H = 64, d = 32, h = 32, L = 3, one key/value head, batch 32, P = 4 pairs (T = 8
steps), float32, both writers (MNM-p "local", MNM-g "grad"). The upstream gradients are fixed
random arrays, so the step is exactly forward + backward to every parameter (no optimiser).

Measured (nice -n 5, 2 cores shared with other jobs, so absolute times vary by up to 2x between runs;
the interleaved ratios are steadier): manual 12.2-23.3 ms vs autodiff 46.8-94.3 ms for MNM-p
(3.8-4.3x), 10.7-19.2 ms vs 59.8-120.6 ms for MNM-g (5.1-6.3x), three runs (7, 7 and 15 rounds).
Before the speed work of issue 11 the same bench gave 2.6x (MNM-p) and 2.9x (MNM-g) on a quiet
machine; old and new manual engine timed side by side: 1.5-2.0x faster (1.83x MNM-p, 1.89x MNM-g
in a 31-round run). The changes: one-head outer products by einsum, the read and L^meta adjoints
as one pass, no (B, n_l, n_{l-1}) temporaries in the writers, the output layers once over all steps.

    python -m minimem.bench_mnm [--quick] [--rounds N]
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from minimem import autodiff as ad
from minimem.bench import time_side_by_side
from minimem.memory.mnm import MNM, MNMConfig

SIZES = {
    "full": {"X": 34, "Y": 16, "H": 64, "d": 32, "h": 32, "L": 3, "B": 32, "T": 8, "dtype": "float32"},
    "quick": {"X": 6, "Y": 4, "H": 8, "d": 4, "h": 4, "L": 2, "B": 2, "T": 3, "dtype": "float64"},
}


def _model_and_data(size: dict, writer: str):
    """An MNM at `size` with the given writer, a random input (T, B, X) and upstream gradients."""
    config = MNMConfig(X=size["X"], Y=size["Y"], H=size["H"], d=size["d"], h=size["h"], L=size["L"],
                       writer=writer, beta_max=8.0, dtype=size["dtype"])
    model = MNM(config, rng=np.random.default_rng(1))
    rng = np.random.default_rng(0)
    dtype = np.dtype(size["dtype"])
    xs = rng.standard_normal((size["T"], size["B"], size["X"])).astype(dtype)
    (ys, meta), _ = model.forward(xs)
    dys = rng.standard_normal(ys.shape).astype(dtype)                    # (T', B, Y)
    dmeta = np.full(meta.shape, 1.0 / meta.size, dtype=dtype)            # (T', B): d mean(meta)
    return model, xs, dys, dmeta


def _manual_step(model: MNM, xs, dys, dmeta) -> Callable[[], dict]:
    def run():
        _, cache = model.forward(xs)
        return model.backward((dys, dmeta), cache)
    return run


def _autodiff_step(model: MNM, xs, dys, dmeta) -> Callable[[], dict]:
    def run():
        tparams = {name: ad.Tensor(value, requires_grad=True) for name, value in model.params.items()}
        ys, meta = model.forward_autodiff(tparams, xs)
        (ad.sum(ys * ad.Tensor(dys)) + ad.sum(meta * ad.Tensor(dmeta))).backward()
        return {name: t.grad for name, t in tparams.items()}
    return run


def bench_mnm_engines(rounds: int, quick: bool = False) -> list[dict]:
    """Manual BPTT against the autodiff twin, both writers, at the M2 demo size."""
    size = SIZES["quick" if quick else "full"]
    rows = []
    for writer, label in (("local", "MNM-p"), ("grad", "MNM-g")):
        model, xs, dys, dmeta = _model_and_data(size, writer)
        t = time_side_by_side({"manual": _manual_step(model, xs, dys, dmeta),
                               "autodiff": _autodiff_step(model, xs, dys, dmeta)}, rounds, inner=1)
        rows.append({"benchmark": f"{label} fwd+bwd T={size['T']} B={size['B']} H={size['H']} d={size['d']} "
                                  f"L={size['L']} {size['dtype']}",
                     "baseline": "manual", "baseline_s": t["manual"],
                     "candidate": "autodiff", "candidate_s": t["autodiff"]})
    return rows


def benchmarks(quick: bool = False) -> dict[str, Callable[[int], list[dict]]]:
    """{name: fn(rounds) -> rows} for minimem.bench; quick=True for tiny sizes (tests)."""
    return {"mnm_engines": functools.partial(bench_mnm_engines, quick=quick)}


if __name__ == "__main__":
    from minimem.bench import family_main

    raise SystemExit(family_main(benchmarks, "MNM benchmarks", "python -m minimem.bench_mnm", __doc__))
