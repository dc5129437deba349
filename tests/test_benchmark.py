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


def test_dcn_section_compares_the_deformable_conv_with_conv2d(tmp_path, capsys):
    """``--only dcn``: v2, v1 and conv2d on the H/4 x W/4 map of --size, each ratio its median
    time over conv2d's of the same report; no other section runs."""
    out = tmp_path / "dcn.json"
    code = main(["benchmark", "--only", "dcn", "--size", "64x96", "--repeats", "3", "--warmup", "1",
                 "--threads", "1", "--device", "cpu", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "deformable convolution, forward" in text and "vs conv2d" in text
    result = json.loads(out.read_text())
    assert not {"inference", "training", "variants", "agreement", "backends"} & set(result)
    dcn = result["dcn"]
    assert dcn["shape"] == [1, 256, 16, 24] and dcn["kernel"] == 3 and dcn["precision"] == "fp32"
    assert dcn["repeats"] == 3 and dcn["backend"] in ("torchvision", "pytorch")
    layers = dcn["layers"]
    assert list(layers) == ["conv2d", "deform_v2", "deform_v1"]
    for name, figures in layers.items():
        assert 0 < figures["min_ms"] <= figures["ms"]
        assert figures["ratio_to_conv2d"] == pytest.approx(figures["ms"] / layers["conv2d"]["ms"], rel=1e-12)
        assert f"{figures['ratio_to_conv2d']:.2f}x" in text, name
    assert layers["conv2d"]["ratio_to_conv2d"] == 1.0


def test_dcn_layer_figures_at_a_tiny_shape_and_bad_sizes():
    from solov2.benchmark.deform import layer_figures, time_interleaved
    from solov2.benchmark.timing import Clock

    figures = layer_figures(2, 8, 5, 7, torch.device("cpu"), "bf16", repeats=2, warmup=0)
    assert figures["shape"] == [2, 8, 5, 7] and figures["precision"] == "bf16"
    v2 = figures["layers"]["deform_v2"]
    assert v2["ratio_to_conv2d"] == pytest.approx(v2["ms"] / figures["layers"]["conv2d"]["ms"], rel=1e-12)
    # Every call runs once per round, after one warm-up round at least.
    calls = {"a": 0, "b": 0}
    times = time_interleaved({k: (lambda k=k: calls.__setitem__(k, calls[k] + 1)) for k in calls},
                             Clock(torch.device("cpu")), repeats=3, warmup=0)
    assert calls == {"a": 4, "b": 4} and [len(t) for t in times.values()] == [3, 3]
    with pytest.raises(ValueError, match="repeats"):
        layer_figures(1, 8, 5, 7, torch.device("cpu"), "fp32", repeats=0, warmup=0)


def test_only_offers_every_section_of_the_package():
    # The command line spells the sections out (importing solov2.benchmark at start-up costs
    # every command about 0.4 s); this keeps its list equal to the package's.
    import argparse

    from solov2.benchmark import SECTIONS
    from solov2.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    only = next(a for a in sub.choices["benchmark"]._actions if a.dest == "only")
    assert list(only.choices) == list(SECTIONS)


@pytest.mark.parametrize("size", ["0x0", "16x64", "448"])
def test_a_size_below_one_cell_or_malformed_is_a_usage_error_naming_size(size, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["benchmark", "--only", "dcn", "--size", size])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--size" in err and "size must be" in err
