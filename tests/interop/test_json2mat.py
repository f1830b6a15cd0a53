"""COCO segm results -> BBTP .mat (docs/method.md §8.3) on the tiny VOC tree."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.io import loadmat, whosmat

from discobox.cli.main import main
from discobox.data.coco_results import encode_mask
from discobox.data.voc import convert_voc
from discobox.tools.json2mat import results_to_mat


@pytest.fixture(scope="module")
def val(tiny_voc, tmp_path_factory):
    """The converted val json with its image ids replaced (7 and 101) and categories permuted."""
    out = tmp_path_factory.mktemp("j2m")
    gt = json.loads(convert_voc(voc_root=tiny_voc["voc"], out_dir=out)["val"].read_text())
    new_ids = {1: 101, 2: 7}  # 2007_000002 -> 101, 2007_000003 -> 7
    for im in gt["images"]:
        im["id"] = new_ids[im["id"]]
    for a in gt["annotations"]:
        a["image_id"] = new_ids[a["image_id"]]
    for c in gt["categories"]:
        c["id"] += 100  # 'car' is id 107, VOC index 7
    for a in gt["annotations"]:
        a["category_id"] += 100
    gt["images"].append({"id": 55, "file_name": "2007_000099.jpg", "height": 36, "width": 44})
    path = out / "val_permuted.json"
    path.write_text(json.dumps(gt))
    return {"gt": path, "list": tiny_voc["voc"] / "ImageSets" / "Segmentation" / "val.txt",
            "dir": out}


def _result(image_id: int, cat: int, score: float, mask: np.ndarray, **extra) -> dict:
    return {"image_id": image_id, "category_id": cat, "score": score,
            "segmentation": encode_mask(mask), "bbox": [0, 0, 1, 1], **extra}


def _masks(h: int = 36, w: int = 44) -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros((h, w), bool)
    a[3:15, 2:20] = True
    b = np.zeros((h, w), bool)
    b[18:30, 22:40] = True
    return a, b


def test_mat_layout(val, tmp_path):
    a, b = _masks()
    results = [_result(7, 107, 0.3, a), _result(7, 107, 0.9, b)]  # unsorted on purpose
    res = tmp_path / "results.segm.json"
    res.write_text(json.dumps(results))
    out = tmp_path / "out.mat"
    summary = results_to_mat(res, out, image_list=val["list"], gt_json=val["gt"])
    assert summary == {"images": 2, "with_detections": 1, "detections": 2}
    # 2007_000003 is the 2nd entry of val.txt: img_2; 2007_000002 has no detections.
    assert [n for n, _, _ in whosmat(out)] == ["img_2_masks", "img_2_scores", "img_2_labels",
                                               "img_2_name"]
    mat = loadmat(out)
    masks = mat["img_2_masks"]
    assert masks.dtype == np.uint8 and masks.shape == (36, 44, 2)
    assert np.array_equal(masks[:, :, 0], b) and np.array_equal(masks[:, :, 1], a)
    np.testing.assert_allclose(mat["img_2_scores"], [[0.9, 0.3]])
    assert mat["img_2_labels"].tolist() == [[7, 7]]
    assert str(mat["img_2_name"][0]) == "img_2"


def test_file_names_instead_of_gt(val, tmp_path):
    a, _ = _masks(32, 40)
    res = tmp_path / "r.json"
    res.write_text(json.dumps([_result(0, 8, 0.5, a, file_name="/x/2007_000002.jpg")]))
    results_to_mat(res, tmp_path / "o.mat", image_list=val["list"])
    mat = loadmat(tmp_path / "o.mat")
    assert mat["img_1_masks"].shape == (32, 40, 1) and mat["img_1_labels"].tolist() == [[8]]
    res.write_text(json.dumps([_result(1, 8, 0.5, a)]))
    with pytest.raises(ValueError, match="pass --gt"):
        results_to_mat(res, tmp_path / "o.mat", image_list=val["list"])


def test_errors_name_the_images(val, tmp_path):
    a, _ = _masks()
    res = tmp_path / "r.json"
    res.write_text(json.dumps([_result(55, 107, 0.5, a), _result(7, 107, 0.5, a)]))
    with pytest.raises(ValueError, match="not in .*val.txt: 2007_000099"):
        results_to_mat(res, tmp_path / "o.mat", image_list=val["list"], gt_json=val["gt"])
    assert not (tmp_path / "o.mat").exists()
    res.write_text(json.dumps([_result(999, 107, 0.5, a)]))
    with pytest.raises(ValueError, match="image ids not in .*: 999"):
        results_to_mat(res, tmp_path / "o.mat", image_list=val["list"], gt_json=val["gt"])
    res.write_text(json.dumps([_result(7, 107, 0.5, a[:10])]))
    with pytest.raises(ValueError, match=r"2007_000003 are \(10, 44\), the image is \(36, 44\)"):
        results_to_mat(res, tmp_path / "o.mat", image_list=val["list"], gt_json=val["gt"])
    res.write_text(json.dumps([{"image_id": 7, "category_id": 107, "score": 0.5,
                                "bbox": [0, 0, 1, 1]}]))
    with pytest.raises(ValueError, match="no RLE 'segmentation'"):
        results_to_mat(res, tmp_path / "o.mat", image_list=val["list"], gt_json=val["gt"])


def test_cli_json2mat(val, tmp_path, capsys):
    a, b = _masks()
    res = tmp_path / "r.json"
    res.write_text(json.dumps([_result(7, 107, 0.8, a)]))
    out = tmp_path / "cli.mat"
    assert main(["json2mat", str(res), str(out), "--image-list", str(val["list"]),
                 "--gt", str(val["gt"])]) == 0
    assert "1 detections on 1 of 2 images" in capsys.readouterr().out
    assert loadmat(out)["img_2_labels"].tolist() == [[7]]
    assert main(["json2mat", str(tmp_path / "missing.json"), str(out), "--image-list",
                 str(val["list"])]) == 2
    assert "missing.json" in capsys.readouterr().err
