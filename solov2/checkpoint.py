"""Checkpoint formats: this project's own, the authors' release, mmdetection 2.x/3.x, the
earlier pure-PyTorch port, and torchvision ImageNet ResNets (docs/design.md, "Checkpoint
formats").

``load_checkpoint`` detects the format from the keys and returns a state dict in this
project's names; ``load_weights`` loads it into a model, strictly by default.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import safe_unpickle
from .atomic import atomic_open

OWN_FORMAT = "solov2"
FORMAT_VERSION = 1
TRUST_PICKLE_ENV = "SOLOV2_TRUST_PICKLE"  # "1": load files that need full unpickling


class CheckpointError(ValueError):
    """A weights file that is missing, unreadable, or does not match the model."""


# (pattern, replacement) pairs applied in order; the first match wins.
_NECK = [
    (r"^neck\.lateral_convs\.(\d+)\.conv\.", r"fpn.lateral_convs.\1."),
    (r"^neck\.fpn_convs\.(\d+)\.conv\.", r"fpn.output_convs.\1."),
]

RENAME_RULES: dict[str, list[tuple[str, str]]] = {
    "official": _NECK + [
        (r"^mask_feat_head\.convs_all_levels\.(\d+)\.conv(\d+)\.(conv|gn)\.", r"mask_branch.levels.\1.\2.\3."),
        (r"^mask_feat_head\.conv_pred\.0\.(conv|gn)\.", r"mask_branch.fuse.\1."),
        (r"^bbox_head\.cate_convs\.(\d+)\.(conv|gn)\.", r"head.category_tower.\1.\2."),
        (r"^bbox_head\.kernel_convs\.(\d+)\.(conv|gn)\.", r"head.kernel_tower.\1.\2."),
        (r"^bbox_head\.solo_cate\.", r"head.category_pred."),
        (r"^bbox_head\.solo_kernel\.", r"head.kernel_pred."),
    ],
    "mmdet": _NECK + [
        (r"^mask_head\.mask_feature_head\.convs_all_levels\.(\d+)\.conv(\d+)\.(conv|gn)\.",
         r"mask_branch.levels.\1.\2.\3."),
        (r"^mask_head\.mask_feature_head\.conv_pred\.(conv|gn)\.", r"mask_branch.fuse.\1."),
        (r"^mask_head\.cls_convs\.(\d+)\.(conv|gn)\.", r"head.category_tower.\1.\2."),
        (r"^mask_head\.kernel_convs\.(\d+)\.(conv|gn)\.", r"head.kernel_tower.\1.\2."),
        (r"^mask_head\.conv_cls\.", r"head.category_pred."),
        (r"^mask_head\.conv_kernel\.", r"head.kernel_pred."),
    ],
    "seed_port": [
        (r"^fpn\.lateral_convs\.(\d+)\.", r"fpn.lateral_convs.\1."),
        (r"^fpn\.fpn_convs\.(\d+)\.", r"fpn.output_convs.\1."),
        (r"^mask_feat_head\.convs_all_levels\.(\d+)\.conv(\d+)\.0\.", r"mask_branch.levels.\1.\2.conv."),
        (r"^mask_feat_head\.convs_all_levels\.(\d+)\.conv(\d+)\.1\.", r"mask_branch.levels.\1.\2.norm."),
        (r"^mask_feat_head\.conv_pred\.0\.", r"mask_branch.fuse.conv."),
        (r"^mask_feat_head\.conv_pred\.1\.", r"mask_branch.fuse.norm."),
        (r"^bbox_head\.cate_convs\.(\d+)\.0\.", r"head.category_tower.\1.conv."),
        (r"^bbox_head\.cate_convs\.(\d+)\.1\.", r"head.category_tower.\1.norm."),
        (r"^bbox_head\.kernel_convs\.(\d+)\.0\.", r"head.kernel_tower.\1.conv."),
        (r"^bbox_head\.kernel_convs\.(\d+)\.1\.", r"head.kernel_tower.\1.norm."),
        (r"^bbox_head\.solo_cate\.", r"head.category_pred."),
        (r"^bbox_head\.solo_kernel\.", r"head.kernel_pred."),
    ],
}

FORMAT_NAMES = {
    OWN_FORMAT: "solov2 checkpoint",
    "official": "authors' SOLO release (mmdetection v1)",
    "mmdet": "mmdetection 2.x/3.x SOLOv2",
    "seed_port": "earlier pure-PyTorch SOLOv2 port",
    "torchvision": "torchvision ImageNet ResNet (backbone only)",
}


@dataclass
class LoadedCheckpoint:
    format: str
    state_dict: dict[str, Tensor]  # in this project's names
    config: dict[str, Any] | None  # the training config, for this project's checkpoints
    raw: dict[str, Any]  # the whole file, for resuming training


def detect_format(state_dict: dict[str, Any]) -> str:
    keys = set(state_dict)
    if "mask_head.conv_cls.weight" in keys or any(k.startswith("mask_head.") for k in keys):
        return "mmdet"
    if any(k.startswith("neck.") for k in keys) and any(k.startswith("bbox_head.") for k in keys):
        return "official"
    if any(k.startswith("fpn.lateral_convs.") for k in keys) and any(k.startswith("bbox_head.") for k in keys):
        return "seed_port"
    if any(k.startswith("fpn.") for k in keys) and any(k.startswith("head.") for k in keys):
        return OWN_FORMAT
    if "conv1.weight" in keys and "layer1.0.conv1.weight" in keys:
        return "torchvision"
    raise CheckpointError(
        "unrecognised weights layout (first keys: " + ", ".join(sorted(keys)[:5]) + "); expected a "
        "solov2 checkpoint, the authors' SOLO release, mmdetection SOLOv2, the earlier port, or a "
        "torchvision ResNet"
    )


def _rename(key: str, rules: list[tuple[str, str]]) -> str:
    for pattern, replacement in rules:
        new, count = re.subn(pattern, replacement, key)
        if count:
            # The release and mmdetection call GroupNorm "gn"; this project calls it "norm".
            return new.replace(".gn.", ".norm.")
    return key


_OLD_OFFSET = re.compile(r"^(.+)_offset\.(weight|bias)$")


def rename_old_offset_keys(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The older spelling of a deformable conv's offset conv, ``<name>_offset.*`` (e.g.
    ``layer2.0.conv2_offset.weight``), as ``<name>.conv_offset.*``, as mmcv's loaders do.
    Renamed only where ``<name>.weight`` exists (the deformable conv itself), so the current
    spelling ``<name>.conv_offset.*`` is never touched."""
    out = {}
    for key, value in state_dict.items():
        match = _OLD_OFFSET.match(key)
        if match and f"{match.group(1)}.weight" in state_dict:
            key = f"{match.group(1)}.conv_offset.{match.group(2)}"
        out[key] = value
    return out


def convert_state_dict(state_dict: dict[str, Tensor], fmt: str) -> dict[str, Tensor]:
    """Rename a foreign state dict's keys to this project's names."""
    if fmt == OWN_FORMAT:
        return dict(state_dict)
    state_dict = rename_old_offset_keys(state_dict)
    if fmt == "torchvision":
        return {f"backbone.{k}": v for k, v in state_dict.items() if not k.startswith("fc.")}
    rules = RENAME_RULES[fmt]
    return {_rename(k, rules): v for k, v in state_dict.items()}


def _strip_module_prefix(state_dict: dict[str, Any]) -> dict[str, Any]:
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


def _numpy_reconstructors() -> list[Any]:
    """What unpickling NumPy arrays and scalars calls (data only; as this project's training
    checkpoints hold NumPy's RNG state): the functions found through NumPy itself, whose module
    moved between NumPy 1 and 2."""
    dtype_classes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGSUVMm"}  # not "O": objects
    return [np.ndarray, np.dtype, np.zeros(1).__reduce__()[0], np.float64(0).__reduce__()[0], *dtype_classes]


def _read(path: Path, trust_pickle: bool) -> Any:
    """torch.load without running code from the file (``weights_only``: tensors, plain Python
    values, NumPy arrays). Files that hold other objects (mmengine's ``message_hub`` and the
    like) are read by ``solov2.safe_unpickle``, which stands in inert placeholders for them;
    ``trust_pickle`` unpickles everything instead."""
    try:
        with torch.serialization.safe_globals(_numpy_reconstructors()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise  # a corrupt file
    if trust_pickle:
        return torch.load(path, map_location="cpu", weights_only=False)
    return torch.load(path, map_location="cpu", weights_only=False,
                      pickle_module=safe_unpickle.module(_numpy_reconstructors()))


def load_checkpoint(path: str | Path, trust_pickle: bool | None = None) -> LoadedCheckpoint:
    """Read a weights file of any supported format; raises CheckpointError naming the file.

    Files are read without running code from them: other Python objects beside the weights
    (mmengine's ``message_hub``, optimizer objects ...) come back as inert placeholders
    (``solov2.safe_unpickle``). ``trust_pickle`` (default: the environment variable
    SOLOV2_TRUST_PICKLE=1) unpickles them for real instead.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    if path.suffix.lower() == ".onnx":
        raise CheckpointError(f"{path}: an ONNX model, not PyTorch weights: run it with --backend onnxruntime "
                              "(or solov2-runtime), or pass the .pth it was exported from")
    if trust_pickle is None:
        trust_pickle = os.environ.get(TRUST_PICKLE_ENV) == "1"
    try:
        raw = _read(path, trust_pickle)
    except CheckpointError:
        raise
    except Exception as err:  # torch raises many types for corrupt files
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a dict of weights, found {type(raw).__name__}")
    config = None
    if raw.get("format") == OWN_FORMAT:
        state_dict, config, fmt = raw["model"], raw.get("config"), OWN_FORMAT
    else:
        state_dict = raw.get("state_dict", raw.get("model", raw))
        if not isinstance(state_dict, dict) or not all(isinstance(v, Tensor) for v in state_dict.values()):
            found = sorted({safe_unpickle.describe(v) for v in getattr(state_dict, "values", list)()
                            if not isinstance(v, Tensor)})[:5]
            raise CheckpointError(f"{path}: no state dict of tensors found in the file"
                                  + (f" (it holds {', '.join(found)})" if found else ""))
        state_dict = _strip_module_prefix(state_dict)
        try:
            fmt = detect_format(state_dict)
        except CheckpointError as err:
            raise CheckpointError(f"{path}: {err}") from err
    return LoadedCheckpoint(fmt, convert_state_dict(state_dict, fmt), config, raw)


def load_weights(
    model: nn.Module,
    state_dict: dict[str, Tensor],
    source: str = "weights",
    allow_class_mismatch: bool = True,
    backbone_only: bool = False,
) -> list[str]:
    """Copy ``state_dict`` into ``model``. Returns the keys skipped.

    Strict: missing, unexpected or mis-shaped keys raise CheckpointError listing them. A
    different class count skips only the category output layer (with a warning) when
    ``allow_class_mismatch``; ``backbone_only`` loads and checks the ``backbone.`` keys alone,
    and a deformable backbone's offset convs (``.conv_offset.``), which ImageNet files do not
    have, keep their zero initialisation when the file lacks them (as the release does).
    """
    own = model.state_dict()
    if backbone_only:
        own = {k: v for k, v in own.items() if k.startswith("backbone.")}
        state_dict = {k: v for k, v in state_dict.items() if k.startswith("backbone.")}
    missing = sorted(set(own) - set(state_dict))
    if backbone_only and not any(".conv_offset." in k for k in state_dict):
        missing = [k for k in missing if ".conv_offset." not in k]
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(
        k for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )
    skipped: list[str] = []
    class_keys = {"head.category_pred.weight", "head.category_pred.bias"}
    if allow_class_mismatch and mismatched and set(mismatched) <= class_keys:
        skipped = mismatched
        mismatched = []
    if missing or unexpected or mismatched:
        lines = [f"{source}: weights do not match the model"]
        for title, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                lines.append(f"  {len(keys)} {title} keys: " + ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else ""))
        for k in mismatched[:8]:
            lines.append(
                f"  shape mismatch {k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
            )
        lines += _dcn_hints(state_dict, own, missing + unexpected + mismatched)
        lines.append("  (is --config the preset these weights were trained with?)")
        raise CheckpointError("\n".join(lines))
    if skipped:  # warned only when the rest loads: an error follows otherwise
        warnings.warn(
            f"{source}: the category output layer has {state_dict[skipped[0]].shape[0]} "
            f"classes and the model {own[skipped[0]].shape[0]}; it was not loaded "
            "and keeps its initialisation",
            stacklevel=2,
        )
    to_load = {k: v for k, v in state_dict.items() if k not in skipped}
    model.load_state_dict(to_load, strict=False)
    return skipped


def _dcn_hints(state_dict: dict[str, Tensor], own: dict[str, Tensor], bad_keys: list[str]) -> list[str]:
    """Lines that say how the file's deformable convolutions differ from the model's."""
    offsets = [k for k in bad_keys if ".conv_offset." in k]
    if not offsets:
        return []
    hints = []
    for key in offsets:
        if key in state_dict and key in own and key.endswith(".weight"):
            kernel = state_dict[key].shape[-1] * state_dict[key].shape[-2]
            file_v, model_v = (("v2" if t.shape[0] % (3 * kernel) == 0 else "v1") for t in (state_dict[key], own[key]))
            if file_v != model_v:
                hints.append(f"  the file's deformable convs are DCN {file_v}, the model's {model_v} ({key})")
                break
    if any(k in own and k not in state_dict for k in offsets):
        hints.append("  the model has deformable convs where the file has plain ones")
    if any(k in state_dict and k not in own for k in offsets):
        hints.append("  the file has deformable convs where the model has plain ones")
    hints.append("  DCN presets: light_512_dcn_r50 (authors' light DCN, v1), light_512_dcn_r50_mmdet "
                 "(mmdetection's light R50-DCN, v2), r101_dcn_3x, x101_dcn_3x")
    return hints


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file beside ``path``, then rename: a crash leaves the old file whole.

    A write that fails (no space left, quota, I/O error) raises ``OSError`` naming ``path`` and
    the system's reason, rather than torch's zip-writer error that hides it; the previous file
    at ``path`` is kept and no temporary file is left."""
    try:
        with atomic_open(path, "wb") as f:
            torch.save(obj, f)
    except RuntimeError as err:
        cause = _os_error_behind(err)
        if cause is None:
            raise
        raise OSError(cause.errno, f"{cause.strerror}: checkpoint not saved (any previous file there is kept)",
                      str(path)) from err


def _os_error_behind(err: BaseException) -> OSError | None:
    """The OSError in an exception's chain of causes and contexts, if any."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def make_checkpoint(model: nn.Module, config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """This project's checkpoint: weights, the config they were trained with, and any extras."""
    module = model.module if hasattr(model, "module") else model
    return {"format": OWN_FORMAT, "version": FORMAT_VERSION, "config": config,
            "model": module.state_dict(), **extra}
