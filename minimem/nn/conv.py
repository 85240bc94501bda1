"""2-D convolution by im2col, max / average pooling and global average pooling, each a manual
forward/backward pair plus its autodiff twin; and a small CNN backbone (HMA, specs/nam_hma.md B4).

Shapes (channels-last, so a convolution is one `patches @ W` like every other layer in minimem):
B batch, Hi x Wi input image sides, Ho x Wo output sides, C input channels, F output channels
(filters), kh x kw kernel (window) sides, s stride, p zero padding. Hi, Wi, Ho, Wo are image sides,
not the heads H or word size W of the memory modules.
Equations (cross-correlation, as in every deep-learning library):
    (1) x_p = x zero-padded by p on both sides of both image axes       (B, Hi+2p, Wi+2p, C)
    (2) Ho = floor((Hi + 2p - kh) / s) + 1,  Wo likewise;  trailing rows a stride skips are unused
    (3) P[b, i, j] = x_p[b, s i : s i + kh, s j : s j + kw, :], flattened in (kh, kw, C) order
                                                                        im2col, (B, Ho, Wo, kh kw C)
    (4) y = P @ W.reshape(kh kw C, F) + b                               (B, Ho, Wo, F)
    (5) max pool:  y[b, i, j, c] = max of the window (kh, kw) at (s i, s j) of channel c
    (6) avg pool:  y[b, i, j, c] = mean of that window
    (7) global average pool: y[b, c] = mean over (Hi, Wi) of x[b, :, :, c]          (B, C)
Backward of (3), col2im: every patch entry's gradient is added back to the pixel it was copied
from; windows overlap when s < k, so the additions accumulate (the classic bug is to assign).
Max pooling's winner (the first maximum of each window) is a non-differentiable choice: it goes
into the cache and is held constant in the backward pass, by both engines (DESIGN.md).
Parameters: `W` (kh, kw, C, F) used as `P @ W.reshape(kh*kw*C, F)`, `b` (F,). PyTorch's Conv2d
maps as W = weight.permute(2, 3, 1, 0) and images as x = x_nchw.permute(0, 2, 3, 1).
The only Python loops run over the kh x kw kernel offsets (col2im), never over batch or pixels.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import numpy as np

from minimem import autodiff as ad
from minimem import init
from minimem.checks import check_int
from minimem.nn.linear import as_float_array, check_finite, check_params, with_prefix

POOLS = ("max", "avg", "none")


# ----------------------------------------------------------------- validation and geometry
def _check_images(name: str, x) -> np.ndarray:
    x = as_float_array(name, x)
    if x.ndim != 4 or 0 in x.shape:
        raise ValueError(f"{name} must have shape (B, Hi, Wi, C) with every size >= 1; got {x.shape}")
    return x


def output_size(size: int, k: int, stride: int, padding: int = 0) -> int:
    """Eq. (2): floor((size + 2 padding - k) / stride) + 1; ValueError if the window does not fit."""
    if size + 2 * padding < k:
        raise ValueError(f"a window of {k} does not fit an image side of {size} with padding {padding}")
    return (size + 2 * padding - k) // stride + 1


def im2col(x_p: np.ndarray, kh: int, kw: int, stride: int) -> np.ndarray:
    """Eq. (3): every (kh, kw) window of the (already padded) images, as (B, Ho, Wo, kh, kw, C).

    A strided view is taken and then copied, so the result never aliases x_p.
    """
    B, Hp, Wp, C = x_p.shape
    Ho, Wo = output_size(Hp, kh, stride), output_size(Wp, kw, stride)
    windows = np.lib.stride_tricks.sliding_window_view(x_p, (kh, kw), axis=(1, 2))  # (B, Hp-kh+1, Wp-kw+1, C, kh, kw)
    windows = windows[:, :stride * (Ho - 1) + 1:stride, :stride * (Wo - 1) + 1:stride]  # (B, Ho, Wo, C, kh, kw)
    return np.ascontiguousarray(windows.transpose(0, 1, 2, 4, 5, 3))                # (B, Ho, Wo, kh, kw, C)


def col2im(dpatches: np.ndarray, padded_shape: tuple, stride: int) -> np.ndarray:
    """Adjoint of im2col: dpatches (B, Ho, Wo, kh, kw, C) summed back onto (B, Hp, Wp, C)."""
    B, Ho, Wo, kh, kw, C = dpatches.shape
    dx_p = np.zeros(padded_shape, dtype=dpatches.dtype)
    for i in range(kh):                                         # kernel offsets only: kh * kw steps
        for j in range(kw):
            rows = slice(i, i + stride * (Ho - 1) + 1, stride)       # the pixels offset (i, j) touched
            cols = slice(j, j + stride * (Wo - 1) + 1, stride)
            dx_p[:, rows, cols, :] += dpatches[:, :, :, i, j, :]      # +=: windows overlap when s < k
    return dx_p


def _window_index(Hp: int, Wp: int, kh: int, kw: int, stride: int) -> tuple:
    """Index arrays for x_p[:, rows, cols, :] -> (B, Ho, Wo, kh, kw, C): im2col as one gather."""
    Ho, Wo = output_size(Hp, kh, stride), output_size(Wp, kw, stride)
    rows = (stride * np.arange(Ho))[:, None, None, None] + np.arange(kh)[None, None, :, None]  # (Ho, 1, kh, 1)
    cols = (stride * np.arange(Wo))[None, :, None, None] + np.arange(kw)[None, None, None, :]  # (1, Wo, 1, kw)
    return slice(None), rows, cols, slice(None)


def im2col_autodiff(x_p, kh: int, kw: int, stride: int) -> ad.Tensor:
    """Autodiff twin of im2col: one advanced-indexing gather, whose VJP (np.add.at) is col2im."""
    x_p = ad.as_tensor(x_p)
    return ad.getitem(x_p, _window_index(x_p.shape[1], x_p.shape[2], kh, kw, stride))


def pad_autodiff(x, padding: int) -> ad.Tensor:
    """Eq. (1) in autodiff ops: x added into the middle of a zero image."""
    x = ad.as_tensor(x)
    if padding == 0:
        return x
    B, Hi, Wi, C = x.shape
    zeros = ad.Tensor(np.zeros((B, Hi + 2 * padding, Wi + 2 * padding, C), dtype=x.dtype))
    inside = (slice(None), slice(padding, padding + Hi), slice(padding, padding + Wi), slice(None))
    return ad.scatter_add(zeros, inside, x)


# ----------------------------------------------------------------- conv2d
class Conv2dCache(NamedTuple):
    patches: np.ndarray    # (B, Ho, Wo, kh*kw*C) im2col of the padded input, eq. (3)
    W: np.ndarray          # (kh, kw, C, F)
    x_shape: tuple         # (B, Hi, Wi, C)
    stride: int
    padding: int
    has_bias: bool


def _check_conv(x, W, b, stride, padding):
    x, W = _check_images("x", x), as_float_array("W", W)
    stride, padding = check_int("stride", stride, 1), check_int("padding", padding, 0)
    if W.ndim != 4 or 0 in W.shape:
        raise ValueError(f"W must have shape (kh, kw, C, F) with every size >= 1; got {W.shape}")
    if x.shape[3] != W.shape[2]:
        raise ValueError(f"x must have shape (B, Hi, Wi, C) with C={W.shape[2]} channels (W's third axis); "
                         f"got {x.shape}")
    if b is not None:
        b = as_float_array("b", b)
        if b.shape != (W.shape[3],):
            raise ValueError(f"b must have shape (F,) with F={W.shape[3]}; got {b.shape}")
    output_size(x.shape[1], W.shape[0], stride, padding)       # raises if the kernel does not fit
    output_size(x.shape[2], W.shape[1], stride, padding)
    return x, W, b, stride, padding


def conv2d_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray | None = None, stride: int = 1,
                   padding: int = 0):
    """Eqs. (1)-(4): y = im2col(pad(x)) @ W + b.

    Args:
        x: (B, Hi, Wi, C) images, channels last.
        W: (kh, kw, C, F) kernel; b: (F,) bias or None.
        stride: s >= 1, the same along both image axes.
        padding: p >= 0 zeros on every side.
    Returns:
        y: (B, Ho, Wo, F), and the cache for conv2d_backward.
    """
    x, W, b, stride, padding = _check_conv(x, W, b, stride, padding)
    kh, kw, C, F = W.shape
    x_p = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))  # (B, Hi+2p, Wi+2p, C)  eq. (1)
    windows = im2col(x_p, kh, kw, stride)                                     # (B, Ho, Wo, kh, kw, C)  eq. (3)
    patches = windows.reshape(windows.shape[:3] + (kh * kw * C,))             # (B, Ho, Wo, kh*kw*C)
    y = patches @ W.reshape(kh * kw * C, F)                                   # (B, Ho, Wo, F)  eq. (4)
    if b is not None:
        y = y + b
    return y, Conv2dCache(patches, W, x.shape, stride, padding, b is not None)


def conv2d_backward(dout: np.ndarray, cache: Conv2dCache):
    """Adjoint of conv2d_forward. Returns (dx (B, Hi, Wi, C), dW (kh, kw, C, F), db (F,) or None).

    With P the patch matrix and W_m = W.reshape(kh kw C, F):  dW_m = P^T dout, db = sum(dout),
    dP = dout W_m^T, and dx = col2im(dP) with the padding cut off.
    """
    patches, W, x_shape, stride, padding, has_bias = cache
    kh, kw, C, F = W.shape
    B, Ho, Wo, K = patches.shape
    if dout.shape != (B, Ho, Wo, F):
        raise ValueError(f"dout must have the output's shape (B, Ho, Wo, F) = {(B, Ho, Wo, F)}; got {dout.shape}")
    dout_rows = dout.reshape(-1, F)                                           # (B*Ho*Wo, F)
    dW = (patches.reshape(-1, K).T @ dout_rows).reshape(W.shape)              # (kh, kw, C, F)
    db = dout_rows.sum(axis=0) if has_bias else None                          # (F,)
    dpatches = (dout @ W.reshape(K, F).T).reshape(B, Ho, Wo, kh, kw, C)       # (B, Ho, Wo, kh, kw, C)
    _, Hi, Wi, _ = x_shape
    dx_p = col2im(dpatches, (B, Hi + 2 * padding, Wi + 2 * padding, C), stride)  # eq. (3) adjoint
    dx = dx_p[:, padding:padding + Hi, padding:padding + Wi, :]               # eq. (1) adjoint
    return np.ascontiguousarray(dx), dW, db


def conv2d_autodiff(x, W, b=None, stride: int = 1, padding: int = 0) -> ad.Tensor:
    """Autodiff twin of conv2d_forward: pad, gather the windows, one matmul."""
    x, W = ad.as_tensor(x), ad.as_tensor(W)
    kh, kw, C, F = W.shape
    windows = im2col_autodiff(pad_autodiff(x, padding), kh, kw, stride)      # (B, Ho, Wo, kh, kw, C)
    patches = ad.reshape(windows, windows.shape[:3] + (kh * kw * C,))         # (B, Ho, Wo, kh*kw*C)
    y = ad.matmul(patches, ad.reshape(W, (kh * kw * C, F)))                   # (B, Ho, Wo, F)
    return y if b is None else y + b


conv2d_op = ad.custom_op(conv2d_forward, conv2d_backward, name="nn.conv2d")


def conv2d_init(rng: np.random.Generator, kh: int, kw: int, C: int, F: int, bias: bool = True,
                dtype=np.float64) -> dict:
    """{"W": (kh, kw, C, F) Xavier-uniform (fans count the receptive field), "b": (F,) zeros}."""
    params = {"W": init.xavier_uniform(rng, (kh, kw, C, F), dtype=dtype)}
    if bias:
        params["b"] = init.zeros(rng, F, dtype=dtype)
    return params


class Conv2dModel:
    """One convolution as a model for gradcheck: inputs x (B, Hi, Wi, C) -> outputs (B, Ho, Wo, F).

    Parameters: `W` (kh, kw, C, F), `b` (F,), as in conv2d_forward.
    """

    def __init__(self, C: int, F: int, kernel: tuple[int, int] = (3, 3), stride: int = 1, padding: int = 0,
                 rng: np.random.Generator | None = None, dtype=np.float64):
        rng = np.random.default_rng(0) if rng is None else rng
        self.kh, self.kw = (check_int("kernel", k, 1) for k in kernel)
        self.C, self.F = check_int("C", C, 1), check_int("F", F, 1)
        self.stride, self.padding = check_int("stride", stride, 1), check_int("padding", padding, 0)
        self.params = conv2d_init(rng, self.kh, self.kw, self.C, self.F, dtype=dtype)

    def _check(self, x) -> np.ndarray:
        check_params(self.params, {"W": (self.kh, self.kw, self.C, self.F), "b": (self.F,)})
        for name, value in self.params.items():
            check_finite(f"parameter {name}", value)
        x = _check_images("inputs", x)
        check_finite("inputs", x)
        return x

    def forward(self, x):
        return conv2d_forward(self._check(x), self.params["W"], self.params["b"], self.stride, self.padding)

    def backward(self, doutputs, cache) -> dict:
        _, dW, db = conv2d_backward(doutputs, cache)
        return {"W": dW, "b": db}

    def forward_autodiff(self, tparams: Mapping[str, ad.Tensor], x) -> ad.Tensor:
        return conv2d_autodiff(self._check(x), tparams["W"], tparams["b"], self.stride, self.padding)


# ----------------------------------------------------------------- pooling
def _check_pool(x, size, stride):
    x = _check_images("x", x)
    size = check_int("size", size, 1)
    stride = size if stride is None else check_int("stride", stride, 1)
    output_size(x.shape[1], size, stride)                       # raises if the window does not fit
    output_size(x.shape[2], size, stride)
    return x, size, stride


class MaxPoolCache(NamedTuple):
    winner: np.ndarray     # (B, Ho, Wo, C) int: flat index in the size*size window of the first maximum
    x_shape: tuple         # (B, Hi, Wi, C)
    size: int
    stride: int


def max_pool_forward(x: np.ndarray, size: int = 2, stride: int | None = None):
    """Eq. (5): the maximum of every size x size window (stride defaults to size; no padding).

    Args:
        x: (B, Hi, Wi, C).
    Returns:
        y: (B, Ho, Wo, C), and the cache; cache.winner holds the chosen entries (held constant in
        the backward pass; the first of tied maxima wins).
    """
    x, size, stride = _check_pool(x, size, stride)
    windows = im2col(x, size, size, stride)                                   # (B, Ho, Wo, k, k, C)
    B, Ho, Wo, _, _, C = windows.shape
    flat = windows.reshape(B, Ho, Wo, size * size, C)                         # (B, Ho, Wo, k*k, C)
    winner = np.argmax(flat, axis=3)                                          # (B, Ho, Wo, C) int
    y = np.take_along_axis(flat, winner[:, :, :, None, :], axis=3)[:, :, :, 0, :]  # (B, Ho, Wo, C)
    return y, MaxPoolCache(winner, x.shape, size, stride)


def max_pool_backward(dout: np.ndarray, cache: MaxPoolCache) -> np.ndarray:
    """Adjoint of eq. (5) with the winners fixed: each output's gradient goes to its winner."""
    winner, x_shape, size, stride = cache
    B, Ho, Wo, C = winner.shape
    if dout.shape != winner.shape:
        raise ValueError(f"dout must have the output's shape (B, Ho, Wo, C) = {winner.shape}; got {dout.shape}")
    dflat = np.zeros((B, Ho, Wo, size * size, C), dtype=dout.dtype)
    np.put_along_axis(dflat, winner[:, :, :, None, :], dout[:, :, :, None, :], axis=3)
    return col2im(dflat.reshape(B, Ho, Wo, size, size, C), x_shape, stride)  # (B, Hi, Wi, C)


def max_pool_autodiff(x, size: int = 2, stride: int | None = None, winner: np.ndarray | None = None) -> ad.Tensor:
    """Autodiff twin of max_pool_forward: gather the winner of every window. The winners are chosen
    on the values (or taken from a forward's cache), a constant of the graph like in the manual pair."""
    x = ad.as_tensor(x)
    stride = size if stride is None else stride
    windows = im2col_autodiff(x, size, size, stride)                          # (B, Ho, Wo, k, k, C)
    B, Ho, Wo, _, _, C = windows.shape
    flat = ad.reshape(windows, (B, Ho, Wo, size * size, C))
    if winner is None:
        winner = np.argmax(flat.data, axis=3)                                 # (B, Ho, Wo, C) int, a constant
    return ad.reshape(ad.gather(flat, winner[:, :, :, None, :], axis=3), (B, Ho, Wo, C))


class AvgPoolCache(NamedTuple):
    out_shape: tuple       # (B, Ho, Wo, C)
    x_shape: tuple         # (B, Hi, Wi, C)
    size: int
    stride: int


def avg_pool_forward(x: np.ndarray, size: int = 2, stride: int | None = None):
    """Eq. (6): the mean of every size x size window (stride defaults to size; no padding).
    Returns y (B, Ho, Wo, C) and the cache."""
    x, size, stride = _check_pool(x, size, stride)
    windows = im2col(x, size, size, stride)                                   # (B, Ho, Wo, k, k, C)
    y = windows.mean(axis=(3, 4))                                             # (B, Ho, Wo, C)
    return y, AvgPoolCache(y.shape, x.shape, size, stride)


def avg_pool_backward(dout: np.ndarray, cache: AvgPoolCache) -> np.ndarray:
    """Adjoint of eq. (6): every pixel of a window gets dout / (size * size)."""
    out_shape, x_shape, size, stride = cache
    if dout.shape != out_shape:
        raise ValueError(f"dout must have the output's shape (B, Ho, Wo, C) = {out_shape}; got {dout.shape}")
    B, Ho, Wo, C = out_shape
    dwindows = np.broadcast_to(dout[:, :, :, None, None, :] / (size * size), (B, Ho, Wo, size, size, C))
    return col2im(dwindows, x_shape, stride)                                  # (B, Hi, Wi, C)


def avg_pool_autodiff(x, size: int = 2, stride: int | None = None) -> ad.Tensor:
    """Autodiff twin of avg_pool_forward."""
    stride = size if stride is None else stride
    return ad.mean(im2col_autodiff(x, size, size, stride), axis=(3, 4))       # (B, Ho, Wo, C)


def global_avg_pool_forward(x: np.ndarray):
    """Eq. (7): y[b, c] = mean over the image of channel c. Returns y (B, C) and the cache."""
    x = _check_images("x", x)
    return x.mean(axis=(1, 2)), x.shape


def global_avg_pool_backward(dout: np.ndarray, cache: tuple) -> np.ndarray:
    """Adjoint of eq. (7): every pixel gets dout / (Hi Wi)."""
    B, Hi, Wi, C = cache
    if dout.shape != (B, C):
        raise ValueError(f"dout must have the output's shape (B, C) = {(B, C)}; got {dout.shape}")
    return np.broadcast_to(dout[:, None, None, :] / (Hi * Wi), cache).copy()  # (B, Hi, Wi, C)


def global_avg_pool_autodiff(x) -> ad.Tensor:
    """Autodiff twin of global_avg_pool_forward."""
    return ad.mean(x, axis=(1, 2))                                            # (B, C)


# ----------------------------------------------------------------- the CNN backbone
class CNNCache(NamedTuple):
    conv: list        # L Conv2dCache
    relu: list        # L (B, Ho, Wo, F) boolean masks z > 0
    pool: list        # L pooling caches (None where pool == "none")
    gap: tuple        # global_avg_pool cache


class CNNModel:
    """A CNN backbone f(x) -> h (B, D): L blocks of conv2d -> ReLU -> pooling, then global average
    pooling, D = channels[-1] (HMA B4: "global-average-pooled last conv features").

    Block l: z_l = conv2d(a_l, conv{l}.W, conv{l}.b, stride, padding); a_{l+1} = pool(relu(z_l)).
    Pooling ("max", "avg" or "none") uses pool_size windows with stride pool_size; a block whose
    image side is already smaller than pool_size raises ValueError at call time.
    Parameters: `conv{l}.W` (kernel, kernel, C_l, C_{l+1}) and `conv{l}.b` (C_{l+1},), with
    C_0 = the input channels C.
    Inputs: x (B, Hi, Wi, C) images (channels last). Outputs: h (B, D).
    """

    def __init__(self, C: int, channels: Sequence[int], kernel: int = 3, stride: int = 1, padding: int = 1,
                 pool: str = "max", pool_size: int = 2, rng: np.random.Generator | None = None,
                 dtype=np.float64):
        self.C = check_int("C", C, 1)
        self.channels = tuple(check_int("channels[i]", c, 1) for c in channels)
        if not self.channels:
            raise ValueError("channels must list at least one conv layer's width")
        self.kernel, self.stride = check_int("kernel", kernel, 1), check_int("stride", stride, 1)
        self.padding, self.pool_size = check_int("padding", padding, 0), check_int("pool_size", pool_size, 1)
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}; got {pool!r}")
        self.pool = pool
        rng = np.random.default_rng(0) if rng is None else rng
        self.params = {}
        for l, (c_in, c_out) in enumerate(zip((self.C,) + self.channels[:-1], self.channels)):
            self.params.update(with_prefix(f"conv{l}", conv2d_init(rng, kernel, kernel, c_in, c_out, dtype=dtype)))

    @property
    def D(self) -> int:
        """Width of the output h."""
        return self.channels[-1]

    def param_shapes(self) -> dict:
        shapes = {}
        for l, (c_in, c_out) in enumerate(zip((self.C,) + self.channels[:-1], self.channels)):
            shapes[f"conv{l}.W"], shapes[f"conv{l}.b"] = (self.kernel, self.kernel, c_in, c_out), (c_out,)
        return shapes

    def _check(self, x) -> np.ndarray:
        check_params(self.params, self.param_shapes())
        for name, value in self.params.items():
            check_finite(f"parameter {name}", value)
        x = as_float_array("inputs", x)
        if x.ndim != 4 or x.shape[3] != self.C or 0 in x.shape:
            raise ValueError(f"inputs must have shape (B, Hi, Wi, C) with C={self.C} and every size >= 1; "
                             f"got {x.shape}")
        check_finite("inputs", x)
        return x

    def forward(self, x):
        """h (B, D) and the cache for backward."""
        a = self._check(x)
        conv_caches, relu_masks, pool_caches = [], [], []
        for l in range(len(self.channels)):
            z, conv_cache = conv2d_forward(a, self.params[f"conv{l}.W"], self.params[f"conv{l}.b"],
                                           self.stride, self.padding)          # (B, Ho, Wo, C_{l+1})
            positive = z > 0
            a = z * positive                                                   # relu
            pool_cache = None
            if self.pool == "max":
                a, pool_cache = max_pool_forward(a, self.pool_size)
            elif self.pool == "avg":
                a, pool_cache = avg_pool_forward(a, self.pool_size)
            conv_caches.append(conv_cache)
            relu_masks.append(positive)
            pool_caches.append(pool_cache)
        h, gap_cache = global_avg_pool_forward(a)                              # (B, D)
        return h, CNNCache(conv_caches, relu_masks, pool_caches, gap_cache)

    def backward(self, dh, cache: CNNCache) -> dict:
        """Parameter gradients (keys of params) from dh (B, D)."""
        grads = {}
        da = global_avg_pool_backward(dh, cache.gap)
        for l in reversed(range(len(self.channels))):
            if self.pool == "max":
                da = max_pool_backward(da, cache.pool[l])
            elif self.pool == "avg":
                da = avg_pool_backward(da, cache.pool[l])
            dz = da * cache.relu[l]
            da, grads[f"conv{l}.W"], grads[f"conv{l}.b"] = conv2d_backward(dz, cache.conv[l])
        return {name: grads[name] for name in self.params}

    def forward_autodiff(self, tparams: Mapping[str, ad.Tensor], x) -> ad.Tensor:
        """Autodiff twin of forward; returns h (B, D) as a Tensor."""
        a = ad.as_tensor(self._check(x))
        for l in range(len(self.channels)):
            a = ad.relu(conv2d_autodiff(a, tparams[f"conv{l}.W"], tparams[f"conv{l}.b"], self.stride, self.padding))
            if self.pool == "max":
                a = max_pool_autodiff(a, self.pool_size)
            elif self.pool == "avg":
                a = avg_pool_autodiff(a, self.pool_size)
        return global_avg_pool_autodiff(a)
