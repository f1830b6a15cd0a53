"""`discobox show`: overlay PNGs in review order (lowest score first) and a contact sheet."""

from __future__ import annotations

import json

import cv2
import numpy as np

from discobox.cli.main import main
from discobox.data.coco_results import encode_mask
from discobox.tools.show import CONTACT_SHEET, SheetLayout


def test_show_orders_by_score_and_writes_sheet(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    gt = {"images": [], "categories": [{"id": 4, "name": "droplet"}], "annotations": []}
    results = []
    for iid, score in ((1, 0.8), (2, 0.1), (3, 0.5)):
        name = f"im{iid}.png"
        cv2.imwrite(str(images / name), np.full((40, 60, 3), 90, np.uint8))
        gt["images"].append({"id": iid, "file_name": name, "height": 40, "width": 60})
        m = np.zeros((40, 60), bool)
        m[10:30, 15:45] = True
        results.append({"image_id": iid, "category_id": 4, "segmentation": encode_mask(m),
                        "bbox": [15, 10, 30, 20], "score": score})
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    out = tmp_path / "out"
    assert main(["show", str(tmp_path / "res.json"), "--images", str(images), "--out", str(out),
                 "--gt", str(tmp_path / "gt.json")]) == 0
    assert sorted(p.name for p in out.glob("0*.png")) == ["0000_im2.png", "0001_im3.png",
                                                          "0002_im1.png"]
    overlay = cv2.imread(str(out / "0000_im2.png"))
    assert overlay.shape == (40, 60, 3) and (overlay != 90).any()  # something was drawn
    sheet = cv2.imread(str(out / CONTACT_SHEET))
    assert sheet.shape[:2] == SheetLayout(cols=3, rows=1).size == (200, 3 * 196 + 4)

    # GT dataset json (no scores), --max: by image id, at most 2.
    gt["annotations"] = [dict(r, id=k + 1, iscrowd=0) for k, r in enumerate(results)]
    for a in gt["annotations"]:
        del a["score"]
    (tmp_path / "gt2.json").write_text(json.dumps(gt))
    out2 = tmp_path / "out2"
    assert main(["show", str(tmp_path / "gt2.json"), "--images", str(images), "--out",
                 str(out2), "--max", "2"]) == 0
    assert sorted(p.name for p in out2.glob("0*.png")) == ["0000_im1.png", "0001_im2.png"]
    assert cv2.imread(str(out2 / CONTACT_SHEET)).shape[:2] == SheetLayout(2, 1).size


def test_show_missing_image_is_one_line_error(tmp_path, capsys):
    ds = {"images": [{"id": 1, "file_name": "gone.png", "height": 8, "width": 8}],
          "categories": [{"id": 1, "name": "x"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3]}]}
    (tmp_path / "d.json").write_text(json.dumps(ds))
    assert main(["show", str(tmp_path / "d.json"), "--images", str(tmp_path), "--out",
                 str(tmp_path / "o")]) == 2
    assert "gone.png" in capsys.readouterr().err
