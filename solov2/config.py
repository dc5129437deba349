"""Typed configuration: dataclasses that load from YAML and take ``key=value`` overrides.

A config is a plain tree of dataclasses. ``load_config("light_448_r18")`` reads the preset
shipped in ``solov2/configs``; ``load_config("my.yaml", ["model.num_classes=3"])`` reads a
file and applies overrides. Unknown keys and values of the wrong type raise ``ConfigError``
naming the key.
"""

from __future__ import annotations

import ast
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

PRESET_DIR = Path(__file__).parent / "configs"
DCN_TYPES = ("none", "v1", "v2")  # plain conv, deformable conv v1 (DCN), v2 (DCNv2, modulated)


class ConfigError(ValueError):
    """A config file or override that does not fit the config schema."""


def checked(
    default: Any,
    *,
    min: float | None = None,  # noqa: A002  (reads as the range it declares)
    max: float | None = None,  # noqa: A002
    above_min: bool = False,
    choices: tuple[Any, ...] | None = None,
    length: int | None = None,
    item_length: int | None = None,
    nonempty: bool = False,
) -> Any:
    """A dataclass field with its valid values declared beside it (checked by ``validate``).

    ``default`` is the value, or a callable giving it (lists). ``min``/``max`` bound every
    number (``above_min``: strictly above ``min``), also inside lists; ``choices`` lists the
    allowed values; ``length`` / ``item_length`` fix the length of a list / of its items;
    ``nonempty`` requires a non-empty list.
    """
    rule = {"min": min, "max": max, "above_min": above_min, "choices": choices, "length": length,
            "item_length": item_length, "nonempty": nonempty}
    if callable(default):
        return field(default_factory=default, metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})



@dataclass
class ModelConfig:
    # ResNet depth: 18, 34, 50 or 101.
    backbone_depth: int = checked(18, choices=(18, 34, 50, 101))
    # Backbone stages (1-4) whose bottleneck conv2 is deformable (backbone_dcn); the DCN presets: [2, 3, 4].
    backbone_dcn_stages: list[int] = checked(list, min=1, max=4)
    # Backbone stages kept frozen in training: -1 none, 0 the stem, k the stem and stages 1..k (0-4).
    frozen_stages: int = checked(1, min=-1, max=4)
    # Keep every backbone BatchNorm in eval mode (frozen statistics) while training, as the release.
    norm_eval: bool = True
    # Output channels of every FPN level (P2-P6).
    fpn_channels: int = checked(256, min=1)
    # Object classes, background excluded (COCO: 80); set from the data's categories when training.
    num_classes: int = checked(80, min=1)
    # Conv-GroupNorm-ReLU blocks in each of the kernel and category towers (light presets 2, others 4).
    head_stacked_convs: int = checked(2, min=1)
    # Channels of the kernel and category towers.
    head_channels: int = checked(256, min=1)
    # E: channels of the mask features, so the length of each cell's dynamic 1x1 kernel.
    kernel_channels: int = checked(128, min=1)
    # Channels inside the mask feature branch, before its final 1x1 conv to E channels.
    mask_mid_channels: int = checked(128, min=1)
    # Per head level (5): the level's stride in input pixels; at test time a mask with at most this
    # many pixels (at mask-feature resolution) is dropped.
    strides: list[int] = checked(lambda: [8, 8, 16, 32, 32], min=1, length=5)
    # Per head level (5): S, the grid is S x S cells.
    grids: list[int] = checked(lambda: [40, 36, 24, 16, 12], min=1, length=5)
    # Per head level (5): [low, high] of sqrt(box w * h) in input pixels that the level trains on;
    # ranges may overlap, so one instance can train two levels.
    scale_ranges: list[list[float]] = checked(
        lambda: [[1, 56], [28, 112], [56, 224], [112, 448], [224, 896]], min=0, length=5, item_length=2
    )
    # Centre-region scale: an instance's positive cells lie within sigma x its half box size of its
    # mask's centre of mass (and within the 3x3 cells around it). (0, 1].
    sigma: float = checked(0.2, min=0, max=1, above_min=True)
    # Category names in label order (label 0 first); empty: COCO's names for 80 classes,
    # class_0, class_1, ... otherwise.
    class_names: list[str] = field(default_factory=list)
    # The dataset category id of each label, for results.json; empty: COCO's ids (1..90 with gaps)
    # for 80 classes, 1..num_classes otherwise.
    category_ids: list[int] = field(default_factory=list)
    # ResNeXt cardinality: groups of the bottleneck conv2 (1: ResNet; X101 64x4d: 64).
    backbone_groups: int = checked(1, min=1)
    # ResNeXt channels per group at stage 1 (64: ResNet; X101 64x4d: 4).
    backbone_width_per_group: int = checked(64, min=1)
    # Deformable conv2 in backbone_dcn_stages: "none", "v1" (DCN) or "v2" (DCNv2, modulated).
    backbone_dcn: str = checked("none", choices=DCN_TYPES)
    # Deformable tower convs (kernel and category branches): "none", "v1" or "v2".
    head_dcn: str = checked("none", choices=DCN_TYPES)
    # true: every tower conv deformable; false: only the last one.
    head_dcn_all_convs: bool = False
    # Every mask-feature-branch conv deformable (the final 1x1 too): "none", "v1" or "v2".
    mask_branch_dcn: str = checked("none", choices=DCN_TYPES)
    # Initial weights of the head towers' offset convs (conv_offset of the head_dcn convs): "zero"
    # (the authors' release: a deformable conv starts as a plain conv) or "normal" (normal, std
    # 0.01, bias 0: mmdetection 3.x, whose head init reaches every nn.Conv2d). Only matters when
    # training from scratch; the backbone's offset convs start zero and the mask branch's normal
    # in both sources.
    head_offset_init: str = checked("zero", choices=("zero", "normal"))


@dataclass
class InputConfig:
    # [long, short] side limits of the keep-ratio resize at test time, in pixels.
    test_scale: list[int] = checked(lambda: [768, 448], min=1, length=2)
    # [long, short] limits for training; one is drawn at random per image (multi-scale training).
    train_scales: list[list[int]] = checked(
        lambda: [[768, s] for s in (512, 480, 448, 416, 384, 352)], min=1, nonempty=True, item_length=2
    )
    # Per-channel mean subtracted from RGB pixel values (0-255 scale).
    mean: list[float] = checked(lambda: [123.675, 116.28, 103.53], length=3)
    # Per-channel standard deviation that the RGB values are divided by (0-255 scale).
    std: list[float] = checked(lambda: [58.395, 57.12, 57.375], min=0, above_min=True, length=3)
    # Images are zero-padded bottom and right to a multiple of this many pixels.
    size_divisor: int = checked(32, min=1)
    # Probability of a horizontal flip of a training image, 0-1.
    flip_prob: float = checked(0.5, min=0, max=1)


@dataclass
class TestConfig:
    # Candidates (by score) kept before Matrix NMS.
    nms_pre: int = checked(500, min=1)
    # Minimum category probability for a (cell, class) pair to become a candidate, 0-1.
    score_thr: float = checked(0.1, min=0, max=1)
    # Mask probability above which a pixel belongs to the mask, 0-1.
    mask_thr: float = checked(0.5, min=0, max=1)
    # Minimum score after the Matrix NMS decay for an instance to be returned, 0-1.
    update_thr: float = checked(0.05, min=0, max=1)
    # Matrix NMS decay function: "gaussian" exp(-nms_sigma * iou^2) or "linear" 1 - iou.
    nms_kernel: str = checked("gaussian", choices=('gaussian', 'linear'))
    # Gaussian decay strength. It multiplies iou^2, as the authors' release does (the paper writes
    # exp(-iou^2 / sigma)); larger values suppress overlapping masks more. > 0.
    nms_sigma: float = checked(2.0, min=0, above_min=True)
    # Most instances returned per image, best first.
    max_per_img: int = checked(100, min=1)


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
    workers: int = checked(2, min=0)
    # "mmdet2": x2 = x + w (mmdetection 2.x and later); "v1": x2 = x + w - 1 (authors' release).
    box_convention: str = checked("mmdet2", choices=('mmdet2', 'v1'))
    # Batch landscape and portrait images separately (less padding per batch).
    group_by_aspect_ratio: bool = True


@dataclass
class TrainConfig:
    # Length of the schedule in epochs (passes over the training set).
    epochs: int = checked(36, min=1)
    # Epochs after which the learning rate is multiplied by 0.1.
    lr_steps: list[int] = checked(lambda: [27, 33], min=1)
    # Images per process and step (the total batch is this x the number of processes).
    batch_size: int = checked(2, min=1)
    # Learning rate for a total batch of base_batch_size images; scaled linearly to the real total.
    base_lr: float = checked(0.01, min=0)
    # The total batch that base_lr is given for (the release: 8 GPUs x 2 images).
    base_batch_size: int = checked(16, min=1)
    # "sgd" (the release's, with momentum) or "adamw".
    optimizer: str = checked("sgd", choices=('sgd', 'adamw'))
    # SGD momentum, 0-1 (SGD only).
    momentum: float = checked(0.9, min=0, max=1)
    # L2 weight decay (SGD) or decoupled weight decay (AdamW), >= 0.
    weight_decay: float = checked(1e-4, min=0)
    # Iterations of linear learning-rate warm-up at the start; 0 disables.
    warmup_iters: int = checked(500, min=0)
    # Learning rate at the first iteration, as a fraction of the scheduled one, 0-1.
    warmup_ratio: float = checked(0.01, min=0, max=1)
    # Maximum global gradient norm (clipping); 0 disables.
    grad_clip: float = checked(35.0, min=0)
    # Focusing exponent of the category focal loss, >= 0.
    focal_gamma: float = checked(2.0, min=0)
    # Weight of positive cells in the category focal loss, 0-1.
    focal_alpha: float = checked(0.25, min=0, max=1)
    # Weight of the category loss in the total loss.
    focal_weight: float = checked(1.0, min=0)
    # Weight of the mask (dice) loss in the total loss.
    dice_weight: float = checked(3.0, min=0)
    # Mixed precision: float16 on CUDA, bfloat16 on the CPU.
    amp: bool = False
    # Seed of every random generator (data order, augmentation, initialisation).
    seed: int = 0
    # Epochs between validations (mask AP on data.val_ann); 0 disables.
    val_interval: int = checked(1, min=0)
    # Non-finite losses in a row (those steps are skipped) before the run stops with an error.
    max_bad_steps: int = checked(20, min=1)
    # Iterations between log lines and metrics.jsonl rows.
    log_interval: int = checked(20, min=1)
    # Stop after this many iterations in all; 0 runs the whole schedule.
    max_iters: int = checked(0, min=0)
    # epoch_N.pth files kept in the work dir, the newest ones; 0 keeps them all.
    keep_checkpoints: int = checked(0, min=0)
    # Watch the run (engine/health.py): one warning line in train.log and metrics.jsonl per problem.
    health_checks: bool = True
    # Iterations averaged by the loss and positive-count checks.
    health_window: int = checked(20, min=1)
    # Warn when a level gets no positive cell for this many iterations in a row.
    health_level_idle_iters: int = checked(200, min=1)
    # Iterations after the warm-up (and the first window) before the loss-trend checks.
    health_patience: int = checked(200, min=0)
    # Warn when the mask loss fell by less than this fraction of its start, 0-1.
    health_min_mask_drop: float = checked(0.05, min=0, max=1)
    # The category loss counts as collapsed below this fraction of its start, 0-1.
    health_category_collapse: float = checked(0.1, min=0, max=1)
    # Warn below this many positive cells per instance (window mean).
    health_min_cells_per_instance: float = checked(1.0, min=0)
    # Dice loss divisor: "pairs", the number of (cell, instance) pairs (the authors' release,
    # mmdetection 2.x), or "positive_cells", the number of positive grid cells (mmdetection 3.x).
    dice_normalizer: str = checked("pairs", choices=("pairs", "positive_cells"))


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


def _number_from_text(value: Any, kind: type) -> Any:
    """``value`` parsed as a Python number literal when it is a string ("1e-3", "1_000", "0x10";
    for floats also "inf"), else unchanged. YAML 1.1 reads "1e-3" (no dot) as a string;
    Python's rule is the one users expect."""
    if not isinstance(value, str):
        return value
    try:
        number = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        number = None
    if isinstance(number, (int, float)) and not isinstance(number, bool):
        return number
    try:
        return kind(value.strip())
    except ValueError:
        return value


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
        value = _number_from_text(value, float)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
        return float(value)
    if hint is int:
        value = _number_from_text(value, int)
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


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def _check_rule(value: Any, rule: dict[str, Any], key: str) -> None:
    if rule["nonempty"] and isinstance(value, list) and not value:
        raise ConfigError(f"config key '{key}' must not be an empty list")
    if rule["length"] is not None and isinstance(value, list) and len(value) != rule["length"]:
        raise ConfigError(f"config key '{key}' must have {rule['length']} entries, got {len(value)}: {value!r}")
    if rule["item_length"] is not None:
        for index, item in enumerate(value):
            if not isinstance(item, list) or len(item) != rule["item_length"]:
                raise ConfigError(f"config key '{key}[{index}]' must have {rule['item_length']} entries, got {item!r}")
    if rule["choices"] is not None and value not in rule["choices"]:
        allowed = ", ".join(repr(c) for c in rule["choices"])
        raise ConfigError(f"config key '{key}' must be one of {allowed}, got {value!r}")
    low, high = rule["min"], rule["max"]
    for leaf in _leaves(value):
        if not isinstance(leaf, (int, float)) or isinstance(leaf, bool):
            continue
        if leaf != leaf or (low is not None and (leaf < low or (rule["above_min"] and leaf == low))):
            bound = f"greater than {low}" if rule["above_min"] else f"at least {low}"
            raise ConfigError(f"config key '{key}' must be {bound}, got {value!r}")
        if high is not None and leaf > high:
            raise ConfigError(f"config key '{key}' must be at most {high}, got {value!r}")


def validate_fields(obj: Any, prefix: str = "") -> None:
    """Check one config section's fields (and those of its sub-sections) against their declared
    ranges; ``prefix`` ("train.") names the keys in the error."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            validate_fields(value, f"{prefix}{f.name}.")
        elif "rule" in f.metadata:
            _check_rule(value, f.metadata["rule"], prefix + f.name)


def validate(cfg: Config) -> Config:
    """Check every field against its declared range and the rules that tie fields together;
    raises ``ConfigError`` naming the key. Returns ``cfg``."""
    validate_fields(cfg)
    model = cfg.model
    for index, (low, high) in enumerate(model.scale_ranges):
        if low > high:
            raise ConfigError(f"config key 'model.scale_ranges[{index}]' is [low, high] with low <= high, "
                              f"got {[low, high]!r}")
    return cfg


def config_from_dict(values: dict[str, Any]) -> Config:
    """A validated ``Config`` from a nested dict (a YAML file's or a checkpoint's)."""
    cfg = Config()
    _update(cfg, values)
    return validate(cfg)


def apply_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """Apply ``section.key=value`` strings, then ``validate``. Values are parsed as YAML (``3``,
    ``[1, 2]``, ``true``); numbers in any form Python accepts (``1e-3``)."""
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
    return validate(cfg)


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
