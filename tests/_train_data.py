"""Small COCO-format datasets written on the fly for the training tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CASIA = PROJECT_ROOT.parent / "shared" / "data" / "casia-spt-val"

# A narrow model so that CPU training steps take a fraction of a second.
TINY_MODEL = [
    "model.fpn_channels=64",
    "model.head_channels=64",
    "model.kernel_channels=32",
    "model.mask_mid_channels=32",
    "model.grids=[12, 10, 8, 6, 4]",
    "model.scale_ranges=[[1, 24], [12, 48], [24, 96], [48, 192], [96, 384]]",
]


def shape_polygon(kind: str, cx: float, cy: float, r: float) -> np.ndarray:
    if kind == "square":
        return np.array([[cx - r, cy - r], [cx + r, cy - r], [cx + r, cy + r], [cx - r, cy + r]])
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1)


def write_shapes_dataset(root: Path, num_images: int = 8, size: tuple[int, int] = (96, 128), seed: int = 0,
                         file_ext: str = ".png") -> tuple[Path, Path]:
    """Images of squares (category id 3) and discs (category id 7) on noise; returns
    (annotation file, image folder)."""
    rng = np.random.default_rng(seed)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    h, w = size
    images, annotations = [], []
    for i in range(num_images):
        image = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            kind = ["square", "disc"][int(rng.integers(2))]
            r = float(rng.uniform(8, min(h, w) / 4))
            cx, cy = float(rng.uniform(r, w - r)), float(rng.uniform(r, h - r))
            poly = shape_polygon(kind, cx, cy, r)
            colour = (40, 200, 240) if kind == "square" else (230, 90, 60)
            cv2.fillPoly(image, [np.round(poly).astype(np.int32)], colour)
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": 3 if kind == "square" else 7,
                "segmentation": [poly.flatten().round(2).tolist()], "area": float((x1 - x0) * (y1 - y0)),
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "iscrowd": 0,
            })
        name = f"img_{i:03d}{file_ext}"
        cv2.imwrite(str(images_dir / name), image)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
    ann = root / "train.json"
    write_json(ann, {"images": images, "annotations": annotations,
                     "categories": [{"id": 7, "name": "disc"}, {"id": 3, "name": "square"}]})
    return ann, images_dir


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def casia_subset(out: Path, count: int) -> Path:
    """An annotation file with the first ``count`` images of the shared casia set."""
    data = json.loads((CASIA / "val_annotation.json").read_text())
    images = data["images"][:count]
    keep = {im["id"] for im in images}
    data["images"] = images
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    return write_json(out, data)


def read_metrics(work_dir: Path, kind: str = "train") -> list[dict]:
    rows = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("type") == kind]
