"""Check every registered gradcheck case and print the report table.

    python -m gradcheck                       # every case, full mode (every coordinate)
    python -m gradcheck --mode fast           # random directions per tensor, full rerun on failure
    python -m gradcheck --case lstm --list    # the cases whose name contains "lstm"

Exit status: 0 when every row is ok, 1 when any row is FAIL or kink (a kink means the case sits
within eps of a non-smooth point and must be reseeded), or a case raised, or nothing matched.
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
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
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


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
