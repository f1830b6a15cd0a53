"""Dense semantic correspondence between two objects in two images.

Each object is given by a box (``--box-a``/``--box-b``, xyxy pixels) or, without boxes, found
with :class:`discobox.inference.predictor.Predictor`: the class detected in both images whose
top detections have the highest product of scores, and those two detections' boxes. The two
box crops (plus a 10 % margin) are matched with the evaluation pipeline (hyperpixel FPN
features, Sinkhorn + Hough voting, :mod:`discobox.modeling.correspondence.dense_match`).
Output: ``<a>_<b>_corr.png`` (the images side by side, boxes, matched points joined by coloured
lines) and ``<a>_<b>_corr.json`` (boxes, class, matches in original pixel coordinates with
confidences).

Confidence of a source cell ``i`` matched to ``j = argmax conf[i]``: ``conf[i, j] / sum_j
conf[i, j]``. Mutual nearest neighbours are preferred, and points are spread over the box by a
greedy minimum-distance rule.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ..checkpoint.io import atomic_write_text
from ..data.images import read_image
from ..errors import InvalidInputError
from ..modeling.correspondence.dense_match import image_features, match_features
from .predictor import Predictor
from .visualize import palette, side_by_side

logger = logging.getLogger("discobox")


def parse_box(text: str) -> list[float]:
    """``"x0,y0,x1,y1"`` -> 4 floats; raises ``ValueError`` naming the text."""
    try:
        v = [float(t) for t in text.split(",")]
    except ValueError:
        v = []
    if len(v) != 4 or v[2] <= v[0] or v[3] <= v[1]:
        raise InvalidInputError(f"bad box {text!r}: expected x0,y0,x1,y1 with x1 > x0 and y1 > y0")
    return v


def detect_pair(predictor: Any, image_a: np.ndarray, image_b: np.ndarray,
                score_thr: float = 0.3) -> dict[str, Any]:
    """Boxes of the same class in both images (see module doc) or ``ValueError``."""
    inst = predictor.predict_many([image_a, image_b])
    best: tuple[float, int, int, int] | None = None
    for name, i in (("first", 0), ("second", 1)):
        if not (len(inst[i]) and (inst[i].scores >= score_thr).any()):
            raise InvalidInputError(f"no detection with score >= {score_thr} in the {name} image; "
                                    "pass --box-a and --box-b")
    a, b = inst
    for label in set(a.labels.tolist()) & set(b.labels.tolist()):
        ia = int(torch.where(a.labels == label, a.scores, -1.0).argmax())
        ib = int(torch.where(b.labels == label, b.scores, -1.0).argmax())
        if min(a.scores[ia], b.scores[ib]) < score_thr:
            continue
        s = float(a.scores[ia] * b.scores[ib])
        if best is None or s > best[0]:
            best = (s, label, ia, ib)
    if best is None:
        raise InvalidInputError(f"no class detected in both images with score >= {score_thr}; "
                                "pass --box-a and --box-b")
    _, label, ia, ib = best
    names = predictor.class_names
    return {"box_a": a.boxes[ia].tolist(), "box_b": b.boxes[ib].tolist(), "label": label,
            "class": names[label] if label < len(names) else str(label),
            "score_a": float(a.scores[ia]), "score_b": float(b.scores[ib])}


def _crop(image: np.ndarray, box: list[float], margin: float) -> tuple[np.ndarray, list[int]]:
    h, w = image.shape[:2]
    x0, y0, x1, y1 = box
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    c = [max(0, int(np.floor(x0 - mx))), max(0, int(np.floor(y0 - my))),
         min(w, int(np.ceil(x1 + mx))), min(h, int(np.ceil(y1 + my)))]
    if c[2] - c[0] < 2 or c[3] - c[1] < 2:
        raise InvalidInputError(f"box {box} is empty inside the {w}x{h} image")
    return image[c[1]:c[3], c[0]:c[2]], c


def select_matches(conf: torch.Tensor, src_xy: torch.Tensor, trg_xy: torch.Tensor, *,
                   inside: torch.Tensor, num_points: int, min_dist: float) -> list[dict]:
    """Pick up to ``num_points`` source cells (``inside`` mask ``bool[N]``): mutual nearest
    neighbours first, then by confidence, at least ``min_dist`` apart."""
    best = conf.argmax(1)
    back = conf.argmax(0)
    mutual = back[best] == torch.arange(len(best), device=conf.device)
    score = conf.gather(1, best[:, None])[:, 0] / conf.sum(1).clamp(min=1e-12)
    order = torch.argsort(score + mutual.float() + inside.float() * 2, descending=True)
    chosen: list[dict] = []
    for i in order.tolist():
        if not inside[i] or len(chosen) >= num_points:
            break
        p = src_xy[i]
        if any(float((p - torch.tensor(c["a"])).norm()) < min_dist for c in chosen):
            continue
        chosen.append({"a": p.tolist(), "b": trg_xy[best[i]].tolist(),
                       "confidence": float(score[i]), "mutual": bool(mutual[i])})
    return chosen


def draw_matches(image_a: np.ndarray, image_b: np.ndarray, matches: list[dict],
                 boxes: tuple[list[float], list[float]]) -> np.ndarray:
    """Side-by-side RGB canvas with both boxes and one coloured line per match."""
    pad = 8
    canvas = side_by_side([image_a, image_b], pad=pad).copy()
    off = image_a.shape[1] + pad
    colors = palette(max(len(matches), 1))
    for (x0, y0, x1, y1), dx in zip(boxes, (0, off)):
        cv2.rectangle(canvas, (int(x0) + dx, int(y0)), (int(x1) + dx - 1, int(y1) - 1),
                      (255, 255, 255), 1)
    for m, c in zip(matches, colors):
        col = tuple(int(v) for v in c)
        pa = (int(round(m["a"][0])), int(round(m["a"][1])))
        pb = (int(round(m["b"][0])) + off, int(round(m["b"][1])))
        cv2.line(canvas, pa, pb, col, 1, cv2.LINE_AA)
        cv2.circle(canvas, pa, 3, col, -1, cv2.LINE_AA)
        cv2.circle(canvas, pb, 3, col, -1, cv2.LINE_AA)
    return canvas


def correspond(
    *, weights: str | Path, image_a: str | Path, image_b: str | Path, output: str | Path,
    box_a: list[float] | None = None, box_b: list[float] | None = None, num_points: int = 20,
    img_side: int = 240, levels: tuple[int, ...] = (0, 1), score_thr: float = 0.3,
    margin: float = 0.1, config: str | Path | None = None, device: str | None = None,
) -> dict[str, Any]:
    """Match the objects of two images; writes the PNG and JSON, returns the JSON dict."""
    if (box_a is None) != (box_b is None):
        raise InvalidInputError(
            "pass both --box-a and --box-b, or neither (then detections are used)")
    img_a, img_b = read_image(image_a), read_image(image_b)
    predictor = Predictor.from_checkpoint(weights, config=config, device=device)
    info: dict[str, Any] = {}
    if box_a is None:
        info = detect_pair(predictor, img_a, img_b, score_thr)
        box_a, box_b = info["box_a"], info["box_b"]
    crop_a, ca = _crop(img_a, box_a, margin)
    crop_b, cb = _crop(img_b, box_b, margin)
    model = predictor.model
    fa = image_features(model, crop_a, img_side=img_side, levels=levels)
    fb = image_features(model, crop_b, img_side=img_side, levels=levels)
    m = match_features(fa, fb, solver="sinkhorn", iters=1, hough=True)

    def to_orig(xy: torch.Tensor, f, c) -> torch.Tensor:
        return xy.cpu() / torch.tensor(f.scale) + torch.tensor([c[0], c[1]], dtype=torch.float32)

    src_xy, trg_xy = to_orig(fa.centers(), fa, ca), to_orig(fb.centers(), fb, cb)
    inside = ((src_xy[:, 0] >= box_a[0]) & (src_xy[:, 0] <= box_a[2])
              & (src_xy[:, 1] >= box_a[1]) & (src_xy[:, 1] <= box_a[3]))
    diag = float(np.hypot(box_a[2] - box_a[0], box_a[3] - box_a[1]))
    matches = select_matches(m.conf.cpu(), src_xy, trg_xy, inside=inside.cpu(),
                             num_points=num_points,
                             min_dist=diag / (2.0 * np.sqrt(max(num_points, 1))))
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{Path(image_a).stem}_{Path(image_b).stem}_corr"
    png = cv2.cvtColor(draw_matches(img_a, img_b, matches, (box_a, box_b)), cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(out / f"{stem}.png"), png):
        raise OSError(f"cannot write {out / stem}.png")
    result = {"image_a": str(image_a), "image_b": str(image_b), "box_a": list(box_a),
              "box_b": list(box_b), **{k: v for k, v in info.items() if k not in ("box_a",
                                                                                  "box_b")},
              "matches": matches}
    atomic_write_text(json.dumps(result, indent=2), out / f"{stem}.json")
    logger.info("wrote %s.png and %s.json (%d matches)", out / stem, out / stem, len(matches))
    return result
