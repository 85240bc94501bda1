"""Graph convolution (Kipf & Welling, 2017, arXiv:1609.02907, eq. (2)) on batched graphs, mean and
max graph readouts, each a manual forward/backward pair plus its autodiff twin; and a GCN
backbone (HMA, specs/nam_hma.md B4).

Shapes: B graphs in a batch, N nodes of the whole batch, n_g nodes of graph g, X node-feature
width, D_l width of layer l, D output width.
A batch of graphs is one graph: the node features are stacked (N, X) and the normalised
adjacencies form one block-diagonal scipy.sparse matrix (N, N), so a layer is one sparse product
for the whole batch and no message crosses from one graph to another. `graph_index` (N,) names
each node's graph and `offsets` (B + 1,) where each graph's nodes start (graphs are contiguous).
Equations:
    (1) A_hat = D^{-1/2} (A + I) D^{-1/2},  D_ii = sum_j (A + I)_ij     symmetric normalisation
    (2) H' = A_hat (H W) + b                                          one GCN layer, (N, D_{l+1})
    (3) mean readout:  h_g = (1 / n_g) sum_{i in g} H_i               = P H, P (B, N) sparse
    (4) max readout:   h_g[d] = max_{i in g} H_i[d]                    (B, D)
Adjoints: dH = A_hat^T (dH' W^T) (A_hat is symmetric, A_hat^T is used anyway), dW = H^T (A_hat^T
dH'), db = sum_i dH'_i; mean readout dH = P^T dh; max readout sends dh_g[d] to the winning node.
The winner of (4) (the first node holding the maximum) is a non-differentiable choice: it goes into
the cache and is held constant in the backward pass, by both engines (DESIGN.md).
Parameters of a layer: `W` (D_l, D_{l+1}) used as `H @ W`, `b` (D_{l+1},) (PyTorch Geometric's
GCNConv maps as W = lin.weight.T, b = bias).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import numpy as np
import scipy.sparse as sp

from minimem import autodiff as ad
from minimem.checks import check_int
from minimem.nn.linear import as_float_array, check_finite, check_params, linear_init, with_prefix

READOUTS = ("mean", "max")


# ----------------------------------------------------------------- graphs and batches
def normalized_adjacency(A) -> sp.csr_array:
    """Eq. (1) for one graph: A (n, n) dense or scipy.sparse, symmetric, entries >= 0, zero diagonal
    (the self-loops are added here). Returns A_hat (n, n) as a CSR array."""
    A = sp.csr_array(A, dtype=np.float64)
    n = A.shape[0]
    if A.ndim != 2 or A.shape != (n, n) or n == 0:
        raise ValueError(f"an adjacency must be a square (n, n) matrix with n >= 1; got {A.shape}")
    if not np.all(np.isfinite(A.data)) or np.any(A.data < 0):
        raise ValueError("adjacency entries must be finite and >= 0")
    if np.any(A.diagonal() != 0):
        raise ValueError("adjacency must have a zero diagonal: the self-loops of eq. (1) are added here")
    if A.nnz and abs(A - A.T).max() > 0:
        raise ValueError("adjacency must be symmetric (an undirected graph)")
    A_loop = A + sp.eye_array(n, format="csr")                               # A + I
    inv_sqrt_degree = 1.0 / np.sqrt(np.asarray(A_loop.sum(axis=1)).ravel())  # (n,) degrees >= 1
    scale = sp.diags_array(inv_sqrt_degree)
    return sp.csr_array(scale @ A_loop @ scale)


class GraphBatch(NamedTuple):
    """B graphs as one block-diagonal graph (see the module docstring)."""
    x: np.ndarray             # (N, X) node features, graph after graph
    adj: sp.csr_array         # (N, N) block-diagonal A_hat of eq. (1)
    graph_index: np.ndarray   # (N,) int, the graph of each node, non-decreasing
    offsets: np.ndarray       # (B + 1,) int, nodes of graph g are offsets[g]:offsets[g + 1]

    @property
    def B(self) -> int:
        return len(self.offsets) - 1


def batch_graphs(features: Sequence[np.ndarray], adjacencies: Sequence) -> GraphBatch:
    """Stack B graphs into a GraphBatch: features[g] (n_g, X), adjacencies[g] (n_g, n_g) raw (eq. (1)
    is applied here)."""
    if len(features) == 0 or len(features) != len(adjacencies):
        raise ValueError(f"need one feature array per adjacency and at least one graph; got "
                         f"{len(features)} feature arrays and {len(adjacencies)} adjacencies")
    feats = [as_float_array(f"features[{g}]", f) for g, f in enumerate(features)]
    X = feats[0].shape[-1] if feats[0].ndim == 2 else None
    for g, (f, A) in enumerate(zip(feats, adjacencies)):
        if f.ndim != 2 or f.shape[1] != X or f.shape[0] == 0 or np.shape(A) != (f.shape[0], f.shape[0]):
            raise ValueError(f"graph {g}: features must be (n_g, X) with n_g >= 1 and X={X}, and the adjacency "
                             f"(n_g, n_g); got {f.shape} and {np.shape(A)}")
    sizes = np.array([f.shape[0] for f in feats])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    adj = sp.csr_array(sp.block_diag([normalized_adjacency(A) for A in adjacencies], format="csr"))
    return GraphBatch(np.concatenate(feats, axis=0), adj, np.repeat(np.arange(len(feats)), sizes), offsets)


def check_graph_batch(batch, X: int | None = None) -> GraphBatch:
    """ValueError unless batch is a consistent GraphBatch (with node-feature width X if given)."""
    if not isinstance(batch, GraphBatch):
        raise ValueError(f"inputs must be a GraphBatch (see batch_graphs); got {type(batch).__name__}")
    x = as_float_array("GraphBatch.x", batch.x)
    offsets, graph_index = np.asarray(batch.offsets), np.asarray(batch.graph_index)
    if x.ndim != 2 or (X is not None and x.shape[1] != X):
        raise ValueError(f"GraphBatch.x must have shape (N, X){f' with X={X}' if X is not None else ''}; "
                         f"got {x.shape}")
    N = x.shape[0]
    if offsets.ndim != 1 or offsets.dtype.kind not in "iu" or len(offsets) < 2 or offsets[0] != 0 \
            or offsets[-1] != N or np.any(np.diff(offsets) < 1):
        raise ValueError(f"GraphBatch.offsets must be (B + 1,) ints from 0 to N={N}, every graph holding "
                         f"at least one node; got {offsets}")
    if graph_index.shape != (N,) or not np.array_equal(graph_index, np.repeat(np.arange(len(offsets) - 1),
                                                                               np.diff(offsets))):
        raise ValueError("GraphBatch.graph_index must give each node's graph, consistent with offsets")
    if not sp.issparse(batch.adj) or batch.adj.shape != (N, N):
        raise ValueError(f"GraphBatch.adj must be a scipy.sparse (N, N) = {(N, N)} matrix; got "
                         f"{type(batch.adj).__name__} {getattr(batch.adj, 'shape', None)}")
    coo = batch.adj.tocoo()
    if np.any(graph_index[coo.row] != graph_index[coo.col]):
        raise ValueError("GraphBatch.adj connects nodes of different graphs; it must be block-diagonal")
    check_finite("GraphBatch.x", x)
    check_finite("GraphBatch.adj", coo.data)
    return GraphBatch(x, batch.adj, graph_index, offsets)


def select_graphs(batch: GraphBatch, index) -> GraphBatch:
    """The graphs `index` (ints, in that order) of a batch, as a new GraphBatch."""
    index = np.atleast_1d(np.asarray(index))
    if index.dtype.kind not in "iu" or index.ndim != 1 or index.size == 0 or np.any(index < 0) \
            or np.any(index >= batch.B):
        raise ValueError(f"index must be a non-empty 1-D array of graph numbers in [0, {batch.B}); got {index}")
    sizes = np.diff(batch.offsets)[index]
    nodes = np.concatenate([np.arange(batch.offsets[g], batch.offsets[g + 1]) for g in index])
    adj = sp.csr_array(sp.csr_array(batch.adj)[nodes][:, nodes])
    return GraphBatch(batch.x[nodes], adj, np.repeat(np.arange(len(index)), sizes),
                      np.concatenate([[0], np.cumsum(sizes)]))


# ----------------------------------------------------------------- the GCN layer
class GCNCache(NamedTuple):
    adj: sp.csr_array     # (N, N) A_hat
    H: np.ndarray         # (N, D_l) input node features
    W: np.ndarray         # (D_l, D_{l+1})
    has_bias: bool


def gcn_forward(adj, H: np.ndarray, W: np.ndarray, b: np.ndarray | None = None):
    """Eq. (2): H' = A_hat (H W) + b.

    Args:
        adj: (N, N) scipy.sparse A_hat (eq. (1), block-diagonal for a batch); a constant.
        H: (N, D_l) node features.
        W: (D_l, D_{l+1}) weight, used as `H @ W`; b: (D_{l+1},) or None.
    Returns:
        H_next: (N, D_{l+1}), and the cache for gcn_backward.
    """
    H, W = as_float_array("H", H), as_float_array("W", W)
    if W.ndim != 2:
        raise ValueError(f"W must have shape (D_l, D_{{l+1}}); got {W.shape}")
    if H.ndim != 2 or H.shape[1] != W.shape[0]:
        raise ValueError(f"H must have shape (N, D_l) with D_l={W.shape[0]}; got {H.shape}")
    if not sp.issparse(adj) or adj.shape != (H.shape[0], H.shape[0]):
        raise ValueError(f"adj must be a scipy.sparse (N, N) matrix with N={H.shape[0]}; "
                         f"got {type(adj).__name__} {getattr(adj, 'shape', None)}")
    if b is not None:
        b = as_float_array("b", b)
        if b.shape != (W.shape[1],):
            raise ValueError(f"b must have shape (D_{{l+1}},) = ({W.shape[1]},); got {b.shape}")
    H_next = np.asarray(adj @ (H @ W))                                        # (N, D_{l+1})
    if b is not None:
        H_next = H_next + b
    return H_next, GCNCache(adj, H, W, b is not None)


def gcn_backward(dout: np.ndarray, cache: GCNCache):
    """Adjoint of eq. (2). Returns (dH (N, D_l), dW (D_l, D_{l+1}), db (D_{l+1},) or None)."""
    adj, H, W, has_bias = cache
    if dout.shape != (H.shape[0], W.shape[1]):
        raise ValueError(f"dout must have the output's shape (N, D_{{l+1}}) = {(H.shape[0], W.shape[1])}; "
                         f"got {dout.shape}")
    dHW = np.asarray(adj.T @ dout)                                            # (N, D_{l+1}) gradient of H W
    dW = H.T @ dHW                                                            # (D_l, D_{l+1})
    dH = dHW @ W.T                                                            # (N, D_l)
    db = dout.sum(axis=0) if has_bias else None                               # (D_{l+1},)
    return dH, dW, db


def gcn_autodiff(adj, H, W, b=None) -> ad.Tensor:
    """Autodiff twin of gcn_forward (A_hat is a constant of the graph: ad.sparse_matmul)."""
    H_next = ad.sparse_matmul(adj, ad.matmul(H, W))                           # (N, D_{l+1})
    return H_next if b is None else H_next + b


# ----------------------------------------------------------------- readouts
def mean_pool_matrix(offsets: np.ndarray) -> sp.csr_array:
    """P (B, N) of eq. (3): P[g, i] = 1 / n_g for the nodes i of graph g."""
    sizes = np.diff(offsets)
    B, N = len(sizes), int(offsets[-1])
    return sp.csr_array((np.repeat(1.0 / sizes, sizes), np.arange(N), offsets), shape=(B, N))


class ReadoutCache(NamedTuple):
    kind: str
    H_shape: tuple          # (N, D)
    pool: object            # mean: P (B, N) sparse; max: winner (B, D) int node of each maximum


def readout_forward(H: np.ndarray, offsets: np.ndarray, kind: str = "mean"):
    """Eq. (3) or (4): one vector per graph.

    Args:
        H: (N, D) node features of a batch.
        offsets: (B + 1,) where each graph's nodes start (GraphBatch.offsets).
        kind: "mean" or "max".
    Returns:
        h: (B, D), and the cache (for "max", cache.pool holds the winning nodes, held constant in
        the backward pass; the first of tied nodes wins).
    """
    if kind not in READOUTS:
        raise ValueError(f"readout must be one of {READOUTS}; got {kind!r}")
    H = as_float_array("H", H)
    offsets = np.asarray(offsets)
    if H.ndim != 2 or offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != H.shape[0] \
            or np.any(np.diff(offsets) < 1):
        raise ValueError(f"H must be (N, D) and offsets (B + 1,) from 0 to N with non-empty graphs; "
                         f"got {H.shape} and {offsets}")
    if kind == "mean":
        P = mean_pool_matrix(offsets)
        return np.asarray(P @ H), ReadoutCache(kind, H.shape, P)                  # (B, D)  eq. (3)
    N, D = H.shape
    starts = offsets[:-1]
    h = np.maximum.reduceat(H, starts, axis=0)                                     # (B, D)  eq. (4)
    graph_index = np.repeat(np.arange(len(starts)), np.diff(offsets))
    candidates = np.where(H == h[graph_index], np.arange(N)[:, None], N)          # (N, D) node or N
    winner = np.minimum.reduceat(candidates, starts, axis=0)                       # (B, D) first maximum
    return h, ReadoutCache(kind, H.shape, winner)


def readout_backward(dout: np.ndarray, cache: ReadoutCache) -> np.ndarray:
    """Adjoint of readout_forward. Returns dH (N, D)."""
    kind, (N, D), pool = cache
    B = pool.shape[0]
    if dout.shape != (B, D):
        raise ValueError(f"dout must have the output's shape (B, D) = {(B, D)}; got {dout.shape}")
    if kind == "mean":
        return np.asarray(pool.T @ dout)                                           # (N, D)
    dH = np.zeros((N, D), dtype=dout.dtype)
    dH[pool, np.arange(D)] = dout           # assignment is safe: one column's winners are distinct nodes
    return dH


def readout_autodiff(H, offsets: np.ndarray, kind: str = "mean", winner: np.ndarray | None = None) -> ad.Tensor:
    """Autodiff twin of readout_forward. The max winners are chosen on the values (or taken from a
    forward's cache) and are a constant of the graph, as in the manual pair."""
    H = ad.as_tensor(H)
    if kind == "mean":
        return ad.sparse_matmul(mean_pool_matrix(offsets), H)                     # (B, D)
    if kind != "max":
        raise ValueError(f"readout must be one of {READOUTS}; got {kind!r}")
    if winner is None:
        _, cache = readout_forward(H.data, offsets, "max")
        winner = cache.pool
    return ad.getitem(H, (winner, np.arange(H.shape[1])[None, :]))                # (B, D)


# ----------------------------------------------------------------- the GCN backbone
class GCNBackboneCache(NamedTuple):
    layers: list          # L GCNCache
    relu: list            # boolean masks z > 0 of the layers followed by a ReLU
    readout: ReadoutCache


class GCNModel:
    """A GCN backbone f(graphs) -> h (B, D): L GCN layers, ReLU after every layer but the last (as
    the node GNN of the HMA / CIGA / OGB code; last_relu=True adds one there too), then a mean or
    max readout; D = widths[-1]. Dropout is not offered.

    Layer l: H_{l+1} = act(A_hat (H_l W_l) + b_l), H_0 = GraphBatch.x (N, X).
    Parameters: `gcn{l}.W` (D_l, D_{l+1}) used as `H @ W`, `gcn{l}.b` (D_{l+1},), with D_0 = X.
    Inputs: a GraphBatch (batch_graphs). Outputs: h (B, D).
    """

    def __init__(self, X: int, widths: Sequence[int], readout: str = "mean", last_relu: bool = False,
                 rng: np.random.Generator | None = None, dtype=np.float64):
        check_int("X", X, 1)
        self.widths = tuple(int(w) for w in widths)
        if not self.widths or any(w < 1 for w in self.widths):
            raise ValueError(f"widths must list at least one layer width, each >= 1; got {tuple(widths)}")
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}; got {readout!r}")
        self.X, self.readout, self.last_relu = int(X), readout, bool(last_relu)
        rng = np.random.default_rng(0) if rng is None else rng
        self.params = {}
        for l, (d_in, d_out) in enumerate(zip((self.X,) + self.widths[:-1], self.widths)):
            self.params.update(with_prefix(f"gcn{l}", linear_init(rng, d_in, d_out, dtype=dtype)))

    @property
    def D(self) -> int:
        """Width of the output h."""
        return self.widths[-1]

    def param_shapes(self) -> dict:
        shapes = {}
        for l, (d_in, d_out) in enumerate(zip((self.X,) + self.widths[:-1], self.widths)):
            shapes[f"gcn{l}.W"], shapes[f"gcn{l}.b"] = (d_in, d_out), (d_out,)
        return shapes

    def _check(self, graphs) -> GraphBatch:
        check_params(self.params, self.param_shapes())
        for name, value in self.params.items():
            check_finite(f"parameter {name}", value)
        return check_graph_batch(graphs, self.X)

    def _relu_after(self, l: int) -> bool:
        return l < len(self.widths) - 1 or self.last_relu

    def forward(self, graphs):
        """h (B, D) and the cache for backward."""
        graphs = self._check(graphs)
        H, layer_caches, masks = graphs.x, [], []
        for l in range(len(self.widths)):
            H, cache = gcn_forward(graphs.adj, H, self.params[f"gcn{l}.W"], self.params[f"gcn{l}.b"])  # eq. (2)
            layer_caches.append(cache)
            if self._relu_after(l):
                positive = H > 0
                H = H * positive
                masks.append(positive)
        h, readout_cache = readout_forward(H, graphs.offsets, self.readout)     # (B, D)  eq. (3) or (4)
        return h, GCNBackboneCache(layer_caches, masks, readout_cache)

    def backward(self, dh, cache: GCNBackboneCache) -> dict:
        """Parameter gradients (keys of params) from dh (B, D)."""
        grads = {}
        dH = readout_backward(dh, cache.readout)
        for l in reversed(range(len(self.widths))):
            if self._relu_after(l):
                dH = dH * cache.relu[l]
            dH, grads[f"gcn{l}.W"], grads[f"gcn{l}.b"] = gcn_backward(dH, cache.layers[l])
        return {name: grads[name] for name in self.params}

    def forward_autodiff(self, tparams: Mapping[str, ad.Tensor], graphs) -> ad.Tensor:
        """Autodiff twin of forward; returns h (B, D) as a Tensor."""
        graphs = self._check(graphs)
        H = ad.as_tensor(graphs.x)
        for l in range(len(self.widths)):
            H = gcn_autodiff(graphs.adj, H, tparams[f"gcn{l}.W"], tparams[f"gcn{l}.b"])
            if self._relu_after(l):
                H = ad.relu(H)
        return readout_autodiff(H, graphs.offsets, self.readout)
