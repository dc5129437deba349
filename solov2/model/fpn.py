"""Feature pyramid network: P2..P5 from C2..C5, plus P6 by strided max pooling of P5."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class FPN(nn.Module):
    def __init__(self, in_channels: list[int], out_channels: int = 256):
        super().__init__()
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"
            )
        outputs = [conv(x) for conv, x in zip(self.output_convs, laterals)]
        outputs.append(F.max_pool2d(outputs[-1], 1, stride=2))
        return outputs
