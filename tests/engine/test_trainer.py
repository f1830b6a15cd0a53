"""End-to-end training on tiny synthetic data: checkpoints, exact resume, non-finite losses."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_overrides

from discobox.checkpoint.io import find_last_checkpoint, load_checkpoint_file
from discobox.config import ConfigError, load_config
from discobox.engine import trainer as trainer_mod


def _cfg(tiny_coco, out, **extra):
    return load_config(None, tiny_overrides(tiny_coco, out, **extra))


def test_train_writes_checkpoint_with_full_state(tiny_coco, tmp_path):
    cfg = _cfg(tiny_coco, tmp_path / "run")
    result = trainer_mod.train(cfg)
    assert result["iteration"] == 4
    assert "segm/AP" in result and "bbox/AP" in result
    ckpt = load_checkpoint_file(find_last_checkpoint(tmp_path / "run"))
    assert ckpt["iteration"] == 4
    for key in ("model", "optimizer", "scheduler", "scaler", "teacher", "gates", "rng", "config"):
        assert key in ckpt, key
    # teacher switched on at iteration 2 and is saved with the run (official code loses it)
    assert ckpt["teacher"] is not None
    # the teacher is also released beside the student, loadable by test/predict
    from discobox.checkpoint.load import load_model

    teacher_model, _ = load_model(tmp_path / "run" / "model_final_teacher.pth")
    for k, v in teacher_model.state_dict().items():
        assert torch.equal(v, ckpt["teacher"]["model"][k]), k
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    assert any("train/loss_proj" in r for r in records)
    assert (tmp_path / "run" / "config.yaml").exists()


def test_resumed_run_equals_uninterrupted_run(tiny_coco, tmp_path, monkeypatch):
    full = _cfg(tiny_coco, tmp_path / "full")
    trainer_mod.train(full)
    ref = load_checkpoint_file(find_last_checkpoint(tmp_path / "full"))["model"]

    # Second run: stop right after the checkpoint at iteration 2, as a kill would.
    real_save = trainer_mod.save_checkpoint

    def save_then_die(state, output_dir, iteration, **kw):
        path = real_save(state, output_dir, iteration, **kw)
        if iteration == 2:
            raise KeyboardInterrupt
        return path

    part = _cfg(tiny_coco, tmp_path / "part")
    monkeypatch.setattr(trainer_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        trainer_mod.train(part)
    monkeypatch.setattr(trainer_mod, "save_checkpoint", real_save)
    assert load_checkpoint_file(find_last_checkpoint(tmp_path / "part"))["iteration"] == 2
    trainer_mod.train(part, resume=True)
    got = load_checkpoint_file(find_last_checkpoint(tmp_path / "part"))["model"]
    assert ref.keys() == got.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0, msg=k)


def test_non_finite_loss_stops_with_iteration_and_terms(tiny_coco, tmp_path, monkeypatch):
    cfg = _cfg(tiny_coco, tmp_path / "nan", **{"data.val_json": "null"})
    real = trainer_mod.build_criterion

    def nan_criterion(c):
        crit = real(c)

        def call(*args, **kwargs):
            losses = crit(*args, **kwargs)
            losses["loss_cls"] = losses["loss_cls"] * float("nan")
            return losses

        return call

    monkeypatch.setattr(trainer_mod, "build_criterion", nan_criterion)
    with pytest.raises(trainer_mod.NonFiniteLossError, match=r"iteration 1: .*loss_cls=nan"):
        trainer_mod.train(cfg)


def test_full_supervision_mode_trains(tiny_coco, tmp_path):
    cfg = _cfg(tiny_coco, tmp_path / "full_mode", **{"loss.mode": "full", "solver.max_iter": 2,
                                                      "solver.steps": "[]"})
    result = trainer_mod.train(cfg)
    assert result["iteration"] == 2


def test_box_training_ignores_segmentations(tiny_coco, tmp_path):
    """Box mode never reads masks: garbage in every ``segmentation`` gives the same weights."""
    doc = json.loads((tiny_coco / "train.json").read_text())
    for i, ann in enumerate(doc["annotations"]):
        ann["segmentation"] = "corrupt" if i % 2 else [[-1.0, "x"]]
    bad_json = tmp_path / "train_corrupt.json"
    bad_json.write_text(json.dumps(doc))
    extra = {"solver.max_iter": 2, "train.eval_period": 0, "data.val_json": "null"}
    trainer_mod.train(_cfg(tiny_coco, tmp_path / "clean", **extra))
    trainer_mod.train(_cfg(tiny_coco, tmp_path / "corrupt", **extra,
                           **{"data.train_json": str(bad_json)}))
    a = load_checkpoint_file(find_last_checkpoint(tmp_path / "clean"))["model"]
    b = load_checkpoint_file(find_last_checkpoint(tmp_path / "corrupt"))["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_correspondence_branch_trains_and_bank_is_checkpointed(tiny_coco, tmp_path):
    extra = {"corr.enabled": "true", "corr.min_box_size": 0, "corr.min_retrieval": 1,
             "corr.max_retrieval": 2, "corr.fg_iou_thresh": 0.0, "corr.bg_iou_thresh": 0.0,
             "corr.appear_thresh": -1.0, "corr.ratio_range": "[0.0, 100.0]",
             "teacher.start_iter": 1, "solver.max_iter": 4}
    trainer_mod.train(_cfg(tiny_coco, tmp_path / "corr", **extra))
    ckpt = load_checkpoint_file(find_last_checkpoint(tmp_path / "corr"))
    bank = ckpt["object_bank"]
    assert bank is not None
    lines = (tmp_path / "corr" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    corr = [r["train/loss_corr"] for r in records if "train/loss_corr" in r]
    assert len(corr) == 4 and any(v > 0 for v in corr), corr
    # the bank comes back on resume
    from discobox.modeling.build import build_object_bank

    fresh = build_object_bank(_cfg(tiny_coco, tmp_path / "x", **extra))
    fresh.load_state_dict(bank)
    assert fresh.state_dict().keys() == bank.keys()


def test_random_init_with_frozen_backbone_warns(caplog):
    """Frozen stages / BN statistics from random init freeze random filters: say so."""
    import logging

    caplog.set_level(logging.WARNING, logger="discobox")
    trainer_mod._warn_random_init_frozen(load_config("discobox_r50_fpn_3x_coco"))
    assert "model.backbone.frozen_stages=-1" in caplog.text
    caplog.clear()
    trainer_mod._warn_random_init_frozen(load_config("discobox_r50_fpn_3x_coco", {
        "model.backbone.frozen_stages": -1, "model.backbone.norm_eval": False}))
    trainer_mod._warn_random_init_frozen(load_config("discobox_r50_fpn_3x_coco", {
        "model.backbone.weights": "/some/resnet50.pth"}))
    assert caplog.text == ""


def test_crop_training_without_tiled_test_warns(caplog):
    """A model trained on crops needs tiled inference on bigger images: say so up front."""
    import logging

    caplog.set_level(logging.WARNING, logger="discobox")
    trainer_mod._warn_crop_without_tiles(
        load_config("discobox_r18_fpn_cpu", ["data.train_crop=[256,320]"]))
    assert "test.tile=[256,320]" in caplog.text
    caplog.clear()
    trainer_mod._warn_crop_without_tiles(load_config("discobox_r18_fpn_cpu", [
        "data.train_crop=[256,320]", "test.tile=[256,320]"]))
    trainer_mod._warn_crop_without_tiles(load_config("discobox_r18_fpn_cpu", [
        "data.train_crop=[512,1024]"]))  # the test images fit one crop
    trainer_mod._warn_crop_without_tiles(load_config("discobox_r18_fpn_cpu"))
    assert caplog.text == ""


def test_ts_ramp_scales_l_ts_by_iteration_and_rejects_negative(tiny_coco, tmp_path):
    """loss.ts_ramp_iters=4: L_ts is 0 at the first step (no CRF), then weighted 1/4, 2/4, 3/4."""
    extra = {"solver.max_iter": 4, "train.eval_period": 0, "data.val_json": "null",
             "teacher.start_iter": 100, "loss.ts_ramp_iters": 4}
    trainer_mod.train(_cfg(tiny_coco, tmp_path / "ramp", **extra))
    lines = (tmp_path / "ramp" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    train = [r for r in records if "train/ts_scale" in r]
    assert [r["train/ts_scale"] for r in train] == [0.0, 0.25, 0.5, 0.75]
    assert train[0]["train/loss_ts"] == 0.0
    assert all(r["train/loss_ts"] > 0 for r in train[1:])
    with pytest.raises(ConfigError, match="loss.ts_ramp_iters"):
        trainer_mod.train(_cfg(tiny_coco, tmp_path / "bad", **{**extra, "loss.ts_ramp_iters": -1}))


def test_box_warmup_falls_to_zero_by_iteration_and_rejects_negative(tiny_coco, tmp_path):
    """loss.box_warmup_iters=2: loss_boxwarm weighted 1, 1/2, then 0 for the rest of the run."""
    extra = {"solver.max_iter": 4, "train.eval_period": 0, "data.val_json": "null",
             "teacher.start_iter": 100, "loss.box_warmup_iters": 2}
    trainer_mod.train(_cfg(tiny_coco, tmp_path / "warm", **extra))
    lines = (tmp_path / "warm" / "metrics.jsonl").read_text().splitlines()
    train = [r for r in map(json.loads, lines) if "train/box_scale" in r]
    assert [r["train/box_scale"] for r in train] == [1.0, 0.5, 0.0, 0.0]
    assert all(r["train/loss_boxwarm"] > 0 for r in train[:2])
    assert [r["train/loss_boxwarm"] for r in train[2:]] == [0.0, 0.0]
    for key, bad in (("loss.box_warmup_iters", -1), ("loss.box_warmup_weight", -0.5)):
        with pytest.raises(ConfigError, match=key):
            trainer_mod.train(_cfg(tiny_coco, tmp_path / "bad", **{**extra, key: bad}))
