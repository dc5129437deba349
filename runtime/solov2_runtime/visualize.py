"""Drawing predictions: coloured masks, outlines, class names and scores."""

from __future__ import annotations

import cv2
import numpy as np


def instance_colour(index: int) -> tuple[int, int, int]:
    """A distinct, stable BGR colour for the index-th instance (golden-ratio hue steps)."""
    hue = int((index * 0.618033988749895 % 1.0) * 179)
    hsv = np.uint8([[[hue, 200, 255]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def draw_instances(
    image_bgr: np.ndarray,
    masks: np.ndarray,
    labels: list[str],
    scores: np.ndarray,
    alpha: float = 0.5,
    min_score: float = 0.0,
) -> np.ndarray:
    """Overlay ``masks`` (N, H, W bool, sorted by descending score) on a copy of the image with
    "name 0.87" captions; instances scored below ``min_score`` are not drawn."""
    canvas = image_bgr.copy()
    height, width = canvas.shape[:2]
    font_scale = max(0.35, min(height, width) / 900)
    thickness = max(1, round(font_scale * 2))
    shown = [i for i in range(len(scores)) if float(scores[i]) >= min_score]
    # Draw low scores first so the best instances and their captions end on top.
    for index in reversed(shown):
        mask = masks[index]
        if not mask.any():
            continue
        colour = instance_colour(index)
        region = canvas[mask].astype(np.float32)
        canvas[mask] = (region * (1 - alpha) + np.float32(colour) * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, colour, thickness)
    for index in reversed(shown):
        mask = masks[index]
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            continue
        caption = f"{labels[index]} {float(scores[index]):.2f}"
        (text_w, text_h), baseline = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        x = int(np.clip(xs.min(), 0, max(width - text_w, 0)))
        y = int(np.clip(ys.min(), text_h + baseline, height))
        cv2.rectangle(canvas, (x, y - text_h - baseline), (x + text_w, y), instance_colour(index), -1)
        cv2.putText(canvas, caption, (x, y - baseline), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (0, 0, 0), thickness, cv2.LINE_AA)
    return canvas


def draw_result(image_bgr: np.ndarray, result, alpha: float = 0.5, min_score: float = 0.0) -> np.ndarray:
    """``draw_instances`` for a PredictionResult."""
    return draw_instances(image_bgr, result.masks, result.class_names, result.scores, alpha, min_score)
