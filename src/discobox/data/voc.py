"""PASCAL VOC 2012 (+ SBD) instance annotations -> COCO-style jsons.

docs/method.md §8.3: the official VOC recipes train on ``voc_2012_train_aug_cocostyle.json``
(VOC2012 segmentation train + SBD train + SBD val, minus VOC2012 segmentation val: 10,582 images,
the set of BBTP) and evaluate on ``voc_2012_val_cocostyle.json`` (VOC2012 segmentation val, 1,449
images); the official repository has no script that builds them. This one does:

- classes: the 20 VOC classes in the standard order, category ids 1..20 (the BBTP Matlab
  evaluation reads json2mat labels as these indices);
- images: ``file_name`` ``<name>.jpg`` (relative to ``VOC2012/JPEGImages``), ids 1..N in list
  order (val: ``ImageSets/Segmentation/val.txt`` order, which is also what the official
  ``json2mat.py`` assumed; train_aug: sorted names);
- instances of a VOC segmentation image: ``SegmentationObject/<name>.png`` (palette PNG; pixel
  value k = the k-th object of ``Annotations/<name>.xml``, 255 = void/boundary, not part of any
  mask); class from ``SegmentationClass/<name>.png`` (majority over the instance's pixels; a
  disagreement with the XML is logged and the segmentation wins);
- instances of an SBD-only image: ``inst/<name>.mat`` (``GTinst.Segmentation``: instance map,
  ``GTinst.Categories``: class index 1..20 per instance); images in both sets use VOC's masks;
- ``bbox`` (``box_source="xml"``, default): the annotator's tight XML box, converted from VOC's
  1-based inclusive corners to COCO ``[x, y, w, h]`` (``x = xmin - 1``, ``w = xmax - xmin + 1``).
  VOC masks exclude a void band along object borders, so a box derived from them would be a few
  pixels too tight. SBD instances are not indexed like the XML: each takes the same-class XML box
  with the highest IoU with its mask's box (greedy, IoU >= 0.5), else its mask's box.
  ``box_source="mask"``: every box is the tight box of the mask;
- ``segmentation``: compressed RLE; ``area``: mask pixels; ``iscrowd`` 0; the XML ``difficult``
  flag is kept as an extra field. Instances whose mask is empty (all void) are skipped and counted.
"""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from scipy.io import loadmat

from ..checkpoint.io import atomic_write_text
from ..errors import InvalidInputError, MissingFileError

logger = logging.getLogger("discobox")

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
VOID = 255
TRAIN_AUG_JSON = "voc_2012_train_aug_cocostyle.json"
TRAIN_JSON = "voc_2012_train_cocostyle.json"  # VOC2012 segmentation train only (no SBD)
VAL_JSON = "voc_2012_val_cocostyle.json"
BOX_SOURCES = ("xml", "mask")


@dataclass
class XmlObject:
    """One ``<object>`` of a VOC annotation; ``box`` is COCO ``[x, y, w, h]``."""

    name: str
    box: list[float]
    difficult: int


@dataclass
class Instance:
    """One instance: 1-based VOC class, COCO box, RLE mask and its area, difficult flag."""

    category_id: int
    box: list[float]
    segmentation: dict[str, Any]
    area: int
    difficult: int = 0

    @classmethod
    def from_mask(cls, category_id: int, mask: np.ndarray, box: list[float],
                  difficult: int = 0) -> Instance:
        """Encode ``mask: bool[H, W]`` right away (a whole data set of masks would not fit)."""
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        return cls(category_id, box, rle, int(mask.sum()), difficult)


def find_voc2012(root: str | Path) -> Path:
    """``root`` may be ``VOCdevkit/VOC2012`` or ``VOCdevkit``; returns the ``VOC2012`` folder."""
    root = Path(root)
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "ImageSets" / "Segmentation").is_dir():
            return cand
    raise MissingFileError(
        f"{root}: not a VOC 2012 folder (no ImageSets/Segmentation in it or in VOC2012/)"
    )


def find_sbd(root: str | Path) -> Path:
    """``root`` may be SBD's ``benchmark_RELEASE`` or its ``dataset`` folder."""
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"SBD folder not found: {root}")
    for cand in (root, root / "dataset", root / "benchmark_RELEASE" / "dataset"):
        if (cand / "inst").is_dir():
            missing = [n for n in ("train.txt", "val.txt") if not (cand / n).is_file()]
            if missing:
                raise MissingFileError(f"SBD folder {cand} lacks {', '.join(missing)}")
            return cand
    raise MissingFileError(f"{root}: not an SBD folder (no inst/ in it or in dataset/)")


def read_list(path: Path) -> list[str]:
    """Image names of an ``ImageSets`` list (first token per non-empty line)."""
    if not path.is_file():
        raise MissingFileError(f"image list not found: {path}")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def voc_box(xmin: float, ymin: float, xmax: float, ymax: float) -> list[float]:
    """VOC 1-based inclusive corners -> COCO ``[x, y, w, h]``."""
    return [xmin - 1.0, ymin - 1.0, xmax - xmin + 1.0, ymax - ymin + 1.0]


def mask_box(mask: np.ndarray) -> list[float]:
    """Tight COCO box ``[x, y, w, h]`` of a non-empty ``bool[H, W]`` mask."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1)]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two COCO ``[x, y, w, h]`` boxes."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(iw, 0.0) * max(ih, 0.0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def parse_xml(path: Path) -> tuple[tuple[int, int] | None, list[XmlObject]]:
    """``((height, width) or None, objects in file order)`` of a VOC annotation."""
    if not path.is_file():
        raise MissingFileError(f"VOC annotation not found: {path}")
    try:
        root = ET.parse(path).getroot()
        size = root.find("size")
        hw = None
        if size is not None and size.findtext("height") and size.findtext("width"):
            hw = (int(float(size.findtext("height"))), int(float(size.findtext("width"))))
        objects = []
        for obj in root.findall("object"):
            bb = obj.find("bndbox")
            coords = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            objects.append(XmlObject(name=obj.findtext("name").strip(), box=voc_box(*coords),
                                     difficult=int(obj.findtext("difficult") or 0)))
    except (ET.ParseError, AttributeError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"{path}: malformed VOC annotation ({exc})") from exc
    return hw, objects


def read_index_png(path: Path) -> np.ndarray:
    """Palette (or grey) PNG -> ``uint8[H, W]`` of palette indices."""
    if not path.is_file():
        raise MissingFileError(f"segmentation PNG not found: {path}")
    with Image.open(path) as im:
        if im.mode not in ("P", "L"):
            raise InvalidInputError(
                f"{path}: expected a palette PNG of indices, got mode {im.mode}")
        return np.asarray(im, dtype=np.uint8).copy()


def read_sbd_inst(path: Path) -> tuple[np.ndarray, list[int]]:
    """SBD ``inst/<name>.mat`` -> ``(uint8[H, W] instance map, class index per instance)``."""
    if not path.is_file():
        raise MissingFileError(f"SBD instance file not found: {path}")
    try:
        gt = loadmat(str(path), squeeze_me=True, struct_as_record=False)["GTinst"]
        seg = np.asarray(gt.Segmentation, dtype=np.uint8)
        cats = [int(c) for c in np.atleast_1d(gt.Categories).ravel()]
    except Exception as exc:  # noqa: BLE001 - any malformed .mat
        raise InvalidInputError(f"{path}: not an SBD GTinst file ({exc})") from exc
    return seg, cats


def _category(name: str, where: Path) -> int:
    if name not in VOC_CLASSES:
        raise InvalidInputError(f"{where}: unknown VOC class {name!r}")
    return VOC_CLASSES.index(name) + 1


def voc_instances(voc: Path, name: str, *, box_source: str, stats: dict[str, int]) -> tuple[
    tuple[int, int], list[Instance]
]:
    """Instances of a VOC2012 segmentation image (see the module docstring)."""
    objs_png = read_index_png(voc / "SegmentationObject" / f"{name}.png")
    cls_png = read_index_png(voc / "SegmentationClass" / f"{name}.png")
    if objs_png.shape != cls_png.shape:
        raise InvalidInputError(f"{name}: SegmentationObject {objs_png.shape} and "
                                f"SegmentationClass {cls_png.shape} differ in size")
    xml_path = voc / "Annotations" / f"{name}.xml"
    hw, objects = parse_xml(xml_path)
    if hw is not None and hw != objs_png.shape:
        raise InvalidInputError(f"{xml_path}: size {hw} differs from its masks {objs_png.shape}")
    out = []
    for k in sorted(int(v) for v in np.unique(objs_png) if 0 < v < VOID):
        mask = objs_png == k
        classes, counts = np.unique(cls_png[mask], return_counts=True)
        valid = (classes > 0) & (classes <= len(VOC_CLASSES))
        if not valid.any():
            stats["no_class"] += 1
            continue
        cat = int(classes[valid][np.argmax(counts[valid])])
        obj = objects[k - 1] if k <= len(objects) else None
        if obj is not None and _category(obj.name, xml_path) != cat:
            stats["class_mismatch"] += 1
            logger.warning("%s: object %d is %r in the XML but %r in SegmentationClass; using "
                           "the segmentation", name, k, obj.name, VOC_CLASSES[cat - 1])
            obj = None
        if box_source == "xml" and obj is not None:
            box = obj.box
            stats["xml_boxes"] += 1
        else:
            box = mask_box(mask)
            stats["mask_boxes"] += 1
        out.append(Instance.from_mask(cat, mask, box, obj.difficult if obj is not None else 0))
    return objs_png.shape, out


def sbd_instances(sbd: Path, voc: Path, name: str, *, box_source: str,
                  stats: dict[str, int]) -> tuple[tuple[int, int], list[Instance]]:
    """Instances of an SBD image; boxes matched to the VOC XML (see the module docstring)."""
    seg, cats = read_sbd_inst(sbd / "inst" / f"{name}.mat")
    objects: list[XmlObject] = []
    xml_path = voc / "Annotations" / f"{name}.xml"
    if box_source == "xml":
        if xml_path.is_file():
            objects = parse_xml(xml_path)[1]
        else:
            stats["no_xml"] += 1
    used: set[int] = set()
    out = []
    for k, cat in enumerate(cats, start=1):
        mask = seg == k
        if not mask.any():
            stats["empty"] += 1
            continue
        if not 1 <= cat <= len(VOC_CLASSES):
            raise InvalidInputError(f"{sbd / 'inst' / name}.mat: instance {k} has class {cat}")
        mbox = mask_box(mask)
        best, best_iou = None, 0.5
        for j, obj in enumerate(objects):
            if j in used or _category(obj.name, xml_path) != cat:
                continue
            iou = box_iou(mbox, obj.box)
            if iou >= best_iou:
                best, best_iou = j, iou
        if best is not None:
            used.add(best)
            out.append(Instance.from_mask(cat, mask, objects[best].box, objects[best].difficult))
            stats["xml_boxes"] += 1
        else:
            out.append(Instance.from_mask(cat, mask, mbox))
            stats["mask_boxes"] += 1
    return seg.shape, out


def coco_dict(records: Sequence[tuple[str, tuple[int, int], list[Instance]]], *,
              description: str) -> dict[str, Any]:
    """COCO json of ``(name, (height, width), instances)`` records; image ids 1..N in order."""
    images, annotations = [], []
    for image_id, (name, (h, w), instances) in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": f"{name}.jpg", "height": int(h),
                       "width": int(w)})
        for inst in instances:
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": inst.category_id,
                "bbox": [round(float(v), 2) for v in inst.box],
                "area": inst.area,
                "segmentation": inst.segmentation,
                "iscrowd": 0,
                "difficult": int(inst.difficult),
            })
    categories = [{"id": i + 1, "name": n, "supercategory": "none"}
                  for i, n in enumerate(VOC_CLASSES)]
    return {"info": {"description": description}, "images": images,
            "annotations": annotations, "categories": categories}


def convert_voc(
    *,
    voc_root: str | Path,
    out_dir: str | Path,
    sbd_root: str | Path | None = None,
    box_source: str = "xml",
) -> dict[str, Path]:
    """Write the train (train_aug with SBD) and val COCO-style jsons into ``out_dir``.

    Args:
        voc_root: ``VOCdevkit`` or ``VOCdevkit/VOC2012``.
        out_dir: output folder.
        sbd_root: SBD ``benchmark_RELEASE`` (or its ``dataset``); ``None``: train is VOC2012
            segmentation train only, written as :data:`TRAIN_JSON` (logged).
        box_source: ``"xml"`` (annotated boxes) or ``"mask"`` (tight mask boxes).

    Returns:
        ``{"train": path, "val": path}``.
    """
    if box_source not in BOX_SOURCES:
        raise InvalidInputError(f"box_source must be one of {BOX_SOURCES}, got {box_source!r}")
    voc = find_voc2012(voc_root)
    sets = voc / "ImageSets" / "Segmentation"
    voc_train, voc_val = read_list(sets / "train.txt"), read_list(sets / "val.txt")
    val_set, voc_train_set = set(voc_val), set(voc_train)
    stats = {k: 0 for k in ("xml_boxes", "mask_boxes", "class_mismatch", "no_class", "empty",
                            "no_xml")}
    sbd = find_sbd(sbd_root) if sbd_root is not None else None
    if sbd is None:
        train_names, train_file = sorted(voc_train_set - val_set), TRAIN_JSON
        logger.warning("no --sbd-root: the train json holds VOC2012 segmentation train only "
                       "(%d images), not train_aug; written as %s", len(train_names), TRAIN_JSON)
    else:
        sbd_names = set(read_list(sbd / "train.txt")) | set(read_list(sbd / "val.txt"))
        train_names = sorted((voc_train_set | sbd_names) - val_set)
        train_file = TRAIN_AUG_JSON
        logger.info("train_aug: %d VOC2012 seg train + SBD train/val images minus %d VOC2012 "
                    "val = %d images", len(voc_train_set), len(val_set), len(train_names))
    out_dir = Path(out_dir)
    written = {}
    for split, names, file in (("train", train_names, train_file), ("val", voc_val, VAL_JSON)):
        records = []
        for name in names:
            if name in voc_train_set or split == "val":
                size, inst = voc_instances(voc, name, box_source=box_source, stats=stats)
            else:
                size, inst = sbd_instances(sbd, voc, name, box_source=box_source, stats=stats)
            records.append((name, size, inst))
        desc = (f"PASCAL VOC 2012 {split}"
                + (" (train_aug: VOC2012 seg train + SBD train/val - VOC2012 seg val)"
                   if file == TRAIN_AUG_JSON else "")
                + f"; boxes from {box_source}")
        data = coco_dict(records, description=desc)
        written[split] = atomic_write_text(json.dumps(data), out_dir / file)
        logger.info("wrote %s: %d images, %d instances", written[split], len(data["images"]),
                    len(data["annotations"]))
    logger.info("boxes: %d from XML, %d from masks; %d class disagreements, %d instances "
                "without class, %d empty SBD instances, %d SBD images without XML",
                stats["xml_boxes"], stats["mask_boxes"], stats["class_mismatch"],
                stats["no_class"], stats["empty"], stats["no_xml"])
    return written
