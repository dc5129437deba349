"""Inference with an exported model (fp32 or INT8 QDQ ``.onnx``) in OpenVINO on the CPU.

``OpenVinoSession`` has the part of ``onnxruntime.InferenceSession``'s interface that the
ONNX Runtime backend calls (``run(None, {input: array})`` returning the outputs in the
graph's order), so ``OpenVinoPredictor`` is ``OnnxPredictor`` with the session swapped: the
same preprocessing, level splitting and ``postprocess``.

fp32 graphs run in fp32 (``INFERENCE_PRECISION_HINT=f32``, also on CPUs with bf16 units);
INT8 QDQ graphs (``solov2.export.quantize``) run their quantized convolutions in INT8.

All sessions share one ``openvino.Core`` that lives as long as the process (``_core``): each
Core's CPU plugin replaces the calling thread's signal alternate stack (sigaltstack) with one
of its own and, when released, puts back the one it found. Two Cores released in the order
they were made (not the reverse) leave the thread on the first plugin's unmapped stack, and
the next signal handled there (Ctrl-C, or a training run's SIGINT) is a segmentation fault
(tests/test_openvino_signals.py).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import ConfigError
from .onnx import OUTPUT_NAMES
from .onnx_runtime import OnnxPredictor


def _openvino():
    try:
        import openvino
    except ImportError as err:
        raise RuntimeError(f"the openvino backend needs the openvino package ({err}): "
                           "pip install 'solov2[openvino]'") from err
    return openvino


@lru_cache(maxsize=1)
def _core() -> Any:
    """The process's one ``openvino.Core`` (see the module docstring: a Core per session
    corrupts the main thread's signal stack once two are released out of order)."""
    return _openvino().Core()


class OpenVinoSession:
    """An ``.onnx`` file compiled by OpenVINO for the CPU, called like an ORT session.

    ``num_threads`` 0 leaves OpenVINO's default; otherwise it is INFERENCE_NUM_THREADS, with
    one stream and the latency hint (one request at a time, as the predictors run).
    Raises RuntimeError without openvino, and FileNotFoundError for a missing file.
    """

    def __init__(self, onnx_path: str | Path, num_threads: int = 0):
        core = _core()
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise FileNotFoundError(f"{onnx_path}: ONNX file not found")
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                                     "INFERENCE_PRECISION_HINT": "f32"}
        if num_threads > 0:
            config["INFERENCE_NUM_THREADS"] = num_threads
        self.compiled = core.compile_model(str(onnx_path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        import onnx

        # The graph's own output names (an OpenVINO port may carry several names).
        self.output_names = [o.name for o in onnx.load(str(onnx_path), load_external_data=False).graph.output]

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs named (all, in the graph's order, for None) for the ``feeds`` inputs;
        arrays are copies that the next call does not overwrite."""
        self.request.infer({name: np.ascontiguousarray(v) for name, v in feeds.items()})
        names = list(output_names) if output_names else self.output_names
        return [self.request.get_tensor(name).data.copy() for name in names]


class OpenVinoPredictor(OnnxPredictor):
    """``OnnxPredictor`` running the graph in OpenVINO (CPU). ``overrides`` as there;
    ``num_threads`` as ``OpenVinoSession``'s. Raises ConfigError for a file without the
    solov2 metadata, with other outputs than ``solov2 export`` writes, or for a ``model.*``
    override; RuntimeError without openvino."""

    def __init__(self, onnx_path: str | Path, overrides: Sequence[str] = (), batch_size: int = 4,
                 num_threads: int = 0):
        super().__init__(onnx_path, overrides, batch_size, None, num_threads)
        if tuple(self.session.output_names) != OUTPUT_NAMES:
            raise ConfigError(f"{onnx_path}: outputs {self.session.output_names}, expected {list(OUTPUT_NAMES)}")

    def make_session(self, onnx_path: Path, providers: Sequence[str] | None, num_threads: int) -> OpenVinoSession:
        return OpenVinoSession(onnx_path, num_threads)
