"""minimem.nn.patch_transformer: the patch embedding is a strided conv, the CLS token is the only
output, the registered gradcheck case, the autodiff twin, HMA on top of it, and bad input."""

import numpy as np
import pytest

from gradcheck.cases import all_cases
from gradcheck.core import check_model
from minimem import autodiff as ad
from minimem.memory.hma import HMA, HMAConfig
from minimem.nn.patch_transformer import PatchTransformerModel


def test_patch_transformer_case_passes_full_gradcheck():
    case = {c.name: c for c in all_cases("hma")}["hma.patch_transformer"]
    result = check_model(case)
    assert result.ok, [(r.engine, r.tensor, r.verdict, r.max_abs) for r in result.rows if not r.ok]


def test_shapes_parameters_and_the_patch_grid():
    rng = np.random.default_rng(0)
    model = PatchTransformerModel((8, 8, 2), patch=2, D=8, heads=2, layers=1, rng=rng)
    assert model.T == 17 and model.params["pos"].shape == (17, 8) and model.params["embed.W"].shape == (2, 2, 2, 8)
    x = rng.standard_normal((3, 8, 8, 2))
    h, cache = model.forward(x)
    assert h.shape == (3, 8)
    np.testing.assert_allclose(h.mean(axis=1), 0.0, atol=1e-12)   # LN_f with unit gain and zero bias
    # eq. (1) is one linear map per non-overlapping 2x2 patch: patch (0, 1) is pixels [0:2, 2:4]
    embedded = cache.embed.patches[0, 0, 1] @ model.params["embed.W"].reshape(8, 8) + model.params["embed.b"]
    np.testing.assert_allclose(embedded, x[0, 0:2, 2:4].reshape(-1) @ model.params["embed.W"].reshape(8, 8)
                               + model.params["embed.b"], rtol=1e-12)
    y = x.copy()                                                    # attention mixes every patch into CLS
    y[:, 6:, 6:] += 1.0
    assert np.all(np.max(np.abs(model.forward(y)[0] - h), axis=1) > 1e-6)


def test_autodiff_twin_agrees_and_hma_runs_on_top():
    rng = np.random.default_rng(1)
    backbone = PatchTransformerModel((4, 4, 2), patch=2, D=6, heads=2, layers=2, rng=rng)
    model = HMA(HMAConfig(D=6, K_c=3, L_h=2, N_r=4, m=1, heads=2), backbone, rng=rng)
    model.training_forward(rng.standard_normal((4, 4, 4, 2)), np.array([0, 1, 2, 0]))
    x = rng.standard_normal((4, 4, 4, 2))
    logits, cache = model.forward(x)
    dlogits = rng.standard_normal(logits.shape)
    grads = model.backward(dlogits, cache)
    tparams = {n: ad.Tensor(p.copy(), requires_grad=True) for n, p in model.params.items()}
    out = model.forward_autodiff(tparams, x)
    np.testing.assert_allclose(out.data, logits, rtol=0, atol=1e-12)
    out.backward(dlogits)
    for name, g in grads.items():
        assert np.max(np.abs(g - tparams[name].grad)) <= 1e-10 * max(1.0, np.max(np.abs(g))), name


def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match=r"image sides 5 x 4 must be positive multiples of the patch side 2"):
        PatchTransformerModel((5, 4, 1))
    with pytest.raises(ValueError, match=r"D=6 must be divisible by heads=4"):
        PatchTransformerModel((4, 4, 1), D=6, heads=4)
    with pytest.raises(ValueError, match=r"layers must be an integer >= 1"):
        PatchTransformerModel((4, 4, 1), layers=0)
    model = PatchTransformerModel((4, 4, 1), D=4, heads=2)
    with pytest.raises(ValueError, match=r"inputs must have shape \(B, Hi, Wi, C\) = \(B, 4, 4, 1\)"):
        model.forward(np.zeros((2, 4, 4, 2)))
    with pytest.raises(ValueError, match=r"inputs must be finite"):
        model.forward(np.full((1, 4, 4, 1), np.nan))
