"""The ONNX opset that deformable convolutions need.

``solov2.model.deform_conv.deform_conv2d`` records itself as one standard ``DeformConv``
node (ai.onnx opset 19) when traced by the TorchScript-based exporter (its autograd
function's ``symbolic``); this module says which opset an export of a given model needs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.onnx import symbolic_helper

from ..model.deform_conv import DeformConv2dPack

DEFORM_CONV_OPSET = 19  # the first opset with DeformConv


def has_deform_conv(model: nn.Module) -> bool:
    return any(isinstance(m, DeformConv2dPack) for m in model.modules())


def opset_for(model: nn.Module, requested: int) -> int:
    """``requested``, raised to 19 when ``model`` holds deformable convolutions."""
    return max(requested, DEFORM_CONV_OPSET) if has_deform_conv(model) else requested


@symbolic_helper.parse_args("v", "v", "v", "v", "v", "is", "is", "is", "i", "i")
def _deform_conv_symbolic(g, input, offset, weight, bias, mask, stride, padding, dilation, groups,  # type: ignore[no-untyped-def]
                          deform_groups):
    """``solov2::deform_conv2d`` as ONNX ``DeformConv``: inputs X, W, offset, B[, mask]."""
    out_channels, _, kh, kw = symbolic_helper._get_tensor_sizes(weight)
    if symbolic_helper._is_none(bias):
        bias = g.op("Constant", value_t=torch.zeros(out_channels))
    inputs = [input, weight, offset, bias] + ([] if symbolic_helper._is_none(mask) else [mask])
    return g.op(
        "DeformConv", *inputs,
        dilations_i=list(dilation), group_i=groups, kernel_shape_i=[kh, kw], offset_group_i=deform_groups,
        pads_i=[padding[0], padding[1], padding[0], padding[1]], strides_i=list(stride),
    )


torch.onnx.register_custom_op_symbolic("solov2::deform_conv2d", _deform_conv_symbolic, DEFORM_CONV_OPSET)
