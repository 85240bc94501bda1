"""Gradient-check cases for Neural Attention Memory (minimem.memory.nam and its hosts): small,
seeded, float64, every output seen through a fixed random projection (projection_loss).

NAM is smooth everywhere (spec A1.4: no index sets, no kinks); the only place a finite difference
could mislead is the unit-norm floor at ||x|| < 1e-12, and every key, query and position here has a
norm of order 1. LSAM's biases start at U(+-1/sqrt(X + D)) (the reference init), already a generic
point; the attention block's layer-norm gain and bias are moved off their 1 / 0 init.
"""

from __future__ import annotations

import numpy as np

from gradcheck.cases import register
from gradcheck.core import Case, projection_loss
from minimem.memory.lsam import LSAM, LSAMConfig
from minimem.memory.nam_attention import NAMAttentionModel
from minimem.memory.nam_tm import NAMTM, NAMTMConfig


def lsam_case(name: str, seed: int, T: int, B: int, notes: str, **config) -> Case:
    """An LSAM (X = 3 unless given) with inputs (T, B, X) ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    config = LSAMConfig(**{"X": 3, **config})
    model = LSAM(config, rng=rng)
    xs = rng.standard_normal((T, B, config.X))                       # (T, B, X)
    return Case(f"nam.lsam.{name}", model, xs, projection_loss(rng, model.forward(xs)[0]), notes=notes)


@register("nam")
def lsam_cases():
    return [
        lsam_case("small", 0, T=4, B=2, D=8, H=2, Y=3,
                  notes="LSAM cell (write gate = erase gate, read after write) + per-step readout"),
        lsam_case("bptt30", 1, T=30, B=2, D=8, H=2,
                  notes="30-step BPTT through M_t and h_t, outputs the states h_t (spec A9.9)"),
        lsam_case("heads4", 2, T=5, B=3, X=2, D=8, H=4, Y=2, notes="4 heads of width 2"),
    ]


def attention_case(name: str, seed: int, causal: bool, masked: bool, notes: str, B=2, T=6, D=8, heads=2,
                   chunk=4) -> Case:
    rng = np.random.default_rng(seed)
    model = NAMAttentionModel(D=D, heads=heads, causal=causal, chunk=chunk, rng=rng)
    model.params["ln.gain"] = 1.0 + 0.3 * rng.standard_normal(D)
    model.params["ln.bias"] = 0.3 * rng.standard_normal(D)
    x = rng.standard_normal((B, T, D))                               # (B, T, D)
    inputs = x
    if masked:
        mask = np.ones((B, T), dtype=bool)
        mask[0, -2:] = False                                         # trailing pads
        mask[1, 2] = False                                           # an interior pad
        inputs = (x, mask)
    return Case(f"nam.attention.{name}", model, inputs, projection_loss(rng, model.forward(inputs)[0]),
                notes=notes)


@register("nam")
def attention_cases():
    return [
        attention_case("full", 3, causal=False, masked=False,
                       notes="x + NAM(LN(x)): unit-norm linear attention, no padding mask (the reference)"),
        attention_case("causal_masked", 4, causal=True, masked=True,
                       notes="causal prefix sums over chunks of 4 (T = 6: one partial chunk), pads write nothing"),
    ]


def nam_tm_case(name: str, seed: int, T: int, B: int, notes: str, **config) -> Case:
    """A NAM-TM with the config's fields and tokens (T, B) uniform over the vocabulary."""
    rng = np.random.default_rng(seed)
    config = NAMTMConfig(**config)
    model = NAMTM(config, rng=rng)
    tokens = rng.integers(0, config.V, (T, B))                       # (T, B)
    return Case(f"nam.tm.{name}", model, tokens, projection_loss(rng, model.forward(tokens)[0]), notes=notes)


@register("nam")
def nam_tm_cases():
    return [
        nam_tm_case("small", 5, T=4, B=2, V=5, D=6, P=2, C=3, L=5,
                    notes="final NAM-TM: value and key tapes, 4 moves incl. jump, p_r/p_w/p_e, LN head"),
        nam_tm_case("bptt30", 6, T=30, B=2, V=5, D=6, P=2, C=3, L=5,
                    notes="30-step BPTT through both tapes and both heads, wrapping a 5-cell tape (spec A9.9)"),
    ]
