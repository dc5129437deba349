"""SOLOv2 heads: the per-level kernel and category branches, and the shared mask feature branch."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from .deform_conv import DeformConv2dPack, zero_offsets
from .layers import ConvNormReLU, with_coordinates


class SOLOv2Head(nn.Module):
    """For each FPN level, predicts a category map (C x S x S) and a kernel map (E x S x S).

    ``dcn`` ("none", "v1", "v2") makes the last tower conv of both branches deformable, or
    all of them with ``dcn_all_convs``. Initialisation as the authors' release: every conv
    normal(std 0.01), biases zero, the category bias at the prior probability, the deformable
    convs' offset convs zero; ``offset_init="normal"`` gives the offset convs normal(std 0.01)
    and zero bias instead, as mmdetection 3.x (its head's init reaches every ``nn.Conv2d``).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        channels: int = 256,
        stacked_convs: int = 2,
        kernel_channels: int = 128,
        grids: tuple[int, ...] = (40, 36, 24, 16, 12),
        prior_prob: float = 0.01,
        dcn: str = "none",
        dcn_all_convs: bool = False,
        offset_init: str = "zero",
    ):
        super().__init__()
        if offset_init not in ("zero", "normal"):
            raise ValueError(f"offset_init must be 'zero' or 'normal', got {offset_init!r}")
        self.num_classes = num_classes
        self.grids = tuple(grids)
        tower_dcn = [dcn if dcn_all_convs or i == stacked_convs - 1 else "none" for i in range(stacked_convs)]
        self.kernel_tower = nn.ModuleList(
            ConvNormReLU(in_channels + 2 if i == 0 else channels, channels, dcn=tower_dcn[i])
            for i in range(stacked_convs)
        )
        self.category_tower = nn.ModuleList(
            ConvNormReLU(in_channels if i == 0 else channels, channels, dcn=tower_dcn[i])
            for i in range(stacked_convs)
        )
        self.kernel_pred = nn.Conv2d(channels, kernel_channels, 3, padding=1)
        self.category_pred = nn.Conv2d(channels, num_classes, 3, padding=1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, DeformConv2dPack)):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if offset_init == "zero":
            zero_offsets(self)
        nn.init.constant_(self.category_pred.bias, -math.log((1 - prior_prob) / prior_prob))

    @staticmethod
    def level_inputs(features: list[Tensor]) -> list[Tensor]:
        """P2 halved, P3..P5 as they are, P6 resized to P5's size."""
        return [
            F.interpolate(features[0], scale_factor=0.5, mode="bilinear", align_corners=False),
            features[1],
            features[2],
            features[3],
            F.interpolate(features[4], size=features[3].shape[-2:], mode="bilinear", align_corners=False),
        ]

    def forward_level(self, x: Tensor, grid: int) -> tuple[Tensor, Tensor]:
        x = F.interpolate(with_coordinates(x), size=(grid, grid), mode="bilinear", align_corners=False)
        category = x[:, :-2]
        kernel = x
        for layer in self.kernel_tower:
            kernel = layer(kernel)
        for layer in self.category_tower:
            category = layer(category)
        return self.category_pred(category), self.kernel_pred(kernel)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Returns per-level category logits (N, C, S, S) and kernels (N, E, S, S)."""
        categories, kernels = [], []
        for x, grid in zip(self.level_inputs(features), self.grids):
            category, kernel = self.forward_level(x, grid)
            categories.append(category)
            kernels.append(kernel)
        return categories, kernels


class MaskFeatureBranch(nn.Module):
    """Fuses P2..P5 into one E-channel map at 1/4 of the input resolution.

    Level i applies i blocks of conv-GN-ReLU + bilinear x2 upsampling (level 0 one conv and
    no upsampling); the P5 input carries two coordinate channels. ``dcn`` ("none", "v1",
    "v2") makes every conv deformable, the final 1x1 too. Initialisation as the authors'
    release: every ``nn.Conv2d`` normal(std 0.01), the deformable convs' offset convs included
    (their own weights keep their uniform initialisation).
    """

    def __init__(self, in_channels: int = 256, mid_channels: int = 128, out_channels: int = 128, num_levels: int = 4,
                 dcn: str = "none"):
        super().__init__()
        self.levels = nn.ModuleList()
        for level in range(num_levels):
            first_in = in_channels + 2 if level == num_levels - 1 else in_channels
            blocks = [ConvNormReLU(first_in, mid_channels, dcn=dcn)]
            blocks += [ConvNormReLU(mid_channels, mid_channels, dcn=dcn) for _ in range(1, max(level, 1))]
            self.levels.append(nn.ModuleList(blocks))
        self.fuse = ConvNormReLU(mid_channels, out_channels, kernel_size=1, dcn=dcn)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)

    def forward(self, features: list[Tensor]) -> Tensor:
        total = None
        last = len(self.levels) - 1
        for level, (x, blocks) in enumerate(zip(features, self.levels)):
            if level == last:
                x = with_coordinates(x)
            for block in blocks:
                x = block(x)
                if level > 0:
                    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            total = x if total is None else total + x
        return self.fuse(total)
