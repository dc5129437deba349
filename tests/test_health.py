"""Training health: each check on planted values and planted runs, no warning on a healthy run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from solov2.config import load_config
from solov2.data.synthetic import ShapesOptions, make_shapes
from solov2.engine.health import TrainingHealth
from solov2.engine.trainer import train

def monitor(*overrides: str) -> TrainingHealth:
    return TrainingHealth(load_config("demo_shapes", ["train.warmup_iters=10", "train.health_window=5",
                                                      "train.health_patience=10", *overrides]))


def feed(health: TrainingHealth, iterations: int, mask, category, per_level=(5, 5, 5, 5, 5), instances: int = 5):
    """``iterations`` updates with losses mask(i), category(i), ``per_level`` positive cells
    and ``instances`` instances per batch."""
    rows = []
    for i in range(1, iterations + 1):
        rows += health.update(i, category(i), mask(i), per_level, instances)
    return rows


def test_healthy_values_give_no_warning():
    health = monitor()
    rows = feed(health, 60, mask=lambda i: 3.0 / (1 + 0.05 * i), category=lambda i: 1.0 / (1 + 0.02 * i))
    assert rows == []
    summary = health.summary(60)
    assert summary["warnings"] == [] and summary["message"].startswith("training health: no warning")
    assert summary["loss_mask"] < summary["start_loss_mask"]


def test_idle_level_and_few_positives_are_found():
    health = monitor("train.health_level_idle_iters=8")
    rows = feed(health, 12, mask=lambda i: 3 / i, category=lambda i: 1 / i, per_level=(1, 0, 0, 0, 0), instances=2)
    checks = [r["check"] for r in rows]
    assert [checks.count(f"level_idle_{i}") for i in range(5)] == [0, 1, 1, 1, 1]  # once each
    assert [r["iteration"] for r in rows if r["check"] == "level_idle_3"] == [8]
    assert "few_positives" in checks  # 1 cell for 2 instances
    assert all(r["type"] == "health" and r["message"].startswith("warning: ") for r in rows)


def test_flat_mask_loss_and_collapsed_category_loss_are_found():
    health = monitor()
    rows = feed(health, 40, mask=lambda i: 3.0, category=lambda i: 1.0 / i**2)
    assert [r["check"] for r in rows] == ["mask_loss_flat", "category_collapse"]
    assert rows[0]["iteration"] == 20  # warm-up 10 + patience 10
    health = monitor()
    assert [r["check"] for r in feed(health, 40, mask=lambda i: 3.0, category=lambda i: 1.0)] == [
        "mask_loss_flat"]
    assert "mask_loss_flat" in health.summary(40)["message"]


def test_checks_can_be_switched_off():
    health = monitor("train.health_checks=false")
    assert feed(health, 40, mask=lambda i: 3.0, category=lambda i: 1.0, per_level=(0, 0, 0, 0, 0)) == []
    assert "checks off" in health.summary(40)["message"]


# ----------------------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("health_shapes")
    make_shapes(root, 16, 1, 0, ShapesOptions(size=(64, 64)), progress=False)
    return root


def run_training(shapes: Path, work: Path, iterations: int, *overrides: str) -> tuple[list[dict], str]:
    cfg = load_config("demo_shapes", ["train.amp=false", "train.batch_size=4", "train.epochs=100",
                                      "input.train_scales=[[64, 64]]", *overrides])
    cfg.data.train_ann, cfg.data.train_images = str(shapes / "train.json"), str(shapes / "train")
    train(cfg, work, max_iters=iterations, device="cpu", progress=False)
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    return rows, (work / "train.log").read_text()


def test_healthy_demo_run_gives_no_warning(shapes, tmp_path):
    # The demo's data and preset with the default thresholds; only the warm-up and the patience
    # are shortened so that the loss-trend check runs within 40 iterations.
    rows, log = run_training(shapes, tmp_path / "run", 40, "train.warmup_iters=10", "train.health_patience=10")
    assert not [r for r in rows if r["type"] == "health"], [r for r in rows if r["type"] == "health"]
    (summary,) = [r for r in rows if r["type"] == "health_summary"]
    assert summary["warnings"] == [] and "loss_mask" in summary  # the trend was checked
    assert "training health: no warning" in log


def test_scale_ranges_excluding_all_objects_warn(shapes, tmp_path):
    rows, log = run_training(shapes, tmp_path / "run", 12, "train.health_level_idle_iters=10",
                             "train.health_window=5",
                             "model.scale_ranges=[[1000, 2000], [1000, 2000], [1000, 2000], [1000, 2000], [1000, 2000]]")
    checks = {r["check"] for r in rows if r["type"] == "health"}
    assert checks == {"few_positives", *(f"level_idle_{i}" for i in range(5))}
    assert "warning: level 0 (scale range [1000, 2000]) has had no positive cell for 10 iterations" in log
    (summary,) = [r for r in rows if r["type"] == "health_summary"]
    assert summary["positives_per_level"] == [0, 0, 0, 0, 0]


def test_learning_rate_zero_warns(shapes, tmp_path):
    rows, log = run_training(shapes, tmp_path / "run", 30, "train.base_lr=0", "train.warmup_iters=10",
                             "train.health_patience=10", "train.health_window=10")
    checks = [r["check"] for r in rows if r["type"] == "health"]
    assert checks == ["mask_loss_flat"]
    assert "check train.base_lr (now 0)" in log
