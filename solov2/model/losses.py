"""SOLOv2 losses: sigmoid focal loss on the category maps, dice loss on the predicted masks.

total = focal_weight x focal / (positive cells + 1) + dice_weight x dice sum over the
positive (cell, instance) pairs / normaliser. The normaliser is the number of pairs (a mean,
as the authors' release; ``train.dice_normalizer: pairs``) or the number of positive cells
(mmdetection 3.x; ``positive_cells``). Computed in float32 whatever the autocast dtype of
the network outputs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from ..config import TrainConfig
from .solov2 import SOLOv2Outputs
from .targets import SOLOv2Targets

DICE_EPS = 0.001


class SOLOv2Losses(NamedTuple):
    total: Tensor
    category: Tensor  # weighted focal loss
    mask: Tensor  # weighted dice loss
    num_positive_cells: Tensor
    num_pairs: int


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, gamma: float = 2.0, alpha: float = 0.25) -> Tensor:
    """Element-wise sigmoid focal loss (Lin et al.), not reduced; ``targets`` are 0/1 floats."""
    prob = logits.sigmoid()
    pt = (1 - prob) * targets + prob * (1 - targets)
    weight = (alpha * targets + (1 - alpha) * (1 - targets)) * pt.pow(gamma)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * weight


def dice_loss(probs: Tensor, targets: Tensor) -> Tensor:
    """Per mask 1 - 2 sum(p t) / (sum(p p) + 0.001 + sum(t t) + 0.001); inputs (P, ...).

    ``targets`` may be float or 0/1 uint8 (used as is, without a float copy).
    """
    p = probs.reshape(probs.shape[0], -1)
    t = targets.reshape(targets.shape[0], -1)
    inter = (p * t).sum(dim=1)
    t_sq = (t * t).sum(dim=1, dtype=p.dtype)
    return 1 - 2 * inter / ((p * p).sum(dim=1) + DICE_EPS + t_sq + DICE_EPS)


def category_loss(
    category_logits: list[Tensor], targets: SOLOv2Targets, gamma: float, alpha: float
) -> Tensor:
    """Summed focal loss over all cells and classes of all levels (not normalised)."""
    num_classes = targets.num_classes
    logits = torch.cat([c.float().permute(0, 2, 3, 1).reshape(-1, num_classes) for c in category_logits])
    labels = torch.cat([c.reshape(-1) for c in targets.categories])
    onehot = F.one_hot(labels, num_classes + 1)[:, :num_classes].to(logits.dtype)
    return sigmoid_focal_loss(logits, onehot, gamma, alpha).sum()


def pair_mask_logits(
    kernels: list[Tensor], mask_features: Tensor, targets: SOLOv2Targets
) -> tuple[list[Tensor], list[Tensor]]:
    """Mask logits of the positive pairs, image by image, with the index of each pair.

    Each pair's E-vector (its cell's kernel) is a 1x1 convolution over its image's mask
    features: one matrix product per image.
    """
    n, e = mask_features.shape[:2]
    flat_kernels = torch.cat([k.float().reshape(n, e, -1) for k in kernels], dim=2)  # (N, E, cells)
    cells = torch.tensor([k.shape[-2] * k.shape[-1] for k in kernels], device=flat_kernels.device)
    level_start = torch.cumsum(cells, 0) - cells
    pair_kernels = flat_kernels[targets.pair_image, :, level_start[targets.pair_level] + targets.pair_cell]
    features = mask_features.float().reshape(n, e, -1)
    logits, order = [], []
    for image in range(n):
        idx = (targets.pair_image == image).nonzero().squeeze(1)
        if idx.numel():
            logits.append(pair_kernels[idx] @ features[image])
            order.append(idx)
    return logits, order


def _positive_cells(targets: SOLOv2Targets, category_normalizer: Tensor | float) -> Tensor | float:
    """The dice normaliser of mmdetection 3.x: positive cells, batch-wide per process share."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    cells = category_normalizer - 1.0 / world  # category_normalizer = (cells + 1) / world
    if isinstance(cells, Tensor):
        return cells.clamp(min=1.0 / world)
    return max(cells, 1.0 / world)


def solov2_loss(
    outputs: SOLOv2Outputs,
    targets: SOLOv2Targets,
    cfg: TrainConfig,
    category_normalizer: Tensor | float | None = None,
    mask_normalizer: Tensor | float | None = None,
) -> SOLOv2Losses:
    """Focal + dice loss of a batch.

    The focal sum is divided by ``category_normalizer`` (default: positive cells + 1) and the
    dice sum by ``mask_normalizer`` (default: the number of pairs). Distributed training
    passes batch-wide values over all processes, divided by the world size, so that the
    averaged gradients equal those of one process with the whole batch. With
    ``cfg.dice_normalizer == "positive_cells"`` the dice sum is divided by the positive cells
    instead: ``category_normalizer`` - 1 / world size when given (the same batch-wide count),
    else the positive cells of ``targets`` (at least 1).
    """
    device_type = outputs.mask_features.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        if category_normalizer is None:
            category_normalizer = targets.num_positive_cells.float() + 1
        focal = category_loss(outputs.category_logits, targets, cfg.focal_gamma, cfg.focal_alpha)
        loss_category = cfg.focal_weight * focal / category_normalizer

        logits, order = pair_mask_logits(outputs.kernels, outputs.mask_features, targets)
        if logits:
            idx = torch.cat(order)
            instance = targets.pair_instance[idx]
            mask_targets = targets.instance_masks.reshape(targets.instance_masks.shape[0], -1)[instance]
            dice_sum = dice_loss(torch.cat(logits).sigmoid(), mask_targets).sum()
            if cfg.dice_normalizer == "positive_cells":
                mask_normalizer = _positive_cells(targets, category_normalizer)
            elif cfg.dice_normalizer != "pairs":
                raise ValueError(f"train.dice_normalizer must be 'pairs' or 'positive_cells', got "
                                 f"{cfg.dice_normalizer!r}")
            elif mask_normalizer is None:
                mask_normalizer = float(targets.num_pairs)
            loss_mask = cfg.dice_weight * dice_sum / mask_normalizer
        else:
            # No positives here: a zero that still reaches every kernel and mask-feature
            # parameter, so distributed gradient averaging sees the same graph on each process.
            loss_mask = sum(k.float().sum() for k in outputs.kernels) * 0.0 + outputs.mask_features.float().sum() * 0.0
    return SOLOv2Losses(
        total=loss_category + loss_mask,
        category=loss_category,
        mask=loss_mask,
        num_positive_cells=targets.num_positive_cells,
        num_pairs=targets.num_pairs,
    )
