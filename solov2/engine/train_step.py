"""One training step: targets for the whole batch, forward, loss, backward, clipping and the
optimizer update, with the batch-wide counts that normalise the losses under torchrun."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import Config
from ..data.augment import TrainBatch
from ..model.losses import solov2_loss
from ..model.targets import MASK_STRIDE, build_targets
from .distributed import DistributedContext, all_reduce_sum
from .train_types import StepResult


def train_step(
    model: nn.Module,
    batch: TrainBatch,
    cfg: Config,
    optimizer: torch.optim.Optimizer,
    ctx: DistributedContext | None = None,
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
) -> StepResult:
    """Targets, forward, loss, backward, clipping and the optimizer update for one batch
    (already on the model's device). Non-finite losses skip the update on every process."""
    ctx = ctx or DistributedContext(0, 1, 0, batch.images.device)
    images = batch.images
    feature_size = (images.shape[-2] // MASK_STRIDE, images.shape[-1] // MASK_STRIDE)
    targets = build_targets(
        batch.boxes, batch.labels, batch.masks, feature_size,
        cfg.model.grids, cfg.model.scale_ranges, cfg.model.sigma, cfg.model.num_classes,
    )
    # Normalise by batch-wide counts; DDP averages gradients over processes, hence / world size.
    # counts: positive cells, positive pairs, then positive cells per level.
    counts = torch.stack([
        targets.num_positive_cells.to(images.device, torch.float64),
        torch.tensor(float(targets.num_pairs), device=images.device, dtype=torch.float64),
        *[(c != targets.num_classes).sum().to(images.device, torch.float64) for c in targets.categories],
    ])
    counts = all_reduce_sum(counts, ctx)
    world = ctx.world_size
    category_norm = (counts[0].float() + 1) / world
    mask_norm = counts[1].float().clamp(min=1) / world

    with torch.autocast(images.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        outputs = model(images)
    losses = solov2_loss(outputs, targets, cfg.train, category_norm, mask_norm)
    stats = all_reduce_sum(torch.stack([losses.category.detach(), losses.mask.detach()]), ctx) / world
    loss_category, loss_mask = (float(v) for v in stats.tolist())
    total = loss_category + loss_mask
    num_positive, _, *per_level = (int(v) for v in counts.tolist())
    observed = (tuple(per_level), tuple(len(labels) for labels in batch.labels))
    if not math.isfinite(total):
        optimizer.zero_grad(set_to_none=True)
        return StepResult(total, loss_category, loss_mask, num_positive, float("nan"), "non-finite loss", *observed)

    params = [p for group in optimizer.param_groups for p in group["params"]]
    max_norm = cfg.train.grad_clip if cfg.train.grad_clip > 0 else float("inf")
    if scaler is not None:
        scaler.scale(losses.total).backward()
        scaler.unscale_(optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        scaler.step(optimizer)  # skips the update itself when gradients overflowed
        scaler.update()
        skipped = "" if math.isfinite(grad_norm) else "fp16 gradient overflow (loss scale lowered)"
    else:
        losses.total.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        skipped = "" if math.isfinite(grad_norm) else "non-finite gradient"
        if not skipped:
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(total, loss_category, loss_mask, num_positive, grad_norm, skipped, *observed)
