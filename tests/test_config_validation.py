"""Config values: every number form Python accepts, and each field's declared range."""

from __future__ import annotations

import pytest
import torch

from solov2.config import ConfigError, available_presets, config_from_dict, load_config


@pytest.mark.parametrize("text, expected", [
    ("1e-3", 1e-3), ("1E-3", 1e-3), ("5e-4", 5e-4), (".5", 0.5), ("2.", 2.0), ("1_000.5", 1000.5), ("3", 3.0),
])
def test_float_keys_take_every_python_number_form(text, expected):
    assert load_config("light_448_r18", [f"train.base_lr={text}"]).train.base_lr == expected


@pytest.mark.parametrize("text, expected", [("1_000", 1000), ("0x10", 16), ("12", 12)])
def test_int_keys_take_python_integer_literals(text, expected):
    assert load_config("light_448_r18", [f"train.max_iters={text}"]).train.max_iters == expected


def test_yaml_file_numbers_in_exponent_form(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  base_lr: 1e-3\n  weight_decay: 5e-5\n")
    cfg = load_config(path)
    assert (cfg.train.base_lr, cfg.train.weight_decay) == (1e-3, 5e-5)


@pytest.mark.parametrize("override, message", [
    ("train.base_lr=abc", "'train.base_lr' expects a number"),
    ("train.max_iters=1.5", "'train.max_iters' expects an integer"),
    ("train.log_interval=0", "'train.log_interval' must be at least 1"),
    ("train.batch_size=0", "'train.batch_size' must be at least 1"),
    ("train.epochs=0", "'train.epochs' must be at least 1"),
    ("data.workers=-1", "'data.workers' must be at least 0"),
    ("input.train_scales=[]", "'input.train_scales' must not be an empty list"),
    ("input.train_scales=[[768]]", "'input.train_scales[0]' must have 2 entries"),
    ("input.test_scale=[0, 448]", "'input.test_scale' must be at least 1"),
    ("input.test_scale=[768]", "'input.test_scale' must have 2 entries"),
    ("test.nms_kernel=box", "'test.nms_kernel' must be one of 'gaussian', 'linear'"),
    ("test.max_per_img=-1", "'test.max_per_img' must be at least 1"),
    ("test.score_thr=1.5", "'test.score_thr' must be at most 1"),
    ("test.score_thr=nan", "'test.score_thr' must be at least 0"),
    ("test.nms_sigma=0", "'test.nms_sigma' must be greater than 0"),
    ("model.sigma=0", "'model.sigma' must be greater than 0"),
    ("model.grids=[40, 36]", "'model.grids' must have 5 entries"),
    ("model.scale_ranges=[[9, 2], [1, 2], [1, 2], [1, 2], [1, 2]]", "'model.scale_ranges[0]'"),
    ("model.backbone_depth=19", "'model.backbone_depth' must be one of 18, 34, 50, 101"),
    ("train.optimizer=adam", "'train.optimizer' must be one of 'sgd', 'adamw'"),
    ("data.box_convention=xyxy", "'data.box_convention' must be one of 'mmdet2', 'v1'"),
])
def test_out_of_range_values_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("light_448_r18", [override])
    assert message in str(err.value)


def test_stored_configs_are_validated_too():
    values = load_config("light_448_r18").to_dict()
    values["test"]["max_per_img"] = 0
    with pytest.raises(ConfigError, match="'test.max_per_img' must be at least 1"):
        config_from_dict(values)


@pytest.mark.parametrize("name", available_presets())
def test_every_preset_is_within_range(name):
    load_config(name)  # raises on any out-of-range value


def test_train_checks_a_config_built_in_python(tmp_path):
    from solov2.engine.train_setup import build_optimizer
    from solov2.engine.trainer import train

    cfg = load_config("light_448_r18")
    cfg.train.optimizer = "adam"  # set in Python: not through load_config's check
    with pytest.raises(ConfigError, match="'train.optimizer' must be one of 'sgd', 'adamw', got 'adam'"):
        train(cfg, tmp_path / "run", device="cpu", progress=False)
    assert not (tmp_path / "run" / "config.yaml").exists()
    with pytest.raises(ConfigError, match="'train.optimizer'"):
        build_optimizer(torch.nn.Linear(2, 2), cfg.train, 0.01)
