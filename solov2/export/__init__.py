"""ONNX export and inference with ONNX Runtime."""

from .onnx import ExportableSOLOv2, export_onnx, read_onnx_config

__all__ = ["ExportableSOLOv2", "OnnxPredictor", "export_onnx", "read_onnx_config"]


def __getattr__(name: str):  # OnnxPredictor imports onnxruntime: load it only when asked for
    if name == "OnnxPredictor":
        from .onnx_runtime import OnnxPredictor

        return OnnxPredictor
    raise AttributeError(name)
