"""Gradient-check cases for the NAM Transformer (minimem.memory.nam_transformer): one per attention
kind (NAM, softmax, elu-linear), with padding masks, causal prefix sums over several chunks, the
CLS row, mean pooling and per-token readout among them. Small, seeded, float64; every output seen
through a fixed random projection.

Every parameter is moved off its initial value (layer-norm gains 1, biases and the CLS row 0) by
N(0, 0.1^2) noise, so the check sees a generic point. The only kinks are the head's ReLU and, for
softmax, none; the head's pre-activations are of order 1, far from 0 at the step 1e-6. Sizes are
tiny: full mode (every coordinate) runs in seconds.
"""

from __future__ import annotations

import numpy as np

from gradcheck.cases import register
from gradcheck.core import Case, projection_loss
from minimem.memory.nam_transformer import NAMTransformer, NAMTransformerConfig


def transformer_case(name: str, seed: int, notes: str, T: int = 5, B: int = 2, masked: bool = True,
                     **config) -> Case:
    """A NAMTransformer (V 6, D 4, 2 heads, MLP 4, head 3, unless given) on tokens (T, B); with
    masked=True row 0 ends in two pads and row 1 has an interior pad."""
    rng = np.random.default_rng(seed)
    config = NAMTransformerConfig(**{**dict(V=6, classes=3, T_max=8, D=4, heads=2, mlp=4, head_mlp=3), **config})
    model = NAMTransformer(config, rng=rng)
    for key, value in model.params.items():
        model.params[key] = value + 0.1 * rng.standard_normal(value.shape)
    tokens = rng.integers(0, config.V, (T, B))                       # (T, B)
    inputs = tokens
    if masked:
        mask = np.ones((T, B), dtype=bool)
        mask[-2:, 0] = False
        mask[2, 1 % B] = False
        inputs = (tokens, mask)
    return Case(f"nam.transformer.{name}", model, inputs, projection_loss(rng, model.forward(inputs)[0]),
                notes=notes)


@register("nam")
def nam_transformer_cases():
    return [
        transformer_case("nam", 20, "pre-LN block with NAM attention (pads write nothing), CLS-row readout",
                         attention="nam"),
        transformer_case("nam_causal_tokens", 21, "causal NAM by chunks of 2 over T = 5, 2 blocks, per-token "
                         "logits", attention="nam", causal=True, readout="tokens", chunk=2, layers=2),
        transformer_case("softmax_cls_mean", 22, "softmax attention with biases, learned CLS row, masked mean "
                         "pooling", attention="softmax", cls=True, readout="mean"),
        transformer_case("linear_causal", 23, "elu-linear attention (phi = elu + 1, row normaliser), causal, "
                         "sinusoidal positions", attention="linear", causal=True, chunk=2, readout="tokens",
                         positions="sinusoidal"),
        transformer_case("nam_reference_padding", 24, "NAM with the reference's unmasked padding",
                         attention="nam", reference_padding=True, readout="mean"),
    ]
