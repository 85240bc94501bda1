"""The registry of gradcheck cases: one module per model family, each registering factories.

A case module (gradcheck/cases/<family>.py) registers zero-argument factories that build seeded
cases; every module in this package is imported, so a new file is all it takes:

    from gradcheck.cases import register
    from gradcheck.core import Case, projection_loss

    @register("nn")
    def lstm_small():
        rng = np.random.default_rng(0)
        model = LSTM(LSTMConfig(X=3, H=4), rng=rng)
        xs = rng.standard_normal((3, 2, 3))                       # (T, B, X)
        return Case("nn.lstm.small", model, xs, projection_loss(rng, model.forward(xs)[0]))

Factories run each time all_cases() is called, so every caller gets fresh models.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

from gradcheck.core import Case

_FACTORIES: list[tuple[str, Callable[[], Case | list[Case]]]] = []


def register(family: str) -> Callable:
    """Decorator: register a zero-argument factory returning a Case or a list of Cases."""
    if not isinstance(family, str) or not family:
        raise ValueError(f"register needs a family name such as 'nn'; got {family!r}")

    def decorator(factory: Callable[[], Case | list[Case]]) -> Callable[[], Case | list[Case]]:
        if not callable(factory):
            raise ValueError(f"register({family!r}) decorates a zero-argument factory; got {factory!r}")
        _FACTORIES.append((family, factory))
        return factory

    return decorator


def case_modules() -> list[str]:
    """Names of the case modules in this package (one per model family), sorted."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load_case_modules() -> None:
    """Import gradcheck.cases.<m> for every case module; an import error propagates."""
    for module in case_modules():
        importlib.import_module(f"{__name__}.{module}")


def all_cases(family: str | None = None) -> list[Case]:
    """Build every registered case (of one family if given), in registration order.

    Raises ValueError when a factory returns something other than Case(s) or two cases share a name.
    """
    load_case_modules()
    cases: list[Case] = []
    for fam, factory in list(_FACTORIES):
        if family is not None and fam != family:
            continue
        made = factory()
        made = list(made) if isinstance(made, (list, tuple)) else [made]
        for case in made:
            if not isinstance(case, Case):
                raise ValueError(f"factory {getattr(factory, '__qualname__', factory)} must return a Case "
                                 f"or a list of Cases; got {type(case).__name__}")
            if not case.family:
                case.family = fam
            cases.append(case)
    names = [c.name for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"gradcheck case names must be unique; duplicated: {duplicates}")
    return cases


def families() -> list[str]:
    """Families with at least one registered factory, in registration order."""
    load_case_modules()
    return list(dict.fromkeys(fam for fam, _ in _FACTORIES))
