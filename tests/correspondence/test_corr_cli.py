"""``discobox eval-corr``, ``correspond`` and ``voc-exclude-pfpascal`` end to end on tiny data."""

import json

import pytest
import torch
from corr_helpers import make_pfpascal, make_pfwillow, make_spair, textured_image, write_image

from discobox.cli.main import main
from discobox.structures import Instances

MAKERS = {"pf-pascal": make_pfpascal, "pf-willow": make_pfwillow, "spair": make_spair}


@pytest.mark.parametrize("dataset", list(MAKERS))
def test_eval_corr_end_to_end(tmp_path, tiny_weights_path, dataset, capsys):
    MAKERS[dataset](tmp_path)
    out = tmp_path / "metrics.json"
    rc = main(["eval-corr", "--weights", str(tiny_weights_path), "--dataset", dataset,
               "--root", str(tmp_path), "--out", str(out), "--img-side", "64",
               "--alpha", "0.05", "0.1", "--device", "cpu"])
    assert rc == 0
    m = json.loads(out.read_text())
    assert m["dataset"] == dataset and m["alphas"] == [0.05, 0.1]
    assert m["pairs_skipped"] == m["skips"]["pairs_skipped"] >= 1
    assert m["pairs_evaluated"] == m["pairs_listed"] - m["pairs_skipped"]
    assert set(m["pck_per_image"]) == set(m["pck_per_keypoint"]) == {"0.05", "0.1"}
    assert all(0.0 <= v <= 1.0 for v in m["pck_per_image"].values())
    printed = capsys.readouterr().out
    assert "skipped" in printed and "PCK@0.1" in printed


def test_eval_corr_reports_missing_root(tmp_path, tiny_weights_path, capsys):
    rc = main(["eval-corr", "--weights", str(tiny_weights_path), "--dataset", "spair",
               "--root", str(tmp_path / "nope")])
    assert rc == 2 and "not found" in capsys.readouterr().err


def _images(tmp_path):
    a = write_image(tmp_path / "a.png", textured_image(64, seed=1))
    b = write_image(tmp_path / "b.png", textured_image(80, seed=1)[:64])
    return a, b


def test_correspond_with_boxes(tmp_path, tiny_weights_path):
    a, b = _images(tmp_path)
    out = tmp_path / "out"
    rc = main(["correspond", "--weights", str(tiny_weights_path), str(a), str(b),
               "--box-a", "4,4,60,60", "--box-b", "8,2,70,62", "--output", str(out),
               "--num-points", "6", "--img-side", "64", "--device", "cpu"])
    assert rc == 0
    png, js = out / "a_b_corr.png", out / "a_b_corr.json"
    assert png.exists() and png.stat().st_size > 0
    r = json.loads(js.read_text())
    assert r["box_a"] == [4, 4, 60, 60] and 1 <= len(r["matches"]) <= 6
    for m in r["matches"]:
        assert 4 <= m["a"][0] <= 60 and 4 <= m["a"][1] <= 60
        assert 0 <= m["b"][0] <= 80 and 0 <= m["b"][1] <= 64
        assert 0 <= m["confidence"] <= 1


def test_correspond_uses_detections_of_the_same_class(tmp_path, tiny_weights_path,
                                                      monkeypatch):
    from discobox.inference.predictor import Predictor

    def fake(self, images, names=()):
        a = Instances(boxes=torch.tensor([[2.0, 2, 40, 40], [10, 10, 50, 60]]),
                      labels=torch.tensor([0, 2]), scores=torch.tensor([0.9, 0.6]))
        b = Instances(boxes=torch.tensor([[5.0, 5, 60, 60]]), labels=torch.tensor([2]),
                      scores=torch.tensor([0.8]))
        return [a, b]

    monkeypatch.setattr(Predictor, "predict_many", fake)
    a, b = _images(tmp_path)
    rc = main(["correspond", "--weights", str(tiny_weights_path), str(a), str(b),
               "--output", str(tmp_path / "o"), "--img-side", "64", "--device", "cpu"])
    assert rc == 0
    r = json.loads((tmp_path / "o" / "a_b_corr.json").read_text())
    assert r["label"] == 2 and r["box_a"] == [10, 10, 50, 60] and r["box_b"] == [5, 5, 60, 60]


def test_correspond_errors(tmp_path, tiny_weights_path, capsys):
    a, b = _images(tmp_path)
    w = str(tiny_weights_path)
    # A random-init model detects nothing (scores ~0.01).
    assert main(["correspond", "--weights", w, str(a), str(b), "--output", str(tmp_path),
                 "--device", "cpu"]) == 2
    assert "no detection" in capsys.readouterr().err
    assert main(["correspond", "--weights", w, str(a), str(tmp_path / "missing.png"),
                 "--box-a", "0,0,9,9", "--box-b", "0,0,9,9", "--output", str(tmp_path)]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert main(["correspond", "--weights", w, str(a), str(b), "--box-a", "0,0,9",
                 "--box-b", "0,0,9,9", "--output", str(tmp_path)]) == 2
    assert "bad box" in capsys.readouterr().err
    assert main(["correspond", "--weights", w, str(a), str(b), "--box-a", "0,0,9,9",
                 "--output", str(tmp_path)]) == 2
    assert "both" in capsys.readouterr().err


def test_voc_exclude_pfpascal(tmp_path, capsys):
    make_pfpascal(tmp_path)
    voc = tmp_path / "train_aug.txt"
    voc.write_text("/JPEGImages/2008_000001.jpg /SegmentationClassAug/2008_000001.png\n"
                   "2008_000002\n2009_000005\n2010_000123\n\n")
    out = tmp_path / "list.txt"
    rc = main(["voc-exclude-pfpascal", "--voc-list", str(voc), "--pfpascal-root",
               str(tmp_path), "--out", str(out)])
    assert rc == 0
    # test pairs use 2008_000001..4 (000004 absent from the list); the trn image 2009_000005
    # stays (the official tool would have removed it instead, docs/method.md §12.9).
    assert out.read_text().splitlines() == ["2009_000005", "2010_000123"]
    assert "kept 2 of 4" in capsys.readouterr().out
    rc = main(["voc-exclude-pfpascal", "--voc-list", str(voc), "--pfpascal-root",
               str(tmp_path), "--out", str(out), "--splits", "test", "trn"])
    assert rc == 0 and out.read_text().splitlines() == ["2010_000123"]
