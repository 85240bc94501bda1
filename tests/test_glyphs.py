"""minimem.tasks.glyphs: the procedural glyph generator of spec E.1 and its episodes (E.3, E.4,
C-way n-shot classification). Small data sets only: a full 16,000-image set takes seconds."""

import numpy as np
import pytest

from minimem.tasks.glyphs import (
    GlyphConfig, GlyphSet, character_program, few_shot_episodes, instance_program, render_glyphs,
    render_strokes, set_tasks, vma_episodes,
)

SMALL = GlyphConfig(seed=3, alphabets=4, characters=5, instances=6)


@pytest.fixture(scope="module")
def glyphs():
    return GlyphSet(SMALL)


def _hamming_by_relation(images: np.ndarray):
    """Mean Hamming distance between instances of one character, between characters of one
    alphabet, and between alphabets. images: (A, Cc, I, X)."""
    A, Cc, I, X = images.shape
    flat = images.reshape(-1, X).astype(np.int64)
    H = flat @ (1 - flat).T + (1 - flat) @ flat.T                  # pairwise Hamming distances
    a, c, _ = np.unravel_index(np.arange(len(flat)), (A, Cc, I))
    same_alpha = a[:, None] == a[None, :]
    same_char = same_alpha & (c[:, None] == c[None, :]) & ~np.eye(len(flat), dtype=bool)
    return H[same_char].mean(), H[same_alpha & (c[:, None] != c[None, :])].mean(), H[~same_alpha].mean()


# ----------------------------------------------------------------- the generator (E.1 tests)
def test_same_seed_gives_identical_bits_and_order_does_not_matter(glyphs):
    again = GlyphSet(SMALL)
    np.testing.assert_array_equal(again.images, glyphs.images)
    alone = render_glyphs(SMALL.seed, 2, 3, 4, D=SMALL.D)          # one image, made on its own
    np.testing.assert_array_equal(alone[0], glyphs.images[2, 3, 4])
    backwards = render_glyphs(SMALL.seed, [3, 0], [4, 1], [5, 2], D=SMALL.D)
    np.testing.assert_array_equal(backwards, glyphs.images[[3, 0], [4, 1], [5, 2]])
    other_seed = GlyphSet(GlyphConfig(seed=4, alphabets=4, characters=5, instances=6))
    assert not np.array_equal(other_seed.images, glyphs.images)


def test_images_are_binary_row_major_and_never_empty(glyphs):
    images = glyphs.images
    assert images.shape == (4, 5, 6, 400) and images.dtype == np.uint8
    assert set(np.unique(images)) <= {0, 1}
    assert images.reshape(-1, 400).sum(axis=1).min() > 0
    assert 0.04 < images.mean() < 0.2                                  # spec: about 0.098 at D = 20
    assert not images.flags.writeable


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_instances_closer_than_characters_closer_than_alphabets(seed):
    images = GlyphSet(GlyphConfig(seed=seed, alphabets=8, characters=8, instances=3)).images
    within_character, within_alphabet, across = _hamming_by_relation(images)
    assert within_character < 0.8 * within_alphabet
    assert within_alphabet < across
    assert within_character > 0                                         # instances do differ


def test_D28_works():
    cfg = GlyphConfig(seed=0, D=28, alphabets=2, characters=3, instances=4)
    images = GlyphSet(cfg).images
    assert images.shape == (2, 3, 4, 784) and cfg.X == 784
    assert images.reshape(-1, 784).sum(axis=1).min() > 0


def test_stochastic_and_grey_modes():
    grey = GlyphSet(GlyphConfig(seed=1, alphabets=2, characters=2, instances=3, binarise="none")).images
    assert grey.dtype == np.float64 and grey.min() >= 0 and grey.max() <= 1
    assert np.any((grey > 0) & (grey < 1))                             # anti-aliased edges
    stochastic = GlyphSet(GlyphConfig(seed=1, alphabets=2, characters=2, instances=3, binarise="stochastic")).images
    assert set(np.unique(stochastic)) <= {0, 1}
    np.testing.assert_array_equal(stochastic[grey == 0], 0)            # u < 0 never holds
    np.testing.assert_array_equal(stochastic[grey == 1], 1)
    static = (grey > 0.5).astype(np.uint8)
    np.testing.assert_array_equal(GlyphSet(GlyphConfig(seed=1, alphabets=2, characters=2, instances=3)).images,
                                  static)


def test_programs_follow_the_spec_ranges():
    for alpha in range(3):
        for c in range(5):
            program = character_program(0, alpha, c)
            assert program.shape[1:] == (3, 2) and 2 <= len(program) <= 4
            points, r = instance_program(0, alpha, c, 0, program)
            assert points.shape == program.shape and 0.6 <= r <= 0.9


def test_render_ignores_padding_strokes():
    points, r = instance_program(0, 0, 0, 0)
    padded = np.zeros((1, 4, 3, 2))
    padded[0, :len(points)] = points
    padded[0, len(points):] = 0.1                                      # garbage in the padding
    exact = render_strokes(points[None], np.array([len(points)]), np.array([r]), 20)
    np.testing.assert_array_equal(render_strokes(padded, np.array([len(points)]), np.array([r]), 20), exact)


def test_cache_round_trip_in_the_callers_directory(tmp_path):
    cfg = GlyphConfig(seed=5, alphabets=2, characters=2, instances=2)
    first = GlyphSet(cfg, cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == [cfg.cache_name()]
    np.testing.assert_array_equal(GlyphSet(cfg, cache_dir=tmp_path).images, first.images)
    with np.load(files[0], allow_pickle=False) as data:                 # no pickle inside
        assert set(data.files) == {"images", "meta"}
    files[0].write_bytes(b"not an npz")                                 # a broken cache is rebuilt
    np.testing.assert_array_equal(GlyphSet(cfg, cache_dir=tmp_path).images, first.images)


@pytest.mark.parametrize("bad", [dict(D=4), dict(alphabets=0), dict(binarise="otsu"), dict(seed=-1),
                                 dict(train_alphabets=5, alphabets=4), dict(instances=2.0)])
def test_bad_config_raises(bad):
    with pytest.raises(ValueError):
        GlyphConfig(**bad)


def test_splits_partition_the_classes(glyphs):
    train, test = glyphs.classes("train"), glyphs.classes("test")
    assert len(train) == 3 * 5 and len(test) == 5                        # 3 of 4 alphabets train
    assert set(train).isdisjoint(test) and len(set(train) | set(test)) == glyphs.n_classes
    within_train, within_test = glyphs.classes("train_within"), glyphs.classes("test_within")
    assert np.all(within_train % 5 < 3) and np.all(within_test % 5 >= 3)
    with pytest.raises(ValueError, match="split"):
        glyphs.classes("validation")


# ----------------------------------------------------------------- episodes
def test_few_shot_episodes(glyphs):
    ep = few_shot_episodes(np.random.default_rng(0), glyphs, 3, ways=4, shots=2, queries=2, split="train")
    assert ep.support.shape == (3, 8, 400) and ep.query.shape == (3, 8, 400)
    assert ep.classes.shape == (3, 4) and set(ep.classes.ravel()) <= set(glyphs.classes("train"))
    for b in range(3):
        assert len(set(ep.classes[b])) == 4
        assert sorted(np.bincount(ep.support_labels[b])) == [2, 2, 2, 2]
        for label in range(4):                                         # labels name the right class
            alpha, c = divmod(int(ep.classes[b, label]), 5)
            members = glyphs.images[alpha, c].astype(float)
            for image in ep.support[b][ep.support_labels[b] == label]:
                assert np.any(np.all(members == image, axis=1))
        shown = {img.tobytes() for img in ep.support[b]}
        assert not any(img.tobytes() in shown for img in ep.query[b])  # queries are new instances
    again = few_shot_episodes(np.random.default_rng(0), glyphs, 3, ways=4, shots=2, queries=2, split="train")
    np.testing.assert_array_equal(again.support, ep.support)


def test_vma_episodes_follow_E3(glyphs):
    ep = vma_episodes(np.random.default_rng(1), glyphs, 5, classes=3, shots=2, split="train")
    assert ep.M.shape == (5, 6, 400) and ep.x.shape == (5, 400) and ep.M.dtype == np.float64
    for b in range(5):
        assert ep.x_class[b] in ep.mem_class[b]
        assert len(set(ep.mem_class[b])) == 3 and sorted(np.bincount(ep.mem_class[b])[ep.mem_class[b]]) == [2] * 6
        for n in range(6):
            alpha, c = divmod(int(ep.mem_class[b, n]), 5)
            assert np.any(np.all(glyphs.images[alpha, c] == ep.M[b, n], axis=1))
    distractor = vma_episodes(np.random.default_rng(1), glyphs, 5, classes=3, shots=2, target_in_memory=False)
    assert not distractor.target_in_memory.any()
    assert all(distractor.x_class[b] not in distractor.mem_class[b] for b in range(5))


def test_vma_episode_never_stores_the_target_instance():
    glyphs = GlyphSet(GlyphConfig(seed=0, alphabets=1, characters=2, instances=3))
    flat = glyphs.images.reshape(6, -1)
    assert len({img.tobytes() for img in flat}) == 6                    # instances are distinguishable
    for seed in range(20):                                              # 3 instances, 2 shots: all used
        ep = vma_episodes(np.random.default_rng(seed), glyphs, 1, classes=1, shots=2, split="all")
        assert not np.any(np.all(ep.M[0] == ep.x[0], axis=1))


def test_set_tasks_mask_and_distinct_instances(glyphs):
    task = set_tasks(np.random.default_rng(2), glyphs, 4, n_context=np.array([0, 1, 3, 2]), n_targets=2,
                     capacity=5, split="test")
    assert task.context.shape == (4, 5, 400) and task.targets.shape == (4, 2, 400)
    np.testing.assert_array_equal(task.mask.sum(axis=1), [0, 1, 3, 2])
    assert np.all(task.context[~task.mask] == 0)
    assert set(task.classes) <= set(glyphs.classes("test"))


@pytest.mark.parametrize("call", [
    lambda g: few_shot_episodes(np.random.default_rng(0), g, 2, ways=30),         # more classes than exist
    lambda g: few_shot_episodes(np.random.default_rng(0), g, 2, shots=4, queries=3),
    lambda g: few_shot_episodes(0, g, 2),                                          # not a Generator
    lambda g: vma_episodes(np.random.default_rng(0), g, 2, shots=6),               # needs n + 1 <= I
    lambda g: set_tasks(np.random.default_rng(0), g, 2, n_context=[1, 2, 3]),     # wrong length
    lambda g: g.take([0, 1], [0]),
])
def test_bad_episode_requests_raise(glyphs, call):
    with pytest.raises(ValueError):
        call(glyphs)
