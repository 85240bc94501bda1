"""Gradient-check cases for the shared building blocks (minimem.nn): small, seeded, float64.

Block cases see every output through a fixed random projection (projection_loss). Loss cases run a
linear readout (x @ W + b on fixed inputs) into the loss itself, so the loss's own backward supplies
doutputs and the finite differences of the loss value check it.
"""

from __future__ import annotations

import numpy as np

from gradcheck.cases import register
from gradcheck.core import Case, projection_loss
from minimem.nn.attention import AttentionModel
from minimem.nn.layernorm import LayerNormModel
from minimem.nn.linear import LinearModel
from minimem.nn.losses import (
    mse_backward, mse_forward, sigmoid_cross_entropy_backward, sigmoid_cross_entropy_forward,
    softmax_cross_entropy_backward, softmax_cross_entropy_forward,
)
from minimem.nn.lstm import LSTMModel
from minimem.nn.mlp import MLPModel


def _projected(name: str, model, inputs, rng: np.random.Generator, notes: str) -> Case:
    return Case(name, model, inputs, projection_loss(rng, model.forward(inputs)[0]), notes=notes)


@register("nn")
def linear_small():
    rng = np.random.default_rng(0)
    model = LinearModel(X=3, Y=4, rng=rng)
    model.params["b"] = rng.standard_normal(4)                 # a generic point, not the zero init
    x = rng.standard_normal((2, 3, 3))                          # (T, B, X): every leading axis is batch
    return _projected("nn.linear.small", model, x, rng, "x @ W + b over (T, B, X) inputs")


@register("nn")
def mlp_small():
    cases = []
    for activation in ("tanh", "relu"):
        rng = np.random.default_rng(1)
        model = MLPModel((3, 5, 4, 2), activation=activation, rng=rng)
        x = rng.standard_normal((4, 3))                         # (B, X)
        notes = f"3 layers, {activation} hidden activations"
        if activation == "relu":
            notes += "; seeded so no pre-activation is within 1e-3 of the kink"
        cases.append(_projected(f"nn.mlp.{activation}", model, x, rng, notes))
    return cases


@register("nn")
def layernorm_small():
    rng = np.random.default_rng(2)
    model = LayerNormModel(D=5, rng=rng)                        # random gain and bias
    x = rng.standard_normal((2, 3, 5))                          # (T, B, D)
    return _projected("nn.layernorm.small", model, x, rng, "eps 1e-5, normalised over the last axis")


@register("nn")
def lstm_small():
    cases = []
    for T, forget_bias in ((3, 1.0), (5, 0.0)):
        rng = np.random.default_rng(3 + T)
        model = LSTMModel(X=3, H=4, Y=2, rng=rng, forget_bias=forget_bias)
        xs = rng.standard_normal((T, 2, 3))                     # (T, B, X)
        cases.append(_projected(f"nn.lstm.T{T}", model, xs, rng,
                                f"LSTM + readout, BPTT over T={T}, forget bias {forget_bias}"))
    return cases


@register("nn")
def attention_causal():
    rng = np.random.default_rng(4)
    model = AttentionModel(D=6, heads=2, causal=True, rng=rng)
    for name in ("attn.b_q", "attn.b_k", "attn.b_v", "attn.b_o", "ln.bias"):
        model.params[name] = 0.3 * rng.standard_normal(model.params[name].shape)
    model.params["ln.gain"] = 1.0 + 0.3 * rng.standard_normal(6)
    x = rng.standard_normal((2, 4, 6))                          # (B, T, D)
    return _projected("nn.attention.causal", model, x, rng, "x + MHA(LN(x)), 2 heads, causal mask")


def _loss_of(forward, backward, targets, mask, reduction):
    """Case.loss running a loss pair on the outputs: (value, doutputs)."""
    def loss(outputs):
        value, cache = forward(outputs, targets, mask, reduction)
        return float(value), backward(1.0, cache)
    return loss


@register("nn")
def losses_small():
    T, B, X, Y = 3, 2, 3, 4
    cases = []
    for name, forward, backward, make_targets, mask, reduction in (
        ("sigmoid_ce", sigmoid_cross_entropy_forward, sigmoid_cross_entropy_backward,
         lambda rng: rng.integers(0, 2, (T, B, Y)).astype(float), np.array([[0, 1], [1, 1], [1, 0]]), "batch"),
        ("softmax_ce", softmax_cross_entropy_forward, softmax_cross_entropy_backward,
         lambda rng: rng.integers(0, Y, (T, B)), np.array([[1, 1], [0, 1], [1, 1]]), "steps"),
        ("softmax_ce.soft", softmax_cross_entropy_forward, softmax_cross_entropy_backward,
         lambda rng: rng.dirichlet(np.ones(Y), size=(T, B)), None, "batch"),
        ("mse", mse_forward, mse_backward,
         lambda rng: rng.standard_normal((T, B, Y)), np.array([[1.0], [0.0], [1.0]]), "mean"),
    ):
        rng = np.random.default_rng(5)
        model = LinearModel(X=X, Y=Y, rng=rng)
        model.params["W"] = 2.0 * model.params["W"]             # logits of a few units, not near 0
        xs = rng.standard_normal((T, B, X))                     # (T, B, X)
        loss = _loss_of(forward, backward, make_targets(rng), mask, reduction)
        cases.append(Case(f"nn.loss.{name}", model, xs, loss,
                          notes=f"linear readout into the loss; mask {None if mask is None else mask.shape}, "
                                f"reduction {reduction!r}"))
    return cases
