"""Random DCN models for the tests: random weights with offsets of about a pixel."""

from __future__ import annotations

import torch

from _train_data import TINY_MODEL
from conftest import randomize_
from solov2.config import load_config
from solov2.model import SOLOv2
from solov2.model.deform_conv import DeformConv2dPack


def calibrate_offsets_(model: SOLOv2, images: torch.Tensor, pixels: float = 0.5) -> SOLOv2:
    """Scale every offset conv (in place) so that its offsets have a standard deviation of
    ``pixels`` on ``images``, layer after layer, as trained models have: offsets computed
    from random weights would be as large as the features, hundreds of pixels."""
    done: set[int] = set()

    def rescale(module, _inputs, output):
        if id(module) in done:
            return None
        done.add(id(module))
        factor = pixels / float(output.std().clamp(min=1e-6))
        module.weight.mul_(factor)
        module.bias.mul_(factor)
        return output * factor

    hooks = [m.conv_offset.register_forward_hook(rescale) for m in model.modules()
             if isinstance(m, DeformConv2dPack)]
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    return model


def tiny_dcn_model(preset: str, seed: int = 0, overrides: tuple[str, ...] = ()) -> tuple[SOLOv2, object]:
    """The preset with the narrow test head, random weights and offsets of about a pixel."""
    cfg = load_config(preset, TINY_MODEL + list(overrides))
    torch.manual_seed(seed)
    model = randomize_(SOLOv2(cfg.model), seed).eval()
    calibrate_offsets_(model, torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(seed)))
    return model, cfg
