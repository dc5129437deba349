"""Deformable convolution v1 (offsets) and v2 (offsets + modulation) in plain PyTorch.

``deform_conv2d`` has the signature and the semantics of ``torchvision.ops.deform_conv2d``
and of ONNX's ``DeformConv`` (opset 19):

- ``input`` (N, C, H, W); ``weight`` (O, C / groups, kh, kw); ``bias`` (O,) or None;
- ``offset`` (N, 2 * dg * kh * kw, Ho, Wo): for deformable group g and tap t = i * kw + j,
  channel ``2 * (g * kh * kw + t)`` is the vertical shift dy and the next one dx, in pixels;
- ``mask`` (N, dg * kh * kw, Ho, Wo) or None: the modulation of each sampled value (v2);
- tap t of output pixel (ho, wo) samples the input at
  ``(ho * sh - ph + i * dh + dy, wo * sw - pw + j * dw + dx)`` bilinearly, zero outside the map.

When ``torchvision.ops.deform_conv2d`` imports it is used (``BACKEND == "torchvision"``);
otherwise the pure PyTorch path runs (``BACKEND == "pytorch"``): the samples of all
kh * kw taps (bilinear weights computed once per tap and position for all channels, times
the mask) are laid out as an image of kh x kw times the output size, which one ordinary
convolution with stride (kh, kw) multiplies with the weight. On the CPU the samples come
from one sparse matrix product with the channels-last input (a custom autograd function),
elsewhere from one ``grid_sample`` call. Both are differentiable, run on any device and
under autocast (sampling in float32 at least).

``DeformConv2dPack`` (v1) and ``ModulatedDeformConv2dPack`` (v2) hold the weight under the
layer's own name and a zero-initialised companion ``conv_offset`` that predicts the offsets
(and the mask logits for v2), as the SOLO release and mmcv name them.
"""

from __future__ import annotations

import math
import threading
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

try:  # pragma: no cover - depends on the installed torchvision
    from torchvision.ops import deform_conv2d as _torchvision_deform_conv2d

    BACKEND = "torchvision"
except Exception:  # noqa: BLE001 - any import failure (missing, ABI mismatch) means "not available"
    _torchvision_deform_conv2d = None
    BACKEND = "pytorch"

# Which implementation the last call of ``deform_conv2d`` ran ("torchvision" or "pytorch").
last_backend: str = ""


_local = threading.local()


def _workspace(numel: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A buffer of ``numel`` elements, reused by the calls of this thread on ``device`` with
    ``dtype`` (its contents are only valid until the next call)."""
    buffers = _local.__dict__.setdefault("buffers", {})
    buffer = buffers.get((device, dtype))
    if buffer is None or buffer.numel() < numel:
        with torch.inference_mode(False):  # a normal tensor: usable in and out of inference mode
            buffer = torch.empty(numel, device=device, dtype=dtype)
        buffers[(device, dtype)] = buffer
    return buffer[:numel]


def _positions(offset: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
               dilation: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Sampling rows and columns (N, dg, Ho, kh, Wo, kw) in input pixels, for ``offset``
    (N, 2 * dg * kh * kw, Ho, Wo): tap (i, j) of output (ho, wo) at
    (ho * sh - ph + i * dh + dy, wo * sw - pw + j * dw + dx)."""
    n, channels, ho, wo = offset.shape
    kh, kw = kernel
    dg = channels // (2 * kh * kw)
    dtype, device = offset.dtype, offset.device
    base_y = (torch.arange(ho, device=device, dtype=dtype) * stride[0] - padding[0]).view(ho, 1, 1, 1)
    base_x = (torch.arange(wo, device=device, dtype=dtype) * stride[1] - padding[1]).view(wo, 1)
    tap_y = (torch.arange(kh, device=device, dtype=dtype) * dilation[0]).view(kh, 1, 1)
    tap_x = torch.arange(kw, device=device, dtype=dtype) * dilation[1]
    offset = offset.view(n, dg, kh, kw, 2, ho, wo).permute(0, 1, 4, 5, 2, 6, 3)  # (N, dg, 2, Ho, kh, Wo, kw)
    rows = offset[:, :, 0] + (base_y + tap_y)
    cols = offset[:, :, 1] + (base_x + tap_x)
    return rows, cols


def _sample_with_grid(input: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Bilinear samples (N, C, Ho * kh, Wo * kw), zero outside the map, by ``grid_sample``:
    tap (i, j) of output (ho, wo) at row ho * kh + i, column wo * kw + j. Sampled in float32
    at least (positions in half precision would be off by a tenth of a pixel on large maps),
    returned in the input's dtype."""
    n, channels, height, width = input.shape
    dg, ho, kh, wo, kw = rows.shape[1:]
    grid = torch.stack([(2 * cols + 1) / width - 1, (2 * rows + 1) / height - 1], dim=-1)
    grid = grid.reshape(n * dg, ho * kh, wo * kw, 2)
    pixels = input.reshape(n * dg, channels // dg, height, width).to(grid.dtype)
    with torch.autocast(input.device.type, enabled=False):
        sampled = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return sampled.view(n, channels, ho * kh, wo * kw).to(input.dtype)


def _csr(index: Tensor, weight: Tensor, rows: int, cols: int) -> Tensor:
    """The (rows, cols) sparse matrix with entries ``weight`` (rows, 4) at columns ``index``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(
            torch.arange(0, 4 * rows + 1, 4, device=index.device, dtype=torch.int32),
            index.reshape(-1), weight.reshape(-1), (rows, cols),
        )


class _SparseSample(torch.autograd.Function):
    """(R, 4) corner weights at (R, 4) pixel indices times (P, C) pixels -> (R, C) samples,
    as one sparse matrix product. Backward: pixels' gradient by the transposed product,
    weights' gradient by a sampled dense product (each entry's dot product only)."""

    @staticmethod
    def forward(ctx, pixels, weight, index, reuse):  # type: ignore[override]
        matrix = _csr(index, weight, weight.shape[0], pixels.shape[0])
        if reuse:  # no gradient: a reused buffer (allocating the large result costs more than the product)
            out = _workspace(weight.shape[0] * pixels.shape[1], pixels.device, pixels.dtype)
            out = out.view(weight.shape[0], pixels.shape[1])
        else:
            out = pixels.new_empty(weight.shape[0], pixels.shape[1])
        torch.addmm(out, matrix, pixels, beta=0, out=out)
        ctx.save_for_backward(pixels, weight, index)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        pixels, weight, index = ctx.saved_tensors
        grad = grad.contiguous().to(pixels.dtype)
        matrix = _csr(index, weight, weight.shape[0], pixels.shape[0])
        grad_pixels = grad_weight = None
        with torch.autocast(pixels.device.type, enabled=False), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            if ctx.needs_input_grad[0]:
                grad_pixels = matrix.t() @ grad
            if ctx.needs_input_grad[1]:
                grad_weight = torch.sparse.sampled_addmm(matrix, grad, pixels.t(), beta=0.0).values().view_as(weight)
        return grad_pixels, grad_weight, None, None


def _sample_with_sparse(input: Tensor, rows: Tensor, cols: Tensor, mask: Tensor | None) -> Tensor:
    """As ``_sample_with_grid`` times the mask, as one sparse (4 entries a row) matrix product
    with the channels-last input (``_SparseSample``); returns a channels-last tensor.
    Differentiable: the corner weights are ordinary tensor functions of the offsets and mask."""
    n, channels, height, width = input.shape
    dg, ho, kh, wo, kw = rows.shape[1:]
    y0, x0 = rows.floor(), cols.floor()
    ly, lx = rows - y0, cols - x0
    corner_index, corner_weight = [], []
    for dy, wy in ((0, 1 - ly), (1, ly)):
        for dx, wx in ((0, 1 - lx), (1, lx)):
            y, x = y0 + dy, x0 + dx
            inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
            corner_weight.append(torch.where(inside, wy * wx, 0.0))
            corner_index.append(y.clamp(0, height - 1) * width + x.clamp(0, width - 1))
    weight = torch.stack(corner_weight, dim=-1)  # (N, dg, Ho, kh, Wo, kw, 4)
    if mask is not None:
        weight = weight * mask.view(n, dg, kh, kw, ho, wo).permute(0, 1, 4, 2, 5, 3).unsqueeze(-1).to(weight.dtype)
    plane = torch.arange(n * dg, device=input.device).view(n, dg, 1, 1, 1, 1, 1) * (height * width)
    index = (torch.stack(corner_index, dim=-1).long() + plane).to(torch.int32)
    pixels = input.to(weight.dtype).reshape(n, dg, channels // dg, height * width).permute(0, 1, 3, 2)
    reuse = not (torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad))
    with torch.autocast(input.device.type, enabled=False):  # sparse products have no half kernels
        sampled = _SparseSample.apply(pixels.reshape(n * dg * height * width, channels // dg),
                                      weight.reshape(-1, 4), index.reshape(-1, 4), reuse)
    sampled = sampled.view(n, dg, ho * kh, wo * kw, channels // dg).permute(0, 2, 3, 1, 4)
    sampled = sampled.reshape(n, ho * kh, wo * kw, channels).permute(0, 3, 1, 2)
    return sampled.to(input.dtype)


class _TapConv(torch.autograd.Function):
    """``F.conv2d(samples, weight, stride=(kh, kw))`` (no groups) with a faster weight
    gradient: one matrix product over the samples in im2col order (oneDNN's weight gradient
    of this strided convolution is several times slower on the CPU)."""

    @staticmethod
    def forward(ctx, samples, weight):  # type: ignore[override]
        ctx.save_for_backward(samples, weight)
        return F.conv2d(samples, weight, None, weight.shape[2:])

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        samples, weight = ctx.saved_tensors
        grad_samples = grad_weight = None
        kh, kw = weight.shape[2:]
        if ctx.needs_input_grad[0]:
            grad_samples = torch.ops.aten.convolution_backward(
                grad, samples, weight, None, [kh, kw], [0, 0], [1, 1], False, [0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            n, channels, rows, cols = samples.shape
            ho, wo = rows // kh, cols // kw
            columns = samples.reshape(n, channels, ho, kh, wo, kw).permute(0, 2, 4, 1, 3, 5)
            columns = columns.reshape(n * ho * wo, channels * kh * kw)  # (N Ho Wo, C kh kw), a copy
            grad_rows = grad.permute(1, 0, 2, 3).reshape(grad.shape[1], -1)  # (O, N Ho Wo)
            grad_weight = (grad_rows @ columns).view_as(weight)
        return grad_samples, grad_weight


def deform_conv2d_pytorch(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None,
                          stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                          dilation: int | tuple[int, int] = 1, mask: Tensor | None = None,
                          sampling: str = "auto") -> Tensor:
    """The pure PyTorch deformable convolution (see the module docstring for the contract).

    The samples of all taps are laid out as an image of (Ho * kh, Wo * kw) pixels, tap (i, j)
    of output (ho, wo) at (ho * kh + i, wo * kw + j), and one ordinary convolution with stride
    (kh, kw) and no padding applies the weight. The samples come from one sparse matrix
    product (``sampling="sparse"``, the default on the CPU) or from ``grid_sample``
    (``"grid"``, the default elsewhere); both are differentiable in every input.
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    n, channels, height, width = input.shape
    out_channels, group_channels, kh, kw = weight.shape
    taps = kh * kw
    dg = offset.shape[1] // (2 * taps)
    out_size = tuple((size + 2 * p - d * (k - 1) - 1) // s + 1
                     for size, p, d, k, s in zip((height, width), padding, dilation, (kh, kw), stride))
    if (offset.dim() != 4 or offset.shape[0] != n or tuple(offset.shape[2:]) != out_size
            or channels % group_channels or dg < 1
            or offset.shape[1] != 2 * dg * taps or channels % dg
            or (mask is not None and mask.shape[1] != dg * taps)):
        raise ValueError(
            f"deform_conv2d: inconsistent shapes input {tuple(input.shape)}, weight {tuple(weight.shape)}, "
            f"offset {tuple(offset.shape)}, mask {None if mask is None else tuple(mask.shape)}"
        )
    position_dtype = torch.promote_types(offset.dtype, torch.float32)
    rows, cols = _positions(offset.to(position_dtype), (kh, kw), stride, padding, dilation)
    if sampling == "auto":
        sampling = "sparse" if input.device.type == "cpu" else "grid"
    if sampling == "grid":
        sampled = _sample_with_grid(input, rows, cols)
        if mask is not None:
            ho, wo = offset.shape[-2:]
            m = mask.view(n, dg, kh, kw, ho, wo).permute(0, 1, 4, 2, 5, 3).reshape(n, dg, 1, ho * kh, wo * kw)
            sampled = (sampled.view(n, dg, channels // dg, ho * kh, wo * kw) * m.to(sampled.dtype))
            sampled = sampled.view(n, channels, ho * kh, wo * kw)
        sampled = sampled.contiguous(memory_format=torch.channels_last)
    else:
        sampled = _sample_with_sparse(input, rows, cols, mask)
    groups = channels // group_channels
    weight = weight.to(sampled.dtype)
    if groups == 1 and torch.is_grad_enabled() and weight.requires_grad \
            and not torch.is_autocast_enabled(sampled.device.type):
        out = _TapConv.apply(sampled, weight)
    else:
        out = F.conv2d(sampled, weight, None, (kh, kw), 0, 1, groups)
    if bias is not None:
        out = out + bias.to(out.dtype).view(1, -1, 1, 1)
    return out.contiguous()


@torch.library.custom_op("solov2::deform_conv2d", mutates_args=())
def _deform_conv2d_op(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None, mask: Tensor | None,
                      stride: list[int], padding: list[int], dilation: list[int], groups: int,
                      deform_groups: int) -> Tensor:
    """``deform_conv2d_pytorch`` as one opaque operator: what ONNX export traces, so that
    ``solov2.export.deform_conv_symbolic`` can write it as one ``DeformConv`` node."""
    return deform_conv2d_pytorch(input, offset, weight, bias, tuple(stride), tuple(padding), tuple(dilation), mask)


@_deform_conv2d_op.register_fake
def _(input, offset, weight, bias, mask, stride, padding, dilation, groups, deform_groups):  # type: ignore[no-untyped-def]
    return input.new_empty(input.shape[0], weight.shape[0], offset.shape[2], offset.shape[3])


def deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None,
                  stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                  dilation: int | tuple[int, int] = 1, mask: Tensor | None = None) -> Tensor:
    """Deformable convolution, torchvision's when it imports, else ``deform_conv2d_pytorch``.

    Exported to ONNX as one ``DeformConv`` node (opset 19) by ``solov2.export`` (the custom
    operator ``solov2::deform_conv2d`` and its symbolic in ``solov2.export.deform_conv_symbolic``).
    """
    global last_backend
    if torch.onnx.is_in_onnx_export():
        last_backend = "onnx"
        # Channel counts are static: plain ints (attributes of the node), not traced shapes.
        groups = int(input.shape[1]) // int(weight.shape[1])
        deform_groups = int(offset.shape[1]) // (2 * int(weight.shape[2]) * int(weight.shape[3]))
        return _deform_conv2d_op(input, offset, weight, bias, mask, list(_pair(stride)), list(_pair(padding)),
                                 list(_pair(dilation)), groups, deform_groups)
    if _torchvision_deform_conv2d is not None:  # pragma: no cover - needs torchvision
        last_backend = "torchvision"
        return _torchvision_deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)
    last_backend = "pytorch"
    return deform_conv2d_pytorch(input, offset, weight, bias, stride, padding, dilation, mask)


class DeformConv2dPack(nn.Module):
    """Deformable convolution v1: ``conv_offset`` (a plain conv of the same kernel, stride,
    padding and dilation, zero-initialised) predicts 2 * dg * k * k offsets from the input.

    Parameters: ``weight`` (O, C / groups, k, k), ``bias`` (O,) when ``bias``, and
    ``conv_offset.weight`` / ``conv_offset.bias``.
    """

    modulated = False

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, deform_groups: int = 1,
                 bias: bool = False):
        super().__init__()
        if in_channels % groups or out_channels % groups or in_channels % deform_groups:
            raise ValueError("in_channels and out_channels must be divisible by groups and deform_groups")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups, self.deform_groups = groups, deform_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        per_tap = 3 if self.modulated else 2
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset = nn.Conv2d(in_channels, per_tap * deform_groups * taps, kernel_size, stride,
                                     padding, dilation, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight uniform(+-1/sqrt(in_channels * k * k)) as mmcv's DeformConv2d (groups not
        counted), bias and offsets zero."""
        bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def offsets_and_mask(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(offset (N, 2 * dg * k * k, Ho, Wo), mask (N, dg * k * k, Ho, Wo) or None)."""
        return self.conv_offset(x), None

    def forward(self, x: Tensor) -> Tensor:
        offset, mask = self.offsets_and_mask(x)
        return deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"deform_groups={self.deform_groups}, bias={self.bias is not None}")


class ModulatedDeformConv2dPack(DeformConv2dPack):
    """Deformable convolution v2: ``conv_offset`` predicts 3 * dg * k * k channels, split as
    ``o1, o2, m = chunk(3)``; offset = cat(o1, o2), mask = sigmoid(m)."""

    modulated = True

    def offsets_and_mask(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        o1, o2, mask = torch.chunk(self.conv_offset(x), 3, dim=1)
        return torch.cat((o1, o2), dim=1), torch.sigmoid(mask)


def zero_offsets(module: nn.Module) -> None:
    """Zero the ``conv_offset`` of every deformable conv in ``module`` (they then start as
    plain convs), after an initialisation that reached every ``nn.Conv2d``."""
    for m in module.modules():
        if isinstance(m, DeformConv2dPack):
            nn.init.zeros_(m.conv_offset.weight)
            nn.init.zeros_(m.conv_offset.bias)


def make_conv(dcn: str, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
              padding: int = 0, dilation: int = 1, groups: int = 1, bias: bool = False) -> nn.Module:
    """A plain ``nn.Conv2d`` (``dcn == "none"``), a v1 (``"v1"``) or a v2 (``"v2"``) deformable conv."""
    if dcn == "none":
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=bias)
    if dcn == "v1":
        return DeformConv2dPack(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=bias)
    if dcn == "v2":
        return ModulatedDeformConv2dPack(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                                         bias=bias)
    raise ValueError(f"deformable convolution type must be 'none', 'v1' or 'v2', got {dcn!r}")
