"""The OpenVINO backend gives PyTorch's outputs within the fp32 tolerance of the ONNX Runtime
backend (tests/test_onnx.py) on real photographs, ``solov2 predict --backend openvino`` runs,
and the benchmark's backends section runs end to end at a tiny size (figures present and
consistent; no timing assertions)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
pytestmark = pytest.mark.openvino  # see conftest.py: OpenVINO and later PyTorch training in one process

from _backend_checks import assert_raw_outputs_match, assert_results_match  # noqa: E402
from solov2.checkpoint import atomic_save, make_checkpoint  # noqa: E402
from solov2.cli import main  # noqa: E402
from solov2.config import ConfigError, load_config  # noqa: E402
from solov2.data.image_io import read_image  # noqa: E402
from solov2.engine.predictor import Predictor  # noqa: E402
from solov2.export.onnx import export_onnx  # noqa: E402
from solov2.export.openvino_backend import OpenVinoPredictor, OpenVinoSession  # noqa: E402
from solov2.model import SOLOv2  # noqa: E402

OVERRIDES = ["test.max_per_img=30"]
# The benchmark's tiny network (tests/test_benchmark.py).
TINY = ["model.num_classes=3", "model.grids=[8,6,4,4,2]", "model.head_channels=64",
        "model.fpn_channels=64", "model.kernel_channels=32", "model.mask_mid_channels=32"]


@pytest.fixture(scope="module")
def exported(random_model, tmp_path_factory) -> tuple[Path, torch.nn.Module, object]:
    """light_448_r18, every weight random, category bias lowered so that a few hundred
    candidates pass the score threshold (as in test_onnx), traced at 256x320."""
    cfg = load_config("light_448_r18", OVERRIDES)
    model = random_model("light_448_r18", seed=0)
    with torch.no_grad():
        model.head.category_pred.bias.sub_(4.5)
    path = export_onnx(model, cfg, tmp_path_factory.mktemp("ov") / "model.onnx", 256, 320)
    return path, model, cfg


@pytest.fixture(scope="module")
def images(photos) -> list[np.ndarray]:
    return [read_image(p) for p in photos[:3]]


def test_raw_outputs_match_pytorch_on_real_images_at_any_size(exported, images):
    path, model, cfg = exported
    session = OpenVinoSession(path, num_threads=1)
    assert_raw_outputs_match(model, cfg, images, lambda batch: session.run(None, {"images": batch.numpy()}))


def test_final_results_equal_pytorch(exported, images):
    path, model, cfg = exported
    expected = Predictor(model, cfg).predict_batch(images)
    got = OpenVinoPredictor(path, overrides=OVERRIDES, num_threads=1).predict_batch(images)
    assert_results_match(expected, got)


def test_fixed_model_settings_and_missing_file(exported, tmp_path):
    path, _, _ = exported
    assert OpenVinoPredictor(path, overrides=["test.score_thr=0.3"]).cfg.test.score_thr == 0.3
    with pytest.raises(ConfigError, match="model"):
        OpenVinoPredictor(path, overrides=["model.num_classes=3"])
    with pytest.raises(ConfigError, match="not found"):
        OpenVinoPredictor(tmp_path / "missing.onnx")


def test_predict_command_with_openvino_backend(exported, photos, tmp_path, capsys):
    path, _, _ = exported
    out = tmp_path / "pred"
    assert main(["predict", str(photos[0]), "--backend", "openvino", "--weights", str(path),
                 "--out", str(out), "--quiet", "--no-overlays", "test.max_per_img=5"]) == 0
    records = json.loads((out / "results.json").read_text())
    assert 0 < len(records) <= 5
    assert main(["predict", str(photos[0]), "--backend", "openvino", "--out", str(out)]) == 2
    assert "error: --backend openvino needs --weights" in capsys.readouterr().err


def test_benchmark_backends_section(tmp_path, photos, capsys):
    cfg = load_config("light_448_r18", TINY)
    torch.manual_seed(0)
    weights = tmp_path / "tiny.pth"
    atomic_save(make_checkpoint(SOLOv2(cfg.model), cfg.to_dict()), weights)
    out = tmp_path / "bench.json"
    backends = "pytorch,onnxruntime,openvino,onnxruntime-int8,openvino-int8"
    code = main(["benchmark", "--config", "light_448_r18", "--size", "64x96", "--batch", "2", "--repeats", "2",
                 "--warmup", "1", "--threads", "1", "--only", "backends", "--backends", backends,
                 "--weights", str(weights), "--agreement-images", str(photos[0]), "--json", str(out), *TINY])
    assert code == 0
    assert "openvino-int8" in capsys.readouterr().out
    section = json.loads(out.read_text())["backends"]
    assert section["backends"] == backends.split(",")
    assert section["calibration"] == {"source": "the agreement images", "images": 1}
    for key, batch in (("batch_1", 1), ("batch_2", 2)):
        table = section["batches"][key]
        assert table["batch"] == batch and set(table["backends"]) == set(backends.split(","))
        pytorch = table["backends"]["pytorch"]
        assert pytorch["network_ratio_to_pytorch"] == 1.0 and pytorch["image_ratio_to_pytorch"] == 1.0
        for name, row in table["backends"].items():
            assert row["network_ms"] > 0 and row["image_ms"] > 0 and row["network_ratio_to_torch_floor"] > 0
            assert math.isclose(row["network_ms_per_image"], row["network_ms"] / batch)
            assert (name == "pytorch") == ("network_ratio_to_own_floor" not in row)
    b1, b2 = section["batches"]["batch_1"], section["batches"]["batch_2"]
    assert math.isclose(b2["network_gflops"], 2 * b1["network_gflops"], rel_tol=1e-6)
    assert "int8" in section["floors"]["openvino-int8"]["convolution"]
    for name in backends.split(",")[1:]:
        agreement = section["agreement"][name]
        assert set(agreement["instances"]) == {"fp32", "backend", "matched"}
    assert main(["benchmark", "--only", "backends", "--backends", "tensorrt", "--size", "64x96", *TINY]) == 2
