"""The stand-in files the README, docs and --help examples name, written into one folder.

``build_sandbox(root)`` writes, under the names the examples use: photos/ (two committed
photographs), img.jpg, photo.jpg, street.mp4 and clip.mp4 (3 small frames each),
shots/day1/a.png, COCO-format annotations of the photos at every path an example reads
(val.json + val/, val2017/, coco/annotations/instances_val2017.json + coco/val2017/,
ann/{train,val}.json + img/{train,val}/, train.json + train/), my.yaml (the light_448_r18
preset), and checkpoints in each format an example loads: the authors' release
(SOLOv2_LIGHT_448_R18_3x.pth, SOLOv2_R101_3x.pth), mmdetection's (solov2_r50_fpn_3x_coco.pth),
the earlier port's (solov2_448_r18_epoch_36.pth), torchvision's (resnet18-f37072fd.pth) and
this project's (w.pth, W.pth: light_448_r18 with the COCO classes). The weights are the
models' initial values (seeded): the examples check that files load and commands run, not AP.
"""

from __future__ import annotations

import shutil
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import torch

from _train_data import PHOTOS, photo_annotations, write_json
from conftest import to_foreign_name

TRAIN_PHOTOS = ("chelsea.jpg", "coffee.jpg")  # a training batch of light_448_r18 (2 images)
VAL_PHOTOS = ("chelsea.jpg",)


def subset(names: tuple[str, ...]) -> dict:
    """photo_annotations() of only the photos ``names``."""
    data = photo_annotations()
    data["images"] = [im for im in data["images"] if im["file_name"] in names]
    keep = {im["id"] for im in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    return data


def write_split(root: Path, ann: str, images: str, names: tuple[str, ...]) -> None:
    """Annotations of ``names`` at ``root/ann`` and the photos in ``root/images``."""
    write_json(root / ann, subset(names))
    (root / images).mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(PHOTOS / name, root / images / name)


def write_video(path: Path, frames: int = 3, size: tuple[int, int] = (96, 64)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, size)
    rng = np.random.default_rng(0)
    for _ in range(frames):
        frame = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        writer.write(frame)
    writer.release()
    assert path.stat().st_size > 0, f"cv2 wrote no video at {path}"


def initial_model(preset: str) -> torch.nn.Module:
    from solov2.config import load_config
    from solov2.model import SOLOv2

    torch.manual_seed(0)
    return SOLOv2(load_config(preset).model)


def save_foreign(model: torch.nn.Module, fmt: str, path: Path) -> None:
    """``model``'s weights under ``fmt``'s key names, packed as that format's files are."""
    sd = OrderedDict((to_foreign_name(k, fmt), v) for k, v in model.state_dict().items())
    torch.save(sd if fmt == "seed_port" else {"meta": {"epoch": 36}, "state_dict": sd}, path)


def write_checkpoints(root: Path) -> None:
    from solov2.cli.convert import convert

    light = initial_model("light_448_r18")
    save_foreign(light, "official", root / "SOLOv2_LIGHT_448_R18_3x.pth")
    save_foreign(light, "seed_port", root / "solov2_448_r18_epoch_36.pth")
    save_foreign(initial_model("r50_3x"), "mmdet", root / "solov2_r50_fpn_3x_coco.pth")
    save_foreign(initial_model("r101_3x"), "official", root / "SOLOv2_R101_3x.pth")
    backbone = {k[len("backbone."):]: v for k, v in light.state_dict().items() if k.startswith("backbone.")}
    torch.save({**backbone, "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)},
               root / "resnet18-f37072fd.pth")
    convert(root / "SOLOv2_LIGHT_448_R18_3x.pth", root / "w.pth", "light_448_r18")
    shutil.copy(root / "w.pth", root / "W.pth")


def build_sandbox(root: Path) -> Path:
    """Write the stand-in files (module docstring) into ``root``; returns ``root``."""
    from solov2.config import load_config, save_config

    (root / "photos").mkdir(parents=True)
    for name in TRAIN_PHOTOS:
        shutil.copy(PHOTOS / name, root / "photos" / name)
    shutil.copy(PHOTOS / "coffee.jpg", root / "img.jpg")
    shutil.copy(PHOTOS / "rocket.jpg", root / "photo.jpg")
    (root / "shots" / "day1").mkdir(parents=True)
    cv2.imwrite(str(root / "shots" / "day1" / "a.png"), cv2.imread(str(PHOTOS / "chelsea.jpg")))
    write_video(root / "street.mp4")
    write_video(root / "clip.mp4")
    for ann, images in (("val.json", "val"), ("val.json", "val2017"), ("ann/val.json", "img/val"),
                        ("coco/annotations/instances_val2017.json", "coco/val2017")):
        write_split(root, ann, images, VAL_PHOTOS)
    for ann, images in (("ann/train.json", "img/train"), ("train.json", "train")):
        write_split(root, ann, images, TRAIN_PHOTOS)
    save_config(load_config("light_448_r18"), root / "my.yaml")
    write_checkpoints(root)
    # benchmarks/*.py as the docs run them from the repository root; tests/data/photos too.
    (root / "benchmarks").mkdir()
    for script in ("benchmark.py", "backends_ap.py"):
        (root / "benchmarks" / script).symlink_to(PHOTOS.parents[2] / "benchmarks" / script)
    (root / "tests" / "data").mkdir(parents=True)
    (root / "tests" / "data" / "photos").symlink_to(PHOTOS)
    return root
