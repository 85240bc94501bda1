"""Gradient-check cases for Metalearned Neural Memory (minimem.memory.mnm, and the controller-free
one-shot writer of minimem.memory.mnm_oneshot): small, seeded, float64.

Every case sees both outputs, the logits ys (T, B, Y) and the meta-objective terms meta (T, B),
through a fixed random projection (projection_loss). The reference initialisation already puts
every weight and bias at a generic non-zero point, and the memory is all tanh and linear maps, so
there are no kinks. The MNM-g cases differentiate through the inner gradient (second order);
beta_max is raised in some cases so that the writes move the memory by more than a few per cent
and a missing second-order term shows up far above the tolerance.
"""

from __future__ import annotations

import numpy as np

from gradcheck.cases import register
from gradcheck.core import Case, projection_loss
from minimem.memory.mnm import MNM, MNMConfig
from minimem.memory.mnm_oneshot import MNMOneShot, OneShotConfig, make_episodes


def mnm_case(name: str, seed: int, T: int, B: int, notes: str, **config) -> Case:
    """An MNM with X = 3, Y = 2, H = 4, d = 3, h = 4 (unless given), inputs (T, B, X) ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    config = MNMConfig(**{"X": 3, "Y": 2, "H": 4, "d": 3, "h": 4, **config})
    model = MNM(config, rng=rng)
    xs = rng.standard_normal((T, B, config.X))                       # (T, B, X)
    return Case(f"mnm.{name}", model, xs, projection_loss(rng, model.forward(xs)[0]), notes=notes)


@register("mnm")
def mnm_cases():
    return [
        mnm_case("local", 0, T=3, B=2, L=3, n_heads=2,
                 notes="MNM-p (B6), L 3, 2 heads, learned targets for every layer, fixed phi_0"),
        mnm_case("grad", 1, T=3, B=2, writer="grad", L=3, n_heads=2, beta_max=4.0,
                 notes="MNM-g (B5), second order through the inner gradient; L 3, 2 heads, beta_max 4"),
        mnm_case("local.value.learn_init", 2, T=3, B=2, L=2, n_heads=1, output_target="value",
                 learn_init=True, extra_read_step=True, beta_max=2.0,
                 notes="MNM-p with Z'_L = v^w, trained phi_0, the extra zero-input step"),
        mnm_case("grad.learn_init", 3, T=4, B=2, writer="grad", L=2, n_heads=3, learn_init=True, beta_max=2.0,
                 notes="MNM-g with trained phi_0 (second order reaches mem0.*), 3 heads, T 4"),
    ]


def oneshot_case(name: str, seed: int, P: int, B: int, notes: str, Q: int = 0, **config) -> Case:
    """The controller-free one-shot writer (mnm_oneshot, spec B6.2 M1) with d = 3, h = 4 (unless
    given) on P seeded M1 episodes; the zero-initialised target bias and beta.b moved to 0.3 N(0, 1).
    Q > 0 reads Q further keys that were never written (the dictionary task M3) instead of the P keys."""
    rng = np.random.default_rng(seed)
    config = OneShotConfig(**{"d": 3, "h": 4, **config})
    model = MNMOneShot(config, rng=rng)
    for key, value in model.params.items():
        if not np.any(value):
            model.params[key] = 0.3 * rng.standard_normal(value.shape)
    keys, values = make_episodes(rng, P + Q, B, config.d)             # (P + Q, B, d) each
    inputs = (keys, values) if Q == 0 else (keys[:P], values[:P], keys[P:])
    return Case(f"mnm.{name}", model, inputs, projection_loss(rng, model.forward(inputs)[0]), notes=notes)


@register("mnm")
def oneshot_cases():
    return [
        oneshot_case("oneshot.local", 4, P=4, B=2, L=3,
                     notes="M1 writer without a controller: MNM-p writes 4 pairs, then reads them all"),
        oneshot_case("oneshot.grad", 5, P=4, B=2, L=3, writer="grad", beta_max=2.0,
                     notes="M1 writer, MNM-g: 4 chained second-order writes back to phi_0"),
        oneshot_case("oneshot.queries", 6, P=3, B=2, Q=2, L=2, writer="grad", beta_max=2.0,
                     notes="M3 dictionary read: MNM-g writes 3 pairs, then reads 2 keys never written"),
    ]
