"""Seeded CPU tasks for HMA (specs/nam_hma.md B6): shifted-glyph images with a spurious colour
channel (tasks 1, 3 and the data-scarcity variant 4) and synthetic motif graphs with a size shift
(task 2). Each has an in-distribution (ID) and an out-of-distribution (OOD) test split.

Shifted-glyph images (K classes, side S, two channels, channels last (N, S, S, 2)):
    templates   one binary S x S template per class, pixels on with probability `density` (spec:
                K = 5, S = 8, density 0.35); or templates="glyphs": the stroke glyphs of
                minimem.tasks.glyphs (alphabet 0, characters 0..K-1, instance 0), rendered at side S
    channel 0   template of y + N(0, noise^2) per pixel, then rolled by (dr, dc), each uniform in
                {-1, 0, +1} (circularly, np.roll): the "shift"
    channel 1   3 ((c + 1) / K + N(0, colour_noise^2)) on every pixel: the spurious "colour", where
                c = y with probability rho, else c ~ U{0..K-1} (which may equal y)
    splits      train (3,000, rho 0.9), test_id (rho 0.9), test_ood (rho 0: colour independent of the
                class); the scarce variant: 20 training samples per class and rho 0.2
Draw order inside one call (fixed, so a seed gives the same bits): labels, agreement coins, random
colours, colour noise, pixel noise, row shifts, column shifts. The MLP backbone takes
`images.reshape(N, -1)` (X = 2 S^2 = 128).

Motif graphs (3 classes; node features (n, 4) = one-hot of min(degree, 4) over {1, 2, 3, 4+}):
    base        a random tree (node i > 0 joins a uniform earlier node) or a ladder (2 x k grid,
                k = ceil(n / 2), the last rung cut when n is odd), n base nodes
    motif       class 0 cycle-5, class 1 house (a square with a roof node), class 2 3 x 2 grid,
                joined to the base by one edge between a uniform motif node and a uniform base node
    shift       train and test_id: n ~ U{10..20}; test_ood: n ~ U{40..60} (train small, test large)
    spurious    optional: the base type is class mod 2 (tree for classes 0, 2; ladder for 1) with
                probability rho (0.8) in train and test_id, uniform in test_ood
Nodes are stored in a random order (a GCN must not rely on it). Graphs are (features, adjacency)
pairs; `graph_batch` stacks some of them into a minimem.nn.graph.GraphBatch.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from minimem.checks import check_int, check_probability, check_rng
from minimem.nn.graph import GraphBatch, batch_graphs

__all__ = ["ShiftedImages", "image_templates", "make_shifted_images", "shifted_image_splits", "MotifGraphs",
           "MOTIFS", "make_motif_graphs", "motif_graph_splits", "graph_batch", "accuracy"]


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose argmax equals the label."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (N, K) and labels (N,); got {logits.shape} and {labels.shape}")
    return float(np.mean(logits.argmax(axis=1) == labels))


# ----------------------------------------------------------------- shifted-glyph images
class ShiftedImages(NamedTuple):
    images: np.ndarray     # (N, S, S, 2) float64: channel 0 the shifted noisy template, 1 the colour
    labels: np.ndarray     # (N,) int class y
    colours: np.ndarray    # (N,) int the class c the colour channel shows

    @property
    def flat(self) -> np.ndarray:
        """(N, 2 S^2), the MLP backbone's input."""
        return self.images.reshape(len(self.images), -1)


def image_templates(rng: np.random.Generator, classes: int = 5, side: int = 8, density: float = 0.35,
                    kind: str = "random", seed: int = 0) -> np.ndarray:
    """(classes, side, side) binary templates: "random" (pixels on with probability density, drawn
    from rng) or "glyphs" (minimem.tasks.glyphs characters 0..classes-1 of alphabet 0 under `seed`)."""
    classes, side = check_int("classes", classes, 2), check_int("side", side, 3)
    if kind == "random":
        density = check_probability("density", density)
        return (check_rng(rng).random((classes, side, side)) < density).astype(np.float64)
    if kind == "glyphs":
        from minimem.tasks.glyphs import render_glyphs    # the shared glyph generator (stroke programs)
        return render_glyphs(seed, 0, np.arange(classes), 0, D=side).reshape(classes, side, side)
    raise ValueError(f"kind must be 'random' or 'glyphs'; got {kind!r}")


def make_shifted_images(rng: np.random.Generator, templates: np.ndarray, n: int, rho: float, noise: float = 0.8,
                        colour_noise: float = 0.05, labels: np.ndarray | None = None) -> ShiftedImages:
    """n images of the classes of `templates` (module docstring), colour agreeing with the class with
    probability rho. labels: (n,) classes to draw (default uniform)."""
    rng, n, rho = check_rng(rng), check_int("n", n, 1), check_probability("rho", rho)
    templates = np.asarray(templates, dtype=np.float64)
    if templates.ndim != 3 or templates.shape[1] != templates.shape[2] or templates.shape[0] < 2:
        raise ValueError(f"templates must have shape (K, S, S) with K >= 2; got {templates.shape}")
    K, S, _ = templates.shape
    y = rng.integers(0, K, n) if labels is None else np.asarray(labels)
    if y.shape != (n,) or y.dtype.kind not in "iu" or np.any(y < 0) or np.any(y >= K):
        raise ValueError(f"labels must be (n,) = ({n},) integers in [0, {K}); got {y.shape} {y.dtype}")
    agree = rng.random(n) < rho
    colours = np.where(agree, y, rng.integers(0, K, n))
    colour = 3.0 * ((colours + 1) / K + colour_noise * rng.standard_normal(n))       # (n,)
    pixels = templates[y] + noise * rng.standard_normal((n, S, S))                   # (n, S, S)
    dr, dc = rng.integers(-1, 2, n), rng.integers(-1, 2, n)
    rows = (np.arange(S)[None, :] - dr[:, None]) % S                                 # np.roll by dr, per image
    cols = (np.arange(S)[None, :] - dc[:, None]) % S
    shifted = pixels[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    images = np.stack([shifted, np.broadcast_to(colour[:, None, None], (n, S, S))], axis=-1)
    return ShiftedImages(images, y.astype(np.int64), colours.astype(np.int64))


def shifted_image_splits(seed: int = 0, n_train: int = 3000, n_test: int = 1000, rho_train: float = 0.9,
                         scarce: bool = False, classes: int = 5, side: int = 8, templates: str = "random") -> dict:
    """{"train", "test_id", "test_ood"} ShiftedImages of B6 task 1 (scarce=True: task 4, 20 training
    samples per class and rho 0.2, ignoring n_train and rho_train). Every split comes from its own
    generator, np.random.default_rng([seed, k])."""
    seed = check_int("seed", seed, 0)
    rng = lambda k: np.random.default_rng([seed, k])
    T = image_templates(rng(0), classes, side, kind=templates, seed=seed)
    if scarce:
        rho_train = 0.2
        train = make_shifted_images(rng(1), T, 20 * classes, rho_train, labels=np.repeat(np.arange(classes), 20))
    else:
        train = make_shifted_images(rng(1), T, n_train, rho_train)
    return {"train": train, "test_id": make_shifted_images(rng(2), T, n_test, rho_train),
            "test_ood": make_shifted_images(rng(3), T, n_test, 0.0)}


# ----------------------------------------------------------------- motif graphs
def _cycle(k: int) -> list:
    return [(i, (i + 1) % k) for i in range(k)]


MOTIFS = {                     # class -> (name, nodes, edges)
    0: ("cycle5", 5, _cycle(5)),
    1: ("house", 5, [(0, 1), (1, 2), (2, 3), (3, 0), (0, 4), (1, 4)]),
    2: ("grid3x2", 6, [(0, 1), (2, 3), (4, 5), (0, 2), (2, 4), (1, 3), (3, 5)]),   # node 2 r + c
}
BASES = ("tree", "ladder")


def _base_edges(rng: np.random.Generator, kind: str, n: int) -> list:
    if kind == "tree":
        return [(i, int(rng.integers(0, i))) for i in range(1, n)]
    k = (n + 1) // 2                                             # ladder: nodes (0, j) = j, (1, j) = k + j
    edges = [(j, j + 1) for j in range(k - 1)] + [(k + j, k + j + 1) for j in range(k - 1)]
    edges += [(j, k + j) for j in range(k)]
    return [(a, b) for a, b in edges if a < n and b < n]       # an odd n cuts the last node of rail 1


class MotifGraphs(NamedTuple):
    features: list         # B arrays (n_g, 4): one-hot of min(degree, 4)
    adjacencies: list      # B arrays (n_g, n_g) symmetric 0/1, zero diagonal
    labels: np.ndarray     # (B,) int motif class
    bases: np.ndarray      # (B,) int 0 tree, 1 ladder

    def __len__(self) -> int:
        return len(self.labels)


def make_motif_graphs(rng: np.random.Generator, n: int, base_sizes: tuple[int, int] = (10, 20),
                      rho: float | None = None) -> MotifGraphs:
    """n graphs (module docstring): class y uniform; base type class mod 2 with probability rho (None:
    uniform, no spurious correlation); base nodes uniform in base_sizes (inclusive)."""
    rng, n = check_rng(rng), check_int("n", n, 1)
    lo, hi = (check_int("base_sizes[i]", s, 1) for s in base_sizes)
    if hi < lo:
        raise ValueError(f"base_sizes must be (lo, hi) with lo <= hi; got {base_sizes}")
    if rho is not None:
        rho = check_probability("rho", rho)
    features, adjacencies, labels, bases = [], [], [], []
    for _ in range(n):                                          # graphs differ in size: one at a time
        y = int(rng.integers(0, 3))
        if rho is None:
            base = int(rng.integers(0, 2))
        else:
            base = y % 2 if rng.random() < rho else int(rng.integers(0, 2))
        size = int(rng.integers(lo, hi + 1))
        edges = _base_edges(rng, BASES[base], size)
        _, k, motif = MOTIFS[y]
        edges += [(size + a, size + b) for a, b in motif]
        edges.append((size + int(rng.integers(0, k)), int(rng.integers(0, size))))
        total = size + k
        order = rng.permutation(total)                          # node i is stored at position order[i]
        A = np.zeros((total, total))
        a, b = np.array(edges).T
        A[order[a], order[b]] = A[order[b], order[a]] = 1.0
        degree = A.sum(axis=1).astype(int)
        features.append(np.eye(4)[np.clip(degree, 1, 4) - 1])
        adjacencies.append(A)
        labels.append(y)
        bases.append(base)
    return MotifGraphs(features, adjacencies, np.array(labels), np.array(bases))


def motif_graph_splits(seed: int = 0, n_train: int = 600, n_test: int = 300, spurious: bool = True,
                       rho: float = 0.8) -> dict:
    """{"train", "test_id", "test_ood"} MotifGraphs of B6 task 2: train and test_id with 10-20 base
    nodes (and the spurious base type if asked), test_ood with 40-60 base nodes and uniform bases.
    Each split has its own generator np.random.default_rng([seed, k])."""
    seed = check_int("seed", seed, 0)
    rng = lambda k: np.random.default_rng([seed, k])
    rho_id = rho if spurious else None
    return {"train": make_motif_graphs(rng(1), n_train, (10, 20), rho_id),
            "test_id": make_motif_graphs(rng(2), n_test, (10, 20), rho_id),
            "test_ood": make_motif_graphs(rng(3), n_test, (40, 60), None)}


def graph_batch(graphs: MotifGraphs, index: Sequence[int] | np.ndarray) -> GraphBatch:
    """The graphs `index` of a split as one GraphBatch (block-diagonal normalised adjacency)."""
    index = np.atleast_1d(np.asarray(index))
    if index.ndim != 1 or index.size == 0 or index.dtype.kind not in "iu" or np.any(index < 0) \
            or np.any(index >= len(graphs)):
        raise ValueError(f"index must be a non-empty 1-D array of graph numbers in [0, {len(graphs)}); got {index}")
    return batch_graphs([graphs.features[i] for i in index], [graphs.adjacencies[i] for i in index])
