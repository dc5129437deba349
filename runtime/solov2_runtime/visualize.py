"""Drawing predictions: masks coloured by class, outlines, "name score" captions."""

from __future__ import annotations

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX


def instance_colour(index: int) -> tuple[int, int, int]:
    """A distinct, stable BGR colour for ``index`` (golden-ratio hue steps); overlays call it
    with the class label, so a class has the same colour in every image and panel."""
    hue = int((index * 0.618033988749895 % 1.0) * 179)
    hsv = np.uint8([[[hue, 200, 255]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def _caption(canvas: np.ndarray, text: str, x: int, y: int, colour: tuple[int, int, int],
             font_scale: float, thickness: int) -> None:
    """``text`` in black on a ``colour`` box whose top-left corner is near (x, y), kept inside."""
    height, width = canvas.shape[:2]
    (text_w, text_h), baseline = cv2.getTextSize(text, FONT, font_scale, thickness)
    x = int(np.clip(x, 0, max(width - text_w, 0)))
    y = int(np.clip(y, text_h + baseline, height))
    cv2.rectangle(canvas, (x, y - text_h - baseline), (x + text_w, y), colour, -1)
    cv2.putText(canvas, text, (x, y - baseline), FONT, font_scale, (0, 0, 0), thickness, cv2.LINE_AA)


def draw_instances(
    image_bgr: np.ndarray,
    masks: np.ndarray,
    labels: list[str],
    scores: np.ndarray,
    alpha: float = 0.5,
    min_score: float = 0.0,
    class_ids: np.ndarray | None = None,
    show_scores: bool = True,
    empty_text: str = "no detections",
) -> np.ndarray:
    """Overlay ``masks`` (N, H, W bool, sorted by descending score) on a copy of the image.

    Each instance is coloured by ``class_ids[i]`` (its class label; the instance index when
    None) and captioned "name 0.87" ("name" with ``show_scores=False``, e.g. ground truth);
    instances scored below ``min_score`` are not drawn. An image with nothing drawn gets
    ``empty_text`` in its top-left corner ('' for none)."""
    canvas = image_bgr.copy()
    height, width = canvas.shape[:2]
    font_scale = max(0.35, min(height, width) / 900)
    thickness = max(1, round(font_scale * 2))
    shown = [i for i in range(len(scores)) if float(scores[i]) >= min_score and masks[i].any()]
    colours = {i: instance_colour(int(class_ids[i]) if class_ids is not None else i) for i in shown}
    # Draw low scores first so the best instances and their captions end on top.
    for index in reversed(shown):
        mask, colour = masks[index], colours[index]
        region = canvas[mask].astype(np.float32)
        canvas[mask] = (region * (1 - alpha) + np.float32(colour) * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, colour, thickness)
    for index in reversed(shown):
        ys, xs = np.nonzero(masks[index])
        caption = f"{labels[index]} {float(scores[index]):.2f}" if show_scores else str(labels[index])
        _caption(canvas, caption, int(xs.min()), int(ys.min()), colours[index], font_scale, thickness)
    if not shown and empty_text:
        _caption(canvas, empty_text, 0, 0, (255, 255, 255), font_scale, thickness)
    return canvas


def draw_result(image_bgr: np.ndarray, result, alpha: float = 0.5, min_score: float = 0.0,
                show_scores: bool = True, empty_text: str = "no detections") -> np.ndarray:
    """``draw_instances`` for a result (masks, labels, scores, class_names), coloured by class."""
    return draw_instances(image_bgr, result.masks, result.class_names, result.scores, alpha, min_score,
                          class_ids=np.asarray(result.labels), show_scores=show_scores, empty_text=empty_text)


def panel(image_bgr: np.ndarray, title: str) -> np.ndarray:
    """``image_bgr`` with ``title`` written along its bottom edge (a captioned panel)."""
    canvas = image_bgr.copy()
    font_scale = max(0.35, min(canvas.shape[:2]) / 900)
    _caption(canvas, title, 0, canvas.shape[0], (255, 255, 255), font_scale, max(1, round(font_scale * 2)))
    return canvas
