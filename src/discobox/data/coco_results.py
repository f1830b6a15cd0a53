"""The COCO results format: detections -> results entries (xywh box, RLE mask, score), and their
score with pycocotools' ``COCOeval``.

Metrics follow docs/method.md §8.2: bbox and segm AP, AP50, AP75, APs, APm, APl
(``maxDets=[1, 10, 100]``; with ``max_per_img=100`` this equals the official protocol).
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from ..structures import Instances

logger = logging.getLogger("discobox")

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """``bool[H, W]`` -> COCO RLE with a str ``counts`` (JSON-serialisable)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def instances_to_coco(
    inst: Instances, image_id: int, label_to_cat_id: list[int] | dict[int, int]
) -> list[dict[str, Any]]:
    """Detections of one image -> COCO results entries.

    Each entry: ``image_id``, ``category_id`` (``label_to_cat_id[label]``), ``bbox``
    ``[x, y, w, h]`` (2 decimals), ``score`` (5 decimals; 1.0 without scores) and, when ``inst``
    has masks, ``segmentation`` (RLE of :func:`encode_mask`).
    """
    if len(inst) == 0:
        return []
    boxes = inst.boxes.detach().cpu().numpy().astype(np.float64)
    scores = inst.scores.detach().cpu().numpy() if inst.scores is not None else np.ones(len(inst))
    labels = inst.labels.detach().cpu().numpy()
    masks = inst.masks.detach().cpu().numpy() if inst.masks is not None else None
    out = []
    for i in range(len(inst)):
        x0, y0, x1, y1 = boxes[i].tolist()
        entry: dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": int(label_to_cat_id[int(labels[i])]),
            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
            "score": round(float(scores[i]), 5),
        }
        if masks is not None:
            entry["segmentation"] = encode_mask(masks[i])
        out.append(entry)
    return out


def coco_evaluate(
    coco_gt, results: list[dict[str, Any]], *, iou_types: tuple[str, ...] = ("bbox", "segm"),
    image_ids: list[int] | None = None, cat_ids: list[int] | None = None,
) -> dict[str, float]:
    """Score results against a pycocotools ``COCO`` ground truth.

    Args:
        coco_gt: ``pycocotools.coco.COCO`` with the ground truth.
        results: COCO results entries (:func:`instances_to_coco`).
        iou_types: ``"bbox"`` and/or ``"segm"``; ``"segm"`` uses the entries with a mask.
        image_ids, cat_ids: restrict the evaluation to these images / categories.

    Returns:
        ``{"bbox/AP": .., "segm/AP50": .., ...}`` in percent; zeros for an IoU type without
        results. The printed COCOeval summary is logged at debug level.
    """
    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        usable = [r for r in results if iou_type != "segm" or "segmentation" in r]
        if not usable:
            metrics.update({f"{iou_type}/{n}": 0.0 for n in METRIC_NAMES})
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(usable)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        if cat_ids is not None:  # a dataset restricted to some categories (e.g. VOC names)
            ev.params.catIds = list(cat_ids)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        logger.debug("COCO %s evaluation:\n%s", iou_type, buf.getvalue().rstrip())
        stats = [max(float(s), 0.0) * 100.0 for s in ev.stats[:6]]
        metrics.update({f"{iou_type}/{n}": round(v, 3) for n, v in zip(METRIC_NAMES, stats)})
    return metrics


def format_metrics(metrics: dict[str, float]) -> str:
    """A small table: one row per IoU type, columns AP..APl."""
    rows = []
    for iou_type in ("bbox", "segm"):
        if f"{iou_type}/AP" in metrics:
            vals = " ".join(f"{metrics[f'{iou_type}/{n}']:6.2f}" for n in METRIC_NAMES)
            rows.append(f"{iou_type:5s} {vals}")
    header = "      " + " ".join(f"{n:>6s}" for n in METRIC_NAMES)
    return "\n".join([header, *rows])
