"""``solov2 benchmark`` runs end to end at a tiny size and writes its figures as JSON.

No timing assertions: times on a shared machine say nothing about correctness. The test
checks that every section and figure is there and consistent.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from solov2.checkpoint import atomic_save, make_checkpoint
from solov2.cli import main
from solov2.config import load_config
from solov2.benchmark import crafted_outputs
from solov2.model import SOLOv2, points_nms, postprocess

# A small network: the heads' cost does not shrink with the input size, their grids do.
TINY = ["model.num_classes=3", "model.grids=[8,6,4,4,2]", "model.head_channels=64",
        "model.fpn_channels=64", "model.kernel_channels=32", "model.mask_mid_channels=32"]


def above_threshold(logits, threshold):
    """Per image: (cell, class) pairs whose probability after points NMS exceeds ``threshold``."""
    return [sum(int((points_nms(c[b:b + 1].sigmoid()) > threshold).sum()) for c in logits)
            for b in range(logits[0].shape[0])]


@pytest.mark.parametrize("load", ["blobs", "noise"])
def test_crafted_load_has_exactly_the_requested_candidates(load):
    cfg = load_config("light_448_r18")
    logits, kernels, features, passing = crafted_outputs(cfg, 2, 64, 96, 500, torch.Generator().manual_seed(0), load)
    assert passing == 500
    assert above_threshold(logits, cfg.test.score_thr) == [500, 500]
    assert features.shape == (2, cfg.model.kernel_channels, 16, 24)
    # Tiny grids (34 cells): more candidates than cells, so some cells carry two classes.
    tiny = load_config("light_448_r18", TINY)
    logits, kernels, _, passing = crafted_outputs(tiny, 1, 64, 96, 40, torch.Generator().manual_seed(0), load)
    assert passing == 40 and above_threshold(logits, tiny.test.score_thr) == [40]


def test_crafted_loads_mask_sizes():
    """blobs: compact masks from a few pixels to large parts of the image; noise: every returned
    mask covers about half of the image, spread over all of it."""
    cfg = load_config("light_448_r18")
    fractions = {}
    for load in ("blobs", "noise"):
        logits, kernels, features, _ = crafted_outputs(cfg, 1, 448, 672, 500, torch.Generator().manual_seed(0), load)
        with torch.inference_mode():
            (det,) = postprocess(logits, kernels, features, [(448, 672)], [(480, 720)], cfg.model.grids,
                                 cfg.model.strides, cfg.test)
        assert len(det) == cfg.test.max_per_img
        fractions[load] = det.masks.flatten(1).float().mean(1)
    blobs, noise = fractions["blobs"], fractions["noise"]
    assert blobs.min() < 0.005 and blobs.median() < 0.1 and blobs.max() > 0.15
    assert noise.min() > 0.3
    with pytest.raises(ValueError, match="load"):
        crafted_outputs(cfg, 1, 64, 96, 10, torch.Generator(), "stripes")


def test_benchmark_command_writes_all_figures(tmp_path, photos, capsys):
    cfg = load_config("light_448_r18", TINY)
    torch.manual_seed(0)
    weights = tmp_path / "tiny.pth"
    atomic_save(make_checkpoint(SOLOv2(cfg.model), cfg.to_dict()), weights)
    image = photos[0]
    out = tmp_path / "bench.json"
    code = main(["benchmark", "--config", "light_448_r18", "--size", "64x96", "--batch", "2",
                 "--repeats", "2", "--warmup", "1", "--candidates", "40", "--instances", "4",
                 "--compare", "--threads", "1", "--weights", str(weights), "--agreement-images", str(image),
                 "--json", str(out), *TINY])
    assert code == 0
    text = capsys.readouterr().out
    assert "vs floor" in text and "post-processing share" in text and "targets share" in text

    result = json.loads(out.read_text())
    assert set(result) >= {"options", "machine", "floor", "inference", "training", "variants", "agreement"}
    assert result["floor"]["throughput_gflops_per_s"]["median"] > 0
    for key, batch in (("batch_1", 1), ("batch_2", 2)):
        inf = result["inference"][key]
        assert inf["batch"] == batch
        assert set(inf["stages"]) == {"preprocess", "backbone", "fpn", "heads", "mask_features",
                                      "postprocess", "network"}
        for name in ("backbone", "fpn", "heads", "mask_features", "network"):
            stage = inf["stages"][name]
            assert stage["ms"] > 0 and stage["gflops"] > 0 and stage["ratio_to_floor"] > 0
        assert inf["postprocess_load"]["candidates_above_score_thr"] == 40
        assert len(inf["postprocess_load"]["instances_returned"]) == batch
        assert 0 < inf["postprocess_share"] < 1
        assert inf["network_floor_ms"] > 0 and inf["peak_memory"]["peak_mib"] > 0
        assert math.isclose(inf["latency_ms"], sum(inf["stages"][n]["ms"] for n in
                                                   ("preprocess", "network", "postprocess")))
    # FLOPs scale with the batch.
    b1, b2 = result["inference"]["batch_1"], result["inference"]["batch_2"]
    assert math.isclose(b2["network_gflops"], 2 * b1["network_gflops"], rel_tol=1e-6)

    train = result["training"]
    assert set(train["stages"]) == {"data", "targets", "forward", "loss", "backward", "optimizer"}
    assert train["images"] == 2 and train["instances_per_image"] == 4 and train["positive_pairs"] > 0
    assert train["compute_gflops"] > b2["network_gflops"]  # forward + backward
    assert train["compute_ratio_to_floor"] > 0 and 0 < train["targets_share"] < 1

    variants = result["variants"]["variants"]
    assert {"eager", "fold_bn", "fold_bn+channels_last", "bf16"} <= set(variants)
    agreement = result["agreement"]
    assert agreement["precision"] == "bf16" and agreement["images"] == 1
    assert set(agreement["instances"]) == {"fp32", "bf16", "matched"}
