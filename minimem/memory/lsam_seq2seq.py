"""The LSAM sequence model of the algorithmic tasks (Nam & Seo, 2023, arXiv:2302.09422; spec
specs/nam_hma.md A2.3 "Sequence model", the reference's `BLSAM`, `LSAMEncoderLayer`, `LSAMDecoder`,
`LSAMAE`): a bidirectional LSAM encoder whose two final memories become the initial memory of an
LSAM decoder that labels every position. The cell itself is minimem.memory.lsam.

Shapes: T time, B batch, V vocabulary, D model width, H decoder heads, d = D / H head width (the
encoder cells have D / 2 state and H / 2 heads of the same width d), F feed-forward width.
Equations (the spec's step numbers; the paper's numbering could not be consulted):
    (S-1) e_t = E[x_t]                                   (T, B, D) no scaling, no positions
    (S-2) h^f_{1..T}, M^f = LSAM_f(e_1 .. e_T)           (T, B, D/2), (B, H/2, d, d) forward cell
          h^b_{T..1}, M^b = LSAM_b(e_T .. e_1)           backward cell; M^b is its memory after e_1
          a_t = ReLU([h^f_t ; h^b_t] W_a + b_a)          (T, B, D)  BLSAM output
    (S-2') s_t = e_t + a_t;  s'_t = LN_1(s_t + ReLU(s_t W_1 + b_1) W_2 + b_2)   encoder layer, (T, B, D)
    (S-3) M_0 = [M^f ; M^b] along the head axis          (B, H, d, d) memory handed to the decoder
    (S-4) h^d_{1..T} = LSAM_d(s'_1 .. s'_T; h_0 = 0, M_0) (T, B, D)
          y_t = LN_2(ReLU(h^d_t W_y + b_y))              (T, B, D)
    (S-5) logits_t = y_t W_o + b_o                       (T, B, V)
The loss (not part of this module) is the mean token cross-entropy over every position (A4).

Parameters (dotted names; every weight used as `x @ W`):
    `embed.E` (V, D) N(0, 1) (PyTorch nn.Embedding's init)
    `enc_fwd.*`, `enc_bwd.*`  LSAM cells with X = D, state D / 2, H / 2 heads (lsam.py's names:
                 W_qkv (D + D/2, 3 D/2), b_qkv, W_w (D + D/2, H/2), b_w, W_r, b_r)
    `enc_mix.W` (D, D), `enc_mix.b` (D,)        W_a, b_a; rows [0:D/2] act on h^f, [D/2:D] on h^b
    `ffn1.W` (D, F), `ffn1.b` (F,), `ffn2.W` (F, D), `ffn2.b` (D,), `enc_ln.gain`, `enc_ln.bias` (D,)
    `dec.*`      LSAM cell with X = D, state D, H heads
    `dec_out.W` (D, D), `dec_out.b` (D,), `dec_ln.gain`, `dec_ln.bias` (D,)   W_y, b_y, LN_2
    `logits.W` (D, V), `logits.b` (V,)                                        W_o, b_o
Linear layers use PyTorch's default U(+-1/sqrt(fan_in)); layer norms start at gain 1, bias 0.

Differences from the reference, on purpose:
- No dropout (the reference uses p = 0.1 after the mix, the residuals and the FFN): minimem's model is
  deterministic so that every gradient can be checked; the spec's CPU demos train without it.
- The reference also creates a LayerNorm inside BLSAM and a first LayerNorm in the encoder layer
  that are never applied; they change nothing and are not created here.
- The reference's BLSAM ignores the backward cell's memory when an initial state is passed (a path
  its own model never takes, A2.10/A8). Here blsam_forward refuses an initial state (ValueError).

Backward (A2.4): BPTT through both encoder cells and the decoder cell (lsam_backward); the decoder's
gradient w.r.t. M_0 is split along the head axis and enters the encoder cells as the gradient of
their final memories, so the encoder learns through its memory as well as through s'.
Invariant (A2.9): the forward half of the encoder output at t depends only on e_1..e_t, the
backward half only on e_t..e_T.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np

from minimem import autodiff as ad
from minimem import init
from minimem.checks import check_int
from minimem.memory.lsam import lsam_autodiff, lsam_backward, lsam_forward, lsam_init, lsam_param_shapes
from minimem.nn.layernorm import layernorm_autodiff, layernorm_backward, layernorm_forward, layernorm_init
from minimem.nn.linear import (
    as_float_array, check_finite, check_params, linear_autodiff, linear_backward, linear_forward,
    strip_prefix, with_prefix,
)


def _relu_forward(z: np.ndarray):
    return np.maximum(z, 0.0), z > 0


def _relu_backward(da: np.ndarray, positive: np.ndarray) -> np.ndarray:
    return da * positive


# ----------------------------------------------------------------- config and parameters
@dataclass(frozen=True)
class LSAMSeq2SeqConfig:
    """Sizes of the sequence model. V: vocabulary. D: model width (even). H: decoder heads (even,
    D % H == 0; the encoder cells get H / 2 heads each). F: feed-forward width (the reference's
    2048 at D = 1024). ln_eps: layer-norm epsilon (PyTorch's 1e-5). dtype: "float64" | "float32"."""
    V: int
    D: int = 64
    H: int = 4
    F: int = 128
    ln_eps: float = 1e-5
    dtype: str = "float64"

    def __post_init__(self) -> None:
        for name in ("V", "D", "H", "F"):
            check_int(f"LSAMSeq2SeqConfig.{name}", getattr(self, name), 1)
        if self.H % 2 or self.D % self.H:
            raise ValueError(f"LSAMSeq2SeqConfig needs an even H that divides D (encoder cells: H / 2 heads "
                             f"of width D / H); got D={self.D}, H={self.H}")
        if not (isinstance(self.ln_eps, (int, float)) and self.ln_eps > 0):
            raise ValueError(f"LSAMSeq2SeqConfig.ln_eps must be > 0; got {self.ln_eps!r}")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"LSAMSeq2SeqConfig.dtype must be 'float64' or 'float32'; got {self.dtype!r}")


def lsam_seq2seq_param_shapes(config: LSAMSeq2SeqConfig) -> dict[str, tuple]:
    """Every parameter's name and shape, in the order of model.params."""
    V, D, H, F = config.V, config.D, config.H, config.F
    shapes = {"embed.E": (V, D)}
    shapes.update(with_prefix("enc_fwd", lsam_param_shapes(D, D // 2, H // 2)))
    shapes.update(with_prefix("enc_bwd", lsam_param_shapes(D, D // 2, H // 2)))
    shapes.update({"enc_mix.W": (D, D), "enc_mix.b": (D,), "ffn1.W": (D, F), "ffn1.b": (F,), "ffn2.W": (F, D),
                   "ffn2.b": (D,), "enc_ln.gain": (D,), "enc_ln.bias": (D,)})
    shapes.update(with_prefix("dec", lsam_param_shapes(D, D, H)))
    shapes.update({"dec_out.W": (D, D), "dec_out.b": (D,), "dec_ln.gain": (D,), "dec_ln.bias": (D,),
                   "logits.W": (D, V), "logits.b": (V,)})
    return shapes


def lsam_seq2seq_init(rng: np.random.Generator, config: LSAMSeq2SeqConfig) -> dict:
    """The reference's init (PyTorch defaults): Embedding N(0, 1), Linear U(+-1/sqrt(fan_in)) for
    weights and biases, LayerNorm (1, 0), the LSAM cells as lsam_init."""
    dtype = np.dtype(config.dtype)
    D = config.D
    params = {"embed.E": init.normal(rng, (config.V, D), 1.0, dtype=dtype)}
    params.update(with_prefix("enc_fwd", lsam_init(rng, D, D // 2, config.H // 2, dtype)))
    params.update(with_prefix("enc_bwd", lsam_init(rng, D, D // 2, config.H // 2, dtype)))
    shapes = lsam_seq2seq_param_shapes(config)

    def linear(name: str) -> None:
        fan_in = shapes[f"{name}.W"][0]
        for suffix in ("W", "b"):
            params[f"{name}.{suffix}"] = init.uniform(rng, shapes[f"{name}.{suffix}"], 1.0 / math.sqrt(fan_in),
                                                      dtype=dtype)

    for name in ("enc_mix", "ffn1", "ffn2"):
        linear(name)
    params.update(with_prefix("enc_ln", layernorm_init(D, dtype=dtype)))
    params.update(with_prefix("dec", lsam_init(rng, D, D, config.H, dtype)))
    linear("dec_out")
    params.update(with_prefix("dec_ln", layernorm_init(D, dtype=dtype)))
    linear("logits")
    return {name: params[name] for name in shapes}


# ----------------------------------------------------------------- the bidirectional encoder (BLSAM)
class BLSAMCache(NamedTuple):
    forward: object          # LSAMCache of the forward cell over e_1..e_T
    backward: object         # LSAMCache of the backward cell over e_T..e_1
    mix: object              # LinearCache of [h^f ; h^b] W_a + b_a
    positive: np.ndarray     # (T, B, D) bool, ReLU's active set
    hf: np.ndarray           # (T, B, D/2) forward states
    hb: np.ndarray           # (T, B, D/2) backward states, in input order (h^b_t read e_t..e_T)
    heads: int               # H / 2, heads of each cell


def blsam_forward(xs: np.ndarray, params: Mapping[str, np.ndarray], initial_state=None):
    """The bidirectional encoder (S-2) and the memory handed on (S-3).

    Args:
        xs: (T, B, D) inputs e_1..e_T.
        params: `fwd.*`, `bwd.*` (two LSAM cells with X = D, state D / 2) and `mix.W` (D, D), `mix.b` (D,).
        initial_state: must be None: both cells start from h = 0, M = 0 (spec A2.10; the reference's
            initial-state path leaves the backward memory unset, so it is refused, not copied).
    Returns:
        (a, M_0): a (T, B, D) = ReLU([h^f ; h^b] W_a + b_a) and M_0 (B, H, d, d) = [M^f ; M^b] along
        heads, and the cache for blsam_backward.
    """
    if initial_state is not None:
        raise ValueError("the bidirectional LSAM encoder takes no initial state (h, M): both cells start "
                         "from zeros (spec A2.10); got an initial state")
    xs = as_float_array("xs", xs)
    fwd, bwd = strip_prefix("fwd", params), strip_prefix("bwd", params)
    (hf, Mf), fwd_cache = lsam_forward(xs, fwd)                      # (T, B, D/2), (B, H/2, d, d)
    (hb_reversed, Mb), bwd_cache = lsam_forward(xs[::-1], bwd)       # runs e_T .. e_1
    hb = hb_reversed[::-1]                                           # h^b_t in input order
    pre, mix = linear_forward(np.concatenate([hf, hb], axis=-1), params["mix.W"], params["mix.b"])
    a, positive = _relu_forward(pre)                                 # (T, B, D)
    M0 = np.concatenate([Mf, Mb], axis=1)                            # (B, H, d, d)
    return (a, M0), BLSAMCache(fwd_cache, bwd_cache, mix, positive, hf, hb, Mf.shape[1])


def blsam_backward(da: np.ndarray, dM0: np.ndarray | None, cache: BLSAMCache):
    """Adjoint of blsam_forward. da (T, B, D), dM0 (B, H, d, d) or None.
    Returns (dxs (T, B, D), {"fwd.*", "bwd.*", "mix.W", "mix.b"} gradients)."""
    if np.shape(da) != cache.positive.shape:
        raise ValueError(f"da must have the shape of a (T, B, D) = {cache.positive.shape}; got {np.shape(da)}")
    dz, dW, db = linear_backward(_relu_backward(da, cache.positive), cache.mix)
    half = cache.hf.shape[-1]
    dMf = dMb = None
    if dM0 is not None:
        dMf, dMb = dM0[:, :cache.heads], dM0[:, cache.heads:]
    dxs_f, _, _, grads_f = lsam_backward(dz[..., :half], dMf, cache.forward)
    dxs_b, _, _, grads_b = lsam_backward(dz[..., half:][::-1], dMb, cache.backward)
    grads = {**with_prefix("fwd", grads_f), **with_prefix("bwd", grads_b), "mix.W": dW, "mix.b": db}
    return dxs_f + dxs_b[::-1], grads


def blsam_autodiff(xs, tparams: Mapping[str, ad.Tensor]):
    """Autodiff twin of blsam_forward: (a (T, B, D), M_0 (B, H, d, d)) as Tensors."""
    xs = ad.as_tensor(xs)
    reverse = np.arange(xs.shape[0])[::-1]
    hf, Mf = lsam_autodiff(xs, strip_prefix("fwd", tparams))
    hb_reversed, Mb = lsam_autodiff(ad.getitem(xs, reverse), strip_prefix("bwd", tparams))
    z = ad.concatenate([hf, ad.getitem(hb_reversed, reverse)], axis=-1)
    a = ad.relu(linear_autodiff(z, tparams["mix.W"], tparams["mix.b"]))
    return a, ad.concatenate([Mf, Mb], axis=1)


# ----------------------------------------------------------------- the whole model
class LSAMSeq2SeqCache(NamedTuple):
    tokens: np.ndarray       # (T, B) int
    encoder: BLSAMCache
    ffn1: object             # LinearCache
    ffn_positive: np.ndarray  # (T, B, F) bool
    ffn2: object             # LinearCache
    enc_ln: object           # LayerNormCache of s + FFN(s)
    decoder: object          # LSAMCache of the decoder cell (its M_0 is the encoder memory)
    dec_out: object          # LinearCache
    dec_positive: np.ndarray  # (T, B, D) bool
    dec_ln: object           # LayerNormCache
    logits: object           # LinearCache

    @property
    def memory(self) -> np.ndarray:
        """(B, H, d, d) the memory the encoder handed to the decoder, M_0 (S-3)."""
        return self.decoder.steps[0].write.M


def _check_tokens(tokens, V: int) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be an integer array of shape (T, B) with T, B >= 1; got {tokens.dtype} "
                         f"{tokens.shape}")
    if tokens.min() < 0 or tokens.max() >= V:
        raise ValueError(f"tokens must lie in [0, V) = [0, {V}); got min {tokens.min()}, max {tokens.max()}")
    return tokens


def lsam_seq2seq_forward(tokens: np.ndarray, params: Mapping[str, np.ndarray], config: LSAMSeq2SeqConfig):
    """(S-1)-(S-5). tokens (T, B) int in [0, V). Returns logits (T, B, V) and the cache."""
    tokens = _check_tokens(tokens, config.V)
    e = params["embed.E"][tokens]                                    # (T, B, D)        1. (S-1)
    (a, M0), encoder = blsam_forward(e, {**with_prefix("fwd", strip_prefix("enc_fwd", params)),
                                         **with_prefix("bwd", strip_prefix("enc_bwd", params)),
                                         "mix.W": params["enc_mix.W"], "mix.b": params["enc_mix.b"]})  # 2.
    s = e + a                                                        # (T, B, D)        3. (S-2')
    f_pre, ffn1 = linear_forward(s, params["ffn1.W"], params["ffn1.b"])
    f, ffn_positive = _relu_forward(f_pre)                           # (T, B, F)
    g, ffn2 = linear_forward(f, params["ffn2.W"], params["ffn2.b"])
    s2, enc_ln = layernorm_forward(s + g, params["enc_ln.gain"], params["enc_ln.bias"], config.ln_eps)
    (hd, _), decoder = lsam_forward(s2, strip_prefix("dec", params), None, M0)   # 4. (S-3)-(S-4)
    y_pre, dec_out = linear_forward(hd, params["dec_out.W"], params["dec_out.b"])
    y_relu, dec_positive = _relu_forward(y_pre)
    y, dec_ln = layernorm_forward(y_relu, params["dec_ln.gain"], params["dec_ln.bias"], config.ln_eps)
    logits, logits_cache = linear_forward(y, params["logits.W"], params["logits.b"])   # 5. (S-5)
    return logits, LSAMSeq2SeqCache(tokens, encoder, ffn1, ffn_positive, ffn2, enc_ln, decoder, dec_out,
                                    dec_positive, dec_ln, logits_cache)


def lsam_seq2seq_backward(dlogits: np.ndarray, cache: LSAMSeq2SeqCache, params: Mapping[str, np.ndarray]) -> dict:
    """Adjoint of lsam_seq2seq_forward: the steps in reverse. Returns {name: gradient}."""
    if np.shape(dlogits) != cache.tokens.shape + (params["logits.b"].shape[0],):
        raise ValueError(f"dlogits must have the shape of logits (T, B, V) = "
                         f"{cache.tokens.shape + (params['logits.b'].shape[0],)}; got {np.shape(dlogits)}")
    grads = {}
    dy, grads["logits.W"], grads["logits.b"] = linear_backward(dlogits, cache.logits)            # 5.
    dy_relu, grads["dec_ln.gain"], grads["dec_ln.bias"] = layernorm_backward(dy, cache.dec_ln)   # 4.
    dhd, grads["dec_out.W"], grads["dec_out.b"] = linear_backward(_relu_backward(dy_relu, cache.dec_positive),
                                                                  cache.dec_out)
    ds2, _, dM0, dec_grads = lsam_backward(dhd, None, cache.decoder)
    grads.update(with_prefix("dec", dec_grads))
    dsum, grads["enc_ln.gain"], grads["enc_ln.bias"] = layernorm_backward(ds2, cache.enc_ln)     # 3.
    df, grads["ffn2.W"], grads["ffn2.b"] = linear_backward(dsum, cache.ffn2)
    ds_ffn, grads["ffn1.W"], grads["ffn1.b"] = linear_backward(_relu_backward(df, cache.ffn_positive), cache.ffn1)
    ds = dsum + ds_ffn                                               # residual + FFN path
    de_enc, enc_grads = blsam_backward(ds, dM0, cache.encoder)       # 2. a = BLSAM(e), M_0
    grads.update(with_prefix("enc_fwd", strip_prefix("fwd", enc_grads)))
    grads.update(with_prefix("enc_bwd", strip_prefix("bwd", enc_grads)))
    grads["enc_mix.W"], grads["enc_mix.b"] = enc_grads["mix.W"], enc_grads["mix.b"]
    dE = np.zeros_like(params["embed.E"])                            # 1. e = E[x]: residual + encoder
    np.add.at(dE, cache.tokens, ds + de_enc)
    grads["embed.E"] = dE
    return {name: grads[name] for name in params}


def lsam_seq2seq_autodiff(tparams: Mapping[str, ad.Tensor], tokens: np.ndarray, config: LSAMSeq2SeqConfig) -> ad.Tensor:
    """Autodiff twin of lsam_seq2seq_forward: logits (T, B, V)."""
    tokens = _check_tokens(tokens, config.V)
    e = ad.getitem(tparams["embed.E"], tokens)                       # (T, B, D)
    a, M0 = blsam_autodiff(e, {**with_prefix("fwd", strip_prefix("enc_fwd", tparams)),
                               **with_prefix("bwd", strip_prefix("enc_bwd", tparams)),
                               "mix.W": tparams["enc_mix.W"], "mix.b": tparams["enc_mix.b"]})
    s = e + a
    g = linear_autodiff(ad.relu(linear_autodiff(s, tparams["ffn1.W"], tparams["ffn1.b"])), tparams["ffn2.W"],
                        tparams["ffn2.b"])
    s2 = layernorm_autodiff(s + g, tparams["enc_ln.gain"], tparams["enc_ln.bias"], config.ln_eps)
    hd, _ = lsam_autodiff(s2, strip_prefix("dec", tparams), None, M0)
    y = layernorm_autodiff(ad.relu(linear_autodiff(hd, tparams["dec_out.W"], tparams["dec_out.b"])),
                           tparams["dec_ln.gain"], tparams["dec_ln.bias"], config.ln_eps)
    return linear_autodiff(y, tparams["logits.W"], tparams["logits.b"])


class LSAMSeq2Seq:
    """The LSAM sequence model (module docstring). Model protocol: params, forward(tokens) ->
    (logits (T, B, V), cache), backward(dlogits, cache) -> grads, forward_autodiff(tparams, tokens).
    cache.memory is the encoder memory M_0 handed to the decoder."""

    def __init__(self, config: LSAMSeq2SeqConfig, rng: np.random.Generator | None = None):
        if not isinstance(config, LSAMSeq2SeqConfig):
            raise ValueError(f"config must be an LSAMSeq2SeqConfig; got {type(config).__name__}")
        self.config = config
        self.params = lsam_seq2seq_init(np.random.default_rng(0) if rng is None else rng, config)

    def _check(self) -> None:
        check_params(self.params, lsam_seq2seq_param_shapes(self.config))
        for name, value in self.params.items():
            check_finite(f"parameter {name}", value)

    def forward(self, tokens):
        self._check()
        return lsam_seq2seq_forward(tokens, self.params, self.config)

    def backward(self, dlogits, cache: LSAMSeq2SeqCache) -> dict:
        return lsam_seq2seq_backward(dlogits, cache, self.params)

    def forward_autodiff(self, tparams: Mapping[str, ad.Tensor], tokens) -> ad.Tensor:
        self._check()
        return lsam_seq2seq_autodiff(tparams, tokens, self.config)
