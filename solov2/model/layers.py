"""Small building blocks shared by the heads."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .deform_conv import make_conv


class ConvNormReLU(nn.Sequential):
    """3x3 (or 1x1) convolution without bias, GroupNorm(32), ReLU. ``dcn`` ("none", "v1",
    "v2") makes the convolution a deformable one (``solov2.model.deform_conv.make_conv``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, groups: int = 32,
                 dcn: str = "none"):
        super().__init__()
        self.conv = make_conv(dcn, in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.norm = nn.GroupNorm(groups, out_channels)
        self.relu = nn.ReLU(inplace=True)


def coordinate_channels(x: Tensor) -> Tensor:
    """Two channels (x then y) running linearly from -1 to 1 over the width and height of ``x``."""
    n, _, h, w = x.shape
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
    grid_x = xs.view(1, 1, 1, w).expand(n, 1, h, w)
    grid_y = ys.view(1, 1, h, 1).expand(n, 1, h, w)
    return torch.cat([grid_x, grid_y], dim=1)


def with_coordinates(x: Tensor) -> Tensor:
    return torch.cat([x, coordinate_channels(x)], dim=1)
