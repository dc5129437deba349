"""Inference post-processing (REFERENCE.md section 3): points NMS, thresholds, dynamic
convolution, small-mask filter, mask scoring, Matrix NMS, top-k and upsampling.

Everything is vectorized over candidates. The loops: over the images of a batch; over blocks
of candidates in mask scoring (``score_masks``: each block stays in the CPU cache for its four
passes); over the classes present in Matrix NMS (only same-class intersections are counted);
over the returned masks in the final resize (``resize_masks``: each mask is computed only in
the window where it can be above the threshold).

Agreement with the straightforward version (``F.interpolate`` x4 over all returned masks,
crop, ``F.interpolate`` to the original size, threshold; tests/test_postprocess.py re-implements
the release that way): labels, scores and their order are bit-identical. The final masks are
not always bit-identical: ``resize_masks`` applies the two bilinear resizes as one product of
per-axis matrices, equal in exact arithmetic but rounded differently, so a pixel can differ
where F.interpolate's probability lies within float32 rounding (about 1e-7) of ``mask_thr``;
the tests allow a pixel to differ only where that probability is within 1e-5 of it.
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
    """Zero every cell that is not the maximum of its 2x2 neighbourhood (top-left aligned).

    The neighbourhood maximum is ``F.max_pool2d(kernel_size=2, stride=1, padding=1)`` cropped to
    the input, taken here as two shifted maxima (the same values, several times faster)."""
    pooled = probs.clone()
    pooled[..., 1:, :] = torch.maximum(probs[..., 1:, :], probs[..., :-1, :])
    pooled[..., :, 1:] = torch.maximum(pooled[..., :, 1:], pooled[..., :, :-1])
    return probs * (pooled == probs)


def _intersections(flat: Tensor) -> Tensor:
    """Pairwise intersection counts of (n, pixels) masks as float32 (int8 products on the CPU:
    several times faster than float32, and the counts are exact either way)."""
    if flat.dtype == torch.bool and flat.device.type == "cpu":
        as_int8 = flat.view(torch.int8)
        return torch._int_mm(as_int8, as_int8.t()).float()
    flat = flat.float()
    return flat @ flat.t()


def mask_intersections(masks: Tensor, labels: Tensor | None = None, rows: Tensor | None = None) -> Tensor:
    """Pixel counts of the pairwise intersections of (n, ...) binary masks, as float32.

    With ``labels``, only pairs of the same class are counted (one product per class present)
    and the other entries are 0: all that Matrix NMS reads. With ``rows``, the masks are
    ``masks[rows]`` (gathered here, class by class, rather than copied first).
    """
    flat = masks.reshape(masks.shape[0], -1)
    if rows is None:
        rows = torch.arange(flat.shape[0], device=flat.device)
    n = rows.numel()
    classes, counts = (None, None) if labels is None or n < 2 else torch.unique(labels, return_counts=True)
    if classes is None or classes.numel() == 1:
        return _intersections(flat[rows])
    out = torch.zeros((n, n), device=flat.device)
    for members in torch.argsort(labels, stable=True).split(counts.tolist()):
        out[members[:, None], members] = _intersections(flat[rows[members]])
    return out


def matrix_nms(
    masks: Tensor,
    labels: Tensor,
    scores: Tensor,
    kernel: str = "gaussian",
    sigma: float = 2.0,
    mask_areas: Tensor | None = None,
    rows: Tensor | None = None,
) -> Tensor:
    """Decayed scores for masks sorted by descending score (Matrix NMS, SOLOv2 paper eq. 4).

    decay_j = min_i f(iou_ij) / f(max_k iou_ki), over higher-scored i of the same class,
    with f(x) = exp(-sigma x^2) (gaussian) or 1 - x (linear). With ``rows``, the masks are
    ``masks[rows]`` (no copy of the masks is made).
    """
    n = labels.numel()
    if n == 0:
        return scores.clone()
    if mask_areas is None:
        mask_areas = (masks if rows is None else masks[rows]).reshape(n, -1).float().sum(1)
    inter = mask_intersections(masks, labels, rows)
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


SCORE_BLOCK = 16  # candidates per block in score_masks: 16 x 112 x 168 float32 is 1.2 MB


def score_masks(mask_logits: Tensor, mask_thr: float, block: int = SCORE_BLOCK) -> tuple[Tensor, Tensor, Tensor]:
    """Sigmoid, in place, of (n, pixels) mask logits; returns the binary masks (probability >
    mask_thr), their areas and the sums of the probabilities inside them (float32).

    ``F.threshold`` keeps p where p > mask_thr and gives 0 elsewhere: the values of
    ``probs * masks.float()`` in one pass, without a float copy of the masks; for mask_thr >= 0
    its nonzeros are the mask (a cast to bool is several times faster than a comparison). On
    the CPU the passes after the sigmoid run over blocks of about ``block`` rows, read from the
    cache rather than from memory. Every result is the same as without blocks: the sigmoid runs
    on the whole tensor (its vectorized loop rounds its tail differently), and no block has a
    single row unless n = 1 (a one-row sum can take another reduction path).
    """
    n = mask_logits.shape[0]
    probs = mask_logits.sigmoid_()
    masks = torch.empty(probs.shape, dtype=torch.bool, device=probs.device)
    areas = probs.new_empty(n)
    sums = probs.new_empty(n)
    blocks = 1 if probs.device.type != "cpu" else max(1, -(-n // block))
    for p, m, area, total in zip(*(t.tensor_split(blocks) for t in (probs, masks, areas, sums))):
        inside = F.threshold(p, mask_thr, 0.0)
        if mask_thr >= 0:
            m.copy_(inside)
        else:
            torch.gt(p, mask_thr, out=m)
        torch.sum(inside, 1, out=total)
        area.copy_(m.view(torch.uint8).sum(1, dtype=torch.int32))  # exact counts
    return masks, areas, sums


def resize_matrix(feature_size: int, image_size: int, original_size: int, device: torch.device | str) -> Tensor:
    """(original_size, feature_size) float32: the final resizes of one axis (bilinear x4 to the
    padded size, crop to ``image_size``, bilinear to ``original_size``) as one matrix, obtained by
    passing the identity through those same ``F.interpolate`` calls."""
    eye = torch.eye(feature_size, device=device).view(1, feature_size, feature_size, 1)
    up = F.interpolate(eye, size=(4 * feature_size, 1), mode="bilinear", align_corners=False)[:, :, :image_size]
    return F.interpolate(up, size=(original_size, 1), mode="bilinear", align_corners=False)[0, :, :, 0].t()


RESIZE_BAND = 96  # output rows / columns per matrix product in resize_masks


def _footprints(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """First and last input index with a nonzero weight, per output row (both non-decreasing)."""
    nonzero = (matrix != 0).to(torch.uint8)
    first = nonzero.argmax(1)
    last = matrix.shape[1] - 1 - nonzero.flip(1).argmax(1)
    return first, last


def _output_ranges(masks_any: Tensor, first: Tensor, last: Tensor) -> tuple[list[int], list[int]]:
    """Per mask, along one axis: the range [start, stop) of outputs that read any of the mask's
    pixels (``masks_any`` (k, n) uint8: 1 where the mask has a pixel); empty for an empty mask."""
    n = masks_any.shape[1]
    lo = masks_any.argmax(1)
    hi = n - 1 - masks_any.flip(1).argmax(1)
    start = torch.searchsorted(last, lo)
    stop = torch.searchsorted(first, hi, right=True)
    stop = torch.where(masks_any.amax(1) == 0, start, stop)
    return start.tolist(), stop.tolist()


def _bands(start: int, stop: int, first: list[int], last: list[int], band: int) -> list[tuple[int, int, int, int]]:
    """Outputs [start, stop) in runs of at most ``band``: (out_start, out_stop, in_start, in_stop)."""
    runs = [(a, min(a + band, stop)) for a in range(start, stop, band)]
    return [(a, b, first[a], last[b - 1] + 1) for a, b in runs]


def _above(values: Tensor, threshold: float, out: Tensor) -> None:
    """out[...] = values > threshold, overwriting ``values``. For threshold >= 0 this is
    F.threshold (values above it kept, others 0) and a cast to bool (nonzero: True), several
    times faster on the CPU than the comparison."""
    if threshold >= 0:
        out.copy_(F.threshold(values, threshold, 0.0, inplace=True))
    else:
        torch.gt(values, threshold, out=out)


def resize_masks(
    probs: Tensor, masks: Tensor, index: Tensor, image_size: tuple[int, int], original_size: tuple[int, int],
    mask_thr: float, band: int = RESIZE_BAND,
) -> Tensor:
    """(k, H, W) bool at the original size for the masks ``index`` (k,) of (n, h, w) mask
    probabilities ``probs`` and ``masks`` (probs > mask_thr): bilinear x4, crop to the resized
    image, bilinear to the original size, threshold, as ``F.interpolate`` twice but computed
    only in each mask's window.

    Both resizes of an axis are one matrix (``resize_matrix``), so a window is
    ``rows @ probs @ cols.T`` over the inputs it reads. A bilinear value is a convex combination
    of its inputs, so outputs that read no pixel of the mask (no input above mask_thr) are not
    above mask_thr: they stay False. The products run in bands of at most ``band`` output rows
    (columns), each over the inputs that band reads, since the matrices are banded. The values
    equal F.interpolate's in exact arithmetic; rounded differently, they can fall on the other
    side of mask_thr where they are within ~1e-7 of it.
    """
    k = index.numel()
    _, feat_h, feat_w = probs.shape
    out = torch.zeros((k, *original_size), dtype=torch.bool, device=probs.device)
    if k == 0:
        return out
    rows = resize_matrix(feat_h, image_size[0], original_size[0], probs.device)
    cols_t = resize_matrix(feat_w, image_size[1], original_size[1], probs.device).t().contiguous()
    row_first, row_last = _footprints(rows)
    col_first, col_last = _footprints(cols_t.t())
    chosen = masks[index].view(torch.uint8)
    y_start, y_stop = _output_ranges(chosen.amax(2), row_first, row_last)
    x_start, x_stop = _output_ranges(chosen.amax(1), col_first, col_last)
    row_first, row_last, col_first, col_last = (t.tolist() for t in (row_first, row_last, col_first, col_last))
    for i, m in enumerate(index.tolist()):
        y_bands = _bands(y_start[i], y_stop[i], row_first, row_last, band)
        x_bands = _bands(x_start[i], x_stop[i], col_first, col_last, band)
        if not y_bands or not x_bands:
            continue
        top, bottom, left, right = y_bands[0][2], y_bands[-1][3], x_start[i], x_stop[i]
        across = probs.new_empty((bottom - top, right - left))  # the window's input rows, resized along x
        for a, b, c0, c1 in x_bands:
            torch.mm(probs[m, top:bottom, c0:c1], cols_t[c0:c1, a:b], out=across[:, a - left : b - left])
        for a, b, r0, r1 in y_bands:
            _above(rows[a:b, r0:r1] @ across[r0 - top : r1 - top], mask_thr, out[i, a:b, left:right])
    return out


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

    feat_h, feat_w = mask_features.shape[-2:]
    mask_probs = kernels[cell_index] @ mask_features.reshape(mask_features.shape[0], -1)
    masks, areas, prob_sums = score_masks(mask_probs, cfg.mask_thr)  # mask_probs: sigmoid in place

    # Only indices move from here on: rows of mask_probs / masks are gathered when needed.
    kept = (areas > strides[cell_index]).nonzero().squeeze(1)
    if kept.numel() == 0:
        return Detections.empty(*original_size, device=device)
    scores = scores[kept] * (prob_sums[kept] / areas[kept])

    order = torch.argsort(scores, descending=True, stable=True)[: cfg.nms_pre]
    index, scores = kept[order], scores[order]
    labels = labels[index]
    scores = matrix_nms(masks, labels, scores, cfg.nms_kernel, cfg.nms_sigma, areas[index], rows=index)
    keep = scores >= cfg.update_thr
    if not keep.any():
        return Detections.empty(*original_size, device=device)
    index, scores, labels = index[keep], scores[keep], labels[keep]

    order = torch.argsort(scores, descending=True, stable=True)[: cfg.max_per_img]
    index, scores, labels = index[order], scores[order], labels[order]
    shape = (-1, feat_h, feat_w)
    masks = resize_masks(mask_probs.view(shape), masks.view(shape), index, image_size, tuple(original_size),
                         cfg.mask_thr)
    return Detections(masks, labels, scores)


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
