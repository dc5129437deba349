"""`solov2 make-shapes` (under construction)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("make-shapes", help="(under construction)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise SystemExit("solov2 make-shapes: not implemented yet")
