"""Overlays of any COCO json (ground truth, predictions, pseudo-labels) over its images.

One PNG per image, ``NNNN_<stem>.png`` in review order: images whose lowest mask score is lowest
come first (where the json has scores), so the doubtful masks are looked at first; then one
``contact_sheet.png``, a grid of thumbnails in the same order. Drawing is
:func:`discobox.inference.visualize.draw_instances` (masks, outlines, boxes, ``class score``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..data.images import read_image
from ..inference.visualize import draw_instances
from ..structures import Instances
from .export_formats import CocoSet, ann_mask, load_coco

CONTACT_SHEET = "contact_sheet.png"


@dataclass(frozen=True)
class SheetLayout:
    """Contact-sheet geometry: ``cols`` x ``rows`` cells of ``cell`` px, ``pad`` px apart."""

    cols: int
    rows: int
    cell: int = 192
    pad: int = 4

    @classmethod
    def for_count(cls, n: int, max_cols: int = 6, cell: int = 192, pad: int = 4) -> SheetLayout:
        cols = max(1, min(n, max_cols))
        return cls(cols, max(1, math.ceil(n / cols)), cell, pad)

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        return (self.rows * (self.cell + self.pad) + self.pad,
                self.cols * (self.cell + self.pad) + self.pad)


def review_order(cs: CocoSet) -> list[int]:
    """Image ids, lowest per-image minimum score first (images without scores last, by id);
    by id when the json has no scores."""
    groups = cs.by_image()

    def key(iid: int) -> tuple[float, int]:
        scores = [float(a["score"]) for a in groups[iid] if "score" in a]
        return (min(scores) if scores else math.inf, iid)

    return sorted(groups, key=key)


def _instances(cs: CocoSet, iid: int, anns: list[dict], index: dict[int, int]) -> Instances:
    im = cs.images[iid]
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                     np.float32).reshape(-1, 4)
    masks = None
    if any(a.get("segmentation") for a in anns):
        masks = torch.from_numpy(np.stack([ann_mask(a, im["height"], im["width"]) for a in anns]))
    scores = (torch.tensor([float(a.get("score", 0.0)) for a in anns])
              if anns and all("score" in a for a in anns) else None)
    return Instances(boxes=torch.from_numpy(boxes),
                     labels=torch.tensor([index[int(a["category_id"])] for a in anns]),
                     scores=scores, masks=masks)


def contact_sheet(images: list[np.ndarray], layout: SheetLayout) -> np.ndarray:
    """``uint8[H, W, 3]`` grid (``layout.size``) of the RGB images, each fit into a cell."""
    h, w = layout.size
    sheet = np.full((h, w, 3), 255, np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, layout.cols)
        scale = layout.cell / max(im.shape[:2])
        th, tw = max(1, round(im.shape[0] * scale)), max(1, round(im.shape[1] * scale))
        thumb = cv2.resize(im, (tw, th), interpolation=cv2.INTER_AREA)
        y = layout.pad + r * (layout.cell + layout.pad)
        x = layout.pad + c * (layout.cell + layout.pad)
        sheet[y:y + th, x:x + tw] = thumb
    return sheet


def show(json_path: str | Path, images_dir: str | Path, out_dir: str | Path, *,
         gt: str | Path | None = None, max_images: int | None = None) -> list[Path]:
    """Draw ``json_path``'s annotations over the images in ``images_dir`` into ``out_dir``.

    Returns the overlay PNGs in review order (:func:`review_order`, at most ``max_images``)
    followed by the contact sheet. Class names come from the json's (or ``gt``'s) categories.

    Raises:
        ImageReadError / MissingFileError / InvalidInputError: a missing image or bad json.
    """
    cs = load_coco(json_path, gt=gt, images_dir=images_dir)
    names = [str(c.get("name", c["id"])) for c in cs.categories]
    order = review_order(cs)[:max_images]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, drawn = [], []
    groups, index = cs.by_image(), cs.class_index()
    for rank, iid in enumerate(order):
        file_name = cs.images[iid]["file_name"]
        inst = _instances(cs, iid, groups[iid], index)
        image = draw_instances(read_image(Path(images_dir) / file_name), inst, names)
        path = out / f"{rank:04d}_{Path(file_name).stem}.png"
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        written.append(path)
        drawn.append(image)
    sheet = contact_sheet(drawn, SheetLayout.for_count(len(drawn)))
    cv2.imwrite(str(out / CONTACT_SHEET), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    return [*written, out / CONTACT_SHEET]
