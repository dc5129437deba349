"""The ``dcn`` section: deformable convolution v2 and v1 against ``F.conv2d`` of the same shape.

All three run forward (inference mode, the benchmark's precision) on the same input: 256 ->
256 channels, 3x3, padding 1, over the H/4 x W/4 map of the benchmark's input size (batch 1;
batch 8 on CUDA, as the floor). The deformable convs (``solov2.model.deform_conv.deform_conv2d``)
get random offsets of about a pixel (standard normal) and, for v2, uniform masks. They are
timed in the same rounds, one after the other, the order rotating from round to round, so a
machine shared with other jobs slows all three alike; a layer's ``ratio_to_conv2d`` is its
median time over the median time of ``conv2d`` in the same run.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..model import deform_conv
from .timing import Clock, autocast_for

DCN_CHANNELS = 256
LAYERS = ("conv2d", "deform_v2", "deform_v1")


def layer_inputs(batch: int, channels: int, height: int, width: int, device: torch.device,
                 seed: int = 0) -> dict[str, Tensor]:
    """``x`` (N, C, H, W), a 3x3 ``weight`` (C, C, 3, 3), ``offset`` (N, 18, H, W) with a
    standard deviation of one pixel and ``mask`` (N, 9, H, W) uniform in [0, 1)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "x": torch.randn(batch, channels, height, width, generator=g),
        "weight": torch.randn(channels, channels, 3, 3, generator=g) * 0.02,
        "offset": torch.randn(batch, 18, height, width, generator=g),
        "mask": torch.rand(batch, 9, height, width, generator=g),
    }
    return {name: t.to(device) for name, t in tensors.items()}


def layer_calls(inputs: dict[str, Tensor], precision: str) -> dict[str, Callable[[], Tensor]]:
    """One forward call per name of ``LAYERS``, in inference mode under ``precision``'s autocast."""
    x, weight, offset, mask = inputs["x"], inputs["weight"], inputs["offset"], inputs["mask"]
    device = x.device

    def run(fn: Callable[[], Tensor]) -> Callable[[], Tensor]:
        def call() -> Tensor:
            with torch.inference_mode(), autocast_for(device, precision):
                return fn()
        return call

    return {
        "conv2d": run(lambda: F.conv2d(x, weight, padding=1)),
        "deform_v2": run(lambda: deform_conv.deform_conv2d(x, offset, weight, padding=1, mask=mask)),
        "deform_v1": run(lambda: deform_conv.deform_conv2d(x, offset, weight, padding=1)),
    }


def time_interleaved(calls: dict[str, Callable[[], Any]], clock: Clock, repeats: int,
                     warmup: int) -> dict[str, list[float]]:
    """Seconds of each call over ``repeats`` rounds after ``warmup`` untimed ones (at least
    one); every round runs every call once, starting one further along the list each round."""
    names = list(calls)
    for _ in range(max(1, warmup)):
        for name in names:
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            times[name].append(clock.time(calls[name])[0])
    return times


def layer_figures(batch: int, channels: int, height: int, width: int, device: torch.device, precision: str,
                  repeats: int, warmup: int, clock: Clock | None = None, seed: int = 0) -> dict[str, Any]:
    """The layer comparison: ``shape`` [N, C, H, W], ``kernel``, ``precision``, ``backend`` (of
    ``deform_conv2d``: "torchvision" or "pytorch"), ``repeats``, ``warmup`` and ``layers``:
    name -> ``ms`` (median), ``min_ms`` and ``ratio_to_conv2d`` (``ms`` / conv2d's ``ms``).
    Raises ValueError when ``repeats`` < 1 or a size is not positive."""
    if repeats < 1 or min(batch, channels, height, width) < 1:
        raise ValueError(f"the DCN layer needs repeats >= 1 and positive sizes, got repeats {repeats}, "
                         f"shape {batch}x{channels}x{height}x{width}")
    calls = layer_calls(layer_inputs(batch, channels, height, width, device, seed), precision)
    times = time_interleaved(calls, clock or Clock(device), repeats, warmup)
    conv_ms = statistics.median(times["conv2d"]) * 1e3
    layers = {}
    for name in LAYERS:
        ms = statistics.median(times[name]) * 1e3
        layers[name] = {"ms": ms, "min_ms": min(times[name]) * 1e3, "ratio_to_conv2d": ms / conv_ms}
    return {"shape": [batch, channels, height, width], "kernel": 3, "precision": precision,
            "backend": deform_conv.last_backend, "repeats": repeats, "warmup": warmup, "layers": layers}


def dcn_section(height: int, width: int, device: torch.device, precision: str, repeats: int, warmup: int,
                clock: Clock, seed: int = 0) -> dict[str, Any]:
    """``layer_figures`` for the benchmark's input ``height`` x ``width``: 256 channels over
    its H/4 x W/4 map, batch 1 (8 on CUDA)."""
    batch = 8 if device.type == "cuda" else 1
    return layer_figures(batch, DCN_CHANNELS, height // 4, width // 4, device, precision, repeats, warmup,
                         clock, seed)

