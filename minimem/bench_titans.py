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
    torch        the memory recurrence alone (lmm_scan_forward + lmm_scan_backward: one head,
                 d = 64, two-layer SiLU memory h = 128, chunk b = 64, batch 2, T = 1024) against a
                 PyTorch port written for this benchmark: per-token surprises by torch.autograd.grad
                 with create_graph=True (second order through autograd), the chunked form (A17)
                 with the per-token weights materialised, reads after write, autograd backward,
                 torch.set_num_threads(1), float64. check_torch_port() first holds the port's reads
                 and every gradient equal to minimem's on a fixed float64 input. Only when torch is
                 importable; otherwise the rows are omitted (torch is not a dependency of minimem).
                 Gates must lie strictly inside (0, 1) for the port (no exact-zero bookkeeping).

Measured (python -m minimem.bench_titans --rounds 3, 2 cores shared with other jobs, so absolute
times are inflated; numpy 2.4, torch 2.13 CPU): chunked b = 64 against b = 1, forward + backward,
20.1x at T = 1024 (3.86 s / 192 ms) and 13.5x at T = 4096 (12.95 s / 956 ms); b = 16: 9.6x and
10.9x. titans_torch: minimem 157 ms, the PyTorch port 2.40 s (its per-token weights cost
O(b^2 d h) per chunk where minimem's dual form costs O(b^2 (d + h) + b d h)).

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
from minimem.memory.titans_lmm import lmm_scan_backward, lmm_scan_forward

SIZES = {
    "full": {"lengths": (1024, 4096), "D": 64, "B": 2, "chunks": (16, 64),
             "engines": {"T": 32, "D": 16, "B": 2, "chunks": (1, 8)},
             "torch": {"lengths": (1024,), "d": 64, "B": 2, "chunk": 64}},
    "quick": {"lengths": (24,), "D": 8, "B": 2, "chunks": (4, 16),
              "engines": {"T": 6, "D": 4, "B": 1, "chunks": (1, 3)},
              "torch": {"lengths": (12,), "d": 4, "B": 2, "chunk": 4}},
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


def bench_titans_torch(rounds: int, quick: bool = False) -> list[dict]:
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
                     "candidate": "pytorch autograd", "candidate_s": t["torch"]})
    return rows


def benchmarks(quick: bool = False) -> dict[str, Callable[[int], list[dict]]]:
    """{name: fn(rounds) -> rows} for minimem.bench; quick=True for tiny sizes (tests)."""
    return {"titans_chunked": functools.partial(bench_titans_chunked, quick=quick),
            "titans_engines": functools.partial(bench_titans_engines, quick=quick),
            "titans_torch": functools.partial(bench_titans_torch, quick=quick)}


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
        if name == "titans_torch" and not torch_available():
            print("# titans_torch: skipped (torch not installed)")
            continue
        rows += found[name](rounds)
    print(f"# minimem Titans benchmarks ({platform.python_implementation()} {platform.python_version()}, "
          f"numpy {np.__version__}, {rounds} interleaved rounds, medians)")
    print(format_table(rows))
