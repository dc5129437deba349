"""``solov2 demo``: generate synthetic shapes, train a small SOLOv2 from scratch, evaluate its
mask AP on held-out images and draw the results - the whole product in one command, on a CPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import add_exist_ok, fail, formatter, run_dir

EXAMPLES = """examples:
  solov2 demo --out runs/demo                   # a few minutes on a 2-core laptop
  solov2 demo --out runs/seed3 --seed 3 --train 480 --threads 4
  solov2 demo --out runs/demo-gpu --device cuda train.epochs=24 train.lr_steps=[18,22]

outputs in --out: data/ (the generated dataset), train/ (config, log, final.pth), eval/
(results.json, metrics.json), overlays/ (ground truth left, prediction right) and
summary.txt / summary.json. The same seed, options and thread count give the same result.
When --out holds an earlier run, the demo writes to OUT2 (OUT3, ...) unless --exist-ok.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="train and evaluate a small model on built-in synthetic data", description=__doc__,
        epilog=EXAMPLES, formatter_class=formatter,
    )
    parser.add_argument("--out", default="runs/demo", help="output folder (default: %(default)s)")
    add_exist_ok(parser)
    parser.add_argument("--train", type=int, default=None,
                        help="training images; the schedule is the preset's epochs over them "
                             "(default: the preset's demo size)")
    parser.add_argument("--val", type=int, default=50, help="held-out validation images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:1 (default: %(default)s: cuda "
                                                         "when available)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for PyTorch (default: PyTorch's choice, usually the core count)")
    parser.add_argument("--overlays", type=int, default=12, help="validation images to draw (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of the demo_shapes preset, e.g. train.epochs=24")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..config import ConfigError
    from ..engine.demo import DEFAULT_TRAIN_IMAGES, run_demo

    if args.threads is not None:
        if args.threads < 1:
            return fail("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    train_images = DEFAULT_TRAIN_IMAGES if args.train is None else args.train
    if train_images < 8 or args.val < 1:
        return fail("--train needs at least 8 images and --val at least 1")
    start = time.perf_counter()
    out = run_dir(args.out, args.exist_ok)
    try:
        summary = run_demo(out, train_images=train_images, val_images=args.val, seed=args.seed,
                           device=args.device, overlays=args.overlays, overrides=args.overrides,
                           progress=not args.quiet)
    except ConfigError as err:
        return fail(str(err))
    except RuntimeError as err:  # e.g. CUDA asked for but missing
        return fail(str(err))
    print()
    print(Path(summary.files["summary"]).read_text().rstrip())
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; everything is in {summary.out_dir}")
    return 0
