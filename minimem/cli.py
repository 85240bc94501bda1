"""The `minimem` command.

    minimem list [--family F]        registered gradcheck cases, grouped by model family
    minimem gradcheck [options]      same as `python -m gradcheck` (see `minimem gradcheck --help`)
    minimem bench [options]          same as `python -m minimem.bench`
    minimem demo [NAME]              reserved: the demos are scripts in demos/ for now

Each subcommand is one `cmd_<name>(args) -> int` function below; add a subcommand by adding its
parser in build_parser() and its function to COMMANDS.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys


def build_parser() -> argparse.ArgumentParser:
    from gradcheck.__main__ import add_arguments as add_gradcheck_arguments

    parser = argparse.ArgumentParser(prog="minimem", description=__doc__.splitlines()[0] + " "
                                     "NumPy reference implementations of memory-augmented neural networks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{list,gradcheck,bench,demo}")
    listing = sub.add_parser("list", help="list registered gradcheck cases, grouped by family")
    listing.add_argument("--family", help="only this family")
    add_gradcheck_arguments(sub.add_parser("gradcheck", help="check gradients against central differences",
                                           description="Same as `python -m gradcheck`."))
    # bench keeps its own options (and --help): everything after `bench` is passed through.
    sub.add_parser("bench", help="run the benchmarks (python -m minimem.bench)", add_help=False)
    demo = sub.add_parser("demo", help="run a demo (not available yet: run python demos/<name>.py)")
    demo.add_argument("name", nargs="?", help="demo name")
    return parser


def cmd_list(args: argparse.Namespace) -> int:
    from gradcheck.__main__ import list_cases
    from gradcheck.cases import all_cases

    cases = all_cases(args.family)
    if not cases:
        print("no gradcheck cases registered" + (f" for family {args.family!r}" if args.family else ""))
        return 0
    list_cases(cases)
    return 0


def cmd_gradcheck(args: argparse.Namespace) -> int:
    from gradcheck.__main__ import run

    return run(args)


def cmd_bench(args: argparse.Namespace, passthrough: list[str]) -> int:
    if importlib.util.find_spec("minimem.bench") is None:
        print("minimem bench is not available in this version (no module minimem.bench)", file=sys.stderr)
        return 1
    return subprocess.call([sys.executable, "-m", "minimem.bench", *passthrough])


def cmd_demo(args: argparse.Namespace) -> int:
    print("minimem demo is not available yet; run a script from demos/ instead, e.g. python demos/<name>.py",
          file=sys.stderr)
    return 1


COMMANDS = {"list": cmd_list, "gradcheck": cmd_gradcheck, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `minimem` console script; returns the exit status."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        return cmd_bench(args, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
