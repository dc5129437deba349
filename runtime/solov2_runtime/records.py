"""Predictions as COCO result records: RLE masks (``counts`` as str) and ``[x, y, w, h]`` boxes.

``encode_masks`` writes the same RLE strings as ``pycocotools.mask.encode`` (column-major
runs starting with a run of zeros; counts after the second delta-coded against the count two
before; 5-bit groups with a continuation bit, offset by 48), in NumPy: vectorized over all
masks and runs, one Python step per mask only to slice its string. ``to_coco_records(result,
image_id=7)`` gives the records ``COCO.loadRes`` reads; ``file_name="a.jpg"`` names the image
by its file instead (as ``predict`` writes them).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np

_GROUPS = 7  # 5-bit groups: enough for counts below 2**34


class InstanceResult(Protocol):
    """What ``to_coco_records`` needs: ``solov2_runtime.Result`` and solov2's PredictionResult have it."""

    masks: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    class_names: list[str]
    category_ids: list[int]


def _run_counts(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths of every mask, column-major, starting with zeros: (counts, runs per mask)."""
    n, h, w = masks.shape
    flat = np.ascontiguousarray(np.asarray(masks, dtype=bool).transpose(0, 2, 1)).reshape(n, h * w)
    changes = np.empty_like(flat)
    changes[:, 0] = flat[:, 0]
    np.not_equal(flat[:, 1:], flat[:, :-1], out=changes[:, 1:])
    mask_of, position = np.nonzero(changes)
    per_mask = np.bincount(mask_of, minlength=n)
    # Boundaries of each mask: 0, its change positions, h * w; runs are their differences.
    bounds_per_mask = per_mask + 2
    starts = np.concatenate([[0], np.cumsum(bounds_per_mask)[:-1]])
    bounds = np.empty(int(bounds_per_mask.sum()), dtype=np.int64)
    bounds[starts] = 0
    bounds[starts + bounds_per_mask - 1] = h * w
    inner = np.ones(len(bounds), dtype=bool)
    inner[starts] = inner[starts + bounds_per_mask - 1] = False
    bounds[inner] = position
    counts = np.diff(bounds)
    keep = np.ones(len(counts), dtype=bool)
    keep[(starts + bounds_per_mask - 1)[:-1]] = False  # the differences across two masks
    return counts[keep], per_mask + 1


def _rle_strings(counts: np.ndarray, runs: np.ndarray) -> list[str]:
    """pycocotools' string form of the runs of each mask (``runs`` of ``counts`` per mask)."""
    first = np.concatenate([[0], np.cumsum(runs)[:-1]])
    index_in_mask = np.arange(len(counts)) - np.repeat(first, runs)
    values = counts.astype(np.int64)
    delta = index_in_mask > 2
    values[delta] -= counts[np.nonzero(delta)[0] - 2]
    chars = np.empty((_GROUPS, len(values)), dtype=np.uint8)
    length = np.zeros(len(values), dtype=np.int64)
    active = np.arange(len(values))
    for group in range(_GROUPS):  # 5 bits at a time, only the values that need another group
        x = values[active]
        low = x & 0x1F
        x >>= 5  # arithmetic shift: a negative delta keeps its sign
        more = np.where(low & 0x10, x != -1, x != 0)
        chars[group, active] = (low | (more << 5)) + 48
        length[active] += 1
        values[active] = x
        active = active[more]
        if not len(active):
            break
    emitted = np.arange(_GROUPS)[:, None] < length
    text = chars.T[emitted.T].tobytes().decode("ascii")
    per_mask = np.add.reduceat(length, first) if len(counts) else np.zeros(0, np.int64)
    ends = np.cumsum(per_mask)
    return [text[e - c : e] for e, c in zip(ends.tolist(), per_mask.tolist())]


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """(N, H, W) bool masks -> COCO RLEs ``{"size": [H, W], "counts": str}``, equal to
    pycocotools' ``encode`` (with counts decoded to str). pycocotools itself encodes them
    where it is installed (solov2 has it; it is faster on fragmented masks); the NumPy encoder
    below otherwise (tests/test_runtime_postprocess.py checks both give the same strings)."""
    masks = np.asarray(masks)
    if len(masks) == 0:
        return []
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        return encode_masks_numpy(masks)
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")} for r in rles]


def encode_masks_numpy(masks: np.ndarray) -> list[dict[str, Any]]:
    """``encode_masks`` in NumPy alone (the runtime's path where pycocotools is absent)."""
    masks = np.asarray(masks)
    if len(masks) == 0:
        return []
    height, width = masks.shape[1:]
    counts, runs = _run_counts(masks)
    return [{"size": [int(height), int(width)], "counts": s} for s in _rle_strings(counts, runs)]


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, 4) float64 ``[x, y, w, h]`` boxes enclosing each (N, H, W) mask (zeros for an empty
    mask), as pycocotools' ``toBbox`` of its RLE."""
    masks = np.asarray(masks, dtype=bool)
    if len(masks) == 0:
        return np.zeros((0, 4), dtype=np.float64)
    boxes = xyxy_boxes(masks)
    boxes[:, 2:] -= boxes[:, :2]
    return boxes


def xyxy_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, 4) float64 ``[x1, y1, x2, y2]`` (x2, y2 exclusive) of (N, H, W) masks; zeros if empty."""
    masks = np.asarray(masks, dtype=bool)
    boxes = np.zeros((len(masks), 4), dtype=np.float64)
    if len(masks) == 0:
        return boxes
    height, width = masks.shape[1:]
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    found = rows.any(axis=1)
    boxes[:, 0] = cols.argmax(axis=1)
    boxes[:, 1] = rows.argmax(axis=1)
    boxes[:, 2] = width - cols[:, ::-1].argmax(axis=1)
    boxes[:, 3] = height - rows[:, ::-1].argmax(axis=1)
    boxes[~found] = 0
    return boxes


def to_coco_records(
    result: InstanceResult,
    image_id: int | str | None = None,
    file_name: str | None = None,
    *,
    category_ids: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One record per instance: ``image_id`` and/or ``file_name``, ``category_id``,
    ``category_name``, ``score``, ``bbox`` ([x, y, w, h] of the mask) and ``segmentation`` (RLE).

    Category ids come from ``result.category_ids`` unless ``category_ids`` (label -> dataset
    id, indexed by ``result.labels``) is given; likewise ``class_names``. Raises ValueError
    without an image_id or file_name, or when the result's fields disagree in length.
    """
    if image_id is None and file_name is None:
        raise ValueError("to_coco_records needs an image_id, a file_name or both")
    n = len(result.scores)
    labels = np.asarray(result.labels, dtype=np.int64).reshape(-1)
    ids = [int(category_ids[label]) for label in labels] if category_ids is not None else \
        [int(c) for c in result.category_ids]
    names = [str(class_names[label]) for label in labels] if class_names is not None else \
        [str(c) for c in result.class_names]
    if not (len(labels) == len(ids) == len(names) == len(result.masks) == n):
        raise ValueError(
            f"inconsistent result: {n} scores, {len(labels)} labels, {len(result.masks)} masks, "
            f"{len(ids)} category ids, {len(names)} class names"
        )
    rles = encode_masks(result.masks)
    boxes = mask_boxes(result.masks)
    records = []
    for i in range(n):
        record: dict[str, Any] = {}
        if image_id is not None:
            record["image_id"] = image_id if isinstance(image_id, str) else int(image_id)
        if file_name is not None:
            record["file_name"] = str(file_name)
        record.update(category_id=ids[i], category_name=names[i], score=float(result.scores[i]),
                      bbox=[float(v) for v in boxes[i]], segmentation=rles[i])
        records.append(record)
    return records
