"""SOLOv2 network, post-processing, training targets and losses."""

from .postprocess import Detections, matrix_nms, points_nms, postprocess
from .solov2 import ModelConfigError, SOLOv2, SOLOv2Outputs

__all__ = [
    "ModelConfigError",
    "Detections",
    "SOLOv2",
    "SOLOv2Outputs",
    "matrix_nms",
    "points_nms",
    "postprocess",
]
