"""Training checkpoints: writing them, and resuming a run from one.

A training checkpoint (``epoch_N.pth``, ``latest.pth``) holds the model, the config, the
``TrainState`` fields and ``world_size``, plus the optimizer and loss-scaler states and every
random generator's state; ``final.pth`` holds the model, config, state and world size only.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoint import atomic_save, load_checkpoint, make_checkpoint
from ..config import Config, config_from_dict
from .train_types import TrainingError, TrainState

logger = logging.getLogger("solov2.train")
CLASS_FIELDS = ("num_classes", "class_names", "category_ids")  # model fields a dataset may set


def rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's, torch's and (when present) CUDA's generators."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore ``rng_state()``; CUDA's only with as many devices as when saved."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_checkpoint(
    path: Path, model: nn.Module, cfg: Config, state: TrainState, world_size: int,
    optimizer: torch.optim.Optimizer | None = None, scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Write ``path`` atomically; with ``optimizer``, also what resuming needs (optimizer,
    scaler, random states)."""
    extra: dict[str, Any] = {**asdict(state), "world_size": world_size}
    if optimizer is not None:
        extra.update(
            optimizer=optimizer.state_dict(),
            scaler=scaler.state_dict() if scaler is not None else None,
            rng=rng_state(),
        )
    atomic_save(make_checkpoint(model, cfg.to_dict(), **extra), path)


def check_new_run(work_dir: Path) -> None:
    """Raise TrainingError when ``work_dir`` already holds a run (latest.pth or final.pth)."""
    existing = [name for name in ("latest.pth", "final.pth") if (work_dir / name).is_file()]
    if existing:
        raise TrainingError(
            f"{work_dir} already holds a training run ({', '.join(existing)}); continue it with "
            f"--resume {work_dir} (resume=True), or choose another work dir"
        )


def resume_path(resume: bool | str | Path, work_dir: Path) -> Path:
    """The checkpoint ``resume`` names: True for ``work_dir/latest.pth``, a folder for its
    latest.pth, or a file. Raises TrainingError when it does not exist."""
    path = work_dir / "latest.pth" if resume is True else Path(resume)
    if path.is_dir():
        path = path / "latest.pth"
    if not path.is_file():
        raise TrainingError(f"{path}: no checkpoint to resume from")
    return path


@dataclass
class ResumePoint:
    """A training checkpoint to continue from."""

    path: Path
    checkpoint: dict[str, Any]  # the raw checkpoint: epoch, iteration, optimizer, rng, ...
    state_dict: dict[str, Tensor]  # the model's weights


def open_resume_point(resume: bool | str | Path, work_dir: Path, cfg: Config) -> ResumePoint:
    """Load the checkpoint ``resume`` names and check it can continue this run; replaces
    ``cfg.model`` with the model settings saved in it (logging those that differ).

    Raises TrainingError when it is not a training checkpoint of this project or was trained
    with another ``train.optimizer``; CheckpointError when it cannot be read."""
    path = resume_path(resume, work_dir)
    resumed = load_checkpoint(path)
    if resumed.format != "solov2" or "optimizer" not in resumed.raw or not resumed.config:
        raise TrainingError(
            f"{path}: not a training checkpoint of this project (no optimizer state); "
            "use --load-from to start a new run from its weights"
        )
    checkpoint = resumed.raw
    saved = config_from_dict(resumed.config)
    if saved.train.optimizer != cfg.train.optimizer:
        raise TrainingError(
            f"{path} was trained with train.optimizer={saved.train.optimizer} but this run asks for "
            f"{cfg.train.optimizer}; resume with train.optimizer={saved.train.optimizer}"
        )
    differ = [k for k, v in asdict(saved.model).items() if k not in CLASS_FIELDS and getattr(cfg.model, k) != v]
    if differ:
        logger.info(f"resuming: using the model settings saved in {path} ({', '.join(differ)} differ)")
    cfg.model = saved.model
    logger.info(f"resuming from {path} (epoch {checkpoint['epoch'] + 1}, iteration {checkpoint['iteration']})")
    return ResumePoint(path, checkpoint, resumed.state_dict)


def restore_training_state(
    point: ResumePoint, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, world_size: int
) -> TrainState:
    """Load the optimizer, scaler and random states saved at ``point``; return its TrainState.
    Call it after the model is built (building draws random numbers)."""
    checkpoint = point.checkpoint
    optimizer.load_state_dict(checkpoint["optimizer"])
    if scaler is not None and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    state = TrainState(
        checkpoint["epoch"], checkpoint["epoch_batch"], checkpoint["iteration"], checkpoint.get("bad_steps", 0),
        checkpoint.get("best_mask_ap", -1.0),
    )
    if checkpoint.get("world_size", world_size) != world_size:
        logger.info(f"note: the checkpoint was written by {checkpoint['world_size']} processes, "
                    f"this run has {world_size}; the batch order within the epoch changes")
    set_rng_state(checkpoint["rng"])
    return state


def prune_epoch_checkpoints(work_dir: Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest ``epoch_N.pth`` in ``work_dir`` (``keep`` 0: none
    deleted); returns the deleted files."""
    if keep <= 0:
        return []
    numbered = [(int(p.stem.removeprefix("epoch_")), p) for p in work_dir.glob("epoch_*.pth")
                if p.stem.removeprefix("epoch_").isdigit()]
    old = [p for _, p in sorted(numbered)[:-keep]]
    for path in old:
        path.unlink(missing_ok=True)
    return old
