"""Empty predictions explained (predict summary, Python API) and ``PredictionResult.boxes``."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from solov2 import Predictor, load_config
from solov2.checkpoint import atomic_save, make_checkpoint
from solov2.cli import main
from solov2.data.sources import collect_sources
from solov2.engine.predict_files import predict_files
from solov2.engine.predictor import PredictionResult
from solov2.evaluation.results import xyxy_boxes
from solov2.evaluation.results import to_coco_records
from solov2.model import SOLOv2

BIAS = -3.0  # every cell scores sigmoid(-3) = 0.0474 for class 0: below test.score_thr 0.1


def constant_model(bias: float) -> tuple[SOLOv2, object]:
    cfg = load_config("light_448_r18", ["input.test_scale=[320,192]", "test.max_per_img=8"])
    torch.manual_seed(0)
    model = SOLOv2(cfg.model)
    with torch.no_grad():
        model.head.category_pred.weight.zero_()
        model.head.category_pred.bias.fill_(-10.0)
        model.head.category_pred.bias[0] = bias
        model.head.kernel_pred.weight.normal_(0, 0.05)
        model.head.kernel_pred.bias.normal_(0, 1.0)
    return model, cfg


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "noise.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8))
    return path


def test_mask_boxes_as_corners():
    masks = np.zeros((3, 6, 8), bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 5, 7] = True
    np.testing.assert_array_equal(xyxy_boxes(masks), [[2, 1, 5, 3], [7, 5, 8, 6], [0, 0, 0, 0]])
    assert xyxy_boxes(np.zeros((0, 6, 8), bool)).shape == (0, 4)


def test_boxes_match_results_json(image_file):
    model, cfg = constant_model(1.0)
    result = Predictor(model, cfg)(image_file)
    assert len(result) > 0 and result.boxes.shape == (len(result), 4)
    records = to_coco_records(result, file_name="x")
    xywh = np.array([r["bbox"] for r in records])
    np.testing.assert_array_equal(result.boxes, np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1))
    assert result.best_score == pytest.approx(1 / (1 + math.exp(-1.0)), abs=1e-6)


def test_empty_image_reports_best_score(image_file, tmp_path):
    model, cfg = constant_model(BIAS)
    predictor = Predictor(model, cfg)
    result = predictor(image_file)
    expected = 1 / (1 + math.exp(-BIAS))
    assert len(result) == 0 and result.boxes.shape == (0, 4)
    assert result.best_score == pytest.approx(expected, abs=1e-6)
    sources, _ = collect_sources([str(image_file)])
    summary = predict_files(predictor, sources, tmp_path / "out", progress=False)
    assert summary.empty == 1 and summary.best_empty_score == pytest.approx(expected, abs=1e-6)
    line = summary.empty_line(cfg.test.score_thr, cfg.test.update_thr)
    assert "1 image(s)/frame(s) got no instance" in line
    assert "test.score_thr=0.047 test.update_thr=0.047 would keep" in line
    # The threshold it proposes does keep instances.
    lowered = Predictor(model, load_config("light_448_r18", ["input.test_scale=[320,192]", "test.score_thr=0.047",
                                                          "test.update_thr=0.047"]))
    assert len(lowered(image_file)) > 0


def test_summary_without_empty_images_and_unknown_scores():
    from solov2.engine.predict_files import PredictSummary

    summary = PredictSummary(None, None)
    summary.count(PredictionResult(np.ones((1, 4, 4), bool), np.zeros(1, np.int64), np.ones(1, np.float32)))
    assert summary.empty_line(0.1, 0.05) == "" and summary.instances == 1
    summary.count(PredictionResult(np.zeros((0, 4, 4), bool), np.zeros(0, np.int64), np.zeros(0, np.float32)))
    assert summary.empty_line(0.1, 0.05) == "1 image(s)/frame(s) got no instance"  # no score known (e.g. ONNX)


def test_cli_prints_the_empty_summary(image_file, tmp_path, capsys):
    model, cfg = constant_model(BIAS)
    weights = tmp_path / "w.pth"
    atomic_save(make_checkpoint(model, cfg.to_dict()), weights)
    assert main(["predict", str(image_file), "--weights", str(weights), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "1 image(s)/frame(s) got no instance; the highest category score on them was 0.0474" in out
