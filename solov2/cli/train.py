"""`solov2 train`: train on COCO-format data, resume, fine-tune; torchrun for many GPUs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..checkpoint import CheckpointError, load_checkpoint
from ..config import ConfigError, apply_overrides, config_from_dict
from .common import add_config_arguments, config_or_exit, fail, formatter

EPILOG = """\
examples:
  # train the light R18 model on your COCO-format dataset
  solov2 train --config light_448_r18 \\
      data.train_ann=ann/train.json data.train_images=img/train \\
      data.val_ann=ann/val.json data.val_images=img/val --work-dir runs/exp1

  # start from ImageNet backbone weights (torchvision resnet18-f37072fd.pth)
  solov2 train --config light_448_r18 --backbone-weights resnet18-f37072fd.pth ... --work-dir runs/exp1

  # fine-tune released COCO weights on your classes
  solov2 train --config light_448_r18 --load-from SOLOv2_LIGHT_448_R18_3x.pth ... --work-dir runs/ft

  # continue after a crash or Ctrl-C (config and weights come from the checkpoint)
  solov2 train --resume runs/exp1

  # 8 GPUs on one machine (train.batch_size is per GPU; the lr scales with the total batch)
  torchrun --nproc_per_node 8 -m solov2 train --config r50_3x ... --work-dir runs/r50

  # a quick check on CPU: 20 iterations, small images
  solov2 train --config light_448_r18 data.train_ann=... data.train_images=... \\
      "input.train_scales=[[512, 320]]" --max-iters 20 --device cpu --work-dir runs/smoke

The work dir receives config.yaml, train.log, metrics.jsonl, epoch_N.pth, latest.pth, best.pth
(best validation mask AP) and final.pth; predict with: solov2 predict --weights runs/exp1/final.pth IMAGES
See docs/training.md for preparing a custom dataset.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train on a COCO-format dataset (one CPU/GPU, or torchrun for many)",
        description="Train SOLOv2 on COCO-format data (polygon or RLE masks).",
        epilog=EPILOG,
        formatter_class=formatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--work-dir", help="output folder (default runs/CONFIG_NAME; with --resume, its folder)")
    parser.add_argument("--resume", metavar="DIR_OR_PTH",
                        help="continue a run: its work dir (latest.pth, or the newest readable epoch_N.pth "
                             "when latest.pth is missing or corrupt) or a checkpoint file")
    parser.add_argument("--load-from", metavar="PTH", help="initial weights for fine-tuning (any supported format)")
    parser.add_argument("--backbone-weights", metavar="PTH", help="torchvision ImageNet ResNet weights")
    parser.add_argument("--max-iters", type=int, metavar="N", help="stop after N iterations in all")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s: cuda "
                                                         "when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    parser.set_defaults(func=run)


def resume_checkpoint(target: Path) -> tuple[Path, str | None]:
    """The checkpoint to resume from: ``target`` itself if it is a file, else the run folder's
    ``latest.pth`` or, when that is missing or unreadable, its newest readable ``epoch_N.pth``.
    Returns the file and a note saying why another file than latest.pth was taken; raises
    ``CheckpointError`` when none can be read."""
    if target.is_file():
        return target, None
    latest = target / "latest.pth"
    epochs = sorted(target.glob("epoch_*.pth"), key=_epoch_number, reverse=True)
    problems = []
    for candidate in [latest, *epochs]:
        if not candidate.is_file():
            problems.append(f"{candidate.name} missing")
            continue
        try:
            load_checkpoint(candidate)
        except CheckpointError as err:
            problems.append(f"{candidate.name} unreadable ({err})")
            continue
        return candidate, None if candidate == latest else f"{'; '.join(problems)}: resuming from {candidate}"
    raise CheckpointError(f"{target}: no readable checkpoint to resume from (latest.pth or epoch_N.pth)")


def _epoch_number(path: Path) -> int:
    digits = path.stem.removeprefix("epoch_")
    return int(digits) if digits.isdigit() else -1


def _conflicts(args: argparse.Namespace) -> str | None:
    """Options that contradict --resume, as the message saying which to drop."""
    if not args.resume:
        return None
    clashing = [flag for flag, value in (("--config", args.config), ("--load-from", args.load_from),
                                         ("--backbone-weights", args.backbone_weights)) if value]
    if clashing:
        return (f"--resume continues a run with its own config and weights: drop {', '.join(clashing)} "
                "(KEY=VALUE overrides still apply), or start a new run without --resume")
    return None


def run(args: argparse.Namespace) -> int:
    from ..data.coco import DatasetError
    from ..engine.distributed import resolve_device
    from ..engine.trainer import TrainingError, TrainingInterrupted, train

    conflict = _conflicts(args)
    if conflict:
        return fail(conflict)
    if args.work_dir and Path(args.work_dir).exists() and not Path(args.work_dir).is_dir():
        return fail(f"{args.work_dir}: exists and is not a folder; choose another --work-dir")
    if args.max_iters is not None and args.max_iters < 1:
        return fail("--max-iters must be at least 1")
    try:
        resolve_device(args.device, int(os.environ.get("LOCAL_RANK", "0")))
    except RuntimeError as err:
        return fail(str(err))
    resume: bool | Path = False
    work_dir = Path(args.work_dir) if args.work_dir else None
    if args.resume:
        target = Path(args.resume)
        if not target.exists():
            return fail(f"{target}: no such run folder or checkpoint")
        try:
            resume, note = resume_checkpoint(target)
            saved = load_checkpoint(resume).config
        except CheckpointError as err:
            return fail(str(err))
        if note:
            print(f"note: {note}", file=sys.stderr)
        work_dir = work_dir or (target if target.is_dir() else target.parent)
        if not saved:
            return fail(f"{resume}: no config inside (not a checkpoint written by solov2 train)")
        try:
            cfg = apply_overrides(config_from_dict(saved), args.overrides)
        except ConfigError as err:
            return fail(f"{err} (in the overrides, or in the config stored in {resume})")
    else:
        if not args.config:
            return fail("--config is required (a preset such as light_448_r18, or a YAML file) unless --resume")
        cfg = config_or_exit(args.config, args.overrides)
        work_dir = work_dir or Path("runs") / cfg.name

    try:
        final = train(
            cfg, work_dir, resume=resume, load_from=args.load_from, backbone_weights=args.backbone_weights,
            max_iters=args.max_iters, device=args.device, progress=not args.no_progress,
        )
    except TrainingInterrupted as stop:
        if stop.checkpoint is not None:
            print(f"interrupted; state saved to {stop.checkpoint}\n  continue with: solov2 train --resume {work_dir}")
        return 130
    except (DatasetError, TrainingError, CheckpointError, ConfigError) as err:  # ModelConfigError too
        return fail(str(err))
    if os.environ.get("RANK", "0") == "0":
        print(f"final weights: {final}\nwork dir: {work_dir} (metrics.jsonl, train.log, checkpoints)")
    return 0
