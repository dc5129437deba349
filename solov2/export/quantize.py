"""INT8 post-training static quantization of an exported model, calibrated on the user's images.

``quantize_onnx("model.onnx", "model.int8.onnx", "val2017/", count=100)`` preprocesses up to
``count`` images exactly as the predictors do (the model's test scale, normalisation, zero
padding to the size divisor), records every activation's range on them (ONNX Runtime's
MinMax calibration) and writes a QDQ graph: per-channel symmetric INT8 weights, uint8
activations, convolutions only. ONNX Runtime and OpenVINO both run that file, OpenVINO with
INT8 convolutions (``solov2.export.openvino_backend``).

Kept in floating point (``KEEP_FLOAT``): the heads' last convolutions (``category_pred``,
``kernel_pred``: their outputs are the scores and the dynamic kernels, small 3x3 layers)
and the mask branch's output convolution (``mask_branch.fuse``: the mask features that every
kernel multiplies). The metadata of the fp32 file (config, class names) is copied, plus
``solov2_quantization`` describing what was done.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..atomic import atomic_open
from ..config import Config
from ..data.image_io import IMAGE_EXTENSIONS, ImageReadError, read_image
from ..data.transforms import pad_batch, preprocess
from .onnx import INPUT_NAME, read_onnx_config

# Node-name parts of the convolutions left in fp32 (names torch.onnx gives our modules).
KEEP_FLOAT = ("/head/category_pred", "/head/kernel_pred", "/mask_branch/fuse/conv/")
QUANTIZATION_KEY = "solov2_quantization"


class CalibrationError(ValueError):
    """Calibration images that cannot be used: a missing or empty folder, unreadable files."""


def calibration_files(source: str | Path | Sequence[str | Path], count: int) -> list[Path]:
    """The first ``count`` image files (by name, searched recursively) of a folder, or of a
    list of files. Raises CalibrationError naming the folder when it is missing or holds no
    image file, or when ``count`` < 1."""
    if count < 1:
        raise CalibrationError(f"the calibration count must be at least 1, got {count}")
    if isinstance(source, (str, Path)):
        folder = Path(source)
        if not folder.is_dir():
            raise CalibrationError(f"{folder}: calibration folder not found")
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise CalibrationError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) for calibration")
    else:
        files = [Path(p) for p in source]
        if not files:
            raise CalibrationError("no calibration images given")
    return files[:count]


def calibration_inputs(cfg: Config, files: Sequence[Path]) -> Iterator[np.ndarray]:
    """Each file as the graph's input (1, 3, H, W) float32, preprocessed at ``cfg``'s test
    scale as ``Predictor`` does. Unreadable files are skipped; raises CalibrationError (naming
    the files' folder and the first failure) when none is readable."""
    readable, first_error = 0, None
    for path in files:
        try:
            image = read_image(path)
        except ImageReadError as err:
            first_error = first_error or err
            continue
        tensor, _ = preprocess(image, cfg.input.test_scale, cfg.input.mean, cfg.input.std)
        readable += 1
        yield pad_batch([tensor], cfg.input.size_divisor).numpy()
    if not readable:
        folder = files[0].parent if files else "?"
        raise CalibrationError(f"{folder}: none of the {len(files)} calibration images is readable "
                               f"({first_error})")


def quantize_qdq(model_onnx: str | Path, out_onnx: str | Path, inputs: Iterable[dict[str, np.ndarray]],
                 keep_float: Sequence[str] = ()) -> int:
    """Static QDQ quantization of ``model_onnx``'s convolutions (per-channel INT8 weights,
    uint8 activations, MinMax ranges over ``inputs``) into ``out_onnx``, except nodes whose
    name contains a part of ``keep_float``; copies the metadata. Returns the number of
    convolutions quantized. The output is written atomically."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(inputs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    source = onnx.load(str(model_onnx))
    convs = [n.name for n in source.graph.node if n.op_type == "Conv"]
    excluded = [name for name in convs if any(part in name for part in keep_float)]
    out_onnx = Path(out_onnx)
    with tempfile.TemporaryDirectory(dir=out_onnx.parent if out_onnx.parent.is_dir() else None) as tmp:
        tmp_out = os.path.join(tmp, "quantized.onnx")
        quantize_static(str(model_onnx), tmp_out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv"], nodes_to_exclude=excluded,
                        calibrate_method=CalibrationMethod.MinMax)
        quantized = onnx.load(tmp_out)
    del quantized.metadata_props[:]
    for prop in source.metadata_props:
        quantized.metadata_props.add(key=prop.key, value=prop.value)
    quantized.producer_name = source.producer_name
    count = len(convs) - len(excluded)
    quantized.metadata_props.add(key=QUANTIZATION_KEY, value=(
        f"int8 QDQ (onnxruntime quantize_static, MinMax, per-channel weights): {count} of {len(convs)} "
        f"convolutions; kept in float: {', '.join(excluded) or 'none'}"))
    with atomic_open(out_onnx, "wb") as f:
        f.write(quantized.SerializeToString())
    return count


def quantize_onnx(model_onnx: str | Path, out_onnx: str | Path,
                  calibration_images: str | Path | Sequence[str | Path], count: int = 100) -> Path:
    """Quantize an ``.onnx`` written by ``solov2 export`` to INT8 (module docstring), calibrated
    on up to ``count`` images of the folder (or list) ``calibration_images`` preprocessed with
    the config stored in the file. Returns ``out_onnx``. Raises CalibrationError for a
    missing, empty or wholly unreadable calibration set, ValueError for a file without the
    solov2 metadata or whose graph has none of the KEEP_FLOAT layers (not ours)."""
    cfg = read_onnx_config(model_onnx)
    files = calibration_files(calibration_images, count)
    inputs = ({INPUT_NAME: x} for x in calibration_inputs(cfg, files))
    import onnx

    names = [n.name for n in onnx.load(str(model_onnx), load_external_data=False).graph.node]
    missing = [part for part in KEEP_FLOAT if not any(part in name for name in names)]
    if missing:
        raise ValueError(f"{model_onnx}: no layers named {missing}: not a graph written by 'solov2 export'")
    quantize_qdq(model_onnx, out_onnx, inputs, KEEP_FLOAT)
    return Path(out_onnx)


def int8_path(fp32_path: str | Path) -> Path:
    """Where ``solov2 export --int8`` writes the INT8 model: model.onnx -> model.int8.onnx."""
    path = Path(fp32_path)
    return path.with_name(path.stem + ".int8.onnx")
