"""gradcheck.cases.nn: every registered building-block case passes the full gradient check with
both engines, and the cases are what the module promises (seeded, float64, family "nn")."""

import numpy as np
import pytest

from gradcheck.cases import all_cases
from gradcheck.core import check_model

CASES = {case.name: case for case in all_cases("nn")}


def test_the_promised_cases_are_registered():
    expected = {"nn.linear.small", "nn.mlp.tanh", "nn.mlp.relu", "nn.layernorm.small", "nn.lstm.T3", "nn.lstm.T5",
                "nn.attention.causal", "nn.loss.sigmoid_ce", "nn.loss.softmax_ce", "nn.loss.softmax_ce.soft",
                "nn.loss.mse"}
    assert expected <= set(CASES)
    for case in CASES.values():
        assert case.family == "nn"
        assert all(p.dtype == np.float64 for p in case.model.params.values())


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_passes_full_gradcheck_with_both_engines(name):
    case = {c.name: c for c in all_cases("nn")}[name]          # a fresh model for every test
    result = check_model(case)
    failed = [(r.engine, r.tensor, r.verdict, r.max_abs) for r in result.rows if not r.ok]
    assert result.ok, failed
    engines = {r.engine for r in result.rows}
    assert {"manual", "autodiff", "manual~autodiff"} <= engines


def test_cases_are_seeded():
    again = {case.name: case for case in all_cases("nn")}
    for name, case in CASES.items():
        for key, value in case.model.params.items():
            np.testing.assert_array_equal(again[name].model.params[key], value)
        np.testing.assert_array_equal(again[name].inputs, case.inputs)
