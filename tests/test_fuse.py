"""BatchNorm folding and channels-last for inference keep the network's outputs."""

from __future__ import annotations

import torch
from torch import nn

from solov2.model.fuse import fold_batchnorm, fuse_conv_bn, optimize_for_inference


def outputs(model, x):
    with torch.inference_mode():
        o = model(x)
    return [*o.category_logits, *o.kernels, o.mask_features]


def test_fuse_conv_bn_equals_conv_then_bn():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.normal_()
        bn.bias.normal_()
    bn.eval()
    x = torch.randn(2, 8, 10, 12)
    torch.testing.assert_close(fuse_conv_bn(conv, bn)(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


def test_every_batchnorm_of_the_backbone_is_folded(random_model):
    model = random_model("light_448_r18")
    count = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    copy = optimize_for_inference(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in copy.modules())
    assert count == 20  # ResNet-18: stem, 16 in the blocks, 3 shortcuts
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == count  # original kept
    assert fold_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4).eval())) == 1


def test_optimized_network_gives_the_same_outputs(random_model):
    model = random_model("light_448_r18")
    x = torch.randn(1, 3, 96, 128)
    expected = outputs(model, x)
    for channels_last in (False, True):
        got = outputs(optimize_for_inference(model, fold_bn=True, channels_last=channels_last), x)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
