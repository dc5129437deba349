"""Argument helpers shared by several subcommands, and the exit codes every command uses.

Exit codes (the same in every command; docs/cli.md lists them):

- ``EXIT_OK`` 0: done.
- ``EXIT_PARTIAL`` 1: done, but some inputs could not be used (e.g. unreadable images in
  ``predict``); each was reported on its own ``error:`` line and the summary says how many.
- ``EXIT_ERROR`` 2: nothing (more) was done: a wrong option, config key or value, a missing
  or unreadable file, an output that cannot be written; one ``error:`` line says which and
  what to do. Command-line usage errors from argparse use 2 as well.
- ``EXIT_INTERRUPTED`` 130: stopped by Ctrl-C or SIGTERM; what was complete is kept.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from solov2_runtime.outputs import add_exist_ok, run_dir

from ..config import Config, ConfigError, available_presets, load_config

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_PARTIAL", "add_config_arguments", "add_exist_ok",
           "config_or_exit", "fail", "formatter", "run_dir"]


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument(
        "--config", required=required,
        help=f"preset name ({', '.join(available_presets())}) or a YAML file",
    )
    parser.add_argument(
        "overrides", nargs="*", default=[], metavar="KEY=VALUE",
        help="config overrides such as test.score_thr=0.3 or model.num_classes=3",
    )


def formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_ERROR) -> int:
    """Print one ``error:`` line and return the exit code."""
    print(f"error: {message}", file=sys.stderr)
    return code


def output_file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be written as an output file, or None: checked before long work
    starts, so that an unwritable output is found before, not after it."""
    target = Path(path)
    if target.is_dir():
        return f"{target}: is a folder; give a file name"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=target.parent):
            pass
    except OSError as err:
        return f"{target}: cannot write there ({err.strerror or err}); choose another path"
    return None


def config_or_exit(name: str, overrides: list[str]) -> Config:
    try:
        return load_config(name, overrides)
    except ConfigError as err:
        fail(str(err))
        raise SystemExit(EXIT_ERROR) from err
