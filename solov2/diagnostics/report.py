"""``inspect``'s sections of report.json from the per-instance results of ``assignment``.

Shares are fractions of the usable instances (0..1). Counts "at a scale" are for that entry
of ``input.train_scales``; "every scale" means at all of them (an instance never trained),
"some scale" at one or more of them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import Config
from ..data.coco import CocoInstances
from ..model.targets import MASK_STRIDE
from .assignment import Assignment, ScaledInstances, smallest_level

MAX_EXAMPLES = 5


def _share(count: int | float, total: int) -> float:
    return float(count) / total if total else 0.0


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    points = np.percentile(values, [0, 5, 50, 95, 100])
    return {k: round(float(v), 2) for k, v in zip(("min", "p5", "median", "p95", "max"), points)}


def examples(dataset: CocoInstances, image_of: np.ndarray, flags: np.ndarray) -> list[str]:
    """A few 'file (instance k of the image)' names of the flagged instances."""
    first = np.concatenate([[0], np.cumsum([len(r.labels) for r in dataset.records])])
    out = []
    for row in np.flatnonzero(flags)[:MAX_EXAMPLES]:
        image = int(image_of[row])
        out.append(f"{dataset.records[image].path.name} (instance {int(row - first[image])})")
    return out


def size_section(dataset: CocoInstances, cfg: Config, scaled: list[ScaledInstances]) -> dict[str, Any]:
    """Sizes against the scale ranges at every training scale."""
    total = len(scaled[0].sizes)
    ranges = np.asarray(cfg.model.scale_ranges, dtype=np.float64).reshape(-1, 2)
    none_every = np.all([~s.levels.any(0) for s in scaled], axis=0)
    none_some = np.any([~s.levels.any(0) for s in scaled], axis=0)
    per_scale = []
    for s in scaled:
        none = ~s.levels.any(0)
        per_scale.append({
            "scale": s.scale,
            "instances_per_level": s.levels.sum(1).astype(int).tolist(),
            "no_level": int(none.sum()),
            "too_small": int((none & (s.sizes < ranges[:, 0].min())).sum()),
            "too_large": int((none & (s.sizes > ranges[:, 1].max())).sum()),
            "in_two_or_more_levels": int((s.levels.sum(0) >= 2).sum()),
            "size": _percentiles(s.sizes),
        })
    levels = []
    for index, (lo, hi) in enumerate(ranges.tolist()):
        counts = [row["instances_per_level"][index] for row in per_scale]
        levels.append({"level": index, "stride": cfg.model.strides[index], "grid": cfg.model.grids[index],
                       "range": [lo, hi], "mean_instances": float(np.mean(counts)),
                       "mean_share": _share(np.mean(counts), total)})
    return {
        "levels": levels,
        "per_scale": per_scale,
        "no_level_every_scale": int(none_every.sum()),
        "no_level_every_scale_share": _share(none_every.sum(), total),
        "no_level_some_scale": int(none_some.sum()),
        "no_level_examples": examples(dataset, scaled[0].image_of, none_every),
    }


def assignment_section(dataset: CocoInstances, cfg: Config, inst: ScaledInstances, a: Assignment) -> dict[str, Any]:
    """Positive cells, overwrites and mask quality at one training scale."""
    total = len(inst.sizes)
    per_instance = a.cells.sum(0)
    first = smallest_level(inst)
    strides = np.asarray(cfg.model.strides)
    full_pixels = a.mask_pixels * MASK_STRIDE**2  # the 1/4 mask's pixels at the training scale
    in_range = first >= 0
    small = in_range & (full_pixels < strides[np.maximum(first, 0)] ** 2)
    no_cell = per_instance == 0
    overwritten = (per_instance > 0) & (a.owned == 0)
    levels = []
    for index in range(len(cfg.model.grids)):
        with_cells = a.cells[index] > 0
        levels.append({"level": index, "instances": int(with_cells.sum()),
                       "positive_cells": int(a.level_cells[index]),
                       "shared_cells": int(a.shared_cells[index]),
                       "cells_per_instance": round(float(a.cells[index][with_cells].mean()), 2) if with_cells.any() else 0.0})
    return {
        "scale": a.scale,
        "levels": levels,
        "positive_cells_per_instance": _percentiles(per_instance.astype(np.float64)),
        "positive_cells_per_image": round(_share(per_instance.sum(), len(dataset.records)), 2),
        "instances_per_image": round(_share(total, len(dataset.records)), 2),
        "no_positive_cell": int(no_cell.sum()),
        "no_positive_cell_in_range": int((no_cell & in_range).sum()),
        "no_positive_cell_examples": examples(dataset, inst.image_of, no_cell & in_range),
        "shared_cells": int(a.shared_cells.sum()),
        "shared_cell_share": _share(a.shared_cells.sum(), int(a.level_cells.sum())),
        "overwritten": int(overwritten.sum()),
        "overwritten_examples": examples(dataset, inst.image_of, overwritten),
        "empty_mask_target": int((a.mask_pixels == 0).sum()),
        "smaller_than_stride": int(small.sum()),
        "smaller_than_stride_examples": examples(dataset, inst.image_of, small),
        "centre_outside": int(a.centre_outside.sum()),
        "centre_outside_examples": examples(dataset, inst.image_of, a.centre_outside),
    }


def worst(sections: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The assignment section with the highest ``key``."""
    return max(sections, key=lambda s: s[key])
