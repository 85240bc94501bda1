"""Gradient-check cases for HMA (specs/nam_hma.md Part B) and its backbones (minimem.nn.conv,
minimem.nn.graph): small, seeded, float64, every output seen through a fixed random projection.

Relu, max pooling and max readout have kinks; the seeds are chosen so that no pre-activation and
no max-pool or readout runner-up lies within the finite-difference step of a kink (a case that hit
one would be reported as "kink", not "ok").
"""

from __future__ import annotations

import numpy as np

from gradcheck.cases import register
from gradcheck.core import Case, projection_loss
from minimem.memory.hma import HMA, HMAConfig, HMAInputs, hma_dropout
from minimem.nn.conv import CNNModel, Conv2dModel
from minimem.nn.graph import GCNModel, batch_graphs
from minimem.nn.mlp import MLPModel
from minimem.nn.patch_transformer import PatchTransformerModel


def _projected(name: str, model, inputs, rng: np.random.Generator, notes: str) -> Case:
    return Case(name, model, inputs, projection_loss(rng, model.forward(inputs)[0]), notes=notes)


def _generic_biases(model, rng: np.random.Generator, scale: float = 0.1) -> None:
    """Nonzero biases, so the check sees a generic point rather than the zero initialisation."""
    for name in model.params:
        if name.endswith(".b") or name == "b":
            model.params[name] = scale * rng.standard_normal(model.params[name].shape)


# ----------------------------------------------------------------- backbones
@register("hma")
def conv2d_small():
    rng = np.random.default_rng(0)
    model = Conv2dModel(C=2, F=3, kernel=(3, 2), stride=2, padding=1, rng=rng)
    _generic_biases(model, rng)
    x = rng.standard_normal((2, 5, 4, 2))                      # (B, Hi, Wi, C)
    return _projected("hma.conv2d.stride2_pad1", model, x, rng, "one 3x2 conv, stride 2, padding 1")


@register("hma")
def cnn_small():
    cases = []
    for pool in ("max", "avg"):
        rng = np.random.default_rng(1)
        model = CNNModel(C=2, channels=(3, 4), pool=pool, rng=rng)
        _generic_biases(model, rng)
        x = rng.standard_normal((2, 6, 6, 2))                  # (B, Hi, Wi, C)
        cases.append(_projected(f"hma.cnn.{pool}", model, x, rng,
                                f"2 x (3x3 conv, relu, {pool} pool 2) then global average pooling"))
    return cases


def random_graphs(rng: np.random.Generator, sizes, X: int, p: float = 0.5):
    """A GraphBatch of random undirected graphs with the given node counts and features (n, X)."""
    features, adjacencies = [], []
    for n in sizes:
        A = np.triu((rng.random((n, n)) < p).astype(float), 1)
        adjacencies.append(A + A.T)
        features.append(rng.standard_normal((n, X)))
    return batch_graphs(features, adjacencies)


@register("hma")
def gcn_small():
    cases = []
    for readout in ("mean", "max"):
        rng = np.random.default_rng(2)
        model = GCNModel(X=3, widths=(4, 3), readout=readout, rng=rng)
        _generic_biases(model, rng)
        graphs = random_graphs(rng, (4, 1, 3), X=3)
        cases.append(_projected(f"hma.gcn.{readout}", model, graphs, rng,
                                f"2 GCN layers (relu between) on 3 graphs of 4, 1, 3 nodes, {readout} readout"))
    return cases


@register("hma")
def patch_transformer_small():
    rng = np.random.default_rng(3)
    model = PatchTransformerModel((4, 4, 2), patch=2, D=4, heads=2, layers=2, rng=rng)
    for name, value in model.params.items():                   # a generic point: biases and gains moved
        if name.endswith((".b", ".bias", "b_q", "b_k", "b_v", "b_o")):
            model.params[name] = 0.3 * rng.standard_normal(value.shape)
        elif name.endswith(".gain"):
            model.params[name] = 1.0 + 0.3 * rng.standard_normal(value.shape)
    x = rng.standard_normal((3, 4, 4, 2))                      # (B, Hi, Wi, C): 4 patches + CLS
    return _projected("hma.patch_transformer", model, x, rng, "2 pre-LN layers, 2 heads, 2x2 patches, CLS feature")


# ----------------------------------------------------------------- the HMA head
def _filled_hma(rng: np.random.Generator, config, backbone, make_inputs, B: int, writes: int = 2):
    """An HMA whose queue already holds `writes` batches of B momentum features and label
    embeddings (so block R reads real rows, not only the initial noise), at a generic point: random
    memory tokens, nonzero biases, layer-norm gains away from 1."""
    model = HMA(config, backbone, rng=rng)
    for name, value in model.params.items():
        if name == "G" or name.endswith((".b", ".bias", "b_q", "b_k", "b_v")):
            model.params[name] = 0.3 * rng.standard_normal(value.shape)
        elif name.endswith(".gain"):
            model.params[name] = 1.0 + 0.3 * rng.standard_normal(value.shape)
    for _ in range(writes if config.rmem else 0):
        model.write_memory(make_inputs(rng), rng.integers(0, config.K_c, B))
    return model


def _mlp_backbone(rng, X=5, D=4):
    return MLPModel((X, 6, D), activation="relu", output_activation="relu", rng=rng)


SMALL = dict(D=4, K_c=3, L_h=2, N_r=6, m=2, heads=2, mu=0.5, ff_mult=1)


@register("hma")
def hma_head_mlp():
    cases = []
    variants = (
        ("hma.head.mlp", {}, "defaults of B3: logits from all of c, sqrt(Dc) scaling, RMem + ABD + SMem"),
        ("hma.head.mlp.label_emb", dict(logits_from="label_emb", scale="head", res_linear=True, temperature=0.7),
         "label-slice logits, sqrt(d_s) scaling, Linear residual, tau 0.7"),
        ("hma.head.mlp.no_abd", dict(abd=False, logits_from="feature"), "block A over the tokens only; feature logits"),
        ("hma.head.mlp.no_rmem", dict(rmem=False), "no queue: block A only"),
        ("hma.head.plain", dict(rmem=False, abd=False, m=0), "everything off: logits = ReLU(h) W + b"),
    )
    for k, (name, options, notes) in enumerate(variants):
        rng = np.random.default_rng(10 + k)
        model = _filled_hma(rng, HMAConfig(**{**SMALL, **options}), _mlp_backbone(rng),
                            lambda rng: rng.standard_normal((4, 5)), B=4)
        cases.append(_projected(name, model, rng.standard_normal((4, 5)), rng, notes))
    return cases


@register("hma")
def hma_head_dropout_and_exclude_self():
    rng = np.random.default_rng(20)
    config = HMAConfig(**{**SMALL, "dropout": 0.3, "exclude_self": True})
    make_inputs = lambda rng: HMAInputs(rng.standard_normal((4, 5)), ids=rng.choice(8, 4, replace=False))
    model = _filled_hma(rng, config, _mlp_backbone(rng), make_inputs, B=4)
    inputs = HMAInputs(rng.standard_normal((4, 5)), ids=np.array([0, 3, 5, 9]), dropout=hma_dropout(rng, config, 4))
    return _projected("hma.head.mlp.dropout_exclude_self", model, inputs, rng,
                      "dropout masks as explicit inputs (p 0.3); queue rows with the sample's id masked")


@register("hma")
def hma_head_cnn_and_gcn():
    rng = np.random.default_rng(21)
    cnn = CNNModel(C=2, channels=(3, 4), pool="max", rng=rng)
    model = _filled_hma(rng, HMAConfig(**SMALL), cnn, lambda rng: rng.standard_normal((3, 4, 4, 2)), B=3)
    cases = [_projected("hma.head.cnn", model, rng.standard_normal((3, 4, 4, 2)), rng,
                        "CNN backbone (2 conv + max pool + GAP) under the default head")]
    rng = np.random.default_rng(22)
    gcn = GCNModel(X=3, widths=(5, 4), readout="mean", rng=rng)
    model = _filled_hma(rng, HMAConfig(**{**SMALL, "logits_from": "label_emb"}), gcn,
                        lambda rng: random_graphs(rng, (3, 2, 4), X=3), B=3)
    cases.append(_projected("hma.head.gcn", model, random_graphs(rng, (4, 1, 3), X=3), rng,
                            "GCN backbone (2 layers, mean readout), label-slice logits (the graph default)"))
    return cases
