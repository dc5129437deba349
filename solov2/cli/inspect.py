"""``solov2 inspect``: check a COCO-format training set against a preset before training."""

from __future__ import annotations

import argparse

from .common import add_config_arguments, add_exist_ok, config_or_exit, fail, formatter, run_dir

EPILOG = """\
examples:
  solov2 inspect --config light_448_r18 --ann train.json --images train/ --out runs/inspect
  solov2 inspect --config my.yaml --ann train.json --images train/ "model.scale_ranges=[[1, 64], [32, 128], \\
      [64, 256], [128, 512], [256, 2048]]"            # try a scale-range override before training
  solov2 inspect --config r50_3x --ann train.json --images train/ --all-scales --read-images

It reads the annotations the way `solov2 train` does (same data check), puts every instance
through the training resize at the preset's input.train_scales and the grid assignment of the
training targets (masks rasterised at 1/4 resolution; no image is read unless --read-images),
prints a summary with a verdict (findings that most likely hurt training, each with the config
key or data change that fixes it) and writes into --out: report.json, sizes.png, levels.png,
cells.png, classes.png (matplotlib: pip install 'solov2[inspect]') and report.html.
See docs/training.md, "When the model predicts nothing".
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect", help="check a dataset against a preset: sizes, grid assignment, verdict",
        description="Inspect a COCO-format training set: statistics, object sizes against the scale "
                    "ranges, grid assignment, mask quality, and a verdict with fixes.",
        epilog=EPILOG, formatter_class=formatter,
    )
    add_config_arguments(parser, required=True)
    parser.add_argument("--ann", required=True, help="COCO-format annotation file (train.json)")
    parser.add_argument("--images", required=True, help="folder the file_name entries are relative to")
    parser.add_argument("--out", default="runs/inspect", help="output folder (default: %(default)s; runs/inspect2, "
                                                               "... when it holds an earlier report)")
    add_exist_ok(parser)
    parser.add_argument("--all-scales", action="store_true",
                        help="grid assignment at every training scale (default: the smallest and the largest)")
    parser.add_argument("--read-images", action="store_true",
                        help="also decode every image: unreadable files, sizes that differ from the annotations")
    parser.add_argument("--no-plots", action="store_true", help="no PNGs (report.json and report.html only)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.coco import DatasetError
    from ..diagnostics.inspection import inspect_dataset
    from ..diagnostics.plots import MissingMatplotlib

    cfg = config_or_exit(args.config, args.overrides)
    out = run_dir(args.out, args.exist_ok)
    try:
        result = inspect_dataset(cfg, args.ann, args.images, out, read_images=args.read_images,
                                 all_scales=args.all_scales, plots=not args.no_plots, progress=not args.quiet)
    except (DatasetError, MissingMatplotlib) as err:
        return fail(str(err))
    except OSError as err:
        return fail(f"cannot write the report to {out}: {err}")
    print("\n".join(result.summary))
    print(f"report: {', '.join(str(p) for p in result.files)} ({result.report['seconds']} s)")
    return 0
