"""Gradient-check cases for the NAM few-shot head and its cosine baseline
(minimem.memory.nam_fewshot, spec A5): small, seeded, float64, logits seen through a fixed random
projection (projection_loss).

The only kink is the eraser's ReLU; its biases are moved off zero and each factory checks that no
hidden pre-activation lies within 1e-3 of it; a central difference (step 1e-6) moves them by ~1e-6.
The scale starts at 3 (not 10) and the bias off 0 so every term of (FS-6) is generic.
"""

from __future__ import annotations

import numpy as np

from gradcheck.cases import register
from gradcheck.core import Case, projection_loss
from minimem.memory.nam_fewshot import FewShotInputs, NAMFewShotConfig, NAMFewShotHead

KINK_MARGIN = 1e-3


def episode_inputs(rng: np.random.Generator, B: int, N: int, shots: int, Q: int, F: int) -> FewShotInputs:
    """Random features for B episodes: every novel label `shots` times, shuffled; queries ~ N(0, 1)."""
    labels = np.stack([rng.permutation(np.repeat(np.arange(N), shots)) for _ in range(B)])   # (B, S)
    support = rng.standard_normal((B, N * shots, F))                 # (B, S, F)
    query = rng.standard_normal((B, Q, F))                           # (B, Q, F)
    return FewShotInputs(support, labels, query)


def fewshot_case(name: str, seed: int, notes: str, B=2, shots=2, Q=5, **config) -> Case:
    config = NAMFewShotConfig(**{"F": 6, "K_b": 4, "N": 3, "E": 5, "scale_init": 3.0, **config})
    rng = np.random.default_rng(seed)
    model = NAMFewShotHead(config, rng=rng)
    model.params["bias"] = np.array([0.2])
    if config.head == "nam":
        model.params["eraser.layer0.b"] = 0.3 * rng.standard_normal(config.E)
        model.params["eraser.layer1.b"] = np.array([0.4])
    else:
        model.params["phi"] = 1.0 + 0.3 * rng.standard_normal(config.F)
    inputs = episode_inputs(rng, B, config.N, shots, Q, config.F)
    if config.head == "nam":
        k = inputs.support / np.linalg.norm(inputs.support, axis=-1, keepdims=True)
        z = k @ model.params["eraser.layer0.W"] + model.params["eraser.layer0.b"]
        if np.min(np.abs(z)) < KINK_MARGIN:
            raise ValueError(f"case {name}: a ReLU pre-activation is within {KINK_MARGIN} of 0; pick another seed")
    return Case(f"nam.fewshot.{name}", model, inputs, projection_loss(rng, model.forward(inputs)[0]), notes=notes)


@register("nam")
def fewshot_cases():
    return [
        fewshot_case("sequential", 3, "sequential NAM writes (canonical), eraser used as p_w and p_e"),
        fewshot_case("batched", 3, "batched reference writes (FS-4)-(FS-5)", mode="batched_reference"),
        fewshot_case("no_erase", 3, "sequential, p_e = 0 (ablation)", erase=False),
        fewshot_case("cosine", 4, "cosine classifier baseline, phi off 1", head="cosine", shots=3),
    ]
