"""Which config a Predictor builds: a --config never renames the classes a solov2 checkpoint
recorded, and a mistyped override is reported as the user's, not the checkpoint's."""

from __future__ import annotations

import pytest
import torch

from _train_data import TINY_MODEL
from solov2.checkpoint import atomic_save, make_checkpoint
from solov2.config import ConfigError, load_config
from solov2.engine.predictor import Predictor, resolve_config
from solov2.model import SOLOv2

CLASSES = ["model.num_classes=3", "model.class_names=[cat, dog, fox]", "model.category_ids=[5, 9, 11]"]


@pytest.fixture(scope="module")
def own_checkpoint(tmp_path_factory):
    cfg = load_config("light_448_r18", [*TINY_MODEL, *CLASSES])
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("own") / "final.pth"
    atomic_save(make_checkpoint(SOLOv2(cfg.model), cfg.to_dict()), path)
    return path


def test_config_keeps_the_classes_the_checkpoint_recorded(own_checkpoint):
    cfg, _, _ = resolve_config("light_448_r18", own_checkpoint, TINY_MODEL)
    assert cfg.model.num_classes == 3 and cfg.model.class_names == ["cat", "dog", "fox"]
    assert cfg.model.category_ids == [5, 9, 11]
    predictor = Predictor.from_config("light_448_r18", own_checkpoint, device="cpu", overrides=TINY_MODEL)
    assert predictor.class_names == ["cat", "dog", "fox"]


def test_class_overrides_still_win(own_checkpoint):
    cfg, _, _ = resolve_config("light_448_r18", own_checkpoint,
                               [*TINY_MODEL, "model.class_names=[a, b, c]"])
    assert cfg.model.class_names == ["a", "b", "c"] and cfg.model.category_ids == [5, 9, 11]


def test_a_mistyped_override_is_named_as_the_users(own_checkpoint):
    with pytest.raises(ConfigError) as err:
        resolve_config(None, own_checkpoint, ["test.scor_thr=0.3"])
    message = str(err.value)
    assert "unknown config key 'test.scor_thr'" in message and "stored config" not in message
