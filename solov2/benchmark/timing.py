"""Timing primitives: a device-synchronising clock, rounds of items timed each right after the
floor convolution, FLOP counts and peak memory."""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from collections import defaultdict
from typing import Any, Callable, Protocol

import torch
from torch.utils.flop_counter import FlopCounterMode

from .options import PRECISIONS


class Clock:
    """Wall-clock timing that waits for the device (CUDA kernels run asynchronously)."""

    def __init__(self, device: torch.device):
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        """(seconds ``fn()`` took, its result)."""
        self.sync()
        start = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - start, out


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to ``precision`` (a key of PRECISIONS) on ``device``; nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` as ``torch.utils.flop_counter`` counts them."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


class Floor(Protocol):
    """What ``Rounds`` needs of the floor: a call to time and its FLOPs."""

    flops: int

    def __call__(self) -> Any: ...


class Rounds:
    """Times items round after round, each right after the floor convolution.

    ``times[name]`` and ``throughputs[name]`` hold one value per ``measure(name, ...)`` call:
    the item's seconds and the floor's FLOP/s measured just before it.
    """

    def __init__(self, clock: Clock, floor: Floor):
        self.clock = clock
        self.floor = floor
        self.times: dict[str, list[float]] = defaultdict(list)
        self.throughputs: dict[str, list[float]] = defaultdict(list)

    def measure(self, name: str, fn: Callable[[], Any]) -> Any:
        """Time the floor, then ``fn``; record both under ``name``; return ``fn()``."""
        floor_time, _ = self.clock.time(self.floor)
        elapsed, out = self.clock.time(fn)
        self.times[name].append(elapsed)
        self.throughputs[name].append(self.floor.flops / floor_time)
        return out

    def median_ms(self, name: str) -> float:
        return statistics.median(self.times[name]) * 1e3

    def min_ms(self, name: str) -> float:
        return min(self.times[name]) * 1e3

    def round_ratios(self, names: list[str], flops: float) -> list[float]:
        """Per round: (summed time of ``names``) / (flops / the throughput measured that round)."""
        per_round = []
        for r in range(len(self.times[names[0]])):
            total = sum(self.times[n][r] for n in names)
            throughput = statistics.mean(self.throughputs[n][r] for n in names)
            per_round.append(total * throughput / flops)
        return per_round

    def ratio(self, names: list[str], flops: float) -> float | None:
        """Median over rounds of the per-round ratio to the floor; None without FLOPs."""
        return statistics.median(self.round_ratios(names, flops)) if flops > 0 else None

    def best_ratio(self, names: list[str], flops: float) -> float | None:
        """The lowest per-round ratio: the figure least disturbed by other jobs."""
        return min(self.round_ratios(names, flops)) if flops > 0 else None

    def figures(self, name: str, flops: float) -> dict[str, Any]:
        """``ms``, ``min_ms``, ``gflops``, ``ratio_to_floor``, ``best_round_ratio`` of one item."""
        return {"ms": self.median_ms(name), "min_ms": self.min_ms(name), "gflops": flops / 1e9,
                "ratio_to_floor": self.ratio([name], flops), "best_round_ratio": self.best_ratio([name], flops)}

    def all_throughputs(self) -> list[float]:
        return [t for values in self.throughputs.values() for t in values]


class PeakMemory:
    """Peak memory while a function runs: CUDA allocator peak, or on Linux the process's
    resident set size sampled every millisecond by a thread."""

    def __init__(self, device: torch.device):
        self.device = device

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def measure(self, fn: Callable[[], Any]) -> dict[str, float] | None:
        """{"kind", "peak_mib", "increase_mib"} for one call of ``fn``; None where the resident
        set cannot be read (no /proc)."""
        if self.device.type == "cuda":
            return self._measure_cuda(fn)
        if not os.path.exists("/proc/self/statm"):
            return None
        before = self._rss()
        peak = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], self._rss())
                time.sleep(0.001)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            fn()
        finally:
            done.set()
            thread.join()
        peak[0] = max(peak[0], self._rss())
        return {"kind": "process_rss", "peak_mib": peak[0] / 2**20, "increase_mib": (peak[0] - before) / 2**20}

    def _measure_cuda(self, fn: Callable[[], Any]) -> dict[str, float]:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        fn()
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        return {"kind": "cuda_allocated", "peak_mib": peak / 2**20, "increase_mib": (peak - before) / 2**20}
