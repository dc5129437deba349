"""Checkpoint formats: the authors' release, mmdetection, the earlier port and torchvision load
into the model and give the same outputs as this project's own format; strict loading errors;
unreadable files; atomic saving."""

from __future__ import annotations

import json
import random
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from solov2.checkpoint import (
    CheckpointError,
    atomic_save,
    detect_format,
    load_checkpoint,
    load_weights,
    make_checkpoint,
)
from solov2.config import load_config
from solov2.model import SOLOv2
from solov2.safe_unpickle import Placeholder

KEY_FILES = {
    "official": "keys-official-solo-light-r18.json",
    "mmdet": "keys-mmdet-light-r18.json",
    "seed_port": "keys-seed-port-light-r18.json",
}
CLASS_KEYS = ["head.category_pred.bias", "head.category_pred.weight"]
# Grid sizes do not change any weight shape; small grids keep the forward passes cheap.
SMALL = ("model.grids=[10, 8, 6, 4, 3]",)


@pytest.fixture(scope="module")
def source(random_model):
    """A randomly filled light_448_r18 model, a fixed input batch and the model's outputs."""
    model = random_model("light_448_r18", seed=11, overrides=SMALL)
    images = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        outputs = model(images)
    return model, images, outputs


def fresh_model(preset="light_448_r18", overrides=()):
    torch.manual_seed(123)
    return SOLOv2(load_config(preset, [*SMALL, *overrides]).model).eval()


def all_outputs(outputs):
    return [*outputs.category_logits, *outputs.kernels, outputs.mask_features]


def assert_same_outputs(model, images, expected):
    with torch.no_grad():
        got = model(images)
    for a, b in zip(all_outputs(got), all_outputs(expected)):
        assert torch.equal(a, b)


def assert_same_state(model_a, model_b):
    a, b = model_a.state_dict(), model_b.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def save_foreign(state_dict, fmt, path):
    """Save the way each format's files are saved."""
    if fmt == "official":  # mmdetection v1 save_checkpoint: meta + state_dict (+ optimizer)
        torch.save({"meta": {"mmdet_version": "1.0.0+unknown", "config": "model = dict(type='SOLOv2')",
                             "epoch": 36, "iter": 263000, "CLASSES": tuple(f"class{i}" for i in range(80))},
                    "state_dict": OrderedDict(state_dict)}, path)
    elif fmt == "mmdet":  # mmengine: meta, state_dict, optimizer, message_hub ...
        torch.save({"meta": {"mmdet_version": "3.0.0", "epoch": 36, "dataset_meta": {"classes": ["a"] * 80}},
                    "state_dict": OrderedDict(state_dict),
                    "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]},
                    "message_hub": {"log_scalars": {}}}, path)
    elif fmt in ("seed_port", "torchvision"):  # a bare state dict
        torch.save(OrderedDict(state_dict), path)
    else:
        raise AssertionError(fmt)


@pytest.mark.parametrize("fmt", sorted(KEY_FILES))
def test_inverse_mapping_gives_the_reference_key_lists(fmt, source, to_foreign, key_lists_dir):
    """The foreign state dicts built for these tests have exactly the keys and shapes of the
    real checkpoints (tests/data/keys-*.json)."""
    model, _, _ = source
    reference = json.loads((key_lists_dir / KEY_FILES[fmt]).read_text())
    ours = {k: list(v.shape) for k, v in to_foreign(model.state_dict(), fmt).items()}
    assert ours == reference


@pytest.mark.parametrize("fmt", sorted(KEY_FILES))
def test_foreign_formats_load_and_give_identical_outputs(fmt, source, to_foreign, tmp_path):
    model, images, expected = source
    foreign_path = tmp_path / f"{fmt}.pth"
    save_foreign(to_foreign(model.state_dict(), fmt), fmt, foreign_path)
    own_path = tmp_path / "own.pth"
    cfg = load_config("light_448_r18")
    atomic_save(make_checkpoint(model, cfg.to_dict()), own_path)

    loaded = load_checkpoint(foreign_path)
    assert loaded.format == fmt
    assert loaded.config is None
    own = load_checkpoint(own_path)
    assert own.format == "solov2" and own.config == cfg.to_dict()
    assert loaded.state_dict.keys() == own.state_dict.keys()

    from_foreign, from_own = fresh_model(), fresh_model()
    with torch.no_grad():  # sanity: before loading, the outputs differ
        before = from_foreign(images)
    assert not torch.equal(before.mask_features, expected.mask_features)
    assert load_weights(from_foreign, loaded.state_dict, source=str(foreign_path)) == []
    assert load_weights(from_own, own.state_dict, source=str(own_path)) == []
    assert_same_state(from_foreign, model)
    assert_same_state(from_foreign, from_own)
    assert_same_outputs(from_foreign, images, expected)
    assert_same_outputs(from_own, images, expected)


def test_detect_format_on_key_sets(source, to_foreign):
    model, _, _ = source
    sd = model.state_dict()
    assert detect_format(sd) == "solov2"
    for fmt in KEY_FILES:
        assert detect_format(to_foreign(sd, fmt)) == fmt
    backbone = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    assert detect_format({**backbone, "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}) == "torchvision"
    with pytest.raises(CheckpointError, match="unrecognised"):
        detect_format({"encoder.weight": torch.zeros(1)})


def test_torchvision_weights_load_into_the_backbone_only(source, tmp_path):
    model, _, _ = source
    tv = {k[len("backbone."):]: v.clone() for k, v in model.state_dict().items() if k.startswith("backbone.")}
    tv["fc.weight"] = torch.randn(1000, 512)
    tv["fc.bias"] = torch.randn(1000)
    path = tmp_path / "resnet18-f37072fd.pth"
    save_foreign(tv, "torchvision", path)
    loaded = load_checkpoint(path)
    assert loaded.format == "torchvision"
    assert all(k.startswith("backbone.") for k in loaded.state_dict)
    assert not any(".fc." in k for k in loaded.state_dict)
    assert len(loaded.state_dict) == len(tv) - 2

    target = fresh_model()
    rest_before = {k: v.clone() for k, v in target.state_dict().items() if not k.startswith("backbone.")}
    assert load_weights(target, loaded.state_dict, source=str(path), backbone_only=True) == []
    for k, v in target.state_dict().items():
        if k.startswith("backbone."):
            assert torch.equal(v, model.state_dict()[k]), k
        else:
            assert torch.equal(v, rest_before[k]), k
    # Loading it as a whole model is an error that lists the head keys as missing.
    with pytest.raises(CheckpointError, match="missing") as info:
        load_weights(fresh_model(), loaded.state_dict, source=str(path))
    assert str(path) in str(info.value) and "fpn." in str(info.value)
    # A ResNet-18 does not fit a ResNet-50 backbone.
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_weights(fresh_model("light_448_r50"), loaded.state_dict, source=str(path), backbone_only=True)


def test_strict_errors_list_keys_and_name_the_file(source, tmp_path):
    model, _, _ = source
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    del sd["head.kernel_pred.bias"]
    sd["head.extra.weight"] = torch.zeros(3)
    sd["fpn.lateral_convs.0.weight"] = torch.zeros(256, 65, 1, 1)
    path = tmp_path / "broken.pth"
    atomic_save(make_checkpoint(nn.Module(), {}) | {"model": sd}, path)
    loaded = load_checkpoint(path)
    target = fresh_model()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_weights(target, loaded.state_dict, source=str(path))
    message = str(info.value)
    for part in (str(path), "missing", "head.kernel_pred.bias", "unexpected", "head.extra.weight",
                 "fpn.lateral_convs.0.weight", "(256, 65, 1, 1)", "(256, 64, 1, 1)"):
        assert part in message, part
    # Nothing was loaded.
    for k, v in target.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_class_count_mismatch_skips_only_the_category_output(source, to_foreign, tmp_path):
    model, _, _ = source
    path = tmp_path / "SOLOv2_LIGHT_448_R18_3x.pth"
    save_foreign(to_foreign(model.state_dict(), "official"), "official", path)
    loaded = load_checkpoint(path)
    target = fresh_model(overrides=("model.num_classes=3",))
    init = {k: target.state_dict()[k].clone() for k in CLASS_KEYS}
    with pytest.warns(UserWarning, match="80 classes and the model 3") as record:
        skipped = load_weights(target, loaded.state_dict, source=str(path))
    assert str(path) in str(record[0].message)
    assert sorted(skipped) == CLASS_KEYS
    for k, v in target.state_dict().items():
        if k in CLASS_KEYS:
            assert torch.equal(v, init[k]) and v.shape[0] == 3
        else:
            assert torch.equal(v, model.state_dict()[k]), k
    with pytest.raises(CheckpointError, match="head.category_pred.weight"):
        load_weights(fresh_model(overrides=("model.num_classes=3",)), loaded.state_dict,
                     source=str(path), allow_class_mismatch=False)
    # A class mismatch together with another problem is an error, with no "not loaded" warning
    # before it (warnings turned into errors here would raise UserWarning instead).
    broken = dict(loaded.state_dict)
    del broken["head.kernel_pred.bias"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError, match="head.kernel_pred.bias"):
            load_weights(fresh_model(overrides=("model.num_classes=3",)), broken, source=str(path))
        # Category weight missing, its bias of another class count: an error, not a KeyError.
        broken = dict(loaded.state_dict)
        del broken["head.category_pred.weight"]
        with pytest.raises(CheckpointError, match="head.category_pred.weight"):
            load_weights(fresh_model(overrides=("model.num_classes=3",)), broken, source=str(path))


def test_wrong_preset_is_a_clear_error(source, tmp_path):
    model, _, _ = source
    path = tmp_path / "r18.pth"
    atomic_save(make_checkpoint(model, {}), path)
    loaded = load_checkpoint(path)
    with pytest.raises(CheckpointError) as info:
        load_weights(fresh_model("light_448_r50"), loaded.state_dict, source=str(path))
    message = str(info.value)
    assert str(path) in message and "--config" in message
    assert "missing" in message and "backbone.layer1.0.conv3.weight" in message
    assert "shape mismatch" in message


def test_unreadable_files_name_the_file(tmp_path):
    missing = tmp_path / "missing.pth"
    with pytest.raises(CheckpointError, match="not found") as info:
        load_checkpoint(missing)
    assert str(missing) in str(info.value)

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(corrupt)
    assert str(corrupt) in str(info.value)

    truncated = tmp_path / "truncated.pth"
    torch.save({"state_dict": {"backbone.conv1.weight": torch.randn(64, 3, 7, 7)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(truncated)
    assert str(truncated) in str(info.value)

    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pth"):
        load_checkpoint(empty)

    not_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(2), torch.ones(2)], not_dict)
    with pytest.raises(CheckpointError, match="list") as info:
        load_checkpoint(not_dict)
    assert str(not_dict) in str(info.value)

    no_tensors = tmp_path / "no_tensors.pth"
    torch.save({"epoch": 3, "lr": 0.01}, no_tensors)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(no_tensors)
    assert str(no_tensors) in str(info.value)

    unknown = tmp_path / "unknown.pth"
    torch.save({"encoder.layer.weight": torch.zeros(2)}, unknown)
    with pytest.raises(CheckpointError, match="unrecognised") as info:
        load_checkpoint(unknown)
    assert str(unknown) in str(info.value)


@pytest.mark.parametrize("fmt", ["solov2", "official", "seed_port"])
def test_module_prefix_is_stripped(fmt, source, to_foreign, tmp_path):
    model, images, expected = source
    sd = model.state_dict() if fmt == "solov2" else to_foreign(model.state_dict(), fmt)
    prefixed = {f"module.{k}": v for k, v in sd.items()}
    path = tmp_path / "dp.pth"
    if fmt == "official":
        torch.save({"state_dict": prefixed, "meta": {}}, path)
    else:
        torch.save(prefixed, path)
    loaded = load_checkpoint(path)
    assert loaded.format == fmt
    assert not any(k.startswith("module.") for k in loaded.state_dict)
    target = fresh_model()
    load_weights(target, loaded.state_dict, source=str(path))
    assert_same_outputs(target, images, expected)


def test_own_format_round_trip_and_extras(source, tmp_path):
    model, images, expected = source
    cfg = load_config("light_448_r18")
    path = tmp_path / "nested" / "dir" / "epoch_3.pth"  # parents are created
    atomic_save(make_checkpoint(nn.DataParallel(model), cfg.to_dict(), epoch=3), path)
    loaded = load_checkpoint(path)
    assert loaded.format == "solov2"
    assert loaded.raw["epoch"] == 3 and loaded.raw["version"] == 1
    assert not any(k.startswith("module.") for k in loaded.state_dict)  # DataParallel unwrapped
    target = fresh_model()
    load_weights(target, loaded.state_dict, source=str(path))
    assert_same_outputs(target, images, expected)
    # A bare state dict of this project's names is recognised too.
    bare = tmp_path / "bare.pth"
    torch.save(model.state_dict(), bare)
    assert load_checkpoint(bare).format == "solov2"


class WritesAFileWhenUnpickled:
    """Unpickling this calls Path.write_text: stands in for a file that runs code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).write_text, (self.marker, "code from the file ran"))


def test_files_that_would_run_code_load_their_weights_without_running_it(source, to_foreign, tmp_path,
                                                                         monkeypatch):
    model, images, expected = source
    marker = tmp_path / "marker.txt"
    path = tmp_path / "foreign.pth"
    torch.save({"state_dict": to_foreign(model.state_dict(), "official"),
                "meta": {"hook": WritesAFileWhenUnpickled(marker)}}, path)
    monkeypatch.delenv("SOLOV2_TRUST_PICKLE", raising=False)
    loaded = load_checkpoint(path)
    assert not marker.exists()  # nothing from the file ran
    assert loaded.format == "official"
    hook = loaded.raw["meta"]["hook"]
    # Path.write_text is pickled as a getattr call: getattr is not called, nor what it returns.
    assert isinstance(hook, Placeholder) and hook.qualified_name == "__builtin__.getattr()"
    target = fresh_model()
    load_weights(target, loaded.state_dict, source=str(path))
    assert_same_outputs(target, images, expected)
    # Trusted, the file is unpickled for real (and its code runs).
    assert load_checkpoint(path, trust_pickle=True).format == "official"
    assert marker.read_text() == "code from the file ran"
    marker.unlink()
    monkeypatch.setenv("SOLOV2_TRUST_PICKLE", "1")
    assert load_checkpoint(path).format == "official" and marker.exists()


def test_code_in_place_of_the_weights_is_an_error(tmp_path, monkeypatch):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": {"backbone.conv1.weight": WritesAFileWhenUnpickled(marker)}}, path)
    monkeypatch.delenv("SOLOV2_TRUST_PICKLE", raising=False)
    with pytest.raises(CheckpointError, match="no state dict of tensors") as info:
        load_checkpoint(path)
    assert "getattr" in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()


def test_numpy_values_load_without_trust(source, tmp_path, monkeypatch):
    """Training checkpoints hold NumPy's RNG state; mmdetection metadata can hold NumPy values."""
    model, _, _ = source
    monkeypatch.delenv("SOLOV2_TRUST_PICKLE", raising=False)
    state = np.random.RandomState(3).get_state()
    path = tmp_path / "epoch_1.pth"
    atomic_save(make_checkpoint(model, load_config("light_448_r18").to_dict(), rng={"numpy": state},
                                best=np.float64(0.25), seen=np.arange(4, dtype=np.int32)), path)
    raw = load_checkpoint(path).raw
    assert raw["rng"]["numpy"][0] == "MT19937" and np.array_equal(raw["rng"]["numpy"][1], state[1])
    assert raw["best"] == 0.25 and raw["seen"].dtype == np.int32


class ExplodesWhenPickled:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_atomic_save_keeps_the_previous_file_when_saving_fails(tmp_path):
    path = tmp_path / "last.pth"
    atomic_save({"model": {"w": torch.arange(5.0)}, "epoch": 1}, path)
    good_bytes = path.read_bytes()
    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_save({"model": {"w": torch.randn(1000, 1000)}, "epoch": 2, "bad": ExplodesWhenPickled()}, path)
    assert path.read_bytes() == good_bytes
    again = torch.load(path, weights_only=False)
    assert again["epoch"] == 1 and torch.equal(again["model"]["w"], torch.arange(5.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]  # no temporary file left
    # Failing on a path that does not exist yet leaves nothing behind.
    with pytest.raises(RuntimeError):
        atomic_save({"bad": ExplodesWhenPickled()}, tmp_path / "new.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]
