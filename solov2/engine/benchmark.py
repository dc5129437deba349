"""Measured speed of SOLOv2 on this machine, against a floor measured in the same run.

``run_benchmark(BenchmarkOptions(...))`` returns a JSON-ready dict and ``format_report``
prints it. It times, for one preset and input size:

- inference at batch 1 and batch N, broken down into preprocess, backbone, FPN, heads, mask
  features and post-processing (at a realistic load: ``candidates`` (cell, class) pairs
  above the score threshold per image, whose masks are compact blobs of COCO-like sizes;
  ``postprocess_load="noise"``: masks spanning the whole image, the worst case; see
  ``crafted_outputs``);
- a training step at ``train_images`` images with ``instances`` instances each, broken down
  into data, targets, forward, loss, backward and optimizer;
- peak memory, the FLOPs of every part (``torch.utils.flop_counter``), and optionally the
  agreement of bf16 (CPU) / fp16 (CUDA) inference with fp32 on a trained model.

The floor. A 3x3 convolution, 256 to 256 channels, over the network's largest map (H/4 x W/4,
batch 1), in the benchmark's precision, measures the throughput T (FLOP/s) this machine
reaches on large dense convolutions. The floor of a figure is its FLOPs / T. Every timed
item is run right after that convolution in the same round and its ratio uses the T just
measured, so a machine shared with other jobs slows both sides alike; the reported ratio is
the median over rounds of these per-round ratios, the reported time the median time.
"""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import statistics
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ..config import Config, load_config
from ..data.transforms import pad_batch, preprocess, rescale_size
from ..model import SOLOv2
from ..model.fuse import optimize_for_inference
from ..model.postprocess import flatten_levels, postprocess

FLOOR_CHANNELS = 256
SECTIONS = ("inference", "training", "variants", "agreement")
CONFIDENT = 0.3  # the agreement also reports fp32 instances scored at least this
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class BenchmarkOptions:
    config: str | None = "light_448_r18"  # None: the config stored in ``weights``
    overrides: list[str] = field(default_factory=list)
    height: int = 448  # network input (padded), multiples of 32
    width: int = 672
    batch: int = 4  # "batch N"; batch 1 is always measured
    precision: str = "fp32"  # fp32, bf16 (autocast; CPU) or fp16 (autocast; CUDA)
    device: str = "cpu"
    repeats: int = 10  # timed rounds; medians over them
    warmup: int = 2
    candidates: int = 500  # (cell, class) pairs above the score threshold, per image
    postprocess_load: str = "blobs"  # masks of those candidates: "blobs" or "noise" (crafted_outputs)
    sections: list[str] = field(default_factory=lambda: ["inference", "training"])  # of SECTIONS
    train_images: int = 2
    instances: int = 30  # per training image
    fold_bn: bool = True  # inference: BatchNorm folded into the convolutions
    channels_last: bool = True  # inference: channels-last weights and activations
    compile: bool = False  # add torch.compile(network) to the variants
    weights: str | None = None  # trained weights: used throughout, and for the agreement check
    agreement_images: list[str] = field(default_factory=list)  # image files for the agreement
    threads: int = 0  # torch intra-op threads (0: leave as is)
    seed: int = 0


# ----------------------------------------------------------------------------- timing


class Clock:
    """Wall-clock timing that waits for the device (CUDA kernels run asynchronously)."""

    def __init__(self, device: torch.device):
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        self.sync()
        start = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - start, out


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


class FloorConvolution:
    """The reference convolution: 3x3, 256 -> 256 channels, over an (H/4, W/4) map."""

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


class Rounds:
    """Times items round after round, each right after the floor convolution."""

    def __init__(self, clock: Clock, floor: FloorConvolution):
        self.clock = clock
        self.floor = floor
        self.times: dict[str, list[float]] = defaultdict(list)
        self.throughputs: dict[str, list[float]] = defaultdict(list)

    def measure(self, name: str, fn: Callable[[], Any]) -> Any:
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
        """Median over rounds of the per-round ratio to the floor."""
        return statistics.median(self.round_ratios(names, flops)) if flops > 0 else None

    def best_ratio(self, names: list[str], flops: float) -> float | None:
        """The lowest per-round ratio: the figure least disturbed by other jobs."""
        return min(self.round_ratios(names, flops)) if flops > 0 else None

    def all_throughputs(self) -> list[float]:
        return [t for values in self.throughputs.values() for t in values]


def count_flops(fn: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


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
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            fn()
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            return {"kind": "cuda_allocated", "peak_mib": peak / 2**20, "increase_mib": (peak - before) / 2**20}
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


# ----------------------------------------------------------------------------- inputs


def original_size_for(cfg: Config, height: int, width: int) -> tuple[int, int]:
    """An original image size that the test-time resize maps to exactly (height, width):
    15/14 larger (COCO's 480x640 photos become 448x597 with the light presets), else as is.
    ``run_benchmark`` sets ``input.test_scale`` to (long, short) of the benchmark size."""
    for factor in (15 / 14, 1.0):
        size = (round(height * factor), round(width * factor))
        if rescale_size(*size, cfg.input.test_scale) == (height, width):
            return size
    raise ValueError(f"input.test_scale {cfg.input.test_scale} does not resize to {height}x{width}")


def random_images(count: int, size: tuple[int, int], rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]


POSTPROCESS_LOADS = ("blobs", "noise")


def crafted_outputs(
    cfg: Config, batch: int, height: int, width: int, candidates: int, generator: torch.Generator,
    load: str = "blobs",
) -> tuple[list[Tensor], list[Tensor], Tensor, int]:
    """Head outputs with exactly ``candidates`` (cell, class) pairs per image above the score
    threshold after points NMS. Returns (category logits, kernels, mask features, candidates).

    Candidates sit on even rows and columns of the grids (so no two share a 2x2 window and
    points NMS keeps them all) with probabilities spread over (score_thr, 0.9]; every other
    logit is -10. The masks depend on ``load``:

    - ``"blobs"`` (realistic): the candidates belong to ``candidates // 10`` objects (about ten
      candidates each, as neighbouring cells and levels fire around an object in the release),
      one of the first ten classes each. An object is a soft ellipse, centre uniform over the
      image, diameter log-uniform from 1.5% to 80% of the image's short side (about 40% of the
      objects under 32x32 pixels at 480x720, 30% over 96x96: a COCO-like spread), aspect ratio
      0.5 to 2; each candidate sees its object's ellipse moved by up to 20% of its radii and
      scaled by 0.8 to 1.25, plus a smooth random texture. Mask probabilities ramp from 0.1 to
      0.9 across about two mask-feature pixels at the edge and fall to ~0 away from the object.
    - ``"noise"`` (worst case for the final resize): random kernels and features, so every
      mask is salt-and-pepper noise over about half of the whole image, all pass the small-mask
      filter and ``max_per_img`` survive; every returned mask spans the whole image.
    """
    if load not in POSTPROCESS_LOADS:
        raise ValueError(f"post-processing load must be one of {POSTPROCESS_LOADS}, got {load!r}")
    m = cfg.model
    classes = min(10, m.num_classes)
    slots = [(level, i, j) for level, s in enumerate(m.grids) for i in range(0, s, 2) for j in range(0, s, 2)]
    pairs = [(level, i, j, c) for (level, i, j) in slots for c in range(classes)]
    count = min(candidates, len(pairs))
    logits = [torch.full((batch, m.num_classes, s, s), -10.0) for s in m.grids]
    low, high = cfg.test.score_thr, 0.9
    e = m.kernel_channels
    if load == "noise":
        for b in range(batch):
            chosen = torch.randperm(len(pairs), generator=generator)[:count]
            probs = low + (high - low) * (1 - torch.rand(count, generator=generator))  # (low, high]
            probs = probs.clamp(min=low + 1e-3)
            for index, p in zip(chosen.tolist(), torch.logit(probs).tolist()):
                level, i, j, c = pairs[index]
                logits[level][b, c, i, j] = p
        kernels = [torch.randn(batch, e, s, s, generator=generator) / e**0.5 for s in m.grids]
        mask_features = torch.randn(batch, e, height // 4, width // 4, generator=generator)
    else:
        kernels = [torch.zeros(batch, e, s, s) for s in m.grids]
        mask_features = blob_features(batch, e, height // 4, width // 4, generator)
        for b in range(batch):
            fill_blob_candidates(logits, kernels, b, slots, count, classes, (low, high),
                                 (height // 4, width // 4), generator)
    probs, _ = flatten_levels(logits, kernels)
    passing = int((probs[0] > cfg.test.score_thr).sum())
    return logits, kernels, mask_features, passing


BLOB_BASIS = 5  # mask-feature channels 0-4: 1, u, v, u^2, v^2 (u, v: pixel coordinates / long side)


def blob_features(batch: int, channels: int, h: int, w: int, generator: torch.Generator) -> Tensor:
    """Mask features for the "blobs" load: a quadratic basis (so a kernel can draw an ellipse)
    and, on the other channels, smooth unit-variance noise (texture)."""
    if channels < BLOB_BASIS + 1:
        raise ValueError(f"the blobs load needs at least {BLOB_BASIS + 1} kernel channels, got {channels}")
    side = max(h, w)
    v, u = torch.meshgrid(torch.arange(h) / side, torch.arange(w) / side, indexing="ij")
    basis = torch.stack([torch.ones_like(u), u, v, u * u, v * v])
    low = torch.randn(batch, channels - BLOB_BASIS, max(h // 8, 1), max(w // 8, 1), generator=generator)
    texture = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    texture = texture / texture.std()
    return torch.cat([basis.expand(batch, -1, -1, -1), texture], 1)


def fill_blob_candidates(
    logits: list[Tensor], kernels: list[Tensor], b: int, slots: list[tuple[int, int, int]], count: int,
    classes: int, prob_range: tuple[float, float], size: tuple[int, int], generator: torch.Generator,
) -> None:
    """Write image ``b``'s ``count`` candidates of the "blobs" load (see ``crafted_outputs``):
    one slot (cell) each, a second class at a slot only once every slot is used."""
    h, w = size
    side, short = max(h, w), min(h, w)
    rand = lambda *shape: torch.rand(shape, generator=generator)  # noqa: E731
    objects = max(1, count // 10)
    centre = rand(objects, 2) * torch.tensor([h, w])  # (y, x) in mask-feature pixels
    diameter = short * 0.015 * (0.8 / 0.015) ** rand(objects)
    aspect = 4 ** (rand(objects) - 0.5)  # 0.5 to 2
    radii = torch.stack([diameter * aspect.sqrt(), diameter / aspect.sqrt()], 1) / 2
    label = torch.randint(classes, (objects,), generator=generator)

    low, high = prob_range
    probs = (low + (high - low) * (1 - rand(count))).clamp(min=low + 1e-3)
    owner = torch.randint(objects, (count,), generator=generator)
    order = torch.randperm(len(slots), generator=generator)
    e = kernels[0].shape[1]
    for k in range(count):
        level, i, j = slots[int(order[k % len(slots)])]
        o = int(owner[k % len(slots)])
        logits[level][b, (int(label[o]) + k // len(slots)) % classes, i, j] = torch.logit(probs[k])
        if k >= len(slots):
            continue  # the slot's kernel (its mask) is already set
        r = radii[o] * 1.25 ** (2 * rand(2) - 1)
        cy, cx = (centre[o] + 0.2 * r * (2 * rand(2) - 1)).tolist()
        ry, rx = r.clamp(min=0.5).tolist()
        # logit = s (1 - ((x - cx) / rx)^2 - ((y - cy) / ry)^2), x = u * side, y = v * side: the
        # slope at the edge is 2 s / r per pixel, so s = r gives a ramp about 2 pixels wide.
        s = max(2.0, (rx * ry) ** 0.5)
        ax, ay = rx / side, ry / side
        cu, cv = cx / side, cy / side
        quadratic = torch.tensor([s * (1 - (cu / ax) ** 2 - (cv / ay) ** 2), 2 * s * cu / ax**2,
                                  2 * s * cv / ay**2, -s / ax**2, -s / ay**2])
        texture = torch.randn(e - BLOB_BASIS, generator=generator) / (e - BLOB_BASIS) ** 0.5
        kernels[level][b, :, i, j] = torch.cat([quadratic, texture])


@dataclass
class TrainingImage:
    image: np.ndarray  # H x W x 3 uint8
    masks: np.ndarray  # (n, H, W) uint8
    boxes: np.ndarray  # (n, 4) x1, y1, x2, y2
    labels: np.ndarray  # (n,)


def synthetic_training_images(
    count: int, size: tuple[int, int], instances: int, num_classes: int, rng: np.random.Generator
) -> list[TrainingImage]:
    """Images with ``instances`` ellipses and rectangles each, sizes log-uniform from 3% to
    60% of the short side, so every FPN level's scale range gets instances."""
    h, w = size
    out = []
    for _ in range(count):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        masks = np.zeros((instances, h, w), np.uint8)
        for k in range(instances):
            extent = min(h, w) * float(np.exp(rng.uniform(np.log(0.03), np.log(0.6))))
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = (extent * rng.uniform(0.35, 0.65) for _ in range(2))
            if k % 2:
                cv2.ellipse(masks[k], (int(cx), int(cy)), (max(int(rx), 1), max(int(ry), 1)),
                            float(rng.uniform(0, 180)), 0, 360, 1, -1)
            else:
                cv2.rectangle(masks[k], (int(cx - rx), int(cy - ry)), (int(cx + rx), int(cy + ry)), 1, -1)
        boxes = np.zeros((instances, 4), np.float32)
        for k in range(instances):
            ys, xs = np.nonzero(masks[k])
            boxes[k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        out.append(TrainingImage(image, masks, boxes, rng.integers(0, num_classes, instances)))
    return out


# ----------------------------------------------------------------------------- sections


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def load_setup(options: BenchmarkOptions) -> tuple[Config, dict[str, Tensor] | None]:
    """The config (from ``options.config``, else the one stored in the weights) and weights."""
    if options.weights:
        from .predictor import resolve_config

        cfg, state_dict, _ = resolve_config(options.config, options.weights, options.overrides)
        return cfg, state_dict
    return load_config(options.config or "light_448_r18", options.overrides), None


def build_models(
    cfg: Config, state_dict: dict[str, Tensor] | None, options: BenchmarkOptions, device: torch.device
) -> tuple[SOLOv2, nn.Module]:
    """The plain network (weights loaded if given) and the inference network (folded etc.)."""
    torch.manual_seed(options.seed)
    model = SOLOv2(cfg.model)
    if state_dict is not None:
        from ..checkpoint import load_weights

        load_weights(model, state_dict, source=str(options.weights), allow_class_mismatch=False)
    model = model.to(device).eval()
    inference = optimize_for_inference(model, fold_bn=options.fold_bn, channels_last=options.channels_last)
    return model, inference


def inference_section(
    cfg: Config, network: nn.Module, options: BenchmarkOptions, device: torch.device, batch: int,
    rounds: Rounds, rng: np.random.Generator, generator: torch.Generator,
) -> dict[str, Any]:
    """Per-stage times of inference at one batch size (measured in ``rounds``)."""
    h, w = options.height, options.width
    original = original_size_for(cfg, h, w)
    images = random_images(batch, original, rng)
    ctx = lambda: autocast_for(device, options.precision)  # noqa: E731

    def preprocess_batch() -> Tensor:
        tensors = [preprocess(img, cfg.input.test_scale, cfg.input.mean, cfg.input.std)[0] for img in images]
        return pad_batch(tensors, cfg.input.size_divisor).to(device)

    x = preprocess_batch()
    assert tuple(x.shape[-2:]) == (h, w), (x.shape, h, w)
    with torch.inference_mode(), ctx():
        features = network.backbone(x)
        pyramid = network.fpn(features)
    logits, kernels, mask_features, passing = crafted_outputs(cfg, batch, h, w, options.candidates, generator,
                                                                options.postprocess_load)
    logits = [t.to(device) for t in logits]
    kernels = [t.to(device) for t in kernels]
    mask_features = mask_features.to(device)
    sizes, originals = [(h, w)] * batch, [original] * batch

    def run(fn: Callable[[], Any], amp: bool = True) -> Callable[[], Any]:
        def wrapped() -> Any:
            with torch.inference_mode(), ctx() if amp else contextlib.nullcontext():
                return fn()
        return wrapped

    stages: dict[str, Callable[[], Any]] = {
        "preprocess": preprocess_batch,
        "backbone": run(lambda: network.backbone(x)),
        "fpn": run(lambda: network.fpn(features)),
        "heads": run(lambda: network.head(pyramid)),
        "mask_features": run(lambda: network.mask_branch(pyramid[:4])),
        # As in Predictor: post-processing runs in float32, outside autocast.
        "postprocess": run(lambda: postprocess(logits, kernels, mask_features, sizes, originals,
                                               cfg.model.grids, cfg.model.strides, cfg.test), amp=False),
        "network": run(lambda: network(x)),
    }
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

    def figure(name: str) -> dict[str, Any]:
        ms = rounds.median_ms(prefix + name)
        return {"ms": ms, "ms_per_image": ms / batch, "min_ms": rounds.min_ms(prefix + name),
                "gflops": flops[name] / 1e9, "ratio_to_floor": rounds.ratio([prefix + name], flops[name]),
                "best_round_ratio": rounds.best_ratio([prefix + name], flops[name])}

    out: dict[str, Any] = {"batch": batch, "original_size": list(original), "stages": {}}
    for name in stages:
        out["stages"][name] = figure(name)
    st = out["stages"]
    latency = st["preprocess"]["ms"] + st["network"]["ms"] + st["postprocess"]["ms"]
    network_flops = flops["network"]
    throughput = statistics.median(rounds.throughputs[prefix + "network"])
    out.update({
        "latency_ms": latency,
        "latency_ms_per_image": latency / batch,
        "network_ms": st["network"]["ms"],
        "network_gflops": network_flops / 1e9,
        "network_floor_ms": network_flops / throughput * 1e3,
        "network_ratio_to_floor": st["network"]["ratio_to_floor"],
        "network_best_round_ratio": rounds.best_ratio([prefix + "network"], network_flops),
        "stage_sum_ms": sum(st[n]["ms"] for n in ("backbone", "fpn", "heads", "mask_features")),
        "postprocess_share": st["postprocess"]["ms"] / latency,
        "postprocess_load": {"candidates_above_score_thr": passing, "masks": options.postprocess_load,
                             "instances_returned": [len(d) for d in detections]},
        "peak_memory": memory,
    })
    return out


def training_section(
    cfg: Config, options: BenchmarkOptions, device: torch.device, rounds: Rounds, rng: np.random.Generator
) -> dict[str, Any]:
    """Per-stage times of one training step: data, targets, forward, loss, backward, optimizer."""
    from ..data.augment import TrainTransform, collate
    from ..engine.trainer import build_optimizer, scaled_lr
    from ..model.losses import solov2_loss
    from ..model.targets import MASK_STRIDE, build_targets

    h, w = options.height, options.width
    scale = [max(h, w), min(h, w)]
    original = original_size_for(cfg, h, w)
    transform = TrainTransform([scale], cfg.input.flip_prob, cfg.input.mean, cfg.input.std, cfg.data.box_convention)
    samples = synthetic_training_images(options.train_images, original, options.instances,
                                        cfg.model.num_classes, rng)
    torch.manual_seed(options.seed)
    model = SOLOv2(cfg.model).to(device).train()
    optimizer = build_optimizer(model, cfg.train, scaled_lr(cfg.train, 1))
    params = [p for p in model.parameters() if p.requires_grad]
    amp = options.precision != "fp32"

    def data() -> Any:
        batch = collate([transform(s.image, s.masks, s.boxes, s.labels, rng) for s in samples],
                        cfg.input.size_divisor)
        return batch.to(device)

    state: dict[str, Any] = {}

    def step_targets() -> None:
        b = state["batch"]
        size = (b.images.shape[-2] // MASK_STRIDE, b.images.shape[-1] // MASK_STRIDE)
        state["targets"] = build_targets(b.boxes, b.labels, b.masks, size, cfg.model.grids,
                                         cfg.model.scale_ranges, cfg.model.sigma, cfg.model.num_classes)

    def step_forward() -> None:
        with torch.autocast(device.type, dtype=PRECISIONS[options.precision], enabled=amp):
            state["outputs"] = model(state["batch"].images)

    def step_loss() -> None:
        state["losses"] = solov2_loss(state["outputs"], state["targets"], cfg.train)

    def step_backward() -> None:
        state["losses"].total.backward()

    def step_optimizer() -> None:
        torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    stages = {"data": data, "targets": step_targets, "forward": step_forward, "loss": step_loss,
              "backward": step_backward, "optimizer": step_optimizer}

    def whole_step(timed: Callable[[str, Callable[[], Any]], Any] | None = None) -> None:
        for name, fn in stages.items():
            out = timed(name, fn) if timed else fn()
            if name == "data":
                state["batch"] = out
        state.clear()

    state["batch"] = data()
    step_targets()
    flops = {}
    flops["targets"] = count_flops(step_targets)
    with FlopCounterMode(display=False) as counter:
        step_forward()
    flops["forward"] = int(counter.get_total_flops())
    with FlopCounterMode(display=False) as counter:
        step_loss()
    flops["loss"] = int(counter.get_total_flops())
    with FlopCounterMode(display=False) as counter:
        step_backward()
    flops["backward"] = int(counter.get_total_flops())
    step_optimizer()
    num_pairs = state["targets"].num_pairs
    state.clear()
    for _ in range(options.warmup):
        whole_step()
    for _ in range(options.repeats):
        whole_step(lambda name, fn: rounds.measure("train/" + name, fn))
    memory = PeakMemory(device).measure(whole_step)

    out: dict[str, Any] = {"images": options.train_images, "instances_per_image": options.instances,
                           "positive_pairs": num_pairs, "stages": {}}
    for name in stages:
        f = flops.get(name, 0)
        out["stages"][name] = {"ms": rounds.median_ms("train/" + name), "min_ms": rounds.min_ms("train/" + name),
                               "gflops": f / 1e9, "ratio_to_floor": rounds.ratio(["train/" + name], f),
                               "best_round_ratio": rounds.best_ratio(["train/" + name], f)}
    compute = ["forward", "loss", "backward", "optimizer"]
    step = ["targets"] + compute
    st = out["stages"]
    compute_flops = flops["forward"] + flops["loss"] + flops["backward"]
    step_ms = sum(st[n]["ms"] for n in step)
    throughput = statistics.median(t for n in compute for t in rounds.throughputs["train/" + n])
    out.update({
        "step_ms": step_ms,
        "compute_ms": sum(st[n]["ms"] for n in compute),
        "compute_gflops": compute_flops / 1e9,
        "compute_floor_ms": compute_flops / throughput * 1e3,
        "compute_ratio_to_floor": rounds.ratio(["train/" + n for n in compute], compute_flops),
        "compute_best_round_ratio": rounds.best_ratio(["train/" + n for n in compute], compute_flops),
        "targets_share": st["targets"]["ms"] / step_ms,
        "data_ms_outside_step": st["data"]["ms"],
        "peak_memory": memory,
    })
    return out


def variants_section(
    cfg: Config, model: SOLOv2, options: BenchmarkOptions, device: torch.device, rounds: Rounds
) -> dict[str, Any]:
    """The network at batch 1 in each inference variant, interleaved in the same rounds."""
    x = torch.randn(1, 3, options.height, options.width, device=device)
    folded = optimize_for_inference(model, fold_bn=True)
    folded_cl = optimize_for_inference(model, fold_bn=True, channels_last=True)
    variants: dict[str, tuple[nn.Module, str]] = {
        "eager": (model, "fp32"),
        "fold_bn": (folded, "fp32"),
        "channels_last": (optimize_for_inference(model, fold_bn=False, channels_last=True), "fp32"),
        "fold_bn+channels_last": (folded_cl, "fp32"),
    }
    low = "fp16" if device.type == "cuda" else "bf16"
    variants[f"{low}"] = (model, low)
    variants[f"{low}+fold_bn+channels_last"] = (folded_cl, low)
    compile_seconds = None
    if options.compile:
        import torch._inductor.config as inductor_config

        freezing = inductor_config.freezing
        inductor_config.freezing = True  # constant-fold the weights (inference only)
        try:
            compiled = torch.compile(optimize_for_inference(model, fold_bn=True, channels_last=True))
            start = time.perf_counter()
            with torch.inference_mode():
                compiled(x)
            compile_seconds = time.perf_counter() - start
        finally:
            inductor_config.freezing = freezing
        variants["compile(fold_bn+channels_last)"] = (compiled, "fp32")

    def call(network: nn.Module, precision: str) -> Callable[[], Any]:
        def fn() -> Any:
            with torch.inference_mode(), autocast_for(device, precision):
                return network(x)
        return fn

    fns = {name: call(net, precision) for name, (net, precision) in variants.items()}
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
        ms = rounds.median_ms("variant/" + name)
        per_round = [a / b for a, b in zip(rounds.times["variant/" + name], rounds.times["variant/eager"])]
        out["variants"][name] = {
            "ms": ms,
            "min_ms": rounds.min_ms("variant/" + name),
            "best_round_ratio": rounds.best_ratio(["variant/" + name], flops),
            "speedup_vs_eager": eager / ms,
            "median_round_speedup": 1 / statistics.median(per_round),
            "ratio_to_floor": rounds.ratio(["variant/" + name], flops),
        }
    if compile_seconds is not None:
        out["compile_seconds"] = compile_seconds
    return out


def agreement_section(
    cfg: Config, model: SOLOv2, options: BenchmarkOptions, device: torch.device
) -> dict[str, Any]:
    """bf16 (CPU) / fp16 (CUDA) against fp32 on the given images, same weights: instances
    matched greedily by class and mask IoU (>= 0.5), their IoU and score differences."""
    from ..data.image_io import read_image
    from .predictor import Predictor

    low = "fp16" if device.type == "cuda" else "bf16"
    network = optimize_for_inference(model, fold_bn=options.fold_bn, channels_last=options.channels_last)
    reference = Predictor(network, cfg, device, "fp32", batch_size=1)
    fast = Predictor(network, cfg, device, low, batch_size=1)
    ious: list[float] = []
    score_diffs: list[float] = []
    confident_ious: list[float] = []  # fp32 instances scored >= CONFIDENT; 0 when unmatched
    counts = {"fp32": 0, low: 0, "matched": 0}
    for path in options.agreement_images:
        image = read_image(path)
        a, b = reference(image), fast(image)
        counts["fp32"] += len(a)
        counts[low] += len(b)
        used: set[int] = set()
        for i in range(len(a)):
            best, best_iou = -1, 0.5
            for j in range(len(b)):
                if j in used or b.labels[j] != a.labels[i]:
                    continue
                union = np.logical_or(a.masks[i], b.masks[j]).sum()
                iou = np.logical_and(a.masks[i], b.masks[j]).sum() / union if union else 1.0
                if iou >= best_iou:
                    best, best_iou = j, float(iou)
            if best >= 0:
                used.add(best)
                ious.append(best_iou)
                score_diffs.append(abs(float(a.scores[i]) - float(b.scores[best])))
            if a.scores[i] >= CONFIDENT:
                confident_ious.append(best_iou if best >= 0 else 0.0)
    counts["matched"] = len(ious)
    summary = lambda v: {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v))} if v else None  # noqa: E731
    return {
        "precision": low,
        "weights": options.weights,
        "images": len(options.agreement_images),
        "instances": counts,
        "matched_fraction_of_fp32": counts["matched"] / counts["fp32"] if counts["fp32"] else None,
        "matched_mask_iou": summary(ious),
        "matched_score_abs_diff": summary(score_diffs),
        "confident_threshold": CONFIDENT,
        "confident_fp32_instances": len(confident_ious),
        "confident_matched_fraction": (sum(v > 0 for v in confident_ious) / len(confident_ious)
                                       if confident_ious else None),
        "confident_mask_iou": summary(confident_ious),
    }


# ----------------------------------------------------------------------------- entry points


def run_benchmark(options: BenchmarkOptions, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """All sections for ``options``; a JSON-ready dict (see ``format_report``)."""
    if options.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {options.precision!r}")
    threads = torch.get_num_threads()
    if options.threads > 0:
        torch.set_num_threads(options.threads)
    try:
        return _run_benchmark(options, log)
    finally:
        torch.set_num_threads(threads)


def _run_benchmark(options: BenchmarkOptions, log: Callable[[str], None]) -> dict[str, Any]:
    device = torch.device(options.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available")
    cfg, state_dict = load_setup(options)
    agreement_cfg = copy.deepcopy(cfg)  # the model's own test scale, for real images
    # Images are made at sizes that the test-time resize maps to exactly the benchmark size.
    cfg.input.test_scale = [max(options.height, options.width), min(options.height, options.width)]
    divisor = cfg.input.size_divisor
    if options.height % divisor or options.width % divisor:
        raise ValueError(f"input size {options.height}x{options.width} must be a multiple of {divisor}")
    rng = np.random.default_rng(options.seed)
    generator = torch.Generator().manual_seed(options.seed)
    clock = Clock(device)
    result: dict[str, Any] = {"options": asdict(options), "machine": machine_info(device),
                              "config": cfg.name}

    # The faster layout of the reference convolution is the floor (the stricter one).
    floors = [FloorConvolution(options.height, options.width, device, options.precision, cl) for cl in (False, True)]
    samples: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(max(3, options.warmup + 2)):
        for k, floor in enumerate(floors):
            samples[k].append(clock.time(floor)[0])
    best = min(samples, key=lambda k: statistics.median(samples[k]))
    floor = floors[best]
    rounds = Rounds(clock, floor)

    unknown = set(options.sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    model, network = build_models(cfg, state_dict, options, device)
    if "inference" in options.sections:
        log("inference, batch 1")
        inference = {"batch_1": inference_section(cfg, network, options, device, 1, rounds, rng, generator)}
        if options.batch > 1:
            log(f"inference, batch {options.batch}")
            inference[f"batch_{options.batch}"] = inference_section(
                cfg, network, options, device, options.batch, rounds, rng, generator)
        result["inference"] = inference
    if "training" in options.sections:
        log(f"training step, {options.train_images} images x {options.instances} instances")
        result["training"] = training_section(cfg, options, device, rounds, rng)
    if "variants" in options.sections:
        log("network variants")
        result["variants"] = variants_section(cfg, model, options, device, rounds)
    if "agreement" in options.sections:
        if not options.agreement_images or not options.weights:
            raise ValueError("the agreement section needs trained weights and images to compare on")
        log("bf16/fp16 agreement")
        result["agreement"] = agreement_section(agreement_cfg, model, options, device)
    throughputs = rounds.all_throughputs() or [floor.flops / t for t in samples[best]]
    result["floor"] = {
        "convolution": floor.describe(),
        "precision": options.precision,
        "gflops": floor.flops / 1e9,
        "throughput_gflops_per_s": {"median": statistics.median(throughputs) / 1e9,
                                    "max": max(throughputs) / 1e9, "min": min(throughputs) / 1e9},
        "ms": floor.flops / statistics.median(throughputs) * 1e3,
    }
    result["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return result


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:5.2f}x"


def format_report(result: dict[str, Any]) -> str:
    """The benchmark's figures as text tables."""
    o, m, f = result["options"], result["machine"], result["floor"]
    lines = [
        f"solov2 benchmark: {result['config']} {o['height']}x{o['width']} {o['precision']} on {m['device']} "
        f"({m['cpu']}, {m['torch_threads']} threads, torch {m['torch']})",
        f"load average at start {m['load_average_at_start']}, at end {m['load_average_at_end']}",
        f"floor: {f['convolution']} reaches {f['throughput_gflops_per_s']['median']:.1f} GFLOP/s "
        f"(median; min {f['throughput_gflops_per_s']['min']:.1f}, max {f['throughput_gflops_per_s']['max']:.1f}); "
        "ratios use the throughput measured right before each item; 'best' is the lowest per-round ratio",
        f"median of {o['repeats']} rounds after {o['warmup']} warm-up; fold_bn={o['fold_bn']} "
        f"channels_last={o['channels_last']}",
    ]
    for key, inf in result.get("inference", {}).items():
        lines += ["", f"inference {key.replace('_', ' ')} (original {inf['original_size'][0]}x{inf['original_size'][1]}, "
                      f"{inf['postprocess_load']['candidates_above_score_thr']} candidates/image, "
                      f"{inf['postprocess_load']['masks']} masks, "
                      f"{inf['postprocess_load']['instances_returned']} returned)",
                  f"  {'stage':<16}{'ms':>10}{'ms/image':>10}{'min ms':>10}{'GFLOP':>9}{'vs floor':>10}{'best':>8}"]
        for name, s in inf["stages"].items():
            lines.append(f"  {name:<16}{s['ms']:>10.1f}{s['ms_per_image']:>10.1f}{s['min_ms']:>10.1f}"
                         f"{s['gflops']:>9.2f}{_fmt_ratio(s['ratio_to_floor']):>10}"
                         f"{_fmt_ratio(s['best_round_ratio']):>8}")
        mem = inf["peak_memory"]
        lines += [
            f"  latency (preprocess + network + postprocess) {inf['latency_ms']:.1f} ms "
            f"({inf['latency_ms_per_image']:.1f} ms/image); network floor {inf['network_floor_ms']:.1f} ms; "
            f"network {_fmt_ratio(inf['network_ratio_to_floor']).strip()} floor "
            f"(best round {_fmt_ratio(inf['network_best_round_ratio']).strip()})",
            f"  post-processing share of latency {100 * inf['postprocess_share']:.1f}%",
        ]
        if mem:
            lines.append(f"  peak memory ({mem['kind']}) {mem['peak_mib']:.0f} MiB (+{mem['increase_mib']:.0f} MiB)")
    if "training" in result:
        t = result["training"]
        lines += ["", f"training step ({t['images']} images x {t['instances_per_image']} instances, "
                      f"{t['positive_pairs']} positive pairs)",
                  f"  {'stage':<16}{'ms':>10}{'min ms':>10}{'GFLOP':>9}{'vs floor':>10}{'best':>8}"]
        for name, s in t["stages"].items():
            lines.append(f"  {name:<16}{s['ms']:>10.1f}{s['min_ms']:>10.1f}{s['gflops']:>9.2f}"
                         f"{_fmt_ratio(s['ratio_to_floor']):>10}{_fmt_ratio(s['best_round_ratio']):>8}")
        mem = t["peak_memory"]
        lines += [
            f"  step (targets + forward + loss + backward + optimizer) {t['step_ms']:.1f} ms; "
            f"data {t['data_ms_outside_step']:.1f} ms (in loader workers during training)",
            f"  compute (forward + loss + backward + optimizer) {t['compute_ms']:.1f} ms, floor "
            f"{t['compute_floor_ms']:.1f} ms: {_fmt_ratio(t['compute_ratio_to_floor']).strip()} "
            f"(best round {_fmt_ratio(t['compute_best_round_ratio']).strip()})",
            f"  targets share of the step {100 * t['targets_share']:.1f}%",
        ]
        if mem:
            lines.append(f"  peak memory ({mem['kind']}) {mem['peak_mib']:.0f} MiB (+{mem['increase_mib']:.0f} MiB)")
    if "variants" in result:
        lines += ["", "network variants, batch 1 (interleaved in the same rounds)",
                  f"  {'variant':<32}{'ms':>10}{'min ms':>10}{'speedup':>9}{'vs floor':>10}{'best':>8}"]
        for name, v in result["variants"]["variants"].items():
            lines.append(f"  {name:<32}{v['ms']:>10.1f}{v['min_ms']:>10.1f}{v['median_round_speedup']:>8.2f}x"
                         f"{_fmt_ratio(v['ratio_to_floor']):>10}{_fmt_ratio(v['best_round_ratio']):>8}")
        if "compile_seconds" in result["variants"]:
            lines.append(f"  torch.compile took {result['variants']['compile_seconds']:.0f} s")
    if "agreement" in result:
        a = result["agreement"]
        lines += ["", f"{a['precision']} vs fp32 on {a['images']} images ({a['weights']}): instances {a['instances']}"]
        if a["matched_mask_iou"]:
            lines.append(f"  matched {100 * a['matched_fraction_of_fp32']:.1f}% of fp32's; mask IoU mean "
                         f"{a['matched_mask_iou']['mean']:.4f} min {a['matched_mask_iou']['min']:.4f}; "
                         f"|score diff| mean {a['matched_score_abs_diff']['mean']:.4f} "
                         f"max {a['matched_score_abs_diff']['max']:.4f}")
        if a["confident_mask_iou"]:
            lines.append(f"  fp32 instances scored >= {a['confident_threshold']}: {a['confident_fp32_instances']}, "
                         f"{100 * a['confident_matched_fraction']:.1f}% matched; mask IoU (0 if unmatched) mean "
                         f"{a['confident_mask_iou']['mean']:.4f} min {a['confident_mask_iou']['min']:.4f}")
    return "\n".join(lines)
