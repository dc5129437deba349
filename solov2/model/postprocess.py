"""Inference post-processing (REFERENCE.md section 3): points NMS, thresholds, dynamic
convolution, small-mask filter, mask scoring, Matrix NMS, top-k and upsampling.

Everything is vectorized over candidates; the only loop is over images of a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import TestConfig


@dataclass
class Detections:
    """Instances of one image: ``masks`` (N, H, W) bool at the original size, sorted by score."""

    masks: Tensor
    labels: Tensor
    scores: Tensor

    def __len__(self) -> int:
        return int(self.scores.numel())

    @staticmethod
    def empty(height: int, width: int, device: torch.device | str = "cpu") -> "Detections":
        return Detections(
            torch.zeros((0, height, width), dtype=torch.bool, device=device),
            torch.zeros((0,), dtype=torch.long, device=device),
            torch.zeros((0,), dtype=torch.float32, device=device),
        )

    def to(self, device: torch.device | str) -> "Detections":
        return Detections(self.masks.to(device), self.labels.to(device), self.scores.to(device))


def points_nms(probs: Tensor) -> Tensor:
    """Zero every cell that is not the maximum of its 2x2 neighbourhood (top-left aligned)."""
    pooled = F.max_pool2d(probs, kernel_size=2, stride=1, padding=1)
    return probs * (pooled[..., :-1, :-1] == probs)


def mask_intersections(masks: Tensor) -> Tensor:
    """Pixel counts of the pairwise intersections of (n, ...) binary masks, as float32.

    Boolean masks on the CPU use an int8 matrix product with int32 accumulation (several
    times faster than float32); the counts are exact either way, so the result is the same.
    """
    flat = masks.reshape(masks.shape[0], -1)
    if flat.dtype == torch.bool and flat.device.type == "cpu":
        as_int8 = flat.view(torch.int8)
        return torch._int_mm(as_int8, as_int8.t()).float()
    flat = flat.float()
    return flat @ flat.t()


def matrix_nms(
    masks: Tensor,
    labels: Tensor,
    scores: Tensor,
    kernel: str = "gaussian",
    sigma: float = 2.0,
    mask_areas: Tensor | None = None,
) -> Tensor:
    """Decayed scores for masks sorted by descending score (Matrix NMS, SOLOv2 paper eq. 4).

    decay_j = min_i f(iou_ij) / f(max_k iou_ki), over higher-scored i of the same class,
    with f(x) = exp(-sigma x^2) (gaussian) or 1 - x (linear).
    """
    n = labels.numel()
    if n == 0:
        return scores.clone()
    if mask_areas is None:
        mask_areas = masks.reshape(n, -1).float().sum(1)
    inter = mask_intersections(masks)
    areas = mask_areas.float().expand(n, n)
    iou = (inter / (areas + areas.t() - inter)).triu(diagonal=1)
    same_class = (labels[:, None] == labels[None, :]).float().triu(diagonal=1)
    decay_iou = iou * same_class
    compensate_iou = decay_iou.max(0).values.expand(n, n).t()
    if kernel == "gaussian":
        decay = torch.exp(-sigma * decay_iou**2) / torch.exp(-sigma * compensate_iou**2)
    elif kernel == "linear":
        decay = (1 - decay_iou) / (1 - compensate_iou)
    else:
        raise ValueError(f"matrix NMS kernel must be 'gaussian' or 'linear', got {kernel!r}")
    return scores * decay.min(0).values


def flatten_levels(category_logits: list[Tensor], kernels: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-level maps to (N, cells, C) probabilities after points NMS and (N, cells, E) kernels."""
    probs = [points_nms(c.sigmoid()).flatten(2).transpose(1, 2) for c in category_logits]
    flat_kernels = [k.flatten(2).transpose(1, 2) for k in kernels]
    return torch.cat(probs, 1), torch.cat(flat_kernels, 1)


def cell_strides(grids: list[int], strides: list[int], device: torch.device | str = "cpu") -> Tensor:
    """The stride of the level each flattened grid cell belongs to."""
    return torch.cat(
        [torch.full((g * g,), float(s), device=device) for g, s in zip(grids, strides)]
    )


def postprocess_image(
    category_probs: Tensor,
    kernels: Tensor,
    mask_features: Tensor,
    strides: Tensor,
    image_size: tuple[int, int],
    original_size: tuple[int, int],
    cfg: TestConfig,
) -> Detections:
    """One image's detections.

    category_probs (cells, C) after points NMS; kernels (cells, E); mask_features (E, h, w);
    strides (cells,); image_size: the resized, unpadded (H, W); original_size: (H, W) to
    return masks at.
    """
    device = mask_features.device
    candidates = category_probs > cfg.score_thr
    scores = category_probs[candidates]
    if scores.numel() == 0:
        return Detections.empty(*original_size, device=device)
    cell_index, labels = candidates.nonzero(as_tuple=True)
    kernels = kernels[cell_index]
    strides = strides[cell_index]

    feat_h, feat_w = mask_features.shape[-2:]
    mask_probs = (kernels @ mask_features.reshape(mask_features.shape[0], -1)).sigmoid_()
    mask_probs = mask_probs.reshape(-1, feat_h, feat_w)
    masks = mask_probs > cfg.mask_thr
    areas = masks.sum((1, 2), dtype=torch.float32)  # exact counts, as .sum().float()

    keep = areas > strides
    if not keep.any():
        return Detections.empty(*original_size, device=device)
    if not keep.all():
        masks, mask_probs, areas = masks[keep], mask_probs[keep], areas[keep]
        scores, labels = scores[keep], labels[keep]

    mask_scores = (mask_probs * masks.float()).sum((1, 2)) / areas
    scores = scores * mask_scores

    # From here on only indices into mask_probs move; the few rows returned are gathered last.
    index = torch.argsort(scores, descending=True, stable=True)[: cfg.nms_pre]
    masks, areas, scores, labels = masks[index], areas[index], scores[index], labels[index]

    scores = matrix_nms(masks, labels, scores, cfg.nms_kernel, cfg.nms_sigma, areas)
    keep = scores >= cfg.update_thr
    if not keep.any():
        return Detections.empty(*original_size, device=device)
    index, scores, labels = index[keep], scores[keep], labels[keep]

    order = torch.argsort(scores, descending=True, stable=True)[: cfg.max_per_img]
    mask_probs, scores, labels = mask_probs[index[order]], scores[order], labels[order]

    mask_probs = F.interpolate(
        mask_probs.unsqueeze(0), size=(feat_h * 4, feat_w * 4), mode="bilinear", align_corners=False
    )[:, :, : image_size[0], : image_size[1]]
    mask_probs = F.interpolate(mask_probs, size=tuple(original_size), mode="bilinear", align_corners=False)
    return Detections(mask_probs.squeeze(0) > cfg.mask_thr, labels, scores)


def postprocess(
    category_logits: list[Tensor],
    kernels: list[Tensor],
    mask_features: Tensor,
    image_sizes: list[tuple[int, int]],
    original_sizes: list[tuple[int, int]],
    grids: list[int],
    strides: list[int],
    cfg: TestConfig,
) -> list[Detections]:
    """Detections for every image of a batch from the raw network outputs."""
    probs, flat_kernels = flatten_levels(category_logits, kernels)
    stride_per_cell = cell_strides(grids, strides, device=mask_features.device)
    return [
        postprocess_image(probs[i], flat_kernels[i], mask_features[i], stride_per_cell,
                          image_sizes[i], original_sizes[i], cfg)
        for i in range(len(image_sizes))
    ]
