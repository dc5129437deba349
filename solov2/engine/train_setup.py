"""What a training run is built from: the learning-rate schedule, the dataset and its classes,
the model with its starting weights, the optimizer and the batch loader."""

from __future__ import annotations

import logging
import random
import signal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..checkpoint import load_checkpoint, load_weights
from ..config import Config, ModelConfig, TrainConfig, validate_fields
from ..data.augment import TrainTransform, collate
from ..data.coco import CocoInstances, DatasetError
from ..data.sampler import GroupedBatchSampler
from ..model.solov2 import SOLOv2
from .checkpointing import ResumePoint
from .distributed import DistributedContext
from .train_types import TrainingError

logger = logging.getLogger("solov2.train")


def scaled_lr(train_cfg: TrainConfig, world_size: int) -> float:
    """base_lr for base_batch_size images, scaled linearly to batch_size x world_size."""
    return train_cfg.base_lr * train_cfg.batch_size * world_size / train_cfg.base_batch_size


def learning_rate(base_lr: float, epoch: int, iteration: int, train_cfg: TrainConfig) -> float:
    """Step decay (x0.1 from each of ``lr_steps``, 0-based epoch >= step) and linear warm-up
    from ``warmup_ratio x lr`` over the first ``warmup_iters`` iterations."""
    lr = base_lr * 0.1 ** sum(epoch >= step for step in train_cfg.lr_steps)
    if iteration < train_cfg.warmup_iters:
        k = (1 - iteration / train_cfg.warmup_iters) * (1 - train_cfg.warmup_ratio)
        lr *= 1 - k
    return lr


def build_dataset(cfg: Config) -> CocoInstances:
    """The training set of ``cfg.data``; label order from ``cfg.model.category_ids`` if set."""
    if not cfg.data.train_ann or not cfg.data.train_images:
        raise DatasetError(
            "no training data: set data.train_ann=PATH/annotations.json and data.train_images=IMAGE_FOLDER"
        )
    return CocoInstances(
        cfg.data.train_ann,
        cfg.data.train_images,
        transform=TrainTransform.from_config(cfg),
        category_ids=list(cfg.model.category_ids) or None,
        box_convention=cfg.data.box_convention,
        seed=cfg.train.seed,
    )


def adopt_classes(model_cfg: ModelConfig, dataset: CocoInstances) -> None:
    """Take the class count, dataset category ids and names from ``dataset`` unless
    ``model_cfg.category_ids`` fixes them (then only missing names); a different
    ``num_classes`` is replaced with a warning in the log. Raises TrainingError when
    fixed ids and ``num_classes`` disagree."""
    if model_cfg.category_ids:
        if len(model_cfg.category_ids) != model_cfg.num_classes:
            raise TrainingError(
                f"model.category_ids has {len(model_cfg.category_ids)} entries but model.num_classes "
                f"is {model_cfg.num_classes}"
            )
        if not model_cfg.class_names:
            model_cfg.class_names = list(dataset.class_names)
    else:
        if model_cfg.num_classes != len(dataset.category_ids):
            logger.warning(f"warning: model.num_classes {model_cfg.num_classes} replaced by the "
                           f"{len(dataset.category_ids)} categories of {dataset.ann_file}")
        model_cfg.num_classes = len(dataset.category_ids)
        model_cfg.category_ids = list(dataset.category_ids)
        model_cfg.class_names = list(dataset.class_names)


def build_optimizer(model: nn.Module, train_cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """SGD with momentum (the release's) or AdamW, over the trainable parameters; raises
    ConfigError for a ``train`` section outside its declared ranges."""
    validate_fields(train_cfg, "train.")
    params = [p for p in model.parameters() if p.requires_grad]
    if train_cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=train_cfg.momentum, weight_decay=train_cfg.weight_decay)
    # The fused kernel is several times faster than the default multi-tensor one on CPUs.
    return torch.optim.AdamW(params, lr=lr, weight_decay=train_cfg.weight_decay, fused=True)


def autocast_dtype(device_type: str) -> torch.dtype:
    """The mixed-precision dtype of ``train.amp``: float16 on CUDA, bfloat16 elsewhere."""
    return torch.float16 if device_type == "cuda" else torch.bfloat16


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def ignore_sigint(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which saves and stops cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def load_dataset(cfg: Config) -> CocoInstances:
    """``build_dataset``, its report logged, and its classes adopted into ``cfg.model``
    (``adopt_classes``)."""
    dataset = build_dataset(cfg)
    for line in dataset.report.lines():
        logger.info(line)
    adopt_classes(cfg.model, dataset)
    logger.info(f"{cfg.model.num_classes} classes: " + ", ".join(cfg.model.class_names[:10])
                + (" ..." if cfg.model.num_classes > 10 else ""))
    return dataset


def build_model(cfg: Config, point: ResumePoint | None, load_from: str | None, backbone_weights: str | None,
                device: torch.device) -> nn.Module:
    """The network initialised from ``train.seed``, then given the resumed weights, or else
    the backbone and ``load_from`` weights when given; on ``device``."""
    seed_everything(cfg.train.seed)
    model = SOLOv2(cfg.model)
    if point is not None:
        load_weights(model, point.state_dict, source=str(point.path), allow_class_mismatch=False)
        return model.to(device)
    if backbone_weights:
        loaded = load_checkpoint(backbone_weights)
        load_weights(model, loaded.state_dict, source=str(backbone_weights), backbone_only=True)
        logger.info(f"backbone weights from {backbone_weights} ({loaded.format})")
    if load_from:
        loaded = load_checkpoint(load_from)
        skipped = load_weights(model, loaded.state_dict, source=str(load_from), allow_class_mismatch=True)
        logger.info(f"weights from {load_from} ({loaded.format})"
                    + (", category layer re-initialised for the new classes" if skipped else ""))
    return model.to(device)


def build_loader(
    dataset: CocoInstances, cfg: Config, ctx: DistributedContext
) -> tuple[GroupedBatchSampler, DataLoader]:
    """This process's batch sampler (grouped by aspect ratio when ``data.group_by_aspect_ratio``)
    and the loader over it (``data.workers`` processes, which ignore Ctrl-C)."""
    sampler = GroupedBatchSampler(
        dataset.aspect_groups() if cfg.data.group_by_aspect_ratio else [0] * len(dataset),
        cfg.train.batch_size, world_size=ctx.world_size, rank=ctx.rank, seed=cfg.train.seed,
    )
    workers = cfg.data.workers
    loader = DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
        pin_memory=ctx.device.type == "cuda", persistent_workers=workers > 0,
        worker_init_fn=ignore_sigint if workers > 0 else None,
    )
    return sampler, loader


def total_iterations(train_cfg: TrainConfig, per_epoch: int, max_iters: int | None) -> int:
    """The run's iterations: the whole schedule, or fewer by ``max_iters`` (else
    ``train.max_iters``) when that is positive."""
    limit = max_iters if max_iters is not None else train_cfg.max_iters
    total = train_cfg.epochs * per_epoch
    return min(total, limit) if limit and limit > 0 else total
