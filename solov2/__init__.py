"""SOLOv2 instance segmentation in plain PyTorch."""

__version__ = "0.1.0"

from .config import Config, load_config  # noqa: E402
from .engine.predictor import PredictionResult, Predictor  # noqa: E402

__all__ = ["Config", "PredictionResult", "Predictor", "__version__", "load_config"]
