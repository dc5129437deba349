"""Typed configuration: dataclasses that load from YAML and take ``key=value`` overrides.

A config is a plain tree of dataclasses. ``load_config("light_448_r18")`` reads the preset
shipped in ``solov2/configs``; ``load_config("my.yaml", ["model.num_classes=3"])`` reads a
file and applies overrides. Unknown keys and values of the wrong type raise ``ConfigError``
naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

PRESET_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config file or override that does not fit the config schema."""


@dataclass
class ModelConfig:
    backbone_depth: int = 18
    # Stages (1-4) of the backbone that use deformable convolution; the DCN presets need it.
    backbone_dcn_stages: list[int] = field(default_factory=list)
    frozen_stages: int = 1
    norm_eval: bool = True
    fpn_channels: int = 256
    num_classes: int = 80
    head_stacked_convs: int = 2
    head_channels: int = 256
    kernel_channels: int = 128
    mask_mid_channels: int = 128
    strides: list[int] = field(default_factory=lambda: [8, 8, 16, 32, 32])
    grids: list[int] = field(default_factory=lambda: [40, 36, 24, 16, 12])
    scale_ranges: list[list[float]] = field(
        default_factory=lambda: [[1, 56], [28, 112], [56, 224], [112, 448], [224, 896]]
    )
    sigma: float = 0.2
    # Category names in label order; category_ids maps label -> dataset category id.
    class_names: list[str] = field(default_factory=list)
    category_ids: list[int] = field(default_factory=list)
    backbone_groups: int = 1  # ResNeXt cardinality: groups of the bottleneck conv2 (1: ResNet; X101 64x4d: 64)
    backbone_width_per_group: int = 64  # ResNeXt channels per group at stage 1 (64: ResNet; X101 64x4d: 4)
    backbone_dcn: str = "none"  # deformable conv2 in backbone_dcn_stages: "none", "v1" (DCN) or "v2" (DCNv2)
    head_dcn: str = "none"  # deformable tower convs (kernel and category branches): "none", "v1" or "v2"
    head_dcn_all_convs: bool = False  # true: every tower conv deformable; false: only the last one
    mask_branch_dcn: str = "none"  # every mask-feature-branch conv deformable (the final 1x1 too): "none"/"v1"/"v2"


@dataclass
class InputConfig:
    test_scale: list[int] = field(default_factory=lambda: [768, 448])  # (long, short)
    train_scales: list[list[int]] = field(
        default_factory=lambda: [[768, s] for s in (512, 480, 448, 416, 384, 352)]
    )
    mean: list[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])
    std: list[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])
    size_divisor: int = 32
    flip_prob: float = 0.5


@dataclass
class TestConfig:
    nms_pre: int = 500
    score_thr: float = 0.1
    mask_thr: float = 0.5
    update_thr: float = 0.05
    nms_kernel: str = "gaussian"  # or "linear"
    nms_sigma: float = 2.0
    max_per_img: int = 100


@dataclass
class DataConfig:
    train_ann: str = ""
    train_images: str = ""
    val_ann: str = ""
    val_images: str = ""
    workers: int = 2
    # "mmdet2": x2 = x + w (mmdetection 2.x and later); "v1": x2 = x + w - 1 (authors' release).
    box_convention: str = "mmdet2"
    group_by_aspect_ratio: bool = True  # batch landscape and portrait images separately


@dataclass
class TrainConfig:
    epochs: int = 36
    lr_steps: list[int] = field(default_factory=lambda: [27, 33])
    batch_size: int = 2  # images per process
    base_lr: float = 0.01  # for a total batch of base_batch_size; scaled linearly
    base_batch_size: int = 16
    optimizer: str = "sgd"  # "sgd" (the release's, with momentum) or "adamw"
    momentum: float = 0.9  # SGD only
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_ratio: float = 0.01
    grad_clip: float = 35.0
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    focal_weight: float = 1.0
    dice_weight: float = 3.0
    amp: bool = False
    seed: int = 0
    val_interval: int = 1  # epochs between validations; 0 disables
    max_bad_steps: int = 20  # non-finite losses in a row before the run stops
    log_interval: int = 20
    max_iters: int = 0  # stop after this many iterations in all (0: run the whole schedule)
    # Dice loss divisor: "pairs" = number of (cell, instance) pairs (authors' release, mmdetection
    # 2.x) or "positive_cells" = number of positive grid cells (mmdetection 3.x)
    dice_normalizer: str = "pairs"


@dataclass
class Config:
    name: str = "light_448_r18"
    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    test: TestConfig = field(default_factory=TestConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the type ``hint``; convert ints to floats and tuples to lists."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        (item_hint,) = typing.get_args(hint)
        return [_coerce(v, item_hint, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' expects true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' expects a string, got {value!r}")
        return value
    return value


def _update(obj: Any, values: dict[str, Any], prefix: str = "") -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        full = prefix + key
        if key not in names:
            raise ConfigError(
                f"unknown config key '{full}'; valid keys here: {', '.join(sorted(names))}"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _update(current, value, full + ".")
        else:
            setattr(obj, key, _coerce(value, hints[key], full))


def config_from_dict(values: dict[str, Any]) -> Config:
    cfg = Config()
    _update(cfg, values)
    return cfg


def apply_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """Apply ``section.key=value`` strings; values are parsed as YAML (``3``, ``[1, 2]``, ``true``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node: dict[str, Any] = {}
        cursor = node
        parts = key.strip().split(".")
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = value
        # Strings such as file names must stay strings even when YAML reads them as numbers.
        try:
            _update(cfg, node)
        except ConfigError:
            if isinstance(value, str):
                raise
            cursor[parts[-1]] = raw
            _update(cfg, node)
    return cfg


def load_config(name_or_path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Load a preset by name (``light_448_r18``) or a YAML file, then apply overrides."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = PRESET_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ConfigError(
                f"unknown preset '{name_or_path}'; available: {', '.join(available_presets())}"
            )
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    try:
        cfg = config_from_dict(values)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    if "name" not in values:
        cfg.name = path.stem
    return apply_overrides(cfg, overrides)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
