"""Predictions as COCO result records: RLE masks (``counts`` as str) and ``[x, y, w, h]`` boxes.

``to_coco_records(result, image_id=7)`` gives the records ``pycocotools``' ``COCO.loadRes``
reads; ``to_coco_records(result, file_name="a.jpg")`` names the image by its file instead
(for images outside any annotation file, as ``solov2 predict`` writes them).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np
from pycocotools import mask as mask_utils


class InstanceResult(Protocol):
    """What ``to_coco_records`` needs: ``engine.predictor.PredictionResult`` has it."""

    masks: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    class_names: list[str]
    category_ids: list[int]


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """(N, H, W) bool masks -> COCO RLEs ``{"size": [H, W], "counts": str}``."""
    if len(masks) == 0:
        return []
    fortran = np.asfortranarray(np.asarray(masks, dtype=np.uint8).transpose(1, 2, 0))
    rles = mask_utils.encode(fortran)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def mask_boxes(rles: list[dict[str, Any]]) -> np.ndarray:
    """(N, 4) ``[x, y, w, h]`` boxes enclosing each RLE mask (zeros for an empty mask)."""
    if not rles:
        return np.zeros((0, 4), dtype=np.float64)
    return mask_utils.toBbox(rles).reshape(-1, 4)


def to_coco_records(
    result: InstanceResult,
    image_id: int | None = None,
    file_name: str | None = None,
    *,
    category_ids: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One record per instance: ``image_id`` and/or ``file_name``, ``category_id``,
    ``category_name``, ``score``, ``bbox`` ([x, y, w, h] of the mask) and ``segmentation`` (RLE).

    Category ids come from ``result.category_ids`` unless ``category_ids`` (label -> dataset
    id, indexed by ``result.labels``) is given; likewise ``class_names``.
    """
    if image_id is None and file_name is None:
        raise ValueError("to_coco_records needs an image_id, a file_name or both")
    n = len(result.scores)
    labels = np.asarray(result.labels, dtype=np.int64).reshape(-1)
    if category_ids is not None:
        ids = [int(category_ids[label]) for label in labels]
    else:
        ids = [int(c) for c in result.category_ids]
    if class_names is not None:
        names = [str(class_names[label]) for label in labels]
    else:
        names = [str(c) for c in result.class_names]
    if not (len(labels) == len(ids) == len(names) == len(result.masks) == n):
        raise ValueError(
            f"inconsistent result: {n} scores, {len(labels)} labels, {len(result.masks)} masks, "
            f"{len(ids)} category ids, {len(names)} class names"
        )
    rles = encode_masks(result.masks)
    boxes = mask_boxes(rles)
    records = []
    for i in range(n):
        record: dict[str, Any] = {}
        if image_id is not None:
            record["image_id"] = image_id if isinstance(image_id, str) else int(image_id)
        if file_name is not None:
            record["file_name"] = str(file_name)
        record.update(
            category_id=ids[i],
            category_name=names[i],
            score=float(result.scores[i]),
            bbox=[float(v) for v in boxes[i]],
            segmentation=rles[i],
        )
        records.append(record)
    return records
