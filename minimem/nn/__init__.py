"""Shared building blocks, each a manual forward/backward pair plus its autodiff twin.

The shared interface, once:
    <block>_forward(inputs..., params) -> (out, cache)      vectorised over batch (and heads)
    <block>_backward(dout, cache) -> gradients              in the order of the forward's array
                                                            inputs; parameter gradients as a dict
                                                            with the params' keys
    <block>_autodiff(inputs..., tparams) -> Tensor          the same equations in minimem.autodiff
    <block>_init(rng, sizes..., dtype) -> params            an ordered dict with plain names
Small models (LinearModel, LSTMModel, MLPModel, LayerNormModel, AttentionModel) follow the model
protocol used by gradcheck and training: `model.params` (read at call time), `model.forward(inputs)
-> (outputs, cache)`, `model.backward(doutputs, cache) -> grads` (same keys as params) and
`model.forward_autodiff(tparams, inputs) -> Tensor`. Losses are separate pairs (losses.py).

Modules: linear (x @ W + b), lstm (gate order i, f, g, o; BPTT), mlp, layernorm, attention
(multi-head scaled dot-product with masks), gelu (the exact erf form and the tanh approximation),
losses (sigmoid / softmax cross-entropy, squared error).
"""

from minimem.nn.attention import (
    AttentionModel, attention_autodiff, attention_backward, attention_forward, attention_init, causal_mask,
    dot_product_attention_autodiff, dot_product_attention_backward, dot_product_attention_forward,
)
from minimem.nn.layernorm import (
    LayerNormModel, layernorm_autodiff, layernorm_backward, layernorm_forward, layernorm_init, layernorm_op,
)
from minimem.nn.linear import (
    LinearModel, linear_autodiff, linear_backward, linear_forward, linear_init, linear_op, strip_prefix,
    with_prefix,
)
from minimem.nn.losses import (
    mse_autodiff, mse_backward, mse_forward, sigmoid_cross_entropy_autodiff, sigmoid_cross_entropy_backward,
    sigmoid_cross_entropy_forward, softmax_cross_entropy_autodiff, softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from minimem.nn.lstm import (
    LSTMFeedbackParams, LSTMModel, lstm_autodiff, lstm_backward, lstm_external_share, lstm_feedback_params,
    lstm_feedback_step_backward, lstm_feedback_step_forward, lstm_feedback_weight_gradients, lstm_forward,
    lstm_init, lstm_step_autodiff, lstm_step_backward, lstm_step_forward, lstm_weight_gradients,
)
from minimem.nn.mlp import MLPModel, mlp_autodiff, mlp_backward, mlp_forward, mlp_init

__all__ = [
    "AttentionModel", "attention_autodiff", "attention_backward", "attention_forward", "attention_init",
    "causal_mask", "dot_product_attention_autodiff", "dot_product_attention_backward",
    "dot_product_attention_forward",
    "LayerNormModel", "layernorm_autodiff", "layernorm_backward", "layernorm_forward", "layernorm_init",
    "layernorm_op",
    "LinearModel", "linear_autodiff", "linear_backward", "linear_forward", "linear_init", "linear_op",
    "strip_prefix", "with_prefix",
    "mse_autodiff", "mse_backward", "mse_forward", "sigmoid_cross_entropy_autodiff",
    "sigmoid_cross_entropy_backward", "sigmoid_cross_entropy_forward", "softmax_cross_entropy_autodiff",
    "softmax_cross_entropy_backward", "softmax_cross_entropy_forward",
    "LSTMModel", "lstm_autodiff", "lstm_backward", "lstm_forward", "lstm_init", "lstm_step_autodiff",
    "lstm_step_backward", "lstm_step_forward",
    "MLPModel", "mlp_autodiff", "mlp_backward", "mlp_forward", "mlp_init",
]
