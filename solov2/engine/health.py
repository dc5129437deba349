"""Training health: warnings while training runs, from values the trainer already has.

``TrainingHealth(cfg)`` is fed once per iteration (``update``) with the step's losses and
positive-cell count and the batch's boxes; it returns warning rows (``{"type": "health",
"iteration", "check", "message"}``) for train.log and metrics.jsonl, each check at most once
per run (the idle-level check once per level), and ``summary()`` gives the end-of-run row.

Checks (thresholds: the ``train.health_*`` config fields):
- ``level_idle``: an FPN level assigned no instance (so no positive cell) for
  ``health_level_idle_iters`` iterations in a row;
- ``few_positives``: over ``health_window`` iterations, fewer than
  ``health_min_cells_per_instance`` positive cells per instance in the batches;
- ``mask_loss_flat``: ``health_patience`` iterations after the warm-up, the mask loss (mean of
  the last window) has fallen by less than ``health_min_mask_drop`` of its start (mean of the
  first window);
- ``category_collapse``: at the same point, the category loss is below
  ``health_category_collapse`` x its start while the mask loss has not fallen.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Sequence

import torch
from torch import Tensor

from ..config import Config


def level_instances(boxes: Sequence[Tensor], masks: Sequence[Tensor], scale_ranges: Sequence[Sequence[float]]) -> list[int]:
    """Instances of a batch per level, by the rule of ``build_targets``: sqrt(box area) within
    the level's range and a non-empty mask. Each such instance gets at least its centre cell."""
    if not boxes:
        return [0] * len(scale_ranges)
    all_boxes = torch.cat([b.reshape(-1, 4) for b in boxes]).float()
    non_empty = torch.cat([m.flatten(1).any(1) for m in masks])
    scale = torch.sqrt((all_boxes[:, 2] - all_boxes[:, 0]) * (all_boxes[:, 3] - all_boxes[:, 1]))
    ranges = torch.tensor([list(r) for r in scale_ranges], dtype=torch.float32, device=scale.device)
    active = (scale >= ranges[:, :1]) & (scale <= ranges[:, 1:]) & non_empty
    return active.sum(1).tolist()


class TrainingHealth:
    """Watches a run; see the module for the checks."""

    def __init__(self, cfg: Config):
        t = cfg.train
        self.cfg = cfg
        self.enabled = t.health_checks
        self.window = max(t.health_window, 1)
        self.check_at = max(t.warmup_iters, self.window) + t.health_patience
        self.idle = [0] * len(cfg.model.scale_ranges)
        self.level_total = [0] * len(cfg.model.scale_ranges)
        self.start: dict[str, list[float]] = {"loss_mask": [], "loss_category": []}
        self.recent: dict[str, deque] = {k: deque(maxlen=self.window) for k in ("loss_mask", "loss_category",
                                                                              "cells", "instances")}
        self.fired: dict[str, str] = {}
        self.trend: dict[str, float] = {}
        self.iterations = 0

    def _warn(self, iteration: int, check: str, message: str) -> dict[str, Any]:
        self.fired[check] = message
        return {"type": "health", "iteration": iteration, "check": check, "message": f"warning: {message}"}

    def update(self, iteration: int, loss_category: float, loss_mask: float, num_positive: int,
               boxes: Sequence[Tensor], masks: Sequence[Tensor]) -> list[dict[str, Any]]:
        """One iteration's values (a step that was not skipped); returns the warnings it raises."""
        if not self.enabled:
            return []
        self.iterations += 1
        t = self.cfg.train
        rows = []
        per_level = level_instances(boxes, masks, self.cfg.model.scale_ranges)
        for level, count in enumerate(per_level):
            self.level_total[level] += count
            self.idle[level] = 0 if count else self.idle[level] + 1
            check = f"level_idle_{level}"
            if self.idle[level] >= t.health_level_idle_iters and check not in self.fired:
                lo, hi = self.cfg.model.scale_ranges[level]
                rows.append(self._warn(iteration, check, f"level {level} (scale range [{lo:g}, {hi:g}]) has had no "
                                       f"positive cell for {self.idle[level]} iterations: no object of that size at "
                                       "the training scales; check model.scale_ranges (solov2 inspect)"))
        values = {"loss_mask": loss_mask, "loss_category": loss_category, "cells": float(num_positive),
                  "instances": float(sum(len(b) for b in boxes))}
        for key, value in values.items():
            self.recent[key].append(value)
            if key in self.start and len(self.start[key]) < self.window:
                self.start[key].append(value)
        if len(self.recent["cells"]) == self.window and "few_positives" not in self.fired:
            cells, instances = sum(self.recent["cells"]), sum(self.recent["instances"])
            if instances and cells / instances < t.health_min_cells_per_instance:
                rows.append(self._warn(iteration, "few_positives", f"{cells / instances:.2f} positive cells per "
                                       f"instance over the last {self.window} iterations (expected several): most "
                                       "objects fall outside model.scale_ranges or vanish at the training scales"))
        if not self.trend and iteration >= self.check_at and self.iterations >= 2 * self.window:
            rows += self._trend(iteration)
        return rows

    def _trend(self, iteration: int) -> list[dict[str, Any]]:
        t = self.cfg.train
        rows = []
        mean = {k: sum(v) / len(v) for k, v in self.recent.items() if v}
        start = {k: sum(v) / len(v) for k, v in self.start.items() if v}
        if "loss_mask" not in start:
            return rows
        self.trend = {"start_loss_mask": start["loss_mask"], "loss_mask": mean["loss_mask"],
                      "start_loss_category": start["loss_category"], "loss_category": mean["loss_category"]}
        mask_drop = 1 - mean["loss_mask"] / start["loss_mask"] if start["loss_mask"] > 0 else 0.0
        if mask_drop < t.health_min_mask_drop:
            rows.append(self._warn(iteration, "mask_loss_flat", f"the mask loss is {mean['loss_mask']:.4f} after "
                                   f"{iteration} iterations against {start['loss_mask']:.4f} at the start "
                                   f"(fell {mask_drop:.1%}): check train.base_lr (now {t.base_lr:g}) and the data"))
            if start["loss_category"] > 0 and mean["loss_category"] < t.health_category_collapse * start["loss_category"]:
                rows.append(self._warn(iteration, "category_collapse", f"the category loss collapsed to "
                                       f"{mean['loss_category']:.4f} from {start['loss_category']:.4f} while the mask "
                                       "loss did not move: the model learns to predict background everywhere; "
                                       "check the positives per image and model.scale_ranges"))
        return rows

    def summary(self, iteration: int) -> dict[str, Any]:
        """The end-of-run row: checks that fired, mean instances per level per iteration, loss trend."""
        n = max(self.iterations, 1)
        per_level = [round(total / n, 2) for total in self.level_total]
        if not self.enabled:
            text = "training health: checks off (train.health_checks=false)"
        elif self.fired:
            text = f"training health: {len(self.fired)} warning(s): " + "; ".join(sorted(self.fired))
        else:
            text = "training health: no warning"
        if self.enabled and not self.trend:
            text += f" (loss trend not checked: the run ended before iteration {self.check_at})"
        text += "; instances per level per iteration " + "/".join(str(v) for v in per_level)
        return {"type": "health_summary", "iteration": iteration, "warnings": sorted(self.fired),
                "instances_per_level": per_level, **self.trend, "message": text}
