"""minimem.tasks.hma_tasks: the shifted-glyph images (shift, colour channel, rho, splits, the scarce
variant) and the motif graphs (motifs, bases, size shift, spurious bases, batching) are what the
spec B6 says, seeded, and reject bad arguments."""

import numpy as np
import pytest
import scipy.sparse.csgraph as csgraph

from minimem.tasks.hma_tasks import (
    MOTIFS, accuracy, graph_batch, image_templates, make_motif_graphs, make_shifted_images, motif_graph_splits,
    shifted_image_splits,
)


def test_channel_zero_is_the_class_template_rolled_by_at_most_one_pixel():
    rng = np.random.default_rng(0)
    templates = image_templates(rng)
    assert templates.shape == (5, 8, 8) and set(np.unique(templates)) <= {0.0, 1.0}
    assert abs(templates.mean() - 0.35) < 0.1
    data = make_shifted_images(rng, templates, 200, rho=1.0, noise=0.0, colour_noise=0.0)
    assert data.images.shape == (200, 8, 8, 2) and data.flat.shape == (200, 128)
    shifts = set()
    for image, y in zip(data.images, data.labels):
        matches = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                   if np.array_equal(image[..., 0], np.roll(templates[y], (dr, dc), axis=(0, 1)))]
        assert matches, "channel 0 must be the template rolled by (dr, dc) in {-1, 0, 1}^2"
        shifts.update(matches)
    assert len(shifts) == 9                                     # every shift occurs
    np.testing.assert_allclose(data.images[..., 1], np.broadcast_to(3.0 * (data.colours[:, None, None] + 1) / 5,
                                                                     (200, 8, 8)))
    np.testing.assert_array_equal(data.colours, data.labels)  # rho = 1: the colour always agrees


def test_rho_sets_how_often_the_colour_agrees_with_the_class():
    splits = shifted_image_splits(seed=3, n_test=2000)
    agree = {k: np.mean(v.colours == v.labels) for k, v in splits.items()}
    assert abs(agree["train"] - (0.9 + 0.1 / 5)) < 0.03        # c = y, or a uniform class that may be y
    assert abs(agree["test_id"] - 0.92) < 0.03
    assert abs(agree["test_ood"] - 0.2) < 0.03                 # rho = 0: independent of the class
    assert len(splits["train"].labels) == 3000 and np.all(np.bincount(splits["train"].labels) > 500)
    scarce = shifted_image_splits(seed=3, scarce=True)
    np.testing.assert_array_equal(np.bincount(scarce["train"].labels), [20] * 5)
    assert np.mean(scarce["test_id"].colours == scarce["test_id"].labels) < 0.45    # rho 0.2
    again = shifted_image_splits(seed=3, n_test=2000)
    for k in splits:                                            # seeded: the same bits
        np.testing.assert_array_equal(again[k].images, splits[k].images)
    assert not np.array_equal(shifted_image_splits(seed=4)["train"].images, splits["train"].images)


def test_glyph_templates_come_from_the_shared_generator():
    T = image_templates(np.random.default_rng(0), classes=5, side=8, kind="glyphs", seed=1)
    assert T.shape == (5, 8, 8) and set(np.unique(T)) <= {0.0, 1.0}
    assert len({t.tobytes() for t in T}) == 5                  # five different characters
    splits = shifted_image_splits(seed=1, n_train=10, n_test=10, templates="glyphs")
    assert splits["train"].images.shape == (10, 8, 8, 2)


def test_motif_graphs_are_connected_trees_or_ladders_plus_the_class_motif():
    graphs = make_motif_graphs(np.random.default_rng(1), 60, base_sizes=(10, 20))
    for features, A, y, base in zip(graphs.features, graphs.adjacencies, graphs.labels, graphs.bases):
        n = A.shape[0]
        _, motif_nodes, motif_edges = MOTIFS[int(y)]
        assert 10 + motif_nodes <= n <= 20 + motif_nodes
        np.testing.assert_array_equal(A, A.T)
        assert np.all(np.diag(A) == 0) and set(np.unique(A)) <= {0.0, 1.0}
        assert csgraph.connected_components(A)[0] == 1
        size = n - motif_nodes
        base_edges = size - 1 if base == 0 else (size // 2) * 3 - 2 + (size % 2)   # tree, or ladder rails + rungs
        assert A.sum() / 2 == base_edges + len(motif_edges) + 1
        degree = A.sum(axis=1)
        np.testing.assert_array_equal(features.argmax(axis=1), np.clip(degree, 1, 4) - 1)
        np.testing.assert_array_equal(features.sum(axis=1), 1.0)


def test_splits_shift_the_size_and_decorrelate_the_base():
    splits = motif_graph_splits(seed=2, n_train=300, n_test=200)
    base_nodes = {k: np.array([len(f) - MOTIFS[int(y)][1] for f, y in zip(v.features, v.labels)])
                  for k, v in splits.items()}
    assert base_nodes["train"].min() >= 10 and base_nodes["train"].max() <= 20
    assert base_nodes["test_ood"].min() >= 40 and base_nodes["test_ood"].max() <= 60
    agree = {k: np.mean(v.bases == v.labels % 2) for k, v in splits.items()}
    assert abs(agree["train"] - 0.9) < 0.06 and abs(agree["test_id"] - 0.9) < 0.06
    assert abs(agree["test_ood"] - 0.5) < 0.1
    plain = motif_graph_splits(seed=2, n_train=300, n_test=10, spurious=False)
    assert abs(np.mean(plain["train"].bases == plain["train"].labels % 2) - 0.5) < 0.1
    batch = graph_batch(splits["train"], np.arange(5))
    assert batch.B == 5 and batch.x.shape == (sum(len(f) for f in splits["train"].features[:5]), 4)
    again = motif_graph_splits(seed=2, n_train=300, n_test=200)
    for a, b in zip(again["test_ood"].adjacencies, splits["test_ood"].adjacencies):
        np.testing.assert_array_equal(a, b)


def test_accuracy_and_bad_arguments():
    assert accuracy(np.array([[0.0, 1.0], [2.0, 1.0]]), np.array([1, 1])) == 0.5
    rng = np.random.default_rng(0)
    T = image_templates(rng)
    with pytest.raises(ValueError, match=r"rho must be a probability in \[0, 1\]"):
        make_shifted_images(rng, T, 10, rho=1.5)
    with pytest.raises(ValueError, match=r"templates must have shape \(K, S, S\) with K >= 2"):
        make_shifted_images(rng, T[0], 10, rho=0.5)
    with pytest.raises(ValueError, match=r"labels must be \(n,\) = \(3,\) integers in \[0, 5\)"):
        make_shifted_images(rng, T, 3, rho=0.5, labels=np.array([0, 1, 5]))
    with pytest.raises(ValueError, match=r"kind must be 'random' or 'glyphs'"):
        image_templates(rng, kind="noise")
    with pytest.raises(ValueError, match=r"n must be an integer >= 1"):
        make_motif_graphs(rng, 0)
    with pytest.raises(ValueError, match=r"base_sizes must be \(lo, hi\) with lo <= hi"):
        make_motif_graphs(rng, 3, base_sizes=(20, 10))
    with pytest.raises(ValueError, match=r"rng must be a np.random.Generator"):
        make_motif_graphs(0, 3)
    graphs = make_motif_graphs(rng, 3)
    with pytest.raises(ValueError, match=r"index must be a non-empty 1-D array of graph numbers in \[0, 3\)"):
        graph_batch(graphs, [3])
    with pytest.raises(ValueError, match=r"logits must be \(N, K\) and labels \(N,\)"):
        accuracy(np.zeros(3), np.zeros(3))
