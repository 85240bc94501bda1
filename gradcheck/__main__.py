"""Check every registered gradcheck case and print the report table; export golden vectors;
compare a foreign implementation with them.

    python -m gradcheck                       # every case, full mode (every coordinate)
    python -m gradcheck --mode fast           # random directions per tensor, full rerun on failure
    python -m gradcheck --case lstm --list    # the cases whose name contains "lstm"
    python -m gradcheck export DIR [--case SUBSTRING] [--family F] [--curated]
    python -m gradcheck compare CASE module:function [--golden DIR] [--mode full|fast]

Exit status: 0 when every row is ok, 1 when any row is FAIL or kink (a kink means the case sits
within eps of a non-smooth point and must be reseeded), or a case raised, or nothing matched;
2 for a usage error. `export` and `compare` are described in gradcheck.golden and gradcheck.compare.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

from gradcheck import report
from gradcheck.cases import all_cases
from gradcheck.core import Case, check_model


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `python -m gradcheck`, shared with `minimem gradcheck`."""
    parser.add_argument("--case", metavar="SUBSTRING", help="only cases whose name contains SUBSTRING")
    parser.add_argument("--family", help="only cases of this family (nn, ntm, ...)")
    parser.add_argument("--mode", choices=("full", "fast"), default="full",
                        help="full: every coordinate (default); fast: random directions, full rerun on failure")
    parser.add_argument("--directions", type=int, default=3, help="directions per tensor in fast mode (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fast-mode directions (default 0)")
    parser.add_argument("--list", action="store_true", help="list the matching cases and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only rows that are not ok")
    return parser


def build_parser(prog: str = "python -m gradcheck") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.splitlines()[0],
        epilog="other commands: `export DIR` writes golden vectors (see `export --help`); "
               "`compare CASE module:function` checks a foreign implementation (see `compare --help`)")
    return add_arguments(parser)


def select_cases(args: argparse.Namespace) -> list[Case]:
    cases = all_cases(args.family)
    if args.case:
        cases = [c for c in cases if args.case in c.name]
    return cases


def list_cases(cases: list[Case], out=None) -> None:
    """Cases grouped by family, with their parameter counts and notes."""
    out = sys.stdout if out is None else out
    by_family: dict[str, list[Case]] = {}
    for case in cases:
        by_family.setdefault(case.family or "-", []).append(case)
    width = max(len(c.name) for c in cases)
    for family, members in by_family.items():
        print(f"{family} ({len(members)} case{'s' if len(members) != 1 else ''})", file=out)
        for case in members:
            params = getattr(case.model, "params", {})
            count = sum(int(getattr(p, "size", 0)) for p in params.values())
            notes = f"  {case.notes}" if case.notes else ""
            print(f"  {case.name.ljust(width)}  {len(params):3d} tensors {count:7d} params{notes}", file=out)


def run(args: argparse.Namespace, out=None) -> int:
    """Run the selected cases, printing each case's rows as soon as it is checked."""
    out = sys.stdout if out is None else out
    if args.directions < 1:
        print(f"error: --directions must be >= 1; got {args.directions}", file=sys.stderr)
        return 2
    cases = select_cases(args)
    if not cases:
        print("no gradcheck cases matched" + (f" --case {args.case!r}" if args.case else "")
              + (f" --family {args.family!r}" if args.family else ""), file=sys.stderr)
        return 1
    if args.list:
        list_cases(cases, out)
        return 0
    tensor_names = [name for c in cases for name in getattr(c.model, "params", {})] + ["outputs[0]"]
    worst = [report.format_worst(tuple(s - 1 for s in p.shape))
             for c in cases for p in getattr(c.model, "params", {}).values()]
    widths = report.column_widths(case_names=[c.name for c in cases], tensor_names=tensor_names, worst_labels=worst)
    print(report.format_header(widths), file=out, flush=True)
    start, all_rows, errors = time.perf_counter(), [], []
    for case in cases:
        try:
            result = check_model(case, mode=args.mode, directions=args.directions, seed=args.seed)
        except Exception as error:             # a broken case must not hide the others' results
            errors.append((case.name, error))
            print(f"{case.name}  ERROR  {type(error).__name__}: {error}", file=out, flush=True)
            traceback.print_exc(file=sys.stderr)
            continue
        all_rows += result.rows
        for row in result.rows:
            if not (args.quiet and row.ok):
                print(report.format_row(row, widths), file=out)
        out.flush()
    notes = report.format_notes(all_rows)
    if notes:
        print("\nnot ok:\n" + notes, file=out)
    counts = {v: sum(r.verdict == v for r in all_rows) for v in ("ok", "FAIL", "kink")}
    print(f"\n{len(cases)} cases, {len(all_rows)} rows: {counts['ok']} ok, {counts['FAIL']} FAIL, "
          f"{counts['kink']} kink, {len(errors)} errors ({args.mode} mode, {time.perf_counter() - start:.1f} s)",
          file=out)
    return 0 if not errors and counts["FAIL"] == 0 and counts["kink"] == 0 else 1


# ----------------------------------------------------------------- export and compare
def build_export_parser(prog: str = "python -m gradcheck export") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Write <case>.npz and <case>.json golden vectors "
                                     "for every registered case (or those selected) into DIR.")
    parser.add_argument("directory", metavar="DIR", help="output directory (created if missing)")
    parser.add_argument("--case", metavar="SUBSTRING", help="only cases whose name contains SUBSTRING")
    parser.add_argument("--family", help="only cases of this family (nn, ntm, ...)")
    parser.add_argument("--curated", action="store_true",
                        help="only the committed set (gradcheck.golden.CURATED): refreshes gradcheck/golden")
    return parser


def run_export(args: argparse.Namespace, out=None) -> int:
    from gradcheck import golden

    out = sys.stdout if out is None else out
    say = lambda line: print(line, file=out, flush=True)
    if args.curated:
        cases = [c for c in golden.select_cases(names=golden.CURATED)
                 if (args.case is None or args.case in c.name) and (args.family is None or c.family == args.family)]
    else:
        cases = golden.select_cases(args.case, args.family)
    if not cases:
        print("no gradcheck cases matched" + (f" --case {args.case!r}" if args.case else "")
              + (f" --family {args.family!r}" if args.family else ""), file=sys.stderr)
        return 1
    start, errors = time.perf_counter(), []
    for case in cases:
        try:
            golden.export(args.directory, [case], log=say)
        except Exception as error:             # one broken case must not stop the others
            errors.append(case.name)
            say(f"{case.name}  ERROR  {type(error).__name__}: {error}")
            traceback.print_exc(file=sys.stderr)
    say(f"\n{len(cases) - len(errors)} of {len(cases)} cases written to {args.directory} "
        f"({time.perf_counter() - start:.1f} s)")
    return 1 if errors else 0


def build_compare_parser(prog: str = "python -m gradcheck compare") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Check a foreign implementation against a case's golden vectors: "
        "adapter(params, inputs, doutputs) returns (outputs, grads), outputs, or the loss "
        "(the protocol is in gradcheck/compare.py).")
    parser.add_argument("case", metavar="CASE", help="a case name (e.g. nn.lstm.T3) or a path to <case>.npz")
    parser.add_argument("adapter", metavar="module:function", help="the adapter: module:function or file.py:function")
    parser.add_argument("--golden", metavar="DIR", help="read golden vectors from DIR (default: the committed "
                        "gradcheck/golden, else computed from the registered case)")
    parser.add_argument("--mode", choices=("full", "fast"), default="fast",
                        help="fast: random directions, full rerun on failure (default); full: every coordinate")
    parser.add_argument("--directions", type=int, default=3, help="directions per tensor in fast mode (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fast-mode directions (default 0)")
    parser.add_argument("--no-numeric", action="store_true", help="compare with the golden values only, "
                        "without central differences of the adapter")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only rows that are not ok")
    return parser


def run_compare(args: argparse.Namespace, out=None) -> int:
    from gradcheck.compare import compare, load_adapter, resolve_golden

    out = sys.stdout if out is None else out
    if args.directions < 1:
        print(f"error: --directions must be >= 1; got {args.directions}", file=sys.stderr)
        return 2
    try:
        record = resolve_golden(args.case, args.golden)
        adapter = load_adapter(args.adapter)
    except (ValueError, OSError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        result = compare(record, adapter, mode=args.mode, directions=args.directions, seed=args.seed,
                         numeric=not args.no_numeric)
    except Exception as error:                 # the adapter's own errors: say where, exit 1
        traceback.print_exc(file=sys.stderr)
        print(f"{record.name}  ERROR  {type(error).__name__}: {error}", file=out)
        return 1
    rows = [r for r in result.rows if not (args.quiet and r.ok)]
    print(f"{record.name}: adapter {args.adapter} against minimem's golden vectors "
          f"(rtol {record.tolerance['rtol']:g}, atol {record.tolerance['atol']:g}, {args.mode} mode)\n", file=out)
    if rows:
        print(report.format_table(rows), file=out)
    notes = report.format_notes(result.rows)
    if notes:
        print("\nnotes:\n" + notes, file=out)
    bad = sum(not r.ok for r in result.rows)
    print(f"\n{len(result.rows)} rows: {len(result.rows) - bad} ok, {bad} not ok "
          f"({time.perf_counter() - start:.1f} s)", file=out)
    return 0 if result.ok else 1


SUBCOMMANDS = {"export": (build_export_parser, run_export), "compare": (build_compare_parser, run_compare)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:
        build, run_command = SUBCOMMANDS[argv[0]]
        return run_command(build().parse_args(argv[1:]))
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
