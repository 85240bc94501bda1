"""Titans benchmarks for minimem.bench: the chunked LMM against the token-by-token one, the manual
engine against the autodiff twin and against a PyTorch port of the layer. Timed side by side in one
run (bench.time_side_by_side); only ratios are claimed.

    chunked      forward + backward of one LMM layer (TitansLMM, spec A5 defaults with D = 64: one
                 head, d = 64, two-layer SiLU memory h = 128, K_c = 4, output path) at T = 1024 and
                 4096, batch 2, float64 and float32 (the same numbers cast): the sequential model
                 (chunk b = 1, one token per step) against the chunked form with b = 16 and b = 64. The chunked form is a different model (spec
                 pitfall P2), so this compares the cost of the two ways to run an LMM layer, not
                 two schedules of one computation. lucidrains/titans-pytorch is commonly run at this
                 configuration (dim 64, chunk 16/64, seq 1024/4096, batch 2); its times per forward +
                 backward can be set beside the rows' times.
    recurrence   the memory recurrence alone, the part where the two forms differ: lmm_scan_forward +
                 lmm_scan_backward on the inputs the chunked rows' layer gives it (layer_recurrence_problem:
                 q, k, v, alpha, eta, theta and M_0, S_0 taken from the layer's own cache, dy from its
                 output path; b = 64's dy for every contestant, the cost does not depend on the values):
                 the per-token loop b = 1 against chunked b = 16 and b = 64, T = 1024 and 4096, the
                 chunked rows' sizes, float64 and float32. check_layer_recurrence() first holds its reads, and the gradients
                 it hands back (through lmm_features_backward and the batch sum of dM_0), equal to the
                 layer's own (b = 1 and 4; equal to the last bit: the same functions run).
    engines      manual (hand-derived adjoint, A4.2) against autodiff (minimem.autodiff with
                 create_graph for the inner gradients) at a small size: a TitansLMM layer with
                 b = 1 and b = 8, and a one-block MAG model.
    torch        one training step of a whole TitansLMM layer (forward, squared error summed and
                 divided by B, backward to every parameter; no optimiser update): minimem's manual
                 engine (baseline) against a PyTorch port of the layer written for this benchmark
                 (candidate), at the small configurations of the engines rows (T = 32, D = 16, B = 2,
                 b = 1 and 8) and the large ones of the chunked rows (T = 1024, D = 64, B = 2, b = 16
                 and 64), float64 and float32, so candidate / baseline is minimem's speed-up. The
                 port (_torch_layer) is like for like: projections, depthwise causal convolution
                 (F.conv1d), SiLU, l2 normalisation, the gates alpha / eta / theta, the closed-form
                 surprises (A9)-(A11) at the chunk start, the chunked update (A17)-(A18) in minimem's
                 dual form (decay products from cumulative logs, per-token weights never formed),
                 or for b = 1 the per-token update (A13)-(A14) as minimem's token path, the reads
                 (A15), the output path (A20)-(A21); autograd for the outer gradients (through the
                 closed-form surprises: the second-order terms), eager mode,
                 torch.set_num_threads(1). check_torch_layer() first holds the loss and every
                 parameter gradient equal to minimem's on a fixed float64 problem (the tests do so
                 for seven configurations: b = 1 and b > 1, heads, depth 1 and 3, tanh, read before
                 write, persistent tokens, no output path). Gates must lie strictly inside (0, 1)
                 (the decay products take their logarithm).
    torch_recurrence  the memory recurrence alone (lmm_scan_forward + lmm_scan_backward: one head,
                 d = 64, two-layer SiLU memory h = 128, chunk b = 64, batch 2, T = 1024, float64)
                 against a straightforward PyTorch port that is NOT like for like: per-token
                 surprises by torch.autograd.grad with create_graph=True, the n weight sets of a
                 chunk materialised (O(b^2 d h) per chunk against the dual form's
                 O(b^2 (d + h) + b d h)). Kept as a second row: it prices the textbook way of writing
                 the chunked update in PyTorch. check_torch_port() holds its reads and gradients
                 equal to minimem's first.
    The torch rows need torch to be importable; otherwise they are omitted (torch is not a
    dependency of minimem).

Speed work (issue 11): the sequential model (b = 1) has its own path (titans_lmm.lmm_token_forward /
lmm_token_backward: the new weights formed directly by one outer product per layer, no decay
products, coefficient matrices or dual-form mixing for a one-token chunk), and one-row weight
gradients are outer products by broadcasting (titans_memory._weight_grad: a batched matmul over a
single term was ~3x slower). Old and new timed side by side in one run (fwd + bwd, load average
4-5): b = 1, T = 32, D = 16, B = 2: 3.9x faster (67.6 ms -> 17.4 ms; earlier runs 2.7-3.7x);
T = 1024, D = 64: 2.6x (5.67 s -> 2.20 s); b = 8, T = 32, D = 16: 1.2x (7.28 -> 6.15 ms, fewer
wrapper calls and allocations). Outputs and gradients equal the old path's to 5e-15 and 9e-14
(gradients up to 75) for b = 1; the chunked path (b > 1) is bitwise unchanged.

Measured (python -m minimem.bench_titans --rounds 5, one run after the speed work, 2 cores shared
with other jobs at a load average of 3-5, so absolute times are inflated and ratios are noisy;
numpy 2.4, torch 2.13 CPU; candidate / baseline):
    chunked vs sequential, fwd + bwd, T = 1024: b = 16 4.6x, b = 64 9.7x faster (1.59 s / 165 ms);
        T = 4096: 4.6x and 6.1x (8.96 s / 1.46 s). Before the token path the sequential baseline
        was slower (T = 1024: 3.86 s) and these ratios were 9.6x / 20.1x and 10.9x / 13.5x.
    manual vs autodiff, T = 32, D = 16, B = 2: LMM b = 1 7.7x (37 ms vs 286 ms), b = 8 10.0x,
        MAG b = 8 6.7x (before the token path: b = 1 2.4-3.0x).
    PyTorch eager / minimem manual, training step: T = 32, D = 16, B = 2: b = 1 4.2x (float64) and
        3.9x (float32), b = 8 4.3x and 2.5x; T = 1024, D = 64, B = 2: b = 16 2.3x and 2.5x, b = 64
        1.6x and 1.8x (133 ms vs 210 ms float64). A run before the speed work (same port, the chunk
        path for b = 1 on both sides): b = 1 3.5x / 4.6x, b = 8 2.4x / 2.7x, b = 16 2.0x / 2.4x,
        b = 64 1.7x / 1.7x.
    torch_recurrence (not like for like): minimem 301 ms, the per-token-weights port 4.51 s (15x).
    Port check (float64): loss equal within 2 ulp, every parameter gradient within 7e-15.
    A second run right after (load average 4-5): chunked 3.9x / 5.7x (T = 1024) and 3.7x / 6.3x
    (T = 4096); manual vs autodiff 8.9x, 9.0x, MAG 5.8x; PyTorch / minimem 4.5x, 3.2x, 3.4x, 3.1x
    (small) and 2.1x, 2.0x, 2.1x, 1.6x (large); torch_recurrence 13.8x.

Later in the same session, on a quiet machine (load ~1) after a round on the chunked path (smaller
chunk caches, a faster decay_products; b = 64 ~1.2x in a fresh process): chunked vs sequential
T = 1024: b = 16 4.5x, b = 64 6.0x (894 ms / 149 ms); T = 4096: 4.1x and 6.2x (3.32 s / 536 ms);
manual vs autodiff 9.3x (b = 1), 8.8x (b = 8), MAG 7.0x; PyTorch / minimem 3.4x, 3.5x, 2.9x, 2.8x
(T = 32) and 2.7x, 2.7x, 1.7x, 2.0x (T = 1024; float64, float32 per chunk size).

Third round on the chunked path (issue 11, b = 64). Where the time goes, T = 1024, B = 2, D = 64,
fwd + bwd, ms (medians of 5, two runs on a machine shared with other jobs, load 1-3):
                        b = 1          b = 64
    features (A1)-(A7)  11.0 + 11.1    10.7 + 10.5     (forward + backward)
    output (A20)-(A21)   4.1 +  4.8     3.9 +  4.2
    recurrence           802 - 875      118 - 120      (forward 322 - 343 / 45 - 49)
    layer                893            139 - 155
The shared part costs ~30 ms in both forms, so alone it would allow ~30x at the layer level; 10x
needs the b = 64 layer at <= ~89 ms, i.e. the recurrence at ~55 ms, while its matrix products alone
(~1.4 GFLOP a step by count) take ~40 ms at the best rate measured here for 64 x 128 blocks
(~36 GFLOP/s, one thread); the rest of a chunk is NumPy call overhead (~1.2 ms of CPU per chunk
at tiny sizes, ~20 ms a step), exponentials (~0.2 ms per chunk) and elementwise passes.
Changes (old and new side by side in one process; outputs and every gradient equal to 3.5e-15
relative, b = 1 bit-identical except <X, Y>): the chunk caches of a scan are written into one block
of memory (titans_lmm.ChunkArena; huge pages), decay products as exp(c_r) exp(-c_i) (2 (n+1)
exponentials instead of (n+1)^2), <X, Y> as one dot product, 1/x by np.divide. Minor page faults
per call, scan: T = 4096 21k -> 309 (sys time 62 -> 33 ms), T = 1024 in a process whose allocator
returns memory between steps ~6.6k -> ~300; the layer at T = 4096: 37-39k -> 11-12k (the rest are
the shared path's). Time, old / new: in the benchmark's own process (b = 1 rows interleaved)
neither version faults and both take the same time (T = 4096 layer 833 vs 835 ms wall, 570 vs 562
ms user CPU); CPU-time medians elsewhere 0.91-1.15x, i.e. within the noise of the shared machine.
Ratios measured after the changes (b = 1 time / b = 64 time; CPU time, two runs of a scratch script,
is robust to the other jobs; wall medians are what the table reports, here from 3 runs of
this module (5 rounds) and 4 of a script with the same contestants (3-9 rounds)):
    layer       T = 1024: CPU 6.1x, 5.9x; wall 6.6x, 5.1x, 6.0x; 6.8x, 5.5x, 6.0x, 5.9x
                T = 4096: CPU 5.8x, 5.3x; wall 5.8x, 5.1x, 4.9x; 6.9x, 8.1x, 5.6x, 5.3x
    recurrence  T = 1024: CPU 6.4x, 7.0x; wall 9.3x, 7.7x, 6.0x; 9.3x, 6.8x, 6.4x, 9.3x
                T = 4096: CPU 7.3x, 7.1x; wall 8.3x, 6.5x, 7.3x; 5.0x, 6.0x, 7.2x, 10.9x
    (b = 16: layer 3.4-4.4x, recurrence 3.8-5.2x.) The >= 10x target is missed at both levels (one
    wall median of 10.9x came from a loaded b = 1 side; the CPU times say ~7x for the recurrence).
The b = 1 path keeps every token's M_{t-1} and S_{t-1} (512 KB a token at d = 64, h = 128, B = 2:
532 MB for the recurrence at T = 1024): the backward needs them for d alpha_t = -<GM_t, M_{t-1}>
and d eta_t = <GS_t, S_{t-1}>. Running the recurrence backwards (S_{t-1} = (S_t + theta_t u_t) /
eta_t) divides by gates < 1 at every token and loses all accuracy over a long sequence; checkpoints
would add a second forward pass (~40% of a b = 1 step), so the memory is left as it is.

Fourth round (issue 11): Z_l X_l^T kept from the chunk forward instead of formed again in the backward,
row dot products by np.vecdot (old and new interleaved in one process: 1.02-1.05x float64, 1.05-1.18x
float32; results equal to 5e-16 relative); memory and momentum side by side ([M | S], one product of
twice the width for each pair of products with the state) tried and dropped (0.89x float32, 1.00x
float64). The chunked and recurrence rows now run in float32 too. Two runs on a quiet machine,
b = 1 / b = 64 (b = 1 / b = 16 in brackets):
    layer       float64  T = 1024: 6.3x, 6.2x (4.1x, 4.0x)   T = 4096: 7.5x, 6.0x (4.6x, 4.1x)
                float32  T = 1024: 8.7x, 7.6x (4.6x, 4.3x)   T = 4096: 8.2x, 8.7x (4.2x, 4.5x)
    recurrence  float64  T = 1024: 8.0x, 6.7x (5.2x, 4.4x)   T = 4096: 8.8x, 6.9x (5.8x, 4.7x)
                float32  T = 1024: 9.6x, 10.3x (4.9x, 4.9x)  T = 4096: 9.9x, 9.8x (4.6x, 4.7x)
The chunked recurrence does 1.46 GFLOP of matrix products per step (T = 1024), 2.2x the per-token
loop's ~0.6 GFLOP; one core runs its 64 x 64 x 128 products at 24-30 GFLOP/s (float64) and 47-62
GFLOP/s (float32), so in float64 the products alone fill the time a 10x layer would leave.

benchmarks(quick=False) returns {name: fn(rounds) -> rows} with the rows of minimem.bench;
quick=True shrinks every size so that the functions run in about a second (tests).
"""

from __future__ import annotations

import minimem  # noqa: F401  (first: single-threaded BLAS, see minimem/__init__.py)

import functools
from typing import Callable

import numpy as np

from minimem import autodiff as ad
from minimem.bench import time_side_by_side
from minimem.memory.titans import TitansLMM, TitansLMMConfig
from minimem.memory.titans_arch import TitansConfig, TitansModel
from minimem.memory.titans_features import FEATURE_NAMES, lmm_features_backward, lmm_output_backward
from minimem.memory.titans_lmm import lmm_scan_backward, lmm_scan_forward
from minimem.nn.losses import mse_backward, mse_forward

SIZES = {
    "full": {"lengths": (1024, 4096), "D": 64, "B": 2, "chunks": (16, 64), "dtypes": ("float64", "float32"),
             "engines": {"T": 32, "D": 16, "B": 2, "chunks": (1, 8)},
             "torch": {"lengths": (1024,), "d": 64, "B": 2, "chunk": 64},
             "torch_layer": {"configs": ((32, 16, 2, (1, 8)), (1024, 64, 2, (16, 64))),
                             "dtypes": ("float64", "float32")}},
    "quick": {"lengths": (24,), "D": 8, "B": 2, "chunks": (4, 16), "dtypes": ("float64", "float32"),
              "engines": {"T": 6, "D": 4, "B": 1, "chunks": (1, 3)},
              "torch": {"lengths": (12,), "d": 4, "B": 2, "chunk": 4},
              "torch_layer": {"configs": ((6, 4, 1, (1, 3)),), "dtypes": ("float64", "float32")}},
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
    """LMM layer forward + backward: sequential (b = 1) against chunked b = 16 and b = 64, in
    float64 and float32 (the same inputs and parameters, cast)."""
    size = SIZES["quick" if quick else "full"]
    D, B = size["D"], size["B"]
    rows = []
    for dtype in size["dtypes"]:
        for T in size["lengths"]:
            rng = np.random.default_rng(0)
            x = rng.standard_normal((T, B, D)).astype(dtype)          # (T, B, D)
            dout = rng.standard_normal((T, B, D)).astype(dtype)
            contestants = {}
            for b in (1,) + tuple(size["chunks"]):
                model = TitansLMM(TitansLMMConfig(D=D, chunk=b), rng=np.random.default_rng(1),   # same params for every b
                                  dtype=np.dtype(dtype))
                contestants[b] = _lmm_step(model, x, dout)
            t = time_side_by_side(contestants, rounds, inner=1)
            for b in size["chunks"]:
                rows.append({"benchmark": f"Titans LMM fwd+bwd T={T} D={D} B={B} {dtype}", "baseline": "sequential b=1",
                             "baseline_s": t[1], "candidate": f"chunked b={b}", "candidate_s": t[b]})
    return rows


def layer_recurrence_problem(T: int, B: int, D: int, chunk: int = 64, seed: int = 0) -> tuple:
    """The memory recurrence's inputs as a TitansLMM layer (spec defaults, chunk b) makes them, with
    the inputs and parameters of bench_titans_chunked (x and the output gradient from seed, the
    parameters from seed + 1): q, k, v, the gates and M_0, S_0 taken from the layer's own cache
    (features (A1)-(A7)), and dy, the gradient the output path (A20)-(A21) sends back to the reads.
    Returns ((M0, S0, q, k, v, alpha, eta, theta, dy), config, (model, x, dout))."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, D))                            # (T, B, D)
    dout = rng.standard_normal((T, B, D))
    config = TitansLMMConfig(D=D, chunk=chunk)
    model = TitansLMM(config, rng=np.random.default_rng(seed + 1))
    _, cache = model.forward(x)
    scan, start = cache.layer.scan, cache.layer.scan.chunks[0]
    dy = lmm_output_backward(dout, cache.layer.output)[0]         # (T, B, H, d)
    return (start.M_s, start.S_s) + tuple(scan.inputs) + (dy,), config, (model, x, dout)


def _recurrence_step(problem: tuple, chunk: int, config: TitansLMMConfig) -> Callable[[], tuple]:
    """lmm_scan_forward + lmm_scan_backward with the layer's activation and read order; returns
    (y, dq, dk, dv, dalpha, deta, dtheta, dM0, dS0)."""
    M0, S0, q, k, v, alpha, eta, theta, dy = problem

    def run():
        y, _, cache = lmm_scan_forward(M0, S0, q, k, v, alpha, eta, theta, chunk, config.phi, config.read_after_write)
        (dq, dk, dv), gates, (dM0, dS0) = lmm_scan_backward(dy, cache)
        return (y, dq, dk, dv) + tuple(gates) + (dM0, dS0)
    return run


def check_layer_recurrence(T: int = 13, B: int = 2, D: int = 8, chunk: int = 4, seed: int = 0) -> dict:
    """The timed recurrence computes what the layer computes: {name: max |difference| / max(1, max
    |layer's value|)} for its reads against the read-out the layer's output path received ("y"), and
    for the layer's parameter gradients of the feature path (A1)-(A7) and of mem0 against the same
    gradients formed from the recurrence's own (dq, dk, dv, dalpha, deta, dtheta, dM_0), which
    is all the layer does with them (lmm_features_backward, the batch sum of dM_0)."""
    problem, config, (model, x, dout) = layer_recurrence_problem(T, B, D, chunk, seed)
    _, cache = model.forward(x)
    layer_grads = model.backward(dout, cache)
    y, dq, dk, dv, dalpha, deta, dtheta, dM0, _ = _recurrence_step(problem, chunk, config)()
    ours = {"y": y}
    ours.update({f"lmm.{name}": g for name, g in lmm_features_backward(
        (dq, dk, dv), (dalpha, deta, dtheta), cache.layer.features)[1].items()})
    ours.update({f"lmm.mem0.W{l + 1}": dM.sum(axis=0) for l, dM in enumerate(dM0)})
    theirs = {"y": cache.layer.output.y}
    theirs.update({name: layer_grads[name] for name in ours if name != "y"})
    assert len(ours) == 1 + len(FEATURE_NAMES) + len(dM0)
    return {name: float(np.max(np.abs(ours[name] - theirs[name])) / max(1.0, np.max(np.abs(theirs[name]))))
            for name in ours}


def bench_titans_recurrence(rounds: int, quick: bool = False) -> list[dict]:
    """The memory recurrence alone (lmm_scan_forward + lmm_scan_backward), the part where the two
    forms differ: the per-token loop (b = 1) against the chunked form (b = 16, 64), on the
    recurrence inputs of the chunked rows' layer (layer_recurrence_problem, b = 64's dy for every
    contestant: the cost does not depend on the values). Raises if the recurrence does not compute
    what the layer computes (check_layer_recurrence, b = 1 and b = 4, float64)."""
    for b in (1, 4):
        errors = check_layer_recurrence(chunk=b)
        if max(errors.values()) > 1e-12:
            raise RuntimeError(f"the timed recurrence differs from the layer's (b = {b}): {errors}")
    size = SIZES["quick" if quick else "full"]
    D, B = size["D"], size["B"]
    rows = []
    for dtype in size["dtypes"]:
        for T in size["lengths"]:
            problem, config, _ = layer_recurrence_problem(T, B, D, size["chunks"][-1])
            problem = tuple(tuple(x.astype(dtype) for x in part) if isinstance(part, tuple) else part.astype(dtype)
                            for part in problem)                  # float32: the float64 problem, cast
            contestants = {b: _recurrence_step(problem, b, config) for b in (1,) + tuple(size["chunks"])}
            t = time_side_by_side(contestants, rounds, inner=1)
            for b in size["chunks"]:
                rows.append({"benchmark": f"Titans LMM recurrence fwd+bwd T={T} d={config.head_width} "
                                          f"h={config.hidden_width} B={B} {dtype}",
                             "baseline": "per-token loop b=1", "baseline_s": t[1],
                             "candidate": f"chunked b={b}", "candidate_s": t[b]})
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


# ----------------------------------------------------------------- PyTorch port of the recurrence
def torch_available() -> bool:
    """True when torch can be imported (optional: only the titans_torch rows need it)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _torch_scan():
    """Import torch (one thread) and build the port of lmm_scan_forward (read after write, SiLU);
    cached, so torch loads once. Returns (torch, scan)."""
    import torch

    torch.set_num_threads(1)

    def read(Ws, x):
        """Per-token weights Ws[l] (B, H, n, n_{l-1}, n_l), rows x (B, H, n, d) -> (B, H, n, d)."""
        z = x.unsqueeze(-2)
        for l, W in enumerate(Ws):
            z = z @ W
            if l < len(Ws) - 1:
                z = z * torch.sigmoid(z)
        return z.squeeze(-2)

    def decay(A):
        """P[r, i] = prod_{j=i+1}^{r} A_j (B, H, n+1, n+1), factors strictly positive."""
        c = torch.nn.functional.pad(torch.cumsum(torch.log(A), dim=-1), (1, 0))
        return torch.exp((c.unsqueeze(-1) - c.unsqueeze(-2)).clamp(max=0.0)).tril()

    def scan(M0, S0, q, k, v, alpha, eta, theta, chunk):
        """q, k, v (T, B, H, d), gates (T, B, H), M0, S0 lists of (B, H, n_{l-1}, n_l) -> y (T, B, H, d), (M, S)."""
        M, S = list(M0), list(S0)
        ys = []
        for s in range(0, q.shape[0], chunk):
            e = min(s + chunk, q.shape[0])
            n = e - s
            Q, K, V = (x[s:e].permute(1, 2, 0, 3) for x in (q, k, v))          # (B, H, n, d)
            a, et, th = (g[s:e].permute(1, 2, 0) for g in (alpha, eta, theta))   # (B, H, n)
            copies = [W.unsqueeze(2).expand(-1, -1, n, -1, -1) for W in M]       # one weight set per token
            r = read(copies, K) - V
            us = torch.autograd.grad((r * r).sum(), copies, create_graph=True)   # (A16) u_i at M_s
            PA, PE = decay(1.0 - a), decay(et)
            LA, LE = PA[..., 1:, 1:], PE[..., 1:, 1:]
            mix = (LA @ LE) * th.unsqueeze(-2)                                    # Kmat[tau, i] theta_i
            beta, m = PA[..., 1:, 0, None, None], (LA @ PE[..., 1:, 0:1])[..., None]
            Ms = [beta * W.unsqueeze(2) + m * Sl.unsqueeze(2) - torch.einsum("bhti,bhixy->bhtxy", mix, u)
                  for W, Sl, u in zip(M, S, us)]                                  # (A17), every tau
            ys.append(read(Ms, Q).permute(2, 0, 1, 3))                            # (A15) read after write
            S = [PE[..., n, 0, None, None] * Sl - torch.einsum("bhi,bhixy->bhxy", LE[..., -1, :] * th, u)
                 for Sl, u in zip(S, us)]                                         # (A18) at tau = n
            M = [W_t[:, :, -1] for W_t in Ms]
        return torch.cat(ys, dim=0), (M, S)

    return torch, scan


def recurrence_problem(T: int, B: int, d: int, h: int, seed: int = 0) -> tuple:
    """Inputs of the recurrence as the layer makes them (unit q and k, gates inside (0, 1),
    theta <= 0.1) and a read gradient dy: (M0, S0, q, k, v, alpha, eta, theta, dy), float64, H = 1."""
    rng = np.random.default_rng(seed)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    q, k = unit(rng.standard_normal((T, B, 1, d))), unit(rng.standard_normal((T, B, 1, d)))
    v = rng.standard_normal((T, B, 1, d))
    alpha, eta = rng.uniform(0.01, 0.2, (T, B, 1)), rng.uniform(0.5, 0.99, (T, B, 1))
    theta = rng.uniform(0.01, 0.1, (T, B, 1))
    M0 = (rng.standard_normal((B, 1, d, h)) / np.sqrt(d), rng.standard_normal((B, 1, h, d)) / np.sqrt(h))
    S0 = tuple(np.zeros_like(W) for W in M0)
    return M0, S0, q, k, v, alpha, eta, theta, rng.standard_normal((T, B, 1, d))


def _minimem_recurrence_step(problem: tuple, chunk: int) -> Callable[[], tuple]:
    """lmm_scan_forward + lmm_scan_backward; returns (y, dq, dk, dv, dalpha, deta, dtheta, dM0, dS0)."""
    M0, S0, q, k, v, alpha, eta, theta, dy = problem

    def run():
        y, _, cache = lmm_scan_forward(M0, S0, q, k, v, alpha, eta, theta, chunk)
        (dq, dk, dv), gates, (dM0, dS0) = lmm_scan_backward(dy, cache)
        return (y, dq, dk, dv) + tuple(gates) + (dM0, dS0)
    return run


def _torch_recurrence_step(problem: tuple, chunk: int) -> Callable[[], tuple]:
    """The port's forward + autograd backward, same returns as _minimem_recurrence_step (numpy)."""
    torch, scan = _torch_scan()
    M0, S0, q, k, v, alpha, eta, theta, dy = problem
    dy_t = torch.as_tensor(dy)

    def run():
        leaf = lambda x: torch.tensor(x, requires_grad=True)
        Ms, Ss = [leaf(W) for W in M0], [leaf(W) for W in S0]
        inputs = [leaf(x) for x in (q, k, v, alpha, eta, theta)]
        y, _ = scan(Ms, Ss, *inputs, chunk)
        y.backward(dy_t)
        return ((y.detach().numpy(),) + tuple(x.grad.numpy() for x in inputs)
                + (tuple(W.grad.numpy() for W in Ms), tuple(W.grad.numpy() for W in Ss)))
    return run


def check_torch_port(T: int = 10, B: int = 2, d: int = 4, h: int = 8, chunk: int = 4, seed: int = 0) -> dict:
    """Run minimem and the PyTorch port on one float64 problem (a last chunk shorter than b
    included); returns {name: max |minimem - torch| / max(1, max |minimem|)} for the reads and
    every gradient (q, k, v, alpha, eta, theta, M0 and S0 layers)."""
    problem = recurrence_problem(T, B, d, h, seed)
    ours, theirs = _minimem_recurrence_step(problem, chunk)(), _torch_recurrence_step(problem, chunk)()
    names = ("y", "dq", "dk", "dv", "dalpha", "deta", "dtheta")
    errors = {}
    for name, a, b in zip(names, ours, theirs):
        errors[name] = float(np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(a))))
    for name, a_s, b_s in (("dM0", ours[7], theirs[7]), ("dS0", ours[8], theirs[8])):
        for l, (a, b) in enumerate(zip(a_s, b_s), start=1):
            errors[f"{name}_{l}"] = float(np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(a))))
    return errors


def bench_titans_torch_recurrence(rounds: int, quick: bool = False) -> list[dict]:
    """Recurrence forward + backward: minimem's manual chunked scan against the PyTorch port.
    [] when torch is not installed; raises if the port does not compute minimem's numbers."""
    if not torch_available():
        return []
    errors = check_torch_port()
    if max(errors.values()) > 1e-10:
        raise RuntimeError(f"the PyTorch port differs from minimem: {errors}")
    size = SIZES["quick" if quick else "full"]["torch"]
    d, B, b = size["d"], size["B"], size["chunk"]
    rows = []
    for T in size["lengths"]:
        problem = recurrence_problem(T, B, d, 2 * d)
        t = time_side_by_side({"minimem": _minimem_recurrence_step(problem, b),
                               "torch": _torch_recurrence_step(problem, b)}, rounds, inner=1)
        rows.append({"benchmark": f"Titans LMM recurrence fwd+bwd T={T} d={d} h={2 * d} B={B} b={b} float64",
                     "baseline": "minimem manual", "baseline_s": t["minimem"],
                     "candidate": "pytorch, per-token weights", "candidate_s": t["torch"]})
    return rows


# ----------------------------------------------------------------- PyTorch port of the whole layer
@functools.lru_cache(maxsize=None)
def _torch_layer():
    """Import torch (one thread) and build the port of TitansLMM.forward (module docstring, torch
    rows): features (A1)-(A7), the chunked recurrence in minimem's dual form (A16)-(A18), (A15),
    the output path (A20)-(A21). The inner gradients are the closed form (A9)-(A11) written in
    torch ops, so autograd differentiates through them (the second-order terms). Cached: torch
    loads once. Returns (torch, forward) with forward(params, x, config) -> outputs."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    masks = {}

    def lower(n: int):
        if n not in masks:
            masks[n] = torch.ones(n, n, dtype=torch.bool).tril()
        return masks[n]

    def decay(A):
        """P[..., r, i] = prod_{j=i+1}^{r} A_j (..., n+1, n+1); factors strictly inside (0, 1]."""
        c = F.pad(torch.cumsum(torch.log(A), dim=-1), (1, 0))
        diff = c.unsqueeze(-1) - c.unsqueeze(-2)
        return torch.exp(torch.where(lower(c.shape[-1]), diff, float("-inf")))

    def act(a, phi):
        """(phi(a), phi'(a))."""
        if phi == "silu":
            s = torch.sigmoid(a)
            return a * s, s * (1.0 + a * (1.0 - s))
        t = torch.tanh(a)
        return t, 1.0 - t * t

    def surprises(M, K, V, phi):
        """The inner gradient's factors at weights M for keys K and values V (B, H, n, d): the
        layer inputs x_l and the backpropagated errors delta_l, so that u = x_l^T delta_l."""
        L = len(M)
        xs, d1s, z = [], [], K
        for l, W in enumerate(M):
            xs.append(z)
            a = z @ W
            if l < L - 1:
                z, dphi = act(a, phi)
                d1s.append(dphi)
            else:
                z = a
        deltas = [None] * L
        deltas[-1] = 2.0 * (z - V)                               # (A9)
        for l in reversed(range(L - 1)):
            deltas[l] = (deltas[l + 1] @ M[l + 1].mT) * d1s[l]   # (A11)
        return xs, deltas

    def chunk(M, S, Q, K, V, al, et, th, phi, after):
        """One chunk: M, S lists of (B, H, n_{l-1}, n_l); Q, K, V (B, H, n, d); gates (B, H, n)."""
        xs, deltas = surprises(M, K, V, phi)                     # (A16): surprises at the chunk start
        PA, PE = decay(1.0 - al), decay(et)                       # (B, H, n+1, n+1)
        LA, LE = PA[..., 1:, 1:], PE[..., 1:, 1:]
        beta, m = PA[..., 1:, 0], (LA @ PE[..., 1:, 0:1])[..., 0]   # (B, H, n)
        CM = -(LA @ LE) * th.unsqueeze(-2)                         # (A17): -Kmat[tau, i] theta_i
        CS = -LE * th.unsqueeze(-2)                                # (A18)
        if after:                                                  # token tau reads M_tau
            cb, cm, C = beta, m, CM
        else:                                                      # token tau reads M_{tau-1}
            cb = torch.cat([torch.ones_like(beta[..., :1]), beta[..., :-1]], dim=-1)
            cm = torch.cat([torch.zeros_like(m[..., :1]), m[..., :-1]], dim=-1)
            C = torch.cat([torch.zeros_like(CM[..., :1, :]), CM[..., :-1, :]], dim=-2)
        z = Q                                                      # (A15) in dual form
        for l, (W, Sl, x, delta) in enumerate(zip(M, S, xs, deltas)):
            a = cb.unsqueeze(-1) * (z @ W) + cm.unsqueeze(-1) * (z @ Sl) + (C * (z @ x.mT)) @ delta
            z = act(a, phi)[0] if l < len(M) - 1 else a
        bn, mn, en = beta[..., -1, None, None], m[..., -1, None, None], PE[..., -1, 0, None, None]
        M_n = [bn * W + mn * Sl + x.mT @ (CM[..., -1, :, None] * delta) for W, Sl, x, delta in zip(M, S, xs, deltas)]
        S_n = [en * Sl + x.mT @ (CS[..., -1, :, None] * delta) for Sl, x, delta in zip(S, xs, deltas)]
        return z, M_n, S_n

    def token(M, S, q, k, v, A, et, th, phi, after):
        """b = 1, as minimem's token path: q, k, v (B, H, 1, d), gates (B, H, 1, 1); the new
        weights formed directly (A13)-(A14), then read (A15)."""
        xs, deltas = surprises(M, k, v, phi)                     # (A12) at M_{t-1}
        S_n = [et * Sl - th * (x.mT @ delta) for Sl, x, delta in zip(S, xs, deltas)]
        M_n = [A * W + Sl for W, Sl in zip(M, S_n)]
        z = q
        for l, W in enumerate(M_n if after else M):
            a = z @ W
            z = act(a, phi)[0] if l < len(M) - 1 else a
        return z, M_n, S_n

    def l2norm(x, eps):
        return x / torch.sqrt((x * x).sum(dim=-1, keepdim=True) + eps)

    def forward(P, x, config: TitansLMMConfig):
        """P: {minimem name: tensor}; x (T, B, D) -> outputs (T, B, D) (or (T, B, C))."""
        _, B, D = x.shape
        if config.N_p:                                             # (A3.7)
            x = torch.cat([P["persist.P"].unsqueeze(1).expand(config.N_p, B, D), x], dim=0)
        T, H, d, Kc = x.shape[0], config.H, config.head_width, config.K_c
        feats = []
        for name in "qkv":                                         # (A1)-(A3): depthwise causal conv1d
            w = P[f"lmm.conv_{name}"]                              # (C, K_c)
            z = (x @ P[f"lmm.W_{name}"]).permute(1, 2, 0)           # (B, C, T)
            z = F.conv1d(F.pad(z, (Kc - 1, 0)), w.unsqueeze(1), groups=w.shape[0])
            feats.append(F.silu(z).permute(0, 2, 1).reshape(B, T, H, d).transpose(1, 2))   # (B, H, T, d)
        q, k, v = l2norm(feats[0], config.eps_n), l2norm(feats[1], config.eps_n), feats[2]   # (A4)
        gate = lambda g: (x @ P[f"lmm.w_{g}"] + P[f"lmm.b_{g}"]).permute(1, 2, 0)   # (B, H, T)
        al, et = torch.sigmoid(gate("alpha")), torch.sigmoid(gate("eta"))          # (A5), (A6)
        th = config.step_bound * torch.sigmoid(gate("theta"))                      # (A7)
        M = [P[f"lmm.mem0.W{l + 1}"].expand(B, -1, -1, -1) for l in range(config.L_M)]
        S = [torch.zeros_like(W) for W in M]
        ys, b = [], config.chunk
        if b == 1:                                                 # the sequential model: token path
            A, E, Th = ((1.0 - al).unsqueeze(-1), et.unsqueeze(-1), th.unsqueeze(-1))   # (B, H, T, 1)
            for t in range(T):
                i = slice(t, t + 1)
                y, M, S = token(M, S, q[:, :, i], k[:, :, i], v[:, :, i], A[:, :, i], E[:, :, i], Th[:, :, i],
                                config.phi, config.read_after_write)
                ys.append(y)
        else:
            for s in range(0, T, b):
                e = min(s + b, T)
                y, M, S = chunk(M, S, q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], al[..., s:e], et[..., s:e],
                                th[..., s:e], config.phi, config.read_after_write)
                ys.append(y)
        y = torch.cat(ys, dim=2).permute(2, 0, 1, 3)               # (T, B, H, d)
        if config.output_path:                                     # (A20)-(A21)
            r = y / torch.sqrt((y * y).mean(dim=-1, keepdim=True) + 1e-6) * P["lmm.out_norm.g"]
            out = (r.reshape(T, B, H * d) * F.silu(x @ P["lmm.W_gate"])) @ P["lmm.W_o"]
        else:
            out = y.reshape(T, B, H * d)
        return out[config.N_p:]

    return torch, forward


def layer_problem(config: TitansLMMConfig, T: int, B: int, dtype: str = "float64", seed: int = 0) -> tuple:
    """(model, x, targets): a TitansLMM with seeded parameters in dtype and random inputs and targets."""
    rng = np.random.default_rng(seed)
    model = TitansLMM(config, rng=np.random.default_rng(seed + 1), dtype=np.dtype(dtype))
    Y = config.D if config.output_path else config.H * config.head_width
    x = rng.standard_normal((T, B, config.D)).astype(dtype)
    return model, x, rng.standard_normal((T, B, Y)).astype(dtype)


def _minimem_layer_step(model: TitansLMM, x: np.ndarray, targets: np.ndarray) -> Callable[[], tuple]:
    """One training step of the manual engine: forward, squared error summed and divided by B
    (mse_forward, reduction "batch"), backward to every parameter. Returns (loss, grads)."""
    def run():
        out, cache = model.forward(x)
        loss, loss_cache = mse_forward(out, targets)
        return float(loss), model.backward(mse_backward(1.0, loss_cache), cache)
    return run


def _torch_layer_step(model: TitansLMM, x: np.ndarray, targets: np.ndarray) -> Callable[[], tuple]:
    """The same training step in the PyTorch port (parameters copied from model, fresh leaves
    every call, autograd backward). Returns (loss, {minimem name: gradient as numpy})."""
    torch, forward = _torch_layer()
    x_t, y_t = torch.as_tensor(x), torch.as_tensor(targets)
    values = {name: torch.as_tensor(value) for name, value in model.params.items()}
    B = x.shape[1]

    def run():
        params = {name: value.detach().requires_grad_(True) for name, value in values.items()}
        out = forward(params, x_t, model.config)
        loss = ((out - y_t) ** 2).sum() / B
        loss.backward()
        return float(loss.detach()), {name: p.grad.numpy() for name, p in params.items()}
    return run


def check_torch_layer(config: TitansLMMConfig | None = None, T: int = 11, B: int = 2, seed: int = 0) -> dict:
    """minimem's manual training step against the PyTorch port's on one float64 problem:
    {"loss_minimem", "loss_pytorch", "loss_diff" (absolute), "grads": {name: max |g_minimem -
    g_pytorch| / max(1, max |g_minimem|)}}. Default config: D = 8, chunk 4 (T = 11 ends with a
    short chunk)."""
    config = TitansLMMConfig(D=8, chunk=4) if config is None else config
    model, x, targets = layer_problem(config, T, B, "float64", seed)
    loss, grads = _minimem_layer_step(model, x, targets)()
    loss_pt, grads_pt = _torch_layer_step(model, x, targets)()
    diffs = {name: float(np.max(np.abs(grads[name] - grads_pt[name])) / max(1.0, np.max(np.abs(grads[name]))))
             for name in grads}
    return {"loss_minimem": loss, "loss_pytorch": loss_pt, "loss_diff": abs(loss - loss_pt), "grads": diffs}


def bench_titans_torch(rounds: int, quick: bool = False) -> list[dict]:
    """One training step of a TitansLMM layer: minimem's manual engine (baseline) against the
    PyTorch port (candidate) at the small and the large configurations, float64 and float32.
    [] when torch is not installed; raises if the port does not compute minimem's numbers."""
    if not torch_available():
        return []
    check = check_torch_layer()
    if check["loss_diff"] > 1e-12 * max(1.0, abs(check["loss_minimem"])) or max(check["grads"].values()) > 1e-10:
        raise RuntimeError(f"the PyTorch layer port differs from minimem: {check}")
    size = SIZES["quick" if quick else "full"]["torch_layer"]
    rows = []
    for T, D, B, chunks in size["configs"]:
        for b in chunks:
            for dtype in size["dtypes"]:
                model, x, targets = layer_problem(TitansLMMConfig(D=D, chunk=b), T, B, dtype)
                t = time_side_by_side({"minimem": _minimem_layer_step(model, x, targets),
                                       "torch": _torch_layer_step(model, x, targets)}, rounds, inner=1)
                rows.append({"benchmark": f"Titans LMM train step T={T} D={D} B={B} b={b} {dtype}",
                             "baseline": "minimem manual", "baseline_s": t["minimem"],
                             "candidate": "pytorch eager", "candidate_s": t["torch"]})
    return rows


def benchmarks(quick: bool = False) -> dict[str, Callable[[int], list[dict]]]:
    """{name: fn(rounds) -> rows} for minimem.bench; quick=True for tiny sizes (tests)."""
    return {"titans_chunked": functools.partial(bench_titans_chunked, quick=quick),
            "titans_recurrence": functools.partial(bench_titans_recurrence, quick=quick),
            "titans_engines": functools.partial(bench_titans_engines, quick=quick),
            "titans_torch": functools.partial(bench_titans_torch, quick=quick),
            "titans_torch_recurrence": functools.partial(bench_titans_torch_recurrence, quick=quick)}


if __name__ == "__main__":
    from minimem.bench import family_main

    raise SystemExit(family_main(benchmarks, "Titans benchmarks", "python -m minimem.bench_titans", __doc__))
