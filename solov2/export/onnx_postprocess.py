"""The whole SOLOv2 inference after preprocessing as one traceable module, for a one-graph
ONNX model (``solov2 export --postprocess``).

``FullSOLOv2(model, cfg.test)(images, image_size, original_size)``: images (1, 3, H, W)
normalized and zero-padded to multiples of 32; image_size (2,) int64, the resized, unpadded
(h, w) inside it; original_size (2,) int64, the (H0, W0) to return masks at. Returns masks
(N, H0, W0) bool, labels (N,) int64 and scores (N,) float32, by descending score, N
dynamic. The steps are those of ``solov2.model.postprocess`` written with operators ONNX has
(NonZero, TopK, MatMul, Trilu): points NMS as a max pool, Matrix NMS over all pairs masked
to the same class, and the final resize as the product of per-axis bilinear matrices built
in the graph from the two sizes. Batch 1 only: the number of candidates differs per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import TestConfig
from .onnx import ExportableSOLOv2

# Inputs, then outputs, with their dynamic axes.
FULL_DYNAMIC_AXES = {"images": {2: "height", 3: "width"}, "image_size": {}, "original_size": {},
                     "masks": {0: "instances", 1: "original_height", 2: "original_width"},
                     "labels": {0: "instances"}, "scores": {0: "instances"}}
FULL_DESCRIPTION = {
    "input": "images (1, 3, H, W) float32: normalized RGB, zero-padded to multiples of 32; "
             "image_size (2,) int64: resized unpadded (h, w); original_size (2,) int64: (H0, W0)",
    "outputs": "masks (N, H0, W0) bool; labels (N,) int64; scores (N,) float32; by descending score",
}


def full_sample_inputs(height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Inputs to trace FullSOLOv2 with (values do not matter: nothing branches on them)."""
    return (torch.zeros(1, 3, height, width), torch.tensor([height, width - 16]),
            torch.tensor([height + 20, width + 4]))


def bilinear_weights(count: Tensor, in_size: Tensor, scale: Tensor) -> Tensor:
    """(count, in_size) weights of PyTorch's bilinear resize (align_corners=False) for the
    first ``count`` outputs: source x = (dst + 0.5) * scale - 0.5, clamped at 0."""
    dst = torch.arange(count, dtype=torch.float32)
    src = torch.clamp((dst + 0.5) * scale - 0.5, min=0.0)
    i0 = torch.floor(src)
    l1 = src - i0
    i1 = torch.minimum(i0 + 1, in_size.float() - 1)
    cols = torch.arange(in_size, dtype=torch.float32)[None, :]
    return (cols == i0[:, None]).float() * (1 - l1)[:, None] + (cols == i1[:, None]).float() * l1[:, None]


def axis_matrix(feature_size: Tensor, image_size: Tensor, original_size: Tensor) -> Tensor:
    """(original, feature) matrix of one axis: bilinear x4, crop to image_size, bilinear to
    original_size."""
    up = bilinear_weights(image_size, feature_size, torch.tensor(0.25))
    down = bilinear_weights(original_size, image_size, image_size.float() / original_size.float())
    return down @ up


def _first_along(values: Tensor, count: int) -> Tensor:
    """Indices of the ``count`` largest ``values`` (all if fewer), by descending value."""
    return torch.sort(values, descending=True).indices[:count]


class FullSOLOv2(nn.Module):
    def __init__(self, model: nn.Module, cfg: TestConfig, grids: list[int], strides: list[int]):
        super().__init__()
        self.network = ExportableSOLOv2(model)
        self.cfg, self.grids = cfg, grids
        stride = torch.cat([torch.full((g * g,), float(s)) for g, s in zip(grids, strides)])
        self.register_buffer("cell_stride", stride, persistent=False)

    def category_probs(self, logits: Tensor) -> Tensor:
        """(C, cells) logits -> (cells, C) probabilities after points NMS."""
        out = []
        for level, s in zip(torch.split(logits, [g * g for g in self.grids], dim=1), self.grids):
            probs = level.sigmoid().reshape(1, -1, s, s)
            pooled = F.max_pool2d(probs, 2, stride=1, padding=1)[..., :s, :s]
            out.append((probs * (pooled == probs).float()).reshape(-1, s * s))
        return torch.cat(out, 1).t()

    def forward(self, images: Tensor, image_size: Tensor, original_size: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cfg = self.cfg
        logits, kernels, features = self.network(images)
        probs = self.category_probs(logits[0])
        found = torch.nonzero(probs > cfg.score_thr)
        cell, labels = found[:, 0], found[:, 1]
        scores = probs.reshape(-1)[cell * probs.shape[1] + labels]  # a plain Gather
        feat_h, feat_w = features.shape[-2], features.shape[-1]
        flat = features[0].reshape(features.shape[1], -1)
        mask_probs = torch.sigmoid(kernels[0].t()[cell] @ flat)
        masks = (mask_probs > cfg.mask_thr).float()
        areas = masks.sum(1)
        kept = torch.nonzero(areas > self.cell_stride[cell])[:, 0]  # the small-mask filter
        scores = scores[kept] * (mask_probs[kept] * masks[kept]).sum(1) / areas[kept]
        top = _first_along(scores, cfg.nms_pre)
        order = kept[top]  # candidates sorted for Matrix NMS
        scores = scores[top] * self.matrix_decay(masks[order], labels[order], areas[order])
        keep = torch.nonzero(scores >= cfg.update_thr)[:, 0]
        final = keep[_first_along(scores[keep], cfg.max_per_img)]
        index = order[final]
        shape = torch._shape_as_tensor(features)
        rows = axis_matrix(shape[2], image_size[0], original_size[0])
        cols = axis_matrix(shape[3], image_size[1], original_size[1])
        chosen = mask_probs[index].reshape(-1, feat_h, feat_w)
        out = rows @ (chosen @ cols.t())
        return out > cfg.mask_thr, labels[index], scores[final]

    def matrix_decay(self, masks: Tensor, labels: Tensor, areas: Tensor) -> Tensor:
        """Matrix NMS decay factors of (n, pixels) float masks sorted by descending score."""
        n = masks.shape[0]
        same = (labels[:, None] == labels[None, :]).float()
        inter = (masks @ masks.t()) * same
        union = areas[None, :] + areas[:, None] - inter
        iou = torch.triu(inter / union, diagonal=1)
        # A row of zeros (ones) keeps the reductions defined when there are no candidates.
        compensate = torch.cat([iou, torch.zeros(1, n)], 0).max(0).values[:, None]
        if self.cfg.nms_kernel == "gaussian":
            sigma = self.cfg.nms_sigma
            decay = torch.exp(-sigma * iou**2) / torch.exp(-sigma * compensate**2)
        else:
            decay = (1 - iou) / (1 - compensate)
        return torch.cat([decay, torch.ones(1, n)], 0).min(0).values
