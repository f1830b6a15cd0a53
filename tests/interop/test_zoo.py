"""Model zoo: provenance data (docs/method.md §10) and weights hash verification."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys

import pytest
import torch

from discobox.checkpoint import zoo
from discobox.checkpoint.load import load_model
from discobox.cli.main import main
from discobox.config import available_recipes, load_config
from discobox.modeling.build import build_model


def test_every_recipe_listed_with_reported_ap():
    entries = zoo.list_models()
    assert [e.config for e in entries] == available_recipes()
    assert set(zoo.ZOO) == set(available_recipes())
    r50 = zoo.get_entry("discobox_r50_fpn_3x_coco")
    assert (r50.ap("val2017"), r50.ap("test-dev")) == (30.7, 32.0)
    assert zoo.get_entry("discobox_r101_dcn_fpn_3x_coco").ap("val2017") == 35.3
    x101 = zoo.get_entry("discobox_x101_dcn_fpn_3x_coco")
    assert (x101.ap("val2017"), x101.ap("test-dev")) == (37.3, 37.9)
    assert zoo.get_entry("discobox_r50_fpn_6x_voc").ap("val2017") is None
    # No checksum is published anywhere: none may be invented.
    assert all(e.sha256 is None for e in entries)
    with pytest.raises(KeyError, match="known"):
        zoo.get_entry("nope")


def test_verify_weights(tmp_path, monkeypatch):
    path = tmp_path / "coco_r50_fpn_3x.pth"
    path.write_bytes(b"not really weights")
    good = hashlib.sha256(b"not really weights").hexdigest()
    assert zoo.verify_weights(path) is None  # no hash recorded: nothing read
    entry = zoo.ZOO["discobox_r50_fpn_3x_coco"]
    monkeypatch.setitem(zoo.ZOO, entry.config, dataclasses.replace(entry, sha256=good))
    assert zoo.verify_weights(path) == good
    assert zoo.verify_weights(tmp_path / "other_name.pth") is None
    bad = "0" * 64
    monkeypatch.setitem(zoo.ZOO, entry.config, dataclasses.replace(entry, sha256=bad))
    with pytest.raises(zoo.WeightsHashError) as err:
        zoo.verify_weights(path)
    assert str(path) in str(err.value) and good in str(err.value) and bad in str(err.value)


def test_load_model_checks_the_hash(tmp_path, monkeypatch):
    cfg = load_config(None, ["model.backbone.name=resnet18", "model.seg_feat_channels=32",
                             "model.stacked_convs=1", "model.num_classes=3"])
    path = tmp_path / "coco_r50_fpn_3x.pth"
    torch.save({"model": build_model(cfg).state_dict(), "config": cfg.to_dict()}, path)
    load_model(path)  # no hash recorded
    entry = zoo.ZOO["discobox_r50_fpn_3x_coco"]
    monkeypatch.setitem(zoo.ZOO, entry.config, dataclasses.replace(entry, sha256="f" * 64))
    with pytest.raises(zoo.WeightsHashError, match="coco_r50_fpn_3x.pth: sha256 .* does not match"):
        load_model(path)
    assert main(["test", "--weights", str(path)]) == 2


def test_cli_zoo(capsys):
    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    assert "discobox_x101_dcn_fpn_3x_coco" in out and "37.9" in out
    for e in zoo.list_models():
        if e.url is not None:  # every released weight: source, sha256 state, licence
            assert e.url in out and e.licence == zoo.NVIDIA_LICENCE
    assert out.count("sha256:  not published") == 3
    assert out.count("check the official repository's licence before use") == 3


def test_zoo_into_a_closed_pipe_is_quiet():
    """`discobox zoo | head -0`: the reader is gone before the first write; no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "discobox", "zoo"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr
