"""``solov2 eval`` keeps its work: ground truth that cannot be rasterised is skipped (the rule
training applies), the output folder is checked before predicting, predictions survive a
scoring failure and can be scored again, and string image ids work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from solov2.checkpoint import atomic_save, make_checkpoint
from solov2.cli import main
from solov2.config import load_config
from solov2.data.coco import DEGENERATE_POLYGON, MALFORMED_SEGMENTATION, OUTSIDE_IMAGE, CocoInstances
from solov2.evaluation import scoring
from solov2.evaluation.coco_eval import format_metrics, format_per_class
from solov2.model import SOLOv2

from _train_data import TINY_MODEL, write_json, write_shapes_dataset
from conftest import randomize_

OVERRIDES = [*TINY_MODEL, "model.num_classes=2", "model.class_names=[disc, square]",
             "input.test_scale=[128, 96]"]
BAD_SEGMENTATIONS = {
    "empty list": ([], DEGENERATE_POLYGON),
    "empty polygon": ([[]], DEGENERATE_POLYGON),
    "two points": ([[1.0, 1.0, 20.0, 20.0]], DEGENERATE_POLYGON),
    "a string": ("not a segmentation", MALFORMED_SEGMENTATION),
    "outside the image": ([[500.0, 500.0, 540.0, 500.0, 540.0, 540.0]], OUTSIDE_IMAGE),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    cfg = load_config("light_448_r18", OVERRIDES)
    torch.manual_seed(0)
    model = randomize_(SOLOv2(cfg.model), seed=2)
    with torch.no_grad():
        model.head.category_pred.bias -= 2.0
    path = tmp_path_factory.mktemp("ckpt") / "random.pth"
    atomic_save(make_checkpoint(model, cfg.to_dict()), path)
    return path


@pytest.fixture
def dataset(tmp_path) -> tuple[Path, Path]:
    return write_shapes_dataset(tmp_path / "data", num_images=4)


def _with_bad_ground_truth(ann: Path) -> Path:
    data = json.loads(ann.read_text())
    next_id = max(a["id"] for a in data["annotations"]) + 1
    for offset, (segmentation, _) in enumerate(BAD_SEGMENTATIONS.values()):
        data["annotations"].append({"id": next_id + offset, "image_id": 1, "category_id": 3, "iscrowd": 0,
                                    "segmentation": segmentation, "area": 100.0, "bbox": [1, 1, 10, 10]})
    return write_json(ann.with_name("bad.json"), data)


def _eval(checkpoint: Path, ann: Path, images: Path, out: Path, *extra: str) -> int:
    return main(["eval", "--weights", str(checkpoint), "--ann", str(ann), "--images", str(images),
                 "--out", str(out), "--device", "cpu", "--quiet", *extra])


def test_ground_truth_that_cannot_be_rasterised_is_skipped_and_counted(checkpoint, dataset, tmp_path, capsys):
    ann, images = dataset
    bad = _with_bad_ground_truth(ann)
    assert _eval(checkpoint, bad, images, tmp_path / "eval") == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    expected: dict[str, int] = {}
    for _, kind in BAD_SEGMENTATIONS.values():
        expected[kind] = expected.get(kind, 0) + 1
    assert metrics["skipped_annotations"] == expected
    # Skipping them changes nothing else: the metrics equal those on the clean file.
    assert _eval(checkpoint, ann, images, tmp_path / "clean") == 0
    clean = json.loads((tmp_path / "clean" / "metrics.json").read_text())
    assert clean["skipped_annotations"] == {}
    assert (metrics["mask_AP"], metrics["box_AP"]) == (clean["mask_AP"], clean["box_AP"])
    # Training applies the same rule to the same annotations.
    report = CocoInstances(bad, images).report
    for kind, count in expected.items():
        assert report.counts[kind] == count


def test_an_output_path_that_cannot_be_a_folder_fails_before_predicting(checkpoint, dataset, tmp_path, capsys):
    ann, images = dataset
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    for out in (blocker, blocker / "sub"):
        assert _eval(checkpoint, ann, images, out) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(out) in err and "--out" in err
        assert "eval:" not in err  # no progress: nothing was predicted
    assert blocker.read_text() == "a file"


def test_predictions_survive_a_scoring_failure_and_can_be_scored_again(checkpoint, dataset, tmp_path, capsys,
                                                                       monkeypatch):
    ann, images = dataset
    assert _eval(checkpoint, ann, images, tmp_path / "good") == 0
    good = json.loads((tmp_path / "good" / "metrics.json").read_text())

    def broken(*_args, **_kwargs):
        raise AssertionError("pycocotools gave up")

    with monkeypatch.context() as patch:
        patch.setattr(scoring, "coco_metrics", broken)
        assert _eval(checkpoint, ann, images, tmp_path / "broken") == 2
    err = capsys.readouterr().err
    results = tmp_path / "broken" / "results.json"
    assert "scoring failed (AssertionError: pycocotools gave up)" in err and f"--results {results}" in err
    assert not (tmp_path / "broken" / "metrics.json").exists()
    assert json.loads(results.read_text()) == json.loads((tmp_path / "good" / "results.json").read_text())

    assert main(["eval", "--results", str(results), "--ann", str(ann), "--quiet"]) == 0
    rescored = json.loads((tmp_path / "broken" / "metrics.json").read_text())
    for key in ("mask_AP", "mask_AP50", "box_AP", "per_class"):
        assert rescored[key] == good[key]
    assert json.loads(results.read_text()) == json.loads((tmp_path / "good" / "results.json").read_text())


def test_results_and_weights_together_are_refused(checkpoint, dataset, tmp_path, capsys):
    ann, images = dataset
    assert main(["eval", "--results", str(tmp_path / "r.json"), "--weights", str(checkpoint), "--ann", str(ann)]) == 2
    assert "drop --weights" in capsys.readouterr().err
    assert main(["eval", "--results", str(tmp_path / "missing.json"), "--ann", str(ann)]) == 2
    assert "missing.json: results file not found" in capsys.readouterr().err


def test_string_image_ids(checkpoint, dataset, tmp_path, capsys):
    ann, images = dataset
    data = json.loads(ann.read_text())
    rename = {img["id"]: f"frame-{img['id']:03d}" for img in data["images"]}
    for img in data["images"]:
        img["id"] = rename[img["id"]]
    for a in data["annotations"]:
        a["image_id"] = rename[a["image_id"]]
    named = write_json(tmp_path / "named.json", data)
    assert _eval(checkpoint, named, images, tmp_path / "named") == 0, capsys.readouterr().err
    assert _eval(checkpoint, ann, images, tmp_path / "numbered") == 0
    by_name = json.loads((tmp_path / "named" / "metrics.json").read_text())
    by_number = json.loads((tmp_path / "numbered" / "metrics.json").read_text())
    assert by_name["mask_AP"] == by_number["mask_AP"] and by_name["detections"] == by_number["detections"]
    records = json.loads((tmp_path / "named" / "results.json").read_text())
    assert records and {r["image_id"] for r in records} <= set(rename.values())


def test_tables_print_percentages():
    metrics = {f"mask_{n}": v for n, v in zip(("AP", "AP50", "AP75", "APs", "APm", "APl"),
                                                (0.5, 0.1234, 1.0, -1.0, 0.0, 0.25))}
    table = format_metrics(metrics).splitlines()
    assert table[0].startswith("(%)")
    assert table[1].split() == ["mask", "50.0", "12.3", "100.0", "-", "0.0", "25.0"]
    rows = format_per_class([{"category_id": 1, "name": "cat", "num_gt": 3, "mask_AP": 0.375,
                              "mask_AP50": 0.5, "box_AP": None}])
    assert rows.splitlines()[1].split() == ["1", "cat", "3", "37.5", "50.0", "-"]


def test_a_second_eval_never_mixes_with_the_first(checkpoint, dataset, tmp_path, capsys):
    ann, images = dataset
    out = tmp_path / "runs" / "eval"
    assert _eval(checkpoint, ann, images, out) == 0
    first = (out / "results.json").read_bytes()
    assert _eval(checkpoint, ann, images, out) == 0
    assert str(tmp_path / "runs" / "eval2" / "results.json") in capsys.readouterr().out
    assert (out / "results.json").read_bytes() == first
    assert _eval(checkpoint, ann, images, out, "--exist-ok") == 0
    assert not (tmp_path / "runs" / "eval3").exists()
