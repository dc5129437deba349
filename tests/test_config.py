"""Config presets, YAML round trip, key=value overrides and their errors."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from solov2.config import (
    Config,
    ConfigError,
    apply_overrides,
    available_presets,
    config_from_dict,
    load_config,
    save_config,
)

PRESETS = [
    "light_448_r18", "light_448_r34", "light_448_r50", "light_512_dcn_r50", "light_512_dcn_r50_mmdet",
    "r50_1x", "r50_3x", "r101_3x", "r101_dcn_3x", "x101_3x", "x101_dcn_3x",
]

LIGHT_RANGES = [[1, 56], [28, 112], [56, 224], [112, 448], [224, 896]]
DCN512_RANGES = [[1, 64], [32, 128], [64, 256], [128, 512], [256, 2048]]
BIG_RANGES = [[1, 96], [48, 192], [96, 384], [192, 768], [384, 2048]]

# The release's configs (WXinlong/SOLO configs/solov2/*.py; docs/design.md, "Architecture"):
# depth, dcn, stacked convs, head channels, E, mask mid, ranges, test scale, train short sides
# (long side = test long side), epochs, lr steps.
TABLE = {
    "light_448_r18": (18, False, 2, 256, 128, 128, LIGHT_RANGES, [768, 448], [512, 480, 448, 416, 384, 352], 36, [27, 33]),
    "light_448_r34": (34, False, 2, 256, 128, 128, LIGHT_RANGES, [768, 448], [512, 480, 448, 416, 384, 352], 36, [27, 33]),
    "light_448_r50": (50, False, 2, 256, 128, 128, LIGHT_RANGES, [768, 448], [512, 480, 448, 416, 384, 352], 36, [27, 33]),
    "light_512_dcn_r50": (50, True, 3, 256, 128, 128, DCN512_RANGES, [852, 512], [512, 480, 448, 416, 384, 352], 36, [27, 33]),
    "r50_1x": (50, False, 4, 512, 256, 128, BIG_RANGES, [1333, 800], [800], 12, [9, 11]),
    "r50_3x": (50, False, 4, 512, 256, 128, BIG_RANGES, [1333, 800], [800, 768, 736, 704, 672, 640], 36, [27, 33]),
    "r101_3x": (101, False, 4, 512, 256, 128, BIG_RANGES, [1333, 800], [800, 768, 736, 704, 672, 640], 36, [27, 33]),
    "r101_dcn_3x": (101, True, 4, 512, 256, 128, BIG_RANGES, [1333, 800], [800, 768, 736, 704, 672, 640], 36, [27, 33]),
}
TABLE["light_512_dcn_r50_mmdet"] = TABLE["light_512_dcn_r50"]
TABLE["x101_3x"] = TABLE["r101_3x"]
TABLE["x101_dcn_3x"] = TABLE["r101_dcn_3x"]

# REFERENCE.md section 8, as the sources' configs: backbone DCN, tower DCN, all tower convs,
# mask branch DCN, ResNeXt (groups, width per group).
DCN_TABLE = {
    "light_512_dcn_r50": ("v1", "v1", False, "none", 1, 64),
    "light_512_dcn_r50_mmdet": ("v2", "v2", False, "none", 1, 64),
    "r101_dcn_3x": ("v2", "v2", True, "v2", 1, 64),
    "x101_dcn_3x": ("v2", "v2", True, "v2", 64, 4),
    "x101_3x": ("none", "none", False, "none", 64, 4),
}


def test_official_presets_are_listed():
    assert set(PRESETS) <= set(available_presets())


@pytest.mark.parametrize("name", available_presets())
def test_every_preset_loads(name):
    cfg = load_config(name)
    assert cfg.name == name
    m = cfg.model
    assert len(m.strides) == len(m.grids) == len(m.scale_ranges) == 5
    assert m.backbone_depth in (18, 34, 50, 101)
    assert len(cfg.input.test_scale) == 2
    assert cfg.test.nms_kernel in ("gaussian", "linear")
    if m.class_names:
        assert len(m.class_names) == m.num_classes


@pytest.mark.parametrize("name", PRESETS)
def test_preset_matches_reference_table(name):
    cfg = load_config(name)
    depth, dcn, convs, head_ch, kernel_ch, mid_ch, ranges, test_scale, shorts, epochs, steps = TABLE[name]
    m = cfg.model
    assert cfg.name == name
    assert m.backbone_depth == depth
    assert bool(m.backbone_dcn_stages) == dcn and (m.head_dcn != "none") == dcn
    if dcn:
        assert m.backbone_dcn_stages == [2, 3, 4]
    backbone_dcn, head_dcn, all_convs, mask_dcn, groups, width = DCN_TABLE.get(
        name, ("none", "none", False, "none", 1, 64))
    assert (m.backbone_dcn, m.head_dcn, m.head_dcn_all_convs, m.mask_branch_dcn) == (
        backbone_dcn, head_dcn, all_convs, mask_dcn)
    assert (m.backbone_groups, m.backbone_width_per_group) == (groups, width)
    assert (m.head_stacked_convs, m.head_channels, m.kernel_channels, m.mask_mid_channels) == (
        convs, head_ch, kernel_ch, mid_ch)
    assert m.scale_ranges == ranges
    assert m.strides == [8, 8, 16, 32, 32]
    assert m.grids == [40, 36, 24, 16, 12]
    assert m.fpn_channels == 256 and m.num_classes == 80 and m.sigma == pytest.approx(0.2)
    assert m.frozen_stages == 1 and m.norm_eval is True
    assert cfg.input.test_scale == test_scale
    assert cfg.input.train_scales == [[test_scale[0], s] for s in shorts]
    assert (cfg.train.epochs, cfg.train.lr_steps) == (epochs, steps)
    t = cfg.test
    assert (t.nms_pre, t.score_thr, t.mask_thr, t.update_thr, t.nms_kernel, t.nms_sigma, t.max_per_img) == (
        500, 0.1, 0.5, 0.05, "gaussian", 2.0, 100)
    assert cfg.input.mean == [123.675, 116.28, 103.53] and cfg.input.std == [58.395, 57.12, 57.375]
    assert cfg.input.size_divisor == 32


@pytest.mark.parametrize("name", available_presets())
def test_yaml_round_trip(name, tmp_path):
    cfg = load_config(name, ["model.num_classes=3", "test.score_thr=0.25", "data.train_images=2017"])
    path = tmp_path / "saved.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert dataclasses.asdict(again) == cfg.to_dict()
    assert config_from_dict(cfg.to_dict()) == cfg
    # The file is plain YAML that names every section.
    assert set(yaml.safe_load(path.read_text())) == {"name", "model", "input", "test", "data", "train"}


def test_yaml_file_without_name_takes_the_file_stem(tmp_path):
    path = tmp_path / "my_experiment.yaml"
    path.write_text("model:\n  num_classes: 5\n")
    cfg = load_config(path)
    assert cfg.name == "my_experiment"
    assert cfg.model.num_classes == 5
    assert cfg.model.backbone_depth == Config().model.backbone_depth


def test_overrides_parse_types():
    cfg = load_config("light_448_r18", [
        "model.num_classes=3",
        "test.score_thr=0.3",
        "test.update_thr=1",  # an int for a float key becomes a float
        "model.grids=[10, 8, 6, 4, 2]",
        "model.scale_ranges=[[1, 2], [3, 4.5], [5, 6], [7, 8], [9, 10]]",
        "train.amp=true",
        "test.nms_kernel=linear",
        "data.train_images=2017",  # file-name strings that look like numbers stay strings
        "data.val_images=3.14",
        "data.val_ann=",
        "data.train_ann=a=b.json",  # only the first '=' splits
        "model.class_names=[cat, dog, '7']",
    ])
    assert cfg.model.num_classes == 3 and type(cfg.model.num_classes) is int
    assert cfg.test.score_thr == 0.3
    assert cfg.test.update_thr == 1.0 and type(cfg.test.update_thr) is float
    assert cfg.model.grids == [10, 8, 6, 4, 2]
    assert cfg.model.scale_ranges == [[1.0, 2.0], [3.0, 4.5], [5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]
    assert all(type(v) is float for pair in cfg.model.scale_ranges for v in pair)
    assert cfg.train.amp is True
    assert cfg.test.nms_kernel == "linear"
    assert cfg.data.train_images == "2017" and cfg.data.val_images == "3.14"
    assert cfg.data.val_ann == ""
    assert cfg.data.train_ann == "a=b.json"
    assert cfg.model.class_names == ["cat", "dog", "7"]


def test_overrides_do_not_touch_other_keys():
    base = load_config("r50_3x")
    changed = apply_overrides(load_config("r50_3x"), ["train.epochs=5"])
    assert changed.train.epochs == 5
    changed.train.epochs = base.train.epochs
    assert changed == base


@pytest.mark.parametrize("override, key", [
    ("model.num_clases=3", "model.num_clases"),
    ("modle.num_classes=3", "modle"),
    ("test.score_threshold=0.3", "test.score_threshold"),
    ("epochs=3", "epochs"),
])
def test_unknown_override_key_is_an_error_naming_it(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config("light_448_r18", [override])


@pytest.mark.parametrize("override, key", [
    ("model.num_classes=abc", "model.num_classes"),
    ("model.num_classes=3.5", "model.num_classes"),
    ("model.num_classes=true", "model.num_classes"),
    ("test.score_thr=high", "test.score_thr"),
    ("test.score_thr=true", "test.score_thr"),
    ("train.amp=maybe", "train.amp"),
    ("model.grids=5", "model.grids"),
    ("model.grids=[40, x, 24, 16, 12]", "model.grids"),
    ("model=3", "model"),
])
def test_wrong_type_is_an_error_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}"):
        load_config("light_448_r18", [override])


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="num_classes"):
        load_config("light_448_r18", ["model.num_classes"])


def test_yaml_file_errors_name_file_and_key(tmp_path):
    bad_key = tmp_path / "bad_key.yaml"
    bad_key.write_text("model:\n  num_classes: 3\n  backbone: resnet18\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad_key)
    assert "model.backbone" in str(info.value) and str(bad_key) in str(info.value)

    bad_type = tmp_path / "bad_type.yaml"
    bad_type.write_text("test:\n  max_per_img: many\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad_type)
    assert "test.max_per_img" in str(info.value) and str(bad_type) in str(info.value)

    bad_yaml = tmp_path / "bad_yaml.yaml"
    bad_yaml.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad_yaml.yaml"):
        load_config(bad_yaml)


def test_missing_file_and_unknown_preset(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="not found") as info:
        load_config(missing)
    assert str(missing) in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config("light_448_r19")
    message = str(info.value)
    assert "light_448_r19" in message and "light_448_r18" in message  # lists the presets
