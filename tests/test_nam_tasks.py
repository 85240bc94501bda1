"""Tests for minimem.tasks.nam_tasks (specs/nam_hma.md A4, A6.6, A6.7).

Every row is decoded independently of the generator and its answer recomputed: sums, reversals,
reductions, Dyck closers, recalled and retrieved values, ListOps values. Also the corrected
reverse/addition format (MASK in the input, the answer in the target: pitfall C.3), stratified
lengths, the split tables, seeding, and bad options.
"""

from __future__ import annotations

import numpy as np
import pytest

from minimem.tasks import nam_tasks as nt


def rng(seed=0):
    return np.random.default_rng(seed)


def digits_value(digits) -> int:
    """Little-endian digits -> integer."""
    return sum(int(d) * 10 ** i for i, d in enumerate(digits))


# ----------------------------------------------------------------- lengths and splits
def test_stratified_lengths_follow_the_formula_and_balance_every_length():
    n = nt.stratified_lengths(10, 1, 3)
    np.testing.assert_array_equal(n, [1, 1, 1, 1, 2, 2, 2, 3, 3, 3])   # floor(3 i / 10) + 1
    counts = np.bincount(nt.stratified_lengths(1000, 3, 9))[3:]
    assert counts.max() - counts.min() <= 1 and counts.sum() == 1000


def test_batches_are_stratified_then_shuffled():
    batch = nt.make_reverse(rng(), 60, n_min=1, n_max=5)
    assert np.all(np.bincount(batch.lengths)[1:] == 12)
    assert not np.all(np.diff(batch.lengths) >= 0)                   # shuffled
    free = nt.make_reverse(rng(), 60, n_min=1, n_max=5, stratified=False)
    assert set(free.lengths) <= set(range(1, 6))


@pytest.mark.parametrize("task, version, expected", [
    ("reverse", "final", {"train": (1, 10), "id_val": (5, 10), "ood_val": (11, 16), "ood_test": (17, 22)}),
    ("addition", "v1", {"train": (1, 10), "id_val": (5, 10), "ood_val": (11, 14), "ood_test": (15, 18)}),
    ("reduce", "v1", {"train": (1, 10), "id_val": (5, 10), "ood_val": (11, 13), "ood_test": (14, 16)}),
    ("reduce", "final", {"train": (1, 10), "id_val": (5, 10), "ood_val": (11, 16), "ood_test": (17, 22)}),
])
def test_length_splits_are_the_spec_table(task, version, expected):
    for split, lengths in expected.items():
        assert nt.length_split(task, split, 10, version) == lengths
    assert nt.length_split("reverse", "id_val", 5) == (3, 5)          # odd n rounds up (A4 calibration)


def test_reference_row_lengths():
    assert nt.nsp_maxlen("reverse", 12) == 27                        # the NAM-TM demo's 2 * 12 + 3
    assert nt.nsp_maxlen("addition", 10) == 39 and nt.nsp_maxlen("addition", 10, "v1") == 35
    assert nt.nsp_maxlen("reduce", 10) == 21


# ----------------------------------------------------------------- addition
@pytest.mark.parametrize("version", ["final", "v1"])
def test_addition_rows_hold_the_sum_in_the_target_and_mask_in_the_input(version):
    batch = nt.make_addition(rng(1), 200, n_min=1, n_max=6, version=version)
    T = nt.nsp_maxlen("addition", 6, version)
    assert batch.inputs.shape == batch.targets.shape == batch.answer.shape == (T, 200)
    extra = 1 if version == "final" else 0
    a_lengths = set()
    for b in range(200):
        x, y, ans, n = batch.inputs[:, b], batch.targets[:, b], batch.answer[:, b], batch.lengths[b]
        first = int(np.argmax(x == nt.DELIM))
        assert np.all(x[:first] == nt.PAD)
        delims = first + np.flatnonzero(x[first:] == nt.DELIM)
        assert len(delims) == 3
        a, b_digits = x[delims[0] + 1:delims[1]], x[delims[1] + 1:delims[2]]
        eos = int(np.flatnonzero(x == nt.EOS)[0])
        c = y[delims[2] + 1:eos]
        assert len(b_digits) == n and b_digits[-1] != 0               # b has exactly n digits
        assert 1 <= len(a) <= n + extra and a[-1] != 0
        a_lengths.add(len(a) - n)
        assert digits_value(c) == digits_value(a) + digits_value(b_digits)
        assert c[-1] != 0
        assert np.all(x[delims[2] + 1:eos] == nt.MASK)               # the corrected format
        np.testing.assert_array_equal(np.flatnonzero(ans), np.arange(delims[2] + 1, eos))
        np.testing.assert_array_equal(x[~ans], y[~ans])              # targets echo the input elsewhere
        assert np.all(x[eos + 1:] == nt.PAD)
    assert (1 in a_lengths) == (version == "final")                   # final: a may have n + 1 digits


def test_addition_shift_spans_the_spec_range():
    batch = nt.make_addition(rng(2), 400, n_min=1, n_max=1)
    T = batch.inputs.shape[0]
    lead = np.argmax(batch.inputs == nt.DELIM, axis=0)
    block = np.argmax(batch.inputs == nt.EOS, axis=0) - lead + 1
    assert lead.min() == 0 and np.all(lead <= T - block - 1)
    assert np.any(lead == T - block - 1)


# ----------------------------------------------------------------- reverse
def test_reverse_rows_are_the_corrected_format():
    n_max = 6
    batch = nt.make_reverse(rng(3), 300, n_min=1, n_max=n_max)
    T = 2 * (n_max + 1) + 1
    assert batch.inputs.shape == (T, 300)
    firsts = []
    for b in range(300):
        x, y, ans, n = batch.inputs[:, b], batch.targets[:, b], batch.answer[:, b], int(batch.lengths[b])
        first = int(np.argmax(x == nt.DELIM)) + 1                    # the first digit of s
        firsts.append((first, n))
        assert 1 <= first <= T - 2 * n - 2
        s = x[first:first + n]
        assert np.all(x[:first - 1] == nt.PAD) and np.all(s < 10) and x[first + n] == nt.DELIM
        np.testing.assert_array_equal(x[first + n + 1:first + 2 * n + 1], [nt.MASK] * n)   # MASK in the input
        np.testing.assert_array_equal(y[first + n + 1:first + 2 * n + 1], s[::-1])         # answer in the target
        assert x[first + 2 * n + 1] == y[first + 2 * n + 1] == nt.EOS
        assert np.all(x[first + 2 * n + 2:] == nt.PAD)
        np.testing.assert_array_equal(np.flatnonzero(ans), np.arange(first + n + 1, first + 2 * n + 1))
        np.testing.assert_array_equal(x[~ans], y[~ans])
    assert all(f == 1 for f, n in firsts if n == n_max)              # the longest rows fill the row
    assert max(f for f, n in firsts if n == 1) == T - 4


def test_reverse_with_a_longer_row_for_every_split():
    batch = nt.make_length_set("reverse", rng(4), 60, "ood_val", n=5, maxlen=27)    # lengths 6..11
    assert batch.inputs.shape == (27, 60) and set(batch.lengths) == set(range(6, 12))
    with pytest.raises(ValueError, match="maxlen"):
        nt.make_reverse(rng(), 4, n_min=1, n_max=12, maxlen=26)


# ----------------------------------------------------------------- reduce
def test_reduce_targets_keep_the_nonzero_digits_in_order():
    batch = nt.make_reduce(rng(5), 300, n_min=1, n_max=7)
    T = 15
    assert batch.inputs.shape == (T, 300)
    zeros = 0
    for b in range(300):
        x, y, n = batch.inputs[:, b], batch.targets[:, b], int(batch.lengths[b])
        p = int(np.argmax(x != nt.REDUCE_PAD))
        assert 0 <= p <= 7 - n
        digits = x[p:p + n]
        zeros += np.sum(digits == 0)
        assert x[p + n] == nt.DELIM and np.all(x[p + n + 1:] == nt.REDUCE_PAD) and np.all(digits < 10)
        kept = digits[digits != 0]
        assert np.all(y[:p + n + 1] == nt.REDUCE_PAD)                # PAD up to and including DELIM
        np.testing.assert_array_equal(y[p + n + 1:p + n + 1 + kept.size], kept)
        assert np.all(y[p + n + 1 + kept.size:] == nt.REDUCE_PAD)
        assert batch.answer[:, b].sum() == kept.size
    assert 0.4 < zeros / batch.lengths.sum() < 0.6                   # x_i = 0 with probability 1/2


# ----------------------------------------------------------------- dyck
def matching_closers(prefix):
    """Independent check: the closers of a bracket prefix, innermost first, via a dict."""
    pairs = {0: 1, 2: 3, 4: 5, 6: 7}
    stack = []
    for t in prefix:
        if t in pairs:
            stack.append(t)
        else:
            assert stack and pairs[stack.pop()] == t
    return [pairs[t] for t in reversed(stack)]


def test_dyck_rows_complete_the_prefix():
    batch = nt.make_dyck(rng(6), 200, depth_min=2, depth_max=5, min_len=6, max_len=24)
    T = 23 + 1 + 5
    assert batch.inputs.shape == (T, 200)
    for b in range(200):
        x, y, depth = batch.inputs[:, b], batch.targets[:, b], int(batch.lengths[b])
        m = int(np.flatnonzero(x == nt.DYCK_SEP)[0])
        assert 6 < m < 24
        closers = matching_closers(list(x[:m]))
        assert len(closers) == depth
        np.testing.assert_array_equal(y[:m + 1], x[:m + 1])
        np.testing.assert_array_equal(x[m + 1:m + 1 + depth], [nt.DYCK_MASK] * depth)
        np.testing.assert_array_equal(y[m + 1:m + 1 + depth], closers)
        assert np.all(x[m + 1 + depth:] == nt.DYCK_PAD) and np.all(y[m + 1 + depth:] == nt.DYCK_PAD)
    assert nt.dyck_completion([0, 2, 3, 4]) == [5, 1]
    with pytest.raises(ValueError, match="4-Dyck"):
        nt.dyck_completion([0, 3])


def test_dyck_splits_have_the_spec_depths_and_lengths():
    for split, expected in nt.DYCK_SPLITS.items():
        batch = nt.make_length_set("dyck", rng(7), 64, split)
        m = np.argmax(batch.inputs == nt.DYCK_SEP, axis=0)
        assert batch.lengths.min() == expected["depth_min"] and batch.lengths.max() == expected["depth_max"]
        assert m.min() > expected["min_len"] and m.max() < expected["max_len"]
    assert nt.DYCK_SPLITS["train"]["size"] == 12_800 and nt.DYCK_SPLITS["depth_ood"]["size"] == 2_048


# ----------------------------------------------------------------- LSAM recall
def test_lsam_recall_label_is_the_value_after_the_queried_key():
    vocab = nt.recall_vocab(16)
    assert vocab == {"key0": 10, "query": 26, "pad": 27, "vocab": 28}
    batch = nt.make_lsam_recall(rng(8), 200, n_min=2, n_max=6, maxlen=26)
    assert batch.tokens.shape == (26, 200)
    for b in range(200):
        row, mask = batch.tokens[:, b], batch.mask[:, b]
        start = int(np.argmax(mask))
        assert np.all(row[:start] == 27) and np.all(mask[start:])    # left padding
        body = row[start:]
        assert body[-2] == 26
        keys, values = body[:-2:2], body[1:-2:2]
        assert 2 <= len(keys) <= 6 and len(set(keys)) == len(keys)   # distinct keys
        assert np.all((keys >= 10) & (keys < 26)) and np.all(values < 10)
        assert body[-1] in keys and batch.labels[b] == values[list(keys).index(body[-1])]


# ----------------------------------------------------------------- retrieval
@pytest.mark.parametrize("options, T, V", [({}, 17, 177), (nt.RETRIEVAL_CAPACITY, 65, 705)])
def test_retrieval_label_is_the_value_stored_under_the_query_key(options, T, V):
    K = options.get("num_keys", 16)
    vocab = nt.retrieval_vocab(K)
    assert vocab["vocab"] == V and vocab["pad"] == V - 1
    batch = nt.make_retrieval(rng(9), 100, **options)
    assert batch.tokens.shape == (T, 100) and batch.tokens.max() < V
    for b in range(100):
        row, mask = batch.tokens[:, b], batch.mask[:, b]
        n = int(mask.sum()) - 1
        assert options.get("n_min", 4) <= n <= options.get("n_max", 16)
        assert np.all(mask[:n + 1]) and np.all(row[n + 1:] == vocab["pad"])
        query = row[0] - vocab["query0"]
        pairs = row[1:n + 1]
        keys, values = pairs // 10, pairs % 10
        assert 0 <= query < K and len(set(keys)) == n and query in keys
        assert batch.labels[b] == values[list(keys).index(query)]


def test_retrieval_query_position_is_uniform_over_the_stored_pairs():
    batch = nt.make_retrieval(rng(10), 4000, n_min=4, n_max=4)
    keys = batch.tokens[1:5] // 10
    where = np.argmax(keys == (batch.tokens[0] - 160), axis=0)
    assert np.all(np.abs(np.bincount(where) / 4000 - 0.25) < 0.03)


# ----------------------------------------------------------------- ListOps
def test_listops_evaluator_on_hand_examples():
    MIN, MAX, MED, SM, END = 10, 11, 12, 13, 14
    assert nt.listops_evaluate([15, MED, 1, 2, 3, 4, END]) == 2       # median 2.5, truncated
    assert nt.listops_evaluate([SM, 9, 8, END]) == 7
    assert nt.listops_evaluate([MAX, 2, 9, MIN, 4, 7, END, 0, END]) == 9
    assert nt.listops_evaluate([MIN, MAX, 3, 8, END, 5, END, 16, 16]) == 5
    assert nt.listops_string([15, MAX, 2, 9, MIN, 4, 7, END, 0, END, 16]) == "CLS [MAX 2 9 [MIN 4 7 ] 0 ]"
    with pytest.raises(ValueError, match="malformed"):
        nt.listops_evaluate([MIN, 3, 4])


def test_listops_labels_match_an_independent_evaluation():
    batch = nt.make_listops(rng(11), 300)
    assert batch.tokens.shape == (64, 300)
    assert np.all(batch.tokens[0] == nt.LISTOPS_CLS)
    lengths = batch.mask.sum(axis=0) - 1
    assert lengths.min() >= 8 and lengths.max() <= 63
    for b in range(300):
        assert batch.labels[b] == nt.listops_evaluate(batch.tokens[:, b])
        assert np.all(batch.tokens[~batch.mask[:, b], b] == nt.LISTOPS_PAD)
    assert len(np.unique(batch.labels)) == 10


# ----------------------------------------------------------------- seeding, metrics, bad options
GENERATORS = [nt.make_addition, nt.make_reverse, nt.make_reduce, nt.make_dyck, nt.make_lsam_recall,
              nt.make_retrieval, nt.make_listops]


@pytest.mark.parametrize("make", GENERATORS)
def test_same_seed_same_tokens_and_no_global_randomness(make):
    np.random.seed(0)
    first = make(rng(12), 8)
    np.random.seed(1)
    second = make(rng(12), 8)
    other = make(rng(13), 8)
    for x, y in zip(first, second):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(first, other))
    assert all(np.asarray(x).dtype in (np.int64, np.bool_) for x in first)


def test_sequence_accuracy_and_accuracy_by_length():
    targets = np.array([[1, 2], [0, 3]])                             # (T=2, B=2)
    logits = np.zeros((2, 2, 4))
    logits[0, 0, 1] = logits[1, 0, 0] = 1.0                          # row 0 right everywhere
    logits[0, 1, 2] = logits[1, 1, 1] = 1.0                          # row 1 wrong at t = 1
    np.testing.assert_array_equal(nt.sequence_accuracy(logits, targets), [1.0, 0.0])
    assert nt.accuracy_by_length(np.array([1.0, 0.0, 1.0]), np.array([3, 3, 4])) == {3: 0.5, 4: 1.0}
    with pytest.raises(ValueError):
        nt.sequence_accuracy(logits, targets[:1])


@pytest.mark.parametrize("make, options, match", [
    (nt.make_reverse, dict(n_min=3, n_max=2), "n_min <= n_max"),
    (nt.make_reverse, dict(n_min=0), "n_min"),
    (nt.make_reverse, dict(stratified=1), "stratified"),
    (nt.make_addition, dict(n_max=18), "n_max"),
    (nt.make_addition, dict(version="v2"), "version"),
    (nt.make_addition, dict(n_max=3, maxlen=10), "maxlen"),
    (nt.make_reduce, dict(n_max=4, maxlen=8), "maxlen"),
    (nt.make_dyck, dict(depth_min=4, depth_max=3), "depth_min"),
    (nt.make_dyck, dict(min_len=8, max_len=9), "max_len"),
    (nt.make_lsam_recall, dict(n_max=17), "n_max"),
    (nt.make_retrieval, dict(num_keys=8, n_max=9), "n_max"),
    (nt.make_retrieval, dict(maxlen=10), "maxlen"),
    (nt.make_listops, dict(operator_p=0.0), "operator_p"),
    (nt.make_listops, dict(max_args=1), "max_args"),
    (nt.make_listops, dict(min_len=40, max_len=50, max_depth=2, max_tries=100), "no ListOps tree"),
])
def test_bad_options_raise_value_error(make, options, match):
    with pytest.raises(ValueError, match=match):
        make(rng(), 4, **options)


def test_bad_rng_batch_size_and_split_names_raise_value_error():
    with pytest.raises(ValueError, match="Generator"):
        nt.make_reverse(0, 4)
    with pytest.raises(ValueError, match="batch_size"):
        nt.make_retrieval(rng(), 0)
    with pytest.raises(ValueError, match="split"):
        nt.length_split("reverse", "test")
    with pytest.raises(ValueError, match="task"):
        nt.make_length_set("copy", rng(), 4, "train")
    with pytest.raises(ValueError, match="dyck split"):
        nt.make_length_set("dyck", rng(), 4, "ood_test")
