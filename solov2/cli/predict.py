"""``solov2 predict``: instance masks for images, folders, globs and videos."""

from __future__ import annotations

import argparse

from solov2_runtime.cli import OUTPUTS_HELP, add_output_arguments, run_predict
from solov2_runtime.predict_options import check_onnx_model, onnx_providers, shortcut_overrides
from solov2_runtime.settings import SettingsError

from ..checkpoint import CheckpointError
from ..config import ConfigError
from .common import formatter

EXAMPLES = """examples:
  solov2 predict photos/ street.mp4 img.jpg --config light_448_r18 \\
      --weights SOLOv2_LIGHT_448_R18_3x.pth --out runs/predict
  solov2 predict 'shots/**/*.png' --weights runs/exp1/final.pth      # own checkpoint: no --config
  solov2 predict clip.mp4 --weights w.pth --config r50_3x --frame-stride 5 --device cuda
  solov2 predict img.jpg --weights w.pth --config light_448_r18 test.score_thr=0.3 --save-masks
  solov2 predict img.jpg --backend onnxruntime --weights model.onnx   # = solov2-runtime predict
  solov2 predict photos/ --backend openvino --weights model.int8.onnx   # fp32 or INT8 .onnx
  solov2 predict photos/ --weights w.pth --conf 0.3 --max-det 50 --classes person,2 --imgsz 640

""" + OUTPUTS_HELP


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="segment images, folders and videos", description=__doc__,
        epilog=EXAMPLES, formatter_class=formatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders (searched recursively), glob patterns, video files; "
                             "KEY=VALUE items are config overrides")
    parser.add_argument("--config", help="preset name or YAML file (optional for solov2 checkpoints)")
    parser.add_argument("--weights", help="checkpoint (any supported format) or, with --backend onnxruntime/openvino, "
                                          "a .onnx file")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:1 (default: %(default)s: cuda "
                                                         "when available)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="inference precision (bf16 on CPU, fp16 on CUDA; default: %(default)s)")
    parser.add_argument("--backend", default="pytorch", choices=["pytorch", "onnxruntime", "openvino"],
                        help="onnxruntime: an exported .onnx run by solov2-runtime (NumPy post-processing); "
                             "openvino: an fp32 or INT8 .onnx run by OpenVINO on the CPU")
    add_output_arguments(parser)
    parser.set_defaults(func=run, overrides=[])


def build_predictor(args: argparse.Namespace, overrides: list[str]):
    if args.backend == "openvino":  # openvino: fp32 or INT8 .onnx in OpenVINO (CPU)
        from ..export.openvino_backend import OpenVinoPredictor

        if not args.weights:
            raise ConfigError("--backend openvino needs --weights MODEL.onnx")
        check_onnx_model(args.weights)
        if args.precision != "fp32":
            raise ConfigError("--backend openvino runs the .onnx in its own precision (fp32 or INT8): drop --precision")
        if args.device not in ("cpu", "auto"):
            raise ConfigError(f"--backend openvino runs on the CPU: drop --device {args.device}")
        return OpenVinoPredictor(args.weights, overrides=overrides, batch_size=args.batch_size)
    if args.backend == "onnxruntime":
        from solov2_runtime.runtime import Runtime

        if not args.weights:
            raise ConfigError("--backend onnxruntime needs --weights MODEL.onnx")
        check_onnx_model(args.weights)
        providers = onnx_providers(args.device, args.precision)
        return Runtime(args.weights, overrides=overrides, batch_size=args.batch_size, providers=providers)
    from ..engine.predictor import Predictor

    return Predictor.from_config(args.config, args.weights, device=args.device, overrides=overrides,
                                 precision=args.precision, batch_size=args.batch_size)


def run(args: argparse.Namespace) -> int:
    from solov2_runtime.runtime import ModelError

    overrides = args.overrides + [item for item in args.inputs if "=" in item]
    inputs = [item for item in args.inputs if "=" not in item]
    errors = (CheckpointError, ConfigError, ModelError, SettingsError, RuntimeError, ValueError)
    # shortcut_overrides may raise OptionError: inside build, run_predict reports it
    return run_predict(args, inputs, lambda: build_predictor(args, overrides + shortcut_overrides(args)), errors)
