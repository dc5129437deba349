"""Image preprocessing as the authors' release: keep-ratio resize, normalize, pad to /32.

The NumPy steps are ``solov2_runtime.preprocess`` (shared with the PyTorch-free runtime);
this module makes PyTorch tensors of them."""

from __future__ import annotations

import numpy as np
import torch
from solov2_runtime.preprocess import normalize, preprocess_array, rescale_size, resize
from torch import Tensor

__all__ = ["normalize", "pad_batch", "preprocess", "rescale_size", "resize"]


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
    array, size = preprocess_array(image_bgr, scale, mean, std)
    return torch.from_numpy(array), size
