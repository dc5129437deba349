"""Focal and dice losses against hand computations; the full SOLOv2 loss against a naive loop."""

from __future__ import annotations

import math

import pytest
import torch

from solov2.config import TrainConfig
from solov2.model.losses import dice_loss, sigmoid_focal_loss, solov2_loss
from solov2.model.solov2 import SOLOv2Outputs
from solov2.model.targets import SOLOv2Targets, build_targets


def test_focal_loss_hand_values():
    # x = 0.5, target 1: -alpha (1 - p)^2 log p;  x = -1.2, target 0: -(1 - alpha) p^2 log(1 - p)
    p1 = 1 / (1 + math.exp(-0.5))
    p2 = 1 / (1 + math.exp(1.2))
    expected = [-0.25 * (1 - p1) ** 2 * math.log(p1), -0.75 * p2**2 * math.log(1 - p2)]
    got = sigmoid_focal_loss(torch.tensor([0.5, -1.2], dtype=torch.float64), torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert got.tolist() == pytest.approx(expected, rel=1e-12)
    # gamma 0, alpha 0.5 is half the binary cross-entropy
    x = torch.tensor([2.0, -3.0, 0.1], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x, t, reduction="none")
    assert torch.allclose(sigmoid_focal_loss(x, t, gamma=0.0, alpha=0.5), 0.5 * bce)


def test_dice_loss_hand_values():
    probs = torch.tensor([[0.5, 0.5, 0.0, 1.0], [0.2, 0.0, 0.0, 0.0]], dtype=torch.float64)
    target = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0]], dtype=torch.uint8)
    # mask 1: 2 * 1.5 / ((0.25 + 0.25 + 1 + 0.001) + (2 + 0.001)) ; mask 2: 0 / (0.04 + 0.002)
    expected = [1 - 3.0 / (1.501 + 2.001), 1.0]
    assert dice_loss(probs, target).tolist() == pytest.approx(expected, rel=1e-12)
    assert dice_loss(probs, target.double()).tolist() == pytest.approx(expected, rel=1e-12)
    assert dice_loss(target.double(), target).tolist()[0] == pytest.approx(1 - 4 / 4.002, rel=1e-12)


def make_case(seed: int = 0, num_images: int = 2, num_classes: int = 4):
    """Random network outputs and targets built from random square instances."""
    g = torch.Generator().manual_seed(seed)
    grids = [8, 6, 4]
    ranges = [[1, 20], [10, 40], [20, 200]]
    e, h, w = 6, 16, 20  # mask features 16 x 20 -> input 64 x 80
    boxes, labels, masks = [], [], []
    for _ in range(num_images):
        n = 5
        m = torch.zeros((n, 64, 80), dtype=torch.uint8)
        b = torch.zeros((n, 4))
        for k in range(n):
            s = int(torch.randint(4, 40, (1,), generator=g))
            y = int(torch.randint(0, 64 - min(s, 63), (1,), generator=g))
            x = int(torch.randint(0, 80 - s, (1,), generator=g))
            m[k, y : y + s, x : x + s] = 1
            b[k] = torch.tensor([x, y, x + s, y + s])
        boxes.append(b)
        labels.append(torch.randint(0, num_classes, (n,), generator=g))
        masks.append(m)
    targets = build_targets(boxes, labels, masks, (h, w), grids, ranges, 0.2, num_classes)
    outputs = SOLOv2Outputs(
        [torch.randn(num_images, num_classes, s, s, generator=g, dtype=torch.float64, requires_grad=True) for s in grids],
        [torch.randn(num_images, e, s, s, generator=g, dtype=torch.float64, requires_grad=True) for s in grids],
        torch.randn(num_images, e, h, w, generator=g, dtype=torch.float64, requires_grad=True),
    )
    return outputs, targets


def naive_loss(outputs: SOLOv2Outputs, targets: SOLOv2Targets, cfg: TrainConfig) -> torch.Tensor:
    """Element by element: focal over every (image, level, cell, class); dice per pair."""
    focal = 0.0
    num_pos = 0
    for level, logits in enumerate(outputs.category_logits):
        n, c, s, _ = logits.shape
        for i in range(n):
            for r in range(s):
                for col in range(s):
                    label = int(targets.categories[level][i, r, col])
                    num_pos += label < c
                    for k in range(c):
                        x = logits[i, k, r, col]
                        p = torch.sigmoid(x)
                        if k == label:
                            focal = focal - cfg.focal_alpha * (1 - p) ** 2 * torch.log(p)
                        else:
                            focal = focal - (1 - cfg.focal_alpha) * p**2 * torch.log(1 - p)
    dice_terms = []
    for level, image, cell, inst in zip(targets.pair_level.tolist(), targets.pair_image.tolist(),
                                        targets.pair_cell.tolist(), targets.pair_instance.tolist()):
        kernels = outputs.kernels[level][image]  # (E, S, S)
        s = kernels.shape[-1]
        kernel = kernels[:, cell // s, cell % s]
        mask = torch.sigmoid((kernel[:, None, None] * outputs.mask_features[image]).sum(0))
        t = targets.instance_masks[inst].double()
        a = (mask * t).sum()
        dice_terms.append(1 - 2 * a / ((mask * mask).sum() + 0.001 + (t * t).sum() + 0.001))
    dice = torch.stack(dice_terms).mean()
    return cfg.focal_weight * focal / (num_pos + 1) + cfg.dice_weight * dice


def test_solov2_loss_matches_naive_loop():
    cfg = TrainConfig()
    outputs, targets = make_case(0)
    assert targets.num_pairs > 10
    losses = solov2_loss(outputs, targets, cfg)
    expected = naive_loss(outputs, targets, cfg)
    # solov2_loss works in float32, the naive loop in float64
    assert losses.total.item() == pytest.approx(expected.item(), rel=1e-5)
    grads = torch.autograd.grad(losses.total, [outputs.mask_features, *outputs.kernels])
    expected_grads = torch.autograd.grad(expected, [outputs.mask_features, *outputs.kernels])
    for a, b in zip(grads, expected_grads):
        assert torch.allclose(a.double(), b, rtol=1e-4, atol=1e-7)


def test_split_batch_with_global_normalizers_equals_whole_batch():
    """What distributed training relies on: halves normalised by the whole batch's counts,
    averaged, give the whole batch's loss."""
    cfg = TrainConfig()
    outputs, targets = make_case(3, num_images=2)
    whole = solov2_loss(outputs, targets, cfg).total
    halves = []
    for i in range(2):
        part_out = SOLOv2Outputs([c[i : i + 1] for c in outputs.category_logits],
                                 [k[i : i + 1] for k in outputs.kernels], outputs.mask_features[i : i + 1])
        sel = targets.pair_image == i
        part_tgt = SOLOv2Targets(
            [c[i : i + 1] for c in targets.categories],
            sum((c[i] < targets.num_classes).sum() for c in targets.categories),
            targets.pair_level[sel], torch.zeros_like(targets.pair_image[sel]), targets.pair_cell[sel],
            targets.pair_instance[sel], targets.instance_masks, targets.num_classes,
        )
        halves.append(solov2_loss(part_out, part_tgt, cfg,
                                  category_normalizer=(targets.num_positive_cells.float() + 1) / 2,
                                  mask_normalizer=targets.num_pairs / 2).total)
    assert (sum(halves) / 2).item() == pytest.approx(whole.item(), rel=1e-6)


def test_no_positives_gives_zero_dice_but_reaches_all_outputs():
    cfg = TrainConfig()
    outputs, targets = make_case(1)
    empty = SOLOv2Targets(
        [torch.full_like(c, targets.num_classes) for c in targets.categories], torch.tensor(0),
        *(torch.zeros(0, dtype=torch.long) for _ in range(4)), targets.instance_masks, targets.num_classes,
    )
    losses = solov2_loss(outputs, empty, cfg)
    assert losses.mask.item() == 0.0
    focal = sum(sigmoid_focal_loss(c.float(), torch.zeros_like(c.float())).sum() for c in outputs.category_logits)
    assert losses.category.item() == pytest.approx(focal.item(), rel=1e-6)  # normalised by 0 + 1
    losses.total.backward()
    assert outputs.mask_features.grad is not None and all(k.grad is not None for k in outputs.kernels)


def test_loss_under_bfloat16_autocast_is_float32():
    cfg = TrainConfig()
    outputs, targets = make_case(2)
    outputs = SOLOv2Outputs([c.detach().bfloat16() for c in outputs.category_logits],
                            [k.detach().bfloat16() for k in outputs.kernels], outputs.mask_features.detach().bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = solov2_loss(outputs, targets, cfg)
    assert losses.total.dtype == torch.float32 and math.isfinite(losses.total.item())


def test_dice_normalizer_positive_cells_divides_by_the_positive_cells():
    """mmdetection 3.x: dice sum / positive cells; the release (default): / (cell, instance) pairs."""
    outputs, targets = make_case(1)
    cells, pairs = int(targets.num_positive_cells), targets.num_pairs
    assert pairs > cells > 0  # some cells belong to two instances: the normalisers differ
    by_pairs = solov2_loss(outputs, targets, TrainConfig())
    by_cells = solov2_loss(outputs, targets, TrainConfig(dice_normalizer="positive_cells"))
    assert by_cells.mask.item() == pytest.approx(by_pairs.mask.item() * pairs / cells, rel=1e-6)
    assert by_cells.category.item() == pytest.approx(by_pairs.category.item(), rel=1e-6)
    # The trainer's batch-wide normalisers (one process): the same value.
    given = solov2_loss(outputs, targets, TrainConfig(dice_normalizer="positive_cells"),
                        category_normalizer=torch.tensor(cells + 1.0), mask_normalizer=torch.tensor(float(pairs)))
    assert given.mask.item() == pytest.approx(by_cells.mask.item(), rel=1e-6)
    with pytest.raises(ValueError, match="train.dice_normalizer"):
        solov2_loss(outputs, targets, TrainConfig(dice_normalizer="cells"))
