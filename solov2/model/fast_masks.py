"""The mask computations of post-processing, with the CPU's memory traffic in mind.

Each function computes what its docstring says, equal to the straightforward tensor expression
given there (bit for bit, unless the docstring says otherwise); tests/test_postprocess.py checks
each against that expression. What each device-specific choice saves was measured with
``benchmarks/compare_postprocess.py`` (benchmarks/NOTES.md, steps 2b, 5, 6 and 7).

- ``score_masks``: the dynamic convolution, sigmoid, mask threshold, areas and probability sums
  of every candidate, in blocks of rows that stay in the CPU cache.
- ``mask_intersections``: pairwise intersection counts of binary masks (Matrix NMS).
- ``resize_masks``: the final two bilinear resizes and threshold, computed only in each mask's
  window.
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

BLOCK_ROWS = 256  # candidates per mask product in score_masks: 256 x 112 x 168 float32 is 19 MB
PASS_ROWS = 16  # candidates per pass over the probabilities: 16 x 112 x 168 float32 is 1.2 MB
MIN_PRODUCT_ROWS = 16  # products have at least this many rows (_product)
RESIZE_BAND = 96  # output rows / columns per matrix product in resize_masks
MAPPED_ZEROS_BYTES = 1 << 20  # larger outputs of resize_masks may be memory maps (_zeros_bool)


# ---------------------------------------------------------------------------------------------
# Mask scoring


def _product(kernels: Tensor, features: Tensor, out: Tensor | None = None) -> Tensor:
    """(n, pixels) kernels @ features, into the first n rows of ``out`` if given. Computed with at
    least MIN_PRODUCT_ROWS rows (repeated when fewer), so that a row's values do not depend on how
    many rows are computed with it: MKL rounds products of 1-3 rows (1 thread) or 1-3, 5-7, 9-11
    rows (2 threads) differently from larger ones (benchmarks/NOTES.md, step 6)."""
    n = kernels.shape[0]
    if 0 < n < MIN_PRODUCT_ROWS:
        kernels = kernels[torch.arange(MIN_PRODUCT_ROWS, device=kernels.device) % n]
    if out is None:
        return torch.mm(kernels, features)[:n]
    return torch.mm(kernels, features, out=out[: kernels.shape[0]])[:n]


def mask_probabilities(kernels: Tensor, features: Tensor) -> Tensor:
    """(n, pixels) float32 sigmoid(kernels @ features): the dynamic 1x1 convolution of the
    (E, pixels) mask features with the (n, E) kernels, as probabilities."""
    return _product(kernels, features).sigmoid_()


def _above(values: Tensor, threshold: float, out: Tensor, inplace: bool = True) -> Tensor:
    """Writes ``values > threshold`` into the bool ``out`` and returns ``F.threshold(values,
    threshold, 0)`` (values above it kept, others 0; written over ``values`` if ``inplace``).
    For threshold >= 0 the bool is that result's nonzeros, cast rather than compared (faster)."""
    if threshold < 0:
        torch.gt(values, threshold, out=out)  # before the threshold can overwrite values
    inside = F.threshold(values, threshold, 0.0, inplace=inplace)
    if threshold >= 0:
        out.copy_(inside)
    return inside


@dataclass
class ScoredMasks:
    """``score_masks``' results for n candidates. Candidate i's mask is row ``row_of[i]`` of
    ``masks``; the last ``len(kept_probs)`` rows' probabilities were kept."""

    masks: Tensor  # (n, pixels) bool
    row_of: Tensor  # (n,) int64
    areas: Tensor  # (n,) float32 pixel counts, per candidate
    sums: Tensor  # (n,) float32 sums of the probabilities inside each mask, per candidate
    kept_probs: Tensor  # (kept, pixels) float32

    def rows(self, index: Tensor) -> Tensor:
        """Rows of ``masks`` of the candidates ``index``."""
        return self.row_of[index]

    @property
    def first_kept_row(self) -> int:
        """The row of ``masks`` whose probabilities are ``kept_probs[0]``."""
        return self.masks.shape[0] - self.kept_probs.shape[0]

    def probabilities(self, index: Tensor, kernels: Tensor, features: Tensor) -> list[Tensor]:
        """The (pixels,) probabilities of each candidate in ``index``: views of ``kept_probs``
        where kept, else recomputed by ``mask_probabilities`` (bit-identical)."""
        rows = (self.row_of[index] - self.first_kept_row).tolist()
        missing = [j for j, r in enumerate(rows) if r < 0]
        recomputed = iter(mask_probabilities(kernels[index[missing]], features) if missing else ())
        return [self.kept_probs[r] if r >= 0 else next(recomputed) for r in rows]


def _even_ranges(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) in the fewest ranges of at most ``size``, their lengths differing by at most
    one: no range has one element unless ``size`` or the whole is 1 (a product or sum of one row
    can take another path in PyTorch, rounded differently)."""
    count = -(-(stop - start) // size)
    bounds = [start + (stop - start) * i // count for i in range(count + 1)] if count else [start]
    return list(itertools.pairwise(bounds))


def score_masks(
    kernels: Tensor, features: Tensor, mask_thr: float, priority: Tensor,
    block_rows: int = BLOCK_ROWS, pass_rows: int = PASS_ROWS,
) -> ScoredMasks:
    """Masks, areas and probability sums of n candidates: with p = sigmoid(kernels @ features)
    ((n, E) kernels, (E, pixels) features), masks = p > mask_thr, areas = masks.sum(1) and
    sums = (p * masks).sum(1), bit for bit. The probabilities of the ``block_rows`` candidates of
    highest ``priority`` (n,) are kept (``ScoredMasks.probabilities``).

    On the CPU the product runs ``block_rows`` candidates at a time into one reused buffer, the
    kept ones last, and each block is thresholded and summed ``pass_rows`` rows at a time while
    in cache; elsewhere, one product and one pass. Bit-identity with the one-product form needs
    PyTorch's sigmoid to take every element through its vectorized loop (32 floats a step): true
    when pixels is a multiple of 64 with 1 or 2 threads, as for the network's outputs (inputs
    padded to multiples of 32); otherwise a few probabilities can differ in the last bit.
    """
    n, pixels, device = kernels.shape[0], features.shape[1], features.device
    if device.type != "cpu":
        block_rows = pass_rows = max(n, 1)
    keep = priority.topk(min(block_rows, n)).indices
    kept = torch.zeros(n, dtype=torch.bool, device=device)
    kept[keep] = True
    order = torch.cat([(~kept).nonzero().squeeze(1), keep])  # row r of masks is candidate order[r]
    row_of = torch.empty_like(order)
    row_of[order] = torch.arange(n, device=device)
    first_kept = n - keep.numel()
    blocks = _even_ranges(0, first_kept, block_rows) + ([(first_kept, n)] if n else [])

    masks = torch.empty((n, pixels), dtype=torch.bool, device=device)
    areas, sums = features.new_empty(n), features.new_empty(n)
    buffer = features.new_empty((max([MIN_PRODUCT_ROWS] + [b - a for a, b in blocks]), pixels))
    for start, stop in blocks:
        probs = _product(kernels[order[start:stop]], features, out=buffer)
        for first, last in _even_ranges(start, stop, pass_rows):
            p, m = probs[first - start : last - start].sigmoid_(), masks[first:last]
            inside = _above(p, mask_thr, m, inplace=start < first_kept)  # kept rows: p stays
            torch.sum(inside, 1, out=sums[first:last])
            areas[first:last].copy_(m.view(torch.uint8).sum(1, dtype=torch.int32))  # exact counts
    return ScoredMasks(masks, row_of, areas[row_of], sums[row_of], buffer[:n - first_kept])


# ---------------------------------------------------------------------------------------------
# Intersections for Matrix NMS


def _intersections(flat: Tensor) -> Tensor:
    """(n, n) float32 flat @ flat.T of (n, pixels) binary masks; int8 products for bool masks on
    the CPU (exact counts either way)."""
    if flat.dtype == torch.bool and flat.device.type == "cpu":
        as_int8 = flat.view(torch.int8)
        return torch._int_mm(as_int8, as_int8.t()).float()
    flat = flat.float()
    return flat @ flat.t()


def mask_intersections(masks: Tensor, labels: Tensor | None = None, rows: Tensor | None = None) -> Tensor:
    """(n, n) float32 pixel counts of the pairwise intersections of (n, ...) binary masks, or of
    ``masks[rows]`` (gathered class by class, not copied first). With (n,) ``labels``, only
    pairs of the same class are counted (one product per class) and the others are 0."""
    flat = masks.reshape(masks.shape[0], -1)
    n = flat.shape[0] if rows is None else rows.numel()
    classes, counts = (None, None) if labels is None or n < 2 else torch.unique(labels, return_counts=True)
    if classes is None or classes.numel() == 1:
        return _intersections(flat if rows is None else flat[rows])
    out = torch.zeros((n, n), device=flat.device)
    for members in torch.argsort(labels, stable=True).split(counts.tolist()):
        out[members[:, None], members] = _intersections(flat[members if rows is None else rows[members]])
    return out


# ---------------------------------------------------------------------------------------------
# The final resize


def resize_matrix(feature_size: int, image_size: int, original_size: int, device: torch.device | str) -> Tensor:
    """(original_size, feature_size) float32: one axis's final resizes (bilinear x4 to the padded
    size, crop to ``image_size``, bilinear to ``original_size``) as one matrix, obtained by
    passing the identity through those ``F.interpolate`` calls."""
    eye = torch.eye(feature_size, device=device).view(1, feature_size, feature_size, 1)
    up = F.interpolate(eye, size=(4 * feature_size, 1), mode="bilinear", align_corners=False)[:, :, :image_size]
    return F.interpolate(up, size=(original_size, 1), mode="bilinear", align_corners=False)[0, :, :, 0].t()


@dataclass(frozen=True)
class ResizeAxis:
    """One axis's ``resize_matrix`` and, per output, the first and last input with a nonzero
    weight (both non-decreasing: the matrix is banded)."""

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
        """Per mask, the outputs [start, stop) that read any of its pixels, from (k, feature_size)
        uint8 ``masks_any`` (1 where the mask has a pixel in that input); empty for an empty mask."""
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
    """A new bool tensor of zeros of which about ``written`` elements will be written. On the CPU,
    when that is under half of a tensor of at least MAPPED_ZEROS_BYTES, a private anonymous
    memory map: the OS supplies zeroed pages and only those written are touched (``torch.zeros``
    writes every byte). Private, so that a forked process (a DataLoader worker) writing to it
    does not write through. Otherwise (and on Windows) ``torch.zeros``."""
    size = math.prod(shape)
    mappable = device.type == "cpu" and hasattr(mmap, "MAP_PRIVATE")
    if not mappable or size < MAPPED_ZEROS_BYTES or 2 * written > size:
        return torch.zeros(shape, dtype=torch.bool, device=device)
    return torch.frombuffer(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE), dtype=torch.bool).view(shape)


def resize_masks(
    probs: Tensor | Sequence[Tensor], masks: Tensor, image_size: tuple[int, int], original_size: tuple[int, int],
    mask_thr: float, band: int = RESIZE_BAND,
) -> Tensor:
    """(k, H, W) bool at ``original_size``: the (k, h, w) probabilities ``probs`` (or k tensors of
    h * w values) upsampled x4 (bilinear), cropped to ``image_size``, resized to the original
    (bilinear) and thresholded at mask_thr; ``masks`` (k, h, w) bool is ``probs > mask_thr``.

    Equal in exact arithmetic to ``F.interpolate`` twice, crop and ``> mask_thr``, but rounded
    differently: a pixel can fall on the other side of mask_thr where F.interpolate's value is
    within ~1e-7 of it. Both resizes of an axis are one matrix (``ResizeAxis``), so a mask is
    ``rows @ probs @ cols.T``, computed only in its window, the outputs that read a pixel of the
    mask (the others are convex combinations of values <= mask_thr: False), and in bands of at
    most ``band`` output rows (columns), each over the inputs it reads.
    """
    k, feat_h, feat_w = masks.shape
    original_size = tuple(original_size)
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
