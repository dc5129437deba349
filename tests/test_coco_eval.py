"""COCO evaluation: ground truth scores 1.0, damaged predictions score what pycocotools says,
result records are valid, and category ids are the dataset's own."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from _train_data import PHOTO_OBJECTS, photo_annotations, write_json
from solov2.config import load_config
from solov2.data.synthetic import ShapesOptions, make_shapes
from solov2.engine.evaluate import CategoryMatchError, match_categories
from solov2.engine.predictor import PredictionResult
from solov2.evaluation.coco_eval import (
    STAT_NAMES,
    AnnotationError,
    coco_metrics,
    format_metrics,
    format_per_class,
    load_coco,
)
from solov2.evaluation.results import to_coco_records

HEADLINE = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """16 synthetic validation images with occluded shapes of small, medium and large COCO sizes."""
    out = tmp_path_factory.mktemp("shapes")
    options = ShapesOptions(size=(240, 320), min_objects=3, max_objects=6, min_scale=0.1)
    return make_shapes(out, num_train=0, num_val=16, seed=3, options=options, progress=False).val_ann


def gt_results(coco: COCO, transform=None) -> list[PredictionResult]:
    """The ground truth of every image as a PredictionResult (optionally transformed)."""
    out = []
    for image_id in sorted(coco.getImgIds()):
        anns = [a for a in coco.imgToAnns[image_id] if not a.get("iscrowd", 0)]
        info = coco.imgs[image_id]
        masks = np.stack([coco.annToMask(a).astype(bool) for a in anns]) if anns else \
            np.zeros((0, info["height"], info["width"]), bool)
        cats = [a["category_id"] for a in anns]
        scores = np.linspace(0.9, 0.5, len(anns)).astype(np.float32)
        result = PredictionResult(masks, np.zeros(len(anns), np.int64), scores, ["x"] * len(anns), cats)
        out.append((image_id, transform(result) if transform else result))
    return out


def records_of(pairs) -> list[dict]:
    return [r for image_id, result in pairs for r in to_coco_records(result, image_id=image_id)]


def pycocotools_stats(ann_file: Path, records: list[dict], iou_type: str, cat_ids=None) -> np.ndarray:
    """pycocotools used directly, as its README shows (records without the other kind's field)."""
    gt = COCO(str(ann_file))
    drop = "bbox" if iou_type == "segm" else "segmentation"
    dt = gt.loadRes([{k: v for k, v in r.items() if k != drop} for r in copy.deepcopy(records)])
    ev = COCOeval(gt, dt, iou_type)
    if cat_ids is not None:
        ev.params.catIds = cat_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats


def test_ground_truth_as_predictions_scores_one(shapes):
    coco = load_coco(shapes)
    metrics = coco_metrics(coco, records_of(gt_results(coco)))
    for kind in ("mask", "box"):
        for name in HEADLINE + ("AR100",):  # (AR1, AR10: images have more instances)
            value = metrics[f"{kind}_{name}"]
            # -1 is pycocotools' "no ground truth in this area range"
            assert value == pytest.approx(1.0) or value == -1.0, (kind, name, value)
        assert metrics[f"{kind}_AP"] == pytest.approx(1.0)
    for row in metrics["per_class"]:
        assert row["num_gt"] > 0
        assert row["mask_AP"] == pytest.approx(1.0) and row["box_AP"] == pytest.approx(1.0)
    # Sizes span the small/medium/large ranges.
    assert all(metrics[f"mask_{n}"] == pytest.approx(1.0) for n in ("APs", "APm", "APl"))


@pytest.fixture
def photo_ann(tmp_path) -> Path:
    """Annotations of the committed photos (all 80 COCO categories); ids from 0, as casia's."""
    return write_json(tmp_path / "photos.json", photo_annotations(first_id=0))


def check_ground_truth_scores_one(ann_file: Path, num_instances: int) -> None:
    """An annotation with id 0 is what COCOeval reads as "unmatched"; the loader renumbers, so
    the ground truth still scores a mask AP of exactly 1."""
    assert 0 in [a["id"] for a in json.loads(ann_file.read_text())["annotations"]]
    coco = load_coco(ann_file)
    metrics = coco_metrics(coco, records_of(gt_results(coco)), kinds=("mask",))
    assert metrics["mask_AP"] == pytest.approx(1.0)
    assert all(row["mask_AP"] == pytest.approx(1.0) for row in metrics["per_class"] if row["num_gt"])
    assert sum(row["num_gt"] for row in metrics["per_class"]) == num_instances


def test_ground_truth_of_photo_annotations_scores_one(photo_ann):
    check_ground_truth_scores_one(photo_ann, sum(len(v) for v in PHOTO_OBJECTS.values()))


def test_ground_truth_of_real_annotations_scores_one(casia_dir):
    check_ground_truth_scores_one(casia_dir / "val_annotation.json", 682)


def _shift(dx: int, dy: int):
    def apply(result: PredictionResult) -> PredictionResult:
        masks = np.roll(result.masks, (dy, dx), axis=(1, 2))
        if dy > 0:
            masks[:, :dy] = False
        if dx > 0:
            masks[:, :, :dx] = False
        return PredictionResult(masks, result.labels, result.scores, result.class_names, result.category_ids)
    return apply


@pytest.mark.parametrize("dx,dy", [(2, 1), (5, 3)])
def test_shifted_predictions_match_pycocotools(shapes, dx, dy):
    coco = load_coco(shapes)
    records = records_of(gt_results(coco, _shift(dx, dy)))
    metrics = coco_metrics(coco, records)
    for kind, iou_type in (("mask", "segm"), ("box", "bbox")):
        direct = pycocotools_stats(shapes, records, iou_type)
        ours = np.array([metrics[f"{kind}_{n}"] for n in STAT_NAMES])
        np.testing.assert_allclose(ours, direct, atol=1e-12)
        assert 0.0 < metrics[f"{kind}_AP"] < 1.0  # shifted: partially right
    assert metrics["mask_AP50"] > metrics["mask_AP75"]


def test_mislabeled_predictions_match_pycocotools_per_class(shapes):
    coco = load_coco(shapes)
    cat_ids = sorted(coco.getCatIds())

    def relabel(result: PredictionResult) -> PredictionResult:
        # every second instance gets the next category
        ids = [cat_ids[(cat_ids.index(c) + 1) % len(cat_ids)] if i % 2 else c
               for i, c in enumerate(result.category_ids)]
        return PredictionResult(result.masks, result.labels, result.scores, result.class_names, ids)

    records = records_of(gt_results(coco, relabel))
    metrics = coco_metrics(coco, records)
    direct = pycocotools_stats(shapes, records, "segm")
    np.testing.assert_allclose([metrics[f"mask_{n}"] for n in STAT_NAMES], direct, atol=1e-12)
    assert 0.2 < metrics["mask_AP"] < 0.8
    for row in metrics["per_class"]:
        per_cat = pycocotools_stats(shapes, records, "segm", cat_ids=[row["category_id"]])
        assert row["mask_AP"] == pytest.approx(per_cat[0], abs=1e-12)
        assert row["mask_AP50"] == pytest.approx(per_cat[1], abs=1e-12)
        assert row["mask_AP75"] == pytest.approx(per_cat[2], abs=1e-12)
    table = format_per_class(metrics["per_class"])
    assert all(name in table for name in ("circle", "square", "triangle", "star"))
    assert "mask" in format_metrics(metrics)


def test_no_predictions_gives_zero(shapes):
    coco = load_coco(shapes)
    metrics = coco_metrics(coco, [])
    assert metrics["mask_AP"] == 0.0 and metrics["box_AP"] == 0.0
    assert all(row["mask_AP"] == 0.0 for row in metrics["per_class"])


def test_records_are_valid_coco_results():
    masks = np.zeros((3, 20, 30), bool)
    masks[0, 2:6, 3:11] = True
    masks[1, 10:20, 0:30] = True
    result = PredictionResult(masks, np.array([1, 0, 1]), np.array([0.9, 0.6, 0.2], np.float32),
                              ["b", "a", "b"], [17, 4, 17])
    records = json.loads(json.dumps(to_coco_records(result, image_id=5, file_name="x/y.jpg")))
    assert [r["category_id"] for r in records] == [17, 4, 17]
    assert [r["category_name"] for r in records] == ["b", "a", "b"]
    assert records[0]["bbox"] == [3.0, 2.0, 8.0, 4.0]
    assert records[1]["bbox"] == [0.0, 10.0, 30.0, 10.0]
    assert records[2]["bbox"] == [0.0, 0.0, 0.0, 0.0]  # empty mask
    assert all(r["image_id"] == 5 and r["file_name"] == "x/y.jpg" for r in records)
    assert isinstance(records[0]["segmentation"]["counts"], str)
    decoded = mask_utils.decode([{**r["segmentation"], "counts": r["segmentation"]["counts"].encode()}
                                 for r in records]).transpose(2, 0, 1)
    np.testing.assert_array_equal(decoded.astype(bool), masks)
    assert records[0]["score"] == pytest.approx(0.9)
    # A label -> dataset-id map overrides the result's ids.
    remapped = to_coco_records(result, image_id=5, category_ids=[90, 3], class_names=["p", "q"])
    assert [r["category_id"] for r in remapped] == [3, 90, 3]
    assert [r["category_name"] for r in remapped] == ["q", "p", "q"]
    with pytest.raises(ValueError, match="image_id"):
        to_coco_records(result)


def _dataset_with_categories(tmp_path: Path, categories: list[dict]) -> Path:
    rng = np.random.default_rng(0)
    images, anns = [], []
    for image_id in (1, 2):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": 40, "width": 40})
        for cat in categories:
            mask = np.zeros((40, 40), np.uint8)
            x, y = rng.integers(0, 25, size=2)
            mask[y : y + 12, x : x + 12] = 1
            rle = mask_utils.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode()
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat["id"],
                         "segmentation": rle, "area": 144, "bbox": [float(x), float(y), 12.0, 12.0],
                         "iscrowd": 0})
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return path


def test_category_ids_are_the_datasets_own(tmp_path):
    """Unordered ids with gaps: a model trained on the set maps label -> recorded id."""
    categories = [{"id": 12, "name": "cup"}, {"id": 3, "name": "dog"}, {"id": 7, "name": "cat"}]
    ann_file = _dataset_with_categories(tmp_path, categories)
    coco = load_coco(ann_file)
    cfg = load_config("light_448_r18", ["model.num_classes=3", "model.class_names=[cat, cup, dog]",
                                        "model.category_ids=[7, 12, 3]"])
    mapping, notes = match_categories(cfg, coco.dataset["categories"])
    assert mapping == [7, 12, 3] and notes == []
    # Predictions by label, through the mapping, score 1.0 against the dataset.
    pairs = []
    for image_id in (1, 2):
        anns = coco.imgToAnns[image_id]
        masks = np.stack([coco.annToMask(a).astype(bool) for a in anns])
        labels = np.array([mapping.index(a["category_id"]) for a in anns])
        pairs.append((image_id, PredictionResult(masks, labels, np.ones(len(anns), np.float32))))
    records = [r for i, res in pairs for r in to_coco_records(res, image_id=i, category_ids=mapping,
                                                             class_names=["cat", "cup", "dog"])]
    assert {r["category_id"] for r in records} == {3, 7, 12}
    assert coco_metrics(coco, records)["mask_AP"] == pytest.approx(1.0)
    # Without recorded ids, the names decide.
    cfg_names = load_config("light_448_r18", ["model.num_classes=3", "model.class_names=[Dog, cat, cup]"])
    assert match_categories(cfg_names, coco.dataset["categories"])[0] == [3, 7, 12]


def test_coco_preset_maps_by_coco_ids(photo_ann):
    coco = load_coco(photo_ann)
    cfg = load_config("light_448_r18")
    mapping, _ = match_categories(cfg, coco.dataset["categories"])
    assert mapping[:3] == [1, 2, 3] and mapping[-1] == 90 and len(mapping) == 80
    # Renamed COCO categories still map by COCO ids.
    renamed = [{**c, "name": f"thing {c['id']}"} for c in coco.dataset["categories"]]
    assert match_categories(cfg, renamed)[0] == mapping


def test_unmatchable_classes_error(photo_ann):
    coco = load_coco(photo_ann)
    cfg = load_config("demo_shapes")
    with pytest.raises(CategoryMatchError, match="none of the model's 4 classes"):
        match_categories(cfg, coco.dataset["categories"])
    cfg.model.category_ids = [201, 202, 203, 204]
    with pytest.raises(CategoryMatchError, match="recorded category ids"):
        match_categories(cfg, coco.dataset["categories"])


def test_bad_annotation_files_name_the_file(tmp_path):
    with pytest.raises(AnnotationError, match="missing.json: annotation file not found"):
        load_coco(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(AnnotationError, match="bad.json: not valid JSON"):
        load_coco(bad)
    bad.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(AnnotationError, match="bad.json: missing or malformed 'annotations'"):
        load_coco(bad)
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": "a", "height": 2, "width": 2}],
                               "categories": [{"id": 1, "name": "a"}],
                               "annotations": [{"id": 1, "image_id": 9, "category_id": 1,
                                                "segmentation": [], "area": 1}]}))
    with pytest.raises(AnnotationError, match="unknown image_id 9"):
        load_coco(bad)
