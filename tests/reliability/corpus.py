"""A corpus of broken (and oddly-formed but fine) COCO inputs, made from the tiny synthetic set.

Each :class:`Case` writes one variant of a base COCO set (``train.json`` or ``val.json`` with
its ``images`` folder) into its own folder and says what each verb must do with it:

- ``error``: exit 2 with a one-line message that names the file (the json, or the image file)
  and contains ``match`` (the key or the problem);
- ``skip``: success, and the log says ``match`` (a count of what was skipped, or why segm AP is
  not reported);
- ``ok``: success; the input is fine (e.g. a grayscale PNG).

Verbs: ``train`` (box-supervised training set: json parsing and every image read), ``train_full``
(the same in ``loss.mode=full``, which decodes masks) and ``test`` (``discobox test`` on the
json as ``data.val_json``), ``pseudo_label`` (the json as ``--boxes``, see
:data:`PSEUDO_LABEL`) and ``predict`` (broken input files, in test_bad_inputs_cli.py).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

VERBS = ("train", "train_full", "test", "pseudo_label", "predict")
OUTCOMES: dict[tuple[str, str], str] = {}  # (case, verb) -> observed outcome, for the table


@dataclass(frozen=True)
class Expect:
    outcome: str  # "error" | "skip" | "ok"
    match: str = ""


@dataclass
class Built:
    """A case written to disk: the json and image folder to use, and the path an error names."""

    json_path: Path
    image_dir: Path
    named: str


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path, Path, Path], Built]  # (case_dir, base_json, base_images) -> Built
    expect: dict[str, Expect] = field(default_factory=dict)  # per verb; "*" is the default

    def expected(self, verb: str) -> Expect:
        return self.expect.get(verb, self.expect.get("*", Expect("ok")))


# ------------------------------------------------------------------------------------ builders
def _json_case(mutate: Callable[[dict[str, Any]], Any]) -> Callable[[Path, Path, Path], Built]:
    """A case that edits the parsed json (``mutate`` changes ``data`` in place)."""

    def build(case_dir: Path, base_json: Path, base_images: Path) -> Built:
        data = json.loads(base_json.read_text())
        mutate(data)
        path = case_dir / base_json.name
        path.write_text(json.dumps(data))  # NaN is written as NaN, as Python's json reads it
        return Built(path, base_images, str(path))

    return build


def _raw_case(content: bytes | None, *, directory: bool = False):
    """A case whose json file is ``content`` (``None``: no file; ``directory``: a folder)."""

    def build(case_dir: Path, base_json: Path, base_images: Path) -> Built:
        path = case_dir / base_json.name
        if directory:
            path.mkdir()
        elif content is not None:
            path.write_bytes(content)
        return Built(path, base_images, str(path))

    return build


def _image_case(change: Callable[[Path], None]):
    """A case that copies the image folder and changes the first image of the json with
    ``change(path)``; an error must name that image file."""

    def build(case_dir: Path, base_json: Path, base_images: Path) -> Built:
        images = case_dir / "images"
        shutil.copytree(base_images, images)
        data = json.loads(base_json.read_text())
        target = images / data["images"][0]["file_name"]
        change(target)
        path = case_dir / base_json.name
        path.write_text(json.dumps(data))
        return Built(path, images, str(target))

    return build


def _missing_image_dir(case_dir: Path, base_json: Path, base_images: Path) -> Built:
    path = case_dir / base_json.name
    shutil.copy(base_json, path)
    return Built(path, case_dir / "no_such_images", str(case_dir / "no_such_images"))


# ----------------------------------------------------------------------------------- mutations
def _set(section: str, key: str, value: Any, index: int = 0):
    def mutate(d: dict[str, Any]) -> None:
        d[section][index][key] = value
    return mutate


def _delete(section: str, key: str, index: int = 0, every: bool = False):
    def mutate(d: dict[str, Any]) -> None:
        for entry in d[section] if every else [d[section][index]]:
            entry.pop(key, None)
    return mutate


def _top(key: str, value: Any = None, delete: bool = False):
    def mutate(d: dict[str, Any]) -> None:
        if delete:
            del d[key]
        else:
            d[key] = value
    return mutate


def _duplicate_image_id(d):
    d["images"][1]["id"] = d["images"][0]["id"]


def _duplicate_ann_id(d):
    d["annotations"][1]["id"] = d["annotations"][0]["id"]


def _string_image_ids(d):
    for img in d["images"]:
        img["id"] = f"img{img['id']}"
    for ann in d["annotations"]:
        ann["image_id"] = f"img{ann['image_id']}"


def _string_category_ids(d):
    for c in d["categories"]:
        c["id"] = str(c["id"])
    for ann in d["annotations"]:
        ann["category_id"] = str(ann["category_id"])


def _first_segmentation_only_removed(d):
    d["annotations"][0].pop("segmentation")


def _edit_image(fn: Callable[[np.ndarray], np.ndarray], ext: str = ".png"):
    def change(path: Path) -> None:
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        ok, buf = cv2.imencode(ext, fn(img))
        assert ok
        path.write_bytes(buf.tobytes())
    return change


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ------------------------------------------------------------------------------------ the cases
def _e(match: str) -> Expect:
    return Expect("error", match)


OK = Expect("ok")
BBOX_ONLY = Expect("skip", "reporting bbox AP only")


def cases() -> list[Case]:
    """Every case of the corpus (at least 40 kinds)."""
    no_anns = _e("no annotations to evaluate against")
    no_train = _e("no training images with usable annotations")
    return [
        # ----- the file itself
        Case("missing_file", _raw_case(None), {"*": _e("annotation file not found")}),
        Case("empty_file", _raw_case(b""), {"*": _e("annotation file is empty")}),
        Case("not_json", _raw_case(b'{"images": ['), {"*": _e("invalid json")}),
        Case("json_list", _raw_case(b"[]"), {"*": _e("expected a COCO json object")}),
        Case("json_null", _raw_case(b"null"), {"*": _e("expected a COCO json object")}),
        Case("binary_file", _raw_case(b"\x89PNG\xff\xfe\x00garbage"), {"*": _e("not UTF-8")}),
        Case("json_is_directory", _raw_case(None, directory=True), {"*": _e("cannot read")}),
        # ----- top-level keys
        Case("no_images_key", _json_case(_top("images", delete=True)),
             {"*": _e("missing top-level key 'images'")}),
        Case("no_annotations_key", _json_case(_top("annotations", delete=True)),
             {"*": _e("missing top-level key 'annotations'"), "test": no_anns}),
        Case("no_categories_key", _json_case(_top("categories", delete=True)),
             {"*": _e("missing top-level key 'categories'")}),
        Case("images_not_list", _json_case(_top("images", {})),
             {"*": _e("'images' must be a list")}),
        Case("empty_annotations", _json_case(_top("annotations", [])),
             {"*": no_train, "test": no_anns}),
        Case("zero_categories", _json_case(_top("categories", [])),
             {"*": _e("'categories' is empty")}),
        Case("empty_images", _json_case(_top("images", [])), {"*": _e("not in 'images'")}),
        # ----- images entries
        Case("image_not_object", _json_case(lambda d: d["images"].__setitem__(0, 7)),
             {"*": _e("images[0]: expected an object")}),
        Case("image_without_id", _json_case(_delete("images", "id")),
             {"*": _e("missing key(s) ['id']")}),
        Case("image_without_width", _json_case(_delete("images", "width")),
             {"*": _e("missing key(s) ['width']")}),
        Case("image_without_file_name", _json_case(_delete("images", "file_name")),
             {"*": _e("missing key(s) ['file_name']")}),
        Case("width_abc", _json_case(_set("images", "width", "abc")),
             {"*": _e("'width' must be a positive integer, got 'abc'")}),
        Case("width_negative", _json_case(_set("images", "width", -96)),
             {"*": _e("'width' must be a positive integer, got -96")}),
        Case("height_zero", _json_case(_set("images", "height", 0)),
             {"*": _e("'height' must be a positive integer, got 0")}),
        Case("file_name_null", _json_case(_set("images", "file_name", None)),
             {"*": _e("'file_name' must be a non-empty string")}),
        Case("duplicate_image_ids", _json_case(_duplicate_image_id),
             {"*": _e("duplicate image id")}),
        Case("string_image_ids", _json_case(_string_image_ids),
             {"*": _e("'id' must be an integer, got 'img")}),
        # ----- annotations
        Case("annotation_not_object", _json_case(lambda d: d["annotations"].__setitem__(0, "x")),
             {"*": _e("annotations[0]: expected an object")}),
        Case("duplicate_annotation_ids", _json_case(_duplicate_ann_id),
             {"*": _e("duplicate annotation id")}),
        Case("string_annotation_id", _json_case(_set("annotations", "id", "a1")),
             {"*": _e("'id' must be an integer, got 'a1'")}),
        Case("unknown_image_id", _json_case(_set("annotations", "image_id", 12345)),
             {"*": _e("refers to image_id 12345, not in 'images'")}),
        Case("unknown_category_id", _json_case(_set("annotations", "category_id", 99)),
             {"*": _e("category_id 99, which is not in 'categories'")}),
        Case("string_category_id", _json_case(_set("annotations", "category_id", "6")),
             {"*": _e("category_id '6', which is not in 'categories'")}),
        Case("bbox_missing", _json_case(_delete("annotations", "bbox")),
             {"*": _e("missing key(s) ['bbox']")}),
        Case("bbox_short", _json_case(_set("annotations", "bbox", [1, 2, 3])),
             {"*": _e("'bbox' must be [x, y, w, h]")}),
        Case("bbox_strings", _json_case(_set("annotations", "bbox", ["1", "2", "30", "30"])),
             {"*": _e("'bbox' must hold numbers")}),
        Case("bbox_nan", _json_case(_set("annotations", "bbox", [1, 2, math.nan, 30])),
             {"*": Expect("skip", "skipped 1 annotations (1 degenerate boxes)")}),
        Case("bbox_negative_size", _json_case(_set("annotations", "bbox", [40, 40, -10, 20])),
             {"*": Expect("skip", "skipped 1 annotations (1 outside image)")}),
        Case("bbox_outside_image", _json_case(_set("annotations", "bbox", [500, 500, 10, 10])),
             {"*": Expect("skip", "skipped 1 annotations (1 outside image)")}),
        Case("bbox_tiny", _json_case(_set("annotations", "bbox", [10, 10, 0.5, 20])),
             {"*": Expect("skip", "skipped 1 annotations (1 degenerate boxes)")}),
        Case("area_big", _json_case(_set("annotations", "area", "big")),
             {"*": _e("'area' must be a number, got 'big'")}),
        Case("area_negative", _json_case(_set("annotations", "area", -5)),
             {"*": Expect("skip", "skipped 1 annotations (1 area <= 0)")}),
        Case("iscrowd_yes", _json_case(_set("annotations", "iscrowd", "yes")),
             {"*": _e("'iscrowd' must be 0 or 1, got 'yes'")}),
        Case("iscrowd_2", _json_case(_set("annotations", "iscrowd", 2)),
             {"*": _e("'iscrowd' must be 0 or 1, got 2")}),
        Case("no_area_anywhere", _json_case(_delete("annotations", "area", every=True))),
        Case("no_annotation_ids", _json_case(_delete("annotations", "id", every=True))),
        # ----- segmentations
        Case("segmentation_garbage", _json_case(_set("annotations", "segmentation", "garbage")),
             {"train_full": _e("'full' mode needs a valid 'segmentation'"), "test": BBOX_ONLY}),
        Case("segmentation_odd_polygon",
             _json_case(_set("annotations", "segmentation", [[1, 2, 3, 4, 5]])),
             {"train_full": _e("'full' mode needs a valid 'segmentation'"), "test": BBOX_ONLY}),
        Case("rle_wrong_size",
             _json_case(_set("annotations", "segmentation", {"size": [5, 5], "counts": "a"})),
             {"train_full": _e("RLE size [5, 5] != image size"), "test": BBOX_ONLY}),
        Case("boxes_only", _json_case(_delete("annotations", "segmentation", every=True)),
             {"train_full": _e("'full' mode needs a valid 'segmentation'"), "test": BBOX_ONLY}),
        Case("some_masks_missing", _json_case(_first_segmentation_only_removed),
             {"train_full": _e("'full' mode needs a valid 'segmentation'"), "test": BBOX_ONLY}),
        # ----- categories
        Case("category_without_name", _json_case(_delete("categories", "name")),
             {"*": _e("missing key(s) ['name']")}),
        Case("duplicate_category_ids", _json_case(_set("categories", "id", 2)),
             {"*": _e("duplicate category id 2")}),
        Case("string_category_ids", _json_case(_string_category_ids),
             {"*": _e("'id' must be an integer, got '1'")}),
        # ----- image files
        Case("image_file_missing", _image_case(lambda p: p.unlink()),
             {"*": _e("image file not found")}),
        Case("image_zero_bytes", _image_case(lambda p: p.write_bytes(b"")),
             {"*": _e("cannot decode image")}),
        Case("image_truncated", _image_case(_truncate), {"*": _e("cannot decode image")}),
        Case("image_not_an_image", _image_case(lambda p: p.write_text("hello")),
             {"*": _e("cannot decode image")}),
        Case("image_is_directory", _image_case(lambda p: (p.unlink(), p.mkdir())),
             {"*": _e("cannot read image file")}),
        Case("image_smaller_than_json", _image_case(_edit_image(lambda im: im[:48, :48])),
             {"*": _e("image is 48x48 but")}),
        Case("image_grayscale",
             _image_case(_edit_image(lambda im: cv2.cvtColor(im, cv2.COLOR_BGR2GRAY)))),
        Case("image_rgba",
             _image_case(_edit_image(lambda im: cv2.cvtColor(im, cv2.COLOR_BGR2BGRA)))),
        Case("image_16bit", _image_case(_edit_image(lambda im: im.astype(np.uint16) * 257))),
        Case("image_jpeg_named_png", _image_case(_edit_image(lambda im: im, ext=".jpg"))),
        Case("image_dir_missing", _missing_image_dir, {"*": _e("image file not found")}),
    ]


def _pl_skip(reason: str, n: int = 1) -> Expect:
    return Expect("skip", f"({reason} {n})")


# ``pseudo-label`` reads a boxes json with its own, lenient reader (box_json.py): it labels every
# box it can, counts the rest in its summary (empty masks), and needs no categories (SOLOv2
# kernels are class-agnostic: an unknown category still gets a mask and is counted). Where its
# outcome differs from the cases' default ("*"):
PSEUDO_LABEL: dict[str, Expect] = {
    "no_images_key": _e("missing top-level list 'images'"),
    "images_not_list": _e("missing top-level list 'images'"),
    "no_annotations_key": _e("missing top-level list 'annotations'"),
    "empty_annotations": _e("no annotations to label"),
    "empty_images": _e("has no 'image_id' listed in 'images'"),
    "unknown_image_id": _e("annotation 14 has no 'image_id' listed in 'images'"),
    "no_categories_key": Expect("skip", "unknown category  7"),
    "zero_categories": Expect("skip", "unknown category  7"),
    "unknown_category_id": Expect("skip", "unknown category  1"),
    "string_category_id": Expect("skip", "unknown category  1"),
    "category_without_name": Expect("skip", "unknown category  1"),
    "string_category_ids": OK, "string_annotation_id": OK,
    "bbox_missing": _pl_skip("invalid_box"), "bbox_short": _pl_skip("invalid_box"),
    "bbox_strings": _pl_skip("invalid_box"), "bbox_nan": _pl_skip("invalid_box"),
    "bbox_negative_size": _pl_skip("zero_area"), "bbox_outside_image": _pl_skip("outside_image"),
    "bbox_tiny": OK, "area_big": OK, "area_negative": OK,  # area is recomputed from the mask
    "iscrowd_yes": OK, "iscrowd_2": OK,  # passed through untouched, as every unread key
    "image_file_missing": _pl_skip("missing_image", 3),
    "image_zero_bytes": _pl_skip("unreadable_image", 3),
    "image_truncated": _pl_skip("unreadable_image", 3),
    "image_not_an_image": _pl_skip("unreadable_image", 3),
    "image_is_directory": _pl_skip("unreadable_image", 3),
    "image_smaller_than_json": _pl_skip("size_mismatch", 3),
    "image_dir_missing": _e("images folder not found"),
}


def expected(case: Case, verb: str) -> Expect:
    """What ``verb`` must do with ``case`` (``pseudo_label``: :data:`PSEUDO_LABEL` first)."""
    if verb == "pseudo_label" and case.name in PSEUDO_LABEL:
        return PSEUDO_LABEL[case.name]
    return case.expected(verb)


def build_case(case: Case, case_dir: Path, base_json: Path, base_images: Path) -> Built:
    """Write ``case`` into the empty folder ``case_dir`` from a base json and image folder."""
    case_dir.mkdir(parents=True, exist_ok=True)
    return case.build(case_dir, base_json, base_images)


def summarise(outcomes: dict[tuple[str, str], str]) -> dict[str, int]:
    """``{(case, verb): observed outcome}`` -> the table: kinds tried, clear errors, counted
    skips, fine, tracebacks, silent garbage (a mismatch with the expectation)."""
    counts = {"kinds tried": len({c for c, _ in outcomes}), "runs": len(outcomes),
              "clear errors": 0, "counted skips": 0, "fine": 0, "tracebacks": 0,
              "silent garbage": 0}
    names = {"error": "clear errors", "skip": "counted skips", "ok": "fine",
             "traceback": "tracebacks", "garbage": "silent garbage"}
    for outcome in outcomes.values():
        counts[names[outcome]] += 1
    return counts
