"""Predictor (Python API) and ``solov2 predict`` (command line) on real and awkward images."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from solov2 import Predictor, load_config
from solov2.checkpoint import atomic_save, make_checkpoint
from solov2.cli import main
from solov2.model import SOLOv2



def detecting_model(overrides: tuple[str, ...] = ()) -> tuple[SOLOv2, object]:
    """A light_448_r18 model with crafted head weights so that it reports instances.

    Classes 0 and 5 get high constant category scores everywhere; kernels vary by grid cell,
    so masks differ and Matrix NMS has work to do.
    """
    cfg = load_config("light_448_r18", ["input.test_scale=[320,192]", "test.max_per_img=8", *overrides])
    torch.manual_seed(0)
    model = SOLOv2(cfg.model)
    with torch.no_grad():
        model.head.category_pred.weight.zero_()
        model.head.category_pred.bias.fill_(-10.0)
        model.head.category_pred.bias[0] = 1.0
        model.head.category_pred.bias[5] = 0.0
        model.head.kernel_pred.weight.normal_(0, 0.05)
        model.head.kernel_pred.bias.normal_(0, 1.0)
    return model, cfg


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    model, cfg = detecting_model()
    return Predictor(model, cfg)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    model, cfg = detecting_model()
    path = tmp_path_factory.mktemp("weights") / "crafted.pth"
    atomic_save(make_checkpoint(model, cfg.to_dict()), path)
    return path


def test_results_are_at_original_size_and_sorted(predictor, photos):
    image = cv2.imread(str(photos[0]))
    result = predictor(photos[0])
    assert len(result) > 0
    assert result.masks.shape == (len(result), *image.shape[:2])
    assert result.masks.dtype == bool
    assert np.all(np.diff(result.scores) <= 0)
    assert result.class_names[0] in ("person", "bus")  # COCO labels 0 and 5
    assert set(result.category_ids) <= {1, 6}


def test_batched_equals_one_by_one(predictor, photos):
    image = cv2.imread(str(photos[0]))
    inputs = [photos[0], image, photos[1], np.ascontiguousarray(image[:, ::-1])]
    batched = predictor(inputs)
    for item, result in zip(inputs, batched):
        single = predictor(item)
        assert np.array_equal(single.labels, result.labels)
        np.testing.assert_allclose(single.scores, result.scores, rtol=1e-5, atol=1e-6)
        assert np.array_equal(single.masks, result.masks)


@pytest.mark.parametrize(
    "image",
    [
        np.full((17, 23), 128, np.uint8),  # tiny grayscale
        np.random.default_rng(0).integers(0, 255, (40, 30, 4), dtype=np.uint8),  # BGRA
        np.random.default_rng(1).integers(0, 65535, (50, 70, 3), dtype=np.uint16),  # 16-bit
        np.zeros((1, 1, 3), np.uint8),
    ],
    ids=["gray-tiny", "rgba", "16bit", "one-pixel"],
)
def test_awkward_images(predictor, image):
    result = predictor(image)
    assert result.masks.shape[1:] == image.shape[:2]


def _write_inputs(folder: Path, source: Path) -> dict[str, Path]:
    folder.mkdir()
    nested = folder / "album" / "sub"
    nested.mkdir(parents=True)
    image = cv2.imread(str(source))
    cv2.imwrite(str(nested / "a.jpg"), image)
    cv2.imwrite(str(folder / "album" / "gray.png"), cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(folder / "deep16.png"), (image.astype(np.uint16) * 257))
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    video = folder / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (160, 96))
    for i in range(6):
        frame = cv2.resize(image, (160, 96))
        writer.write(np.roll(frame, i * 5, axis=1))
    writer.release()
    return {"folder": folder / "album", "16bit": folder / "deep16.png", "broken": folder / "broken.jpg",
            "video": video}


def test_predict_command_end_to_end(tmp_path, checkpoint, capsys, photos):
    inputs = _write_inputs(tmp_path / "in", photos[0])
    out = tmp_path / "out"
    code = main([
        "predict", str(inputs["folder"]), str(inputs["16bit"]), str(inputs["broken"]), str(inputs["video"]),
        str(photos[1]), "--weights", str(checkpoint), "--out", str(out), "--save-masks",
        "--frame-stride", "2", "--quiet", "test.max_per_img=5",
    ])
    captured = capsys.readouterr()
    assert code == 1  # one broken input
    assert "broken.jpg" in captured.err and "not a readable image" in captured.err
    assert (out / "album" / "sub" / "a.jpg").is_file()
    assert (out / "album" / "gray.png").is_file()  # PNG input: lossless overlay
    assert (out / "deep16.png").is_file()
    assert (out / photos[1].name).is_file()
    assert (out / "clip.mp4").is_file()
    capture = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3  # frames 0, 2, 4
    capture.release()

    records = json.loads((out / "results.json").read_text())
    assert {r["file_name"] for r in records} >= {str(photos[1]), str(inputs["video"])}
    assert sorted({r["frame"] for r in records if "frame" in r}) == [0, 2, 4]
    for record in records:
        assert set(record) >= {"file_name", "category_id", "category_name", "score", "bbox", "segmentation"}
        assert isinstance(record["segmentation"]["counts"], str)
    assert len([p for p in (out / "masks").rglob("*.png")]) > 0

    # The RLE in results.json decodes to exactly the masks the Python API reports.
    model, cfg = detecting_model(("test.max_per_img=5",))
    expected = Predictor(model, cfg)(photos[1])
    mine = [r for r in records if r["file_name"] == str(photos[1])]
    assert len(mine) == len(expected)
    for record, mask, score, name in zip(mine, expected.masks, expected.scores, expected.class_names):
        decoded = mask_utils.decode(record["segmentation"]).astype(bool)
        assert np.array_equal(decoded, mask)
        assert record["score"] == pytest.approx(float(score), rel=1e-5)
        assert record["category_name"] == name
        x, y, w, h = record["bbox"]
        ys, xs = np.nonzero(mask)
        assert (x, y, x + w, y + h) == pytest.approx((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))


def test_predict_missing_weights(tmp_path, capsys, photos):
    code = main(["predict", str(photos[0]), "--config", "light_448_r18",
                 "--weights", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "nope.pth" in capsys.readouterr().err


def test_predict_wrong_preset_for_weights(tmp_path, checkpoint, capsys, photos):
    code = main(["predict", str(photos[0]), "--config", "r50_1x", "--weights", str(checkpoint),
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "crafted.pth" in err and "do not match" in err


def test_predict_foreign_weights_need_config(tmp_path, checkpoint, capsys, photos):
    bare = tmp_path / "bare.pth"
    torch.save({"state_dict": torch.load(checkpoint)["model"]}, bare)
    code = main(["predict", str(photos[0]), "--weights", str(bare), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "--config" in capsys.readouterr().err


def test_predict_wrong_dcn_setting_is_a_clear_error(tmp_path, capsys, photos):
    code = main(["predict", str(photos[0]), "model.backbone_dcn=v3", "--config", "r101_dcn_3x",
                 "--out", str(tmp_path / "o")])
    assert code == 2
    assert "'model.backbone_dcn' must be one of 'none', 'v1', 'v2', got 'v3'" in capsys.readouterr().err


def test_predict_nothing_to_do(tmp_path, capsys):
    code = main(["predict", str(tmp_path / "missing.jpg"), "--config", "light_448_r18"])
    assert code == 2
    assert "missing.jpg" in capsys.readouterr().err


def test_overlay_draws_only_instances_above_the_show_threshold():
    from solov2.visualize import draw_instances

    image = np.full((80, 120, 3), 100, np.uint8)
    masks = np.zeros((3, 80, 120), bool)
    masks[0, 20:30, 5:15] = masks[1, 40:50, 5:15] = masks[2, 60:75, 90:110] = True
    scores = np.array([0.9, 0.5, 0.1], np.float32)
    drawn = draw_instances(image, masks, ["a", "b", "c"], scores, min_score=0.3)
    changed = (drawn != image).any(-1)
    assert changed[masks[0]].all() and changed[masks[1]].all()
    assert not changed[55:80, 80:120].any()  # nor the 0.1 instance's mask, outline or caption
    everything = draw_instances(image, masks, ["a", "b", "c"], scores)
    assert (everything != image).any(-1)[masks[2]].all()


def test_predict_shortcuts_are_the_config_keys_and_a_class_filter(tmp_path, checkpoint, capsys, photos):
    out = tmp_path / "out"
    shortcuts = ["--conf", "0.2", "--max-det", "3", "--imgsz", "256"]
    code = main(["predict", str(photos[1]), "--weights", str(checkpoint), "--out", str(out), "--quiet",
                 *shortcuts, "--classes", "0,bus"])
    assert code == 0, capsys.readouterr().err
    records = json.loads((out / "results.json").read_text())
    # --imgsz 256 keeps the checkpoint's 320:192 ratio: [256, 154].
    model, cfg = detecting_model(("test.score_thr=0.2", "test.max_per_img=3", "input.test_scale=[256,154]"))
    expected = Predictor(model, cfg)(photos[1])
    assert len(expected) == 3 and set(expected.class_names) == {"person"}  # label 0
    assert [r["category_name"] for r in records] == expected.class_names
    assert [r["score"] for r in records] == pytest.approx([float(s) for s in expected.scores], rel=1e-5)
    for record, mask in zip(records, expected.masks):
        assert np.array_equal(mask_utils.decode(record["segmentation"]).astype(bool), mask)
    # Only "bus" (label 5, none among the three): every instance is filtered out.
    assert main(["predict", str(photos[1]), "--weights", str(checkpoint), "--out", str(out), "--quiet",
                 *shortcuts, "--classes", "bus"]) == 0
    assert json.loads((tmp_path / "out2" / "results.json").read_text()) == []
