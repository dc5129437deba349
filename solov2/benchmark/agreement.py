"""The agreement section: bf16 (CPU) / fp16 (CUDA) inference against fp32 on real images,
same weights."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..config import Config
from ..data.image_io import read_image
from ..engine.predictor import PredictionResult, Predictor
from ..model import SOLOv2
from ..model.fuse import optimize_for_inference
from .options import BenchmarkOptions

CONFIDENT = 0.3  # the agreement also reports fp32 instances scored at least this
MATCH_IOU = 0.5  # instances match at this mask IoU or more
CLOSE_IOU = 0.9  # the figures also count confident instances matched at this mask IoU or more


def agreement_section(cfg: Config, model: SOLOv2, options: BenchmarkOptions, device: torch.device) -> dict[str, Any]:
    """Predicts ``options.agreement_images`` in fp32 and in bf16/fp16 with ``model`` and
    ``cfg`` (its own test scale); returns the ``agreement`` figures of the JSON: precision,
    weights, images and ``agreement_figures``."""
    low = "fp16" if device.type == "cuda" else "bf16"
    network = optimize_for_inference(model, fold_bn=options.fold_bn, channels_last=options.channels_last)
    reference = Predictor(network, cfg, device, "fp32", batch_size=1)
    fast = Predictor(network, cfg, device, low, batch_size=1)
    a, b = [], []
    for path in options.agreement_images:
        image = read_image(path)
        a.append(reference(image))
        b.append(fast(image))
    return {"precision": low, "weights": options.weights, "images": len(options.agreement_images),
            **agreement_figures(a, b, low)}


def agreement_figures(reference: list[PredictionResult], results: list[PredictionResult],
                      name: str = "backend") -> dict[str, Any]:
    """Instances of ``results`` matched to ``reference``'s (``match_instances``, image by
    image; instances match greedily by class at mask IoU >= MATCH_IOU): counts (``results``'
    under ``name``), matched fraction, matched mask IoU and |score difference|, and for the
    fp32 instances scored >= CONFIDENT their matched fraction, mask IoU (0 when unmatched)
    and the fraction matched at mask IoU >= CLOSE_IOU."""
    ious, diffs, confident = [], [], []
    counts = {"fp32": 0, name: 0}
    for a, b in zip(reference, results):
        counts["fp32"] += len(a)
        counts[name] += len(b)
        for i, (j, iou) in enumerate(match_instances(a, b)):
            if j >= 0:
                ious.append(iou)
                diffs.append(abs(float(a.scores[i]) - float(b.scores[j])))
            if a.scores[i] >= CONFIDENT:
                confident.append(iou)
    return {
        "instances": {**counts, "matched": len(ious)},
        "matched_fraction_of_fp32": len(ious) / counts["fp32"] if counts["fp32"] else None,
        "matched_mask_iou": _summary(ious),
        "matched_score_abs_diff": _summary(diffs),
        "confident_threshold": CONFIDENT,
        "confident_fp32_instances": len(confident),
        "confident_matched_fraction": sum(v > 0 for v in confident) / len(confident) if confident else None,
        "close_iou": CLOSE_IOU,
        "confident_matched_at_close_iou": (sum(v >= CLOSE_IOU for v in confident) / len(confident)
                                           if confident else None),
        "confident_mask_iou": _summary(confident),
    }


def match_instances(a: PredictionResult, b: PredictionResult) -> list[tuple[int, float]]:
    """For each instance of ``a`` in order, (index of its match in ``b`` or -1, mask IoU; 0
    when unmatched): greedily, the instance of ``b`` not matched yet, of the same class, with
    the highest IoU >= MATCH_IOU (the last one among equal IoUs)."""
    used: set[int] = set()
    matches = []
    for i in range(len(a)):
        best, best_iou = -1, MATCH_IOU
        for j in range(len(b)):
            if j in used or b.labels[j] != a.labels[i]:
                continue
            union = np.logical_or(a.masks[i], b.masks[j]).sum()
            iou = np.logical_and(a.masks[i], b.masks[j]).sum() / union if union else 1.0
            if iou >= best_iou:
                best, best_iou = j, float(iou)
        if best >= 0:
            used.add(best)
        matches.append((best, best_iou if best >= 0 else 0.0))
    return matches


def _summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}
