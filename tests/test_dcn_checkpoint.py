"""Checkpoints of the DCN and ResNeXt models: the authors' and mmdetection's key layouts
(offset convs as ``<name>.conv_offset.*``, the older ``<name>_offset.*`` too), torchvision
ResNeXt backbone weights, mmengine-style files with foreign objects, and the error for a
checkpoint of the other light DCN preset."""

from __future__ import annotations

import json
import re
import sys
import types
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from _dcn_helpers import tiny_dcn_model
from _train_data import TINY_MODEL
from solov2.checkpoint import CheckpointError, atomic_save, load_checkpoint, load_weights, make_checkpoint
from solov2.config import load_config
from solov2.model import SOLOv2
from solov2.safe_unpickle import Placeholder

DATA = Path(__file__).parent / "data"
# Key lists (with shapes) of the full-size presets under each source's names, written from
# the sources' naming rules (conftest's to_foreign); see test_key_lists_are_current.
KEY_LISTS = {
    ("official", "light_512_dcn_r50"): "keys-official-light-512-dcn-r50.json",
    ("mmdet", "light_512_dcn_r50_mmdet"): "keys-mmdet-light-r50-dcn.json",
    ("official", "r101_dcn_3x"): "keys-official-r101-dcn.json",
    ("mmdet", "r101_dcn_3x"): "keys-mmdet-r101-dcn.json",
    ("official", "x101_dcn_3x"): "keys-official-x101-dcn.json",
}
# Keys each source's files have, spelled out from the sources (mmdet v1 ConvModule / mmcv
# ModulatedDeformConv2dPack: the deformable conv is the module's ``conv``, its offsets
# ``conv.conv_offset``; the backbone's is ``conv2``).
EXPECTED_KEYS = {
    "official": ["backbone.layer2.0.conv2.weight", "backbone.layer2.0.conv2.conv_offset.weight",
                 "backbone.layer4.2.conv2.conv_offset.bias", "bbox_head.kernel_convs.3.conv.conv_offset.weight",
                 "bbox_head.cate_convs.0.conv.conv_offset.weight",
                 "mask_feat_head.convs_all_levels.3.conv2.conv.conv_offset.weight",
                 "mask_feat_head.conv_pred.0.conv.conv_offset.weight"],
    "mmdet": ["backbone.layer3.22.conv2.conv_offset.weight", "mask_head.kernel_convs.0.conv.conv_offset.weight",
              "mask_head.cls_convs.3.conv.conv_offset.bias",
              "mask_head.mask_feature_head.convs_all_levels.0.conv0.conv.conv_offset.weight",
              "mask_head.mask_feature_head.conv_pred.conv.conv_offset.weight"],
}


def to_old_offset_spelling(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``<name>.conv_offset.*`` -> ``<name>_offset.*`` (``layer2.0.conv2_offset.weight``)."""
    return {re.sub(r"\.conv_offset\.(weight|bias)$", r"_offset.\1", k): v for k, v in state_dict.items()}


def save_checkpoint_file(state_dict, path, **extra):
    torch.save({"meta": {"epoch": 36}, "state_dict": OrderedDict(state_dict), **extra}, path)


def assert_same_outputs(a, b, images):
    with torch.no_grad():
        out_a, out_b = a(images), b(images)
    for x, y in zip([*out_a.category_logits, *out_a.kernels, out_a.mask_features],
                    [*out_b.category_logits, *out_b.kernels, out_b.mask_features]):
        assert torch.equal(x, y)


@pytest.fixture(scope="module")
def r101_dcn():
    model, cfg = tiny_dcn_model("r101_dcn_3x")
    return model, cfg, torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("old_spelling", [False, True])
@pytest.mark.parametrize("fmt", ["official", "mmdet"])
def test_dcn_layouts_load_strictly_and_give_identical_outputs(fmt, old_spelling, r101_dcn, to_foreign, tmp_path):
    model, cfg, images = r101_dcn
    foreign = to_foreign(model.state_dict(), fmt)
    assert set(EXPECTED_KEYS[fmt]) <= set(foreign)
    if old_spelling:
        foreign = to_old_offset_spelling(foreign)
        assert "backbone.layer2.0.conv2_offset.weight" in foreign
    save_checkpoint_file(foreign, tmp_path / "foreign.pth")
    own_path = tmp_path / "own.pth"
    atomic_save(make_checkpoint(model, cfg.to_dict()), own_path)
    loaded, own = load_checkpoint(tmp_path / "foreign.pth"), load_checkpoint(own_path)
    assert loaded.format == fmt and loaded.state_dict.keys() == own.state_dict.keys()
    from_foreign, from_own = SOLOv2(cfg.model).eval(), SOLOv2(cfg.model).eval()
    assert load_weights(from_foreign, loaded.state_dict, source="foreign") == []
    assert load_weights(from_own, own.state_dict, source="own") == []
    assert_same_outputs(from_foreign, model, images)
    assert_same_outputs(from_own, model, images)


def test_authors_light_dcn_checkpoint_in_the_mmdet_preset_says_which_preset(to_foreign, tmp_path):
    model, _ = tiny_dcn_model("light_512_dcn_r50")
    path = tmp_path / "authors.pth"
    save_checkpoint_file(to_foreign(model.state_dict(), "official"), path)
    wrong = SOLOv2(tiny_dcn_model("light_512_dcn_r50_mmdet")[1].model)
    with pytest.raises(CheckpointError) as info:
        load_weights(wrong, load_checkpoint(path).state_dict, source=str(path))
    message = str(info.value)
    assert "DCN v1, the model's v2" in message and "light_512_dcn_r50 (authors'" in message
    plain = SOLOv2(load_config("light_448_r50", [*TINY_MODEL, "model.head_stacked_convs=3"]).model)
    with pytest.raises(CheckpointError, match="the file has deformable convs where the model has plain ones"):
        load_weights(plain, load_checkpoint(path).state_dict, source=str(path))


def test_torchvision_resnext_weights_load_as_backbone_weights(tmp_path):
    donor = SOLOv2(load_config("x101_3x", ["model.fpn_channels=64"]).model)
    with torch.no_grad():
        for p in donor.backbone.parameters():
            p.normal_()
    weights = {k: v.clone() for k, v in donor.backbone.state_dict().items()}
    weights["fc.weight"], weights["fc.bias"] = torch.randn(1000, 2048), torch.randn(1000)
    path = tmp_path / "resnext101_64x4d-173b62eb.pth"
    torch.save(weights, path)
    loaded = load_checkpoint(path)
    assert loaded.format == "torchvision"
    plain = SOLOv2(load_config("x101_3x", ["model.fpn_channels=64"]).model)
    load_weights(plain, loaded.state_dict, source=str(path), backbone_only=True)
    for k, v in donor.backbone.state_dict().items():
        assert torch.equal(plain.backbone.state_dict()[k], v), k
    # The DCN preset's backbone has the same conv weights plus offset convs, which ImageNet
    # files do not have: they keep their zero initialisation (the release's non-strict load).
    target = SOLOv2(load_config("x101_dcn_3x", ["model.fpn_channels=64"]).model)
    load_weights(target, loaded.state_dict, source=str(path), backbone_only=True)
    state = target.backbone.state_dict()
    for k, v in donor.backbone.state_dict().items():
        assert torch.equal(state[k], v), k
    offsets = [v for k, v in state.items() if ".conv_offset." in k]
    assert len(offsets) == 2 * 30 and all(v.abs().sum() == 0 for v in offsets)
    del weights["layer4.2.conv3.weight"]  # anything else missing is still an error
    torch.save(weights, path)
    with pytest.raises(CheckpointError, match="1 missing keys: backbone.layer4.2.conv3.weight"):
        load_weights(target, load_checkpoint(path).state_dict, source=str(path), backbone_only=True)


class WritesAFileWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).write_text, (self.marker, "code from the file ran"))


def _mmengine_classes():
    """Stand-ins for mmengine's MessageHub and a scheduler, importable under mmengine's module
    names while the file is written (and gone when it is read, as without mmengine)."""
    hub_module = types.ModuleType("mmengine.logging.message_hub")
    sched_module = types.ModuleType("mmengine.optim.scheduler.lr_scheduler")

    class MessageHub:
        def __init__(self):
            self.runtime_info = {"epoch": 36, "iter": 263000}
            self.log_scalars = {"train/loss": [0.5, 0.4]}

    class MultiStepLR:
        def __init__(self):
            self.milestones, self.gamma = [27, 33], 0.1

    MessageHub.__module__, MultiStepLR.__module__ = hub_module.__name__, sched_module.__name__
    MessageHub.__qualname__, MultiStepLR.__qualname__ = "MessageHub", "MultiStepLR"
    hub_module.MessageHub, sched_module.MultiStepLR = MessageHub, MultiStepLR
    return {hub_module.__name__: hub_module, sched_module.__name__: sched_module}, MessageHub, MultiStepLR


def test_mmengine_checkpoint_with_foreign_objects_loads_without_running_code(r101_dcn, to_foreign, tmp_path,
                                                                             monkeypatch):
    model, cfg, images = r101_dcn
    marker = tmp_path / "marker.txt"
    modules, MessageHub, MultiStepLR = _mmengine_classes()
    path = tmp_path / "epoch_36.pth"
    for name in ("mmengine", "mmengine.logging", "mmengine.optim", "mmengine.optim.scheduler"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    save_checkpoint_file(to_foreign(model.state_dict(), "mmdet"), path, message_hub=MessageHub(),
                         optimizer={"state": {}, "param_groups": [{"lr": 0.0001}]},
                         param_schedulers=[MultiStepLR()], hook=WritesAFileWhenUnpickled(marker))
    for name in [*modules, "mmengine", "mmengine.logging", "mmengine.optim", "mmengine.optim.scheduler"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delenv("SOLOV2_TRUST_PICKLE", raising=False)
    loaded = load_checkpoint(path)
    assert not marker.exists()
    assert loaded.format == "mmdet"
    hub = loaded.raw["message_hub"]
    assert isinstance(hub, Placeholder) and hub.qualified_name == "mmengine.logging.message_hub.MessageHub"
    assert hub.state["runtime_info"] == {"epoch": 36, "iter": 263000}  # its data, as plain values
    assert isinstance(loaded.raw["param_schedulers"][0], Placeholder)
    target = SOLOv2(cfg.model).eval()
    load_weights(target, loaded.state_dict, source=str(path))
    assert_same_outputs(target, model, images)


@pytest.mark.parametrize("fmt,preset", sorted(KEY_LISTS))
def test_key_lists_are_current(fmt, preset, to_foreign):
    """The DCN key lists in tests/data are what the sources' naming rules give for the preset."""
    model = SOLOv2(load_config(preset).model)
    keys = {k: list(v.shape) for k, v in to_foreign(model.state_dict(), fmt).items()}
    assert keys == json.loads((DATA / KEY_LISTS[fmt, preset]).read_text())
    assert set(EXPECTED_KEYS[fmt]) <= set(keys) or "light" in preset
