"""The `minimem` command.

    minimem list [--family F]        registered gradcheck cases, grouped by model family
    minimem gradcheck [options]      same as `python -m gradcheck` (see `minimem gradcheck --help`)
    minimem bench [options]          same as `python -m minimem.bench`
    minimem demo                     list the demos (the scripts in the checkout's demos/ folder)
    minimem demo NAME [options]      run demos/NAME.py with the options (e.g. --quick, --out DIR)

Each subcommand is one `cmd_<name>(args) -> int` function below; add a subcommand by adding its
parser in build_parser() and its function to COMMANDS.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

# The demos are scripts beside the package in a checkout (the top level is fixed: demos/ is not
# installed), so `minimem demo` works from a clone installed with `pip install -e .`.
DEMOS_DIR = Path(__file__).resolve().parent.parent / "demos"


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
    # demo passes everything after its name through to the script, like bench.
    sub.add_parser("demo", help="list the demos, or run one: minimem demo NAME [--quick] [--out DIR]",
                   add_help=False)
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


def available_demos() -> dict[str, str]:
    """Demo name -> the first line of its docstring, for every script in demos/."""
    if not DEMOS_DIR.is_dir():
        return {}
    demos = {}
    for path in sorted(DEMOS_DIR.glob("*.py")):
        if path.name.startswith("_"):
            continue
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        demos[path.stem] = doc.strip().splitlines()[0] if doc.strip() else ""
    return demos


def cmd_demo(args: argparse.Namespace, passthrough: list[str]) -> int:
    demos = available_demos()
    if not passthrough or passthrough[0] in ("-h", "--help"):
        if not demos:
            print(f"no demos found (looked in {DEMOS_DIR}; they ship with a checkout of the repository)")
            return 0
        print("usage: minimem demo NAME [--quick] [--out DIR] [options of the demo]\n")
        width = max(len(name) for name in demos)
        for name, summary in demos.items():
            print(f"  {name:<{width}}  {summary}")
        return 0
    name, options = passthrough[0], passthrough[1:]
    if name not in demos:
        print(f"unknown demo {name!r}; expected one of: {', '.join(demos) or '(none found)'}", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, str(DEMOS_DIR / f"{name}.py"), *options])


COMMANDS = {"list": cmd_list, "gradcheck": cmd_gradcheck}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `minimem` console script; returns the exit status."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        return cmd_bench(args, extra)
    if args.command == "demo":
        return cmd_demo(args, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
