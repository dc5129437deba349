"""Scoring result records into metrics files without ever losing the predictions.

``score_records`` writes ``results.json`` before it scores, so that a failure inside
pycocotools leaves the predictions on disk; ``rescore`` scores such a file again without a
model. ``prepare_out_dir`` (``solov2_runtime.outputs``) checks an output folder before long work.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

from solov2_runtime.outputs import OutputDirError, prepare_out_dir

from ..atomic import write_json_atomic
from .coco_eval import AnnotationError, GroundTruth, coco_metrics, image_id_order, load_coco

__all__ = ["OutputDirError", "ScoringError", "prepare_out_dir", "read_results", "rescore", "score_records"]

RESULT_KEYS = ("image_id", "category_id", "score", "segmentation")


class ScoringError(RuntimeError):
    """Scoring failed; the message says where the predictions were kept."""


def score_records(
    coco: GroundTruth,
    records: Sequence[dict[str, Any]],
    image_ids: Sequence[int | str],
    out: Path | None,
    run_info: dict[str, Any],
    progress: bool = True,
    write_results: bool = True,
) -> dict[str, Any]:
    """``coco_metrics`` of ``records`` plus ``run_info``, ``detections`` and
    ``skipped_annotations`` (ground truth that cannot be rasterised, by problem kind).

    With ``out``, ``results.json`` is written (atomically; unless ``write_results`` is False)
    before scoring and ``metrics.json`` after it. Raises ``ScoringError`` when pycocotools fails; the predictions stay in
    ``results.json`` and the message says how to score them again."""
    results_file = out / "results.json" if out is not None else None
    if results_file is not None and write_results:
        write_json_atomic(list(records), results_file)
    try:
        metrics = coco_metrics(coco, records, image_ids)
    except Exception as err:  # pycocotools raises bare exceptions and assertions
        kept = (f"; the predictions are kept in {results_file}: score them again with "
                f"'solov2 eval --results {results_file} --ann ANN'") if results_file else ""
        raise ScoringError(f"scoring failed ({type(err).__name__}: {err}){kept}") from err
    metrics.update(run_info, detections=len(records), skipped_annotations=dict(coco.skipped))
    if coco.skipped and progress:
        found = ", ".join(f"{count} x {kind}" for kind, count in coco.skipped.items())
        print(f"note: ground truth left out as training leaves it out: {found}", file=sys.stderr)
    if out is not None:
        metrics["results_file"] = str(results_file)
        metrics["metrics_file"] = str(out / "metrics.json")
        write_json_atomic(metrics, out / "metrics.json")
    return metrics


def read_results(results_file: str | Path) -> list[dict[str, Any]]:
    """COCO result records from a JSON list; raises ``AnnotationError`` naming the file."""
    path = Path(results_file)
    if not path.is_file():
        raise AnnotationError(f"{path}: results file not found")
    try:
        records = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AnnotationError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(records, list):
        raise AnnotationError(f"{path}: expected a JSON list of COCO result records")
    for index, record in enumerate(records):
        missing = [k for k in RESULT_KEYS if not isinstance(record, dict) or k not in record]
        if missing:
            raise AnnotationError(f"{path}: record {index} lacks {', '.join(missing)}")
    return records


def rescore(ann_file: str | Path, results_file: str | Path, out_dir: str | Path | None = None,
            max_images: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Metrics of a ``results.json`` written earlier, against ``ann_file``, without a model.

    Images are the annotation file's (the first ``max_images`` by id, as ``solov2 eval``
    takes them); with ``out_dir``, the records are copied there and ``metrics.json`` written."""
    out = prepare_out_dir(out_dir) if out_dir is not None else None
    coco = load_coco(ann_file)
    records = read_results(results_file)
    image_ids = sorted(coco.getImgIds(), key=image_id_order)[:max_images]
    # Scored where it lies: the file is not rewritten.
    in_place = out is not None and Path(results_file).resolve() == (out / "results.json").resolve()
    return score_records(coco, records, image_ids, out, {"images_total": len(image_ids)}, progress,
                         write_results=not in_place)
