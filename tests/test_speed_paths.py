"""The fused and shortcut code paths added for speed (issue 11) against the plain formulas they
replace: each must give the same numbers (to round-off) as the composition of the public pairs."""

from __future__ import annotations

import minimem  # noqa: F401

import numpy as np
import pytest

from minimem.memory import nam
from minimem.memory.nam_attention import (
    nam_attention_init, nam_attention_layer_backward, nam_attention_layer_forward,
)
from minimem.nn.linear import linear_backward, linear_forward, scatter_add_rows


@pytest.mark.parametrize("shape", [(7,), (7, 3)])
def test_scatter_add_rows_equals_add_at_with_repeats(shape):
    rng = np.random.default_rng(0)
    index = rng.integers(0, 5, size=(4, 6))                      # many repeats, some rows untouched
    rows = rng.standard_normal(index.shape + shape[1:])
    expected = np.zeros((5,) + shape[1:])
    np.add.at(expected, index, rows)
    got = scatter_add_rows(np.zeros((5,) + shape[1:]), index, rows)
    np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-13)
    assert scatter_add_rows(np.ones(3), np.zeros(0, dtype=int), np.zeros(0))[0] == 1.0   # empty: untouched


def test_write_read_backward_equals_read_backward_then_write_backward():
    rng = np.random.default_rng(1)
    B, H, dv, dk = 3, 2, 4, 5
    M = rng.standard_normal((B, H, dv, dk))
    k, q = rng.standard_normal((B, H, dk)), rng.standard_normal((B, H, dk))
    v = rng.standard_normal((B, H, dv))
    p_w, p_e, p_r = (rng.random((B, H)) for _ in range(3))
    M_new, write = nam.nam_write_forward(M, k, v, p_w, p_e)
    r, read = nam.nam_read_forward(M_new, q, p_r)
    dr, dM_out = rng.standard_normal(r.shape), rng.standard_normal(M_new.shape)
    dM_read, dq, dp_r = nam.nam_read_backward(dr, read)
    dM, dk, dv_, dp_w, dp_e = nam.nam_write_backward(dM_out + dM_read, write)
    fused = nam._write_read_backward(dr, dM_out, write, read)
    for got, want in zip(fused, (dM, dk, dv_, dp_w, dp_e, dq, dp_r)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_attention_query_rows_equal_the_first_rows_of_the_full_output():
    rng = np.random.default_rng(2)
    B, T, D, heads = 2, 6, 8, 2
    params = nam_attention_init(rng, D, heads)
    x = rng.standard_normal((B, T, D))
    mask = np.ones((B, T), dtype=bool)
    mask[1, 4:] = False
    full, full_cache = nam_attention_layer_forward(x, params, heads, key_mask=mask)
    first, first_cache = nam_attention_layer_forward(x, params, heads, key_mask=mask, query_rows=1)
    np.testing.assert_allclose(first, full[:, :1], rtol=1e-13, atol=1e-13)
    dout = np.zeros_like(full)
    dout[:, 0] = rng.standard_normal((B, D))                     # only row 0 is read downstream
    dx_full, g_full = nam_attention_layer_backward(dout, full_cache)
    dx_first, g_first = nam_attention_layer_backward(dout[:, :1], first_cache)
    np.testing.assert_allclose(dx_first, dx_full, rtol=1e-12, atol=1e-12)
    for name in g_full:
        np.testing.assert_allclose(g_first[name], g_full[name], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError):
        nam_attention_layer_forward(x, params, heads, causal=True, query_rows=1)
    with pytest.raises(ValueError):
        nam_attention_layer_forward(x, params, heads, query_rows=T + 1)


def test_linear_on_three_axes_equals_the_per_row_formula():
    rng = np.random.default_rng(3)
    x, W, b = rng.standard_normal((4, 3, 5)), rng.standard_normal((5, 6)), rng.standard_normal(6)
    y, cache = linear_forward(x, W, b)
    np.testing.assert_allclose(y, np.einsum("btx,xy->bty", x, W) + b, rtol=1e-13, atol=1e-13)
    dy = rng.standard_normal(y.shape)
    dx, dW, db = linear_backward(dy, cache)
    np.testing.assert_allclose(dx, np.einsum("bty,xy->btx", dy, W), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(dW, np.einsum("btx,bty->xy", x, dy), rtol=1e-13, atol=1e-13)
    y32, _ = linear_forward(x.astype(np.float32), W.astype(np.float32), b)   # float64 bias promotes
    assert y32.dtype == np.result_type(np.float32, b.dtype)
