"""``solov2 inspect``: each finding on planted problems, no false alarm on a clean set, the
grid assignment against ``build_targets`` at full resolution, the report files and errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from _train_data import shape_polygon, write_json
from solov2.cli import main
from solov2.config import load_config
from solov2.data.augment import TrainTransform, collate
from solov2.data.coco import CocoInstances
from solov2.diagnostics.assignment import grid_assignment, scale_instances
from solov2.diagnostics.inspection import assignment_scales, inspect_dataset
from solov2.model.targets import MASK_STRIDE, build_targets

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from inspect_coco_size import write_dataset  # noqa: E402

# Clean data for demo_shapes (160x160, scale ranges 1..384): two classes, sizes across all levels.
DEMO = "demo_shapes"
LONG_SCHEDULE = ["train.epochs=1000"]  # enough iterations that the schedule is no finding


# A 1x1 PNG: passes the data check's file-signature test; inspect reads no pixels.
PLACEHOLDER = cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))[1].tobytes()


def write_instances(root: Path, images: list[list[tuple[str, float, float, float, int]]],
                    size: tuple[int, int] = (160, 160), categories: tuple[int, ...] = (1, 2)) -> tuple[Path, Path]:
    """One image per list of (kind, cx, cy, half size, category id) polygons; the image files are
    1x1 placeholders (inspect reads no pixels)."""
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    entries, anns = [], []
    for i, shapes in enumerate(images):
        name = f"{i:04d}.png"
        (folder / name).write_bytes(PLACEHOLDER)
        entries.append({"id": i + 1, "file_name": name, "height": size[0], "width": size[1]})
        for kind, cx, cy, r, cat in shapes:
            polys = [shape_polygon(kind, cx, cy, r)] if kind != "pair" else [
                shape_polygon("square", cx - 2 * r, cy, r / 2), shape_polygon("square", cx + 2 * r, cy, r / 2)]
            points = np.concatenate(polys)
            x0, y0 = points.min(0)
            x1, y1 = points.max(0)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "iscrowd": 0,
                         "segmentation": [p.ravel().round(3).tolist() for p in polys],
                         "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                         "area": float((x1 - x0) * (y1 - y0))})
    ann = write_json(root / "train.json", {"images": entries, "annotations": anns,
                                           "categories": [{"id": c, "name": f"c{c}"} for c in categories]})
    return ann, folder


def clean_images(count: int = 30, seed: int = 0) -> list[list[tuple[str, float, float, float, int]]]:
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        shapes = []
        # Apart (no shared cell), sizes 12..100 px: every level of demo_shapes gets objects.
        for (cx, cy), (lo, hi) in (((40, 40), (6, 25)), ((105, 105), (25, 50))):
            shapes.append((["square", "disc"][int(rng.integers(2))], cx + rng.uniform(-3, 3),
                           cy + rng.uniform(-3, 3), float(rng.uniform(lo, hi)), int(rng.integers(1, 3))))
        images.append(shapes)
    return images


def run_inspect(tmp_path: Path, images, *overrides: str, plots: bool = False, **kw):
    ann, folder = write_instances(tmp_path, images, **kw)
    cfg = load_config(DEMO, list(LONG_SCHEDULE) + list(overrides))
    return inspect_dataset(cfg, ann, folder, tmp_path / "out", plots=plots, progress=False)


def test_clean_dataset_gives_no_finding(tmp_path):
    result = run_inspect(tmp_path, clean_images())
    report = result.report
    assert report["verdict"] == [], report["verdict"]
    assert report["dataset"]["usable_instances"] == 60
    assert report["sizes"]["no_level_every_scale"] == 0
    (section,) = report["assignment"]
    assert section["no_positive_cell"] == 0 and section["overwritten"] == 0 and section["shared_cells"] == 0
    assert section["positive_cells_per_instance"]["min"] >= 1
    assert sum(c["instances"] for c in report["dataset"]["classes"]) == 60


def test_scale_ranges_excluding_all_objects_are_found(tmp_path):
    result = run_inspect(tmp_path, clean_images(), "model.scale_ranges=[[200, 300], [200, 300], [300, 400], "
                                                   "[300, 400], [400, 500]]")
    report = result.report
    assert report["sizes"]["no_level_every_scale"] == 60
    assert report["sizes"]["per_scale"][0]["too_small"] == 60
    assert report["assignment"][0]["no_positive_cell"] == 60
    top = report["verdict"][0]
    assert top["severity"] == 1.0 and "never train" in top["finding"]
    assert "model.scale_ranges='[[" in top["fix"]
    # The proposed override itself includes the objects (its first range starts at or below them).
    proposed = json.loads(top["fix"].split("'")[1])
    assert proposed[0][0] <= report["sizes"]["per_scale"][0]["size"]["min"]


def test_objects_too_small_for_the_mask_resolution_are_found(tmp_path):
    images = [[("square", 42, 42, 0.6, 1), ("square", 120, 120, 20, 2)] for _ in range(20)]
    report = run_inspect(tmp_path, images, "model.scale_ranges=[[0.5, 24], [12, 48], [24, 96], [48, 192], "
                                           "[96, 384]]").report
    section = report["assignment"][0]
    assert section["no_positive_cell_in_range"] == 20
    assert section["empty_mask_target"] == 20
    assert section["smaller_than_stride"] == 20
    assert any("no positive cell" in f["finding"] and f["fix"] == "larger input.train_scales" for f in report["verdict"])


def test_later_instances_overwrite_earlier_ones(tmp_path):
    # Two same-size objects with the same centre: the second takes every cell of the first.
    images = [[("square", 80, 80, 20, 1), ("disc", 80, 80, 20, 2)] for _ in range(10)]
    report = run_inspect(tmp_path, images).report
    section = report["assignment"][0]
    assert section["overwritten"] == 10
    assert section["shared_cell_share"] == 1.0
    assert any("lose every positive cell" in f["finding"] for f in report["verdict"])


def test_centre_of_mass_off_the_object_is_found(tmp_path):
    images = [[("pair", 80, 80, 16, 1), ("square", 30, 130, 12, 2)] for _ in range(10)]
    section = run_inspect(tmp_path, images).report["assignment"][0]
    assert section["centre_outside"] == 10
    assert len(section["centre_outside_examples"]) == 5


def test_rare_and_absent_classes_and_short_schedule_are_found(tmp_path):
    images = clean_images()
    images[0][0] = (images[0][0][0], *images[0][0][1:4], 3)  # one instance of class 3
    ann, folder = write_instances(tmp_path, images, categories=(1, 2, 3, 4))
    report = inspect_dataset(load_config(DEMO), ann, folder, tmp_path / "out", plots=False, progress=False).report
    text = [f["finding"] + " | " + f["fix"] for f in report["verdict"]]
    assert any("1 of 4 classes have no usable instance" in t and "model.category_ids='[1, 2, 3]'" in t for t in text)
    assert any("1 classes have fewer than 10 instances (c3 1)" in t for t in text)
    assert any("the schedule is 32 iterations" in t and "train.epochs=" in t for t in text)  # 8 epochs x 4


def test_assignment_matches_build_targets_at_full_resolution(tmp_path):
    """The 1/4-resolution analysis against the training pipeline itself (TrainTransform without
    flip, collate, build_targets at full resolution) on the same images."""
    images = []
    rng = np.random.default_rng(3)
    for _ in range(40):
        images.append([(["square", "disc"][int(rng.integers(2))], float(rng.uniform(30, 210)),
                        float(rng.uniform(30, 130)), float(rng.uniform(4, 28)), int(rng.integers(1, 3)))
                       for _ in range(4)])
    ann, folder = write_instances(tmp_path, images, size=(160, 240))
    cfg = load_config(DEMO, ["input.train_scales=[[320, 200]]", "input.flip_prob=0"])
    dataset = CocoInstances(ann, folder, box_convention=cfg.data.box_convention)
    inst = scale_instances(dataset, cfg, [320, 200])
    ours = grid_assignment(dataset, cfg, inst)
    transform = TrainTransform.from_config(cfg)
    reference_cells, reference_boxes = [], []
    for index in range(len(dataset)):
        record = dataset.records[index]
        image = np.zeros((record.height, record.width, 3), np.uint8)
        masks, boxes, labels = _load(dataset, index)
        sample = transform(image, masks, boxes, labels, np.random.default_rng(0))
        batch = collate([sample])
        h, w = batch.images.shape[-2:]
        t = build_targets(batch.boxes, batch.labels, batch.masks, (h // MASK_STRIDE, w // MASK_STRIDE),
                          cfg.model.grids, cfg.model.scale_ranges, cfg.model.sigma, cfg.model.num_classes)
        cells = torch.zeros((len(cfg.model.grids), len(labels)), dtype=torch.int64)
        cells.index_put_((t.pair_level, t.pair_instance), torch.ones_like(t.pair_level), accumulate=True)
        reference_cells.append(cells.numpy())
        reference_boxes.append(sample.boxes.numpy())
    np.testing.assert_array_equal(inst.boxes, np.concatenate(reference_boxes))  # the same resize
    reference = np.concatenate(reference_cells, axis=1)
    assert reference.sum() > 100
    np.testing.assert_array_equal(ours.cells > 0, reference > 0)  # the same levels
    same = (ours.cells == reference).all(axis=0).mean()
    assert same >= 0.85, same  # cells per instance: equal for most instances (89% here)
    assert abs(int(ours.cells.sum()) - int(reference.sum())) <= 0.05 * reference.sum()


def _load(dataset: CocoInstances, index: int):
    """Masks, boxes and labels of an item without reading the (placeholder) image file."""
    from solov2.data.augment import xywh_to_xyxy
    from solov2.data.coco import decode_masks

    record = dataset.records[index]
    masks = decode_masks(record.segmentations, record.height, record.width)
    return masks, xywh_to_xyxy(record.boxes, dataset.box_convention), record.labels


def test_assignment_scales():
    scales = [[768, 512], [768, 480], [768, 352], [768, 512]]
    assert assignment_scales(scales, False) == [[768, 352], [768, 512]]
    assert assignment_scales(scales, True) == [[768, 512], [768, 480], [768, 352]]
    assert assignment_scales([[160, 160]], False) == [[160, 160]]


def test_cli_writes_readable_report_files(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    ann, folder = write_instances(tmp_path, clean_images(12))
    out = tmp_path / "report"
    assert main(["inspect", "--config", DEMO, "--ann", str(ann), "--images", str(folder), "--out", str(out),
                 "--quiet", "train.epochs=3"]) == 0
    printed = capsys.readouterr().out
    assert "verdict: 1 finding(s)" in printed and "train.epochs=" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["usable_images"] == 12 and report["config"] == DEMO
    page = (out / "report.html").read_text()
    for name in ("sizes.png", "levels.png", "cells.png", "classes.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'src="{name}"' in page
    assert "the schedule is" in page


def test_cli_errors(tmp_path, capsys, monkeypatch):
    assert main(["inspect", "--config", DEMO, "--ann", str(tmp_path / "no.json"), "--images", str(tmp_path),
                 "--no-plots"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'no.json'}: annotation file not found"
    ann, folder = write_instances(tmp_path, clean_images(2))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    out = tmp_path / "r"
    assert main(["inspect", "--config", DEMO, "--ann", str(ann), "--images", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the plots need matplotlib: pip install 'solov2[inspect]'") and not out.exists()
    assert main(["inspect", "--config", DEMO, "--ann", str(ann), "--images", str(folder), "--out", str(out),
                 "--no-plots", "--quiet"]) == 0
    assert (out / "report.json").is_file() and (out / "report.html").is_file()


def test_read_images_finds_unreadable_files(tmp_path):
    ann, folder = write_instances(tmp_path, clean_images(3))
    for path in folder.iterdir():
        path.write_bytes(PLACEHOLDER[:20])  # an image file's signature, then nothing decodable
    cfg = load_config(DEMO)
    report = inspect_dataset(cfg, ann, folder, tmp_path / "o", read_images=True, plots=False, progress=False).report
    assert report["dataset"]["image_files"]["unreadable"] == 3


def test_generated_coco_size_file_is_inspected(tmp_path):
    ann, images = write_dataset(tmp_path, 40, 300)
    report = inspect_dataset(load_config("light_448_r18"), ann, images, tmp_path / "o", plots=False,
                             progress=False).report
    assert report["dataset"]["images"] == 40 and report["dataset"]["annotations"] == 300
    assert report["dataset"]["usable_instances"] == 300
    assert len(report["assignment"]) == 2


def test_a_second_report_goes_to_a_new_folder(tmp_path, capsys):
    ann, folder = write_instances(tmp_path, clean_images(2))
    out = tmp_path / "report"
    args = ["inspect", "--config", DEMO, "--ann", str(ann), "--images", str(folder), "--no-plots", "--quiet"]
    assert main([*args, "--out", str(out)]) == 0
    first = (out / "report.json").read_text()
    assert main([*args, "--out", str(out)]) == 0
    assert (tmp_path / "report2" / "report.json").is_file() and (out / "report.json").read_text() == first
    assert main([*args, "--out", str(out), "--exist-ok"]) == 0 and not (tmp_path / "report3").exists()
