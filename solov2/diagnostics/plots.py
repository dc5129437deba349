"""PNG plots of an inspection (matplotlib, the optional extra ``solov2[inspect]``).

``write_plots(out_dir, report, scaled, assignments)`` writes sizes.png, levels.png, cells.png
and classes.png and returns their names. ``MissingMatplotlib`` says how to install it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_open
from .assignment import Assignment, ScaledInstances

DPI = 80


class MissingMatplotlib(ImportError):
    """matplotlib is not installed."""


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise MissingMatplotlib(
            "the plots need matplotlib: pip install 'solov2[inspect]' (or pip install matplotlib), "
            "or pass --no-plots"
        ) from err
    return plt


def _save(fig: Any, path: Path) -> None:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight")


def _sizes(plt: Any, scaled: list[ScaledInstances], ranges: list[list[float]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 3.6))
    every = np.concatenate([s.sizes for s in scaled])
    top = max(float(every.max(initial=1)), max(hi for _, hi in ranges)) * 1.2
    bins = np.geomspace(0.5, top, 60)
    colours = plt.cm.tab10(np.arange(len(ranges)))
    for index, (lo, hi) in enumerate(ranges):
        ax.axvspan(max(lo, 0.5), hi, ymin=index / len(ranges), ymax=(index + 1) / len(ranges),
                   color=colours[index], alpha=0.25, label=f"level {index} [{lo:g}, {hi:g}]")
    for s, style in zip((scaled[0], scaled[-1]), ("-", "--")):
        ax.hist(s.sizes, bins=bins, histtype="step", linestyle=style, color="black",
                label=f"scale {s.scale[0]}x{s.scale[1]}")
    ax.set_xscale("log")
    ax.set_xlabel("sqrt(box area) at the training scale, pixels")
    ax.set_ylabel("instances")
    ax.set_title("object sizes against the scale ranges")
    ax.legend(fontsize=7, loc="upper left")
    _save(fig, path)
    plt.close(fig)


def _levels(plt: Any, report: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    levels = report["sizes"]["levels"]
    x = np.arange(len(levels))
    axes[0].bar(x, [lv["mean_instances"] for lv in levels], color="tab:blue")
    no_level = np.mean([s["no_level"] for s in report["sizes"]["per_scale"]])
    axes[0].bar([len(levels)], [no_level], color="tab:red")
    axes[0].set_xticks(list(x) + [len(levels)], [str(i) for i in x] + ["none"])
    axes[0].set_title("instances per level (mean over scales)", fontsize=9)
    for section, offset in zip(report["assignment"], np.linspace(-0.2, 0.2, len(report["assignment"]))):
        axes[1].bar(x + offset, [lv["positive_cells"] for lv in section["levels"]], width=0.35,
                    label=f"{section['scale'][0]}x{section['scale'][1]}")
    axes[1].set_xticks(x, [str(i) for i in x])
    axes[1].set_title("positive cells per level (all images)", fontsize=9)
    axes[1].legend(fontsize=7)
    _save(fig, path)
    plt.close(fig)


def _cells(plt: Any, assignments: list[Assignment], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3))
    per_instance = [a.cells.sum(0) for a in assignments]
    top = int(max((p.max(initial=0) for p in per_instance), default=0))
    bins = np.arange(-0.5, top + 1.5)
    for a, p in zip(assignments, per_instance):
        ax.hist(p, bins=bins, histtype="step", label=f"scale {a.scale[0]}x{a.scale[1]}")
    ax.set_xlabel("positive cells per instance (all levels)")
    ax.set_ylabel("instances")
    ax.set_title("grid assignment (0: the instance never trains)", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path)
    plt.close(fig)


def _classes(plt: Any, report: dict[str, Any], path: Path, most: int = 40) -> None:
    classes = sorted(report["dataset"]["classes"], key=lambda c: -c["instances"])[:most]
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.18 * len(classes)))
    y = np.arange(len(classes))
    ax.barh(y, [c["instances"] for c in classes], color="tab:blue", label="instances")
    ax.barh(y, [c["images"] for c in classes], color="tab:orange", height=0.4, label="images")
    ax.set_yticks(y, [c["name"] for c in classes], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("symlog")
    ax.set_title(f"instances and images per class ({len(classes)} most frequent)", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path)
    plt.close(fig)


def write_plots(out_dir: Path, report: dict[str, Any], scaled: list[ScaledInstances],
                assignments: list[Assignment], ranges: list[list[float]]) -> list[str]:
    """The four PNGs in ``out_dir``; returns their file names."""
    plt = _pyplot()
    _sizes(plt, scaled, ranges, out_dir / "sizes.png")
    _levels(plt, report, out_dir / "levels.png")
    _cells(plt, assignments, out_dir / "cells.png")
    _classes(plt, report, out_dir / "classes.png")
    return ["sizes.png", "levels.png", "cells.png", "classes.png"]
