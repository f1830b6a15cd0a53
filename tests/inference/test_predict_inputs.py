"""``discobox predict`` on real inputs: folders, globs, videos, non-images skipped and counted,
distinct overlay names, the dataset's category ids and ``--image-ids-from``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import tiny_overrides

from discobox.cli.main import main
from discobox.config import load_config
from discobox.errors import InvalidInputError, MissingFileError
from discobox.inference.predict_files import predict_files
from discobox.inference.sources import expand_inputs, image_ids_from, overlay_names
from discobox.modeling.build import build_model

# random weights detect something only with every threshold at ~0
LOW = ["test.score_thr=0.0", "test.update_thr=0.0", "test.mask_thr=0.01"]
CAT_IDS = (11, 12, 13, 14, 15, 16)
NAMES = ("disc", "ring", "triangle", "cross", "crescent", "star")


@pytest.fixture(scope="module")
def weights(tiny_coco, tmp_path_factory) -> Path:
    """A random tiny model whose checkpoint stores class names and category ids."""
    out = tmp_path_factory.mktemp("pred_model")
    cfg = load_config("discobox_r18_fpn_cpu", tiny_overrides(tiny_coco, out))
    cfg = cfg.replace(**{"data.class_names": NAMES, "data.category_ids": CAT_IDS})
    torch.manual_seed(0)
    path = out / "tiny.pth"
    torch.save({"model": build_model(cfg).state_dict(), "config": cfg.to_dict()}, path)
    return path


@pytest.fixture()
def folder(tiny_coco, tmp_path) -> Path:
    """val_00000.png, val_00001.png, the first also as val_00000.jpg, and notes.txt."""
    d = tmp_path / "in"
    d.mkdir()
    for name in ("val_00000.png", "val_00001.png"):
        shutil.copy(tiny_coco / "images" / name, d / name)
    cv2.imwrite(str(d / "val_00000.jpg"), cv2.imread(str(d / "val_00000.png")))
    (d / "notes.txt").write_text("not an image")
    (d / ".hidden").write_text("ignored")
    return d


def _run(weights, inputs, out, **kw):
    return predict_files(weights=weights, images=inputs, output=out, overrides=LOW,
                         score_thr=0.0, device="cpu", progress=False, **kw)


def test_folder_skips_a_non_image_and_names_overlays_apart(weights, folder, tmp_path):
    out = tmp_path / "out"
    summary = _run(weights, [folder], out, batch_size=2)
    assert summary["images"] == 3 and summary["skipped"] == 1
    assert summary["skipped_files"] == [str(folder / "notes.txt")]
    assert sorted(p.name for p in out.glob("*.png")) == [
        "val_00000_jpg.png", "val_00000_png.png", "val_00001.png"]
    results = json.loads((out / "predictions.json").read_text())
    assert summary["detections"] == len(results) > 0
    by_file = {r["file_name"]: r["image_id"] for r in results}
    # ids: positions among the images read, in sorted order (.jpg before .png)
    assert by_file == {str(folder / "val_00000.jpg"): 0, str(folder / "val_00000.png"): 1,
                       str(folder / "val_00001.png"): 2}
    for r in results:  # the dataset's category ids and names, from the checkpoint
        assert r["category_id"] in CAT_IDS
        assert r["category_name"] == NAMES[CAT_IDS.index(r["category_id"])]


def test_glob_and_image_ids_from(weights, folder, tiny_coco, tmp_path):
    out = tmp_path / "out"
    summary = _run(weights, [str(folder / "*.png")], out,
                   image_ids=tiny_coco / "val.json")
    assert summary["images"] == 2 and summary["skipped"] == 0
    val = json.loads((tiny_coco / "val.json").read_text())
    ids = {im["file_name"]: im["id"] for im in val["images"]}
    results = json.loads((out / "predictions.json").read_text())
    assert {(Path(r["file_name"]).name, r["image_id"]) for r in results} == {
        (n, ids[n]) for n in ("val_00000.png", "val_00001.png")}
    with pytest.raises(InvalidInputError, match="val_00000.jpg"):  # not in the json
        _run(weights, [folder / "val_00000.jpg"], out, image_ids=tiny_coco / "val.json")
    # a non-image beside the images is skipped as without --image-ids-from
    shutil.copy(folder / "notes.txt", tmp_path / "notes.txt")
    summary = _run(weights, [folder / "val_00001.png", tmp_path / "notes.txt"], out,
                   image_ids=tiny_coco / "val.json")
    assert summary["images"] == 1 and summary["skipped"] == 1


def _video(path: Path, frames: int = 10) -> Path:
    codec = "MJPG" if path.suffix == ".avi" else "mp4v"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), 5, (96, 64))
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for k in range(frames):
        frame = np.full((64, 96, 3), 40, np.uint8)
        cv2.circle(frame, (20 + 5 * k, 32), 12, tuple(int(v) for v in rng.integers(100, 255, 3)),
                   -1)
        writer.write(frame)
    writer.release()
    return path


def test_video_frames_and_annotated_video(weights, tmp_path):
    video = _video(tmp_path / "clip.mp4")  # (an .avi one: test_cli_folder_video_and_errors)
    out = tmp_path / "out"
    summary = _run(weights, [video], out, batch_size=4)
    assert summary["videos"] == 1 and summary["frames"] == 10 and summary["images"] == 0
    results = json.loads((out / "predictions.json").read_text())
    assert {r["frame"] for r in results} <= set(range(10)) and results
    assert all(r["image_id"] == r["frame"] for r in results)
    (annotated,) = [p for p in out.iterdir() if p.suffix in (".mp4", ".avi")]
    cap = cv2.VideoCapture(str(annotated))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 10
    assert not list(out.glob("*.png"))


def test_cli_folder_video_and_errors(weights, folder, tmp_path, capsys):
    _video(folder / "clip.avi", frames=3)
    out = tmp_path / "out"
    rc = main(["predict", "--weights", str(weights), str(folder), *LOW, "--output", str(out),
               "--device", "cpu", "--batch-size", "2", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "3 images, 3 frames of 1 videos" in printed and "skipped 1 files" in printed
    results = json.loads((out / "predictions.json").read_text())
    assert sorted({r["image_id"] for r in results}) == list(range(len(
        {r["image_id"] for r in results})))  # positions, frames included
    assert main(["predict", "--weights", str(weights), str(tmp_path / "nothing_*.png"),
                 "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "nothing_*.png" in err and len(err.strip().splitlines()) == 1
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # --output under a file: refused before the model loads
    assert main(["predict", "--weights", str(tmp_path / "no.pth"), str(folder),
                 "--output", str(blocker / "o")]) == 2
    assert "not writable" in capsys.readouterr().err


def test_expand_inputs_and_overlay_names(folder, tmp_path):
    files = expand_inputs([folder, folder / "val_00001.png", str(folder / "val_*.png")])
    assert [f.name for f in files] == ["notes.txt", "val_00000.jpg", "val_00000.png",
                                       "val_00001.png"]  # each once, hidden files left out
    with pytest.raises(MissingFileError, match="missing.png"):
        expand_inputs([tmp_path / "missing.png"])
    paths = [Path(p) for p in ("a/x.png", "a/x.jpg", "b/x.png", "b/x.jpg", "a/y.png", "b/y")]
    assert overlay_names(paths) == ["x_png.png", "x_jpg.png", "x_png_1.png", "x_jpg_1.png",
                                    "y_png.png", "y.png"]
    ids = image_ids_from(_json(tmp_path, ["sub/val_00000.png", "val_00001.png"]),
                         [folder / "val_00001.png"])
    assert ids == {folder / "val_00001.png": 2}


def _json(tmp_path: Path, names: list[str]) -> Path:
    path = tmp_path / "ids.json"
    path.write_text(json.dumps({"images": [{"id": k + 1, "file_name": n}
                                           for k, n in enumerate(names)]}))
    return path


def test_class_names_and_category_ids_fallbacks():
    from discobox.data.coco_classes import COCO_CATEGORY_IDS, COCO_CLASSES
    from discobox.inference.predictor import Predictor

    p = Predictor.__new__(Predictor)  # only the config matters here
    p.cfg = load_config(None, ["model.num_classes=80"])  # an official COCO checkpoint
    assert p.class_names == list(COCO_CLASSES) and p.category_ids == list(COCO_CATEGORY_IDS)
    assert len(set(COCO_CATEGORY_IDS)) == 80 and COCO_CATEGORY_IDS[-1] == 90
    p.cfg = load_config(None, ["model.num_classes=3"])
    assert p.class_names == ["0", "1", "2"] and p.category_ids == [0, 1, 2]
    p.cfg = p.cfg.replace(**{"data.category_ids": (5, 6, 7), "data.class_names": ("a", "b", "c")})
    assert p.class_names == ["a", "b", "c"] and p.category_ids == [5, 6, 7]


def test_ids_round_trip_train_checkpoint_predict_cocoeval(tiny_coco, tmp_path, capsys):
    """Class names and category ids of the training json travel in the checkpoint to
    predictions.json, which COCOeval scores against the val json without any remapping."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    run = tmp_path / "run"
    assert main(["train", "discobox_r18_fpn_cpu", "--output-dir", str(run),
                 *tiny_overrides(tiny_coco, run, **{"solver.max_iter": 1,
                                                    "train.checkpoint_period": 1})]) == 0
    out = tmp_path / "pred"
    assert main(["predict", "--weights", str(run / "model_final.pth"),
                 str(tiny_coco / "images" / "val_*.png"), *LOW, "--output", str(out),
                 "--image-ids-from", str(tiny_coco / "val.json"), "--no-progress"]) == 0
    capsys.readouterr()
    val = json.loads((tiny_coco / "val.json").read_text())
    names = {c["id"]: c["name"] for c in val["categories"]}
    results = json.loads((out / "predictions.json").read_text())
    assert results and {r["image_id"] for r in results} <= {im["id"] for im in val["images"]}
    for r in results:
        assert names[r["category_id"]] == r["category_name"]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tiny_coco / "val.json"))
        ev = COCOeval(gt, gt.loadRes(results), "segm")
        ev.evaluate()
        ev.accumulate()
    assert len(ev.evalImgs) > 0
