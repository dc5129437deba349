"""SOLOv2 post-processing in NumPy: points NMS, thresholds, dynamic convolution, small-mask
filter, mask scoring, top-k, Matrix NMS and the final resize to the original image.

The same steps, in the same order and with the same tie-breaking, as solov2's PyTorch
``solov2.model.postprocess`` (kept equal by tests/test_runtime_postprocess.py): labels and
their order are equal, scores agree to float32 rounding, and a final mask pixel can differ
only where its probability is within float rounding of ``mask_thr`` (the matrix products
round differently in another BLAS).

Vectorized over candidates and pixels. The loops: over blocks of candidates in mask scoring
(products into one reused buffer, passes over the probabilities in cache-sized blocks), over
the classes present in Matrix NMS (only same-class intersections count), and over the
returned instances (at most ``max_per_img``) in the final resize, where each mask is
computed only in the window of the output it can reach.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from .resize import resize_masks

PRODUCT_ROWS = 256  # candidates per mask product: 256 x 112 x 168 float32 is 19 MB
PASS_ROWS = 16  # candidates per pass over the probabilities: 1.2 MB at 112 x 168


class TestThresholds(Protocol):
    """The test settings post-processing reads (``settings.TestSettings``, solov2's TestConfig)."""

    nms_pre: int
    score_thr: float
    mask_thr: float
    update_thr: float
    nms_kernel: str
    nms_sigma: float
    max_per_img: int


@dataclass
class Instances:
    """One image's instances, by descending score: masks (N, H, W) bool at the original size,
    labels (N,) int64, scores (N,) float32."""

    masks: np.ndarray
    labels: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @staticmethod
    def empty(height: int, width: int) -> "Instances":
        return Instances(np.zeros((0, height, width), bool), np.zeros(0, np.int64), np.zeros(0, np.float32))


def sigmoid_(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) in place (as PyTorch's sigmoid), float32; returns ``x``."""
    with np.errstate(over="ignore"):
        np.negative(x, out=x)
        np.exp(x, out=x)
    x += 1
    return np.reciprocal(x, out=x)


def points_nms(probs: np.ndarray) -> np.ndarray:
    """(..., S, S): zero every cell that is not the maximum of its 2x2 neighbourhood (the cell,
    the one above, to the left and above-left), as max_pool2d(2, stride 1, padding 1) cropped."""
    pooled = probs.copy()
    np.maximum(probs[..., 1:, :], probs[..., :-1, :], out=pooled[..., 1:, :])
    np.maximum(pooled[..., :, 1:], pooled[..., :, :-1].copy(), out=pooled[..., :, 1:])
    return probs * (pooled == probs)


def category_probabilities(logits: np.ndarray, grids: Sequence[int]) -> np.ndarray:
    """(C, cells) logits of one image (levels flattened row-major, level after level) to
    (cells, C) probabilities after points NMS."""
    out, start = [], 0
    for s in grids:
        level = sigmoid_(logits[:, start : start + s * s].astype(np.float32, copy=True))
        out.append(points_nms(level.reshape(-1, s, s)).reshape(-1, s * s))
        start += s * s
    return np.concatenate(out, axis=1).T


def cell_strides(grids: Sequence[int], strides: Sequence[int]) -> np.ndarray:
    """(cells,) float32: the stride of the level each flattened cell belongs to."""
    return np.concatenate([np.full(g * g, s, np.float32) for g, s in zip(grids, strides)])


@dataclass
class ScoredMasks:
    """Mask scoring of n candidates. Rows of ``masks`` are in the order they were computed:
    candidate i is row ``row_of[i]``; ``areas`` and ``sums`` (float32) are per candidate; the
    probabilities of the candidates with ``kept_row >= 0`` are rows of ``kept_probs``."""

    masks: np.ndarray  # (n, pixels) bool
    row_of: np.ndarray  # (n,)
    areas: np.ndarray  # (n,)
    sums: np.ndarray  # (n,)
    kept_row: np.ndarray  # (n,) row of kept_probs, -1 if not kept
    kept_probs: np.ndarray  # (kept, pixels)


def score_masks(kernels: np.ndarray, features: np.ndarray, mask_thr: float, priority: np.ndarray,
                product_rows: int = PRODUCT_ROWS, pass_rows: int = PASS_ROWS) -> ScoredMasks:
    """Masks (probability > mask_thr) of the (n, E) kernels on the (E, pixels) features, their
    areas and the sums of their probabilities inside them. The probabilities of the (up to
    ``product_rows``) candidates of highest ``priority`` are kept (computed last, in their own
    array); the others' go through one reused buffer, ``product_rows`` at a time, and the
    passes over them take ``pass_rows`` at a time (read from the cache, not from memory)."""
    n, pixels = kernels.shape[0], features.shape[1]
    keep = np.argsort(-priority, kind="stable")[:product_rows]
    kept_row = np.full(n, -1, np.int64)
    kept_row[keep] = np.arange(len(keep))
    order = np.concatenate([np.nonzero(kept_row < 0)[0], keep])  # computed order: kept last
    row_of = np.empty(n, np.int64)
    row_of[order] = np.arange(n)
    masks = np.empty((n, pixels), bool)
    areas, sums = np.empty(n, np.float32), np.empty(n, np.float32)
    buffer = np.empty((min(product_rows, n), pixels), np.float32)
    kept_probs = np.empty((len(keep), pixels), np.float32)
    scratch = np.empty((min(pass_rows, n), pixels), np.float32)
    first_kept = n - len(keep)
    blocks = [(a, min(a + product_rows, first_kept)) for a in range(0, first_kept, product_rows)]
    for start, stop in blocks + [(first_kept, n)]:
        probs = kept_probs if start == first_kept else buffer[: stop - start]
        np.matmul(kernels[order[start:stop]], features, out=probs)
        for a in range(start, stop, pass_rows):
            b = min(a + pass_rows, stop)
            p, m = sigmoid_(probs[a - start : b - start]), masks[a:b]
            np.greater(p, mask_thr, out=m)
            inside = np.multiply(p, m, out=scratch[: b - a])
            np.sum(inside, axis=1, out=sums[a:b])
            areas[a:b] = np.count_nonzero(m, axis=1)
    return ScoredMasks(masks, row_of, areas[row_of], sums[row_of], kept_row, kept_probs)


def probabilities(scored: ScoredMasks, index: np.ndarray, kernels: np.ndarray, features: np.ndarray) -> np.ndarray:
    """(k, pixels) probabilities of the candidates ``index``: the kept rows, recomputed (the
    same product and sigmoid) for the others."""
    rows = scored.kept_row[index]
    found = rows >= 0
    if found.all():
        return scored.kept_probs[rows]
    out = np.empty((len(index), features.shape[1]), np.float32)
    out[found] = scored.kept_probs[rows[found]]
    out[~found] = sigmoid_(kernels[index[~found]] @ features)
    return out


def same_class_intersections(masks: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(n, n) float32 pixel counts of the intersections of (n, pixels) bool masks of the same
    label (0 for pairs of different labels): one product per label present."""
    n = len(labels)
    out = np.zeros((n, n), np.float32)
    for label in np.unique(labels):
        members = np.nonzero(labels == label)[0]
        flat = masks[members].astype(np.float32)
        out[np.ix_(members, members)] = flat @ flat.T
    return out


def matrix_nms(masks: np.ndarray, labels: np.ndarray, scores: np.ndarray, areas: np.ndarray,
               kernel: str = "gaussian", sigma: float = 2.0) -> np.ndarray:
    """Decayed scores of (n, pixels) masks sorted by descending score (SOLOv2 paper eq. 4):
    decay_j = min_i f(iou_ij) / f(max_k iou_ki) over higher-scored i of the same class, with
    f(x) = exp(-sigma x^2) (gaussian) or 1 - x (linear)."""
    n = len(labels)
    if n == 0:
        return scores.copy()
    inter = same_class_intersections(masks, labels)
    union = areas[None, :] + areas[:, None] - inter
    iou = np.triu(inter / union, k=1)
    compensate = iou.max(axis=0)[:, None]
    if kernel == "gaussian":
        decay = np.exp(-sigma * iou**2) / np.exp(-sigma * compensate**2)
    elif kernel == "linear":
        decay = (1 - iou) / (1 - compensate)
    else:
        raise ValueError(f"matrix NMS kernel must be 'gaussian' or 'linear', got {kernel!r}")
    return (scores * decay.min(axis=0)).astype(np.float32)


def postprocess_image(
    category_probs: np.ndarray, kernels: np.ndarray, mask_features: np.ndarray, strides: np.ndarray,
    image_size: tuple[int, int], original_size: tuple[int, int], cfg: TestThresholds,
) -> Instances:
    """One image's instances from category_probs (cells, C) after points NMS, kernels
    (E, cells), mask_features (E, h, w) and strides (cells,); image_size is the resized,
    unpadded (H, W), original_size the (H, W) to return masks at."""
    cell_index, labels = np.nonzero(category_probs > cfg.score_thr)
    if len(labels) == 0:
        return Instances.empty(*original_size)
    scores = category_probs[cell_index, labels]
    feat_h, feat_w = mask_features.shape[-2:]
    features = np.ascontiguousarray(mask_features.reshape(mask_features.shape[0], -1), dtype=np.float32)
    kernels = np.ascontiguousarray(kernels[:, cell_index].T, dtype=np.float32)
    scored = score_masks(kernels, features, cfg.mask_thr, priority=scores)

    kept = np.nonzero(scored.areas > strides[cell_index])[0]  # the small-mask filter
    if len(kept) == 0:
        return Instances.empty(*original_size)
    scores = scores[kept] * (scored.sums[kept] / scored.areas[kept])
    order = np.argsort(-scores, kind="stable")[: cfg.nms_pre]
    index, scores, labels = kept[order], scores[order], labels[kept[order]]
    scores = matrix_nms(scored.masks[scored.row_of[index]], labels, scores, scored.areas[index],
                        cfg.nms_kernel, cfg.nms_sigma)
    keep = scores >= cfg.update_thr
    if not keep.any():
        return Instances.empty(*original_size)
    index, scores, labels = index[keep], scores[keep], labels[keep]
    order = np.argsort(-scores, kind="stable")[: cfg.max_per_img]
    index, scores, labels = index[order], scores[order], labels[order]
    probs = probabilities(scored, index, kernels, features).reshape(-1, feat_h, feat_w)
    masks = scored.masks[scored.row_of[index]].reshape(-1, feat_h, feat_w)
    masks = resize_masks(probs, masks, tuple(image_size), tuple(original_size), cfg.mask_thr)
    return Instances(masks, labels.astype(np.int64), scores.astype(np.float32))


def postprocess(
    category_logits: np.ndarray, kernels: np.ndarray, mask_features: np.ndarray,
    image_sizes: Sequence[tuple[int, int]], original_sizes: Sequence[tuple[int, int]],
    grids: Sequence[int], strides: Sequence[int], cfg: TestThresholds,
) -> list[Instances]:
    """Instances of every image of a batch from the exported graph's outputs: category_logits
    (N, C, cells), kernels (N, E, cells), mask_features (N, E, h, w)."""
    stride_per_cell = cell_strides(grids, strides)
    return [
        postprocess_image(category_probabilities(category_logits[i], grids), kernels[i], mask_features[i],
                          stride_per_cell, image_sizes[i], original_sizes[i], cfg)
        for i in range(len(image_sizes))
    ]
