"""Procedural glyphs, the Omniglot stand-in (specs/generative_memory.md E.1), and the few-shot
episodes built from them: classification episodes (NAM few-shot head, SAM one-shot), VMA
generation episodes (E.3) and VSM context/target sets (E.4).

Shapes: D image side, X = D*D pixels, A alphabets, Cc characters per alphabet, I instances per
character, B episodes, C classes per episode, n shots per class, Q queries per class,
N = C*n memory slots.

Like Omniglot, alphabets hold characters (the classes), characters are stroke programs and
instances are noisy renderings of a program (the "drawers"). Every random number comes from a
generator seeded by the image's own coordinates, `np.random.default_rng([seed, stream, ...])`,
so any single image can be made alone and the order of generation does not matter:

    stream 0  alphabet  [seed, 0, alpha]        5 stroke primitives (L, theta, kappa)
    stream 1  character [seed, 1, alpha, c]     a program: control points (n_strokes, 3, 2)
    stream 2  instance  [seed, 2, alpha, c, i]  affine jitter, control-point jitter, pen width
    stream 3  binarise  [seed, 3, alpha, c, i]  uniforms for stochastic binarisation

Draw order inside each generator (fixed, so the same seed gives the same bits):
    alphabet:  L ~ U(0.35, 0.8) (5,), theta ~ U(0, pi) (5,), kappa ~ U(-0.4, 0.4) (5,)
    character: n_strokes ~ U{2, 3, 4}; rho ~ U{0..3} * pi/4; then per stroke: k ~ U{0..4};
               for strokes after the first a coin u ~ U(0, 1) (continue when u < 0.5); when not
               continuing a grid cell ~ U{0, 1, 2}^2 and an offset ~ U(-0.05, 0.05)^2
    instance:  rotation ~ N(0, (8 deg)^2), scale ~ U(0.9, 1.1), translation ~ N(0, 0.04^2) (2,),
               jitter ~ N(0, 0.03^2) (n_strokes, 3, 2), half stroke width r ~ U(0.6, 0.9) pixels
Geometry (canvas units, the canvas is [-0.5, 0.5]^2, x -> column, y -> row):
    stroke with primitive k:  angle = theta_k + rho,  d = (cos angle, sin angle) L_k / 2,
                              nu = (-d_y, d_x),  p0 = centre - d,  p2 = centre + d,
                              p1 = centre + 2 kappa_k nu     (quadratic Bezier control points)
    continuing stroke:        p0 = previous p2, centre = p0 + d
    instance:                 p' = scale R(rotation) (p + jitter) + translation
Rendering, vectorised over images, pixels and segments: each Bezier is sampled at 12 values of t
in [0, 1] (11 segments), points are clipped to the canvas and mapped to pixels by
p_pix = (p + 0.5)(D - 4) + 2; every pixel centre (col + 0.5, row + 0.5) gets the distance d to
the nearest segment and the intensity I = clip(r + 0.5 - d, 0, 1). Binarisation: "static"
x = [I > 0.5] (default), "stochastic" x = [u < I] with the stream-3 uniforms, or "none" (the grey
intensities). Images are row-major, flattened to X = D*D.

Data set: `GlyphSet(GlyphConfig(...), cache_dir=None)` renders A x Cc x I images (default
40 x 20 x 20 = 16,000: about 12 s at D = 20 and 24 s at D = 28 on one loaded core; mean pixel
0.095 and 0.072) and optionally caches them as .npz in a directory
the caller names (never a fixed path), keyed by (seed, D, sizes, binarisation). Class id of
character c of alphabet alpha is alpha * Cc + c. Splits: "train" = alphabets 0..train_alphabets-1,
"test" = the rest (unseen alphabets, like Omniglot background/evaluation); "train_within" /
"test_within" = characters 0..train_characters-1 / the rest, of every alphabet; "all".
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from minimem.checks import check_float_dtype, check_int, check_rng

__all__ = [
    "GLYPH_FORMAT_VERSION", "SPLITS", "GlyphConfig", "GlyphSet", "FewShotEpisode", "VMAEpisode",
    "SetTask", "alphabet_primitives", "character_program", "instance_program", "render_strokes",
    "render_glyphs", "few_shot_episodes", "vma_episodes", "set_tasks",
]

GLYPH_FORMAT_VERSION = 1        # bump when the generator's output changes; it is part of the cache key
N_PRIMITIVES = 5                # stroke primitives per alphabet
MAX_STROKES = 4                 # strokes per character, U{2, 3, 4}
BEZIER_POINTS = 12              # samples of t per stroke: 11 segments
BINARISE = ("static", "stochastic", "none")
SPLITS = ("train", "test", "train_within", "test_within", "all")


# ----------------------------------------------------------------- validation
def _check_indices(name: str, value, size: int) -> np.ndarray:
    """value as an int64 array with every entry in 0..size-1."""
    array = np.asarray(value)
    if array.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers in 0..{size - 1}; got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= size):
        raise ValueError(f"{name} must hold integers in 0..{size - 1}; got values in "
                         f"{array.min()}..{array.max()}")
    return array.astype(np.int64)


# ----------------------------------------------------------------- stroke programs
def alphabet_primitives(seed: int, alpha: int) -> np.ndarray:
    """The alphabet's 5 stroke primitives, rows (L, theta, kappa): length L ~ U(0.35, 0.8),
    orientation theta ~ U(0, pi), curvature kappa ~ U(-0.4, 0.4), canvas units. Returns (5, 3)."""
    rng = np.random.default_rng([seed, 0, alpha])
    L = rng.uniform(0.35, 0.8, N_PRIMITIVES)
    theta = rng.uniform(0.0, math.pi, N_PRIMITIVES)
    kappa = rng.uniform(-0.4, 0.4, N_PRIMITIVES)
    return np.stack([L, theta, kappa], axis=1)                      # (5, 3)


def character_program(seed: int, alpha: int, c: int, primitives: np.ndarray | None = None) -> np.ndarray:
    """Character c of alphabet alpha: the control points (p0, p1, p2) of its 2-4 quadratic Bezier
    strokes, canvas units (module docstring). `primitives` (5, 3) may be passed to skip
    recomputing alphabet_primitives(seed, alpha). Returns (n_strokes, 3, 2)."""
    primitives = alphabet_primitives(seed, alpha) if primitives is None else primitives
    rng = np.random.default_rng([seed, 1, alpha, c])
    n_strokes = int(rng.integers(2, MAX_STROKES + 1))
    rho = int(rng.integers(0, 4)) * math.pi / 4.0                   # character rotation
    grid = np.array([-0.3, 0.0, 0.3])
    program = np.empty((n_strokes, 3, 2))
    for s in range(n_strokes):
        L, theta, kappa = primitives[int(rng.integers(0, N_PRIMITIVES))]
        angle = theta + rho
        d = np.array([math.cos(angle), math.sin(angle)]) * L / 2.0  # half-vector of the chord
        nu = np.array([-d[1], d[0]])                                # its normal, same length
        if s > 0 and rng.random() < 0.5:                            # continue from the last end point
            p0 = program[s - 1, 2]
            centre = p0 + d
        else:
            centre = grid[rng.integers(0, 3, size=2)] + rng.uniform(-0.05, 0.05, size=2)
            p0 = centre - d
        program[s] = (p0, centre + 2.0 * kappa * nu, centre + d)
    return program


def instance_program(seed: int, alpha: int, c: int, i: int,
                     program: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Instance i of a character: its jittered, rotated, scaled and translated control points and
    its half stroke width r in pixels. `program` (n_strokes, 3, 2) may be passed to skip
    recomputing character_program(seed, alpha, c). Returns ((n_strokes, 3, 2), r)."""
    program = character_program(seed, alpha, c) if program is None else program
    rng = np.random.default_rng([seed, 2, alpha, c, i])
    rotation = rng.normal(0.0, math.radians(8.0))
    scale = rng.uniform(0.9, 1.1)
    translation = rng.normal(0.0, 0.04, size=2)
    jitter = rng.normal(0.0, 0.03, size=program.shape)             # added before the affine map
    r = float(rng.uniform(0.6, 0.9))
    cos, sin = math.cos(rotation), math.sin(rotation)
    R = np.array([[cos, -sin], [sin, cos]])
    points = scale * (program + jitter) @ R.T + translation         # (n_strokes, 3, 2)
    return points, r


# ----------------------------------------------------------------- rendering
def _pixel_centres(D: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres (col + 0.5, row + 0.5), row-major. Returns px (X,), py (X,)."""
    rows, cols = np.divmod(np.arange(D * D), D)
    return cols + 0.5, rows + 0.5


def render_strokes(points: np.ndarray, n_strokes: np.ndarray, r: np.ndarray, D: int,
                   chunk: int = 32) -> np.ndarray:
    """Anti-aliased intensities of stroke programs, vectorised over images, pixels and segments.

    Args:
        points: (n_img, S, 3, 2) control points in canvas units, S >= max(n_strokes); strokes
            beyond n_strokes[k] are padding and ignored.
        n_strokes: (n_img,) int, the number of real strokes of each image (>= 1).
        r: (n_img,) half stroke widths in pixels.
        D: image side; X = D*D.
        chunk: images per vectorised block (bounds memory at chunk * X * 11 S floats).
    Returns:
        I: (n_img, X) float64 in [0, 1], I = clip(r + 0.5 - d, 0, 1) with d the pixel centre's
        distance to the nearest segment.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 4 or points.shape[2:] != (3, 2):
        raise ValueError(f"points must have shape (n_img, S, 3, 2); got {points.shape}")
    n_img, S = points.shape[:2]
    n_strokes = np.asarray(n_strokes)
    r = np.asarray(r, dtype=np.float64)
    if n_strokes.shape != (n_img,) or r.shape != (n_img,):
        raise ValueError(f"n_strokes and r must have shape (n_img,) = ({n_img},); "
                         f"got {n_strokes.shape} and {r.shape}")
    if n_img and (n_strokes.min() < 1 or n_strokes.max() > S):
        raise ValueError(f"n_strokes must be in 1..{S}; got values in {n_strokes.min()}..{n_strokes.max()}")
    D = check_int("D", D, 5)
    t = np.linspace(0.0, 1.0, BEZIER_POINTS)[:, None]               # (12, 1)
    p0, p1, p2 = points[:, :, None, 0], points[:, :, None, 1], points[:, :, None, 2]   # (n, S, 1, 2)
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2  # (n, S, 12, 2)
    curve = (np.clip(curve, -0.5, 0.5) + 0.5) * (D - 4) + 2.0       # pixel coordinates
    start = curve[:, :, :-1].reshape(n_img, -1, 2)                  # (n, S*11, 2) segment starts
    chord = (curve[:, :, 1:] - curve[:, :, :-1]).reshape(n_img, -1, 2)   # (n, S*11, 2)
    padding = np.repeat(np.arange(S)[None, :] >= n_strokes[:, None], BEZIER_POINTS - 1, axis=1)
    start[padding], chord[padding] = 1e6, 0.0                       # padding strokes: far off the canvas
    length2 = np.maximum(np.sum(chord ** 2, axis=-1), 1e-12)        # a degenerate segment is a point
    px, py = _pixel_centres(D)
    intensity = np.empty((n_img, D * D))
    for lo in range(0, n_img, chunk):
        hi = min(lo + chunk, n_img)
        cx, cy = chord[lo:hi, None, :, 0], chord[lo:hi, None, :, 1]   # (n, 1, S*11)
        dx = px[None, :, None] - start[lo:hi, None, :, 0]             # (n, X, S*11) pixel - start
        dy = py[None, :, None] - start[lo:hi, None, :, 1]
        t_near = dx * cx
        t_near += dy * cy
        t_near /= length2[lo:hi, None, :]
        np.clip(t_near, 0.0, 1.0, out=t_near)                         # nearest point of the segment
        dx -= t_near * cx
        dy -= t_near * cy
        dx *= dx
        dy *= dy
        dx += dy                                                      # squared distance
        dist = np.sqrt(np.min(dx, axis=-1))                           # (n, X) to the nearest segment
        intensity[lo:hi] = np.clip(r[lo:hi, None] + 0.5 - dist, 0.0, 1.0)
    return intensity


def _binarise(intensity: np.ndarray, how: str, seed: int, index: np.ndarray) -> np.ndarray:
    """intensity (n, X) -> images (n, X): [I > 0.5], [u < I] with stream-3 uniforms, or I itself."""
    if how == "static":
        return (intensity > 0.5).astype(np.float64)
    if how == "stochastic":
        u = np.stack([np.random.default_rng([seed, 3, *map(int, idx)]).random(intensity.shape[1])
                      for idx in index]) if len(index) else np.empty_like(intensity)
        return (u < intensity).astype(np.float64)
    return intensity


def render_glyphs(seed: int, alpha, c, i, D: int = 20, binarise: str = "static") -> np.ndarray:
    """Images of arbitrary (alphabet, character, instance) triples, each generated from its own seeds.

    Args:
        seed: the data set seed.
        alpha, c, i: int or int arrays broadcastable to one shape (n,): alphabet, character and
            instance indices (any non-negative integers).
        D: image side (>= 5); X = D*D.
        binarise: "static" (default), "stochastic" or "none" (module docstring).
    Returns:
        (n, X) float64 images in {0, 1} (or [0, 1] for "none"); row-major pixels.
    """
    if binarise not in BINARISE:
        raise ValueError(f"binarise must be one of {BINARISE}; got {binarise!r}")
    seed = check_int("seed", seed, 0)
    D = check_int("D", D, 5)
    alpha, c, i = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v)) for v in (alpha, c, i)))
    for name, v in (("alpha", alpha), ("c", c), ("i", i)):
        if v.dtype.kind not in "iu" or (v.size and v.min() < 0):
            raise ValueError(f"{name} must hold non-negative integers; got {v!r}")
    alpha, c, i = alpha.reshape(-1), c.reshape(-1), i.reshape(-1)
    n = alpha.size
    points = np.zeros((n, MAX_STROKES, 3, 2))
    n_strokes, r = np.empty(n, dtype=np.int64), np.empty(n)
    primitives, programs = {}, {}
    for k in range(n):
        a, ch = int(alpha[k]), int(c[k])
        if a not in primitives:
            primitives[a] = alphabet_primitives(seed, a)
        if (a, ch) not in programs:
            programs[a, ch] = character_program(seed, a, ch, primitives[a])
        instance, r[k] = instance_program(seed, a, ch, int(i[k]), programs[a, ch])
        n_strokes[k] = len(instance)
        points[k, :len(instance)] = instance
    intensity = render_strokes(points, n_strokes, r, D)
    return _binarise(intensity, binarise, seed, np.stack([alpha, c, i], axis=1))


# ----------------------------------------------------------------- the data set
@dataclass(frozen=True)
class GlyphConfig:
    """Sizes and options of a glyph data set (defaults: spec E.1)."""
    seed: int = 0
    D: int = 20                    # image side; X = D*D
    alphabets: int = 40            # A
    characters: int = 20           # Cc per alphabet
    instances: int = 20            # I per character
    train_alphabets: int | None = None    # "train" = alphabets 0..29, "test" = 30..39 (None: 3/4 of A)
    train_characters: int | None = None   # "train_within" = characters 0..14 (None: 3/4 of Cc)
    binarise: str = "static"       # "static", "stochastic" or "none"

    def __post_init__(self):
        check_int("seed", self.seed, 0)
        check_int("D", self.D, 5)
        check_int("alphabets", self.alphabets, 1)
        check_int("characters", self.characters, 1)
        check_int("instances", self.instances, 1)
        if self.train_alphabets is None:             # frozen dataclass: fill the derived defaults once
            object.__setattr__(self, "train_alphabets", (3 * self.alphabets) // 4)
        if self.train_characters is None:
            object.__setattr__(self, "train_characters", (3 * self.characters) // 4)
        check_int("train_alphabets", self.train_alphabets, 0, self.alphabets)
        check_int("train_characters", self.train_characters, 0, self.characters)
        if self.binarise not in BINARISE:
            raise ValueError(f"binarise must be one of {BINARISE}; got {self.binarise!r}")

    @property
    def X(self) -> int:
        return self.D * self.D

    def cache_name(self) -> str:
        """File name of the .npz cache, keyed by everything that changes the pixels."""
        return (f"glyphs_v{GLYPH_FORMAT_VERSION}_seed{self.seed}_D{self.D}_"
                f"{self.alphabets}x{self.characters}x{self.instances}_{self.binarise}.npz")


class GlyphSet:
    """All A x Cc x I images of a GlyphConfig, rendered once (or loaded from a cache).

    Attributes:
        config: the GlyphConfig.
        images: (A, Cc, I, X) uint8 in {0, 1} (float64 in [0, 1] when binarise is "none");
            read-only. Use `take` to get float arrays.
        n_classes: A * Cc; class id = alpha * Cc + c.
    """

    def __init__(self, config: GlyphConfig | None = None, cache_dir: str | os.PathLike | None = None):
        self.config = GlyphConfig() if config is None else config
        if not isinstance(self.config, GlyphConfig):
            raise ValueError(f"config must be a GlyphConfig; got {type(self.config).__name__}")
        images = None
        path = None if cache_dir is None else Path(cache_dir) / self.config.cache_name()
        if path is not None and path.exists():
            images = self._load(path)
        if images is None:
            images = self._render()
            if path is not None:
                self._save(path, images)
        images.setflags(write=False)
        self.images = images
        self.n_classes = self.config.alphabets * self.config.characters

    # -- rendering and the cache
    def _render(self) -> np.ndarray:
        cfg = self.config
        alpha, c, i = np.meshgrid(np.arange(cfg.alphabets), np.arange(cfg.characters),
                                  np.arange(cfg.instances), indexing="ij")
        flat = render_glyphs(cfg.seed, alpha, c, i, cfg.D, cfg.binarise)          # (A*Cc*I, X)
        flat = flat if cfg.binarise == "none" else flat.astype(np.uint8)
        return flat.reshape(cfg.alphabets, cfg.characters, cfg.instances, cfg.X)

    def _meta(self) -> str:
        return json.dumps({"format": "minimem.glyphs", "version": GLYPH_FORMAT_VERSION,
                           "config": asdict(self.config)}, sort_keys=True)

    def _load(self, path: Path) -> np.ndarray | None:
        """The cached images, or None (re-render) when the file is unreadable or for another config."""
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["meta"]) != self._meta():
                    return None
                images = np.array(data["images"])
        except (OSError, KeyError, ValueError):
            return None
        cfg = self.config
        if images.shape != (cfg.alphabets, cfg.characters, cfg.instances, cfg.X):
            return None
        return images

    def _save(self, path: Path, images: np.ndarray) -> None:
        """Write atomically (a temporary file in the same directory, then os.replace)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, images=images, meta=np.array(self._meta()))
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    # -- classes and images
    def classes(self, split: str = "train") -> np.ndarray:
        """Class ids (alpha * Cc + c) of a split, sorted. Splits: module docstring."""
        cfg = self.config
        alpha, c = np.divmod(np.arange(self.n_classes), cfg.characters)
        chosen = {"train": alpha < cfg.train_alphabets, "test": alpha >= cfg.train_alphabets,
                  "train_within": c < cfg.train_characters, "test_within": c >= cfg.train_characters,
                  "all": np.ones(self.n_classes, dtype=bool)}
        if split not in chosen:
            raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
        return np.flatnonzero(chosen[split])

    def take(self, classes, instances, dtype=np.float64) -> np.ndarray:
        """Images of class ids and instance indices of the same shape (...). Returns (..., X) float."""
        classes = _check_indices("classes", classes, self.n_classes)
        instances = _check_indices("instances", instances, self.config.instances)
        if classes.shape != instances.shape:
            raise ValueError(f"classes and instances must have the same shape; got {classes.shape} "
                             f"and {instances.shape}")
        alpha, c = np.divmod(classes, self.config.characters)
        return self.images[alpha, c, instances].astype(check_float_dtype(dtype))


# ----------------------------------------------------------------- episodes
def _choose(rng: np.random.Generator, pool: int, shape: tuple, k: int) -> np.ndarray:
    """k distinct integers from 0..pool-1 for every entry of shape, uniformly. Returns shape + (k,)."""
    return np.argsort(rng.random(shape + (pool,)), axis=-1)[..., :k]


def _episode_classes(rng, glyphs: GlyphSet, split: str, B: int, k: int) -> np.ndarray:
    pool = glyphs.classes(split)
    if k > len(pool):
        raise ValueError(f"an episode needs {k} distinct classes but split {split!r} has {len(pool)}")
    return pool[_choose(rng, len(pool), (B,), k)]                   # (B, k) class ids


def _check_glyphs(glyphs) -> GlyphSet:
    if not isinstance(glyphs, GlyphSet):
        raise ValueError(f"glyphs must be a GlyphSet; got {type(glyphs).__name__}")
    return glyphs


class FewShotEpisode(NamedTuple):
    """C-way n-shot classification episodes (NAM few-shot head, SAM one-shot). Labels are
    episode-local, 0..C-1, assigned to the episode's classes in a random order."""
    support: np.ndarray          # (B, C*n, X) float
    support_labels: np.ndarray   # (B, C*n) int in 0..C-1
    query: np.ndarray            # (B, C*Q, X) float, instances distinct from the support's
    query_labels: np.ndarray     # (B, C*Q) int in 0..C-1
    classes: np.ndarray          # (B, C) int, classes[b, label] is the class id behind a label


def few_shot_episodes(rng: np.random.Generator, glyphs: GlyphSet, batch_size: int, ways: int = 5,
                      shots: int = 1, queries: int = 1, split: str = "train", shuffle: bool = True,
                      dtype=np.float64) -> FewShotEpisode:
    """C-way n-shot episodes: C = ways distinct classes of the split, n = shots support and Q =
    queries query instances per class, all distinct instances.

    Args:
        rng: the only source of randomness.
        glyphs: the data set.
        batch_size: B >= 1 episodes.
        ways, shots, queries: C >= 1, n >= 1, Q >= 0 with n + Q <= I (instances per class).
        split: which classes to draw from (GlyphSet.classes).
        shuffle: shuffle the support and the query order within each episode (else grouped by
            label, label-major).
    Returns:
        FewShotEpisode (shapes in its fields).
    """
    rng, glyphs = check_rng(rng), _check_glyphs(glyphs)
    B = check_int("batch_size", batch_size, 1)
    C = check_int("ways", ways, 1)
    I = glyphs.config.instances
    n = check_int("shots", shots, 1, I)
    Q = check_int("queries", queries, 0, I - n)
    classes = _episode_classes(rng, glyphs, split, B, C)             # (B, C); label l <-> classes[:, l]
    inst = _choose(rng, I, (B, C), n + Q)                            # (B, C, n + Q) distinct instances
    labels = np.broadcast_to(np.arange(C)[None, :, None], (B, C, n + Q))
    cls = np.broadcast_to(classes[:, :, None], (B, C, n + Q))
    support_idx = (cls[..., :n].reshape(B, -1), inst[..., :n].reshape(B, -1), labels[..., :n].reshape(B, -1))
    query_idx = (cls[..., n:].reshape(B, -1), inst[..., n:].reshape(B, -1), labels[..., n:].reshape(B, -1))
    if shuffle:
        perm_s = _choose(rng, C * n, (B,), C * n)
        perm_q = _choose(rng, C * Q, (B,), C * Q)
        support_idx = tuple(np.take_along_axis(v, perm_s, axis=1) for v in support_idx)
        query_idx = tuple(np.take_along_axis(v, perm_q, axis=1) for v in query_idx)
    return FewShotEpisode(glyphs.take(support_idx[0], support_idx[1], dtype), support_idx[2].copy(),
                          glyphs.take(query_idx[0], query_idx[1], dtype), query_idx[2].copy(), classes)


class VMAEpisode(NamedTuple):
    """Few-shot generation episodes (spec A.6 episode format, E.3)."""
    M: np.ndarray                  # (B, N, X) float memory, N = C*n, shuffled
    x: np.ndarray                  # (B, X) float target
    mem_class: np.ndarray          # (B, N) int class id of every slot
    x_class: np.ndarray            # (B,) int class id of the target
    target_in_memory: np.ndarray   # (B,) bool


def vma_episodes(rng: np.random.Generator, glyphs: GlyphSet, batch_size: int, classes: int = 4,
                 shots: int = 2, split: str = "train", target_in_memory: bool = True,
                 dtype=np.float64) -> VMAEpisode:
    """Spec E.3: choose C + 1 distinct classes (the first is the target's), draw the target
    instance, and fill the memory with n instances of each of C classes: the target class first
    (never the target instance itself) when target_in_memory, else the other C classes
    (the distractor variant). Slots are shuffled.

    Args:
        rng, glyphs, split, dtype: as few_shot_episodes.
        batch_size: B >= 1.
        classes: C >= 1 classes in memory.
        shots: n >= 1 instances per memory class, n + 1 <= I.
        target_in_memory: whether the target's class is among the memory classes.
    Returns:
        VMAEpisode with M (B, C*n, X), x (B, X), mem_class (B, C*n), x_class (B,),
        target_in_memory (B,).
    """
    rng, glyphs = check_rng(rng), _check_glyphs(glyphs)
    B = check_int("batch_size", batch_size, 1)
    C = check_int("classes", classes, 1)
    I = glyphs.config.instances
    n = check_int("shots", shots, 1, I - 1)
    chosen = _episode_classes(rng, glyphs, split, B, C + 1)          # (B, C+1), [:, 0] = target's class
    inst = _choose(rng, I, (B, C + 1), n + 1)                        # (B, C+1, n+1); [:, 0, 0] = target
    x_class, x_inst = chosen[:, 0], inst[:, 0, 0]
    mem_cls = chosen[:, :C] if target_in_memory else chosen[:, 1:]   # (B, C)
    mem_inst = inst[:, :C, 1:] if target_in_memory else inst[:, 1:, :n]   # skip the target instance
    mem_cls = np.broadcast_to(mem_cls[:, :, None], (B, C, n)).reshape(B, C * n)
    mem_inst = mem_inst.reshape(B, C * n)
    perm = _choose(rng, C * n, (B,), C * n)
    mem_cls = np.take_along_axis(mem_cls, perm, axis=1)
    mem_inst = np.take_along_axis(mem_inst, perm, axis=1)
    return VMAEpisode(glyphs.take(mem_cls, mem_inst, dtype), glyphs.take(x_class, x_inst, dtype),
                      mem_cls, x_class.copy(), np.full(B, bool(target_in_memory)))


class SetTask(NamedTuple):
    """One-class context/target sets (spec E.4, VSM): n_c context and n_t target instances,
    all distinct; context slots beyond n_c[b] are zero images with mask False."""
    context: np.ndarray       # (B, Ne, X) float, zero where mask is False
    mask: np.ndarray          # (B, Ne) bool, True on the first n_c[b] slots
    targets: np.ndarray       # (B, n_t, X) float
    classes: np.ndarray       # (B,) int class id


def set_tasks(rng: np.random.Generator, glyphs: GlyphSet, batch_size: int, n_context: int | Sequence[int],
              n_targets: int = 1, capacity: int | None = None, split: str = "train",
              dtype=np.float64) -> SetTask:
    """Spec E.4: for each task one class, n_c context and n_t target instances, all distinct.

    Args:
        rng, glyphs, split, dtype: as few_shot_episodes.
        batch_size: B >= 1.
        n_context: n_c, an int or one int per task (B,); 0 is allowed (no context).
        n_targets: n_t >= 1.
        capacity: Ne, the context axis length (default max n_c); n_c <= Ne and n_c + n_t <= I.
    Returns:
        SetTask with context (B, Ne, X), mask (B, Ne), targets (B, n_t, X), classes (B,).
    """
    rng, glyphs = check_rng(rng), _check_glyphs(glyphs)
    B = check_int("batch_size", batch_size, 1)
    I = glyphs.config.instances
    n_t = check_int("n_targets", n_targets, 1, I)
    n_c = np.broadcast_to(np.asarray(n_context), (B,)) if np.ndim(n_context) == 0 else np.asarray(n_context)
    if n_c.shape != (B,) or n_c.dtype.kind not in "iu" or n_c.min() < 0 or n_c.max() + n_t > I:
        raise ValueError(f"n_context must be an int or (B,) = ({B},) ints in 0..{I - n_t} (n_c + n_t <= I); "
                         f"got {n_context!r}")
    Ne = int(n_c.max()) if capacity is None else check_int("capacity", capacity, int(n_c.max()))
    n_max = int(n_c.max())
    classes = _episode_classes(rng, glyphs, split, B, 1)[:, 0]       # (B,)
    inst = _choose(rng, I, (B,), n_max + n_t)                        # (B, n_max + n_t) distinct
    cls = np.broadcast_to(classes[:, None], inst.shape)
    images = glyphs.take(cls, inst, dtype)                           # (B, n_max + n_t, X)
    mask = np.arange(Ne)[None, :] < n_c[:, None]                     # (B, Ne)
    context = np.zeros((B, Ne, glyphs.config.X), dtype=images.dtype)
    context[:, :n_max] = images[:, :n_max]
    context *= mask[..., None]
    return SetTask(context, mask, images[:, n_max:], classes)
