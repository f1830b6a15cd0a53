"""Overlay drawing: translucent masks, outlines, boxes and ``class score`` labels."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ..structures import Instances


def palette(n: int, seed: int = 3) -> np.ndarray:
    """``uint8[n, 3]`` well-separated RGB colours (golden-ratio hues), deterministic."""
    hues = (np.arange(n) * 0.618033988749895 + seed * 0.1) % 1.0
    hsv = np.stack([hues * 179, np.full(n, 200), np.full(n, 255)], axis=1).astype(np.uint8)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]


def draw_instances(
    image: np.ndarray, inst: Instances, class_names: Sequence[str], *, alpha: float = 0.5,
    draw_boxes: bool = True,
) -> np.ndarray:
    """Return a copy of ``image`` (uint8[H, W, 3] RGB) with the instances drawn on it."""
    out = image.copy()
    if len(inst) == 0:
        return out
    colors = palette(max(len(inst), 1))
    masks = inst.masks.cpu().numpy() if inst.masks is not None else None
    boxes = inst.boxes.cpu().numpy()
    labels = inst.labels.cpu().numpy()
    scores = inst.scores.cpu().numpy() if inst.scores is not None else None
    for i in range(len(inst)):
        color = colors[i].astype(np.float32)
        if masks is not None:
            m = masks[i]
            out[m] = (out[m].astype(np.float32) * (1 - alpha) + color * alpha).astype(np.uint8)
            contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, tuple(int(c) for c in colors[i]), 1)
    for i in range(len(inst)):
        c = tuple(int(v) for v in colors[i])
        x0, y0, x1, y1 = (int(round(v)) for v in boxes[i])
        if draw_boxes:
            cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), c, 1)
        name = class_names[labels[i]] if labels[i] < len(class_names) else str(labels[i])
        text = name if scores is None else f"{name} {scores[i]:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        ty = max(y0, th + base + 1)
        cv2.rectangle(out, (x0, ty - th - base - 1), (x0 + tw + 2, ty), c, -1)
        cv2.putText(out, text, (x0 + 1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return out


def side_by_side(images: Sequence[np.ndarray], pad: int = 4) -> np.ndarray:
    """Concatenate RGB images horizontally (heights padded to the tallest)."""
    h = max(im.shape[0] for im in images)
    cols = []
    for im in images:
        canvas = np.full((h, im.shape[1], 3), 255, np.uint8)
        canvas[: im.shape[0]] = im
        cols.extend([canvas, np.full((h, pad, 3), 255, np.uint8)])
    return np.concatenate(cols[:-1], axis=1)
