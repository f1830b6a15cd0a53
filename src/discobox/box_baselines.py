"""The two box-only baselines every pseudo-mask claim is measured against (METHOD.md §8.1):
the filled box and OpenCV GrabCut initialised from the box. Both confine a mask to the box's
pixels (pixel-centre rule, :func:`discobox.modeling.box_conditioned.box_region`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from .modeling.box_conditioned import box_region as _box_region

logger = logging.getLogger("discobox")


def box_masks(boxes_xyxy: torch.Tensor | np.ndarray, height: int, width: int) -> torch.Tensor:
    """Filled boxes: ``float[N, 4]`` xyxy -> ``bool[N, height, width]`` (pixel-centre rule)."""
    boxes = torch.as_tensor(np.asarray(boxes_xyxy, dtype=np.float64)).reshape(-1, 4)
    masks = torch.zeros((boxes.shape[0], height, width), dtype=torch.bool)
    for k, (x0, y0, x1, y1) in enumerate(_box_region(boxes, height, width).tolist()):
        masks[k, y0:y1, x0:x1] = True
    return masks


def grabcut_mask(
    image_rgb: np.ndarray, box: Sequence[float], iters: int = 5
) -> tuple[np.ndarray, bool]:
    """OpenCV GrabCut on the full image, initialised from ``box`` (``GC_INIT_WITH_RECT``).

    Args:
        image_rgb: ``uint8[H, W, 3]`` RGB.
        box: xyxy in pixels.
        iters: GrabCut iterations.

    Returns:
        ``bool[H, W]`` mask (definite + probable foreground, confined to the box) and whether
        GrabCut produced it. ``False`` means the filled box is returned instead: the box is under
        2 px wide or high, OpenCV raised (e.g. no background pixels), or the result was empty.
    """
    h, w = image_rgb.shape[:2]
    region = _box_region(torch.tensor([list(box)], dtype=torch.float64), h, w)[0].tolist()
    x0, y0, x1, y1 = region
    filled = np.zeros((h, w), dtype=bool)
    filled[y0:y1, x0:x1] = True
    if x1 - x0 < 2 or y1 - y0 < 2:
        return filled, False
    mask = np.zeros((h, w), dtype=np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    bgr = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2BGR)
    try:
        cv2.grabCut(bgr, mask, (x0, y0, x1 - x0, y1 - y0), bgd, fgd, int(iters),
                    cv2.GC_INIT_WITH_RECT)
    except cv2.error as exc:
        logger.debug("GrabCut failed on box %s: %s", region, exc)
        return filled, False
    fg = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)) & filled
    return (fg, True) if fg.any() else (filled, False)
