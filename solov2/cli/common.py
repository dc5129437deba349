"""Argument helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import sys

from ..config import Config, ConfigError, available_presets, load_config


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


def fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def config_or_exit(name: str, overrides: list[str]) -> Config:
    try:
        return load_config(name, overrides)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from err
