"""COCO segm results -> the ``.mat`` file of the BBTP Matlab VOC evaluation.

Layout (docs/method.md §8.3, the official ``tools/json2mat.py``; read by BBTP's ``EvalBaseline.m``,
which walks the variables four at a time in file order): for the k-th image of the list
(1-based) that has detections, in list order,

- ``img_<k>_masks``: ``uint8[H, W, N]`` binary masks at the image's original size;
- ``img_<k>_scores``: ``float64[N]`` (a 1xN row in Matlab);
- ``img_<k>_labels``: ``int64[N]``, category ids, which must be the VOC class indices 1..20
  (with ``gt_json`` the ids are mapped to them by category name);
- ``img_<k>_name``: the string ``img_<k>``.

Images without detections get no variables (their count is logged). Detections of an image are
written by descending score.

Unlike the official script, nothing is hard-coded: the image list is an argument, and result
``image_id``s are mapped to file names through the gt json's ``images`` (or a ``file_name`` field
of every result, as ``discobox predict`` writes), then to list entries by file stem, so the ids
need not be 1..N in list order, and results need not be sorted. A result whose image is not in
the list is an error that names it. The file is written atomically (``scipy.io.savemat``, MAT v5,
compressed).
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from scipy.io import savemat

from ..checkpoint.io import atomic_write
from ..data.segmentation import decode_segmentation
from ..data.voc import VOC_CLASSES
from ..errors import InvalidInputError, MissingFileError

logger = logging.getLogger("discobox")
_MAX_LISTED = 10


def load_coco_json(path: Path) -> Any:
    if not path.is_file():
        raise MissingFileError(f"json not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{path}: invalid json ({exc})") from exc


def _listed(items: list[Any]) -> str:
    more = f" ... (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return ", ".join(str(i) for i in items[:_MAX_LISTED]) + more


def read_image_list(path: str | Path) -> list[str]:
    """File stems of an image list (first token per line; ``a/b/2007_000033.jpg`` ->
    ``2007_000033``)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"image list not found: {path}")
    stems = [Path(line.split()[0]).stem for line in path.read_text().splitlines() if line.strip()]
    dup = sorted(s for s, n in Counter(stems).items() if n > 1)
    if dup:
        raise InvalidInputError(f"{path}: duplicate entries {_listed(dup)}")
    return stems


def _id_maps(gt: dict[str, Any], gt_path: Path) -> tuple[dict[int, str], dict[int, int],
                                                         dict[int, tuple[int, int]]]:
    """``(image id -> stem, category id -> VOC index, image id -> (height, width))``."""
    try:
        stems = {int(im["id"]): Path(im["file_name"]).stem for im in gt["images"]}
        sizes = {int(im["id"]): (int(im["height"]), int(im["width"])) for im in gt["images"]
                 if "height" in im and "width" in im}
        cats = {int(c["id"]): c["name"] for c in gt.get("categories", [])}
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"{gt_path}: not a COCO gt json ({exc!r})") from exc
    unknown = sorted(n for n in cats.values() if n not in VOC_CLASSES)
    if unknown:
        raise InvalidInputError(f"{gt_path}: categories {_listed(unknown)} are not VOC classes")
    return stems, {cid: VOC_CLASSES.index(n) + 1 for cid, n in cats.items()}, sizes


def results_to_mat(
    results_json: str | Path,
    out_mat: str | Path,
    *,
    image_list: str | Path,
    gt_json: str | Path | None = None,
    compress: bool = True,
) -> dict[str, int]:
    """Write the BBTP ``.mat`` for a COCO segm results file (layout in the module docstring).

    Args:
        results_json: COCO results: a list of ``{image_id, category_id, score, segmentation}``
            with RLE masks (``discobox test --format-only --out``).
        out_mat: output ``.mat`` path.
        image_list: the evaluation list (``VOC2012/ImageSets/Segmentation/val.txt``).
        gt_json: the gt json whose ``images`` give each id's ``file_name`` (and size, checked);
            without it every result needs a ``file_name``.
        compress: zlib-compress the variables (Matlab reads both).

    Returns:
        ``{"images": list length, "with_detections": ..., "detections": ...}``.

    Raises:
        MissingFileError: a json or the image list does not exist.
        InvalidInputError: malformed results, ids unknown to the gt json, results of images that
            are not in the list (named), non-VOC categories, or masks of the wrong size.
    """
    results_json, out_mat = Path(results_json), Path(out_mat)
    results = load_coco_json(results_json)
    if not isinstance(results, list):
        raise InvalidInputError(f"{results_json}: expected a list of COCO results")
    stems = read_image_list(image_list)
    id_to_stem: dict[int, str] | None = None
    cat_map: dict[int, int] | None = None
    sizes: dict[int, tuple[int, int]] = {}
    if gt_json is not None:
        id_to_stem, cat_map, sizes = _id_maps(load_coco_json(Path(gt_json)), Path(gt_json))
    by_image = _group_by_list_position(results, results_json, stems=stems,
                                       id_to_stem=id_to_stem, image_list=image_list,
                                       gt_json=gt_json)
    variables: dict[str, Any] = {}
    detections = 0
    for k in sorted(by_image):
        entries = sorted(by_image[k], key=lambda r: -float(r["score"]))
        variables.update(_image_variables(k, entries, results_json, stem=stems[k - 1],
                                          sizes=sizes, cat_map=cat_map))
        detections += len(entries)
    _savemat_atomic(out_mat, variables, compress=compress)
    summary = {"images": len(stems), "with_detections": len(by_image), "detections": detections}
    logger.info("wrote %s: %d detections on %d of %d images (%d without detections)", out_mat,
                detections, len(by_image), len(stems), len(stems) - len(by_image))
    return summary


def _group_by_list_position(
    results: list[Any],
    results_json: Path,
    *,
    stems: list[str],
    id_to_stem: dict[int, str] | None,
    image_list: str | Path,
    gt_json: str | Path | None,
) -> dict[int, list[dict[str, Any]]]:
    """Results grouped by the 1-based position of their image in the list.

    An image is found through ``id_to_stem`` (the gt json) when given, else through the
    result's ``file_name``. Raises :class:`InvalidInputError` naming every unknown id and every
    image not in the list.
    """
    position = {s: k for k, s in enumerate(stems, start=1)}
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    not_listed: dict[str, None] = {}
    unknown_ids: dict[int, None] = {}
    for i, r in enumerate(results):
        if not isinstance(r, dict) or not {"image_id", "category_id", "score"} <= r.keys():
            raise InvalidInputError(f"{results_json}: entry {i} lacks image_id/category_id/score")
        if not isinstance(r.get("segmentation"), dict):
            raise InvalidInputError(f"{results_json}: entry {i} has no RLE 'segmentation' (a "
                                    "bbox results file? pass the segm one)")
        image_id = int(r["image_id"])
        if id_to_stem is not None:
            if image_id not in id_to_stem:
                unknown_ids[image_id] = None
                continue
            stem = id_to_stem[image_id]
        elif "file_name" in r:
            stem = Path(str(r["file_name"])).stem
        else:
            raise InvalidInputError(f"{results_json}: entry {i} has no file_name; pass --gt to "
                                    "map image ids to file names")
        if stem not in position:
            not_listed[stem] = None
            continue
        by_image[position[stem]].append(r)
    if unknown_ids:
        raise InvalidInputError(f"{results_json}: image ids not in {gt_json}: "
                                f"{_listed(list(unknown_ids))}")
    if not_listed:
        raise InvalidInputError(f"{results_json}: {len(not_listed)} result images are not in "
                                f"{image_list}: {_listed(list(not_listed))}")
    return by_image


def _image_variables(
    k: int,
    entries: list[dict[str, Any]],
    results_json: Path,
    *,
    stem: str,
    sizes: dict[int, tuple[int, int]],
    cat_map: dict[int, int] | None,
) -> dict[str, Any]:
    """The four ``img_<k>_*`` variables of one image's results (already sorted by score).

    Masks are decoded at their RLE size, which must be one size per image and, when the gt json
    records it, the image's; labels are mapped to VOC indices 1..20 through ``cat_map``.
    """
    masks = []
    for r in entries:
        seg = r["segmentation"]
        try:
            h, w = (int(v) for v in seg["size"])
            masks.append(decode_segmentation(seg, h, w).astype(np.uint8))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"{results_json}: bad RLE for {stem} ({exc})") from exc
    shapes = {m.shape for m in masks}
    if len(shapes) != 1:
        raise InvalidInputError(f"{results_json}: masks of {stem} differ in size: {shapes}")
    image_id = int(entries[0]["image_id"])
    if image_id in sizes and masks[0].shape != sizes[image_id]:
        raise InvalidInputError(f"{results_json}: masks of {stem} are {masks[0].shape}, "
                                f"the image is {sizes[image_id]}")
    labels = []
    for r in entries:
        cid = int(r["category_id"])
        label = cat_map.get(cid) if cat_map is not None else cid
        if label is None or not 1 <= label <= len(VOC_CLASSES):
            raise InvalidInputError(f"{results_json}: category_id {cid} of {stem} is not a VOC "
                                    "class index 1..20")
        labels.append(label)
    key = f"img_{k}"
    return {
        f"{key}_masks": np.stack(masks, axis=2).astype(np.uint8),
        f"{key}_scores": np.asarray([float(r["score"]) for r in entries], np.float64),
        f"{key}_labels": np.asarray(labels, dtype=np.int64),
        f"{key}_name": key,
    }


def _savemat_atomic(path: Path, variables: dict[str, Any], *, compress: bool) -> None:
    atomic_write(path, lambda fh: savemat(fh, variables, do_compression=compress,
                                          oned_as="row"))
