"""The whole product in one call: make synthetic shapes, train a small SOLOv2, evaluate, draw.

``run_demo("runs/demo")`` writes::

    runs/demo/data/        the generated dataset (train/, train.json, val/, val.json)
    runs/demo/train/       the training run (config.yaml, train.log, metrics.jsonl, final.pth;
                           the per-epoch checkpoints are removed at the end)
    runs/demo/eval/        results.json and metrics.json on the held-out val images
    runs/demo/overlays/    ground truth | prediction, side by side, for the first val images
    runs/demo/summary.json and summary.txt

The model (preset ``demo_shapes``) trains from scratch; the schedule is the preset's epochs
over ``train_images`` images (8 epochs in batches of 8: as many iterations as images), so
fewer images mean a shorter run. Deterministic for a seed
on a given machine and thread count.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from ..atomic import write_json_atomic
from ..config import Config, load_config
from ..data.image_io import read_image
from ..data.synthetic import ShapesOptions, make_shapes
from ..evaluation.coco_eval import format_metrics, format_per_class, load_coco
from .evaluate import evaluate_dataset
from .distributed import resolve_device
from .predictor import PredictionResult, Predictor
from .trainer import autocast_dtype, train

DEMO_PRESET = "demo_shapes"
DEFAULT_TRAIN_IMAGES = 1200  # = iterations with the preset's 8 epochs of batch 8


@dataclass
class DemoSummary:
    out_dir: str
    seed: int
    train_images: int
    val_images: int
    image_size: list[int]
    iterations: int
    mask_AP: float
    mask_AP50: float
    mask_AP75: float
    box_AP: float
    per_class_mask_AP: dict[str, float | None]
    seconds: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    precision: str = "fp32"  # of the training: "bf16 autocast" or "fp32"


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX). Elsewhere bf16 autocast is
    emulated and slower than float32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def demo_config(data_dir: Path, seed: int, overrides: Sequence[str] = (), device: str | None = "cpu") -> Config:
    """The ``demo_shapes`` preset with the seed and overrides, reading the data in ``data_dir``.

    The preset trains under bf16 autocast; on a CPU without native bf16 the demo trains in
    float32 instead (``train.amp=true`` among the overrides forces bf16)."""
    on_cpu = resolve_device(device).type == "cpu"
    amp = [] if not on_cpu or cpu_has_fast_bf16() else ["train.amp=false"]
    cfg = load_config(DEMO_PRESET, [f"train.seed={seed}", *amp, *overrides])
    cfg.data.train_ann, cfg.data.train_images = str(data_dir / "train.json"), str(data_dir / "train")
    cfg.data.val_ann, cfg.data.val_images = str(data_dir / "val.json"), str(data_dir / "val")
    return cfg


def _ground_truth(coco: Any, image_id: int, category_ids: list[int]) -> PredictionResult:
    """The image's non-crowd annotations as a result; labels index ``category_ids`` (the
    predictor's), so that a class is drawn in the same colour as its predictions."""
    anns = [a for a in coco.imgToAnns[image_id] if not a.get("iscrowd", 0)]
    info = coco.imgs[image_id]
    masks = np.stack([coco.annToMask(a).astype(bool) for a in anns]) if anns else \
        np.zeros((0, info["height"], info["width"]), bool)
    names = [coco.cats[a["category_id"]]["name"] for a in anns]
    label_of = {cat: label for label, cat in enumerate(category_ids)}
    labels = np.array([label_of.get(a["category_id"], len(category_ids)) for a in anns], np.int64)
    return PredictionResult(masks, labels, np.ones(len(anns), np.float32), names,
                            [a["category_id"] for a in anns])


def _enlarge(image: np.ndarray, scale: int) -> np.ndarray:
    return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)


def _enlarge_result(result: PredictionResult, scale: int) -> PredictionResult:
    """The result with its masks enlarged ``scale`` times (pixel replication)."""
    masks = np.repeat(np.repeat(result.masks, scale, axis=1), scale, axis=2)
    return PredictionResult(masks, result.labels, result.scores, result.class_names, result.category_ids)


def training_precision(cfg: Config, device: str | None) -> str:
    """How the demo trains, in words: "bf16 autocast", "fp16 autocast" or "fp32"."""
    if not cfg.train.amp:
        return "fp32"
    dtype = autocast_dtype(resolve_device(device).type)
    return f"{'fp16' if dtype == torch.float16 else 'bf16'} autocast"


def write_overlays(predictor: Predictor, ann_file: Path, images_dir: Path, out_dir: Path,
                   count: int = 12, scale: int = 2, show_thr: float = 0.3) -> list[Path]:
    """Ground truth (left, no scores) and prediction (right: instances scored ``show_thr`` or
    more) of the first ``count`` images, enlarged, captioned, each class in one colour."""
    from ..visualize import draw_result, panel

    coco = load_coco(ann_file)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for image_id in sorted(coco.getImgIds())[:count]:
        info = coco.imgs[image_id]
        image = read_image(images_dir / info["file_name"])
        result = predictor([image])[0]
        truth = _ground_truth(coco, image_id, list(predictor.category_ids))
        left = panel(draw_result(_enlarge(image, scale), _enlarge_result(truth, scale), show_scores=False,
                                 empty_text="no objects"), "ground truth")
        right = panel(draw_result(_enlarge(image, scale), _enlarge_result(result, scale), min_score=show_thr),
                      f"prediction (score >= {show_thr:g})")
        gap = np.full((left.shape[0], 8, 3), 255, np.uint8)
        path = out_dir / f"{Path(info['file_name']).stem}.jpg"
        if not cv2.imwrite(str(path), np.concatenate([left, gap, right], 1)):
            raise OSError(f"{path}: could not write the overlay")
        written.append(path)
    return written


def run_demo(
    out_dir: str | Path = "runs/demo",
    *,
    train_images: int = DEFAULT_TRAIN_IMAGES,
    val_images: int = 50,
    seed: int = 0,
    device: str | None = "cpu",
    overlays: int = 12,
    overrides: Sequence[str] = (),
    progress: bool = True,
) -> DemoSummary:
    """Generate data, train ``demo_shapes`` from scratch, evaluate on held-out images, draw.

    Images are generated at the preset's test size (``input.test_scale``, long x short)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / "data"
    cfg = demo_config(data_dir, seed, overrides, device)
    size = (min(cfg.input.test_scale), max(cfg.input.test_scale))  # (height, width)
    seconds: dict[str, float] = {}
    start = time.perf_counter()

    dataset = make_shapes(data_dir, train_images, val_images, seed, ShapesOptions(size=size), progress=progress)
    seconds["data"] = time.perf_counter() - start

    tick = time.perf_counter()
    checkpoint = train(cfg, out / "train", device=device, progress=progress)
    seconds["train"] = time.perf_counter() - tick
    # The per-epoch and resume checkpoints (~140 MB each with the optimizer state) are of no
    # use once the demo run has finished; final.pth stays.
    for path in [*(out / "train").glob("epoch_*.pth"), out / "train" / "latest.pth"]:
        path.unlink(missing_ok=True)

    tick = time.perf_counter()
    predictor = Predictor.from_config(None, checkpoint, device=device)
    metrics = evaluate_dataset(predictor.model, predictor.cfg, dataset.val_ann, dataset.val_images,
                               out_dir=out / "eval", progress=progress)
    seconds["eval"] = time.perf_counter() - tick

    tick = time.perf_counter()
    drawn = write_overlays(predictor, dataset.val_ann, dataset.val_images, out / "overlays", overlays)
    seconds["overlays"] = time.perf_counter() - tick
    seconds["total"] = time.perf_counter() - start

    iterations = _iterations(out / "train")
    summary = DemoSummary(
        out_dir=str(out), seed=seed, train_images=train_images, val_images=val_images,
        image_size=list(size), iterations=iterations,
        precision=training_precision(cfg, device),
        mask_AP=metrics["mask_AP"], mask_AP50=metrics["mask_AP50"], mask_AP75=metrics["mask_AP75"],
        box_AP=metrics["box_AP"],
        per_class_mask_AP={row["name"]: row["mask_AP"] for row in metrics["per_class"]},
        seconds={k: round(v, 1) for k, v in seconds.items()},
        files={"data": str(data_dir), "checkpoint": str(checkpoint), "results": metrics["results_file"],
               "metrics": metrics["metrics_file"], "overlays": str(out / "overlays"),
               "summary": str(out / "summary.txt")},
    )
    write_json_atomic(asdict(summary), out / "summary.json")
    text = summary_text(summary, metrics, len(drawn))
    tmp = out / ".summary.txt.tmp"
    tmp.write_text(text)
    tmp.replace(out / "summary.txt")
    return summary


def _iterations(work_dir: Path) -> int:
    """Iterations of the finished run, from its metrics log."""
    path = work_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return max((int(r.get("iteration", 0)) for r in rows), default=0)


def summary_text(summary: DemoSummary, metrics: dict[str, Any], overlays: int) -> str:
    s = summary.seconds
    return "\n".join([
        f"solov2 demo (seed {summary.seed}, torch {torch.__version__}, {torch.get_num_threads()} threads)",
        f"data: {summary.train_images} training and {summary.val_images} held-out validation images "
        f"({summary.image_size[1]}x{summary.image_size[0]}) in {summary.files['data']}",
        f"training: {summary.iterations} iterations from scratch ({summary.precision}) in {s['train']:.0f} s; "
        f"weights {summary.files['checkpoint']}",
        f"evaluation on the held-out images ({s['eval']:.0f} s):",
        "",
        format_per_class(metrics["per_class"]),
        "",
        format_metrics(metrics),
        "",
        f"mask AP {100 * summary.mask_AP:.1f}% (AP50 {100 * summary.mask_AP50:.1f}%, "
        f"AP75 {100 * summary.mask_AP75:.1f}%); box AP {100 * summary.box_AP:.1f}% "
        "(metrics.json keeps fractions)",
        f"total time {s['total']:.0f} s (data {s['data']:.0f}, train {s['train']:.0f}, eval {s['eval']:.0f}, "
        f"overlays {s['overlays']:.0f})",
        "",
        f"results:  {summary.files['results']}",
        f"metrics:  {summary.files['metrics']}",
        f"overlays: {summary.files['overlays']} ({overlays} images: ground truth left, prediction right)",
        f"summary:  {summary.files['summary']}",
        "",
    ])
