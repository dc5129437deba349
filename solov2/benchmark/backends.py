"""The backends section: PyTorch fp32, ONNX Runtime and OpenVINO (fp32 and INT8) side by side.

The model is exported to ONNX at the benchmark size and, for the INT8 backends, quantized
(``solov2.export.quantize``) on the calibration images (``options.calibration_images``, else
the agreement images, else noise images). In every round, each backend's network and whole
image (``predict_batch``: preprocess, network, post-processing) are timed one after the other,
each right after the torch floor convolution (``Rounds``); ratios to PyTorch are medians of
per-round ratios. Each ONNX backend also times its own floor, the floor convolution as an
``.onnx`` file in its runtime (an INT8 QDQ one for the INT8 backends), once per round.
"""

from __future__ import annotations

import statistics
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch
from torch import nn

from ..config import Config
from ..data.image_io import read_image
from ..data.transforms import pad_batch, preprocess
from ..engine.predictor import Predictor
from ..model import SOLOv2
from ..export.quantize import KEEP_FLOAT
from .agreement import agreement_figures
from .floor import FLOOR_CHANNELS
from .loads import original_size_for, random_images
from .options import BenchmarkOptions
from .timing import Rounds, count_flops

BACKENDS = ("pytorch", "onnxruntime", "openvino", "onnxruntime-int8", "openvino-int8")
CALIBRATION_COUNT = 32  # calibration images used at most


def make_predictor(name: str, files: dict[str, Path], overrides: list[str], threads: int, batch: int,
                   model: SOLOv2, cfg: Config) -> Any:
    """The predictor of backend ``name`` (``files``: "fp32" / "int8" .onnx paths)."""
    if name == "pytorch":
        return Predictor(model, cfg, "cpu", "fp32", batch_size=batch)
    path = files["int8" if name.endswith("-int8") else "fp32"]
    if name.startswith("openvino"):
        from ..export.openvino_backend import OpenVinoPredictor

        return OpenVinoPredictor(path, overrides=overrides, batch_size=batch, num_threads=threads)
    from ..export.onnx_runtime import OnnxPredictor

    return OnnxPredictor(path, overrides=overrides, batch_size=batch, providers=["CPUExecutionProvider"],
                         num_threads=threads)


def backends_section(cfg: Config, agreement_cfg: Config, model: SOLOv2, network: nn.Module,
                     options: BenchmarkOptions, device: torch.device, rounds: Rounds,
                     log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Times ``options.backends`` at batch 1 and ``options.batch`` (items
    ``backend/{name}/b{batch}/network|image``) and, with weights and agreement images,
    compares each with PyTorch fp32 on them. ``cfg`` has the benchmark's test scale,
    ``agreement_cfg`` the model's own. Returns the ``backends`` figures of the JSON.
    Raises ValueError for an unknown backend or a device other than the CPU."""
    unknown = [b for b in options.backends if b not in BACKENDS]  # empty: all of them
    if unknown:
        raise ValueError(f"unknown backends {unknown}; choose from {', '.join(BACKENDS)}")
    if device.type != "cpu":
        raise ValueError("the backends section runs on the CPU")
    names = ["pytorch"] + [b for b in options.backends or BACKENDS if b != "pytorch"]
    with tempfile.TemporaryDirectory(prefix="solov2-backends-") as tmp:
        log("backends: export" + (" and INT8 quantization" if any(n.endswith("-int8") for n in names) else ""))
        files, calibration = _export(model, agreement_cfg, options, names, Path(tmp))
        scale = f"input.test_scale=[{max(options.height, options.width)},{min(options.height, options.width)}]"
        floors = _runtime_floors(names, options, Path(tmp))
        out: dict[str, Any] = {"backends": names, "threads": options.threads, "calibration": calibration,
                               "int8_keeps_float": _kept_float(files), "batches": {}}
        batches = [1] + ([options.batch] if options.batch > 1 else [])
        for batch in batches:
            log(f"backends, batch {batch}")
            predictors = {n: make_predictor(n, files, [scale], options.threads, batch, model, cfg) for n in names}
            out["batches"][f"batch_{batch}"] = _time_batch(cfg, network, predictors, floors, options, batch, rounds)
        out["floors"] = {n: {"convolution": f.describe(), "gflops": f.flops / 1e9,
                             "throughput_gflops_per_s": statistics.median(f.throughputs) / 1e9}
                         for n, f in floors.items()}
        if options.weights and options.agreement_images:
            log("backends: agreement with PyTorch fp32")
            out["agreement"] = _agreement(names, files, model, agreement_cfg, options)
    return out


def _export(model: SOLOv2, cfg: Config, options: BenchmarkOptions, names: list[str],
            folder: Path) -> tuple[dict[str, Path], dict[str, Any] | None]:
    """The fp32 .onnx (traced at the benchmark size) and, when an INT8 backend is asked for,
    its INT8 version; returns the paths and a description of the calibration set."""
    from ..export.onnx import export_onnx

    files = {"fp32": export_onnx(model, cfg, folder / "model.onnx", options.height, options.width)}
    if not any(n.endswith("-int8") for n in names):
        return files, None
    from ..export.quantize import calibration_files, quantize_onnx

    if options.calibration_images:
        source, kind = options.calibration_images, "calibration images"
    elif options.agreement_images:
        source, kind = options.agreement_images, "the agreement images"
    else:
        noise = folder / "noise"
        noise.mkdir()
        size = (options.height, options.width)
        for i, image in enumerate(random_images(4, size, np.random.default_rng(options.seed))):
            cv2.imwrite(str(noise / f"{i}.png"), image)
        source, kind = str(noise), "noise images"
    used = calibration_files(source, CALIBRATION_COUNT)
    files["int8"] = quantize_onnx(files["fp32"], folder / "model.int8.onnx", used, CALIBRATION_COUNT)
    return files, {"source": kind, "images": len(used)}


def _kept_float(files: dict[str, Path]) -> str | None:
    if "int8" not in files:
        return None
    import onnx

    from ..export.quantize import QUANTIZATION_KEY

    props = {p.key: p.value for p in onnx.load(str(files["int8"])).metadata_props}
    return props.get(QUANTIZATION_KEY)


class RuntimeFloor:
    """The floor convolution (3x3, 256 -> 256 channels, over (H/4, W/4), batch 1) as an ONNX
    file run by an ONNX backend's own predictor class; ``throughputs`` collects FLOP/s."""

    def __init__(self, backend: str, path: Path, shape: tuple[int, ...], flops: int, threads: int):
        import onnxruntime as ort

        if backend.startswith("openvino"):
            from ..export.openvino_backend import OpenVinoSession

            self.session: Any = OpenVinoSession(path, threads)
        else:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.backend, self.path, self.flops = backend, path, flops
        self.x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        self.throughputs: list[float] = []

    def __call__(self) -> Any:
        return self.session.run(None, {"x": self.x})

    def describe(self) -> str:
        kind = "int8 QDQ" if self.backend.endswith("-int8") else "fp32"
        return f"conv3x3 {FLOOR_CHANNELS}->{FLOOR_CHANNELS} on {'x'.join(map(str, self.x.shape))} ({kind} .onnx)"


def _runtime_floors(names: list[str], options: BenchmarkOptions, folder: Path) -> dict[str, RuntimeFloor]:
    """A RuntimeFloor per ONNX backend in ``names``."""
    from ..export.quantize import quantize_qdq

    conv = nn.Conv2d(FLOOR_CHANNELS, FLOOR_CHANNELS, 3, padding=1).eval()
    shape = (1, FLOOR_CHANNELS, options.height // 4, options.width // 4)
    x = torch.randn(shape)
    flops = count_flops(lambda: conv(x))
    fp32 = folder / "floor.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notices, as in export_onnx
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(conv, (x,), str(fp32), dynamo=False, input_names=["x"], output_names=["y"])
    paths = {"fp32": fp32}
    if any(n.endswith("-int8") for n in names):
        paths["int8"] = folder / "floor.int8.onnx"
        quantize_qdq(fp32, paths["int8"], ({"x": torch.randn(shape).numpy()} for _ in range(2)))
    return {n: RuntimeFloor(n, paths["int8" if n.endswith("-int8") else "fp32"], shape, flops, options.threads)
            for n in names if n != "pytorch"}


def _time_batch(cfg: Config, network: nn.Module, predictors: dict[str, Any], floors: dict[str, RuntimeFloor],
                options: BenchmarkOptions, batch: int, rounds: Rounds) -> dict[str, Any]:
    """Network and whole-image times of every backend at ``batch`` noise images, interleaved;
    ratios to PyTorch fp32, to the torch floor (the PyTorch network's FLOPs) and to the
    backend's own floor."""
    images = random_images(batch, original_size_for(cfg, options.height, options.width),
                           np.random.default_rng(options.seed))
    tensors = [preprocess(img, cfg.input.test_scale, cfg.input.mean, cfg.input.std)[0] for img in images]
    x = pad_batch(tensors, cfg.input.size_divisor)

    def torch_network() -> Any:
        with torch.inference_mode():
            return network(x)

    items: dict[str, Callable[[], Any]] = {}
    for name, predictor in predictors.items():
        items[f"{name}/network"] = torch_network if name == "pytorch" else (lambda p=predictor: p.raw_outputs(x))
        items[f"{name}/image"] = lambda p=predictor: p.predict_batch(images)
    flops = count_flops(torch_network)
    own_floor_times: dict[str, list[float]] = {n: [] for n in floors}
    for _ in range(options.warmup):
        for fn in [*items.values(), *floors.values()]:
            fn()
    prefix = f"backend/b{batch}/"
    for _ in range(options.repeats):
        for name, floor in floors.items():
            seconds, _ = rounds.clock.time(floor)
            own_floor_times[name].append(seconds)
            floor.throughputs.append(floor.flops / seconds)
        for key, fn in items.items():
            rounds.measure(prefix + key, fn)
    out: dict[str, Any] = {"batch": batch, "network_gflops": flops / 1e9, "backends": {}}
    for name in predictors:
        row: dict[str, Any] = {}
        for part in ("network", "image"):
            key = prefix + f"{name}/{part}"
            reference = rounds.times[prefix + f"pytorch/{part}"]
            row[f"{part}_ms"] = rounds.median_ms(key)
            row[f"{part}_min_ms"] = rounds.min_ms(key)
            row[f"{part}_ms_per_image"] = rounds.median_ms(key) / batch
            row[f"{part}_ratio_to_pytorch"] = statistics.median(a / b for a, b in zip(rounds.times[key], reference))
        row["network_ratio_to_torch_floor"] = rounds.ratio([prefix + f"{name}/network"], flops)
        if name in floors:
            floor = floors[name]
            per_round = [t * floor.flops / f / flops for t, f in  # time / (flops / own throughput)
                         zip(rounds.times[prefix + f"{name}/network"], own_floor_times[name][-options.repeats:])]
            row["network_ratio_to_own_floor"] = statistics.median(per_round)
            row["own_floor_ms"] = statistics.median(own_floor_times[name][-options.repeats:]) * 1e3
        out["backends"][name] = row
    return out


def _agreement(names: list[str], files: dict[str, Path], model: SOLOv2, cfg: Config,
               options: BenchmarkOptions) -> dict[str, Any]:
    """Each backend against PyTorch fp32 on the agreement images at the model's test scale."""
    images = [read_image(p) for p in options.agreement_images]
    reference = Predictor(model, cfg, "cpu", "fp32", batch_size=1).predict_batch(images)
    out: dict[str, Any] = {"images": len(images), "weights": options.weights}
    for name in names[1:]:
        predictor = make_predictor(name, files, [], options.threads, 1, model, cfg)
        out[name] = agreement_figures(reference, predictor.predict_batch(images))
    return out


def format_backends(section: dict[str, Any]) -> list[str]:
    """The backends section as text: one table per batch size, then the agreement."""
    calibration = section["calibration"]
    lines = [f"backends ({section['threads'] or 'default'} threads" + (
        f"; INT8 calibrated on {calibration['images']} {calibration['source']}, convolutions kept in float: "
        f"{', '.join(KEEP_FLOAT)})" if calibration else ")")]
    for key, b in section["batches"].items():
        lines.append(f"  {key.replace('_', ' ')}: network {b['network_gflops']:.2f} GFLOP"
                     "; ratios are medians of per-round ratios")
        lines.append(f"  {'backend':<18}{'net ms':>9}{'x torch':>9}{'vs floor':>10}{'vs own':>8}"
                     f"{'image ms':>10}{'x torch':>9}")
        for name, r in b["backends"].items():
            own = r.get("network_ratio_to_own_floor")
            lines.append(f"  {name:<18}{r['network_ms']:>9.1f}{r['network_ratio_to_pytorch']:>8.2f}x"
                         f"{r['network_ratio_to_torch_floor']:>9.2f}x{'-' if own is None else f'{own:.2f}x':>8}"
                         f"{r['image_ms']:>10.1f}{r['image_ratio_to_pytorch']:>8.2f}x")
    for name, f in section["floors"].items():
        lines.append(f"  own floor of {name}: {f['convolution']}, {f['throughput_gflops_per_s']:.1f} GFLOP/s")
    for name, a in section.get("agreement", {}).items():
        if not isinstance(a, dict):
            continue
        iou = a["matched_mask_iou"]
        line = (f"  {name} vs pytorch fp32: instances {a['instances']}, mask IoU mean "
                f"{iou['mean']:.4f} min {iou['min']:.4f}" if iou else f"  {name} vs pytorch fp32: no match")
        if a["confident_fp32_instances"]:
            line += (f"; fp32 scored >= {a['confident_threshold']}: {a['confident_fp32_instances']}, "
                     f"{100 * a['confident_matched_fraction']:.0f}% matched, "
                     f"{100 * a['confident_matched_at_close_iou']:.0f}% at IoU >= {a['close_iou']}")
        lines.append(line)
    return lines
