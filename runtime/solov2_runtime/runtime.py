"""``Runtime("model.onnx")(image)``: a model exported by ``solov2 export``, run with ONNX
Runtime and NumPy only: preprocessing, the graph, post-processing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .image_io import read_image, to_bgr8
from .postprocess import Instances, postprocess
from .preprocess import pad_arrays, padded_size, preprocess_array
from .records import xyxy_boxes
from .settings import CONFIG_KEY, RuntimeSettings, SettingsError, apply_overrides, settings_from_yaml

ImageInput = str | Path | np.ndarray
INPUT_NAME = "images"
FULL_GRAPH_INPUT = "original_size"  # an input of one-graph models (solov2 export --postprocess)


class ModelError(ValueError):
    """A model file that is missing, not ONNX, or not exported by ``solov2 export``."""


@dataclass
class Result:
    """Instances found in one image, by descending score, masks at the original size."""

    masks: np.ndarray  # (N, H, W) bool
    labels: np.ndarray  # (N,) int64 contiguous labels 0..C-1
    scores: np.ndarray  # (N,) float32
    class_names: list[str] = field(default_factory=list)  # (N,) name of each instance's class
    category_ids: list[int] = field(default_factory=list)  # (N,) dataset category id of each instance

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def boxes(self) -> np.ndarray:
        """(N, 4) float64 ``[x1, y1, x2, y2]`` enclosing each mask (x2, y2 exclusive)."""
        return xyxy_boxes(self.masks)


def open_session(path: str | Path, providers: Sequence[str] | None = None, num_threads: int = 0):
    """An ONNX Runtime session for ``path`` (CUDA when ORT has it and ``providers`` is None);
    raises ModelError naming the file."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    if providers is None:
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as err:  # ORT raises its own exception types for unreadable models
        raise ModelError(f"{path}: not a readable ONNX model ({str(err).splitlines()[0]})") from err


def read_settings(session, path: str | Path) -> RuntimeSettings:
    """The settings stored in the session's model metadata; raises ModelError if absent."""
    metadata = session.get_modelmeta().custom_metadata_map
    if CONFIG_KEY not in metadata:
        raise ModelError(f"{path}: no solov2 config in the ONNX metadata (not exported by 'solov2 export'?)")
    try:
        return settings_from_yaml(metadata[CONFIG_KEY])
    except SettingsError as err:
        raise ModelError(f"{path}: {err}") from err


class Runtime:
    """Runs an ``.onnx`` file written by ``solov2 export``.

    Call it with an image path or an HxW(x1/x3/x4) array (BGR, as OpenCV reads it), or a list
    of them. Runs both kinds of export: the network (post-processing here, in NumPy) and the
    one graph of ``solov2 export --postprocess`` (whose thresholds are fixed in the graph). ``overrides`` ("test.score_thr=0.3", "input.test_scale=[640, 384]") change the
    thresholds and input size; ``num_threads`` sets ONNX Runtime's intra-op threads (0: its
    default). Images whose padded sizes agree run as one batch of up to ``batch_size``.
    Raises ModelError for an unusable model file, SettingsError for a bad override.
    """

    def __init__(self, model: str | Path, overrides: Sequence[str] = (), batch_size: int = 4,
                 providers: Sequence[str] | None = None, num_threads: int = 0):
        self.path = Path(model)
        self.session = open_session(self.path, providers, num_threads)
        self.full_graph = FULL_GRAPH_INPUT in {i.name for i in self.session.get_inputs()}
        if self.full_graph and any(item.strip().startswith("test.") for item in overrides):
            raise SettingsError(f"{self.path}: test.* thresholds are fixed inside a one-graph model "
                                "(exported with --postprocess); export it again to change them")
        self.settings = apply_overrides(read_settings(self.session, self.path), overrides)
        self.batch_size = batch_size
        self.class_names, self.category_ids = self.settings.class_names, self.settings.category_ids

    def prepare(self, image: ImageInput) -> np.ndarray:
        """A path or an array as HxWx3 uint8 BGR (raises ImageReadError / ValueError)."""
        return read_image(image) if isinstance(image, (str, Path)) else to_bgr8(np.asarray(image))

    def raw_outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The graph's (category_logits, kernels, mask_features) for a padded (N, 3, H, W) batch."""
        logits, kernels, features = self.session.run(None, {INPUT_NAME: np.ascontiguousarray(batch, np.float32)})
        return logits, kernels, features

    def run_full_graph(self, batch: np.ndarray, image_size: tuple[int, int],
                       original_size: tuple[int, int]) -> Instances:
        """One padded (1, 3, H, W) image through a one-graph model."""
        masks, labels, scores = self.session.run(None, {
            INPUT_NAME: np.ascontiguousarray(batch, np.float32),
            "image_size": np.asarray(image_size, np.int64), FULL_GRAPH_INPUT: np.asarray(original_size, np.int64)})
        return Instances(masks.astype(bool, copy=False), labels.astype(np.int64), scores.astype(np.float32))

    def run_batch(self, arrays: list[np.ndarray], image_sizes: list[tuple[int, int]],
                  original_sizes: list[tuple[int, int]]) -> list[Instances]:
        """Preprocessed (3, h, w) arrays of one padded size -> their instances."""
        s = self.settings
        if self.full_graph:  # batch 1: one run per image
            return [self.run_full_graph(pad_arrays([a], s.input.size_divisor), size, original)
                    for a, size, original in zip(arrays, image_sizes, original_sizes)]
        logits, kernels, features = self.raw_outputs(pad_arrays(arrays, s.input.size_divisor))
        return postprocess(logits, kernels, features, image_sizes, original_sizes, s.grids, s.strides, s.test)

    def score_thresholds(self) -> tuple[float, float]:
        """``test.score_thr`` and ``test.update_thr`` in use."""
        return self.settings.test.score_thr, self.settings.test.update_thr

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[Result]:
        """BGR uint8 images -> results; images are grouped by padded size, so batching never
        changes what any one image gets."""
        inp = self.settings.input
        prepared = [preprocess_array(img, inp.test_scale, inp.mean, inp.std) for img in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for index, (_, size) in enumerate(prepared):
            groups.setdefault(padded_size(*size, inp.size_divisor), []).append(index)
        results: list[Result | None] = [None] * len(images)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                found = self.run_batch([prepared[i][0] for i in chunk], [prepared[i][1] for i in chunk],
                                       [tuple(images[i].shape[:2]) for i in chunk])
                for i, instances in zip(chunk, found):
                    results[i] = self.to_result(instances)
        return results  # type: ignore[return-value]

    def to_result(self, instances: Instances) -> Result:
        labels = instances.labels
        return Result(instances.masks, labels, instances.scores,
                      [self.class_names[i] for i in labels], [self.category_ids[i] for i in labels])

    def __call__(self, images: ImageInput | Sequence[ImageInput]) -> Result | list[Result]:
        single = isinstance(images, (str, Path)) or (isinstance(images, np.ndarray) and images.ndim in (2, 3))
        items = [images] if single else list(images)
        results = self.predict_batch([self.prepare(item) for item in items])
        return results[0] if single else results
