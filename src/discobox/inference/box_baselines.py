"""The two box-only baselines every pseudo-mask claim is measured against (docs/method.md §8.1):
the filled box and OpenCV GrabCut initialised from the box. Both confine a mask to the box's
pixels (pixel-centre rule, :func:`discobox.inference.box_geometry.box_region`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from ..errors import InvalidInputError
from .box_geometry import box_region as _box_region

logger = logging.getLogger("discobox")

_MIN_CONTEXT_PX = 8  # smallest margin around a box for context= GrabCut


def check_grabcut_context(context: float | None, name: str = "GrabCut context") -> None:
    """Raise ``ValueError`` (naming ``name``) unless ``context`` is ``None`` or finite ``>= 0``."""
    if context is not None and not (math.isfinite(context) and context >= 0):
        raise InvalidInputError(f"{name} must be a finite number >= 0 or None, got {context}")


def box_masks(boxes_xyxy: torch.Tensor | np.ndarray, height: int, width: int) -> torch.Tensor:
    """Filled boxes: ``float[N, 4]`` xyxy -> ``bool[N, height, width]`` (pixel-centre rule)."""
    boxes = torch.as_tensor(np.asarray(boxes_xyxy, dtype=np.float64)).reshape(-1, 4)
    masks = torch.zeros((boxes.shape[0], height, width), dtype=torch.bool)
    for k, (x0, y0, x1, y1) in enumerate(_box_region(boxes, height, width).tolist()):
        masks[k, y0:y1, x0:x1] = True
    return masks


def grabcut_mask(
    image_rgb: np.ndarray, box: Sequence[float], iters: int = 5, context: float | None = None
) -> tuple[np.ndarray, bool]:
    """OpenCV GrabCut initialised from ``box`` (``GC_INIT_WITH_RECT``).

    Args:
        image_rgb: ``uint8[H, W, 3]`` RGB.
        box: xyxy in pixels.
        iters: GrabCut iterations.
        context: ``None`` (default) runs GrabCut on the full image (the reference baseline).
            A number runs it on a crop around the box only: the box
            grown by ``context`` times its width/height on each side (at least 8 px), clipped to
            the image. The background model then sees only the box's surroundings; the cost
            follows the crop instead of the image, which matters for small boxes in large images
            (BENCHMARKS.md, "Box-conditioned pseudo-labels": quality goes either way per data set).

    Returns:
        ``bool[H, W]`` mask (definite + probable foreground, confined to the box) and whether
        GrabCut produced it. ``False`` means the filled box is returned instead: the box is under
        2 px wide or high, OpenCV raised (e.g. no background pixels), or the result was empty.
    """
    check_grabcut_context(context)
    h, w = image_rgb.shape[:2]
    region = _box_region(torch.tensor([list(box)], dtype=torch.float64), h, w)[0].tolist()
    x0, y0, x1, y1 = region
    filled = np.zeros((h, w), dtype=bool)
    filled[y0:y1, x0:x1] = True
    if x1 - x0 < 2 or y1 - y0 < 2:
        return filled, False
    cx0, cy0, cx1, cy1 = 0, 0, w, h
    if context is not None:
        mx = max(round(context * (x1 - x0)), _MIN_CONTEXT_PX)
        my = max(round(context * (y1 - y0)), _MIN_CONTEXT_PX)
        cx0, cy0, cx1, cy1 = max(0, x0 - mx), max(0, y0 - my), min(w, x1 + mx), min(h, y1 + my)
    crop = cv2.cvtColor(np.ascontiguousarray(image_rgb[cy0:cy1, cx0:cx1]), cv2.COLOR_RGB2BGR)
    mask = np.zeros(crop.shape[:2], dtype=np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(crop, mask, (x0 - cx0, y0 - cy0, x1 - x0, y1 - y0), bgd, fgd, int(iters),
                    cv2.GC_INIT_WITH_RECT)
    except cv2.error as exc:
        logger.debug("GrabCut failed on box %s: %s", region, exc)
        return filled, False
    fg = np.zeros((h, w), dtype=bool)
    fg[cy0:cy1, cx0:cx1] = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    fg &= filled
    return (fg, True) if fg.any() else (filled, False)
