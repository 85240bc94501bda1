"""Gradient-check cases for the Titans neural long-term memory (minimem.memory.titans): small,
seeded, float64.

Every case sees all outputs through a fixed random projection (projection_loss). The gate weights
and biases, which the initialiser sets to constants, are moved to a generic point so alpha, eta
and theta differ from token to token, and theta_max is raised (0.5 to 1.0) so the inner updates
move the memory visibly: the second-order terms of the outer gradient (pitfall P1) are then far
above the finite-difference noise. Everything is smooth (SiLU, tanh, sigmoid), so there are no kinks.
The cases cover the sequential model (b = 1) and the chunked one (b > 1, a last partial chunk),
read after and before write, linear, two- and three-layer memories, several heads, persistent
tokens, and the raw read-out without the output path.
"""

from __future__ import annotations

import numpy as np

from gradcheck.cases import register
from gradcheck.core import Case, projection_loss
from minimem.memory.titans import TitansLMM, TitansLMMConfig
from minimem.memory.titans_arch import TitansConfig, TitansModel


def titans_lmm_case(name: str, seed: int, T: int, B: int, notes: str, **config) -> Case:
    """A TitansLMM with generic gates; inputs (T, B, D) ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    config = TitansLMMConfig(**config)
    model = TitansLMM(config, rng=rng)
    for key in ("w_alpha", "w_eta", "w_theta"):
        model.params[f"lmm.{key}"] = 0.5 * rng.standard_normal(model.params[f"lmm.{key}"].shape)
    for key, centre in (("b_alpha", -1.5), ("b_eta", 0.5), ("b_theta", 0.0)):
        model.params[f"lmm.{key}"] = centre + 0.3 * rng.standard_normal(model.params[f"lmm.{key}"].shape)
    if "lmm.out_norm.g" in model.params:
        model.params["lmm.out_norm.g"] = 1.0 + 0.3 * rng.standard_normal(model.params["lmm.out_norm.g"].shape)
    if "persist.P" in model.params:
        model.params["persist.P"] = 0.5 * rng.standard_normal(model.params["persist.P"].shape)
    xs = rng.standard_normal((T, B, config.D))                      # (T, B, D)
    return Case(f"titans.{name}", model, xs, projection_loss(rng, model.forward(xs)[0]), notes=notes)


@register("titans")
def titans_lmm_cases():
    return [
        titans_lmm_case("lmm.sequential", 0, T=5, B=2, D=4, H=2, d=2, h=3, K_c=3, theta_max=0.5,
                        notes="b = 1 (the token-by-token model), 2-layer SiLU memory, 2 heads, output path"),
        titans_lmm_case("lmm.chunked", 1, T=7, B=2, D=4, H=1, d=3, h=4, K_c=2, chunk=3, theta_max=0.5,
                        read_after_write=False,
                        notes="b = 3 with a last chunk of 1, read before write"),
        titans_lmm_case("lmm.linear", 2, T=6, B=2, D=3, H=1, d=3, L_M=1, K_c=2, chunk=2, theta_max=1.0,
                        N_p=2, notes="linear memory (gated delta rule with momentum), b = 2, 2 persistent tokens"),
        titans_lmm_case("lmm.deep_tanh", 3, T=5, B=1, D=3, H=1, d=2, h=3, L_M=3, phi="tanh", K_c=2, chunk=2,
                        theta_max=1.0, output_path=False,
                        notes="3-layer tanh memory, b = 2, raw read-out (no output path)"),
    ]


def titans_model_case(name: str, seed: int, T: int, B: int, notes: str, memory: dict, variant: str | None = None,
                      **config) -> Case:
    """A TitansModel (one block) with generic gates, attention biases and persistent tokens (the
    initial 0.02-scale tokens sit where RMSNorm curves sharply, so central differences with eps = 1e-6
    lose ~1e-5 there); inputs (T, B, X) ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    config = TitansConfig(variant=variant or name, memory=TitansLMMConfig(**memory), **config)
    model = TitansModel(config, rng=rng)
    for key, value in model.params.items():
        if key.endswith(("w_alpha", "w_eta", "w_theta", "b_q", "b_k", "b_v", "b_o", "persist.P")):
            model.params[key] = 0.5 * rng.standard_normal(value.shape)
        elif key.endswith((".g", "g_y", "g_m")):
            model.params[key] = 1.0 + 0.3 * rng.standard_normal(value.shape)
    xs = rng.standard_normal((T, B, config.X))                      # (T, B, X)
    return Case(f"titans.{name}", model, xs, projection_loss(rng, model.forward(xs)[0]), notes=notes)


@register("titans")
def titans_model_cases():
    memory = dict(D=4, H=1, d=2, h=3, K_c=2, chunk=2, theta_max=0.5)
    small = dict(X=3, Y=2, D=4, layers=1, attn_heads=2, F=3)
    return [
        titans_model_case("mal", 10, T=5, B=2, memory=memory, N_p=2, window=2, **small,
                          notes="memory as a layer: LMM then sliding-window attention (w = 2, 2 persistent tokens)"),
        titans_model_case("mag", 11, T=5, B=2, memory=memory, N_p=2, window=2, **small,
                          notes="memory as a gate: SW-Attn gated by the LMM branch"),
        titans_model_case("mac", 12, T=5, B=2, memory=memory, N_p=1, segment=2, **small,
                          notes="memory as a context: segments of 2 (last one of 1), the A3.8 window mask"),
        titans_model_case("lmm_blocks", 13, T=4, B=1, memory={**memory, "chunk": 1}, N_p=1, variant="lmm",
                          **{**small, "layers": 2}, notes="two LMM blocks (Titans (LMM)), b = 1"),
    ]
