"""Preprocessing (docs/design.md, "Forward pass"): keep-ratio resize size, normalization,
padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from solov2.data.transforms import normalize, pad_batch, preprocess, rescale_size, resize

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]


def reference_size(h, w, long_edge, short_edge):
    """f = min(long / max(h, w), short / min(h, w)); new size (int(w f + 0.5), int(h f + 0.5))."""
    f = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(h * f + 0.5), int(w * f + 0.5)


@pytest.mark.parametrize("h, w, scale, expected", [
    (480, 640, (768, 448), (448, 597)),  # short side limits: f = 448/480
    (640, 480, (768, 448), (597, 448)),  # portrait: the same, transposed
    (1000, 3000, (768, 448), (256, 768)),  # long side limits: f = 768/3000
    (3000, 1000, (768, 448), (768, 256)),
    (448, 768, (768, 448), (448, 768)),  # already at the scale
    (800, 1333, (1333, 800), (800, 1333)),
    (427, 640, (1333, 800), (800, 1199)),  # COCO-like: 640*800/427 = 1199.06
    (10, 20, (768, 448), (384, 768)),  # tiny images grow: f = min(38.4, 44.8)
    (20, 10, (768, 448), (768, 384)),
    (1, 1, (768, 448), (448, 448)),
    (7, 31, (768, 448), (173, 768)),  # 7 * 768/31 = 173.42
    (31, 31, (852, 512), (512, 512)),
])
def test_rescale_size_hand_worked(h, w, scale, expected):
    assert rescale_size(h, w, scale) == expected
    assert rescale_size(h, w, scale[::-1]) == expected  # (short, long) order gives the same
    assert reference_size(h, w, *scale) == expected


def test_rescale_size_matches_formula_on_many_sizes():
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 2500, size=2))
        for scale in ((768, 448), (852, 512), (1333, 800), (192, 192)):
            assert rescale_size(h, w, scale) == reference_size(h, w, *scale), (h, w, scale)
            new_h, new_w = rescale_size(h, w, scale)
            assert max(new_h, new_w) <= max(scale) and min(new_h, new_w) <= min(scale)


def test_resize_output_shape_and_interpolation():
    image = np.zeros((30, 50, 3), np.uint8)
    image[:, 25:] = 200
    out = resize(image, (768, 448))
    assert out.shape == (*rescale_size(30, 50, (768, 448)), 3) and out.dtype == np.uint8
    # Bilinear: a sharp edge gets intermediate values; flat areas stay flat.
    assert out[:, 0].max() == 0 and out[:, -1].min() == 200
    assert ((out > 0) & (out < 200)).any()
    tiny = resize(np.full((2, 3, 3), 7, np.uint8), (768, 448))
    assert tiny.shape == (*rescale_size(2, 3, (768, 448)), 3) and (tiny == 7).all()


def test_normalize_swaps_to_rgb_and_standardizes():
    bgr = np.zeros((2, 3, 3), np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 10, 20, 30  # B, G, R
    bgr[1, 2] = (255, 0, 128)
    out = normalize(bgr, MEAN, STD)
    assert out.dtype == np.float32 and out.shape == (2, 3, 3)
    expected = np.array([(30 - 123.675) / 58.395, (20 - 116.28) / 57.12, (10 - 103.53) / 57.375], np.float32)
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(out[1, 2], [(128 - 123.675) / 58.395, (0 - 116.28) / 57.12,
                                           (255 - 103.53) / 57.375], rtol=1e-6)
    assert bgr[0, 0, 0] == 10  # input untouched


def test_pad_batch():
    a = torch.randn(3, 50, 70)
    b = torch.randn(3, 64, 33)
    batch = pad_batch([a, b], 32)
    assert batch.shape == (2, 3, 64, 96)
    assert torch.equal(batch[0, :, :50, :70], a) and torch.equal(batch[1, :, :64, :33], b)
    assert (batch[0, :, 50:] == 0).all() and (batch[0, :, :, 70:] == 0).all()
    assert (batch[1, :, :, 33:] == 0).all()
    # Exact multiples stay as they are; a single image pads to its own size.
    assert pad_batch([torch.ones(3, 64, 32)], 32).shape == (1, 3, 64, 32)
    assert pad_batch([torch.ones(3, 1, 1)], 32).shape == (1, 3, 32, 32)
    assert pad_batch([torch.ones(3, 65, 97)], 32).shape == (1, 3, 96, 128)


def test_preprocess_end_to_end():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(120, 90, 3), dtype=np.uint8)
    tensor, size = preprocess(image, [768, 448], MEAN, STD)
    assert size == rescale_size(120, 90, (768, 448)) == (597, 448)
    assert tensor.shape == (3, 597, 448) and tensor.dtype == torch.float32
    expected = normalize(resize(image, (768, 448)), MEAN, STD).transpose(2, 0, 1)
    np.testing.assert_array_equal(tensor.numpy(), expected)
