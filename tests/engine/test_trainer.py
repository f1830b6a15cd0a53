"""End-to-end training on tiny synthetic data: checkpoints, exact resume, non-finite losses."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_overrides

from discobox.checkpoint.io import find_last_checkpoint, load_checkpoint_file
from discobox.config import load_config
from discobox.engine import trainer as trainer_mod
from discobox.modeling.build import build_object_bank


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
            losses, stats = crit(*args, **kwargs)
            losses["loss_cls"] = losses["loss_cls"] * float("nan")
            return losses, stats

        return call

    monkeypatch.setattr(trainer_mod, "build_criterion", nan_criterion)
    with pytest.raises(trainer_mod.NonFiniteLossError, match=r"iteration 1: .*loss_cls=nan"):
        trainer_mod.train(cfg)


def _train_records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "train/loss" in r]


def test_full_supervision_mode_trains_the_mask_branch_with_the_dice(tiny_coco, tmp_path):
    """Full mode: every step logs loss_cls and loss_mask = 3 x a dice on real masks in (0, 1),
    no box-mode term, and that dice is what moves the mask-feature head (with
    loss.mask_weight=0 the head's parameters end elsewhere)."""
    extra = {"loss.mode": "full", "solver.max_iter": 2, "solver.steps": "[]",
             "data.val_json": "null"}
    trainer_mod.train(_cfg(tiny_coco, tmp_path / "full", **extra))
    records = _train_records(tmp_path / "full")
    assert len(records) == 2
    for r in records:
        assert {k for k in r if k.startswith("train/loss_")} == {"train/loss_cls",
                                                                  "train/loss_mask"}
        assert 0.0 < r["train/loss_mask"] < 3.0
    trainer_mod.train(_cfg(tiny_coco, tmp_path / "no_dice", **extra, **{"loss.mask_weight": 0}))
    a = load_checkpoint_file(find_last_checkpoint(tmp_path / "full"))["model"]
    b = load_checkpoint_file(find_last_checkpoint(tmp_path / "no_dice"))["model"]
    mask_head = [k for k in a if k.startswith("mask_feat_head.") and k.endswith(".weight")]
    assert mask_head and all(not torch.equal(a[k], b[k]) for k in mask_head)


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
    corr = [r["train/loss_corr"] for r in _train_records(tmp_path / "corr")]
    assert len(corr) == 4 and any(v > 0 for v in corr), corr
    # the bank comes back on resume, slot for slot
    assert any(q["size"] > 0 for q in bank["queues"].values())
    fresh = build_object_bank(_cfg(tiny_coco, tmp_path / "x", **extra))
    fresh.load_state_dict(bank)
    _assert_same(fresh.state_dict(), bank)


def _assert_same(a, b, where="bank"):
    """Nested dicts of tensors and numbers are equal, tensors bit for bit."""
    if isinstance(b, dict):
        assert isinstance(a, dict) and a.keys() == b.keys(), where
        for k in b:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(b, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where


def test_random_init_with_frozen_backbone_warns(caplog):
    """Frozen stages / BN statistics from random init freeze random filters: say so."""
    import logging

    caplog.set_level(logging.WARNING, logger="discobox")
    trainer_mod.warn_random_init_frozen(load_config("discobox_r50_fpn_3x_coco"))
    assert "model.backbone.frozen_stages=-1" in caplog.text
    caplog.clear()
    trainer_mod.warn_random_init_frozen(load_config("discobox_r50_fpn_3x_coco", {
        "model.backbone.frozen_stages": -1, "model.backbone.norm_eval": False}))
    trainer_mod.warn_random_init_frozen(load_config("discobox_r50_fpn_3x_coco", {
        "model.backbone.weights": "/some/resnet50.pth"}))
    assert caplog.text == ""


def test_crop_training_without_tiled_test_warns(caplog):
    """A model trained on crops needs tiled inference on bigger images: say so up front."""
    import logging

    caplog.set_level(logging.WARNING, logger="discobox")
    trainer_mod.warn_crop_without_tiles(
        load_config("discobox_r18_fpn_cpu", ["data.train_crop=[256,320]"]))
    assert "test.tile=[256,320]" in caplog.text
    caplog.clear()
    trainer_mod.warn_crop_without_tiles(load_config("discobox_r18_fpn_cpu", [
        "data.train_crop=[256,320]", "test.tile=[256,320]"]))
    trainer_mod.warn_crop_without_tiles(load_config("discobox_r18_fpn_cpu", [
        "data.train_crop=[512,1024]"]))  # the test images fit one crop
    trainer_mod.warn_crop_without_tiles(load_config("discobox_r18_fpn_cpu"))
    assert caplog.text == ""


def _cli(tiny_coco, out, **extra):
    from discobox.cli.main import main

    return main(["train", "discobox_r18_fpn_cpu", "--output-dir", str(out),
                 *tiny_overrides(tiny_coco, out, **extra)])


def test_cli_resume_restores_the_checkpoint_config(tiny_coco, tmp_path, capsys):
    """`train RECIPE --output-dir RUN --resume` needs no data keys: the checkpoint's config is
    restored; only keys given on the command line override it, each logged."""
    import yaml

    from discobox.cli.main import main

    run = tmp_path / "run"
    short = {"solver.max_iter": 2, "solver.steps": "[]", "data.val_json": "null",
             "data.batch_size": 1}
    assert _cli(tiny_coco, run, **short) == 0
    before = yaml.safe_load((run / "config.yaml").read_text())
    capsys.readouterr()
    rc = main(["train", "discobox_r18_fpn_cpu", "--output-dir", str(run), "--resume",
               "solver.max_iter=3"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert json.loads(out)["iteration"] == 3
    after = yaml.safe_load((run / "config.yaml").read_text())
    assert after["solver"]["max_iter"] == 3
    after["solver"]["max_iter"] = 2
    assert after == before  # batch 1, 128 px, the data keys: all the checkpoint's
    log = (run / "log.txt").read_text()
    assert "resume: solver.max_iter: 2 -> 3" in log
    assert log.count("resume: ") == 1  # only the key given (the output dir is unchanged)
    assert load_checkpoint_file(find_last_checkpoint(run))["iteration"] == 3


def test_cli_one_line_errors_for_unwritable_dir_and_non_finite_loss(tiny_coco, tmp_path,
                                                                   monkeypatch, capsys):
    (tmp_path / "file").write_text("x")
    assert _cli(tiny_coco, tmp_path / "file" / "run") == 2
    err = capsys.readouterr().err
    assert err.startswith("discobox train: error: output directory is not writable: ")
    assert len(err.strip().splitlines()) == 1

    real = trainer_mod.build_criterion

    def nan_criterion(c):
        crit = real(c)

        def call(*args, **kwargs):
            losses, stats = crit(*args, **kwargs)
            losses["loss_cls"] = losses["loss_cls"] * float("inf")
            return losses, stats

        return call

    monkeypatch.setattr(trainer_mod, "build_criterion", nan_criterion)
    assert _cli(tiny_coco, tmp_path / "nan", **{"data.val_json": "null"}) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("discobox train: error: non-finite loss at iteration 1: ")
    assert not any("Traceback" in line for line in err), "\n".join(err)


def test_sigint_saves_the_current_iteration_and_resume_is_exact(tiny_coco, tmp_path,
                                                               monkeypatch):
    """SIGINT during iteration 3 (no checkpoint due): the step finishes, model_0000003.pth is
    written, TrainingInterrupted says so; --resume then ends bit-identical to a straight run
    (SIGTERM through the CLI: tests/engine/test_fault_injection.py)."""
    import os
    import signal

    extra = {"data.val_json": "null"}
    trainer_mod.train(_cfg(tiny_coco, tmp_path / "full", **extra))
    ref = load_checkpoint_file(find_last_checkpoint(tmp_path / "full"))

    real_step = trainer_mod._train_step

    def step_with_sigterm(run, batch, it):
        if it == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(run, batch, it)

    monkeypatch.setattr(trainer_mod, "_train_step", step_with_sigterm)
    part = _cfg(tiny_coco, tmp_path / "part", **extra)
    with pytest.raises(trainer_mod.TrainingInterrupted) as stop:
        trainer_mod.train(part)
    assert stop.value.signum == signal.SIGINT and stop.value.iteration == 3
    assert stop.value.checkpoint.name == "model_0000003.pth"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    monkeypatch.setattr(trainer_mod, "_train_step", real_step)
    assert load_checkpoint_file(find_last_checkpoint(tmp_path / "part"))["iteration"] == 3
    trainer_mod.train(part, resume=True)
    got = load_checkpoint_file(find_last_checkpoint(tmp_path / "part"))
    for part_name in ("model", "teacher"):
        _assert_same(got[part_name], ref[part_name], part_name)
