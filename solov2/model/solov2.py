"""The SOLOv2 network: ResNet + FPN + kernel/category head + mask feature branch."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from ..config import ModelConfig
from .fpn import FPN
from .heads import MaskFeatureBranch, SOLOv2Head
from .deform_conv import DCN_TYPES
from .resnet import ARCHITECTURES, Bottleneck, ResNet


class ModelConfigError(ValueError):
    """Raised for a model config whose deformable-convolution or ResNeXt keys are invalid
    (an unknown type, stages outside 1-4, or a ResNet-18/34 backbone)."""


def check_dcn_config(cfg: ModelConfig) -> None:
    """Raise ModelConfigError naming the config key that cannot be built."""
    for key in ("backbone_dcn", "head_dcn", "mask_branch_dcn"):
        if getattr(cfg, key) not in DCN_TYPES:
            raise ModelConfigError(
                f"model.{key} must be one of {', '.join(DCN_TYPES)}, got {getattr(cfg, key)!r}")
    if any(stage not in (1, 2, 3, 4) for stage in cfg.backbone_dcn_stages):
        raise ModelConfigError(
            f"model.backbone_dcn_stages must list stages 1-4, got {cfg.backbone_dcn_stages}")
    bottleneck = ARCHITECTURES.get(cfg.backbone_depth, (Bottleneck,))[0] is Bottleneck
    uses_dcn = cfg.backbone_dcn != "none" and bool(cfg.backbone_dcn_stages)
    if not bottleneck and (uses_dcn or cfg.backbone_groups != 1 or cfg.backbone_width_per_group != 64):
        raise ModelConfigError(
            f"model.backbone_dcn / backbone_groups need a ResNet-50 or deeper (model.backbone_depth is "
            f"{cfg.backbone_depth})")
    if cfg.backbone_groups < 1 or cfg.backbone_width_per_group < 1:
        raise ModelConfigError("model.backbone_groups and backbone_width_per_group must be >= 1")


class SOLOv2Outputs(NamedTuple):
    category_logits: list[Tensor]  # per level (N, C, S, S)
    kernels: list[Tensor]  # per level (N, E, S, S)
    mask_features: Tensor  # (N, E, H/4, W/4)


class SOLOv2(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        check_dcn_config(cfg)
        if not (len(cfg.strides) == len(cfg.grids) == len(cfg.scale_ranges) == 5):
            raise ValueError("model.strides, model.grids and model.scale_ranges need 5 entries each")
        self.cfg = cfg
        self.backbone = ResNet(
            cfg.backbone_depth, cfg.frozen_stages, cfg.norm_eval, groups=cfg.backbone_groups,
            width_per_group=cfg.backbone_width_per_group, dcn=cfg.backbone_dcn,
            dcn_stages=tuple(cfg.backbone_dcn_stages),
        )
        self.fpn = FPN(self.backbone.out_channels, cfg.fpn_channels)
        self.head = SOLOv2Head(
            num_classes=cfg.num_classes,
            in_channels=cfg.fpn_channels,
            channels=cfg.head_channels,
            stacked_convs=cfg.head_stacked_convs,
            kernel_channels=cfg.kernel_channels,
            grids=tuple(cfg.grids),
            dcn=cfg.head_dcn,
            dcn_all_convs=cfg.head_dcn_all_convs,
            offset_init=cfg.head_offset_init,
        )
        self.mask_branch = MaskFeatureBranch(
            in_channels=cfg.fpn_channels,
            mid_channels=cfg.mask_mid_channels,
            out_channels=cfg.kernel_channels,
            dcn=cfg.mask_branch_dcn,
        )

    def forward(self, images: Tensor) -> SOLOv2Outputs:
        """``images``: normalized (N, 3, H, W) with H and W multiples of 32."""
        features = self.fpn(self.backbone(images))
        category_logits, kernels = self.head(features)
        mask_features = self.mask_branch(features[:4])
        return SOLOv2Outputs(category_logits, kernels, mask_features)
