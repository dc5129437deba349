"""The inference section: per-stage times of preprocessing, the network's parts and
post-processing at one batch size."""

from __future__ import annotations

import contextlib
import statistics
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..config import Config
from ..data.transforms import pad_batch, preprocess
from ..model import postprocess
from .loads import crafted_outputs, original_size_for, random_images
from .options import BenchmarkOptions
from .timing import PeakMemory, Rounds, autocast_for, count_flops

Stages = dict[str, Callable[[], Any]]


def inference_section(
    cfg: Config, network: nn.Module, options: BenchmarkOptions, device: torch.device, batch: int,
    rounds: Rounds, rng: np.random.Generator, generator: torch.Generator,
) -> dict[str, Any]:
    """Per-stage times of inference at ``batch`` images (measured in ``rounds``, items named
    ``b{batch}/{stage}``), on noise images and on head outputs crafted to carry
    ``options.candidates`` post-processing candidates per image.

    ``cfg.input.test_scale`` must resize the images of ``original_size_for`` to exactly
    (options.height, options.width). Returns the figures of ``inference.batch_N`` in the JSON.
    """
    h, w = options.height, options.width
    original = original_size_for(cfg, h, w)
    images = random_images(batch, original, rng)

    def preprocess_batch() -> Tensor:
        tensors = [preprocess(img, cfg.input.test_scale, cfg.input.mean, cfg.input.std)[0] for img in images]
        return pad_batch(tensors, cfg.input.size_divisor).to(device)

    x = preprocess_batch()
    assert tuple(x.shape[-2:]) == (h, w), (x.shape, h, w)
    logits, kernels, mask_features, passing = crafted_outputs(cfg, batch, h, w, options.candidates, generator,
                                                                options.postprocess_load)
    crafted = ([t.to(device) for t in logits], [t.to(device) for t in kernels], mask_features.to(device))
    autocast = lambda: autocast_for(device, options.precision)  # noqa: E731
    stages = {"preprocess": preprocess_batch, **_stages(cfg, network, x, crafted, (h, w), original, batch, autocast)}
    flops = {name: count_flops(fn) for name, fn in stages.items()}
    detections = stages["postprocess"]()
    for _ in range(options.warmup):
        for fn in stages.values():
            fn()
    prefix = f"b{batch}/"
    for _ in range(options.repeats):
        for name, fn in stages.items():
            rounds.measure(prefix + name, fn)
    memory = PeakMemory(device).measure(lambda: [stages[n]() for n in ("preprocess", "network", "postprocess")])
    return {
        "batch": batch, "original_size": list(original), **_figures(rounds, prefix, flops, batch),
        "postprocess_load": {"candidates_above_score_thr": passing, "masks": options.postprocess_load,
                             "instances_returned": [len(d) for d in detections]},
        "peak_memory": memory,
    }


def _stages(
    cfg: Config, network: nn.Module, x: Tensor, crafted: tuple[list[Tensor], list[Tensor], Tensor],
    size: tuple[int, int], original: tuple[int, int], batch: int,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> Stages:
    """The network's parts on the batch ``x`` and post-processing of the ``crafted`` head
    outputs (logits, kernels, mask features) of ``batch`` images of ``size`` resized from
    ``original``, each as a call under inference mode."""
    with torch.inference_mode(), autocast():
        features = network.backbone(x)
        pyramid = network.fpn(features)
    logits, kernels, mask_features = crafted
    sizes, originals = [size] * batch, [original] * batch

    def run(fn: Callable[[], Any], amp: bool = True) -> Callable[[], Any]:
        def wrapped() -> Any:
            with torch.inference_mode(), autocast() if amp else contextlib.nullcontext():
                return fn()
        return wrapped

    return {
        "backbone": run(lambda: network.backbone(x)),
        "fpn": run(lambda: network.fpn(features)),
        "heads": run(lambda: network.head(pyramid)),
        "mask_features": run(lambda: network.mask_branch(pyramid[:4])),
        # As in Predictor: post-processing runs in float32, outside autocast.
        "postprocess": run(lambda: postprocess(logits, kernels, mask_features, sizes, originals,
                                               cfg.model.grids, cfg.model.strides, cfg.test), amp=False),
        "network": run(lambda: network(x)),
    }


def _figures(rounds: Rounds, prefix: str, flops: dict[str, int], batch: int) -> dict[str, Any]:
    """Per-stage figures (``stages``) and the latency, floor and share figures derived from them."""
    st = {}
    for name, f in flops.items():
        figures = rounds.figures(prefix + name, f)
        st[name] = {"ms": figures["ms"], "ms_per_image": figures["ms"] / batch, **figures}
    latency = st["preprocess"]["ms"] + st["network"]["ms"] + st["postprocess"]["ms"]
    network_flops = flops["network"]
    throughput = statistics.median(rounds.throughputs[prefix + "network"])
    return {
        "stages": st,
        "latency_ms": latency,
        "latency_ms_per_image": latency / batch,
        "network_ms": st["network"]["ms"],
        "network_gflops": network_flops / 1e9,
        "network_floor_ms": network_flops / throughput * 1e3,
        "network_ratio_to_floor": st["network"]["ratio_to_floor"],
        "network_best_round_ratio": rounds.best_ratio([prefix + "network"], network_flops),
        "stage_sum_ms": sum(st[n]["ms"] for n in ("backbone", "fpn", "heads", "mask_features")),
        "postprocess_share": st["postprocess"]["ms"] / latency,
    }
