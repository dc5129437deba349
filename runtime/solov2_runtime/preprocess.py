"""Image preprocessing as the authors' release: keep-ratio resize, normalize, pad to /32.

NumPy and OpenCV only; ``solov2.data.transforms`` builds its PyTorch tensors from these.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np


def rescale_size(height: int, width: int, scale: Sequence[int]) -> tuple[int, int]:
    """(new_h, new_w) fitting the image inside (long, short) edges while keeping its aspect ratio."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize(image: np.ndarray, scale: Sequence[int]) -> np.ndarray:
    """Bilinear keep-ratio resize of an HxWxC image to ``rescale_size``."""
    new_h, new_w = rescale_size(image.shape[0], image.shape[1], scale)
    return cv2.resize(image, (max(new_w, 1), max(new_h, 1)), interpolation=cv2.INTER_LINEAR)


def normalize(image_bgr: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """BGR uint8 to RGB float32, (x - mean) / std."""
    rgb = image_bgr[:, :, ::-1].astype(np.float32)
    return (rgb - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def preprocess_array(
    image_bgr: np.ndarray, scale: Sequence[int], mean: Sequence[float], std: Sequence[float]
) -> tuple[np.ndarray, tuple[int, int]]:
    """One BGR uint8 image to a normalized (3, h, w) float32 array and its resized (h, w), unpadded."""
    resized = resize(image_bgr, scale)
    chw = np.ascontiguousarray(normalize(resized, mean, std).transpose(2, 0, 1))
    return chw, (resized.shape[0], resized.shape[1])


def padded_size(height: int, width: int, size_divisor: int = 32) -> tuple[int, int]:
    """(H, W) rounded up to multiples of ``size_divisor``."""
    return -(-height // size_divisor) * size_divisor, -(-width // size_divisor) * size_divisor


def pad_arrays(images: Sequence[np.ndarray], size_divisor: int = 32) -> np.ndarray:
    """Stack (3, h, w) float32 arrays into (N, 3, H, W), zero-padding bottom and right to a
    common multiple of ``size_divisor``."""
    pad_h, pad_w = padded_size(max(i.shape[-2] for i in images), max(i.shape[-1] for i in images),
                               size_divisor)
    batch = np.zeros((len(images), images[0].shape[0], pad_h, pad_w), dtype=np.float32)
    for i, img in enumerate(images):
        batch[i, :, : img.shape[-2], : img.shape[-1]] = img
    return batch
