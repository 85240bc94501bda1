"""demos/torch_check.py: four memory operations written in PyTorch pass against minimem's golden
vectors (every coordinate), and the two planted mistakes fail on the tensors they should: the
reversed shift kernel changes the NTM forward (outputs and every gradient differ from minimem, yet
the backward is the derivative of that wrong forward), the detached inner gradient leaves the
Titans forward intact but zeroes dk and dv. Skipped when PyTorch is not installed."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

pytest.importorskip("torch")

import gradcheck.__main__ as gradcheck_main  # noqa: E402
from gradcheck import compare  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "demos" / "torch_check.py"


@pytest.fixture(scope="module")
def demo(load_demo):
    return load_demo("torch_check")


@pytest.fixture(scope="module")
def quick_run(demo):
    """The demo's quick mode, run once: the four examples and the two mistakes, fast mode.
    Returns (results, printed text)."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        results = demo.main(["--all", "--quick"])
    return results, text.getvalue()


def verdicts(rows, engine):
    return {r.tensor: r.verdict for r in rows if r.engine == engine}


@pytest.mark.parametrize("name", ["ntm", "dnc", "nam", "titans"])
def test_every_example_matches_minimem_at_every_coordinate(demo, name):
    case, adapter, _, _ = demo.EXAMPLES[name]
    report = compare(case, adapter, mode="full")
    assert report.ok, str(report)
    engines = {r.engine for r in report.rows}
    assert engines == {"foreign~minimem", "foreign~numeric"}
    compared = verdicts(report.rows, "foreign~minimem")
    from gradcheck.golden import GOLDEN_DIR, load_golden
    golden = load_golden(GOLDEN_DIR, case)
    assert set(golden.params) <= set(compared)              # every parameter's gradient was returned
    assert all(r.max_rel < 1e-10 for r in report.rows if r.engine == "foreign~minimem")   # measured <= 4.5e-13


def test_quick_mode_runs_everything_as_expected(quick_run):
    quick_run, printed = quick_run
    assert list(quick_run) == ["ntm", "dnc", "nam", "titans", "ntm --mistake", "titans --mistake"]
    for name in ("ntm", "dnc", "nam", "titans"):
        assert quick_run[name]["ok"] and quick_run[name]["as_expected"]
    for name in ("ntm --mistake", "titans --mistake"):
        assert not quick_run[name]["ok"] and quick_run[name]["as_expected"]
    assert "6 of 6 as expected" in printed
    assert "caught: M, beta, g, gamma, k, outputs, s, w_prev" in printed


def test_a_reversed_shift_kernel_changes_the_forward(quick_run):
    rows = quick_run[0]["ntm --mistake"]["rows"]
    against_minimem = verdicts(rows, "foreign~minimem")
    assert against_minimem == {t: "FAIL" for t in ("outputs", "M", "k", "beta", "g", "s", "gamma", "w_prev")}
    # the backward is the derivative of the (wrong) forward: only the comparison with minimem sees it
    assert set(verdicts(rows, "foreign~numeric").values()) == {"ok"}


def test_a_detached_inner_gradient_drops_the_second_order_terms(quick_run):
    rows = quick_run[0]["titans --mistake"]["rows"]
    against_minimem = verdicts(rows, "foreign~minimem")
    assert against_minimem["outputs"] == "ok" and against_minimem["q"] == "ok"     # the forward is intact
    for tensor in ("k", "v", "M0.W1", "M0.W2"):
        assert against_minimem[tensor] == "FAIL"
        assert verdicts(rows, "foreign~numeric")[tensor] == "FAIL"
    zero = [r for r in rows if r.engine == "foreign~minimem" and r.tensor in ("k", "v")]
    assert all(r.analytic == 0.0 and r.numeric != 0.0 for r in zero)             # keys and values get no gradient


def test_the_adapters_work_from_the_command_line(capsys):
    ok = gradcheck_main.main(["compare", "nam_write.step", f"{DEMO}:nam_adapter"])
    assert ok == 0
    caught = gradcheck_main.main(["compare", "ntm_addressing.step", f"{DEMO}:ntm_adapter_reversed_shift", "-q"])
    assert caught == 1
    out = capsys.readouterr().out
    assert "nam_write.step: adapter" in out and "FAIL" in out


def test_a_mistake_is_asked_only_where_there_is_one(demo):
    with pytest.raises(SystemExit, match="no mistake variant"):
        demo.main(["--example", "dnc", "--mistake"])
