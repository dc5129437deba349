"""Reading images of any depth and channel count as 8-bit BGR; errors name the file."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest

from solov2.data.image_io import ImageReadError, read_image, to_bgr8


def test_color_png_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
    path = tmp_path / "color.png"
    assert cv2.imwrite(str(path), image)
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (17, 23, 3)
    np.testing.assert_array_equal(out, image)  # BGR order kept, lossless


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    path = tmp_path / "gray.png"
    assert cv2.imwrite(str(path), gray)
    out = read_image(path)
    assert out.shape == (12, 10, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_rgba_drops_alpha(tmp_path):
    bgra = np.zeros((5, 6, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2] = 10, 20, 30
    bgra[..., 3] = np.arange(30, dtype=np.uint8).reshape(5, 6) * 8  # varying transparency
    path = tmp_path / "rgba.png"
    assert cv2.imwrite(str(path), bgra)
    out = read_image(path)
    assert out.shape == (5, 6, 3)
    assert (out[..., 0] == 10).all() and (out[..., 1] == 20).all() and (out[..., 2] == 30).all()


def test_16_bit_png_scales_to_8_bit(tmp_path):
    values = np.array([[0, 257, 257 * 100], [257 * 255, 65535, 128]], np.uint16)
    image16 = np.stack([values, values // 2, np.full_like(values, 257 * 7)], axis=-1)
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), image16)
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[..., 0], [[0, 1, 100], [255, 255, 0]])  # 128/257 rounds to 0
    np.testing.assert_array_equal(out[..., 2], np.full((2, 3), 7))
    # A 16-bit grayscale PNG as well.
    gray_path = tmp_path / "deep_gray.png"
    assert cv2.imwrite(str(gray_path), values)
    gray = read_image(gray_path)
    assert gray.shape == (2, 3, 3)
    np.testing.assert_array_equal(gray[..., 1], [[0, 1, 100], [255, 255, 0]])


def test_to_bgr8_float_and_single_channel():
    out = to_bgr8(np.array([[0.0, 0.5, 1.0]], np.float32))
    np.testing.assert_array_equal(out[..., 0], [[0, 128, 255]])
    out = to_bgr8(np.full((2, 2, 1), 9, np.uint8))
    assert out.shape == (2, 2, 3) and (out == 9).all()
    with pytest.raises(ValueError, match="shape"):
        to_bgr8(np.zeros((2, 2, 2), np.uint8))


def test_real_jpeg(photos):
    for path in photos:
        out = read_image(path)
        assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8
        assert out.shape[0] > 32 and out.shape[1] > 32
        np.testing.assert_array_equal(out, cv2.imread(str(path), cv2.IMREAD_COLOR))


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nowhere" / "photo.jpg"
    with pytest.raises(ImageReadError, match="not found") as info:
        read_image(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, OSError)
    with pytest.raises(ImageReadError):
        read_image(tmp_path)  # a folder is not an image


@pytest.mark.parametrize("content", [
    random.Random(0).randbytes(3000),
    b"",
    b"\xff\xd8\xff\xe0" + random.Random(1).randbytes(500),  # JPEG signature, garbage after
    b"not an image at all\n",
], ids=["random", "empty", "jpeg-header", "text"])
def test_corrupt_file_names_the_file(tmp_path, content):
    path = tmp_path / "broken.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_truncated_png_names_the_file(tmp_path):
    path = tmp_path / "cut.png"
    assert cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ImageReadError, match="cut.png"):
        read_image(path)


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert a minimal EXIF APP1 segment holding only the orientation tag after SOI."""
    import struct

    tiff = b"MM\x00\x2a" + struct.pack(">I", 8)
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff + ifd
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def test_read_image_applies_exif_orientation_like_cv2_imread(tmp_path):
    import cv2
    import numpy as np

    from solov2.data.image_io import read_image

    image = np.zeros((10, 20, 3), np.uint8)
    image[:, :5] = 255  # a bright band on the left, to see the rotation
    ok, encoded = cv2.imencode(".jpg", image)
    assert ok
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_with_exif_orientation(encoded.tobytes(), 6))  # 6: rotate 90 clockwise
    expected = cv2.imread(str(path))
    assert expected.shape == (20, 10, 3)  # OpenCV honours the tag
    assert np.array_equal(read_image(path), expected)
