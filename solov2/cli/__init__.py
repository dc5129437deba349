"""The ``solov2`` command line: one module per subcommand, each with ``add_parser``."""

from __future__ import annotations

import argparse
import sys
import warnings

from .. import __version__
from . import benchmark, convert, demo, evaluate, export, inspect, make_shapes, predict, train
from ..warning_lines import show_warning
from .common import EXIT_INTERRUPTED, EXIT_OK, fail

COMMANDS = (predict, train, evaluate, demo, make_shapes, convert, export, benchmark, inspect)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="solov2",
        description="SOLOv2 instance segmentation in plain PyTorch.",
        epilog="Run 'solov2 COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"solov2 {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE config overrides may follow options; collect them wherever they stand.
    unknown = [item for item in extra if item.startswith("-") or "=" not in item]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    try:
        with warnings.catch_warnings():  # the library's warnings as one line, without the source echo
            warnings.showwarning = show_warning
            return int(args.func(args) or EXIT_OK)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as err:  # the environment, not the program: a full disk, a vanished folder
        where = f"{err.filename}: " if err.filename else ""
        return fail(f"{where}{err.strerror or err}")
