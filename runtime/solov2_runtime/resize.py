"""The final resize of SOLOv2's masks in NumPy: bilinear x4 to the padded input, crop to the
resized image, bilinear to the original size, threshold (``F.interpolate`` twice with
``align_corners=False``, as the authors' release), computed in each mask's window only.

Both resizes of an axis are one banded (original, feature) matrix, so a mask's output is
``rows @ probs @ cols.T > mask_thr``; a bilinear value is a convex combination of its inputs,
so outputs that read no input above ``mask_thr`` stay False and only the window of outputs
that read a pixel of the mask is computed, in bands of output rows (columns) over the inputs
each band reads.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

BAND = 96  # output rows / columns per matrix product


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float32 weights of PyTorch's bilinear resize (align_corners=False,
    output size given): source x = (dst + 0.5) * in / out - 0.5, clamped at 0, in float32."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.maximum(scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5),
                     np.float32(0))
    i0 = src.astype(np.int64)
    i1 = i0 + (i0 < in_size - 1)
    l1 = np.clip(src - i0.astype(np.float32), 0, 1)
    matrix = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, i0), 1 - l1)
    np.add.at(matrix, (rows, i1), l1)
    return matrix


@dataclass(frozen=True)
class Axis:
    """One axis' composite resize ``matrix`` (original, feature) and, per output, the first and
    last input with a nonzero weight (both non-decreasing)."""

    matrix: np.ndarray
    first: np.ndarray
    last: np.ndarray

    @staticmethod
    @functools.lru_cache(maxsize=16)
    def build(feature_size: int, image_size: int, original_size: int) -> "Axis":
        up = bilinear_matrix(feature_size, 4 * feature_size)[:image_size]
        matrix = (bilinear_matrix(image_size, original_size).astype(np.float64) @ up).astype(np.float32)
        nonzero = matrix != 0
        first = nonzero.argmax(axis=1)
        last = feature_size - 1 - nonzero[:, ::-1].argmax(axis=1)
        return Axis(matrix, first, last)

    def output_ranges(self, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per mask, the outputs [start, stop) that read any of its pixels, from ``present``
        (k, feature_size) bool (True where the mask has a pixel); empty for an empty mask."""
        size = present.shape[1]
        lo = present.argmax(axis=1)
        hi = size - 1 - present[:, ::-1].argmax(axis=1)
        start = np.searchsorted(self.last, lo, side="left")
        stop = np.searchsorted(self.first, hi, side="right")
        return start, np.where(present.any(axis=1), stop, start)


def _bands(start: int, stop: int, axis: Axis) -> list[tuple[int, int, int, int]]:
    """Outputs [start, stop) in runs of at most BAND: (out_start, out_stop, in_start, in_stop)."""
    return [(a, min(a + BAND, stop), int(axis.first[a]), int(axis.last[min(a + BAND, stop) - 1]) + 1)
            for a in range(start, stop, BAND)]


def resize_masks(probs: np.ndarray, masks: np.ndarray, image_size: tuple[int, int],
                 original_size: tuple[int, int], mask_thr: float) -> np.ndarray:
    """(k, H, W) bool masks at ``original_size`` from (k, h, w) float32 probabilities ``probs``
    and their binary ``masks`` (probs > mask_thr); ``image_size`` is the resized, unpadded
    image (at most 4h x 4w)."""
    k, feat_h, feat_w = masks.shape
    out = np.zeros((k, *original_size), bool)
    if k == 0:
        return out
    rows_axis = Axis.build(feat_h, image_size[0], original_size[0])
    cols_axis = Axis.build(feat_w, image_size[1], original_size[1])
    y_start, y_stop = rows_axis.output_ranges(masks.any(axis=2))
    x_start, x_stop = cols_axis.output_ranges(masks.any(axis=1))
    cols_t = np.ascontiguousarray(cols_axis.matrix.T)
    for i in np.nonzero((y_stop > y_start) & (x_stop > x_start))[0]:
        y_bands = _bands(int(y_start[i]), int(y_stop[i]), rows_axis)
        left, right = int(x_start[i]), int(x_stop[i])
        top, bottom = y_bands[0][2], y_bands[-1][3]
        across = np.empty((bottom - top, right - left), np.float32)  # input rows, resized along x
        for a, b, c0, c1 in _bands(left, right, cols_axis):
            np.matmul(probs[i, top:bottom, c0:c1], cols_t[c0:c1, a:b], out=across[:, a - left : b - left])
        for a, b, r0, r1 in y_bands:
            np.greater(rows_axis.matrix[a:b, r0:r1] @ across[r0 - top : r1 - top], mask_thr,
                       out=out[i, a:b, left:right])
    return out
