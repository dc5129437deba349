"""Image preprocessing as the authors' release: keep-ratio resize, normalize, pad to /32."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor


def rescale_size(height: int, width: int, scale: tuple[int, int] | list[int]) -> tuple[int, int]:
    """(new_h, new_w) fitting the image inside (long, short) edges while keeping its aspect ratio."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize(image: np.ndarray, scale: tuple[int, int] | list[int]) -> np.ndarray:
    new_h, new_w = rescale_size(image.shape[0], image.shape[1], scale)
    return cv2.resize(image, (max(new_w, 1), max(new_h, 1)), interpolation=cv2.INTER_LINEAR)


def normalize(image_bgr: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """BGR uint8 to RGB float32, (x - mean) / std."""
    rgb = image_bgr[:, :, ::-1].astype(np.float32)
    return (rgb - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def pad_batch(images: list[Tensor], size_divisor: int = 32) -> Tensor:
    """Stack (3, h, w) tensors, zero-padding bottom and right to a common multiple of size_divisor."""
    max_h = max(img.shape[-2] for img in images)
    max_w = max(img.shape[-1] for img in images)
    pad_h = -(-max_h // size_divisor) * size_divisor
    pad_w = -(-max_w // size_divisor) * size_divisor
    batch = images[0].new_zeros((len(images), images[0].shape[0], pad_h, pad_w))
    for i, img in enumerate(images):
        batch[i, :, : img.shape[-2], : img.shape[-1]] = img
    return batch


def preprocess(
    image_bgr: np.ndarray, scale: list[int], mean: list[float], std: list[float]
) -> tuple[Tensor, tuple[int, int]]:
    """One BGR image to a normalized (3, h, w) tensor and its resized (h, w), unpadded."""
    resized = resize(image_bgr, scale)
    tensor = torch.from_numpy(np.ascontiguousarray(normalize(resized, mean, std).transpose(2, 0, 1)))
    return tensor, (resized.shape[0], resized.shape[1])
