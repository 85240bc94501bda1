"""minimem.demo_options: a demo's Config dataclass as command-line options and back."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from minimem.demo_options import config_from_args, config_parser, parse_bool


@dataclass(frozen=True)
class Config:
    steps: int = 100
    lr: float = 1e-3
    max_len: int = 5
    kinds: str = "a,b"
    paper_mode: bool = False


@dataclass(frozen=True)
class ConfigWithQuick:
    steps: int = 100
    quick: bool = False


QUICK = dict(steps=3, max_len=2)


def parse(argv, config_cls=Config, quick=QUICK):
    parser = config_parser(config_cls, "A demo.\n\nMore text.", quick)
    return config_from_args(config_cls, parser.parse_args(argv), quick)


def test_defaults_quick_and_given_options_in_that_order():
    assert parse([]) == Config()
    assert parse(["--quick"]) == Config(steps=3, max_len=2)
    assert parse(["--quick", "--steps", "7"]) == Config(steps=7, max_len=2)       # given wins over QUICK
    assert parse(["--lr", "0.5", "--kinds", "x"]) == Config(lr=0.5, kinds="x")
    assert isinstance(parse(["--lr", "1"]).lr, float)                            # the annotation's type


def test_dashes_and_underscores_both_work():
    assert parse(["--max-len", "9"]).max_len == 9
    assert parse(["--max_len", "9"]).max_len == 9


def test_bool_fields_are_flags_that_also_take_a_value():
    assert parse(["--paper-mode"]).paper_mode is True
    assert parse(["--paper-mode", "false"]).paper_mode is False
    assert parse(["--paper-mode", "Yes"]).paper_mode is True
    with pytest.raises(SystemExit):
        parse(["--paper-mode", "maybe"])
    assert [parse_bool(t) for t in ("1", "on", "0", "OFF")] == [True, True, False, False]


def test_unknown_options_and_wrong_types_are_errors():
    with pytest.raises(SystemExit):
        parse(["--no-such-option", "1"])
    with pytest.raises(SystemExit):
        parse(["--steps", "1.5"])


def test_a_config_with_its_own_quick_field():
    assert parse(["--quick"], ConfigWithQuick, dict(steps=3)) == ConfigWithQuick(steps=3, quick=True)
    assert parse([], ConfigWithQuick, dict(steps=3)) == ConfigWithQuick()


def test_description_is_the_first_docstring_line_and_help_lists_quick():
    parser = config_parser(Config, "A demo.\n\nMore text.", QUICK)
    assert parser.description == "A demo."
    assert "steps" in parser.format_help() and "a run of seconds" in parser.format_help()
