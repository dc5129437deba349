"""``solov2 convert``: rewrite a checkpoint of any supported format in this project's format.

Reads the authors' SOLO release (``SOLOv2_LIGHT_448_R18_3x.pth`` ...), mmdetection 2.x/3.x
SOLOv2 checkpoints, the earlier pure-PyTorch port, or a solov2 checkpoint, and writes a solov2
checkpoint (weights under this project's names, plus the config when --config is given).

With --config the weights are first loaded strictly into the model the config builds: every
key present, none left over, every shape right (no class-count change either); the config is
then stored in the output, so ``solov2 predict`` and ``evaluate`` need no --config for it.
Without --config the weights are only renamed (and no config is stored), except for a solov2
checkpoint that already carries a config, which is checked against it and kept.

torchvision ImageNet ResNets (``resnet18-f37072fd.pth`` ...) are refused: they hold a backbone
only, not a SOLOv2 model, and are already read as they are wherever a pretrained backbone is
accepted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint import (
    FORMAT_NAMES,
    FORMAT_VERSION,
    OWN_FORMAT,
    CheckpointError,
    atomic_save,
    load_checkpoint,
    load_weights,
    make_checkpoint,
)
from ..config import Config, ConfigError, config_from_dict, load_config
from .common import fail, formatter, output_file_problem

DESCRIPTION = """Rewrite a checkpoint of any supported format as a solov2 checkpoint.

reads: the authors' SOLO release (SOLOv2_LIGHT_448_R18_3x.pth ...), mmdetection 2.x/3.x SOLOv2,
the earlier pure-PyTorch port (solov2_448_r18_epoch_36.pth), solov2 checkpoints.

With --config the weights are loaded strictly into the model that config builds (every key
present, none left over, every shape right, same class count) and the config is stored in OUT,
so predict and evaluate need no --config with it. Without --config the weights are renamed only
and no config is stored (a solov2 checkpoint that has one keeps it, checked).

torchvision ImageNet ResNets (resnet18-f37072fd.pth ...) are refused: they hold a backbone, not
a SOLOv2 model, and are read as they are wherever a pretrained backbone is accepted.
"""

EXAMPLES = """examples:
  solov2 convert SOLOv2_LIGHT_448_R18_3x.pth solov2_light_448_r18.pth --config light_448_r18
  solov2 convert solov2_r50_fpn_3x_coco.pth r50_3x.pth --config r50_3x     # mmdetection
  solov2 convert solov2_448_r18_epoch_36.pth r18.pth test.score_thr=0.3 --config light_448_r18
                                 # KEY=VALUE overrides go before --config; stored with it
  solov2 convert SOLOv2_R101_3x.pth r101.pth                 # rename only, no check, no config

then: solov2 predict photo.jpg --weights solov2_light_448_r18.pth   (no --config needed)
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert released/mmdetection/port checkpoints to solov2 checkpoints",
        description=DESCRIPTION, epilog=EXAMPLES, formatter_class=formatter,
    )
    parser.add_argument("input", metavar="IN", help="checkpoint to read (any supported format)")
    parser.add_argument("output", metavar="OUT", help="solov2 checkpoint to write")
    parser.add_argument("--config", help="preset name or YAML file: check the weights against it "
                                         "and store it in OUT")
    parser.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides applied to --config (e.g. model.class_names=[a, b])")
    parser.set_defaults(func=run)


def convert(input_path: str | Path, output_path: str | Path, config: str | Path | Config | None = None,
            overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Convert ``input_path`` to a solov2 checkpoint at ``output_path``; returns a summary.

    Raises CheckpointError (unreadable or mismatching weights, torchvision input) or
    ConfigError (bad config or overrides). Nothing is written when it raises.
    """
    from ..model import SOLOv2

    input_path, output_path = Path(input_path), Path(output_path)
    loaded = load_checkpoint(input_path)
    if loaded.format == "torchvision":
        raise CheckpointError(
            f"{input_path}: this is a torchvision ImageNet ResNet, a backbone without the SOLOv2 "
            "heads, so there is no SOLOv2 checkpoint to make from it; use the file as it is "
            "wherever a pretrained backbone is accepted"
        )
    if overrides and config is None:
        raise ConfigError("config overrides need --config")

    cfg: Config | None = None
    if isinstance(config, Config):
        cfg = config
    elif config is not None:
        cfg = load_config(config, list(overrides))
    elif loaded.config is not None:
        try:
            cfg = config_from_dict(loaded.config)
        except ConfigError as err:
            raise CheckpointError(f"{input_path}: stored config is not valid: {err}") from err

    if cfg is not None:
        model = SOLOv2(cfg.model)
        load_weights(model, loaded.state_dict, source=str(input_path), allow_class_mismatch=False)
        checkpoint = make_checkpoint(model, cfg.to_dict(), converted_from=loaded.format)
    else:
        checkpoint = {"format": OWN_FORMAT, "version": FORMAT_VERSION, "config": None,
                      "model": dict(loaded.state_dict), "converted_from": loaded.format}
    atomic_save(checkpoint, output_path)
    return {"format": loaded.format, "output": output_path, "config": cfg.name if cfg else None,
            "tensors": len(checkpoint["model"])}


def run(args: argparse.Namespace) -> int:
    if Path(args.input).resolve() == Path(args.output).resolve():
        return fail("OUT must differ from IN (the input is kept as it is)")
    problem = output_file_problem(args.output)
    if problem:
        return fail(problem)
    try:
        summary = convert(args.input, args.output, args.config, args.overrides)
    except (CheckpointError, ConfigError) as err:  # ModelConfigError is a ConfigError
        return fail(str(err))
    print(f"read {args.input}: {FORMAT_NAMES[summary['format']]} ({summary['format']})")
    if summary["config"]:
        print(f"checked against config '{summary['config']}': all {summary['tensors']} tensors match; "
              "config stored in the output")
    else:
        print("no config given: weights renamed without a check and no config stored "
              "(pass --config PRESET to check them and store it)")
    print(f"wrote {summary['output']}")
    return 0
