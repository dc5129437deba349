"""Deformable convolution against ONNX's reference DeformConv and ONNX Runtime's, plus
plain-conv equivalence, gradients and the v1/v2 modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from solov2.model import deform_conv
from solov2.model.deform_conv import (
    DeformConv2dPack,
    ModulatedDeformConv2dPack,
    deform_conv2d,
    deform_conv2d_pytorch,
)

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

# (kernel, stride, padding, dilation, groups, deformable groups)
CASES = [
    (3, 1, 1, 1, 1, 1),
    (3, 2, 1, 1, 2, 2),
    (1, 1, 0, 1, 1, 1),
    (3, 1, 2, 2, 1, 1),
    (3, 2, 0, 1, 4, 2),
    (3, 1, 1, 1, 2, 4),
    (1, 2, 0, 1, 2, 4),
]


def _node(weight: torch.Tensor, stride: int, padding: int, dilation: int, groups: int, dg: int, modulated: bool):
    kh, kw = weight.shape[2:]
    inputs = ["X", "W", "offset", "B"] + (["mask"] if modulated else [])
    return helper.make_node(
        "DeformConv", inputs, ["Y"], dilations=[dilation, dilation], group=groups, kernel_shape=[kh, kw],
        offset_group=dg, pads=[padding] * 4, strides=[stride, stride],
    )


def _random_case(kernel, stride, padding, dilation, groups, dg, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w, o = 2, 8, 7, 9, 4
    x = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    weight = torch.randn(o, c // groups, kernel, kernel, generator=g, dtype=dtype) * 0.3
    bias = torch.randn(o, generator=g, dtype=dtype)
    ho = (h + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    # Offsets up to +-6 pixels: many samples fall partly or wholly outside the 7 x 9 map.
    offset = torch.randn(n, 2 * dg * kernel * kernel, ho, wo, generator=g, dtype=dtype) * 3
    mask = torch.rand(n, dg * kernel * kernel, ho, wo, generator=g, dtype=dtype)
    return x, weight, bias, offset, mask


def _feeds(x, weight, bias, offset, mask):
    feeds = {"X": x.numpy(), "W": weight.numpy(), "offset": offset.numpy(), "B": bias.numpy()}
    if mask is not None:
        feeds["mask"] = mask.numpy()
    return feeds


def _ours(x, weight, bias, offset, mask, stride, padding, dilation, grad):
    """Our output through ``grid_sample`` (``grad`` True, with gradients) or the sparse
    product (without); both paths are also checked with gradients in gradcheck."""
    x = x.clone().requires_grad_(grad)
    sampling = "grid" if grad else "sparse"
    return deform_conv2d_pytorch(x, offset, weight, bias, stride, padding, dilation, mask,
                                 sampling=sampling).detach().numpy()


@pytest.mark.parametrize("modulated", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_matches_onnx_reference_evaluator(case, modulated):
    kernel, stride, padding, dilation, groups, dg = case
    x, weight, bias, offset, mask = _random_case(*case)
    mask = mask if modulated else None
    node = _node(weight, stride, padding, dilation, groups, dg, modulated)
    expected = ReferenceEvaluator(node).run(None, _feeds(x, weight, bias, offset, mask))[0]
    for grad in (False, True):
        got = _ours(x, weight, bias, offset, mask, stride, padding, dilation, grad)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-5, (case, modulated, grad)


@pytest.mark.parametrize("case", CASES)
def test_matches_onnxruntime(case):
    ort = pytest.importorskip("onnxruntime")
    kernel, stride, padding, dilation, groups, dg = case
    x, weight, bias, offset, mask = _random_case(*case, seed=1)
    node = _node(weight, stride, padding, dilation, groups, dg, True)
    values = {"X": x, "W": weight, "offset": offset, "B": bias, "mask": mask}
    graph = helper.make_graph(
        [node], "deform_conv",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape)) for k, v in values.items()],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, _feeds(x, weight, bias, offset, mask))[0]
    for grad in (False, True):
        got = _ours(x, weight, bias, offset, mask, stride, padding, dilation, grad)
        assert np.abs(got - expected).max() <= 1e-5, (case, grad)


@pytest.mark.parametrize("case", CASES)
def test_zero_offsets_and_unit_mask_equal_plain_conv(case):
    kernel, stride, padding, dilation, groups, dg = case
    x, weight, bias, offset, mask = _random_case(*case, seed=2)
    expected = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    for grad in (False, True):
        got = _ours(x, weight, bias, torch.zeros_like(offset), torch.ones_like(mask), stride, padding, dilation,
                    grad)
        assert np.abs(got - expected.numpy()).max() <= 1e-5
        got = _ours(x, weight, bias, torch.zeros_like(offset), None, stride, padding, dilation, grad)
        assert np.abs(got - expected.numpy()).max() <= 1e-5


def test_integer_offsets_shift_the_sampling_positions():
    """An offset of (+1, -2) for every tap samples the input shifted by one row down and two
    columns left (zero where that leaves the map)."""
    x = torch.randn(1, 3, 6, 8)
    weight = torch.randn(2, 3, 3, 3)
    offset = torch.zeros(1, 18, 6, 8)
    offset[:, 0::2] = 1.0
    offset[:, 1::2] = -2.0
    # Tap (i, j) of output (y, x) reads input (y - 1 + i + 1, x - 1 + j - 2) = (y + i, x + j - 3):
    # a plain conv of the input padded 3 columns on the left (cropped 1 on the right) and 2
    # rows at the bottom.
    expected = F.conv2d(F.pad(x, (3, -1, 0, 2)), weight)
    got = deform_conv2d_pytorch(x, offset, weight, padding=1)
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 2])
def test_gradcheck_input_offset_mask_weight(groups):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 4 // groups, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    # Fractional offsets away from integers, where bilinear sampling is not differentiable.
    offset = (torch.rand(1, 2 * 2 * 9, 5, 6, generator=g, dtype=torch.float64) * 0.8 + 0.1
              + torch.randint(-2, 2, (1, 36, 5, 6), generator=g)).requires_grad_(True)
    mask = torch.rand(1, 2 * 9, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)

    for sampling in ("sparse", "grid"):
        def fn(x, offset, mask, weight, bias):
            return deform_conv2d_pytorch(x, offset, weight, bias, 1, 1, 1, mask, sampling=sampling)

        assert torch.autograd.gradcheck(fn, (x, offset, mask, weight, bias), eps=1e-6, atol=1e-5), sampling


def test_sparse_and_grid_paths_give_the_same_gradients():
    x, weight, bias, offset, mask = _random_case(3, 2, 1, 1, 2, 2, seed=4)
    grads = []
    for sampling in ("sparse", "grid"):
        inputs = [t.clone().requires_grad_(True) for t in (x, offset, mask, weight, bias)]
        out = deform_conv2d_pytorch(inputs[0], inputs[1], inputs[3], inputs[4], 2, 1, 1, inputs[2],
                                    sampling=sampling)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append([t.grad for t in inputs])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_offsets_learn_from_zero_initialisation():
    layer = ModulatedDeformConv2dPack(4, 4, 3, padding=1)
    layer(torch.randn(1, 4, 6, 6)).square().sum().backward()
    assert layer.conv_offset.weight.grad.abs().sum() > 0
    assert layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("cls,per_tap", [(DeformConv2dPack, 2), (ModulatedDeformConv2dPack, 3)])
def test_pack_modules(cls, per_tap):
    layer = cls(8, 6, 3, stride=2, padding=1, groups=2)
    assert layer.conv_offset.out_channels == per_tap * 9
    assert layer.conv_offset.weight.abs().sum() == 0 and layer.conv_offset.bias.abs().sum() == 0
    names = {name for name, _ in layer.named_parameters()}
    assert names == {"weight", "conv_offset.weight", "conv_offset.bias"}
    x = torch.randn(2, 8, 9, 11)
    plain = F.conv2d(x, layer.weight, None, 2, 1, 1, 2)
    # Zero offsets: a plain conv; v2's mask is then sigmoid(0) = 0.5 everywhere.
    scale = 0.5 if per_tap == 3 else 1.0
    with torch.no_grad():
        assert torch.allclose(layer(x), scale * plain, atol=1e-5)


def test_modulated_pack_splits_offsets_and_mask_as_chunk3():
    layer = ModulatedDeformConv2dPack(2, 2, 3, padding=1)
    torch.nn.init.normal_(layer.conv_offset.weight, std=0.5)
    x = torch.randn(1, 2, 5, 5)
    raw = layer.conv_offset(x)
    offset = torch.cat([raw[:, :9], raw[:, 9:18]], dim=1)
    mask = torch.sigmoid(raw[:, 18:])
    expected = deform_conv2d_pytorch(x, offset, layer.weight, None, 1, 1, 1, mask)
    with torch.no_grad():
        assert torch.allclose(layer(x), expected, atol=1e-6)


def test_backend_is_reported():
    x, weight, bias, offset, mask = _random_case(3, 1, 1, 1, 1, 1)
    deform_conv2d(x, offset, weight, bias, 1, 1, 1, mask)
    assert deform_conv.last_backend == deform_conv.BACKEND
    try:
        import torchvision.ops  # noqa: F401

        assert deform_conv.BACKEND == "torchvision"
    except Exception:  # noqa: BLE001 - torchvision missing or broken: the PyTorch path runs
        assert deform_conv.BACKEND == "pytorch"


def test_autocast_cpu_bfloat16_close_to_float32():
    layer = ModulatedDeformConv2dPack(8, 8, 3, padding=1)
    torch.nn.init.normal_(layer.conv_offset.weight, std=0.1)
    x = torch.randn(1, 8, 10, 12)
    with torch.no_grad():
        expected = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = layer(x)
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x).float().sum().backward()
    assert got.dtype == torch.bfloat16
    assert (got.float() - expected).abs().max() <= 0.05 * expected.abs().max()
    assert torch.isfinite(x.grad).all() and layer.conv_offset.weight.grad.abs().sum() > 0


def test_inconsistent_shapes_raise():
    x, weight, bias, offset, mask = _random_case(3, 1, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        deform_conv2d_pytorch(x, offset[:, :17], weight, bias, 1, 1, 1, mask)
    with pytest.raises(ValueError, match="inconsistent shapes"):  # offsets for another output size
        deform_conv2d_pytorch(x, offset[..., :-1], weight, bias, 1, 1, 1, mask[..., :-1])
