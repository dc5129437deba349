"""SOLOv2 inference post-processing: the network's outputs to scored instance masks.

``postprocess_image`` follows the steps of the SOLOv2 paper (Wang et al., "SOLOv2: Dynamic and
Fast Instance Segmentation", 2020, section 3) and of the authors' release
(``get_seg_single`` in WXinlong/SOLO), in their order:

1. points NMS on the category maps (``flatten_levels``), then the score threshold;
2. the dynamic convolution: each candidate's kernel applied to the mask features, sigmoid;
3. the mask threshold, and the small-mask filter (area above the level's stride);
4. the mask score: category probability times the mean probability inside the mask;
5. the ``nms_pre`` best, Matrix NMS (``matrix_nms``), ``update_thr``, the ``max_per_img`` best;
6. the masks upsampled x4, cropped to the resized image, resized to the original, thresholded.

Steps 2-4 (``score_masks``) and 6 (``resize_masks``) run through ``fast_masks``, which computes
the same values with less memory traffic on the CPU. Contract, tested against a plain
re-implementation of the release (tests/test_postprocess.py): labels and their order are the
release's and scores equal its scores to float32 rounding; a final mask pixel may differ from
the release's only where its upsampled probability is within float32 rounding of ``mask_thr``
(``resize_masks`` applies both resizes of an axis as one matrix, rounded differently).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import TestConfig
from .fast_masks import mask_intersections, resize_masks, score_masks


@dataclass
class Detections:
    """Instances of one image, sorted by descending score: ``masks`` (N, H, W) bool at the
    original size, ``labels`` (N,) int64 class indices, ``scores`` (N,) float32."""

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
    """(..., S, S) category probabilities with every cell zeroed that is below the maximum of its
    2x2 neighbourhood (itself and its up, left and up-left neighbours). Equal to the release's
    ``probs * (F.max_pool2d(probs, 2, stride=1, padding=1)[..., :-1, :-1] == probs)``, computed
    as two shifted maxima (several times faster on the CPU)."""
    pooled = probs.clone()
    pooled[..., 1:, :] = torch.maximum(probs[..., 1:, :], probs[..., :-1, :])
    pooled[..., :, 1:] = torch.maximum(pooled[..., :, 1:], pooled[..., :, :-1])
    return probs * (pooled == probs)


def matrix_nms(
    masks: Tensor,
    labels: Tensor,
    scores: Tensor,
    kernel: str = "gaussian",
    sigma: float = 2.0,
    mask_areas: Tensor | None = None,
    rows: Tensor | None = None,
) -> Tensor:
    """(n,) decayed scores of n masks sorted by descending ``scores`` (Matrix NMS, SOLOv2 eq. 4).

    masks: (m, ...) bool, of which the n are ``masks[rows]`` (all m if ``rows`` is None, no copy
    made); labels, scores: (n,); mask_areas: (n,) pixel counts (computed if None).
    decay_j = min_i f(iou_ij) / f(max_k iou_ki) over the higher-scored i of j's class, with
    f(x) = exp(-sigma * x^2) ("gaussian") or 1 - x ("linear"). ``sigma`` multiplies x^2 as in the
    release (its default 2.0); the paper writes exp(-x^2 / sigma). Raises ValueError for another
    kernel.
    """
    n = labels.numel()
    if n == 0:
        return scores.clone()
    if mask_areas is None:
        mask_areas = (masks if rows is None else masks[rows]).reshape(n, -1).float().sum(1)
    inter = mask_intersections(masks, labels, rows)  # 0 between classes: the release's iou * same_class
    areas = mask_areas.float().expand(n, n)
    iou = (inter / (areas + areas.t() - inter)).triu(diagonal=1)
    compensate = iou.max(0).values[:, None]  # per row i: max_k iou_ki
    if kernel == "gaussian":
        decay = torch.exp(-sigma * iou**2) / torch.exp(-sigma * compensate**2)
    elif kernel == "linear":
        decay = (1 - iou) / (1 - compensate)
    else:
        raise ValueError(f"matrix NMS kernel must be 'gaussian' or 'linear', got {kernel!r}")
    return scores * decay.min(0).values


def flatten_levels(category_logits: list[Tensor], kernels: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-level (N, C, S, S) category logits and (N, E, S, S) kernels to (N, cells, C)
    probabilities after points NMS and (N, cells, E) kernels, cells = sum of S*S, row-major per
    level, levels in order."""
    probs = [points_nms(c.sigmoid()).flatten(2).transpose(1, 2) for c in category_logits]
    flat_kernels = [k.flatten(2).transpose(1, 2) for k in kernels]
    return torch.cat(probs, 1), torch.cat(flat_kernels, 1)


def cell_strides(grids: list[int], strides: list[int], device: torch.device | str = "cpu") -> Tensor:
    """(cells,) float32: the stride of the level of each flattened grid cell."""
    return torch.cat([torch.full((g * g,), float(s), device=device) for g, s in zip(grids, strides)])


def postprocess_image(
    category_probs: Tensor,
    kernels: Tensor,
    mask_features: Tensor,
    strides: Tensor,
    image_size: tuple[int, int],
    original_size: tuple[int, int],
    cfg: TestConfig,
) -> Detections:
    """One image's detections, at most ``cfg.max_per_img``.

    category_probs: (cells, C) after points NMS; kernels: (cells, E); mask_features: (E, h, w),
    h and w a quarter of the padded input; strides: (cells,) from ``cell_strides``; image_size:
    the (H, W) of the resized image inside the padding; original_size: the (H, W) to return.
    """
    empty = Detections.empty(*original_size, device=mask_features.device)
    # 1. Candidates: (cell, class) pairs above the score threshold, n of them.
    cells, labels = (category_probs > cfg.score_thr).nonzero(as_tuple=True)
    if cells.numel() == 0:
        return empty
    scores = category_probs[cells, labels]  # (n,)
    # 2-3. Mask probabilities sigmoid(kernel . features), masks above mask_thr, their areas and
    # probability sums (n,); masks larger than their level's stride stay.
    kernels, features = kernels[cells], mask_features.flatten(1)  # (n, E), (E, h*w)
    scored = score_masks(kernels, features, cfg.mask_thr, priority=scores)
    keep = (scored.areas > strides[cells]).nonzero().squeeze(1)
    if keep.numel() == 0:
        return empty
    # 4. Mask score.
    scores = scores[keep] * (scored.sums[keep] / scored.areas[keep])
    # 5. The nms_pre best, Matrix NMS, update_thr, the max_per_img best. ``index`` points into
    # the n candidates: masks are not copied.
    best = torch.argsort(scores, descending=True, stable=True)[: cfg.nms_pre]
    index, scores, labels = keep[best], scores[best], labels[keep[best]]
    scores = matrix_nms(scored.masks, labels, scores, cfg.nms_kernel, cfg.nms_sigma,
                        scored.areas[index], rows=scored.rows(index))
    keep = (scores >= cfg.update_thr).nonzero().squeeze(1)
    if keep.numel() == 0:
        return empty
    best = keep[torch.argsort(scores[keep], descending=True, stable=True)[: cfg.max_per_img]]
    index, scores, labels = index[best], scores[best], labels[best]
    # 6. Upsample x4, crop, resize to the original size, threshold: (k, H, W) bool.
    probs = scored.probabilities(index, kernels, features)
    masks = scored.masks[scored.rows(index)].view(-1, *mask_features.shape[-2:])
    return Detections(resize_masks(probs, masks, image_size, original_size, cfg.mask_thr), labels, scores)


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
    """Detections for each image of a batch from the raw network outputs: per level (N, C, S, S)
    category logits and (N, E, S, S) kernels, (N, E, h, w) mask features; ``image_sizes`` and
    ``original_sizes`` as in ``postprocess_image``, one per image."""
    probs, flat_kernels = flatten_levels(category_logits, kernels)
    stride_per_cell = cell_strides(grids, strides, device=mask_features.device)
    return [
        postprocess_image(probs[i], flat_kernels[i], mask_features[i], stride_per_cell,
                          image_sizes[i], tuple(original_sizes[i]), cfg)
        for i in range(len(image_sizes))
    ]
