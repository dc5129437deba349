"""The training data check: files that are not images are counted before training, images
that fail to decode later are one log line, and a dataset with nothing usable says why."""

from __future__ import annotations

import json
import logging

import pytest

from _train_data import write_json, write_shapes_dataset
from solov2.config import load_config
from solov2.data.augment import TrainTransform
from solov2.data.coco import OUTSIDE_IMAGE, UNREADABLE_IMAGE, CocoInstances, DatasetError


def _transform() -> TrainTransform:
    cfg = load_config("light_448_r18")
    return TrainTransform([[128, 96]], 0.0, cfg.input.mean, cfg.input.std, "mmdet2")


def test_files_that_are_not_images_are_counted_before_training(tmp_path):
    ann, images = write_shapes_dataset(tmp_path, num_images=4)
    (images / "img_001.png").write_bytes(b"not an image")
    (images / "img_002.png").write_bytes(b"")
    ds = CocoInstances(ann, images, transform=_transform())
    assert ds.report.counts[UNREADABLE_IMAGE] == 2 and len(ds) == 2
    assert "img_001.png: empty or not an image file" in str(ds.report)


def test_an_image_that_fails_to_decode_is_one_log_line_and_replaced(tmp_path, caplog):
    ann, images = write_shapes_dataset(tmp_path, num_images=3, file_ext=".jpg")
    path = images / "img_001.jpg"
    path.write_bytes(path.read_bytes()[:120])  # a JPEG signature, then nothing
    ds = CocoInstances(ann, images, transform=_transform())
    assert len(ds) == 3  # the signature looks fine: found only when decoded
    with caplog.at_level(logging.WARNING, logger="solov2.data"):
        sample = ds[(1, 0)]
    assert sample.image_id == ds.records[2].image_id
    (record,) = caplog.records
    assert record.getMessage().startswith("warning: ") and "img_001.jpg" in record.getMessage()
    assert "using another image instead" in record.getMessage() and "\n" not in record.getMessage()


def test_polygons_entirely_outside_the_image_are_reported(tmp_path):
    ann, images = write_shapes_dataset(tmp_path, num_images=2)
    data = json.loads(ann.read_text())
    data["annotations"][0]["segmentation"] = [[300.0, 300.0, 340.0, 300.0, 340.0, 340.0]]
    ds = CocoInstances(write_json(tmp_path / "outside.json", data), images)
    assert ds.report.counts[OUTSIDE_IMAGE] == 1


@pytest.mark.parametrize("change, cause", [
    ("crowd", "every instance is a crowd region (iscrowd=1)"),
    ("folder", "check that data.train_images is the folder"),
    ("category", "category_id values are not in the file's categories"),
])
def test_nothing_usable_names_the_likely_cause(tmp_path, change, cause):
    ann, images = write_shapes_dataset(tmp_path, num_images=2)
    data = json.loads(ann.read_text())
    for a in data["annotations"]:
        if change == "crowd":
            a["iscrowd"] = 1
        if change == "category":
            a["category_id"] = 99
    ann = write_json(tmp_path / "changed.json", data)
    with pytest.raises(DatasetError) as err:
        CocoInstances(ann, tmp_path if change == "folder" else images)
    assert cause in str(err.value)
    if change != "folder":
        assert "data.train_images" not in str(err.value)
