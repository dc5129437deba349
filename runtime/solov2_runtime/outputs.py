"""Output folders: one folder per run (``run_dir``), checked writable before long work
(``prepare_out_dir``). Shared by ``solov2`` and ``solov2-runtime`` commands."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


class OutputDirError(ValueError):
    """An output folder that cannot be created or written."""


def run_dir(out: str | Path, exist_ok: bool) -> Path:
    """The folder a run writes to: ``out`` when it is new or empty, or with ``exist_ok``; else
    the first free ``out2``, ``out3``, ... so that two runs never mix (ultralytics' rule)."""
    path = Path(out)
    if exist_ok or not path.is_dir() or not any(path.iterdir()):
        return path  # new, empty, or not a folder (which prepare_out_dir then reports)
    number = 2
    while (candidate := path.with_name(f"{path.name}{number}")).exists():
        number += 1
    return candidate


def add_exist_ok(parser: argparse.ArgumentParser) -> None:
    """The ``--exist-ok`` flag that goes with ``run_dir``."""
    parser.add_argument("--exist-ok", action="store_true",
                        help="write into --out even if it holds an earlier run (default: a new folder "
                             "OUT2, OUT3, ... is used, so that two runs never mix)")


def prepare_out_dir(out_dir: str | Path) -> Path:
    """``out_dir``, created if needed, after checking that a file can be written in it.

    Raises ``OutputDirError`` naming the folder when it is a file, or cannot be created or
    written (read-only, no permission, no space)."""
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{path}: exists and is not a folder; choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise OutputDirError(f"{path}: cannot write there ({err.strerror or err}); choose another --out") from err
    return path
