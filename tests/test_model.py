"""The SOLOv2 network: output shapes per preset, DCN presets, frozen stages, parameter counts,
and equality with a reference written in the form of the authors' release (meshgrid coordinate
channels, nn.Upsample in the mask feature head, ``scale_factor`` interpolation, stacked sum)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from solov2.config import ConfigError, available_presets, load_config
from solov2.model import ModelConfigError, SOLOv2
from solov2.model.heads import SOLOv2Head
from solov2.model.layers import coordinate_channels, with_coordinates
from solov2.model.resnet import ResNet

def uses_dcn(name):
    m = load_config(name).model
    return m.backbone_dcn != "none" or m.head_dcn != "none" or m.mask_branch_dcn != "none"


NON_DCN = [p for p in available_presets() if not uses_dcn(p)]
DCN = [p for p in available_presets() if uses_dcn(p)]


def test_preset_lists():
    assert {"light_448_r18", "light_448_r34", "light_448_r50", "r50_1x", "r50_3x", "r101_3x"} <= set(NON_DCN)
    assert {"light_512_dcn_r50", "light_512_dcn_r50_mmdet", "r101_dcn_3x", "x101_dcn_3x"} <= set(DCN)


def check_shapes(outputs, cfg, n, h, w):
    m = cfg.model
    assert len(outputs.category_logits) == len(outputs.kernels) == 5
    for cate, kern, s in zip(outputs.category_logits, outputs.kernels, m.grids):
        assert tuple(cate.shape) == (n, m.num_classes, s, s)
        assert tuple(kern.shape) == (n, m.kernel_channels, s, s)
    assert tuple(outputs.mask_features.shape) == (n, m.kernel_channels, h // 4, w // 4)
    for t in (*outputs.category_logits, *outputs.kernels, outputs.mask_features):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("name", NON_DCN)
def test_presets_build_and_give_output_shapes(name):
    cfg = load_config(name)
    torch.manual_seed(0)
    model = SOLOv2(cfg.model).eval()
    # Large presets: one small input only, to stay fast on a shared CPU.
    sizes = [(1, 64, 64)] if cfg.model.head_channels >= 512 else [(1, 64, 96), (2, 96, 64)]
    with torch.no_grad():
        for n, h, w in sizes:
            check_shapes(model(torch.randn(n, 3, h, w)), cfg, n, h, w)


def test_light_r18_sizes_and_batch_consistency():
    cfg = load_config("light_448_r18", ["model.num_classes=3"])
    torch.manual_seed(0)
    model = SOLOv2(cfg.model).eval()
    images = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        both = model(images)
        check_shapes(both, cfg, 2, 96, 128)
        # Each image of a batch gives the same outputs as on its own (eval mode: no batch stats).
        for i in range(2):
            alone = model(images[i : i + 1])
            for a, b in zip((*alone.category_logits, *alone.kernels, alone.mask_features),
                            (*both.category_logits, *both.kernels, both.mask_features)):
                torch.testing.assert_close(a[0], b[i], rtol=1e-4, atol=1e-5)
        check_shapes(model(torch.randn(1, 3, 32, 32)), cfg, 1, 32, 32)


def test_category_bias_prior():
    model = SOLOv2(load_config("light_448_r18").model)
    prob = torch.sigmoid(model.head.category_pred.bias)
    torch.testing.assert_close(prob, torch.full_like(prob, 0.01))


@pytest.mark.parametrize("override,key", [
    ("model.backbone_dcn=v3", "model.backbone_dcn"),
    ("model.head_dcn=yes", "model.head_dcn"),
    ("model.backbone_dcn_stages=[5]", "model.backbone_dcn_stages"),
])
def test_invalid_dcn_values_are_refused_with_the_config(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config("r101_dcn_3x", [override])


@pytest.mark.parametrize("changes,key", [
    ({"backbone_dcn": "v3"}, "model.backbone_dcn"),  # a ModelConfig built in Python, not validated
    ({"backbone_dcn_stages": [5]}, "model.backbone_dcn_stages"),
    ({"backbone_depth": 18}, "model.backbone_dcn"),  # deformable conv2 needs bottleneck blocks
])
def test_invalid_dcn_settings_raise_a_clear_error(changes, key):
    model_cfg = dataclasses.replace(load_config("r101_dcn_3x").model, **changes)
    with pytest.raises(ModelConfigError) as info:
        SOLOv2(model_cfg)
    assert key in str(info.value)
    assert isinstance(info.value, ValueError)


def bn_modules(module):
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("frozen", [-1, 0, 1, 2])
def test_frozen_stages_and_norm_eval(frozen):
    backbone = ResNet(18, frozen_stages=frozen, norm_eval=True)
    backbone.train()
    frozen_names = [] if frozen < 0 else ["conv1", "bn1"] + [f"layer{i}" for i in range(1, frozen + 1)]
    for name, p in backbone.named_parameters():
        top = name.split(".")[0]
        assert p.requires_grad == (top not in frozen_names), name
    # norm_eval: every BatchNorm stays in eval mode while the rest trains.
    assert all(not bn.training for bn in bn_modules(backbone))
    assert backbone.layer4.training
    before = {k: v.clone() for k, v in backbone.state_dict().items() if "running" in k}
    backbone(torch.randn(2, 3, 64, 64))
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_without_norm_eval_only_frozen_batchnorms_stay_in_eval():
    backbone = ResNet(18, frozen_stages=1, norm_eval=False).train()
    for name, m in backbone.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            frozen = name == "bn1" or name.startswith("layer1.")
            assert m.training == (not frozen), name
    backbone.eval()
    assert all(not bn.training for bn in bn_modules(backbone))


def test_whole_model_train_mode_keeps_backbone_frozen_and_heads_training():
    model = SOLOv2(load_config("light_448_r18").model).train()
    assert all(not bn.training for bn in bn_modules(model))
    assert model.head.training and model.mask_branch.training
    assert all(not p.requires_grad for p in model.backbone.layer1.parameters())
    assert all(not p.requires_grad for p in model.backbone.conv1.parameters())
    assert all(p.requires_grad for p in model.backbone.layer2.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    assert all(p.requires_grad for p in model.fpn.parameters())


# torchvision's resnet{18,34,50,101} parameter counts (11,689,512 / 21,797,672 / 25,557,032 /
# 44,549,160) minus the fc layer (512*1000+1000 or 2048*1000+1000).
@pytest.mark.parametrize("depth, count", [
    (18, 11_176_512), (34, 21_284_672), (50, 23_508_032), (101, 42_500_160),
])
def test_backbone_parameter_counts_match_torchvision(depth, count):
    backbone = ResNet(depth)
    assert sum(p.numel() for p in backbone.parameters()) == count


def test_backbone_r18_count_by_hand():
    # conv1 + bn1, then per stage: convs (3x3), bns, and the downsample (1x1 conv + bn).
    stem = 3 * 64 * 49 + 2 * 64
    layer1 = 4 * (64 * 64 * 9) + 4 * 2 * 64
    def stage(cin, c):
        return cin * c * 9 + 3 * c * c * 9 + 4 * 2 * c + cin * c + 2 * c
    total = stem + layer1 + stage(64, 128) + stage(128, 256) + stage(256, 512)
    assert total == 11_176_512
    assert sum(p.numel() for p in ResNet(18).parameters()) == total


def test_backbone_stage_shapes():
    for depth, channels in [(18, [64, 128, 256, 512]), (50, [256, 512, 1024, 2048])]:
        outs = ResNet(depth).eval()(torch.randn(1, 3, 64, 96))
        assert [tuple(o.shape) for o in outs] == [
            (1, c, 64 // s, 96 // s) for c, s in zip(channels, (4, 8, 16, 32))]


# ---------------------------------------------------------------------------------------------
# Reference pieces in the release's form.


def release_coord_feat(x):
    """The release: linspace ranges, torch.meshgrid (ij), expand, cat([x, y])."""
    x_range = torch.linspace(-1, 1, x.shape[-1], device=x.device)
    y_range = torch.linspace(-1, 1, x.shape[-2], device=x.device)
    y, xx = torch.meshgrid(y_range, x_range, indexing="ij")
    y = y.expand([x.shape[0], 1, -1, -1])
    xx = xx.expand([x.shape[0], 1, -1, -1])
    return torch.cat([xx, y], 1)


def test_coordinate_channels_literal():
    x = torch.zeros(2, 5, 3, 4)
    coords = coordinate_channels(x)
    assert coords.shape == (2, 2, 3, 4)
    expected_x = torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]).repeat(3, 1)
    expected_y = torch.tensor([-1.0, 0.0, 1.0])[:, None].repeat(1, 4)
    for i in range(2):
        torch.testing.assert_close(coords[i, 0], expected_x)
        torch.testing.assert_close(coords[i, 1], expected_y)
    assert torch.equal(coords, release_coord_feat(x))
    for shape in [(1, 1, 1, 1), (1, 3, 1, 7), (3, 2, 9, 2), (1, 1, 25, 38)]:
        x = torch.randn(shape)
        assert torch.equal(coordinate_channels(x), release_coord_feat(x))
        joined = with_coordinates(x)
        assert torch.equal(joined[:, : shape[1]], x)
        assert torch.equal(joined[:, shape[1]:], release_coord_feat(x))


def test_head_level_inputs_literal():
    torch.manual_seed(0)
    p = [torch.randn(2, 4, 16 // 2**i, 24 // 2**i) for i in range(4)]
    p.append(torch.randn(2, 4, 1, 2))  # P6
    levels = SOLOv2Head.level_inputs(p)
    # split_feats of the release (mode='bilinear', default align_corners=False)
    expected = (F.interpolate(p[0], scale_factor=0.5, mode="bilinear", align_corners=False),
                p[1], p[2], p[3],
                F.interpolate(p[4], size=p[3].shape[-2:], mode="bilinear", align_corners=False))
    assert [tuple(t.shape[-2:]) for t in levels] == [(8, 12), (8, 12), (4, 6), (2, 3), (2, 3)]
    for a, b in zip(levels, expected):
        assert torch.equal(a, b)
    # A bilinear halving with align_corners=False averages 2x2 blocks.
    torch.testing.assert_close(levels[0], F.avg_pool2d(p[0], 2))


class ConvModule(nn.Module):
    """mmcv ConvModule with GroupNorm: conv (no bias), gn, relu."""

    def __init__(self, cin, cout, k):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
        self.gn = nn.GroupNorm(32, cout)
        self.activate = nn.ReLU(inplace=False)

    def forward(self, x):
        return self.activate(self.gn(self.conv(x)))


class ReleaseFPN(nn.Module):
    """mmdetection v1 FPN (num_outs 5, no extra convs): scale_factor=2 nearest upsampling."""

    def __init__(self, in_channels, out_channels=256):
        super().__init__()
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)

    def forward(self, inputs):
        laterals = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], scale_factor=2, mode="nearest")
        outs = [self.fpn_convs[i](laterals[i]) for i in range(len(laterals))]
        outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return outs


class ReleaseMaskFeatHead(nn.Module):
    """MaskFeatHead of the release: nn.Sequential of conv{j} / upsample{j}, stacked sum."""

    def __init__(self, in_channels, out_channels, num_classes):
        super().__init__()
        self.convs_all_levels = nn.ModuleList()
        for i in range(4):
            seq = nn.Sequential()
            if i == 0:
                seq.add_module("conv0", ConvModule(in_channels, out_channels, 3))
            for j in range(i):
                chn = (in_channels + 2 if i == 3 else in_channels) if j == 0 else out_channels
                seq.add_module(f"conv{j}", ConvModule(chn, out_channels, 3))
                seq.add_module(f"upsample{j}", nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.convs_all_levels.append(seq)
        self.conv_pred = nn.Sequential(ConvModule(out_channels, num_classes, 1))

    def forward(self, inputs):
        feats = []
        for i, x in enumerate(inputs):
            if i == 3:
                x = torch.cat([x, release_coord_feat(x)], 1)
            feats.append(self.convs_all_levels[i](x))
        return self.conv_pred(torch.stack(feats, 0).sum(0))


class ReleaseSOLOv2Head(nn.Module):
    def __init__(self, num_classes, in_channels, feat_channels, stacked_convs, kernel_channels, grids):
        super().__init__()
        self.grids = grids
        self.kernel_convs = nn.ModuleList(
            ConvModule(in_channels + 2 if i == 0 else feat_channels, feat_channels, 3) for i in range(stacked_convs))
        self.cate_convs = nn.ModuleList(
            ConvModule(in_channels if i == 0 else feat_channels, feat_channels, 3) for i in range(stacked_convs))
        self.solo_cate = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.solo_kernel = nn.Conv2d(feat_channels, kernel_channels, 3, padding=1)

    def forward(self, feats):
        new_feats = (F.interpolate(feats[0], scale_factor=0.5, mode="bilinear", align_corners=False),
                     feats[1], feats[2], feats[3],
                     F.interpolate(feats[4], size=feats[3].shape[-2:], mode="bilinear", align_corners=False))
        cates, kernels = [], []
        for idx, x in enumerate(new_feats):
            kernel_feat = torch.cat([x, release_coord_feat(x)], 1)
            kernel_feat = F.interpolate(kernel_feat, size=self.grids[idx], mode="bilinear", align_corners=False)
            cate_feat = kernel_feat[:, :-2, :, :].contiguous()
            kernel_feat = kernel_feat.contiguous()
            for layer in self.kernel_convs:
                kernel_feat = layer(kernel_feat)
            for layer in self.cate_convs:
                cate_feat = layer(cate_feat)
            cates.append(self.solo_cate(cate_feat))
            kernels.append(self.solo_kernel(kernel_feat))
        return cates, kernels


def copy_convmodule(dst: ConvModule, src) -> None:
    dst.conv.weight.data.copy_(src.conv.weight)
    dst.gn.weight.data.copy_(src.norm.weight)
    dst.gn.bias.data.copy_(src.norm.bias)


def release_from(model: SOLOv2):
    m = model.cfg
    fpn = ReleaseFPN(model.backbone.out_channels, m.fpn_channels)
    fpn.load_state_dict({k.replace("output_convs", "fpn_convs"): v for k, v in model.fpn.state_dict().items()})
    head = ReleaseSOLOv2Head(m.num_classes, m.fpn_channels, m.head_channels, m.head_stacked_convs,
                             m.kernel_channels, m.grids)
    for i in range(m.head_stacked_convs):
        copy_convmodule(head.kernel_convs[i], model.head.kernel_tower[i])
        copy_convmodule(head.cate_convs[i], model.head.category_tower[i])
    head.solo_cate.load_state_dict(model.head.category_pred.state_dict())
    head.solo_kernel.load_state_dict(model.head.kernel_pred.state_dict())
    mask = ReleaseMaskFeatHead(m.fpn_channels, m.mask_mid_channels, m.kernel_channels)
    for i in range(4):
        for j in range(max(i, 1)):
            copy_convmodule(getattr(mask.convs_all_levels[i], f"conv{j}"), model.mask_branch.levels[i][j])
    copy_convmodule(mask.conv_pred[0], model.mask_branch.fuse)
    n_params = sum(p.numel() for mod in (fpn, head, mask) for p in mod.parameters())
    ours = sum(p.numel() for mod in (model.fpn, model.head, model.mask_branch) for p in mod.parameters())
    assert n_params == ours  # same architecture, every parameter copied
    return fpn.eval(), head.eval(), mask.eval()


@pytest.mark.parametrize("preset, size, grids", [
    ("light_448_r18", (2, 64, 96), "[40, 36, 24, 16, 12]"),
    ("r50_1x", (1, 64, 64), "[12, 10, 8, 6, 4]"),  # smaller grids: a cheaper head
])
def test_forward_equals_release_form(random_model, preset, size, grids):
    model = random_model(preset, seed=3, overrides=("model.num_classes=5", f"model.grids={grids}"))
    fpn, head, mask = release_from(model)
    torch.manual_seed(1)
    images = torch.randn(*size[:1], 3, *size[1:])
    with torch.no_grad():
        ours = model(images)
        c = model.backbone(images)
        feats = fpn(c)
        for a, b in zip(model.fpn(c), feats):
            assert torch.equal(a, b)
        cates, kernels = head(feats)
        mask_feat = mask(feats[:4])
    for a, b in zip(ours.category_logits, cates):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(ours.kernels, kernels):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.mask_features, mask_feat, rtol=1e-5, atol=1e-5)
    # The outputs are not trivially constant (random weights, random input).
    assert ours.mask_features.std() > 1e-3 and ours.kernels[0].std() > 1e-3
