"""Training health: warnings while training runs, from values the trainer already has.

``TrainingHealth(cfg)`` is fed once per iteration (``update``) with the step's losses, its
positive cells per level and the batch's instance count; it returns warning rows (``{"type": "health",
"iteration", "check", "message"}``) for train.log and metrics.jsonl, each check at most once
per run (the idle-level check once per level), and ``summary()`` gives the end-of-run row.

Checks (thresholds: the ``train.health_*`` config fields):
- ``level_idle``: an FPN level with no positive cell for ``health_level_idle_iters``
  iterations in a row;
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

from ..config import Config


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

    def update(self, iteration: int, loss_category: float, loss_mask: float,
               positive_per_level: Sequence[int], instances: int) -> list[dict[str, Any]]:
        """One iteration's values: the losses, the positive cells of each level (their sum is
        the step's positives) and the instances in the batch. Returns the warnings it raises."""
        if not self.enabled:
            return []
        self.iterations += 1
        t = self.cfg.train
        rows = []
        num_positive = sum(positive_per_level)
        for level, count in enumerate(positive_per_level):
            self.level_total[level] += count
            self.idle[level] = 0 if count else self.idle[level] + 1
            check = f"level_idle_{level}"
            if self.idle[level] >= t.health_level_idle_iters and check not in self.fired:
                lo, hi = self.cfg.model.scale_ranges[level]
                rows.append(self._warn(iteration, check, f"level {level} (scale range [{lo:g}, {hi:g}]) has had no "
                                       f"positive cell for {self.idle[level]} iterations: no object of that size at "
                                       "the training scales; check model.scale_ranges (solov2 inspect)"))
        values = {"loss_mask": loss_mask, "loss_category": loss_category, "cells": float(num_positive),
                  "instances": float(instances)}
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
        """The end-of-run row: checks that fired, mean positive cells per level per iteration, loss trend."""
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
        text += "; positive cells per level per iteration " + "/".join(str(v) for v in per_level)
        return {"type": "health_summary", "iteration": iteration, "warnings": sorted(self.fired),
                "positives_per_level": per_level, **self.trend, "message": text}
