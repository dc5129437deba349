"""Reading images of any depth and channel count as 8-bit BGR (``solov2_runtime.image_io``,
shared with the PyTorch-free runtime)."""

from solov2_runtime.image_io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, ImageReadError, read_image, to_bgr8

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "ImageReadError", "read_image", "to_bgr8"]
