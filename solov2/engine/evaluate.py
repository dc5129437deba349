"""Evaluation of a model on a COCO-format dataset: predict every image, score with pycocotools.

``evaluate_dataset(model, cfg, ann_file, images_dir)`` is what ``solov2 eval`` runs and what
training calls for validation. Under ``torch.distributed`` each process predicts a share of
the images, the result records are gathered on rank 0, which scores them and writes the
files, and every process returns the same metrics.
"""

from __future__ import annotations

import re
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from pycocotools.coco import COCO
from torch import nn
from tqdm import tqdm

from ..atomic import write_json_atomic
from ..config import Config
from ..data.coco_classes import COCO_CATEGORY_IDS, class_names_and_ids
from ..data.image_io import ImageReadError, read_image
from ..evaluation.coco_eval import GroundTruth, image_id_order, load_coco
from ..evaluation.results import to_coco_records
from ..evaluation.scoring import prepare_out_dir, score_records
from .predictor import Predictor


class CategoryMatchError(ValueError):
    """The model's classes cannot be matched to the dataset's categories."""


@dataclass
class ShardOutput:
    """What one process produced: result records, failure messages, counts and time."""

    records: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    images: int = 0
    seconds: float = 0.0
    done: int = 0  # images whose batch finished, read or not: a prefix of the shard's images


class EvaluationInterrupted(KeyboardInterrupt):
    """Ctrl-C while predicting; ``results_file`` (or None) holds the predictions of the first
    ``done`` images by id, which ``solov2 eval --results FILE --max-images DONE`` scores."""

    def __init__(self, shard: ShardOutput, total: int):
        super().__init__(f"interrupted after {shard.done} of {total} images")
        self.shard = shard
        self.results_file: Path | None = None


def _normalize(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def match_categories(cfg: Config, categories: Sequence[dict[str, Any]]) -> tuple[list[int], list[str]]:
    """Label -> dataset category id (-1: the dataset has no such category), and notes.

    A model that records its ``category_ids`` (trained on this dataset) uses them. Otherwise
    classes are matched by name; a model with the 80 COCO classes and no recorded ids is
    matched by COCO ids when the dataset uses COCO's ids. Raises ``CategoryMatchError`` when no
    class matches.
    """
    model = cfg.model
    names, ids = class_names_and_ids(model.num_classes, model.class_names, model.category_ids)
    dataset_ids = {int(c["id"]): str(c["name"]) for c in categories}
    notes: list[str] = []
    if model.category_ids:
        mapping = [i if i in dataset_ids else -1 for i in ids]
        renamed = [f"{i}: model '{n}' vs dataset '{dataset_ids[i]}'" for n, i in zip(names, ids)
                   if i in dataset_ids and _normalize(n) != _normalize(dataset_ids[i])]
        if renamed:
            notes.append(f"{len(renamed)} category names differ between model and dataset "
                         f"(matched by id): {'; '.join(renamed[:5])}")
        how = "recorded category ids"
    else:
        by_name: dict[str, list[int]] = {}
        for cid, cname in dataset_ids.items():
            by_name.setdefault(_normalize(cname), []).append(cid)
        mapping = [by_name[_normalize(n)][0] if len(by_name.get(_normalize(n), [])) == 1 else -1 for n in names]
        how = "class names"
        coco_like = model.num_classes == 80 and set(dataset_ids) <= set(COCO_CATEGORY_IDS)
        if coco_like and sum(m >= 0 for m in mapping) < len(dataset_ids):
            mapping = [i if i in dataset_ids else -1 for i in COCO_CATEGORY_IDS]
            how = "COCO category ids"
    matched = sum(m >= 0 for m in mapping)
    if matched == 0:
        raise CategoryMatchError(
            f"none of the model's {len(names)} classes ({', '.join(names[:6])}"
            f"{', ...' if len(names) > 6 else ''}) matches the dataset's categories "
            f"({', '.join(list(dataset_ids.values())[:6])}{', ...' if len(dataset_ids) > 6 else ''}) "
            f"by {how}; evaluate with a model trained on these categories"
        )
    unmatched_model = [n for n, m in zip(names, mapping) if m < 0]
    unmatched_data = sorted(set(dataset_ids) - set(mapping))
    if unmatched_model:
        notes.append(f"{len(unmatched_model)} model classes have no dataset category; their detections "
                     f"are dropped: {', '.join(unmatched_model[:8])}{' ...' if len(unmatched_model) > 8 else ''}")
    if unmatched_data:
        notes.append(f"{len(unmatched_data)} dataset categories have no model class (their AP is 0 where "
                     f"they have instances): {', '.join(dataset_ids[i] for i in unmatched_data[:8])}"
                     f"{' ...' if len(unmatched_data) > 8 else ''}")
    return mapping, notes


def _read(path: Path, expected: tuple[int, int]) -> np.ndarray:
    image = read_image(path)
    if image.shape[:2] != expected:
        raise ImageReadError(
            f"{path}: image is {image.shape[1]}x{image.shape[0]} but the annotations say "
            f"{expected[1]}x{expected[0]}"
        )
    return image


def predict_shard(
    predictor: Predictor,
    coco: COCO,
    image_ids: Sequence[int],
    images_dir: Path,
    label_to_category: Sequence[int],
    batch_size: int = 4,
    progress: bool = True,
) -> ShardOutput:
    """Predict the given images; unreadable ones are reported (one line each) and skipped.
    Ctrl-C raises ``EvaluationInterrupted`` with what was done."""
    out = ShardOutput()
    try:
        _predict_into(out, predictor, coco, image_ids, images_dir, label_to_category, batch_size, progress)
    except KeyboardInterrupt as err:
        raise EvaluationInterrupted(out, len(image_ids)) from err
    return out


def _predict_into(out: ShardOutput, predictor: Predictor, coco: COCO, image_ids: Sequence[int], images_dir: Path,
                  label_to_category: Sequence[int], batch_size: int, progress: bool) -> None:
    """``predict_shard``'s loop: fills ``out`` as each batch is done."""
    infos = coco.loadImgs(list(image_ids))
    batches = [infos[i : i + batch_size] for i in range(0, len(infos), batch_size)]
    bar = tqdm(total=len(infos), unit="img", desc="eval", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:

        def submit(batch: list[dict]) -> list[Future]:
            return [pool.submit(_read, images_dir / info["file_name"], (info["height"], info["width"]))
                    for info in batch]

        pending = submit(batches[0]) if batches else []
        for index, batch in enumerate(batches):
            futures = pending
            pending = submit(batches[index + 1]) if index + 1 < len(batches) else []
            loaded: list[tuple[dict, np.ndarray]] = []
            for info, future in zip(batch, futures):
                try:
                    loaded.append((info, future.result()))
                except ImageReadError as err:
                    out.failures.append(str(err))
                    tqdm.write(f"error: {err}", file=sys.stderr)
            results = predictor.predict_batch([image for _, image in loaded]) if loaded else []
            for (info, _), result in zip(loaded, results):
                records = to_coco_records(result, image_id=info["id"], category_ids=label_to_category)
                out.records += [r for r in records if r["category_id"] >= 0]
                out.images += 1
            out.done += len(batch)
            bar.update(len(batch))
    out.seconds = time.perf_counter() - start
    bar.close()


def _unwrap(model: nn.Module) -> nn.Module:
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _gather(shard: ShardOutput, distributed: bool) -> list[ShardOutput]:
    if not distributed:
        return [shard]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, shard)
    return gathered


def evaluate_dataset(
    model: nn.Module,
    cfg: Config,
    ann_file: str | Path,
    images_dir: str | Path,
    out_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    *,
    batch_size: int = 4,
    max_images: int | None = None,
    distributed: bool | None = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """COCO mask and box metrics of ``model`` on a COCO-format dataset.

    Returns ``mask_AP``, ``mask_AP50``, ``mask_AP75``, ``mask_APs/m/l``, ``mask_AR*``, the
    same for ``box_`` (boxes enclosing the masks), ``per_class`` (id, name, gt count, AP),
    ``images``, ``images_per_second``, ``failed_images`` (messages; those images stay in the
    evaluation with no detections), ``skipped_annotations`` (ground truth that cannot be
    rasterised, left out as training leaves it out, by problem kind) and, with ``out_dir``,
    ``results_file`` and ``metrics_file`` (written atomically).

    ``out_dir`` is checked writable before anything is predicted (``OutputDirError``), and
    ``results.json`` is written before scoring: when pycocotools fails (``ScoringError``) the
    predictions are kept and ``solov2 eval --results`` scores them again.

    ``distributed``: None uses torch.distributed when a process group of 2+ processes is
    initialized, and then EVERY process must call this function; pass False when only one
    process (e.g. rank 0 during training) calls it. ``model`` may be wrapped in DDP; its
    training mode is restored afterwards. ``device`` defaults to the model's device.
    """
    net = _unwrap(model)
    if device is None:
        param = next(net.parameters(), None)
        device = param.device if param is not None else "cpu"
    was_training = net.training
    try:
        predictor = Predictor(net, cfg, device, precision=precision, batch_size=batch_size)
        return evaluate_predictor(predictor, cfg, ann_file, images_dir, out_dir, progress,
                                  batch_size=batch_size, max_images=max_images, distributed=distributed)
    finally:
        net.train(was_training)


def evaluate_predictor(
    predictor: Any,
    cfg: Config,
    ann_file: str | Path,
    images_dir: str | Path,
    out_dir: str | Path | None = None,
    progress: bool = True,
    *,
    batch_size: int = 4,
    max_images: int | None = None,
    distributed: bool | None = None,
) -> dict[str, Any]:
    """``evaluate_dataset`` for any predictor with ``predict_batch`` (the PyTorch ``Predictor``,
    or an exported model's: ``OnnxPredictor``, ``OpenVinoPredictor``); ``cfg`` gives its classes."""
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    out = prepare_out_dir(out_dir) if out_dir is not None and rank == 0 else None
    coco = load_coco(ann_file)
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{images_dir}: images folder not found")
    mapping, notes = match_categories(cfg, coco.loadCats(coco.getCatIds()))
    image_ids = sorted(coco.getImgIds(), key=image_id_order)
    if max_images is not None:
        image_ids = image_ids[:max_images]
    if rank == 0:  # mismatched classes change what the numbers mean: said even without progress
        for note in notes:
            print(f"warning: {note}", file=sys.stderr)
    try:
        shard = predict_shard(predictor, coco, image_ids[rank::world], images_dir, mapping,
                              batch_size=batch_size, progress=progress and rank == 0)
    except EvaluationInterrupted as stop:
        if out is not None and not distributed:  # the done images are the first ones by id
            stop.results_file = out / "results.json"
            write_json_atomic(_sorted_records(stop.shard.records), stop.results_file)
        raise
    shards = _gather(shard, distributed)

    metrics: dict[str, Any] | None = None
    if rank == 0:
        metrics = _score_shards(coco, shards, image_ids, notes, out, progress)
    if distributed:
        holder = [metrics]
        dist.broadcast_object_list(holder, src=0)
        metrics = holder[0]
    assert metrics is not None
    return metrics


def _sorted_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(records, key=lambda r: (image_id_order(r["image_id"]), -r["score"]))


def _score_shards(coco: GroundTruth, shards: list[ShardOutput], image_ids: list[Any], notes: list[str],
                  out: Path | None, progress: bool) -> dict[str, Any]:
    """Rank 0: the gathered records scored (``score_records``), with the run's counts."""
    records = _sorted_records([r for s in shards for r in s.records])
    failures = [f for s in shards for f in s.failures]
    seconds = max(s.seconds for s in shards)
    images = sum(s.images for s in shards)
    run_info = dict(images=images, images_total=len(image_ids),
                    images_per_second=images / seconds if seconds > 0 else 0.0,
                    processes=len(shards), failed_images=failures, notes=notes)
    metrics = score_records(coco, records, image_ids, out, run_info, progress)
    if failures and progress:
        print(f"{len(failures)} of {len(image_ids)} images could not be read; they count as images "
              "with no detections:", file=sys.stderr)
        for message in failures:
            print(f"  {message}", file=sys.stderr)
    return metrics
