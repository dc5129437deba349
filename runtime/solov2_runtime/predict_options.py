"""The shortcuts users of other detectors type on ``predict`` (``--conf``, ``--max-det``,
``--classes``, ``--imgsz``), as config overrides and a class filter, and the checks of
options the ONNX Runtime backend cannot honour."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from .records import InstanceResult


class OptionError(ValueError):
    """A predict option with a value that cannot be used; the message names the option."""


def add_shortcut_arguments(parser: argparse.ArgumentParser) -> None:
    """``--conf``, ``--max-det``, ``--classes``, ``--imgsz``: each maps to a config key."""
    parser.add_argument("--conf", type=float, metavar="P", help="= test.score_thr (category probability, 0-1)")
    parser.add_argument("--max-det", type=int, metavar="N", help="= test.max_per_img (instances per image)")
    parser.add_argument("--classes", metavar="A,B", help="keep only these class names or label indices, "
                        "comma-separated (e.g. person,car or 0,2); filters the results, after --max-det")
    parser.add_argument("--imgsz", type=int, nargs="+", metavar="PX", help="= input.test_scale: LONG (the "
                        "model's long:short ratio kept) or LONG SHORT, in pixels")


def shortcut_overrides(args: argparse.Namespace) -> list[str]:
    """The config overrides ``--conf``, ``--max-det`` and a two-number ``--imgsz`` stand for
    (the config's own checks then validate the values)."""
    overrides = []
    if args.conf is not None:
        overrides.append(f"test.score_thr={args.conf!r}")
    if args.max_det is not None:
        overrides.append(f"test.max_per_img={args.max_det}")
    if args.imgsz is not None:
        if len(args.imgsz) > 2 or min(args.imgsz) < 1:
            raise OptionError(f"--imgsz {' '.join(map(str, args.imgsz))}: give LONG or LONG SHORT, "
                              "positive pixel counts")
        if len(args.imgsz) == 2:
            overrides.append(f"input.test_scale=[{max(args.imgsz)}, {min(args.imgsz)}]")
    return overrides


def apply_long_side(predictor: object, long_side: int) -> None:
    """Set the predictor's ``input.test_scale`` to ``long_side`` and the short side that keeps
    its current long:short ratio. Raises OptionError when the predictor has no such setting."""
    holder = getattr(predictor, "settings", None) or getattr(predictor, "cfg", None)
    scale = getattr(getattr(holder, "input", None), "test_scale", None)
    if scale is None or len(scale) != 2:
        raise OptionError("--imgsz with one number needs a model with input.test_scale; give LONG SHORT")
    long_edge, short_edge = max(scale), min(scale)
    holder.input.test_scale = [long_side, max(1, round(long_side * short_edge / long_edge))]


class ClassFilter:
    """A predictor that keeps only the instances of some classes (``--classes``)."""

    def __init__(self, predictor: object, spec: str):
        """``spec``: comma-separated class names or label indices of ``predictor.class_names``;
        raises OptionError naming an unknown one and listing the classes."""
        self.predictor = predictor
        names = list(predictor.class_names)  # type: ignore[attr-defined]
        self.class_names, self.category_ids = names, getattr(predictor, "category_ids", [])
        keep = set()
        for item in (part.strip() for part in spec.split(",")):
            if item in names:
                keep.add(names.index(item))
            elif item.isdigit() and int(item) < len(names):
                keep.add(int(item))
            else:
                shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
                raise OptionError(f"--classes: '{item}' is neither a class name nor a label 0-{len(names) - 1} "
                                  f"of this model (classes: {shown})")
        self.keep = np.array(sorted(keep), np.int64)

    def score_thresholds(self) -> tuple[float, float]:
        return self.predictor.score_thresholds()  # type: ignore[attr-defined]

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[InstanceResult]:
        return [self.select(r) for r in self.predictor.predict_batch(images)]  # type: ignore[attr-defined]

    def select(self, result: InstanceResult) -> InstanceResult:
        """The result with only the kept classes' instances, in the same order."""
        index = np.flatnonzero(np.isin(np.asarray(result.labels), self.keep))
        changes = {"masks": result.masks[index], "labels": np.asarray(result.labels)[index],
                   "scores": np.asarray(result.scores)[index],
                   "class_names": [result.class_names[i] for i in index],
                   "category_ids": [result.category_ids[i] for i in index]}
        fields = {f.name for f in dataclasses.fields(result)}  # type: ignore[arg-type]
        if "boxes" in fields and getattr(result, "boxes", None) is not None:
            changes["boxes"] = np.asarray(result.boxes)[index]
        if "best_score" in fields and len(index) < len(result.scores):
            changes["best_score"] = float("nan")  # the best score may belong to a dropped class
        return dataclasses.replace(result, **changes)  # type: ignore[type-var]


def with_shortcuts(predictor: object, args: argparse.Namespace) -> object:
    """The predictor after a one-number ``--imgsz`` and ``--classes`` are applied."""
    if args.imgsz is not None and len(args.imgsz) == 1:
        apply_long_side(predictor, args.imgsz[0])
    return ClassFilter(predictor, args.classes) if args.classes else predictor


ONNX_SUFFIXES = (".onnx",)
TORCH_MAGIC = (b"PK", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")  # zip (torch.save), pickle


def check_onnx_model(path: str | Path) -> None:
    """Raise OptionError when ``path`` is an existing file that is not an ONNX model (a
    PyTorch checkpoint, whatever its name, or a file not named .onnx), saying how to get one."""
    path = Path(path)
    if not path.is_file():
        return  # the runtime reports a missing file
    with path.open("rb") as handle:
        head = handle.read(2)
    if head not in TORCH_MAGIC and path.suffix.lower() in ONNX_SUFFIXES:
        return
    kind = "a PyTorch checkpoint" if head in TORCH_MAGIC else f"a '{path.suffix or 'suffix-less'}' file"
    raise OptionError(f"{path}: not an ONNX model ({kind}); export it with 'solov2 export --weights {path}' "
                      "and predict with the .onnx, or run it with 'solov2 predict --backend pytorch'")


def onnx_providers(device: str, precision: str) -> list | None:
    """ONNX Runtime execution providers for ``--device`` (None: CUDA when present, for
    'auto'); raises OptionError for a precision or device the ONNX backend cannot honour."""
    if precision != "fp32":
        raise OptionError(f"--precision {precision}: the onnxruntime backend runs the exported graph in "
                          "fp32; drop --precision (or use --backend pytorch)")
    if device == "auto":
        return None
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" or device.startswith("cuda:") and device[5:].isdigit():
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise OptionError(f"--device {device}: this onnxruntime has no CUDA provider (install "
                              "onnxruntime-gpu); drop --device or use --device cpu")
        return [("CUDAExecutionProvider", {"device_id": int(device[5:] or 0)}), "CPUExecutionProvider"]
    raise OptionError(f"--device {device}: the onnxruntime backend takes cpu, cuda, cuda:N or auto")
