"""Inference post-processing: points NMS and Matrix NMS on hand-worked cases, post-processing
on crafted kernels and features, and equality with a plain loop-based re-implementation of the
authors' release (get_seg_single + matrix_nms + points_nms of WXinlong/SOLO).

Labels and scores must equal the reference's. Final masks: the post-processing resizes with
exact-in-math matrices rounded differently from ``F.interpolate`` (solov2/model/fast_masks.py),
so a mask pixel may differ only where the reference's upsampled probability lies within
MASK_TOLERANCE of mask_thr (``assert_masks_agree``).
"""

from __future__ import annotations

import dataclasses
import gc
import io
import math
import os

import pytest
import torch
import torch.nn.functional as F

from solov2.config import TestConfig as InferenceConfig  # not named Test*: pytest would collect it
from solov2.model.fast_masks import (
    MAPPED_ZEROS_BYTES,
    _zeros_bool,
    mask_intersections,
    mask_probabilities,
    resize_masks,
    score_masks,
)
from solov2.model.postprocess import (
    Detections,
    cell_strides,
    flatten_levels,
    matrix_nms,
    points_nms,
    postprocess,
    postprocess_image,
)

STRIDES = [8, 8, 16, 32, 32]
MASK_TOLERANCE = 1e-5  # a final mask pixel may differ only where the reference probability is this close to mask_thr


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# ---------------------------------------------------------------------------------------------
# Loop-based reference of the release's inference (step by step, no vectorization tricks).


def ref_points_nms(heat: torch.Tensor) -> torch.Tensor:
    """heat (C, S, S): a cell survives when it equals the max over itself and its up, left and
    up-left neighbours (max_pool2d kernel 2, stride 1, padding 1, last row/col dropped)."""
    values = heat.tolist()
    out = heat.clone()
    for c, plane in enumerate(values):
        for i, row in enumerate(plane):
            for j, v in enumerate(row):
                window = [plane[a][b] for a in (i - 1, i) for b in (j - 1, j) if a >= 0 and b >= 0]
                if v != max(window):
                    out[c, i, j] = 0.0
    return out


def ref_matrix_nms(seg_masks, labels, scores, kernel, sigma, sum_masks):
    """Column-wise min over the decay matrix, as the release: entry (i, j) is
    f(iou_ij if i < j and same class else 0) / f(compensate_i), compensate_i = max over k < i of
    same-class iou_ki."""
    n = len(labels)
    # Each binary mask as a Python int bit set: intersections are popcounts of ANDs.
    bits = [int("".join("1" if v else "0" for v in m.flatten().tolist()) or "0", 2) for m in seg_masks]
    iou = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if labels[i] == labels[j]:
                inter = float((bits[i] & bits[j]).bit_count())
                iou[i][j] = inter / (float(sum_masks[i]) + float(sum_masks[j]) - inter)

    def f(x):
        if kernel == "gaussian":
            return math.exp(-sigma * x * x)
        if kernel == "linear":
            return 1.0 - x
        raise NotImplementedError

    compensate = [max([iou[k][i] for k in range(i)], default=0.0) for i in range(n)]
    out = []
    for j in range(n):
        decay = min(f(iou[i][j]) / f(compensate[i]) for i in range(n))
        out.append(scores[j] * decay)
    return out


def ref_get_seg_single(cate_preds, kernel_preds, seg_preds, grids, strides, img_shape, ori_shape, cfg):
    """cate_preds (cells, C) after points NMS; kernel_preds (cells, E); seg_preds (1, E, h, w).
    Returns None (nothing found) or (masks, labels, scores), like the release."""
    h, w = img_shape
    feat_h, feat_w = seg_preds.shape[-2:]
    cell_stride = []
    for g, s in zip(grids, strides):
        cell_stride += [s] * (g * g)
    assert len(cell_stride) == cate_preds.shape[0]

    # Candidates: (cell, class) pairs above score_thr, in row-major order.
    probs = cate_preds.tolist()
    cand_cells, cand_labels, cand_scores = [], [], []
    for cell, row in enumerate(probs):
        for label, p in enumerate(row):
            if p > cfg.score_thr:
                cand_cells.append(cell)
                cand_labels.append(label)
                cand_scores.append(cate_preds[cell, label])
    if not cand_cells:
        return None

    # Dynamic 1x1 convolution: one conv over all gathered kernels, as the release.
    kernels = kernel_preds[cand_cells]
    seg = F.conv2d(seg_preds, kernels.view(len(cand_cells), -1, 1, 1)).squeeze(0).sigmoid()

    kept = []
    for k in range(len(cand_cells)):
        mask = seg[k] > cfg.mask_thr
        area = float(mask.sum())
        if area > cell_stride[cand_cells[k]]:
            mask_score = float((seg[k] * mask.float()).sum()) / area
            kept.append(dict(mask=mask, prob=seg[k], area=area, label=cand_labels[k],
                             score=float(cand_scores[k]) * mask_score))
    if not kept:
        return None

    kept = sorted(kept, key=lambda d: -d["score"])[: cfg.nms_pre]
    new_scores = ref_matrix_nms([d["mask"] for d in kept], [d["label"] for d in kept],
                                [d["score"] for d in kept], cfg.nms_kernel, cfg.nms_sigma,
                                [d["area"] for d in kept])
    survivors = [dict(d, score=s) for d, s in zip(kept, new_scores) if s >= cfg.update_thr]
    if not survivors:
        return None
    survivors = sorted(survivors, key=lambda d: -d["score"])[: cfg.max_per_img]

    stacked = torch.stack([d["prob"] for d in survivors]).unsqueeze(0)
    probs = ref_resize(stacked.squeeze(0), img_shape, ori_shape)
    labels = torch.tensor([d["label"] for d in survivors])
    scores = torch.tensor([d["score"] for d in survivors], dtype=torch.float64)
    return probs > cfg.mask_thr, labels, scores, probs


def ref_resize(probs, img_shape, ori_shape):
    """The release's final resizes of (k, h, w) mask probabilities: x4, crop, to the original size."""
    feat_h, feat_w = probs.shape[-2:]
    up = F.interpolate(probs.unsqueeze(0), size=(feat_h * 4, feat_w * 4), mode="bilinear", align_corners=False)
    up = up[:, :, : img_shape[0], : img_shape[1]]
    return F.interpolate(up, size=tuple(ori_shape), mode="bilinear", align_corners=False).squeeze(0)


def ref_postprocess(category_logits, kernels, mask_features, image_sizes, original_sizes, grids, strides, cfg):
    """The release's get_seg: per image, per level points NMS on sigmoid, (S*S, C) rows."""
    results = []
    for img in range(mask_features.shape[0]):
        cate = torch.cat([ref_points_nms(c[img].sigmoid()).permute(1, 2, 0).reshape(-1, c.shape[1])
                          for c in category_logits])
        kern = torch.cat([k[img].permute(1, 2, 0).reshape(-1, k.shape[1]) for k in kernels])
        results.append(ref_get_seg_single(cate, kern, mask_features[img : img + 1], grids, strides,
                                          image_sizes[img], original_sizes[img], cfg))
    return results


def assert_masks_agree(ours: torch.Tensor, ref_probs: torch.Tensor, mask_thr: float) -> int:
    """Our boolean masks against the reference's probabilities: equal to ref_probs > mask_thr
    except where those lie within MASK_TOLERANCE of mask_thr. Returns the differing pixels."""
    assert ours.dtype == torch.bool and ours.shape == ref_probs.shape
    differ = ours != (ref_probs > mask_thr)
    distance = (ref_probs[differ] - mask_thr).abs()
    assert torch.all(distance < MASK_TOLERANCE), (int(differ.sum()), float(distance.max()))
    return int(differ.sum())


def assert_same(ours: Detections, ref, original_size, mask_thr=0.5):
    if ref is None:
        assert len(ours) == 0
        assert tuple(ours.masks.shape) == (0, *original_size)
        assert ours.labels.shape == (0,) and ours.scores.shape == (0,)
        return
    masks, labels, scores, probs = ref
    assert ours.masks.dtype == torch.bool
    assert tuple(ours.masks.shape) == (len(labels), *original_size)
    assert torch.equal(ours.labels.cpu(), labels), (ours.labels, labels)
    torch.testing.assert_close(ours.scores.double(), scores, rtol=2e-5, atol=1e-7)
    assert_masks_agree(ours.masks, probs, mask_thr)


# ---------------------------------------------------------------------------------------------
# Points NMS


def test_points_nms_hand_worked():
    heat = torch.tensor([[[0.1, 0.5, 0.2],
                          [0.4, 0.3, 0.6],
                          [0.2, 0.7, 0.1]],
                         [[0.5, 0.5, 0.0],
                          [0.5, 0.25, 0.75],
                          [0.0, 0.0, 0.75]]])[None]
    expected = torch.tensor([[[0.1, 0.5, 0.0],
                              [0.4, 0.0, 0.6],
                              [0.0, 0.7, 0.0]],
                             # equal neighbours both survive
                             [[0.5, 0.5, 0.0],
                              [0.5, 0.0, 0.75],
                              [0.0, 0.0, 0.75]]])[None]
    out = points_nms(heat)
    assert torch.equal(out, expected)
    assert torch.equal(out[0], ref_points_nms(heat[0]))


def test_points_nms_window_is_up_left():
    # A single peak suppresses its right, lower and lower-right neighbours, not the upper-left ones.
    heat = torch.full((1, 1, 4, 4), 0.2)
    heat[0, 0, 1, 1] = 0.9
    out = points_nms(heat)[0, 0]
    dropped = {(i, j) for i in range(4) for j in range(4) if out[i, j] == 0}
    assert dropped == {(1, 2), (2, 1), (2, 2)}  # equal background values keep each other


def test_points_nms_random_equals_reference():
    torch.manual_seed(0)
    heat = torch.rand(2, 3, 7, 7)
    out = points_nms(heat)
    for n in range(2):
        assert torch.equal(out[n], ref_points_nms(heat[n]))


# ---------------------------------------------------------------------------------------------
# Matrix NMS


def band_masks(spans, width=8):
    masks = torch.zeros(len(spans), 1, width, dtype=torch.bool)
    for k, (a, b) in enumerate(spans):
        masks[k, 0, a:b] = True
    return masks


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_matrix_nms_two_overlapping_masks(kernel):
    masks = band_masks([(0, 4), (2, 6)])  # intersection 2, union 6: IoU 1/3
    scores = torch.tensor([0.9, 0.8])
    out = matrix_nms(masks, torch.tensor([1, 1]), scores, kernel=kernel, sigma=2.0)
    decay = math.exp(-2.0 * (1 / 3) ** 2) if kernel == "gaussian" else 1 - 1 / 3
    torch.testing.assert_close(out, torch.tensor([0.9, 0.8 * decay]))
    # Different classes: no decay.
    out = matrix_nms(masks, torch.tensor([0, 1]), scores, kernel=kernel, sigma=2.0)
    torch.testing.assert_close(out, scores)


def test_matrix_nms_gaussian_sigma_matters():
    masks = band_masks([(0, 4), (2, 6)])
    scores = torch.tensor([0.9, 0.8])
    out = matrix_nms(masks, torch.tensor([0, 0]), scores, kernel="gaussian", sigma=0.5)
    torch.testing.assert_close(out, torch.tensor([0.9, 0.8 * math.exp(-0.5 / 9)]))


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_matrix_nms_three_masks_with_compensation(kernel):
    f = (lambda x: math.exp(-2.0 * x * x)) if kernel == "gaussian" else (lambda x: 1 - x)
    scores = torch.tensor([0.9, 0.8, 0.7])
    labels = torch.tensor([0, 0, 0])
    # A=[0,4) B=[1,5) C=[2,6): IoU(A,B)=3/5, IoU(A,C)=2/6, IoU(B,C)=3/5. B is itself heavily
    # suppressed by A, so its suppression of C is compensated: C decays by A only.
    out = matrix_nms(band_masks([(0, 4), (1, 5), (2, 6)]), labels, scores, kernel=kernel)
    expected = [0.9, 0.8 * f(0.6), 0.7 * min(f(1 / 3), f(0.6) / f(0.6))]
    torch.testing.assert_close(out, torch.tensor(expected))
    # A=[0,4) B=[2,6) C=[3,7): IoU(A,B)=1/3, IoU(A,C)=1/7, IoU(B,C)=3/5: the compensated
    # term f(3/5)/f(1/3) is the smaller one.
    out = matrix_nms(band_masks([(0, 4), (2, 6), (3, 7)]), labels, scores, kernel=kernel)
    c_decay = min(f(1 / 7), f(0.6) / f(1 / 3))
    assert c_decay == pytest.approx(f(0.6) / f(1 / 3))
    expected = [0.9, 0.8 * f(1 / 3), 0.7 * c_decay]
    torch.testing.assert_close(out, torch.tensor(expected))
    # Middle mask of another class: it neither decays nor compensates.
    out = matrix_nms(band_masks([(0, 4), (1, 5), (2, 6)]), torch.tensor([0, 1, 0]), scores, kernel=kernel)
    torch.testing.assert_close(out, torch.tensor([0.9, 0.8, 0.7 * f(1 / 3)]))


def test_matrix_nms_areas_argument_and_empty():
    masks = band_masks([(0, 4), (2, 6), (3, 7)])
    labels, scores = torch.tensor([0, 0, 0]), torch.tensor([0.9, 0.8, 0.7])
    torch.testing.assert_close(matrix_nms(masks, labels, scores),
                               matrix_nms(masks, labels, scores, mask_areas=masks.sum((1, 2)).float()))
    empty = matrix_nms(torch.zeros(0, 2, 2, dtype=torch.bool), torch.zeros(0, dtype=torch.long), torch.zeros(0))
    assert empty.shape == (0,)
    with pytest.raises(ValueError, match="kernel"):
        matrix_nms(masks, labels, scores, kernel="box")


def test_matrix_nms_random_equals_reference():
    torch.manual_seed(0)
    n = 30
    masks = torch.rand(n, 6, 7) > 0.5
    labels = torch.randint(0, 3, (n,))
    scores = torch.sort(torch.rand(n), descending=True).values
    areas = masks.sum((1, 2)).float()
    for kernel, sigma in [("gaussian", 2.0), ("gaussian", 0.7), ("linear", 2.0)]:
        ours = matrix_nms(masks, labels, scores, kernel=kernel, sigma=sigma)
        ref = ref_matrix_nms(list(masks), labels.tolist(), scores.tolist(), kernel, sigma, areas.tolist())
        torch.testing.assert_close(ours.double(), torch.tensor(ref, dtype=torch.float64), rtol=1e-5, atol=1e-7)
        assert (ours <= scores + 1e-7).all()
        assert ours[0] == scores[0]


# ---------------------------------------------------------------------------------------------
# Post-processing on crafted kernels and features.

GRIDS = [4, 3, 2, 2, 2]
S_IN = 1 / (1 + math.exp(-2.0))  # sigmoid(2): the mask probability inside a region


def crafted_case():
    """Mask features (E=4, 8x12): channel k is +1 inside column band R_k and -1 outside; a
    kernel 2*e_k selects R_k exactly with probability sigmoid(2) inside."""
    bands = [(1, 3), (4, 5), (6, 9), (7, 12)]  # areas 16, 8, 24, 40 (8 rows)
    feats = -torch.ones(1, 4, 8, 12)
    for k, (a, b) in enumerate(bands):
        feats[0, k, :, a:b] = 1.0
    num_classes = 4
    logits = [torch.full((1, num_classes, g, g), -10.0) for g in GRIDS]
    kernels = [torch.zeros(1, 4, g, g) for g in GRIDS]

    def put(level, cell, label, prob, band):
        logits[level][0, label, cell[0], cell[1]] = logit(prob)
        kernels[level][0, :, cell[0], cell[1]] = 0.0
        kernels[level][0, band, cell[0], cell[1]] = 2.0

    put(0, (1, 1), 2, 0.9, 0)  # a: stride 8, area 16 > 8: kept
    put(0, (3, 2), 1, 0.85, 1)  # b: stride 8, area 8: dropped
    put(2, (0, 1), 0, 0.95, 0)  # c: stride 16, area 16: dropped (kept at level 0 above)
    put(2, (1, 0), 0, 0.7, 2)  # d: stride 16, area 24: kept
    put(3, (1, 1), 3, 0.8, 3)  # e: stride 32, area 40: kept
    put(4, (0, 0), 3, 0.75, 2)  # f: stride 32, area 24: dropped
    put(1, (2, 2), 0, 0.6, 3)  # g0: stride 8, class 0 ...
    logits[1][0, 1, 2, 2] = logit(0.3)  # g1: ... and class 1 at the same cell
    return logits, kernels, feats, bands


def band_mask(band, height, width, factor):
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[:, band[0] * factor : band[1] * factor] = True
    return mask


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_postprocess_crafted(kernel):
    logits, kernels, feats, bands = crafted_case()
    cfg = InferenceConfig(nms_kernel=kernel)
    # Padded input 32x48 (features x4), resized image 28x44, original image 56x88.
    (det,) = postprocess(logits, kernels, feats, [(28, 44)], [(56, 88)], GRIDS, STRIDES, cfg)
    f = (lambda x: math.exp(-2.0 * x * x)) if kernel == "gaussian" else (lambda x: 1 - x)
    # d (class 0, band 2, area 24) and g0 (class 0, band 3, area 40) overlap in 2 columns:
    # IoU = 16 / (24 + 40 - 16) = 1/3, so g0 decays.
    expected = [  # label, score, band
        (2, 0.9 * S_IN, 0),
        (3, 0.8 * S_IN, 3),
        (0, 0.7 * S_IN, 2),
        (0, 0.6 * S_IN * f(1 / 3), 3),
        (1, 0.3 * S_IN, 3),
    ]
    assert det.labels.tolist() == [e[0] for e in expected]
    torch.testing.assert_close(det.scores, torch.tensor([e[1] for e in expected]), rtol=1e-5, atol=1e-6)
    assert det.masks.shape == (5, 56, 88)
    for mask, (_, _, band) in zip(det.masks, expected):
        # x4 to the padded size, crop to 28x44, x2 to 56x88: the band's columns x8, cut at 88.
        assert torch.equal(mask, band_mask(bands[band], 56, 88, 8)), band
    # The band at the right edge lies partly in the padding: it ends at the crop.
    assert det.masks[1].sum(0).nonzero().max() == 87

    # Same result as the reference implementation of the release.
    ref = ref_postprocess(logits, kernels, feats, [(28, 44)], [(56, 88)], GRIDS, STRIDES, cfg)
    assert_same(det, ref[0], (56, 88))


def test_postprocess_crafted_thresholds_and_top_k():
    logits, kernels, feats, bands = crafted_case()
    cfg = InferenceConfig(max_per_img=2)
    (det,) = postprocess(logits, kernels, feats, [(32, 48)], [(32, 48)], GRIDS, STRIDES, cfg)
    assert det.labels.tolist() == [2, 3]
    assert torch.equal(det.masks[0], band_mask(bands[0], 32, 48, 4))
    # score_thr applies to the category probability, before the mask score.
    (det,) = postprocess(logits, kernels, feats, [(32, 48)], [(32, 48)], GRIDS, STRIDES,
                         InferenceConfig(score_thr=0.65))
    assert det.labels.tolist() == [2, 3, 0]
    # update_thr applies to the final (decayed) score.
    (det,) = postprocess(logits, kernels, feats, [(32, 48)], [(32, 48)], GRIDS, STRIDES,
                         InferenceConfig(update_thr=0.7 * S_IN - 1e-4))
    assert det.labels.tolist() == [2, 3, 0]
    # A stride filter of 1 keeps every mask; the dropped candidates return.
    (det,) = postprocess(logits, kernels, feats, [(32, 48)], [(32, 48)], GRIDS, [1] * 5, InferenceConfig())
    assert sorted(det.labels.tolist()) == sorted([2, 1, 0, 0, 3, 3, 0, 1])


def test_postprocess_no_candidates_and_all_filtered():
    logits, kernels, feats, _ = crafted_case()
    cfg = InferenceConfig()
    # No category probability above score_thr.
    low = [torch.full_like(c, -10.0) for c in logits]
    (det,) = postprocess(low, kernels, feats, [(28, 44)], [(56, 88)], GRIDS, STRIDES, cfg)
    assert len(det) == 0 and det.masks.shape == (0, 56, 88) and det.masks.dtype == torch.bool
    # Candidates, but every mask is at most its level's stride.
    (det,) = postprocess(logits, kernels, feats, [(28, 44)], [(56, 88)], GRIDS, [64] * 5, cfg)
    assert len(det) == 0 and det.masks.shape == (0, 56, 88)
    # Masks all empty.
    zero = [torch.zeros_like(k) for k in kernels]  # probability 0.5 everywhere: not above mask_thr
    (det,) = postprocess(logits, zero, feats, [(28, 44)], [(56, 88)], GRIDS, STRIDES, cfg)
    assert len(det) == 0
    # Everything decays or scores below update_thr.
    (det,) = postprocess(logits, kernels, feats, [(28, 44)], [(56, 88)], GRIDS, STRIDES,
                         InferenceConfig(update_thr=0.95))
    assert len(det) == 0 and det.masks.shape == (0, 56, 88)


def test_flatten_levels_and_cell_strides_order():
    logits = [torch.randn(2, 3, g, g) for g in GRIDS]
    kernels = [torch.randn(2, 5, g, g) for g in GRIDS]
    probs, flat = flatten_levels(logits, kernels)
    total = sum(g * g for g in GRIDS)
    assert probs.shape == (2, total, 3) and flat.shape == (2, total, 5)
    # Cell 2*2+1 of level 1 (row 2, col 1 of a 3x3 grid) comes after the 16 cells of level 0.
    assert torch.equal(flat[1, 16 + 2 * 3 + 1], kernels[1][1, :, 2, 1])
    assert torch.equal(probs[0, 16 + 7], points_nms(logits[1].sigmoid())[0, :, 2, 1])
    strides = cell_strides(GRIDS, STRIDES)
    assert strides.tolist() == [8.0] * 16 + [8.0] * 9 + [16.0] * 4 + [32.0] * 4 + [32.0] * 4


# ---------------------------------------------------------------------------------------------
# Equality with the reference on random inputs.


def dyadic(x: torch.Tensor) -> torch.Tensor:
    """Round to multiples of 1/16 so the dynamic convolution is exact in float32 whatever the
    summation order (matmul here, conv2d in the release): masks can be compared bit for bit."""
    return torch.round(x * 16) / 16


def random_case(seed, n_images=1, num_classes=4, channels=8, grids=(6, 5, 4, 3, 2), feat=(16, 24),
                cate_mean=-2.0, bias_range=(-3.0, 1.5)):
    g = torch.Generator().manual_seed(seed)
    logits = [torch.randn(n_images, num_classes, s, s, generator=g) * 1.5 + cate_mean for s in grids]
    kernels = []
    for s in grids:
        k = torch.randn(n_images, channels, s, s, generator=g) * 0.3
        # channel 0 of the features is constant 1: kernel channel 0 is a per-mask bias, which
        # spreads mask areas from empty to full.
        k[:, 0] = torch.rand(n_images, s, s, generator=g) * (bias_range[1] - bias_range[0]) + bias_range[0]
        kernels.append(dyadic(k))
    low = torch.randn(n_images, channels, feat[0] // 4, feat[1] // 4, generator=g) * 2
    feats = F.interpolate(low, size=feat, mode="bilinear", align_corners=False)  # blob-shaped masks
    feats = feats + 0.3 * torch.randn(feats.shape, generator=g)
    feats[:, 0] = 1.0
    return logits, kernels, dyadic(feats)


CASES = {
    "default": (dict(), dict()),
    "linear": (dict(nms_kernel="linear"), dict()),
    "sigma_0.5": (dict(nms_sigma=0.5), dict()),
    "nms_pre_and_top_k": (dict(nms_pre=12, max_per_img=5), dict()),
    "nms_pre_linear": (dict(nms_pre=7, nms_kernel="linear"), dict(num_classes=2)),
    "many_classes": (dict(score_thr=0.2), dict(num_classes=12)),
    "high_update_thr": (dict(update_thr=0.3), dict()),
    "no_candidates": (dict(), dict(cate_mean=-12.0)),
    "all_stride_filtered": (dict(), dict(bias_range=(-40.0, -30.0))),
    "all_decayed": (dict(update_thr=0.999), dict()),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_postprocess_equals_release_reference(case, seed):
    cfg_kw, data_kw = CASES[case]
    cfg = dataclasses.replace(InferenceConfig(), **cfg_kw)
    grids = [6, 5, 4, 3, 2]
    logits, kernels, feats = random_case(seed, n_images=2, grids=grids, **data_kw)
    image_sizes = [(60, 90), (64, 80)]
    original_sizes = [(120, 170), (37, 41)]
    ours = postprocess(logits, kernels, feats, image_sizes, original_sizes, grids, STRIDES, cfg)
    ref = ref_postprocess(logits, kernels, feats, image_sizes, original_sizes, grids, STRIDES, cfg)
    assert len(ours) == 2
    for det, r, size in zip(ours, ref, original_sizes):
        assert_same(det, r, size)
    found = [len(d) for d in ours]
    if case in ("no_candidates", "all_stride_filtered", "all_decayed"):
        assert found == [0, 0]
    else:
        assert min(found) > 0


def test_random_cases_exercise_the_filters():
    """The random inputs above are not trivial: candidates exceed nms_pre, some masks fail the
    stride filter, and Matrix NMS decays some scores."""
    logits, kernels, feats = random_case(0, n_images=1)
    probs, flat = flatten_levels(logits, kernels)
    candidates = probs[0] > 0.1
    assert candidates.sum() > 12  # more than nms_pre of the nms_pre case
    cells = candidates.nonzero()[:, 0]
    masks = (flat[0][cells] @ feats[0].reshape(feats.shape[1], -1)).sigmoid() > 0.5
    areas = masks.sum(1).float()
    strides = cell_strides([6, 5, 4, 3, 2], STRIDES)[cells]
    assert (areas <= strides).any() and (areas > strides).any()
    assert len(set(probs[0].nonzero()[:, 1].tolist())) > 1  # several classes


def test_default_grids_and_many_candidates():
    """Full-size grids (40, 36, 24, 16, 12) with more candidates than nms_pre."""
    grids = [40, 36, 24, 16, 12]
    logits, kernels, feats = random_case(5, n_images=1, num_classes=2, grids=grids, feat=(24, 32),
                                         cate_mean=-2.5)
    cfg = InferenceConfig(nms_pre=100)
    probs, _ = flatten_levels(logits, kernels)
    assert (probs > cfg.score_thr).sum() > cfg.nms_pre
    (ours,) = postprocess(logits, kernels, feats, [(90, 128)], [(180, 250)], grids, STRIDES, cfg)
    (ref,) = ref_postprocess(logits, kernels, feats, [(90, 128)], [(180, 250)], grids, STRIDES, cfg)
    assert_same(ours, ref, (180, 250))
    assert len(ours) > 10


def test_postprocess_image_direct_call_matches_batch():
    logits, kernels, feats = random_case(3, n_images=2)
    grids = [6, 5, 4, 3, 2]
    cfg = InferenceConfig()
    batch = postprocess(logits, kernels, feats, [(60, 90), (50, 70)], [(60, 90), (100, 140)], grids, STRIDES, cfg)
    probs, flat = flatten_levels(logits, kernels)
    strides = cell_strides(grids, STRIDES)
    single = postprocess_image(probs[1], flat[1], feats[1], strides, (50, 70), (100, 140), cfg)
    assert torch.equal(single.masks, batch[1].masks)
    assert torch.equal(single.labels, batch[1].labels)
    assert torch.equal(single.scores, batch[1].scores)
    # Scores come sorted, at most max_per_img.
    assert torch.all(single.scores[:-1] >= single.scores[1:])


def test_postprocess_on_model_outputs(random_model):
    """Outputs of a (randomly filled) network through both implementations."""
    model = random_model("light_448_r18", seed=7, overrides=("model.num_classes=3", "model.grids=[20, 16, 12, 8, 6]"))
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    # Random weights give no confident categories: shift the logits to get candidates, and
    # round the kernels and features as in the random cases so masks compare bit for bit.
    logits = [c - c.mean() + (-1.5) for c in out.category_logits]
    kernels = [dyadic(k / k.std()) for k in out.kernels]
    feats = dyadic((out.mask_features - out.mask_features.mean()) / out.mask_features.std())
    cfg = InferenceConfig(nms_pre=200)
    grids, strides = model.cfg.grids, model.cfg.strides
    (ours,) = postprocess(logits, kernels, feats, [(60, 90)], [(120, 180)], grids, strides, cfg)
    (ref,) = ref_postprocess(logits, kernels, feats, [(60, 90)], [(120, 180)], grids, strides, cfg)
    assert_same(ours, ref, (120, 180))
    assert len(ours) > 0


# ---------------------------------------------------------------------------------------------
# The faster pieces against their straightforward forms.


def test_points_nms_equals_max_pool_form():
    """Shifted maxima give exactly max_pool2d(kernel 2, stride 1, padding 1) cropped, ties included."""
    g = torch.Generator().manual_seed(0)
    for shape in [(1, 80, 40, 40), (2, 3, 5, 7), (1, 2, 1, 1), (1, 1, 1, 6), (3, 4, 12, 12)]:
        for heat in (torch.rand(shape, generator=g), torch.randint(0, 3, shape, generator=g).float() / 2):
            pooled = F.max_pool2d(heat, kernel_size=2, stride=1, padding=1)[..., :-1, :-1]
            assert torch.equal(points_nms(heat), heat * (pooled == heat))


def test_points_nms_shapes_and_ties_equal_reference():
    """Non-square, single-cell, single-row and 80-class maps, with many ties, against the loop."""
    g = torch.Generator().manual_seed(0)
    for shape in [(1, 80, 12, 12), (2, 3, 5, 7), (1, 2, 1, 1), (1, 1, 1, 6), (3, 4, 12, 12)]:
        for heat in (torch.rand(shape, generator=g), torch.randint(0, 3, shape, generator=g).float() / 2):
            out = points_nms(heat)
            for n in range(shape[0]):
                assert torch.equal(out[n], ref_points_nms(heat[n]))


def scoring_case(g: torch.Generator, n: int, pixels: int, channels: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, channels) kernels and (channels, pixels) features with exact (dyadic) products whose
    logits span -8..8 over the rows; row 0 gives an empty mask and row 1 a full one."""
    features = dyadic(torch.randn(channels, pixels, generator=g))
    features[0] = 1.0  # kernel channel 0 is a per-row bias
    kernels = dyadic(torch.randn(n, channels, generator=g) * 0.5)
    kernels[:, 0] = dyadic(torch.linspace(-8, 8, n))
    kernels[0], kernels[1] = 0.0, 0.0
    kernels[0, 0], kernels[1, 0] = -30.0, 30.0
    return kernels, features


def straightforward_scores(kernels, features, mask_thr):
    probs = (kernels @ features).sigmoid()
    masks = probs > mask_thr
    return probs, masks, masks.sum(1, dtype=torch.float32), (probs * masks.float()).sum(1)


@pytest.mark.parametrize("mask_thr", [0.5, 0.0, -0.1, 0.97])
@pytest.mark.parametrize("block_rows,pass_rows", [(1, 1), (5, 5), (16, 5), (64, 16), (1000, 16), (7, 64)])
@pytest.mark.parametrize("tied_priority", [False, True])
def test_score_masks_equals_straightforward_form(mask_thr, block_rows, pass_rows, tied_priority):
    """Bit-identical to one product, sigmoid, threshold, areas and (probs * masks.float()).sum,
    whatever the block sizes and the candidates whose probabilities are kept, with empty and
    full masks among the rows (pixels a multiple of 64, as the network's outputs always are)."""
    g = torch.Generator().manual_seed(1)
    kernels, features = scoring_case(g, 37, 11 * 64)
    probs, masks, areas, sums = straightforward_scores(kernels, features, mask_thr)
    priority = torch.ones(37) if tied_priority else torch.rand(37, generator=g)
    scored = score_masks(kernels, features, mask_thr, priority, block_rows, pass_rows)
    assert sorted(scored.row_of.tolist()) == list(range(37))
    assert torch.equal(scored.masks[scored.row_of], masks)
    assert torch.equal(scored.areas, areas)
    assert torch.equal(scored.sums, sums)
    kept = min(block_rows, 37)
    assert scored.kept_probs.shape == (kept, 11 * 64) and scored.first_kept_row == 37 - kept
    top = set(priority.topk(kept).indices.tolist())  # the kept rows are the candidates of highest priority
    assert {int(i) for i in scored.row_of.argsort()[37 - kept :]} == top
    rows = torch.tensor([36, 0, 20, 35, 3, 36])  # needed later for the final resize
    got = scored.probabilities(rows, kernels, features)
    assert torch.equal(torch.stack(got), probs[rows])
    kept_rows = (scored.row_of[rows] >= 37 - kept).tolist()
    for p, is_kept in zip(got, kept_rows):  # kept: views of kept_probs, nothing copied
        assert (p.untyped_storage().data_ptr() == scored.kept_probs.untyped_storage().data_ptr()) == is_kept
    assert torch.equal(mask_probabilities(kernels[rows], features), probs[rows])
    assert bool(masks[1].all()) and bool(masks[0].any()) == (mask_thr <= 0)  # sigmoid(-30) is tiny but above 0
    assert mask_thr <= 0 or 0 < int(masks.sum()) < masks.numel()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows", [[7], [7, 2], [0, 5, 9], [3, 1, 4, 1, 5], list(range(3, 10))])
def test_probabilities_do_not_depend_on_how_many_rows_are_computed(rows, threads):
    """Real-valued (not dyadic) kernels and features of the network's sizes: the probabilities of
    a few rows, recomputed for the final resize, equal bit for bit those of the scoring pass and
    of one large product (MKL rounds some rows of small products differently; _product computes
    at least MIN_PRODUCT_ROWS rows)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(5)
        kernels, features = torch.randn(40, 128, generator=g) * 0.1, torch.randn(128, 56 * 84, generator=g)
        index = torch.tensor(rows)
        scored = score_masks(kernels, features, 0.5, torch.rand(40, generator=g), 16, 16)
        everything = torch.mm(kernels, features).sigmoid()
        assert torch.equal(mask_probabilities(kernels[index], features), everything[index])
        assert torch.equal(torch.stack(scored.probabilities(index, kernels, features)), everything[index])
        assert torch.equal(scored.masks[scored.row_of], everything > 0.5)
    finally:
        torch.set_num_threads(previous)


def test_score_masks_any_pixel_count_agrees_closely():
    """With a pixel count that is not a multiple of 32, PyTorch's sigmoid can round the last
    elements of a call differently: sums agree to float rounding, and a mask pixel can differ
    only where its probability is within float rounding of mask_thr."""
    g = torch.Generator().manual_seed(4)
    kernels, features = scoring_case(g, 37, 143)
    probs, masks, areas, sums = straightforward_scores(kernels, features, 0.5)
    scored = score_masks(kernels, features, 0.5, torch.rand(37, generator=g), 5, 3)
    got_masks, got_areas, got_sums = scored.masks[scored.row_of], scored.areas, scored.sums
    differ = got_masks != masks
    assert torch.all((probs[differ] - 0.5).abs() < 1e-6)
    assert torch.all((got_areas - areas).abs() <= differ.sum(1))
    torch.testing.assert_close(got_sums, sums, rtol=1e-6, atol=1e-6)


def test_mask_intersections_same_class_and_rows():
    g = torch.Generator().manual_seed(2)
    masks = torch.rand(40, 9, 10, generator=g) > 0.6
    rows = torch.randperm(40, generator=g)[:25]
    labels = torch.randint(0, 4, (25,), generator=g)
    full = mask_intersections(masks[rows])
    assert torch.equal(full, (masks[rows].flatten(1).double() @ masks[rows].flatten(1).double().t()).float())
    same = labels[:, None] == labels[None, :]
    assert torch.equal(mask_intersections(masks, labels, rows), torch.where(same, full, 0.0))
    assert torch.equal(mask_intersections(masks, labels[:1] * 0 + labels[0], rows[:1]), full[:1, :1])
    one_class = torch.zeros(25, dtype=torch.long)
    assert torch.equal(mask_intersections(masks, one_class, rows), full)


def blob_probs(g, k, h, w):
    """(k, h, w) probabilities: smooth random blobs, with sharpness varying per mask."""
    low = torch.randn(k, 1, max(h // 4, 1), max(w // 4, 1), generator=g)
    smooth = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False).squeeze(1)
    sharpness = torch.rand(k, 1, 1, generator=g) * 20 + 1
    return (smooth * sharpness - 1.5).sigmoid()


def edge_cases(g, h, w):
    """Masks that probe the windows: one pixel (corners, edges, centre), a single row or column,
    empty, full, a blob inside the padding (cropped away when the image is smaller), and noise."""
    probs = torch.rand(12, h, w, generator=g) * 0.45  # below 0.5 everywhere
    for k, (y, x) in enumerate([(0, 0), (h - 1, w - 1), (0, w - 1), (h - 1, 0), (h // 2, w // 2)]):
        probs[k, y, x] = 0.9
    probs[5, h // 3, :] = 0.8
    probs[6, :, w // 3] = 0.51
    # 7: empty
    probs[8] = 0.7 + 0.2 * torch.rand(h, w, generator=g)  # full
    probs[9, h - 2 :, w - 3 :] = 0.95  # bottom-right corner: in the padding when the image is cropped
    probs[10] = torch.rand(h, w, generator=g)  # noise
    probs[11, 1:3, 2:4] = torch.tensor([[0.5, 0.5 + 1e-7], [0.52, 0.5 - 1e-7]])  # at the threshold
    return probs


RESIZE_CASES = [  # feature (h, w), resized image (h, w) <= 4 x feature, original (h, w)
    ((16, 24), (64, 96), (128, 192)),  # x2 up, no crop
    ((16, 24), (60, 90), (120, 170)),  # crop, then up
    ((16, 24), (64, 80), (37, 41)),  # crop, then down, odd sizes
    ((16, 24), (56, 96), (56, 96)),  # crop only
    ((15, 13), (57, 49), (101, 31)),  # odd everything: up in y, down in x
    ((8, 12), (29, 45), (300, 13)),  # strong up in y, strong down in x
    ((112, 168), (448, 672), (480, 720)),  # the benchmark's sizes
    ((112, 168), (448, 597), (480, 640)),  # a COCO 480x640 photo at the light presets
]


@pytest.mark.parametrize("feature,image,original", RESIZE_CASES)
@pytest.mark.parametrize("band", [1, 7, 96, 10_000])
def test_resize_masks_agrees_with_interpolate(feature, image, original, band):
    """resize_masks against F.interpolate x4, crop, F.interpolate, threshold, on blobs and edge
    cases, for a shuffled subset of the rows: the only differing pixels are those whose
    F.interpolate probability lies within MASK_TOLERANCE of mask_thr."""
    g = torch.Generator().manual_seed(sum(feature) + sum(original) + band)
    h, w = feature
    probs = torch.cat([blob_probs(g, 20, h, w), edge_cases(g, h, w)])
    for mask_thr in (0.5, 0.3):
        masks = probs > mask_thr
        index = torch.randperm(len(probs), generator=g)[:25]
        if mask_thr == 0.5:
            index = torch.cat([index, torch.arange(20, len(probs))]).unique(sorted=False)  # all edge cases
        ours = resize_masks(probs[index], masks[index], image, original, mask_thr, band)
        as_views = [probs[i].flatten() for i in index.tolist()]
        assert torch.equal(resize_masks(as_views, masks[index], image, original, mask_thr, band), ours)
        ref = ref_resize(probs[index], image, original)
        assert ours.shape == (len(index), *original)
        differing = assert_masks_agree(ours, ref, mask_thr)
        assert differing <= 1e-4 * ref.numel()
        # The masks are neither trivial nor all alike: some pixels on, some off, per shape.
        assert 0 < int(ours.sum()) < ours.numel()


def test_resize_masks_windows_cover_what_interpolate_turns_on():
    """A mask whose window is computed too small loses pixels: check the pixels just outside each
    mask's above-threshold bounding box (after resizing) for single-pixel masks everywhere."""
    h, w, image, original = 6, 5, (22, 17), (31, 9)
    probs = torch.full((h * w, h, w), 0.2)
    for k in range(h * w):
        probs[k, k // w, k % w] = 1.0
    ours = resize_masks(probs, probs > 0.5, image, original, 0.5, band=2)
    ref = ref_resize(probs, image, original)
    assert torch.equal(ours, ref > 0.5)  # no pixel near 0.5 here: exactly equal
    assert int((ref > 0.5).flatten(1).any(1).sum()) > h * w // 2  # most single pixels survive the crop


def test_resize_masks_empty_index():
    probs = torch.rand(3, 4, 5)
    out = resize_masks(probs[:0], probs[:0] > 0.5, (16, 20), (7, 9), 0.5)
    assert out.shape == (0, 7, 9) and out.dtype == torch.bool


def test_score_masks_long_rows_two_threads():
    """Rows longer than PyTorch's grain size with two threads, and a row count one more than a
    multiple of the block: still identical to the unblocked computation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(3)
        kernels, features = scoring_case(g, 33, 40_192)  # 628 x 64
        _, masks, areas, sums = straightforward_scores(kernels, features, 0.5)
        priority = torch.rand(33, generator=g)
        scored = score_masks(kernels, features, 0.5, priority, block_rows=16, pass_rows=16)
        got_masks, got_areas, got_sums = scored.masks[scored.row_of], scored.areas, scored.sums
        assert torch.equal(got_masks, masks)
        assert torch.equal(got_areas, areas) and torch.equal(got_sums, sums)
    finally:
        torch.set_num_threads(threads)


def test_large_outputs_are_zeroed_memory_that_outlives_its_maker():
    """resize_masks' large outputs are anonymous memory maps (_zeros_bool): all False, writable,
    private to the process, usable after collection, and saved / copied like any tensor."""
    shape = (3, 700, 600)
    assert math.prod(shape) >= MAPPED_ZEROS_BYTES
    out = _zeros_bool(shape, torch.device("cpu"), written=16)
    assert not out.untyped_storage().resizable()  # the map (torch.zeros' storage is resizable)
    assert out.dtype == torch.bool and out.shape == shape and not bool(out.any())
    out[1, 5:9, 7:11] = True
    gc.collect()
    assert int(out.sum()) == 16 and bool(out[1, 8, 10]) and not bool(out[2].any())
    # Private: a forked process (e.g. a DataLoader worker) writing to it does not change ours.
    child = os.fork()
    if child == 0:
        out[2, 0, 0] = True
        os._exit(0 if bool(out[2, 0, 0]) else 1)
    assert os.waitpid(child, 0)[1] == 0
    assert not bool(out[2].any())
    buffer = io.BytesIO()
    torch.save(out, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer), out)
    assert torch.equal(out.clone(), out)
    cpu = torch.device("cpu")
    for plain in (_zeros_bool((2, 3), cpu, 0), _zeros_bool(shape, cpu, math.prod(shape) // 2 + 1)):  # small; mostly written
        assert plain.untyped_storage().resizable() and not bool(plain.any()) and plain.dtype == torch.bool
