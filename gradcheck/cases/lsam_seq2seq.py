"""Gradient-check cases for the LSAM sequence model (minimem.memory.lsam_seq2seq, spec
specs/nam_hma.md A2.3): bidirectional LSAM encoder, encoder memory handed to the LSAM decoder,
per-position logits. Small, seeded, float64; every output seen through a fixed random projection.

Every parameter is moved off its initial value by N(0, 0.1^2) noise (layer norms start at 1 / 0),
so the check sees a generic point. The only kinks are the three ReLUs (mix, FFN, decoder head);
their pre-activations are of order 0.1-1 at these sizes, far from 0 at the step 1e-6. The memory
path (decoder -> M_0 -> both encoder cells) carries gradient in every case.
"""

from __future__ import annotations

import numpy as np

from gradcheck.cases import register
from gradcheck.core import Case, projection_loss
from minimem.memory.lsam_seq2seq import LSAMSeq2Seq, LSAMSeq2SeqConfig


def seq2seq_case(name: str, seed: int, T: int, B: int, notes: str, **config) -> Case:
    """An LSAMSeq2Seq (V 5, D 8, H 4, F 6 unless given) on tokens (T, B) uniform over V."""
    rng = np.random.default_rng(seed)
    config = LSAMSeq2SeqConfig(**{**dict(V=5, D=8, H=4, F=6), **config})
    model = LSAMSeq2Seq(config, rng=rng)
    for key, value in model.params.items():
        model.params[key] = value + 0.1 * rng.standard_normal(value.shape)
    tokens = rng.integers(0, config.V, (T, B))                       # (T, B)
    return Case(f"nam.lsam_seq2seq.{name}", model, tokens, projection_loss(rng, model.forward(tokens)[0]),
                notes=notes)


@register("nam")
def lsam_seq2seq_cases():
    return [
        seq2seq_case("small", 30, T=4, B=2, notes="BLSAM encoder (2 cells of 2 heads, d = 2) + FFN/LN layer, "
                     "decoder LSAM from the encoder memory, per-position logits"),
        seq2seq_case("heads2", 31, T=5, B=2, D=6, H=2, F=4, notes="one head per encoder cell (d = 3), "
                     "two decoder heads"),
        seq2seq_case("bptt12", 32, T=12, B=1, notes="12-step BPTT through three LSAM chains and the memory hand-off"),
    ]
