"""Small COCO-format datasets written on the fly: synthetic shapes, annotations for the committed
photographs (tests/data/photos), and subsets of the shared casia set where it is present."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = PROJECT_ROOT / "tests" / "data"
PHOTOS = TEST_DATA / "photos"
# The larger real annotated set, beside the repository where CI has it (not in a public clone).
CASIA = PROJECT_ROOT.parent / "shared" / "data" / "casia-spt-val"

# Rough outlines drawn for the tests (not careful ground truth) of objects in the committed
# photos, as (COCO category id, polygon in pixels): sizes span COCO's small, medium and large.
PHOTO_OBJECTS: dict[str, list[tuple[int, list[tuple[int, int]]]]] = {
    "astronaut.jpg": [
        (1, [(185, 30), (240, 15), (290, 45), (300, 140), (300, 200), (350, 270), (365, 350), (345, 440),
             (290, 512), (40, 512), (25, 330), (60, 250), (120, 215), (125, 170), (165, 150), (155, 70)]),
        (5, [(400, 5), (425, 15), (440, 60), (450, 150), (455, 215), (470, 270), (360, 270), (360, 210),
             (380, 160), (390, 80), (395, 20)]),  # the shuttle model, as "airplane"
    ],
    "chelsea.jpg": [
        (17, [(40, 5), (120, 0), (330, 0), (400, 10), (420, 90), (380, 190), (330, 260), (290, 300),
              (40, 300), (15, 220), (0, 150), (0, 60)]),
    ],
    "coffee.jpg": [
        (47, [(180, 70), (240, 25), (320, 20), (395, 55), (410, 120), (395, 200), (375, 235), (300, 255),
              (250, 250), (250, 290), (215, 300), (195, 270), (205, 235), (180, 160)]),
        (50, [(340, 250), (370, 235), (395, 250), (405, 285), (395, 315), (360, 325), (330, 310), (325, 280)]),
    ],
    "rocket.jpg": [
        (5, [(312, 140), (322, 125), (333, 140), (335, 200), (333, 400), (310, 400), (308, 200)]),
        (10, [(141, 370), (159, 370), (159, 388), (141, 388)]),  # two flood lights, as "traffic light"
        (10, [(354, 389), (372, 389), (372, 407), (354, 407)]),
    ],
}

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


def photo_annotations(first_id: int = 1, absolute: bool = False) -> dict[str, Any]:
    """COCO-format instances of PHOTO_OBJECTS for the committed photos, image ids and annotation
    ids counting from ``first_id``; file names relative to PHOTOS (absolute paths with
    ``absolute``). All 80 COCO categories are listed, in descending id order (a loader must not
    rely on the file's order)."""
    categories = json.loads((TEST_DATA / "coco_categories.json").read_text())[::-1]
    images, annotations = [], []
    for image_id, (name, objects) in enumerate(sorted(PHOTO_OBJECTS.items()), first_id):
        h, w = cv2.imread(str(PHOTOS / name)).shape[:2]
        images.append({"id": image_id, "file_name": str(PHOTOS / name) if absolute else name,
                       "height": h, "width": w})
        for category_id, points in objects:
            poly = np.asarray(points, np.float64)
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            x, y = poly[:, 0], poly[:, 1]
            area = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))  # shoelace
            annotations.append({
                "id": first_id + len(annotations), "image_id": image_id, "category_id": category_id,
                "segmentation": [poly.flatten().tolist()], "area": area,
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "iscrowd": 0,
            })
    return {"images": images, "annotations": annotations, "categories": categories}


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


def train_tiny_cli(tmp_path: Path, work_dir: Path, *extra: str) -> int:
    """``solov2 train`` of a tiny model on 4 shapes images in ``tmp_path/data`` (written unless
    there): 2 iterations per epoch, 3 epochs."""
    from solov2.cli import main

    ann, images = tiny_shapes(tmp_path)
    return main(["train", "--config", "light_448_r18", *TINY_MODEL, f"data.train_ann={ann}",
                 f"data.train_images={images}", "data.workers=0", "input.train_scales=[[96, 64]]",
                 "train.batch_size=2", "train.base_batch_size=2", "train.epochs=3", "train.lr_steps=[2]",
                 "train.warmup_iters=1", "train.log_interval=1", "train.val_interval=0",
                 "--device", "cpu", "--no-progress", "--work-dir", str(work_dir), *extra])


def tiny_shapes(tmp_path: Path) -> tuple[Path, Path]:
    """The 4-image shapes set of ``train_tiny_cli`` in ``tmp_path/data``, written unless there."""
    data = tmp_path / "data"
    if (data / "train.json").is_file():
        return data / "train.json", data / "images"
    return write_shapes_dataset(data, num_images=4, size=(64, 96))


def torchrun_train(preset: str, overrides: list[str], work_dir: Path, processes: int = 2) -> None:
    """``solov2 train --config PRESET OVERRIDES --max-iters 1`` under torch.distributed.run:
    ``processes`` CPU processes (gloo, one thread each); fails the test with its output when
    it does not exit 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           "-m", "solov2", "train", "--config", preset, *overrides,
           "--work-dir", str(work_dir), "--max-iters", "1", "--device", "cpu", "--no-progress"]
    done = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"x{processes}" in done.stdout  # the log names the world size
