"""COCO-format instance segmentation datasets for training, with a validation report.

``CocoInstances(ann_file, images_dir)`` reads the JSON, checks every image and annotation
once, and keeps the usable ones:

- missing image files, annotations pointing at unknown images or categories, crowd
  regions, boxes narrower or lower than one pixel, degenerate polygons (fewer than three
  points or no area), empty or malformed masks are left out and counted, with examples;
- images left without usable instances are left out of training and counted;
- if nothing usable remains, ``DatasetError`` says why.

Categories become contiguous labels 0..K-1 in category-id order (or follow a given list of
category ids, e.g. a model's). Masks are decoded with pycocotools (polygons and RLE).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from .augment import TrainSample, TrainTransform, xywh_to_xyxy
from .image_io import ImageReadError, read_image

logger = logging.getLogger("solov2.data")

MAX_EXAMPLES = 5
# Polygons with less area than this (in pixels) are rasterised once to check they cover a pixel.
SMALL_POLYGON_AREA = 4.0

# Problem kinds, in report order.
MISSING_FILE = "image file missing"
UNREADABLE_IMAGE = "image file unreadable"
DUPLICATE_IMAGE = "duplicate image id (later entry ignored)"
BAD_IMAGE_ENTRY = "image entry without id or file_name"
UNKNOWN_IMAGE = "annotation for an unknown image id"
UNKNOWN_CATEGORY = "annotation with an unknown category id"
CROWD = "crowd region (iscrowd=1, never a positive)"
BAD_BOX = "box missing, or narrower or lower than 1 pixel"
DEGENERATE_POLYGON = "degenerate polygon (fewer than 3 points or no area)"
EMPTY_MASK = "empty mask"
OUTSIDE_IMAGE = "mask entirely outside the image"
MALFORMED_SEGMENTATION = "malformed segmentation"
NO_INSTANCES = "image without usable instances (left out of training)"


class DatasetError(ValueError):
    """An annotation file that cannot be used for training."""


@dataclass
class DatasetReport:
    """What the check of a COCO-format dataset found."""

    ann_file: str
    num_images: int = 0  # image entries in the file
    num_annotations: int = 0
    num_categories: int = 0
    usable_images: int = 0
    usable_instances: int = 0
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, example: str) -> None:
        self.counts[kind] += 1
        shown = self.examples.setdefault(kind, [])
        if len(shown) < MAX_EXAMPLES:
            shown.append(example)

    def lines(self) -> list[str]:
        out = [
            f"{self.ann_file}: {self.num_images} images, {self.num_annotations} annotations, "
            f"{self.num_categories} categories; using {self.usable_images} images with "
            f"{self.usable_instances} instances"
        ]
        for kind, count in self.counts.items():
            out.append(f"  {count} x {kind}, e.g. " + "; ".join(self.examples.get(kind, [])))
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


@dataclass
class ImageRecord:
    image_id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # (n, 4) COCO x, y, w, h
    labels: np.ndarray  # (n,) int64
    segmentations: list[Any]  # polygons (list of lists) or RLE dicts, cleaned


def _size(entry: dict, key: str) -> int:
    """An image entry's width or height; 0 when absent or not a number (read from the file then)."""
    value = entry.get(key)
    return int(value) if isinstance(value, (int, float)) and value > 0 else 0


def _polygon_area(poly: list[float]) -> float:
    xs, ys = np.asarray(poly[0::2], np.float64), np.asarray(poly[1::2], np.float64)
    return 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))


def _inside(poly: list[float], height: int, width: int) -> bool:
    """Whether every vertex of a flat [x0, y0, x1, y1, ...] polygon lies within the image."""
    xs, ys = poly[0::2], poly[1::2]
    return min(xs) >= 0 and min(ys) >= 0 and max(xs) <= width and max(ys) <= height


def _rle_from(segmentation: Any, height: int, width: int) -> dict:
    """One RLE for a polygon list, an uncompressed RLE or a compressed RLE."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    counts = segmentation["counts"]
    return {"size": segmentation["size"], "counts": counts.encode() if isinstance(counts, str) else counts}


def check_segmentation(segmentation: Any, height: int, width: int) -> tuple[Any | None, str | None]:
    """A cleaned segmentation, or None and the problem kind."""
    if isinstance(segmentation, list):
        polygons = []
        for poly in segmentation:
            if (
                isinstance(poly, list)
                and len(poly) >= 6
                and len(poly) % 2 == 0
                and all(isinstance(v, (int, float)) and np.isfinite(v) for v in poly)
                and _polygon_area(poly) > 0
            ):
                polygons.append([float(v) for v in poly])
        if not polygons:
            return None, DEGENERATE_POLYGON
        if height > 0 and width > 0:
            small = sum(_polygon_area(p) for p in polygons) < SMALL_POLYGON_AREA
            inside = all(_inside(p, height, width) for p in polygons)
            # Only polygons that are tiny or cross the border can rasterise to nothing.
            if (small or not inside) and mask_utils.area(_rle_from(polygons, height, width)) == 0:
                return None, EMPTY_MASK if inside else OUTSIDE_IMAGE
        return polygons, None
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = segmentation["size"]
        if not (isinstance(size, list) and len(size) == 2):
            return None, MALFORMED_SEGMENTATION
        if height > 0 and width > 0 and [int(size[0]), int(size[1])] != [height, width]:
            return None, MALFORMED_SEGMENTATION
        counts = segmentation["counts"]
        if isinstance(counts, list):
            if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != size[0] * size[1]:
                return None, MALFORMED_SEGMENTATION
            if sum(counts[1::2]) == 0:
                return None, EMPTY_MASK
            return segmentation, None
        if not isinstance(counts, (str, bytes)):
            return None, MALFORMED_SEGMENTATION
        try:
            area = int(mask_utils.area(_rle_from(segmentation, size[0], size[1])))
        except Exception:  # pycocotools raises plain exceptions for corrupt strings
            return None, MALFORMED_SEGMENTATION
        if area == 0:
            return None, EMPTY_MASK
        return segmentation, None
    return None, MALFORMED_SEGMENTATION


def _likely_cause(report: DatasetReport) -> str:
    """What most likely left a dataset without usable images, and what to change."""
    counts = report.counts
    if counts[MISSING_FILE]:
        return "check that data.train_images is the folder the file_name entries are relative to"
    if counts[CROWD] and not report.usable_instances and counts[CROWD] >= counts[NO_INSTANCES]:
        return "every instance is a crowd region (iscrowd=1); SOLOv2 learns from iscrowd=0 instances"
    if counts[UNKNOWN_CATEGORY]:
        return "the annotations' category_id values are not in the file's categories (or the model's classes)"
    if counts[UNREADABLE_IMAGE]:
        return "the image files cannot be decoded; check that they are images and not empty"
    return "no annotation has a usable box and mask; see the problems above"


def decode_masks(segmentations: list[Any], height: int, width: int) -> np.ndarray:
    """(n, height, width) uint8 masks from cleaned segmentations."""
    if not segmentations:
        return np.zeros((0, height, width), np.uint8)
    rles = [_rle_from(s, height, width) for s in segmentations]
    with warnings.catch_warnings():  # pycocotools' numpy 2 copy-keyword notice
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded = mask_utils.decode(rles)
    return np.ascontiguousarray(decoded.transpose(2, 0, 1))


def read_coco_json(ann_file: str | Path) -> dict[str, Any]:
    """The JSON of a COCO-format file, with a clear error when it is missing or malformed."""
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise DatasetError(f"{ann_file}: annotation file not found")
    try:
        with open(ann_file, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{ann_file}: not valid JSON ({err})") from err
    except OSError as err:
        raise DatasetError(f"{ann_file}: cannot be read ({err})") from err
    if not isinstance(data, dict):
        raise DatasetError(f"{ann_file}: expected a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{ann_file}: no '{key}' list (not a COCO instances file?)")
    return data


class CocoInstances(Dataset):
    """A COCO-format training set: items are augmented ``TrainSample``s.

    ``category_ids`` fixes the label order (label i = dataset category ``category_ids[i]``);
    by default all the file's categories in id order. Items are indexed by ``index`` or
    ``(index, epoch)``: the random augmentation of an item depends only on ``seed``, the
    epoch and the index, so runs are reproducible whatever the worker count, the number of
    processes or a resume.
    """

    def __init__(
        self,
        ann_file: str | Path,
        images_dir: str | Path,
        transform: TrainTransform | None = None,
        category_ids: list[int] | None = None,
        box_convention: str = "mmdet2",
        seed: int = 0,
    ):
        self.ann_file = Path(ann_file)
        self.images_dir = Path(images_dir)
        self.transform = transform
        self.box_convention = box_convention
        self.seed = seed
        if not self.images_dir.is_dir():
            raise DatasetError(f"{self.images_dir}: image folder not found (for {self.ann_file})")
        data = read_coco_json(self.ann_file)
        self.report = DatasetReport(str(self.ann_file))
        self._read_categories(data["categories"], category_ids)
        self.records = self._read_records(data["images"], data["annotations"])
        if not self.records:
            raise DatasetError("no usable training images:\n" + "\n".join(self.report.lines())
                               + f"\n({_likely_cause(self.report)})")

    def _read_categories(self, categories: list[Any], category_ids: list[int] | None) -> None:
        names: dict[int, str] = {}
        for cat in categories:
            if not isinstance(cat, dict) or not isinstance(cat.get("id"), int):
                raise DatasetError(f"{self.ann_file}: category entry without an integer id: {cat!r}")
            if cat["id"] in names:
                raise DatasetError(f"{self.ann_file}: category id {cat['id']} appears twice")
            names[cat["id"]] = str(cat.get("name", cat["id"]))
        self.report.num_categories = len(names)
        if category_ids:
            self.category_ids = list(category_ids)
        else:
            self.category_ids = sorted(names)
        if not self.category_ids:
            raise DatasetError(f"{self.ann_file}: no categories")
        self.class_names = [names.get(cid, f"class_{cid}") for cid in self.category_ids]
        self.label_of = {cid: label for label, cid in enumerate(self.category_ids)}
        self._known_categories = set(names)

    def _read_records(self, images: list[Any], annotations: list[Any]) -> list[ImageRecord]:
        report = self.report
        report.num_images = len(images)
        report.num_annotations = len(annotations)
        entries: dict[int, dict] = {}
        for entry in images:
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), (int, str)) or not entry.get("file_name"):
                report.add(BAD_IMAGE_ENTRY, repr(entry)[:80])
                continue
            if entry["id"] in entries:
                report.add(DUPLICATE_IMAGE, f"id {entry['id']}")
                continue
            entries[entry["id"]] = entry
        per_image: dict[int, list[tuple[list[float], int, Any]]] = {i: [] for i in entries}
        for ann in annotations:
            where = f"annotation {ann.get('id', '?')}" if isinstance(ann, dict) else repr(ann)[:40]
            if not isinstance(ann, dict) or not isinstance(ann.get("image_id"), (int, str)) or ann["image_id"] not in entries:
                report.add(UNKNOWN_IMAGE, f"{where} -> image {ann.get('image_id') if isinstance(ann, dict) else '?'}")
                continue
            cid = ann.get("category_id")
            if not isinstance(cid, int) or cid not in self._known_categories or cid not in self.label_of:
                report.add(UNKNOWN_CATEGORY, f"{where} -> category {cid}")
                continue
            if ann.get("iscrowd", 0):
                report.add(CROWD, where)
                continue
            box = ann.get("bbox")
            if (
                not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in box)
                or box[2] < 1 or box[3] < 1
            ):
                report.add(BAD_BOX, f"{where}: bbox {box}")
                continue
            entry = entries[ann["image_id"]]
            height, width = _size(entry, "height"), _size(entry, "width")
            segmentation, problem = check_segmentation(ann.get("segmentation"), height, width)
            if problem:
                report.add(problem, where)
                continue
            per_image[ann["image_id"]].append((box, self.label_of[cid], segmentation))

        records = []
        for image_id, entry in entries.items():
            path = self.images_dir / str(entry["file_name"])
            if not path.is_file():
                report.add(MISSING_FILE, str(path))
                continue
            if not cv2.haveImageReader(str(path)):  # reads the file's signature only
                report.add(UNREADABLE_IMAGE, f"{path}: empty or not an image file")
                continue
            instances = per_image[image_id]
            if not instances:
                report.add(NO_INSTANCES, f"{entry['file_name']}")
                continue
            width, height = _size(entry, "width"), _size(entry, "height")
            if width <= 0 or height <= 0:
                try:
                    height, width = read_image(path).shape[:2]
                except ImageReadError as err:
                    report.add(UNREADABLE_IMAGE, str(err))
                    continue
            records.append(
                ImageRecord(
                    image_id=image_id,
                    path=path,
                    width=width,
                    height=height,
                    boxes=np.asarray([b for b, _, _ in instances], np.float32).reshape(-1, 4),
                    labels=np.asarray([lb for _, lb, _ in instances], np.int64),
                    segmentations=[s for _, _, s in instances],
                )
            )
            report.usable_instances += len(instances)
        report.usable_images = len(records)
        return records

    def __len__(self) -> int:
        return len(self.records)

    def aspect_groups(self) -> list[int]:
        """1 for landscape images (width > height), 0 otherwise, per item."""
        return [int(r.width > r.height) for r in self.records]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """BGR image, (n, h, w) uint8 masks, (n, 4) x1 y1 x2 y2 boxes and (n,) labels of an item."""
        record = self.records[index]
        image = read_image(record.path)
        height, width = image.shape[:2]
        keep = list(range(len(record.segmentations)))
        if (height, width) != (record.height, record.width):
            # The file's size wins; polygons still fit, RLE of another size cannot be used.
            keep = [i for i in keep if not isinstance(record.segmentations[i], dict)]
            logger.warning(
                f"warning: {record.path}: image is {width}x{height} but the annotations say "
                f"{record.width}x{record.height}; {len(record.segmentations) - len(keep)} RLE masks dropped"
            )
        masks = decode_masks([record.segmentations[i] for i in keep], height, width)
        boxes = xywh_to_xyxy(record.boxes[keep], self.box_convention)
        return image, masks, boxes, record.labels[keep]

    def __getitem__(self, key: int | tuple[int, int]) -> TrainSample:
        index, epoch = (key, 0) if isinstance(key, (int, np.integer)) else key
        if self.transform is None:
            raise RuntimeError("CocoInstances needs a transform to produce training samples")
        rng = np.random.default_rng([self.seed, epoch, index])
        for attempt in range(len(self.records)):
            item = (index + attempt) % len(self.records)
            try:
                image, masks, boxes, labels = self.load(item)
            except ImageReadError as err:
                logger.warning(f"warning: {err}; using another image instead")
                continue
            return self.transform(image, masks, boxes, labels, rng, self.records[item].image_id)
        raise DatasetError(f"{self.ann_file}: none of the images could be read")
