"""The synthetic shapes generator: deterministic, valid COCO, visible-part masks, all scales."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from solov2.cli import main
from solov2.config import load_config
from solov2.data.coco import CocoInstances
from solov2.data.synthetic import SHAPE_CLASSES, ShapesOptions, draw_image, make_shapes, parse_size
from solov2.evaluation.coco_eval import load_coco


def _decode(ann: dict) -> np.ndarray:
    rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
    return mask_utils.decode(rle).astype(bool)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes"), num_train=40, num_val=10, seed=5, progress=False)


def test_files_and_coco_validity(dataset):
    for ann_file, images_dir, count in ((dataset.train_ann, dataset.train_images, 40),
                                        (dataset.val_ann, dataset.val_images, 10)):
        data = json.loads(Path(ann_file).read_text())
        assert len(data["images"]) == count
        assert [c["name"] for c in data["categories"]] == list(SHAPE_CLASSES)
        coco = load_coco(ann_file)  # passes the evaluation loader's checks
        for info in data["images"]:
            image = cv2.imread(str(images_dir / info["file_name"]))
            assert image.shape == (info["height"], info["width"], 3) == (160, 160, 3)
        for ann in data["annotations"]:
            mask = _decode(ann)
            assert mask.sum() == ann["area"] > 0
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert isinstance(ann["segmentation"]["counts"], str) and ann["iscrowd"] == 0
        assert len(coco.getAnnIds()) >= 2 * count
    # The training loader reads it too.
    train_set = CocoInstances(dataset.train_ann, dataset.train_images)
    assert len(train_set) == 40 and list(train_set.class_names) == list(SHAPE_CLASSES)


def test_masks_are_the_visible_parts():
    options = ShapesOptions(size=(128, 160), min_objects=3, max_objects=6, min_visible=0.5)
    occluded = 0
    for index in range(30):
        image, shapes = draw_image(np.random.default_rng([1, index]), options)
        assert image.shape == (128, 160, 3) and image.dtype == np.uint8
        assert options.min_objects <= len(shapes) <= options.max_objects
        for i, shape in enumerate(shapes):
            above = np.zeros_like(shape.mask)
            for later in shapes[i + 1 :]:
                above |= later.full_mask
            np.testing.assert_array_equal(shape.mask, shape.full_mask & ~above)
            assert shape.mask.sum() >= options.min_visible * shape.full_mask.sum()
            occluded += int(shape.mask.sum() < shape.full_mask.sum())
        # Visible masks never overlap, and the top shape is whole.
        stack = np.stack([s.mask for s in shapes])
        assert stack.sum(0).max() == 1
        np.testing.assert_array_equal(shapes[-1].mask, shapes[-1].full_mask)
        # Each visible region has one colour texture: the image changes along mask borders.
        for shape in shapes:
            inner = cv2.erode(shape.mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            ring = cv2.dilate(shape.mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~shape.mask
            if inner.sum() > 30 and ring.sum() > 30:
                assert np.abs(image[inner].mean(0) - image[ring].mean(0)).max() > 5
    assert occluded >= 10  # occlusion is common, not a corner case


def test_sizes_span_every_fpn_level(dataset):
    cfg = load_config("demo_shapes")
    data = json.loads(Path(dataset.train_ann).read_text())
    scales = np.array([np.sqrt(a["bbox"][2] * a["bbox"][3]) for a in data["annotations"]])
    scale = cfg.input.test_scale[1] / 160  # the config's test size over the image size
    for low, high in cfg.model.scale_ranges:
        inside = ((scales * scale >= low) & (scales * scale <= high)).mean()
        assert inside >= 0.04, (low, high, inside)  # (about 7% in the end ranges over many images)
    classes = np.bincount([a["category_id"] for a in data["annotations"]], minlength=5)[1:]
    assert (classes >= 0.1 * len(scales)).all()


def test_deterministic(tmp_path):
    a = make_shapes(tmp_path / "a", 4, 2, seed=11, progress=False)
    b = make_shapes(tmp_path / "b", 4, 2, seed=11, progress=False)
    c = make_shapes(tmp_path / "c", 4, 2, seed=12, progress=False)
    for name in ("train.json", "val.json", "train/000003.png", "val/000001.png"):
        assert (a.root / name).read_bytes() == (b.root / name).read_bytes()
    assert (a.root / "train.json").read_bytes() != (c.root / "train.json").read_bytes()
    # Image i does not depend on how many images are made.
    d = make_shapes(tmp_path / "d", 2, 0, seed=11, progress=False)
    assert (a.root / "train/000001.png").read_bytes() == (d.root / "train/000001.png").read_bytes()


def test_bad_options():
    with pytest.raises(ValueError, match="at least 32x32"):
        make_shapes("/nonexistent/never", 1, 1, options=ShapesOptions(size=(16, 16)), progress=False)
    with pytest.raises(ValueError, match="min_objects"):
        ShapesOptions(min_objects=5, max_objects=2).check()
    with pytest.raises(ValueError, match="size must be N or WxH"):
        parse_size("12x")
    assert parse_size("320x240") == (240, 320) and parse_size("96") == (96, 96)


def test_cli(tmp_path, capsys):
    out = tmp_path / "shapes"
    code = main(["make-shapes", "--out", str(out), "--train", "3", "--val", "2", "--size", "80x64", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert str(out / "train.json") in printed and str(out / "val.json") in printed
    assert cv2.imread(str(out / "val" / "000001.png")).shape == (64, 80, 3)
    assert main(["make-shapes", "--out", str(out), "--size", "abc"]) == 2
    assert "size must be N or WxH" in capsys.readouterr().err
