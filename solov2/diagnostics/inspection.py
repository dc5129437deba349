"""``inspect_dataset``: the whole ``solov2 inspect`` job, from annotation file to report files.

Writes into ``out_dir``: report.json (every number; atomic), sizes.png, levels.png, cells.png,
classes.png (unless ``plots=False``) and report.html. Raises ``DatasetError`` for an unusable
annotation file or image folder, ``MissingMatplotlib`` when plots are asked for without
matplotlib (before anything is written), ``OSError`` for an unwritable ``out_dir``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..atomic import write_json_atomic
from ..config import Config
from ..data.coco import CocoInstances
from .assignment import grid_assignment, scale_instances
from .dataset_report import dataset_statistics
from .html import write_html
from .report import assignment_section, size_section
from .verdict import verdict

TOP_FINDINGS = 5


@dataclass
class Inspection:
    report: dict[str, Any]
    summary: list[str]
    files: list[Path] = field(default_factory=list)


def assignment_scales(train_scales: list[list[int]], all_scales: bool) -> list[list[int]]:
    """The training scales to run the grid assignment at: all of them, or the smallest and the
    largest (by short edge; one when they coincide)."""
    unique = [list(s) for i, s in enumerate(train_scales) if list(s) not in [list(t) for t in train_scales[:i]]]
    if all_scales or len(unique) <= 2:
        return unique
    by_short = sorted(unique, key=lambda s: (min(s), max(s)))
    return [by_short[0], by_short[-1]]


def _class_line(classes: list[dict[str, Any]]) -> str:
    ranked = sorted(classes, key=lambda c: -c["instances"])
    absent = sum(c["instances"] == 0 for c in classes)
    present = [c for c in ranked if c["instances"] > 0]
    text = f"classes: {len(classes)} ({absent} without instances); most "
    text += ", ".join(f"{c['name']} {c['instances']}" for c in present[:3])
    if len(present) > 3:
        text += "; fewest " + ", ".join(f"{c['name']} {c['instances']}" for c in present[-3:])
    return text


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The terminal summary of a report."""
    data, sizes = report["dataset"], report["sizes"]
    total = data["usable_instances"]
    lines = ["data check: " + data["data_check"][0]] + data["data_check"][1:]
    lines.append(_class_line(data["classes"]))
    lines.append(f"crowd regions: {data['crowd']} ({data['crowd_share']:.1%} of the annotations)")
    if "image_files" in data:
        files = data["image_files"]
        lines.append(f"image files: {files['unreadable']} unreadable, {files['size_mismatch']} of another size")
    for row in sizes["per_scale"]:
        per_level = ", ".join(f"L{i} {n}" for i, n in enumerate(row["instances_per_level"]))
        lines.append(f"sizes at {row['scale'][0]}x{row['scale'][1]}: median {row['size'].get('median', 0)} px; "
                     f"{per_level}; none {row['no_level']} ({row['too_small']} small, {row['too_large']} large); "
                     f"in 2+ levels {row['in_two_or_more_levels']}")
    lines.append(f"in no level at any training scale: {sizes['no_level_every_scale']} of {total} instances "
                 f"({sizes['no_level_every_scale_share']:.1%})")
    for a in report["assignment"]:
        cells = a["positive_cells_per_instance"]
        lines.append(
            f"grid at {a['scale'][0]}x{a['scale'][1]}: positive cells per instance median {cells.get('median', 0)} "
            f"(min {cells.get('min', 0)}, max {cells.get('max', 0)}), per level "
            + "/".join(str(lv["positive_cells"]) for lv in a["levels"])
            + f"; {a['no_positive_cell']} instances without a cell ({a['no_positive_cell_in_range']} in range); "
            f"{a['shared_cells']} cells shared ({a['shared_cell_share']:.1%}); {a['overwritten']} instances lose "
            f"every cell; masks: {a['empty_mask_target']} empty at 1/4, {a['smaller_than_stride']} under "
            f"stride^2, {a['centre_outside']} centre off the object"
        )
    findings = report["verdict"]
    lines.append("verdict: " + ("no finding" if not findings else f"{len(findings)} finding(s), most severe first"))
    for index, f in enumerate(findings[:TOP_FINDINGS], 1):
        lines.append(f"  {index}. {f['finding']}\n     fix: {f['fix']}")
    return lines


def inspect_dataset(cfg: Config, ann_file: str | Path, images_dir: str | Path, out_dir: str | Path, *,
                    read_images: bool = False, all_scales: bool = False, plots: bool = True,
                    progress: bool = True) -> Inspection:
    """Inspect a COCO-format training set against ``cfg`` (model scale ranges, grids, sigma,
    input scales, schedule) and write the report files (see the module)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small memory-bound tensor operations: faster on one thread
    try:
        return _inspect(cfg, ann_file, images_dir, Path(out_dir), read_images, all_scales, plots, progress)
    finally:
        torch.set_num_threads(threads)


def _inspect(cfg: Config, ann_file: str | Path, images_dir: str | Path, out_dir: Path, read_images: bool,
             all_scales: bool, plots: bool, progress: bool) -> Inspection:
    start = time.perf_counter()
    if plots:
        from .plots import _pyplot

        _pyplot()  # fail before any work when matplotlib is missing
    cfg = copy.deepcopy(cfg)
    dataset = CocoInstances(ann_file, images_dir, category_ids=list(cfg.model.category_ids) or None,
                            box_convention=cfg.data.box_convention)
    if not cfg.model.category_ids:
        cfg.model.num_classes = len(dataset.category_ids)  # as training sets it
    report: dict[str, Any] = {"config": cfg.name, "images_dir": str(images_dir),
                              "dataset": dataset_statistics(dataset, read_images, progress)}
    scaled = [scale_instances(dataset, cfg, list(s)) for s in cfg.input.train_scales]
    report["sizes"] = size_section(dataset, cfg, scaled)
    chosen = [next(s for s in scaled if s.scale == list(t)) for t in assignment_scales(cfg.input.train_scales, all_scales)]
    assignments = [grid_assignment(dataset, cfg, inst, progress) for inst in chosen]
    report["assignment"] = [assignment_section(dataset, cfg, inst, a) for inst, a in zip(chosen, assignments)]
    report["verdict"] = verdict(report, cfg)
    report["seconds"] = round(time.perf_counter() - start, 2)
    summary = summary_lines(report)

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(report, out_dir / "report.json")
    files = [out_dir / "report.json"]
    names: list[str] = []
    if plots:
        from .plots import write_plots

        names = write_plots(out_dir, report, scaled, assignments, cfg.model.scale_ranges)
        files += [out_dir / n for n in names]
    write_html(out_dir / "report.html", report, summary, names)
    files.append(out_dir / "report.html")
    return Inspection(report, summary, files)
