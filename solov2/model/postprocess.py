"""Inference post-processing (REFERENCE.md section 3): points NMS, thresholds, dynamic
convolution, small-mask filter, mask scoring, Matrix NMS, top-k and upsampling.

Everything is vectorized over candidates. The loops: over the images of a batch; over blocks
of candidates in mask scoring (``score_masks``: the mask products go into one reused buffer and
each pass over the probabilities reads them from the CPU cache); over the classes present in
Matrix NMS (only same-class intersections are counted); over the returned masks in the final
resize (``resize_masks``: each mask is computed only in the window where it can be above the
threshold).

Agreement with the straightforward version (``F.interpolate`` x4 over all returned masks,
crop, ``F.interpolate`` to the original size, threshold; tests/test_postprocess.py re-implements
the release that way): labels, scores and their order are bit-identical in the tests and in
``benchmarks/compare_postprocess.py`` (1 and 2 threads; see ``score_masks`` for the last bit of
a sigmoid), except that with fewer than MIN_PRODUCT_ROWS candidates a single product takes
MKL's path for small products, whose rounding differs in the last bit (here products always
have at least that many rows: ``_product``). The final masks are not always bit-identical:
``resize_masks`` applies the two bilinear resizes as one product of per-axis matrices, equal
in exact arithmetic but rounded differently, so a pixel can differ where F.interpolate's
probability lies within float32 rounding (about 1e-7) of ``mask_thr``; the tests allow a pixel
to differ only where that probability is within 1e-5 of it.
"""

from __future__ import annotations

import functools
import itertools
import math
import mmap
from collections.abc import Sequence
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
    n = flat.shape[0] if rows is None else rows.numel()
    classes, counts = (None, None) if labels is None or n < 2 else torch.unique(labels, return_counts=True)
    if classes is None or classes.numel() == 1:
        return _intersections(flat if rows is None else flat[rows])
    out = torch.zeros((n, n), device=flat.device)
    for members in torch.argsort(labels, stable=True).split(counts.tolist()):
        out[members[:, None], members] = _intersections(flat[members if rows is None else rows[members]])
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
    # Intersections of masks of different classes are 0 (not counted), so the IoU matrix is
    # already the release's iou * same_class.
    inter = mask_intersections(masks, labels, rows)
    areas = mask_areas.float().expand(n, n)
    decay_iou = (inter / (areas + areas.t() - inter)).triu(diagonal=1)
    compensate_iou = decay_iou.max(0).values[:, None]  # per row i: the release's expand(n, n).t()
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


PRODUCT_ROWS = 256  # candidates per mask product in score_masks: 256 x 112 x 168 float32 is 19 MB
PASS_ROWS = 16  # candidates per pass over the probabilities: 16 x 112 x 168 float32 is 1.2 MB
MIN_PRODUCT_ROWS = 16  # MKL rounds some rows of smaller products differently (benchmarks/NOTES.md, step 6)


def _product(kernels: Tensor, features: Tensor, out: Tensor | None = None) -> Tensor:
    """kernels @ features (into ``out``'s first rows if given), computed with at least
    MIN_PRODUCT_ROWS rows (repeated when fewer): a row's values then do not depend on how many
    rows are computed with it or where (with 2 threads, MKL was measured to round some rows of
    products of 1-3, 5-7 and 9-11 rows differently from those of larger ones)."""
    n = kernels.shape[0]
    if 0 < n < MIN_PRODUCT_ROWS:
        kernels = kernels[torch.arange(MIN_PRODUCT_ROWS, device=kernels.device) % n]
    if out is None:
        return torch.mm(kernels, features)[:n]
    return torch.mm(kernels, features, out=out[: kernels.shape[0]])[:n]


def _above(values: Tensor, threshold: float, out: Tensor, inplace: bool = True) -> Tensor:
    """out[...] = values > threshold. Returns ``F.threshold(values, threshold, 0)`` (the values
    above it kept, the others 0), written over ``values`` when ``inplace``. For threshold >= 0
    ``out`` is that cast to bool (nonzero: True), several times faster on the CPU than the
    comparison."""
    if threshold < 0:
        torch.gt(values, threshold, out=out)  # before the threshold can overwrite values
    inside = F.threshold(values, threshold, 0.0, inplace=inplace)
    if threshold >= 0:
        out.copy_(inside)
    return inside


def mask_probabilities(kernels: Tensor, features: Tensor) -> Tensor:
    """(n, pixels) mask probabilities: sigmoid of the dynamic 1x1 convolution of the (E, pixels)
    mask features with the (n, E) kernels."""
    return _product(kernels, features).sigmoid_()


@dataclass
class ScoredMasks:
    """``score_masks``' results for n candidates. Rows of ``masks`` are in the order they were
    computed: candidate i is row ``row_of[i]``. The probabilities of the last
    ``len(kept_probs)`` rows were kept."""

    masks: Tensor  # (n, pixels) bool
    row_of: Tensor  # (n,)
    areas: Tensor  # (n,) float32, per candidate
    sums: Tensor  # (n,) float32, per candidate
    kept_probs: Tensor  # (kept, pixels) float32

    def rows(self, index: Tensor) -> Tensor:
        """Rows of ``masks`` of the candidates ``index``."""
        return self.row_of[index]

    @property
    def first_kept_row(self) -> int:
        """The row of ``masks`` whose probabilities are ``kept_probs[0]``."""
        return self.masks.shape[0] - self.kept_probs.shape[0]

    def probabilities(self, index: Tensor, kernels: Tensor, features: Tensor) -> list[Tensor]:
        """The (pixels,) probabilities of each of the candidates ``index``: rows of
        ``kept_probs`` (views, nothing is copied), recomputed (``mask_probabilities``, equal bit
        for bit) for the candidates not kept."""
        rows = (self.row_of[index] - self.first_kept_row).tolist()
        missing = [j for j, r in enumerate(rows) if r < 0]
        recomputed = iter(mask_probabilities(kernels[index[missing]], features) if missing else ())
        return [self.kept_probs[r] if r >= 0 else next(recomputed) for r in rows]


def score_masks(
    kernels: Tensor, features: Tensor, mask_thr: float, product_rows: int = PRODUCT_ROWS, pass_rows: int = PASS_ROWS,
    priority: Tensor | None = None,
) -> ScoredMasks:
    """Binary masks (probability > mask_thr) of the (n, E) kernels on the (E, pixels) mask
    features, their areas and the sums of the probabilities inside them (float32). The
    probabilities of the (up to ``product_rows``) candidates of highest ``priority`` are kept,
    those of the others are not: ``ScoredMasks.probabilities`` recomputes the few needed later.
    Post-processing passes the category scores; on the benchmark's blob load, 99 of 100 returned
    masks (397 of 400 at batch 4) were among the 256 highest (benchmarks/NOTES.md, step 6).

    On the CPU, the products run ``product_rows`` candidates at a time into one reused buffer (a
    (500, 18816) float32 result is 38 MB of new memory, whose page faults cost as much as the
    product's arithmetic), the kept candidates last, and the passes after it over ``pass_rows``
    at a time, read from the cache rather than from memory. ``F.threshold`` keeps p where
    p > mask_thr and gives 0 elsewhere: the values of ``probs * masks.float()`` in one pass,
    without a float copy of the masks (``_above``).

    The results equal ``mask_probabilities`` followed by the same threshold and sums, bit for
    bit, when the sigmoid computes every element in its vectorized loop: PyTorch's loop takes 32
    floats per step and leaves the rest of a call (or of a thread's share of it) to scalar code,
    rounded differently in the last bit. The network's outputs have a multiple of 64 pixels
    (inputs padded to a multiple of 32, features at a quarter of it), enough for that with 1 or 2
    threads; otherwise a few probabilities can differ in the last bit (the rows of a product do
    not depend on how many rows it has: ``_product``).
    """
    n = kernels.shape[0]
    pixels = features.shape[1]
    device = features.device
    if device.type != "cpu":
        product_rows = pass_rows = max(n, 1)
    keep = (priority.topk(min(product_rows, n)).indices if priority is not None
            else torch.zeros(0, dtype=torch.long, device=device))
    kept = torch.zeros(n, dtype=torch.bool, device=device)
    kept[keep] = True
    order = torch.cat([(~kept).nonzero().squeeze(1), keep])  # rows of masks: the kept candidates last
    row_of = torch.empty_like(order)
    row_of[order] = torch.arange(n, device=device)
    first_kept = n - keep.numel()
    products = _even_ranges(0, first_kept, product_rows) + ([(first_kept, n)] if keep.numel() else [])

    masks = torch.empty((n, pixels), dtype=torch.bool, device=device)
    areas = features.new_empty(n)
    sums = features.new_empty(n)
    buffer = features.new_empty((max([MIN_PRODUCT_ROWS] + [b - a for a, b in products]), pixels))
    for start, stop in products:
        probs = _product(kernels[order[start:stop]], features, out=buffer)
        for first, last in _even_ranges(start, stop, pass_rows):
            p, m = probs[first - start : last - start].sigmoid_(), masks[first:last]
            inside = _above(p, mask_thr, m, inplace=start < first_kept)  # kept: p stays
            torch.sum(inside, 1, out=sums[first:last])
            areas[first:last].copy_(m.view(torch.uint8).sum(1, dtype=torch.int32))  # exact counts
    return ScoredMasks(masks, row_of, areas[row_of], sums[row_of], buffer[: n - first_kept])


def _even_ranges(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) in the fewest ranges of at most ``size``, their lengths differing by at most
    one (as ``tensor_split``): no range has a single element unless ``size`` or the whole is 1 (a
    product or sum of one row can take another path in PyTorch, rounded differently)."""
    count = -(-(stop - start) // size)
    bounds = [start + (stop - start) * i // count for i in range(count + 1)] if count else [start]
    return list(itertools.pairwise(bounds))


def resize_matrix(feature_size: int, image_size: int, original_size: int, device: torch.device | str) -> Tensor:
    """(original_size, feature_size) float32: the final resizes of one axis (bilinear x4 to the
    padded size, crop to ``image_size``, bilinear to ``original_size``) as one matrix, obtained by
    passing the identity through those same ``F.interpolate`` calls."""
    eye = torch.eye(feature_size, device=device).view(1, feature_size, feature_size, 1)
    up = F.interpolate(eye, size=(4 * feature_size, 1), mode="bilinear", align_corners=False)[:, :, :image_size]
    return F.interpolate(up, size=(original_size, 1), mode="bilinear", align_corners=False)[0, :, :, 0].t()


RESIZE_BAND = 96  # output rows / columns per matrix product in resize_masks
MAPPED_ZEROS_BYTES = 1 << 20  # larger outputs of resize_masks are memory maps (_zeros_bool)


@dataclass(frozen=True)
class ResizeAxis:
    """The final resizes of one axis (``resize_matrix``) and, per output, the first and last
    input with a nonzero weight (both non-decreasing: the matrix is banded)."""

    matrix: Tensor
    first: Tensor
    last: Tensor

    @staticmethod
    @functools.lru_cache(maxsize=16)
    def build(feature_size: int, image_size: int, original_size: int, device: str) -> ResizeAxis:
        matrix = resize_matrix(feature_size, image_size, original_size, device)
        nonzero = (matrix != 0).to(torch.uint8)
        first = nonzero.argmax(1)
        last = feature_size - 1 - nonzero.flip(1).argmax(1)
        return ResizeAxis(matrix, first, last)

    def output_ranges(self, masks_any: Tensor) -> tuple[Tensor, Tensor]:
        """Per mask: the outputs [start, stop) that read any of the mask's pixels, from
        ``masks_any`` (k, feature_size) uint8 (1 where the mask has a pixel); empty for an
        empty mask."""
        n = masks_any.shape[1]
        lo = masks_any.argmax(1)
        hi = n - 1 - masks_any.flip(1).argmax(1)
        start = torch.searchsorted(self.last, lo)
        stop = torch.searchsorted(self.first, hi, right=True)
        return start, torch.where(masks_any.amax(1) == 0, start, stop)


def _bands(start: int, stop: int, first: list[int], last: list[int], band: int) -> list[tuple[int, int, int, int]]:
    """Outputs [start, stop) in runs of at most ``band``: (out_start, out_stop, in_start, in_stop)."""
    runs = [(a, min(a + band, stop)) for a in range(start, stop, band)]
    return [(a, b, first[a], last[b - 1] + 1) for a, b in runs]


def _zeros_bool(shape: tuple[int, ...], device: torch.device, written: int) -> Tensor:
    """A new bool tensor of zeros, of which about ``written`` elements will be written. On the
    CPU, when that is under half of a large tensor, it is an anonymous memory map: its pages come
    from the OS already zeroed and only those written are ever touched, where ``torch.zeros``
    writes every byte (for 100 masks of 480x720, 35 MB of page faults and stores, most of it for
    pixels that stay False). Private, not Python's default shared mapping, which a forked process
    (a DataLoader worker) would write through, and whose pages (shared memory) cost about 1.4
    times as much to fault in (benchmarks/NOTES.md, step 6). Otherwise ``torch.zeros``, whose
    page faults are taken by all threads at once rather than one window at a time. Not
    ``np.zeros``: NumPy asks for transparent huge pages, whose faults stalled for up to 180 ms
    (benchmarks/NOTES.md, step 5)."""
    size = math.prod(shape)
    mappable = device.type == "cpu" and hasattr(mmap, "MAP_PRIVATE")  # not on Windows
    if not mappable or size < MAPPED_ZEROS_BYTES or 2 * written > size:
        return torch.zeros(shape, dtype=torch.bool, device=device)
    return torch.frombuffer(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE), dtype=torch.bool).view(shape)


def resize_masks(
    probs: Tensor | Sequence[Tensor], masks: Tensor, image_size: tuple[int, int], original_size: tuple[int, int],
    mask_thr: float, band: int = RESIZE_BAND,
) -> Tensor:
    """(k, H, W) bool at the original size for (k, h, w) mask probabilities ``probs`` and their
    binary ``masks`` (probs > mask_thr): bilinear x4, crop to the resized image, bilinear to
    the original size, threshold, as ``F.interpolate`` twice but computed only in each mask's
    window. ``probs`` may also be a sequence of k tensors of h x w probabilities (views of a
    larger tensor: nothing is copied).

    Both resizes of an axis are one matrix (``resize_matrix``), so a window is
    ``rows @ probs @ cols.T`` over the inputs it reads. A bilinear value is a convex combination
    of its inputs, so outputs that read no pixel of the mask (no input above mask_thr) are not
    above mask_thr: they stay False. The products run in bands of at most ``band`` output rows
    (columns), each over the inputs that band reads, since the matrices are banded. The values
    equal F.interpolate's in exact arithmetic; rounded differently, they can fall on the other
    side of mask_thr where they are within ~1e-7 of it.
    """
    k, feat_h, feat_w = masks.shape
    if k == 0:
        return torch.zeros((0, *original_size), dtype=torch.bool, device=masks.device)
    device = str(masks.device)
    axes = (ResizeAxis.build(feat_h, image_size[0], original_size[0], device),
            ResizeAxis.build(feat_w, image_size[1], original_size[1], device))
    chosen = masks.view(torch.uint8)
    y = axes[0].output_ranges(chosen.amax(2))
    x = axes[1].output_ranges(chosen.amax(1))
    out = _zeros_bool((k, *original_size), masks.device, int(((y[1] - y[0]) * (x[1] - x[0])).sum()))
    nonempty = ((y[1] > y[0]) & (x[1] > x[0])).nonzero().squeeze(1)
    rows, cols_t = axes[0].matrix, axes[1].matrix.t().contiguous()
    row_first, row_last, col_first, col_last = (t.tolist() for t in (axes[0].first, axes[0].last,
                                                                     axes[1].first, axes[1].last))
    y_start, y_stop, x_start, x_stop = (t.tolist() for t in (*y, *x))
    for i in nonempty.tolist():
        mask_probs = probs[i].view(feat_h, feat_w)
        y_bands = _bands(y_start[i], y_stop[i], row_first, row_last, band)
        x_bands = _bands(x_start[i], x_stop[i], col_first, col_last, band)
        top, bottom, left, right = y_bands[0][2], y_bands[-1][3], x_start[i], x_stop[i]
        across = mask_probs.new_empty((bottom - top, right - left))  # the window's input rows, resized along x
        for a, b, c0, c1 in x_bands:
            torch.mm(mask_probs[top:bottom, c0:c1], cols_t[c0:c1, a:b], out=across[:, a - left : b - left])
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
    features = mask_features.reshape(mask_features.shape[0], -1)
    kernels = kernels[cell_index]
    scored = score_masks(kernels, features, cfg.mask_thr, priority=scores)
    areas, prob_sums = scored.areas, scored.sums

    # Only indices move from here on: rows of masks are gathered when needed.
    kept = (areas > strides[cell_index]).nonzero().squeeze(1)
    if kept.numel() == 0:
        return Detections.empty(*original_size, device=device)
    scores = scores[kept] * (prob_sums[kept] / areas[kept])

    order = torch.argsort(scores, descending=True, stable=True)[: cfg.nms_pre]
    index, scores = kept[order], scores[order]
    labels = labels[index]
    scores = matrix_nms(scored.masks, labels, scores, cfg.nms_kernel, cfg.nms_sigma, areas[index],
                        rows=scored.rows(index))
    keep = scores >= cfg.update_thr
    if not keep.any():
        return Detections.empty(*original_size, device=device)
    index, scores, labels = index[keep], scores[keep], labels[keep]

    order = torch.argsort(scores, descending=True, stable=True)[: cfg.max_per_img]
    index, scores, labels = index[order], scores[order], labels[order]
    shape = (-1, feat_h, feat_w)
    probs = scored.probabilities(index, kernels, features)
    masks = scored.masks[scored.rows(index)].view(shape)
    masks = resize_masks(probs, masks, image_size, tuple(original_size), cfg.mask_thr)
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
