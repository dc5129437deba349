"""SOLOv2 training targets (docs/design.md, "Training targets and losses"), built for a
whole batch at once.

For every level and every instance whose box scale falls in the level's range, the cells
around the centre of mass of the instance's mask (at most 3x3) become positive: they take
the instance's class (a later instance overwrites an earlier one), and each (cell, instance)
pair adds one dice term whose target is the instance's mask downscaled by 4.

The arithmetic follows the authors' release (``solov2_target_single``) operation for
operation: the centre cell uses float64 (Python floats there), the box-derived region
float32 (tensors there), both with Python-style floor division, so borderline cells land
where the release puts them. Nothing loops over cells, instances or pixels: all instances
of all images and all levels are handled by tensor operations, and the dice targets are
one downscaled mask per instance plus an index per pair (no mask copy per cell).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

MASK_STRIDE = 4  # the mask features are at 1/4 of the input resolution


@dataclass
class SOLOv2Targets:
    """Targets of one batch.

    ``categories[l]`` is (N, S_l, S_l) int64 with ``num_classes`` meaning background.
    Positive pairs are listed level by level, then image, instance (in annotation order),
    and cell in row-major order, as the release concatenates them: ``pair_level``,
    ``pair_image``, ``pair_cell`` (row * S + column) and ``pair_instance`` (an index into
    ``instance_masks``, the (M, H/4, W/4) uint8 downscaled masks of the batch's instances,
    image by image).
    """

    categories: list[Tensor]
    num_positive_cells: Tensor  # () int64: cells with a class, all images and levels
    pair_level: Tensor
    pair_image: Tensor
    pair_cell: Tensor
    pair_instance: Tensor
    instance_masks: Tensor
    num_classes: int

    @property
    def num_pairs(self) -> int:
        return int(self.pair_cell.numel())

    def to(self, device: torch.device | str) -> "SOLOv2Targets":
        return SOLOv2Targets(
            [c.to(device) for c in self.categories],
            self.num_positive_cells.to(device),
            self.pair_level.to(device),
            self.pair_image.to(device),
            self.pair_cell.to(device),
            self.pair_instance.to(device),
            self.instance_masks.to(device),
            self.num_classes,
        )


def downscale_masks(masks: Tensor) -> Tensor:
    """(M, H, W) 0/1 masks with H, W multiples of 4 to (M, H/4, W/4) uint8.

    Equal to the release's ``mmcv.imrescale(mask, 0.25)`` (OpenCV bilinear on uint8): each
    output pixel samples the 2x2 centre of its 4x4 block with weights 1/4 and rounds half
    up, so it is 1 when at least two of those four pixels are.
    """
    if masks.shape[-2] % MASK_STRIDE or masks.shape[-1] % MASK_STRIDE:
        raise ValueError(f"mask size {tuple(masks.shape[-2:])} is not a multiple of {MASK_STRIDE}")
    m = masks.to(torch.uint8)
    votes = m[:, 1::4, 1::4] + m[:, 1::4, 2::4] + m[:, 2::4, 1::4] + m[:, 2::4, 2::4]
    return (votes >= 2).to(torch.uint8)


def mask_centers(masks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Centre of mass (y, x) in float64 pixel coordinates and pixel count of (M, H, W) masks.

    The weighted sums are exact integers, so the centres equal scipy's ``center_of_mass``.
    Empty masks get NaN centres.
    """
    _, h, w = masks.shape
    m = masks.to(torch.uint8)
    rows = m.sum(dim=2, dtype=torch.int64)  # (M, H)
    cols = m.sum(dim=1, dtype=torch.int64)  # (M, W)
    area = rows.sum(dim=1)
    ys = torch.arange(h, device=masks.device, dtype=torch.int64)
    xs = torch.arange(w, device=masks.device, dtype=torch.int64)
    cy = (rows * ys).sum(dim=1).double() / area.double()
    cx = (cols * xs).sum(dim=1).double() / area.double()
    return cy, cx, area


def _floor_div(a: Tensor, b: Tensor) -> Tensor:
    """Python's ``a // b`` for floats (the release uses it to map coordinates to cells)."""
    return torch.div(a, b, rounding_mode="floor")


def _batch_instances(
    boxes: Sequence[Tensor], labels: Sequence[Tensor], masks: Sequence[Tensor], mask_feature_size: tuple[int, int]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Every instance of the batch in one set of tensors: boxes (n, 4) float32, labels (n,)
    int64, masks (n, H, W) uint8 and the image each belongs to (n,). Raises ValueError when the
    lists differ in length or a mask is not at the padded input size (4 x mask_feature_size)."""
    if not (len(boxes) == len(labels) == len(masks)):
        raise ValueError("boxes, labels and masks need one entry per image")
    num_images = len(boxes)
    feat_h, feat_w = mask_feature_size
    pad_h, pad_w = feat_h * MASK_STRIDE, feat_w * MASK_STRIDE
    for m in masks:
        if tuple(m.shape[-2:]) != (pad_h, pad_w):
            raise ValueError(
                f"masks are {tuple(m.shape[-2:])}, expected the padded input size {(pad_h, pad_w)} "
                f"(4 x the mask feature size {tuple(mask_feature_size)})"
            )
    device = masks[0].device if num_images else torch.device("cpu")
    all_boxes = torch.cat([b.reshape(-1, 4) for b in boxes]).to(device=device, dtype=torch.float32)
    all_labels = torch.cat([lb.reshape(-1) for lb in labels]).to(device=device, dtype=torch.int64)
    all_masks = torch.cat([m.to(torch.uint8) for m in masks]) if num_images else torch.zeros(
        (0, pad_h, pad_w), dtype=torch.uint8
    )
    image_of = torch.repeat_interleave(
        torch.arange(num_images, device=device),
        torch.tensor([len(lb.reshape(-1)) for lb in labels], device=device, dtype=torch.int64),
    )
    return all_boxes, all_labels, all_masks, image_of


def build_targets(
    boxes: Sequence[Tensor],
    labels: Sequence[Tensor],
    masks: Sequence[Tensor],
    mask_feature_size: tuple[int, int],
    grids: Sequence[int],
    scale_ranges: Sequence[Sequence[float]],
    sigma: float,
    num_classes: int,
) -> SOLOv2Targets:
    """Targets for a batch of N images.

    Per image i: ``boxes[i]`` (n_i, 4) x1, y1, x2, y2 at input resolution, ``labels[i]``
    (n_i,) in 0..num_classes-1, ``masks[i]`` (n_i, H, W) 0/1 at the padded input resolution
    with (H, W) = 4 x ``mask_feature_size``. Instances with empty masks are skipped.

    It stays one function of about 90 lines: every step (level by scale, centre of mass,
    centre region, scatter into the grids) feeds the next with the same dozen per-instance
    tensors, in the release's order, so that it can be read against the release step by step.
    """
    all_boxes, all_labels, all_masks, image_of = _batch_instances(boxes, labels, masks, mask_feature_size)
    num_images = len(boxes)
    feat_h, feat_w = mask_feature_size
    pad_h, pad_w = feat_h * MASK_STRIDE, feat_w * MASK_STRIDE
    device = all_masks.device
    num_instances = all_labels.numel()

    grid = torch.tensor(list(grids), device=device, dtype=torch.int64).view(-1, 1)  # (L, 1)
    cell_size64 = 1.0 / grid.double()  # the release's ``1. / num_grid`` (Python float)
    cell_size32 = cell_size64.float()  # ... as a float32 tensor operation sees it
    lower = torch.tensor([r[0] for r in scale_ranges], device=device, dtype=torch.float32).view(-1, 1)
    upper = torch.tensor([r[1] for r in scale_ranges], device=device, dtype=torch.float32).view(-1, 1)

    # Which levels each instance trains: sqrt of the box area within the level's range.
    x1, y1, x2, y2 = all_boxes.unbind(dim=1)
    scale = torch.sqrt((x2 - x1) * (y2 - y1))
    cy, cx, area = mask_centers(all_masks)
    active = (scale >= lower) & (scale <= upper) & (area > 0)  # (L, M)

    # Centre cell (float64, as the release's Python floats).
    coord_h = _floor_div(cy / pad_h, cell_size64).long()
    coord_w = _floor_div(cx / pad_w, cell_size64).long()
    # Centre region from the box (float32, as the release's tensors), clipped to the grid.
    half_w = 0.5 * (x2 - x1) * sigma
    half_h = 0.5 * (y2 - y1) * sigma
    cy32, cx32 = cy.float(), cx.float()
    top_box = _floor_div((cy32 - half_h) / pad_h, cell_size32).long().clamp(min=0)
    down_box = torch.minimum(_floor_div((cy32 + half_h) / pad_h, cell_size32).long(), grid - 1)
    left_box = _floor_div((cx32 - half_w) / pad_w, cell_size32).long().clamp(min=0)
    right_box = torch.minimum(_floor_div((cx32 + half_w) / pad_w, cell_size32).long(), grid - 1)
    top = torch.maximum(top_box, coord_h - 1)
    down = torch.minimum(down_box, coord_h + 1)
    left = torch.maximum(left_box, coord_w - 1)
    right = torch.minimum(right_box, coord_w + 1)

    # The at most 3x3 cells around the centre cell that fall inside the region.
    offsets = torch.arange(-1, 2, device=device)
    rows = coord_h.unsqueeze(-1) + offsets  # (L, M, 3)
    cols = coord_w.unsqueeze(-1) + offsets
    row_ok = (rows >= top.unsqueeze(-1)) & (rows <= down.unsqueeze(-1))
    col_ok = (cols >= left.unsqueeze(-1)) & (cols <= right.unsqueeze(-1))
    inside = active[..., None, None] & row_ok[..., :, None] & col_ok[..., None, :]  # (L, M, 3, 3)
    level_idx, inst_idx, di, dj = inside.nonzero(as_tuple=True)
    pair_rows = rows[level_idx, inst_idx, di]
    pair_cols = cols[level_idx, inst_idx, dj]
    grid_of_pair = grid.view(-1)[level_idx]
    pair_cell = pair_rows * grid_of_pair + pair_cols
    pair_image = image_of[inst_idx]

    # Category maps: the last instance (in annotation order) covering a cell gives its class.
    cells_per_level = num_images * grid.view(-1) ** 2
    level_start = torch.cumsum(cells_per_level, 0) - cells_per_level
    flat = level_start[level_idx] + pair_image * grid_of_pair**2 + pair_cell
    total_cells = int(cells_per_level.sum())
    owner = torch.full((total_cells,), -1, device=device, dtype=torch.int64)
    owner.scatter_reduce_(0, flat, inst_idx, reduce="amax")
    positive = owner >= 0
    background = torch.full_like(owner, num_classes)
    owner_labels = all_labels[owner.clamp(min=0)] if num_instances else background
    flat_categories = torch.where(positive, owner_labels, background)
    categories = [
        chunk.view(num_images, s, s)
        for chunk, s in zip(torch.split(flat_categories, cells_per_level.tolist()), grids)
    ]
    return SOLOv2Targets(
        categories=categories,
        num_positive_cells=positive.sum(),
        pair_level=level_idx,
        pair_image=pair_image,
        pair_cell=pair_cell,
        pair_instance=inst_idx,
        instance_masks=downscale_masks(all_masks),
        num_classes=num_classes,
    )
