"""Python's warnings (PyTorch's among them) as one ``warning: MESSAGE`` line, without the file,
line number and source echo of Python's default format.

The command line installs ``show_warning`` as ``warnings.showwarning`` while a command runs;
while a training run is open, ``TrainLog`` routes the lines to the run's logger (the console
around the progress bar and ``train.log``), else they go to stderr.
"""

from __future__ import annotations

import logging
import sys

_run_logger: logging.Logger | None = None


def route_to(logger: logging.Logger | None) -> None:
    """Send the warning lines to ``logger`` (a training run's), or back to stderr with None."""
    global _run_logger
    _run_logger = logger


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # type: ignore[no-untyped-def]
    """A ``warnings.showwarning``: one ``warning:`` line, to the run's logger or stderr."""
    if _run_logger is not None:
        _run_logger.warning(f"warning: {message}")
    else:
        print(f"warning: {message}", file=file or sys.stderr)
