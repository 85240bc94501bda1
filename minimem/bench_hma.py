"""HMA benchmarks for minimem.bench: what the HMA head costs on top of the bare backbone, and the
conv2d pair (im2col with a col2im backward) against its autodiff twin. Timed side by side in one
run (bench.time_side_by_side); only ratios are claimed.

    hma_overhead    one training step (forward, the memory write, backward, an Adam step) at the
                    demos' sizes (specs/nam_hma.md B6): baseline = the backbone with a linear head
                    (HMA's plain path, logits = ReLU(h) W_c + b_c), candidate = the full HMA head
                    (RMem N_r 256 / 128, SMem m 8 / 16 per class, attention between datapoints).
                    Backbones: MLP 128 -> 64 (B 64), CNN 16, 32 channels (B 64), patch Transformer
                    D 32 (B 64), GCN 3 x 32 on motif graphs (B 32). For the MLP two more rows split
                    the head's cost: without RMem (block R and the queue off) and without SMem and
                    the batch (block A off, RMem only).
    conv2d_engines  conv2d forward + backward (input, kernel and bias gradients): the manual
                    im2col / col2im pair against conv2d_autodiff (one advanced-indexing gather,
                    whose VJP is np.add.at), at the CNN backbone's two layer sizes and a larger one.

Where an HMA step's time goes (cProfile of 100 MLP steps at the spec sizes, shares of the step):
matmuls in linear forward/backward ~25%, the two attention cores ~19% (block R: 64 x 4 x 257
scores, whose float64 exp NumPy evaluates with scalar libm calls on a CPU without AVX-512, about
15 ns each), Adam ~10%, parameter validation ~10% (the forward and the memory write each check
every parameter is finite), layer norms ~14% (forward + backward), exact-erf GELU ~6%, the
momentum-encoder write ~7%, the MLP backbone itself ~4%. The head holds ~146k parameters against
the backbone's ~8.3k, and the RMem block projects the 256 queue rows every step; the rmem_only /
no_rmem rows show that block R with its queue is the larger half. No loop or per-sample Python
path stands out. Counting multiply-adds per training step (forward x 3, plus the momentum
encoder's forward) gives ~52 M for HMA against ~1.6 M for the backbone with a linear head, a
ratio of ~32: the measured 12-31x MLP ratios (they move with the machine's load, the bare step
being under a millisecond) are the arithmetic, not a slow path. Two changes were tried and
measured side by side against the unchanged code, and both left out because the step time did
not move (within 1-2%, the noise of the shared machine): flattening block R's (B, 1, Dc) rows
into one matrix before its matmuls (33.5 ms before, 33.7 ms after; a lone (64, 1, 80) @ (80, 320)
matmul is 2x slower than its 2-D form, but that is a small part of the step), and validating the
parameters once per training step instead of twice (22.4 ms before, 22.6 ms after; 57.7 / 56.9 ms
in a busier moment).

benchmarks(quick=False) returns {name: fn(rounds) -> rows} with the rows of minimem.bench;
quick=True shrinks every size so that the functions run in about a second (tests).
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from minimem import autodiff as ad
from minimem.bench import time_side_by_side
from minimem.memory.hma import HMA, HMAConfig
from minimem.nn.conv import CNNModel, conv2d_autodiff, conv2d_backward, conv2d_forward
from minimem.nn.graph import GCNModel, select_graphs
from minimem.nn.losses import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from minimem.nn.mlp import MLPModel
from minimem.nn.patch_transformer import PatchTransformerModel
from minimem.optim import Adam
from minimem.tasks.hma_tasks import graph_batch, motif_graph_splits, shifted_image_splits

SIZES = {
    "full": {"B": 64, "B_graph": 32, "n_images": 512, "n_graphs": 128, "N_r": 256, "N_r_graph": 128, "m": 8,
             "m_graph": 16, "backbones": ("mlp", "cnn", "transformer", "gcn"),
             "conv": ((64, 8, 8, 2, 16), (64, 4, 4, 16, 32), (32, 16, 16, 16, 32))},   # (B, Hi, Wi, C, F), 3x3, pad 1
    "quick": {"B": 8, "B_graph": 4, "n_images": 32, "n_graphs": 12, "N_r": 16, "N_r_graph": 8, "m": 2,
              "m_graph": 2, "backbones": ("mlp", "cnn", "transformer", "gcn"),
              "conv": ((2, 4, 4, 2, 3),)},
}


def _backbone(kind: str, rng: np.random.Generator):
    """(backbone, D) of the demos (demos/hma_images.py, demos/hma_graphs.py)."""
    if kind == "mlp":
        return MLPModel((128, 64), activation="relu", output_activation="relu", rng=rng), 64
    if kind == "cnn":
        return CNNModel(2, (16, 32), kernel=3, padding=1, pool="max", rng=rng), 32
    if kind == "transformer":
        return PatchTransformerModel((8, 8, 2), patch=2, D=32, heads=4, layers=2, rng=rng), 32
    return GCNModel(4, (32, 32, 32), readout="mean", rng=rng), 32


def _data(kind: str, size: dict):
    """(inputs, labels, select) with select(index) -> the backbone's batch of those samples."""
    if kind == "gcn":
        graphs = motif_graph_splits(0, n_train=size["n_graphs"], n_test=1)["train"]
        whole = graph_batch(graphs, np.arange(len(graphs)))
        return graphs.labels, (lambda index: select_graphs(whole, index))
    images = shifted_image_splits(0, n_train=size["n_images"], n_test=1)["train"]
    x = images.flat if kind == "mlp" else images.images
    return images.labels, (lambda index: x[index])


def _head(kind: str, variant: str, D: int, size: dict) -> HMAConfig:
    graph = kind == "gcn"
    K_c = 3 if graph else 5
    if variant == "plain":
        return HMAConfig(D=D, K_c=K_c, rmem=False, abd=False, m=0)
    options = dict(D=D, K_c=K_c, L_h=16, N_r=size["N_r_graph" if graph else "N_r"], m=size["m_graph" if graph else "m"],
                   heads=4, mu=0.999 if graph else 0.99)
    if graph:
        options.update(logits_from="label_emb", res_linear=True)
    if variant == "no_rmem":
        options["rmem"] = False
    elif variant == "rmem_only":
        options.update(abd=False, m=0)
    return HMAConfig(**options)


def _training_step(kind: str, variant: str, size: dict) -> Callable[[], object]:
    """One training step of the demos: forward + memory write, backward, Adam."""
    rng = np.random.default_rng(0)
    backbone, D = _backbone(kind, rng)
    model = HMA(_head(kind, variant, D, size), backbone, rng=rng)
    labels, select = _data(kind, size)
    B = size["B_graph" if kind == "gcn" else "B"]
    optimizer = Adam(model.params, lr=1e-3)
    draw = np.random.default_rng(1)

    def step():
        index = draw.choice(len(labels), B, replace=False)
        logits, cache = model.training_forward(select(index), labels[index])
        _, loss_cache = softmax_cross_entropy_forward(logits, labels[index])
        optimizer.step(model.backward(softmax_cross_entropy_backward(1.0, loss_cache), cache))
    return step


HEAD_NAMES = {"hma": "HMA head (RMem + SMem + batch)", "no_rmem": "HMA without RMem",
              "rmem_only": "HMA with RMem only (no block A)"}


def bench_hma_overhead(rounds: int, quick: bool = False) -> list[dict]:
    """A training step of the bare backbone + linear head against the same step with the HMA head."""
    size = SIZES["quick" if quick else "full"]
    rows = []
    for kind in size["backbones"]:
        variants = ("hma", "no_rmem", "rmem_only") if kind == "mlp" else ("hma",)
        contestants = {"plain": _training_step(kind, "plain", size)}
        contestants.update({v: _training_step(kind, v, size) for v in variants})
        t = time_side_by_side(contestants, rounds, inner=2)
        B = size["B_graph" if kind == "gcn" else "B"]
        for v in variants:
            rows.append({"benchmark": f"HMA training step, {kind} backbone, B={B}",
                         "baseline": "backbone + linear head",
                         "baseline_s": t["plain"], "candidate": HEAD_NAMES[v], "candidate_s": t[v]})
    return rows


def bench_conv2d_engines(rounds: int, quick: bool = False) -> list[dict]:
    """conv2d forward + backward: manual im2col / col2im against the autodiff twin."""
    rows = []
    for B, Hi, Wi, C, F in SIZES["quick" if quick else "full"]["conv"]:
        rng = np.random.default_rng(0)
        x, W, b = rng.standard_normal((B, Hi, Wi, C)), rng.standard_normal((3, 3, C, F)), rng.standard_normal(F)
        dout = rng.standard_normal((B, Hi, Wi, F))

        def manual():
            y, cache = conv2d_forward(x, W, b, 1, 1)
            return conv2d_backward(dout, cache)

        def autodiff():
            tx, tW, tb = (ad.Tensor(v, requires_grad=True) for v in (x, W, b))
            conv2d_autodiff(tx, tW, tb, 1, 1).backward(dout)
            return tx.grad, tW.grad, tb.grad

        t = time_side_by_side({"manual": manual, "autodiff": autodiff}, rounds, inner=3)
        rows.append({"benchmark": f"conv2d 3x3 pad 1 fwd+bwd B={B} {Hi}x{Wi} C={C} F={F}", "baseline": "manual im2col",
                     "baseline_s": t["manual"], "candidate": "autodiff", "candidate_s": t["autodiff"]})
    return rows


def benchmarks(quick: bool = False) -> dict[str, Callable[[int], list[dict]]]:
    """{name: fn(rounds) -> rows} for minimem.bench; quick=True for tiny sizes (tests)."""
    return {"hma_overhead": functools.partial(bench_hma_overhead, quick=quick),
            "conv2d_engines": functools.partial(bench_conv2d_engines, quick=quick)}


if __name__ == "__main__":
    from minimem.bench import family_main

    raise SystemExit(family_main(benchmarks, "HMA benchmarks", "python -m minimem.bench_hma", __doc__))
