"""``solov2 eval``: COCO mask AP (and box AP from the masks) of a model on a COCO-format set."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..checkpoint import CheckpointError
from ..config import ConfigError
from .common import EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, add_config_arguments, add_exist_ok, fail, formatter, run_dir

DEFAULT_OUT = "runs/eval"

EXAMPLES = """examples:
  solov2 eval --config light_448_r18 --weights SOLOv2_LIGHT_448_R18_3x.pth \\
      --ann coco/annotations/instances_val2017.json --images coco/val2017 --out runs/eval
  solov2 eval --weights runs/exp1/final.pth --ann val.json --images val/    # own checkpoint: no --config
  solov2 eval --weights w.pth --config r50_3x --ann val.json --images val/ --device cuda test.score_thr=0.05
  torchrun --nproc_per_node 4 -m solov2 eval --weights w.pth --config light_448_r18 \\
      --ann val.json --images val/ --device cuda       # images split over 4 GPUs, same numbers
  solov2 eval --results runs/eval/results.json --ann val.json   # score saved predictions again
  solov2 eval --backend openvino --weights model.int8.onnx --ann val.json --images val/ \\
      --compare-to runs/eval/metrics.json                         # INT8 AP drift against fp32

outputs in --out: results.json (COCO result records: image_id, category_id = the dataset's
own id, score, bbox [x, y, w, h] of the mask, segmentation as RLE) and metrics.json (mask_AP,
mask_AP50, mask_AP75, mask_APs/m/l, mask_AR*, the same for box_, per_class, images_per_second,
failed_images, skipped_annotations). metrics.json keeps fractions (0..1) as pycocotools computes
them; the printed tables show percentages, as papers do. Unreadable images are reported one line
each and counted as images without detections (exit code 1). Ground truth that cannot be rasterised (empty or
degenerate polygons, masks outside the image, malformed RLE) is left out as training leaves it
out, and counted. results.json is written before scoring, so a scoring failure keeps the
predictions; --results scores them again. Ctrl-C while predicting (one process) writes
results.json for the images done (the first N by id), exits 130 and prints the --results
command that scores them. When --out holds an earlier run, eval writes to OUT2 (OUT3, ...)
unless --exist-ok.
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
    parser.add_argument("--backend", default="pytorch", choices=["pytorch", "onnxruntime", "openvino"],
                        help="pytorch (a checkpoint), or an exported .onnx (fp32 or INT8) in ONNX Runtime or "
                             "OpenVINO (default: %(default)s)")
    parser.add_argument("--compare-to", metavar="METRICS_JSON",
                        help="an earlier evaluation's metrics.json (e.g. the fp32 model's): print the AP drift")
    parser.add_argument("--all-classes", action="store_true", help="list classes without ground truth too")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.image_io import ImageReadError
    from ..engine.distributed import cleanup, init_distributed
    from ..engine.evaluate import CategoryMatchError, EvaluationInterrupted, evaluate_predictor
    from ..evaluation.coco_eval import AnnotationError, format_metrics, format_per_class
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
        reference = _reference_metrics(args.compare_to)
        predictor = _build_predictor(args, ctx.device)
        metrics = evaluate_predictor(
            predictor, predictor.cfg, args.ann, args.images, out_dir=out, progress=not args.quiet,
            batch_size=args.batch_size, max_images=args.max_images, distributed=ctx.distributed,
        )
    except EvaluationInterrupted as stop:
        if ctx.is_main:
            print(interrupted_line(stop, args.ann), file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ConfigError, CheckpointError, AnnotationError, CategoryMatchError, ImageReadError, OutputDirError,
            ScoringError, FileNotFoundError, ValueError, RuntimeError) as err:
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
    if reference is not None:
        print(drift_line(metrics, reference, args.compare_to))
    if metrics["failed_images"]:
        print(f"\n{len(metrics['failed_images'])} images could not be read (counted with no detections); "
              f"see metrics.json", file=sys.stderr)
    print(f"\nresults: {metrics['results_file']}\nmetrics: {metrics['metrics_file']}")
    return EXIT_PARTIAL if metrics["failed_images"] else EXIT_OK


def interrupted_line(stop, ann: str) -> str:
    """What an evaluation stopped by Ctrl-C kept, and the command that scores it."""
    line = str(stop)
    if stop.results_file is not None and stop.shard.done:
        line += (f"; {stop.results_file} holds the predictions of those images; score them with: "
                 f"solov2 eval --results {shlex.quote(str(stop.results_file))} --ann {shlex.quote(ann)} "
                 f"--max-images {stop.shard.done}")
    return line


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


def _build_predictor(args: argparse.Namespace, device):
    """The PyTorch ``Predictor``, or an exported model's predictor for --backend."""
    from ..engine.predictor import Predictor

    if args.backend == "pytorch":
        return Predictor.from_config(args.config, args.weights, device=device, overrides=args.overrides,
                                     precision=args.precision, batch_size=args.batch_size)
    if args.precision != "fp32":
        raise ConfigError(f"--backend {args.backend} runs the .onnx in its own precision (fp32 or INT8): "
                          "drop --precision")
    if args.config:
        raise ConfigError(f"--backend {args.backend} reads the config from the .onnx: drop --config")
    if args.backend == "openvino":
        from ..export.openvino_backend import OpenVinoPredictor

        return OpenVinoPredictor(args.weights, overrides=args.overrides, batch_size=args.batch_size)
    from ..export.onnx_runtime import OnnxPredictor

    providers = ["CPUExecutionProvider"] if device.type == "cpu" else None
    return OnnxPredictor(args.weights, overrides=args.overrides, batch_size=args.batch_size, providers=providers)


def _reference_metrics(path: str | None) -> dict | None:
    """The metrics.json of an earlier evaluation to compare with (--compare-to)."""
    if path is None:
        return None
    import json

    try:
        metrics = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable metrics.json ({err})") from err
    if not isinstance(metrics, dict) or "mask_AP" not in metrics:
        raise ValueError(f"{path}: no mask_AP inside (a metrics.json written by solov2 eval is expected)")
    return metrics


def drift_line(metrics: dict, reference: dict, source: str) -> str:
    """Mask and box AP, AP50 and AP75 against the reference, in points (percent)."""
    parts = [f"{kind} {name} {100 * (metrics[key] - reference[key]):+.2f}"
             for kind in ("mask", "box") for name in ("AP", "AP50", "AP75")
             if (key := f"{kind}_{name}") in metrics and key in reference]
    return f"drift against {source} (points): " + ", ".join(parts)
