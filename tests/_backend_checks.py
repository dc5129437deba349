"""Checks shared by the tests of the exported-model backends (ONNX Runtime, OpenVINO)."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from solov2.data.transforms import pad_batch, preprocess
from solov2.export.onnx import ExportableSOLOv2

OUTPUT_NAMES = ("category_logits", "kernels", "mask_features")


def assert_raw_outputs_match(model, cfg, images: Sequence[np.ndarray], run: Callable[[torch.Tensor], list]) -> None:
    """``run(batch)``'s three outputs equal PyTorch's within 1e-4, for each image alone (the
    test images have different padded sizes) and for the first two as one padded batch."""
    reference_net = ExportableSOLOv2(model).eval()
    tensors = [preprocess(img, cfg.input.test_scale, cfg.input.mean, cfg.input.std)[0] for img in images]
    batches = [pad_batch([t]) for t in tensors] + [pad_batch(tensors[:2])]
    assert len({tuple(b.shape) for b in batches}) == len(images) + 1
    for batch in batches:
        with torch.inference_mode():
            reference = reference_net(batch)
        for name, out, ref in zip(OUTPUT_NAMES, run(batch), reference):
            assert out.shape == tuple(ref.shape), name
            np.testing.assert_allclose(out, ref.numpy(), rtol=0, atol=1e-4, err_msg=name)


def assert_results_match(expected: Sequence, got: Sequence) -> None:
    """Final results of a backend equal the PyTorch Predictor's: labels and class names,
    scores within 1e-3; outputs differ by ~1e-5 (another convolution library), which can move
    a pixel whose mask probability is within that of the threshold: a handful in millions."""
    assert len(expected) == len(got)
    for exp, res in zip(expected, got):
        assert len(exp) > 0
        assert np.array_equal(exp.labels, res.labels)
        assert exp.class_names == res.class_names
        np.testing.assert_allclose(res.scores, exp.scores, rtol=0, atol=1e-3)
        assert res.masks.shape == exp.masks.shape
        differing = int((res.masks != exp.masks).sum())
        assert differing <= 1e-5 * exp.masks.size, differing
