"""Test-suite settings. Under CI (CI=true) hypothesis runs derandomized, so a red CI is reproducible;
locally it explores new examples on every run. BLAS runs single-threaded, as minimem sets it up (see
minimem/__init__.py): this must happen before anything imports NumPy. The fixture load_demo
imports a script of demos/ as a module for the tests/test_demo_*.py files."""

import importlib.util
import os
import sys
from pathlib import Path

import minimem  # noqa: F401  (first: sets the BLAS thread count before NumPy loads)

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


DEMOS = Path(__file__).resolve().parents[1] / "demos"


@pytest.fixture(scope="module")
def load_demo():
    """load_demo(name) imports demos/<name>.py afresh as the module `<name>_demo` and returns it.
    The module stays registered in sys.modules (dataclasses look their module up there while they
    are defined) until the test file is done."""
    with pytest.MonkeyPatch.context() as patch:
        def load(name: str):
            spec = importlib.util.spec_from_file_location(f"{name}_demo", DEMOS / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            patch.setitem(sys.modules, spec.name, module)
            spec.loader.exec_module(module)
            return module

        yield load
