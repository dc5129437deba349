"""Inference-only rewrites of a trained network: BatchNorm folded into the preceding
convolution, and an optional channels-last memory layout.

``optimize_for_inference(model)`` returns a copy; the original keeps its BatchNorm layers
(and stays trainable and loadable). Folding changes outputs only by float rounding
(relative differences around 1e-6).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution equal to ``bn(conv(x))`` with ``bn`` in eval mode (running statistics)."""
    fused = copy.deepcopy(conv)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias, requires_grad=False)
    return fused


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d, in place; returns how many.

    Two patterns cover the ResNet backbone: attributes ``convK`` / ``bnK`` of one module
    (stem and blocks), and ``nn.Sequential(conv, bn)`` (the downsample shortcuts). A folded
    BatchNorm becomes ``nn.Identity``.
    """
    folded = 0
    for parent in list(module.modules()):
        if isinstance(parent, nn.Sequential):
            children = list(parent.named_children())
            for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    setattr(parent, conv_name, fuse_conv_bn(conv, bn))
                    setattr(parent, bn_name, nn.Identity())
                    folded += 1
            continue
        for name, child in list(parent.named_children()):
            if not (name.startswith("bn") and isinstance(child, nn.BatchNorm2d)):
                continue
            conv = getattr(parent, "conv" + name[2:], None)
            if isinstance(conv, nn.Conv2d):
                setattr(parent, "conv" + name[2:], fuse_conv_bn(conv, child))
                setattr(parent, name, nn.Identity())
                folded += 1
    return folded


def optimize_for_inference(
    model: nn.Module, fold_bn: bool = True, channels_last: bool = False
) -> nn.Module:
    """An eval-mode copy of ``model`` with BatchNorm folded and, optionally, channels-last
    weights (the convolutions then produce channels-last outputs from ordinary inputs)."""
    model = copy.deepcopy(model).eval()
    if fold_bn:
        fold_batchnorm(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    return model
