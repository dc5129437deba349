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


def agreement_section(cfg: Config, model: SOLOv2, options: BenchmarkOptions, device: torch.device) -> dict[str, Any]:
    """Predicts ``options.agreement_images`` in fp32 and in bf16/fp16 with ``model`` and
    ``cfg`` (its own test scale); matches instances greedily by class and mask IoU (>= 0.5)
    and returns the ``agreement`` figures of the JSON: counts, matched fraction, the matched
    instances' mask IoU and score differences, and the same for fp32 instances scored at
    least CONFIDENT (IoU 0 when unmatched)."""
    low = "fp16" if device.type == "cuda" else "bf16"
    network = optimize_for_inference(model, fold_bn=options.fold_bn, channels_last=options.channels_last)
    reference = Predictor(network, cfg, device, "fp32", batch_size=1)
    fast = Predictor(network, cfg, device, low, batch_size=1)
    ious: list[float] = []
    score_diffs: list[float] = []
    confident_ious: list[float] = []  # fp32 instances scored >= CONFIDENT; 0 when unmatched
    counts = {"fp32": 0, low: 0, "matched": 0}
    for path in options.agreement_images:
        image = read_image(path)
        a, b = reference(image), fast(image)
        counts["fp32"] += len(a)
        counts[low] += len(b)
        for i, (j, iou) in enumerate(match_instances(a, b)):
            if j >= 0:
                ious.append(iou)
                score_diffs.append(abs(float(a.scores[i]) - float(b.scores[j])))
            if a.scores[i] >= CONFIDENT:
                confident_ious.append(iou)
    counts["matched"] = len(ious)
    return {
        "precision": low,
        "weights": options.weights,
        "images": len(options.agreement_images),
        "instances": counts,
        "matched_fraction_of_fp32": counts["matched"] / counts["fp32"] if counts["fp32"] else None,
        "matched_mask_iou": _summary(ious),
        "matched_score_abs_diff": _summary(score_diffs),
        "confident_threshold": CONFIDENT,
        "confident_fp32_instances": len(confident_ious),
        "confident_matched_fraction": (sum(v > 0 for v in confident_ious) / len(confident_ious)
                                       if confident_ious else None),
        "confident_mask_iou": _summary(confident_ious),
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
