"""The values a training run passes around: its resumable position, one step's result, the
interface of step observers, and the run's errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol


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
    """Where a run stands; saved in every training checkpoint and restored on resume."""

    epoch: int = 0  # the epoch in progress (0-based); equals the epochs completed
    epoch_batch: int = 0  # batches of that epoch already done
    iteration: int = 0  # optimizer steps taken (skipped steps included)
    bad_steps: int = 0  # non-finite losses in a row
    best_mask_ap: float = -1.0  # highest validation mask AP so far (-1: none yet), kept in best.pth


class StepResult(NamedTuple):
    """One training step, as every process sees it (losses and counts are batch-wide, over
    all processes, except ``instances_per_image``)."""

    loss: float  # category + mask loss
    loss_category: float  # focal loss of the category maps
    loss_mask: float  # dice loss of the masks (weighted)
    num_positive: int  # positive cells, all levels
    grad_norm: float  # before clipping; nan when the update was skipped before backward
    skipped: str  # "" or why the update was skipped
    positive_per_level: tuple[int, ...] = ()  # positive cells per FPN level (sums to num_positive)
    instances_per_image: tuple[int, ...] = ()  # annotated instances of each image of this process


class StepObserver(Protocol):
    """Something that watches a run step by step (``train(..., observers=[...])``), on every
    process. It must not change the model, the optimizer or the random state."""

    def after_step(self, state: TrainState, result: StepResult) -> None:
        """Called once per iteration, after the step is counted in ``state`` and logged."""

    def after_run(self, state: TrainState) -> None:
        """Called once when the run's loop ends: finished, interrupted or failed."""
