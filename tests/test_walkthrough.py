"""The README's walkthrough, end to end on tiny data: boxes only -> train -> pseudo-label ->
export (YOLO) -> show. Each step is the CLI call a user types."""

from __future__ import annotations

import json

from helpers import tiny_overrides

from discobox.cli.main import main


def test_boxes_to_masks_to_yolo_to_review(tiny_coco, tmp_path, capsys):
    doc = json.loads((tiny_coco / "train.json").read_text())
    for ann in doc["annotations"]:
        ann.pop("segmentation", None)  # a box-annotated data set: no masks anywhere
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps(doc))
    images = tiny_coco / "images"
    run = tmp_path / "run"

    # 1. train from the boxes (model.num_classes and class names come from the json)
    overrides = [o for o in tiny_overrides(tiny_coco, run, **{"solver.max_iter": 2})
                 if not o.startswith(("model.num_classes=", "data.val_json=",
                                      "data.train_json="))]
    assert main(["train", "discobox_r18_fpn_cpu", "--output-dir", str(run),
                 f"data.train_json={boxes}", "data.val_json=null", *overrides]) == 0
    weights = run / "model_final.pth"
    assert weights.is_file()

    # 2. a mask and a confidence for every box
    masks = tmp_path / "masks.json"
    assert main(["pseudo-label", "--weights", str(weights), "--boxes", str(boxes),
                 "--images", str(images), "--out", str(masks), "--device", "cpu",
                 "--no-progress"]) == 0
    labelled = json.loads(masks.read_text())
    assert len(labelled["annotations"]) == len(doc["annotations"])
    assert all("segmentation" in a and 0.0 <= a["score"] <= 1.0
               for a in labelled["annotations"])

    # 3. in the format the user's trainer reads
    yolo = tmp_path / "yolo"
    assert main(["export", str(masks), "--format", "yolo", "--out", str(yolo),
                 "--images", str(images)]) == 0
    assert (yolo / "data.yaml").is_file()
    label_files = sorted((yolo / "labels").glob("*.txt"))
    assert len(label_files) == len(doc["images"])
    names = {c["name"] for c in doc["categories"]}
    assert all(name in (yolo / "data.yaml").read_text() for name in names)

    # 4. overlays to review, lowest confidence first, and a contact sheet
    review = tmp_path / "review"
    assert main(["show", str(masks), "--images", str(images), "--out", str(review)]) == 0
    assert (review / "contact_sheet.png").is_file()
    assert len(list(review.glob("0*.png"))) == len(doc["images"])
