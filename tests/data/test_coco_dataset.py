import json
import logging

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from discobox.data.coco import CocoDataset
from discobox.data.images import ImageReadError, read_image


def _write_image(path, h, w, seed=0):
    img = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    cv2.imwrite(str(path), img)
    return img[:, :, ::-1]  # RGB


def _ann(ann_id, image_id, bbox, cat=3, **extra):
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": bbox, **extra}


CATS = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]


def _dataset_json(tmp_path, anns, images=None, cats=CATS, name="train.json", **top):
    if images is None:
        images = [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}]
    path = tmp_path / name
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats, **top}))
    return path


@pytest.fixture
def image_dir(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    _write_image(d / "a.png", 48, 64)
    _write_image(d / "b.png", 48, 64, seed=1)
    _write_image(d / "small.png", 20, 40, seed=2)
    return d


def test_parsing_rules_counts_and_clipping(tmp_path, image_dir, caplog):
    anns = [
        _ann(1, 1, [10, 5, 20, 10], cat=3),
        _ann(2, 1, [0, 0, 30, 30], iscrowd=1),
        _ann(3, 1, [10, 10, 0.5, 20]),  # degenerate
        _ann(4, 1, [10, 10, 20, 0.9], cat=7),  # degenerate
        _ann(5, 1, [10, 10, 5, 5], area=0),  # area <= 0
        _ann(6, 1, [100, 10, 5, 5]),  # outside (right of the image)
        _ann(7, 1, [50, 40, 30, 20], cat=7),  # partly outside: clipped
        _ann(8, 1, [1, 1, 5, 5], ignore=True),
        _ann(9, 2, [1, 1, 5, 5], iscrowd=1),  # image 2 has only a crowd box
        _ann(10, 3, [1, 1, 5, 5]),  # image 3 is smaller than min_size
    ]
    images = [
        {"id": 1, "file_name": "a.png", "width": 64, "height": 48},
        {"id": 2, "file_name": "b.png", "width": 64, "height": 48},
        {"id": 3, "file_name": "small.png", "width": 40, "height": 20},
    ]
    path = _dataset_json(tmp_path, anns, images)
    with caplog.at_level(logging.WARNING, logger="discobox"):
        ds = CocoDataset(ann_file=path, image_dir=image_dir, mode="box")
    assert ds.skipped == {
        "crowd": 2,
        "other_class": 0,
        "ignore": 1,
        "outside": 1,
        "zero_area": 1,
        "degenerate": 2,
    }
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "train.json: skipped 5 annotations" in warnings[0]
    assert "2 degenerate boxes" in warnings[0] and "1 outside image" in warnings[0]

    # contiguous labels from sorted category ids: 3 -> 0 (cat), 7 -> 1 (dog)
    assert ds.cat_ids == [3, 7] and ds.class_names == ["cat", "dog"]
    assert ds.label_to_cat_id == {0: 3, 1: 7}
    assert ds.image_ids == [1]  # image 2 (crowd only) and image 3 (small) are dropped
    inst = ds[0]["instances"]
    assert inst.boxes.dtype == torch.float32 and inst.labels.dtype == torch.int64
    torch.testing.assert_close(inst.boxes, torch.tensor([[10, 5, 30, 15], [50, 40, 64, 48.0]]))
    assert inst.labels.tolist() == [0, 1] and inst.ids.tolist() == [1, 7]
    assert inst.masks is None

    kept = CocoDataset(ann_file=path, image_dir=image_dir, mode="box", filter_empty=False)
    assert kept.image_ids == [1, 2]  # image 3 still dropped by min_size in training modes
    assert len(kept[1]["instances"]) == 0
    test = CocoDataset(ann_file=path, image_dir=image_dir, mode="test")
    assert test.image_ids == [1, 2, 3]
    assert test.aspect_ratios == [64 / 48, 64 / 48, 2.0]


def test_sample_dict(tmp_path, image_dir):
    path = _dataset_json(tmp_path, [_ann(1, 1, [10, 5, 20, 10])])
    ds = CocoDataset(ann_file=path, image_dir=image_dir, mode="box")
    sample = ds[0]
    expected = _write_image(tmp_path / "x.png", 48, 64)
    assert sample["image"].dtype == np.uint8 and sample["image"].shape == (48, 64, 3)
    np.testing.assert_array_equal(sample["image"], expected)
    assert sample["image_id"] == 1 and sample["orig_size"] == (48, 64)
    assert sample["file_name"].endswith("a.png")


def test_class_names_restrict_and_order(tmp_path, image_dir):
    anns = [_ann(1, 1, [10, 5, 20, 10], cat=3), _ann(2, 1, [1, 1, 9, 9], cat=7)]
    path = _dataset_json(tmp_path, anns)
    ds = CocoDataset(ann_file=path, image_dir=image_dir, class_names=["dog"])
    assert ds.cat_ids == [7] and ds.skipped["other_class"] == 1
    assert ds[0]["instances"].labels.tolist() == [0]
    ds = CocoDataset(ann_file=path, image_dir=image_dir, class_names=["dog", "cat"])
    assert ds.label_to_cat_id == {0: 7, 1: 3}
    assert ds[0]["instances"].labels.tolist() == [1, 0]
    with pytest.raises(ValueError, match="horse"):
        CocoDataset(ann_file=path, image_dir=image_dir, class_names=["dog", "horse"])


def test_unknown_category_names_annotation_and_category(tmp_path, image_dir):
    path = _dataset_json(tmp_path, [_ann(1, 1, [1, 1, 5, 5]), _ann(42, 1, [1, 1, 5, 5], cat=99)])
    with pytest.raises(ValueError, match=r"train\.json.*annotation 42.*category_id 99"):
        CocoDataset(ann_file=path, image_dir=image_dir)


def test_duplicate_image_id(tmp_path, image_dir):
    images = [
        {"id": 5, "file_name": "a.png", "width": 64, "height": 48},
        {"id": 5, "file_name": "b.png", "width": 64, "height": 48},
    ]
    path = _dataset_json(tmp_path, [], images)
    with pytest.raises(ValueError, match=r"train\.json.*duplicate image id 5"):
        CocoDataset(ann_file=path, image_dir=image_dir)


@pytest.mark.parametrize("text", ["", "  \n", "{}", "[]", "{not json"])
def test_empty_or_invalid_json(tmp_path, image_dir, text):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"bad\.json"):
        CocoDataset(ann_file=path, image_dir=image_dir)


def test_missing_keys_name_the_file(tmp_path, image_dir):
    path = tmp_path / "nokey.json"
    path.write_text(json.dumps({"images": [], "categories": CATS}))
    with pytest.raises(ValueError, match=r"nokey\.json.*'annotations'"):
        CocoDataset(ann_file=path, image_dir=image_dir, mode="box")
    # test-dev style files have no annotations: fine in test mode
    assert len(CocoDataset(ann_file=path, image_dir=image_dir, mode="test")) == 0
    bad_ann = _dataset_json(tmp_path, [{"id": 3, "image_id": 1, "category_id": 3}], name="b.json")
    with pytest.raises(ValueError, match=r"b\.json: annotation 3.*bbox"):
        CocoDataset(ann_file=bad_ann, image_dir=image_dir)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        CocoDataset(ann_file=tmp_path / "missing.json", image_dir=image_dir)


def test_missing_and_corrupt_image(tmp_path, image_dir):
    images = [
        {"id": 1, "file_name": "gone.png", "width": 64, "height": 48},
        {"id": 2, "file_name": "corrupt.jpg", "width": 64, "height": 48},
    ]
    (image_dir / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    anns = [_ann(1, 1, [1, 1, 5, 5]), _ann(2, 2, [1, 1, 5, 5])]
    ds = CocoDataset(ann_file=_dataset_json(tmp_path, anns, images), image_dir=image_dir)
    with pytest.raises(ImageReadError, match="not found.*gone.png") as err:
        ds[0]
    assert isinstance(err.value, OSError) and str(image_dir) in str(err.value)
    with pytest.raises(ImageReadError, match="corrupt.jpg"):
        ds[1]
    with pytest.raises(ImageReadError, match="empty.png"):
        (image_dir / "empty.png").write_bytes(b"")
        read_image(image_dir / "empty.png")


def test_image_size_mismatch(tmp_path, image_dir):
    images = [{"id": 1, "file_name": "a.png", "width": 60, "height": 48}]
    ds = CocoDataset(
        ann_file=_dataset_json(tmp_path, [_ann(1, 1, [1, 1, 5, 5])], images), image_dir=image_dir
    )
    with pytest.raises(ValueError, match="a.png.*64x48.*60x48"):
        ds[0]


def test_box_mode_never_reads_segmentation(tmp_path, image_dir):
    clean = [_ann(1, 1, [10, 5, 20, 10]), _ann(2, 1, [2, 3, 9, 9], cat=7)]
    corrupt = [
        _ann(1, 1, [10, 5, 20, 10], segmentation="garbage"),
        _ann(2, 1, [2, 3, 9, 9], cat=7, segmentation={"counts": 5}),
    ]
    a = CocoDataset(ann_file=_dataset_json(tmp_path, clean, name="a.json"), image_dir=image_dir)
    b = CocoDataset(ann_file=_dataset_json(tmp_path, corrupt, name="b.json"), image_dir=image_dir)
    sa, sb = a[0], b[0]
    np.testing.assert_array_equal(sa["image"], sb["image"])
    for key in ("boxes", "labels", "ids"):
        torch.testing.assert_close(getattr(sa["instances"], key), getattr(sb["instances"], key))
    assert sb["instances"].masks is None
    with pytest.raises(ValueError, match=r"b\.json: annotation 1 .*'full' mode needs a valid"):
        CocoDataset(ann_file=tmp_path / "b.json", image_dir=image_dir, mode="full")
    with pytest.raises(ValueError, match=r"a\.json: annotation 1 .*'full' mode needs"):
        CocoDataset(ann_file=tmp_path / "a.json", image_dir=image_dir, mode="full")


def test_full_mode_decodes_polygons_and_rle(tmp_path, image_dir):
    h, w = 48, 64
    square = np.zeros((h, w), dtype=np.uint8)
    square[10:20, 30:50] = 1
    compressed = mask_utils.encode(np.asfortranarray(square))
    compressed = {"size": [h, w], "counts": compressed["counts"].decode()}
    # uncompressed RLE (column-major run lengths, zeros first): rows 0..1 of every column
    uncompressed = {"size": [h, w], "counts": [0] + [2, h - 2] * w}
    anns = [
        _ann(1, 1, [4, 4, 10, 10], segmentation=[[4, 4, 14, 4, 14, 14, 4, 14]]),
        _ann(2, 1, [30, 10, 20, 10], segmentation=compressed),
        _ann(3, 1, [0, 0, 64, 2], segmentation=uncompressed),
    ]
    ds = CocoDataset(ann_file=_dataset_json(tmp_path, anns), image_dir=image_dir, mode="full")
    masks = ds[0]["instances"].masks
    assert masks.dtype == torch.bool and masks.shape == (3, h, w)
    ys, xs = torch.nonzero(masks[0], as_tuple=True)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (4, 13, 4, 13)  # pycocotools raster
    np.testing.assert_array_equal(masks[1].numpy(), square.astype(bool))
    assert masks[2, :2].all() and not masks[2, 2:].any()
