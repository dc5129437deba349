"""COCO metrics with pycocotools: mask AP, box AP from the masks' boxes, and per-class AP.

``coco_metrics(coco_gt, records)`` runs ``COCOeval`` twice, once with ``iouType="segm"`` and
once with ``"bbox"``, over the result records of ``results.to_coco_records``. As mmdetection
and detectron2 do, the segm evaluation drops the records' boxes first, so that the
small/medium/large split of the detections uses the mask area (with a box present,
``COCO.loadRes`` would use the box area instead).

Metrics are fractions (0..1), as pycocotools gives them; the printed tables show percentages,
as papers, detectron2 and mmdetection do.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..data.coco import check_segmentation

# Names of COCOeval.stats entries, in order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = {"mask": "segm", "box": "bbox"}


class AnnotationError(ValueError):
    """An annotation file that is missing or not COCO instance annotations."""


class GroundTruth(COCO):
    """A pycocotools index over the annotations that can be rasterised.

    ``skipped`` maps a problem kind (``data.coco.check_segmentation``'s, the rule training
    applies) to the number of annotations left out for it; they are not ground truth here, as
    they are not training targets.
    """

    skipped: dict[str, int]


def load_coco(ann_file: str | Path) -> GroundTruth:
    """Read a COCO annotation file quietly; raises AnnotationError naming the file."""
    path = Path(ann_file)
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AnnotationError(f"{path}: not valid JSON: {err}") from err
    return coco_from_dict(data, source=str(path))


def _rasterisable(images: list[dict], annotations: list[dict]) -> tuple[list[dict], Counter]:
    """The annotations whose segmentation can be rasterised (cleaned), and the others' count by
    problem kind."""
    sizes = {img["id"]: (img["height"], img["width"]) for img in images}
    kept, skipped = [], Counter()
    for ann in annotations:
        height, width = (int(v) if isinstance(v, (int, float)) else 0 for v in sizes[ann["image_id"]])
        segmentation, problem = check_segmentation(ann["segmentation"], height, width)
        if problem:
            skipped[problem] += 1
        else:
            kept.append({**ann, "segmentation": segmentation})
    return kept, skipped


def coco_from_dict(data: Any, source: str = "<annotations>") -> GroundTruth:
    """A ``GroundTruth`` index over an annotation dict, after checking the keys evaluation needs;
    annotations that cannot be rasterised are left out and counted in ``skipped``."""
    if not isinstance(data, dict):
        raise AnnotationError(f"{source}: expected a JSON object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise AnnotationError(f"{source}: missing or malformed '{key}' list (not a COCO instances file)")
    for kind, required in (("images", ("id", "file_name", "height", "width")),
                           ("categories", ("id", "name")),
                           ("annotations", ("id", "image_id", "category_id", "segmentation", "area"))):
        for index, item in enumerate(data[kind]):
            missing = [k for k in required if not isinstance(item, dict) or k not in item]
            if missing:
                raise AnnotationError(f"{source}: {kind}[{index}] lacks {', '.join(missing)}")
    image_ids = {img["id"] for img in data["images"]}
    category_ids = {cat["id"] for cat in data["categories"]}
    for ann in data["annotations"]:
        if ann["image_id"] not in image_ids:
            raise AnnotationError(f"{source}: annotation {ann['id']} refers to unknown image_id {ann['image_id']}")
        if ann["category_id"] not in category_ids:
            raise AnnotationError(
                f"{source}: annotation {ann['id']} refers to unknown category_id {ann['category_id']}"
            )
    data = dict(data)
    anns, skipped = _rasterisable(data["images"], data["annotations"])
    # COCOeval reads "iscrowd"; annotations without it are ordinary instances.
    anns = [ann if "iscrowd" in ann else {**ann, "iscrowd": 0} for ann in anns]
    # COCOeval stores the id of the matched ground truth and reads 0 as "unmatched", so an
    # annotation with id 0 could never be found (a true positive would count as a false one);
    # ids that are 0 or repeated are renumbered 1..N, which changes nothing else.
    ids = [ann["id"] for ann in anns]
    if 0 in ids or len(set(ids)) != len(ids):
        anns = [{**ann, "id": index + 1} for index, ann in enumerate(anns)]
    data["annotations"] = anns
    coco = GroundTruth()
    coco.skipped = dict(skipped)
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_results(coco_gt: COCO, records: Sequence[dict[str, Any]], iou_type: str) -> COCO:
    """Result records as a ``COCO`` object for ``iou_type`` "segm" (mask area, no box) or
    "bbox" (box area); an empty list gives an empty result set."""
    if iou_type not in ("segm", "bbox"):
        raise ValueError(f"iou_type must be 'segm' or 'bbox', got {iou_type!r}")
    drop = "bbox" if iou_type == "segm" else "segmentation"
    anns = [{k: v for k, v in r.items() if k != drop} for r in records]
    known = set(coco_gt.getImgIds())
    unknown = {a["image_id"] for a in anns} - known
    if unknown:
        raise ValueError(f"results refer to image ids not in the annotations: {sorted(unknown, key=image_id_order)[:10]}")
    if anns:
        with contextlib.redirect_stdout(io.StringIO()):
            return coco_gt.loadRes(copy.deepcopy(anns))
    empty = COCO()
    empty.dataset = {"images": list(coco_gt.dataset["images"]),
                     "categories": copy.deepcopy(coco_gt.dataset["categories"]), "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty


def image_id_order(image_id: int | str) -> tuple[bool, int | str]:
    """Sort key for COCO image ids, which may be integers or strings (integers first)."""
    return isinstance(image_id, str), image_id


def run_cocoeval(coco_gt: COCO, coco_dt: COCO, iou_type: str,
                 image_ids: Sequence[int | str] | None = None) -> tuple[COCOeval, str]:
    """Evaluate, accumulate and summarize; returns the COCOeval and its printed summary."""
    evaluator = COCOeval(coco_gt, coco_dt, iou_type)
    if image_ids is not None:
        evaluator.params.imgIds = sorted(image_ids, key=image_id_order)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    return evaluator, summary.getvalue()


def per_class_ap(evaluator: COCOeval) -> dict[int, dict[str, float | None]]:
    """Category id -> {"AP", "AP50", "AP75"} over all areas at 100 detections (None without
    ground truth), as detectron2's per-category table computes it."""
    precision = evaluator.eval["precision"]  # (T, R, K, A, M)
    iou_thrs = evaluator.params.iouThrs
    out: dict[int, dict[str, float | None]] = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        values = {}
        for name, rows in (("AP", slice(None)),
                           ("AP50", np.flatnonzero(np.isclose(iou_thrs, 0.5))),
                           ("AP75", np.flatnonzero(np.isclose(iou_thrs, 0.75)))):
            p = precision[rows, :, k, 0, -1]
            p = p[p > -1]
            values[name] = float(p.mean()) if p.size else None
        out[int(cat_id)] = values
    return out


def coco_metrics(coco_gt: COCO, records: Sequence[dict[str, Any]],
                 image_ids: Sequence[int | str] | None = None,
                 kinds: Sequence[str] = ("mask", "box")) -> dict[str, Any]:
    """Mask and box metrics of ``records`` against ``coco_gt``.

    Returns ``mask_AP``, ``mask_AP50``, ... ``mask_ARl``, the same with ``box_``, a
    ``per_class`` list (category id, name, number of ground-truth instances, mask and box AP)
    and the pycocotools ``summary`` text of each kind. ``image_ids`` limits the evaluation to
    those images (default: all images of ``coco_gt``).
    """
    metrics: dict[str, Any] = {}
    per_class: dict[int, dict[str, Any]] = {}
    cats = coco_gt.loadCats(sorted(coco_gt.getCatIds()))
    if image_ids is not None:
        wanted = set(image_ids)
        anns = [a for a in coco_gt.dataset["annotations"] if a["image_id"] in wanted]
    else:
        anns = coco_gt.dataset["annotations"]
    gt_counts: dict[int, int] = {}
    for ann in anns:
        if not ann.get("iscrowd", 0):
            gt_counts[ann["category_id"]] = gt_counts.get(ann["category_id"], 0) + 1
    for cat in cats:
        per_class[cat["id"]] = {"category_id": int(cat["id"]), "name": str(cat["name"]),
                                "num_gt": gt_counts.get(cat["id"], 0)}
    summaries = {}
    for kind in kinds:
        iou_type = IOU_TYPES[kind]
        evaluator, summary = run_cocoeval(coco_gt, load_results(coco_gt, records, iou_type), iou_type, image_ids)
        summaries[kind] = summary
        for name, value in zip(STAT_NAMES, evaluator.stats):
            metrics[f"{kind}_{name}"] = float(value)
        for cat_id, values in per_class_ap(evaluator).items():
            for name, value in values.items():
                per_class[cat_id][f"{kind}_{name}"] = value
    metrics["per_class"] = [per_class[c["id"]] for c in cats]
    metrics["summary"] = summaries
    return metrics


def _fmt(value: float | None) -> str:
    """A metric as a percentage with one decimal (tables); '-' when undefined (pycocotools: -1)."""
    if value is None or math.isnan(value) or value < 0:
        return "     -"
    return f"{100 * value:6.1f}"


def format_metrics(metrics: dict[str, Any]) -> str:
    """The headline numbers as a short table, in percent as detectron2 and mmdetection print
    them (the metrics themselves, and metrics.json, keep fractions 0..1); '-': no such objects."""
    lines = []
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    lines.append(f"{'(%)':5s} " + " ".join(f"{n:>6s}" for n in names))
    for kind in ("mask", "box"):
        if f"{kind}_AP" in metrics:
            lines.append(f"{kind:5s} " + " ".join(_fmt(metrics[f'{kind}_{n}']) for n in names))
    return "\n".join(lines)


def format_per_class(per_class: Sequence[dict[str, Any]], skip_empty: bool = True) -> str:
    """Per-class table: id, name, ground-truth count, mask AP/AP50, box AP in percent ('-': no
    ground truth)."""
    width = max([len("class")] + [len(row["name"]) for row in per_class])
    lines = [f"{'id':>4s}  {'class':<{width}s}  {'gt':>5s}  {'mask AP':>7s}  {'AP50':>6s}  {'box AP':>6s}"]
    for row in per_class:
        if skip_empty and row["num_gt"] == 0:
            continue
        lines.append(
            f"{row['category_id']:>4d}  {row['name']:<{width}s}  {row['num_gt']:>5d}  "
            f"{_fmt(row.get('mask_AP')):>7s}  {_fmt(row.get('mask_AP50'))}  "
            f"{_fmt(row.get('box_AP'))}"
        )
    return "\n".join(lines)
