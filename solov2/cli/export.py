"""``solov2 export``: write a model to ONNX (dynamic batch, height and width)."""

from __future__ import annotations

import argparse

from ..checkpoint import CheckpointError
from ..config import ConfigError
from .common import add_config_arguments, fail, formatter, output_file_problem

EXAMPLES = """examples:
  solov2 export --config light_448_r18 --weights SOLOv2_LIGHT_448_R18_3x.pth --out model.onnx
  solov2 export --weights runs/exp1/final.pth --out model.onnx           # own checkpoint: no --config
  solov2 export --weights runs/exp1/final.pth --out full.onnx --postprocess  # one graph
  solov2 predict img.jpg --backend onnxruntime --weights model.onnx      # run it
  solov2-runtime predict model.onnx photos/                              # or without PyTorch
  solov2 export --weights W.pth --out model.onnx --int8 --calibration-images val2017/ \\
      --calibration-count 100                                 # + model.int8.onnx
  solov2 predict photos/ --backend openvino --weights model.int8.onnx    # INT8 in OpenVINO

The graph takes a normalized, zero-padded batch (N, 3, H, W), H and W multiples of 32, and
returns category_logits (N, C, cells), kernels (N, E, cells) and mask_features
(N, E, H/4, W/4); 'solov2 predict --backend onnxruntime' adds the project's pre- and
post-processing. With --postprocess the graph is the whole inference after preprocessing
(batch 1): images (1, 3, H, W), image_size (2,) and original_size (2,) int64 in; masks
(N, H0, W0) bool, labels (N,) and scores (N,) out (docs/export.md). The config is stored in
the file's metadata.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export a model to ONNX", description=__doc__, epilog=EXAMPLES,
        formatter_class=formatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--weights", help="checkpoint (any supported format); without it the model is random")
    parser.add_argument("--out", default="model.onnx", help="output file (default: %(default)s)")
    parser.add_argument("--height", type=int, default=448, help="tracing height, a multiple of 32 (default: %(default)s)")
    parser.add_argument("--width", type=int, default=672, help="tracing width, a multiple of 32 (default: %(default)s)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default: %(default)s)")
    parser.add_argument("--postprocess", action="store_true",
                        help="one graph with the post-processing (batch 1; thresholds fixed in it)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip comparing ONNX Runtime's outputs with PyTorch's after export")
    parser.add_argument("--int8", action="store_true",  # int8: see solov2/export/quantize.py
                        help="also write an INT8 model (static quantization) beside OUT: model.onnx -> "
                             "model.int8.onnx; needs --calibration-images")
    parser.add_argument("--calibration-images", metavar="DIR", help="folder of images to calibrate --int8 on")
    parser.add_argument("--calibration-count", type=int, default=100, metavar="N",
                        help="calibrate on the first N images of DIR (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import load_weights
    from ..engine.predictor import resolve_config
    from ..export.deform_conv_symbolic import opset_for
    from ..export.onnx import ExportableSOLOv2, export_onnx
    from ..model import SOLOv2

    if args.int8 and not args.calibration_images:  # int8
        return fail("--int8 needs --calibration-images DIR (images like those the model will see)")
    if args.int8 and args.postprocess:
        return fail("--int8 quantizes the network graph: drop --postprocess (or --int8)")
    problem = output_file_problem(args.out)
    if problem:
        return fail(problem)
    try:
        cfg, state_dict, source = resolve_config(args.config, args.weights, args.overrides)
        model = SOLOv2(cfg.model)
        if state_dict is None:
            print("warning: no --weights: exporting a randomly initialised model")
        else:
            load_weights(model, state_dict, source=source, allow_class_mismatch=False)
        path = export_onnx(model.eval(), cfg, args.out, args.height, args.width, args.opset,
                           postprocess=args.postprocess)
    except (CheckpointError, ConfigError, ValueError, NotImplementedError) as err:
        return fail(str(err))
    size_mb = path.stat().st_size / 2**20
    print(f"wrote {path} ({size_mb:.1f} MiB, opset {opset_for(model, args.opset)}, config {cfg.name})")
    if not args.no_check and args.postprocess:
        return check_full_graph(model, cfg, path)
    if not args.no_check:
        from ..export.onnx_runtime import OnnxPredictor

        torch.manual_seed(0)
        images = torch.randn(1, 3, args.height, args.width)
        with torch.inference_mode():
            reference = ExportableSOLOv2(model.eval())(images)
        outputs = OnnxPredictor(path).raw_outputs(images)
        worst = max(float((torch.from_numpy(o) - r).abs().max()) for o, r in zip(outputs, reference))
        print(f"check: largest difference between ONNX Runtime and PyTorch outputs {worst:.2e}")
    if args.int8:  # int8
        from ..export.quantize import int8_path, quantize_onnx

        try:
            int8 = quantize_onnx(path, int8_path(path), args.calibration_images, args.calibration_count)
        except ValueError as err:
            return fail(str(err))
        print(f"wrote {int8} (INT8, calibrated on up to {args.calibration_count} images of {args.calibration_images})")
    return 0


def check_full_graph(model, cfg, path) -> int:
    """Run the one-graph model and the PyTorch Predictor on one random image; print how they agree."""
    import numpy as np
    from solov2_runtime.runtime import Runtime

    from ..engine.predictor import Predictor

    image = np.random.default_rng(0).integers(0, 256, (cfg.input.test_scale[1], cfg.input.test_scale[0], 3),
                                               dtype=np.uint8)
    got, expected = Runtime(path)(image), Predictor(model.eval(), cfg)(image)
    same = np.array_equal(got.labels, expected.labels)
    worst = float(np.abs(got.scores - expected.scores).max()) if same and len(got) else 0.0
    print(f"check: {len(got)} instances on a random image (PyTorch: {len(expected)}), labels "
          f"{'equal' if same else 'DIFFERENT'}, largest score difference {worst:.2e}")
    return 0 if same else 1
