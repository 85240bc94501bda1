"""A tiny Vision-Transformer-style backbone (Dosovitskiy et al., 2021, arXiv:2010.11929, eqs. (1)-(4)):
image patches plus a CLS token through pre-layer-norm Transformer layers; h is the CLS token's
final feature (HMA B4 / B6 task 3, the stand-in for a pre-trained ViT's pre-logits).

Shapes: B batch, Hi x Wi image sides, C channels, p patch side, P = (Hi / p)(Wi / p) patches,
T = 1 + P tokens, D model width, H heads, M = mlp_ratio * D hidden width, L layers.
Equations:
    (1) E = patches(x) W_e + b_e                    (B, P, D)   = conv2d with kernel p, stride p
    (2) z_0 = [cls ; E] + pos                        (B, T, D)   CLS token first, learned positions
    (3) z'_l = z_{l-1} + MHA(LN_1(z_{l-1}))          self-attention, no mask (nn.attention)
    (4) z_l = z'_l + MLP(LN_2(z'_l))                 Linear(D, M), ReLU, Linear(M, D) (nn.mlp)
    (5) h = LN_f(z_L[:, 0])                          (B, D)      the CLS token
Layer norms use eps 1e-5. The MLP uses ReLU (minimem.nn.mlp's activations) instead of ViT's GELU.
Parameters (model.params, in this order; layouts `x @ W`):
    embed.W (p, p, C, D), embed.b (D,)              the patch embedding as a conv kernel
    cls (D,), pos (T, D)                             N(0, 0.02^2)
    layer{l}.ln1.gain, .bias (D,); layer{l}.attn.W_q ... b_o (nn.attention layouts, E = D / H)
    layer{l}.ln2.gain, .bias (D,); layer{l}.mlp.layer0.W (D, M), .b (M,), layer{l}.mlp.layer1.W (M, D), .b (D,)
    ln_f.gain, ln_f.bias (D,)
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem import init
from minimem.checks import check_int
from minimem.nn.attention import attention_autodiff, attention_backward, attention_forward, attention_init
from minimem.nn.conv import conv2d_autodiff, conv2d_backward, conv2d_forward, conv2d_init
from minimem.nn.layernorm import layernorm_autodiff, layernorm_backward, layernorm_forward, layernorm_init
from minimem.nn.linear import as_float_array, check_finite, check_params, strip_prefix, with_prefix
from minimem.nn.mlp import mlp_autodiff, mlp_backward, mlp_forward, mlp_init


class LayerCache(NamedTuple):
    ln1: object
    attn: object
    ln2: object
    mlp: object


class PatchTransformerCache(NamedTuple):
    embed: object         # Conv2dCache of eq. (1)
    layers: list          # L LayerCache
    ln_f: object          # LayerNormCache of eq. (5)
    T: int


class PatchTransformerModel:
    """Eqs. (1)-(5): inputs x (B, Hi, Wi, C) -> h (B, D). Hi and Wi must be multiples of `patch`."""

    def __init__(self, image_shape: tuple[int, int, int], patch: int = 2, D: int = 32, heads: int = 4,
                 layers: int = 2, mlp_ratio: int = 2, rng: np.random.Generator | None = None, dtype=np.float64):
        Hi, Wi, C = (int(n) for n in image_shape)
        for name, value in (("patch", patch), ("D", D), ("heads", heads), ("layers", layers),
                            ("mlp_ratio", mlp_ratio), ("C", C)):
            check_int(name, value, 1)
        if Hi % patch or Wi % patch or Hi < 1 or Wi < 1:
            raise ValueError(f"image sides {Hi} x {Wi} must be positive multiples of the patch side {patch}")
        if D % heads:
            raise ValueError(f"D={D} must be divisible by heads={heads}")
        rng = np.random.default_rng(0) if rng is None else rng
        self.image_shape, self.patch, self.D, self.heads, self.L = (Hi, Wi, C), patch, D, heads, layers
        self.T = 1 + (Hi // patch) * (Wi // patch)
        self.eps = 1e-5
        params = with_prefix("embed", conv2d_init(rng, patch, patch, C, D, dtype=dtype))
        params["cls"] = init.normal(rng, D, 0.02, dtype=dtype)
        params["pos"] = init.normal(rng, (self.T, D), 0.02, dtype=dtype)
        for l in range(layers):
            params.update(with_prefix(f"layer{l}.ln1", layernorm_init(D, dtype)))
            params.update(with_prefix(f"layer{l}.attn", attention_init(rng, D, heads, dtype=dtype)))
            params.update(with_prefix(f"layer{l}.ln2", layernorm_init(D, dtype)))
            params.update(with_prefix(f"layer{l}.mlp", mlp_init(rng, (D, mlp_ratio * D, D), dtype=dtype)))
        params.update(with_prefix("ln_f", layernorm_init(D, dtype)))
        self.params = params
        self._shapes = {name: value.shape for name, value in params.items()}

    def _check(self, x) -> np.ndarray:
        check_params(self.params, self._shapes)
        for name, value in self.params.items():
            check_finite(f"parameter {name}", value)
        x = as_float_array("inputs", x)
        if x.ndim != 4 or x.shape[1:] != self.image_shape or x.shape[0] == 0:
            raise ValueError(f"inputs must have shape (B, Hi, Wi, C) = (B, {', '.join(map(str, self.image_shape))}) "
                             f"with B >= 1; got {x.shape}")
        check_finite("inputs", x)
        return x

    def forward(self, x):
        """h (B, D) and the cache for backward."""
        x, p = self._check(x), self.params
        E, embed_cache = conv2d_forward(x, p["embed.W"], p["embed.b"], stride=self.patch)  # (B, Hi/p, Wi/p, D) (1)
        B = x.shape[0]
        E = E.reshape(B, self.T - 1, self.D)                                              # (B, P, D)
        z = np.concatenate([np.broadcast_to(p["cls"], (B, 1, self.D)), E], axis=1) + p["pos"]  # (B, T, D)  eq. (2)
        layer_caches = []
        for l in range(self.L):
            a, ln1 = layernorm_forward(z, p[f"layer{l}.ln1.gain"], p[f"layer{l}.ln1.bias"], self.eps)
            y, attn = attention_forward(a, a, strip_prefix(f"layer{l}.attn", p), self.heads)
            z = z + y                                                                     # eq. (3)
            a, ln2 = layernorm_forward(z, p[f"layer{l}.ln2.gain"], p[f"layer{l}.ln2.bias"], self.eps)
            y, mlp = mlp_forward(a, strip_prefix(f"layer{l}.mlp", p), activation="relu")
            z = z + y                                                                     # eq. (4)
            layer_caches.append(LayerCache(ln1, attn, ln2, mlp))
        h, ln_f = layernorm_forward(z[:, 0], p["ln_f.gain"], p["ln_f.bias"], self.eps)   # (B, D)  eq. (5)
        return h, PatchTransformerCache(embed_cache, layer_caches, ln_f, self.T)

    def backward(self, dh, cache: PatchTransformerCache) -> dict:
        """Parameter gradients (keys of params) from dh (B, D)."""
        grads = {}
        B = dh.shape[0]
        dcls_out, grads["ln_f.gain"], grads["ln_f.bias"] = layernorm_backward(dh, cache.ln_f)   # 5.
        dz = np.zeros((B, cache.T, self.D), dtype=dh.dtype)
        dz[:, 0] = dcls_out
        for l in reversed(range(self.L)):
            c = cache.layers[l]
            da, mlp_grads = mlp_backward(dz, c.mlp)                                       # 4.
            da, grads[f"layer{l}.ln2.gain"], grads[f"layer{l}.ln2.bias"] = layernorm_backward(da, c.ln2)
            dz = dz + da
            da_q, da_kv, attn_grads = attention_backward(dz, c.attn)                      # 3.
            da, grads[f"layer{l}.ln1.gain"], grads[f"layer{l}.ln1.bias"] = layernorm_backward(da_q + da_kv, c.ln1)
            dz = dz + da
            grads.update(with_prefix(f"layer{l}.mlp", mlp_grads))
            grads.update(with_prefix(f"layer{l}.attn", attn_grads))
        grads["pos"] = dz.sum(axis=0)                                                     # 2.
        grads["cls"] = dz[:, 0].sum(axis=0)
        dE = dz[:, 1:].reshape(cache.embed.patches.shape[:3] + (self.D,))                 # (B, Hi/p, Wi/p, D)
        _, grads["embed.W"], grads["embed.b"] = conv2d_backward(dE, cache.embed)          # 1.
        return {name: grads[name] for name in self.params}

    def forward_autodiff(self, tparams: Mapping[str, ad.Tensor], x) -> ad.Tensor:
        """Autodiff twin of forward; returns h (B, D) as a Tensor."""
        x = self._check(x)
        B = x.shape[0]
        E = conv2d_autodiff(x, tparams["embed.W"], tparams["embed.b"], stride=self.patch)
        E = ad.reshape(E, (B, self.T - 1, self.D))
        cls = ad.broadcast_to(ad.reshape(tparams["cls"], (1, 1, self.D)), (B, 1, self.D))
        z = ad.concatenate([cls, E], axis=1) + tparams["pos"]
        for l in range(self.L):
            a = layernorm_autodiff(z, tparams[f"layer{l}.ln1.gain"], tparams[f"layer{l}.ln1.bias"], self.eps)
            z = z + attention_autodiff(a, a, strip_prefix(f"layer{l}.attn", tparams), self.heads)
            a = layernorm_autodiff(z, tparams[f"layer{l}.ln2.gain"], tparams[f"layer{l}.ln2.bias"], self.eps)
            z = z + mlp_autodiff(a, strip_prefix(f"layer{l}.mlp", tparams), activation="relu")
        return layernorm_autodiff(z[:, 0], tparams["ln_f.gain"], tparams["ln_f.bias"], self.eps)
