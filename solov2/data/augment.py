"""Training transforms and batching, as the authors' release (docs/design.md, "Training
targets and losses").

Per image: resize to one of ``input.train_scales`` chosen at random (keeping the aspect
ratio; masks nearest-neighbour to the same size), horizontal flip with probability
``input.flip_prob``, BGR to RGB and normalize. ``collate`` pads images and masks of a batch
with zeros, bottom and right, to a common multiple of 32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..config import Config
from .transforms import normalize, pad_batch, resize

BOX_CONVENTIONS = ("mmdet2", "v1")


@dataclass
class TrainSample:
    """One augmented image: ``image`` (3, h, w) normalized RGB; ``masks`` (n, h, w) uint8;
    ``boxes`` (n, 4) x1, y1, x2, y2 float32; ``labels`` (n,) int64 contiguous labels."""

    image: Tensor
    masks: Tensor
    boxes: Tensor
    labels: Tensor
    image_id: int


@dataclass
class TrainBatch:
    """A padded batch: ``images`` (N, 3, H, W) with H, W multiples of 32; per image
    ``masks`` (n_i, H, W) uint8 padded the same way, ``boxes`` and ``labels``."""

    images: Tensor
    masks: list[Tensor]
    boxes: list[Tensor]
    labels: list[Tensor]
    image_ids: list[int]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "TrainBatch":
        return TrainBatch(
            self.images.to(device, non_blocking=non_blocking),
            [m.to(device, non_blocking=non_blocking) for m in self.masks],
            [b.to(device, non_blocking=non_blocking) for b in self.boxes],
            [lb.to(device, non_blocking=non_blocking) for lb in self.labels],
            list(self.image_ids),
        )

    def pin_memory(self) -> "TrainBatch":
        """Called by the DataLoader when ``pin_memory=True``."""
        return TrainBatch(
            self.images.pin_memory(),
            [m.pin_memory() for m in self.masks],
            [b.pin_memory() for b in self.boxes],
            [lb.pin_memory() for lb in self.labels],
            list(self.image_ids),
        )


def xywh_to_xyxy(boxes_xywh: np.ndarray, convention: str) -> np.ndarray:
    """COCO [x, y, w, h] to corners; "v1" (authors' release) uses x + w - 1, "mmdet2" x + w."""
    if convention not in BOX_CONVENTIONS:
        raise ValueError(f"data.box_convention must be one of {BOX_CONVENTIONS}, got {convention!r}")
    boxes = np.asarray(boxes_xywh, dtype=np.float32).reshape(-1, 4).copy()
    offset = 1.0 if convention == "v1" else 0.0
    boxes[:, 2] = boxes[:, 0] + boxes[:, 2] - offset
    boxes[:, 3] = boxes[:, 1] + boxes[:, 3] - offset
    return boxes


def resize_masks_nearest(masks: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """(n, h, w) masks to (n, new_h, new_w) by nearest neighbour, exactly as OpenCV's
    INTER_NEAREST (source index floor(dst * src/dst)), all instances at once."""
    _, h, w = masks.shape
    rows = np.minimum(np.floor(np.arange(new_h) * (1.0 / (new_h / h))).astype(np.int64), h - 1)
    cols = np.minimum(np.floor(np.arange(new_w) * (1.0 / (new_w / w))).astype(np.int64), w - 1)
    return masks[:, rows[:, None], cols[None, :]]


class TrainTransform:
    """Random multi-scale resize, random horizontal flip, normalize; boxes and masks follow."""

    def __init__(
        self,
        scales: list[list[int]],
        flip_prob: float,
        mean: list[float],
        std: list[float],
        box_convention: str = "mmdet2",
    ):
        if not scales:
            raise ValueError("input.train_scales is empty")
        if box_convention not in BOX_CONVENTIONS:
            raise ValueError(f"data.box_convention must be one of {BOX_CONVENTIONS}, got {box_convention!r}")
        self.scales = [list(s) for s in scales]
        self.flip_prob = flip_prob
        self.mean = mean
        self.std = std
        self.box_convention = box_convention

    @classmethod
    def from_config(cls, cfg: Config) -> "TrainTransform":
        return cls(cfg.input.train_scales, cfg.input.flip_prob, cfg.input.mean, cfg.input.std, cfg.data.box_convention)

    def __call__(
        self,
        image_bgr: np.ndarray,
        masks: np.ndarray,
        boxes_xyxy: np.ndarray,
        labels: np.ndarray,
        rng: np.random.Generator,
        image_id: int = -1,
    ) -> TrainSample:
        """``image_bgr`` HxWx3 uint8, ``masks`` (n, H, W) uint8, ``boxes_xyxy`` (n, 4) in the
        original image's pixels (already in ``box_convention``), ``labels`` (n,)."""
        h, w = image_bgr.shape[:2]
        scale = self.scales[int(rng.integers(len(self.scales)))]
        flip = bool(rng.random() < self.flip_prob)

        image = resize(image_bgr, scale)
        new_h, new_w = image.shape[:2]
        masks = resize_masks_nearest(masks, new_h, new_w)
        boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4).copy()
        if self.box_convention == "v1":  # mmdetection v1: one factor, clip to size - 1
            factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
            boxes *= np.float32(factor)
            limit_w, limit_h = new_w - 1, new_h - 1
        else:  # mmdetection 2.x: per-axis factors of the actual new size, clip to size
            boxes *= np.array([new_w / w, new_h / h, new_w / w, new_h / h], dtype=np.float32)
            limit_w, limit_h = new_w, new_h
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, limit_w)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, limit_h)

        if flip:
            image = image[:, ::-1]
            masks = masks[:, :, ::-1]
            x1 = boxes[:, 0].copy()
            boxes[:, 0] = limit_w - boxes[:, 2]
            boxes[:, 2] = limit_w - x1

        tensor = torch.from_numpy(np.ascontiguousarray(normalize(image, self.mean, self.std).transpose(2, 0, 1)))
        return TrainSample(
            image=tensor,
            masks=torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8)),
            boxes=torch.from_numpy(boxes),
            labels=torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1),
            image_id=image_id,
        )


def collate(samples: list[TrainSample], size_divisor: int = 32) -> TrainBatch:
    """Pad images and masks to a common size divisible by ``size_divisor``."""
    images = pad_batch([s.image for s in samples], size_divisor)
    pad_h, pad_w = images.shape[-2:]
    masks = []
    for s in samples:
        padded = s.masks.new_zeros((s.masks.shape[0], pad_h, pad_w))
        padded[:, : s.masks.shape[1], : s.masks.shape[2]] = s.masks
        masks.append(padded)
    return TrainBatch(
        images=images,
        masks=masks,
        boxes=[s.boxes for s in samples],
        labels=[s.labels for s in samples],
        image_ids=[s.image_id for s in samples],
    )
