"""Algorithmic tasks of the dense and sparse memory family (NTM, DNC, SAM, SDNC): seeded generators
that lay out every sequence exactly as specs/ntm_dnc_sam.md fixes it (A.6 NTM tasks, B.6 DNC tasks;
SAM, C.8, and SDNC, D.6, reuse them; E.4 draws one length per batch).

Shapes: T time steps, B batch, X input width, Y target width, L pattern length (vectors),
n repeats or items, k vectors per item.

Shared interface (every generator):
    make_<task>(rng, batch_size, **task_options) -> Batch(inputs, targets, mask)
        inputs  (T, B, X) time-first, the network sees inputs[t] at step t;
        targets (T, B, Y) binary, zeros wherever no answer is required;
        mask    (T, B)    1.0 exactly on the steps whose targets are scored, 0.0 elsewhere.
    The loss and both metrics (minimem.tasks.metrics) sum over the steps where mask = 1.

Conventions:
- Step numbers in the layout drawings are 1-based like the spec; code indices are 0-based.
- Every data bit is Bernoulli(0.5) (spec A.6). Randomness comes only from the `rng` passed in, and
  always in the same order, so the same seed gives the same bits.
- Lengths that vary (copy L, repeats n, number of items) are drawn per batch element; the batch is
  zero-padded at the end to its longest element, and padded steps have zero inputs, zero targets and
  mask 0 (the deepmind/dnc convention). `same_length=True` draws one value per batch instead (the
  pytorch-ntm convention, and what the calibration runs of E.4 used), so nothing is padded.
- Arrays are float64 unless `dtype=` asks for another float type (float32 for speed runs).
- Bad options raise ValueError naming the range that was expected.

`TASKS` maps a task name to its generator (for the CLI and the demos); `make_batch(name, ...)` looks
one up with a helpful error.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

from minimem.checks import check_float_dtype, check_int, check_rng


class Batch(NamedTuple):
    """One batch of a task, time-first."""

    inputs: np.ndarray    # (T, B, X) float
    targets: np.ndarray   # (T, B, Y) float bits, zeros where no answer is required
    mask: np.ndarray      # (T, B) float, 1 exactly on the steps where an answer is required


# ----------------------------------------------------------------- option validation
def _check_order(low_name: str, low: int, high_name: str, high: int) -> None:
    if low > high:
        raise ValueError(f"{low_name} <= {high_name} required; got {low_name}={low}, {high_name}={high}")


def _check_common(rng, batch_size, dtype) -> tuple[int, np.dtype]:
    check_rng(rng)
    return check_int("batch_size", batch_size, 1), check_float_dtype(dtype)


# ----------------------------------------------------------------- shared helpers
def _draw_counts(rng: np.random.Generator, low: int, high: int, B: int, same_length: bool) -> np.ndarray:
    """Integers ~ U{low..high}: one per batch element, or one for the whole batch. Returns (B,) int."""
    if same_length:
        return np.full(B, rng.integers(low, high + 1), dtype=np.int64)
    return rng.integers(low, high + 1, size=B).astype(np.int64)


def _bits(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """Bernoulli(0.5) bits as float64 0.0 / 1.0."""
    return rng.integers(0, 2, size=shape).astype(np.float64)


def _gather_steps(pattern: np.ndarray, source, valid) -> np.ndarray:
    """out[t, b] = pattern[source[t, b], b] where valid[t, b], and 0 elsewhere.

    Args:
        pattern: (P, B, D) vectors stored per element.
        source: (T, B) int (or broadcastable to it) index into the first axis of pattern.
        valid: (T, B) bool, the steps that carry a vector.
    Returns:
        (T, B, D) float64.
    """
    valid = np.asarray(valid, dtype=bool)
    index = np.where(valid, source, 0)                              # (T, B), in range where valid
    out = pattern[index, np.arange(pattern.shape[1])[None, :]]      # (T, B, D)
    return out * valid[..., None]


def _finish(inputs: np.ndarray, targets: np.ndarray, mask, dtype: np.dtype) -> Batch:
    mask = np.asarray(mask, dtype=np.float64)                       # (T, B)
    targets = targets * mask[..., None]                             # zeros wherever mask = 0
    return Batch(inputs.astype(dtype), targets.astype(dtype), mask.astype(dtype))


# ----------------------------------------------------------------- NTM tasks (spec A.6)
def make_copy(rng: np.random.Generator, batch_size: int, *, num_bits: int = 8, min_len: int = 1,
              max_len: int = 20, same_length: bool = False, dtype=np.float64) -> Batch:
    """Copy task, NTM paper section 4.1, layout of spec A.6.

    Each element draws L ~ U{min_len..max_len} random vectors of num_bits bits, sees them, then a
    delimiter, then must write them back in order while its input is blank. T = 2L + 1.

        step t          1 .. L       L+1          L+2 .. 2L+1
        inputs[0:nb]    vector t     0            0                nb = num_bits
        inputs[nb]      0            1            0                delimiter channel
        targets[0:nb]   0            0            vector t-L-1
        mask            0            0            1

    X = num_bits + 1, Y = num_bits. Elements shorter than the batch's longest are zero-padded at the
    end with mask 0; same_length=True draws one L per batch (E.4). The MarkPKCollier all-ones
    delimiter vector is NOT used: the delimiter is its own channel.

    Args:
        rng: the only source of randomness.
        batch_size: B >= 1.
        num_bits, min_len, max_len: vector width and the range of L (integers >= 1).
        same_length: one L for the whole batch instead of one per element.
        dtype: float type of the arrays.
    Returns:
        Batch with inputs (T, B, num_bits + 1), targets (T, B, num_bits), mask (T, B),
        T = 2 max_b(L_b) + 1.
    """
    B, dtype = _check_common(rng, batch_size, dtype)
    num_bits = check_int("num_bits", num_bits, 1)
    min_len = check_int("min_len", min_len, 1)
    max_len = check_int("max_len", max_len, 1)
    _check_order("min_len", min_len, "max_len", max_len)

    L = _draw_counts(rng, min_len, max_len, B, same_length)         # (B,)
    pattern = _bits(rng, (int(L.max()), B, num_bits))              # (L_max, B, nb)
    T = int(np.max(2 * L + 1))
    t = np.arange(T)[:, None]                                       # (T, 1) 0-based step
    is_answer = (t > L) & (t <= 2 * L)                              # (T, B) steps L+2..2L+1

    inputs = np.zeros((T, B, num_bits + 1))
    inputs[:, :, :num_bits] = _gather_steps(pattern, t, t < L)      # steps 1..L
    inputs[:, :, num_bits] = t == L                                 # step L+1
    targets = _gather_steps(pattern, t - L - 1, is_answer)          # (T, B, nb)
    return _finish(inputs, targets, is_answer, dtype)


def repeat_normaliser(min_reps: int, max_reps: int) -> tuple[float, float]:
    """Mean and standard deviation of U{min_reps..max_reps}, the repeat copy count's normaliser.

    mean = (min + max) / 2, std = sqrt(((max - min + 1)^2 - 1) / 12). For U{1..10} this is
    (5.5, 2.8723), spec A.6's `(reps - 5.5) / 2.8723`. A single-valued range has std 0; 1.0 is
    returned instead so the encoding stays finite (it is then reps - mean = 0, carrying nothing,
    which is all a single value can tell).
    """
    mean = 0.5 * (min_reps + max_reps)
    std = math.sqrt(((max_reps - min_reps + 1) ** 2 - 1) / 12.0)
    return mean, (std if std > 0 else 1.0)


def make_repeat_copy(rng: np.random.Generator, batch_size: int, *, num_bits: int = 8,
                     min_len: int = 1, max_len: int = 10, min_reps: int = 1, max_reps: int = 10,
                     norm_range: tuple[int, int] | None = None, same_length: bool = False,
                     dtype=np.float64) -> Batch:
    """Repeat copy task, NTM paper section 4.2, in the loudinthecloud/pytorch-ntm layout (spec A.6).

    Each element draws L ~ U{min_len..max_len} vectors and a count n ~ U{min_reps..max_reps}; it
    sees the vectors, a delimiter, then the normalised count, and must write the vectors n times
    followed by an end marker. T = L + 2 + L*n + 1 = L(n + 1) + 3.

        step t          1 .. L     L+1   L+2     L+3 .. L+2+L*n             L*n+L+3
        inputs[0:nb]    vector t   0     0       0                          0
        inputs[nb]      0          1     0       0                          0     delimiter
        inputs[nb+1]    0          0     c       0                          0     repeat count
        targets[0:nb]   0          0     0       vector ((t-L-3) mod L)+1   0
        targets[nb]     0          0     0       0                          1     end marker
        mask            0          0     0       1                          1

    The count channel carries c = (n - mean) / std with mean and std those of the uniform
    distribution U{lo..hi} over norm_range = (lo, hi), default (min_reps, max_reps); see
    repeat_normaliser. With the defaults this is spec A.6's exact (n - 5.5) / 2.8723 (mean 0 and
    variance 1 over the training counts). To test generalisation to more repeats (paper Fig. 8),
    keep norm_range at the training range while raising max_reps.

    X = num_bits + 2, Y = num_bits + 1. Padding and same_length (one L and one n per batch, as
    pytorch-ntm draws them) as in make_copy.

    Returns:
        Batch with inputs (T, B, num_bits + 2), targets (T, B, num_bits + 1), mask (T, B),
        T = max_b L_b (n_b + 1) + 3.
    """
    B, dtype = _check_common(rng, batch_size, dtype)
    num_bits = check_int("num_bits", num_bits, 1)
    min_len = check_int("min_len", min_len, 1)
    max_len = check_int("max_len", max_len, 1)
    min_reps = check_int("min_reps", min_reps, 1)
    max_reps = check_int("max_reps", max_reps, 1)
    _check_order("min_len", min_len, "max_len", max_len)
    _check_order("min_reps", min_reps, "max_reps", max_reps)
    if norm_range is None:
        norm_range = (min_reps, max_reps)
    if not isinstance(norm_range, (tuple, list)) or len(norm_range) != 2:
        raise ValueError(f"norm_range must be a pair (lo, hi) of repeat counts; got {norm_range!r}")
    norm_lo = check_int("norm_range[0]", norm_range[0], 0)
    norm_hi = check_int("norm_range[1]", norm_range[1], 0)
    _check_order("norm_range[0]", norm_lo, "norm_range[1]", norm_hi)
    mean, std = repeat_normaliser(norm_lo, norm_hi)

    L = _draw_counts(rng, min_len, max_len, B, same_length)         # (B,)
    n = _draw_counts(rng, min_reps, max_reps, B, same_length)       # (B,)
    pattern = _bits(rng, (int(L.max()), B, num_bits))              # (L_max, B, nb)
    T = int(np.max(L * (n + 1) + 3))
    t = np.arange(T)[:, None]                                       # (T, 1) 0-based step
    end = L + 2 + L * n                                             # (B,) 0-based end-marker step
    is_repeat = (t >= L + 2) & (t < end)                            # (T, B)

    inputs = np.zeros((T, B, num_bits + 2))
    inputs[:, :, :num_bits] = _gather_steps(pattern, t, t < L)
    inputs[:, :, num_bits] = t == L
    inputs[:, :, num_bits + 1] = (t == L + 1) * ((n - mean) / std)
    targets = np.zeros((T, B, num_bits + 1))
    targets[:, :, :num_bits] = _gather_steps(pattern, (t - L - 2) % L, is_repeat)
    targets[:, :, num_bits] = t == end
    return _finish(inputs, targets, (t >= L + 2) & (t <= end), dtype)


def make_associative_recall(rng: np.random.Generator, batch_size: int, *, num_bits: int = 6,
                            item_len: int = 3, min_items: int = 2, max_items: int = 6,
                            same_length: bool = False, distinct_items: bool = False,
                            dtype=np.float64) -> Batch:
    """Associative recall, NTM paper section 4.3, layout of spec A.6.

    Each element draws n ~ U{min_items..max_items} items, an item being k = item_len consecutive
    vectors of num_bits bits. After the items comes a query: one of the first n - 1 items, chosen
    uniformly, between two query delimiters; the answer is the item that followed it.
    T = (k + 1) n + 2k + 2, i.e. 4n + 8 for k = 3.

        steps           per item i = 1..n:        query:                      answer:
                        1 step   k steps          1 step   k steps   1 step   k steps
        inputs[0:nb]    0        item i           0        item q    0        0
        inputs[nb]      1        0                0        0         0        0      item delimiter
        inputs[nb+1]    0        0                1        0         1        0      query delimiter
        targets[0:nb]   0        0                0        0         0        item q+1
        mask            0        0                0        0         0        1

    The paper calls the two delimiter channels "row 7" and "row 8" (num_bits = 6).
    X = num_bits + 2, Y = num_bits. Padding and same_length (one n per batch) as in make_copy.

    Items are independent random bits, so two items of a sequence can coincide (for the defaults
    with probability <= 15 / 2^18 per sequence, but about 2% for 2 x 4-bit items and n = 4), which
    makes the answer ambiguous. distinct_items=True redraws such sequences until all n items differ
    (a minimem option; the paper is silent).

    Returns:
        Batch with inputs (T, B, num_bits + 2), targets (T, B, num_bits), mask (T, B),
        T = (item_len + 1) max_b n_b + 2 item_len + 2.
    """
    B, dtype = _check_common(rng, batch_size, dtype)
    num_bits = check_int("num_bits", num_bits, 1)
    k = check_int("item_len", item_len, 1)
    min_items = check_int("min_items", min_items, 2)               # the query needs a successor
    max_items = check_int("max_items", max_items, 2)
    _check_order("min_items", min_items, "max_items", max_items)
    if distinct_items and _distinct_probability(k * num_bits, max_items) < 1e-2:
        raise ValueError(f"distinct_items needs item_len * num_bits large enough for {max_items} "
                         f"distinct items to be likely; got {k} x {num_bits} bits")

    n = _draw_counts(rng, min_items, max_items, B, same_length)     # (B,)
    items = _bits(rng, (max_items, k, B, num_bits))                 # (n_max, k, B, nb)
    if distinct_items:
        _redraw_duplicate_items(rng, items, n)
    query = rng.integers(0, n - 1)                                  # (B,) 0-based, among first n-1
    stream = items.reshape(max_items * k, B, num_bits)              # item i, row j at i*k + j

    T = int(np.max((k + 1) * n + 2 * k + 2))
    t = np.arange(T)[:, None]                                       # (T, 1) 0-based step
    in_items = t < (k + 1) * n                                      # (T, B)
    item, row = t // (k + 1), t % (k + 1) - 1                       # row -1 is the delimiter step
    r = t - (k + 1) * n                                             # (T, B) step within the query
    is_query = (r >= 1) & (r <= k)
    is_answer = (r >= k + 2) & (r < 2 * k + 2)

    inputs = np.zeros((T, B, num_bits + 2))
    inputs[:, :, :num_bits] = (_gather_steps(stream, item * k + row, in_items & (row >= 0))
                               + _gather_steps(stream, query * k + r - 1, is_query))
    inputs[:, :, num_bits] = in_items & (row < 0)
    inputs[:, :, num_bits + 1] = (r == 0) | (r == k + 1)
    targets = _gather_steps(stream, (query + 1) * k + r - k - 2, is_answer)
    return _finish(inputs, targets, is_answer, dtype)


def _distinct_probability(D: int, n: int) -> float:
    """Probability that n uniform D-bit codes are all different (birthday problem)."""
    if n > 2 ** min(D, 62):
        return 0.0
    return math.prod(1.0 - i / 2.0 ** D for i in range(n))


def _redraw_duplicate_items(rng: np.random.Generator, items: np.ndarray, n: np.ndarray) -> None:
    """Redraw, in place, all items of every element whose first n_b items are not all distinct."""
    max_items, k, B, num_bits = items.shape
    used = np.arange(max_items)[:, None] < n                        # (n_max, B)
    pair_used = used[:, None, :] & used[None, :, :] & ~np.eye(max_items, dtype=bool)[..., None]
    while True:
        equal = np.all(items[:, None] == items[None, :], axis=(2, 4))   # (n_max, n_max, B)
        bad = np.any(equal & pair_used, axis=(0, 1))                    # (B,)
        if not bad.any():
            return
        items[:, :, bad] = _bits(rng, (max_items, k, int(bad.sum()), num_bits))


def make_priority_sort(rng: np.random.Generator, batch_size: int, *, num_bits: int = 8,
                       num_items: int = 20, num_sorted: int = 16, dtype=np.float64) -> Batch:
    """Priority sort, NTM paper section 4.5, layout of spec A.6.

    num_items random vectors, each with a priority p ~ U[-1, 1] on its own channel; after a
    delimiter the network writes the num_sorted highest-priority vectors in descending order of
    priority. T = num_items + 1 + num_sorted (37 for the defaults).

        step t          1 .. N            N+1    N+2 .. N+1+S                   N = num_items,
        inputs[0:nb]    vector t          0      0                              S = num_sorted
        inputs[nb]      priority of t     0      0                              priority channel
        inputs[nb+1]    0                 1      0                              delimiter
        targets[0:nb]   0                 0      vector with (t-N-1)-th highest priority
        mask            0                 0      1

    The NTM paper does not state the vector width; minimem uses 8 bits (spec A.6). Priorities are
    continuous, so ties have probability zero (they would be broken by input order).
    X = num_bits + 2, Y = num_bits; every element has the same length, nothing is padded.

    Returns:
        Batch with inputs (T, B, num_bits + 2), targets (T, B, num_bits), mask (T, B).
    """
    B, dtype = _check_common(rng, batch_size, dtype)
    num_bits = check_int("num_bits", num_bits, 1)
    N = check_int("num_items", num_items, 1)
    S = check_int("num_sorted", num_sorted, 1)
    _check_order("num_sorted", S, "num_items", N)

    vectors = _bits(rng, (N, B, num_bits))                          # (N, B, nb)
    priority = rng.uniform(-1.0, 1.0, size=(N, B))                 # (N, B)
    # Sort order is a constant of the task, not differentiated; stable for reproducibility.
    ranked = np.argsort(-priority, axis=0, kind="stable")[:S]       # (S, B) highest first

    T = N + 1 + S
    inputs = np.zeros((T, B, num_bits + 2))
    inputs[:N, :, :num_bits] = vectors
    inputs[:N, :, num_bits] = priority
    inputs[N, :, num_bits + 1] = 1.0
    targets = np.zeros((T, B, num_bits))
    targets[N + 1:] = vectors[ranked, np.arange(B)[None, :]]        # (S, B, nb)
    mask = np.zeros((T, B))
    mask[N + 1:] = 1.0
    return _finish(inputs, targets, mask, dtype)


def make_dynamic_ngrams(rng: np.random.Generator, batch_size: int, *, length: int = 200,
                        context: int = 5, dtype=np.float64) -> Batch:
    """Dynamic N-grams, NTM paper section 4.4, layout of spec A.6.

    Each sequence draws its own table of the 2^context probabilities P(bit = 1 | previous context
    bits), i.i.d. Beta(1/2, 1/2); its first `context` bits are Bernoulli(0.5), the remaining
    length - context bits are drawn from the table. The input at step t is bit t and the target is
    bit t + 1, so T = length - 1 (199 for the defaults); only the length - context bits drawn from
    the table are scored (195 for the defaults; the first bits are coin flips nobody can predict).

        step t          1 .. context-1     context .. length-1
        inputs[0]       bit t              bit t
        targets[0]      0                  bit t+1
        mask            0                  1

    The table is indexed by the previous `context` bits read as a binary number, oldest bit most
    significant. X = Y = 1; nothing is padded. The Bayes-optimal predictor's cost, the reference
    line of the paper's Fig. 13, is minimem.tasks.metrics.ngram_bayes_optimal_bits(
    ngram_sequences(batch)): about 128 bits over the 195 scored bits (the paper's "about 133"
    also counts the 5 leading coin flips at 1 bit each; see that function).

    Returns:
        Batch with inputs (length - 1, B, 1), targets (length - 1, B, 1), mask (length - 1, B).
    """
    B, dtype = _check_common(rng, batch_size, dtype)
    context = check_int("context", context, 1, 16)
    length = check_int("length", length, context + 1)

    table = rng.beta(0.5, 0.5, size=(B, 2 ** context))             # (B, 2^context)
    bits = np.zeros((B, length), dtype=np.int64)
    bits[:, :context] = rng.integers(0, 2, size=(B, context))
    uniforms = rng.random((B, length - context))
    weights = 2 ** np.arange(context - 1, -1, -1)                   # oldest bit most significant
    for t in range(context, length):                                # loop over time only
        index = bits[:, t - context:t] @ weights                    # (B,)
        bits[:, t] = uniforms[:, t - context] < table[np.arange(B), index]

    T = length - 1
    inputs = bits[:, :-1].T[:, :, None].astype(np.float64)          # (T, B, 1)
    targets = bits[:, 1:].T[:, :, None].astype(np.float64)          # (T, B, 1)
    mask = np.zeros((T, B))
    mask[context - 1:] = 1.0
    return _finish(inputs, targets, mask, dtype)


def ngram_sequences(batch: Batch) -> np.ndarray:
    """The full bit sequences of a make_dynamic_ngrams batch: (B, T + 1) int, bit t at column t-1.

    Inputs hold bits 1..T; the last bit is only ever a target.
    """
    inputs, targets, _ = batch
    if inputs.ndim != 3 or inputs.shape[2] != 1 or targets.shape != inputs.shape:
        raise ValueError(f"expected a dynamic N-grams batch with inputs and targets of shape (T, B, 1); "
                         f"got {inputs.shape} and {targets.shape}")
    return np.concatenate([inputs[:, :, 0].T, targets[-1:, :, 0].T], axis=1).astype(np.int64)


# ----------------------------------------------------------------- DNC tasks (spec B.6)
def make_deepmind_repeat_copy(rng: np.random.Generator, batch_size: int, *, num_bits: int = 4,
                              min_len: int = 1, max_len: int = 2, min_reps: int = 1,
                              max_reps: int = 2, norm_max: float = 10.0, same_length: bool = False,
                              dtype=np.float64) -> Batch:
    """Repeat copy in the exact layout of deepmind/dnc's `repeat_copy.py` (spec B.6).

    Each element draws L ~ U{min_len..max_len} vectors and n ~ U{min_reps..max_reps} repeats. A
    start flag comes first, then the pattern, then the count n / norm_max; the target is the
    pattern n times and an end marker. T = L(n + 1) + 3.

        step t          1     2 .. L+1      L+2          L+3 .. L+2+L*n            L*n+L+3
        inputs[0:nb]    0     vector t-1    0            0                         0
        inputs[nb]      1     0             0            0                         0     start flag
        inputs[nb+1]    0     0             n/norm_max   0                         0     repeat count
        targets[0:nb]   0     0             0            vector ((t-L-3) mod L)+1  0
        targets[nb]     0     0             0            0                         1     end marker
        mask            0     0             0            1                         1

    Note the differences from make_repeat_copy (pytorch-ntm layout): a start flag instead of a
    delimiter after the pattern, and the count scaled by 1/norm_max instead of standardised.
    The defaults are deepmind/dnc's train.py (4 bits, lengths 1-2, repeats 1-2, norm_max 10).
    X = num_bits + 2, Y = num_bits + 1. Each element draws its own L and n and the batch is
    zero-padded with mask 0 to its longest element, exactly as deepmind/dnc does; same_length=True
    draws one L and one n per batch.

    Returns:
        Batch with inputs (T, B, num_bits + 2), targets (T, B, num_bits + 1), mask (T, B),
        T = max_b L_b (n_b + 1) + 3.
    """
    B, dtype = _check_common(rng, batch_size, dtype)
    num_bits = check_int("num_bits", num_bits, 1)
    min_len = check_int("min_len", min_len, 1)
    max_len = check_int("max_len", max_len, 1)
    min_reps = check_int("min_reps", min_reps, 1)
    max_reps = check_int("max_reps", max_reps, 1)
    _check_order("min_len", min_len, "max_len", max_len)
    _check_order("min_reps", min_reps, "max_reps", max_reps)
    if isinstance(norm_max, (bool, np.bool_)) or not isinstance(norm_max, (int, float, np.number)) \
            or not math.isfinite(norm_max) or norm_max <= 0:
        raise ValueError(f"norm_max must be a finite number > 0; got {norm_max!r}")

    L = _draw_counts(rng, min_len, max_len, B, same_length)         # (B,)
    n = _draw_counts(rng, min_reps, max_reps, B, same_length)       # (B,)
    pattern = _bits(rng, (int(L.max()), B, num_bits))              # (L_max, B, nb)
    T = int(np.max(L * (n + 1) + 3))
    t = np.arange(T)[:, None]                                       # (T, 1) 0-based step
    end = L + 2 + L * n                                             # (B,) 0-based end-marker step
    is_repeat = (t >= L + 2) & (t < end)                            # (T, B)

    inputs = np.zeros((T, B, num_bits + 2))
    inputs[:, :, :num_bits] = _gather_steps(pattern, t - 1, (t >= 1) & (t <= L))
    inputs[0, :, num_bits] = 1.0
    inputs[:, :, num_bits + 1] = (t == L + 1) * (n / float(norm_max))
    targets = np.zeros((T, B, num_bits + 1))
    targets[:, :, :num_bits] = _gather_steps(pattern, (t - L - 2) % L, is_repeat)
    targets[:, :, num_bits] = t == end
    return _finish(inputs, targets, (t >= L + 2) & (t <= end), dtype)


def make_copy_memory_reuse(rng: np.random.Generator, batch_size: int, *, num_sequences: int = 10,
                           seq_len: int = 5, num_bits: int = 4, dtype=np.float64) -> Batch:
    """Copy with memory reuse, DNC paper Extended Data Fig. 1, minimem layout of spec B.6.

    num_sequences random sequences of seq_len vectors are presented one after another, each copied
    back right after its presentation. With the defaults (50 vectors) a DNC with N = 10 slots
    cannot keep them all and must free and re-allocate memory. The paper does not give lengths or
    widths; minimem uses 10 sequences of 5 vectors x 4 bits. Each block of 2 * seq_len + 1 steps is

        step in block   1 .. s            s+1    s+2 .. 2s+1                     s = seq_len
        inputs[0:nb]    vector            0      0
        inputs[nb]      0                 1      0                               delimiter
        targets[0:nb]   0                 0      the block's vectors, in order
        mask            0                 0      1

    so T = num_sequences (2 seq_len + 1) (110 for the defaults). X = num_bits + 1, Y = num_bits;
    nothing is padded.

    Returns:
        Batch with inputs (T, B, num_bits + 1), targets (T, B, num_bits), mask (T, B).
    """
    B, dtype = _check_common(rng, batch_size, dtype)
    num_sequences = check_int("num_sequences", num_sequences, 1)
    s = check_int("seq_len", seq_len, 1)
    num_bits = check_int("num_bits", num_bits, 1)

    pattern = _bits(rng, (num_sequences * s, B, num_bits))         # block i, vector j at i*s + j
    T = num_sequences * (2 * s + 1)
    t = np.arange(T)[:, None]                                       # (T, 1) 0-based step
    block, r = t // (2 * s + 1), t % (2 * s + 1)                    # r: 0-based step in the block
    is_answer = r > s

    inputs = np.zeros((T, B, num_bits + 1))
    inputs[:, :, :num_bits] = _gather_steps(pattern, block * s + r, np.broadcast_to(r < s, (T, B)))
    inputs[:, :, num_bits] = r == s
    targets = _gather_steps(pattern, block * s + r - s - 1, np.broadcast_to(is_answer, (T, B)))
    return _finish(inputs, targets, np.broadcast_to(is_answer, (T, B)), dtype)


# ----------------------------------------------------------------- registry
TaskGenerator = Callable[..., Batch]

TASKS: dict[str, TaskGenerator] = {
    "copy": make_copy,
    "repeat_copy": make_repeat_copy,
    "associative_recall": make_associative_recall,
    "priority_sort": make_priority_sort,
    "dynamic_ngrams": make_dynamic_ngrams,
    "deepmind_repeat_copy": make_deepmind_repeat_copy,
    "copy_memory_reuse": make_copy_memory_reuse,
}


def make_batch(name: str, rng: np.random.Generator, batch_size: int, **task_options) -> Batch:
    """TASKS[name](rng, batch_size, **task_options), with a ValueError listing the known names."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(sorted(TASKS))}")
    return TASKS[name](rng, batch_size, **task_options)
