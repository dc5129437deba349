"""The SOLOv2 network: ResNet + FPN + kernel/category head + mask feature branch."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from ..config import ModelConfig
from .fpn import FPN
from .heads import MaskFeatureBranch, SOLOv2Head
from .resnet import ResNet


class DeformableConvolutionNotAvailable(NotImplementedError):
    """Raised for presets that need deformable convolution, which is not implemented yet."""


class SOLOv2Outputs(NamedTuple):
    category_logits: list[Tensor]  # per level (N, C, S, S)
    kernels: list[Tensor]  # per level (N, E, S, S)
    mask_features: Tensor  # (N, E, H/4, W/4)


class SOLOv2(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.backbone_dcn_stages or cfg.head_dcn:
            raise DeformableConvolutionNotAvailable(
                "this preset uses deformable convolution (backbone stages "
                f"{cfg.backbone_dcn_stages}, head tower: {cfg.head_dcn}), which solov2 does not "
                "implement yet; use a preset without 'dcn' in its name"
            )
        if not (len(cfg.strides) == len(cfg.grids) == len(cfg.scale_ranges) == 5):
            raise ValueError("model.strides, model.grids and model.scale_ranges need 5 entries each")
        self.cfg = cfg
        self.backbone = ResNet(cfg.backbone_depth, cfg.frozen_stages, cfg.norm_eval)
        self.fpn = FPN(self.backbone.out_channels, cfg.fpn_channels)
        self.head = SOLOv2Head(
            num_classes=cfg.num_classes,
            in_channels=cfg.fpn_channels,
            channels=cfg.head_channels,
            stacked_convs=cfg.head_stacked_convs,
            kernel_channels=cfg.kernel_channels,
            grids=tuple(cfg.grids),
        )
        self.mask_branch = MaskFeatureBranch(
            in_channels=cfg.fpn_channels,
            mid_channels=cfg.mask_mid_channels,
            out_channels=cfg.kernel_channels,
        )

    def forward(self, images: Tensor) -> SOLOv2Outputs:
        """``images``: normalized (N, 3, H, W) with H and W multiples of 32."""
        features = self.fpn(self.backbone(images))
        category_logits, kernels = self.head(features)
        mask_features = self.mask_branch(features[:4])
        return SOLOv2Outputs(category_logits, kernels, mask_features)
