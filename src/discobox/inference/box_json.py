"""A COCO json of boxes for pseudo-labelling: index its images, parse its boxes, read its images.

Structural errors raise :class:`~discobox.errors.InvalidInputError` naming the file; a box or
image that cannot be labelled is reported to a ``skip`` callback with one of
:data:`SKIP_REASONS` (see :mod:`discobox.inference.pseudo_label`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.images import ImageNotFoundError, ImageReadError, read_image
from ..errors import InvalidInputError

logger = logging.getLogger("discobox")

SKIP_REASONS = ("invalid_box", "zero_area", "outside_image", "missing_image", "unreadable_image",
                "size_mismatch")


@dataclass
class ImageEntry:
    """One image of the json and the positions of its annotations in ``data["annotations"]``."""

    image_id: int
    path: Path
    height: int
    width: int
    anns: list[int]


@dataclass
class Work:
    """A readable image and its labelable boxes (original frame, clipped)."""

    entry: ImageEntry
    image: np.ndarray  # uint8[H, W, 3] RGB
    positions: list[int]  # annotation positions
    boxes: np.ndarray  # float32[n, 4] xyxy
    labels: np.ndarray  # int64[n] model class, -1 unknown


# (annotation position, region (x0, y0, x1, y1), crop bool[y1-y0, x1-x0], score, source)
Result = tuple[int, tuple[int, int, int, int], np.ndarray, float, str]

SkipFn = Callable[[ImageEntry, int, str], None]


def index_images(data: dict[str, Any], path: Path, image_dir: Path) -> dict[int, ImageEntry]:
    """``image id -> ImageEntry`` with each image's annotation positions.

    Raises:
        InvalidInputError: no ``images``/``annotations`` list, an image that is not an object
            or lacks an integer ``id``, a non-empty ``file_name`` or positive integer
            ``width``/``height``, a duplicate image or annotation id, an annotation that is not
            an object or names an unknown image, a duplicate category id.
    """
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise InvalidInputError(f"{path}: missing top-level list '{key}'")
    images: dict[int, ImageEntry] = {}
    for i, img in enumerate(data["images"]):
        _check_image(img, i, path)
        if img["id"] in images:
            raise InvalidInputError(f"{path}: duplicate image id {img['id']}")
        images[img["id"]] = ImageEntry(img["id"], image_dir / img["file_name"],
                                       img["height"], img["width"], [])
    _check_category_ids(data.get("categories"), path)
    ann_ids: dict[Any, int] = {}
    for pos, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise InvalidInputError(f"{path}: annotations[{pos}]: expected an object, got "
                                    f"{type(ann).__name__}")
        if ann.get("image_id") not in images:
            raise InvalidInputError(f"{path}: annotation {ann.get('id', f'#{pos}')!r} has no "
                                    f"'image_id' listed in 'images'")
        if "id" in ann:  # the output keeps the ids: a duplicate would break its consumers
            first = ann_ids.setdefault(_hashable(ann["id"]), pos)
            if first != pos:
                raise InvalidInputError(f"{path}: duplicate annotation id {ann['id']!r} "
                                        f"(annotations[{first}] and annotations[{pos}])")
        images[ann["image_id"]].anns.append(pos)
    return images


def _check_image(img: Any, i: int, path: Path) -> None:
    """:class:`InvalidInputError` naming ``path`` and the key if ``images[i]`` is malformed."""
    where = f"{path}: images[{i}]"
    if not isinstance(img, dict):
        raise InvalidInputError(f"{where}: expected an object, got {type(img).__name__}")
    missing = [k for k in ("id", "file_name", "width", "height") if k not in img]
    if missing:
        raise InvalidInputError(f"{where}: missing key(s) {missing}")
    if not _is_int(img["id"]):
        raise InvalidInputError(f"{where}: 'id' must be an integer, got {img['id']!r}")
    if not isinstance(img["file_name"], str) or not img["file_name"]:
        raise InvalidInputError(f"{where}: 'file_name' must be a non-empty string, got "
                                f"{img['file_name']!r}")
    for key in ("width", "height"):
        if not _is_int(img[key]) or img[key] <= 0:
            raise InvalidInputError(f"{where}: {key!r} must be a positive integer, got "
                                    f"{img[key]!r}")


def _check_category_ids(categories: Any, path: Path) -> None:
    """Categories are optional here, but the output keeps them: a duplicate id is an error."""
    seen: set[Any] = set()
    for cat in categories if isinstance(categories, list) else []:
        cid = _hashable(cat.get("id")) if isinstance(cat, dict) else None
        if cid is not None and cid in seen:
            raise InvalidInputError(f"{path}: duplicate category id {cat['id']!r}")
        seen.add(cid)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _hashable(value: Any) -> Any:
    return value if isinstance(value, int | str | float | bool | None) else repr(value)


def parse_box(ann: dict[str, Any], height: int, width: int) -> tuple[np.ndarray | None, str]:
    """``(clipped float32[4] xyxy, "")``, ``(clipped xyxy, "clipped")`` or
    ``(None, skip reason)`` for an annotation's ``bbox`` ``[x, y, w, h]``."""
    bbox = ann.get("bbox")
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        return None, "invalid_box"
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox):
        return None, "invalid_box"  # "30" would be labelled here but rejected by training
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None, "invalid_box"
    if w <= 0 or h <= 0:
        return None, "zero_area"
    box = np.array([max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)], np.float32)
    if box[2] <= box[0] or box[3] <= box[1]:
        return None, "outside_image"
    clipped = x < 0 or y < 0 or x + w > width or y + h > height
    return box, "clipped" if clipped else ""


def _read(img: ImageEntry) -> tuple[np.ndarray | None, str]:
    """``(uint8[H, W, 3] RGB, "")`` or ``(None, skip reason)``, with one warning."""
    try:
        image = read_image(img.path)
    except ImageReadError as exc:
        logger.warning("skipping %d boxes of image id %s: %s", len(img.anns), img.image_id, exc)
        return None, "missing_image" if isinstance(exc, ImageNotFoundError) else "unreadable_image"
    if image.shape[:2] != (img.height, img.width):
        logger.warning("skipping %d boxes of %s: image is %dx%d but the json says %dx%d",
                       len(img.anns), img.path, image.shape[1], image.shape[0], img.width,
                       img.height)
        return None, "size_mismatch"
    return image, ""


def prepare(img: ImageEntry, anns: list[dict[str, Any]], skip: SkipFn,
            summary: dict[str, Any]) -> Work | None:
    """Read the image and parse its boxes; ``skip`` (and count in ``summary``) what cannot be
    labelled. ``None`` when the image itself is unusable."""
    image, reason = _read(img)
    if image is None:
        summary["images_skipped"] += 1
        for pos in img.anns:
            skip(img, pos, reason)
        return None
    positions, boxes = [], []
    for pos in img.anns:
        box, status = parse_box(anns[pos], img.height, img.width)
        if box is None:
            skip(img, pos, status)
            continue
        summary["clipped"] += status == "clipped"
        positions.append(pos)
        boxes.append(box)
    return Work(entry=img, image=image, positions=positions,
                boxes=np.stack(boxes) if boxes else np.zeros((0, 4), np.float32),
                labels=np.full(len(positions), -1, np.int64))
