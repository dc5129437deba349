"""SOLOv2 training: one CPU, one GPU, or many GPUs and machines under torchrun.

``train(cfg, work_dir)`` runs the training recipe of the authors' release
(github.com/WXinlong/SOLO): SGD with momentum and weight decay (AdamW as an option), the
learning rate scaled linearly with the total batch, linear warm-up, step decay at given
epochs, gradient clipping; focal + dice loss on targets built for the whole batch at once.
The work dir receives ``config.yaml``, ``train.log``, ``metrics.jsonl``, ``epoch_N.pth`` and
``latest.pth`` after each epoch and ``final.pth`` at the end; ``resume=True`` continues from
``latest.pth`` exactly where it stopped. Ctrl-C (or SIGTERM) finishes the current step,
saves ``latest.pth`` and raises ``TrainingInterrupted``.

A run goes through its phases in ``_Run``: ``setup`` (resume point, data, model, optimizer,
loader), ``run_epoch`` (the loop) with ``step`` (one batch), ``record`` (logging) and
``after_step`` (observers), ``end_epoch`` (checkpoints, validation), then ``finish`` or
``interrupted``, and ``shutdown``. Schedule and building blocks: ``train_setup``; checkpoint
contents and resuming: ``checkpointing``; log files: ``train_log``.

The per-step pieces are public for benchmarks: ``build_targets`` (solov2.model.targets),
``solov2_loss`` (solov2.model.losses) and ``train_step`` (``train_step``, re-exported here).
"""

from __future__ import annotations

import copy
import logging
import signal
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..config import Config, save_config, validate
from ..data.augment import TrainBatch
from .checkpointing import (ResumePoint, check_new_run, open_resume_point, prune_epoch_checkpoints,
                            restore_training_state, save_training_checkpoint)
from .distributed import DistributedContext, barrier, broadcast_flag, cleanup, init_distributed
from .health import TrainingHealth
from .train_log import LogWindow, TrainLog
from .train_step import train_step
from .train_setup import (adopt_classes, autocast_dtype, build_dataset, build_loader, build_model,
                          build_optimizer, learning_rate, load_dataset, scaled_lr, total_iterations)
from .train_types import StepObserver, StepResult, TrainingError, TrainingInterrupted, TrainState

logger = logging.getLogger("solov2.train")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


class _Stop(Exception):
    """Internal: a stop was requested (signal) and agreed by all processes."""


# ----------------------------------------------------------------------------- the run


class _Run:
    """One training run, phase by phase (use ``train``): ``setup``, then ``run``."""

    def __init__(self, cfg: Config, work_dir: Path, ctx: DistributedContext, progress: bool,
                 observers: Sequence[StepObserver] = ()):
        self.cfg = cfg
        self.work_dir = work_dir
        self.ctx = ctx
        self.progress = progress and ctx.is_main
        self.observers = list(observers)
        self.health = TrainingHealth(cfg)
        self.state = TrainState()
        self.log = TrainLog(work_dir, ctx.is_main)
        self.window = LogWindow()
        self.stop_requested = False
        self.validation_missing_logged = False
        self.last_validated = -1  # the iteration of the last validation

    # -- set-up

    def setup(self, resume: bool | str | Path, load_from: str | None, backbone_weights: str | None,
              max_iters: int | None) -> None:
        """Everything before the first step, cheapest checks first: the config's values (a
        Config built in Python has not been through ``load_config``), the resume point, the data (a dataset problem stops the run before anything heavy), the
        model, the optimizer (and the saved state when resuming), the loader, config.yaml."""
        validate(self.cfg)
        point = None
        if resume:
            point = open_resume_point(resume, self.work_dir, self.cfg)
        else:
            check_new_run(self.work_dir)
        dataset = load_dataset(self.cfg)
        model = build_model(self.cfg, point, load_from, backbone_weights, self.ctx.device)
        self._optimizer(model, point)
        if self.ctx.distributed:
            device = self.ctx.device
            model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        self.model = model
        self.sampler, self.loader = build_loader(dataset, self.cfg, self.ctx)
        self.per_epoch = self.sampler.num_batches()
        self.total_iters = total_iterations(self.cfg.train, self.per_epoch, max_iters)
        self._announce(len(dataset), resumed=point is not None)

    def _optimizer(self, model: nn.Module, point: ResumePoint | None) -> None:
        train_cfg, device = self.cfg.train, self.ctx.device
        self.base_lr = scaled_lr(train_cfg, self.ctx.world_size)
        self.lr = self.base_lr
        self.optimizer = build_optimizer(model, train_cfg, self.base_lr)
        self.amp_dtype = autocast_dtype(device.type) if train_cfg.amp else None
        self.scaler = torch.amp.GradScaler("cuda") if train_cfg.amp and device.type == "cuda" else None
        if point is not None:
            self.state = restore_training_state(point, self.optimizer, self.scaler, self.ctx.world_size)

    def _announce(self, num_images: int, resumed: bool) -> None:
        """Write config.yaml (and trim metrics.jsonl to the resumed iteration); log the plan."""
        cfg, world = self.cfg, self.ctx.world_size
        if self.ctx.is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.work_dir / "config.yaml")
            if resumed:
                self.log.trim(self.state.iteration)
        full = cfg.train.epochs * self.per_epoch
        logger.info(
            f"training {cfg.name} on {self.ctx.device} x{world}: {num_images} images, {self.per_epoch} iterations "
            f"per epoch of {cfg.train.batch_size * world} images, {cfg.train.epochs} epochs"
            + (f", stopping after {self.total_iters} iterations" if self.total_iters < full else "")
            + f"; lr {self.base_lr:g}; work dir {self.work_dir}"
        )

    # -- the loop

    def run(self) -> Path:
        """Epochs until the schedule or the iteration limit ends; returns final.pth. Raises
        TrainingInterrupted after a signal (state saved), TrainingError on divergence."""
        state = self.state
        self.start_iteration = state.iteration
        self.bar = tqdm(total=self.total_iters, initial=min(state.iteration, self.total_iters),
                        disable=not self.progress, dynamic_ncols=True, unit="it")
        previous_handlers = self.install_signal_handlers()
        try:
            self.model.train()
            while state.epoch < self.cfg.train.epochs and state.iteration < self.total_iters:
                self.run_epoch()
            final_path = self.finish()
        except _Stop:
            raise self.interrupted() from None
        finally:
            self.shutdown(previous_handlers)
        barrier(self.ctx)
        return final_path

    def run_epoch(self) -> None:
        """Steps from the epoch's saved position to its end (or the iteration limit), then the
        epoch's checkpoints and validation when it is complete."""
        state = self.state
        self.sampler.set_epoch(state.epoch, state.epoch_batch)
        self.bar.set_description(f"epoch {state.epoch + 1}/{self.cfg.train.epochs}")
        self.window.start_epoch()
        for batch in self.loader:
            self.window.data_ready()
            result = self.step(batch)
            self.record(result)
            self.after_step(result)
            if broadcast_flag(self.stop_requested, self.ctx):
                raise _Stop
            self.window.restart()
            if state.iteration >= self.total_iters:
                break
        if state.epoch_batch >= self.per_epoch:
            self.end_epoch()

    def step(self, batch: TrainBatch) -> StepResult:
        """Set the learning rate, run ``train_step`` on the batch, count the iteration."""
        self.lr = learning_rate(self.base_lr, self.state.epoch, self.state.iteration, self.cfg.train)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        batch = batch.to(self.ctx.device, non_blocking=True)
        result = train_step(self.model, batch, self.cfg, self.optimizer, self.ctx, self.scaler, self.amp_dtype)
        self.state.iteration += 1
        self.state.epoch_batch += 1
        return result

    def record(self, result: StepResult) -> None:
        """Count bad steps (raise TrainingError after ``train.max_bad_steps`` in a row), advance
        the progress bar, and write a metrics row every ``log_interval`` and at the epoch's end."""
        state, lr = self.state, self.lr
        if result.skipped:
            self._skipped(result)
        else:
            state.bad_steps = 0
            self.window.results.append(result)
        self.bar.set_postfix(loss=f"{result.loss:.3f}", lr=f"{lr:.2e}", refresh=False)
        self.bar.update(1)
        self.window.step_done()
        due = state.iteration % self.cfg.train.log_interval == 0 or state.epoch_batch == self.per_epoch
        if self.window.results and due:
            row = self.window.row(state, lr, self.ctx.device)
            self.log.write(row)
            logger.info(
                f"epoch {row['epoch']} iter {state.iteration}/{self.total_iters} loss {row['loss']:.4f} "
                f"(category {row['loss_category']:.4f}, mask {row['loss_mask']:.4f}) lr {lr:.3e}"
            )

    def _skipped(self, result: StepResult) -> None:
        state = self.state
        fatal = result.skipped in ("non-finite loss", "non-finite gradient")
        state.bad_steps = state.bad_steps + 1 if fatal else 0
        logger.info(f"iteration {state.iteration}: update skipped ({result.skipped}, loss {result.loss:.4g})")
        self.log.write({"type": "skipped", "epoch": state.epoch + 1, "iteration": state.iteration,
                        "reason": result.skipped})
        if fatal and state.bad_steps >= self.cfg.train.max_bad_steps:
            raise TrainingError(
                f"{state.bad_steps} non-finite losses or gradients in a row (last at iteration "
                f"{state.iteration}); stopping. Lower train.base_lr or check the data (see the report at "
                f"the start of the log); the last epoch's state is {self.work_dir / 'latest.pth'}"
            )

    def after_step(self, result: StepResult) -> None:
        """The training-health checks and the observers see each step: once per iteration,
        after it is counted and logged."""
        if not result.skipped:
            instances = sum(result.instances_per_image) * self.ctx.world_size  # this process's x processes
            for row in self.health.update(self.state.iteration, result.loss_category, result.loss_mask,
                                          result.positive_per_level, instances):
                self._log_health(row)
        for observer in self.observers:
            observer.after_step(self.state, result)

    def _log_health(self, row: dict[str, Any]) -> None:
        if self.ctx.is_main:
            logger.warning(row["message"])
            self.log.write(row)

    def after_run(self) -> None:
        """Observers' end of the run (finished, interrupted or failed)."""
        for observer in self.observers:
            observer.after_run(self.state)

    # -- checkpoints, validation, the end

    def end_epoch(self) -> None:
        """Count the epoch; save epoch_N.pth and latest.pth; validate every ``val_interval``
        epochs and after the last one."""
        state, interval = self.state, self.cfg.train.val_interval
        state.epoch += 1
        state.epoch_batch = 0
        epoch_path = self.work_dir / f"epoch_{state.epoch}.pth"
        self.save_checkpoint(epoch_path)
        self.save_checkpoint(self.work_dir / "latest.pth")
        logger.info(f"epoch {state.epoch} done; checkpoint {epoch_path}")
        if self.ctx.is_main:
            prune_epoch_checkpoints(self.work_dir, self.cfg.train.keep_checkpoints)
        if interval > 0 and (state.epoch % interval == 0 or state.epoch == self.cfg.train.epochs):
            if self.keep_best(self.validate(state.epoch)):
                self.save_checkpoint(self.work_dir / "latest.pth")  # resuming must know the new best
            self.last_validated = state.iteration
        if broadcast_flag(self.stop_requested, self.ctx):
            raise _Stop

    def save_checkpoint(self, path: Path, resumable: bool = True) -> None:
        """Process 0 writes ``path``; ``resumable`` adds the optimizer, scaler and random states."""
        if not self.ctx.is_main:
            return
        optimizer, scaler = (self.optimizer, self.scaler) if resumable else (None, None)
        save_training_checkpoint(path, _unwrap(self.model), self.cfg, self.state, self.ctx.world_size,
                                 optimizer, scaler)

    def validate(self, epoch: int) -> dict[str, Any] | None:
        """Evaluate on ``data.val_ann`` (all processes), log and record the figures; None
        without validation data or when the evaluation module is not installed."""
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
        module = _unwrap(self.model)
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
            self.log.write({"type": "val", "epoch": epoch, "iteration": self.state.iteration, **scalars})
        return metrics

    def keep_best(self, metrics: dict[str, Any] | None) -> bool:
        """Save best.pth (weights and config) when ``metrics``' mask AP beats the best so far."""
        if not metrics or metrics["mask_AP"] <= self.state.best_mask_ap:
            return False
        self.state.best_mask_ap = metrics["mask_AP"]
        best = self.work_dir / "best.pth"
        self.save_checkpoint(best, resumable=False)
        if self.ctx.is_main:
            logger.info(f"best validation mask AP so far ({metrics['mask_AP']:.4f}): {best}")
        return True

    def finish(self) -> Path:
        """After the last step: a validation when the last epoch's was not the last step (and
        best.pth if it is the best), latest.pth when stopped inside an epoch, final.pth (weights
        and config only)."""
        state, cfg = self.state, self.cfg
        latest = self.work_dir / "latest.pth"
        if state.epoch_batch:  # stopped inside an epoch (max_iters): keep a resumable state
            self.save_checkpoint(latest)
        ran = state.iteration > self.start_iteration
        if ran and cfg.data.val_ann and cfg.train.val_interval > 0 and self.last_validated != state.iteration:
            if self.keep_best(self.validate(state.epoch)) and state.epoch_batch:  # cut short by max_iters
                self.save_checkpoint(latest)
        final_path = self.work_dir / "final.pth"
        self.save_checkpoint(final_path, resumable=False)
        summary = self.health.summary(state.iteration)
        if self.ctx.is_main:
            logger.info(summary["message"])
            self.log.write(summary)
        logger.info(f"training finished at iteration {state.iteration}; final weights {final_path}")
        return final_path

    def interrupted(self) -> TrainingInterrupted:
        """Save latest.pth after an agreed stop; the exception to raise."""
        latest = self.work_dir / "latest.pth"
        self.save_checkpoint(latest)
        logger.info(f"stopped at iteration {self.state.iteration}; state saved to {latest}; "
                    f"continue with: solov2 train --resume {self.work_dir}")
        return TrainingInterrupted(latest if self.ctx.is_main else None, self.state.iteration)

    def shutdown(self, previous_handlers: dict[int, Any]) -> None:
        """However the loop ended: close the bar, restore the signal handlers, tell observers."""
        self.bar.close()
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        self.after_run()

    # -- signals

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.stop_requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.stop_requested = True
        if self.ctx.is_main:
            logger.info(f"{signal.Signals(signum).name}: finishing this step, then saving latest.pth "
                        "(press Ctrl-C again to stop at once)")

    def install_signal_handlers(self) -> dict[int, Any]:
        """Ctrl-C and SIGTERM request a stop after the current step; returns the previous handlers."""
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
    observers: Sequence[StepObserver] = (),
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
        observers: see every step's ``StepResult`` and the end of the run (``StepObserver``).

    Raises DatasetError for unusable data, TrainingError when the run cannot go on,
    TrainingInterrupted after saving on Ctrl-C / SIGTERM.
    """
    ctx = init_distributed(device)
    try:
        run = _Run(copy.deepcopy(cfg), Path(work_dir), ctx, progress, observers)
        run.log.open()
        try:
            run.setup(resume, load_from, backbone_weights, max_iters)
            return run.run()
        finally:
            run.log.close()
    finally:
        cleanup(ctx)


__all__ = [
    "StepObserver",
    "StepResult",
    "TrainState",
    "TrainingError",
    "TrainingInterrupted",
    "adopt_classes",
    "autocast_dtype",
    "build_dataset",
    "build_optimizer",
    "learning_rate",
    "scaled_lr",
    "train",
    "train_step",
]
