"""A minimal progress bar on stderr (the runtime does not depend on tqdm)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``done/total`` with a rate, redrawn in place at most 10 times a second; ``write`` prints
    a message on its own line without breaking the bar. Disabled: prints messages only."""

    def __init__(self, total: int, desc: str = "predict", unit: str = "img", disable: bool = False,
                 stream: TextIO | None = None):
        self.total, self.desc, self.unit, self.disable = total, desc, unit, disable
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.start = self._last = time.perf_counter()
        self._shown = False

    def _draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if self.disable or (not force and now - self._last < 0.1):
            return
        self._last = now
        rate = self.done / max(now - self.start, 1e-9)
        self.stream.write(f"\r{self.desc}: {self.done}/{self.total} {self.unit} [{rate:.2f} {self.unit}/s]")
        self.stream.flush()
        self._shown = True

    def update(self, count: int = 1) -> None:
        self.done += count
        self._draw(force=self.done >= self.total)

    def write(self, message: str) -> None:
        """Print ``message`` on stderr on a line of its own."""
        if self._shown:
            self.stream.write("\r\033[K")
        self.stream.write(message + "\n")
        self.stream.flush()
        self._draw(force=self._shown)

    def close(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
