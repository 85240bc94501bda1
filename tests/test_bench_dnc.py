"""The NTM/DNC benchmarks run at tiny sizes and return minimem.bench rows (no timing checks); the
PyTorch ports, when torch is installed, compute minimem's loss and gradients."""

import math

import numpy as np
import pytest

from minimem import bench, bench_dnc
from minimem.bench_dnc import SIZES, benchmarks

KEYS = {"benchmark", "baseline", "baseline_s", "candidate", "candidate_s"}


def _check_rows(rows):
    for row in rows:
        assert KEYS <= set(row)
        for key in ("baseline_s", "candidate_s"):
            assert math.isfinite(row[key]) and row[key] > 0


def test_benchmarks_return_bench_rows_at_the_quick_size():
    found = benchmarks(quick=True)
    assert set(found) == {"ntm_engines", "dnc_engines", "ntm_scaling", "pytorch_configs"}
    quick = SIZES["quick"]
    rows = {name: fn(1) for name, fn in found.items()}
    for name, value in rows.items():
        _check_rows(value)
        assert name == "pytorch_configs" or value, name
    assert [r["baseline"] for r in rows["ntm_engines"]] == ["manual"] * len(quick.ntm_batches)
    assert [r["candidate"] for r in rows["ntm_engines"]] == ["autodiff"] * len(quick.ntm_batches)
    assert [f"B={B}" in r["benchmark"] for B, r in zip(quick.ntm_batches, rows["ntm_engines"])] == \
        [True] * len(quick.ntm_batches)
    assert len(rows["dnc_engines"]) == 1 and rows["dnc_engines"][0]["candidate"] == "autodiff"
    scaling = rows["ntm_scaling"]
    base, *rest = quick.scaling_log_ns
    assert [r["N"] for r in scaling] == [1 << k for k in rest]
    assert {r["baseline"] for r in scaling} == {f"N=2^{base}"}
    assert [r["candidate"] for r in scaling] == [f"N=2^{k}" for k in rest]
    assert {r["T"] for r in scaling} == {2 * quick.scaling_length + 1}
    expected_torch = (len(quick.ntm_batches) + 1) * len(quick.torch_dtypes) if bench_dnc.torch_available() else 0
    assert len(rows["pytorch_configs"]) == expected_torch
    assert {r["candidate"] for r in rows["pytorch_configs"]} <= {"pytorch autograd"}
    table = bench.format_table(rows["ntm_engines"] + rows["ntm_scaling"])
    assert "| manual |" in table and f"| N=2^{rest[-1]} |" in table
    assert f"| 2^{rest[-1]} |" in bench_dnc.format_scaling_table(scaling)


def test_full_sizes_are_the_issue_configurations():
    full = SIZES["full"]
    ntm = (full.ntm_N, full.ntm_W, full.ntm_H, 2 * full.ntm_length + 1, full.ntm_batches)
    assert ntm == (128, 20, 100, 41, (1, 16))
    assert (full.dnc_H, full.dnc_N, full.dnc_W, full.dnc_R, full.dnc_B, full.dnc_T) == (64, 64, 32, 4, 16, 20)
    assert full.scaling_log_ns == tuple(range(7, 17))


def test_manual_and_autodiff_steps_agree_on_loss_and_gradients():
    quick = SIZES["quick"]
    for model, batch in (bench_dnc.ntm_problem(quick, 2), bench_dnc.dnc_problem(quick)):
        loss, grads = bench_dnc.manual_step(model, batch)()
        loss_ad, grads_ad = bench_dnc.autodiff_step(model, batch)()
        assert loss > 0 and abs(loss - loss_ad) < 1e-10 * loss
        assert set(grads) == set(model.params) == set(grads_ad)
        for name in grads:
            np.testing.assert_allclose(grads[name], grads_ad[name], rtol=1e-8, atol=1e-12, err_msg=name)


def test_main_quick_without_torch_prints_a_note_and_no_pytorch_rows(capsys, monkeypatch):
    monkeypatch.setattr(bench_dnc, "torch_available", lambda: False)
    assert bench_dnc.bench_pytorch_configs(1, quick=True) == []
    assert bench_dnc.main(["--quick", "--only", "ntm_scaling", "--only", "pytorch_configs"]) == 0
    out = capsys.readouterr().out
    assert "torch not installed" in out and "pytorch_configs: skipped" in out
    assert "## ntm_scaling" in out and "step / step at N=2^3" in out


def test_pytorch_ports_compute_minimems_loss_and_gradients():
    pytest.importorskip("torch")
    check = bench_dnc.check_pytorch_ports(SIZES["quick"])
    assert set(check) == {"ntm", "dnc"}
    for port, result in check.items():
        assert result["loss_minimem"] > 0, port
        assert result["loss_diff"] < 1e-10, (port, result)
        assert result["grad_diff"] < 1e-9, (port, result)


def test_the_port_comparison_sees_a_flipped_shift_convention():
    """Spec E.2 item 4: pytorch-ntm's kernel is reversed. The same check must notice it."""
    pytest.importorskip("torch")
    model, batch = bench_dnc.ntm_problem(SIZES["quick"], 2)
    loss, grads = bench_dnc.manual_step(model, batch)()
    port = bench_dnc.torch_ntm(model)
    assert abs(bench_dnc.torch_step(port, batch)()[0] - loss) < 1e-10
    assert bench_dnc.grad_difference(grads, port.minimem_grads()) < 1e-9
    for head in list(port.reads) + list(port.writes):
        head.offsets = head.offsets[::-1]
    bench_dnc.torch_step(port, batch)()
    assert bench_dnc.grad_difference(grads, port.minimem_grads()) > 1e-3   # the read head's grads move by ~50%


def test_unported_options_are_refused():
    pytest.importorskip("torch")
    from minimem.memory.dnc import DNC, DNCConfig
    from minimem.memory.ntm import NTM, NTMConfig
    with pytest.raises(ValueError, match="controller='lstm'"):
        bench_dnc.torch_ntm(NTM(NTMConfig(X=2, Y=2, N=4, W=3, H=4, controller="feedforward")))
    with pytest.raises(ValueError, match="one controller layer"):
        bench_dnc.torch_dnc(DNC(DNCConfig(X=2, Y=2, N=4, W=3, R=1, H=4, layers=2)))


# ----------------------------------------------------------------- the speed work (issue 11) computes the same numbers
def test_link_backward_in_place_path_equals_the_copying_path_and_leaves_dout_alone():
    """access_backward lets link_backward overwrite the upstream gradient (overwrite_dL=True); that
    path must give exactly the default's results, and the default must not touch dL."""
    from minimem.memory import linkage
    rng = np.random.default_rng(0)
    for lead in ((3,), (2, 2)):                                    # (B, N, N) and (B, H, N, N)
        N = 5
        w = rng.dirichlet(np.ones(N + 1), size=lead)[..., :N]
        p = rng.dirichlet(np.ones(N + 1), size=lead)[..., :N]
        L_prev = linkage._zero_diagonal(rng.uniform(0, 1 / N, lead + (N, N)))
        L, cache = linkage.link_forward(L_prev, w, p)
        dL = rng.standard_normal(L.shape)                          # nonzero diagonal on purpose
        dL_before = dL.copy()
        default = linkage.link_backward(dL, cache)
        np.testing.assert_array_equal(dL, dL_before)
        in_place = linkage.link_backward(dL.copy(), cache, overwrite_dL=True)
        for a, b in zip(default, in_place):
            np.testing.assert_array_equal(a, b)
        assert np.all(np.diagonal(default[0], axis1=-2, axis2=-1) == 0)


def test_zero_diagonal_on_a_strided_view_and_a_contiguous_array_agree():
    from minimem.memory.linkage import _zero_diagonal
    rng = np.random.default_rng(1)
    base = rng.standard_normal((3, 4, 4))
    strided = np.swapaxes(base.copy(), -1, -2)                    # not C-contiguous: the fallback path
    contiguous = np.ascontiguousarray(np.swapaxes(base, -1, -2))
    _zero_diagonal(strided), _zero_diagonal(contiguous)
    np.testing.assert_array_equal(strided, contiguous)
    expected = np.swapaxes(base, -1, -2) * (1 - np.eye(4))
    np.testing.assert_array_equal(contiguous, expected)


def test_ntm_head_outputs_squash_each_piece_exactly_as_its_own_formula():
    """head_outputs_forward applies one sigmoid and one softplus to the block of scalar columns;
    every piece must equal the per-piece map (spec A.3 step 2)."""
    from minimem.memory import ntm_heads
    from minimem.memory.ntm import NTMConfig
    layout = NTMConfig(X=3, Y=2, N=6, W=4, H=5).layout
    o = np.random.default_rng(2).standard_normal((3, layout.width)) * 4
    heads, cache = ntm_heads.head_outputs_forward(o, layout)
    addressing, _ = ntm_heads._split(o, layout)
    W, S = layout.W, layout.S
    beta_hat, g_hat, gamma_hat = addressing[..., W:W + 1], addressing[..., W + 1:W + 2], addressing[..., W + 2 + S:]
    np.testing.assert_array_equal(heads.beta, np.logaddexp(0.0, beta_hat))
    np.testing.assert_array_equal(heads.gamma, 1.0 + np.logaddexp(0.0, gamma_hat))
    np.testing.assert_array_equal(heads.g, ntm_heads._sigmoid(g_hat))
    np.testing.assert_array_equal(cache.sigmoid_beta, ntm_heads._sigmoid(beta_hat))
    np.testing.assert_array_equal(cache.sigmoid_gamma, ntm_heads._sigmoid(gamma_hat))
    np.testing.assert_allclose(heads.s.sum(axis=-1), 1.0, rtol=1e-12)
