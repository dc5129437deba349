"""The deformable-convolution and ResNeXt presets: where their deformable layers are (as each
source's config places them), ResNeXt shapes, prediction on images, a few training steps,
and ONNX export with the standard DeformConv operator matching ONNX Runtime."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from _dcn_helpers import tiny_dcn_model
from _train_data import CASIA, TINY_MODEL, read_metrics, torchrun_train, write_shapes_dataset
from solov2.checkpoint import load_checkpoint
from solov2.config import config_from_dict, load_config
from solov2.engine.predictor import Predictor
from solov2.engine.trainer import train
from solov2.model import SOLOv2
from solov2.model.deform_conv import DeformConv2dPack, ModulatedDeformConv2dPack

DCN_PRESETS = ["light_512_dcn_r50", "light_512_dcn_r50_mmdet", "r101_dcn_3x", "x101_dcn_3x"]


def dcn_layers(module: torch.nn.Module, prefix: str) -> dict[str, str]:
    """Name -> "v1" / "v2" of the deformable convs under ``prefix``."""
    out = {}
    for name, m in module.named_modules():
        if name.startswith(prefix) and isinstance(m, DeformConv2dPack):
            out[name] = "v2" if isinstance(m, ModulatedDeformConv2dPack) else "v1"
    return out


# preset -> (backbone type, number of backbone DCNs, tower type, tower DCNs, mask branch type, mask DCNs)
PLACEMENT = {
    "light_512_dcn_r50": ("v1", 4 + 6 + 3, "v1", 2, None, 0),
    "light_512_dcn_r50_mmdet": ("v2", 4 + 6 + 3, "v2", 2, None, 0),
    "r101_dcn_3x": ("v2", 4 + 23 + 3, "v2", 8, "v2", 1 + 1 + 2 + 3 + 1),
    "x101_dcn_3x": ("v2", 4 + 23 + 3, "v2", 8, "v2", 1 + 1 + 2 + 3 + 1),
}


@pytest.mark.parametrize("preset", DCN_PRESETS)
def test_deformable_layers_are_where_the_sources_put_them(preset):
    model = SOLOv2(load_config(preset, TINY_MODEL).model)
    backbone_type, backbone_count, tower_type, tower_count, mask_type, mask_count = PLACEMENT[preset]
    backbone = dcn_layers(model, "backbone.")
    assert set(backbone.values()) == {backbone_type} and len(backbone) == backbone_count
    assert all(name.endswith(".conv2") and not name.startswith("backbone.layer1.") for name in backbone)
    tower = dcn_layers(model, "head.")
    assert set(tower.values()) == {tower_type} and len(tower) == tower_count
    if tower_count == 2:  # the last of the stacked convs only
        last = model.cfg.head_stacked_convs - 1
        assert set(tower) == {f"head.kernel_tower.{last}.conv", f"head.category_tower.{last}.conv"}
    mask = dcn_layers(model, "mask_branch.")
    assert len(mask) == mask_count and set(mask.values()) <= {mask_type}
    if mask_count:
        assert "mask_branch.fuse.conv" in mask and model.mask_branch.fuse.conv.kernel_size == (1, 1)
        assert model.mask_branch.fuse.conv.conv_offset.out_channels == 3


def test_initialisation_as_the_release():
    model = SOLOv2(load_config("r101_dcn_3x", TINY_MODEL).model)
    layer = model.backbone.layer2[0].conv2
    assert layer.conv_offset.weight.abs().sum() == 0 and layer.conv_offset.out_channels == 27
    tower = model.head.kernel_tower[0].conv
    assert tower.conv_offset.weight.abs().sum() == 0
    assert 0.005 < float(tower.weight.detach().std()) < 0.02  # normal(std 0.01), as the plain tower convs
    # The mask feature head re-initialises every Conv2d, its offset convs too: normal(std 0.01).
    offset = model.mask_branch.levels[1][0].conv.conv_offset.weight
    assert 0.005 < float(offset.detach().std()) < 0.02


def offset_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    """The conv_offset weights of every deformable conv in ``module``."""
    return [m.conv_offset.weight.detach() for m in module.modules() if isinstance(m, DeformConv2dPack)]


@pytest.mark.parametrize("preset, tower_init", [("light_512_dcn_r50", "zero"), ("light_512_dcn_r50_mmdet", "normal"),
                                                ("r101_dcn_3x", "zero")])
def test_head_offset_init_follows_the_source(preset, tower_init):
    """mmdetection 3.x's head init (Normal, layer='Conv2d', std 0.01) reaches the towers' offset
    convs; the authors' release leaves them zero. The backbone's start zero in both."""
    cfg = load_config(preset, TINY_MODEL)
    assert cfg.model.head_offset_init == tower_init
    torch.manual_seed(0)
    model = SOLOv2(cfg.model)
    backbone, towers = offset_weights(model.backbone), offset_weights(model.head)
    assert len(backbone) == 13 or len(backbone) == 30
    assert all(float(w.abs().sum()) == 0 for w in backbone)
    assert towers
    for w in towers:
        if tower_init == "zero":
            assert float(w.abs().sum()) == 0
        else:
            assert 0.008 < float(w.std()) < 0.012 and abs(float(w.mean())) < 0.002
    biases = [m.conv_offset.bias.detach() for m in model.head.modules() if isinstance(m, DeformConv2dPack)]
    assert all(float(b.abs().sum()) == 0 for b in biases)


def test_head_offset_init_override_on_a_shared_preset():
    """r101_dcn_3x (both sources' layers) starts as mmdetection's with the override."""
    cfg = load_config("r101_dcn_3x", TINY_MODEL + ["model.head_offset_init=normal"])
    torch.manual_seed(0)
    towers = offset_weights(SOLOv2(cfg.model).head)
    assert len(towers) == 8 and all(0.008 < float(w.std()) < 0.012 for w in towers)
    from solov2.config import ConfigError

    with pytest.raises(ConfigError, match="head_offset_init"):
        load_config("r101_dcn_3x", ["model.head_offset_init=uniform"])


def test_resnext101_64x4d_has_torchvision_shapes():
    model = SOLOv2(load_config("x101_3x", TINY_MODEL).model)
    shapes = {k: tuple(v.shape) for k, v in model.backbone.state_dict().items()}
    # torchvision resnext101_64x4d: width = floor(planes * 4 / 64) * 64, conv2 in 64 groups.
    assert shapes["layer1.0.conv1.weight"] == (256, 64, 1, 1)
    assert shapes["layer1.0.conv2.weight"] == (256, 4, 3, 3)
    assert shapes["layer1.0.conv3.weight"] == (256, 256, 1, 1)
    assert shapes["layer2.0.conv2.weight"] == (512, 8, 3, 3)
    assert shapes["layer3.22.conv2.weight"] == (1024, 16, 3, 3)
    assert shapes["layer4.0.conv2.weight"] == (2048, 32, 3, 3)
    assert shapes["layer4.2.conv3.weight"] == (2048, 2048, 1, 1)
    assert model.backbone.layer4[0].conv2.groups == 64
    # torchvision's resnext101_64x4d has 83,455,272 parameters, 2,049,000 of them in fc.
    assert sum(p.numel() for p in model.backbone.parameters()) == 83_455_272 - 2_049_000
    dcn = SOLOv2(load_config("x101_dcn_3x", TINY_MODEL).model).backbone.layer4[0].conv2
    assert dcn.weight.shape == (2048, 32, 3, 3) and dcn.groups == 64 and dcn.conv_offset.out_channels == 27


def _images(tmp_path) -> list[np.ndarray]:
    """Two real photos when the shared set is there, else two synthetic images."""
    import cv2

    photos = sorted((CASIA / "JPEGImages").glob("*.jpg"))[:2] if CASIA.is_dir() else []
    if photos:
        return [cv2.imread(str(p)) for p in photos]
    _, folder = write_shapes_dataset(tmp_path, num_images=2, size=(120, 160))
    return [cv2.imread(str(p)) for p in sorted(folder.iterdir())]


@pytest.mark.parametrize("preset", DCN_PRESETS)
def test_dcn_preset_predicts_on_images(preset, tmp_path):
    model, cfg = tiny_dcn_model(preset)
    cfg.input.test_scale = [256, 160]
    with torch.no_grad():
        model.head.category_pred.bias.sub_(2.0)
    results = Predictor(model, cfg).predict_batch(_images(tmp_path))
    assert len(results) == 2
    for image, result in zip(_images(tmp_path), results):
        assert result.masks.shape[1:] == image.shape[:2]
        assert len(result) > 0 and np.isfinite(result.scores).all()


@pytest.mark.parametrize("preset", ["light_512_dcn_r50", "light_512_dcn_r50_mmdet", "r101_dcn_3x"])
def test_dcn_preset_trains_with_decreasing_loss_and_learning_offsets(preset, tmp_path):
    ann, images_dir = write_shapes_dataset(tmp_path / "data", num_images=4, size=(64, 96))
    cfg = load_config(preset, TINY_MODEL + [
        f"data.train_ann={ann}", f"data.train_images={images_dir}", "data.workers=0",
        "input.train_scales=[[96, 64]]", "train.batch_size=2", "train.base_batch_size=2",
        "train.base_lr=0.004", "train.warmup_iters=1", "train.epochs=4", "train.lr_steps=[4]",
        "train.log_interval=1", "train.val_interval=0", "data.group_by_aspect_ratio=false",
        "input.flip_prob=0",
    ])
    final = train(cfg, tmp_path / "run", device="cpu", progress=False)
    rows = read_metrics(tmp_path / "run")
    losses = [r["loss"] for r in rows]
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses
    state = load_checkpoint(final).state_dict
    offsets = [v for k, v in state.items() if k.endswith("conv_offset.weight") and ".layer1." not in k]
    assert offsets and any(v.abs().sum() > 0 for v in offsets)  # zero-initialised offsets learnt


@pytest.mark.parametrize("preset", DCN_PRESETS)
def test_dcn_preset_exports_deform_conv_and_matches_onnxruntime(preset, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from solov2.export.onnx import ExportableSOLOv2, export_onnx

    model, cfg = tiny_dcn_model(preset)
    path = export_onnx(model, cfg, tmp_path / "model.onnx", height=96, width=128)
    proto = onnx.load(str(path))
    assert {o.domain: o.version for o in proto.opset_import}.get("", 0) >= 19
    deform = [n for n in proto.graph.node if n.op_type == "DeformConv"]
    # One node per deformable conv call: the head's towers run once per level.
    calls = len(dcn_layers(model, "backbone.")) + len(dcn_layers(model, "mask_branch.")) + 5 * len(
        dcn_layers(model, "head."))
    assert len(deform) == calls
    assert not any(n.op_type == "GridSample" for n in proto.graph.node)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for h, w in ((96, 128), (128, 96)):  # dynamic height and width
        images = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(h))
        with torch.no_grad():
            expected = ExportableSOLOv2(model)(images)
        got = session.run(None, {"images": images.numpy()})
        for g, e in zip(got, expected):
            assert g.shape == tuple(e.shape)
            assert np.abs(g - e.numpy()).max() <= 1e-4


def momentum_buffers(checkpoint: dict) -> dict[str, torch.Tensor]:
    """Trainable parameter name -> SGD momentum buffer of a checkpoint (the optimizer holds
    the model's trainable parameters in ``named_parameters`` order)."""
    model = SOLOv2(config_from_dict(checkpoint["config"]).model)
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    state = checkpoint["optimizer"]["state"]
    assert len(names) == len(state)
    return {name: state[i]["momentum_buffer"] for i, name in enumerate(names)}


def test_two_gloo_processes_give_the_gradients_of_one_process_with_dcn(tmp_path):
    """torchrun, 2 CPU processes (gloo) x 2 images = one process x 4 images, for a model with
    deformable convs in the backbone (v1, stages 2-4), the last tower conv (v1) and the mask
    branch (v2): the same loss and, after one SGD step, the same momentum buffers (the
    gradient plus weight decay), the offset convs' included, which did receive gradient."""
    ann, images_dir = write_shapes_dataset(tmp_path / "data", num_images=8, size=(64, 96))
    overrides = TINY_MODEL + [
        "model.mask_branch_dcn=v2", f"data.train_ann={ann}", f"data.train_images={images_dir}",
        "data.workers=0", "input.train_scales=[[96, 64]]", "train.base_batch_size=2", "train.base_lr=0.01",
        "train.warmup_iters=2", "train.epochs=1", "train.log_interval=1", "train.val_interval=0",
    ]
    train(load_config("light_512_dcn_r50", overrides + ["train.batch_size=4"]), tmp_path / "one", max_iters=1,
          device="cpu", progress=False)
    torchrun_train("light_512_dcn_r50", overrides + ["train.batch_size=2"], tmp_path / "two")
    one = load_checkpoint(tmp_path / "one" / "latest.pth").raw
    two = load_checkpoint(tmp_path / "two" / "latest.pth").raw
    assert two["world_size"] == 2 and one["world_size"] == 1
    buffers_one, buffers_two = momentum_buffers(one), momentum_buffers(two)
    assert buffers_one.keys() == buffers_two.keys()
    offsets = [name for name in buffers_one if ".conv_offset." in name]
    # Backbone stages 2-4 (13 blocks), the last conv of both towers, the mask branch's 7 convs
    # and its final 1x1; weight and bias each.
    assert len(offsets) == 2 * (13 + 2 + 7 + 1)
    for part in ("backbone.", "head.", "mask_branch."):
        assert any(name.startswith(part) for name in offsets), part
    for name in offsets:
        if name.endswith(".weight"):
            assert float(buffers_one[name].abs().max()) > 0, name  # the offsets receive gradient
    for name, g1 in buffers_one.items():
        scale = g1.abs().max().item() + 1e-12
        assert torch.allclose(g1, buffers_two[name], rtol=1e-3, atol=1e-4 * scale), name
    assert read_metrics(tmp_path / "two")[0]["loss"] == pytest.approx(read_metrics(tmp_path / "one")[0]["loss"],
                                                                      rel=1e-4)
