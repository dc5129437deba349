"""Deformable convolution vs a plain convolution of the same shape, timed in one interleaved run.

Usage:
    python benchmarks/bench_deform_conv.py                 # layer: 256 ch, 3x3, 100x152, 1 thread
    python benchmarks/bench_deform_conv.py --train-step    # also r101_dcn_3x vs r101_3x training step

Prints the median time of each and their ratio. The layer comparison (the function of
``solov2 benchmark --only dcn``, ``solov2.benchmark.deform.layer_figures``) runs the deformable
conv with random offsets and masks (v2) and with offsets only (v1) against ``F.conv2d``; the
training-step comparison runs forward + backward + SGD step of both presets on the same
random batch at a small input size.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from solov2.model import deform_conv


def _median_interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_layer(channels: int, height: int, width: int, repeats: int) -> None:
    """The forward comparison of ``solov2 benchmark``'s dcn section, at this shape."""
    from solov2.benchmark.deform import layer_figures

    figures = layer_figures(1, channels, height, width, torch.device("cpu"), "fp32", repeats, warmup=1)
    print(f"layer {channels} ch, 3x3, {height}x{width}, {torch.get_num_threads()} thread(s), "
          f"backend {figures['backend']}, median of {repeats}:")
    for name, s in figures["layers"].items():
        print(f"  {name:10s} {s['ms']:8.1f} ms   ratio to conv2d {s['ratio_to_conv2d']:.2f}")


def bench_layer_training(channels: int, height: int, width: int, repeats: int) -> None:
    """Forward + backward of one layer (input, weight, offsets and mask all need gradients)."""
    torch.manual_seed(0)
    x = torch.randn(1, channels, height, width, requires_grad=True)
    weight = (torch.randn(channels, channels, 3, 3) * 0.02).requires_grad_(True)
    offset = torch.randn(1, 18, height, width, requires_grad=True)
    mask = torch.rand(1, 9, height, width).requires_grad_(True)

    def plain() -> None:
        F.conv2d(x, weight, padding=1).sum().backward()

    def deform() -> None:
        deform_conv.deform_conv2d(x, offset, weight, padding=1, mask=mask).sum().backward()

    times = _median_interleaved({"conv2d": plain, "deform v2": deform}, repeats)
    print(f"layer forward + backward, same shape, median of {repeats}:")
    for name, t in times.items():
        print(f"  {name:10s} {t * 1000:8.1f} ms   ratio to conv2d {t / times['conv2d']:.2f}")


def bench_train_step(size: int, steps: int) -> None:
    from solov2.config import load_config
    from solov2.model import SOLOv2

    torch.manual_seed(0)
    images = torch.randn(1, 3, size, size)

    def make(preset: str) -> Callable[[], object]:
        cfg = load_config(preset)
        model = SOLOv2(cfg.model).train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)

        def step() -> None:
            out = model(images)
            loss = sum(c.float().mean() for c in out.category_logits) + sum(
                k.float().pow(2).mean() for k in out.kernels) + out.mask_features.float().pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return step

    times = _median_interleaved({"r101_3x": make("r101_3x"), "r101_dcn_3x": make("r101_dcn_3x")}, steps)
    print(f"training step (forward, backward, SGD) at {size}x{size}, batch 1, "
          f"{torch.get_num_threads()} thread(s), median of {steps}:")
    for name, t in times.items():
        print(f"  {name:12s} {t * 1000:8.1f} ms   ratio to r101_3x {t / times['r101_3x']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--height", type=int, default=100)
    parser.add_argument("--width", type=int, default=152)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-step", action="store_true", help="also time r101_dcn_3x vs r101_3x training steps")
    parser.add_argument("--train-size", type=int, default=256, help="square input size of the training step")
    parser.add_argument("--train-steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bench_layer(args.channels, args.height, args.width, args.repeats)
    bench_layer_training(args.channels, args.height, args.width, max(3, args.repeats // 2))
    if args.train_step:
        bench_train_step(args.train_size, args.train_steps)


if __name__ == "__main__":
    main()
