"""minimem.tasks: every generator's layout decoded back from its arrays and compared with the spec
(specs/ntm_dnc_sam.md A.6, B.6), padding, determinism, option validation, and the two metrics of
section 0 on hand-made examples (plus the dynamic N-gram Bayes-optimal reference)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.special import betaln

from minimem.tasks import (
    TASKS,
    Batch,
    bit_errors_per_sequence,
    bits_per_sequence,
    make_associative_recall,
    make_batch,
    make_copy,
    make_copy_memory_reuse,
    make_deepmind_repeat_copy,
    make_dynamic_ngrams,
    make_priority_sort,
    make_repeat_copy,
    ngram_bayes_optimal_bits,
    ngram_bayes_optimal_probs,
    ngram_sequences,
    repeat_normaliser,
)


def assert_padding(batch: Batch, b: int, T_b: int):
    """Steps T_b.. of element b are padding: zero inputs, zero targets, mask 0."""
    assert batch.inputs.shape[0] >= T_b
    assert not batch.inputs[T_b:, b].any()
    assert not batch.targets[T_b:, b].any()
    assert not batch.mask[T_b:, b].any()


def mask_steps(batch: Batch, b: int) -> np.ndarray:
    return np.flatnonzero(batch.mask[:, b])


# ----------------------------------------------------------------- all tasks
@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_returns_a_consistent_batch(name):
    batch = TASKS[name](np.random.default_rng(3), 5)
    assert isinstance(batch, Batch)
    inputs, targets, mask = batch
    T, B, _ = inputs.shape
    assert B == 5 and targets.shape[:2] == (T, B) and mask.shape == (T, B)
    for array in batch:
        assert array.dtype == np.float64 and np.all(np.isfinite(array))
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert set(np.unique(targets)) <= {0.0, 1.0}
    assert not targets[mask == 0].any(), "targets must be zero where no answer is required"
    assert np.all(mask.sum(axis=0) > 0), "every element must ask for an answer"
    assert np.any(mask[-1] == 1), "the batch must not be longer than its longest element"


@pytest.mark.parametrize("name", sorted(TASKS))
def test_same_seed_same_bits_and_no_global_randomness(name):
    np.random.seed(123)
    global_state = np.random.get_state()[1].copy()
    first = TASKS[name](np.random.default_rng(7), 4)
    second = TASKS[name](np.random.default_rng(7), 4)
    other = TASKS[name](np.random.default_rng(8), 4)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert first.inputs.shape != other.inputs.shape or not np.array_equal(first.inputs, other.inputs)
    np.testing.assert_array_equal(np.random.get_state()[1], global_state)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_float32_option_gives_the_same_values(name):
    a = TASKS[name](np.random.default_rng(0), 3)
    b = TASKS[name](np.random.default_rng(0), 3, dtype=np.float32)
    for x, y in zip(a, b):
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, x, rtol=1e-6, atol=0)


def test_make_batch_looks_up_the_registry():
    a = make_batch("copy", np.random.default_rng(0), 2, num_bits=3)
    b = make_copy(np.random.default_rng(0), 2, num_bits=3)
    np.testing.assert_array_equal(a.inputs, b.inputs)
    with pytest.raises(ValueError, match="unknown task 'copyy'.*associative_recall"):
        make_batch("copyy", np.random.default_rng(0), 2)


# ----------------------------------------------------------------- copy (A.6)
def check_copy_element(batch, b, num_bits):
    inputs, targets, _ = batch
    delimiter = inputs[:, b, num_bits]
    assert delimiter.sum() == 1
    L = int(np.argmax(delimiter))                                   # 0-based step L = step L+1
    assert not inputs[L, b, :num_bits].any() and not inputs[L + 1:, b].any()
    np.testing.assert_array_equal(mask_steps(batch, b), np.arange(L + 1, 2 * L + 1))
    np.testing.assert_array_equal(targets[L + 1:2 * L + 1, b], inputs[:L, b, :num_bits])
    assert not targets[:L + 1, b].any()
    assert_padding(batch, b, 2 * L + 1)
    return L


def test_copy_layout_per_element_lengths_and_padding():
    batch = make_copy(np.random.default_rng(0), 32, num_bits=5, min_len=2, max_len=9)
    assert batch.inputs.shape[2] == 6 and batch.targets.shape[2] == 5
    lengths = [check_copy_element(batch, b, 5) for b in range(32)]
    assert min(lengths) >= 2 and max(lengths) <= 9
    assert len(set(lengths)) > 3, "lengths should vary within a batch by default"
    assert batch.inputs.shape[0] == 2 * max(lengths) + 1              # T = 2 L_max + 1


def test_copy_same_length_draws_one_length_per_batch():
    batch = make_copy(np.random.default_rng(1), 16, num_bits=6, min_len=1, max_len=8, same_length=True)
    lengths = {check_copy_element(batch, b, 6) for b in range(16)}
    assert len(lengths) == 1
    assert batch.inputs.shape[0] == 2 * lengths.pop() + 1
    assert np.all(batch.mask[-1] == 1)


def test_copy_defaults_are_the_paper_sizes():
    batch = make_copy(np.random.default_rng(2), 64)
    assert batch.inputs.shape[2] == 9 and batch.targets.shape[2] == 8
    lengths = [check_copy_element(batch, b, 8) for b in range(64)]
    assert 1 <= min(lengths) and max(lengths) <= 20


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), B=st.integers(1, 4), num_bits=st.integers(1, 4),
       lo=st.integers(1, 5), extra=st.integers(0, 4))
def test_copy_layout_for_any_options(seed, B, num_bits, lo, extra):
    batch = make_copy(np.random.default_rng(seed), B, num_bits=num_bits, min_len=lo, max_len=lo + extra)
    lengths = [check_copy_element(batch, b, num_bits) for b in range(B)]
    assert all(lo <= L <= lo + extra for L in lengths)
    assert batch.inputs.shape[0] == 2 * max(lengths) + 1


# ----------------------------------------------------------------- repeat copy (A.6, pytorch-ntm layout)
def test_repeat_normaliser_is_the_spec_constant_and_standardises():
    mean, std = repeat_normaliser(1, 10)
    assert mean == 5.5 and abs(std - 2.8723) < 1e-4
    for lo, hi in [(1, 10), (2, 7), (1, 4), (3, 3)]:
        mean, std = repeat_normaliser(lo, hi)
        codes = (np.arange(lo, hi + 1) - mean) / std
        assert abs(codes.mean()) < 1e-12
        if hi > lo:
            assert abs(codes.var() - 1.0) < 1e-12                   # population variance of U{lo..hi}


def check_repeat_copy_element(batch, b, num_bits, mean, std):
    inputs, targets, _ = batch
    delimiter = inputs[:, b, num_bits]
    assert delimiter.sum() == 1
    L = int(np.argmax(delimiter))
    count = inputs[:, b, num_bits + 1]
    assert np.count_nonzero(count[np.arange(len(count)) != L + 1]) == 0
    n = int(round(count[L + 1] * std + mean))
    assert abs((n - mean) / std - count[L + 1]) < 1e-12
    assert not inputs[L, b, :num_bits].any() and not inputs[L + 1:, b, :num_bits].any()
    end = L + 2 + L * n                                             # 0-based end-marker step
    np.testing.assert_array_equal(mask_steps(batch, b), np.arange(L + 2, end + 1))
    pattern = inputs[:L, b, :num_bits]
    np.testing.assert_array_equal(targets[L + 2:end, b, :num_bits], np.tile(pattern, (n, 1)))
    assert not targets[L + 2:end, b, num_bits].any()
    np.testing.assert_array_equal(targets[end, b], np.eye(num_bits + 1)[num_bits])
    assert_padding(batch, b, L * (n + 1) + 3)                        # T = L + 2 + L n + 1
    return L, n


def test_repeat_copy_layout_defaults_use_the_spec_normalisation():
    batch = make_repeat_copy(np.random.default_rng(0), 24)
    assert batch.inputs.shape[2] == 10 and batch.targets.shape[2] == 9
    params = [check_repeat_copy_element(batch, b, 8, 5.5, math.sqrt(99 / 12)) for b in range(24)]
    assert all(1 <= L <= 10 and 1 <= n <= 10 for L, n in params)
    assert len({n for _, n in params}) > 3
    assert batch.inputs.shape[0] == max(L * (n + 1) + 3 for L, n in params)


def test_repeat_copy_generalised_normaliser_and_norm_range():
    batch = make_repeat_copy(np.random.default_rng(1), 16, num_bits=4, max_len=4, min_reps=2, max_reps=5)
    mean, std = repeat_normaliser(2, 5)
    params = [check_repeat_copy_element(batch, b, 4, mean, std) for b in range(16)]
    assert all(2 <= n <= 5 for _, n in params)
    # evaluation beyond the training range keeps the training normaliser
    batch = make_repeat_copy(np.random.default_rng(1), 3, num_bits=4, max_len=3, min_reps=12,
                             max_reps=12, norm_range=(1, 10))
    for b in range(3):
        assert check_repeat_copy_element(batch, b, 4, 5.5, math.sqrt(99 / 12))[1] == 12


def test_repeat_copy_same_length_draws_one_length_and_count():
    batch = make_repeat_copy(np.random.default_rng(5), 8, num_bits=3, max_len=5, max_reps=5,
                             same_length=True)
    mean, std = repeat_normaliser(1, 5)
    params = {check_repeat_copy_element(batch, b, 3, mean, std) for b in range(8)}
    assert len(params) == 1


# ----------------------------------------------------------------- associative recall (A.6)
def check_recall_element(batch, b, num_bits, k):
    inputs, targets, _ = batch
    item_delim, query_delim = inputs[:, b, num_bits], inputs[:, b, num_bits + 1]
    n = int(item_delim.sum())
    np.testing.assert_array_equal(np.flatnonzero(item_delim), (k + 1) * np.arange(n))
    q0 = (k + 1) * n                                                # first query delimiter
    np.testing.assert_array_equal(np.flatnonzero(query_delim), [q0, q0 + k + 1])
    items = [inputs[(k + 1) * i + 1:(k + 1) * (i + 1), b, :num_bits] for i in range(n)]
    query = inputs[q0 + 1:q0 + k + 1, b, :num_bits]
    assert not inputs[q0 + k + 1:, b, :num_bits].any() and not inputs[q0 + k + 2:, b].any()
    answer_steps = np.arange(q0 + k + 2, q0 + 2 * k + 2)
    np.testing.assert_array_equal(mask_steps(batch, b), answer_steps)
    answer = targets[answer_steps, b]
    matches = [i for i in range(n - 1) if np.array_equal(items[i], query)]
    assert matches, "the query must be one of the first n - 1 items"
    assert any(np.array_equal(answer, items[i + 1]) for i in matches)
    assert_padding(batch, b, (k + 1) * n + 2 * k + 2)
    return n


def test_associative_recall_defaults_T_is_4n_plus_8():
    batch = make_associative_recall(np.random.default_rng(0), 32)
    assert batch.inputs.shape[2] == 8 and batch.targets.shape[2] == 6
    counts = [check_recall_element(batch, b, 6, 3) for b in range(32)]
    assert min(counts) >= 2 and max(counts) <= 6 and len(set(counts)) > 2
    assert batch.inputs.shape[0] == 4 * max(counts) + 8


def test_associative_recall_other_item_length_and_same_length():
    batch = make_associative_recall(np.random.default_rng(1), 12, num_bits=4, item_len=2,
                                    min_items=2, max_items=4, same_length=True)
    counts = {check_recall_element(batch, b, 4, 2) for b in range(12)}
    assert len(counts) == 1
    assert batch.inputs.shape[0] == 3 * counts.pop() + 6


def test_associative_recall_query_is_uniform_over_first_n_minus_1_items():
    batch = make_associative_recall(np.random.default_rng(2), 400, min_items=4, max_items=4,
                                    distinct_items=True)
    positions = []
    for b in range(400):
        query = batch.inputs[17:20, b, :6]
        positions += [i for i in range(4) if np.array_equal(batch.inputs[4 * i + 1:4 * i + 4, b, :6], query)]
    histogram = np.bincount(positions, minlength=4)
    assert histogram[3] == 0 and np.all(histogram[:3] > 100)


def test_associative_recall_distinct_items_option():
    batch = make_associative_recall(np.random.default_rng(4), 64, num_bits=1, item_len=2,
                                    min_items=2, max_items=3, distinct_items=True)
    for b in range(64):
        n = check_recall_element(batch, b, 1, 2)
        codes = {tuple(batch.inputs[3 * i + 1:3 * i + 3, b, 0]) for i in range(n)}
        assert len(codes) == n
    with pytest.raises(ValueError, match="distinct_items"):
        make_associative_recall(np.random.default_rng(0), 2, num_bits=1, item_len=1, max_items=3,
                                distinct_items=True)


# ----------------------------------------------------------------- priority sort (A.6)
def test_priority_sort_layout_and_descending_order():
    B = 6
    batch = make_priority_sort(np.random.default_rng(0), B)
    inputs, targets, mask = batch
    assert inputs.shape == (37, B, 10) and targets.shape == (37, B, 8)
    np.testing.assert_array_equal(mask, np.repeat((np.arange(37) >= 21)[:, None], B, axis=1))
    priority = inputs[:20, :, 8]
    assert np.all(np.abs(priority) <= 1) and np.all(priority != 0)
    np.testing.assert_array_equal(inputs[:, :, 9], np.repeat((np.arange(37) == 20)[:, None], B, axis=1))
    assert not inputs[20:, :, :9].any()
    for b in range(B):
        by_priority = sorted(range(20), key=lambda i: -priority[i, b])
        expected = np.array([inputs[i, b, :8] for i in by_priority[:16]])
        np.testing.assert_array_equal(targets[21:, b], expected)


def test_priority_sort_small_sizes():
    batch = make_priority_sort(np.random.default_rng(1), 3, num_bits=4, num_items=6, num_sorted=4)
    assert batch.inputs.shape == (11, 3, 6) and batch.targets.shape == (11, 3, 4)
    for b in range(3):
        top = np.argsort(-batch.inputs[:6, b, 4])[:4]
        np.testing.assert_array_equal(batch.targets[7:, b], batch.inputs[top, b, :4])


# ----------------------------------------------------------------- dynamic N-grams (A.6)
def test_dynamic_ngrams_layout():
    batch = make_dynamic_ngrams(np.random.default_rng(0), 4)
    inputs, targets, mask = batch
    assert inputs.shape == (199, 4, 1) and targets.shape == (199, 4, 1)
    np.testing.assert_array_equal(mask, np.repeat((np.arange(199) >= 4)[:, None], 4, axis=1))
    assert mask.sum(axis=0).tolist() == [195.0] * 4
    bits = ngram_sequences(batch)                                    # (B, 200)
    assert bits.shape == (4, 200)
    np.testing.assert_array_equal(inputs[:, :, 0], bits[:, :199].T)    # input at step t is bit t
    np.testing.assert_array_equal(targets[4:, :, 0], bits[:, 5:].T)    # target is bit t + 1


def test_dynamic_ngrams_bayes_optimal_beats_coin_flips_by_the_expected_margin():
    batch = make_dynamic_ngrams(np.random.default_rng(1), 2000)
    bits = ngram_sequences(batch)
    coin = bits_per_sequence(np.zeros_like(batch.targets), batch.targets, batch.mask)
    assert coin == pytest.approx(195.0, abs=1e-9)                     # 195 predicted bits at 1 bit each
    optimum = ngram_bayes_optimal_bits(bits)
    assert optimum < 195.0 - 50.0
    assert abs(optimum - 128.1) < 3.0                                 # 20,000-sequence estimate, SE 0.8 here
    # the metric on the Bayes predictor's logits is the same number: layout, metric and predictor agree
    p = ngram_bayes_optimal_probs(bits)                               # (B, 195)
    logits = np.zeros_like(batch.targets)
    logits[4:, :, 0] = np.log(p / (1 - p)).T
    assert bits_per_sequence(logits, batch.targets, batch.mask) == pytest.approx(optimum, rel=1e-10)


def test_ngram_bayes_optimal_on_a_hand_example():
    # context 1, bits 0 1 0 1 0: p(1|0)=1/2 (bit 1), p(1|1)=1/2 (bit 0), p(1|0)=3/4 (bit 1), p(1|1)=1/4 (bit 0)
    np.testing.assert_allclose(ngram_bayes_optimal_probs([0, 1, 0, 1, 0], context=1), [[0.5, 0.5, 0.75, 0.25]])
    assert ngram_bayes_optimal_bits([0, 1, 0, 1, 0], context=1) == pytest.approx(2 + 2 * math.log2(4 / 3))


@pytest.mark.parametrize("context", [1, 2, 5])
def test_ngram_bayes_optimal_equals_the_beta_binomial_marginal(context):
    # Sequential KT predictions multiply to prod_c B(N1 + 1/2, N0 + 1/2) / B(1/2, 1/2).
    rng = np.random.default_rng(context)
    bits = rng.integers(0, 2, size=(3, 60))
    expected = 0.0
    for row in bits:
        counts = {}
        for t in range(context, 60):
            c = tuple(row[t - context:t])
            counts.setdefault(c, [0, 0])[row[t]] += 1
        expected -= sum(betaln(n1 + 0.5, n0 + 0.5) - betaln(0.5, 0.5) for n0, n1 in counts.values()) / math.log(2)
    assert ngram_bayes_optimal_bits(bits, context=context) == pytest.approx(expected / 3, rel=1e-12)


@pytest.mark.parametrize("bits, context, match", [
    (np.zeros((2, 5)), 5, "longer than context"),
    (np.full(10, 2), 2, "only 0 and 1"),
    (np.zeros((2, 2, 10)), 2, r"\(L,\) or \(B, L\)"),
    (np.zeros(10), 0, "context must be an integer in 1..16"),
])
def test_ngram_bayes_optimal_rejects_bad_input(bits, context, match):
    with pytest.raises(ValueError, match=match):
        ngram_bayes_optimal_bits(bits, context=context)


# ----------------------------------------------------------------- deepmind repeat copy (B.6)
def check_deepmind_element(batch, b, num_bits, norm_max):
    inputs, targets, _ = batch
    start, count = inputs[:, b, num_bits], inputs[:, b, num_bits + 1]
    np.testing.assert_array_equal(np.flatnonzero(start), [0])
    assert np.count_nonzero(count) == 1
    L = int(np.flatnonzero(count)[0]) - 1                           # count at step L+2 (0-based L+1)
    n = int(round(count[L + 1] * norm_max))
    assert count[L + 1] == n / norm_max
    assert not inputs[0, b, :num_bits].any() and not inputs[L + 1:, b, :num_bits].any()
    end = L + 2 + L * n
    np.testing.assert_array_equal(mask_steps(batch, b), np.arange(L + 2, end + 1))
    np.testing.assert_array_equal(targets[L + 2:end, b, :num_bits], np.tile(inputs[1:L + 1, b, :num_bits], (n, 1)))
    np.testing.assert_array_equal(targets[end, b], np.eye(num_bits + 1)[num_bits])
    assert not targets[L + 2:end, b, num_bits].any()
    assert_padding(batch, b, L * (n + 1) + 3)
    return L, n


def test_deepmind_repeat_copy_layout_and_padding():
    batch = make_deepmind_repeat_copy(np.random.default_rng(0), 32, min_len=1, max_len=4, max_reps=3)
    assert batch.inputs.shape[2] == 6 and batch.targets.shape[2] == 5
    params = [check_deepmind_element(batch, b, 4, 10.0) for b in range(32)]
    assert len(set(params)) > 4
    assert batch.inputs.shape[0] == max(L * (n + 1) + 3 for L, n in params)   # L(n+1)+3, padded


def test_deepmind_repeat_copy_exact_arrays_for_a_fixed_size():
    batch = make_deepmind_repeat_copy(np.random.default_rng(3), 2, num_bits=2, min_len=2, max_len=2,
                                      min_reps=2, max_reps=2, norm_max=4)
    for b in range(2):
        p1, p2 = batch.inputs[1, b, :2], batch.inputs[2, b, :2]
        z = np.zeros(2)
        expected_inputs = np.array([[0, 0, 1, 0], [*p1, 0, 0], [*p2, 0, 0], [0, 0, 0, 0.5]]
                                   + [[0, 0, 0, 0]] * 5)
        expected_targets = np.array([[0, 0, 0]] * 4 + [[*p1, 0], [*p2, 0], [*p1, 0], [*p2, 0], [*z, 1]])
        np.testing.assert_array_equal(batch.inputs[:, b], expected_inputs)
        np.testing.assert_array_equal(batch.targets[:, b], expected_targets)
        np.testing.assert_array_equal(batch.mask[:, b], [0, 0, 0, 0, 1, 1, 1, 1, 1])


def test_deepmind_repeat_copy_defaults_are_train_py():
    batch = make_deepmind_repeat_copy(np.random.default_rng(1), 32)
    params = {check_deepmind_element(batch, b, 4, 10.0) for b in range(32)}
    assert params == {(1, 1), (1, 2), (2, 1), (2, 2)}


# ----------------------------------------------------------------- copy with memory reuse (B.6)
def test_copy_memory_reuse_layout():
    batch = make_copy_memory_reuse(np.random.default_rng(0), 3)
    inputs, targets, mask = batch
    assert inputs.shape == (110, 3, 5) and targets.shape == (110, 3, 4)
    for i in range(10):
        block = slice(11 * i, 11 * (i + 1))
        np.testing.assert_array_equal(mask[block], np.repeat((np.arange(11) > 5)[:, None], 3, axis=1))
        np.testing.assert_array_equal(inputs[block, :, 4], np.repeat((np.arange(11) == 5)[:, None], 3, axis=1))
        np.testing.assert_array_equal(targets[11 * i + 6:11 * i + 11], inputs[11 * i:11 * i + 5, :, :4])
        assert not inputs[11 * i + 5:11 * i + 11, :, :4].any()
    assert not np.array_equal(inputs[0:5], inputs[11:16]), "each sequence is drawn afresh"


def test_copy_memory_reuse_other_sizes():
    batch = make_copy_memory_reuse(np.random.default_rng(1), 2, num_sequences=3, seq_len=2, num_bits=3)
    assert batch.inputs.shape == (15, 2, 4)
    np.testing.assert_array_equal(batch.mask[:, 0], [0, 0, 0, 1, 1] * 3)
    np.testing.assert_array_equal(batch.targets[13:15], batch.inputs[10:12, :, :3])


# ----------------------------------------------------------------- option validation
@pytest.mark.parametrize("make, options, match", [
    (make_copy, {"min_len": 5, "max_len": 3}, "min_len <= max_len"),
    (make_copy, {"num_bits": 0}, "num_bits must be an integer >= 1"),
    (make_copy, {"min_len": 0}, "min_len must be an integer >= 1"),
    (make_copy, {"max_len": 2.5}, "max_len must be an integer"),
    (make_copy, {"num_bits": True}, "num_bits must be an integer"),
    (make_copy, {"dtype": np.int64}, "dtype must be a floating-point type"),
    (make_repeat_copy, {"min_reps": 4, "max_reps": 2}, "min_reps <= max_reps"),
    (make_repeat_copy, {"norm_range": (5, 1)}, r"norm_range\[0\] <= norm_range\[1\]"),
    (make_repeat_copy, {"norm_range": 10}, "norm_range must be a pair"),
    (make_associative_recall, {"min_items": 1}, "min_items must be an integer >= 2"),
    (make_associative_recall, {"item_len": 0}, "item_len must be an integer >= 1"),
    (make_associative_recall, {"min_items": 5, "max_items": 3}, "min_items <= max_items"),
    (make_priority_sort, {"num_sorted": 21}, "num_sorted <= num_items"),
    (make_priority_sort, {"num_items": 0}, "num_items must be an integer >= 1"),
    (make_dynamic_ngrams, {"context": 0}, "context must be an integer in 1..16"),
    (make_dynamic_ngrams, {"length": 5}, "length must be an integer >= 6"),
    (make_deepmind_repeat_copy, {"norm_max": 0}, "norm_max must be a finite number > 0"),
    (make_deepmind_repeat_copy, {"min_len": 3, "max_len": 2}, "min_len <= max_len"),
    (make_copy_memory_reuse, {"seq_len": 0}, "seq_len must be an integer >= 1"),
    (make_copy_memory_reuse, {"num_sequences": -1}, "num_sequences must be an integer >= 1"),
])
def test_bad_options_raise_value_error_naming_the_range(make, options, match):
    with pytest.raises(ValueError, match=match):
        make(np.random.default_rng(0), 2, **options)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_bad_batch_size_and_rng_raise_value_error(name):
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        TASKS[name](np.random.default_rng(0), 0)
    with pytest.raises(ValueError, match="rng must be a np.random.Generator"):
        TASKS[name](0, 2)


# ----------------------------------------------------------------- metrics (section 0)
def test_metrics_on_a_hand_made_example():
    logits = np.array([[[2.0, -1.0], [0.5, 0.0]],
                       [[-3.0, 4.0], [1.0, -2.0]]])                  # (T=2, B=2, Y=2)
    targets = np.array([[[1.0, 1.0], [0.0, 1.0]],
                        [[0.0, 1.0], [0.0, 0.0]]])
    mask = np.array([[1.0, 0.0], [1.0, 1.0]])                         # step 0 of element 1 unscored

    def bce(y, z):                                                    # the textbook form, nats
        p = 1 / (1 + math.exp(-y))
        return -(z * math.log(p) + (1 - z) * math.log(1 - p))

    scored = [(0, 0), (1, 0), (1, 1)]
    nats = sum(bce(logits[t, b, k], targets[t, b, k]) for t, b in scored for k in range(2))
    assert bits_per_sequence(logits, targets, mask) == pytest.approx(nats / 2 / math.log(2), rel=1e-12)
    # wrong scored bits: (0,0,1) y=-1 z=1; (1,1,0) y=1 z=0. (0,1,1) y=0 z=1 is wrong but unscored.
    assert bit_errors_per_sequence(logits, targets, mask) == 2 / 2


def test_perfect_logits_give_zero_errors_and_near_zero_cost():
    batch = make_copy(np.random.default_rng(0), 8, num_bits=6, max_len=8)
    logits = 30.0 * (2 * batch.targets - 1)
    assert bit_errors_per_sequence(logits, batch.targets, batch.mask) == 0.0
    assert 0 < bits_per_sequence(logits, batch.targets, batch.mask) < 1e-10
    # unscored steps do not count, however wrong they are
    garbage = np.where(batch.mask[..., None] == 0, -50.0 * (2 * batch.targets - 1) + 7.0, logits)
    assert bit_errors_per_sequence(garbage, batch.targets, batch.mask) == 0.0


def test_zero_logits_cost_one_bit_per_scored_bit_but_errors_only_on_ones():
    batch = make_copy(np.random.default_rng(1), 8, num_bits=6, max_len=8)
    zeros = np.zeros_like(batch.targets)
    scored_bits = batch.mask.sum() * 6
    assert bits_per_sequence(zeros, batch.targets, batch.mask) == pytest.approx(scored_bits / 8, rel=1e-12)
    assert bit_errors_per_sequence(zeros, batch.targets, batch.mask) == batch.targets.sum() / 8


def test_bit_errors_count_flipped_bits():
    batch = make_repeat_copy(np.random.default_rng(2), 4, num_bits=4, max_len=3, max_reps=3)
    logits = 5.0 * (2 * batch.targets - 1)
    scored = np.argwhere(batch.mask == 1)
    for t, b in scored[[0, 3, -1]]:
        logits[t, b, 1] *= -1
    assert bit_errors_per_sequence(logits, batch.targets, batch.mask) == 3 / 4


def test_bits_per_sequence_is_stable_for_huge_logits():
    targets = np.array([[[1.0, 0.0]]])
    cost = bits_per_sequence(np.array([[[-800.0, 800.0]]]), targets, np.ones((1, 1)))
    assert cost == pytest.approx(1600 / math.log(2), rel=1e-12)


@pytest.mark.parametrize("logits, targets, mask, match", [
    (np.zeros((2, 3)), np.zeros((2, 3)), np.ones(2), r"logits must have shape \(T, B, Y\)"),
    (np.zeros((2, 3, 4)), np.zeros((2, 3, 5)), np.ones((2, 3)), "targets must have the logits' shape"),
    (np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), np.ones((3, 2)), r"mask must have shape \(T, B\)"),
    (np.full((2, 3, 4), np.nan), np.zeros((2, 3, 4)), np.ones((2, 3)), "logits must be finite"),
])
def test_metrics_reject_bad_shapes(logits, targets, mask, match):
    for metric in (bits_per_sequence, bit_errors_per_sequence):
        with pytest.raises(ValueError, match=match):
            metric(logits, targets, mask)


def test_bit_errors_need_binary_targets():
    with pytest.raises(ValueError, match="targets must be bits"):
        bit_errors_per_sequence(np.zeros((1, 1, 2)), np.full((1, 1, 2), 0.5), np.ones((1, 1)))
