"""``solov2 convert IN OUT [KEY=VALUE ...] [--config NAME]``: foreign checkpoints to solov2
checkpoints that load and give identical outputs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from solov2.checkpoint import FORMAT_NAMES, atomic_save, load_checkpoint, load_weights, make_checkpoint
from solov2.cli import main
from solov2.config import config_from_dict, load_config
from solov2.model import SOLOv2

ROOT = Path(__file__).resolve().parents[1]
# Grid sizes change no weight shape; small grids keep the forward passes cheap.
SMALL = ["model.grids=[10, 8, 6, 4, 3]"]


@pytest.fixture(scope="module")
def source(random_model):
    model = random_model("light_448_r18", seed=21, overrides=tuple(SMALL))
    images = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        outputs = model(images)
    return model, images, outputs


def write_foreign(model, fmt, path, to_foreign):
    sd = OrderedDict(to_foreign(model.state_dict(), fmt))
    if fmt == "seed_port":
        torch.save(sd, path)
    else:
        torch.save({"meta": {"epoch": 36}, "state_dict": sd}, path)
    return path


def same_outputs(model, images, expected):
    with torch.no_grad():
        got = model(images)
    pairs = zip([*got.category_logits, *got.kernels, got.mask_features],
                [*expected.category_logits, *expected.kernels, expected.mask_features])
    return all(torch.equal(a, b) for a, b in pairs)


@pytest.mark.parametrize("fmt", ["official", "mmdet", "seed_port"])
def test_convert_with_config_round_trip(fmt, source, to_foreign, tmp_path, capsys):
    model, images, expected = source
    src = write_foreign(model, fmt, tmp_path / f"{fmt}.pth", to_foreign)
    out = tmp_path / "out" / "converted.pth"
    assert main(["convert", str(src), str(out), *SMALL, "--config", "light_448_r18"]) == 0
    printed = capsys.readouterr().out
    assert FORMAT_NAMES[fmt] in printed and str(out) in printed and "light_448_r18" in printed

    loaded = load_checkpoint(out)
    assert loaded.format == "solov2"
    assert loaded.config == load_config("light_448_r18", SMALL).to_dict()
    assert loaded.raw["converted_from"] == fmt
    # The stored config alone rebuilds the model; strict load; identical outputs.
    rebuilt = SOLOv2(config_from_dict(loaded.config).model).eval()
    assert load_weights(rebuilt, loaded.state_dict, source=str(out), allow_class_mismatch=False) == []
    assert same_outputs(rebuilt, images, expected)


def test_convert_preset_without_overrides_stores_the_preset(source, to_foreign, tmp_path, capsys):
    model, _, _ = source
    src = write_foreign(model, "official", tmp_path / "SOLOv2_LIGHT_448_R18_3x.pth", to_foreign)
    out = tmp_path / "r18.pth"
    assert main(["convert", str(src), str(out), "--config", "light_448_r18"]) == 0
    loaded = load_checkpoint(out)
    assert loaded.config == load_config("light_448_r18").to_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict[k], v), k


def test_convert_without_config_renames_only(source, to_foreign, tmp_path, capsys):
    model, images, expected = source
    src = write_foreign(model, "mmdet", tmp_path / "mmdet.pth", to_foreign)
    out = tmp_path / "renamed.pth"
    assert main(["convert", str(src), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "no config" in printed and str(out) in printed
    loaded = load_checkpoint(out)
    assert loaded.format == "solov2" and loaded.config is None
    target = SOLOv2(load_config("light_448_r18", SMALL).model).eval()
    load_weights(target, loaded.state_dict, source=str(out))
    assert same_outputs(target, images, expected)


def test_convert_solov2_checkpoint_keeps_its_config(source, tmp_path, capsys):
    model, images, expected = source
    cfg = load_config("light_448_r18", SMALL + ["test.score_thr=0.3"])
    src = tmp_path / "own.pth"
    atomic_save(make_checkpoint(model, cfg.to_dict(), epoch=36, optimizer={"state": {}}), src)
    out = tmp_path / "clean.pth"
    assert main(["convert", str(src), str(out)]) == 0
    loaded = load_checkpoint(out)
    assert loaded.config == cfg.to_dict()
    assert "optimizer" not in loaded.raw  # weights and config only
    rebuilt = SOLOv2(config_from_dict(loaded.config).model).eval()
    load_weights(rebuilt, loaded.state_dict, source=str(out))
    assert same_outputs(rebuilt, images, expected)


@pytest.mark.parametrize("args, needle", [
    (["--config", "light_448_r50"], "shape mismatch"),  # wrong preset
    (["model.num_classes=3", "--config", "light_448_r18"], "head.category_pred.weight"),  # classes
    (["--config", "light_512_dcn_r50"], "the model has deformable convs where the file has plain ones"),
    (["--config", "no_such_preset"], "no_such_preset"),
    (["model.num_classes=3"], "--config"),  # overrides without a config
])
def test_convert_errors_write_nothing(args, needle, source, to_foreign, tmp_path, capsys):
    model, _, _ = source
    src = write_foreign(model, "official", tmp_path / "in.pth", to_foreign)
    out = tmp_path / "out.pth"
    assert main(["convert", str(src), str(out), *args]) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pth"]


def test_convert_refuses_torchvision_weights(source, tmp_path, capsys):
    model, _, _ = source
    tv = {k[len("backbone."):]: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    tv["fc.weight"], tv["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    src = tmp_path / "resnet18-f37072fd.pth"
    torch.save(tv, src)
    out = tmp_path / "out.pth"
    assert main(["convert", str(src), str(out), "--config", "light_448_r18"]) == 2
    err = capsys.readouterr().err
    assert "torchvision" in err and str(src) in err and "backbone" in err
    assert not out.exists()


def test_convert_unreadable_input_names_the_file(tmp_path, capsys):
    missing = tmp_path / "missing.pth"
    assert main(["convert", str(missing), str(tmp_path / "o.pth")]) == 2
    assert str(missing) in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(os.urandom(1000))
    assert main(["convert", str(corrupt), str(tmp_path / "o.pth")]) == 2
    assert str(corrupt) in capsys.readouterr().err
    assert not (tmp_path / "o.pth").exists()


def test_convert_refuses_to_overwrite_its_input(source, to_foreign, tmp_path, capsys):
    model, _, _ = source
    src = write_foreign(model, "seed_port", tmp_path / "w.pth", to_foreign)
    before = src.read_bytes()
    assert main(["convert", str(src), str(src)]) == 2
    assert "differ" in capsys.readouterr().err
    assert src.read_bytes() == before


def test_convert_help_has_examples(capsys):
    with pytest.raises(SystemExit) as info:
        main(["convert", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "solov2 convert" in text and "--config" in text
    assert "torchvision" in text


def test_convert_command_line_entry_point(source, to_foreign, tmp_path):
    """The real command, in a fresh process (python -m solov2)."""
    model, _, _ = source
    src = write_foreign(model, "seed_port", tmp_path / "solov2_448_r18_epoch_36.pth", to_foreign)
    out = tmp_path / "converted.pth"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "solov2", "convert", str(src), str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert FORMAT_NAMES["seed_port"] in done.stdout and str(out) in done.stdout
    loaded = load_checkpoint(out)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict[k], v), k
