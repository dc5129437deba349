"""Training step (forward, loss, backward, optimizer) in NCHW and in channels-last, interleaved.

    python benchmarks/compare_training_layout.py --threads 1 --repeats 6

Two copies of the same light_448_r18 network, one converted to channels-last, train on the
benchmark's synthetic batch (2 images 448x672, 30 instances each) alternately; prints the
median time of each part (the first round is dropped as warm-up).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solov2.config import load_config  # noqa: E402
from solov2.data.augment import TrainTransform, collate  # noqa: E402
from solov2.benchmark import synthetic_training_images  # noqa: E402
from solov2.engine.trainer import build_optimizer, scaled_lr  # noqa: E402
from solov2.model import SOLOv2  # noqa: E402
from solov2.model.losses import solov2_loss  # noqa: E402
from solov2.model.targets import MASK_STRIDE, build_targets  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = load_config("light_448_r18")
    rng = np.random.default_rng(0)
    samples = synthetic_training_images(2, (480, 720), 30, cfg.model.num_classes, rng)
    transform = TrainTransform([[672, 448]], 0.5, cfg.input.mean, cfg.input.std)
    batch = collate([transform(s.image, s.masks, s.boxes, s.labels, rng) for s in samples])
    size = (batch.images.shape[-2] // MASK_STRIDE, batch.images.shape[-1] // MASK_STRIDE)
    targets = build_targets(batch.boxes, batch.labels, batch.masks, size, cfg.model.grids,
                            cfg.model.scale_ranges, cfg.model.sigma, cfg.model.num_classes)
    torch.manual_seed(0)
    nchw = SOLOv2(cfg.model).train()
    channels_last = copy.deepcopy(nchw).to(memory_format=torch.channels_last).train()
    setups = {
        "NCHW": (nchw, batch.images),
        "channels_last": (channels_last, batch.images.contiguous(memory_format=torch.channels_last)),
    }
    optimizers = {name: build_optimizer(m, cfg.train, scaled_lr(cfg.train, 1)) for name, (m, _) in setups.items()}
    times: dict[str, list[list[float]]] = {name: [] for name in setups}
    for _ in range(args.repeats + 1):
        for name, (model, images) in setups.items():
            marks = [time.perf_counter()]
            outputs = model(images)
            marks.append(time.perf_counter())
            losses = solov2_loss(outputs, targets, cfg.train)
            marks.append(time.perf_counter())
            losses.total.backward()
            marks.append(time.perf_counter())
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.train.grad_clip)
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            marks.append(time.perf_counter())
            times[name].append(list(np.diff(marks)))
    print(f"training step, light_448_r18, 2 x 448x672, 30 instances each, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} interleaved rounds (ms)")
    print(f"  {'layout':<15}{'forward':>9}{'loss':>9}{'backward':>10}{'optimizer':>11}{'total':>9}")
    medians = {}
    for name, values in times.items():
        v = np.asarray(values[1:]) * 1e3
        med = np.median(v, axis=0)
        medians[name] = float(np.median(v.sum(axis=1)))
        print(f"  {name:<15}{med[0]:>9.1f}{med[1]:>9.1f}{med[2]:>10.1f}{med[3]:>11.1f}{medians[name]:>9.1f}")
    print(f"  channels_last / NCHW: {medians['channels_last'] / medians['NCHW']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
