"""Inference with an exported model in ONNX Runtime, with the same interface as ``Predictor``.

``OnnxPredictor("model.onnx")(image)`` preprocesses exactly as ``Predictor`` does, runs the
graph, splits its outputs back into levels and applies the project's ``postprocess``, so
results equal the PyTorch path's up to the graph's float rounding.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..config import ConfigError, apply_overrides
from ..data.coco_classes import class_names_and_ids
from ..data.transforms import pad_batch
from ..engine.predictor import Predictor
from ..model import Detections
from ..model.postprocess import postprocess
from .onnx import INPUT_NAME, read_onnx_config, split_levels


class OnnxPredictor(Predictor):
    """Runs an ``.onnx`` file written by ``solov2 export``.

    ``overrides`` may change ``test.*`` (thresholds) and ``input.*`` (test scale); the
    network's own settings (``model.*``) are fixed by the graph. ``providers`` defaults to
    CUDA when ONNX Runtime has it, else CPU; ``num_threads`` sets intra-op threads (0: ORT's
    default).
    """

    def __init__(
        self,
        onnx_path: str | Path,
        overrides: Sequence[str] = (),
        batch_size: int = 4,
        providers: Sequence[str] | None = None,
        num_threads: int = 0,
    ):
        try:
            import onnx  # noqa: F401  (read_onnx_config needs it)
            import onnxruntime  # noqa: F401
        except ImportError as err:
            raise RuntimeError(f"the onnxruntime backend needs onnx and onnxruntime ({err}): "
                               "pip install 'solov2[onnx]'") from err
        onnx_path = Path(onnx_path)
        try:
            stored = read_onnx_config(onnx_path)
        except (OSError, ValueError) as err:
            raise ConfigError(str(err)) from err
        cfg = apply_overrides(copy.deepcopy(stored), overrides)
        if cfg.model != stored.model:
            raise ConfigError("model.* settings are fixed in an exported model; only test.* and input.* "
                              "can be overridden")
        self.session = self.make_session(onnx_path, providers, num_threads)
        self.onnx_path = onnx_path
        self.cfg = cfg
        self.device = torch.device("cpu")  # post-processing runs on the CPU
        self.precision = "fp32"
        self.batch_size = batch_size
        self.class_names, self.category_ids = class_names_and_ids(
            cfg.model.num_classes, cfg.model.class_names, cfg.model.category_ids
        )

    def make_session(self, onnx_path: Path, providers: Sequence[str] | None, num_threads: int):
        """The ONNX Runtime session (subclasses such as OpenVinoPredictor swap in another)."""
        import onnxruntime as ort

        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        return ort.InferenceSession(str(onnx_path), options, providers=list(providers))

    def raw_outputs(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The graph's (category_logits, kernels, mask_features) for a padded batch."""
        logits, kernels, mask_features = self.session.run(None, {INPUT_NAME: batch.numpy()})
        return logits, kernels, mask_features

    def run_network(self, tensors: list[torch.Tensor], image_sizes: list[tuple[int, int]],
                    original_sizes: list[tuple[int, int]]) -> list[Detections]:
        batch = pad_batch(tensors, self.cfg.input.size_divisor)
        logits, kernels, mask_features = (torch.from_numpy(a) for a in self.raw_outputs(batch))
        grids = self.cfg.model.grids
        return postprocess(split_levels(logits, grids), split_levels(kernels, grids), mask_features,
                           [tuple(s) for s in image_sizes], [tuple(s) for s in original_sizes],
                           grids, self.cfg.model.strides, self.cfg.test)
