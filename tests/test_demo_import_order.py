"""Every demo imports minimem before NumPy (or anything that loads NumPy), so that minimem's
one-thread BLAS setting takes effect when the script is run directly (minimem/__init__.py)."""

import ast
from pathlib import Path

import pytest

DEMOS = sorted((Path(__file__).resolve().parents[1] / "demos").glob("*.py"))
LOADS_NUMPY = ("numpy", "scipy", "matplotlib", "minimem", "gradcheck", "torch")


@pytest.mark.parametrize("path", DEMOS, ids=[p.stem for p in DEMOS])
def test_minimem_is_imported_before_numpy(path):
    first = None
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        else:
            continue
        roots = [name.split(".")[0] for name in names]
        hit = next((root for root in roots if root in LOADS_NUMPY), None)
        if hit is not None:
            first = (hit, names)
            break
    assert first is not None and first[1] == ["minimem"], (
        f"{path.name}: the first import that loads NumPy is {first}; put `import minimem` before it")
