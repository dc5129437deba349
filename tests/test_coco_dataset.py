"""COCO-format training data: checks and report, decoding, augmentation, batching, sampling."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from _train_data import photo_annotations, write_json, write_shapes_dataset
from solov2.config import load_config
from solov2.data.augment import TrainTransform, collate, resize_masks_nearest, xywh_to_xyxy
from solov2.data.coco import (
    BAD_BOX, CROWD, DEGENERATE_POLYGON, EMPTY_MASK, MALFORMED_SEGMENTATION, MISSING_FILE, NO_INSTANCES,
    UNKNOWN_CATEGORY, UNKNOWN_IMAGE, CocoInstances, DatasetError,
)
from solov2.data.sampler import GroupedBatchSampler
from solov2.data.transforms import rescale_size


def transform(scales=((768, 448),), flip_prob=0.5, convention="mmdet2"):
    cfg = load_config("light_448_r18")
    return TrainTransform([list(s) for s in scales], flip_prob, cfg.input.mean, cfg.input.std, convention)


def check_real_dataset(ann: Path, images_dir: Path, num_images: int, num_instances: int) -> None:
    """The 80 COCO categories become labels in id order; the first image's masks, boxes and
    labels match its annotations; a sample has the resized shapes."""
    ds = CocoInstances(ann, images_dir, transform=transform())
    assert len(ds) == num_images and ds.report.usable_instances == num_instances and not ds.report.counts
    assert len(ds.category_ids) == 80 and ds.category_ids == sorted(ds.category_ids)
    assert ds.class_names[0] == "person" and ds.label_of[90] == 79
    data = json.loads(ann.read_text())
    first = data["images"][0]
    anns = [a for a in data["annotations"] if a["image_id"] == first["id"]]
    record = ds.records[0]
    assert record.labels.tolist() == [ds.label_of[a["category_id"]] for a in anns]
    image, masks, boxes, labels = ds.load(0)
    assert image.shape == (first["height"], first["width"], 3)
    assert masks.shape == (len(anns), first["height"], first["width"]) and masks.dtype == np.uint8
    for m, box in zip(masks, boxes):  # every mask lies inside its box
        ys, xs = np.nonzero(m)
        assert xs.min() >= box[0] - 1 and xs.max() <= box[2] + 1 and ys.min() >= box[1] - 1 and ys.max() <= box[3] + 1
    sample = ds[(0, 0)]
    h, w = rescale_size(first["height"], first["width"], (768, 448))
    assert sample.image.shape == (3, h, w) and sample.masks.shape == (len(anns), h, w)


def test_photos_load_with_labels_in_category_id_order(photos, tmp_path):
    data = photo_annotations()
    assert data["categories"][0]["id"] == 90  # listed in descending order: the loader sorts
    ann = write_json(tmp_path / "photos.json", data)
    check_real_dataset(ann, photos[0].parent, len(photos), len(data["annotations"]))


def test_casia_loads_with_labels_in_category_id_order(casia_dir):
    check_real_dataset(casia_dir / "val_annotation.json", casia_dir, 200, 682)


def bad_dataset(tmp_path: Path) -> Path:
    ann, images_dir = write_shapes_dataset(tmp_path, num_images=4)
    data = json.loads(ann.read_text())
    good_poly = [[10.0, 10.0, 40.0, 10.0, 40.0, 40.0, 10.0, 40.0]]
    rle_empty = mask_utils.encode(np.asfortranarray(np.zeros((96, 128), np.uint8)))
    rle_empty["counts"] = rle_empty["counts"].decode()

    def ann_(i, image_id, cat=3, seg=good_poly, bbox=(10, 10, 30, 30), crowd=0):
        return {"id": 1000 + i, "image_id": image_id, "category_id": cat, "segmentation": seg,
                "bbox": list(bbox), "iscrowd": crowd, "area": 900.0}

    data["images"].append({"id": 50, "file_name": "missing.png", "width": 128, "height": 96})
    data["images"].append({"id": 51, "file_name": data["images"][0]["file_name"], "width": 128, "height": 96})
    data["annotations"] += [
        ann_(0, 50),  # image file missing
        ann_(1, 999),  # unknown image
        ann_(2, 1, cat=42),  # unknown category
        ann_(3, 51, crowd=1),  # crowd: image 51 is then left without instances
        ann_(4, 1, seg=[[1.0, 2.0, 3.0, 4.0]]),  # two points
        ann_(5, 1, seg=[[0.0, 0.0, 10.0, 10.0, 20.0, 20.0]]),  # collinear: no area
        ann_(6, 1, seg=rle_empty),  # empty RLE
        ann_(7, 1, bbox=(10, 10, 0, 30)),  # zero-width box
        ann_(8, 1, seg="not a mask"),
        ann_(9, 1, seg={"size": [10, 10], "counts": [5, 5]}),  # RLE of another size
    ]
    return write_json(tmp_path / "bad.json", data)


def test_bad_annotations_are_counted_and_skipped(tmp_path):
    good = CocoInstances(*write_shapes_dataset(tmp_path / "good", num_images=4), transform=transform())
    ds = CocoInstances(bad_dataset(tmp_path), tmp_path / "images", transform=transform())
    c = ds.report.counts
    assert c[MISSING_FILE] == 1 and c[UNKNOWN_IMAGE] == 1 and c[UNKNOWN_CATEGORY] == 1 and c[CROWD] == 1
    assert c[DEGENERATE_POLYGON] == 2 and c[EMPTY_MASK] == 1 and c[BAD_BOX] == 1
    assert c[MALFORMED_SEGMENTATION] == 2 and c[NO_INSTANCES] == 1
    assert len(ds) == 4 and ds.report.usable_instances == good.report.usable_instances
    text = str(ds.report)
    assert "missing.png" in text and "category 42" in text and "image 999" in text
    assert "using 4 images" in text


def test_unreadable_or_unusable_files_stop_with_a_clear_message(tmp_path):
    ann, images_dir = write_shapes_dataset(tmp_path, num_images=2)
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [}')
    with pytest.raises(DatasetError, match=r"broken\.json: not valid JSON"):
        CocoInstances(broken, images_dir)
    with pytest.raises(DatasetError, match=r"nothing\.json: annotation file not found"):
        CocoInstances(tmp_path / "nothing.json", images_dir)
    no_anns = write_json(tmp_path / "no_anns.json", {"images": [], "categories": []})
    with pytest.raises(DatasetError, match="no 'annotations' list"):
        CocoInstances(no_anns, images_dir)
    with pytest.raises(DatasetError, match="image folder not found"):
        CocoInstances(ann, tmp_path / "elsewhere")
    # Every file name wrong: nothing usable, and the report says why.
    with pytest.raises(DatasetError, match=r"no usable training images[\s\S]*2 x image file missing"):
        CocoInstances(ann, tmp_path)
    # Only crowd regions.
    data = json.loads(ann.read_text())
    for a in data["annotations"]:
        a["iscrowd"] = 1
    with pytest.raises(DatasetError, match=r"crowd region"):
        CocoInstances(write_json(tmp_path / "crowd.json", data), images_dir)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_rle_and_polygon_masks_decode_alike(tmp_path):
    ann, images_dir = write_shapes_dataset(tmp_path, num_images=3)
    data = json.loads(ann.read_text())
    poly_ds = CocoInstances(ann, images_dir)
    for i, a in enumerate(data["annotations"]):
        rle = mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], 96, 128))
        if i % 2:
            rle["counts"] = rle["counts"].decode()  # compressed string
        else:
            m = mask_utils.decode(rle)
            flat = m.flatten(order="F")
            changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
            rle = {"size": [96, 128], "counts": np.diff(np.concatenate([[0], changes])).tolist()}
        a["segmentation"] = rle
    rle_ds = CocoInstances(write_json(tmp_path / "rle.json", data), images_dir)
    for i in range(len(poly_ds)):
        assert np.array_equal(poly_ds.load(i)[1], rle_ds.load(i)[1])


def test_given_category_ids_fix_the_labels(tmp_path):
    ann, images_dir = write_shapes_dataset(tmp_path, num_images=3)
    ds = CocoInstances(ann, images_dir)
    assert ds.category_ids == [3, 7] and ds.class_names == ["square", "disc"]
    ds = CocoInstances(ann, images_dir, category_ids=[7, 3])
    assert ds.class_names == ["disc", "square"] and ds.label_of == {7: 0, 3: 1}
    ds = CocoInstances(ann, images_dir, category_ids=[3])  # discs become unknown
    assert ds.report.counts[UNKNOWN_CATEGORY] > 0 and all((r.labels == 0).all() for r in ds.records)


def test_transform_resizes_flips_and_keeps_boxes_on_masks():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (300, 500, 3), dtype=np.uint8)
    masks = np.zeros((1, 300, 500), np.uint8)
    masks[0, 50:150, 100:300] = 1
    boxes = xywh_to_xyxy(np.array([[100, 50, 200, 100]]), "mmdet2")
    assert boxes.tolist() == [[100, 50, 300, 150]]
    assert xywh_to_xyxy(np.array([[100, 50, 200, 100]]), "v1").tolist() == [[100, 50, 299, 149]]
    labels = np.array([2])
    plain = transform(flip_prob=0.0)(image, masks, boxes, labels, np.random.default_rng(1))
    flipped = transform(flip_prob=1.0)(image, masks, boxes, labels, np.random.default_rng(1))
    h, w = rescale_size(300, 500, (768, 448))
    assert plain.image.shape == (3, h, w) and plain.masks.shape == (1, h, w)
    assert torch.equal(flipped.masks, plain.masks.flip(-1))
    assert torch.allclose(flipped.image, plain.image.flip(-1))
    scale = w / 500
    assert plain.boxes[0].tolist() == pytest.approx([100 * scale, 50 * h / 300, 300 * scale, 150 * h / 300], rel=1e-5)
    assert flipped.boxes[0].tolist() == pytest.approx([w - 300 * scale, 50 * h / 300, w - 100 * scale, 150 * h / 300], rel=1e-5)
    ys, xs = np.nonzero(flipped.masks[0].numpy())
    assert abs(xs.min() - flipped.boxes[0, 0].item()) <= 1 and abs(xs.max() + 1 - flipped.boxes[0, 2].item()) <= 1
    # Normalised RGB: the first channel is the image's red (BGR index 2).
    assert plain.image[0, 0, 0].item() == pytest.approx((float(cv2.resize(image, (w, h))[0, 0, 2]) - 123.675) / 58.395, abs=1e-4)


def test_nearest_mask_resize_matches_opencv():
    rng = np.random.default_rng(2)
    masks = rng.integers(0, 2, (3, 37, 53)).astype(np.uint8)
    for nh, nw in [(80, 111), (20, 31), (37, 53)]:
        ours = resize_masks_nearest(masks, nh, nw)
        for m, o in zip(masks, ours):
            assert np.array_equal(cv2.resize(m, (nw, nh), interpolation=cv2.INTER_NEAREST), o)


def test_augmentation_depends_only_on_seed_epoch_and_index(tmp_path):
    ann, images_dir = write_shapes_dataset(tmp_path, num_images=3)
    cfg = load_config("light_448_r18", ["input.train_scales=[[128, 96], [256, 192], [512, 384]]"])
    a = CocoInstances(ann, images_dir, transform=TrainTransform.from_config(cfg), seed=5)
    b = CocoInstances(ann, images_dir, transform=TrainTransform.from_config(cfg), seed=5)
    assert torch.equal(a[(1, 3)].image, b[(1, 3)].image)
    shapes = {tuple(a[(1, e)].image.shape) for e in range(12)}
    assert len(shapes) > 1  # the scale is drawn per epoch


def test_collate_pads_images_and_masks_to_32(tmp_path):
    ann, images_dir = write_shapes_dataset(tmp_path, num_images=2)
    ds = CocoInstances(ann, images_dir, transform=transform(scales=((100, 70),), flip_prob=0.0))
    samples = [ds[0], ds[1]]
    batch = collate(samples)
    assert batch.images.shape[-2:] == (96, 96)  # 70 x 93 padded
    for s, m in zip(samples, batch.masks):
        h, w = s.masks.shape[-2:]
        assert (h, w) == (70, 93)
        assert m.shape[-2:] == (96, 96) and torch.equal(m[:, :h, :w], s.masks) and m[:, h:].sum() == 0
    assert batch.images[:, :, 70:].abs().sum() == 0 and batch.images[:, :, :, 93:].abs().sum() == 0


def test_grouped_sampler_groups_and_splits_across_processes():
    groups = [0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0]
    single = GroupedBatchSampler(groups, batch_size=4, seed=3)
    single.set_epoch(2)
    whole = list(single)
    assert len(whole) == len(single) == 2 + 2  # 5 -> 2 batches of 4, 6 -> 2
    for batch in whole:
        assert len(batch) == 4 and len({groups[i] for i, _ in batch}) == 1 and {e for _, e in batch} == {2}
    covered = {i for batch in whole for i, _ in batch}
    assert covered == set(range(len(groups)))
    # Two processes with 2 images each see exactly the same global batches, split in halves.
    parts = []
    for rank in range(2):
        s = GroupedBatchSampler(groups, batch_size=2, world_size=2, rank=rank, seed=3)
        s.set_epoch(2)
        parts.append(list(s))
    assert [a + b for a, b in zip(*parts)] == whole
    # Resume inside an epoch: skip the first batches.
    single.set_epoch(2, start_batch=3)
    assert list(single) == whole[3:] and len(single) == 1
    # Another epoch, another order.
    single.set_epoch(3)
    assert [[i for i, _ in b] for b in single] != [[i for i, _ in b] for b in whole]


def test_image_size_missing_from_the_json_is_read_from_the_file(tmp_path):
    ann, images_dir = write_shapes_dataset(tmp_path, num_images=3)
    data = json.loads(ann.read_text())
    for entry in data["images"]:
        del entry["width"], entry["height"]
    (images_dir / "img_002.png").write_bytes(b"broken")
    ds = CocoInstances(write_json(tmp_path / "nosize.json", data), images_dir)
    assert [(r.height, r.width) for r in ds.records] == [(96, 128), (96, 128)]
    assert "1 x image file unreadable" in str(ds.report) and "img_002.png" in str(ds.report)
    assert ds.aspect_groups() == [1, 1]
