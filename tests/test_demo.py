"""The demo: the learning check (the demo's training at test size reaches mask AP >= 0.5 on
held-out synthetic images), its outputs, the CLI, and determinism for a seed on tiny runs.

The learning check takes a few minutes on 2 CPU cores; its time is printed (run pytest with
-s to see it), never asserted.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from pycocotools.coco import COCO

from solov2.cli import main
from solov2.engine import demo
from solov2.engine.demo import demo_config, run_demo


# The demo at test size: the preset's schedule over fewer training images (fewer iterations).
TEST_TRAIN_IMAGES = 960
TEST_VAL_IMAGES = 50


@pytest.fixture
def all_cores():
    """The learning check trains like the demo does: on every core (the suite runs on one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(before)


def test_learning_check_reaches_half_mask_ap(tmp_path, all_cores):
    start = time.perf_counter()
    summary = run_demo(tmp_path, train_images=TEST_TRAIN_IMAGES, val_images=TEST_VAL_IMAGES, seed=0,
                       overlays=2, progress=False)
    print(f"\nlearning check on {torch.get_num_threads()} threads: {summary.iterations} iterations, "
          f"mask AP {summary.mask_AP:.3f} ({summary.per_class_mask_AP}), {time.perf_counter() - start:.0f} s "
          f"({summary.seconds})")
    assert summary.mask_AP >= 0.5, summary
    assert summary.mask_AP50 >= summary.mask_AP
    # Every class is learned, not just the easy ones.
    assert all(ap is not None and ap >= 0.3 for ap in summary.per_class_mask_AP.values()), summary.per_class_mask_AP


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    summary = run_demo(out, train_images=16, val_images=6, seed=0, overlays=4, progress=False,
                       overrides=["train.epochs=2", "train.lr_steps=[1]", "test.score_thr=0.001",
                                  "test.update_thr=0.0"])
    return out, summary


def test_demo_outputs(tiny_demo):
    out, summary = tiny_demo
    for key in ("checkpoint", "results", "metrics", "summary"):
        assert Path(summary.files[key]).is_file(), key
    assert len(list((out / "overlays").glob("*.jpg"))) == 4
    saved = json.loads((out / "summary.json").read_text())
    assert saved["mask_AP"] == summary.mask_AP and saved["iterations"] == summary.iterations > 0
    text = (out / "summary.txt").read_text()
    assert f"mask AP {100 * summary.mask_AP:.1f}%" in text and str(out / "overlays") in text
    # The results are a valid COCO result file for the held-out annotations.
    gt = COCO(str(out / "data" / "val.json"))
    dt = gt.loadRes(summary.files["results"])
    assert len(dt.getAnnIds()) > 0 and set(dt.getImgIds()) <= set(gt.getImgIds())
    assert {a["category_id"] for a in dt.dataset["annotations"]} <= set(gt.getCatIds())


def test_demo_cli_is_deterministic(tmp_path, capsys):
    """Two tiny runs with the same seed give identical results; the CLI says where things are."""
    args = ["--train", "16", "--val", "4", "--overlays", "2", "--quiet", "train.epochs=2", "train.lr_steps=[1]"]
    assert main(["demo", "--out", str(tmp_path / "a"), *args]) == 0
    printed = capsys.readouterr().out
    assert main(["demo", "--out", str(tmp_path / "b"), *args]) == 0
    for name in ("summary.txt", "overlays", "eval/results.json", "eval/metrics.json", "train/final.pth"):
        assert str(tmp_path / "a" / name) in printed or name.startswith(("eval/metrics", "train/")), name
    assert f"everything is in {tmp_path / 'a'}" in printed
    one = json.loads((tmp_path / "a" / "eval" / "results.json").read_text())
    two = json.loads((tmp_path / "b" / "eval" / "results.json").read_text())
    assert one == two
    assert (tmp_path / "a" / "data" / "train.json").read_bytes() == (tmp_path / "b" / "data" / "train.json").read_bytes()


def test_demo_cli_errors(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--train", "3"]) == 2
    assert "--train needs at least 8 images" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "train.nonsense=1"]) == 2
    assert "unknown config key 'train.nonsense'" in capsys.readouterr().err


def test_demo_trains_in_float32_where_the_cpu_has_no_native_bf16(tmp_path, monkeypatch):
    assert demo_config(tmp_path, seed=0).train.amp == demo.cpu_has_fast_bf16()
    monkeypatch.setattr(demo, "cpu_has_fast_bf16", lambda: False)
    assert demo_config(tmp_path, seed=0).train.amp is False
    assert demo_config(tmp_path, seed=0, overrides=["train.amp=true"]).train.amp is True
    monkeypatch.setattr(demo, "cpu_has_fast_bf16", lambda: True)
    assert demo_config(tmp_path, seed=0).train.amp is True
