"""``discobox pseudo-label``: box / GrabCut / model pseudo-masks, bad input, CLI, atomic write."""

import contextlib
import io
import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import tiny_overrides
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

import discobox.inference.pseudo_label as pl
from discobox.cli.main import main
from discobox.config import load_config
from discobox.data.coco_results import encode_mask
from discobox.inference.box_baselines import box_masks, grabcut_mask
from discobox.inference.pseudo_label import pseudo_label
from discobox.modeling.build import build_model


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions run faster on one thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_weights(tiny_coco, tmp_path_factory) -> Path:
    """A randomly initialised tiny model saved as ``{"model", "config"}``."""
    out = tmp_path_factory.mktemp("pl_model")
    cfg = load_config("discobox_r18_fpn_cpu", tiny_overrides(tiny_coco, out))
    torch.manual_seed(0)
    path = out / "tiny.pth"
    torch.save({"model": build_model(cfg).state_dict(), "config": cfg.to_dict()}, path)
    return path


def _load_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _region(bbox, h, w):
    x, y, bw, bh = bbox
    return (max(math.floor(x), 0), max(math.floor(y), 0), min(math.ceil(x + bw), w),
            min(math.ceil(y + bh), h))


def _check_output(src: Path, out: Path) -> COCO:
    """One RLE per input annotation, same ids, image size, zero outside the box."""
    data_in, data_out = json.loads(src.read_text()), json.loads(out.read_text())
    assert data_out["images"] == data_in["images"]
    assert data_out["categories"] == data_in["categories"]
    assert len(data_out["annotations"]) == len(data_in["annotations"])
    coco = _load_coco(out)  # round trip through pycocotools
    sizes = {im["id"]: (im["height"], im["width"]) for im in data_in["images"]}
    for a, b in zip(data_in["annotations"], data_out["annotations"]):
        for key in ("id", "image_id", "category_id", "bbox"):
            assert a.get(key) == b.get(key)
        seg = b["segmentation"]
        assert isinstance(seg["counts"], str)
        h, w = sizes[b["image_id"]]
        mask = coco.annToMask(b).astype(bool)
        assert mask.shape == (h, w)
        assert int(mask.sum()) == b["area"]
        if mask.any():
            x0, y0, x1, y1 = _region(b["bbox"], h, w)
            inside = np.zeros_like(mask)
            inside[y0:y1, x0:x1] = True
            assert not (mask & ~inside).any()
    return coco


def test_box_method_iou_by_hand(tmp_path):
    h, w = 40, 40
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((h, w, 3), np.uint8))
    gt_a = np.zeros((h, w), bool)
    gt_a[10:20, 10:20] = True  # 100 px inside the 20 x 10 box [10, 10, 20, 10]: IoU 0.5
    gt_b = np.zeros((h, w), bool)
    gt_b[25:35, 2:8] = True  # exactly the pixels box [2.5, 25, 5, 10] touches: IoU 1
    data = {
        "images": [{"id": 7, "file_name": "a.png", "height": h, "width": w}],
        "categories": [{"id": 3, "name": "thing"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 10, 20, 10], "iscrowd": 0,
             "area": 100, "segmentation": encode_mask(gt_a)},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [2.5, 25, 5, 10], "iscrowd": 0,
             "area": 60, "segmentation": encode_mask(gt_b)},
        ],
    }
    src, out = tmp_path / "boxes.json", tmp_path / "out.json"
    src.write_text(json.dumps(data))
    summary = pseudo_label(boxes_json=src, images_dir=tmp_path, out_json=out, method="box",
                           evaluate=True, progress=False)
    assert summary["labelled"] == 2 and summary["num_evaluated"] == 2
    assert summary["mean_iou"] == pytest.approx((0.5 + 1.0) / 2)
    assert summary["segm/AP50"] == pytest.approx(100.0)
    coco = _check_output(src, out)
    expected = box_masks(np.array([[10, 10, 30, 20], [2.5, 25, 7.5, 35]]), h, w).numpy()
    assert expected[0].sum() == 200 and (expected[1] == gt_b).all()
    for k, ann in enumerate(json.loads(out.read_text())["annotations"]):
        assert (coco.annToMask(ann).astype(bool) == expected[k]).all()


def test_grabcut_mask_confined_and_fallbacks():
    img = np.full((48, 48, 3), 30, np.uint8)
    cv2.circle(img, (24, 24), 9, (220, 200, 40), -1)
    mask, ok = grabcut_mask(img, [10, 10, 38, 38])
    assert ok and mask.shape == (48, 48) and mask[24, 24]
    assert not mask[:10].any() and not mask[:, 38:].any()
    assert mask.sum() < 28 * 28  # the corners of the box are background
    filled, ok = grabcut_mask(img, [5, 5, 6.5, 20])  # under 2 px wide
    assert not ok and filled.sum() == 2 * 15
    filled, ok = grabcut_mask(img, [0, 0, 48, 48])  # no background pixels: OpenCV raises
    assert not ok and filled.all()


def test_grabcut_context_runs_on_a_crop_around_the_box(monkeypatch):
    img = np.full((120, 160, 3), 30, np.uint8)
    cv2.circle(img, (110, 40), 9, (220, 200, 40), -1)
    full, ok_full = grabcut_mask(img, [96, 26, 124, 54])
    assert ok_full and full[40, 110]
    calls = []
    real = cv2.grabCut

    def spy(image, mask, rect, *args):
        calls.append((image.shape[:2], rect))
        return real(image, mask, rect, *args)

    monkeypatch.setattr(cv2, "grabCut", spy)
    # box 28x28, context 0.5 -> 14 px per side; clipped at the top (y0 = 26 - 14 = 12 >= 0 kept)
    mask, ok = grabcut_mask(img, [96, 26, 124, 54], context=0.5)
    assert calls[-1] == ((56, 56), (14, 14, 28, 28))
    assert ok and mask.shape == (120, 160) and mask[40, 110]  # placed back at image coordinates
    assert not mask[:26].any() and not mask[:, 124:].any() and not mask[:, :96].any()
    assert (mask ^ full).sum() <= 0.05 * full.sum()  # same object either way on this easy case
    # a box at the image corner: the crop is clipped; tiny context still gets >= 8 px of margin
    grabcut_mask(img, [0, 0, 20, 20], context=0.0)
    assert calls[-1] == ((28, 28), (0, 0, 20, 20))
    with pytest.raises(ValueError, match="context"):
        grabcut_mask(img, [0, 0, 20, 20], context=-1.0)


def test_grabcut_method_on_tiny_coco(tiny_coco, tmp_path):
    out = tmp_path / "grabcut.json"
    summary = pseudo_label(boxes_json=tiny_coco / "val.json", images_dir=tiny_coco / "images",
                           out_json=out, method="grabcut", evaluate=True, progress=False)
    assert summary["labelled"] == summary["boxes"] > 0
    assert summary["num_evaluated"] == summary["boxes"] and 0 < summary["mean_iou"] <= 1
    assert summary["grabcut_context"] is None
    _check_output(tiny_coco / "val.json", out)
    crop = pseudo_label(boxes_json=tiny_coco / "val.json", images_dir=tiny_coco / "images",
                        out_json=tmp_path / "crop.json", method="grabcut", evaluate=True,
                        progress=False, grabcut_context=0.5)
    assert crop["grabcut_context"] == 0.5 and crop["labelled"] == summary["labelled"]
    _check_output(tiny_coco / "val.json", tmp_path / "crop.json")
    with pytest.raises(ValueError, match="grabcut_context"):
        pseudo_label(boxes_json=tiny_coco / "val.json", images_dir=tiny_coco / "images",
                     out_json=tmp_path / "bad.json", method="grabcut", grabcut_context=float("nan"))


def test_model_method_round_trip_and_chunks(tiny_coco, tiny_weights, tmp_path):
    src = tiny_coco / "val.json"
    outs = []
    for chunk in (64, 1):
        out = tmp_path / f"model_{chunk}.json"
        summary = pseudo_label(boxes_json=src, images_dir=tiny_coco / "images", out_json=out,
                               weights=tiny_weights, device="cpu", evaluate=True,
                               chunk_size=chunk, progress=False)
        assert summary["labelled"] == summary["boxes"] > 0
        assert sum(summary["skipped"].values()) == 0 and summary["unknown_category"] == 0
        assert summary["num_evaluated"] == summary["boxes"]
        assert summary["mean_iou"] is not None and "segm/AP" in summary
        _check_output(src, out)
        outs.append(json.loads(out.read_text())["annotations"])
    assert outs[0] == outs[1]  # chunking does not change the result


def test_hundreds_of_boxes_are_processed_in_chunks(tiny_coco, tiny_weights, tmp_path,
                                                   monkeypatch):
    import discobox.inference.box_conditioned as bc

    data = json.loads((tiny_coco / "val.json").read_text())
    img = data["images"][0]
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 80, size=(300, 2))
    wh = rng.uniform(2, 40, size=(300, 2))
    data["annotations"] = [
        {"id": k + 1, "image_id": img["id"], "category_id": int(k % 6) + 1, "iscrowd": 0,
         "bbox": [float(v) for v in (*xy[k], *wh[k])]}
        for k in range(300)
    ]
    src, out = tmp_path / "many.json", tmp_path / "many_out.json"
    src.write_text(json.dumps(data))
    sizes = []
    real = bc.dynamic_mask_logits
    monkeypatch.setattr(bc, "dynamic_mask_logits",
                        lambda k, f: sizes.append(k.shape[0]) or real(k, f))
    summary = pseudo_label(boxes_json=src, images_dir=tiny_coco / "images", out_json=out,
                           weights=tiny_weights, device="cpu", chunk_size=32, progress=False)
    assert summary["labelled"] == 300 and max(sizes) <= 32
    _check_output(src, out)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_model_method_cuda_matches_cpu(tiny_coco, tiny_weights, tmp_path):
    anns = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.json"
        pseudo_label(boxes_json=tiny_coco / "val.json", images_dir=tiny_coco / "images",
                     out_json=out, weights=tiny_weights, device=device, batch_size=2,
                     progress=False)
        anns[device] = json.loads(out.read_text())["annotations"]
    for a, b in zip(anns["cpu"], anns["cuda"]):
        ra, rb = ({**x["segmentation"], "counts": x["segmentation"]["counts"].encode()}
                  for x in (a, b))
        assert a["area"] == b["area"] == 0 or mask_utils.iou([ra], [rb], [0])[0, 0] > 0.98


def _bad_input(tiny_coco: Path, tmp_path: Path) -> tuple[Path, dict, Path]:
    """A boxes json with every kind of bad input, and a private copy of the images that adds a
    corrupt file (so the missing and the unreadable image are counted apart)."""
    images = tmp_path / "images"
    shutil.copytree(tiny_coco / "images", images)
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    data = json.loads((tiny_coco / "val.json").read_text())
    img = data["images"][0]
    iid, h, w = img["id"], img["height"], img["width"]
    data["categories"].append({"id": 99, "name": "not_in_model"})
    next_id = max(a["id"] for a in data["annotations"]) + 1
    extra = [
        {"bbox": [10, 10, 0, 5], "category_id": 1},  # zero area
        {"bbox": [w - 10, h - 8, 30, 30], "category_id": 2},  # partly outside: clipped
        {"bbox": [w + 5, 0, 10, 10], "category_id": 2},  # outside the image
        {"bbox": [1, 2, float("nan"), 4], "category_id": 2},  # not finite
        {"bbox": [20, 20, 30, 30], "category_id": 99},  # category not in the model
    ]
    for k, a in enumerate(extra):
        a.update({"id": next_id + k, "image_id": iid, "iscrowd": 0})  # no segmentation
    data["images"].append({"id": 999, "file_name": "missing.png", "height": 96, "width": 96})
    extra.append({"id": next_id + 10, "image_id": 999, "category_id": 1, "bbox": [5, 5, 20, 20],
                  "iscrowd": 0})
    data["images"].append({"id": 998, "file_name": "corrupt.png", "height": 96, "width": 96})
    extra.append({"id": 10**6, "image_id": 998, "category_id": 1, "bbox": [5, 5, 20, 20],
                  "iscrowd": 0})
    data["annotations"].extend(extra)
    src = tmp_path / "bad.json"
    src.write_text(json.dumps(data).replace("NaN", '"nan"'))  # strict json; float() parses it
    return src, data, images


def test_bad_input_is_counted_and_the_rest_written(tiny_coco, tiny_weights, tmp_path):
    src, data, images = _bad_input(tiny_coco, tmp_path)
    out = tmp_path / "out.json"
    summary = pseudo_label(boxes_json=src, images_dir=images, out_json=out,
                           weights=tiny_weights, device="cpu", evaluate=True, chunk_size=2,
                           progress=False)
    assert summary["skipped"] == {"invalid_box": 1, "zero_area": 1, "outside_image": 1,
                                  "missing_image": 1, "unreadable_image": 1, "size_mismatch": 0}
    assert summary["clipped"] == 1 and summary["unknown_category"] == 1
    assert summary["images_skipped"] == 2
    assert summary["labelled"] == summary["boxes"] - 5
    assert summary["no_gt_mask"] == 2  # the clipped box and the unknown-category box
    assert summary["num_evaluated"] == summary["boxes"] - 7
    _check_output(src, out)
    anns = {a["id"]: a for a in json.loads(out.read_text())["annotations"]}
    corrupt = anns[max(anns)]
    assert corrupt["area"] == 0 and corrupt["segmentation"]["size"] == [96, 96]
    missing = anns[max(set(anns) - {max(anns)})]
    assert missing["area"] == 0 and missing["segmentation"]["size"] == [96, 96]
    # the same input through the box method: same counts, filled (clipped) boxes elsewhere
    summary = pseudo_label(boxes_json=src, images_dir=images, out_json=out,
                           method="box", progress=False)
    assert sum(summary["skipped"].values()) == 5 and summary["clipped"] == 1
    assert summary["skipped"]["unreadable_image"] == 1
    clipped = json.loads(out.read_text())["annotations"][len(data["annotations"]) - 6]
    img = data["images"][0]
    assert clipped["area"] == 10 * 8 and mask_utils.area(
        {**clipped["segmentation"], "counts": clipped["segmentation"]["counts"].encode()}
    ) == 80 and [img["height"], img["width"]] == clipped["segmentation"]["size"]


def test_structural_errors(tmp_path):
    src = tmp_path / "x.json"
    src.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "height": 4,
                                           "width": 4}],
                               "annotations": [{"id": 5, "image_id": 2, "bbox": [0, 0, 1, 1]}]}))
    with pytest.raises(ValueError, match="annotation 5"):
        pseudo_label(boxes_json=src, images_dir=tmp_path, out_json=tmp_path / "o.json",
                     method="box", progress=False)
    with pytest.raises(ValueError, match="--weights"):
        pseudo_label(boxes_json=src, images_dir=tmp_path, out_json=tmp_path / "o.json",
                     progress=False)
    assert not (tmp_path / "o.json").exists()


def test_cli_end_to_end(tiny_coco, tiny_weights, tmp_path, capsys):
    out, summary = tmp_path / "cli.json", tmp_path / "summary.json"
    rc = main(["pseudo-label", "--boxes", str(tiny_coco / "val.json"), "--images",
               str(tiny_coco / "images"), "--out", str(out), "--weights", str(tiny_weights),
               "--device", "cpu", "--evaluate", "--no-progress", "--chunk-size", "8",
               "--batch-size", "2", "--summary-out", str(summary), "test.mask_thr=0.5"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "mean IoU" in text and "segm AP" in text
    assert json.loads(summary.read_text())["labelled"] > 0
    _check_output(tiny_coco / "val.json", out)
    rc = main(["pseudo-label", "--boxes", str(tiny_coco / "val.json"), "--images",
               str(tiny_coco / "images"), "--out", str(tmp_path / "x.json")])
    assert rc == 2 and "--weights" in capsys.readouterr().err
    rc = main(["pseudo-label", "--boxes", str(tiny_coco / "val.json"), "--images",
               str(tiny_coco / "images"), "--out", str(tmp_path / "gc.json"), "--method",
               "grabcut", "--grabcut-context", "0.5", "--no-progress", "--summary-out",
               str(summary)])
    assert rc == 0 and json.loads(summary.read_text())["grabcut_context"] == 0.5


def test_cli_positional_overrides_reach_the_config(tiny_coco, tiny_weights, tmp_path, capsys):
    rc = main(["pseudo-label", "--boxes", str(tiny_coco / "val.json"), "--images",
               str(tiny_coco / "images"), "--out", str(tmp_path / "o.json"), "--weights",
               str(tiny_weights), "--device", "cpu", "--no-progress", "test.no_such_key=1"])
    assert rc == 2 and "no_such_key" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_output_written_atomically(tiny_coco, tmp_path, monkeypatch):
    out = tmp_path / "out.json"
    kwargs = dict(boxes_json=tiny_coco / "val.json", images_dir=tiny_coco / "images",
                  out_json=out, method="box", progress=False)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    with monkeypatch.context() as m:
        m.setattr(pl.json, "dumps", boom)
        with pytest.raises(RuntimeError):
            pseudo_label(**kwargs)
    assert not out.exists()
    out.write_text("previous")
    with monkeypatch.context() as m:  # fail after the text is written, before the rename
        m.setattr("discobox.checkpoint.io.os.fsync", boom)
        with pytest.raises(RuntimeError):
            pseudo_label(**kwargs)
    assert out.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temp file left


def test_tiled_model_method_labels_each_box_in_its_window(tiny_weights, tmp_path):
    """``test.tile``: a box is labelled in the window that holds it, exactly as if that window
    were the whole image (no resize here: the test scale keeps 256x640)."""
    rng = np.random.default_rng(0)
    wide = np.full((256, 640, 3), 90, np.uint8)
    for _ in range(12):
        y, x = rng.integers(0, 220), rng.integers(0, 600)
        wide[y:y + 36, x:x + 40] = rng.integers(120, 255, 3)
    images = tmp_path / "images"
    images.mkdir()
    # tile 256x320 with overlap 0.25: windows at x = 0, 160, 320
    parts = {"wide.png": wide, "left.png": wide[:, :320], "right.png": wide[:, 320:]}
    for name, img in parts.items():
        cv2.imwrite(str(images / name), np.ascontiguousarray(img[..., ::-1]))
    box_a, box_b = [20.0, 30.0, 130.0, 120.0], [500.0, 100.0, 100.0, 90.0]  # xywh
    data = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}
    anns = [("wide.png", box_a), ("wide.png", box_b), ("left.png", box_a),
            ("right.png", [box_b[0] - 320, *box_b[1:]])]
    for i, (name, img) in enumerate(parts.items()):
        data["images"].append({"id": i + 1, "file_name": name, "height": img.shape[0],
                               "width": img.shape[1]})
    ids = {im["file_name"]: im["id"] for im in data["images"]}
    for k, (name, bbox) in enumerate(anns):
        data["annotations"].append({"id": k + 1, "image_id": ids[name], "category_id": 1,
                                    "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0})
    src = tmp_path / "boxes.json"
    src.write_text(json.dumps(data))
    out = tmp_path / "out.json"
    summary = pseudo_label(boxes_json=src, images_dir=images, out_json=out, weights=tiny_weights,
                           device="cpu", progress=False,
                           overrides=["data.test_scale=[640,256]", "test.tile=[256,320]",
                                      "test.mask_thr=0.5", "test.refine=none"])
    assert summary["labelled"] == 4 and summary["fallback_box"] == 0
    coco = _check_output(src, out)
    masks = [coco.annToMask(a).astype(bool) for a in json.loads(out.read_text())["annotations"]]
    # box A is in the first window, box B in the last: same masks as the windows alone
    np.testing.assert_array_equal(masks[0][:, :320], masks[2])
    np.testing.assert_array_equal(masks[1][:, 320:], masks[3])
    assert masks[0].any() and masks[1].any()
    whole = tmp_path / "whole.json"
    pseudo_label(boxes_json=src, images_dir=images, out_json=whole, weights=tiny_weights,
                 device="cpu", progress=False,
                 overrides=["data.test_scale=[640,256]", "test.mask_thr=0.5",
                            "test.refine=none"])
    untiled = [coco.annToMask(a).astype(bool) for a in json.loads(whole.read_text())["annotations"]]
    # without tiles the wide image is one input: its masks are not the windows' masks
    assert not (np.array_equal(untiled[0], masks[0]) and np.array_equal(untiled[1], masks[1]))


def test_output_path_checked_before_any_work(tiny_coco, tmp_path, monkeypatch):
    from discobox.checkpoint.io import OutputError

    def no_labelling(*a, **k):
        raise AssertionError("labelled before the output path was checked")

    monkeypatch.setattr(pl, "_label_all", no_labelling)
    with pytest.raises(OutputError, match="is a directory"):
        pseudo_label(boxes_json=tiny_coco / "val.json", images_dir=tiny_coco / "images",
                     out_json=tmp_path, method="box", progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="not writable"):
        pseudo_label(boxes_json=tiny_coco / "val.json", images_dir=tiny_coco / "images",
                     out_json=blocker / "out.json", method="box", progress=False)
