import os

import pytest
import torch

from discobox.checkpoint.io import (
    atomic_save,
    find_last_checkpoint,
    load_checkpoint_file,
    save_checkpoint,
)
from discobox.engine.trainer import lr_factor


def test_atomic_save_leaves_no_partial_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "ckpt.pth"
    atomic_save({"a": 1}, target)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError):
        atomic_save({"a": 2}, target)
    # the old file is intact and no temporary file is left behind
    assert torch.load(target)["a"] == 1
    assert os.listdir(tmp_path) == ["ckpt.pth"]


def test_last_checkpoint_pointer_and_pruning(tmp_path):
    for it in (10, 20, 30):
        save_checkpoint({"iteration": it}, tmp_path, it, keep=2)
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == [
        "model_0000020.pth",
        "model_0000030.pth",
    ]
    assert find_last_checkpoint(tmp_path).name == "model_0000030.pth"
    assert load_checkpoint_file(find_last_checkpoint(tmp_path))["iteration"] == 30


def test_truncated_checkpoint_error_names_the_file(tmp_path):
    p = tmp_path / "broken.pth"
    atomic_save({"x": torch.zeros(1000)}, p)
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(RuntimeError, match="broken.pth"):
        load_checkpoint_file(p)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_checkpoint_file(tmp_path / "missing.pth")


def test_lr_schedule_warmup_and_steps():
    kw = dict(warmup_iters=2000, warmup_ratio=0.01, steps=(5000, 6000), gamma=0.1)
    assert lr_factor(0, **kw) == pytest.approx(0.01)
    assert lr_factor(1000, **kw) == pytest.approx(1 - 0.5 * 0.99)
    assert lr_factor(2000, **kw) == 1.0
    assert lr_factor(5000, **kw) == pytest.approx(0.1)
    assert lr_factor(6500, **kw) == pytest.approx(0.01)
