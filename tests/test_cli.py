"""Every CLI verb end to end on tiny synthetic data (``discobox.cli.main``)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_overrides
from pycocotools.coco import COCO

from discobox.cli import predict as cli_predict
from discobox.cli import train as cli_train
from discobox.cli.main import main
from discobox.errors import DiscoboxError


@pytest.fixture(scope="module")
def trained(tiny_coco, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_train")
    rc = main(["train", "discobox_r18_fpn_cpu", "--output-dir", str(out),
               *tiny_overrides(tiny_coco, out, **{"solver.max_iter": 2})])
    assert rc == 0
    return out


def test_train_writes_final_checkpoint_config_and_metrics(trained):
    assert (trained / "model_0000002.pth").is_file()
    final = torch.load(trained / "model_final.pth", weights_only=True)
    assert set(final) == {"model", "config", "iteration"}
    assert (trained / "config.yaml").is_file()
    metrics = json.loads((trained / "metrics_final.json").read_text())
    assert {"bbox/AP", "segm/AP", "segm/APl"} <= set(metrics)
    lines = (trained / "metrics.jsonl").read_text().splitlines()
    assert any("train/loss_proj" in json.loads(line) for line in lines)


def test_train_resume_of_finished_run_is_a_no_op(trained, tiny_coco, capsys):
    rc = main(["train", "discobox_r18_fpn_cpu", "--resume", "--output-dir", str(trained),
               *tiny_overrides(tiny_coco, trained, **{"solver.max_iter": 2})])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["iteration"] == 2


def test_test_prints_metrics_and_writes_json(trained, tmp_path, capsys):
    metrics_out = tmp_path / "m.json"
    rc = main(["test", "--weights", str(trained / "model_final.pth"), "--device", "cpu",
               "--metrics-out", str(metrics_out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "segm" in printed and "bbox" in printed and "AP50" in printed
    assert "segm/AP75" in json.loads(metrics_out.read_text())


def test_test_format_only_writes_coco_results(trained, tiny_coco, tmp_path):
    out = tmp_path / "results.json"
    rc = main(["test", "--weights", str(trained / "model_final.pth"), "--device", "cpu",
               "--format-only", "--out", str(out), "test.score_thr=0.0",
               "test.update_thr=0.0", "test.mask_thr=0.01"])
    assert rc == 0
    results = json.loads(out.read_text())
    assert results, "random weights with score_thr=0 still give detections"
    r = results[0]
    assert {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(r)
    assert isinstance(r["segmentation"]["counts"], str)
    gt = COCO(str(tiny_coco / "val.json"))
    gt.loadRes(results)  # valid COCO results


def test_predict_writes_overlays_and_json(trained, tiny_coco, tmp_path):
    images = sorted((tiny_coco / "images").glob("val_*.png"))[:2]
    out = tmp_path / "pred"
    # Overrides mixed with the image paths, before and after them (positional KEY=VALUE).
    rc = main(["predict", "--weights", str(trained / "model_final.pth"), "test.score_thr=0.0",
               str(images[0]), "test.update_thr=0.0", str(images[1]), "test.mask_thr=0.01",
               "--output", str(out), "--score-thr", "0.0"])
    assert rc == 0
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in images)
    results = json.loads((out / "predictions.json").read_text())
    assert results, "random weights with score_thr=0 still give detections"
    for r in results:
        assert {"image_id", "category_id", "bbox", "score", "segmentation", "file_name",
                "category_name"} <= set(r)
        assert len(r["bbox"]) == 4 and 0.0 <= r["score"] <= 1.0
        assert isinstance(r["segmentation"]["counts"], str)
    assert {r["file_name"] for r in results} <= {str(p) for p in images}


def test_predict_set_alias_takes_one_override(trained, tiny_coco, tmp_path, monkeypatch):
    """``--set K=V`` no longer swallows the image paths that follow it."""
    seen = {}

    def fake_predict_files(**kwargs):
        seen.update(kwargs)
        return {"images": 1, "videos": 0, "frames": 0, "skipped": 0, "detections": 0,
                "out": str(tmp_path / "predictions.json")}

    monkeypatch.setattr(cli_predict, "predict_files", fake_predict_files)
    image = str(sorted((tiny_coco / "images").glob("val_*.png"))[0])
    assert main(["predict", "--weights", "w.pth", "--output", str(tmp_path),
                 "--set", "test.score_thr=0.1", image, "test.mask_thr=0.2"]) == 0
    assert seen["images"] == [image]
    assert seen["overrides"] == ["test.score_thr=0.1", "test.mask_thr=0.2"]


def test_recipes_lists_and_shows(capsys):
    assert main(["recipes"]) == 0
    names = capsys.readouterr().out.split()
    assert {"discobox_r50_fpn_3x_coco", "discobox_r101_dcn_fpn_3x_coco",
            "discobox_x101_dcn_fpn_3x_coco", "discobox_r50_fpn_6x_voc",
            "discobox_r101_fpn_6x_voc", "discobox_r18_fpn_cpu"} <= set(names)
    assert main(["recipes", "--show", "discobox_r101_dcn_fpn_3x_coco"]) == 0
    assert "dcn: true" in capsys.readouterr().out


def test_user_errors_are_one_line_with_exit_2(trained, tmp_path, capsys):
    assert main(["train", "discobox_r18_fpn_cpu", "solver.lrr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "solver.lrr" in err and "solver.lr" in err and "Traceback" not in err
    assert main(["test", "--weights", str(tmp_path / "missing.pth")]) == 2
    assert "missing.pth" in capsys.readouterr().err
    assert main(["predict", "--weights", str(trained / "model_final.pth"),
                 str(tmp_path / "missing.png"), "--output", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("discobox predict: error: ") and "missing.png" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["test", "--weights", "w.pth", "--format-only"]) == 2
    assert "--format-only needs --out" in capsys.readouterr().err
    assert main(["recipes", "--show", "no_such_recipe"]) == 2
    assert "no_such_recipe" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "discobox_r18_fpn_cpu", "--no-such-flag"])


def test_debug_env_reraises_user_errors(monkeypatch):
    monkeypatch.setenv("DISCOBOX_DEBUG", "1")
    with pytest.raises(DiscoboxError, match="solver.lrr"):
        main(["train", "discobox_r18_fpn_cpu", "solver.lrr=0.1"])


def test_bugs_keep_their_traceback(monkeypatch):
    """Only DiscoboxError is a user error: a RuntimeError (a shape bug, CUDA OOM) propagates."""

    def boom(cfg, *, resume, overrides=None):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli_train, "train", boom)
    with pytest.raises(RuntimeError, match="boom"):
        main(["train", "discobox_r18_fpn_cpu"])


def test_demo_end_to_end_tiny(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--output", str(out), "--iterations", "2", "--num-train", "4",
               "--num-val", "2", "--device", "cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "filled box" in printed and "GrabCut" in printed and "mask AP" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 2
    assert "segm/AP" in summary["box_supervised"]
    assert {"box", "grabcut", "model"} <= set(summary["box_conditioned"])
    assert len(summary["overlays"]) == 2
