"""``solov2 benchmark``: inference and training speed against a floor measured in the same run."""

from __future__ import annotations

import argparse

from ..checkpoint import CheckpointError
from ..config import ConfigError
from ..atomic import write_json_atomic
from .common import add_config_arguments, fail, formatter, output_file_problem

EXAMPLES = """examples:
  solov2 benchmark --config light_448_r18 --size 448x672 --json runs/bench/r18.json
  solov2 benchmark --config light_448_r18 --compare --compile          # + network variants
  solov2 benchmark --precision bf16 --no-train                          # bf16 autocast (CPU)
  solov2 benchmark --device cuda --precision fp16 --batch 8
  solov2 benchmark --weights runs/demo/train/final.pth --config demo_shapes \\
      --agreement-images runs/demo/data/val/*.png                        # bf16/fp16 vs fp32
  solov2 benchmark --config light_448_r18 --threads 1 --only backends \\
      --backends pytorch,onnxruntime,openvino,onnxruntime-int8,openvino-int8
  solov2 benchmark --only dcn --threads 1     # deformable conv v2/v1 vs conv2d, H/4 x W/4 of --size

Every time is the median over --repeats rounds after --warmup. The floor is the network's
FLOPs divided by the throughput of a large 3x3 convolution (256 channels, H/4 x W/4) in the
same precision, measured right before each timed item; 'vs floor' is the median per-round
ratio. Post-processing is timed with --candidates pairs above the score threshold per
image, whose masks are compact blobs (--postprocess-load noise: the worst case); the
training step at 2 images x --instances instances. The dcn section (--only dcn) times the
deformable convolution v2 and v1 against F.conv2d of the same shape (256 channels, 3x3, the
H/4 x W/4 map of --size), forward, interleaved in the same rounds, and prints their ratios.
"""


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"size must be HEIGHTxWIDTH, e.g. 448x672, got {text!r}") from err
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f"size must be at least 32x32 (multiples of 32), got {text!r}")
    return h, w


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "benchmark", help="measure inference and training speed", description=__doc__,
        epilog=EXAMPLES, formatter_class=formatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--size", type=parse_size, default=(448, 672),
                        help="network input HEIGHTxWIDTH, multiples of 32 (default: 448x672)")
    parser.add_argument("--batch", type=int, default=4, help="batch N besides batch 1 (default: %(default)s)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:1 (default: %(default)s: cuda "
                                                         "when available)")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default: %(default)s)")
    parser.add_argument("--candidates", type=int, default=500,
                        help="post-processing load: pairs above the score threshold per image (default: %(default)s)")
    parser.add_argument("--postprocess-load", default="blobs", choices=["blobs", "noise"],
                        help="the candidates' masks: compact blobs of COCO-like sizes, or noise over the whole "
                             "image (the worst case for the final resize) (default: %(default)s)")
    parser.add_argument("--instances", type=int, default=30,
                        help="instances per training image (default: %(default)s)")
    parser.add_argument("--no-train", action="store_true", help="skip the training step")
    parser.add_argument("--only", nargs="+", choices=["inference", "training", "variants", "agreement", "backends", "dcn"],
                        help="run only these sections (default: inference, training, + variants with "
                             "--compare, + agreement with --agreement-images)")
    parser.add_argument("--no-fold-bn", action="store_true", help="keep BatchNorm separate at inference")
    parser.add_argument("--no-channels-last", action="store_true", help="keep the inference network in NCHW")
    parser.add_argument("--compare", action="store_true",
                        help="also time the network's variants: eager, folded BN, channels-last, bf16/fp16")
    parser.add_argument("--compile", action="store_true", help="add torch.compile to the variants (slow to build)")
    parser.add_argument("--weights", help="trained weights (used throughout and for the agreement check)")
    parser.add_argument("--agreement-images", nargs="+", default=[], metavar="IMAGE",
                        help="images on which to compare bf16 (CPU) / fp16 (CUDA) with fp32")
    parser.add_argument("--backends", type=lambda t: [b for b in t.split(",") if b], default=[],
                        metavar="LIST", help="time these backends side by side (comma-separated: pytorch, "
                        "onnxruntime, openvino, onnxruntime-int8, openvino-int8)")
    parser.add_argument("--calibration-images", metavar="DIR",
                        help="INT8 calibration folder for --backends (default: the agreement images)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..benchmark import BenchmarkOptions, format_report, run_benchmark

    if args.batch < 1 or args.repeats < 1 or args.warmup < 0:
        return fail("--batch and --repeats must be at least 1, --warmup at least 0")
    problem = output_file_problem(args.json) if args.json else None
    if problem:
        return fail(problem)
    if args.agreement_images and not args.weights:
        return fail("--agreement-images needs --weights: agreement is only meaningful for a trained model")
    sections = list(args.only or ["inference"] + ([] if args.no_train else ["training"]))
    if not args.only and (args.compare or args.compile):
        sections.append("variants")
    if not args.only and args.agreement_images:
        sections.append("agreement")
    if not args.only and args.backends:
        sections.append("backends")
    options = BenchmarkOptions(
        config=args.config or (None if args.weights else "light_448_r18"), overrides=list(args.overrides),
        height=args.size[0], width=args.size[1], batch=args.batch, precision=args.precision,
        device=args.device, repeats=args.repeats, warmup=args.warmup, candidates=args.candidates,
        postprocess_load=args.postprocess_load,
        sections=sections, instances=args.instances, fold_bn=not args.no_fold_bn,
        channels_last=not args.no_channels_last, compile=args.compile,
        weights=args.weights, agreement_images=list(args.agreement_images), threads=args.threads,
        backends=args.backends, calibration_images=args.calibration_images,
    )
    try:
        result = run_benchmark(options, log=lambda message: print(f"... {message}", flush=True))
    except (CheckpointError, ConfigError, ValueError, RuntimeError, NotImplementedError) as err:
        return fail(str(err))
    print(format_report(result))
    if args.json:
        write_json_atomic(result, args.json, indent=2)
        print(f"figures written to {args.json}")
    return 0
