"""The verdict: the findings of an inspection most likely to hurt training, each with a fix.

A finding is ``{"severity": s, "finding": text, "fix": text}``; ``s`` is mostly the share of
instances (or classes) affected, 0..1, so findings sort by how much of the data they touch.
Thresholds below are heuristics of this module, stated where they are used.
"""

from __future__ import annotations

import math
from typing import Any

from ..config import Config

NO_LEVEL_SHARE = 0.01  # instances in no scale range at every training scale
NO_CELL_SHARE = 0.01  # instances in range but without a positive cell
OVERWRITTEN_SHARE = 0.02  # instances that lose every cell to later instances
SMALL_MASK_SHARE = 0.05  # masks smaller than one cell of their level
CENTRE_OUTSIDE_SHARE = 0.10  # centre of mass off the object
RARE_CLASS_INSTANCES = 10  # fewer usable instances than this: a rare class
UNUSABLE_SHARE = 0.10  # annotations the data check leaves out
MIN_ITERATIONS = 3000  # a schedule shorter than this rarely trains SOLOv2's heads (one process)


def _finding(severity: float, finding: str, fix: str) -> dict[str, Any]:
    return {"severity": round(float(severity), 4), "finding": finding, "fix": fix}


def _ranges_override(cfg: Config, smallest: float, largest: float) -> str:
    ranges = [list(r) for r in cfg.model.scale_ranges]
    ranges[0][0] = min(ranges[0][0], max(1, math.floor(smallest)))
    ranges[-1][1] = max(ranges[-1][1], math.ceil(largest) + 1)
    text = ", ".join(f"[{lo:g}, {hi:g}]" for lo, hi in ranges)
    return f"model.scale_ranges='[{text}]'"


def _size_findings(report: dict[str, Any], cfg: Config, total: int) -> list[dict[str, Any]]:
    sizes = report["sizes"]
    out = []
    share = sizes["no_level_every_scale_share"]
    if share >= NO_LEVEL_SHARE:
        small = max(s["too_small"] for s in sizes["per_scale"])
        large = max(s["too_large"] for s in sizes["per_scale"])
        smallest = min(s["size"]["min"] for s in sizes["per_scale"])
        largest = max(s["size"]["max"] for s in sizes["per_scale"])
        fix = _ranges_override(cfg, smallest, largest)
        if small >= large:
            fix += ", or larger input.train_scales so small objects reach the first range"
        out.append(_finding(share, f"{sizes['no_level_every_scale']} of {total} instances ({share:.0%}) fall in no "
                            f"level's scale range at any training scale (up to {small} too small, {large} too "
                            f"large) and never train", fix))
    for level in sizes["levels"]:
        if level["mean_instances"] == 0 and total:
            out.append(_finding(0.02, f"level {level['level']} (range {level['range']}) gets no instance: its "
                                "head branch sees only background", "model.scale_ranges (move the range onto "
                                "your object sizes), or accept it if no object is that size"))
    return out


# (report key, share that fires, severity weight, finding, fix) of the grid-assignment findings.
ASSIGNMENT_RULES = (
    ("no_positive_cell_in_range", NO_CELL_SHARE, 1.0, "{n} instances in a level's range get no positive cell at "
     "scale {scale} (their mask vanishes at 1/4 resolution)", "larger input.train_scales"),
    ("overwritten", OVERWRITTEN_SHARE, 1.0, "{n} instances lose every positive cell to a later instance claiming "
     "the same cells at scale {scale}: their class is never a target",
     "finer model.grids, or a smaller model.sigma (fewer cells per instance)"),
    ("smaller_than_stride", SMALL_MASK_SHARE, 1.0, "{n} masks are smaller than one feature cell of their level "
     "(stride^2 pixels) at scale {scale}", "larger input.train_scales"),
    ("centre_outside", CENTRE_OUTSIDE_SHARE, 0.5, "{n} masks have their centre of mass off the object (rings, "
     "thin or split objects): their positive cells look at background",
     "a larger model.sigma gives such objects more cells; check the masks if unexpected"),
)


def _assignment_findings(report: dict[str, Any], total: int) -> list[dict[str, Any]]:
    out = []
    for key, threshold, weight, text, fix in ASSIGNMENT_RULES:
        worst = max(report["assignment"], key=lambda s: s[key])
        n = worst[key]
        if total and n / total >= threshold:
            out.append(_finding(weight * n / total, text.format(n=n, scale=worst["scale"]), fix))
    return out


def _data_findings(report: dict[str, Any], cfg: Config) -> list[dict[str, Any]]:
    data = report["dataset"]
    out = []
    classes = data["classes"]
    absent = [c for c in classes if c["instances"] == 0]
    rare = [c for c in classes if 0 < c["instances"] < RARE_CLASS_INSTANCES]
    if absent:
        present = [c["category_id"] for c in classes if c["instances"] > 0]
        out.append(_finding(len(absent) / len(classes), f"{len(absent)} of {len(classes)} classes have no usable "
                            "instance (" + ", ".join(c["name"] for c in absent[:8]) + (" ..." if len(absent) > 8 else "")
                            + "): the model learns to never predict them",
                            f"train only the classes present: model.category_ids='{present}' "
                            f"model.num_classes={len(present)}, or annotate them"))
    if rare:
        out.append(_finding(0.5 * len(rare) / len(classes), f"{len(rare)} classes have fewer than "
                            f"{RARE_CLASS_INSTANCES} instances (" + ", ".join(f"{c['name']} {c['instances']}"
                                                                        for c in rare[:8]) + ")",
                            "annotate more examples of them, or leave them out with model.category_ids"))
    unusable = 1 - data["usable_instances"] / max(data["annotations"], 1)
    if unusable >= UNUSABLE_SHARE:
        out.append(_finding(unusable, f"the data check leaves out {unusable:.0%} of the annotations",
                            "fix the problems listed under 'data check' (same report as solov2 train)"))
    iterations = cfg.train.epochs * math.ceil(data["usable_images"] / max(cfg.train.batch_size, 1))
    if 0 < iterations < MIN_ITERATIONS:
        epochs = math.ceil(MIN_ITERATIONS / max(iterations / max(cfg.train.epochs, 1), 1))
        out.append(_finding(0.3 * (1 - iterations / MIN_ITERATIONS), f"the schedule is {iterations} iterations "
                            f"({cfg.train.epochs} epochs of {data['usable_images']} images, batch "
                            f"{cfg.train.batch_size}) on one process: short for SOLOv2",
                            f"more epochs: train.epochs={epochs} train.lr_steps='[{int(epochs * 0.75)}, "
                            f"{int(epochs * 11 / 12)}]'"))
    return out


def verdict(report: dict[str, Any], cfg: Config) -> list[dict[str, Any]]:
    """All findings, most severe first."""
    total = report["dataset"]["usable_instances"]
    findings = _size_findings(report, cfg, total) + _assignment_findings(report, total) + _data_findings(report, cfg)
    return sorted(findings, key=lambda f: -f["severity"])
