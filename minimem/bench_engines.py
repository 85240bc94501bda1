"""Manual engine against autodiff engine, one training step each, for the models that had no such
row elsewhere (issue 11: "manual engine, autodiff engine, ratio; peak memory").

    python -m minimem.bench_engines                 # demo-like sizes (a minute or two on 2 busy cores)
    python -m minimem.bench_engines --quick         # tiny sizes, seconds; what the tests run
    python -m minimem.bench_engines --only engines_sam --rounds 7

Rows elsewhere: NTM, DNC (bench_dnc), Titans LMM and MAG (bench_titans), MNM (bench_mnm), VMA and
VSM (bench_generative), conv2d (bench_hma), LSTM (bench). Here: SAM (sparse engine and dense
engine), SDNC, LSAM, NAM-TM, the NAM few-shot head, the NAM Transformer, the HMA head on an MLP
backbone, Titans MAC and MAL.

Each row also times the manual forward alone in the same rounds ("manual_forward_s"; main() prints
autodiff step / manual forward, the ceiling of the ratio: what it would be if the manual backward
cost nothing). Where the forward is most of a manual step, that ceiling, not the backward, keeps a
ratio low: non-differentiated bookkeeping (the SDNC's links, top-K and LRA choices) runs in both
engines' forwards at the same cost.

One training step = forward, loss, backward to every parameter (no optimiser), on each model's own
protocol: manual = model.forward, then the loss, then model.backward; autodiff = model.forward_autodiff
on fresh leaf Tensors of model.params, the same loss as a Tensor expression, Tensor.backward. The loss
is gradcheck's (gradcheck.core.projection_loss): sum(outputs * P) with a fixed random P, so both
engines differentiate one and the same scalar. SAM and SDNC start from gradcheck's random valid state
(gradcheck.cases.sam / sdnc random_state: memory, access times, read sets, links), a generic
mid-sequence point; both engines make their own top-K and LRA choices from it (no replayed record),
as in training. Everything is float64 (the demos train LSAM, NAM-TM, the NAM Transformer and Titans
in float32; the ratio is what is claimed).

Before timing, engine_gradient_difference holds the two engines' gradients equal (max |manual -
autodiff| / max(1, max |manual|) over every parameter, <= 1e-8, else RuntimeError); the row carries
it as "grad_diff". The tests hold it <= 1e-9 at the quick size.

Sizes (SIZES["full"]; the demos' configurations, shortened where a step would take over ~1 s):
    SAM, SDNC      demos/sam_copy.py: X 7, Y 6, N 32, W 8, R 2, K 4, H 64 (SDNC: K_L 8), batch 16,
                   T = 17 (a copy sequence of length 8: 8 inputs, a delimiter, 8 outputs).
    LSAM           demos/lsam_recall.py: X 28 (one-hot), D 64, 4 heads, Y 10, batch 64, T 26.
    NAM-TM         demos/nam_tm_reverse.py: V 16, D 64, 2 tapes, C 16, L 16, no head norm, batch 64,
                   T 13 (training rows of n_max = 5).
    NAM few-shot   demos/nam_fewshot.py stage 2: F 64, K_b 60, 5 ways, E 64, 4 episodes of 5 shots,
                   30 queries each.
    NAM Transformer demos/nam_transformer_retrieval.py one-hop: V 177, 10 classes, T 17, D 64,
                   4 heads, MLP 128, NAM attention, CLS-row readout, batch 64, every row padded
                   after a random length in 4..16.
    HMA head       demos/hma_images.py MLP: backbone MLP (128, 64), D 64, K_c 5, L_h 16, N_r 256,
                   m 8, 4 heads, batch 64.
    Titans MAC/MAL demos/titans_needles.py: X 66, Y 16, D 32, one block, N_p 4, window 16 (MAL),
                   segment 16 (MAC), 2 attention heads, memory chunk 1, batch 16, T = 32 (the demo
                   trains at T = 64; halved to keep the autodiff step near 1 s).

benchmarks(quick=False) returns {name: fn(rounds) -> rows} (rows of minimem.bench, with
"baseline_bytes" / "candidate_bytes" = tracemalloc peak of one step, measured after the timing).

Measured (python -m minimem.bench_engines --rounds 7, six runs on a quiet moment, load average ~1,
2026-11-22, after the speed work of issue 11; numpy 2.4.6, OpenBLAS one thread; autodiff / manual,
median (range) of the six runs, then peak memory manual / autodiff):
    SAM sparse 3.1x (2.8-3.5; 3.8 / 7.4 MB)     SAM dense 3.5x (3.3-3.6; 4.7 / 7.4 MB)
    SDNC 2.2x (2.1-2.4; 7.8 / 11.1 MB)          LSAM 3.0x (2.4-4.1; 30.0 / 48.2 MB)
    NAM-TM 3.0x (2.9-3.9; 25.2 / 44.8 MB)       NAM few-shot 3.1x (2.9-3.3; 4.6 / 8.9 MB)
    NAM Transformer 5.2x (4.6-6.1; 7.4 / 38.0 MB)   HMA head 5.5x (5.2-6.9; 7.1 / 76.2 MB)
    Titans MAC 4.1x (3.9-4.7; 52 / 163 MB)      Titans MAL 4.2x (4.0-4.7; 52 / 174 MB)
Four runs at the end of the fifth session on issue 11 (same command, quiet machine), autodiff /
manual and, in brackets, the ceiling autodiff step / manual forward alone:
    SAM sparse 3.5x, 3.6x, 3.7x, 3.4x (5.3-5.9x)     SAM dense 3.5x, 3.4x, 3.8x, 3.8x (5.3-6.5x)
    SDNC 2.2x, 2.0x, 2.2x, 2.0x (2.7-3.4x)            LSAM 2.9x, 3.2x, 3.3x, 3.3x (5.3-8.4x)
    NAM-TM 3.0x, 3.1x, 3.2x, 3.1x (6.3-8.5x)          NAM Transformer 6.1x, 5.4x, 5.3x, 5.6x (13.8-15.7x)
    HMA head 5.9x, 5.4x, 5.8x, 6.0x (10.2-12.0x)      Titans MAC 4.4x, 4.0x, 3.9x, 3.7x (7.4-9.1x)
    Titans MAL 4.0x, 4.1x, 4.8x, 4.3x (9.4-12.7x)
    NAM few-shot head 2.9x, 2.7x (6.1-7.0x) before its sequential writes became one triangular solve,
        9.7x, 9.8x (16.7-18.1x; 1.4 / 8.9 MB) after
The SDNC stays below 3x because its manual forward alone is a third or more of the autodiff step
(ceiling 2.7-3.4x): its link bookkeeping (not differentiated, spec D.4; ~37% of the manual step) and
its top-K and LRA choices run in both engines alike. Before the speed work (loaded machine, CPU-time ratios): SAM sparse
1.9x, SDNC 1.2-1.3x, LSAM 2.5-2.7x, NAM-TM 2.7x, NAM Transformer 1.8-1.9x. Gradients agreed to
1.1e-14 or better in every row.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np

from minimem import autodiff as ad
from minimem.bench import peak_memory_of, time_side_by_side


@dataclass
class Problem:
    """A model at a size, its inputs, further positional arguments of forward / forward_autodiff
    (e.g. a start state) and the loss (gradcheck's projection_loss of the outputs)."""
    label: str
    model: object
    inputs: object
    extra: tuple
    loss: Callable
    projections: tuple


def _problem(label: str, model, inputs, extra: tuple = (), seed: int = 99) -> Problem:
    from gradcheck.core import projection_loss

    outputs, _ = model.forward(inputs, *extra)
    loss = projection_loss(np.random.default_rng(seed), outputs)
    _, douts = loss(outputs)
    projections = douts if isinstance(douts, tuple) else (douts,)
    return Problem(label, model, inputs, tuple(extra), loss, projections)


def manual_forward(problem: Problem) -> Callable[[], object]:
    """The manual engine's forward alone (caches kept, as in a step): what a manual step costs if its
    backward were free, so autodiff step / this time bounds the manual-vs-autodiff ratio from above."""
    model, inputs, extra = problem.model, problem.inputs, problem.extra

    def run():
        return model.forward(inputs, *extra)
    return run


def manual_step(problem: Problem) -> Callable[[], dict]:
    """forward, loss, backward of the manual engine; returns the gradients (keys of model.params)."""
    model, inputs, extra, loss = problem.model, problem.inputs, problem.extra, problem.loss

    def run():
        outputs, cache = model.forward(inputs, *extra)
        _, douts = loss(outputs)
        return model.backward(douts, cache)
    return run


def autodiff_step(problem: Problem) -> Callable[[], dict]:
    """The same step on the autodiff engine: fresh leaf Tensors, the loss sum(outputs * P) as a
    Tensor, backward; returns the gradients (zeros where a parameter got none)."""
    model, inputs, extra, projections = problem.model, problem.inputs, problem.extra, problem.projections

    def run():
        tparams = {name: ad.Tensor(value, requires_grad=True) for name, value in model.params.items()}
        outputs = model.forward_autodiff(tparams, inputs, *extra)
        outputs = (outputs,) if isinstance(outputs, ad.Tensor) else tuple(outputs)
        total = None
        for out, P in zip(outputs, projections):
            term = (out * P).sum()
            total = term if total is None else total + term
        total.backward()
        return {name: np.zeros_like(t.data) if t.grad is None else np.asarray(t.grad) for name, t in tparams.items()}
    return run


def engine_gradient_difference(problem: Problem) -> float:
    """max over parameters of max |manual - autodiff| / max(1, max |manual|) for one step."""
    manual, auto = manual_step(problem)(), autodiff_step(problem)()
    if set(manual) != set(auto) or set(manual) != set(problem.model.params):
        raise RuntimeError(f"{problem.label}: the engines' gradient keys differ: manual {sorted(manual)}, "
                           f"autodiff {sorted(auto)}")
    worst = 0.0
    for name, g in manual.items():
        g, a = np.asarray(g, dtype=np.float64), np.asarray(auto[name], dtype=np.float64)
        if g.shape != a.shape:
            raise RuntimeError(f"{problem.label}: gradient {name} has shape {g.shape} (manual), {a.shape} (autodiff)")
        if g.size:
            worst = max(worst, float(np.max(np.abs(g - a)) / max(1.0, float(np.max(np.abs(g))))))
    return worst


# ----------------------------------------------------------------- the models
SIZES = {
    "full": {
        "sam": dict(X=7, Y=6, N=32, W=8, R=2, K=4, H=64, T=17, B=16),
        "sdnc": dict(X=7, Y=6, N=32, W=8, R=2, K=4, K_L=8, H=64, T=17, B=16),
        "lsam": dict(X=28, D=64, H=4, Y=10, T=26, B=64),
        "nam_tm": dict(V=16, D=64, P=2, C=16, L=16, T=13, B=64),
        "nam_fewshot": dict(F=64, K_b=60, N=5, E=64, B=4, shots=5, Q=30),
        "nam_transformer": dict(V=177, classes=10, T=17, D=64, heads=4, mlp=128, B=64, n_min=4),
        "hma": dict(X=128, D=64, K_c=5, L_h=16, N_r=256, m=8, heads=4, B=64),
        "titans": dict(X=66, Y=16, D=32, N_p=4, window=16, segment=16, attn_heads=2, chunk=1, T=32, B=16),
    },
    "quick": {
        "sam": dict(X=3, Y=3, N=8, W=4, R=2, K=3, H=6, T=4, B=2),
        "sdnc": dict(X=3, Y=3, N=8, W=4, R=2, K=3, K_L=2, H=6, T=4, B=2),
        "lsam": dict(X=5, D=8, H=2, Y=3, T=5, B=2),
        "nam_tm": dict(V=5, D=6, P=2, C=3, L=5, T=5, B=2),
        "nam_fewshot": dict(F=6, K_b=4, N=3, E=5, B=2, shots=2, Q=5),
        "nam_transformer": dict(V=7, classes=3, T=6, D=4, heads=2, mlp=4, B=2, n_min=3),
        "hma": dict(X=5, D=4, K_c=3, L_h=2, N_r=6, m=2, heads=2, B=4),
        "titans": dict(X=3, Y=2, D=4, N_p=2, window=2, segment=2, attn_heads=2, chunk=2, T=5, B=2),
    },
}


def _sizes(quick: bool) -> dict:
    return SIZES["quick" if quick else "full"]


def sam_problem(quick: bool, engine: str) -> Problem:
    """SAM (sparse or dense engine) from gradcheck's random valid state; inputs N(0, 1)."""
    from gradcheck.cases.sam import random_state
    from minimem.memory.sam import SAM, SAMConfig

    s = dict(_sizes(quick)["sam"])
    T, B = s.pop("T"), s.pop("B")
    rng = np.random.default_rng(0)
    model = SAM(SAMConfig(**s, engine=engine), rng=rng)
    state0 = random_state(rng, model.config, B)
    xs = rng.standard_normal((T, B, s["X"]))                                     # (T, B, X)
    label = (f"SAM {engine} fwd+bwd T={T} B={B} N={s['N']} W={s['W']} R={s['R']} K={s['K']} H={s['H']}")
    return _problem(label, model, xs, (state0,))


def sdnc_problem(quick: bool) -> Problem:
    """SDNC from gradcheck's random valid state (links, precedence, read sets); inputs N(0, 1)."""
    from gradcheck.cases.sdnc import random_state
    from minimem.memory.sdnc import SDNC, SDNCConfig

    s = dict(_sizes(quick)["sdnc"])
    T, B = s.pop("T"), s.pop("B")
    rng = np.random.default_rng(0)
    model = SDNC(SDNCConfig(**s), rng=rng)
    state0 = random_state(rng, model.config, B)
    xs = rng.standard_normal((T, B, s["X"]))                                     # (T, B, X)
    label = (f"SDNC fwd+bwd T={T} B={B} N={s['N']} W={s['W']} R={s['R']} K={s['K']} K_L={s['K_L']} H={s['H']}")
    return _problem(label, model, xs, (state0,))


def lsam_problem(quick: bool) -> Problem:
    """LSAM with a per-step readout on one-hot token rows (T, B, X)."""
    from minimem.memory.lsam import LSAM, LSAMConfig

    s = _sizes(quick)["lsam"]
    rng = np.random.default_rng(0)
    model = LSAM(LSAMConfig(X=s["X"], D=s["D"], H=s["H"], Y=s["Y"]), rng=rng)
    xs = np.eye(s["X"])[rng.integers(0, s["X"], (s["T"], s["B"]))]               # (T, B, X) one-hot
    return _problem(f"LSAM fwd+bwd T={s['T']} B={s['B']} D={s['D']} heads={s['H']}", model, xs)


def nam_tm_problem(quick: bool) -> Problem:
    """NAM-TM (no head norm, as the demo) on tokens (T, B) uniform over V."""
    from minimem.memory.nam_tm import NAMTM, NAMTMConfig

    s = _sizes(quick)["nam_tm"]
    rng = np.random.default_rng(0)
    model = NAMTM(NAMTMConfig(V=s["V"], D=s["D"], P=s["P"], C=s["C"], L=s["L"], head_norm=False), rng=rng)
    tokens = rng.integers(0, s["V"], (s["T"], s["B"]))                          # (T, B)
    return _problem(f"NAM-TM fwd+bwd T={s['T']} B={s['B']} D={s['D']} P={s['P']} C={s['C']} L={s['L']}",
                    model, tokens)


def nam_fewshot_problem(quick: bool) -> Problem:
    """NAM few-shot head (sequential writes) on random episode features (gradcheck's episode_inputs)."""
    from gradcheck.cases.nam_fewshot import episode_inputs
    from minimem.memory.nam_fewshot import NAMFewShotConfig, NAMFewShotHead

    s = _sizes(quick)["nam_fewshot"]
    rng = np.random.default_rng(0)
    model = NAMFewShotHead(NAMFewShotConfig(F=s["F"], K_b=s["K_b"], N=s["N"], E=s["E"]), rng=rng)
    inputs = episode_inputs(rng, s["B"], s["N"], s["shots"], s["Q"], s["F"])
    return _problem(f"NAM few-shot head fwd+bwd episodes={s['B']} ways={s['N']} shots={s['shots']} Q={s['Q']} "
                    f"F={s['F']} K_b={s['K_b']}", model, inputs)


def nam_transformer_problem(quick: bool) -> Problem:
    """NAM Transformer (NAM attention, CLS-row readout) on padded token rows: (tokens, mask) (T, B)."""
    from minimem.memory.nam_transformer import NAMTransformer, NAMTransformerConfig

    s = _sizes(quick)["nam_transformer"]
    rng = np.random.default_rng(0)
    model = NAMTransformer(NAMTransformerConfig(V=s["V"], classes=s["classes"], T_max=s["T"], D=s["D"],
                                                heads=s["heads"], layers=1, mlp=s["mlp"], attention="nam",
                                                readout="first"), rng=rng)
    T, B = s["T"], s["B"]
    tokens = rng.integers(0, s["V"], (T, B))                                     # (T, B)
    lengths = rng.integers(s["n_min"], T, B) + 1                                 # real rows per column
    mask = np.arange(T)[:, None] < lengths[None, :]                              # (T, B), padded after
    return _problem(f"NAM Transformer fwd+bwd T={T} B={B} D={s['D']} heads={s['heads']} mlp={s['mlp']} nam",
                    model, (tokens, mask))


def hma_problem(quick: bool) -> Problem:
    """HMA head (block R on the queue, ABD, memory tokens) on an MLP backbone; inputs (B, X) N(0, 1)."""
    from minimem.memory.hma import HMA, HMAConfig
    from minimem.nn.mlp import MLPModel

    s = _sizes(quick)["hma"]
    rng = np.random.default_rng(0)
    backbone = MLPModel((s["X"], s["D"]), activation="relu", output_activation="relu", rng=rng)
    model = HMA(HMAConfig(D=s["D"], K_c=s["K_c"], L_h=s["L_h"], N_r=s["N_r"], m=s["m"], heads=s["heads"]),
                backbone, rng=rng)
    x = rng.standard_normal((s["B"], s["X"]))                                    # (B, X)
    return _problem(f"HMA head (MLP {s['X']}-{s['D']}) fwd+bwd B={s['B']} K_c={s['K_c']} N_r={s['N_r']} "
                    f"m={s['m']} heads={s['heads']}", model, x)


def titans_problem(quick: bool, variant: str) -> Problem:
    """One Titans block (MAC or MAL) on inputs (T, B, X) N(0, 1)."""
    from minimem.memory.titans import TitansLMMConfig
    from minimem.memory.titans_arch import TitansConfig, TitansModel

    s = _sizes(quick)["titans"]
    rng = np.random.default_rng(0)
    model = TitansModel(TitansConfig(variant=variant, X=s["X"], Y=s["Y"], D=s["D"], layers=1, N_p=s["N_p"],
                                     window=s["window"], segment=s["segment"], attn_heads=s["attn_heads"],
                                     memory=TitansLMMConfig(D=s["D"], chunk=s["chunk"])), rng=rng)
    xs = rng.standard_normal((s["T"], s["B"], s["X"]))                           # (T, B, X)
    shape = f"segment={s['segment']}" if variant == "mac" else f"window={s['window']}"
    return _problem(f"Titans {variant.upper()} fwd+bwd T={s['T']} B={s['B']} D={s['D']} b={s['chunk']} {shape}",
                    model, xs)


PROBLEMS: dict[str, Callable[[bool], list[Problem]]] = {
    "engines_sam": lambda quick: [sam_problem(quick, "sparse"), sam_problem(quick, "dense")],
    "engines_sdnc": lambda quick: [sdnc_problem(quick)],
    "engines_lsam": lambda quick: [lsam_problem(quick)],
    "engines_nam_tm": lambda quick: [nam_tm_problem(quick)],
    "engines_nam_fewshot": lambda quick: [nam_fewshot_problem(quick)],
    "engines_nam_transformer": lambda quick: [nam_transformer_problem(quick)],
    "engines_hma": lambda quick: [hma_problem(quick)],
    "engines_titans_mac": lambda quick: [titans_problem(quick, "mac")],
    "engines_titans_mal": lambda quick: [titans_problem(quick, "mal")],
}

GRAD_TOLERANCE = 1e-8       # float64: the engines agree to round-off (~1e-12) or something is wrong


def bench_problems(name: str, rounds: int, quick: bool = False) -> list[dict]:
    """Rows for PROBLEMS[name]: gradients held equal first, then timed side by side, then the
    peak memory of one step of each engine (outside the timing)."""
    rows = []
    for problem in PROBLEMS[name](quick):
        diff = engine_gradient_difference(problem)
        if not diff <= GRAD_TOLERANCE:
            raise RuntimeError(f"{problem.label}: manual and autodiff gradients differ by {diff:.3g} "
                               f"(> {GRAD_TOLERANCE:g}); the timing would compare two different functions")
        contestants = {"manual": manual_step(problem), "autodiff": autodiff_step(problem)}
        t = time_side_by_side(dict(contestants, forward=manual_forward(problem)), rounds, inner=1)
        mem = peak_memory_of(contestants)
        rows.append({"benchmark": problem.label, "baseline": "manual", "baseline_s": t["manual"],
                     "candidate": "autodiff", "candidate_s": t["autodiff"],
                     "baseline_bytes": mem["manual"], "candidate_bytes": mem["autodiff"], "grad_diff": diff,
                     "manual_forward_s": t["forward"]})
    return rows


def benchmarks(quick: bool = False) -> dict[str, Callable[[int], list[dict]]]:
    """{name: fn(rounds) -> rows} for minimem.bench; quick=True for tiny sizes (tests)."""
    return {name: functools.partial(bench_problems, name, quick=quick) for name in PROBLEMS}


def main(argv: list[str] | None = None) -> int:
    import argparse

    from minimem.bench import format_table, machine_description

    parser = argparse.ArgumentParser(prog="python -m minimem.bench_engines", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 rounds (checks the code runs)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians are reported)")
    parser.add_argument("--only", choices=sorted(PROBLEMS), action="append", help="run only these (repeatable)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1; got {args.rounds}")
    rounds = 2 if args.quick else args.rounds
    rows = []
    for name in args.only or list(PROBLEMS):
        rows += bench_problems(name, rounds, quick=args.quick)
    print(f"# minimem manual vs autodiff engines, one training step ({rounds} interleaved rounds, medians; "
          f"memory: tracemalloc peak of one step; float64)")
    print(machine_description())
    print(format_table(rows))
    print("# max |manual - autodiff| / max(1, max |manual|) over all gradients: "
          + ", ".join(f"{r['benchmark'].split(' fwd+bwd')[0]} {r['grad_diff']:.1e}" for r in rows))
    print("# ceiling of each ratio, autodiff step / manual forward alone (the ratio if the manual backward "
          "cost nothing): " + ", ".join(f"{r['benchmark'].split(' fwd+bwd')[0]} "
                                        f"{r['candidate_s'] / r['manual_forward_s']:.1f}x" for r in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
