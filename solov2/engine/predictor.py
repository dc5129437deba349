"""Inference from Python: ``Predictor.from_config(config, weights, device)(image)``."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..checkpoint import CheckpointError, load_checkpoint, load_weights
from ..config import Config, ConfigError, apply_overrides, config_from_dict, load_config
from ..data.coco_classes import class_names_and_ids
from ..data.image_io import read_image, to_bgr8
from ..data.transforms import pad_batch, preprocess
from ..evaluation.results import xyxy_boxes
from ..model import Detections, SOLOv2, postprocess
from ..model.fuse import optimize_for_inference
from .distributed import resolve_device

ImageInput = str | Path | np.ndarray


@dataclass
class PredictionResult:
    """Instances found in one image, sorted by descending score, masks at the original size."""

    masks: np.ndarray  # (N, H, W) bool
    labels: np.ndarray  # (N,) contiguous labels 0..C-1
    scores: np.ndarray  # (N,) float32
    class_names: list[str] = field(default_factory=list)  # (N,) name of each instance's class
    category_ids: list[int] = field(default_factory=list)  # (N,) dataset category id of each instance
    # (N, 4) float32 x1, y1, x2, y2 of each mask, x2/y2 exclusive (results.json's [x, y, w, h]
    # as corners); computed from the masks when not given.
    boxes: np.ndarray | None = None
    # The highest category probability of any grid cell, before test.score_thr (nan: unknown).
    best_score: float = float("nan")

    def __post_init__(self) -> None:
        if self.boxes is None:
            self.boxes = xyxy_boxes(self.masks).astype(np.float32)

    def __len__(self) -> int:
        return len(self.scores)


def resolve_config(
    config: str | Path | Config | None,
    weights: str | Path | None,
    overrides: Sequence[str] = (),
) -> tuple[Config, dict[str, torch.Tensor] | None, str]:
    """The config to build and the state dict to load: ``config`` if given, else the one stored
    in a solov2 checkpoint. Returns (config, state_dict or None, description of the weights)."""
    loaded = load_checkpoint(weights) if weights is not None else None
    stored = loaded.config if loaded is not None else None
    if isinstance(config, Config):
        cfg = apply_overrides(_with_stored_classes(config, stored, overrides), overrides)
    elif config is not None:
        cfg = apply_overrides(_with_stored_classes(load_config(config), stored, overrides), overrides)
    elif stored is not None:
        try:
            saved = config_from_dict(stored)
        except ConfigError as err:
            raise CheckpointError(f"{weights}: stored config is not valid: {err}") from err
        cfg = apply_overrides(saved, overrides)  # a mistyped override is the user's, named as such
    elif loaded is not None:
        raise ConfigError(
            f"{weights} is a {loaded.format} checkpoint with no stored config: pass --config "
            "with the preset it was trained with (e.g. --config light_448_r18)"
        )
    else:
        raise ConfigError("pass a config (preset name or YAML file), weights, or both")
    return cfg, (loaded.state_dict if loaded else None), str(weights)


CLASS_KEYS = ("num_classes", "class_names", "category_ids")


def _with_stored_classes(cfg: Config, stored: dict | None, overrides: Sequence[str]) -> Config:
    """``cfg`` with the classes (``model.num_classes``, ``class_names``, ``category_ids``) that a
    solov2 checkpoint recorded: a ``--config`` chosen for the architecture must not rename the
    classes the user trained. Keys given as overrides are left to them."""
    model = (stored or {}).get("model") or {}
    overridden = {item.split("=", 1)[0].strip() for item in overrides}
    for key in CLASS_KEYS:
        if model.get(key) and f"model.{key}" not in overridden:
            setattr(cfg.model, key, model[key])
    return cfg


class Predictor:
    """Runs SOLOv2 on images: preprocessing, the network and post-processing.

    Call it with an image path or an HxW(x3/x4) array (BGR, as OpenCV reads it), or a list of
    them. Images whose padded sizes agree run as one batch; labels and masks equal one-by-one calls,
    scores up to float rounding (relative 1e-5; tests/test_predict.py).
    """

    def __init__(self, model: SOLOv2, cfg: Config, device: str | torch.device | None = "cpu",
                 precision: str = "fp32", batch_size: int = 4):
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
        self.cfg = cfg
        self.device = resolve_device(device)
        # A copy with BatchNorm folded into the convolutions, channels-last: the same outputs up
        # to float rounding, about 1.1x faster on CPU (benchmarks/NOTES.md).
        self.model = optimize_for_inference(model.to(self.device), fold_bn=True, channels_last=True)
        self.precision = precision
        self.batch_size = batch_size
        self.class_names, self.category_ids = class_names_and_ids(
            cfg.model.num_classes, cfg.model.class_names, cfg.model.category_ids
        )

    @classmethod
    def from_config(
        cls,
        config: str | Path | Config | None = None,
        weights: str | Path | None = None,
        device: str | torch.device | None = "cpu",
        overrides: Sequence[str] = (),
        precision: str = "fp32",
        batch_size: int = 4,
    ) -> "Predictor":
        """Build from a preset name or YAML (optional for solov2 checkpoints) and a weights file."""
        cfg, state_dict, source = resolve_config(config, weights, overrides)
        model = SOLOv2(cfg.model)
        if state_dict is None:
            warnings.warn("no weights given: the model is randomly initialised", stacklevel=2)
        else:
            load_weights(model, state_dict, source=source, allow_class_mismatch=False)
        return cls(model, cfg, device, precision, batch_size)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def prepare(self, image: ImageInput) -> np.ndarray:
        return read_image(image) if isinstance(image, (str, Path)) else to_bgr8(np.asarray(image))

    @torch.inference_mode()
    def score_thresholds(self) -> tuple[float, float]:
        """``test.score_thr`` and ``test.update_thr`` in use."""
        return self.cfg.test.score_thr, self.cfg.test.update_thr

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[PredictionResult]:
        """BGR uint8 images -> results; images are grouped by padded size so batching never
        changes what any one image gets."""
        prepared = [preprocess(img, self.cfg.input.test_scale, self.cfg.input.mean, self.cfg.input.std)
                    for img in images]
        divisor = self.cfg.input.size_divisor
        padded = [(-(-s[0] // divisor), -(-s[1] // divisor)) for _, s in prepared]
        results: list[PredictionResult | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, key in enumerate(padded):
            groups.setdefault(key, []).append(index)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                detections = self.run_network([prepared[i][0] for i in chunk],
                                              [prepared[i][1] for i in chunk],
                                              [images[i].shape[:2] for i in chunk])
                for i, det in zip(chunk, detections):
                    results[i] = self.to_result(det)
        return results  # type: ignore[return-value]

    def run_network(self, tensors: list[torch.Tensor], image_sizes: list[tuple[int, int]],
                    original_sizes: list[tuple[int, int]]) -> list[Detections]:
        batch = pad_batch(tensors, self.cfg.input.size_divisor).to(self.device)
        with self._autocast():
            outputs = self.model(batch)
        outputs = [[t.float() for t in outputs.category_logits], [t.float() for t in outputs.kernels],
                   outputs.mask_features.float()]
        detections = postprocess(*outputs, image_sizes, [tuple(s) for s in original_sizes],
                                 self.cfg.model.grids, self.cfg.model.strides, self.cfg.test)
        best = torch.stack([t.amax(dim=(1, 2, 3)) for t in outputs[0]], 1).amax(1).sigmoid().tolist()
        for det, score in zip(detections, best):
            det.best_score = score  # read by to_result (the highest probability before score_thr)
        return detections

    def to_result(self, det: Detections) -> PredictionResult:
        labels = det.labels.cpu().numpy()
        return PredictionResult(
            masks=det.masks.cpu().numpy(),
            labels=labels,
            scores=det.scores.float().cpu().numpy(),
            class_names=[self.class_names[i] for i in labels],
            category_ids=[self.category_ids[i] for i in labels],
            best_score=float(getattr(det, "best_score", float("nan"))),
        )

    def __call__(self, images: ImageInput | Sequence[ImageInput]) -> PredictionResult | list[PredictionResult]:
        single = isinstance(images, (str, Path)) or (isinstance(images, np.ndarray) and images.ndim in (2, 3))
        items = [images] if single else list(images)
        results = self.predict_batch([self.prepare(item) for item in items])
        return results[0] if single else results
