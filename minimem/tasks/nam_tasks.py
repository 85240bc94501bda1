"""Token tasks of the Neural Attention Memory family (specs/nam_hma.md A4, A6.6, A6.7): seeded
generators for the zero-shot length-generalisation sets of LSAM and NAM-TM (addition, reverse,
reduction, 4-Dyck), LSAM associative recall, one-hop associative retrieval (and its capacity
variant) and mini-ListOps for the NAM Transformer.

Shapes: T time steps (the row length, the spec's maxlen), B batch, n the length of one sample
(digits, pairs, depth). Every array is time-first, like the rest of minimem: tokens are (T, B)
int64, masks (T, B) bool, labels (B,) int64.

Two batch types:
    SequenceBatch(inputs, targets, answer, lengths)   sequence labelling (A4): one target token per
        position; `answer` (T, B) is True on the answer region (the positions where the target is
        not simply the input), `lengths` (B,) the n of each row. The reference loss is the mean token
        cross-entropy over EVERY position (spec A10: loss_mask = all); `answer` gives the other choice.
    ClassificationBatch(tokens, labels, mask)         one label per row (recall, retrieval, ListOps);
        `mask` (T, B) is True at real tokens, False at padding.

Stratified lengths (A4): sample i of a set of size N gets n_i = floor((n_max - n_min + 1) i / N) +
n_min, so every length is equally represented, then the rows are shuffled. `stratified=True` (the
default) applies the same rule to every batch; False draws n ~ U{n_min..n_max} per row.

CORRECTED formats (spec A4 item 2, pitfall C.3): the reference reverse (and copy) generators put
the answer in the INPUT and MASK in the target, which makes "emit MASK after the second delimiter"
the whole task. Here the input answer region holds MASK and the target holds the answer, for
addition and reverse alike.

Layouts (0-based positions; "<p PAD>" means p PAD tokens):
    addition  NSP vocabulary; a (s digits, s ~ U{1..n+1} final / U{1..n} v1, a ~ U[1, 10^s - 1]),
              b ~ U[10^(n-1), 10^n - 1], c = a + b, digits little-endian:
              input  <p PAD> DELIM a DELIM b DELIM MASK x len(c) EOS <PAD...>
              target <p PAD> DELIM a DELIM b DELIM c              EOS <PAD...>
              p ~ U{0..maxlen - len - 1} (len = the block from the first DELIM to EOS; p = 0 when
              the block fills the row, which only the v1 layout reaches), maxlen = 3(n_max + 2) + 3
              final, 3(n_max + 1) + 2 v1.
    reverse   NSP vocabulary; s ~ U{0..9}^n:
              input  <p PAD> DELIM s DELIM MASK x n       EOS <PAD...>
              target <p PAD> DELIM s DELIM reversed(s)    EOS <PAD...>
              the first digit of s sits at position p + 1, p + 1 ~ U{1..maxlen - 2n - 2} (the spec's
              start position), maxlen = 2(n_max + 1) + 1.
    reduce    vocabulary 12 (0-9, DELIM 10, PAD 11); x_i = 0 with probability 1/2, else U{1..9}:
              input  <p PAD> x_1 .. x_n DELIM <PAD...>
              target PAD at every position up to and including the DELIM, then the non-zero x_i in
              order, then PAD (the targets do not echo the input); p ~ U{0..n_max - n},
              maxlen = 2 n_max + 1 (n_max here = (maxlen - 1) // 2).
    dyck      DYCK vocabulary ([ ] ( ) { } < > SEP MASK PAD); a prefix of depth D (below):
              input  prefix SEP MASK x D                            <PAD...>
              target prefix SEP the D closers, innermost first      <PAD...>
              maxlen = (max_len - 1) + 1 + depth_max (the prefix is shorter than max_len).
NSP vocabulary (16): digits 0-9, DELIM 10, PAD 11, START 12 (unused), EOS 13, MASK 14, 15 unused.

4-Dyck prefix generator (A4 item 4, final code): keep a stack; while not (depth >= D and
length > min_len): with probability 0.3 and a non-empty stack pop (emit the closer), else push a
uniformly chosen opener; then pop until depth = D. A prefix of max_len tokens or more is rejected
and drawn again.

Length splits (A4; n = the training maximum, default 10, n_min = 1), see `length_split`:
    split      final add/reverse/reduce   v1 add/reverse   v1 reduce
    train      1..n                       1..n             1..n
    id_val     ceil(n/2)..n               ceil(n/2)..n     ceil(n/2)..n
    ood_val    n+1..n+6                   n+1..n+4         n+1..n+3
    ood_test   n+7..n+12                  n+5..n+8         n+4..n+6
(The spec writes n/2; the calibration of A4 used 3..5 for n = 5, so odd n round up.)
Dyck splits (DYCK_SPLITS): train 12,800 (depth 2..8 stratified, min length 8, length < 32); id_val
2,048 (depth 8, min 8, < 32); length_ood 2,048 (depth 8, min 32, < 64); depth_ood 2,048 (depth
9..12, min 32, < 64).

LSAM associative recall (A4, CPU version): keys are tokens 10..10+K-1 (K = 16), values 0..9, QUERY
10+K, PAD 11+K; input = k_1 v_1 .. k_n v_n QUERY k_j with distinct keys, LEFT-padded to 2 n_max + 2
(26 for n_max = 12); label v_j, j ~ U{1..n}.

One-hop associative retrieval (A6.6): each stored pair is ONE token key * 10 + value (K keys x 10
values); position 0 holds the query token 10K + key (it doubles as the CLS row); the n distinct keys
are stored in random order after it; PAD 11K fills to 1 + n_max; label = the queried key's value.
K = 16, n 4..16 (length 17, vocabulary 177) is the primary task; RETRIEVAL_CAPACITY = K 64,
n 16..64 (length 65) the capacity variant, where n exceeds the head width.

Mini-ListOps (A6.7, LRA's generator): a node at depth delta < max_depth (root depth 1) is an
operator with probability `operator_p` (LRA 0.25; mini 0.5), else a digit 0-9; operators MIN, MAX,
MED (median, truncated to int), SM (sum mod 10), uniformly, with U{2..max_args} arguments; trees are
drawn until their token count lies in [min_len, max_len]. Tokens: digits 0-9, [MIN 10, [MAX 11,
[MED 12, [SM 13, ] 14, CLS 15, PAD 16; row = CLS, the tokens, PAD to 1 + max_len (64). Mini
defaults: max depth 3, 2..4 arguments, operator probability 0.5, lengths 8..63, 10 classes. With
LRA's depth count (root at depth 1, so only depths 1 and 2 hold operators) such a tree has at most
2 + 4 (2 + 4) = 26 tokens: the upper bound 63 of the spec never binds, the row is 64 wide anyway.

Randomness comes only from the `rng` passed in, always in the same order: same seed, same tokens.
Bad options raise ValueError naming the range that was expected.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minimem.checks import check_int, check_rng

# ----------------------------------------------------------------- vocabularies
DIGITS = 10
DELIM, PAD, START, EOS, MASK = 10, 11, 12, 13, 14
NSP_VOCAB = 16
REDUCE_PAD = 11
REDUCE_VOCAB = 12

DYCK_BRACKETS = "[](){}<>"                 # token 2i opens, 2i + 1 closes: [ ] ( ) { } < >
DYCK_SEP, DYCK_MASK, DYCK_PAD = 8, 9, 10
DYCK_VOCAB = 11
DYCK_SPLITS = {
    "train": dict(size=12_800, depth_min=2, depth_max=8, min_len=8, max_len=32),
    "id_val": dict(size=2_048, depth_min=8, depth_max=8, min_len=8, max_len=32),
    "length_ood": dict(size=2_048, depth_min=8, depth_max=8, min_len=32, max_len=64),
    "depth_ood": dict(size=2_048, depth_min=9, depth_max=12, min_len=32, max_len=64),
}

LISTOPS_OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
LISTOPS_CLOSE, LISTOPS_CLS, LISTOPS_PAD = 14, 15, 16
LISTOPS_VOCAB = 17
LISTOPS_TOKENS = tuple(str(d) for d in range(10)) + LISTOPS_OPERATORS + ("]", "CLS", "PAD")

RETRIEVAL_CAPACITY = dict(num_keys=64, n_min=16, n_max=64)

NSP_TASKS = ("addition", "reverse", "reduce")
VERSIONS = ("final", "v1")


class SequenceBatch(NamedTuple):
    """A batch of a sequence-labelling task (A4), time-first."""
    inputs: np.ndarray     # (T, B) int64 input tokens
    targets: np.ndarray    # (T, B) int64 target tokens, one per position
    answer: np.ndarray     # (T, B) bool, True on the answer region
    lengths: np.ndarray    # (B,) int64, the n of each row (digits; depth for Dyck)


class ClassificationBatch(NamedTuple):
    """A batch with one label per row, time-first."""
    tokens: np.ndarray     # (T, B) int64
    labels: np.ndarray     # (B,) int64
    mask: np.ndarray       # (T, B) bool, True at real tokens, False at padding


# ----------------------------------------------------------------- option validation
def _check_range(low_name: str, low, high_name: str, high, minimum: int, maximum: int | None = None):
    low = check_int(low_name, low, minimum, maximum)
    high = check_int(high_name, high, minimum, maximum)
    if low > high:
        raise ValueError(f"{low_name} <= {high_name} required; got {low_name}={low}, {high_name}={high}")
    return low, high


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False; got {value!r}")
    return bool(value)


def _check_maxlen(maxlen, needed: int, what: str) -> int:
    """maxlen (default `needed`) as an int >= needed."""
    if maxlen is None:
        return needed
    maxlen = check_int("maxlen", maxlen, 1)
    if maxlen < needed:
        raise ValueError(f"maxlen must be >= {needed} ({what}); got {maxlen}")
    return maxlen


# ----------------------------------------------------------------- lengths and splits
def stratified_lengths(size: int, n_min: int, n_max: int) -> np.ndarray:
    """n_i = floor((n_max - n_min + 1) i / size) + n_min for i = 0..size-1 (spec A4), unshuffled.

    Every length gets floor or ceil of size / (n_max - n_min + 1) rows. Returns (size,) int64.
    """
    size = check_int("size", size, 1)
    n_min, n_max = _check_range("n_min", n_min, "n_max", n_max, 0)
    i = np.arange(size, dtype=np.int64)
    return (n_max - n_min + 1) * i // size + n_min


def _lengths(rng: np.random.Generator, B: int, n_min: int, n_max: int, stratified: bool) -> np.ndarray:
    """(B,) lengths: stratified then shuffled, or U{n_min..n_max} per row."""
    if stratified:
        return rng.permutation(stratified_lengths(B, n_min, n_max))
    return rng.integers(n_min, n_max + 1, size=B).astype(np.int64)


def length_split(task: str, split: str, n: int = 10, version: str = "final") -> tuple[int, int]:
    """(n_min, n_max) of a length split of addition, reverse or reduce (module docstring table).

    Args:
        task: "addition" | "reverse" | "reduce".
        split: "train" | "id_val" | "ood_val" | "ood_test".
        n: the training maximum (>= 1).
        version: "final" (the `main` branch) or "v1" (the `iclr` branch).
    """
    if task not in NSP_TASKS:
        raise ValueError(f"task must be one of {NSP_TASKS}; got {task!r}")
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}; got {version!r}")
    n = check_int("n", n, 1)
    if version == "final":
        ood_val, ood_test = (1, 6), (7, 12)
    elif task == "reduce":
        ood_val, ood_test = (1, 3), (4, 6)
    else:
        ood_val, ood_test = (1, 4), (5, 8)
    splits = {"train": (1, n), "id_val": ((n + 1) // 2, n),
              "ood_val": (n + ood_val[0], n + ood_val[1]), "ood_test": (n + ood_test[0], n + ood_test[1])}
    if split not in splits:
        raise ValueError(f"split must be one of {tuple(splits)}; got {split!r}")
    return splits[split]


def nsp_maxlen(task: str, n_max: int, version: str = "final") -> int:
    """The row length the reference uses for a set whose longest sample has n_max digits (A4)."""
    n_max = check_int("n_max", n_max, 1)
    if task == "addition":
        return 3 * (n_max + 2) + 3 if version == "final" else 3 * (n_max + 1) + 2
    if task == "reverse":
        return 2 * (n_max + 1) + 1
    if task == "reduce":
        return 2 * n_max + 1
    raise ValueError(f"task must be one of {NSP_TASKS}; got {task!r}")


# ----------------------------------------------------------------- A4 generators
def _digits_le(value: int) -> list[int]:
    """Little-endian decimal digits of a non-negative integer (0 -> [0])."""
    return [int(c) for c in reversed(str(int(value)))]


def _empty_rows(T: int, B: int, pad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.full((T, B), pad, dtype=np.int64), np.full((T, B), pad, dtype=np.int64),
            np.zeros((T, B), dtype=bool))


def make_addition(rng: np.random.Generator, batch_size: int, *, n_min: int = 1, n_max: int = 10,
                  maxlen: int | None = None, version: str = "final", stratified: bool = True) -> SequenceBatch:
    """Addition ("add"/"fib"), corrected format (module docstring). Digits per row: n, the length of b.

    Args:
        rng: the only source of randomness.
        batch_size: B.
        n_min, n_max: lengths n of b, 1 <= n_min <= n_max <= 17 (int64 arithmetic).
        maxlen: row length T; default the reference's for n_max (nsp_maxlen).
        version: "final" (a has s ~ U{1..n+1} digits) or "v1" (s ~ U{1..n}).
        stratified: lengths by the stratified rule (shuffled), else U{n_min..n_max} per row.
    Returns:
        SequenceBatch; answer marks the len(c) positions of the sum.
    """
    check_rng(rng)
    B = check_int("batch_size", batch_size, 1)
    n_min, n_max = _check_range("n_min", n_min, "n_max", n_max, 1, 17)
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}; got {version!r}")
    extra = 1 if version == "final" else 0
    # the longest block: DELIM a DELIM b DELIM c EOS with |a| = n + extra, |b| = n, |c| = n + extra + 1
    T = _check_maxlen(maxlen, nsp_maxlen("addition", n_max, version), "the reference row length")
    longest = 3 * n_max + 2 * extra + 5
    if T < longest:
        raise ValueError(f"maxlen must be >= {longest} to hold n_max={n_max}; got {T}")
    stratified = _check_bool("stratified", stratified)
    lengths = _lengths(rng, B, n_min, n_max, stratified)
    inputs, targets, answer = _empty_rows(T, B, PAD)
    for b, n in enumerate(lengths):
        s = int(rng.integers(1, n + extra + 1))                  # digits of a
        a = int(rng.integers(1, 10 ** s))
        b_value = int(rng.integers(10 ** (n - 1), 10 ** n))
        a_d, b_d, c_d = _digits_le(a), _digits_le(b_value), _digits_le(a + b_value)
        prefix = [DELIM] + a_d + [DELIM] + b_d + [DELIM]
        block = len(prefix) + len(c_d) + 1
        p = int(rng.integers(0, T - block)) if T - block >= 1 else 0
        row_in = prefix + [MASK] * len(c_d) + [EOS]
        row_out = prefix + c_d + [EOS]
        inputs[p:p + block, b], targets[p:p + block, b] = row_in, row_out
        answer[p + len(prefix):p + len(prefix) + len(c_d), b] = True
    return SequenceBatch(inputs, targets, answer, lengths)


def make_reverse(rng: np.random.Generator, batch_size: int, *, n_min: int = 1, n_max: int = 10,
                 maxlen: int | None = None, stratified: bool = True) -> SequenceBatch:
    """Reverse ("palin"), corrected format: MASK x n in the input answer region, reversed(s) in the
    target (module docstring).

    Args:
        rng, batch_size, stratified: as in make_addition.
        n_min, n_max: string lengths, 1 <= n_min <= n_max.
        maxlen: row length T >= 2 n_max + 3; default 2(n_max + 1) + 1.
    Returns:
        SequenceBatch; answer marks the n positions of reversed(s).
    """
    check_rng(rng)
    B = check_int("batch_size", batch_size, 1)
    n_min, n_max = _check_range("n_min", n_min, "n_max", n_max, 1)
    T = _check_maxlen(maxlen, nsp_maxlen("reverse", n_max), "2 (n_max + 1) + 1")
    stratified = _check_bool("stratified", stratified)
    lengths = _lengths(rng, B, n_min, n_max, stratified)
    inputs, targets, answer = _empty_rows(T, B, PAD)
    for b, n in enumerate(lengths):
        s = rng.integers(0, DIGITS, size=n)
        first = int(rng.integers(1, T - 2 * n - 1))             # U{1..T - 2n - 2}: the first digit of s
        start = first - 1                                        # the leading DELIM
        head = np.concatenate([[DELIM], s, [DELIM]])
        inputs[start:start + n + 2, b] = targets[start:start + n + 2, b] = head
        inputs[first + n + 1:first + 2 * n + 1, b] = MASK
        targets[first + n + 1:first + 2 * n + 1, b] = s[::-1]
        answer[first + n + 1:first + 2 * n + 1, b] = True
        inputs[first + 2 * n + 1, b] = targets[first + 2 * n + 1, b] = EOS
    return SequenceBatch(inputs, targets, answer, lengths)


def make_reduce(rng: np.random.Generator, batch_size: int, *, n_min: int = 1, n_max: int = 10,
                maxlen: int | None = None, stratified: bool = True) -> SequenceBatch:
    """Sequence reduction ("reduce"): drop the zeros (module docstring). Vocabulary 12, PAD = 11.

    Args:
        rng, batch_size, stratified: as in make_addition.
        n_min, n_max: input lengths, 1 <= n_min <= n_max.
        maxlen: row length T; default 2 n_max + 1; the leading padding is p ~ U{0..(T - 1)//2 - n}.
    Returns:
        SequenceBatch; answer marks the positions after the DELIM that hold a kept digit.
    """
    check_rng(rng)
    B = check_int("batch_size", batch_size, 1)
    n_min, n_max = _check_range("n_min", n_min, "n_max", n_max, 1)
    T = _check_maxlen(maxlen, nsp_maxlen("reduce", n_max), "2 n_max + 1")
    stratified = _check_bool("stratified", stratified)
    lengths = _lengths(rng, B, n_min, n_max, stratified)
    layout_max = (T - 1) // 2
    inputs, targets, answer = _empty_rows(T, B, REDUCE_PAD)
    for b, n in enumerate(lengths):
        zero = rng.random(n) < 0.5
        x = np.where(zero, 0, rng.integers(1, DIGITS, size=n))
        p = int(rng.integers(0, layout_max - n + 1))
        inputs[p:p + n, b] = x
        inputs[p + n, b] = DELIM
        kept = x[x != 0]
        targets[p + n + 1:p + n + 1 + kept.size, b] = kept
        answer[p + n + 1:p + n + 1 + kept.size, b] = True
    return SequenceBatch(inputs, targets, answer, lengths)


def dyck_prefix(rng: np.random.Generator, depth: int, min_len: int, max_len: int,
                max_tries: int = 10_000) -> list[int]:
    """One 4-Dyck prefix (token ids) ending at exactly `depth` open brackets, with
    min_len < length < max_len (module docstring). Raises ValueError after max_tries rejections."""
    for _ in range(max_tries):
        stack, prefix = [], []
        while not (len(stack) >= depth and len(prefix) > min_len):
            if stack and rng.random() < 0.3:
                prefix.append(stack.pop() + 1)                   # the closer of the top opener
            else:
                opener = 2 * int(rng.integers(0, 4))
                stack.append(opener)
                prefix.append(opener)
            if len(prefix) >= max_len:
                break
        while len(stack) > depth:
            prefix.append(stack.pop() + 1)
        if len(prefix) < max_len and len(stack) == depth:
            return prefix
    raise ValueError(f"no 4-Dyck prefix of depth {depth} with {min_len} < length < {max_len} "
                     f"in {max_tries} tries; widen the length range")


def dyck_completion(prefix) -> list[int]:
    """The closers of the brackets a prefix leaves open, innermost first (ValueError if the prefix
    closes a bracket it did not open)."""
    stack = []
    for token in prefix:
        token = int(token)
        if token % 2 == 0 and token < 8:
            stack.append(token)
        elif token < 8 and stack and stack[-1] == token - 1:
            stack.pop()
        else:
            raise ValueError(f"not a 4-Dyck prefix: token {token} does not close the top of the stack")
    return [t + 1 for t in reversed(stack)]


def make_dyck(rng: np.random.Generator, batch_size: int, *, depth_min: int = 2, depth_max: int = 8,
              min_len: int = 8, max_len: int = 32, maxlen: int | None = None,
              stratified: bool = True) -> SequenceBatch:
    """4-Dyck completion (final code only; module docstring). lengths holds each row's depth.

    Args:
        rng, batch_size, stratified: as in make_addition (stratified over depths here).
        depth_min, depth_max: open brackets to complete, 1 <= depth_min <= depth_max.
        min_len, max_len: the prefix length lies in (min_len, max_len); max_len > max(min_len, depth_max) + 1.
        maxlen: row length T; default (max_len - 1) + 1 + depth_max.
    Returns:
        SequenceBatch; answer marks the depth positions of the closers.
    """
    check_rng(rng)
    B = check_int("batch_size", batch_size, 1)
    depth_min, depth_max = _check_range("depth_min", depth_min, "depth_max", depth_max, 1)
    min_len = check_int("min_len", min_len, 0)
    max_len = check_int("max_len", max_len, max(min_len, depth_max) + 2)
    T = _check_maxlen(maxlen, max_len + depth_max, "(max_len - 1) + 1 + depth_max")
    stratified = _check_bool("stratified", stratified)
    depths = _lengths(rng, B, depth_min, depth_max, stratified)
    inputs, targets, answer = _empty_rows(T, B, DYCK_PAD)
    for b, depth in enumerate(depths):
        prefix = dyck_prefix(rng, int(depth), min_len, max_len)
        closers = dyck_completion(prefix)
        m = len(prefix)
        inputs[:m, b] = targets[:m, b] = prefix
        inputs[m, b] = targets[m, b] = DYCK_SEP
        inputs[m + 1:m + 1 + depth, b] = DYCK_MASK
        targets[m + 1:m + 1 + depth, b] = closers
        answer[m + 1:m + 1 + depth, b] = True
    return SequenceBatch(inputs, targets, answer, depths)


_NSP_MAKERS = {"addition": make_addition, "reverse": make_reverse, "reduce": make_reduce}


def make_length_set(task: str, rng: np.random.Generator, size: int, split: str, *, n: int = 10,
                    version: str = "final", maxlen: int | None = None) -> SequenceBatch:
    """A fixed, stratified set of one length split (module docstring table).

    Args:
        task: "addition" | "reverse" | "reduce" | "dyck".
        rng: the only source of randomness.
        size: number of rows (the spec's sizes: DYCK_SPLITS[split]["size"]; 1,024 or 2,560 validation rows).
        split: addition/reverse/reduce: "train" | "id_val" | "ood_val" | "ood_test";
            dyck: a key of DYCK_SPLITS.
        n: the training maximum (ignored by dyck); version: "final" | "v1" (ignored by dyck).
        maxlen: the row length; default the reference's for this split's longest sample. Pass one
            value for every split to give a model rows of one length.
    Returns:
        SequenceBatch with B = size.
    """
    if task == "dyck":
        if version != "final":
            raise ValueError("the dyck task exists only in the final code (version='final')")
        if split not in DYCK_SPLITS:
            raise ValueError(f"dyck split must be one of {tuple(DYCK_SPLITS)}; got {split!r}")
        options = {k: v for k, v in DYCK_SPLITS[split].items() if k != "size"}
        return make_dyck(rng, size, maxlen=maxlen, stratified=True, **options)
    if task not in _NSP_MAKERS:
        raise ValueError(f"task must be one of {NSP_TASKS + ('dyck',)}; got {task!r}")
    n_min, n_max = length_split(task, split, n, version)
    options = dict(version=version) if task == "addition" else {}     # reverse/reduce rows: one layout
    return _NSP_MAKERS[task](rng, size, n_min=n_min, n_max=n_max, maxlen=maxlen, stratified=True, **options)


# ----------------------------------------------------------------- LSAM associative recall
def recall_vocab(num_keys: int = 16) -> dict[str, int]:
    """Token ids of the LSAM recall task: {"key0", "query", "pad", "vocab"} (values are 0..9)."""
    K = check_int("num_keys", num_keys, 1)
    return {"key0": DIGITS, "query": DIGITS + K, "pad": DIGITS + K + 1, "vocab": DIGITS + K + 2}


def make_lsam_recall(rng: np.random.Generator, batch_size: int, *, n_min: int = 2, n_max: int = 6,
                     num_keys: int = 16, maxlen: int | None = None, stratified: bool = True) -> ClassificationBatch:
    """LSAM associative recall (A4, CPU version; module docstring). Left padding, label v_j.

    Args:
        rng, batch_size, stratified: as in make_addition.
        n_min, n_max: stored pairs, 1 <= n_min <= n_max <= num_keys (keys are distinct).
        num_keys: K key symbols (tokens 10..10+K-1).
        maxlen: row length T >= 2 n_max + 2; default 2 n_max + 2. Pass 26 for every split of the
            spec's train n 2..6 / test n 7..12 protocol.
    Returns:
        ClassificationBatch; mask is False on the leading padding.
    """
    check_rng(rng)
    B = check_int("batch_size", batch_size, 1)
    K = check_int("num_keys", num_keys, 1)
    n_min, n_max = _check_range("n_min", n_min, "n_max", n_max, 1, K)
    T = _check_maxlen(maxlen, 2 * n_max + 2, "2 n_max + 2")
    stratified = _check_bool("stratified", stratified)
    vocab = recall_vocab(K)
    n = _lengths(rng, B, n_min, n_max, stratified)
    keys = np.argsort(rng.random((B, K)), axis=1)                    # (B, K) a random order of all keys
    values = rng.integers(0, DIGITS, size=(B, K))                    # (B, K) the value of the i-th stored pair
    j = np.floor(rng.random(B) * n).astype(np.int64)                 # (B,) U{0..n-1}, the queried pair
    tokens = np.full((T, B), vocab["pad"], dtype=np.int64)
    mask = np.zeros((T, B), dtype=bool)
    for b in range(B):
        start = T - (2 * n[b] + 2)
        pairs = np.stack([vocab["key0"] + keys[b, :n[b]], values[b, :n[b]]], axis=1).reshape(-1)
        tokens[start:, b] = np.concatenate([pairs, [vocab["query"], vocab["key0"] + keys[b, j[b]]]])
        mask[start:, b] = True
    labels = values[np.arange(B), j]
    return ClassificationBatch(tokens, labels.astype(np.int64), mask)


# ----------------------------------------------------------------- one-hop associative retrieval
def retrieval_vocab(num_keys: int = 16) -> dict[str, int]:
    """Token ids of the retrieval task: pair key*10 + value, {"query0": 10K, "pad": 11K, "vocab": 11K + 1}."""
    K = check_int("num_keys", num_keys, 1)
    return {"query0": DIGITS * K, "pad": (DIGITS + 1) * K, "vocab": (DIGITS + 1) * K + 1}


def make_retrieval(rng: np.random.Generator, batch_size: int, *, num_keys: int = 16, n_min: int = 4,
                   n_max: int = 16, maxlen: int | None = None, stratified: bool = True) -> ClassificationBatch:
    """One-hop associative retrieval (A6.6; module docstring). Right padding, label = queried value.
    RETRIEVAL_CAPACITY holds the options of the capacity variant (K 64, n 16..64).

    Args:
        rng, batch_size, stratified: as in make_addition.
        num_keys: K (vocabulary 11K + 1).
        n_min, n_max: stored pairs, 1 <= n_min <= n_max <= K.
        maxlen: row length T >= 1 + n_max; default 1 + n_max.
    Returns:
        ClassificationBatch; tokens[0] is the query, mask is False on the trailing padding.
    """
    check_rng(rng)
    B = check_int("batch_size", batch_size, 1)
    K = check_int("num_keys", num_keys, 1)
    n_min, n_max = _check_range("n_min", n_min, "n_max", n_max, 1, K)
    T = _check_maxlen(maxlen, 1 + n_max, "1 + n_max")
    stratified = _check_bool("stratified", stratified)
    vocab = retrieval_vocab(K)
    n = _lengths(rng, B, n_min, n_max, stratified)
    keys = np.argsort(rng.random((B, K)), axis=1)                    # (B, K) the stored keys, in order
    values = rng.integers(0, DIGITS, size=(B, K))                    # (B, K) their values
    j = np.floor(rng.random(B) * n).astype(np.int64)                 # (B,) which stored pair is queried
    position = np.arange(T - 1)[:, None]                             # (T - 1, 1)
    stored = position < n[None, :]                                   # (T - 1, B)
    pair = np.zeros((T - 1, B), dtype=np.int64)                      # (T - 1, B) pair tokens by position
    m = min(T - 1, K)
    pair[:m] = (DIGITS * keys + values).T[:m]
    tokens = np.empty((T, B), dtype=np.int64)
    tokens[0] = vocab["query0"] + keys[np.arange(B), j]
    tokens[1:] = np.where(stored, pair, vocab["pad"])
    mask = np.concatenate([np.ones((1, B), dtype=bool), stored], axis=0)
    return ClassificationBatch(tokens, values[np.arange(B), j].astype(np.int64), mask)


# ----------------------------------------------------------------- mini-ListOps (LRA generator)
def _listops_tree(rng: np.random.Generator, depth: int, max_depth: int, max_args: int, operator_p: float):
    """LRA's generate_tree: (tree, token count). A tree is a digit or (operator, [children])."""
    if depth < max_depth and rng.random() <= operator_p:
        op = int(rng.integers(0, len(LISTOPS_OPERATORS)))
        children = [_listops_tree(rng, depth + 1, max_depth, max_args, operator_p)
                    for _ in range(int(rng.integers(2, max_args + 1)))]
        return (op, [c[0] for c in children]), 2 + sum(c[1] for c in children)
    return int(rng.integers(0, DIGITS)), 1


def _listops_apply(op: int, values: list[int]) -> int:
    if op == 0:
        return min(values)
    if op == 1:
        return max(values)
    if op == 2:
        return int(np.median(values))                             # truncation toward 0, as int() in LRA
    return sum(values) % 10


def _listops_flatten(tree) -> tuple[list[int], int]:
    """(token ids, value) of a tree."""
    if isinstance(tree, int):
        return [tree], tree
    op, children = tree
    tokens, values = [DIGITS + op], []
    for child in children:
        child_tokens, value = _listops_flatten(child)
        tokens += child_tokens
        values.append(value)
    return tokens + [LISTOPS_CLOSE], _listops_apply(op, values)


def listops_evaluate(tokens) -> int:
    """The value of a ListOps token sequence (CLS and PAD ignored), by a stack machine: an
    independent evaluator of the generator's labels. ValueError on a malformed sequence."""
    stack: list[list[int]] = [[-1]]                                  # the root frame collects one value
    for token in tokens:
        token = int(token)
        if token in (LISTOPS_CLS, LISTOPS_PAD):
            continue
        if 0 <= token < DIGITS:
            stack[-1].append(token)
        elif DIGITS <= token < DIGITS + len(LISTOPS_OPERATORS):
            stack.append([token - DIGITS])
        elif token == LISTOPS_CLOSE and len(stack) > 1 and len(stack[-1]) > 1:
            frame = stack.pop()
            stack[-1].append(_listops_apply(frame[0], frame[1:]))
        else:
            raise ValueError(f"malformed ListOps sequence at token {token}")
    if len(stack) != 1 or len(stack[0]) != 2:
        raise ValueError("malformed ListOps sequence: unbalanced or not exactly one value")
    return stack[0][1]


def listops_string(tokens) -> str:
    """The sequence as text, e.g. "CLS [MAX 2 9 [MIN 4 7 ] 0 ]" (PAD dropped)."""
    return " ".join(LISTOPS_TOKENS[int(t)] for t in tokens if int(t) != LISTOPS_PAD)


def make_listops(rng: np.random.Generator, batch_size: int, *, max_depth: int = 3, max_args: int = 4,
                 operator_p: float = 0.5, min_len: int = 8, max_len: int = 63, maxlen: int | None = None,
                 max_tries: int = 100_000) -> ClassificationBatch:
    """Mini-ListOps (A6.6-A6.7; module docstring). Row = CLS, the tree's tokens, PAD.

    Args:
        rng, batch_size: as in make_addition.
        max_depth: >= 1 (root depth 1; 1 gives single digits); max_args: >= 2 children per operator.
        operator_p: probability that a node above max_depth is an operator, in (0, 1].
        min_len, max_len: accepted token counts, inclusive, 1 <= min_len <= max_len.
        maxlen: row length T >= 1 + max_len; default 1 + max_len (64).
        max_tries: rejected trees before ValueError (the length range may be unreachable).
    Returns:
        ClassificationBatch with labels in 0..9.
    """
    check_rng(rng)
    B = check_int("batch_size", batch_size, 1)
    max_depth = check_int("max_depth", max_depth, 1)
    max_args = check_int("max_args", max_args, 2)
    if isinstance(operator_p, bool) or not isinstance(operator_p, (int, float, np.floating)) \
            or not 0.0 < operator_p <= 1.0:
        raise ValueError(f"operator_p must be a probability in (0, 1]; got {operator_p!r}")
    min_len, max_len = _check_range("min_len", min_len, "max_len", max_len, 1)
    T = _check_maxlen(maxlen, 1 + max_len, "1 + max_len")
    tokens = np.full((T, B), LISTOPS_PAD, dtype=np.int64)
    labels = np.empty(B, dtype=np.int64)
    mask = np.zeros((T, B), dtype=bool)
    tries = 0
    for b in range(B):
        while True:
            tree, length = _listops_tree(rng, 1, max_depth, max_args, float(operator_p))
            if min_len <= length <= max_len:
                break
            tries += 1
            if tries > max_tries:
                raise ValueError(f"no ListOps tree with {min_len} <= length <= {max_len} in {max_tries} "
                                 f"tries (max_depth={max_depth}, max_args={max_args}, operator_p={operator_p})")
        row, labels[b] = _listops_flatten(tree)
        tokens[0, b] = LISTOPS_CLS
        tokens[1:1 + len(row), b] = row
        mask[:1 + len(row), b] = True
    return ClassificationBatch(tokens, labels, mask)


# ----------------------------------------------------------------- metrics
def sequence_accuracy(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-row sequence accuracy (A4): 1.0 where the argmax is right at EVERY position.

    Args:
        logits: (T, B, V); targets: (T, B) int.
    Returns:
        (B,) float64 of 0.0 / 1.0.
    """
    logits, targets = np.asarray(logits), np.asarray(targets)
    if logits.ndim != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"logits must be (T, B, V) and targets (T, B); got {logits.shape}, {targets.shape}")
    return np.all(np.argmax(logits, axis=-1) == targets, axis=0).astype(np.float64)


def accuracy_by_length(correct: np.ndarray, lengths: np.ndarray) -> dict[int, float]:
    """{n: mean of correct over the rows of length n}, sorted by n."""
    correct, lengths = np.asarray(correct, dtype=np.float64), np.asarray(lengths)
    if correct.shape != lengths.shape or correct.ndim != 1:
        raise ValueError(f"correct and lengths must both be (B,); got {correct.shape}, {lengths.shape}")
    return {int(n): float(correct[lengths == n].mean()) for n in np.unique(lengths)}

