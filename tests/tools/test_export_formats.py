"""`discobox export`: every format re-read within one pixel of the RLE mask (hand-made case)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import yaml
from pycocotools import mask as mask_utils
from scipy import ndimage

from discobox.cli.main import main
from discobox.data.coco_results import encode_mask
from discobox.tools import export_formats as ef

H, W = 48, 64


def _masks() -> dict[str, np.ndarray]:
    disc = np.zeros((H, W), np.uint8)
    cv2.circle(disc, (20, 22), 12, 1, -1)
    ring = np.zeros((H, W), bool)  # a square with a square hole
    ring[8:40, 36:60] = True
    ring[16:32, 44:52] = False
    return {"disc": disc.astype(bool), "ring": ring}


def _boundary_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Largest distance from a boundary pixel of one mask to the boundary of the other."""
    def edge(m):
        return m & ~ndimage.binary_erosion(m)
    ea, eb = edge(a), edge(b)
    da, db = ndimage.distance_transform_edt(~ea), ndimage.distance_transform_edt(~eb)
    return float(max(db[ea].max(), da[eb].max()))


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def _close(mask: np.ndarray, ref: np.ndarray) -> None:
    assert _iou(mask, ref) >= 0.9
    assert _boundary_distance(mask, ref) <= 1.0


@pytest.fixture
def results(tmp_path):
    """A results list (pseudo-labels): RLE masks, scores, class and file names, no --gt."""
    masks = _masks()
    anns = [{"image_id": 7, "category_id": 3, "category_name": "cell", "file_name": "a.png",
             "segmentation": encode_mask(m), "score": s,
             "bbox": [float(v) for v in mask_utils.toBbox(encode_mask(m))]}
            for m, s in ((masks["disc"], 0.9), (masks["ring"], 0.4))]
    path = tmp_path / "masks.json"
    path.write_text(json.dumps(anns))
    return path, masks


def test_coco_rle_and_polygon(results, tmp_path):
    path, masks = results
    assert main(["export", str(path), "--format", "coco-rle", "--out", str(tmp_path / "r")]) == 0
    ds = json.loads((tmp_path / "r" / "annotations.json").read_text())
    assert ds["categories"] == [{"id": 3, "name": "cell"}]
    assert ds["images"] == [{"id": 7, "file_name": "a.png", "height": H, "width": W}]
    assert [a["score"] for a in ds["annotations"]] == [0.9, 0.4]
    for a, ref in zip(ds["annotations"], masks.values()):
        assert np.array_equal(ef.ann_mask(a, H, W), ref)  # RLE: exact, holes kept

    assert main(["export", str(path), "--format", "coco-polygon", "--out",
                 str(tmp_path / "p")]) == 0
    ds = json.loads((tmp_path / "p" / "annotations.json").read_text())
    disc, ring = (ef.ann_mask(a, H, W) for a in ds["annotations"])  # pycocotools rasteriser
    assert all(isinstance(a["segmentation"], list) for a in ds["annotations"])
    _close(disc, masks["disc"])
    # Holes: polygons keep outer contours only, so the hole is filled.
    filled = ndimage.binary_fill_holes(masks["ring"])
    _close(ring, filled)
    assert ring[24, 48] and not masks["ring"][24, 48]


def test_yolo_round_trip(results, tmp_path):
    path, masks = results
    out = tmp_path / "y"
    assert main(["export", str(path), "--format", "yolo", "--out", str(out),
                 "--images", str(tmp_path)]) == 0
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == {0: "cell"} and data["nc"] == 1
    assert data["train"] == str(tmp_path.resolve())
    lines = ef.read_yolo_polygons(out / "labels" / "a.txt", H, W)
    assert [c for c, _ in lines] == [0, 0]
    for (_, poly), ref in zip(lines, masks.values()):
        assert (poly >= 0).all() and (poly[:, 0] <= W).all()
        _close(ef.polygons_to_mask([poly], H, W), ndimage.binary_fill_holes(ref))


def test_labelme_round_trip(results, tmp_path):
    path, masks = results
    (tmp_path / "imgs").mkdir()
    out = tmp_path / "lm"
    assert main(["export", str(path), "--format", "labelme", "--out", str(out),
                 "--images", str(tmp_path / "imgs")]) == 0
    doc = json.loads((out / "a.json").read_text())
    assert (doc["imageHeight"], doc["imageWidth"]) == (H, W)
    assert doc["imagePath"] == "../imgs/a.png"
    assert {s["shape_type"] for s in doc["shapes"]} == {"polygon"}
    back = ef.read_labelme_masks(out / "a.json")
    assert [label for label, _ in back] == ["cell", "cell"]
    for (_, m), ref in zip(back, masks.values()):
        _close(m, ndimage.binary_fill_holes(ref))


def test_two_part_mask_is_one_yolo_line(tmp_path):
    """A mask in two parts: one YOLO line (bridged), one LabelMe group, two COCO polygons."""
    m = np.zeros((H, W), bool)
    m[5:20, 5:20] = True
    m[30:45, 40:60] = True
    ds = {"images": [{"id": 1, "file_name": "b.jpg", "height": H, "width": W}],
          "categories": [{"id": 1, "name": "x"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation":
                           encode_mask(m), "bbox": [5, 5, 55, 40]}]}
    src = tmp_path / "gt.json"
    src.write_text(json.dumps(ds))
    ef.export(src, "yolo", tmp_path / "y")
    (line,) = ef.read_yolo_polygons(tmp_path / "y" / "labels" / "b.txt", H, W)
    assert _iou(ef.polygons_to_mask([line[1]], H, W), m) >= 0.9
    ef.export(src, "labelme", tmp_path / "l")
    ((_, back),) = ef.read_labelme_masks(tmp_path / "l" / "b.json")
    _close(back, m)
    ef.export(src, "coco-polygon", tmp_path / "p")
    (ann,) = json.loads((tmp_path / "p" / "annotations.json").read_text())["annotations"]
    assert len(ann["segmentation"]) == 2


def test_results_with_gt_and_errors(tmp_path):
    gt = {"images": [{"id": 1, "file_name": "c.jpg", "height": H, "width": W}],
          "categories": [{"id": 5, "name": "dog"}, {"id": 2, "name": "cat"}], "annotations": []}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    res = [{"image_id": 1, "category_id": 5, "bbox": [2, 3, 10, 12], "score": 0.5}]  # box only
    (tmp_path / "res.json").write_text(json.dumps(res))
    ef.export(tmp_path / "res.json", "yolo", tmp_path / "y", gt=tmp_path / "gt.json")
    (line,) = ef.read_yolo_polygons(tmp_path / "y" / "labels" / "c.txt", H, W)
    assert line[0] == 1  # categories in id order: cat (2) -> 0, dog (5) -> 1
    assert yaml.safe_load((tmp_path / "y" / "data.yaml").read_text())["names"] == {
        0: "cat", 1: "dog"}
    assert main(["export", str(tmp_path / "res.json"), "--format", "coco-rle", "--out",
                 str(tmp_path / "o")]) == 2  # no size for the image: one-line error
    assert main(["export", str(tmp_path / "nope.json"), "--format", "yolo", "--out",
                 str(tmp_path / "o")]) == 2
