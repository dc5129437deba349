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
    # ResNet depth: 18, 34, 50 or 101.
    backbone_depth: int = 18
    # Stages (1-4) of the backbone that use deformable convolution; the DCN presets need it.
    backbone_dcn_stages: list[int] = field(default_factory=list)
    head_dcn: bool = False
    # Backbone stages kept frozen in training: -1 none, 0 the stem, k the stem and stages 1..k (0-4).
    frozen_stages: int = 1
    # Keep every backbone BatchNorm in eval mode (frozen statistics) while training, as the release.
    norm_eval: bool = True
    # Output channels of every FPN level (P2-P6).
    fpn_channels: int = 256
    # Object classes, background excluded (COCO: 80); set from the data's categories when training.
    num_classes: int = 80
    # Conv-GroupNorm-ReLU blocks in each of the kernel and category towers (light presets 2, others 4).
    head_stacked_convs: int = 2
    # Channels of the kernel and category towers.
    head_channels: int = 256
    # E: channels of the mask features, so the length of each cell's dynamic 1x1 kernel.
    kernel_channels: int = 128
    # Channels inside the mask feature branch, before its final 1x1 conv to E channels.
    mask_mid_channels: int = 128
    # Per head level (5): the level's stride in input pixels; at test time a mask with at most this
    # many pixels (at mask-feature resolution) is dropped.
    strides: list[int] = field(default_factory=lambda: [8, 8, 16, 32, 32])
    # Per head level (5): S, the grid is S x S cells.
    grids: list[int] = field(default_factory=lambda: [40, 36, 24, 16, 12])
    # Per head level (5): [low, high] of sqrt(box w * h) in input pixels that the level trains on;
    # ranges may overlap, so one instance can train two levels.
    scale_ranges: list[list[float]] = field(
        default_factory=lambda: [[1, 56], [28, 112], [56, 224], [112, 448], [224, 896]]
    )
    # Centre-region scale: an instance's positive cells lie within sigma x its half box size of its
    # mask's centre of mass (and within the 3x3 cells around it). (0, 1].
    sigma: float = 0.2
    # Category names in label order (label 0 first); empty: COCO's names for 80 classes,
    # class_0, class_1, ... otherwise.
    class_names: list[str] = field(default_factory=list)
    # The dataset category id of each label, for results.json; empty: COCO's ids (1..90 with gaps)
    # for 80 classes, 1..num_classes otherwise.
    category_ids: list[int] = field(default_factory=list)


@dataclass
class InputConfig:
    # [long, short] side limits of the keep-ratio resize at test time, in pixels.
    test_scale: list[int] = field(default_factory=lambda: [768, 448])
    # [long, short] limits for training; one is drawn at random per image (multi-scale training).
    train_scales: list[list[int]] = field(
        default_factory=lambda: [[768, s] for s in (512, 480, 448, 416, 384, 352)]
    )
    # Per-channel mean subtracted from RGB pixel values (0-255 scale).
    mean: list[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])
    # Per-channel standard deviation that the RGB values are divided by (0-255 scale).
    std: list[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])
    # Images are zero-padded bottom and right to a multiple of this many pixels.
    size_divisor: int = 32
    # Probability of a horizontal flip of a training image, 0-1.
    flip_prob: float = 0.5


@dataclass
class TestConfig:
    # Candidates (by score) kept before Matrix NMS.
    nms_pre: int = 500
    # Minimum category probability for a (cell, class) pair to become a candidate, 0-1.
    score_thr: float = 0.1
    # Mask probability above which a pixel belongs to the mask, 0-1.
    mask_thr: float = 0.5
    # Minimum score after the Matrix NMS decay for an instance to be returned, 0-1.
    update_thr: float = 0.05
    # Matrix NMS decay function: "gaussian" exp(-nms_sigma * iou^2) or "linear" 1 - iou.
    nms_kernel: str = "gaussian"
    # Gaussian decay strength. It multiplies iou^2, as the authors' release does (the paper writes
    # exp(-iou^2 / sigma)); larger values suppress overlapping masks more. > 0.
    nms_sigma: float = 2.0
    # Most instances returned per image, best first.
    max_per_img: int = 100


@dataclass
class DataConfig:
    # COCO-format annotation file (JSON) of the training set.
    train_ann: str = ""
    # Folder that the training annotations' file_name entries are relative to.
    train_images: str = ""
    # COCO-format annotation file of the validation set; empty: no validation during training.
    val_ann: str = ""
    # Folder that the validation annotations' file_name entries are relative to.
    val_images: str = ""
    # DataLoader worker processes per training process; 0 loads in the main process.
    workers: int = 2
    # "mmdet2": x2 = x + w (mmdetection 2.x and later); "v1": x2 = x + w - 1 (authors' release).
    box_convention: str = "mmdet2"
    # Batch landscape and portrait images separately (less padding per batch).
    group_by_aspect_ratio: bool = True


@dataclass
class TrainConfig:
    # Length of the schedule in epochs (passes over the training set).
    epochs: int = 36
    # Epochs after which the learning rate is multiplied by 0.1.
    lr_steps: list[int] = field(default_factory=lambda: [27, 33])
    # Images per process and step (the total batch is this x the number of processes).
    batch_size: int = 2
    # Learning rate for a total batch of base_batch_size images; scaled linearly to the real total.
    base_lr: float = 0.01
    # The total batch that base_lr is given for (the release: 8 GPUs x 2 images).
    base_batch_size: int = 16
    # "sgd" (the release's, with momentum) or "adamw".
    optimizer: str = "sgd"
    # SGD momentum, 0-1 (SGD only).
    momentum: float = 0.9
    # L2 weight decay (SGD) or decoupled weight decay (AdamW), >= 0.
    weight_decay: float = 1e-4
    # Iterations of linear learning-rate warm-up at the start; 0 disables.
    warmup_iters: int = 500
    # Learning rate at the first iteration, as a fraction of the scheduled one, 0-1.
    warmup_ratio: float = 0.01
    # Maximum global gradient norm (clipping); 0 disables.
    grad_clip: float = 35.0
    # Focusing exponent of the category focal loss, >= 0.
    focal_gamma: float = 2.0
    # Weight of positive cells in the category focal loss, 0-1.
    focal_alpha: float = 0.25
    # Weight of the category loss in the total loss.
    focal_weight: float = 1.0
    # Weight of the mask (dice) loss in the total loss.
    dice_weight: float = 3.0
    # Mixed precision: float16 on CUDA, bfloat16 on the CPU.
    amp: bool = False
    # Seed of every random generator (data order, augmentation, initialisation).
    seed: int = 0
    # Epochs between validations (mask AP on data.val_ann); 0 disables.
    val_interval: int = 1
    # Non-finite losses in a row (those steps are skipped) before the run stops with an error.
    max_bad_steps: int = 20
    # Iterations between log lines and metrics.jsonl rows.
    log_interval: int = 20
    # Stop after this many iterations in all; 0 runs the whole schedule.
    max_iters: int = 0


@dataclass
class Config:
    # Preset or experiment name, stored in checkpoints and reports.
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
