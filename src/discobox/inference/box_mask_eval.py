"""Quality of one-mask-per-box predictions (pseudo-labels) against GT masks of the same boxes.

Two numbers, over the boxes that have both a prediction and a non-crowd GT mask: the mean mask
IoU of each box's prediction with its own GT mask, and COCO segm AP (``coco_evaluate``) of the
predictions, with one detection per box, on the images that have such boxes. Crowd GT masks of
those images stay in the ground truth as crowd regions (COCOeval ignores matches to them).
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ..data.coco_results import coco_evaluate
from ..data.segmentation import compressed_rle, segmentation_to_rle

logger = logging.getLogger("discobox")


def gt_rle(seg: Any, height: int, width: int) -> dict[str, Any]:
    """COCO ``segmentation`` (polygons, RLE, compressed RLE) -> compressed RLE (bytes counts).

    Raises:
        ValueError: not polygons or an RLE of size ``[height, width]``, or no polygon at all.
    """
    if isinstance(seg, list) and not seg:
        raise ValueError("empty polygon list")
    return segmentation_to_rle(seg, height, width)


def evaluate_box_masks(
    *,
    annotations: list[dict[str, Any]],
    predictions: list[dict[str, Any] | None],
    scores: list[float | None],
    image_sizes: dict[Any, tuple[int, int]],
    categories: list[dict[str, Any]],
) -> dict[str, Any]:
    """Mean IoU per box and segm AP of per-box predicted masks.

    Args:
        annotations: input COCO annotations (``image_id``, ``category_id``, optional
            ``segmentation`` and ``iscrowd``).
        predictions: per annotation, its predicted compressed RLE (``counts`` str or bytes), or
            ``None`` where none was made (excluded).
        scores: per annotation, the prediction's score (``None`` where no prediction).
        image_sizes: ``(height, width)`` per image id.
        categories: COCO categories of the ground truth.

    Returns:
        ``mean_iou`` (``None`` if no box qualifies), ``num_evaluated``, ``no_gt_mask`` (predicted
        non-crowd boxes without a GT mask), ``bad_gt_mask`` (undecodable GT masks) and, when
        ``num_evaluated > 0``, ``segm/AP`` ... ``segm/APl`` in percent.
    """
    gt, results, ious = [], [], []
    no_gt = bad_gt = 0
    for ann, pred, score in zip(annotations, predictions, scores):
        crowd = bool(ann.get("iscrowd", 0))
        if pred is None and not crowd:
            continue
        if not ann.get("segmentation"):
            no_gt += not crowd
            continue
        h, w = image_sizes[ann["image_id"]]
        try:
            rle = gt_rle(ann["segmentation"], h, w)
        except (TypeError, ValueError, KeyError, IndexError):
            bad_gt += 1
            continue
        gt.append({"id": len(gt) + 1, "image_id": ann["image_id"], "iscrowd": int(crowd),
                   "category_id": ann.get("category_id"), "area": float(mask_utils.area(rle)),
                   "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                   "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
        if crowd:
            continue
        ious.append(float(mask_utils.iou([compressed_rle(pred)], [rle], [0])[0, 0]))
        results.append({"image_id": ann["image_id"], "category_id": ann.get("category_id"),
                        "segmentation": pred, "score": float(score if score is not None else 1)})
    metrics: dict[str, Any] = {"mean_iou": round(float(np.mean(ious)), 5) if ious else None,
                               "num_evaluated": len(ious), "no_gt_mask": no_gt,
                               "bad_gt_mask": bad_gt}
    if not results:
        logger.warning("evaluation: no predicted box has a GT mask; nothing to score")
        return metrics
    image_ids = sorted({r["image_id"] for r in results})
    keep = set(image_ids)
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "height": image_sizes[i][0], "width": image_sizes[i][1]}
                   for i in image_ids],
        "annotations": [g for g in gt if g["image_id"] in keep],
        "categories": list(categories),
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    metrics.update(coco_evaluate(coco, results, iou_types=("segm",), image_ids=image_ids))
    return metrics
