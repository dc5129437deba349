"""The settings the runtime reads from an exported model's metadata, and their overrides.

``solov2 export`` stores the full training config as YAML under the metadata key
``solov2_config``; the runtime needs the model's grids, strides and classes (fixed by the
graph), the input settings and the test thresholds (both may be overridden).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Iterable

from .classes import class_names_and_ids
from .yaml_subset import parse_yaml, scalar

CONFIG_KEY = "solov2_config"


class SettingsError(ValueError):
    """Metadata or an override that does not fit the runtime's settings."""


@dataclass
class InputSettings:
    test_scale: list[int] = field(default_factory=lambda: [768, 448])  # (long, short) edges, pixels
    mean: list[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])  # RGB, 0-255 scale
    std: list[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])  # RGB, 0-255 scale
    size_divisor: int = 32  # inputs are zero-padded to multiples of this


@dataclass
class TestSettings:
    nms_pre: int = 500  # candidates kept for Matrix NMS, by score
    score_thr: float = 0.1  # category probability a candidate needs, 0-1
    mask_thr: float = 0.5  # mask probability a pixel needs, 0-1
    update_thr: float = 0.05  # score after Matrix NMS an instance needs, 0-1
    nms_kernel: str = "gaussian"  # Matrix NMS decay: "gaussian" or "linear"
    nms_sigma: float = 2.0  # width of the gaussian decay
    max_per_img: int = 100  # instances returned per image at most


@dataclass
class RuntimeSettings:
    name: str  # the config's name (preset)
    num_classes: int  # categories the model predicts
    grids: list[int]  # grid size S of each level
    strides: list[int]  # stride in pixels of each level (small-mask filter)
    class_names: list[str]  # name of each label
    category_ids: list[int]  # dataset category id of each label
    input: InputSettings = field(default_factory=InputSettings)
    test: TestSettings = field(default_factory=TestSettings)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    if typing.get_origin(hint) is list:
        if not isinstance(value, list):
            raise SettingsError(f"config key '{key}' expects a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str)}[hint]
    if not ok(value):
        raise SettingsError(f"config key '{key}' expects {hint.__name__}, got {value!r}")
    return float(value) if hint is float else value


def _fill(target: Any, values: dict[str, Any], prefix: str, strict: bool) -> None:
    hints = typing.get_type_hints(type(target))
    names = [f.name for f in dataclasses.fields(target)]
    for key, value in values.items():
        if key in names:
            setattr(target, key, _coerce(value, hints[key], prefix + key))
        elif strict:
            raise SettingsError(f"unknown or fixed config key '{prefix}{key}'; the runtime can "
                                f"override {', '.join(prefix + n for n in names)}")


def settings_from_dict(config: dict[str, Any]) -> RuntimeSettings:
    """The runtime's settings from a solov2 config dict (other keys are ignored)."""
    try:
        model = config["model"]
        num_classes = _coerce(model["num_classes"], int, "model.num_classes")
        names, ids = class_names_and_ids(num_classes, model.get("class_names") or [],
                                         model.get("category_ids") or [])
        settings = RuntimeSettings(
            name=str(config.get("name", "")), num_classes=num_classes,
            grids=_coerce(model["grids"], list[int], "model.grids"),
            strides=_coerce(model["strides"], list[int], "model.strides"),
            class_names=[str(n) for n in names], category_ids=[int(i) for i in ids],
        )
    except (KeyError, TypeError) as err:
        raise SettingsError(f"the stored config lacks model settings ({err})") from err
    _fill(settings.input, config.get("input") or {}, "input.", strict=False)
    _fill(settings.test, config.get("test") or {}, "test.", strict=False)
    return settings


def settings_from_yaml(text: str) -> RuntimeSettings:
    try:
        config = parse_yaml(text)
    except ValueError as err:
        raise SettingsError(f"cannot read the stored config: {err}") from err
    if not isinstance(config, dict):
        raise SettingsError("the stored config is not a mapping")
    return settings_from_dict(config)


def apply_overrides(settings: RuntimeSettings, overrides: Iterable[str]) -> RuntimeSettings:
    """Apply ``test.KEY=VALUE`` / ``input.KEY=VALUE`` strings (in place; returns ``settings``).
    Values are read as YAML scalars or flow lists (``0.3``, ``[640, 384]``)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        section, _, name = key.strip().partition(".")
        if not sep or section not in ("test", "input") or not name:
            raise SettingsError(f"override '{item}': only test.KEY=VALUE and input.KEY=VALUE can "
                                "be changed (model settings are fixed in an exported graph)")
        try:
            value = scalar(raw)
        except ValueError as err:
            raise SettingsError(f"override '{item}': {err}") from err
        _fill(getattr(settings, section), {name: value}, section + ".", strict=True)
    if settings.test.nms_kernel not in ("gaussian", "linear"):
        raise SettingsError(f"test.nms_kernel must be 'gaussian' or 'linear', got {settings.test.nms_kernel!r}")
    return settings
