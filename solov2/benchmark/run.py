"""``run_benchmark``: every requested section for one preset and input size, in one dict."""

from __future__ import annotations

import copy
import os
import platform
from dataclasses import asdict
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoint import load_weights
from ..config import Config, load_config
from ..engine.predictor import resolve_config
from ..model import SOLOv2
from ..model.fuse import optimize_for_inference
from ..engine.distributed import resolve_device
from .agreement import agreement_section
from .backends import backends_section
from .deform import dcn_section
from .floor import floor_figures, pick_floor
from .inference import inference_section
from .options import PRECISIONS, SECTIONS, BenchmarkOptions
from .timing import Clock, Rounds
from .training import training_section
from .variants import variants_section

Log = Callable[[str], None]


def run_benchmark(options: BenchmarkOptions, log: Log = lambda _: None) -> dict[str, Any]:
    """All sections of ``options.sections``; a JSON-ready dict with ``options``, ``machine``,
    ``config``, ``floor`` and one entry per section (see ``format_report``). ``log`` receives a
    line as each section starts. Sets torch's thread count for the run when ``options.threads``
    is positive and restores it after.

    Raises ValueError for bad options (precision, sections, sizes, an agreement without
    weights or images), RuntimeError when CUDA is asked for but missing, and the errors of
    loading the config and weights (ConfigError, CheckpointError).
    """
    check_options(options)
    threads = torch.get_num_threads()
    if options.threads > 0:
        torch.set_num_threads(options.threads)
    try:
        return _run_benchmark(options, log)
    finally:
        torch.set_num_threads(threads)


def check_options(options: BenchmarkOptions) -> None:
    """Raise ValueError for an unknown precision or section, or an agreement section without
    trained weights and images."""
    if options.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {options.precision!r}")
    unknown = set(options.sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    if "agreement" in options.sections and (not options.agreement_images or not options.weights):
        raise ValueError("the agreement section needs trained weights and images to compare on")


def _run_benchmark(options: BenchmarkOptions, log: Log) -> dict[str, Any]:
    device = resolve_device(options.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available")
    cfg, state_dict = load_setup(options)
    agreement_cfg = copy.deepcopy(cfg)  # the model's own test scale, for real images
    # Images are made at sizes that the test-time resize maps to exactly the benchmark size.
    cfg.input.test_scale = [max(options.height, options.width), min(options.height, options.width)]
    divisor = cfg.input.size_divisor
    if options.height % divisor or options.width % divisor:
        raise ValueError(f"input size {options.height}x{options.width} must be a multiple of {divisor}")
    result: dict[str, Any] = {"options": asdict(options), "machine": machine_info(device), "config": cfg.name}
    clock = Clock(device)
    floor, samples = pick_floor(options.height, options.width, device, options.precision, options.warmup, clock)
    rounds = Rounds(clock, floor)
    model, network = build_models(cfg, state_dict, options, device)
    result.update(_sections(cfg, agreement_cfg, model, network, options, device, rounds, log))
    result["floor"] = floor_figures(floor, rounds, samples, options.precision)
    result["machine"]["load_average_at_end"] = _load_average()
    return result


def _sections(
    cfg: Config, agreement_cfg: Config, model: SOLOv2, network: nn.Module, options: BenchmarkOptions,
    device: torch.device, rounds: Rounds, log: Log,
) -> dict[str, Any]:
    """The requested sections in a fixed order: inference, training, variants, agreement,
    backends, dcn."""
    rng = np.random.default_rng(options.seed)
    generator = torch.Generator().manual_seed(options.seed)
    out: dict[str, Any] = {}
    if "inference" in options.sections:
        batches = [1] + ([options.batch] if options.batch > 1 else [])
        out["inference"] = {}
        for batch in batches:
            log(f"inference, batch {batch}")
            out["inference"][f"batch_{batch}"] = inference_section(cfg, network, options, device, batch,
                                                                   rounds, rng, generator)
    if "training" in options.sections:
        log(f"training step, {options.train_images} images x {options.instances} instances")
        out["training"] = training_section(cfg, options, device, rounds, rng)
    if "variants" in options.sections:
        log("network variants")
        out["variants"] = variants_section(model, options, device, rounds)
    if "agreement" in options.sections:
        log("bf16/fp16 agreement")
        out["agreement"] = agreement_section(agreement_cfg, model, options, device)
    if "backends" in options.sections:
        out["backends"] = backends_section(cfg, agreement_cfg, model, network, options, device, rounds, log)
    if "dcn" in options.sections:
        log(f"deformable convolution vs conv2d, {options.height // 4}x{options.width // 4} map")
        out["dcn"] = dcn_section(options.height, options.width, device, options.precision, options.repeats,
                                 options.warmup, rounds.clock, options.seed)
    return out


def _load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU name and count, torch threads and version, device (and GPU name), load average now."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
        "load_average_at_start": _load_average(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def load_setup(options: BenchmarkOptions) -> tuple[Config, dict[str, Tensor] | None]:
    """The config (from ``options.config``, else the one stored in the weights) and weights."""
    if options.weights:
        cfg, state_dict, _ = resolve_config(options.config, options.weights, options.overrides)
        return cfg, state_dict
    return load_config(options.config or "light_448_r18", options.overrides), None


def build_models(
    cfg: Config, state_dict: dict[str, Tensor] | None, options: BenchmarkOptions, device: torch.device
) -> tuple[SOLOv2, nn.Module]:
    """The plain network in eval mode (``state_dict`` loaded if given, else initialised from
    ``options.seed``) and the inference network (BatchNorm folded, channels-last as asked)."""
    torch.manual_seed(options.seed)
    model = SOLOv2(cfg.model)
    if state_dict is not None:
        load_weights(model, state_dict, source=str(options.weights), allow_class_mismatch=False)
    model = model.to(device).eval()
    inference = optimize_for_inference(model, fold_bn=options.fold_bn, channels_last=options.channels_last)
    return model, inference
