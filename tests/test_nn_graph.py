"""minimem.nn.graph: the normalised adjacency, the GCN layer and the mean / max readouts against
central differences for every input and parameter, batching as one block-diagonal graph, the
autodiff twins, the GCN backbone, a planted wrong backward, and bad input."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings, strategies as st

from gradcheck.cases import all_cases
from gradcheck.cases.hma import random_graphs
from gradcheck.core import assert_grads_close, check_model, numeric_vjp
from minimem import autodiff as ad
from minimem.nn.graph import (
    GCNModel, GraphBatch, batch_graphs, check_graph_batch, gcn_autodiff, gcn_backward, gcn_forward,
    normalized_adjacency, readout_autodiff, readout_backward, readout_forward, select_graphs,
)


def test_normalized_adjacency_known_values():
    A_hat = normalized_adjacency(np.array([[0.0, 1.0], [1.0, 0.0]]))      # degrees 2, 2 with self-loops
    np.testing.assert_allclose(A_hat.toarray(), np.full((2, 2), 0.5))
    path = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=float)        # degrees 2, 3, 2
    expected = np.array([[1 / 2, 1 / np.sqrt(6), 0], [1 / np.sqrt(6), 1 / 3, 1 / np.sqrt(6)],
                         [0, 1 / np.sqrt(6), 1 / 2]])
    np.testing.assert_allclose(normalized_adjacency(sp.csr_array(path)).toarray(), expected, rtol=1e-14)
    np.testing.assert_allclose(normalized_adjacency(np.zeros((1, 1))).toarray(), [[1.0]])   # a lone node
    eigenvalues = np.linalg.eigvalsh(normalized_adjacency(path).toarray())
    assert np.all(eigenvalues <= 1.0 + 1e-12) and np.all(eigenvalues > -1.0)   # the GCN renormalisation trick


graph_sizes = st.lists(st.integers(1, 4), min_size=1, max_size=3)


@settings(max_examples=25, deadline=None)
@given(sizes=graph_sizes, X=st.integers(1, 3), Y=st.integers(1, 3), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_gcn_backward_matches_central_differences_and_the_twin(sizes, X, Y, bias, seed):
    rng = np.random.default_rng(seed)
    graphs = random_graphs(rng, sizes, X)
    W, b = rng.standard_normal((X, Y)), (rng.standard_normal(Y) if bias else None)
    H_next, cache = gcn_forward(graphs.adj, graphs.x, W, b)
    np.testing.assert_allclose(H_next, graphs.adj.toarray() @ graphs.x @ W + (0.0 if b is None else b), atol=1e-12)
    dout = rng.standard_normal(H_next.shape)
    dH, dW, db = gcn_backward(dout, cache)
    inputs = (graphs.x, W) + ((b,) if bias else ())
    numeric = numeric_vjp(lambda H, W, *b: gcn_forward(graphs.adj, H, W, *b)[0], inputs, dout)
    assert_grads_close((dH, dW) + ((db,) if bias else ()), numeric, names=("H", "W", "b")[:len(inputs)])
    tensors = [ad.Tensor(a.copy(), requires_grad=True) for a in inputs]
    out = gcn_autodiff(graphs.adj, *tensors)
    np.testing.assert_allclose(out.data, H_next, rtol=0, atol=1e-13)
    out.backward(dout)
    for g, t in zip((dH, dW, db), tensors):
        np.testing.assert_allclose(t.grad, g, rtol=1e-10, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(sizes=graph_sizes, D=st.integers(1, 3), kind=st.sampled_from(["mean", "max"]), seed=st.integers(0, 2**16))
def test_readouts_match_central_differences_and_the_twin(sizes, D, kind, seed):
    rng = np.random.default_rng(seed)
    N = sum(sizes)
    H = (np.sort(rng.standard_normal(N * D)) + 1e-2 * np.arange(N * D))       # values 1e-2 apart: no near-ties
    H = rng.permutation(H).reshape(N, D)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    h, cache = readout_forward(H, offsets, kind)
    reduce = np.mean if kind == "mean" else np.max
    np.testing.assert_allclose(h, np.stack([reduce(H[a:b], axis=0) for a, b in zip(offsets[:-1], offsets[1:])]))
    dout = rng.standard_normal(h.shape)
    dH = readout_backward(dout, cache)
    assert_grads_close((dH,), numeric_vjp(lambda H: readout_forward(H, offsets, kind)[0], (H,), dout), names=("H",))
    tH = ad.Tensor(H.copy(), requires_grad=True)
    out = readout_autodiff(tH, offsets, kind)
    np.testing.assert_allclose(out.data, h, rtol=0, atol=1e-14)
    out.backward(dout)
    np.testing.assert_allclose(tH.grad, dH, rtol=0, atol=1e-14)


def test_max_readout_ties_go_to_the_first_node_in_both_engines():
    H = np.array([[1.0, 2.0], [1.0, 0.0], [5.0, 5.0]])        # graph 0: nodes 0-1 tie in column 0
    offsets = np.array([0, 2, 3])
    h, cache = readout_forward(H, offsets, "max")
    np.testing.assert_array_equal(cache.pool, [[0, 0], [2, 2]])
    dH = readout_backward(np.ones((2, 2)), cache)
    np.testing.assert_array_equal(dH, [[1, 1], [0, 0], [1, 1]])
    tH = ad.Tensor(H, requires_grad=True)
    readout_autodiff(tH, offsets, "max").backward(np.ones((2, 2)))
    np.testing.assert_array_equal(tH.grad, dH)


# ----------------------------------------------------------------- batching
def test_a_batch_is_the_graphs_evaluated_one_by_one():
    rng = np.random.default_rng(0)
    model = GCNModel(X=3, widths=(5, 4), readout="max", rng=rng)
    sizes = (3, 1, 5, 2)
    graphs = random_graphs(rng, sizes, X=3)
    h, _ = model.forward(graphs)
    for g in range(len(sizes)):
        alone, _ = model.forward(select_graphs(graphs, [g]))
        np.testing.assert_allclose(alone[0], h[g], rtol=1e-12, atol=1e-13)
    perturbed = graphs._replace(x=graphs.x.copy())
    perturbed.x[:3] += 10.0                                     # graph 0's nodes only
    h2, _ = model.forward(perturbed)
    np.testing.assert_array_equal(h2[1:], h[1:])              # no message crossed into another graph
    assert np.max(np.abs(h2[0] - h[0])) > 1e-3
    reordered = select_graphs(graphs, [2, 0])
    np.testing.assert_allclose(model.forward(reordered)[0], h[[2, 0]], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("readout, last_relu", [("mean", False), ("max", True)])
def test_gcn_backbone_autodiff_twin_agrees_with_manual(readout, last_relu):
    rng = np.random.default_rng(1)
    model = GCNModel(X=3, widths=(6, 5, 4), readout=readout, last_relu=last_relu, rng=rng)
    graphs = random_graphs(rng, (4, 2, 6), X=3)
    h, cache = model.forward(graphs)
    assert h.shape == (3, model.D) == (3, 4)
    dh = rng.standard_normal(h.shape)
    grads = model.backward(dh, cache)
    assert list(grads) == list(model.params)
    tparams = {n: ad.Tensor(p.copy(), requires_grad=True) for n, p in model.params.items()}
    out = model.forward_autodiff(tparams, graphs)
    np.testing.assert_allclose(out.data, h, rtol=0, atol=1e-13)
    out.backward(dh)
    for name, g in grads.items():
        assert np.max(np.abs(g - tparams[name].grad)) <= 1e-10 * max(1.0, np.max(np.abs(g))), name


GCN_CASES = [c.name for c in all_cases("hma") if c.name.startswith("hma.gcn")]


def test_the_gcn_cases_are_registered():
    assert {"hma.gcn.mean", "hma.gcn.max"} <= set(GCN_CASES)


@pytest.mark.parametrize("name", GCN_CASES)
def test_gcn_case_passes_full_gradcheck(name):
    case = {c.name: c for c in all_cases("hma")}[name]
    result = check_model(case)
    assert result.ok, [(r.engine, r.tensor, r.verdict, r.max_abs) for r in result.rows if not r.ok]


# ----------------------------------------------------------------- a planted bug and bad input
def test_planted_backward_that_forgets_the_adjacency_in_dW_is_caught():
    """dW = H^T dout (no A_hat^T) is right for a graph without edges and wrong otherwise: caught on W."""
    rng = np.random.default_rng(2)
    graphs = random_graphs(rng, (4, 3), X=2, p=0.8)
    W, b = rng.standard_normal((2, 3)), rng.standard_normal(3)
    H_next, cache = gcn_forward(graphs.adj, graphs.x, W, b)
    dout = rng.standard_normal(H_next.shape)
    numeric = numeric_vjp(lambda *a: gcn_forward(graphs.adj, *a)[0], (graphs.x, W, b), dout)
    dH, dW, db = gcn_backward(dout, cache)
    assert_grads_close((dH, dW, db), numeric, names=("H", "W", "b"))
    with pytest.raises(AssertionError, match=r"^W:"):
        assert_grads_close((dH, graphs.x.T @ dout, db), numeric, names=("H", "W", "b"))


def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match=r"adjacency must be symmetric"):
        normalized_adjacency(np.array([[0.0, 1.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"adjacency must have a zero diagonal"):
        normalized_adjacency(np.eye(2))
    with pytest.raises(ValueError, match=r"adjacency entries must be finite and >= 0"):
        normalized_adjacency(np.array([[0.0, -1.0], [-1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"square \(n, n\)"):
        normalized_adjacency(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"graph 1: features must be \(n_g, X\)"):
        batch_graphs([np.zeros((2, 3)), np.zeros((2, 2))], [np.zeros((2, 2)), np.zeros((2, 2))])
    with pytest.raises(ValueError, match=r"one feature array per adjacency"):
        batch_graphs([np.zeros((2, 3))], [])
    rng = np.random.default_rng(3)
    graphs = random_graphs(rng, (2, 3), X=3)
    model = GCNModel(X=3, widths=(4,))
    with pytest.raises(ValueError, match=r"inputs must be a GraphBatch"):
        model.forward(graphs.x)
    with pytest.raises(ValueError, match=r"GraphBatch.x must have shape \(N, X\) with X=2"):
        GCNModel(X=2, widths=(4,)).forward(graphs)
    with pytest.raises(ValueError, match=r"GraphBatch.offsets must be"):
        model.forward(graphs._replace(offsets=np.array([0, 0, 5])))
    with pytest.raises(ValueError, match=r"GraphBatch.graph_index must give each node's graph"):
        model.forward(graphs._replace(graph_index=np.zeros(5, dtype=int)))
    crossing = sp.csr_array(graphs.adj.toarray() + np.eye(5, k=2) + np.eye(5, k=-2))
    with pytest.raises(ValueError, match=r"connects nodes of different graphs"):
        model.forward(graphs._replace(adj=crossing))
    with pytest.raises(ValueError, match=r"GraphBatch.adj must be a scipy.sparse \(N, N\)"):
        model.forward(graphs._replace(adj=graphs.adj.toarray()))
    with pytest.raises(ValueError, match=r"GraphBatch.x must be finite"):
        model.forward(graphs._replace(x=np.full((5, 3), np.inf)))
    with pytest.raises(ValueError, match=r"readout must be one of"):
        GCNModel(X=3, widths=(4,), readout="sum")
    with pytest.raises(ValueError, match=r"readout must be one of"):
        readout_forward(graphs.x, graphs.offsets, "sum")
    with pytest.raises(ValueError, match=r"H must have shape \(N, D_l\) with D_l=2"):
        gcn_forward(graphs.adj, graphs.x, np.zeros((2, 2)))
    h, cache = readout_forward(graphs.x, graphs.offsets, "max")
    with pytest.raises(ValueError, match=r"dout must have the output's shape \(B, D\) = \(2, 3\)"):
        readout_backward(h[:1], cache)
    with pytest.raises(ValueError, match=r"index must be a non-empty 1-D array of graph numbers in \[0, 2\)"):
        select_graphs(graphs, [2])
    assert isinstance(check_graph_batch(graphs, 3), GraphBatch)
