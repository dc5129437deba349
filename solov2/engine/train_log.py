"""What a training run writes for people and tools: the console and ``train.log``,
``metrics.jsonl`` (one JSON object a line) and, when installed, TensorBoard. Process 0 only."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .. import warning_lines
from .train_types import StepResult, TrainState

logger = logging.getLogger("solov2.train")
# The data loader's one-line warnings (unreadable images, size mismatches) go to the same places,
# and so do Python's warnings (PyTorch's) under the command line (solov2.warning_lines).
LOGGERS = (logger, logging.getLogger("solov2.data"))


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stdout)


class TrainLog:
    """The run's log handlers and metrics files in ``work_dir`` (written on process 0 only)."""

    def __init__(self, work_dir: Path, is_main: bool):
        self.work_dir = work_dir
        self.is_main = is_main
        self.handlers: list[logging.Handler] = []
        self.tensorboard = None

    def open(self) -> None:
        """Send the ``solov2.train`` and ``solov2.data`` loggers to the console (around the
        progress bar) and to ``train.log``; open TensorBoard's writer when it is installed."""
        for each in LOGGERS:
            each.setLevel(logging.INFO)
            each.propagate = False
        if not self.is_main:
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        console = _TqdmHandler()
        console.setFormatter(logging.Formatter("%(message)s"))
        logfile = logging.FileHandler(self.work_dir / "train.log", encoding="utf-8")
        logfile.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        self.handlers = [console, logfile]
        for handler in self.handlers:
            for each in LOGGERS:
                each.addHandler(handler)
        warning_lines.route_to(logger)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            SummaryWriter = None
        if SummaryWriter is not None:
            self.tensorboard = SummaryWriter(str(self.work_dir / "tensorboard"))

    def close(self) -> None:
        warning_lines.route_to(None)
        for handler in self.handlers:
            for each in LOGGERS:
                each.removeHandler(handler)
            handler.close()
        if self.tensorboard is not None:
            self.tensorboard.close()

    def write(self, row: dict[str, Any]) -> None:
        """Append ``row`` (with ``type`` and ``iteration``) to metrics.jsonl; its numbers to
        TensorBoard as ``{type}/{key}``."""
        if not self.is_main:
            return
        with open(self.work_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.tensorboard is not None:
            step = row.get("iteration", 0)
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("iteration", "epoch"):
                    self.tensorboard.add_scalar(f"{row.get('type', 'train')}/{key}", value, step)

    def trim(self, iteration: int) -> None:
        """On resume, drop rows logged after ``iteration`` (they will be logged again) and
        lines cut short by a crash; the file is replaced atomically."""
        path = self.work_dir / "metrics.jsonl"
        if not self.is_main or not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if row.get("iteration", 0) <= iteration:
                kept.append(line)
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)


class LogWindow:
    """The steps since the last metrics row: their results and their seconds spent waiting for
    data and in all (from one ``restart`` to the next step's ``step_done``)."""

    def __init__(self) -> None:
        self.results: list[StepResult] = []
        self.start_epoch()

    def start_epoch(self) -> None:
        """Reset the times (the results stay) and start the clock."""
        self.data_time = self.iter_time = 0.0
        self.steps = 0
        self.restart()

    def restart(self) -> None:
        self.tick = time.perf_counter()

    def data_ready(self) -> None:
        self.data_time += time.perf_counter() - self.tick

    def step_done(self) -> None:
        self.iter_time += time.perf_counter() - self.tick
        self.steps += 1

    def row(self, state: TrainState, lr: float, device: torch.device) -> dict[str, Any]:
        """A metrics.jsonl ``train`` row: means over the window's results, seconds per
        iteration; CUDA's peak memory. Empties the window."""
        row: dict[str, Any] = {"type": "train", "epoch": state.epoch + 1, "iteration": state.iteration, "lr": lr}
        for key in ("loss", "loss_category", "loss_mask", "num_positive", "grad_norm"):
            row[key] = float(np.mean([getattr(r, key) for r in self.results]))
        row["data_time"] = self.data_time / self.steps
        row["time"] = self.iter_time / self.steps
        if device.type == "cuda":
            row["memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        self.results, self.data_time, self.iter_time, self.steps = [], 0.0, 0.0, 0
        return row
