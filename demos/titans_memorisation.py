"""Titans test-time memorisation without any training (spec titans_mnm.md A6.2, task T1): N random
key-value pairs are written one per token into an LMM by its own inner gradient descent, then every
key is read back.

    python demos/titans_memorisation.py          # 2 s on 2 busy cores (measured, mostly the plot);
                                                 # the table below
    python demos/titans_memorisation.py --quick  # 2 s (measured); the tests run this and check the
                                                 # small-N recall and the capacity drop

Setup (A6.2): for every N a fresh rng = default_rng(seed) draws K (N, 32) then V (N, 32), each row
l2-normalised; the pairs are written in order by the sequential LMM (A12-A14, chunk b = 1) with
M_0 = 0 (linear memory), eta = alpha = 0 (no momentum, no forgetting) and a constant theta: each
write is the delta rule M <- M + 2 theta k^T (v - k M). Then every key is read with the final
memory, y = k M_T (A15), and scored by the mean cosine between read-out and value and the
nearest-value accuracy (argmax over the N stored values of y . v). The deep memory is an untrained
two-layer SiLU MLP (h = 64, W1 then W2 drawn Xavier-uniform after K and V from the same generator).

Measured (seed 0; identical to the spec's reference table, every cell):
    N                           8            16           32           64           128
    linear, theta 0.5   cos/acc 0.93 / 1.00  0.85 / 1.00  0.68 / 0.81  0.48 / 0.52  0.23 / 0.20
    linear, theta 0.25  cos/acc 0.93 / 1.00  0.87 / 1.00  0.75 / 1.00  0.60 / 0.72  0.36 / 0.34
    MLP,    theta 0.5   cos/acc 0.82 / 1.00  0.78 / 1.00  0.64 / 0.81  0.51 / 0.61  0.32 / 0.30
    MLP,    theta 0.25  cos/acc 0.64 / 1.00  0.67 / 1.00  0.59 / 0.84  0.52 / 0.70  0.38 / 0.38
(spec: linear rows as above; MLP theta 0.5 accuracy 1.00, 1.00, 0.81, 0.61, 0.30 - also as above.)
Recall is perfect while N is well below the key width d = 32 and falls once N exceeds it, as for any
d x d associative matrix; theta = 0.5 writes each pair exactly (k M = v for a unit key) but
overwrites older pairs harder than theta = 0.25. The untrained MLP memory is no better: depth pays
off only with trained projections (the paper's claim; demos/titans_needles.py).

Writes titans_memorisation.png (accuracy and mean cosine against N, and the read-out-value
similarities of one memory) to --out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import minimem  # noqa: F401  (first: single-threaded BLAS before NumPy loads, see minimem/__init__.py)
import numpy as np

from minimem import init
from minimem.demo_options import config_from_args, config_parser
from minimem.memory.titans_lmm import lmm_scan_forward
from minimem.memory.titans_memory import mem_read_forward


@dataclass(frozen=True)
class Config:
    seed: int = 0
    d: int = 32                        # key and value width
    h: int = 64                        # hidden width of the MLP memory
    pairs: str = "8,16,32,64,128"      # N values, comma-separated
    thetas: str = "0.5,0.25"           # constant inner step sizes, comma-separated
    show_pairs: int = 32               # N of the similarity panel
    out: str = "."                     # directory for the PNG
    no_plots: bool = False             # skip the PNG
    quick: bool = False                # fewer N (a fraction of a second)


QUICK = dict(pairs="8,32,128")


def parse_config(argv=None) -> Config:
    """The Config the command line asks for (minimem.demo_options: unknown flags are errors,
    --quick swaps in QUICK for every field not given)."""
    parser = config_parser(Config, __doc__, QUICK)
    return config_from_args(Config, parser.parse_args(argv), QUICK)


def parse_list(name: str, text: str, kind):
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--{name} must be a comma-separated list of {kind.__name__}s; got {text!r}") from None
    if not values or any(value <= 0 for value in values):
        raise ValueError(f"--{name} must list positive numbers; got {text!r}")
    return values


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def write_and_read(cfg: Config, N: int, theta: float, deep: bool) -> dict:
    """Write N pairs with the sequential LMM (no momentum, no forgetting), read every key back.

    Returns the mean cosine, the nearest-value accuracy and the (N, N) similarities y_i . v_j."""
    rng = np.random.default_rng(cfg.seed)
    K = unit_rows(rng.normal(size=(N, cfg.d)))                     # (N, d)
    V = unit_rows(rng.normal(size=(N, cfg.d)))
    if deep:                                                       # drawn after K and V (A6.2)
        M0 = (init.xavier_uniform(rng, (cfg.d, cfg.h))[None, None],
              init.xavier_uniform(rng, (cfg.h, cfg.d))[None, None])   # (B=1, H=1, ., .)
    else:
        M0 = (np.zeros((1, 1, cfg.d, cfg.d)),)
    S0 = tuple(np.zeros_like(W) for W in M0)
    keys, values = K[:, None, None], V[:, None, None]              # (T=N, B=1, H=1, d)
    zero = np.zeros((N, 1, 1))
    _, (M, _), _ = lmm_scan_forward(M0, S0, keys, keys, values, alpha=zero, eta=zero, theta=zero + theta,
                                    chunk=1, phi="silu")           # (A12)-(A14): N writes
    y, _ = mem_read_forward(M, K[None, None])                      # (A15): read every key, (1, 1, N, d)
    y = y[0, 0]
    cosine = np.sum(y * V, axis=1) / np.maximum(np.linalg.norm(y, axis=1), 1e-12)
    similarity = y @ V.T                                           # (N, N)
    accuracy = float(np.mean(np.argmax(similarity, axis=1) == np.arange(N)))
    return {"cos": float(np.mean(cosine)), "acc": accuracy, "similarity": similarity}


def plot(cfg: Config, rows: list, example: dict, Ns: list) -> list[str]:
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
    path = str(out / "titans_memorisation.png")
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for i, (memory, theta) in enumerate(sorted({(r["memory"], r["theta"]) for r in rows})):
        series = [r for r in rows if r["memory"] == memory and r["theta"] == theta]
        style = dict(color=f"C{i}", ls="-" if memory == "linear" else "--", marker="o", ms=4,
                     label=f"{memory}, theta {theta:g}")
        axes[0].plot([r["N"] for r in series], [r["acc"] for r in series], **style)
        axes[1].plot([r["N"] for r in series], [r["cos"] for r in series], **style)
    for ax, label in zip(axes[:2], ("nearest-value accuracy", "mean cosine(read-out, value)")):
        ax.axvline(cfg.d, color="0.6", ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(Ns, [str(N) for N in Ns])
        ax.set_xlabel("stored pairs N (dotted: key width d)")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.05)
    axes[0].legend(fontsize=8)
    image = axes[2].imshow(example["similarity"], cmap="RdBu_r", vmin=-1, vmax=1)
    axes[2].set_title(f"read-out . value, N={example['N']} (linear, theta {example['theta']:g}); "
                      f"acc {example['acc']:.2f}", fontsize=9)
    axes[2].set_xlabel("stored value j")
    axes[2].set_ylabel("key i read back")
    fig.colorbar(image, ax=axes[2], fraction=0.046)
    fig.suptitle(f"Titans LMM memorising N random pairs at test time (d={cfg.d}, no training)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def main(argv=None) -> dict:
    cfg = parse_config(argv)
    Ns = parse_list("pairs", cfg.pairs, int)
    thetas = parse_list("thetas", cfg.thetas, float)
    started = time.perf_counter()
    rows = []
    print("memory  theta  " + "  ".join(f"N={N:<9d}" for N in Ns) + "   (mean cos / nearest-value acc)")
    for memory in ("linear", "mlp"):
        for theta in thetas:
            cells = []
            for N in Ns:
                result = write_and_read(cfg, N, theta, deep=memory == "mlp")
                rows.append({"memory": memory, "theta": theta, "N": N, "cos": result["cos"], "acc": result["acc"]})
                cells.append(f"{result['cos']:.2f} / {result['acc']:.2f}")
            print(f"{memory:<7s} {theta:<6g} " + "  ".join(f"{c:<11s}" for c in cells))
    example = {"N": cfg.show_pairs, "theta": thetas[0],
               **write_and_read(cfg, cfg.show_pairs, thetas[0], deep=False)}
    paths = [] if cfg.no_plots else plot(cfg, rows, example, Ns)
    seconds = time.perf_counter() - started
    print(f"done in {seconds:.2f} s")
    for path in paths:
        print("wrote", path)
    return {"rows": rows, "seconds": seconds, "plots": paths}


if __name__ == "__main__":
    main()
