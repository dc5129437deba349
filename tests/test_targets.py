"""Training targets against a plain per-instance implementation (docs/design.md, "Training
targets and losses").

The reference below follows the authors' ``solov2_target_single`` step by step: a loop over
levels, instances and cells, centre of mass in float64 numpy, region from float32 box
tensors, OpenCV bilinear 1/4 downscale of each per-image padded mask, one full mask copy per
positive cell.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from solov2.config import load_config
from solov2.model.targets import build_targets, downscale_masks, mask_centers


def center_of_mass(mask: np.ndarray) -> tuple[np.float64, np.float64]:
    """As scipy.ndimage.center_of_mass."""
    total = mask.sum(dtype=np.float64)
    ys, xs = np.ogrid[: mask.shape[0], : mask.shape[1]]
    return (mask * ys.astype(float)).sum() / total, (mask * xs.astype(float)).sum() / total


def reference_targets_single(boxes, labels, masks, mask_feat_size, grids, scale_ranges, sigma, num_classes):
    """One image. ``masks``: numpy (n, h, w) uint8 at the image's own padded size.
    Returns per level (category map (S, S), list of target masks, list of grid cells, positive flags)."""
    gt_areas = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    out = []
    for (lower, upper), num_grid in zip(scale_ranges, grids):
        hit = ((gt_areas >= lower) & (gt_areas <= upper)).nonzero().flatten()
        cate = torch.full([num_grid, num_grid], num_classes, dtype=torch.int64)
        ind = torch.zeros([num_grid**2], dtype=torch.bool)
        ins, order = [], []
        half_ws = 0.5 * (boxes[hit, 2] - boxes[hit, 0]) * sigma
        half_hs = 0.5 * (boxes[hit, 3] - boxes[hit, 1]) * sigma
        for seg_mask, label, half_h, half_w in zip(masks[hit.numpy()], labels[hit], half_hs, half_ws):
            if seg_mask.sum() == 0:
                continue
            up = (mask_feat_size[0] * 4, mask_feat_size[1] * 4)
            center_h, center_w = center_of_mass(seg_mask)
            coord_w = int((center_w / up[1]) // (1.0 / num_grid))
            coord_h = int((center_h / up[0]) // (1.0 / num_grid))
            top_box = max(0, int(((center_h - half_h) / up[0]) // (1.0 / num_grid)))
            down_box = min(num_grid - 1, int(((center_h + half_h) / up[0]) // (1.0 / num_grid)))
            left_box = max(0, int(((center_w - half_w) / up[1]) // (1.0 / num_grid)))
            right_box = min(num_grid - 1, int(((center_w + half_w) / up[1]) // (1.0 / num_grid)))
            top, down = max(top_box, coord_h - 1), min(down_box, coord_h + 1)
            left, right = max(coord_w - 1, left_box), min(right_box, coord_w + 1)
            cate[top : down + 1, left : right + 1] = label
            h, w = seg_mask.shape
            small = cv2.resize(seg_mask, (int(w * 0.25 + 0.5), int(h * 0.25 + 0.5)), interpolation=cv2.INTER_LINEAR)
            small = torch.from_numpy(small)
            for i in range(top, down + 1):
                for j in range(left, right + 1):
                    cur = torch.zeros(mask_feat_size, dtype=torch.uint8)
                    cur[: small.shape[0], : small.shape[1]] = small
                    ins.append(cur)
                    ind[i * num_grid + j] = True
                    order.append(i * num_grid + j)
        out.append((cate, ins, order, ind))
    return out


def random_instances(rng: np.random.Generator, h: int, w: int, n: int, max_size: int):
    """Random blob masks (ellipses and rectangles) of varied size, some empty, with boxes."""
    masks = np.zeros((n, h, w), np.uint8)
    boxes = np.zeros((n, 4), np.float32)
    yy, xx = np.mgrid[:h, :w]
    for k in range(n):
        size = float(np.exp(rng.uniform(np.log(2), np.log(max_size))))
        bh, bw = max(1.0, size * rng.uniform(0.5, 1.5)), max(1.0, size * rng.uniform(0.5, 1.5))
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        if rng.random() < 0.5:
            m = ((yy - cy) / (bh / 2)) ** 2 + ((xx - cx) / (bw / 2)) ** 2 <= 1
        else:
            m = (abs(yy - cy) <= bh / 2) & (abs(xx - cx) <= bw / 2)
        if rng.random() < 0.3:  # a second blob: centre of mass away from the box centre
            m |= ((yy - rng.uniform(0, h)) / (bh / 3)) ** 2 + ((xx - rng.uniform(0, w)) / (bw / 3)) ** 2 <= 1
        if rng.random() < 0.08:
            m[:] = False  # empty mask: must be skipped
        masks[k] = m
        ys, xs = np.nonzero(m)
        if len(ys):
            boxes[k] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        else:
            boxes[k] = [cx, cy, cx + bw, cy + bh]
        boxes[k] += rng.uniform(-2, 2, 4).astype(np.float32) * (rng.random() < 0.3)
    return boxes, masks


def compare_with_reference(image_sizes, counts, grids, scale_ranges, sigma, num_classes, max_size, seed):
    rng = np.random.default_rng(seed)
    pad_h = -(-max(h for h, _ in image_sizes) // 32) * 32
    pad_w = -(-max(w for _, w in image_sizes) // 32) * 32
    feat = (pad_h // 4, pad_w // 4)
    boxes, labels, batch_masks, own_masks = [], [], [], []
    for (h, w), n in zip(image_sizes, counts):
        b, m = random_instances(rng, h, w, n, max_size)
        own_h, own_w = -(-h // 32) * 32, -(-w // 32) * 32  # the release pads each image to /32
        own = np.zeros((n, own_h, own_w), np.uint8)
        own[:, :h, :w] = m
        padded = np.zeros((n, pad_h, pad_w), np.uint8)
        padded[:, :h, :w] = m
        boxes.append(torch.from_numpy(b))
        labels.append(torch.from_numpy(rng.integers(0, num_classes, n)))
        batch_masks.append(torch.from_numpy(padded))
        own_masks.append(own)

    targets = build_targets(boxes, labels, batch_masks, feat, grids, scale_ranges, sigma, num_classes)
    refs = [
        reference_targets_single(b, lb, m, feat, grids, scale_ranges, sigma, num_classes)
        for b, lb, m in zip(boxes, labels, own_masks)
    ]
    total_positive = 0
    total_pairs = 0
    for level, num_grid in enumerate(grids):
        in_level = targets.pair_level == level
        for image, ref in enumerate(refs):
            cate, _, _, ind = ref[level]
            assert torch.equal(targets.categories[level][image], cate), f"level {level} image {image}"
            total_positive += int(ind.sum())
        # Pairs of a level: images in order, then instances, then cells (as the release concatenates).
        ref_images = [i for i, ref in enumerate(refs) for _ in ref[level][2]]
        ref_cells = [c for ref in refs for c in ref[level][2]]
        assert targets.pair_image[in_level].tolist() == ref_images
        assert targets.pair_cell[in_level].tolist() == ref_cells
        ref_masks = [m for ref in refs for m in ref[level][1]]
        ours = targets.instance_masks[targets.pair_instance[in_level]]
        assert ours.shape[0] == len(ref_masks)
        if ref_masks:
            assert torch.equal(ours, torch.stack(ref_masks)), f"masks differ at level {level}"
        total_pairs += len(ref_cells)
    assert int(targets.num_positive_cells) == total_positive
    assert targets.num_pairs == total_pairs
    return total_pairs


def test_targets_equal_reference_light_preset():
    cfg = load_config("light_448_r18")
    m = cfg.model
    pairs = compare_with_reference(
        [(300, 420), (416, 250), (200, 200)], [14, 10, 9], m.grids, m.scale_ranges, m.sigma, 80, max_size=400, seed=0
    )
    assert pairs > 100  # plenty of positives to compare


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_targets_equal_reference_small_ranges_all_levels(seed):
    # Scale ranges shrunk to the image size, so every level gets many instances and the
    # 3x3 regions of neighbours overlap (overwritten classes, cells with two dice terms).
    grids = [40, 36, 24, 16, 12]
    ranges = [[1, 12], [6, 24], [12, 48], [24, 96], [48, 192]]
    pairs = compare_with_reference(
        [(97, 130), (128, 64)], [30, 25], grids, ranges, 0.2, 7, max_size=150, seed=seed
    )
    assert pairs > 200


def test_targets_hand_example():
    # One 64x64 square at rows/cols 96..159 of a 256x256 image, one 16x16 grid.
    masks = torch.zeros((1, 256, 256), dtype=torch.uint8)
    masks[0, 96:160, 96:160] = 1
    boxes = torch.tensor([[96.0, 96.0, 160.0, 160.0]])
    labels = torch.tensor([3])
    t = build_targets([boxes], [labels], [masks], (64, 64), [16], [[32, 128]], 0.2, 5)
    # centre (127.5, 127.5) -> cell 7; half extent 0.2 * 32 = 6.4 px -> rows/cols 7..8
    expected = torch.full((16, 16), 5)
    expected[7:9, 7:9] = 3
    assert torch.equal(t.categories[0][0], expected)
    assert t.pair_cell.tolist() == [7 * 16 + 7, 7 * 16 + 8, 8 * 16 + 7, 8 * 16 + 8]
    assert t.pair_instance.tolist() == [0, 0, 0, 0]
    assert int(t.num_positive_cells) == 4
    small = torch.zeros((64, 64), dtype=torch.uint8)
    small[24:40, 24:40] = 1
    assert torch.equal(t.instance_masks[0], small)
    # Out of range: no positives at all.
    t = build_targets([boxes], [labels], [masks], (64, 64), [16], [[65, 128]], 0.2, 5)
    assert t.num_pairs == 0 and int(t.num_positive_cells) == 0
    assert bool((t.categories[0] == 5).all())


def test_later_instance_overwrites_class_and_both_keep_dice_terms():
    masks = torch.zeros((2, 128, 128), dtype=torch.uint8)
    masks[0, 40:90, 40:90] = 1
    masks[1, 42:92, 42:92] = 1
    boxes = torch.tensor([[40.0, 40.0, 90.0, 90.0], [42.0, 42.0, 92.0, 92.0]])
    t = build_targets([boxes], [torch.tensor([0, 1])], [masks], (32, 32), [12], [[1, 200]], 0.2, 2)
    shared = set(t.pair_cell[t.pair_instance == 0].tolist()) & set(t.pair_cell[t.pair_instance == 1].tolist())
    assert shared
    flat = t.categories[0][0].flatten()
    for cell in shared:
        assert int(flat[cell]) == 1
    assert int(t.num_positive_cells) == len(set(t.pair_cell.tolist()))


def test_downscale_matches_opencv_bilinear():
    rng = np.random.default_rng(0)
    masks = (rng.random((20, 64, 96)) < rng.random((20, 1, 1))).astype(np.uint8)
    ours = downscale_masks(torch.from_numpy(masks)).numpy()
    for m, o in zip(masks, ours):
        assert np.array_equal(cv2.resize(m, (24, 16), interpolation=cv2.INTER_LINEAR), o)
    with pytest.raises(ValueError, match="multiple of 4"):
        downscale_masks(torch.zeros((1, 10, 12), dtype=torch.uint8))


def test_mask_centers_match_center_of_mass():
    rng = np.random.default_rng(1)
    masks = (rng.random((6, 40, 50)) < 0.2).astype(np.uint8)
    cy, cx, area = mask_centers(torch.from_numpy(masks))
    for k, m in enumerate(masks):
        ey, ex = center_of_mass(m)
        assert cy[k].item() == ey and cx[k].item() == ex
        assert int(area[k]) == int(m.sum())


def test_mask_size_must_match_feature_size():
    masks = torch.zeros((1, 64, 64), dtype=torch.uint8)
    with pytest.raises(ValueError, match="padded input size"):
        build_targets([torch.zeros((1, 4))], [torch.zeros(1, dtype=torch.long)], [masks], (8, 8), [4], [[1, 9]], 0.2, 2)


def test_images_without_instances():
    masks = [torch.zeros((0, 64, 64), dtype=torch.uint8), torch.zeros((0, 64, 64), dtype=torch.uint8)]
    t = build_targets([torch.zeros((0, 4))] * 2, [torch.zeros(0, dtype=torch.long)] * 2, masks, (16, 16),
                      [8, 4], [[1, 32], [16, 64]], 0.2, 3)
    assert t.num_pairs == 0 and [c.shape for c in t.categories] == [(2, 8, 8), (2, 4, 4)]
    assert bool(all((c == 3).all() for c in t.categories))


def test_scale_range_bounds_are_inclusive():
    # sqrt(56 * 56) = 56 is the upper bound of level 0 and the lower bound of level 2 of the
    # light presets, and inside level 1: the instance trains all three.
    m = load_config("light_448_r18").model
    masks = torch.zeros((1, 256, 256), dtype=torch.uint8)
    masks[0, 100:156, 100:156] = 1
    boxes = torch.tensor([[100.0, 100.0, 156.0, 156.0]])
    t = build_targets([boxes], [torch.tensor([0])], [masks], (64, 64), m.grids, m.scale_ranges, m.sigma, 80)
    assert sorted(set(t.pair_level.tolist())) == [0, 1, 2]
