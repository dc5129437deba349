"""The runtime's NumPy post-processing equals solov2's PyTorch one: labels and their order
equal, scores within 1e-5, masks identical except pixels whose probability (the
straightforward F.interpolate pipeline's) is within 1e-5 of mask_thr.

The crafted outputs make every mask logit a multiple of 1/32 computed exactly in float32
(kernels in quarters, features in eighths), so both BLAS libraries give the same logits and
the comparison tests the algorithm rather than the rounding of two matrix products."""

from __future__ import annotations

import importlib

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from solov2.config import TestConfig as Thresholds
from solov2_runtime import postprocess as rt
from solov2_runtime.resize import Axis, bilinear_matrix

reference = importlib.import_module("solov2.model.postprocess")  # the module, not the function

GRIDS, STRIDES = [40, 36, 24, 16, 12], [8, 8, 16, 32, 32]
TOLERANCE = 1e-5


def crafted_outputs(seed: int, batch: int, classes: int, channels: int, feature_size: tuple[int, int],
                    candidates: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat (N, C, cells) logits with about ``candidates`` above a 0.1 score threshold before
    points NMS, (N, E, cells) kernels in quarters, (N, E, h, w) smooth features in eighths."""
    rng = np.random.default_rng(seed)
    cells = sum(g * g for g in GRIDS)
    logits = np.full((batch, classes, cells), -8.0, np.float32)
    for b in range(batch):
        chosen = rng.choice(classes * cells, candidates, replace=False)
        logits[b].reshape(-1)[chosen] = rng.uniform(-2.1, 3.0, candidates)
    kernels = (rng.integers(-4, 5, (batch, channels, cells)) / 4).astype(np.float32)
    kernels[:, 0] = rng.integers(-12, 5, (batch, cells)) / 4  # the constant channel: a bias
    h, w = feature_size
    features = np.empty((batch, channels, h, w), np.float32)
    for b in range(batch):
        for c in range(channels):
            low = rng.uniform(-1, 1, (max(h // 6, 2), max(w // 6, 2))).astype(np.float32)
            features[b, c] = np.round(cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC) * 8) / 8
    features[:, 0] = 1.0
    return logits, kernels, np.clip(features, -1, 1)


def torch_levels(flat: np.ndarray) -> list[torch.Tensor]:
    chunks = np.split(flat, np.cumsum([g * g for g in GRIDS])[:-1], axis=2)
    return [torch.from_numpy(np.ascontiguousarray(c)).reshape(c.shape[0], c.shape[1], g, g)
            for c, g in zip(chunks, GRIDS)]


def interpolated_probabilities(kernel: np.ndarray, features: np.ndarray, image_size, original_size) -> np.ndarray:
    """(H, W) probability of one candidate through the straightforward release pipeline."""
    e, h, w = features.shape
    probs = torch.from_numpy(kernel @ features.reshape(e, -1)).sigmoid().view(1, 1, h, w)
    up = F.interpolate(probs, size=(4 * h, 4 * w), mode="bilinear", align_corners=False)
    up = up[..., : image_size[0], : image_size[1]]
    return F.interpolate(up, size=tuple(original_size), mode="bilinear", align_corners=False)[0, 0].numpy()


def assert_same_instances(expected, got, logits, kernels, features, image_size, original_size, cfg) -> int:
    """Labels and order equal, scores within 1e-5, masks equal except pixels whose probability
    is within 1e-5 of mask_thr (checked on the candidate that produced the mask). Returns the
    number of differing pixels."""
    exp_labels, exp_scores, exp_masks = (np.asarray(t) for t in (expected.labels, expected.scores, expected.masks))
    assert np.array_equal(exp_labels, got.labels)
    np.testing.assert_allclose(got.scores, exp_scores, rtol=0, atol=TOLERANCE)
    assert got.masks.shape == exp_masks.shape and got.masks.dtype == bool
    differing = 0
    for i in np.nonzero((got.masks != exp_masks).any(axis=(1, 2)))[0]:
        # The candidate of this instance: among those of its label, the one whose
        # straightforward mask is closest to the expected mask.
        probs = rt.category_probabilities(logits, GRIDS)
        cells = np.nonzero(probs[:, exp_labels[i]] > cfg.score_thr)[0]
        maps = [interpolated_probabilities(kernels[:, c], features, image_size, original_size) for c in cells]
        best = min(maps, key=lambda m: int(((m > cfg.mask_thr) != exp_masks[i]).sum()))
        wrong = got.masks[i] != exp_masks[i]
        assert np.abs(best[wrong] - cfg.mask_thr).max() < TOLERANCE, f"instance {i}"
        differing += int(wrong.sum())
    return differing


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
@pytest.mark.parametrize("original_size", [(317, 475), (190, 285), (95, 143)])
def test_numpy_postprocess_equals_pytorch_on_hundreds_of_candidates(kernel, original_size):
    cfg = Thresholds(nms_kernel=kernel, max_per_img=60)
    logits, kernels, features = crafted_outputs(seed=len(kernel) + original_size[0], batch=2, classes=6,
                                                channels=16, feature_size=(48, 72), candidates=700)
    image_sizes = [(190, 285), (176, 288)]
    originals = [original_size, (original_size[1], original_size[0])]
    expected = reference.postprocess(torch_levels(logits), torch_levels(kernels), torch.from_numpy(features),
                                     image_sizes, originals, GRIDS, STRIDES, cfg)
    got = rt.postprocess(logits, kernels, features, image_sizes, originals, GRIDS, STRIDES, cfg)
    passing = int((rt.category_probabilities(logits[0], GRIDS) > cfg.score_thr).sum())
    assert passing >= 300, passing  # hundreds of candidates after points NMS
    for b in range(2):
        assert len(expected[b]) == cfg.max_per_img  # enough survive for top-k to matter
        assert_same_instances(expected[b], got[b], logits[b], kernels[b], features[b], image_sizes[b],
                              originals[b], cfg)


def test_small_masks_are_filtered_and_nms_pre_applies():
    cfg = Thresholds(nms_pre=50, max_per_img=100, update_thr=0.0)
    logits, kernels, features = crafted_outputs(3, 1, 4, 16, (32, 40), 400)
    kernels[0, 0, ::2] = -10  # half the cells: empty or tiny masks
    args = ([(128, 160)], [(128, 160)], GRIDS, STRIDES, cfg)
    expected = reference.postprocess(torch_levels(logits), torch_levels(kernels), torch.from_numpy(features), *args)[0]
    got = rt.postprocess(logits, kernels, features, *args)[0]
    assert len(got) == 50
    assert_same_instances(expected, got, logits[0], kernels[0], features[0], (128, 160), (128, 160), cfg)


@pytest.mark.parametrize("case", ["no_candidates", "all_masks_small", "all_decayed"])
def test_empty_results_have_the_original_size(case):
    cfg = Thresholds(update_thr=2.0 if case == "all_decayed" else 0.05)
    logits, kernels, features = crafted_outputs(1, 1, 3, 8, (16, 24), 50)
    if case == "no_candidates":
        logits[:] = -8
    if case == "all_masks_small":
        kernels[:, 0] = -40
    got = rt.postprocess(logits, kernels, features, [(64, 96)], [(70, 101)], GRIDS, STRIDES, cfg)[0]
    assert got.masks.shape == (0, 70, 101) and got.masks.dtype == bool
    assert got.labels.shape == got.scores.shape == (0,)


def test_points_nms_equals_max_pool():
    probs = np.random.default_rng(0).random((3, 2, 9, 9)).astype(np.float32)
    probs[0, 0, 2:4, 2:4] = 0.7  # ties: every equal maximum is kept
    t = torch.from_numpy(probs)
    pooled = F.max_pool2d(t, 2, stride=1, padding=1)[..., :-1, :-1]
    np.testing.assert_array_equal(rt.points_nms(probs), (t * (pooled == t)).numpy())


@pytest.mark.parametrize("sizes", [(28, 112, 112), (28, 100, 150), (28, 111, 480), (14, 56, 31), (1, 4, 3)])
def test_resize_matrix_equals_interpolating_the_identity(sizes):
    feature, image, original = sizes
    eye = torch.eye(feature).view(1, feature, feature, 1)
    up = F.interpolate(eye, size=(4 * feature, 1), mode="bilinear", align_corners=False)[:, :, :image]
    expected = F.interpolate(up, size=(original, 1), mode="bilinear", align_corners=False)[0, :, :, 0].t()
    axis = Axis.build(feature, image, original)
    np.testing.assert_allclose(axis.matrix, expected.numpy(), rtol=0, atol=1e-6)
    assert np.all(np.diff(axis.first) >= 0) and np.all(np.diff(axis.last) >= 0)
    np.testing.assert_allclose(bilinear_matrix(feature, original).sum(1), 1, atol=1e-6)


def test_matrix_nms_equals_pytorch():
    rng = np.random.default_rng(5)
    masks = rng.random((40, 300)) < rng.random((40, 1))
    masks[:, 0] = True  # no empty mask
    labels = rng.integers(0, 3, 40)
    scores = np.sort(rng.random(40).astype(np.float32))[::-1].copy()
    areas = masks.sum(1).astype(np.float32)
    for kernel in ("gaussian", "linear"):
        expected = reference.matrix_nms(torch.from_numpy(masks), torch.from_numpy(labels), torch.from_numpy(scores),
                                        kernel, 2.0, torch.from_numpy(areas))
        got = rt.matrix_nms(masks, labels, scores, areas, kernel, 2.0)
        np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-6)
