"""Shared fixtures: the committed photographs, the shared casia set (skipped where absent),
randomly filled models, foreign key names."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

# The tests use small inputs, where extra threads gain little, and on a shared CPU busy-waiting
# OpenMP threads make a forward pass 10-50x slower. SOLOV2_TEST_THREADS=N to change.
torch.set_num_threads(int(os.environ.get("SOLOV2_TEST_THREADS", "1")))

from _train_data import CASIA, PHOTOS, PHOTO_OBJECTS, TEST_DATA  # noqa: E402  (one definition of the paths)


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    """The committed photographs (tests/data/photos, sorted by name): four RGB JPEGs of
    different sizes, each with outlines in ``_train_data.PHOTO_OBJECTS``."""
    paths = sorted(PHOTOS.glob("*.jpg"))
    assert [p.name for p in paths] == sorted(PHOTO_OBJECTS), f"photos missing from {PHOTOS}"
    return paths


def pytest_collection_modifyitems(config, items):
    """Tests that load OpenVINO run after all others. A later training test in the same
    process once crashed (segmentation fault at its simulated Ctrl-C): one openvino.Core per
    session left the main thread on an unmapped signal stack, fixed by the shared Core in
    solov2.export.openvino_backend (tests/test_openvino_signals.py). `make test` still runs
    them in a process of their own (-m openvino), and this order keeps that separation."""
    items.sort(key=lambda item: item.get_closest_marker("openvino") is not None)


@pytest.fixture(scope="session")
def casia_dir() -> Path:
    """The larger real annotated set (200 photos, 682 instances) beside the repository; the
    tests that use it are skipped, with this reason, in a clone without it."""
    if not CASIA.is_dir():
        pytest.skip("../shared/data/casia-spt-val not found: casia tests skipped")
    return CASIA


@pytest.fixture(scope="session")
def key_lists_dir() -> Path:
    """tests/data, holding the key names and shapes of the foreign checkpoint formats for
    light_448_r18 (keys-*.json; origin in tests/data/README.md)."""
    assert sorted(TEST_DATA.glob("keys-*.json")), f"key lists missing from {TEST_DATA}"
    return TEST_DATA


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter and buffer a distinct random value (in place).

    Defaults such as GroupNorm weight 1 / bias 0 are the same in many layers, so a loader that
    swaps two layers would go unnoticed with them; random values make every tensor unique.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                tensor.fill_(int(torch.randint(1, 1000, (1,), generator=gen)))
                continue
            shape = tensor.shape
            if name.endswith("running_var") or (name.endswith(".weight") and tensor.dim() == 1):
                value = torch.rand(shape, generator=gen) + 0.5  # norm scales, variances
            elif tensor.dim() == 4:
                fan_in = shape[1] * shape[2] * shape[3]
                value = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
            else:  # biases, running means
                value = torch.randn(shape, generator=gen) * 0.1
            tensor.copy_(value)
    return model


@pytest.fixture(scope="session")
def random_model():
    """Factory: ``random_model("light_448_r18", seed=0, overrides=[])`` in eval mode."""
    from solov2.config import load_config
    from solov2.model import SOLOv2

    def make(preset: str = "light_448_r18", seed: int = 0, overrides: tuple[str, ...] = ()) -> torch.nn.Module:
        torch.manual_seed(seed)
        model = SOLOv2(load_config(preset, list(overrides)).model)
        return randomize_(model, seed).eval()

    return make


# Our key names -> the names of the foreign formats (docs/design.md, "Checkpoint formats"),
# written from the key lists in tests/data/keys-*.json, independently of solov2.checkpoint's
# rename rules.
_TO_FOREIGN = {
    "official": [
        (r"^fpn\.lateral_convs\.(\d+)\.", r"neck.lateral_convs.\1.conv."),
        (r"^fpn\.output_convs\.(\d+)\.", r"neck.fpn_convs.\1.conv."),
        (r"^mask_branch\.levels\.(\d+)\.(\d+)\.conv\.", r"mask_feat_head.convs_all_levels.\1.conv\2.conv."),
        (r"^mask_branch\.levels\.(\d+)\.(\d+)\.norm\.", r"mask_feat_head.convs_all_levels.\1.conv\2.gn."),
        (r"^mask_branch\.fuse\.conv\.", "mask_feat_head.conv_pred.0.conv."),
        (r"^mask_branch\.fuse\.norm\.", "mask_feat_head.conv_pred.0.gn."),
        (r"^head\.category_tower\.(\d+)\.conv\.", r"bbox_head.cate_convs.\1.conv."),
        (r"^head\.category_tower\.(\d+)\.norm\.", r"bbox_head.cate_convs.\1.gn."),
        (r"^head\.kernel_tower\.(\d+)\.conv\.", r"bbox_head.kernel_convs.\1.conv."),
        (r"^head\.kernel_tower\.(\d+)\.norm\.", r"bbox_head.kernel_convs.\1.gn."),
        (r"^head\.category_pred\.", "bbox_head.solo_cate."),
        (r"^head\.kernel_pred\.", "bbox_head.solo_kernel."),
    ],
    "mmdet": [
        (r"^fpn\.lateral_convs\.(\d+)\.", r"neck.lateral_convs.\1.conv."),
        (r"^fpn\.output_convs\.(\d+)\.", r"neck.fpn_convs.\1.conv."),
        (r"^mask_branch\.levels\.(\d+)\.(\d+)\.conv\.",
         r"mask_head.mask_feature_head.convs_all_levels.\1.conv\2.conv."),
        (r"^mask_branch\.levels\.(\d+)\.(\d+)\.norm\.",
         r"mask_head.mask_feature_head.convs_all_levels.\1.conv\2.gn."),
        (r"^mask_branch\.fuse\.conv\.", "mask_head.mask_feature_head.conv_pred.conv."),
        (r"^mask_branch\.fuse\.norm\.", "mask_head.mask_feature_head.conv_pred.gn."),
        (r"^head\.category_tower\.(\d+)\.conv\.", r"mask_head.cls_convs.\1.conv."),
        (r"^head\.category_tower\.(\d+)\.norm\.", r"mask_head.cls_convs.\1.gn."),
        (r"^head\.kernel_tower\.(\d+)\.conv\.", r"mask_head.kernel_convs.\1.conv."),
        (r"^head\.kernel_tower\.(\d+)\.norm\.", r"mask_head.kernel_convs.\1.gn."),
        (r"^head\.category_pred\.", "mask_head.conv_cls."),
        (r"^head\.kernel_pred\.", "mask_head.conv_kernel."),
    ],
    "seed_port": [
        (r"^fpn\.output_convs\.(\d+)\.", r"fpn.fpn_convs.\1."),
        (r"^mask_branch\.levels\.(\d+)\.(\d+)\.conv\.", r"mask_feat_head.convs_all_levels.\1.conv\2.0."),
        (r"^mask_branch\.levels\.(\d+)\.(\d+)\.norm\.", r"mask_feat_head.convs_all_levels.\1.conv\2.1."),
        (r"^mask_branch\.fuse\.conv\.", "mask_feat_head.conv_pred.0."),
        (r"^mask_branch\.fuse\.norm\.", "mask_feat_head.conv_pred.1."),
        (r"^head\.category_tower\.(\d+)\.conv\.", r"bbox_head.cate_convs.\1.0."),
        (r"^head\.category_tower\.(\d+)\.norm\.", r"bbox_head.cate_convs.\1.1."),
        (r"^head\.kernel_tower\.(\d+)\.conv\.", r"bbox_head.kernel_convs.\1.0."),
        (r"^head\.kernel_tower\.(\d+)\.norm\.", r"bbox_head.kernel_convs.\1.1."),
        (r"^head\.category_pred\.", "bbox_head.solo_cate."),
        (r"^head\.kernel_pred\.", "bbox_head.solo_kernel."),
    ],
}


def to_foreign_name(key: str, fmt: str) -> str:
    for pattern, replacement in _TO_FOREIGN[fmt]:
        new, count = re.subn(pattern, replacement, key)
        if count:
            return new
    assert key.startswith(("backbone.", "fpn.lateral_convs.")), f"no {fmt} name for {key}"
    return key


@pytest.fixture(scope="session")
def to_foreign():
    """``to_foreign(state_dict, fmt)``: the state dict under a foreign format's key names."""

    def convert(state_dict: dict[str, torch.Tensor], fmt: str) -> dict[str, torch.Tensor]:
        out = {to_foreign_name(k, fmt): v.clone() for k, v in state_dict.items()}
        assert len(out) == len(state_dict)
        return out

    return convert


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory):
    """The folder of stand-in files that the docs' examples name (tests/_example_sandbox.py),
    shared by tests/test_examples.py and tests/test_python_examples.py."""
    from _example_sandbox import build_sandbox
    from test_examples import Sandbox

    return Sandbox(build_sandbox(tmp_path_factory.mktemp("examples")))
