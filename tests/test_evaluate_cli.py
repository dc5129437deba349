"""``solov2 eval`` and ``evaluate_dataset``: real images, unreadable files, DDP-wrapped models,
and torchrun giving the same numbers as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from solov2.checkpoint import atomic_save, make_checkpoint
from solov2.cli import main
from solov2.config import load_config
from solov2.engine.evaluate import evaluate_dataset
from solov2.model import SOLOv2

from _train_data import PHOTOS, photo_annotations, write_json
from conftest import randomize_

# A smaller test size keeps the light_448_r18 network quick on a CPU.
SMALL = ["input.test_scale=[384,224]"]


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory) -> Path:
    """light_448_r18 (80 COCO classes) with random weights that produce many detections."""
    cfg = load_config("light_448_r18", SMALL)
    torch.manual_seed(0)
    model = randomize_(SOLOv2(cfg.model), seed=1)
    with torch.no_grad():  # a few thousand candidate cells per image, not all of them
        model.head.category_pred.bias -= 4.5
    path = tmp_path_factory.mktemp("ckpt") / "random.pth"
    atomic_save(make_checkpoint(model, cfg.to_dict()), path)
    return path


@pytest.fixture
def photo_ann(photos, tmp_path) -> Path:
    """Annotations of the 4 committed photos (file names relative to their folder)."""
    return write_json(tmp_path / "photos.json", photo_annotations())


@pytest.fixture
def photo_subset(photos, tmp_path) -> Path:
    """The 4 committed photos (absolute file names) plus a corrupt and a missing image."""
    data = photo_annotations(absolute=True)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 definitely not a jpeg")
    last = max(i["id"] for i in data["images"])
    data["images"].append({"id": last + 1, "file_name": str(corrupt), "height": 100, "width": 100})
    data["images"].append({"id": last + 2, "file_name": str(tmp_path / "gone.jpg"), "height": 100, "width": 100})
    return write_json(tmp_path / "subset.json", data)


def test_eval_cli_on_real_images(random_checkpoint, photo_subset, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["eval", "--weights", str(random_checkpoint), "--ann", str(photo_subset),
                 "--images", str(tmp_path), "--out", str(out), "--device", "cpu", "--quiet"])
    captured = capsys.readouterr()
    assert code == 1, captured.err  # done, but some inputs could not be used (docs/cli.md)
    # Unreadable images: one line each, evaluation went on, summary at the end.
    assert "corrupt.jpg: not a readable image" in captured.err
    assert "gone.jpg: file not found" in captured.err
    assert str(out / "results.json") in captured.out and "images/s" in captured.out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 4 and metrics["images_total"] == 6 and len(metrics["failed_images"]) == 2
    for key in ("mask_AP", "mask_AP50", "mask_AP75", "mask_APs", "mask_APm", "mask_APl", "box_AP"):
        assert isinstance(metrics[key], float)
    assert metrics["images_per_second"] > 0
    # A valid results file: pycocotools loads it, ids are the dataset's own.
    records = json.loads((out / "results.json").read_text())
    assert len(records) == metrics["detections"] > 0
    gt = COCO(str(photo_subset))
    dt = gt.loadRes(str(out / "results.json"))
    assert set(dt.getImgIds()) <= set(gt.getImgIds())
    assert {r["category_id"] for r in records} <= set(gt.getCatIds())
    for r in records[:20]:
        assert set(r) >= {"image_id", "category_id", "category_name", "score", "bbox", "segmentation"}
        assert gt.cats[r["category_id"]]["name"] == r["category_name"]


def test_eval_cli_errors(random_checkpoint, photo_ann, tmp_path, capsys):
    ann = photo_ann
    assert main(["eval", "--weights", str(random_checkpoint), "--ann", str(tmp_path / "nope.json"),
                 "--images", str(PHOTOS), "--out", str(tmp_path / "o")]) == 2
    assert "nope.json: annotation file not found" in capsys.readouterr().err
    assert main(["eval", "--weights", str(tmp_path / "w.pth"), "--ann", str(ann),
                 "--images", str(PHOTOS), "--out", str(tmp_path / "o")]) == 2
    assert "w.pth" in capsys.readouterr().err
    assert main(["eval", "--weights", str(random_checkpoint), "--ann", str(ann),
                 "--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "nowhere: images folder not found" in capsys.readouterr().err
    # A model whose classes are not the dataset's.
    assert main(["eval", "--config", "demo_shapes", "--weights", str(_shapes_checkpoint(tmp_path)),
                 "--ann", str(ann), "--images", str(PHOTOS), "--out", str(tmp_path / "o")]) == 2
    assert "none of the model's 4 classes" in capsys.readouterr().err


def _shapes_checkpoint(tmp_path: Path) -> Path:
    cfg = load_config("demo_shapes")
    path = tmp_path / "shapes.pth"
    atomic_save(make_checkpoint(SOLOv2(cfg.model), cfg.to_dict()), path)
    return path


def test_evaluate_dataset_unwraps_ddp_and_restores_mode(random_checkpoint, photo_ann, tmp_path):
    import torch.distributed as dist

    from solov2.checkpoint import load_checkpoint, load_weights
    from solov2.engine.predictor import Predictor
    from solov2.model import SOLOv2

    predictor = Predictor.from_config(None, random_checkpoint)
    # A trainable model, as training validates it (the predictor's own copy is inference-only).
    model = SOLOv2(predictor.cfg.model)
    load_weights(model, load_checkpoint(random_checkpoint).state_dict)
    model.train()
    kwargs = dict(progress=False, max_images=3)
    plain = evaluate_dataset(model, predictor.cfg, photo_ann, PHOTOS, **kwargs)
    assert model.training  # training mode restored
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        via_ddp = evaluate_dataset(wrapped, predictor.cfg, photo_ann, PHOTOS, out_dir=tmp_path / "ddp", **kwargs)
    finally:
        dist.destroy_process_group()
    assert model.training
    assert plain["detections"] > 0 and plain["images"] == 3
    for key in ("mask_AP", "mask_AP50", "box_AP", "detections"):
        assert via_ddp[key] == plain[key]
    assert (tmp_path / "ddp" / "results.json").is_file()


def test_torchrun_gives_the_same_numbers(random_checkpoint, photo_ann, tmp_path):
    # 3 images over 2 processes: one gets two, the other one.
    args = ["--weights", str(random_checkpoint), "--ann", str(photo_ann),
            "--images", str(PHOTOS), "--device", "cpu", "--max-images", "3", "--batch-size", "1", "--quiet"]
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    single = subprocess.run([sys.executable, "-m", "solov2", "eval", *args, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr
    port = str(29600 + os.getpid() % 1000)
    multi = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
         "-m", "solov2", "eval", *args, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert multi.returncode == 0, multi.stderr
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert one["processes"] == 1 and two["processes"] == 2
    assert one["images"] == two["images"] == 3 and one["detections"] > 0
    for key, value in one.items():
        if key.startswith(("mask_", "box_")) or key in ("per_class", "detections"):
            assert two[key] == value, key
    rec_one = json.loads((tmp_path / "one" / "results.json").read_text())
    rec_two = json.loads((tmp_path / "two" / "results.json").read_text())
    key = lambda r: (r["image_id"], -r["score"], r["category_id"])  # noqa: E731
    assert sorted(rec_one, key=key) == sorted(rec_two, key=key)
    # Only rank 0 prints the tables.
    assert multi.stdout.count("results:") == 1
    assert np.isfinite(one["mask_AP"])


def test_ctrl_c_during_eval_keeps_the_images_done_and_names_the_command_that_scores_them(
        random_checkpoint, photo_ann, tmp_path, capsys, monkeypatch):
    from solov2.engine.predictor import Predictor

    calls = []
    predict_batch = Predictor.predict_batch

    def stopping(self, images):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return predict_batch(self, images)

    monkeypatch.setattr(Predictor, "predict_batch", stopping)
    out = tmp_path / "eval"
    code = main(["eval", "--weights", str(random_checkpoint), "--ann", str(photo_ann), "--images", str(PHOTOS),
                 "--out", str(out), "--device", "cpu", "--quiet", "--batch-size", "1"])
    err = capsys.readouterr().err
    assert code == 130 and "Traceback" not in err
    command = f"solov2 eval --results {out / 'results.json'} --ann {photo_ann} --max-images 2"
    assert err.strip() == (f"interrupted after 2 of 4 images; {out / 'results.json'} holds the predictions of "
                           f"those images; score them with: {command}")
    records = json.loads((out / "results.json").read_text())
    first_two = sorted(COCO(str(photo_ann)).getImgIds())[:2]
    assert records and {r["image_id"] for r in records} <= set(first_two)
    assert not (out / "metrics.json").exists()
    # The command it names works, and scores exactly what a 2-image evaluation scores.
    monkeypatch.setattr(Predictor, "predict_batch", predict_batch)
    assert main(command.split()[1:] + ["--quiet"]) == 0
    rescored = json.loads((out / "metrics.json").read_text())
    direct_out = tmp_path / "direct"
    assert main(["eval", "--weights", str(random_checkpoint), "--ann", str(photo_ann), "--images", str(PHOTOS),
                 "--out", str(direct_out), "--device", "cpu", "--quiet", "--batch-size", "1",
                 "--max-images", "2"]) == 0
    direct = json.loads((direct_out / "metrics.json").read_text())
    assert rescored["mask_AP"] == direct["mask_AP"] and rescored["detections"] == direct["detections"]
