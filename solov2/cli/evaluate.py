"""``solov2 eval``: COCO mask AP (and box AP from the masks) of a model on a COCO-format set."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..checkpoint import CheckpointError
from ..config import ConfigError
from .common import add_config_arguments, add_exist_ok, fail, formatter, run_dir

DEFAULT_OUT = "runs/eval"

EXAMPLES = """examples:
  solov2 eval --config light_448_r18 --weights SOLOv2_LIGHT_448_R18_3x.pth \\
      --ann coco/annotations/instances_val2017.json --images coco/val2017 --out runs/eval
  solov2 eval --weights runs/exp1/final.pth --ann val.json --images val/    # own checkpoint: no --config
  solov2 eval --weights w.pth --config r50_3x --ann val.json --images val/ --device cuda test.score_thr=0.05
  torchrun --nproc_per_node 4 -m solov2 eval --weights w.pth --config light_448_r18 \\
      --ann val.json --images val/ --device cuda       # images split over 4 GPUs, same numbers
  solov2 eval --results runs/eval/results.json --ann val.json   # score saved predictions again

outputs in --out: results.json (COCO result records: image_id, category_id = the dataset's
own id, score, bbox [x, y, w, h] of the mask, segmentation as RLE) and metrics.json (mask_AP,
mask_AP50, mask_AP75, mask_APs/m/l, mask_AR*, the same for box_, per_class, images_per_second,
failed_images, skipped_annotations). metrics.json keeps fractions (0..1) as pycocotools computes
them; the printed tables show percentages, as papers do. Unreadable images are reported one line
each and counted as images without detections. Ground truth that cannot be rasterised (empty or
degenerate polygons, masks outside the image, malformed RLE) is left out as training leaves it
out, and counted. results.json is written before scoring, so a scoring failure keeps the
predictions; --results scores them again. When --out holds an earlier run, eval writes to
OUT2 (OUT3, ...) unless --exist-ok.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="COCO mask/box AP of a model on a COCO-format dataset", description=__doc__,
        epilog=EXAMPLES, formatter_class=formatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--weights", help="checkpoint (any supported format)")
    parser.add_argument("--results", help="score this results.json (written by an earlier eval) instead of "
                                          "predicting: no --weights, --images or --config needed")
    parser.add_argument("--ann", required=True, help="COCO instances annotation file (JSON)")
    parser.add_argument("--images", help="folder the annotation's file_name entries are relative to")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help="output folder (default: %(default)s; with --results, the results file's folder)")
    add_exist_ok(parser)
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda, cuda:1 (default: %(default)s: cuda when available; under torchrun "
                             "each process takes its LOCAL_RANK's GPU)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="inference precision (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default: %(default)s)")
    parser.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images (by id)")
    parser.add_argument("--all-classes", action="store_true", help="list classes without ground truth too")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.image_io import ImageReadError
    from ..engine.distributed import cleanup, init_distributed
    from ..engine.evaluate import CategoryMatchError, evaluate_dataset
    from ..engine.predictor import Predictor
    from ..evaluation.coco_eval import AnnotationError, format_metrics, format_per_class
    from ..model.solov2 import ModelConfigError

    from ..evaluation.scoring import OutputDirError, ScoringError

    if args.results:
        return _rescore(args)
    if not args.weights or not args.images:
        return fail("--weights and --images are needed to evaluate a model (or --results to score saved "
                    "predictions)")
    if args.batch_size < 1:
        return fail("--batch-size must be at least 1")
    if args.max_images is not None and args.max_images < 1:
        return fail("--max-images must be at least 1")
    try:
        ctx = init_distributed(args.device)
    except RuntimeError as err:
        return fail(str(err))
    out = run_dir(args.out, args.exist_ok)
    try:
        predictor = Predictor.from_config(args.config, args.weights, device=ctx.device,
                                          overrides=args.overrides, precision=args.precision)
        metrics = evaluate_dataset(
            predictor.model, predictor.cfg, args.ann, args.images, out_dir=out, device=ctx.device,
            progress=not args.quiet, batch_size=args.batch_size, max_images=args.max_images,
            distributed=ctx.distributed, precision=args.precision,
        )
    except (ConfigError, CheckpointError, AnnotationError, CategoryMatchError, ImageReadError, OutputDirError,
            ScoringError, ModelConfigError, FileNotFoundError, ValueError) as err:
        return fail(str(err))
    finally:
        cleanup(ctx)
    if not ctx.is_main:
        return 0
    print(f"{metrics['images']} images, {metrics['detections']} detections, "
          f"{metrics['images_per_second']:.2f} images/s ({metrics['processes']} process"
          f"{'es' if metrics['processes'] > 1 else ''}, {ctx.device})")
    print()
    print(format_per_class(metrics["per_class"], skip_empty=not args.all_classes))
    print()
    print(format_metrics(metrics))
    if metrics["failed_images"]:
        print(f"\n{len(metrics['failed_images'])} images could not be read (counted with no detections); "
              f"see metrics.json", file=sys.stderr)
    print(f"\nresults: {metrics['results_file']}\nmetrics: {metrics['metrics_file']}")
    return 0


def _rescore(args: argparse.Namespace) -> int:
    from ..evaluation.coco_eval import AnnotationError, format_metrics, format_per_class
    from ..evaluation.scoring import OutputDirError, ScoringError, rescore

    if args.weights or args.images:
        return fail("--results scores saved predictions: drop --weights and --images")
    if args.max_images is not None and args.max_images < 1:
        return fail("--max-images must be at least 1")
    out = None if args.out == DEFAULT_OUT else args.out
    try:
        metrics = rescore(args.ann, args.results, out_dir=out or str(Path(args.results).parent),
                          max_images=args.max_images, progress=not args.quiet)
    except (AnnotationError, OutputDirError, ScoringError, ValueError) as err:
        return fail(str(err))
    print(f"{metrics['images_total']} images, {metrics['detections']} detections (scored from {args.results})")
    print()
    print(format_per_class(metrics["per_class"], skip_empty=not args.all_classes))
    print()
    print(format_metrics(metrics))
    print(f"\nmetrics: {metrics['metrics_file']}")
    return 0
