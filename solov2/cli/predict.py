"""``solov2 predict``: instance masks for images, folders, globs and videos."""

from __future__ import annotations

import argparse
import sys

from ..checkpoint import CheckpointError
from ..config import ConfigError
from ..data.sources import collect_sources
from .common import fail, formatter

EXAMPLES = """examples:
  solov2 predict photos/ street.mp4 img.jpg --config light_448_r18 \\
      --weights SOLOv2_LIGHT_448_R18_3x.pth --out runs/predict
  solov2 predict 'shots/**/*.png' --weights runs/exp1/final.pth      # own checkpoint: no --config
  solov2 predict clip.mp4 --weights w.pth --config r50_3x --frame-stride 5 --device cuda
  solov2 predict img.jpg --weights w.pth --config light_448_r18 test.score_thr=0.3 --save-masks
  solov2 predict img.jpg --backend onnxruntime --weights model.onnx
  solov2 predict photos/ --backend openvino --weights model.int8.onnx   # fp32 or INT8 .onnx

outputs in --out: one overlay per image (same folder structure), an annotated .mp4 per video,
results.json (COCO-style records with RLE masks; video records carry a "frame" index) and,
with --save-masks, one PNG per instance under masks/.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="segment images, folders and videos", description=__doc__,
        epilog=EXAMPLES, formatter_class=formatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders (searched recursively), glob patterns, video files; "
                             "KEY=VALUE items are config overrides")
    parser.add_argument("--config", help="preset name or YAML file (optional for solov2 checkpoints)")
    parser.add_argument("--weights", help="checkpoint (any supported format) or, with --backend onnxruntime/openvino, a .onnx file")
    parser.add_argument("--out", default="runs/predict", help="output folder (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default: %(default)s)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="inference precision (bf16 on CPU, fp16 on CUDA; default: %(default)s)")
    parser.add_argument("--backend", default="pytorch", choices=["pytorch", "onnxruntime", "openvino"])
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default: %(default)s)")
    parser.add_argument("--frame-stride", type=int, default=1, help="process every N-th video frame")
    parser.add_argument("--save-masks", action="store_true", help="also write one PNG per instance")
    parser.add_argument("--no-overlays", action="store_true", help="write results.json only")
    parser.add_argument("--show-thr", type=float, default=0.3,
                        help="draw instances scored at least this in overlays and videos; results.json "
                             "keeps all that pass test.score_thr (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run, overrides=[])


def build_predictor(args: argparse.Namespace, overrides: list[str]):
    if args.backend == "openvino":  # openvino: fp32 or INT8 .onnx in OpenVINO (CPU)
        from ..export.openvino_backend import OpenVinoPredictor

        if not args.weights:
            raise ConfigError("--backend openvino needs --weights MODEL.onnx")
        return OpenVinoPredictor(args.weights, overrides=overrides, batch_size=args.batch_size)
    if args.backend == "onnxruntime":
        from ..export.onnx_runtime import OnnxPredictor

        if not args.weights:
            raise ConfigError("--backend onnxruntime needs --weights MODEL.onnx")
        return OnnxPredictor(args.weights, overrides=overrides, batch_size=args.batch_size)
    from ..engine.predictor import Predictor

    return Predictor.from_config(args.config, args.weights, device=args.device, overrides=overrides,
                                 precision=args.precision, batch_size=args.batch_size)


def run(args: argparse.Namespace) -> int:
    from ..engine.predict_files import predict_files

    overrides = args.overrides + [item for item in args.inputs if "=" in item]
    inputs = [item for item in args.inputs if "=" not in item]
    if args.frame_stride < 1 or args.batch_size < 1:
        return fail("--frame-stride and --batch-size must be at least 1")
    sources, problems = collect_sources(inputs)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not sources:
        return fail("nothing to predict: no readable image or video among the inputs")
    try:
        predictor = build_predictor(args, overrides)
    except (CheckpointError, ConfigError, RuntimeError, ValueError) as err:
        return fail(str(err))
    summary = predict_files(predictor, sources, args.out, save_masks=args.save_masks,
                            save_overlays=not args.no_overlays, frame_stride=args.frame_stride,
                            batch_size=args.batch_size, show_thr=args.show_thr, progress=not args.quiet)
    failures = problems + summary.failures
    print(f"predicted {summary.images} images and {summary.frames} frames of {summary.videos} videos: "
          f"{summary.instances} instances")
    print(f"results: {summary.results_file}")
    if not args.no_overlays:
        print(f"overlays: {summary.out_dir}")
    if failures:
        print(f"{len(failures)} input(s) failed:", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    return 0
