"""Gradient-check cases for the Neural Turing Machine (minimem.memory.ntm): small, seeded, float64.

Every case sees all the logits through a fixed random projection (projection_loss), so no
gradient can vanish by normalisation. Biases that the initialiser sets to zero are moved to a
generic point (0.3 N(0, 1)), and inputs are N(0, 1): with the Xavier-sized weights every head
output and logit stays within a few units, far from the +-20 clip, and the weightings stay away
from exact ties. The cases cover both controllers, several read and write heads with S = 5, the
read-after-write order, all three memory initialisations and both squashings of k and a.
"""

from __future__ import annotations

import numpy as np

from gradcheck.cases import register
from gradcheck.core import Case, projection_loss
from minimem.memory.ntm import NTM, NTMConfig


def ntm_case(name: str, seed: int, T: int, B: int, notes: str, **config) -> Case:
    """An NTM with X = 4, Y = 3 (unless given) and the config's other fields, inputs (T, B, X) ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    config = NTMConfig(**{"X": 4, "Y": 3, **config})
    model = NTM(config, rng=rng)
    for key, value in model.params.items():
        if key.endswith(".b") and not np.any(value):               # zero-initialised biases
            model.params[key] = 0.3 * rng.standard_normal(value.shape)
    xs = rng.standard_normal((T, B, config.X))                       # (T, B, X)
    return Case(f"ntm.{name}", model, xs, projection_loss(rng, model.forward(xs)[0]), notes=notes)


@register("ntm")
def ntm_cases():
    return [
        ntm_case("lstm", 0, T=3, B=2, N=8, W=4, R=1, H=8,
                 notes="defaults: LSTM controller, 1 read + 1 write head, S 3, constant 1e-6 memory, clip 20"),
        ntm_case("feedforward", 1, T=3, B=2, N=8, W=4, R=1, H=8, controller="feedforward",
                 notes="one tanh layer as the controller (A.10.7)"),
        ntm_case("multihead", 2, T=3, B=2, N=6, W=3, R=2, write_heads=2, H=6, S=5, memory_init="random",
                 notes="2 read + 2 write heads, S 5, fixed random memory"),
        ntm_case("read_after_write", 3, T=3, B=2, N=6, W=3, R=1, H=6, read_after_write=True,
                 memory_init="learned", key_squash="identity", add_squash="identity", clip=None,
                 notes="reads see M_t; learned tanh(bias) memory; unsquashed k and a; no clip"),
    ]
