"""Titans forgetting (alpha) and momentum (eta), without training (spec titans_mnm.md A6.2, task T3):
a stream of random key-value pairs is written into a linear LMM, then the pair written i steps ago
is read back, for several constant forgetting gates alpha and momenta eta.

    python demos/titans_forgetting.py          # 8 s on 2 busy cores (measured); the table below
    python demos/titans_forgetting.py --quick  # 3 s (measured, mostly the plot); the tests run this
                                               # and check the recency curve and the momentum delay

Setup (A6.2, T3): per sequence, T = 256 pairs of l2-normalised Gaussian keys and values (d = 32,
B = 32 independent sequences, default_rng(seed)), written one per token by the sequential LMM
(A12-A14, chunk b = 1) into a linear memory M_0 = 0 with constant gates alpha, eta and step
theta (1 - eta) (so the total step given to one surprise, summed over its momentum tail, is theta
whatever eta is). After the stream every key is read with the final memory (A15). Scores against
the age i (the pair written i steps before the end; i = 0 is the last pair): the cosine between the
read-out and the value, and the nearest-value accuracy among all T values of the sequence. "Pairs
recalled" is the expected number of correctly recalled pairs, sum_i accuracy(i).

Measured (seed 0, theta = 0.5, mean over the 32 sequences):
    eta  alpha  cosine at age 0 / 4 / 16 / 32 / 64 / 255     pairs recalled (of 256)
    0    0      1.00 / 0.87 / 0.61 / 0.37 / 0.09 / -0.01     25.8
    0    0.02   1.00 / 0.89 / 0.59 / 0.28 / 0.01 / -0.02     21.6
    0    0.1    1.00 / 0.87 / 0.32 / 0.04 / -0.04 / -0.01    12.0
    0.9  0      0.08 / 0.55 / 0.76 / 0.56 / 0.16 / 0.02      32.4
    0.9  0.02   0.16 / 0.72 / 0.80 / 0.54 / 0.03 / -0.02     31.8
    0.9  0.1    0.41 / 0.88 / 0.75 / 0.25 / -0.04 / -0.04    23.6
With --theta 0.25 the pairs recalled are 41.8 / 29.2 / 13.6 (eta 0) and 47.7 / 38.2 / 25.3 (eta 0.9).

What it shows. Without momentum every write is the delta rule; with theta = 0.5 a new pair is
stored exactly (cosine 1.00 at i = 0) and each later write erases part of it, so even alpha = 0
gives a recency curve: the d x d matrix holds only about d pairs, and past that the old ones are
overwritten (they do not degrade "uniformly" as the spec's one-line expectation puts it; at a
smaller step, --theta 0.25, the alpha = 0 curve is flatter and reaches further back). Forgetting
(alpha > 0) shortens the memory further, since every step also shrinks all stored pairs by
(1 - alpha): with alpha = 0.1 little older than ~20 tokens survives (cosine 0.32 at i = 16, 0.04 at
i = 32), while the newest pairs are recalled as before. At a constant rate and random keys it buys
nothing, because the delta rule already makes room; its use in the trained model is a
data-dependent gate that clears the memory when the context changes. Momentum spreads each write
over the following ~1/(1 - eta) tokens: with eta = 0.9 the newest pairs are not yet written (cosine
0.08 at i = 0 without forgetting), recall peaks 8-16 tokens back ("past surprise" keeps writing after
the token is gone), and more pairs are recalled in total (32.4 against 25.8). There forgetting does
trade old pairs for recent ones: alpha = 0.1 lifts the cosine at i = 0 to 0.41 and cuts the pairs
recalled to 23.6.

Writes titans_forgetting.png (cosine and accuracy against age, one panel per eta) to --out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import minimem  # noqa: F401  (first: single-threaded BLAS before NumPy loads, see minimem/__init__.py)
import numpy as np

from minimem.demo_options import config_from_args, config_parser
from minimem.memory.titans_lmm import lmm_scan_forward
from minimem.memory.titans_memory import mem_read_forward


@dataclass(frozen=True)
class Config:
    seed: int = 0
    T: int = 256                       # pairs written per sequence
    d: int = 32                        # key and value width
    B: int = 32                        # independent sequences averaged
    theta: float = 0.5                 # total inner step; the per-token step is theta (1 - eta)
    alphas: str = "0,0.02,0.1"         # constant forgetting gates, comma-separated
    etas: str = "0,0.9"                # constant momenta, comma-separated
    out: str = "."                     # directory for the PNG
    no_plots: bool = False             # skip the PNG
    quick: bool = False                # a shorter stream, fewer sequences


QUICK = dict(T=96, B=8)
AGES = (0, 4, 16, 32, 64)              # ages printed in the table (plus the oldest, T - 1)


def parse_config(argv=None) -> Config:
    """The Config the command line asks for (minimem.demo_options: unknown flags are errors,
    --quick swaps in QUICK for every field not given)."""
    parser = config_parser(Config, __doc__, QUICK)
    return config_from_args(Config, parser.parse_args(argv), QUICK)


def parse_gates(name: str, text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--{name} must be a comma-separated list of numbers; got {text!r}") from None
    if not values or any(not 0.0 <= value < 1.0 for value in values):
        raise ValueError(f"--{name} must list gates in [0, 1); got {text!r}")
    return values


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_stream(cfg: Config):
    """Keys and values (T, B, H=1, d), l2-normalised rows."""
    rng = np.random.default_rng(cfg.seed)
    K = unit_rows(rng.normal(size=(cfg.T, cfg.B, 1, cfg.d)))
    V = unit_rows(rng.normal(size=(cfg.T, cfg.B, 1, cfg.d)))
    return K, V


def recall_by_age(K: np.ndarray, V: np.ndarray, alpha: float, eta: float, theta: float) -> dict:
    """Write the stream with constant gates, read every key with the final memory.

    Returns cosine and accuracy indexed by age (T,), age i = the pair written at step T - 1 - i."""
    T, B, _, d = K.shape
    M0, S0 = (np.zeros((B, 1, d, d)),), (np.zeros((B, 1, d, d)),)
    gate = np.ones((T, B, 1))
    _, (M, _), _ = lmm_scan_forward(M0, S0, K, K, V, alpha * gate, eta * gate, theta * (1.0 - eta) * gate,
                                    chunk=1)                       # (A12)-(A14), token by token
    y, _ = mem_read_forward(M, np.moveaxis(K, 0, 2))               # (A15): every key, (B, 1, T, d)
    Vb = np.moveaxis(V, 0, 2)                                      # (B, 1, T, d)
    cosine = np.sum(y * Vb, axis=-1) / np.maximum(np.linalg.norm(y, axis=-1), 1e-12)   # (B, 1, T)
    similarity = y @ np.swapaxes(Vb, -1, -2)                       # (B, 1, T, T)
    correct = np.argmax(similarity, axis=-1) == np.arange(T)      # (B, 1, T)
    return {"cos": cosine.mean(axis=(0, 1))[::-1], "acc": correct.mean(axis=(0, 1))[::-1]}


def plot(cfg: Config, results: list) -> list[str]:
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
    path = str(out / "titans_forgetting.png")
    etas = sorted({r["eta"] for r in results})
    alphas = sorted({r["alpha"] for r in results})
    fig, axes = plt.subplots(2, len(etas), figsize=(5.5 * len(etas), 6.5), sharex=True, squeeze=False)
    ages = np.arange(cfg.T)
    for col, eta in enumerate(etas):
        for r in results:
            if r["eta"] != eta:
                continue
            style = dict(color=f"C{alphas.index(r['alpha'])}", lw=1.2, label=f"alpha {r['alpha']:g}")
            axes[0, col].plot(ages, r["cos"], **style)
            axes[1, col].plot(ages, r["acc"], **style)
        axes[0, col].set_title(f"eta {eta:g} (step theta (1 - eta) = {cfg.theta * (1 - eta):g})", fontsize=10)
        axes[0, col].set_ylabel("cosine(read-out, value)")
        axes[1, col].set_ylabel("nearest-value accuracy")
        axes[1, col].set_xlabel("age i: pair written i steps before the end")
        for row in range(2):
            axes[row, col].set_xscale("symlog", linthresh=4)
            ticks = [i for i in (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if i < cfg.T]
            axes[row, col].set_xticks(ticks, [str(i) for i in ticks])
            axes[row, col].axvline(cfg.d, color="0.6", ls=":", lw=1)
            axes[row, col].set_ylim(-0.1 if row == 0 else 0, 1.05)
        axes[0, col].legend(fontsize=8)
    fig.suptitle(f"Titans LMM, linear memory d={cfg.d}: recall of a stream of {cfg.T} pairs by age "
                 f"(mean of {cfg.B} streams; dotted: i = d)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def main(argv=None) -> dict:
    cfg = parse_config(argv)
    alphas, etas = parse_gates("alphas", cfg.alphas), parse_gates("etas", cfg.etas)
    if cfg.T < 2 or cfg.B < 1 or cfg.d < 1 or not cfg.theta > 0:
        raise ValueError(f"need T >= 2, B >= 1, d >= 1 and theta > 0; got T={cfg.T}, B={cfg.B}, d={cfg.d}, "
                         f"theta={cfg.theta}")
    started = time.perf_counter()
    K, V = make_stream(cfg)
    ages = [i for i in AGES if i < cfg.T] + [cfg.T - 1]
    print(f"recall of the pair written i steps ago; T={cfg.T}, d={cfg.d}, {cfg.B} streams, theta={cfg.theta:g}")
    print("eta   alpha  cosine at i = " + " / ".join(str(i) for i in ages) + "   pairs recalled")
    results = []
    for eta in etas:
        for alpha in alphas:
            r = recall_by_age(K, V, alpha, eta, cfg.theta)
            recalled = float(np.sum(r["acc"]))
            results.append({"alpha": alpha, "eta": eta, "cos": r["cos"], "acc": r["acc"], "recalled": recalled})
            print(f"{eta:<5g} {alpha:<6g} " + " / ".join(f"{r['cos'][i]:.2f}" for i in ages).ljust(42)
                  + f"{recalled:6.1f}")
    paths = [] if cfg.no_plots else plot(cfg, results)
    seconds = time.perf_counter() - started
    print(f"done in {seconds:.2f} s")
    for path in paths:
        print("wrote", path)
    return {"results": results, "seconds": seconds, "plots": paths}


if __name__ == "__main__":
    main()
