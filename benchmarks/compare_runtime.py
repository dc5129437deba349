"""Whole-image latency of solov2-runtime (ONNX Runtime fp32 + NumPy) vs the PyTorch Predictor,
one thread each, measured interleaved in the same run on the same images and model.

A whole image is: preprocessing, the network, post-processing. The network runs for real
(light_448_r18 with random weights unless --weights; speed does not depend on the values);
its post-processing input is replaced by the benchmark's crafted head outputs at a candidate
load ("blobs": realistic, "noise": the worst case; solov2's benchmark ``crafted_outputs``), the
same for both sides, so that both post-process the same number of candidates. The "own"
load post-processes the network's own outputs (random weights as initialised: no candidates),
"model" those of a model whose every weight is random and whose category bias is lowered
(hundreds of candidates, as tests/test_onnx.py makes it); at these two the one-graph model
(``solov2 export --postprocess``, run by the runtime) is timed too. Prints per-load medians and the ratios
to PyTorch (the runtime's target is at most 1.05).

    .venv/bin/python benchmarks/compare_runtime.py --rounds 10
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy loads
    os.environ[_name] = "1"

import argparse  # noqa: E402
import importlib  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from solov2.config import load_config  # noqa: E402
from solov2.data.transforms import pad_batch, preprocess  # noqa: E402
from solov2.engine.predictor import Predictor  # noqa: E402
from solov2.export.onnx import export_onnx  # noqa: E402
from solov2.model import SOLOv2  # noqa: E402
from solov2.model import postprocess as torch_postprocess  # noqa: E402
from solov2_runtime import Runtime  # noqa: E402
from solov2_runtime.postprocess import postprocess as numpy_postprocess  # noqa: E402
from solov2_runtime.preprocess import pad_arrays, preprocess_array  # noqa: E402


def crafted_outputs_function():
    """solov2's benchmark ``crafted_outputs`` (wherever that module lives in this version)."""
    for name in ("solov2.benchmark", "solov2.benchmark.loads", "solov2.benchmark.inference",
                 "solov2.engine.benchmark"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "crafted_outputs"):
            return module.crafted_outputs
    raise SystemExit("error: solov2's benchmark crafted_outputs not found")


def whole_image_functions(predictor: Predictor, runtime: Runtime, image: np.ndarray, load: str, cfg, candidates: int):
    """(torch_fn, runtime_fn, candidates passing) for one image at one load."""
    inp, m = cfg.input, cfg.model
    original = image.shape[:2]
    if load in ("own", "model"):
        crafted = None
        passing = -1
    else:
        h, w = pad_batch([preprocess(image, inp.test_scale, inp.mean, inp.std)[0]]).shape[-2:]
        logits, kernels, features, passing = crafted_outputs_function()(
            cfg, 1, h, w, candidates, torch.Generator().manual_seed(0), load)
        flat = [torch.cat([t.flatten(2) for t in group], 2).numpy() for group in (logits, kernels)]
        crafted = (logits, kernels, features, flat[0], flat[1], features.numpy())

    @torch.inference_mode()
    def torch_fn():
        tensor, size = preprocess(image, inp.test_scale, inp.mean, inp.std)
        if crafted is None:  # network and post-processing of its outputs, as Predictor runs them
            return predictor.run_network([tensor], [size], [original])
        predictor.model(pad_batch([tensor], inp.size_divisor))
        return torch_postprocess(*crafted[:3], [size], [original], m.grids, m.strides, cfg.test)

    def runtime_fn():
        array, size = preprocess_array(image, inp.test_scale, inp.mean, inp.std)
        outputs = runtime.raw_outputs(pad_arrays([array], inp.size_divisor))
        source = outputs if crafted is None else crafted[3:]
        return numpy_postprocess(*source, [size], [original], m.grids, m.strides, runtime.settings.test)

    return torch_fn, runtime_fn, passing


def crafted_free(load: str) -> bool:
    return load in ("own", "model")


def detecting_model(cfg) -> SOLOv2:
    """Every weight random (He-scaled convolutions, norms around 1), the category bias lowered
    by 4.5: hundreds of candidates above the score threshold on any image."""
    generator = torch.Generator().manual_seed(0)
    model = SOLOv2(cfg.model).eval()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if tensor.dim() == 4:
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            elif name.endswith("running_var") or name.endswith(".weight"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
        model.head.category_pred.bias.sub_(4.5)
    return model


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="light_448_r18")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds (default: %(default)s)")
    parser.add_argument("--candidates", type=int, default=500, help="candidates of the crafted loads")
    parser.add_argument("--size", type=int, nargs=2, default=[480, 720], metavar=("H", "W"),
                        help="original image size (default: 480 720, resized to 448 x 672)")
    parser.add_argument("--loads", nargs="+", default=["own", "model", "blobs", "noise"],
                        choices=["own", "model", "blobs", "noise"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config)
    torch.manual_seed(0)
    image = np.random.default_rng(0).integers(0, 256, (*args.size, 3), dtype=np.uint8)
    print(f"{args.config}, image {args.size[0]}x{args.size[1]}, 1 thread, torch {torch.__version__}, "
          f"onnxruntime {__import__('onnxruntime').__version__}, numpy {np.__version__}")
    built: dict[str, tuple] = {}
    for load in args.loads:
        kind = "model" if load == "model" else "plain"
        if kind not in built:
            model = detecting_model(cfg) if kind == "model" else SOLOv2(cfg.model).eval()
            with tempfile.TemporaryDirectory() as folder:
                runtime = Runtime(export_onnx(model, cfg, Path(folder) / "model.onnx"), num_threads=1,
                                  providers=["CPUExecutionProvider"])
                one_graph = Runtime(export_onnx(model, cfg, Path(folder) / "full.onnx", postprocess=True),
                                    num_threads=1, providers=["CPUExecutionProvider"])
            built[kind] = (Predictor(model, cfg), runtime, one_graph)
        predictor, runtime, one_graph = built[kind]
        torch_fn, runtime_fn, passing = whole_image_functions(predictor, runtime, image, load, cfg, args.candidates)
        contenders = {"pytorch": torch_fn, "runtime": runtime_fn}
        if crafted_free(load):
            contenders["one graph"] = lambda: one_graph.predict_batch([image])
        returned = "/".join(str(len(fn()[0])) for fn in contenders.values())
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for r in range(args.rounds):
            order = list(contenders.items())
            for name, fn in order[r % len(order):] + order[: r % len(order)]:  # rotate who goes first
                times[name].append(timed(fn))
        base = statistics.median(times["pytorch"]) * 1e3
        what = f"the network's own outputs ({load})" if crafted_free(load) else f"{passing} candidates ({load})"
        parts = [f"PyTorch {base:.0f} ms"]
        for name in list(contenders)[1:]:
            ms = statistics.median(times[name]) * 1e3
            per_round = statistics.median(b / a for a, b in zip(times["pytorch"], times[name]))
            parts.append(f"{name} {ms:.0f} ms, ratio {ms / base:.3f} (median per-round ratio {per_round:.3f})")
        print(f"{load:6s} {what}, {returned} instances, {args.rounds} rounds: " + "; ".join(parts))

if __name__ == "__main__":
    main()
