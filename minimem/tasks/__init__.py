"""Seeded synthetic tasks and their metrics.

Algorithmic tasks of the NTM/DNC/SAM family (specs/ntm_dnc_sam.md A.6, B.6): each generator is
`make_<task>(rng, batch_size, **options) -> Batch(inputs (T, B, X), targets (T, B, Y), mask (T, B))`;
`TASKS` maps names to generators. Metrics (section 0): bits_per_sequence (the papers' cross-entropy
cost in bits) and bit_errors_per_sequence (counted wrong bits) - two different numbers.
"""

from minimem.tasks.algorithmic import (
    TASKS,
    Batch,
    make_associative_recall,
    make_batch,
    make_copy,
    make_copy_memory_reuse,
    make_deepmind_repeat_copy,
    make_dynamic_ngrams,
    make_priority_sort,
    make_repeat_copy,
    ngram_sequences,
    repeat_normaliser,
)
from minimem.tasks.metrics import (
    bce_with_logits,
    bit_errors_per_sequence,
    bits_per_sequence,
    ngram_bayes_optimal_bits,
    ngram_bayes_optimal_probs,
)

__all__ = [
    "TASKS",
    "Batch",
    "bce_with_logits",
    "bit_errors_per_sequence",
    "bits_per_sequence",
    "make_associative_recall",
    "make_batch",
    "make_copy",
    "make_copy_memory_reuse",
    "make_deepmind_repeat_copy",
    "make_dynamic_ngrams",
    "make_priority_sort",
    "make_repeat_copy",
    "ngram_bayes_optimal_bits",
    "ngram_bayes_optimal_probs",
    "ngram_sequences",
    "repeat_normaliser",
]
