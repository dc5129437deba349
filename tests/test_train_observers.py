"""The trainer's observer hook: every step's StepResult (losses, positive cells per level,
instances per image) and the end of the run reach ``train(..., observers=[...])``."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from _train_data import TINY_MODEL, read_metrics, write_shapes_dataset
from solov2.config import load_config
from solov2.engine import trainer
from solov2.engine.trainer import TrainingInterrupted, train
from solov2.model.targets import MASK_STRIDE, build_targets


class Recorder:
    def __init__(self):
        self.steps = []  # (iteration, StepResult)
        self.ends = []  # iteration at each after_run

    def after_step(self, state, result):
        self.steps.append((state.iteration, result))

    def after_run(self, state):
        self.ends.append(state.iteration)


def capture_batches(monkeypatch, interrupt_at: int = 0) -> list:
    """Record the batch of every training step; raise SIGINT during step ``interrupt_at``."""
    original, batches = trainer.train_step, []

    def step(model, batch, *args, **kwargs):
        batches.append(batch)
        if len(batches) == interrupt_at:
            signal.raise_signal(signal.SIGINT)
        return original(model, batch, *args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", step)
    return batches


def positive_cells_per_level(batch, cfg) -> tuple[int, ...]:
    """Cells covered by at least one positive (cell, instance) pair, level by level."""
    size = (batch.images.shape[-2] // MASK_STRIDE, batch.images.shape[-1] // MASK_STRIDE)
    m = cfg.model
    t = build_targets(batch.boxes, batch.labels, batch.masks, size, m.grids, m.scale_ranges, m.sigma, m.num_classes)
    counts = []
    for level, s in enumerate(m.grids):
        at = t.pair_level == level
        counts.append(int(torch.unique(t.pair_image[at] * s * s + t.pair_cell[at]).numel()))
    return tuple(counts)


@pytest.fixture
def shapes_cfg(tmp_path):
    ann, images = write_shapes_dataset(tmp_path / "data", num_images=6, size=(64, 96))
    instances = len(json.loads(ann.read_text())["annotations"])
    cfg = load_config("light_448_r18", TINY_MODEL + [
        f"data.train_ann={ann}", f"data.train_images={images}", "data.workers=0",
        "input.train_scales=[[96, 64]]", "train.batch_size=2", "train.base_batch_size=2",
        "train.base_lr=0.01", "train.warmup_iters=2", "train.epochs=1", "train.log_interval=1",
        "train.val_interval=0",
    ])
    return cfg, instances


def test_observers_see_every_step_and_the_end(tmp_path, monkeypatch, shapes_cfg):
    cfg, instances = shapes_cfg
    batches = capture_batches(monkeypatch)
    recorder = Recorder()
    train(cfg, tmp_path / "run", device="cpu", progress=False, observers=[recorder])
    assert [i for i, _ in recorder.steps] == [1, 2, 3] and recorder.ends == [3]
    rows = read_metrics(tmp_path / "run")
    for (_, result), batch, row in zip(recorder.steps, batches, rows):
        assert result.instances_per_image == tuple(len(labels) for labels in batch.labels)
        assert result.positive_per_level == positive_cells_per_level(batch, cfg)
        assert sum(result.positive_per_level) == result.num_positive > 0
        # log_interval 1: each metrics row is that step's result.
        assert (row["loss"], row["loss_category"], row["loss_mask"]) == pytest.approx(
            (result.loss, result.loss_category, result.loss_mask), rel=1e-12)
    assert sum(sum(r.instances_per_image) for _, r in recorder.steps) == instances  # one epoch sees all


def test_observers_hear_the_end_of_an_interrupted_run(tmp_path, monkeypatch, shapes_cfg):
    cfg, _ = shapes_cfg
    capture_batches(monkeypatch, interrupt_at=2)
    recorder = Recorder()
    with pytest.raises(TrainingInterrupted):
        train(cfg, tmp_path / "run", device="cpu", progress=False, observers=[recorder])
    assert [i for i, _ in recorder.steps] == [1, 2] and recorder.ends == [2]
