"""solov2-runtime: SOLOv2 models exported to ONNX, run with NumPy, OpenCV and ONNX Runtime
(no PyTorch): ``Runtime("model.onnx")("street.jpg")``."""

__version__ = "0.1.0"

from .image_io import ImageReadError, read_image  # noqa: E402
from .records import encode_masks, to_coco_records  # noqa: E402
from .settings import SettingsError  # noqa: E402

__all__ = ["ImageReadError", "ModelError", "Result", "Runtime", "SettingsError", "__version__",
           "encode_masks", "read_image", "to_coco_records"]


def __getattr__(name: str):  # Runtime imports onnxruntime: load it only when asked for
    if name in ("Runtime", "Result", "ModelError"):
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(name)
