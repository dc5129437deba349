"""ONNX export: ``solov2 export`` writes a self-contained graph with dynamic batch, height
and width whose outputs match PyTorch's within 1e-4 on real photographs (tests/data), and
``OnnxPredictor`` / ``solov2 predict --backend onnxruntime`` give PyTorch's final results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from _backend_checks import assert_raw_outputs_match, assert_results_match
from conftest import randomize_  # noqa: E402

from solov2.checkpoint import atomic_save, make_checkpoint  # noqa: E402
from solov2.cli import main  # noqa: E402
from solov2.config import load_config  # noqa: E402
from solov2.data.image_io import read_image  # noqa: E402
from solov2.engine.predictor import Predictor  # noqa: E402
from solov2.export.onnx import read_onnx_config  # noqa: E402
from solov2.export.onnx_runtime import OnnxPredictor  # noqa: E402
from solov2.model import SOLOv2  # noqa: E402

OVERRIDES = ["test.max_per_img=30"]


def real_model() -> tuple[SOLOv2, object]:
    """light_448_r18 with every weight random (outputs of order 1, as a trained model's) and
    the category bias lowered so that a few hundred candidates pass the score threshold."""
    cfg = load_config("light_448_r18", OVERRIDES)
    torch.manual_seed(0)
    model = randomize_(SOLOv2(cfg.model), seed=0).eval()
    with torch.no_grad():
        model.head.category_pred.bias.sub_(4.5)
    return model, cfg


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, SOLOv2, object]:
    model, cfg = real_model()
    folder = tmp_path_factory.mktemp("onnx")
    weights = folder / "model.pth"
    atomic_save(make_checkpoint(model, cfg.to_dict()), weights)
    out = folder / "model.onnx"
    # Traced at one size; every test below runs it at others.
    assert main(["export", "--weights", str(weights), "--out", str(out), "--height", "256",
                 "--width", "320", "--no-check"]) == 0
    return out, model, cfg


@pytest.fixture(scope="module")
def photo_files(photos) -> list[Path]:
    """Three photographs whose padded input sizes differ."""
    return photos[:3]


@pytest.fixture(scope="module")
def images(photo_files) -> list[np.ndarray]:
    return [read_image(p) for p in photo_files]


def test_config_travels_in_the_metadata(exported):
    path, _, cfg = exported
    stored = read_onnx_config(path)
    assert stored.to_dict() == cfg.to_dict()


def test_raw_outputs_match_pytorch_on_real_images_at_any_size(exported, images):
    path, model, cfg = exported
    onnx_predictor = OnnxPredictor(path)
    assert_raw_outputs_match(model, cfg, images, lambda batch: onnx_predictor.raw_outputs(batch))


def test_final_results_equal_pytorch(exported, images):
    path, model, cfg = exported
    expected = Predictor(model, cfg).predict_batch(images)
    got = OnnxPredictor(path, overrides=OVERRIDES).predict_batch(images)
    assert_results_match(expected, got)


def test_overrides_and_fixed_model_settings(exported):
    path, _, _ = exported
    assert OnnxPredictor(path, overrides=["test.score_thr=0.3"]).cfg.test.score_thr == 0.3
    from solov2.config import ConfigError

    with pytest.raises(ConfigError, match="model"):
        OnnxPredictor(path, overrides=["model.num_classes=3"])


def test_predict_command_with_onnxruntime_backend(exported, photos, tmp_path):
    path, _, _ = exported
    image = photos[0]
    out = tmp_path / "pred"
    assert main(["predict", str(image), "--backend", "onnxruntime", "--weights", str(path),
                 "--out", str(out), "--quiet", "--no-overlays", "test.max_per_img=5"]) == 0
    records = json.loads((out / "results.json").read_text())
    assert 0 < len(records) <= 5
    assert all(r["file_name"].endswith(image.name) for r in records)
