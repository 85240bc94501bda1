"""Command-line options of the demos, built from each demo's Config dataclass.

Every demo in demos/ keeps its settings in a frozen `Config` dataclass and a dict `QUICK` of the
values its `--quick` run swaps in (a run of seconds, which the tests make). This module turns them
into an argparse parser and back into a Config, so that all demos read their options the same way:

    parser = config_parser(Config, __doc__, QUICK)      # --steps, --max-len (or --max_len), --quick, ...
    parser.add_argument("--out", default=".")           # anything that is not a Config field
    config = config_from_args(Config, parser.parse_args(argv), QUICK)

Rules: one option per field, spelled with dashes (`--max-len`; the underscore spelling `--max_len` is
accepted too); its type is the field's annotation (int, float, str); a bool field is a flag that sets
True, or takes a value (`--flag false`; true/false, yes/no, on/off, 1/0). An option not given keeps the field's default, or its QUICK value under --quick; an
option given always wins, also under --quick. A Config may declare `quick` (and `out`, `no_plots`)
as fields of its own; otherwise config_parser adds the --quick flag itself.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Mapping

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _field_type(field: dataclasses.Field) -> type:
    """The Python type of a Config field: its annotation (a string under `from __future__ import
    annotations`), or the type of its default when the annotation is none of int, float, str, bool."""
    kind = _TYPES.get(field.type, field.type) if isinstance(field.type, str) else field.type
    return kind if kind in _TYPES.values() else type(field.default)


def parse_bool(text: str) -> bool:
    """true/yes/on/1 -> True, false/no/off/0 -> False (any case); anything else is an error. (argparse's
    type=bool would turn "False" into True.)"""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false; got {text!r}")


def config_parser(config_cls, doc: str | None, quick: Mapping | None = None) -> argparse.ArgumentParser:
    """An ArgumentParser with one option per field of the dataclass config_cls (help: the default),
    plus --quick (listing the QUICK values) unless config_cls has a field of that name. Its
    description is the first line of doc (the demo's module docstring)."""
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    for field in dataclasses.fields(config_cls):
        flags = [f"--{field.name.replace('_', '-')}"] + ([f"--{field.name}"] if "_" in field.name else [])
        if _field_type(field) is bool:
            parser.add_argument(*flags, dest=field.name, nargs="?", const=True, type=parse_bool, default=None,
                                help=f"default {field.default}; the flag alone means true")
        else:
            parser.add_argument(*flags, dest=field.name, type=_field_type(field), default=None,
                                help=f"default {field.default}")
    if "quick" not in {field.name for field in dataclasses.fields(config_cls)}:
        parser.add_argument("--quick", action="store_true",
                            help=f"a run of seconds: {dict(quick)}" if quick else "a run of seconds")
    return parser


def config_from_args(config_cls, args: argparse.Namespace, quick: Mapping | None = None):
    """The config_cls instance the parsed options ask for: the defaults, then the QUICK values if
    --quick was given, then every option given on the command line."""
    names = [field.name for field in dataclasses.fields(config_cls)]
    values = dict(quick) if getattr(args, "quick", False) and quick else {}
    values.update({name: getattr(args, name) for name in names if getattr(args, name, None) is not None})
    return config_cls(**values)
