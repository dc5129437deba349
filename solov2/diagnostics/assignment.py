"""Object sizes against the scale ranges, and the grid assignment training would make.

``size_levels`` puts every usable instance through the training resize at each of
``input.train_scales`` (no flip: it changes neither sizes nor cell counts) and applies the
scale-range rule of ``solov2.model.targets.build_targets``: an instance trains level l when
sqrt(box area) at that scale lies in ``model.scale_ranges[l]`` (both ends included).

``grid_assignment`` runs ``build_targets`` itself on every image at one training scale, with
the masks rasterised from the polygons at 1/4 of the training resolution (the resolution of
the mask targets) instead of at full resolution: the boxes and the scale ranges are divided by
4 with them, so the level rule is unchanged and the cell arithmetic (relative to the padded
size) sees centres of mass within about a pixel of training's. No image file is read. From
the targets it counts positive cells per instance and level, instances without any, cells
that several instances claim (the later instance's class wins) and instances that lose every
cell they claim; from the 1/4 masks, masks with no pixel left, masks smaller than one cell
of their level's feature map (stride x stride pixels at the training scale) and masks whose
centre of mass is not on the object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pycocotools import mask as mask_utils
from tqdm import tqdm

from ..config import Config
from ..data.augment import resize_masks_nearest, xywh_to_xyxy
from ..data.coco import CocoInstances, decode_masks
from ..data.transforms import rescale_size
from ..model.targets import MASK_STRIDE, build_targets, mask_centers

CHUNK_IMAGES = 64  # images per build_targets call (same padded size)
# A 1/4 pixel j stands for the training-scale pixels 4j..4j+3: the polygons are shifted by
# this many 1/4 pixels so that 4 x (centre of mass at 1/4) estimates the training-scale centre.
# Chosen against build_targets at full resolution (test_assignment_matches_build_targets...):
# of 160 instances, 0.375 (the block centre, 1.5 / 4) gives 81% identical cell counts, 0.5
# 89%, 0.625 83%; the rest differ by one row or column of their 3x3 region.
CENTRE_SHIFT = 0.5


@dataclass
class ScaledInstances:
    """All usable instances of a dataset at one training scale (N images, M instances)."""

    scale: list[int]  # (long, short) edge of the training scale
    new_sizes: np.ndarray  # (N, 2) resized (height, width) of each image
    image_of: np.ndarray  # (M,) image index of each instance
    boxes: np.ndarray  # (M, 4) x1, y1, x2, y2 float32 at the training scale
    sizes: np.ndarray  # (M,) sqrt(box area) at the training scale, float32
    levels: np.ndarray  # (L, M) bool: the instance's size lies in level l's scale range


def scale_instances(dataset: CocoInstances, cfg: Config, scale: list[int]) -> ScaledInstances:
    """Boxes of every instance after the training resize to ``scale``, as ``TrainTransform``
    computes them (per-axis factors and clipping of ``data.box_convention``), and their levels."""
    records = dataset.records
    counts = np.array([len(r.labels) for r in records], dtype=np.int64)
    image_of = np.repeat(np.arange(len(records)), counts)
    hw = np.array([[r.height, r.width] for r in records], dtype=np.float64).reshape(-1, 2)
    new_sizes = np.array([rescale_size(r.height, r.width, scale) for r in records], dtype=np.int64).reshape(-1, 2)
    xywh = np.concatenate([r.boxes for r in records]) if records else np.zeros((0, 4), np.float32)
    boxes = xywh_to_xyxy(xywh, cfg.data.box_convention)
    h, w = hw[image_of, 0], hw[image_of, 1]
    nh, nw = new_sizes[image_of, 0].astype(np.float64), new_sizes[image_of, 1].astype(np.float64)
    if cfg.data.box_convention == "v1":
        factor = np.minimum(max(scale) / np.maximum(h, w), min(scale) / np.minimum(h, w))
        boxes = boxes * factor[:, None].astype(np.float32)
        limit_w, limit_h = nw - 1, nh - 1
    else:
        boxes = boxes * np.stack([nw / w, nh / h, nw / w, nh / h], 1).astype(np.float32)
        limit_w, limit_h = nw, nh
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, limit_w[:, None]).astype(np.float32)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, limit_h[:, None]).astype(np.float32)
    sizes = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).astype(np.float32)
    ranges = np.asarray(cfg.model.scale_ranges, dtype=np.float32).reshape(-1, 2)
    levels = (sizes[None] >= ranges[:, :1]) & (sizes[None] <= ranges[:, 1:])
    return ScaledInstances(list(scale), new_sizes, image_of, boxes.astype(np.float32), sizes, levels)


def _padded(size: int, divisor: int) -> int:
    return -(-size // divisor) * divisor


def quarter_masks(dataset: CocoInstances, index: int, new_hw: tuple[int, int], pad_hw: tuple[int, int]) -> np.ndarray:
    """(n, pad_h/4, pad_w/4) uint8 masks of image ``index`` at 1/4 of the training scale,
    rasterised from the polygons scaled by (new size / original size) / 4 (and shifted by
    CENTRE_SHIFT); RLE masks are
    decoded at the original size and resized by nearest neighbour."""
    record = dataset.records[index]
    qh, qw = pad_hw[0] // MASK_STRIDE, pad_hw[1] // MASK_STRIDE
    fy = new_hw[0] / record.height / MASK_STRIDE
    fx = new_hw[1] / record.width / MASK_STRIDE
    out = np.zeros((len(record.segmentations), qh, qw), np.uint8)
    polygon_rles, polygon_rows = [], []
    for i, seg in enumerate(record.segmentations):
        if isinstance(seg, list):
            scaled = [(np.asarray(p, np.float64).reshape(-1, 2) * (fx, fy) + CENTRE_SHIFT).ravel().tolist()
                      for p in seg]
            polygon_rles.append(mask_utils.merge(mask_utils.frPyObjects(scaled, qh, qw)))
            polygon_rows.append(i)
        else:
            full = decode_masks([seg], record.height, record.width)
            small = resize_masks_nearest(full, max(new_hw[0] // MASK_STRIDE, 1), max(new_hw[1] // MASK_STRIDE, 1))
            out[i, : small.shape[1], : small.shape[2]] = small[0, :qh, :qw]
    if polygon_rles:
        out[polygon_rows] = decode_masks(polygon_rles, qh, qw)
    return out


@dataclass
class Assignment:
    """Per-instance results of ``grid_assignment`` at one scale (L levels, M instances)."""

    scale: list[int]
    cells: np.ndarray  # (L, M) positive cells of each instance per level
    owned: np.ndarray  # (M,) cells whose class target is the instance's (after overwrites)
    level_cells: np.ndarray  # (L,) positive cells per level, all images
    shared_cells: np.ndarray  # (L,) positive cells claimed by more than one instance
    mask_pixels: np.ndarray  # (M,) pixels of the 1/4 mask target
    centre_outside: np.ndarray  # (M,) bool: centre of mass on a background pixel of the mask


def _chunk_targets(dataset: CocoInstances, cfg: Config, inst: ScaledInstances, images: list[int],
                   pad_hw: tuple[int, int], out: Assignment, first: dict[int, int]) -> None:
    """build_targets on a chunk of images of one padded size; results go into ``out``."""
    masks = [torch.from_numpy(quarter_masks(dataset, i, tuple(inst.new_sizes[i]), pad_hw)) for i in images]
    rows = [np.arange(first[i], first[i] + len(dataset.records[i].labels)) for i in images]
    quarter = float(MASK_STRIDE)
    targets = build_targets(
        [torch.from_numpy(inst.boxes[r]) / quarter for r in rows],
        [torch.from_numpy(dataset.records[i].labels) for i in images],
        masks, (pad_hw[0] // MASK_STRIDE**2, pad_hw[1] // MASK_STRIDE**2),
        cfg.model.grids, [[lo / quarter, hi / quarter] for lo, hi in cfg.model.scale_ranges],
        cfg.model.sigma, cfg.model.num_classes,
    )
    global_rows = torch.from_numpy(np.concatenate(rows))
    inst_rows = global_rows[targets.pair_instance]
    np.add.at(out.cells, (targets.pair_level.numpy(), inst_rows.numpy()), 1)
    # One key per (level, image, cell): several pairs with one key are instances sharing a cell.
    key = (targets.pair_level * len(images) + targets.pair_image) * max(cfg.model.grids) ** 2 + targets.pair_cell
    unique, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    owner = torch.full((len(unique),), -1, dtype=torch.int64).scatter_reduce_(0, inverse, targets.pair_instance, "amax")
    np.add.at(out.owned, global_rows[owner].numpy(), 1)
    unique_level = (unique // (len(images) * max(cfg.model.grids) ** 2)).numpy()
    np.add.at(out.level_cells, unique_level, 1)
    np.add.at(out.shared_cells, unique_level[(counts > 1).numpy()], 1)
    all_masks = torch.cat(masks)
    cy, cx, area = mask_centers(all_masks)
    out.mask_pixels[global_rows.numpy()] = area.numpy()
    on = area > 0
    iy = cy[on].round().long().clamp(0, all_masks.shape[1] - 1)
    ix = cx[on].round().long().clamp(0, all_masks.shape[2] - 1)
    inside = all_masks[on.nonzero().flatten(), iy, ix] > 0
    out.centre_outside[global_rows[on].numpy()] = ~inside.numpy()


def grid_assignment(dataset: CocoInstances, cfg: Config, inst: ScaledInstances, progress: bool = False) -> Assignment:
    """The positive cells ``build_targets`` gives every instance at ``inst.scale`` (see the module)."""
    num_levels, num = len(cfg.model.grids), len(inst.sizes)
    out = Assignment(inst.scale, np.zeros((num_levels, num), np.int64), np.zeros(num, np.int64),
                     np.zeros(num_levels, np.int64), np.zeros(num_levels, np.int64),
                     np.zeros(num, np.int64), np.zeros(num, bool))
    counts = [len(r.labels) for r in dataset.records]
    first = dict(enumerate(np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64).tolist()))
    divisor = cfg.input.size_divisor
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (h, w) in enumerate(inst.new_sizes.tolist()):
        groups.setdefault((_padded(h, divisor), _padded(w, divisor)), []).append(i)
    bar = tqdm(total=len(counts), desc=f"assign {inst.scale[0]}x{inst.scale[1]}", unit="img",
               disable=not progress, dynamic_ncols=True)
    with torch.inference_mode():
        for pad_hw, images in groups.items():
            for start in range(0, len(images), CHUNK_IMAGES):
                chunk = images[start : start + CHUNK_IMAGES]
                _chunk_targets(dataset, cfg, inst, chunk, pad_hw, out, first)
                bar.update(len(chunk))
    bar.close()
    return out


def smallest_level(inst: ScaledInstances) -> np.ndarray:
    """(M,) index of the first level an instance trains, -1 for none."""
    any_level = inst.levels.any(axis=0)
    return np.where(any_level, inst.levels.argmax(axis=0), -1)
