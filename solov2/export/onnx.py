"""Export SOLOv2 to ONNX with dynamic batch, height and width.

The graph takes a preprocessed batch (normalized RGB, zero-padded bottom and right to
multiples of 32, as ``solov2.data.transforms`` makes it) and returns what the per-image
post-processing consumes:

- ``category_logits`` (N, C, cells): the category maps of all levels, each flattened
  row-major and concatenated level by level;
- ``kernels`` (N, E, cells): the dynamic kernel of every cell, in the same order;
- ``mask_features`` (N, E, H/4, W/4).

Everything after the network (sigmoid, points NMS, thresholds, the candidates' dynamic
convolution, Matrix NMS, upsampling) runs in PyTorch with the project's own ``postprocess``
on these outputs split back into levels (``solov2.export.onnx_runtime.OnnxPredictor``), so
the ONNX and PyTorch paths share that code, and the graph's outputs are continuous
functions of the input that can be compared with a tolerance.
The full config is stored in the model's metadata (key ``solov2_config``, YAML): an ``.onnx``
file is self-contained.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import yaml
from torch import Tensor, nn

from ..config import Config, config_from_dict
from ..model import SOLOv2
from ..model.fuse import optimize_for_inference
from .deform_conv_symbolic import opset_for

CONFIG_KEY = "solov2_config"
FORMAT_KEY = "solov2_onnx_format"
FORMAT_VERSION = "1"
INPUT_NAME = "images"
OUTPUT_NAMES = ("category_logits", "kernels", "mask_features")
DEFAULT_OPSET = 17


class ExportableSOLOv2(nn.Module):
    """The network with its per-level head outputs flattened into one tensor each."""

    def __init__(self, model: SOLOv2):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        outputs = self.model(images)
        category_logits = torch.cat([c.flatten(2) for c in outputs.category_logits], dim=2)
        kernels = torch.cat([k.flatten(2) for k in outputs.kernels], dim=2)
        return category_logits, kernels, outputs.mask_features


def split_levels(flat: Tensor, grids: list[int]) -> list[Tensor]:
    """(N, D, cells) back to per-level (N, D, S, S) maps: the inverse of the flattening."""
    chunks = torch.split(flat, [s * s for s in grids], dim=2)
    return [c.reshape(c.shape[0], c.shape[1], s, s) for c, s in zip(chunks, grids)]


def export_onnx(
    model: SOLOv2,
    cfg: Config,
    out: str | Path,
    height: int = 448,
    width: int = 672,
    opset: int = DEFAULT_OPSET,
    fold_bn: bool = True,
    postprocess: bool = False,
) -> Path:
    """Write ``model`` (with ``cfg`` in the metadata) to ``out``; returns the path.

    ``height`` x ``width`` is only the tracing size (multiples of the size divisor): the
    exported graph accepts any batch, height and width that are multiples of 32. With
    ``postprocess``, the graph is the whole inference after preprocessing, batch 1
    (``solov2.export.onnx_postprocess``). Models with deformable convolutions are written
    with opset 19 at least (``DeformConv``).
    """
    divisor = cfg.input.size_divisor
    if height % divisor or width % divisor:
        raise ValueError(f"export size {height}x{width} must be a multiple of {divisor}")
    import onnx  # imported here: only exporting needs the onnx package

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    network = optimize_for_inference(model.cpu(), fold_bn=fold_bn)
    opset = opset_for(network, opset)  # DeformConv needs opset 19
    wrapper = ExportableSOLOv2(network).eval()
    inputs: tuple[Tensor, ...] = (torch.zeros(1, 3, height, width),)
    input_names, output_names = [INPUT_NAME], list(OUTPUT_NAMES)
    dynamic = {
        INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
        "category_logits": {0: "batch"},
        "kernels": {0: "batch"},
        "mask_features": {0: "batch", 2: "feature_height", 3: "feature_width"},
    }
    description = {
        "input": "images (N, 3, H, W) float32: normalized RGB, zero-padded to multiples of "
                 f"{divisor}",
        "outputs": "category_logits (N, C, cells); kernels (N, E, cells); mask_features "
                   "(N, E, H/4, W/4); cells = sum of S*S over the levels, row-major, level by level",
    }
    if postprocess:
        from .onnx_postprocess import FULL_DESCRIPTION, FULL_DYNAMIC_AXES, FullSOLOv2, full_sample_inputs

        wrapper = FullSOLOv2(network, cfg.test, cfg.model.grids, cfg.model.strides).eval()
        inputs = full_sample_inputs(height, width)
        input_names, output_names = list(FULL_DYNAMIC_AXES)[:3], list(FULL_DYNAMIC_AXES)[3:]
        dynamic, description = FULL_DYNAMIC_AXES, FULL_DESCRIPTION
    with warnings.catch_warnings():
        # GroupNorm's batch-size check reads a shape as a Python bool; it does not affect the graph.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="torch.tensor results are registered as constants")
        torch.onnx.export(
            wrapper, inputs, str(out), dynamo=False, opset_version=opset,
            input_names=input_names, output_names=output_names, dynamic_axes=dynamic,
            do_constant_folding=True,
        )
    proto = onnx.load(str(out))
    metadata = {CONFIG_KEY: yaml.safe_dump(cfg.to_dict(), sort_keys=False), FORMAT_KEY: FORMAT_VERSION,
                **description}
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "solov2"
    onnx.save(proto, str(out))
    return out


def read_onnx_config(path: str | Path) -> Config:
    """The config stored in an exported model's metadata."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX file not found")
    proto = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    if CONFIG_KEY not in props:
        raise ValueError(f"{path}: no solov2 config in the ONNX metadata (not exported by 'solov2 export'?)")
    return config_from_dict(yaml.safe_load(props[CONFIG_KEY]))
