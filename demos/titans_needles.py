"""Titans multi-needle retrieval (spec titans_mnm.md A6.2, task T2): one LMM layer trained on
sequences of 64 tokens retrieves the value of a queried key hidden in sequences up to 2048 tokens;
MAG against an attention-only model with the same sliding window.

    python demos/titans_needles.py          # 44 min wall, 16 min CPU, on 2 busy cores (measured);
                                            # --models lmm: the main result alone, 12 min wall
    python demos/titans_needles.py --quick  # 10 s CPU, 30 s wall at load ~7 (measured); the tests run this

The task (A6.2, T2). Vocabulary: filler ids 0..31, keys 32..47, values 48..63, MARK = 64, QUERY = 65.
A sequence of T tokens is uniform filler with n = 4 needles [MARK, key, value] (distinct keys,
values with replacement) at distinct sorted start positions from {0, 3, 6, ...} below T - 6; it
ends with [QUERY, key_j] for a uniform j, and the label is value_j (16 classes, chance 1/16).
Cross-entropy at the last position only.

Models (all engines manual; float32; Adam 3e-3, global-norm clip 1.0, batch 16, T = 64):
    lmm   embedding (66 x 32, N(0, 0.25)) -> one LMM layer with the A5 CPU defaults (d = 32, two-layer
          SiLU memory with h = 64, K_c = 4, theta_max = 0.1, chunk b) -> a linear head
          (N(0, 0.01)) on [y_T, e_T], the raw memory read-out and the embedding of the last token.
    mag   TitansModel(variant="mag"): one-hot -> W_in -> 4 persistent tokens -> one pre-norm block
          whose mixer gates sliding-window attention (w = 16, 2 heads) with the LMM (A27-A30), then
          SwiGLU -> RMSNorm -> 16 logits at the last position.
    attn  the same block without the memory branch (the attention-only baseline, same window,
          same persistent tokens). Neither attention model has positional encodings.
Evaluation: accuracy on 64 fresh sequences per length (fixed per length and seed).

Measured (seed 0, 800 steps each, one run at load ~7 on 2 cores):
    model  T=64   T=256  T=1024 T=2048  training (wall)  loss first -> last tenth
    lmm    1.000  1.000  0.984  0.984   12.2 min         2.854 -> 0.017
    mag    0.094  0.078  0.016  0.078   21.4 min         3.364 -> 2.776
    attn   0.156  0.078  0.109  0.156    5.5 min         3.356 -> 2.685
The LMM layer reproduces the spec (98.4 / 100 / 95.3 / 95.3 %: retrieval generalises to 32x the
training length); it left chance at ~150 steps, reached 0.54 (training batches) at 300, 0.89 at 400
and 0.99-1.00 from 600 (the spec: 0.12 / 0.31 / 0.62 / 1.00 at 100 / 300 / 400 / 500). The attention-only baseline stays near chance (1/16 = 0.0625; 64 evaluation sequences give
about +-0.03), as the spec predicts for a 16-token window. MAG did NOT learn in 800 steps either: its
loss stayed near ln 16 = 2.77. The spec lists MAG on T2 as an unmeasured extension.

Why MAG does not learn here (short runs, seed 0, T = 64, lr 3e-3 unless stated; accuracies are on
training batches, mean over 50 steps). It is neither a bug (the MAG code matches A27-A30 line by
line and passes the gradchecks) nor gradient scale (at init the LMM parameters of MAG get gradient
norms 0.6-1.0 against W_out's 1.5; Adam is scale-free anyway). The memory read-out reaches the logits
only through products with input-dependent factors, as the spec defines them:
  1. The LMM output gate (A21), (r_t * SiLU(x_t W_gate)) W_o, has no bias, and at the query position
     x_t is the asked key: each key switches on a different subset of the read-out's channels (at
     init the per-channel mean/std of the gate over the 16 key tokens is 0.34). Ablation on the
     `lmm` model above: its head on y_T alone (no e_T shortcut) learns fast (0.68 at steps 250-300, so
     the [y_T, e_T] shortcut is not what MAG misses); with the output path (A20-A21) before the head
     it stays at ln 16 for 550 steps and reaches only 0.42 at steps 750-800; with the RMSNorm of (A20)
     but no gate it learns like the raw read-out (0.56 at 250-300); with the gate but no RMSNorm it is
     stuck (0.07 at 250-300). Adam lr 1e-2 starts it at ~300-400 steps.
  2. The MAG gate (A30) multiplies sigma(RMSNorm(m)) by RMSNorm(attention output), whose sign per
     channel at the last position changes with the window's contents (per-channel mean/std 0.43 at
     init), so the memory only rescales channels whose meaning varies from sequence to sequence.
TitansModel(variant="lmm") (the same block without attention, so only factor 1) was also at chance
after 300 steps. Settings tried on MAG, none left chance: lr 5e-3 (500 steps), lr 1e-2 (nan at step
102), N_p = 0 and lr 1e-3 (on the lmm-variant block, 300 steps: at most 0.09), attention output
bias b_o = 1 at init so that factor 2 starts constant and positive (500 steps). With 1500 steps MAG reaches 0.11
on training batches and 0.125 at T = 64 (128 sequences), but that is its attention branch: 0.37
when the asked needle is within 14 tokens of the query, 0.06 beyond (0.148 / 0.37 / 0.09 with b_o = 1).
A fixed bias +2 inside the SiLU of (A21) makes the `lmm` + output-path ablation learn again (0.49 at
steps 250-300), so a bias in the output gate (not in the spec) is the likely remedy; an
architecture change, not a demo setting, so the MAG defaults here are unchanged.

Writes titans_needles.png to --out: accuracy against sequence length, accuracy against the distance
from the asked needle to the query (all evaluation lengths pooled: the memory at work beyond the
attention window), and the training curves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import minimem  # noqa: F401  (first: single-threaded BLAS before NumPy loads, see minimem/__init__.py)
import numpy as np

from minimem import init
from minimem.demo_options import config_from_args, config_parser
from minimem.demo_plots import running_mean
from minimem.memory.titans import TitansLMMConfig, lmm_init, lmm_layer_backward, lmm_layer_forward
from minimem.memory.titans_arch import TitansConfig, TitansModel
from minimem.memory.titans_blocks import (
    attention_tf_backward, attention_tf_forward, rmsnorm_backward, rmsnorm_forward, sliding_window_mask,
    swiglu_backward, swiglu_forward,
)
from minimem.nn.attention import attention_init
from minimem.nn.linear import strip_prefix, with_prefix
from minimem.nn.losses import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from minimem.optim import Adam
from minimem.train import TrainConfig, train

FILLER, KEYS, VALUES = 32, 16, 16            # id ranges: filler 0..31, keys 32..47, values 48..63
MARK, QUERY = 64, 65
VOCAB = 66
MODELS = ("lmm", "mag", "attn", "mal")


@dataclass(frozen=True)
class Config:
    seed: int = 0
    models: str = "lmm,mag,attn"       # which models to train, comma-separated (lmm, mag, attn, mal)
    steps: int = 800                   # training batches per model
    batch: int = 16                    # sequences per batch
    T: int = 64                        # training length
    needles: int = 4                   # [MARK, key, value] triples per sequence
    D: int = 32                        # model width (and per-head memory width d)
    chunk: int = 1                     # LMM chunk size b (1 = the sequential model of the spec)
    window: int = 16                   # attention window w (mag, attn)
    N_p: int = 4                       # persistent tokens (mag, attn)
    lr: float = 3e-3                   # Adam learning rate
    clip: float = 1.0                  # global gradient-norm clip
    lengths: str = "64,256,1024,2048"  # evaluation lengths, comma-separated
    eval_sequences: int = 64           # fresh sequences per evaluation length
    eval_batch: int = 16               # sequences per forward pass when evaluating
    eval_every: int = 100              # steps between evaluations at the training length
    log_every: int = 50                # steps between progress lines
    dtype: str = "float32"             # float32 (speed) or float64
    out: str = "."                     # directory for the PNGs
    no_plots: bool = False             # skip the PNGs
    quick: bool = False                # seconds: short runs on short sequences


QUICK = dict(steps=60, batch=16, T=16, needles=1, lengths="16,32", eval_sequences=32, eval_every=30,
             log_every=20, chunk=4, lr=0.01)


def parse_config(argv=None) -> Config:
    """The Config the command line asks for (minimem.demo_options: unknown flags are errors,
    --quick swaps in QUICK for every field not given)."""
    parser = config_parser(Config, __doc__, QUICK)
    return config_from_args(Config, parser.parse_args(argv), QUICK)


def check_config(cfg: Config) -> tuple[list[str], list[int]]:
    """The model names and evaluation lengths, or ValueError naming the bad option."""
    models = [m.strip() for m in cfg.models.split(",") if m.strip()]
    if not models or any(m not in MODELS for m in models):
        raise ValueError(f"--models must list some of {MODELS}; got {cfg.models!r}")
    try:
        lengths = [int(part) for part in cfg.lengths.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--lengths must be comma-separated integers; got {cfg.lengths!r}") from None
    shortest = 3 * cfg.needles + 6
    if not lengths or min(lengths + [cfg.T]) < shortest:
        raise ValueError(f"every length (--T, --lengths) must be >= 3 * needles + 6 = {shortest}")
    if not 1 <= cfg.needles <= KEYS:
        raise ValueError(f"--needles must be in 1..{KEYS}; got {cfg.needles}")
    if cfg.dtype not in ("float32", "float64"):
        raise ValueError(f"--dtype must be float32 or float64; got {cfg.dtype!r}")
    return models, lengths


# ----------------------------------------------------------------- the task
def make_needles(rng: np.random.Generator, B: int, T: int, n: int = 4):
    """B sequences of the multi-needle task. Returns ids (T, B) int, labels (B,) in 0..15 and the
    distance (B,) from the asked needle's value token to the last token (T - 1 - its position)."""
    ids = rng.integers(0, FILLER, size=(T, B))
    slots = np.arange(0, T - 6, 3)                                 # candidate starts, below T - 6
    keys = np.stack([rng.choice(KEYS, size=n, replace=False) for _ in range(B)])     # (B, n) distinct
    values = rng.integers(0, VALUES, size=(B, n))                  # with replacement
    starts = np.sort(np.stack([rng.choice(slots, size=n, replace=False) for _ in range(B)]), axis=1)
    cols = np.arange(B)[:, None]
    ids[starts, cols] = MARK
    ids[starts + 1, cols] = FILLER + keys
    ids[starts + 2, cols] = FILLER + KEYS + values
    asked = rng.integers(0, n, size=B)
    ids[T - 2] = QUERY
    ids[T - 1] = FILLER + keys[np.arange(B), asked]
    return ids, values[np.arange(B), asked], T - 1 - (starts[np.arange(B), asked] + 2)


def one_hot(ids: np.ndarray, dtype) -> np.ndarray:
    return (ids[..., None] == np.arange(VOCAB)).astype(dtype)      # (T, B, VOCAB)


# ----------------------------------------------------------------- the three models
class NeedleLMM:
    """Embedding -> one LMM layer (raw read-out, no output path) -> linear head on [y_T, e_T].

    Parameters: embed.E (VOCAB, D); lmm.* (titans.py names); head.W (C + D, 16), head.b (16,).
    forward(ids (T, B)) -> logits (B, 16) at the last position; backward(dlogits, cache) -> grads."""

    def __init__(self, cfg: Config, rng: np.random.Generator, dtype):
        self.config = TitansLMMConfig(D=cfg.D, output_path=False, chunk=cfg.chunk)
        C = self.config.H * self.config.head_width
        self.params = {"embed.E": init.normal(rng, (VOCAB, cfg.D), std=0.5, dtype=dtype),      # N(0, 0.25)
                       **with_prefix("lmm", lmm_init(rng, self.config, dtype)),
                       "head.W": init.normal(rng, (C + cfg.D, VALUES), std=0.1, dtype=dtype),  # N(0, 0.01)
                       "head.b": np.zeros(VALUES, dtype=dtype)}

    def forward(self, ids):
        x = self.params["embed.E"][ids]                            # (T, B, D)
        y, _, layer_cache = lmm_layer_forward(x, strip_prefix("lmm", self.params), self.config)   # (T, B, C)
        features = np.concatenate([y[-1], x[-1]], axis=-1)         # (B, C + D)
        logits = features @ self.params["head.W"] + self.params["head.b"]
        return logits, (ids, x, y, features, layer_cache)

    def backward(self, dlogits, cache) -> dict:
        ids, x, y, features, layer_cache = cache
        C = y.shape[-1]
        dfeatures = dlogits @ self.params["head.W"].T               # (B, C + D)
        dy = np.zeros_like(y)
        dy[-1] = dfeatures[:, :C]
        dx, lmm_grads, _ = lmm_layer_backward(dy, layer_cache)
        dx[-1] += dfeatures[:, C:]
        dE = np.zeros_like(self.params["embed.E"])
        np.add.at(dE, ids.reshape(-1), dx.reshape(-1, dx.shape[-1]))
        grads = {"embed.E": dE, **with_prefix("lmm", lmm_grads),
                 "head.W": features.T @ dlogits, "head.b": dlogits.sum(axis=0)}
        return {name: grads[name] for name in self.params}


class NeedleTitans:
    """TitansModel (one block of the given variant) on one-hot tokens, scored at the last position."""

    variant = "mag"

    def __init__(self, cfg: Config, rng: np.random.Generator, dtype):
        self.model = TitansModel(TitansConfig(
            variant=self.variant, X=VOCAB, Y=VALUES, D=cfg.D, layers=1, N_p=cfg.N_p, window=cfg.window,
            attn_heads=2, memory=TitansLMMConfig(D=cfg.D, chunk=cfg.chunk)), rng=rng, dtype=dtype)
        self.params = self.model.params
        self.dtype = dtype

    def forward(self, ids):
        out, cache = self.model.forward(one_hot(ids, self.dtype))  # (T, B, 16)
        return out[-1], (out.shape, cache)

    def backward(self, dlogits, cache) -> dict:
        shape, model_cache = cache
        dout = np.zeros(shape, dtype=dlogits.dtype)
        dout[-1] = dlogits
        return self.model.backward(dout, model_cache)


class NeedleAttention:
    """The MAG model without its memory branch: one-hot -> W_in -> persistent tokens -> one pre-norm
    block z <- z + SW-Attn(RMSNorm(z)); z <- z + SwiGLU(RMSNorm(z)) -> RMSNorm -> W_out, with the
    window mask of (A28). Parameter names as TitansModel's."""

    def __init__(self, cfg: Config, rng: np.random.Generator, dtype):
        D, F = cfg.D, 2 * cfg.D
        self.N_p, self.window, self.heads, self.dtype = cfg.N_p, cfg.window, 2, dtype
        self.params = {"W_in": init.xavier_uniform(rng, (VOCAB, D), dtype=dtype)}
        if cfg.N_p:
            self.params["persist.P"] = init.normal(rng, (cfg.N_p, D), std=0.02, dtype=dtype)
        layer = {"norm1.g": np.ones(D, dtype=dtype),
                 **with_prefix("attn", attention_init(rng, D, self.heads, dtype=dtype)),
                 "norm2.g": np.ones(D, dtype=dtype),
                 "ff.W_gate": init.normal(rng, (D, F), std=1.0 / np.sqrt(D), dtype=dtype),
                 "ff.W_up": init.normal(rng, (D, F), std=1.0 / np.sqrt(D), dtype=dtype),
                 "ff.W_down": init.normal(rng, (F, D), std=1.0 / np.sqrt(F), dtype=dtype)}
        self.params.update(with_prefix("layers.0", layer))
        self.params.update({"norm_f.g": np.ones(D, dtype=dtype),
                            "W_out": init.xavier_uniform(rng, (D, VALUES), dtype=dtype)})

    def forward(self, ids):
        p, N = self.params, self.N_p
        x = one_hot(ids, self.dtype)
        z = x @ p["W_in"]                                          # (T, B, D)
        if N:
            z = np.concatenate([np.broadcast_to(p["persist.P"][:, None], (N,) + z.shape[1:]), z], axis=0)
        mask = sliding_window_mask(z.shape[0], self.window, N)    # (A28)
        h, c1 = rmsnorm_forward(z, p["layers.0.norm1.g"])
        a, ca = attention_tf_forward(h, strip_prefix("layers.0.attn", p), self.heads, mask)
        z = z + a
        h, c2 = rmsnorm_forward(z, p["layers.0.norm2.g"])
        f, cf = swiglu_forward(h, strip_prefix("layers.0.ff", p))
        z = z + f
        hf, c3 = rmsnorm_forward(z[-1], p["norm_f.g"])             # the last position only
        return hf @ p["W_out"], (x, z.shape, c1, ca, c2, cf, c3, hf)

    def backward(self, dlogits, cache) -> dict:
        p, N = self.params, self.N_p
        x, shape, c1, ca, c2, cf, c3, hf = cache
        grads = {"W_out": hf.T @ dlogits}
        dhf, grads["norm_f.g"] = rmsnorm_backward(dlogits @ p["W_out"].T, c3)
        dz = np.zeros(shape, dtype=dlogits.dtype)
        dz[-1] = dhf
        dh, ff_grads = swiglu_backward(dz, cf)
        dh, grads["layers.0.norm2.g"] = rmsnorm_backward(dh, c2)
        dz = dz + dh
        dh, attn_grads = attention_tf_backward(dz, ca)
        dh, grads["layers.0.norm1.g"] = rmsnorm_backward(dh, c1)
        dz = dz + dh
        grads.update(with_prefix("layers.0.attn", attn_grads))
        grads.update(with_prefix("layers.0.ff", ff_grads))
        if N:
            grads["persist.P"] = dz[:N].sum(axis=1)
        grads["W_in"] = x.reshape(-1, VOCAB).T @ dz[N:].reshape(-1, dz.shape[-1])
        return {name: grads[name] for name in p}


class NeedleMAL(NeedleTitans):
    """TitansModel(variant="mal"): the LMM as a residual layer before the window attention (A31)."""

    variant = "mal"


BUILDERS = {"lmm": NeedleLMM, "mag": NeedleTitans, "mal": NeedleMAL, "attn": NeedleAttention}


# ----------------------------------------------------------------- training and evaluation
def loss_fn(logits, labels):
    """Mean cross-entropy over the batch (nats) and its gradient."""
    loss, cache = softmax_cross_entropy_forward(logits, labels, reduction="batch")
    return float(loss), softmax_cross_entropy_backward(1.0, cache)


def accuracy(logits, labels) -> float:
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def evaluate(model, cfg: Config, T: int, details: bool = False):
    """Accuracy on cfg.eval_sequences fresh sequences of length T (the same sequences for every
    model and call); with details=True also (correct (S,) bool, distance (S,) of the asked needle)."""
    rng = np.random.default_rng([cfg.seed, 7_000_003, T])
    correct, distances = [], []
    for start in range(0, cfg.eval_sequences, cfg.eval_batch):
        B = min(cfg.eval_batch, cfg.eval_sequences - start)
        ids, labels, distance = make_needles(rng, B, T, cfg.needles)
        logits, _ = model.forward(ids)
        correct.append(np.argmax(logits, axis=-1) == labels)
        distances.append(distance)
    correct = np.concatenate(correct)
    return (float(np.mean(correct)), correct, np.concatenate(distances)) if details else float(np.mean(correct))


def run_model(name: str, cfg: Config, lengths: list[int]) -> dict:
    dtype = np.dtype(cfg.dtype)
    model = BUILDERS[name](cfg, np.random.default_rng(cfg.seed), dtype)
    count = sum(p.size for p in model.params.values())
    print(f"--- {name}: {count} parameters, trained on T={cfg.T}, chunk b={cfg.chunk}")
    started = time.perf_counter()

    def batch_fn(rng, step):
        ids, labels, _ = make_needles(rng, cfg.batch, cfg.T, cfg.needles)
        return ids, labels

    result = train(model, Adam(model.params, lr=cfg.lr), batch_fn, loss_fn,
                   TrainConfig(steps=cfg.steps, log_every=cfg.log_every, eval_every=cfg.eval_every,
                               clip=cfg.clip, seed=cfg.seed),
                   eval_fn=lambda m: {f"acc@{cfg.T}": evaluate(m, cfg, cfg.T)},
                   metric_fn=accuracy, metric_name="acc")
    train_seconds = time.perf_counter() - started
    final, by_distance = {}, ([], [])
    for T in lengths:
        t0 = time.perf_counter()
        final[T], correct, distance = evaluate(model, cfg, T, details=True)
        by_distance[0].append(correct)
        by_distance[1].append(distance)
        print(f"{name}: accuracy at T={T}: {final[T]:.3f} ({cfg.eval_sequences} sequences, "
              f"{time.perf_counter() - t0:.1f}s)")
    return {"model": name, "train_seconds": train_seconds,
            "correct": np.concatenate(by_distance[0]), "distance": np.concatenate(by_distance[1]),
            "seconds": time.perf_counter() - started, "losses": result.losses, "metrics": result.metrics,
            "evals": result.evals, "accuracy": final, "first_loss": float(np.mean(result.losses[:5])),
            "final_loss": float(np.mean(result.losses[-max(1, cfg.steps // 10):]))}


# ----------------------------------------------------------------- plots
def distance_bins(longest: int) -> list[tuple[int, int]]:
    """[0, w), [w, 4w), ... bins of needle distance up to the longest evaluated sequence (w = 16)."""
    edges = [0, 16]
    while edges[-1] < longest:
        edges.append(edges[-1] * 4)
    return list(zip(edges[:-1], edges[1:]))


def plot(cfg: Config, runs: list, lengths: list[int]) -> list[str]:
    """The PNG; matplotlib is imported here so that minimem never needs it."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    path = str(out / "titans_needles.png")
    labels = {"lmm": "LMM (one layer)", "mag": f"MAG (w={cfg.window})", "attn": f"attention only (w={cfg.window})",
              "mal": f"MAL (w={cfg.window})"}
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.5))
    bins = distance_bins(max(lengths))
    for run in runs:
        color, label = f"C{MODELS.index(run['model'])}", labels[run["model"]]
        left.plot(lengths, [run["accuracy"][T] for T in lengths], "o-", color=color, label=label)
        centres, accs = [], []
        for low, high in bins:
            inside = (run["distance"] >= low) & (run["distance"] < high)
            if inside.any():
                centres.append(np.sqrt(max(low, 1) * high))
                accs.append(np.mean(run["correct"][inside]))
        middle.plot(centres, accs, "o-", color=color, label=label)
        steps, smooth, _ = running_mean(run["losses"], 25)
        right.plot(steps, smooth, color=color, label=label)
    for ax in (left, middle):
        ax.axhline(1 / VALUES, color="0.5", ls="--", lw=1, label="chance 1/16")
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy")
    left.axvline(cfg.T, color="0.7", ls=":", lw=1, label=f"training length {cfg.T}")
    left.set_xticks(lengths, [str(T) for T in lengths])
    left.set_xlabel(f"sequence length T ({cfg.eval_sequences} fresh sequences each)")
    left.legend(fontsize=8)
    middle.axvline(cfg.window, color="0.7", ls=":", lw=1, label=f"attention window {cfg.window}")
    middle.set_xticks([high for _, high in bins], [str(high) for _, high in bins])
    middle.set_xlabel("distance from the asked value to the query (bins ending at the ticks; all lengths)")
    middle.legend(fontsize=8)
    right.axhline(np.log(VALUES), color="0.5", ls="--", lw=1, label="ln 16 (chance)")
    right.set_xlabel(f"training step (batches of {cfg.batch}, T={cfg.T})")
    right.set_ylabel("cross-entropy (nats, running mean)")
    right.legend(fontsize=8)
    fig.suptitle(f"Multi-needle retrieval: {cfg.needles} [MARK, key, value] needles, [QUERY, key] at the end")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def main(argv=None) -> dict:
    cfg = parse_config(argv)
    models, lengths = check_config(cfg)
    started = time.perf_counter()
    runs = [run_model(name, cfg, lengths) for name in models]
    print("accuracy by length: " + "  ".join(f"T={T}" for T in lengths))
    for run in runs:
        print(f"  {run['model']:<5s} " + "  ".join(f"{run['accuracy'][T]:.3f}" for T in lengths)
              + f"   (trained {run['train_seconds'] / 60:.1f} min, loss {run['first_loss']:.3f} -> "
                f"{run['final_loss']:.3f})")
    paths = [] if cfg.no_plots else plot(cfg, runs, lengths)
    seconds = time.perf_counter() - started
    print(f"done in {seconds / 60:.1f} min")
    for path in paths:
        print("wrote", path)
    return {"runs": runs, "lengths": lengths, "seconds": seconds, "plots": paths}


if __name__ == "__main__":
    main()
