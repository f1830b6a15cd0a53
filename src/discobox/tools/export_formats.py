"""COCO masks -> COCO RLE, COCO polygons, YOLO-seg txt (+ data.yaml) and LabelMe json.

Input is any COCO json: a dataset (``images``, ``categories``, ``annotations``) or a results
list (predictions, pseudo-labels), whose images and categories come from a ground-truth json, or
else from the results' own ``file_name`` / ``category_name`` keys and RLE ``size``.
Segmentations may be RLE, polygons or absent (the box is used).

Converters are written here on cv2 + pycocotools rather than taken from ``supervision``: its
dataset converters need PyAV, matplotlib and requests and the image files themselves, while
these need only the json (``--images`` is used for paths, and for sizes when the json lacks
them).

Polygons: ``cv2.findContours`` outer contours (``RETR_EXTERNAL``) of the decoded mask,
simplified by Douglas-Peucker within ``POLY_EPS`` = 1 px. YOLO-seg and LabelMe get the contour
through the boundary pixels (their readers fill polygons with ``cv2.fillPoly`` / PIL, which
include those pixels); COCO polygons get the outline of those pixels' outer edges
(:func:`to_coco_frame`), which pycocotools' rasteriser needs to keep them. Holes cannot be
stored by COCO polygons, YOLO-seg or LabelMe polygons, so they are filled there (the RLE output
keeps them). A mask in several parts is a list of polygons (COCO), one line joined by zero-width
bridges (YOLO-seg, as Ultralytics' converter does) or one shape per part sharing a ``group_id``
(LabelMe).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from pycocotools import mask as mask_utils

from ..data.coco_results import encode_mask
from ..errors import InvalidInputError, MissingFileError

FORMATS = ("coco-rle", "coco-polygon", "yolo", "labelme")
POLY_EPS = 1.0


@dataclass
class CocoSet:
    """A COCO json in one shape: image entries by id, categories sorted by id, annotations.

    ``images[id]`` has ``file_name``, ``height``, ``width``; each annotation has ``image_id``,
    ``category_id``, ``bbox`` and, where the input had them, ``segmentation`` and ``score``.
    """

    images: dict[int, dict[str, Any]]
    categories: list[dict[str, Any]]
    annotations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def has_scores(self) -> bool:
        return any("score" in a for a in self.annotations)

    def class_index(self) -> dict[int, int]:
        """Category id -> contiguous 0-based index (categories in id order)."""
        return {int(c["id"]): i for i, c in enumerate(self.categories)}

    def by_image(self) -> dict[int, list[dict[str, Any]]]:
        out: dict[int, list[dict[str, Any]]] = {i: [] for i in self.images}
        for a in self.annotations:
            out.setdefault(int(a["image_id"]), []).append(a)
        return out


def _read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"json file not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{path}: not valid json ({exc})") from None


def _image_size(entry: dict[str, Any], images_dir: str | Path | None) -> tuple[int, int] | None:
    if entry.get("height") and entry.get("width"):
        return int(entry["height"]), int(entry["width"])
    if images_dir is not None and (Path(images_dir) / entry["file_name"]).is_file():
        im = cv2.imread(str(Path(images_dir) / entry["file_name"]), cv2.IMREAD_UNCHANGED)
        if im is not None:
            return int(im.shape[0]), int(im.shape[1])
    return None


def load_coco(path: str | Path, gt: str | Path | None = None,
              images_dir: str | Path | None = None) -> CocoSet:
    """Read a COCO dataset json or results list (see the module docstring) into a CocoSet.

    Raises:
        MissingFileError / InvalidInputError: a json is missing or malformed, or an image's
            size cannot be found (no ``height``/``width``, no RLE ``size``, no image file).
    """
    data = _read_json(path)
    if isinstance(data, dict) and "annotations" in data:
        images = {int(i["id"]): dict(i) for i in data.get("images", [])}
        cats, anns = list(data.get("categories", [])), list(data["annotations"])
    elif isinstance(data, list):
        anns, images, cats = list(data), {}, []
        if gt is not None:
            g = _read_json(gt)
            images = {int(i["id"]): dict(i) for i in g.get("images", [])}
            cats = list(g.get("categories", []))
    else:
        raise InvalidInputError(f"{path}: neither a COCO dataset (dict with 'annotations') "
                                "nor a COCO results list")
    known = {int(c["id"]) for c in cats}
    for a in anns:
        cid, iid = int(a["category_id"]), int(a["image_id"])
        if cid not in known:
            cats.append({"id": cid, "name": str(a.get("category_name", cid))})
            known.add(cid)
        entry = images.setdefault(iid, {"id": iid, "file_name": a.get("file_name", f"{iid}.jpg")})
        seg = a.get("segmentation")
        if isinstance(seg, dict) and "size" in seg and not entry.get("height"):
            entry["height"], entry["width"] = (int(v) for v in seg["size"])
    for entry in images.values():
        hw = _image_size(entry, images_dir)
        if hw is None:
            raise InvalidInputError(f"{path}: no size for image {entry['file_name']!r} (give "
                                    "--gt with image sizes or --images with the files)")
        entry["height"], entry["width"] = hw
    for a in anns:
        if "bbox" not in a:
            if not a.get("segmentation"):
                raise InvalidInputError(f"{path}: an annotation has neither bbox nor segmentation")
            im = images[int(a["image_id"])]
            a["bbox"] = [float(v) for v in mask_utils.toBbox(_rle(a, im["height"], im["width"]))]
    cats.sort(key=lambda c: int(c["id"]))
    return CocoSet(images=images, categories=cats, annotations=anns)


def _rle(ann: dict[str, Any], h: int, w: int) -> dict[str, Any]:
    seg = ann.get("segmentation")
    if not seg:  # box only: the box is the mask
        x, y, bw, bh = ann["bbox"]
        seg = [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    if isinstance(seg.get("counts"), list):
        return mask_utils.frPyObjects(seg, h, w)
    return {"size": seg["size"], "counts": seg["counts"]}


def ann_mask(ann: dict[str, Any], h: int, w: int) -> np.ndarray:
    """``bool[H, W]`` mask of one annotation (RLE, polygons, or its box when it has neither)."""
    return mask_utils.decode(_rle(ann, h, w)).astype(bool)


def mask_to_polygons(mask: np.ndarray, eps: float = POLY_EPS) -> list[np.ndarray]:
    """Outer contours of ``mask`` as ``float[K, 2]`` xy polygons (>= 3 points), largest first.

    Holes are filled (outer contours only); each part is simplified within ``eps`` px.
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    polys = [cv2.approxPolyDP(c, eps, True)[:, 0, :].astype(np.float64) for c in contours]
    polys = [p for p in polys if len(p) >= 3]
    return sorted(polys, key=lambda p: -abs(cv2.contourArea(p.astype(np.float32))))


def to_coco_frame(poly: np.ndarray, d: float = 0.5) -> np.ndarray:
    """A contour through boundary-pixel indices -> the polygon around those pixels' outer edges
    (COCO frame: pixel ``i`` spans ``[i, i+1)``), so pycocotools re-rasterises the boundary
    pixels: shift by half a pixel, then move each vertex ``d`` px outward (mitred)."""
    prev, nxt = np.roll(poly, 1, axis=0), np.roll(poly, -1, axis=0)

    def normals(e: np.ndarray) -> np.ndarray:
        n = np.stack([e[:, 1], -e[:, 0]], axis=1)
        return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)

    n1, n2 = normals(poly - prev), normals(nxt - poly)
    off = d * (n1 + n2) / np.maximum(1 + (n1 * n2).sum(1, keepdims=True), 0.5)
    a, b = poly + 0.5 + off, poly + 0.5 - off
    return a if abs(cv2.contourArea(a.astype(np.float32))) >= abs(
        cv2.contourArea(b.astype(np.float32))) else b


def polygons_to_mask(polys: list[np.ndarray], h: int, w: int) -> np.ndarray:
    """Rasterise xy polygons (pixel units) to ``bool[H, W]``, as a reader of these files would."""
    out = np.zeros((h, w), np.uint8)
    cv2.fillPoly(out, [np.round(p).astype(np.int32).reshape(-1, 1, 2) for p in polys], 1)
    return out.astype(bool)


def join_polygons(polys: list[np.ndarray]) -> np.ndarray:
    """One polygon from several: each part is entered and left through its point nearest to
    the polygon so far (a zero-width bridge), for one-polygon-per-instance formats."""
    merged = polys[0]
    for p in polys[1:]:
        d = ((merged[:, None, :] - p[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(d.argmin()), d.shape)
        loop = np.concatenate([np.roll(p, -j, axis=0), p[j:j + 1]])
        merged = np.concatenate([merged[: i + 1], loop, merged[i:]])
    return merged


def _dataset_json(cs: CocoSet, polygons: bool) -> dict[str, Any]:
    anns = []
    for k, a in enumerate(cs.annotations, start=1):
        im = cs.images[int(a["image_id"])]
        m = ann_mask(a, im["height"], im["width"])
        seg = ([[round(float(v), 2) for v in to_coco_frame(p).ravel()]
                for p in mask_to_polygons(m)]
               if polygons else encode_mask(m))
        out = {"id": int(a.get("id", k)), "image_id": int(a["image_id"]),
               "category_id": int(a["category_id"]), "bbox": [float(v) for v in a["bbox"]],
               "area": int(m.sum()), "iscrowd": int(a.get("iscrowd", 0)), "segmentation": seg}
        if "score" in a:
            out["score"] = float(a["score"])
        anns.append(out)
    images = [{k: im[k] for k in ("id", "file_name", "height", "width")}
              for im in sorted(cs.images.values(), key=lambda e: e["id"])]
    cats = [{"id": int(c["id"]), "name": str(c.get("name", c["id"]))} for c in cs.categories]
    return {"images": images, "categories": cats, "annotations": anns}


def _write_yolo(cs: CocoSet, out: Path, images_dir: str | Path | None) -> list[Path]:
    labels = out / "labels"
    labels.mkdir(parents=True, exist_ok=True)
    index, written = cs.class_index(), []
    for iid, anns in sorted(cs.by_image().items()):
        im = cs.images[iid]
        h, w = im["height"], im["width"]
        lines = []
        for a in anns:
            polys = mask_to_polygons(ann_mask(a, h, w))
            if not polys:
                continue
            p = join_polygons(polys) / np.array([w, h], np.float64)
            coords = " ".join(f"{v:.6f}" for v in np.clip(p, 0, 1).ravel())
            lines.append(f"{index[int(a['category_id'])]} {coords}")
        path = labels / (Path(im["file_name"]).stem + ".txt")
        path.write_text("".join(line + "\n" for line in lines))
        written.append(path)
    images = str(Path(images_dir).resolve()) if images_dir is not None else "images"
    data = {"path": str(out.resolve()), "train": images, "val": images,
            "nc": len(cs.categories),
            "names": {i: str(c.get("name", c["id"])) for i, c in enumerate(cs.categories)}}
    header = ("# YOLO-seg dataset written by `discobox export`. Ultralytics finds each image's\n"
              "# labels by replacing the last 'images' directory of its path with 'labels':\n"
              "# place the images in <path>/images (or the labels beside the images).\n")
    (out / "data.yaml").write_text(header + yaml.safe_dump(data, sort_keys=False))
    return [*written, out / "data.yaml"]


def _write_labelme(cs: CocoSet, out: Path, images_dir: str | Path | None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    names, written = {int(c["id"]): str(c.get("name", c["id"])) for c in cs.categories}, []
    for iid, anns in sorted(cs.by_image().items()):
        im = cs.images[iid]
        shapes = []
        for g, a in enumerate(anns):
            for p in mask_to_polygons(ann_mask(a, im["height"], im["width"])):
                shape = {"label": names[int(a["category_id"])], "points": p.tolist(),
                         "group_id": g, "description": "", "shape_type": "polygon", "flags": {}}
                if "score" in a:
                    shape["description"] = f"score={float(a['score']):.4f}"
                shapes.append(shape)
        image_path = (os.path.relpath(Path(images_dir) / im["file_name"], out)
                      if images_dir is not None else im["file_name"])
        doc = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": image_path,
               "imageData": None, "imageHeight": im["height"], "imageWidth": im["width"]}
        path = out / (Path(im["file_name"]).stem + ".json")
        path.write_text(json.dumps(doc, indent=1))
        written.append(path)
    return written


def export(in_json: str | Path, fmt: str, out_dir: str | Path, *,
           images_dir: str | Path | None = None, gt: str | Path | None = None) -> list[Path]:
    """Write ``in_json``'s masks in format ``fmt`` under ``out_dir``; return the files written.

    ``coco-rle`` / ``coco-polygon``: ``out_dir/annotations.json``, a COCO dataset (``score``
    kept on annotations that had one). ``yolo``: ``out_dir/labels/<stem>.txt`` (``class x1 y1
    ...`` normalised to [0, 1], class = index of the category in id order) and
    ``out_dir/data.yaml``. ``labelme``: ``out_dir/<stem>.json`` per image.

    Raises:
        InvalidInputError: unknown ``fmt``, or see :func:`load_coco`.
    """
    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    cs = load_coco(in_json, gt=gt, images_dir=images_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "yolo":
        return _write_yolo(cs, out, images_dir)
    if fmt == "labelme":
        return _write_labelme(cs, out, images_dir)
    path = out / "annotations.json"
    path.write_text(json.dumps(_dataset_json(cs, polygons=fmt == "coco-polygon")))
    return [path]


def read_yolo_polygons(path: str | Path, h: int, w: int) -> list[tuple[int, np.ndarray]]:
    """A YOLO-seg txt back to ``(class_index, float[K, 2] xy pixel polygon)`` per line."""
    out = []
    for line in Path(path).read_text().splitlines():
        vals = line.split()
        if vals:
            pts = np.array(vals[1:], np.float64).reshape(-1, 2) * np.array([w, h])
            out.append((int(vals[0]), pts))
    return out


def read_labelme_masks(path: str | Path) -> list[tuple[str, np.ndarray]]:
    """A LabelMe json back to ``(label, bool[H, W])`` per instance (shapes grouped by
    ``group_id``; shapes without one are instances of their own)."""
    doc = json.loads(Path(path).read_text())
    h, w = doc["imageHeight"], doc["imageWidth"]
    groups: dict[Any, tuple[str, list[np.ndarray]]] = {}
    for k, s in enumerate(doc["shapes"]):
        key = s.get("group_id") if s.get("group_id") is not None else f"single{k}"
        groups.setdefault(key, (s["label"], []))[1].append(np.asarray(s["points"], np.float64))
    return [(label, polygons_to_mask(polys, h, w)) for label, polys in groups.values()]
