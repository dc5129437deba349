"""The ``solov2 predict`` job (``solov2_runtime.predict_files``, shared with the PyTorch-free
runtime's ``solov2-runtime predict``)."""

from solov2_runtime.predict_files import BatchPredictor, PredictSummary, predict_files

__all__ = ["BatchPredictor", "PredictSummary", "predict_files"]
