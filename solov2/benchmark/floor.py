"""The floor: the throughput this machine reaches on a large dense convolution.

A 3x3 convolution, 256 to 256 channels, over the network's largest map (H/4 x W/4, batch 1;
batch 8 on CUDA), in the benchmark's precision, measures the throughput T (FLOP/s). The floor
of a figure is its FLOPs / T. ``Rounds`` times every item right after this convolution, so a
machine shared with other jobs slows both sides alike.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from .timing import Clock, Rounds, autocast_for

FLOOR_CHANNELS = 256


class FloorConvolution:
    """The reference convolution: 3x3, 256 -> 256 channels, over an (H/4, W/4) map.

    Calling it runs the convolution once (inference mode, the given precision); ``flops`` is
    the FLOPs of one call.
    """

    def __init__(self, height: int, width: int, device: torch.device, precision: str, channels_last: bool):
        batch = 8 if device.type == "cuda" else 1  # one image saturates a CPU, not a GPU
        self.shape = (batch, FLOOR_CHANNELS, height // 4, width // 4)
        self.channels_last = channels_last
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.conv = nn.Conv2d(FLOOR_CHANNELS, FLOOR_CHANNELS, 3, padding=1).to(device).eval()
        self.conv = self.conv.to(memory_format=fmt)
        self.x = torch.randn(self.shape, device=device).contiguous(memory_format=fmt)
        self.autocast = lambda: autocast_for(device, precision)
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            self.conv(self.x)
        self.flops = counter.get_total_flops()

    def __call__(self) -> Tensor:
        with torch.inference_mode(), self.autocast():
            return self.conv(self.x)

    def describe(self) -> str:
        n, c, h, w = self.shape
        layout = "channels-last" if self.channels_last else "NCHW"
        return f"conv3x3 {c}->{c} on {n}x{c}x{h}x{w} ({layout})"


def pick_floor(
    height: int, width: int, device: torch.device, precision: str, warmup: int, clock: Clock
) -> tuple[FloorConvolution, list[float]]:
    """The faster layout (NCHW or channels-last) of the reference convolution, the stricter
    floor, after timing both alternately ``max(3, warmup + 2)`` times; returns it and its
    times in seconds."""
    floors = [FloorConvolution(height, width, device, precision, cl) for cl in (False, True)]
    samples: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(max(3, warmup + 2)):
        for k, floor in enumerate(floors):
            samples[k].append(clock.time(floor)[0])
    best = min(samples, key=lambda k: statistics.median(samples[k]))
    return floors[best], samples[best]


def floor_figures(floor: FloorConvolution, rounds: Rounds, samples: list[float], precision: str) -> dict[str, Any]:
    """The ``floor`` entry of the results: the throughput over every round (over ``samples``,
    the floor's own times in seconds, when no item was timed) and the convolution's time."""
    throughputs = rounds.all_throughputs() or [floor.flops / t for t in samples]
    return {
        "convolution": floor.describe(),
        "precision": precision,
        "gflops": floor.flops / 1e9,
        "throughput_gflops_per_s": {"median": statistics.median(throughputs) / 1e9,
                                    "max": max(throughputs) / 1e9, "min": min(throughputs) / 1e9},
        "ms": floor.flops / statistics.median(throughputs) * 1e3,
    }
