"""What one benchmark run measures: ``BenchmarkOptions`` and the names its fields take."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

SECTIONS = ("inference", "training", "variants", "agreement", "backends", "dcn")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class BenchmarkOptions:
    """The options of ``run_benchmark`` (``solov2 benchmark`` sets them from its flags)."""

    config: str | None = "light_448_r18"  # preset or YAML; None: the config stored in ``weights``
    overrides: list[str] = field(default_factory=list)  # KEY=VALUE config overrides
    height: int = 448  # network input (padded) height in pixels, a multiple of 32
    width: int = 672  # network input width in pixels, a multiple of 32
    batch: int = 4  # "batch N" in images; batch 1 is always measured
    precision: str = "fp32"  # fp32, bf16 (autocast; CPU) or fp16 (autocast; CUDA)
    device: str = "cpu"  # cpu, cuda or cuda:N
    repeats: int = 10  # timed rounds; figures are medians over them
    warmup: int = 2  # untimed rounds before them
    candidates: int = 500  # (cell, class) pairs above the score threshold, per image
    postprocess_load: str = "blobs"  # masks of those candidates: "blobs" or "noise" (crafted_outputs)
    sections: list[str] = field(default_factory=lambda: ["inference", "training"])  # of SECTIONS
    train_images: int = 2  # images in the timed training step
    instances: int = 30  # instances per training image
    fold_bn: bool = True  # inference: BatchNorm folded into the convolutions
    channels_last: bool = True  # inference: channels-last weights and activations
    compile: bool = False  # add torch.compile(network) to the variants
    weights: str | None = None  # trained weights: used throughout, and for the agreement check
    agreement_images: list[str] = field(default_factory=list)  # image files for the agreement
    threads: int = 0  # torch intra-op threads (0: leave as is)
    backends: list[str] = field(default_factory=list)  # backends section: of backends.BACKENDS
    calibration_images: str | None = None  # backends section: INT8 calibration folder (else agreement images)
    seed: int = 0  # seeds the synthetic images, crafted outputs and network initialisation
