"""SAM against an idiomatic PyTorch port (issue 11; spec specs/ntm_dnc_sam.md Part C): the cost of
one training step (forward over T steps, sigmoid cross-entropy, backward to every parameter gradient,
no optimiser update), timed side by side in one run (minimem.bench.time_side_by_side); only ratios
are claimed.

    python -m minimem.bench_sam_torch              # the configurations below (see "Measured")
    python -m minimem.bench_sam_torch --quick      # tiny sizes, one round: checks the code runs
    python -m minimem.bench_sam_torch --no-memory  # skip the peak-memory probes (subprocesses)

Configuration (the README's SAM benchmark, paper Supplementary E): LSTM H = 100, W = 32, R = 4,
K = 4, B = 1, X = Y = 8, T = 20 steps of random bits with random-bit targets on every step, N = 2^10,
2^14, 2^18, float64 and float32. The starting state is minimem.bench_sam.benchmark_state (memory
N(0, 1), distinct random access times, empty previous read weightings), a constant of the step.

Contestants (the same parameters, state and batch):
    minimem exact   SAM's sparse engine with exact top-K ("SAM linear"), run the way a training loop
                    runs it: `lookup=` built once for the state, `in_place=True` (the state's memory
                    is THE buffer; forward + backward leave it bit for bit unchanged), so a step
                    costs O(N W) for the scores and O(R K W) for everything else, in time, and keeps
                    O(R K W) records per time step.
    minimem lsh     the same with the random-hyperplane LSH index (8 tables of log2(N) - 4 bits), an
                    approximate top-K: O(log N)-ish per query, NOT the same function (a different
                    index set can be read); timed beside the others for scale.
    pytorch         TorchSAM below: exact top-K, the same function as "minimem exact".
    (dense rows)    minimem's dense engine (engine="dense", K = N) against the same port with K = N.

The PyTorch port (TorchSAM, built by torch_sam from a minimem SAM, whose parameters it copies) is
written the way a PyTorch user writes SAM: nn.LSTMCell controller, nn.Linear maps, a Python loop
over time steps of torch ops, autograd for the backward, torch.set_num_threads(1). Per time step:
the LRA slot is torch.argmin of the access times; the write weights are the previous read weights
and the LRA one-hot as (slot, value) pairs merged with torch.unique + index_add; the write is
`M = M.clone(); M.index_fill_(0, lra_rows, 0); M.index_add_(0, rows, w_W a)` (an in-place write on
a clone, so autograd keeps each M_t intact); the read scores every row (cosine, under no_grad),
takes torch.topk, and differentiates only through the K gathered rows (softmax of beta D over
them). It computes exactly minimem's equations (spec C.3: oneplus strengths, unconditional LRA
erase, mean of the heads' previous weights, ties of the LRA slot to the lowest index, the usage
test w_W + sum_i w_R > delta, guarded cosine of spec section 0), so the comparison is between two
implementations of one function: check_torch_port() runs both on one fixed float64 batch with
identical parameters, checks that the port chose the same index sets and LRA slots as minimem, and
reports the loss and gradient differences.

What the port pays per time step, and why: the usual PyTorch guard against autograd's "modified by
an inplace operation" error (and against writing into the caller's state) is to clone before an
in-place write, so the write copies the whole memory (clone: O(N W) time and one transient O(N W)
buffer; M_t itself is not saved for backward, since every later use goes through the K gathered
rows, so the copies do not pile up over T). The backward pays O(N W) again per time step: the
gather's gradient is a dense (N, W) zeros-plus-scatter, it is added to the memory gradient flowing
from t+1, and index_fill's backward copies that gradient to zero the erased row. The exact top-K
scores (norms and dot products of all N rows) are O(N W) on both sides. minimem's sparse engine
avoids the copy and the dense gradients: one buffer written in place with the touched rows saved
and reverted in the backward, one gradient buffer updated on the touched rows only (spec C.4) -
the very point of SAM's journaled in-place scheme. How the port's time splits (N = 2^18, float64,
torch.profiler over one training step): aten::copy_ 36% (the clones of the memory and of its
gradient), aten::mul 33% (among them the squares for the norms of all N rows), aten::bmm 11% (q . M
over all rows), aten::add_ 5%, aten::fill_ 4%, topk 2%; most of it is O(N W) work on freshly
allocated (page-faulted) buffers. A side experiment (not in the rows): writing in place without the
per-step clone (one clone per training step; autograd accepts it here because no backward node
saves M_t) gives bit-identical loss and gradients and is only 1.17x faster (10.7 -> 9.2 s at 2^18,
0.64 -> 0.47 s at 2^14): the copy is not the main cost, the per-step O(N W) scores and dense
memory gradients are.

Peak memory ("baseline_bytes", "candidate_bytes" in the rows, the keys minimem.bench.format_table
prints): each contestant runs in a fresh Python subprocess (MALLOC_MMAP_THRESHOLD_=131072, so freed
large blocks go back to the OS at once): build the problem, one warm-up step, reset the kernel's
resident high-water mark (`echo 5 > /proc/self/clear_refs`, Linux), one step, then peak = VmHWM -
VmRSS before the step, both read from /proc/self/status. It is the resident memory a step adds on
top of the model, state and index (for torch: everything its allocator obtained from malloc, which
tracemalloc cannot see). Where clear_refs is unavailable the probe falls back to the ru_maxrss delta
(resource.getrusage), which only sees growth above the setup's own peak; rows say which
("memory_method").

Measured (one full run, 3 interleaved rounds, medians; 2 cores shared with other jobs at a load
average of 4-5, so every time is inflated; torch 2.13 CPU, numpy 2.4, transparent huge pages
"madvise"). Ports == minimem in float64 (N = 64): loss difference 0.0 sparse (124.1223 nats),
1.4e-14 dense (K = N); largest gradient difference 2.7e-15 absolute (1.1e-15 relative) sparse,
1.8e-15 (7.1e-16) dense; the same index sets and LRA slots at every step. Per training step
(T = 20), PyTorch / minimem:
                    minimem exact   minimem lsh   pytorch      pytorch / exact   pytorch / lsh
    float64  2^10   42.9 ms         54.2 ms       60.1 ms      1.4x              1.1x
             2^14   75.9 ms         74.4 ms       233 ms       3.1x              3.1x
             2^18   733 ms          171 ms        10.1 s       13.8x             59x
    float32  2^10   103 ms          136 ms        180 ms       1.7x              1.3x
             2^14   76.7 ms         93.5 ms       214 ms       2.8x              2.3x
             2^18   546 ms          142 ms        5.48 s       10.0x             38x
    dense (K = N, 2^10): minimem dense 112 ms vs PyTorch K = N 367 ms (3.3x) float64; 107 vs 340 ms
    (3.2x) float32.
Latest run (2026-11-22, quiet machine, after the SAM controller's hoisted LSTM steps; PyTorch /
minimem exact top-K, float64 / float32): 2^10 2.1x / 3.2x, 2^14 3.2x / 3.4x, 2^18 14.9x / 13.7x;
PyTorch / LSH 1.5x / 2.0x, 3.8x / 3.4x, 84x / 59x.
A second run of the sparse rows (load average 2-3): PyTorch / minimem exact 1.8x, 2.4x, 14.9x
(float64: 2^10, 2^14, 2^18; 5.68 s vs 381 ms at 2^18), 1.9x, 2.8x, 13.6x (float32); PyTorch / LSH
1.4x, 2.7x, 58x (float64), 2.1x, 3.2x, 50x (float32). Per time step at 2^18, float64: PyTorch
250-500 ms, minimem exact 19-37 ms, LSH 5-9 ms.
Peak resident memory one step adds (float64; float32 about half): 2^10 minimem 2.7 MiB, PyTorch
0.9 MiB (at small N the port is leaner; minimem's 2.7 MiB was not broken down); 2^14 5.3 vs
8.2 MiB (1.6x); 2^18 72.7 vs 149 MiB (2.1x; the memory itself is 64 MiB, so the port holds about 2.3
copies at its peak). Dense 2^10: 8.7 vs 33.6 MiB (3.9x). minimem's 72.7 MiB at 2^18 is mostly its
gradient buffer dM: it is allocated with np.zeros so that only the touched rows get pages, but NumPy
asks for transparent huge pages on large arrays, so the scattered row updates (R K T = 320 rows)
make nearly every 2 MiB page of the 64 MiB buffer resident. With THP disabled for the process
(prctl PR_SET_THP_DISABLE, a side experiment, not in the rows) the same probe gives minimem exact
32 MiB (by the code, mostly the (R, N) score temporaries of its exact index; not profiled), minimem
lsh 9.8 MiB, PyTorch 149 MiB.
"""

from __future__ import annotations

import minimem  # noqa: F401  (first: single-threaded BLAS, see minimem/__init__.py)

import argparse
import functools
import gc
import json
import os
import platform
import resource
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np

from minimem.bench import format_table, time_side_by_side
from minimem.bench_dnc import (grad_difference, linear_names, load_minimem_params, lstm_cell_names,
                                minimem_grads_of, torch_available)
from minimem.bench_sam import benchmark_state
from minimem.memory.addressing import EPS_DEN, EPS_NORM
from minimem.memory.sam import SAM, SAMConfig, SAMState
from minimem.nn.losses import sigmoid_cross_entropy_backward, sigmoid_cross_entropy_forward
from minimem.tasks.algorithmic import Batch


@dataclass(frozen=True)
class Sizes:
    """The benchmark configuration (module docstring); "quick" shrinks every size."""
    log_ns: tuple = (10, 14, 18)
    dense_log_ns: tuple = (10,)       # the dense rows (K = N): minimem keeps every M_t, so small N only
    H: int = 100
    W: int = 32
    R: int = 4
    K: int = 4
    X: int = 8
    T: int = 20
    B: int = 1
    dtypes: tuple = ("float64", "float32")
    memory: bool = True               # peak-memory probes (one subprocess per contestant)


SIZES = {"full": Sizes(),
         "quick": Sizes(log_ns=(6, 8), dense_log_ns=(5,), H=8, W=4, R=2, K=2, X=3, T=4, B=1,
                        dtypes=("float64", "float32"), memory=False)}

CONTESTANTS = ("minimem exact", "minimem lsh", "pytorch")
DENSE_CONTESTANTS = ("minimem dense", "pytorch K=N")


# ----------------------------------------------------------------- problems and minimem steps
def sam_config(sizes: Sizes, N: int, kind: str = "exact", dtype: str = "float64") -> SAMConfig:
    """The SAMConfig of a contestant: kind "exact" (sparse engine, exact top-K), "lsh" (sparse
    engine, the LSH index of minimem.bench_sam) or "dense" (dense engine, K = N)."""
    common = dict(X=sizes.X, Y=sizes.X, N=N, W=sizes.W, R=sizes.R, H=sizes.H, dtype=dtype)
    if kind == "exact":
        return SAMConfig(**common, K=sizes.K)
    if kind == "lsh":
        return SAMConfig(**common, K=sizes.K, index="lsh", lsh_tables=8,
                         lsh_bits=int(min(30, max(1, np.log2(N) - 4))))
    if kind == "dense":
        return SAMConfig(**common, K=N, engine="dense")
    raise ValueError(f"kind must be 'exact', 'lsh' or 'dense'; got {kind!r}")


def sam_problem(sizes: Sizes, N: int, kind: str = "exact", dtype: str = "float64",
                seed: int = 0) -> tuple[SAM, SAMState, Batch]:
    """A SAM (parameters from `seed`: the same for every kind), the benchmark state of
    minimem.bench_sam in `dtype` (memory N(0, 1), distinct access times, empty previous reads) and
    one batch of T random-bit inputs with random-bit targets on every step."""
    config = sam_config(sizes, N, kind, dtype)
    model = SAM(config, np.random.default_rng(seed))
    state = benchmark_state(config, np.random.default_rng(seed + 1))
    state = state._replace(M=np.ascontiguousarray(state.M, dtype=dtype))
    rng = np.random.default_rng(seed + 2)
    T, B, X = sizes.T, sizes.B, sizes.X
    inputs = (rng.random((T, B, X)) < 0.5).astype(dtype)
    targets = (rng.random((T, B, X)) < 0.5).astype(dtype)
    return model, state, Batch(inputs, targets, np.ones((T, B), dtype=dtype))


def minimem_step(model: SAM, state: SAMState, batch: Batch) -> Callable[[], tuple]:
    """One training step of minimem's manual engine from `state`: forward, sigmoid cross-entropy in
    nats per sequence, its gradient, BPTT. The sparse engine runs with the state's lookup (built
    here, once) and in_place=True, so its memory is left unchanged. Returns (loss, grads, record)."""
    sparse = model.config.engine == "sparse"
    lookup = model.lookup(state) if sparse else None
    options = dict(copy_final_memory=False, lookup=lookup, in_place=True) if sparse else {}

    def run():
        ys, cache = model.forward(batch.inputs, state, **options)
        loss, loss_cache = sigmoid_cross_entropy_forward(ys, batch.targets, batch.mask, reduction="batch")
        grads = model.backward(sigmoid_cross_entropy_backward(1.0, loss_cache), cache)
        return float(loss), grads, cache.record
    return run


# ----------------------------------------------------------------- the PyTorch port
@functools.lru_cache(maxsize=None)
def _torch_port():
    """Import torch (one thread) and define the port class; cached, so torch loads once."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    torch.set_num_threads(1)

    class TorchSAM(nn.Module):
        """SAM of spec C.3 (write first, then read the new memory) with an LSTMCell controller.

        forward(xs (T, B, X), M0 (B, N, W), last0 (B, N) int64, t0, frozen=None) -> ys (T, B, Y),
        and the choices it made: {"read_index": (T, B, R, K), "lra": (T, B)} int64 tensors.
        The state starts with empty previous read weightings and zero r, h, c (a sequence start);
        M0 and last0 are not modified. frozen: such a dict to replay instead of choosing.
        """

        def __init__(self, config: SAMConfig):
            super().__init__()
            self.config = config
            R, W, H = config.R, config.W, config.H
            self.controller = nn.LSTMCell(config.X + R * W, H)
            self.interface = nn.Linear(H, config.P)
            self.output = nn.Linear(H + R * W, config.Y)

        def forward(self, xs, M0, last0, t0: int, frozen: dict | None = None):
            config = self.config
            T, B, _ = xs.shape
            N, W, R, K, H = config.N, config.W, config.R, config.K, config.H
            offsets = torch.arange(B) * N                                      # row b N + j of (B N, W)
            M = M0.reshape(B * N, W)
            last = last0.clone().reshape(B * N)
            index = torch.zeros(B, R, 0, dtype=torch.int64)                    # empty previous reads
            weight = xs.new_zeros(B, R, 0)
            r, h, c = xs.new_zeros(B, R, W), xs.new_zeros(B, H), xs.new_zeros(B, H)
            ys, lras, indexes = [], [], []
            for t in range(T):
                now = t0 + t + 1
                h, c = self.controller(torch.cat([xs[t], r.reshape(B, R * W)], dim=1), (h, c))   # 1.
                p = self.interface(h)
                heads = p[:, :R * (W + 1)].reshape(B, R, W + 1)                                  # 2.
                q, beta = heads[..., :W], 1.0 + F.softplus(heads[..., W:])
                a = p[:, R * (W + 1):R * (W + 1) + W]
                if config.write_squash == "tanh":
                    a = torch.tanh(a)
                alpha, gamma = torch.sigmoid(p[:, -2:-1]), torch.sigmoid(p[:, -1:])
                with torch.no_grad():                                                            # 3.
                    lra = last.reshape(B, N).argmin(dim=1) if frozen is None else frozen["lra"][t]
                columns = torch.cat([(index + offsets[:, None, None]).reshape(-1), offsets + lra])  # 4.-5.
                values = torch.cat([((alpha * gamma / R)[:, :, None] * weight).reshape(-1),
                                    (alpha * (1.0 - gamma))[:, 0]])
                rows, where = torch.unique(columns, sorted=True, return_inverse=True)
                w_write = values.new_zeros(rows.shape[0]).index_add(0, where, values)             # duplicates summed
                M = M.clone()                                                                    # 6. O(N W)
                M.index_fill_(0, offsets + lra, 0.0)
                M.index_add_(0, rows, w_write[:, None] * a[torch.div(rows, N, rounding_mode="floor")])
                with torch.no_grad():                                                            # 7. top-K
                    if frozen is None:
                        M3 = M.reshape(B, N, W)
                        dot_all = q @ M3.transpose(1, 2)                                         # (B, R, N)
                        n_q = torch.sqrt((q * q).sum(-1, keepdim=True) + EPS_NORM)
                        n_all = torch.sqrt((M3 * M3).sum(-1) + EPS_NORM).unsqueeze(1)
                        scores = dot_all / (n_q * n_all + EPS_DEN)
                        S = scores.topk(K, dim=-1).indices.sort(dim=-1).values                  # (B, R, K)
                    else:
                        S = frozen["read_index"][t]
                M_sel = M[S + offsets[:, None, None]]                                            # (B, R, K, W)
                dot = (M_sel @ q.unsqueeze(-1)).squeeze(-1)                                      # (B, R, K)
                n_q = torch.sqrt((q * q).sum(-1, keepdim=True) + EPS_NORM)
                n_sel = torch.sqrt((M_sel * M_sel).sum(-1) + EPS_NORM)
                w_read = F.softmax(beta * (dot / (n_q * n_sel + EPS_DEN)), dim=-1)              # (B, R, K)
                r = (w_read.unsqueeze(-1) * M_sel).sum(dim=2)                                    # (B, R, W)
                with torch.no_grad():                                                            # 8. usage
                    slots, where = torch.unique(torch.cat([rows, (S + offsets[:, None, None]).reshape(-1)]),
                                                sorted=True, return_inverse=True)
                    access = torch.zeros(slots.shape[0], dtype=torch.float64).index_add(
                        0, where, torch.cat([w_write, w_read.reshape(-1)]).double())
                    last[slots[access > config.delta]] = now
                ys.append(self.output(torch.cat([h, r.reshape(B, R * W)], dim=1)))              # 9.
                index, weight = S, w_read
                lras.append(lra)
                indexes.append(S)
            return torch.stack(ys), {"read_index": torch.stack(indexes), "lra": torch.stack(lras)}

        def minimem_names(self) -> dict:
            """{minimem parameter name: (torch parameter, stored transposed?)} (minimem.memory.sam)."""
            return {**lstm_cell_names(self.controller, "controller"), **linear_names(self.interface, "interface"),
                    **linear_names(self.output, "output")}

        def load_minimem(self, params: dict) -> None:
            load_minimem_params(self.minimem_names(), params, zero=(self.controller.bias_hh,))

        def minimem_grads(self) -> dict:
            return minimem_grads_of(self.minimem_names())

    return torch, TorchSAM


def torch_sam(model: SAM, K: int | None = None):
    """The PyTorch port of a SAM with model's parameters (in their dtype). K: slots read per head
    (None: model.config.K; a dense-engine model, K = N, gives the dense port). Ported: LRA usage
    (U^(2)); exact top-K. An approximate index or DAM's discounted usage is a ValueError."""
    config = model.config
    if config.usage != "lra" or config.index != "exact":
        raise ValueError(f"the PyTorch SAM port covers usage='lra' and index='exact'; got usage={config.usage!r}, "
                         f"index={config.index!r}")
    torch, TorchSAM = _torch_port()
    if K is not None:
        config = SAMConfig(**{**config.__dict__, "K": K})
    port = TorchSAM(config).to({"float32": torch.float32, "float64": torch.float64}[config.dtype])
    port.load_minimem(model.params)
    return port


def _check_sequence_start(state: SAMState) -> None:
    if state.read_index.shape[-1] != 0 or np.any(state.r) or np.any(state.h) or np.any(state.c):
        raise ValueError("the PyTorch SAM port starts from a state with empty previous read weightings "
                         "(read_index of shape (B, R, 0)) and zero r, h, c")


def torch_step(port, state: SAMState, batch: Batch, frozen: dict | None = None) -> Callable[[], tuple]:
    """One training step of the port from `state` (a sequence start; its memory and access times are
    constants): zero the grads, forward, BCE-with-logits summed over steps and bits and divided by
    B (minimem's loss), autograd backward. Returns (loss, port, choices)."""
    _check_sequence_start(state)
    torch = _torch_port()[0]
    F = torch.nn.functional
    dtype = next(port.parameters()).dtype
    xs, targets, mask = (torch.as_tensor(np.asarray(a)).to(dtype) for a in batch)
    M0, last0 = torch.from_numpy(state.M), torch.from_numpy(np.asarray(state.last, dtype=np.int64))
    weight, B = mask.unsqueeze(-1), xs.shape[1]

    def run():
        port.zero_grad(set_to_none=True)
        ys, choices = port(xs, M0, last0, state.t, frozen)
        loss = F.binary_cross_entropy_with_logits(ys, targets, weight=weight, reduction="sum") / B
        loss.backward()
        return float(loss.detach()), port, choices
    return run


def check_torch_port(sizes: Sizes | None = None, N: int = 64, seed: int = 0) -> dict:
    """The port against minimem on one fixed float64 problem (sam_problem(sizes, N)) with identical
    parameters: {"sparse": {...}, "dense": {...}} - the sparse engine with exact top-K against the
    port with K, and the dense engine (K = N) against the port with K = N. Each holds loss_minimem,
    loss_pytorch, loss_diff (absolute), grad_diff (max over parameters of max |g_minimem -
    g_pytorch| / max |g_minimem|), grad_abs_diff (max over parameters of max |g_minimem - g_pytorch|)
    and same_choices (the port chose minimem's index sets and LRA slots at every step)."""
    sizes = SIZES["quick"] if sizes is None else sizes
    result = {}
    for name, kind in (("sparse", "exact"), ("dense", "dense")):
        model, state, batch = sam_problem(sizes, N, kind, "float64", seed)
        loss, grads, record = minimem_step(model, state, batch)()
        port = torch_sam(model)
        loss_pt, port, choices = torch_step(port, state, batch)()
        grads_pt = port.minimem_grads()
        same = (np.array_equal(choices["read_index"].numpy(), record.read_index)
                and np.array_equal(choices["lra"].numpy(), record.lra))
        result[name] = {"loss_minimem": loss, "loss_pytorch": loss_pt, "loss_diff": abs(loss - loss_pt),
                        "grad_diff": grad_difference(grads, grads_pt),
                        "grad_abs_diff": max(float(np.max(np.abs(grads[n] - grads_pt[n]))) for n in grads),
                        "same_choices": bool(same)}
    return result


# ----------------------------------------------------------------- peak memory (subprocess probes)
def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _memory_probe(sizes_name: str, log_n: int, dtype: str, contestant: str) -> dict:
    """In a fresh process: build one contestant, warm up, then the resident memory one step adds
    (module docstring). Returns {"peak_bytes", "method"}."""
    sizes = SIZES[sizes_name]
    kind = {"minimem exact": "exact", "minimem lsh": "lsh", "pytorch": "exact",
            "minimem dense": "dense", "pytorch K=N": "dense"}[contestant]
    model, state, batch = sam_problem(sizes, 1 << log_n, kind, dtype)
    step = torch_step(torch_sam(model), state, batch) if contestant.startswith("pytorch") else \
        minimem_step(model, state, batch)
    step()                                                               # warm-up
    gc.collect()
    method = "VmHWM - VmRSS (clear_refs reset)"
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                                                 # reset the high-water mark
        before = _status_bytes("VmRSS")
    except OSError:
        before = None
    if before is None:
        method = "ru_maxrss delta"
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    step()
    if method.startswith("VmHWM"):
        peak = _status_bytes("VmHWM")
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_bytes": peak - before, "method": method}


def peak_memory(sizes_name: str, log_n: int, dtype: str, contestant: str) -> dict:
    """_memory_probe in a fresh Python subprocess (its answer comes back as JSON on stdout)."""
    code = ("import json, minimem.bench_sam_torch as b; "
            f"print(json.dumps(b._memory_probe({sizes_name!r}, {log_n}, {dtype!r}, {contestant!r})))")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------- the benchmarks
def _label(sizes: Sizes, log_n: int, dtype: str, K: int | str) -> str:
    return (f"SAM step N=2^{log_n} W={sizes.W} R={sizes.R} K={K} H={sizes.H} T={sizes.T} B={sizes.B} {dtype}")


def _row(benchmark: str, baseline: str, baseline_s: float, candidate: str, candidate_s: float, **extra) -> dict:
    return {"benchmark": benchmark, "baseline": baseline, "baseline_s": baseline_s,
            "candidate": candidate, "candidate_s": candidate_s, **extra}


def _measure(rounds: int, quick: bool, dense: bool) -> list[dict]:
    sizes_name = "quick" if quick else "full"
    sizes = SIZES[sizes_name]
    rows = []
    for dtype in sizes.dtypes:
        for log_n in (sizes.dense_log_ns if dense else sizes.log_ns):
            N = 1 << log_n
            if dense:
                model, state, batch = sam_problem(sizes, N, "dense", dtype)
                steps = {"minimem dense": minimem_step(model, state, batch),
                         "pytorch K=N": torch_step(torch_sam(model), state, batch)}
            else:
                model, state, batch = sam_problem(sizes, N, "exact", dtype)
                lsh_model, lsh_state, _ = sam_problem(sizes, N, "lsh", dtype)
                steps = {"minimem exact": minimem_step(model, state, batch),
                         "minimem lsh": minimem_step(lsh_model, lsh_state, batch),
                         "pytorch": torch_step(torch_sam(model), state, batch)}
            t = time_side_by_side(steps, rounds, inner=1)
            del steps
            gc.collect()
            peaks = ({name: peak_memory(sizes_name, log_n, dtype, name)
                      for name in (DENSE_CONTESTANTS if dense else CONTESTANTS)} if sizes.memory else {})
            candidate = "pytorch K=N" if dense else "pytorch"
            for baseline in (("minimem dense",) if dense else ("minimem exact", "minimem lsh")):
                extra = dict(N=N, log_n=log_n, dtype=dtype, T=sizes.T)
                if peaks:
                    extra.update(baseline_bytes=peaks[baseline]["peak_bytes"],
                                 candidate_bytes=peaks[candidate]["peak_bytes"],
                                 memory_method=peaks[candidate]["method"])
                rows.append(_row(_label(sizes, log_n, dtype, "N" if dense else sizes.K),
                                 baseline, t[baseline], candidate + (" (exact top-K)" if not dense else ""),
                                 t[candidate], **extra))
    return rows


def bench_sam_pytorch(rounds: int, quick: bool = False) -> list[dict]:
    """minimem's sparse engine (exact top-K; LSH) against the PyTorch port (exact top-K) at
    sizes.log_ns in each of sizes.dtypes; [] when torch is not importable."""
    return _measure(rounds, quick, dense=False) if torch_available() else []


def bench_sam_pytorch_dense(rounds: int, quick: bool = False) -> list[dict]:
    """minimem's dense engine (K = N) against the port with K = N at sizes.dense_log_ns."""
    return _measure(rounds, quick, dense=True) if torch_available() else []


def benchmarks(quick: bool = False) -> dict[str, Callable[[int], list[dict]]]:
    """{name: fn(rounds) -> rows} for minimem.bench; {} when torch is not installed."""
    if not torch_available():
        return {}
    return {"sam_pytorch": functools.partial(bench_sam_pytorch, quick=quick),
            "sam_pytorch_dense": functools.partial(bench_sam_pytorch_dense, quick=quick)}


# ----------------------------------------------------------------- printing
def _fmt_b(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def format_memory_table(rows: list[dict]) -> str:
    """Peak resident memory one step adds, per contestant (rows with a memory probe only)."""
    rows = [r for r in rows if "baseline_bytes" in r]
    if not rows:
        return ""
    lines = [f"peak memory of one training step above the setup ({rows[0]['memory_method']}):",
             "| benchmark | baseline | peak | candidate | peak | candidate / baseline |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        b, c = r["baseline_bytes"], r["candidate_bytes"]
        lines.append(f"| {r['benchmark']} | {r['baseline']} | {_fmt_b(b)} | {r['candidate']} | {_fmt_b(c)} | "
                     f"{c / b:.1f}x |" if b > 0 else f"| {r['benchmark']} | {r['baseline']} | {_fmt_b(b)} | "
                     f"{r['candidate']} | {_fmt_b(c)} | - |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minimem.bench_sam_torch", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round (checks the code runs)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; 1 with --quick)")
    parser.add_argument("--only", choices=("sam_pytorch", "sam_pytorch_dense"), action="append",
                        help="run only these")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocess probes")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    if rounds < 1:
        parser.error(f"--rounds must be >= 1; got {rounds}")
    if not torch_available():
        print("# torch is not installed: nothing to compare (`pip install torch`)")
        return 0
    name = "quick" if args.quick else "full"
    if args.no_memory:
        SIZES[name] = Sizes(**{**SIZES[name].__dict__, "memory": False})
    torch = _torch_port()[0]
    print(f"# minimem SAM vs PyTorch ({platform.python_implementation()} {platform.python_version()}, "
          f"numpy {np.__version__}, torch {torch.__version__} (1 thread), {os.cpu_count()} cores, "
          f"{rounds} interleaved rounds, medians)")
    print("# one training step = forward over T steps + loss + backward to every parameter gradient")
    for port, check in check_torch_port(SIZES[name]).items():
        print(f"# {port} port vs minimem, float64, N=64: loss {check['loss_minimem']:.12g} vs "
              f"{check['loss_pytorch']:.12g} (|diff| {check['loss_diff']:.1e}), largest gradient difference "
              f"{check['grad_abs_diff']:.1e} absolute, {check['grad_diff']:.1e} relative; "
              f"same index sets and LRA slots: {check['same_choices']}")
    found = benchmarks(args.quick)
    for bench_name in args.only or list(found):
        rows = found[bench_name](rounds)
        print(f"\n## {bench_name}")
        print(format_table(rows))
        memory = format_memory_table(rows)
        if memory:
            print()
            print(memory)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
