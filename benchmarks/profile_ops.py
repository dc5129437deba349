"""Where the time goes: torch.profiler tables and the final-upsampling comparison.

    python benchmarks/profile_ops.py network --threads 1                 # forward pass, per operator
    python benchmarks/profile_ops.py network --threads 1 --plain         # without BN folding / channels-last
    python benchmarks/profile_ops.py postprocess --threads 1             # post-processing at 500 candidates
    python benchmarks/profile_ops.py postprocess --threads 1 --load noise # ... on the worst-case load
    python benchmarks/profile_ops.py upsample --threads 1                # NCHW vs channels-last mask resizing
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solov2.config import load_config  # noqa: E402
from solov2.benchmark import POSTPROCESS_LOADS, crafted_outputs  # noqa: E402
from solov2.model import SOLOv2  # noqa: E402
from solov2.model.fuse import optimize_for_inference  # noqa: E402
from solov2.model.postprocess import postprocess  # noqa: E402


def table(prof: profile, rows: int) -> str:
    return prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=32, max_shapes_column_width=48)


def profile_network(args: argparse.Namespace) -> None:
    cfg = load_config(args.config)
    torch.manual_seed(0)
    model = SOLOv2(cfg.model).eval()
    if not args.plain:
        model = optimize_for_inference(model, fold_bn=True, channels_last=True)
    x = torch.randn(1, 3, args.height, args.width)
    with torch.inference_mode():
        for _ in range(2):
            model(x)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            for _ in range(args.repeats):
                model(x)
    print(f"forward x{args.repeats}, {args.config} {args.height}x{args.width}, "
          f"{'plain' if args.plain else 'fold_bn + channels_last'}, {torch.get_num_threads()} threads")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


def profile_postprocess(args: argparse.Namespace) -> None:
    cfg = load_config(args.config)
    h, w = args.height, args.width
    logits, kernels, features, passing = crafted_outputs(cfg, 1, h, w, 500, torch.Generator().manual_seed(0),
                                                         args.load)
    call = (logits, kernels, features, [(h, w)], [(round(h * 15 / 14), round(w * 15 / 14))],
            cfg.model.grids, cfg.model.strides, cfg.test)
    with torch.inference_mode():
        postprocess(*call)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(args.repeats):
                postprocess(*call)
    print(f"postprocess x{args.repeats}, {args.load} load, {passing} candidates, {torch.get_num_threads()} threads")
    print(table(prof, args.rows))


def compare_upsample(args: argparse.Namespace) -> None:
    """The post-processing's final resizes of 100 masks in NCHW (as shipped) and channels-last."""
    h, w = args.height, args.width
    g = torch.Generator().manual_seed(0)
    probs = {
        "random": torch.randn(100, h // 4, w // 4, generator=g).sigmoid(),
        "smooth": F.interpolate(torch.randn(100, 1, h // 32, w // 32, generator=g) * 4, size=(h // 4, w // 4),
                                mode="bilinear").squeeze(1).sigmoid(),
    }

    def resize(p: torch.Tensor, out: tuple[int, int], channels_last: bool) -> torch.Tensor:
        x = p.unsqueeze(0)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        return F.interpolate(x, size=out, mode="bilinear", align_corners=False).squeeze(0) > 0.5

    print(f"final mask resizing of 100 masks {h // 4}x{w // 4} -> {h}x{w} -> original, {torch.get_num_threads()} threads")
    for out in [(round(h * 15 / 14), round(w * 15 / 14)), (640, 960), (427, 640)]:
        for name, p in probs.items():
            a, b = resize(p, out, False), resize(p, out, True)
            print(f"  original {out[0]}x{out[1]}, {name} masks: {int((a != b).sum())} of {a.numel()} pixels differ")
    out = (round(h * 15 / 14), round(w * 15 / 14))
    times: dict[str, list[float]] = {"NCHW": [], "channels_last": []}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for name in times:
                start = time.perf_counter()
                resize(probs["random"], out, name == "channels_last")
                times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        print(f"  {name:>14}: median {statistics.median(values) * 1e3:.1f} ms (resize x2 + threshold, "
              f"original {out[0]}x{out[1]})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["network", "postprocess", "upsample"])
    parser.add_argument("--config", default="light_448_r18")
    parser.add_argument("--height", type=int, default=448)
    parser.add_argument("--width", type=int, default=672)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--plain", action="store_true", help="network: no BN folding, NCHW")
    parser.add_argument("--load", default="blobs", choices=POSTPROCESS_LOADS,
                        help="postprocess: the crafted masks (default: %(default)s)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    {"network": profile_network, "postprocess": profile_postprocess, "upsample": compare_upsample}[args.part](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
