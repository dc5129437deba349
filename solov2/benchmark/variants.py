"""The variants section: the network at batch 1 in each inference variant (eager, folded
BatchNorm, channels-last, bf16/fp16, optionally torch.compile), interleaved in the same rounds."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..model import SOLOv2
from ..model.fuse import optimize_for_inference
from .options import BenchmarkOptions
from .timing import Rounds, autocast_for, count_flops


def variants_section(model: SOLOv2, options: BenchmarkOptions, device: torch.device, rounds: Rounds) -> dict[str, Any]:
    """Times each variant of ``model`` on one random (options.height, options.width) input,
    items ``variant/{name}`` in ``rounds``; returns the ``variants`` figures of the JSON
    (speed-ups relative to eager, ratios to the floor of the eager network's FLOPs)."""
    x = torch.randn(1, 3, options.height, options.width, device=device)
    variants = _variants(model, device)
    compile_seconds = None
    if options.compile:
        variants["compile(fold_bn+channels_last)"], compile_seconds = _compiled(model, x)
    fns = {name: _call(net, x, device, precision) for name, (net, precision) in variants.items()}
    flops = count_flops(fns["eager"])
    for _ in range(options.warmup):
        for fn in fns.values():
            fn()
    for _ in range(options.repeats):
        for name, fn in fns.items():
            rounds.measure("variant/" + name, fn)
    eager = rounds.median_ms("variant/eager")
    out: dict[str, Any] = {"floor_precision": options.precision, "variants": {}}
    for name in variants:
        key = "variant/" + name
        ms = rounds.median_ms(key)
        per_round = [a / b for a, b in zip(rounds.times[key], rounds.times["variant/eager"])]
        out["variants"][name] = {
            "ms": ms,
            "min_ms": rounds.min_ms(key),
            "best_round_ratio": rounds.best_ratio([key], flops),
            "speedup_vs_eager": eager / ms,
            "median_round_speedup": 1 / statistics.median(per_round),
            "ratio_to_floor": rounds.ratio([key], flops),
        }
    if compile_seconds is not None:
        out["compile_seconds"] = compile_seconds
    return out


def _variants(model: SOLOv2, device: torch.device) -> dict[str, tuple[nn.Module, str]]:
    """name -> (network, precision) of every variant but torch.compile."""
    folded_cl = optimize_for_inference(model, fold_bn=True, channels_last=True)
    variants: dict[str, tuple[nn.Module, str]] = {
        "eager": (model, "fp32"),
        "fold_bn": (optimize_for_inference(model, fold_bn=True), "fp32"),
        "channels_last": (optimize_for_inference(model, fold_bn=False, channels_last=True), "fp32"),
        "fold_bn+channels_last": (folded_cl, "fp32"),
    }
    low = "fp16" if device.type == "cuda" else "bf16"
    variants[low] = (model, low)
    variants[f"{low}+fold_bn+channels_last"] = (folded_cl, low)
    return variants


def _compiled(model: SOLOv2, x: Tensor) -> tuple[tuple[nn.Module, str], float]:
    """torch.compile of the folded channels-last network with its weights constant-folded
    (inductor freezing), compiled by one call on ``x``; returns it (fp32) and the seconds that
    first call took."""
    import torch._inductor.config as inductor_config

    freezing = inductor_config.freezing
    inductor_config.freezing = True  # constant-fold the weights (inference only)
    try:
        compiled = torch.compile(optimize_for_inference(model, fold_bn=True, channels_last=True))
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(x)
        seconds = time.perf_counter() - start
    finally:
        inductor_config.freezing = freezing
    return (compiled, "fp32"), seconds


def _call(network: nn.Module, x: Tensor, device: torch.device, precision: str) -> Callable[[], Any]:
    def fn() -> Any:
        with torch.inference_mode(), autocast_for(device, precision):
            return network(x)
    return fn
