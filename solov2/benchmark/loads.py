"""Synthetic work for the benchmark: images, crafted head outputs with a known number of
post-processing candidates, and training images with instances at every FPN level's scale."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import Config
from ..data.transforms import rescale_size
from ..model import points_nms

POSTPROCESS_LOADS = ("blobs", "noise")
BLOB_BASIS = 5  # mask-feature channels 0-4: 1, u, v, u^2, v^2 (u, v: pixel coordinates / long side)


def original_size_for(cfg: Config, height: int, width: int) -> tuple[int, int]:
    """An original image size that the test-time resize maps to exactly (height, width):
    15/14 larger (COCO's 480x640 photos become 448x597 with the light presets), else as is.
    ``run_benchmark`` sets ``input.test_scale`` to (long, short) of the benchmark size.
    Raises ValueError when neither size resizes to (height, width)."""
    for factor in (15 / 14, 1.0):
        size = (round(height * factor), round(width * factor))
        if rescale_size(*size, cfg.input.test_scale) == (height, width):
            return size
    raise ValueError(f"input.test_scale {cfg.input.test_scale} does not resize to {height}x{width}")


def random_images(count: int, size: tuple[int, int], rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` (H, W, 3) uint8 images of uniform noise."""
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]


def crafted_outputs(
    cfg: Config, batch: int, height: int, width: int, candidates: int, generator: torch.Generator,
    load: str = "blobs",
) -> tuple[list[Tensor], list[Tensor], Tensor, int]:
    """Head outputs with exactly ``candidates`` (cell, class) pairs per image above the score
    threshold after points NMS. Returns (category logits (N, C, S, S) per level, kernels
    (N, E, S, S) per level, mask features (N, E, height/4, width/4), the candidates of image 0).

    Candidates sit on even rows and columns of the grids (so no two share a 2x2 window and
    points NMS keeps them all) with probabilities spread over (score_thr, 0.9]; every other
    logit is -10. When there are fewer (cell, class) pairs on even cells than ``candidates``,
    all of them are candidates. The masks depend on ``load``:

    - ``"blobs"`` (realistic): the candidates belong to ``candidates // 10`` objects (about ten
      candidates each, as neighbouring cells and levels fire around an object), one of the
      first ten classes each. An object is a soft ellipse, centre uniform over the image,
      diameter log-uniform from 1.5% to 80% of the image's short side (a COCO-like spread of
      sizes), aspect ratio 0.5 to 2; each candidate sees its object's ellipse moved by up to
      20% of its radii and scaled by 0.8 to 1.25, plus a smooth random texture. Mask
      probabilities ramp from 0.1 to 0.9 across about two mask-feature pixels at the edge and
      fall to ~0 away from the object.
    - ``"noise"`` (worst case for the final resize): random kernels and features, so every
      mask is salt-and-pepper noise over about half of the whole image, all pass the small-mask
      filter and ``max_per_img`` survive; every returned mask spans the whole image.

    Raises ValueError for another ``load``, or for "blobs" with fewer than 6 kernel channels.
    """
    if load not in POSTPROCESS_LOADS:
        raise ValueError(f"post-processing load must be one of {POSTPROCESS_LOADS}, got {load!r}")
    m = cfg.model
    classes = min(10, m.num_classes)
    slots = [(level, i, j) for level, s in enumerate(m.grids) for i in range(0, s, 2) for j in range(0, s, 2)]
    pairs = [(level, i, j, c) for (level, i, j) in slots for c in range(classes)]
    count = min(candidates, len(pairs))
    logits = [torch.full((batch, m.num_classes, s, s), -10.0) for s in m.grids]
    prob_range = (cfg.test.score_thr, 0.9)
    e, size = m.kernel_channels, (height // 4, width // 4)
    if load == "noise":
        for b in range(batch):
            fill_noise_candidates(logits, b, pairs, count, prob_range, generator)
        kernels = [torch.randn(batch, e, s, s, generator=generator) / e**0.5 for s in m.grids]
        mask_features = torch.randn(batch, e, *size, generator=generator)
    else:
        kernels = [torch.zeros(batch, e, s, s) for s in m.grids]
        mask_features = blob_features(batch, e, *size, generator)
        for b in range(batch):
            fill_blob_candidates(logits, kernels, b, slots, count, classes, prob_range, size, generator)
    passing = sum(int((points_nms(c[:1].sigmoid()) > cfg.test.score_thr).sum()) for c in logits)
    return logits, kernels, mask_features, passing


def _candidate_probabilities(count: int, prob_range: tuple[float, float], generator: torch.Generator) -> Tensor:
    """``count`` probabilities uniform over (low, high], kept a little above low."""
    low, high = prob_range
    probs = low + (high - low) * (1 - torch.rand(count, generator=generator))
    return probs.clamp(min=low + 1e-3)


def fill_noise_candidates(
    logits: list[Tensor], b: int, pairs: list[tuple[int, int, int, int]], count: int,
    prob_range: tuple[float, float], generator: torch.Generator,
) -> None:
    """Write image ``b``'s ``count`` candidates of the "noise" load: (level, row, column,
    class) ``pairs`` drawn without replacement, probabilities over ``prob_range``."""
    chosen = torch.randperm(len(pairs), generator=generator)[:count]
    probs = _candidate_probabilities(count, prob_range, generator)
    for index, p in zip(chosen.tolist(), torch.logit(probs).tolist()):
        level, i, j, c = pairs[index]
        logits[level][b, c, i, j] = p


def blob_features(batch: int, channels: int, h: int, w: int, generator: torch.Generator) -> Tensor:
    """(batch, channels, h, w) mask features for the "blobs" load: a quadratic basis (so a
    kernel can draw an ellipse) and, on the other channels, smooth unit-variance noise."""
    if channels < BLOB_BASIS + 1:
        raise ValueError(f"the blobs load needs at least {BLOB_BASIS + 1} kernel channels, got {channels}")
    side = max(h, w)
    v, u = torch.meshgrid(torch.arange(h) / side, torch.arange(w) / side, indexing="ij")
    basis = torch.stack([torch.ones_like(u), u, v, u * u, v * v])
    low = torch.randn(batch, channels - BLOB_BASIS, max(h // 8, 1), max(w // 8, 1), generator=generator)
    texture = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    texture = texture / texture.std()
    return torch.cat([basis.expand(batch, -1, -1, -1), texture], 1)


def fill_blob_candidates(
    logits: list[Tensor], kernels: list[Tensor], b: int, slots: list[tuple[int, int, int]], count: int,
    classes: int, prob_range: tuple[float, float], size: tuple[int, int], generator: torch.Generator,
) -> None:
    """Write image ``b``'s ``count`` candidates of the "blobs" load (see ``crafted_outputs``):
    one slot (cell) each, a second class at a slot only once every slot is used."""
    h, w = size
    rand = lambda *shape: torch.rand(shape, generator=generator)  # noqa: E731
    objects = max(1, count // 10)
    centre = rand(objects, 2) * torch.tensor([h, w])  # (y, x) in mask-feature pixels
    diameter = min(h, w) * 0.015 * (0.8 / 0.015) ** rand(objects)
    aspect = 4 ** (rand(objects) - 0.5)  # 0.5 to 2
    radii = torch.stack([diameter * aspect.sqrt(), diameter / aspect.sqrt()], 1) / 2
    label = torch.randint(classes, (objects,), generator=generator)

    probs = _candidate_probabilities(count, prob_range, generator)
    owner = torch.randint(objects, (count,), generator=generator)
    order = torch.randperm(len(slots), generator=generator)
    for k in range(count):
        level, i, j = slots[int(order[k % len(slots)])]
        o = int(owner[k % len(slots)])
        logits[level][b, (int(label[o]) + k // len(slots)) % classes, i, j] = torch.logit(probs[k])
        if k >= len(slots):
            continue  # the slot's kernel (its mask) is already set
        r = radii[o] * 1.25 ** (2 * rand(2) - 1)
        centre_k = centre[o] + 0.2 * r * (2 * rand(2) - 1)
        kernels[level][b, :, i, j] = _blob_kernel(centre_k, r, max(h, w), kernels[0].shape[1], generator)


def _blob_kernel(centre: Tensor, radii: Tensor, side: int, channels: int, generator: torch.Generator) -> Tensor:
    """A (channels,) kernel whose product with ``blob_features`` is the logit of a soft ellipse
    at ``centre`` (y, x) with ``radii`` (y, x) in mask-feature pixels, plus a little texture."""
    cy, cx = centre.tolist()
    ry, rx = radii.clamp(min=0.5).tolist()
    # logit = s (1 - ((x - cx) / rx)^2 - ((y - cy) / ry)^2), x = u * side, y = v * side: the
    # slope at the edge is 2 s / r per pixel, so s = r gives a ramp about 2 pixels wide.
    s = max(2.0, (rx * ry) ** 0.5)
    ax, ay = rx / side, ry / side
    cu, cv = cx / side, cy / side
    quadratic = torch.tensor([s * (1 - (cu / ax) ** 2 - (cv / ay) ** 2), 2 * s * cu / ax**2,
                              2 * s * cv / ay**2, -s / ax**2, -s / ay**2])
    texture = torch.randn(channels - BLOB_BASIS, generator=generator) / (channels - BLOB_BASIS) ** 0.5
    return torch.cat([quadratic, texture])


@dataclass
class TrainingImage:
    """One synthetic training sample."""

    image: np.ndarray  # H x W x 3 uint8
    masks: np.ndarray  # (n, H, W) uint8
    boxes: np.ndarray  # (n, 4) x1, y1, x2, y2
    labels: np.ndarray  # (n,)


def synthetic_training_images(
    count: int, size: tuple[int, int], instances: int, num_classes: int, rng: np.random.Generator
) -> list[TrainingImage]:
    """``count`` noise images of ``size`` (H, W) with ``instances`` ellipses and rectangles
    each, sizes log-uniform from 3% to 60% of the short side, so every FPN level's scale range
    gets instances; labels uniform over ``num_classes``."""
    h, w = size
    out = []
    for _ in range(count):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        masks = np.zeros((instances, h, w), np.uint8)
        for k in range(instances):
            _draw_shape(masks[k], k % 2 == 1, rng)
        boxes = np.zeros((instances, 4), np.float32)
        for k in range(instances):
            ys, xs = np.nonzero(masks[k])
            boxes[k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        out.append(TrainingImage(image, masks, boxes, rng.integers(0, num_classes, instances)))
    return out


def _draw_shape(mask: np.ndarray, ellipse: bool, rng: np.random.Generator) -> None:
    """Fill one random ellipse or rectangle into the (H, W) uint8 ``mask`` with 1."""
    h, w = mask.shape
    extent = min(h, w) * float(np.exp(rng.uniform(np.log(0.03), np.log(0.6))))
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ry, rx = (extent * rng.uniform(0.35, 0.65) for _ in range(2))
    if ellipse:
        cv2.ellipse(mask, (int(cx), int(cy)), (max(int(rx), 1), max(int(ry), 1)),
                    float(rng.uniform(0, 180)), 0, 360, 1, -1)
    else:
        cv2.rectangle(mask, (int(cx - rx), int(cy - ry)), (int(cx + rx), int(cy + ry)), 1, -1)
