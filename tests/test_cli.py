"""The `minimem` command: list, gradcheck (same as python -m gradcheck), bench and demo."""

import shutil
import subprocess
import sys

import numpy as np
import pytest

import gradcheck.cases as registry
from gradcheck.core import Case, projection_loss
from minimem import cli


class Linear:
    """y = x @ W (B, Y); bug "x2" doubles the manual gradient."""

    def __init__(self, rng, bug=None):
        self.params = {"W": rng.standard_normal((3, 2))}
        self.bug = bug

    def forward(self, x):
        return x @ self.params["W"], x

    def backward(self, dy, x):
        return {"W": (2.0 if self.bug == "x2" else 1.0) * x.T @ dy}

    def forward_autodiff(self, tp, x):
        return x @ tp["W"]


def linear_case(name, bug=None):
    rng = np.random.default_rng(0)
    model, x = Linear(rng, bug), rng.standard_normal((4, 3))
    return Case(name, model, x, projection_loss(rng, model.forward(x)[0]), notes="a toy")


@pytest.fixture
def toy_registry(monkeypatch):
    monkeypatch.setattr(registry, "_FACTORIES", [])
    monkeypatch.setattr(registry, "case_modules", lambda: [])
    registry.register("alpha")(lambda: [linear_case("alpha.good"), linear_case("alpha.bad", "x2")])
    registry.register("beta")(lambda: linear_case("beta.good"))


def test_list_groups_cases_by_family(toy_registry, capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.index("alpha (2 cases)") < out.index("alpha.good") < out.index("beta (1 case)") < out.index("beta.good")
    assert "a toy" in out
    assert cli.main(["list", "--family", "beta"]) == 0
    assert "alpha" not in capsys.readouterr().out


def test_list_with_nothing_registered(monkeypatch, capsys):
    monkeypatch.setattr(registry, "_FACTORIES", [])
    monkeypatch.setattr(registry, "case_modules", lambda: [])
    assert cli.main(["list"]) == 0
    assert "no gradcheck cases registered" in capsys.readouterr().out


def test_gradcheck_subcommand_runs_like_python_m_gradcheck(toy_registry, capsys):
    assert cli.main(["gradcheck", "--case", "good"]) == 0
    out = capsys.readouterr().out
    assert "alpha.good" in out and "beta.good" in out and "alpha.bad" not in out
    assert cli.main(["gradcheck", "--family", "alpha", "--mode", "fast"]) == 1
    out = capsys.readouterr().out
    assert "alpha.bad" in out and "FAIL" in out and "rerun" in out
    assert cli.main(["gradcheck", "--list"]) == 0
    assert "beta (1 case)" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--nope"], ["list", "--nope"], ["gradcheck", "--nope"], ["gradcheck", "--mode", "slow"],
                                  ["list", "extra"], ["frobnicate"], []])
def test_unknown_flags_and_commands_are_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_bench_runs_the_bench_module_with_its_arguments(monkeypatch):
    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda command: calls.append(command) or 0)
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: object())
    assert cli.main(["bench", "--quick", "--only", "x"]) == 0
    assert calls == [[sys.executable, "-m", "minimem.bench", "--quick", "--only", "x"]]


def test_bench_says_when_it_is_not_available(monkeypatch, capsys):
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: None)
    assert cli.main(["bench"]) == 1
    assert "not available" in capsys.readouterr().err


def test_demo_lists_and_runs_scripts_with_their_options(tmp_path, monkeypatch, capsys):
    (tmp_path / "toy.py").write_text('''"""A toy demo that writes its arguments."""
import sys, pathlib
pathlib.Path(sys.argv[sys.argv.index("--out") + 1], "args.txt").write_text(" ".join(sys.argv[1:]))
''')
    monkeypatch.setattr(cli, "DEMOS_DIR", tmp_path)
    assert cli.main(["demo"]) == 0
    assert "toy  A toy demo that writes its arguments." in capsys.readouterr().out
    assert cli.main(["demo", "toy", "--quick", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "args.txt").read_text() == f"--quick --out {tmp_path}"
    assert cli.main(["demo", "no_such_demo"]) == 2
    assert "unknown demo 'no_such_demo'" in capsys.readouterr().err


def test_console_script_help_smoke():
    command = [shutil.which("minimem")] if shutil.which("minimem") else [sys.executable, "-m", "minimem.cli"]
    done = subprocess.run(command + ["--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "gradcheck" in done.stdout and "list" in done.stdout
