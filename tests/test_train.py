"""Training end to end on CPU: the loss goes down, resume continues exactly, two gloo
processes compute the gradients of one process with the whole batch, bad data and bad steps
are handled, and the checkpoints are usable."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from _train_data import (
    TINY_MODEL, casia_subset, photo_annotations, read_metrics, torchrun_train, write_json,
    write_shapes_dataset,
)
from solov2.checkpoint import load_checkpoint
from solov2.cli import main
from solov2.config import config_from_dict, load_config
from solov2.data.coco import DatasetError
from solov2.engine import train_step as train_step_module
from solov2.engine import trainer
from solov2.engine.trainer import TrainingError, TrainingInterrupted, learning_rate, train
from solov2.model.solov2 import SOLOv2


def shapes_config(tmp_path: Path, *extra: str, num_images: int = 6) -> list[str]:
    ann, images_dir = write_shapes_dataset(tmp_path / "data", num_images=num_images, size=(64, 96))
    return TINY_MODEL + [
        f"data.train_ann={ann}", f"data.train_images={images_dir}", "data.workers=0",
        "input.train_scales=[[96, 64], [128, 80]]", "train.batch_size=2", "train.base_batch_size=2",
        "train.base_lr=0.01", "train.warmup_iters=2", "train.epochs=2", "train.lr_steps=[1]",
        "train.log_interval=1", "train.val_interval=0", *extra,
    ]


def test_learning_rate_schedule():
    cfg = load_config("light_448_r18").train  # warm-up 500 from 0.01, steps at 27 and 33
    assert learning_rate(0.01, 0, 0, cfg) == pytest.approx(0.0001)
    assert learning_rate(0.01, 0, 250, cfg) == pytest.approx(0.01 * (1 - 0.5 * 0.99))
    assert learning_rate(0.01, 3, 500, cfg) == pytest.approx(0.01)
    assert learning_rate(0.01, 27, 10**5, cfg) == pytest.approx(0.001)
    assert learning_rate(0.01, 35, 10**5, cfg) == pytest.approx(0.0001)
    assert trainer.scaled_lr(cfg, world_size=8) == pytest.approx(0.01)  # 8 x 2 images = 16


def check_short_run_lowers_the_loss(tmp_path: Path, ann: Path, images_dir: Path, epochs: int,
                                   steps_per_epoch: int) -> None:
    """A short run of the tiny model on real photographs: the mean loss and the mean mask loss
    of the last epoch are below the first epoch's; the checkpoint records the COCO classes."""
    cfg = load_config("light_448_r18", TINY_MODEL + [
        f"data.train_ann={ann}", f"data.train_images={images_dir}", "data.workers=0",
        "input.train_scales=[[160, 112]]", f"train.epochs={epochs}", f"train.lr_steps=[{epochs}]",
        "train.base_batch_size=2", "train.base_lr=0.005", "train.warmup_iters=5", "train.log_interval=1",
        "train.val_interval=0",
    ])
    final = train(cfg, tmp_path / "run", device="cpu", progress=False)
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == epochs * steps_per_epoch and all(np.isfinite(r["loss"]) for r in rows)
    first = np.mean([r["loss"] for r in rows if r["epoch"] == 1])
    last = np.mean([r["loss"] for r in rows if r["epoch"] == epochs])
    print(f"mean loss epoch 1 {first:.4f}, epoch {epochs} {last:.4f}")
    assert last < 0.9 * first, (first, last)
    mask_first = np.mean([r["loss_mask"] for r in rows if r["epoch"] == 1])
    mask_last = np.mean([r["loss_mask"] for r in rows if r["epoch"] == epochs])
    assert mask_last < mask_first  # the masks improve too, not only the category maps
    saved = load_checkpoint(final)
    assert saved.format == "solov2" and saved.config["model"]["num_classes"] == 80
    assert saved.config["model"]["category_ids"][:3] == [1, 2, 3]


def test_short_run_on_photos_lowers_the_loss(tmp_path, photos):
    # Each photo listed three times (as three images): 3 square ones and 9 landscape ones make
    # 2 + 5 batches of 2 per epoch in the aspect-grouped sampler.
    data = photo_annotations()
    count = len(data["images"])
    data["images"] = [{**im, "id": im["id"] + k * count} for k in range(3) for im in data["images"]]
    data["annotations"] = [{**a, "id": a["id"] + k * 100, "image_id": a["image_id"] + k * count}
                           for k in range(3) for a in data["annotations"]]
    ann = write_json(tmp_path / "photos.json", data)
    check_short_run_lowers_the_loss(tmp_path, ann, photos[0].parent, epochs=3, steps_per_epoch=7)


def test_short_run_on_real_images_lowers_the_loss(tmp_path, casia_dir):
    ann = casia_subset(tmp_path / "casia20.json", 20)
    check_short_run_lowers_the_loss(tmp_path, ann, casia_dir, epochs=3, steps_per_epoch=10)


def interrupt_at(monkeypatch, call: int) -> None:
    """Simulate Ctrl-C during the ``call``-th training step."""
    original = trainer.train_step
    calls = {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            signal.raise_signal(signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", step)


def test_stopped_and_resumed_run_repeats_the_uninterrupted_one(tmp_path, monkeypatch):
    cfg = load_config("light_448_r18", shapes_config(tmp_path))  # 3 iterations per epoch, 2 epochs
    full = train(cfg, tmp_path / "full", device="cpu", progress=False)

    with monkeypatch.context() as patch:
        interrupt_at(patch, 2)
        with pytest.raises(TrainingInterrupted) as stop:
            train(cfg, tmp_path / "cut", device="cpu", progress=False)
    assert stop.value.iteration == 2 and stop.value.checkpoint == tmp_path / "cut" / "latest.pth"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    state = load_checkpoint(tmp_path / "cut" / "latest.pth").raw
    assert (state["epoch"], state["epoch_batch"], state["iteration"]) == (0, 2, 2)

    # Resume through the command line (settings from the checkpoint), with a worker process
    # this time, and stop again inside the second epoch; then run to the end.
    assert main(["train", "--resume", str(tmp_path / "cut"), "--device", "cpu", "--no-progress",
                 "--max-iters", "4", "data.workers=1"]) == 0
    assert load_checkpoint(tmp_path / "cut" / "latest.pth").raw["iteration"] == 4
    resumed = train(cfg, tmp_path / "cut", resume=True, device="cpu", progress=False)

    a, b = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "cut")
    assert [r["iteration"] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)
        assert rb["lr"] == pytest.approx(ra["lr"], rel=1e-12)
    wa, wb = load_checkpoint(full).state_dict, load_checkpoint(resumed).state_dict
    for key in wa:
        assert torch.allclose(wa[key], wb[key], rtol=1e-5, atol=1e-6), key
    for name in ("config.yaml", "train.log", "epoch_1.pth", "epoch_2.pth", "latest.pth", "final.pth"):
        assert (tmp_path / "cut" / name).is_file(), name


def test_two_gloo_processes_give_the_gradients_of_one_process(tmp_path):
    overrides = shapes_config(tmp_path, "input.train_scales=[[96, 64]]", num_images=8)
    # One process, 4 images per step.
    cfg = load_config("light_448_r18", overrides + ["train.batch_size=4"])
    train(cfg, tmp_path / "one", max_iters=1, device="cpu", progress=False)
    # torchrun, 2 processes x 2 images, through the command line.
    torchrun_train("light_448_r18", overrides + ["train.batch_size=2"], tmp_path / "two")
    one = load_checkpoint(tmp_path / "one" / "latest.pth").raw
    two = load_checkpoint(tmp_path / "two" / "latest.pth").raw
    assert two["world_size"] == 2 and one["world_size"] == 1
    # After one SGD step the momentum buffer is the (clipped) gradient plus weight decay.
    buffers_one = [s["momentum_buffer"] for s in one["optimizer"]["state"].values()]
    buffers_two = [s["momentum_buffer"] for s in two["optimizer"]["state"].values()]
    assert len(buffers_one) == len(buffers_two) > 50
    for g1, g2 in zip(buffers_one, buffers_two):
        scale = g1.abs().max().item() + 1e-12
        assert torch.allclose(g1, g2, rtol=1e-3, atol=1e-4 * scale)
    assert read_metrics(tmp_path / "two")[0]["loss"] == pytest.approx(read_metrics(tmp_path / "one")[0]["loss"], rel=1e-4)


def test_unusable_dataset_stops_before_training(tmp_path, capsys):
    ann, images_dir = write_shapes_dataset(tmp_path / "data", num_images=2, size=(64, 96))
    data = json.loads(ann.read_text())
    for a in data["annotations"]:
        a["category_id"] = 99
    bad = write_json(tmp_path / "bad.json", data)
    code = main(["train", "--config", "light_448_r18", f"data.train_ann={bad}", f"data.train_images={images_dir}",
                 "--work-dir", str(tmp_path / "run"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "no usable training images" in err and "unknown category id" in err and "category 99" in err
    assert not (tmp_path / "run" / "final.pth").exists()
    with pytest.raises(DatasetError, match="set data.train_ann"):
        train(load_config("light_448_r18"), tmp_path / "run2", device="cpu")
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_non_finite_losses_are_skipped_then_stop_the_run(tmp_path, monkeypatch):
    cfg = load_config("light_448_r18", shapes_config(tmp_path, "train.max_bad_steps=2"))
    original = train_step_module.solov2_loss
    calls = {"n": 0}

    def loss(*args, **kwargs):
        calls["n"] += 1
        out = original(*args, **kwargs)
        if calls["n"] == 2 or calls["n"] >= 4:
            return out._replace(total=out.total * float("nan"), mask=out.mask * float("nan"))
        return out

    monkeypatch.setattr(train_step_module, "solov2_loss", loss)
    with pytest.raises(TrainingError, match="2 non-finite losses or gradients in a row"):
        train(cfg, tmp_path / "run", device="cpu", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["type"], r["iteration"]) for r in rows] == [
        ("train", 1), ("skipped", 2), ("train", 3), ("skipped", 4), ("skipped", 5)]
    # The epoch checkpoint (after iteration 3) holds finite weights; nothing later was saved.
    state = load_checkpoint(tmp_path / "run" / "latest.pth")
    assert state.raw["iteration"] == 3
    assert all(torch.isfinite(v).all() for v in state.state_dict.values() if v.is_floating_point())


def test_backbone_weights_fine_tuning_and_validation(tmp_path):
    overrides = shapes_config(tmp_path, "train.base_lr=0.0", "train.epochs=1")
    # torchvision-format backbone file: plain keys, with an fc layer.
    torch.manual_seed(123)
    donor = SOLOv2(load_config("light_448_r18", TINY_MODEL).model)
    backbone = {k[len("backbone."):]: v for k, v in donor.state_dict().items() if k.startswith("backbone.")}
    backbone |= {"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    torch.save(backbone, tmp_path / "resnet18.pth")
    cfg = load_config("light_448_r18", overrides + [
        f"data.val_ann={tmp_path / 'data' / 'train.json'}", f"data.val_images={tmp_path / 'data' / 'images'}",
        "train.val_interval=1", "train.amp=true"])
    final = train(cfg, tmp_path / "bb", backbone_weights=str(tmp_path / "resnet18.pth"), max_iters=3,
                  device="cpu", progress=False)
    weights = load_checkpoint(final).state_dict
    for k, v in backbone.items():
        if not k.startswith("fc."):
            assert torch.equal(weights[f"backbone.{k}"], v), k  # lr 0: still the loaded values
    val = read_metrics(tmp_path / "bb", "val")
    assert len(val) == 1 and "mask_AP" in val[0]

    # Fine-tune from an 80-class model: everything but the category layer is loaded.
    donor_cfg = load_config("light_448_r18", TINY_MODEL)
    torch.save({"state_dict": donor.state_dict()}, tmp_path / "coco80.pth")
    assert donor_cfg.model.num_classes == 80
    with pytest.warns(UserWarning, match="category output layer has 80 classes and the model 2"):
        final = train(load_config("light_448_r18", overrides), tmp_path / "ft",
                      load_from=str(tmp_path / "coco80.pth"), max_iters=1, device="cpu", progress=False)
    saved = load_checkpoint(final)
    assert saved.config["model"]["num_classes"] == 2
    assert saved.config["model"]["class_names"] == ["square", "disc"]
    assert saved.config["model"]["category_ids"] == [3, 7]
    donor_weights = donor.state_dict()
    for k, v in saved.state_dict.items():
        if k.startswith("head.category_pred."):
            assert v.shape[0] == 2
        else:
            assert torch.equal(v, donor_weights[k]), k
    # The saved config rebuilds the model.
    model = SOLOv2(config_from_dict(saved.config).model)
    model.load_state_dict(saved.state_dict)


def test_a_new_run_does_not_overwrite_an_old_one(tmp_path):
    cfg = load_config("light_448_r18", shapes_config(tmp_path))
    train(cfg, tmp_path / "run", max_iters=1, device="cpu", progress=False)
    before = (tmp_path / "run" / "final.pth").read_bytes()
    with pytest.raises(TrainingError, match="already holds a training run"):
        train(cfg, tmp_path / "run", max_iters=1, device="cpu", progress=False)
    assert (tmp_path / "run" / "final.pth").read_bytes() == before


def test_adamw_option_and_its_resume_check(tmp_path):
    from solov2.config import ConfigError

    cfg = load_config("light_448_r18", shapes_config(tmp_path, "train.optimizer=adamw"))
    train(cfg, tmp_path / "run", max_iters=2, device="cpu", progress=False)
    state = load_checkpoint(tmp_path / "run" / "latest.pth").raw["optimizer"]["state"]
    assert state and all("exp_avg" in s and "exp_avg_sq" in s for s in state.values())

    sgd = load_config("light_448_r18", shapes_config(tmp_path, "train.optimizer=sgd"))
    with pytest.raises(TrainingError, match="trained with train.optimizer=adamw"):
        train(sgd, tmp_path / "run", resume=True, device="cpu", progress=False)
    with pytest.raises(ConfigError, match="'train.optimizer' must be one of 'sgd', 'adamw', got 'adam'"):
        load_config("light_448_r18", shapes_config(tmp_path, "train.optimizer=adam"))
