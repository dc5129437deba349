"""The training section: one training step timed stage by stage (data, targets, forward,
loss, backward, optimizer) on synthetic images."""

from __future__ import annotations

import statistics
from typing import Any, Callable

import numpy as np
import torch

from ..config import Config
from ..data.augment import TrainBatch, TrainTransform, collate
from ..engine.trainer import build_optimizer, scaled_lr
from ..model import SOLOv2
from ..model.losses import solov2_loss
from ..model.targets import MASK_STRIDE, build_targets
from .loads import TrainingImage, original_size_for, synthetic_training_images
from .options import PRECISIONS, BenchmarkOptions
from .timing import PeakMemory, Rounds, count_flops

STAGES = ("data", "targets", "forward", "loss", "backward", "optimizer")
COMPUTE = ("forward", "loss", "backward", "optimizer")


class TrainingStep:
    """A training step split into its stages, each a method that reads and writes ``state``
    (the batch, targets, outputs and losses of the step in progress)."""

    def __init__(self, cfg: Config, samples: list[TrainingImage], transform: TrainTransform,
                 device: torch.device, precision: str, rng: np.random.Generator, seed: int):
        self.cfg, self.samples, self.transform = cfg, samples, transform
        self.device, self.precision, self.rng = device, precision, rng
        torch.manual_seed(seed)
        self.model = SOLOv2(cfg.model).to(device).train()
        self.optimizer = build_optimizer(self.model, cfg.train, scaled_lr(cfg.train, 1))
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.state: dict[str, Any] = {}

    def data(self) -> TrainBatch:
        """Augment and batch the samples (returned, not stored: ``run`` stores it)."""
        items = [self.transform(s.image, s.masks, s.boxes, s.labels, self.rng) for s in self.samples]
        return collate(items, self.cfg.input.size_divisor).to(self.device)

    def targets(self) -> None:
        b, m = self.state["batch"], self.cfg.model
        size = (b.images.shape[-2] // MASK_STRIDE, b.images.shape[-1] // MASK_STRIDE)
        self.state["targets"] = build_targets(b.boxes, b.labels, b.masks, size, m.grids, m.scale_ranges,
                                              m.sigma, m.num_classes)

    def forward(self) -> None:
        amp = self.precision != "fp32"
        with torch.autocast(self.device.type, dtype=PRECISIONS[self.precision], enabled=amp):
            self.state["outputs"] = self.model(self.state["batch"].images)

    def loss(self) -> None:
        self.state["losses"] = solov2_loss(self.state["outputs"], self.state["targets"], self.cfg.train)

    def backward(self) -> None:
        self.state["losses"].total.backward()

    def optimizer_step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.train.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def stages(self) -> dict[str, Callable[[], Any]]:
        """The stages in order, named as in STAGES."""
        return {"data": self.data, "targets": self.targets, "forward": self.forward, "loss": self.loss,
                "backward": self.backward, "optimizer": self.optimizer_step}

    def run(self, timed: Callable[[str, Callable[[], Any]], Any] | None = None) -> None:
        """One whole step, each stage through ``timed(name, stage)`` if given; clears ``state``."""
        for name, fn in self.stages().items():
            out = timed(name, fn) if timed else fn()
            if name == "data":
                self.state["batch"] = out
        self.state.clear()

    def count_flops(self) -> tuple[dict[str, int], int]:
        """Run one step stage by stage, counting each stage's FLOPs (targets counted on a second
        run of it); returns the FLOPs of targets, forward, loss and backward and the step's
        positive (cell, instance) pairs."""
        self.state["batch"] = self.data()
        self.targets()
        flops = {name: count_flops(getattr(self, name)) for name in ("targets", "forward", "loss", "backward")}
        self.optimizer_step()
        num_pairs = self.state["targets"].num_pairs
        self.state.clear()
        return flops, num_pairs


def training_section(
    cfg: Config, options: BenchmarkOptions, device: torch.device, rounds: Rounds, rng: np.random.Generator
) -> dict[str, Any]:
    """Per-stage times of one training step (``options.train_images`` synthetic images with
    ``options.instances`` instances each; items ``train/{stage}`` in ``rounds``); returns the
    ``training`` figures of the JSON."""
    h, w = options.height, options.width
    transform = TrainTransform([[max(h, w), min(h, w)]], cfg.input.flip_prob, cfg.input.mean, cfg.input.std,
                               cfg.data.box_convention)
    samples = synthetic_training_images(options.train_images, original_size_for(cfg, h, w), options.instances,
                                        cfg.model.num_classes, rng)
    step = TrainingStep(cfg, samples, transform, device, options.precision, rng, options.seed)
    flops, num_pairs = step.count_flops()
    for _ in range(options.warmup):
        step.run()
    for _ in range(options.repeats):
        step.run(lambda name, fn: rounds.measure("train/" + name, fn))
    memory = PeakMemory(device).measure(step.run)
    out: dict[str, Any] = {"images": options.train_images, "instances_per_image": options.instances,
                           "positive_pairs": num_pairs}
    out.update(_figures(rounds, flops))
    out["peak_memory"] = memory
    return out


def _figures(rounds: Rounds, flops: dict[str, int]) -> dict[str, Any]:
    """Per-stage figures (``stages``) and the step, compute and share figures derived from them."""
    st = {name: rounds.figures("train/" + name, flops.get(name, 0)) for name in STAGES}
    compute_flops = flops["forward"] + flops["loss"] + flops["backward"]
    step_ms = sum(st[n]["ms"] for n in ("targets", *COMPUTE))
    compute = ["train/" + n for n in COMPUTE]
    throughput = statistics.median(t for n in compute for t in rounds.throughputs[n])
    return {
        "stages": st,
        "step_ms": step_ms,
        "compute_ms": sum(st[n]["ms"] for n in COMPUTE),
        "compute_gflops": compute_flops / 1e9,
        "compute_floor_ms": compute_flops / throughput * 1e3,
        "compute_ratio_to_floor": rounds.ratio(compute, compute_flops),
        "compute_best_round_ratio": rounds.best_ratio(compute, compute_flops),
        "targets_share": st["targets"]["ms"] / step_ms,
        "data_ms_outside_step": st["data"]["ms"],
    }
