"""SOLOv2 training: one CPU, one GPU, or many GPUs and machines under torchrun.

``train(cfg, work_dir)`` runs the whole schedule of the authors' release (REFERENCE.md
section 1): SGD with momentum and weight decay, the learning rate scaled linearly with the
total batch, linear warm-up, step decay, gradient clipping; focal + dice loss on targets
built for the whole batch at once. The work dir receives ``config.yaml``, ``train.log``,
``metrics.jsonl``, ``epoch_N.pth`` and ``latest.pth`` after each epoch and ``final.pth`` at
the end; ``resume=True`` continues from ``latest.pth`` exactly where it stopped. Ctrl-C (or
SIGTERM) finishes the current step, saves ``latest.pth`` and raises ``TrainingInterrupted``.

The per-step pieces are public for benchmarks: ``build_targets`` (solov2.model.targets),
``solov2_loss`` (solov2.model.losses) and ``train_step`` here.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint import atomic_save, load_checkpoint, load_weights, make_checkpoint
from ..config import Config, ConfigError, TrainConfig, config_from_dict, save_config
from ..data.augment import TrainBatch, TrainTransform, collate
from ..data.coco import CocoInstances, DatasetError
from ..data.sampler import GroupedBatchSampler
from ..model.losses import solov2_loss
from ..model.solov2 import SOLOv2
from ..model.targets import MASK_STRIDE, build_targets
from .distributed import DistributedContext, all_reduce_sum, barrier, broadcast_flag, cleanup, init_distributed
from .health import TrainingHealth

logger = logging.getLogger("solov2.train")


class TrainingError(RuntimeError):
    """Training cannot start or go on (bad resume target, diverged loss, ...)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: the state was saved to ``checkpoint`` (None on other processes)."""

    def __init__(self, checkpoint: Path | None, iteration: int):
        super().__init__(f"training interrupted at iteration {iteration}")
        self.checkpoint = checkpoint
        self.iteration = iteration


@dataclass
class TrainState:
    epoch: int = 0  # the epoch in progress (0-based); equals the epochs completed
    epoch_batch: int = 0  # batches of that epoch already done
    iteration: int = 0  # optimizer steps taken (skipped steps included)
    bad_steps: int = 0  # non-finite losses in a row


class StepResult(NamedTuple):
    loss: float  # batch-wide, over all processes
    loss_category: float
    loss_mask: float
    num_positive: int  # positive cells, batch-wide
    grad_norm: float
    skipped: str  # "" or why the update was skipped


# ----------------------------------------------------------------------------- schedule


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


# ----------------------------------------------------------------------------- one step


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
    counts = torch.stack([
        targets.num_positive_cells.to(images.device, torch.float64),
        torch.tensor(float(targets.num_pairs), device=images.device, dtype=torch.float64),
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
    num_positive = int(counts[0].item())
    if not math.isfinite(total):
        optimizer.zero_grad(set_to_none=True)
        return StepResult(total, loss_category, loss_mask, num_positive, float("nan"), "non-finite loss")

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
    return StepResult(total, loss_category, loss_mask, num_positive, grad_norm, skipped)


# ----------------------------------------------------------------------------- building blocks


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


OPTIMIZERS = ("sgd", "adamw")


def check_optimizer(train_cfg: TrainConfig) -> None:
    """Raise ConfigError unless ``train.optimizer`` is one of OPTIMIZERS."""
    if train_cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {train_cfg.optimizer!r}")


def build_optimizer(model: nn.Module, train_cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """SGD with momentum (the release's) or AdamW, over the trainable parameters."""
    check_optimizer(train_cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    if train_cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=train_cfg.momentum, weight_decay=train_cfg.weight_decay)
    # The fused kernel is several times faster than the default multi-tensor one on CPUs.
    return torch.optim.AdamW(params, lr=lr, weight_decay=train_cfg.weight_decay, fused=True)


def autocast_dtype(device_type: str) -> torch.dtype:
    """The mixed-precision dtype of ``train.amp``: float16 on CUDA, bfloat16 elsewhere."""
    return torch.float16 if device_type == "cuda" else torch.bfloat16


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _ignore_sigint(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which saves and stops cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stdout)


def _resume_path(resume: bool | str | Path, work_dir: Path) -> Path:
    path = work_dir / "latest.pth" if resume is True else Path(resume)
    if path.is_dir():
        path = path / "latest.pth"
    if not path.is_file():
        raise TrainingError(f"{path}: no checkpoint to resume from")
    return path


# ----------------------------------------------------------------------------- the run


class _Run:
    """State and steps of one training run (use ``train``)."""

    def __init__(self, cfg: Config, work_dir: Path, ctx: DistributedContext, progress: bool):
        self.cfg = cfg
        self.work_dir = work_dir
        self.ctx = ctx
        self.progress = progress and ctx.is_main
        self.state = TrainState()
        self.stop_requested = False
        self.tensorboard = None
        self.handlers: list[logging.Handler] = []
        self.validation_missing_logged = False

    # -- logging and files (process 0 only)

    def setup_logging(self) -> None:
        logger.setLevel(logging.INFO)
        logger.propagate = False
        if not self.ctx.is_main:
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        console = _TqdmHandler()
        console.setFormatter(logging.Formatter("%(message)s"))
        logfile = logging.FileHandler(self.work_dir / "train.log", encoding="utf-8")
        logfile.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        self.handlers = [console, logfile]
        for handler in self.handlers:
            logger.addHandler(handler)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            SummaryWriter = None
        if SummaryWriter is not None:
            self.tensorboard = SummaryWriter(str(self.work_dir / "tensorboard"))

    def close_logging(self) -> None:
        for handler in self.handlers:
            logger.removeHandler(handler)
            handler.close()
        if self.tensorboard is not None:
            self.tensorboard.close()

    def write_metrics(self, row: dict[str, Any]) -> None:
        if not self.ctx.is_main:
            return
        with open(self.work_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.tensorboard is not None:
            step = row.get("iteration", self.state.iteration)
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("iteration", "epoch"):
                    self.tensorboard.add_scalar(f"{row.get('type', 'train')}/{key}", value, step)

    def trim_metrics(self) -> None:
        """On resume, drop rows logged after the checkpoint (they will be logged again)."""
        path = self.work_dir / "metrics.jsonl"
        if not self.ctx.is_main or not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if row.get("iteration", 0) <= self.state.iteration:
                kept.append(line)
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)

    # -- checkpoints

    def save(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
             scaler: torch.amp.GradScaler | None) -> None:
        if not self.ctx.is_main:
            return
        extra: dict[str, Any] = {**asdict(self.state), "world_size": self.ctx.world_size}
        if optimizer is not None:
            extra.update(
                optimizer=optimizer.state_dict(),
                scaler=scaler.state_dict() if scaler is not None else None,
                rng=_rng_state(),
            )
        atomic_save(make_checkpoint(model, self.cfg.to_dict(), **extra), path)

    # -- validation

    def validate(self, model: nn.Module, epoch: int) -> dict[str, Any] | None:
        cfg = self.cfg
        if not cfg.data.val_ann:
            return None
        try:
            from .evaluate import evaluate_dataset
        except ModuleNotFoundError as err:
            if err.name != "solov2.engine.evaluate":
                raise
            if not self.validation_missing_logged:
                logger.info("validation unavailable: solov2.engine.evaluate is not installed")
                self.validation_missing_logged = True
            return None
        module = _unwrap(model)
        module.eval()
        try:
            metrics = evaluate_dataset(
                module, cfg, cfg.data.val_ann, cfg.data.val_images,
                out_dir=self.work_dir / "val", device=self.ctx.device,
                progress=self.progress, distributed=self.ctx.distributed,
            )
        finally:
            module.train()
        if self.ctx.is_main and metrics:
            scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            logger.info(f"validation after epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in scalars.items()))
            self.write_metrics({"type": "val", "epoch": epoch, "iteration": self.state.iteration, **scalars})
        return metrics

    # -- signals

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.stop_requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.stop_requested = True
        if self.ctx.is_main:
            logger.info(f"{signal.Signals(signum).name}: finishing this step, then saving latest.pth "
                        "(press Ctrl-C again to stop at once)")

    def install_signal_handlers(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: Ctrl-C stays an ordinary KeyboardInterrupt
                pass
        return previous


def train(
    cfg: Config,
    work_dir: str | Path,
    *,
    resume: bool | str | Path = False,
    load_from: str | None = None,
    backbone_weights: str | None = None,
    max_iters: int | None = None,
    device: str | None = None,
    progress: bool = True,
) -> Path:
    """Train SOLOv2 on the COCO-format data of ``cfg.data``; returns the final checkpoint path.

    Args:
        cfg: the full config (model preset, input scales, data paths, schedule). Not modified;
            the class count, names and dataset category ids found in the training set are
            written into the saved config (unless ``cfg.model.category_ids`` already fixes them).
        work_dir: where config.yaml, train.log, metrics.jsonl and checkpoints go.
        resume: True continues from ``work_dir/latest.pth`` (model, optimizer, schedule,
            epoch, iteration, random states, position in the epoch); a path names another
            checkpoint of this project. The model section of the checkpoint's config is used.
        load_from: start from these weights (any supported format; a different class count
            leaves the category layer at its initialisation) - fine-tuning.
        backbone_weights: torchvision ImageNet ResNet weights for the backbone.
        max_iters: stop after this many iterations in all (overrides ``train.max_iters``).
        device: "cpu", "cuda", "cuda:1"...; default CUDA when available. Under torchrun each
            process takes its LOCAL_RANK's GPU.
        progress: show a progress bar (process 0 only).

    Raises DatasetError for unusable data, TrainingError when the run cannot go on,
    TrainingInterrupted after saving on Ctrl-C / SIGTERM.
    """
    ctx = init_distributed(device)
    try:
        return _train(copy.deepcopy(cfg), Path(work_dir), ctx, resume, load_from, backbone_weights, max_iters, progress)
    finally:
        cleanup(ctx)


def _train(
    cfg: Config,
    work_dir: Path,
    ctx: DistributedContext,
    resume: bool | str | Path,
    load_from: str | None,
    backbone_weights: str | None,
    max_iters: int | None,
    progress: bool,
) -> Path:
    run = _Run(cfg, work_dir, ctx, progress)
    run.setup_logging()
    try:
        return _train_run(run, resume, load_from, backbone_weights, max_iters)
    finally:
        run.close_logging()


def _train_run(
    run: _Run,
    resume: bool | str | Path,
    load_from: str | None,
    backbone_weights: str | None,
    max_iters: int | None,
) -> Path:
    cfg, ctx, work_dir = run.cfg, run.ctx, run.work_dir
    device = ctx.device

    check_optimizer(cfg.train)  # before any data is read
    checkpoint: dict[str, Any] | None = None
    if not resume:
        existing = [name for name in ("latest.pth", "final.pth") if (work_dir / name).is_file()]
        if existing:
            raise TrainingError(
                f"{work_dir} already holds a training run ({', '.join(existing)}); continue it with "
                f"--resume {work_dir} (resume=True), or choose another work dir"
            )
    if resume:
        path = _resume_path(resume, work_dir)
        resumed = load_checkpoint(path)
        if resumed.format != "solov2" or "optimizer" not in resumed.raw or not resumed.config:
            raise TrainingError(
                f"{path}: not a training checkpoint of this project (no optimizer state); "
                "use --load-from to start a new run from its weights"
            )
        checkpoint = resumed.raw
        saved = config_from_dict(resumed.config)
        saved_optimizer = saved.train.optimizer
        if saved_optimizer != cfg.train.optimizer:
            raise TrainingError(
                f"{path} was trained with train.optimizer={saved_optimizer} but this run asks for "
                f"{cfg.train.optimizer}; resume with train.optimizer={saved_optimizer}"
            )
        saved_model = saved.model
        class_fields = ("num_classes", "class_names", "category_ids")
        differ = [k for k, v in asdict(saved_model).items() if k not in class_fields and getattr(cfg.model, k) != v]
        if differ:
            logger.info(f"resuming: using the model settings saved in {path} ({', '.join(differ)} differ)")
        cfg.model = saved_model
        logger.info(f"resuming from {path} (epoch {checkpoint['epoch'] + 1}, iteration {checkpoint['iteration']})")

    # Data first: a dataset problem should stop the run before anything heavy happens.
    dataset = build_dataset(cfg)
    for line in dataset.report.lines():
        logger.info(line)
    if cfg.model.category_ids:
        if len(cfg.model.category_ids) != cfg.model.num_classes:
            raise TrainingError(
                f"model.category_ids has {len(cfg.model.category_ids)} entries but model.num_classes "
                f"is {cfg.model.num_classes}"
            )
        if not cfg.model.class_names:
            cfg.model.class_names = list(dataset.class_names)
    else:
        cfg.model.num_classes = len(dataset.category_ids)
        cfg.model.category_ids = list(dataset.category_ids)
        cfg.model.class_names = list(dataset.class_names)
    logger.info(f"{cfg.model.num_classes} classes: " + ", ".join(cfg.model.class_names[:10])
                + (" ..." if cfg.model.num_classes > 10 else ""))

    _seed_everything(cfg.train.seed)
    model = SOLOv2(cfg.model)
    if backbone_weights and checkpoint is None:
        loaded = load_checkpoint(backbone_weights)
        load_weights(model, loaded.state_dict, source=str(backbone_weights), backbone_only=True)
        logger.info(f"backbone weights from {backbone_weights} ({loaded.format})")
    if load_from and checkpoint is None:
        loaded = load_checkpoint(load_from)
        skipped = load_weights(model, loaded.state_dict, source=str(load_from), allow_class_mismatch=True)
        logger.info(f"weights from {load_from} ({loaded.format})"
                    + (", category layer re-initialised for the new classes" if skipped else ""))
    if checkpoint is not None:
        load_weights(model, resumed.state_dict, source=str(path), allow_class_mismatch=False)
    model.to(device)

    world = ctx.world_size
    base_lr = scaled_lr(cfg.train, world)
    optimizer = build_optimizer(model, cfg.train, base_lr)
    amp_dtype = None
    scaler = None
    if cfg.train.amp:
        amp_dtype = autocast_dtype(device.type)
        if device.type == "cuda":
            scaler = torch.amp.GradScaler("cuda")
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scaler is not None and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        run.state = TrainState(
            checkpoint["epoch"], checkpoint["epoch_batch"], checkpoint["iteration"], checkpoint.get("bad_steps", 0)
        )
        if checkpoint.get("world_size", world) != world:
            logger.info(f"note: the checkpoint was written by {checkpoint['world_size']} processes, "
                        f"this run has {world}; the batch order within the epoch changes")
        _set_rng_state(checkpoint["rng"])
    if ctx.distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = GroupedBatchSampler(
        dataset.aspect_groups() if cfg.data.group_by_aspect_ratio else [0] * len(dataset),
        cfg.train.batch_size, world_size=world, rank=ctx.rank, seed=cfg.train.seed,
    )
    workers = cfg.data.workers
    loader = DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        worker_init_fn=_ignore_sigint if workers > 0 else None,
    )
    per_epoch = sampler.num_batches()
    limit = max_iters if max_iters is not None else cfg.train.max_iters
    total_iters = cfg.train.epochs * per_epoch
    if limit and limit > 0:
        total_iters = min(total_iters, limit)

    if ctx.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, work_dir / "config.yaml")
        if checkpoint is not None:
            run.trim_metrics()
    logger.info(
        f"training {cfg.name} on {device} x{world}: {len(dataset)} images, {per_epoch} iterations per epoch "
        f"of {cfg.train.batch_size * world} images, {cfg.train.epochs} epochs"
        + (f", stopping after {total_iters} iterations" if total_iters < cfg.train.epochs * per_epoch else "")
        + f"; lr {base_lr:g}; work dir {work_dir}"
    )

    state = run.state
    final_path = work_dir / "final.pth"
    bar = tqdm(total=total_iters, initial=min(state.iteration, total_iters), disable=not run.progress,
               dynamic_ncols=True, unit="it")
    previous_handlers = run.install_signal_handlers()
    window: list[StepResult] = []
    health = TrainingHealth(cfg)
    last_validated = -1
    start_iteration = state.iteration
    try:
        model.train()
        while state.epoch < cfg.train.epochs and state.iteration < total_iters:
            sampler.set_epoch(state.epoch, state.epoch_batch)
            bar.set_description(f"epoch {state.epoch + 1}/{cfg.train.epochs}")
            tick = time.perf_counter()
            data_time = iter_time = 0.0
            since_log = 0
            for batch in loader:
                data_time += time.perf_counter() - tick
                lr = learning_rate(base_lr, state.epoch, state.iteration, cfg.train)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = batch.to(device, non_blocking=True)
                result = train_step(model, batch, cfg, optimizer, ctx, scaler, amp_dtype)
                state.iteration += 1
                state.epoch_batch += 1

                if result.skipped:
                    fatal = result.skipped in ("non-finite loss", "non-finite gradient")
                    state.bad_steps = state.bad_steps + 1 if fatal else 0
                    logger.info(f"iteration {state.iteration}: update skipped ({result.skipped}, "
                                f"loss {result.loss:.4g})")
                    run.write_metrics({"type": "skipped", "epoch": state.epoch + 1, "iteration": state.iteration,
                                       "reason": result.skipped})
                    if fatal and state.bad_steps >= cfg.train.max_bad_steps:
                        raise TrainingError(
                            f"{state.bad_steps} non-finite losses or gradients in a row (last at iteration "
                            f"{state.iteration}); stopping. Lower train.base_lr or check the data (see the report at "
                            f"the start of the log); the last epoch's state is {work_dir / 'latest.pth'}"
                        )
                else:
                    state.bad_steps = 0
                    window.append(result)
                    for row in health.update(state.iteration, result.loss_category, result.loss_mask,
                                             result.num_positive / world, batch.boxes, batch.masks):
                        logger.info(row["message"])
                        run.write_metrics(row)
                bar.set_postfix(loss=f"{result.loss:.3f}", lr=f"{lr:.2e}", refresh=False)
                bar.update(1)

                iter_time += time.perf_counter() - tick
                since_log += 1
                if window and (state.iteration % cfg.train.log_interval == 0 or state.epoch_batch == per_epoch):
                    row = _train_row(window, state, lr, data_time / since_log, iter_time / since_log, device)
                    run.write_metrics(row)
                    logger.info(
                        f"epoch {row['epoch']} iter {state.iteration}/{total_iters} loss {row['loss']:.4f} "
                        f"(category {row['loss_category']:.4f}, mask {row['loss_mask']:.4f}) lr {lr:.3e}"
                    )
                    window, data_time, iter_time, since_log = [], 0.0, 0.0, 0

                if broadcast_flag(run.stop_requested, ctx):
                    raise _Stop
                tick = time.perf_counter()
                if state.iteration >= total_iters:
                    break

            if state.epoch_batch >= per_epoch:  # epoch complete
                state.epoch += 1
                state.epoch_batch = 0
                module = _unwrap(model)
                epoch_path = work_dir / f"epoch_{state.epoch}.pth"
                run.save(epoch_path, module, optimizer, scaler)
                run.save(work_dir / "latest.pth", module, optimizer, scaler)
                logger.info(f"epoch {state.epoch} done; checkpoint {epoch_path}")
                interval = cfg.train.val_interval
                if interval > 0 and (state.epoch % interval == 0 or state.epoch == cfg.train.epochs):
                    run.validate(model, state.epoch)
                    last_validated = state.iteration
                if broadcast_flag(run.stop_requested, ctx):
                    raise _Stop
            elif state.iteration >= total_iters:
                break

        module = _unwrap(model)
        if state.epoch_batch:  # stopped inside an epoch (max_iters): keep a resumable state
            run.save(work_dir / "latest.pth", module, optimizer, scaler)
        ran = state.iteration > start_iteration
        if ran and cfg.data.val_ann and cfg.train.val_interval > 0 and last_validated != state.iteration:
            run.validate(model, state.epoch)  # a run cut short by max_iters
        run.save(final_path, module, None, None)
        row = health.summary(state.iteration)
        logger.info(row["message"])
        run.write_metrics(row)
        logger.info(f"training finished at iteration {state.iteration}; final weights {final_path}")
    except _Stop:
        module = _unwrap(model)
        latest = work_dir / "latest.pth"
        run.save(latest, module, optimizer, scaler)
        logger.info(f"stopped at iteration {state.iteration}; state saved to {latest}; "
                    f"continue with: solov2 train --resume {work_dir}")
        raise TrainingInterrupted(latest if ctx.is_main else None, state.iteration) from None
    finally:
        bar.close()
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
    barrier(ctx)
    return final_path


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _train_row(window: list[StepResult], state: TrainState, lr: float, data_time: float, iter_time: float,
               device: torch.device) -> dict[str, Any]:
    """A metrics.jsonl line: means over the steps since the previous line (times in seconds per iteration)."""
    row: dict[str, Any] = {"type": "train", "epoch": state.epoch + 1, "iteration": state.iteration, "lr": lr}
    for key in ("loss", "loss_category", "loss_mask", "num_positive", "grad_norm"):
        row[key] = float(np.mean([getattr(r, key) for r in window]))
    row["data_time"] = data_time
    row["time"] = iter_time
    if device.type == "cuda":
        row["memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


class _Stop(Exception):
    """Internal: a stop was requested (signal) and agreed by all processes."""


__all__ = [
    "StepResult",
    "TrainState",
    "TrainingError",
    "TrainingInterrupted",
    "build_dataset",
    "build_optimizer",
    "learning_rate",
    "scaled_lr",
    "train",
    "train_step",
]
