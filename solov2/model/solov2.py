"""The SOLOv2 network: ResNet + FPN + kernel/category head + mask feature branch."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from ..config import ConfigError, ModelConfig, validate_fields
from .fpn import FPN
from .heads import MaskFeatureBranch, SOLOv2Head
from .resnet import ARCHITECTURES, Bottleneck, ResNet


class ModelConfigError(ConfigError):
    """Raised for a model config that cannot be built: a field outside its declared range (a
    ``ModelConfig`` made in Python skips the loader's validation) or deformable convolution /
    ResNeXt keys on a ResNet-18/34 backbone."""


def check_model_config(cfg: ModelConfig) -> None:
    """Raise ModelConfigError naming the config key that cannot be built."""
    try:
        validate_fields(cfg, "model.")
    except ConfigError as err:
        raise ModelConfigError(str(err)) from err
    bottleneck = ARCHITECTURES.get(cfg.backbone_depth, (Bottleneck,))[0] is Bottleneck
    uses_dcn = cfg.backbone_dcn != "none" and bool(cfg.backbone_dcn_stages)
    if not bottleneck and (uses_dcn or cfg.backbone_groups != 1 or cfg.backbone_width_per_group != 64):
        raise ModelConfigError(
            f"model.backbone_dcn / backbone_groups need a ResNet-50 or deeper (model.backbone_depth is "
            f"{cfg.backbone_depth})")


class SOLOv2Outputs(NamedTuple):
    category_logits: list[Tensor]  # per level (N, C, S, S)
    kernels: list[Tensor]  # per level (N, E, S, S)
    mask_features: Tensor  # (N, E, H/4, W/4)


class SOLOv2(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        check_model_config(cfg)
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
