"""COCO-format instance datasets (docs/method.md §3.1 step 2): boxes only, full masks, or test
images.

Annotation rules (mmdet ``CocoDataset._parse_ann_info``): crowd annotations are excluded; an
annotation is skipped, and counted in :attr:`CocoDataset.skipped`, if it has ``ignore`` set, if its
box does not intersect the image, if ``area <= 0`` (when present), or if ``w < 1`` or ``h < 1``.
Kept boxes become ``[x, y, x + w, y + h]`` clipped to the image. Structural problems raise
:class:`InvalidInputError` (a ``ValueError``) with one line naming the file and the entry or key:
bad json, missing keys, ids that are not integers, duplicate image / annotation / category ids,
``width``/``height`` not positive integers, an unknown category or image, a ``bbox`` that is not
four numbers, ``area`` not a number, ``iscrowd`` not 0/1, and (``'full'`` mode) a missing or
malformed ``segmentation``. ``'box'`` mode never looks at ``segmentation``; ``'test'`` mode only
records whether every annotation has a usable one (:attr:`CocoDataset.has_masks`: segm AP needs
masks).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InvalidInputError
from ..structures import Instances
from .coco_json import (
    check_annotation_values,
    check_image,
    int_value,
    is_number,
    load_coco_json,
    require,
)
from .images import read_image
from .segmentation import decode_segmentation, segmentation_problem

logger = logging.getLogger(__name__)

MODES = ("box", "full", "test")
SKIP_REASONS = {
    "crowd": "crowd",
    "other_class": "of classes not selected",
    "ignore": "marked ignore",
    "outside": "outside image",
    "zero_area": "area <= 0",
    "degenerate": "degenerate boxes",
}


@dataclass
class _Record:
    """Parsed annotations of one image (original pixel frame)."""

    image_id: int
    path: Path
    height: int
    width: int
    boxes: np.ndarray  # float32[N, 4] xyxy, clipped
    labels: np.ndarray  # int64[N]
    ann_ids: np.ndarray  # int64[N]
    segmentations: list[Any] | None  # 'full' mode only


class CocoDataset(Dataset):
    """Images and instances from a COCO json file.

    Args:
        ann_file: COCO json (``images``, ``categories``; ``annotations`` unless ``mode='test'``).
        image_dir: folder that ``file_name`` entries are relative to.
        mode: ``'box'`` (boxes and labels; the ``segmentation`` field is never read), ``'full'``
            (also masks, decoded lazily from polygons or RLE) or ``'test'`` (boxes if present, no
            filtering).
        transforms: callable applied to each sample dict (see :mod:`discobox.data.transforms`).
        filter_empty: drop images without usable annotations. ``None`` means True for ``'box'``
            and ``'full'``, False for ``'test'``.
        min_size: in ``'box'`` and ``'full'`` mode, drop images with a side under this many pixels.
        class_names: restrict to these category names, in this order (labels follow it);
            annotations of other categories are dropped. ``None``: all categories, sorted by id.

    Attributes:
        cat_ids: category id of each contiguous label.
        class_names: name of each label.
        label_to_cat_id / cat_id_to_label: the two mappings.
        image_ids: COCO image id of each item.
        aspect_ratios: ``w / h`` of each item.
        skipped: counts of excluded annotations by reason (keys of ``SKIP_REASONS``).

    ``ds[i]`` is ``transforms({"image": uint8[H, W, 3] RGB, "instances": Instances (boxes
    float32[N, 4] xyxy, labels int64[N], ids int64[N], masks bool[N, H, W] in 'full' mode else
    None), "image_id": int, "file_name": str, "orig_size": (H, W)})``.
    """

    def __init__(
        self,
        *,
        ann_file: str | Path,
        image_dir: str | Path,
        mode: str = "box",
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        filter_empty: bool | None = None,
        min_size: int = 32,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.mode = mode
        self.transforms = transforms
        self.filter_empty = (mode != "test") if filter_empty is None else bool(filter_empty)
        self.min_size = min_size
        self._coco = None

        data = load_coco_json(self.ann_file)
        name = self.ann_file.name
        for key in ("images", "categories") + (() if mode == "test" else ("annotations",)):
            if key not in data:
                raise InvalidInputError(f"{self.ann_file}: missing top-level key '{key}'")
            if not isinstance(data[key], list):
                raise InvalidInputError(f"{self.ann_file}: '{key}' must be a list")
        self._init_categories(data["categories"], class_names)

        images: dict[int, dict[str, Any]] = {}
        for i, img in enumerate(data["images"]):
            image_id = check_image(img, f"{self.ann_file}: images[{i}]")
            if image_id in images:
                raise InvalidInputError(f"{self.ann_file}: images[{i}]: duplicate image id "
                                        f"{image_id!r}")
            images[image_id] = img
        per_image = self._parse_annotations(data.get("annotations") or [], images)
        self._records: list[_Record] = []
        dropped_empty = dropped_small = 0
        for image_id, img in images.items():
            anns = per_image[image_id]
            h, w = int(img["height"]), int(img["width"])
            if self.filter_empty and not anns:
                dropped_empty += 1
                continue
            if mode != "test" and min(h, w) < min_size:
                dropped_small += 1
                continue
            self._records.append(self._make_record(image_id, img, anns))
        self._log_summary(name, dropped_empty, dropped_small)

    # ----------------------------------------------------------------------------- parsing
    def _parse_annotations(self, anns: list[Any], images: dict[int, dict[str, Any]]
                           ) -> dict[int, list[dict[str, Any]]]:
        """Validate every annotation, count the skipped ones, group the kept ones by image; sets
        :attr:`skipped`, :attr:`num_annotations` and :attr:`has_masks`."""
        self.skipped = dict.fromkeys(SKIP_REASONS, 0)
        self.num_annotations = len(anns)
        self.num_without_masks = 0
        per_image: dict[int, list[dict[str, Any]]] = {k: [] for k in images}
        seen_ids: dict[int, tuple[int, Any]] = {}
        for i, ann in enumerate(anns):
            where = f"{self.ann_file}: annotations[{i}]"
            require(ann, (), where)
            if "id" in ann:
                ann_id = int_value(ann, "id", where)
                where = f"{self.ann_file}: annotation {ann_id!r} (annotations[{i}])"
            require(ann, ("image_id", "category_id", "bbox"), where)
            if "id" in ann:
                if ann_id in seen_ids:
                    j, other_image = seen_ids[ann_id]
                    raise InvalidInputError(
                        f"{self.ann_file}: duplicate annotation id {ann_id!r}: annotations[{j}] "
                        f"(image_id {other_image!r}) and annotations[{i}] "
                        f"(image_id {ann['image_id']!r})")
                seen_ids[ann_id] = (i, ann["image_id"])
            if ann["category_id"] not in self._all_cat_ids:
                raise InvalidInputError(f"{where} has category_id {ann['category_id']!r}, "
                                        f"which is not in 'categories'")
            if ann["image_id"] not in images:
                raise InvalidInputError(
                    f"{where} refers to image_id {ann['image_id']!r}, not in 'images'")
            check_annotation_values(ann, where)
            img = images[ann["image_id"]]
            if self.mode != "box":
                problem = (segmentation_problem(ann["segmentation"], int(img["height"]),
                                                int(img["width"]))
                           if "segmentation" in ann else "missing")
                if problem is not None and self.mode == "full":
                    raise InvalidInputError(f"{where}: 'full' mode needs a valid 'segmentation' "
                                            f"(polygons or RLE), got {problem}")
                self.num_without_masks += problem is not None
            reason = self._skip_reason(ann, img, where)
            if reason is not None:
                self.skipped[reason] += 1
                continue
            per_image[ann["image_id"]].append(ann)
        return per_image

    @property
    def has_masks(self) -> bool:
        """Every annotation has a usable ``segmentation`` (``'full'``/``'test'`` mode; always
        False in ``'box'`` mode, which never reads them): segm AP can be computed."""
        return self.mode != "box" and self.num_annotations > 0 and self.num_without_masks == 0

    def _init_categories(self, cats: list[Any], class_names: Sequence[str] | None) -> None:
        by_id: dict[int, str] = {}
        for i, c in enumerate(cats):
            where = f"{self.ann_file}: categories[{i}]"
            require(c, ("id", "name"), where)
            cid = int_value(c, "id", where)
            if cid in by_id:
                raise InvalidInputError(f"{where}: duplicate category id {cid!r}")
            by_id[cid] = str(c["name"])
        if not by_id:
            raise InvalidInputError(f"{self.ann_file}: 'categories' is empty")
        self._all_cat_ids = set(by_id)
        if class_names is None:
            self.cat_ids = sorted(by_id)
        else:
            by_name: dict[str, int] = {}
            for cid, cname in by_id.items():
                if cname in by_name:
                    raise InvalidInputError(
                        f"{self.ann_file}: category name {cname!r} is not unique")
                by_name[cname] = cid
            unknown = [n for n in class_names if n not in by_name]
            if unknown:
                raise InvalidInputError(
                    f"{self.ann_file}: class name(s) {unknown} not among the categories "
                    f"{sorted(by_name)}"
                )
            if len(set(class_names)) != len(class_names):
                raise InvalidInputError(f"class_names has duplicates: {list(class_names)}")
            self.cat_ids = [by_name[n] for n in class_names]
        self.class_names = [by_id[c] for c in self.cat_ids]
        self.cat_id_to_label = {c: i for i, c in enumerate(self.cat_ids)}
        self.label_to_cat_id = dict(enumerate(self.cat_ids))

    def _skip_reason(self, ann: dict[str, Any], img: dict[str, Any], where: str) -> str | None:
        if ann.get("iscrowd", 0):
            return "crowd"
        if ann["category_id"] not in self.cat_id_to_label:
            return "other_class"
        if ann.get("ignore", False):
            return "ignore"
        bbox = ann["bbox"]
        if not isinstance(bbox, list | tuple) or len(bbox) != 4:
            raise InvalidInputError(f"{where}: 'bbox' must be [x, y, w, h], got {bbox!r}")
        if not all(is_number(v) for v in bbox):
            raise InvalidInputError(f"{where}: 'bbox' must hold numbers, got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            return "degenerate"
        inter_w = max(0.0, min(x + w, float(img["width"])) - max(x, 0.0))
        inter_h = max(0.0, min(y + h, float(img["height"])) - max(y, 0.0))
        if inter_w * inter_h == 0:
            return "outside"
        if "area" in ann and ann["area"] <= 0:
            return "zero_area"
        if w < 1 or h < 1:
            return "degenerate"
        return None

    def _make_record(self, image_id: int, img: dict[str, Any], anns: list[dict]) -> _Record:
        h, w = float(img["height"]), float(img["width"])
        boxes = np.zeros((len(anns), 4), dtype=np.float32)
        for i, ann in enumerate(anns):
            x, y, bw, bh = (float(v) for v in ann["bbox"])
            boxes[i] = (min(max(x, 0), w), min(max(y, 0), h), min(x + bw, w), min(y + bh, h))
        return _Record(
            image_id=image_id,
            path=self.image_dir / img["file_name"],
            height=int(img["height"]),
            width=int(img["width"]),
            boxes=boxes,
            labels=np.array([self.cat_id_to_label[a["category_id"]] for a in anns], np.int64),
            ann_ids=np.array([int(a.get("id", -1)) for a in anns], dtype=np.int64),
            segmentations=[a["segmentation"] for a in anns] if self.mode == "full" else None,
        )

    def _log_summary(self, name: str, dropped_empty: int, dropped_small: int) -> None:
        quiet = ("crowd", "other_class")
        problems = {k: v for k, v in self.skipped.items() if v and k not in quiet}
        if problems:
            detail = ", ".join(f"{v} {SKIP_REASONS[k]}" for k, v in problems.items())
            logger.warning("%s: skipped %d annotations (%s)", name, sum(problems.values()), detail)
        if self.skipped["crowd"] or self.skipped["other_class"]:
            logger.info(
                "%s: excluded %d crowd annotations and %d of classes not selected",
                name,
                self.skipped["crowd"],
                self.skipped["other_class"],
            )
        if dropped_empty or dropped_small:
            logger.info(
                "%s: %d images kept; dropped %d without usable annotations, %d smaller than %d px",
                name,
                len(self._records),
                dropped_empty,
                dropped_small,
                self.min_size,
            )

    # ----------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self._records)

    @property
    def image_ids(self) -> list[int]:
        return [r.image_id for r in self._records]

    @property
    def aspect_ratios(self) -> list[float]:
        """``w / h`` of each item, from the json (no image is read)."""
        return [r.width / r.height for r in self._records]

    @property
    def coco(self):
        """The ``pycocotools.coco.COCO`` ground truth of ``ann_file`` (built on first use).

        COCOeval needs an ``id`` and an ``area`` on every annotation; where the json omits
        them (box-only files often do), ids continue after the largest one and ``area`` is the
        box's ``w * h``, so that a valid json never fails inside pycocotools.
        """
        if self._coco is None:
            from pycocotools.coco import COCO

            data = load_coco_json(self.ann_file)
            anns = data.setdefault("annotations", [])
            next_id = max((a["id"] for a in anns if "id" in a), default=0) + 1
            for ann in anns:
                if "id" not in ann:
                    ann["id"], next_id = next_id, next_id + 1
                if "area" not in ann:
                    ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
            with contextlib.redirect_stdout(io.StringIO()):
                self._coco = COCO()
                self._coco.dataset = data
                self._coco.createIndex()
        return self._coco

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_coco"] = None  # do not ship the index to workers
        return state

    def instances(self, index: int) -> Instances:
        """Ground truth of item ``index`` in the original image frame (reads no image)."""
        r = self._records[index]
        masks = None
        if r.segmentations is not None:
            masks = torch.from_numpy(self._decode_masks(r))
        return Instances(
            boxes=torch.from_numpy(r.boxes.copy()),
            labels=torch.from_numpy(r.labels.copy()),
            masks=masks,
            ids=torch.from_numpy(r.ann_ids.copy()),
        )

    def _decode_masks(self, r: _Record) -> np.ndarray:
        out = np.zeros((len(r.segmentations), r.height, r.width), dtype=bool)
        for i, seg in enumerate(r.segmentations):
            try:
                out[i] = decode_segmentation(seg, r.height, r.width)
            except (TypeError, ValueError, KeyError, IndexError) as exc:
                raise InvalidInputError(
                    f"{self.ann_file}: annotation {int(r.ann_ids[i])}: cannot decode "
                    f"'segmentation' ({exc})"
                ) from None
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        r = self._records[index]
        image = read_image(r.path)
        if image.shape[:2] != (r.height, r.width):
            raise InvalidInputError(
                f"{r.path}: image is {image.shape[1]}x{image.shape[0]} but {self.ann_file} says "
                f"{r.width}x{r.height} (image id {r.image_id})"
            )
        sample = {
            "image": image,
            "instances": self.instances(index),
            "image_id": r.image_id,
            "file_name": str(r.path),
            "orig_size": (r.height, r.width),
        }
        return self.transforms(sample) if self.transforms is not None else sample

    def __repr__(self) -> str:
        return (
            f"CocoDataset({self.ann_file.name}, mode={self.mode!r}, {len(self)} images, "
            f"{len(self.cat_ids)} classes)"
        )
