"""Generative-memory benchmarks for minimem.bench: one training step (forward + backward) of the
manual engine against the autodiff twin, for VMA and the VSM-style model (reconstructed), at the
sizes the demos train with. Timed side by side in one run (bench.time_side_by_side); only ratios
are claimed.

    vma_engines   VMA (spec A.5 CPU defaults, as demos/vma_fewshot.py): X = 400, Z 16, E 32, He 64,
                  H 128, relu, float32; B = 32 episodes, N = 8 memory entries, S = 4 samples with
                  the VIMCO estimator (autodiff: its stop-gradient surrogate), and the exact-address
                  trainer (V14, one pass per slot) at the same size.
    vsm_engines   VSM-style (spec C.6, as demos/vsm_fewshot.py): X = 400, Ns 16, Zc = Z = 8,
                  Hu = H = 128, Hk 32, float32; B = 32 tasks, n_c = 3 of Ne = 5 context slots,
                  n_t = 2 targets; the hierarchical plug-in (VSM-HVAE) and the VAE plug-in (VSM-VAE).
                  The consolidation (U1-U3) is not part of the step: it is outside the gradient path
                  and the same code for both engines.

VMA rows, third round of issue 11 (minimem/memory/vma.py lists what the manual engine does that
the tape does not). Measured on 2 shared cores with other jobs running, so only ranges are given:
    manual against the previous manual engine, same process, an autodiff step before every manual
    call (as in this benchmark), 30 rounds x 3 runs: VIMCO 3.96-4.91 ms against 4.34-5.33 ms
    (1.09-1.11x), exact address 6.19-6.47 ms against 6.86-7.12 ms (1.10-1.13x); manual against
    autodiff in those runs 3.01-3.07x (VIMCO) and 2.79-2.86x (exact), CPU time and wall clock alike;
    this module (wall clock, 5 runs of 5 rounds): VIMCO 2.5, 2.9, 3.0, 3.1, 3.1x (manual 3.9-5.1 ms),
    exact 2.7, 2.8, 2.8, 2.9, 3.0x (6.0-6.5 ms).
What bounds the ratio: the step's matrix products (VIMCO 69 M, exact 104 M multiply-adds), timed
alone, take 1.9 / 2.7 ms (71-78 GFLOP/s, warm caches), and the same sequence of NumPy calls on tiny arrays
(X = 16, H = 6) costs 0.9-1.0 / 1.2-1.3 ms of per-call overhead; that leaves about 1 ms for the
passes over the (S, B, X) or (B, N', X) pixel arrays (one float32 exp per pixel: 0.11 / 0.24 ms)
and the cold caches after an autodiff step, against an autodiff step of 9-15 / 11-19 ms.

benchmarks(quick=False) returns {name: fn(rounds) -> rows} with the rows of minimem.bench
({"benchmark", "baseline", "baseline_s", "candidate", "candidate_s"}); quick=True shrinks every size
so that the functions run in well under a second (tests).
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from minimem import autodiff as ad
from minimem.bench import time_side_by_side
from minimem.memory.vma import VMA, VMAConfig, VMAInputs
from minimem.memory.vsm import VSM, VSMConfig, VSMInputs

SIZES = {
    "full": {"vma": {"X": 400, "Z": 16, "E": 32, "He": 64, "H": 128, "B": 32, "N": 8, "S": 4},
             "vsm": {"X": 400, "Ns": 16, "Zc": 8, "Z": 8, "H": 128, "Hk": 32, "B": 32, "Ne": 5, "n_c": 3, "n_t": 2}},
    "quick": {"vma": {"X": 16, "Z": 3, "E": 4, "He": 5, "H": 6, "B": 2, "N": 3, "S": 2},
              "vsm": {"X": 16, "Ns": 3, "Zc": 2, "Z": 2, "H": 6, "Hk": 4, "B": 2, "Ne": 3, "n_c": 2, "n_t": 2}},
}
DTYPE = "float32"                    # the demos train in float32 (gradient checks run in float64)


def _manual_step(model, inputs) -> Callable[[], object]:
    """One forward + backward of the manual engine, dL = -1/B (the demos' loss)."""
    def run():
        L, cache = model.forward(inputs)
        return model.backward(np.full(L.shape, -1.0 / L.size, dtype=L.dtype), cache)
    return run


def _autodiff_step(model, inputs) -> Callable[[], object]:
    """One forward + backward of the autodiff engine (fresh leaf Tensors every call)."""
    def run():
        tparams = {name: ad.Tensor(value, requires_grad=True) for name, value in model.params.items()}
        L = model.forward_autodiff(tparams, inputs)
        L.backward(np.full(L.shape, -1.0 / L.shape[0], dtype=L.data.dtype))
        return {name: t.grad for name, t in tparams.items()}
    return run


def _row(benchmark: str, times: dict) -> dict:
    return {"benchmark": benchmark, "baseline": "manual", "baseline_s": times["manual"],
            "candidate": "autodiff", "candidate_s": times["autodiff"]}


def bench_vma_engines(rounds: int, quick: bool = False) -> list[dict]:
    """VMA training step, manual against autodiff: VIMCO (S samples) and the exact-address bound."""
    s = SIZES["quick" if quick else "full"]["vma"]
    rng = np.random.default_rng(0)
    x = (rng.random((s["B"], s["X"])) < 0.1).astype(DTYPE)                 # (B, X) binary images
    M = (rng.random((s["B"], s["N"], s["X"])) < 0.1).astype(DTYPE)         # (B, N, X)
    rows = []
    for estimator, label in (("vimco", f"VIMCO S={s['S']}"), ("exact", "exact address (V14)")):
        config = VMAConfig(X=s["X"], Z=s["Z"], E=s["E"], He=s["He"], H=s["H"], estimator=estimator,
                           activation="relu", dtype=DTYPE)
        model = VMA(config, rng=np.random.default_rng(1))
        noise = model.sample_noise(np.random.default_rng(2), s["B"], s["S"], M)
        inputs = VMAInputs(x, M, **noise)
        t = time_side_by_side({"manual": _manual_step(model, inputs), "autodiff": _autodiff_step(model, inputs)},
                              rounds, inner=1)
        rows.append(_row(f"VMA fwd+bwd {label} B={s['B']} N={s['N']} X={s['X']} H={s['H']}", t))
    return rows


def bench_vsm_engines(rounds: int, quick: bool = False) -> list[dict]:
    """VSM-style training step, manual against autodiff, for the HVAE and the VAE plug-ins."""
    s = SIZES["quick" if quick else "full"]["vsm"]
    B, Ne, n_t = s["B"], s["Ne"], s["n_t"]
    rng = np.random.default_rng(0)
    context = (rng.random((B, Ne, s["X"])) < 0.1).astype(DTYPE)
    mask = np.broadcast_to(np.arange(Ne)[None, :] < s["n_c"], (B, Ne)).copy()
    context *= mask[..., None]
    targets = (rng.random((B, n_t, s["X"])) < 0.1).astype(DTYPE)
    rows = []
    for variant in ("hvae", "vae"):
        config = VSMConfig(X=s["X"], Z=s["Z"], Zc=s["Zc"], Hu=s["H"], H=s["H"], Hk=s["Hk"], Ns=s["Ns"],
                           dtype=DTYPE, variant=variant)
        model = VSM(config, rng=np.random.default_rng(1))
        if variant == "hvae":
            eps_c, eps_z = rng.standard_normal((B, s["Zc"])), rng.standard_normal((B, n_t, s["Z"]))
        else:
            eps_c, eps_z = rng.standard_normal((B, n_t, s["Zc"])), None
        inputs = VSMInputs(context, mask, targets, eps_c.astype(DTYPE), None if eps_z is None else eps_z.astype(DTYPE))
        t = time_side_by_side({"manual": _manual_step(model, inputs), "autodiff": _autodiff_step(model, inputs)},
                              rounds, inner=1)
        rows.append(_row(f"VSM-{variant.upper()} fwd+bwd B={B} n_c={s['n_c']} n_t={n_t} Ns={s['Ns']} X={s['X']} "
                         f"H={s['H']}", t))
    return rows


def benchmarks(quick: bool = False) -> dict[str, Callable[[int], list[dict]]]:
    """{name: fn(rounds) -> rows} for minimem.bench; quick=True for tiny sizes (tests)."""
    return {"vma_engines": functools.partial(bench_vma_engines, quick=quick),
            "vsm_engines": functools.partial(bench_vsm_engines, quick=quick)}


if __name__ == "__main__":
    from minimem.bench import family_main

    raise SystemExit(family_main(benchmarks, "generative-memory benchmarks", "python -m minimem.bench_generative", __doc__))
