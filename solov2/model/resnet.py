"""ResNet-18/34/50/101 and ResNeXt backbones with torchvision's parameter names (no ``fc``).

Returns the outputs of the four stages (C2..C5). ``frozen_stages`` freezes the stem and the
first stages; ``norm_eval`` keeps every BatchNorm in eval mode during training, as the
authors' release does. ResNeXt (``groups`` > 1): bottleneck width
floor(channels * width_per_group / 64) * groups with a grouped conv2 (ResNeXt-101 64x4d:
groups 64, width per group 4). ``dcn`` ("v1"/"v2") with ``dcn_stages`` (1-4) makes conv2 of
every bottleneck of those stages deformable (1 deformable group), its offsets zero-initialised.
"""

from __future__ import annotations

from torch import Tensor, nn

from .deform_conv import make_conv, zero_offsets


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, width_per_group: int = 64, dcn: str = "none"):
        super().__init__()
        if groups != 1 or width_per_group != 64 or dcn != "none":
            raise ValueError("ResNet-18/34 blocks support neither groups nor deformable convolution")
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, width_per_group: int = 64, dcn: str = "none"):
        super().__init__()
        out_channels = channels * self.expansion
        width = channels * width_per_group // 64 * groups
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        # Stride on the 3x3 conv ("pytorch" style), as torchvision and the release.
        self.conv2 = make_conv(dcn, width, width, 3, stride, 1, groups=groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


ARCHITECTURES: dict[int, tuple[type[nn.Module], list[int]]] = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
}


def stage_channels(depth: int) -> list[int]:
    """Output channels of C2..C5 for a ResNet of this depth."""
    block, _ = ARCHITECTURES[depth]
    return [64 * 2**i * block.expansion for i in range(4)]


class ResNet(nn.Module):
    def __init__(self, depth: int = 18, frozen_stages: int = 1, norm_eval: bool = True, groups: int = 1,
                 width_per_group: int = 64, dcn: str = "none", dcn_stages: tuple[int, ...] = ()):
        super().__init__()
        if depth not in ARCHITECTURES:
            raise ValueError(f"ResNet depth must be one of {sorted(ARCHITECTURES)}, got {depth}")
        block, layers = ARCHITECTURES[depth]
        self.depth = depth
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_channels = 64
        for index, num_blocks in enumerate(layers):
            channels = 64 * 2**index
            stride = 1 if index == 0 else 2
            downsample = None
            if stride != 1 or in_channels != channels * block.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(in_channels, channels * block.expansion, 1, stride, bias=False),
                    nn.BatchNorm2d(channels * block.expansion),
                )
            options = {"groups": groups, "width_per_group": width_per_group,
                       "dcn": dcn if index + 1 in dcn_stages else "none"}
            blocks = [block(in_channels, channels, stride, downsample, **options)]
            in_channels = channels * block.expansion
            blocks += [block(in_channels, channels, **options) for _ in range(1, num_blocks)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
        self.out_channels = stage_channels(depth)
        self._init_weights()
        self._freeze()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        zero_offsets(self)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        modules: list[nn.Module] = [self.conv1, self.bn1]
        modules += [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]
        return modules

    def _freeze(self) -> None:
        for module in self._frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "ResNet":
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]
