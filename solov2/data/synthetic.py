"""A synthetic COCO-format instance segmentation dataset of coloured, textured shapes.

``make_shapes(out_dir, num_train=200, num_val=50, seed=0)`` writes::

    out_dir/train/000000.png ...   out_dir/train.json
    out_dir/val/000000.png ...     out_dir/val.json

Each image has a textured background and a few shapes (circle, square, triangle, star) in
random colours and textures, rotated, with sizes spread log-uniformly from 12.5% to 80% of
the image's short side, so every FPN level's scale range of the ``demo_shapes`` preset gets
objects. Shapes overlap: later ones are drawn over earlier ones, and every annotation is the
VISIBLE part of its shape after occlusion (a compressed RLE; it may have holes or several
pieces). A placement that would leave an earlier shape less than ``min_visible`` of its area
visible is retried elsewhere.
Edges are not anti-aliased, so the masks match the pixels exactly.

Deterministic: image ``i`` of a split depends only on (seed, split, i, size, options).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from ..atomic import write_json_atomic

SHAPE_CLASSES = ("circle", "square", "triangle", "star")
SPLITS = {"train": 1, "val": 2}


@dataclass
class ShapesOptions:
    """How images are drawn; sizes are (height, width) in pixels."""

    size: tuple[int, int] = (160, 160)
    min_objects: int = 2
    max_objects: int = 4
    min_scale: float = 0.125  # sqrt(box area) of a shape, as a fraction of the short side
    max_scale: float = 0.8
    min_visible: float = 0.75  # least visible fraction of an occluded shape

    def check(self) -> None:
        h, w = self.size
        if h < 32 or w < 32:
            raise ValueError(f"image size must be at least 32x32, got {w}x{h}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if not 0 < self.min_scale < self.max_scale <= 1:
            raise ValueError(f"need 0 < min_scale < max_scale <= 1, got {self.min_scale}, {self.max_scale}")
        if not 0 < self.min_visible <= 1:
            raise ValueError(f"min_visible must be in (0, 1], got {self.min_visible}")


@dataclass
class ShapesDataset:
    """Where ``make_shapes`` wrote a dataset."""

    root: Path
    train_ann: Path
    train_images: Path
    val_ann: Path
    val_images: Path
    class_names: tuple[str, ...] = SHAPE_CLASSES
    category_ids: tuple[int, ...] = tuple(range(1, len(SHAPE_CLASSES) + 1))


# ---------------------------------------------------------------------------- drawing


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3)


def _texture(rng: np.random.Generator, h: int, w: int, base: np.ndarray) -> np.ndarray:
    """An (h, w, 3) float image around colour ``base``: flat, noise, stripes, checker or gradient."""
    kind = rng.integers(5)
    image = np.broadcast_to(base, (h, w, 3)).astype(np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 1:  # noise
        image = image + rng.normal(0, 18, size=(h, w, 1)).astype(np.float32)
    elif kind in (2, 3):  # stripes or checker in a second colour close to the first
        other = np.clip(base + rng.uniform(-70, 70, size=3), 0, 255).astype(np.float32)
        period = float(rng.uniform(4, 14))
        angle = float(rng.uniform(0, math.pi))
        u = xs * math.cos(angle) + ys * math.sin(angle)
        if kind == 2:
            pattern = (np.floor(u / period) % 2).astype(bool)
        else:
            v = -xs * math.sin(angle) + ys * math.cos(angle)
            pattern = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(bool)
        image = np.where(pattern[..., None], other, image)
    elif kind == 4:  # linear gradient
        other = np.clip(base + rng.uniform(-90, 90, size=3), 0, 255).astype(np.float32)
        angle = float(rng.uniform(0, 2 * math.pi))
        u = xs * math.cos(angle) + ys * math.sin(angle)
        t = (u - u.min()) / max(float(u.max() - u.min()), 1.0)
        image = image * (1 - t[..., None]) + other * t[..., None]
    return np.clip(image, 0, 255)


def _polygon(kind: str, rng: np.random.Generator, cx: float, cy: float, radius: float) -> np.ndarray:
    """Vertices of a rotated shape of circumradius ``radius``; circles are 64-gons."""
    angle = float(rng.uniform(0, 2 * math.pi))
    if kind == "circle":
        t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        r = np.full_like(t, radius)
    elif kind == "square":
        t = angle + np.arange(4) * math.pi / 2
        r = np.full(4, radius)
    elif kind == "triangle":
        t = angle + np.arange(3) * 2 * math.pi / 3
        r = np.full(3, radius)
    elif kind == "star":
        t = angle + np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, radius, radius * 0.45)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _shape_mask(points: np.ndarray, h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    # 4 fractional bits: sub-pixel vertex positions without anti-aliasing.
    cv2.fillPoly(mask, [np.round(points * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


# Circumradius per unit of sqrt(box area), so sizes are drawn in the unit the scale ranges use.
_RADIUS_PER_SCALE = {"circle": 0.5, "square": 0.5 * math.sqrt(2), "triangle": 0.62, "star": 0.55}


@dataclass
class Shape:
    """One drawn shape: class index, the VISIBLE mask (after occlusion) and the whole shape."""

    label: int
    mask: np.ndarray  # (H, W) bool
    full_mask: np.ndarray  # (H, W) bool


def draw_image(rng: np.random.Generator, options: ShapesOptions) -> tuple[np.ndarray, list[Shape]]:
    """One BGR uint8 image and its shapes, bottom first."""
    h, w = options.size
    background = _colour(rng)
    image = _texture(rng, h, w, background)
    short = min(h, w)
    full_masks: list[np.ndarray] = []
    classes: list[int] = []
    visible = np.zeros((0, h, w), bool)
    wanted = int(rng.integers(options.min_objects, options.max_objects + 1))
    for _ in range(wanted):
        for _attempt in range(20):
            cls = int(rng.integers(len(SHAPE_CLASSES)))
            kind = SHAPE_CLASSES[cls]
            scale = short * math.exp(rng.uniform(math.log(options.min_scale), math.log(options.max_scale)))
            radius = scale * _RADIUS_PER_SCALE[kind]
            margin = min(radius * 0.8, short / 2 - 1)
            cx = float(rng.uniform(margin, w - margin))
            cy = float(rng.uniform(margin, h - margin))
            mask = _shape_mask(_polygon(kind, rng, cx, cy, radius), h, w)
            if mask.sum() < 16:
                continue
            remaining = visible & ~mask
            areas = np.array([m.sum() for m in full_masks], np.float64)
            if len(full_masks) and (remaining.reshape(len(full_masks), -1).sum(1) < options.min_visible * areas).any():
                continue
            colour = _colour(rng)
            for _ in range(10):  # keep the shape distinguishable from the background
                if np.linalg.norm(colour - background) > 90:
                    break
                colour = _colour(rng)
            fill = _texture(rng, h, w, colour)
            image[mask] = fill[mask]
            visible = np.concatenate([remaining, mask[None]], 0)
            full_masks.append(mask)
            classes.append(cls)
            break
    shapes = [Shape(c, v, f) for c, v, f in zip(classes, visible, full_masks)]
    return image.round().astype(np.uint8), shapes


# ---------------------------------------------------------------------------- writing


def make_split(out_dir: Path, split: str, count: int, seed: int, options: ShapesOptions,
               progress: bool = True) -> Path:
    """Write ``count`` images to ``out_dir/split/`` and their annotations to ``out_dir/split.json``."""
    image_dir = out_dir / split
    image_dir.mkdir(parents=True, exist_ok=True)
    h, w = options.size
    images, annotations = [], []
    bar = tqdm(range(count), desc=f"make-shapes {split}", unit="img", disable=not progress, dynamic_ncols=True)
    for index in bar:
        rng = np.random.default_rng([seed, SPLITS[split], index, h, w])
        image, shapes = draw_image(rng, options)
        file_name = f"{index:06d}.png"
        if not cv2.imwrite(str(image_dir / file_name), image):
            raise OSError(f"{image_dir / file_name}: could not write the image")
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        for shape in shapes:
            rle = mask_utils.encode(np.asfortranarray(shape.mask.astype(np.uint8)))
            area = int(mask_utils.area(rle))
            if area == 0:
                continue
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": shape.label + 1,
                "segmentation": rle, "area": area, "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": 0,
            })
    data = {
        "info": {"description": f"solov2 synthetic shapes, split {split}, seed {seed}, size {w}x{h}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPE_CLASSES)],
    }
    ann_file = out_dir / f"{split}.json"
    write_json_atomic(data, ann_file)
    return ann_file


def make_shapes(out_dir: str | Path, num_train: int = 200, num_val: int = 50, seed: int = 0,
                options: ShapesOptions | None = None, progress: bool = True) -> ShapesDataset:
    """Write a train and a val split (see the module docstring); returns their paths."""
    options = options or ShapesOptions()
    options.check()
    if num_train < 0 or num_val < 0:
        raise ValueError(f"image counts must be >= 0, got train {num_train}, val {num_val}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_ann = make_split(out, "train", num_train, seed, options, progress)
    val_ann = make_split(out, "val", num_val, seed, options, progress)
    return ShapesDataset(out, train_ann, out / "train", val_ann, out / "val")


def parse_size(text: str) -> tuple[int, int]:
    """"192" -> (192, 192); "256x192" (width x height) -> (192, 256)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"size must be N or WxH, got {text!r}") from None
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[1], values[0]
    raise ValueError(f"size must be N or WxH, got {text!r}")

