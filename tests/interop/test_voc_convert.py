"""VOC 2012 + SBD -> COCO-style jsons (docs/method.md §8.3) on a tiny hand-made tree."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from discobox.cli.main import main
from discobox.data.coco import CocoDataset
from discobox.data.segmentation import decode_segmentation
from discobox.data.voc import (
    TRAIN_AUG_JSON,
    TRAIN_JSON,
    VAL_JSON,
    VOC_CLASSES,
    convert_voc,
    voc_box,
)


def _anns(data: dict, file_name: str) -> list[dict]:
    image_id = next(im["id"] for im in data["images"] if im["file_name"] == file_name)
    return [a for a in data["annotations"] if a["image_id"] == image_id]


def _decode(ann: dict) -> np.ndarray:
    return decode_segmentation(ann["segmentation"], *ann["segmentation"]["size"])


@pytest.fixture(scope="module")
def converted(tiny_voc, tmp_path_factory):
    out = tmp_path_factory.mktemp("voc_json")
    paths = convert_voc(voc_root=tiny_voc["root"] / "VOCdevkit", out_dir=out,
                        sbd_root=tiny_voc["sbd"])
    return {k: json.loads(p.read_text()) for k, p in paths.items()}, paths


def test_train_aug_and_val_sets(converted):
    data, paths = converted
    assert paths["train"].name == TRAIN_AUG_JSON and paths["val"].name == VAL_JSON
    # train_aug = VOC train + SBD train/val - VOC val; val keeps val.txt order, ids 1..N.
    assert [im["file_name"] for im in data["train"]["images"]] == ["2007_000001.jpg",
                                                                   "2008_000010.jpg"]
    assert [(im["id"], im["file_name"]) for im in data["val"]["images"]] == [
        (1, "2007_000002.jpg"), (2, "2007_000003.jpg")]
    for split in ("train", "val"):
        cats = data[split]["categories"]
        assert [c["id"] for c in cats] == list(range(1, 21))
        assert tuple(c["name"] for c in cats) == VOC_CLASSES
    im = data["train"]["images"][0]
    assert (im["height"], im["width"]) == (40, 48)


def test_voc_instances(converted, tiny_voc):
    data, _ = converted
    from PIL import Image

    person, dog = _anns(data["train"], "2007_000001.jpg")
    assert person["category_id"] == 15 and dog["category_id"] == 12
    assert dog["difficult"] == 1 and person["difficult"] == 0
    # Box from the XML (rows 4..20, cols 3..19, 0-based inclusive, incl. the void border).
    assert person["bbox"] == voc_box(4, 5, 20, 21) == [3.0, 4.0, 17.0, 17.0]
    # Mask = SegmentationObject == 1, void (255) excluded.
    objs = np.asarray(Image.open(tiny_voc["voc"] / "SegmentationObject" / "2007_000001.png"))
    assert np.array_equal(_decode(person), objs == 1)
    assert person["area"] == int((objs == 1).sum()) == 15 * 15
    assert person["iscrowd"] == 0
    assert len(_anns(data["val"], "2007_000003.jpg")) == 2


def test_sbd_instances_match_xml_boxes(converted):
    data, _ = converted
    aeroplane, person, bird = _anns(data["train"], "2008_000010.jpg")
    assert [a["category_id"] for a in (aeroplane, person, bird)] == [1, 15, 3]
    # The XML lists person before aeroplane: matched by class + IoU, not by index.
    assert aeroplane["bbox"] == [2.0, 1.0, 19.0, 12.0]
    assert person["bbox"] == [29.0, 13.0, 17.0, 16.0]
    # No XML object for the bird: tight mask box (rows 20..25, cols 5..11).
    assert bird["bbox"] == [5.0, 20.0, 7.0, 6.0] and bird["area"] == 42
    assert _decode(aeroplane)[2:12, 3:20].all() and _decode(aeroplane).sum() == 170


def test_mask_box_source(tiny_voc, tmp_path):
    paths = convert_voc(voc_root=tiny_voc["voc"], out_dir=tmp_path, sbd_root=tiny_voc["sbd"],
                        box_source="mask")
    data = json.loads(paths["train"].read_text())
    person = _anns(data, "2007_000001.jpg")[0]
    assert person["bbox"] == [4.0, 5.0, 15.0, 15.0]  # interior of the void border


def test_json_loads_with_coco_dataset(converted, tiny_voc):
    _, paths = converted
    ds = CocoDataset(ann_file=paths["val"], image_dir=tiny_voc["voc"] / "JPEGImages", mode="full",
                     class_names=VOC_CLASSES, min_size=1)
    sample = ds[0]
    inst = sample["instances"]
    assert len(ds) == 2 and inst.masks.shape == (1, 32, 40) and int(inst.labels[0]) == 7


def test_without_sbd_logs_and_names_file(tiny_voc, tmp_path):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("discobox")
    log.addHandler(handler)
    try:
        paths = convert_voc(voc_root=tiny_voc["voc"], out_dir=tmp_path)
    finally:
        log.removeHandler(handler)
    assert paths["train"].name == TRAIN_JSON
    assert any("VOC2012 segmentation train only" in r.getMessage() for r in records)
    data = json.loads(paths["train"].read_text())
    assert [im["file_name"] for im in data["images"]] == ["2007_000001.jpg"]


def test_missing_sbd_is_named(tiny_voc, tmp_path):
    with pytest.raises(FileNotFoundError, match="SBD folder not found: .*nowhere"):
        convert_voc(voc_root=tiny_voc["voc"], out_dir=tmp_path, sbd_root=tmp_path / "nowhere")
    broken = tmp_path / "sbd"
    (broken / "inst").mkdir(parents=True)
    (broken / "val.txt").write_text("")
    with pytest.raises(FileNotFoundError, match="lacks train.txt"):
        convert_voc(voc_root=tiny_voc["voc"], out_dir=tmp_path, sbd_root=broken)
    with pytest.raises(FileNotFoundError, match="not a VOC 2012 folder"):
        convert_voc(voc_root=tmp_path, out_dir=tmp_path)


def test_cli_convert_voc(tiny_voc, tmp_path, capsys):
    out = tmp_path / "jsons"
    assert main(["convert-voc", "--voc-root", str(tiny_voc["voc"]), "--sbd-root",
                 str(tiny_voc["sbd"]), "--out", str(out)]) == 0
    assert (out / TRAIN_AUG_JSON).exists() and (out / VAL_JSON).exists()
    assert main(["convert-voc", "--voc-root", str(tiny_voc["voc"]), "--sbd-root",
                 str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "SBD folder not found" in capsys.readouterr().err
