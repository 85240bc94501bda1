"""NTM and DNC benchmarks (issue 3; spec specs/ntm_dnc_sam.md Parts A, B, E): the cost of one training
step (forward + loss + backward to every parameter gradient, no optimiser update), timed side by side
in one run (minimem.bench.time_side_by_side); only ratios are claimed.

    python -m minimem.bench_dnc              # the configurations below (a few minutes on 2 busy cores)
    python -m minimem.bench_dnc --quick      # tiny sizes, one round: checks the code runs (the tests)
    python -m minimem.bench_dnc --only ntm_scaling

Benchmarks (benchmarks(quick) returns {name: fn(rounds) -> rows} in the row format of minimem.bench):
    ntm_engines      the NTM copy configuration (LSTM 100, N = 128, W = 20, 1 read + 1 write head,
                     S = 3, 8-bit vectors of length 20: T = 41 steps), batch 1 and 16, float64:
                     the manual engine (hand-derived BPTT) against the autodiff engine.
    dnc_engines      the DNC configuration (LSTM 64, N = 64, W = 32, R = 4, batch 16, T = 20 steps of
                     random 8-bit inputs with random 8-bit targets on every step), float64: manual
                     against autodiff.
    ntm_scaling      the NTM configuration at batch 1 with copy length 4 (T = 9), N = 2^7 .. 2^16:
                     baseline = the N = 2^7 step, candidate = the N = 2^k step, timed side by side,
                     so candidate / baseline is the growth of the step time with N (O(N W) per step
                     once N dominates; at N = 2^7 the per-op overhead dominates instead).
    pytorch_configs  the two configurations above (NTM batch 1 and 16, DNC batch 16) in float32 and
                     float64: minimem's manual engine (baseline) against an idiomatic PyTorch port
                     written for this benchmark (candidate), so candidate / baseline is minimem's
                     speed-up. Only when torch is importable; otherwise these rows are omitted and
                     main() prints a note. torch is not a dependency of minimem.

The PyTorch ports (TorchNTM, TorchDNC, built by torch_ntm / torch_dnc from a minimem model, which
copies its parameters) are written the way popular PyTorch NTM/DNC code is: nn.LSTMCell controller,
nn.Linear maps, one module call per head for the NTM, a Python loop over time steps of torch ops,
autograd for the backward, torch.set_num_threads(1). They are not copies of any public repository;
they compute exactly minimem's equations (A.3 with clip 20, tanh keys and adds, softplus strengths,
log-domain sharpening, constant 1e-6 memory, learned initial weightings and reads; B.3 paper mode with
oneplus strengths, usage floor 1e-6, stable sort, modes (backward, content, forward)), so that the
comparison is between two implementations of one function: check_pytorch_ports() runs both on one
fixed batch in float64 with identical parameters and reports the loss and gradient differences.

Measured (5 rounds, medians; 2 cores shared with other jobs, so times are inflated and single
ratios move by +-10% or more between runs; torch 2.13 CPU, numpy 2.4):
    ports == minimem in float64 at the full sizes: loss difference 0.0 (NTM 111.2286, DNC 112.5172
    nats per sequence), largest relative gradient difference 9.4e-12 (NTM) and 4.4e-16 (DNC).
    After the issue-11 speed work, two runs: A = full run at a load average of 3.5, B = the engine
    and PyTorch rows again at a load average of 2.8 (ms per training step from run B):
    manual vs autodiff, float64: NTM B=1 4.4x / 3.5x (99 vs 348 ms), NTM B=16 3.5x / 2.7x (215 vs
    582 ms), DNC 3.9x / 3.6x (108 vs 386 ms).
    PyTorch / minimem manual, A / B:
        float32  NTM B=1 3.3x / 3.3x (34 vs 112)   NTM B=16 2.5x / 2.1x (92 vs 196)
                 DNC 1.6x / 1.6x (68 vs 110)
        float64  NTM B=1 3.6x / 3.2x (50 vs 162)   NTM B=16 2.4x / 1.9x (116 vs 219)
                 DNC 1.6x / 1.6x (106 vs 172)
    The DNC misses the 2x target. A quarter of its step is per-call overhead (the same step at
    N = 4, W = 4, B = 1 costs 26-30 ms of the 82-115 ms CPU time at full size); the rest is spread
    over the primitives, each already a handful of whole-array NumPy calls: per time step the
    memory backward costs ~1.4 ms (float32) of which allocation, write, link, retention and the two
    content lookups take 0.2-0.3 ms each. Fresh-page faults of new large arrays cost about another
    10% on this VM (glibc returns freed memory to the system; not something model code should tune).
    Old and new code timed side by side in one process (alternating rounds, medians; outputs
    identical, gradients equal to 2.2e-16 in float64): DNC 1.07-1.17x (float64) and 1.01-1.13x
    (float32) faster over four runs, NTM B=1 1.00-1.07x, NTM B=16 1.01-1.14x (within the noise).
    Second round (the T link matrices in one (T, B, N, N) buffer written in place, a cached index
    table for product_of_others): page faults per float64 step 2,771 -> 176, so a process running
    only minimem (a demo) steps ~1.15x faster; the PyTorch rows hardly show it, because once torch
    or the autodiff engine has made large allocations glibc keeps its pages and the old code stops
    faulting too. PyTorch / minimem afterwards, three runs: DNC 1.6-1.8x (float32), 1.5-1.6x
    (float64); quiet machine (load ~1, 7 rounds, before this round): NTM B=1 3.0x / 3.6x, NTM
    B=16 2.2x / 2.2x, DNC 1.6x / 1.5x (float32 / float64); manual vs autodiff NTM 5.3x / 3.3x,
    DNC 3.8x.
    Latest (2026-11-22, quiet machine, two runs of 7 rounds, after the controller's hoisted LSTM
    steps and cheaper memory primitives: the DNC step 1.07-1.12x and 1.05-1.12x faster side by
    side): manual vs autodiff NTM 5.3x / 5.1x (B=1), 3.1x / 3.9x (B=16), DNC 4.7x / 4.8x;
    PyTorch / minimem float32 NTM B=1 4.0x / 4.0x, B=16 2.7x / 2.7x, DNC 2.0x / 1.8x; float64
    NTM B=1 3.5x / 3.4x, B=16 2.3x / 2.6x, DNC 1.9x / 1.9x.
    NTM step (T = 9, B = 1) at N = 2^k over N = 2^7 (30-34 ms), run A: 2^10 1.5x, 2^12 3.2x,
    2^14 8.7x, 2^15 19.0x, 2^16 40.1x (1.32 s, 146 ms per time step): per-op overhead dominates up
    to ~2^11, then the time grows roughly linearly in N (2^13 -> 2^14 -> 2^15: 164 -> 297 -> 602 ms).
"""

from __future__ import annotations

import minimem  # noqa: F401  (first: single-threaded BLAS, see minimem/__init__.py)

import argparse
import functools
import platform
from dataclasses import dataclass
from typing import Callable

import numpy as np

from minimem import autodiff as ad
from minimem.bench import format_table, time_side_by_side
from minimem.memory.addressing import EPS_DEN, EPS_NORM, EPS_SHARPEN, shift_offsets
from minimem.memory.dnc import DNC, DNCConfig
from minimem.memory.dnc_interface import interface_layout
from minimem.memory.ntm import NTM, NTMConfig
from minimem.nn.losses import (
    sigmoid_cross_entropy_autodiff, sigmoid_cross_entropy_backward, sigmoid_cross_entropy_forward,
)
from minimem.tasks import make_copy
from minimem.tasks.algorithmic import Batch


@dataclass(frozen=True)
class Sizes:
    """The benchmark configurations (module docstring); "quick" shrinks every size."""
    ntm_N: int = 128
    ntm_W: int = 20
    ntm_H: int = 100
    ntm_bits: int = 8
    ntm_length: int = 20             # copy length L: T = 2L + 1 = 41
    ntm_batches: tuple = (1, 16)
    dnc_N: int = 64
    dnc_W: int = 32
    dnc_R: int = 4
    dnc_H: int = 64
    dnc_B: int = 16
    dnc_T: int = 20
    dnc_bits: int = 8
    scaling_log_ns: tuple = tuple(range(7, 17))   # the first is the baseline
    scaling_length: int = 4          # T = 9 per training step in the scaling runs
    torch_dtypes: tuple = ("float32", "float64")


SIZES = {"full": Sizes(),
         "quick": Sizes(ntm_N=8, ntm_W=4, ntm_H=6, ntm_bits=3, ntm_length=2, ntm_batches=(1, 2),
                        dnc_N=6, dnc_W=4, dnc_R=2, dnc_H=6, dnc_B=2, dnc_T=4, dnc_bits=3,
                        scaling_log_ns=(3, 4, 5), scaling_length=1)}


# ----------------------------------------------------------------- problems and minimem steps
def ntm_problem(sizes: Sizes, B: int, N: int | None = None, length: int | None = None,
                dtype: str = "float64", seed: int = 0) -> tuple[NTM, Batch]:
    """An NTM (X = bits + 1, Y = bits, LSTM controller, 1 read + 1 write head) and one copy batch
    of B sequences of exactly `length` vectors (T = 2 length + 1)."""
    N = sizes.ntm_N if N is None else N
    length = sizes.ntm_length if length is None else length
    config = NTMConfig(X=sizes.ntm_bits + 1, Y=sizes.ntm_bits, N=N, W=sizes.ntm_W, H=sizes.ntm_H, dtype=dtype)
    model = NTM(config, np.random.default_rng(seed))
    batch = make_copy(np.random.default_rng(seed + 1), B, num_bits=sizes.ntm_bits, min_len=length,
                      max_len=length, same_length=True, dtype=dtype)
    return model, batch


def dnc_problem(sizes: Sizes, dtype: str = "float64", seed: int = 0) -> tuple[DNC, Batch]:
    """A DNC (X = Y = bits, one LSTM layer) and a batch of T random-bit inputs with random-bit
    targets scored on every step (the cost of a step does not depend on the task's data)."""
    bits, T, B = sizes.dnc_bits, sizes.dnc_T, sizes.dnc_B
    config = DNCConfig(X=bits, Y=bits, N=sizes.dnc_N, W=sizes.dnc_W, R=sizes.dnc_R, H=sizes.dnc_H, dtype=dtype)
    model = DNC(config, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    inputs = (rng.random((T, B, bits)) < 0.5).astype(dtype)
    targets = (rng.random((T, B, bits)) < 0.5).astype(dtype)
    return model, Batch(inputs, targets, np.ones((T, B), dtype=dtype))


def manual_step(model, batch: Batch) -> Callable[[], tuple]:
    """One training step of the manual engine: forward, sigmoid cross-entropy in nats per sequence
    (spec section 0), its gradient, BPTT. Returns (loss, grads)."""
    def run():
        ys, cache = model.forward(batch.inputs)
        loss, loss_cache = sigmoid_cross_entropy_forward(ys, batch.targets, batch.mask, reduction="batch")
        return float(loss), model.backward(sigmoid_cross_entropy_backward(1.0, loss_cache), cache)
    return run


def autodiff_step(model, batch: Batch) -> Callable[[], tuple]:
    """The same training step on the autodiff engine (fresh leaf Tensors every call)."""
    def run():
        tparams = {name: ad.Tensor(value, requires_grad=True) for name, value in model.params.items()}
        ys = model.forward_autodiff(tparams, batch.inputs)
        loss = sigmoid_cross_entropy_autodiff(ys, batch.targets, batch.mask, reduction="batch")
        loss.backward()
        return float(loss.data), {name: t.grad for name, t in tparams.items()}
    return run


def _ntm_label(sizes: Sizes, B: int, dtype: str = "") -> str:
    T = 2 * sizes.ntm_length + 1
    return (f"NTM copy step N={sizes.ntm_N} W={sizes.ntm_W} H={sizes.ntm_H} T={T} B={B}"
            + (f" {dtype}" if dtype else ""))


def _dnc_label(sizes: Sizes, dtype: str = "") -> str:
    return (f"DNC step N={sizes.dnc_N} W={sizes.dnc_W} R={sizes.dnc_R} H={sizes.dnc_H} T={sizes.dnc_T} "
            f"B={sizes.dnc_B}" + (f" {dtype}" if dtype else ""))


def _row(benchmark: str, baseline: str, baseline_s: float, candidate: str, candidate_s: float, **extra) -> dict:
    return {"benchmark": benchmark, "baseline": baseline, "baseline_s": baseline_s,
            "candidate": candidate, "candidate_s": candidate_s, **extra}


# ----------------------------------------------------------------- the minimem benchmarks
def bench_ntm_engines(rounds: int, quick: bool = False) -> list[dict]:
    """NTM copy configuration, batch 1 and 16, float64: manual against autodiff engine."""
    sizes = SIZES["quick" if quick else "full"]
    rows = []
    for B in sizes.ntm_batches:
        model, batch = ntm_problem(sizes, B)
        t = time_side_by_side({"manual": manual_step(model, batch), "autodiff": autodiff_step(model, batch)},
                              rounds, inner=1)
        rows.append(_row(_ntm_label(sizes, B), "manual", t["manual"], "autodiff", t["autodiff"]))
    return rows


def bench_dnc_engines(rounds: int, quick: bool = False) -> list[dict]:
    """DNC configuration, batch 16, float64: manual against autodiff engine."""
    sizes = SIZES["quick" if quick else "full"]
    model, batch = dnc_problem(sizes)
    t = time_side_by_side({"manual": manual_step(model, batch), "autodiff": autodiff_step(model, batch)},
                          rounds, inner=1)
    return [_row(_dnc_label(sizes), "manual", t["manual"], "autodiff", t["autodiff"])]


def bench_ntm_scaling(rounds: int, quick: bool = False) -> list[dict]:
    """NTM training step (manual engine, batch 1, T = 2 scaling_length + 1) at N = 2^k against the
    smallest N, timed side by side for every k; rows carry N, log_n and T."""
    sizes = SIZES["quick" if quick else "full"]
    base_log_n, *log_ns = sizes.scaling_log_ns
    T = 2 * sizes.scaling_length + 1
    base = manual_step(*ntm_problem(sizes, 1, N=1 << base_log_n, length=sizes.scaling_length))
    rows = []
    for log_n in log_ns:
        step = manual_step(*ntm_problem(sizes, 1, N=1 << log_n, length=sizes.scaling_length))
        t = time_side_by_side({"base": base, "candidate": step}, rounds, inner=1)
        rows.append(_row(f"NTM step W={sizes.ntm_W} H={sizes.ntm_H} T={T} B=1 N=2^{log_n}",
                         f"N=2^{base_log_n}", t["base"], f"N=2^{log_n}", t["candidate"],
                         N=1 << log_n, log_n=log_n, T=T))
        del step
    return rows


# ----------------------------------------------------------------- PyTorch ports
def torch_available() -> bool:
    """True when torch can be imported (it is optional: only the pytorch_configs rows need it)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def lstm_cell_names(cell, prefix: str) -> dict:
    """minimem's LSTM names for a torch.nn.LSTMCell: W_x = weight_ih^T, W_h = weight_hh^T, b = bias_ih
    (bias_hh is held at zero; its gradient equals bias_ih's)."""
    return {f"{prefix}.W_x": (cell.weight_ih, True), f"{prefix}.W_h": (cell.weight_hh, True),
            f"{prefix}.b": (cell.bias_ih, False)}


def linear_names(linear, prefix: str) -> dict:
    """minimem's names for a torch.nn.Linear: W = weight^T, b = bias."""
    return {f"{prefix}.W": (linear.weight, True), f"{prefix}.b": (linear.bias, False)}


def load_minimem_params(names: dict, params: dict, zero=()) -> None:
    """Copy minimem's parameters into the torch parameters that `names` maps them to (transposing
    where marked); the tensors in `zero` are set to 0."""
    for name, (tensor, transposed) in names.items():
        value = np.asarray(params[name])
        tensor.data.copy_(tensor.new_tensor(value.T if transposed else value))
    for tensor in zero:
        tensor.data.zero_()


def minimem_grads_of(names: dict) -> dict:
    """The .grad of every mapped torch parameter, under minimem's name and layout."""
    grads = {}
    for name, (tensor, transposed) in names.items():
        g = tensor.grad.detach().numpy()
        grads[name] = g.T if transposed else g
    return grads


def _torch_ports():
    """Import torch (one thread) and define the two port classes; cached, so torch loads once."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    torch.set_num_threads(1)

    def content(M, k, beta):
        """Guarded cosine content weighting (spec section 0): M (B, N, W), k (B, R, W), beta (B, R, 1)."""
        dot = k @ M.transpose(1, 2)                                          # (B, R, N)
        n_k = torch.sqrt((k * k).sum(-1, keepdim=True) + EPS_NORM)           # (B, R, 1)
        n_m = torch.sqrt((M * M).sum(-1) + EPS_NORM).unsqueeze(1)            # (B, 1, N)
        return F.softmax(beta * dot / (n_k * n_m + EPS_DEN), dim=-1)

    def squash(kind):
        return torch.tanh if kind == "tanh" else (lambda x: x)

    class NTMHead(nn.Module):
        """One NTM head (pytorch-ntm style: its own Linear and its own addressing call)."""

        def __init__(self, config: NTMConfig, is_write: bool):
            super().__init__()
            W, S = config.W, config.S
            self.W, self.is_write, self.clip = W, is_write, config.clip
            self.offsets = [int(o) for o in shift_offsets(S)]                  # (-q, ..., +q), eq. (8)
            self.key, self.add = squash(config.key_squash), squash(config.add_squash)
            self.fc = nn.Linear(config.H, W + S + 3 + (2 * W if is_write else 0))
            self.w_bias = nn.Parameter(torch.zeros(config.N))             # initial weighting softmax(w_bias)

        def forward(self, h, M, w_prev):
            """Eqs. (5)-(9) on M (B, N, W) from the previous weighting w_prev (B, N); returns w (and e, a)."""
            o = self.fc(h)
            if self.clip is not None:
                o = o.clamp(-self.clip, self.clip)
            W, S = self.W, len(self.offsets)
            k = self.key(o[:, :W])
            beta = F.softplus(o[:, W:W + 1])
            g = torch.sigmoid(o[:, W + 1:W + 2])
            s = F.softmax(o[:, W + 2:W + 2 + S], dim=-1)
            gamma = 1.0 + F.softplus(o[:, W + 2 + S:W + 3 + S])
            w_c = content(M, k.unsqueeze(1), beta.unsqueeze(1)).squeeze(1)          # (5)-(6)
            w_g = g * w_c + (1.0 - g) * w_prev                                        # (7)
            w_s = sum(s[:, j:j + 1] * torch.roll(w_g, shift, dims=-1)                 # (8)
                      for j, shift in enumerate(self.offsets))
            w = F.softmax(gamma * torch.log(w_s + EPS_SHARPEN), dim=-1)               # (9), log domain
            if not self.is_write:
                return w, None, None
            return w, torch.sigmoid(o[:, W + 3 + S:2 * W + 3 + S]), self.add(o[:, 2 * W + 3 + S:])

    class TorchNTM(nn.Module):
        """NTM of spec A.3 (read before write, all heads on M_{t-1}) with an LSTMCell controller."""

        def __init__(self, config: NTMConfig, memory0: np.ndarray):
            super().__init__()
            self.config = config
            self.controller = nn.LSTMCell(config.X + config.R * config.W, config.H)
            self.reads = nn.ModuleList(NTMHead(config, False) for _ in range(config.R))
            self.writes = nn.ModuleList(NTMHead(config, True) for _ in range(config.write_heads))
            self.r_bias = nn.ParameterList(nn.Parameter(torch.zeros(config.W)) for _ in range(config.R))
            self.output = nn.Linear(config.H + config.R * config.W, config.Y)
            self.register_buffer("memory0", torch.as_tensor(memory0))

        def forward(self, xs):
            T, B, _ = xs.shape
            config, clip = self.config, self.config.clip
            M = self.memory0.expand(B, -1, -1)
            w_r = [F.softmax(head.w_bias, dim=-1).expand(B, -1) for head in self.reads]
            w_w = [F.softmax(head.w_bias, dim=-1).expand(B, -1) for head in self.writes]
            r = [torch.tanh(bias).expand(B, -1) for bias in self.r_bias]
            h = xs.new_zeros(B, config.H)
            c = xs.new_zeros(B, config.H)
            ys = []
            for t in range(T):
                h, c = self.controller(torch.cat([xs[t]] + r, dim=1), (h, c))
                w_r = [head(h, M, w)[0] for head, w in zip(self.reads, w_r)]
                r = [(w.unsqueeze(1) @ M).squeeze(1) for w in w_r]                  # (2), on M_{t-1}
                keep, add, w_w_new = 1.0, 0.0, []
                for head, w in zip(self.writes, w_w):
                    w, e, a = head(h, M, w)
                    keep = keep * (1.0 - w.unsqueeze(2) * e.unsqueeze(1))            # (3)
                    add = add + w.unsqueeze(2) * a.unsqueeze(1)                      # (4)
                    w_w_new.append(w)
                M, w_w = M * keep + add, w_w_new
                y = self.output(torch.cat([h] + r, dim=1))
                ys.append(y if clip is None else y.clamp(-clip, clip))
            return torch.stack(ys)

        def minimem_names(self) -> dict:
            """{minimem parameter name: (torch parameter, stored transposed?)} (names of minimem.memory.ntm)."""
            names = {**lstm_cell_names(self.controller, "controller"), **linear_names(self.output, "output")}
            for kind, heads in (("read", self.reads), ("write", self.writes)):
                for i, head in enumerate(heads):
                    names.update(linear_names(head.fc, f"{kind}{i}"))
                    names[f"init.{kind}{i}.w_bias"] = (head.w_bias, False)
            for i, bias in enumerate(self.r_bias):
                names[f"init.read{i}.r_bias"] = (bias, False)
            return names

        def load_minimem(self, params: dict) -> None:
            load_minimem_params(self.minimem_names(), params, zero=(self.controller.bias_hh,))

        def minimem_grads(self) -> dict:
            return minimem_grads_of(self.minimem_names())

    class TorchDNC(nn.Module):
        """DNC of spec B.3 (one LSTM layer, one write head, R read heads), one loop step per time step."""

        def __init__(self, config: DNCConfig):
            super().__init__()
            self.config = config
            R, W, H = config.R, config.W, config.H
            self.controller = nn.LSTMCell(config.X + R * W, H)
            self.interface = nn.Linear(H, config.I)
            self.output = nn.Linear(H, config.Y)
            self.read_out = nn.Linear(R * W, config.Y, bias=False)
            self.slices = interface_layout(R, W)
            self.register_buffer("off_diagonal", 1.0 - torch.eye(config.N, dtype=torch.float64))

        def forward(self, xs):
            T, B, _ = xs.shape
            config = self.config
            N, W, R, H, eps, s = config.N, config.W, config.R, config.H, config.eps_a, self.slices
            positive = (lambda z: 1.0 + F.softplus(z)) if config.strengths == "oneplus" else F.softplus
            off_diagonal = self.off_diagonal.to(xs.dtype)
            M, L = xs.new_zeros(B, N, W), xs.new_zeros(B, N, N)
            u, p, w_w = xs.new_zeros(B, N), xs.new_zeros(B, N), xs.new_zeros(B, N)
            w_r, r = xs.new_zeros(B, R, N), xs.new_zeros(B, R, W)
            h, c = xs.new_zeros(B, H), xs.new_zeros(B, H)
            ones = xs.new_ones(B, 1)
            ys = []
            for t in range(T):
                h, c = self.controller(torch.cat([xs[t], r.reshape(B, R * W)], dim=1), (h, c))   # 1.-2.
                if config.clip is not None:
                    h, c = h.clamp(-config.clip, config.clip), c.clamp(-config.clip, config.clip)
                xi = self.interface(h)                                                          # 3.
                k_r = xi[:, s["k_r"]].reshape(B, R, W)                                          # 4.
                beta_r = positive(xi[:, s["beta_hat_r"]]).unsqueeze(-1)
                k_w = xi[:, s["k_w"]].unsqueeze(1)
                beta_w = positive(xi[:, s["beta_hat_w"]]).unsqueeze(-1)
                e = torch.sigmoid(xi[:, s["e_hat"]])
                nu = xi[:, s["nu"]]
                free = torch.sigmoid(xi[:, s["f_hat"]])
                g_a = torch.sigmoid(xi[:, s["g_hat_a"]])
                g_w = torch.sigmoid(xi[:, s["g_hat_w"]])
                pi = F.softmax(xi[:, s["pi_hat"]].reshape(B, R, 3), dim=-1)
                psi = torch.prod(1.0 - free.unsqueeze(-1) * w_r, dim=1)                          # 5.
                w_w_usage = w_w if config.usage_write_grad else w_w.detach()
                u = (u + w_w_usage - u * w_w_usage) * psi                                       # 6.
                floored, phi = torch.sort(eps + (1.0 - eps) * u, dim=-1, stable=True)           # 7.
                prefix = torch.cumprod(torch.cat([ones, floored[:, :-1]], dim=1), dim=1)
                a = torch.zeros_like(u).scatter(1, phi, (1.0 - floored) * prefix)
                c_w = content(M, k_w, beta_w).squeeze(1)                                        # 8. OLD memory
                w_w = g_w * (g_a * a + (1.0 - g_a) * c_w)                                       # 9.
                M = M * (1.0 - w_w.unsqueeze(2) * e.unsqueeze(1)) + w_w.unsqueeze(2) * nu.unsqueeze(1)  # 10.
                L = ((1.0 - w_w.unsqueeze(2) - w_w.unsqueeze(1)) * L
                     + w_w.unsqueeze(2) * p.unsqueeze(1)) * off_diagonal                       # 11. OLD p
                p = (1.0 - w_w.sum(dim=1, keepdim=True)) * p + w_w                              # 12.
                forward_w, backward_w = w_r @ L.transpose(1, 2), w_r @ L                        # 13. OLD reads
                c_r = content(M, k_r, beta_r)                                                   # 14. NEW memory
                w_r = pi[..., 0:1] * backward_w + pi[..., 1:2] * c_r + pi[..., 2:3] * forward_w  # 15.
                r = w_r @ M                                                                     # 16.
                ys.append(self.output(h) + self.read_out(r.reshape(B, R * W)))                  # 17.
            return torch.stack(ys)

        def minimem_names(self) -> dict:
            """{minimem parameter name: (torch parameter, stored transposed?)} (minimem.memory.dnc, layers = 1)."""
            return {**lstm_cell_names(self.controller, "controller.layer0"), **linear_names(self.interface, "interface"),
                    **linear_names(self.output, "output"), "read_out.W": (self.read_out.weight, True)}

        def load_minimem(self, params: dict) -> None:
            load_minimem_params(self.minimem_names(), params, zero=(self.controller.bias_hh,))

        def minimem_grads(self) -> dict:
            return minimem_grads_of(self.minimem_names())

    return torch, TorchNTM, TorchDNC


def _torch_dtype(dtype: str):
    torch = _torch_ports()[0]
    return {"float32": torch.float32, "float64": torch.float64}[dtype]


def torch_ntm(model: NTM):
    """The PyTorch port of an NTM with model's parameters (in their dtype). Ported options: LSTM
    controller, constant or random memory_init, read before write; anything else is a ValueError."""
    config = model.config
    if config.controller != "lstm" or config.memory_init == "learned" or config.read_after_write:
        raise ValueError("the PyTorch NTM port covers controller='lstm', memory_init 'constant' or 'random' "
                         f"and read_after_write=False; got {config.controller!r}, {config.memory_init!r}, "
                         f"{config.read_after_write!r}")
    torch, TorchNTM, _ = _torch_ports()
    port = TorchNTM(config, model.memory0).to(_torch_dtype(config.dtype))
    port.load_minimem(model.params)
    return port


def torch_dnc(model: DNC):
    """The PyTorch port of a DNC (layers = 1) with model's parameters (in their dtype)."""
    if model.config.layers != 1:
        raise ValueError(f"the PyTorch DNC port covers one controller layer; got layers={model.config.layers}")
    torch, _, TorchDNC = _torch_ports()
    port = TorchDNC(model.config).to(_torch_dtype(model.config.dtype))
    port.load_minimem(model.params)
    return port


def torch_step(port, batch: Batch) -> Callable[[], tuple]:
    """One training step of a port: zero the grads, forward, masked BCE-with-logits summed over
    steps and bits and divided by B (minimem's loss), autograd backward. Returns (loss, port)."""
    torch = _torch_ports()[0]
    F = torch.nn.functional
    dtype = next(port.parameters()).dtype
    xs, targets, mask = (torch.as_tensor(np.asarray(a)).to(dtype) for a in batch)
    weight, B = mask.unsqueeze(-1), xs.shape[1]

    def run():
        port.zero_grad(set_to_none=True)
        ys = port(xs)
        loss = F.binary_cross_entropy_with_logits(ys, targets, weight=weight, reduction="sum") / B
        loss.backward()
        return float(loss.detach()), port
    return run


def grad_difference(grads: dict, other: dict) -> float:
    """max over parameters of max |grads - other| / max |grads| (the same names on both sides)."""
    if set(grads) != set(other):
        raise ValueError(f"the gradients must name the same parameters; differ in {sorted(set(grads) ^ set(other))}")
    return max(float(np.max(np.abs(grads[n] - other[n]))) / max(float(np.max(np.abs(grads[n]))), 1e-300)
               for n in grads)


def check_pytorch_ports(sizes: Sizes) -> dict:
    """Both ports against minimem's manual engine on one fixed batch, float64, identical parameters:
    {"ntm": {...}, "dnc": {...}} with loss_minimem, loss_pytorch, loss_diff (absolute) and grad_diff
    (the largest over parameters of max |g_minimem - g_pytorch| / max |g_minimem|)."""
    problems = {"ntm": ntm_problem(sizes, max(sizes.ntm_batches)), "dnc": dnc_problem(sizes)}
    result = {}
    for name, (model, batch) in problems.items():
        loss, grads = manual_step(model, batch)()
        port = torch_ntm(model) if name == "ntm" else torch_dnc(model)
        loss_pt, _ = torch_step(port, batch)()
        result[name] = {"loss_minimem": loss, "loss_pytorch": loss_pt, "loss_diff": abs(loss - loss_pt),
                        "grad_diff": grad_difference(grads, port.minimem_grads())}
    return result


def bench_pytorch_configs(rounds: int, quick: bool = False) -> list[dict]:
    """minimem's manual engine (baseline) against the PyTorch port (candidate) at the NTM copy
    configuration (batch 1 and 16) and the DNC configuration, in each of sizes.torch_dtypes.
    Returns [] when torch is not importable."""
    if not torch_available():
        return []
    sizes = SIZES["quick" if quick else "full"]
    rows = []
    for dtype in sizes.torch_dtypes:
        problems = [(_ntm_label(sizes, B, dtype), *ntm_problem(sizes, B, dtype=dtype)) for B in sizes.ntm_batches]
        problems.append((_dnc_label(sizes, dtype), *dnc_problem(sizes, dtype=dtype)))
        for label, model, batch in problems:
            port = torch_ntm(model) if isinstance(model, NTM) else torch_dnc(model)
            t = time_side_by_side({"minimem": manual_step(model, batch), "pytorch": torch_step(port, batch)},
                                  rounds, inner=1)
            rows.append(_row(label, "minimem manual", t["minimem"], "pytorch autograd", t["pytorch"]))
    return rows


def benchmarks(quick: bool = False) -> dict[str, Callable[[int], list[dict]]]:
    """{name: fn(rounds) -> rows} for minimem.bench; quick=True for tiny sizes (tests)."""
    return {"ntm_engines": functools.partial(bench_ntm_engines, quick=quick),
            "dnc_engines": functools.partial(bench_dnc_engines, quick=quick),
            "ntm_scaling": functools.partial(bench_ntm_scaling, quick=quick),
            "pytorch_configs": functools.partial(bench_pytorch_configs, quick=quick)}


# ----------------------------------------------------------------- printing
def format_scaling_table(rows: list[dict]) -> str:
    """N, ms per training step, growth against the smallest N, and N's own growth."""
    if not rows:
        return ""
    base = rows[0]
    base_n = 1 << int(base["baseline"].split("^")[1])              # baseline "N=2^k"
    lines = ["| N | ms per step (T={}) | ms per time step | step / step at {} | N / {} |".format(
                 base["T"], base["baseline"], base_n),
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| 2^{r['log_n']} | {r['candidate_s'] * 1e3:.1f} | {r['candidate_s'] * 1e3 / r['T']:.2f} | "
                     f"{r['candidate_s'] / r['baseline_s']:.1f}x | {r['N'] // base_n} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minimem.bench_dnc", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round (checks the code runs)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; 1 with --quick)")
    parser.add_argument("--only", choices=sorted(benchmarks()), action="append", help="run only these")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 5)
    if rounds < 1:
        parser.error(f"--rounds must be >= 1; got {rounds}")
    sizes = SIZES["quick" if args.quick else "full"]
    found = benchmarks(args.quick)
    have_torch = torch_available()
    torch_text = f"torch {_torch_ports()[0].__version__} (1 thread)" if have_torch else "torch not installed"
    print(f"# minimem NTM/DNC benchmarks ({platform.python_implementation()} {platform.python_version()}, "
          f"numpy {np.__version__}, {torch_text}, {rounds} interleaved rounds, medians)")
    print("# one training step = forward + loss + backward to every parameter gradient, no optimiser")
    for name in args.only or list(found):
        if name == "pytorch_configs" and not have_torch:
            print("\n## pytorch_configs: skipped (torch is not installed; `pip install torch` to compare)")
            continue
        rows = found[name](rounds)
        print(f"\n## {name}")
        if name == "pytorch_configs":
            for port, check in check_pytorch_ports(sizes).items():
                print(f"# {port} port vs minimem, float64, same parameters and batch: "
                      f"loss {check['loss_minimem']:.12g} vs {check['loss_pytorch']:.12g} "
                      f"(|diff| {check['loss_diff']:.1e}), "
                      f"largest relative gradient difference {check['grad_diff']:.1e}")
        print(format_table(rows))
        if name == "ntm_scaling":
            print()
            print(format_scaling_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
