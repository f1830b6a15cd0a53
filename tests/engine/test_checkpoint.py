import os
import stat
import tempfile

import pytest
import torch

from discobox.checkpoint.io import (
    OutputError,
    atomic_save,
    atomic_write_text,
    check_writable_dir,
    checkpoint_candidates,
    find_last_checkpoint,
    load_checkpoint_file,
    remove_stale_temps,
    save_checkpoint,
)
from discobox.engine.schedule import lr_factor


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
    p.write_bytes(b"")
    with pytest.raises(RuntimeError, match=r"broken.pth: empty file \(0 bytes\)$"):
        load_checkpoint_file(p)


def test_atomic_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        a = atomic_save({"a": 1}, tmp_path / "a.pth")
        b = atomic_write_text("x\n", tmp_path / "b.txt")
    finally:
        os.umask(old)
    assert stat.S_IMODE(a.stat().st_mode) == 0o644
    assert stat.S_IMODE(b.stat().st_mode) == 0o644


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_names_the_path_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """The kernel's ENOSPC (writes to /dev/full) through the real torch.save: one line naming
    the checkpoint, the previous one still the last and loadable, no temporary left."""
    save_checkpoint({"iteration": 2, "w": torch.ones(10)}, tmp_path, 2)
    real_mkstemp = tempfile.mkstemp

    def mkstemp_on_full_disk(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        os.dup2(os.open("/dev/full", os.O_WRONLY), fd)
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_on_full_disk)
    target = tmp_path / "model_0000004.pth"
    with pytest.raises(OutputError) as err:
        save_checkpoint({"iteration": 4, "w": torch.ones(100_000)}, tmp_path, 4)
    assert str(err.value) == f"no space left on device: {target}"
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000002.pth"]
    assert load_checkpoint_file(find_last_checkpoint(tmp_path))["iteration"] == 2


def test_unwritable_output_dir_is_one_line_naming_it(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"^output directory is not writable: .*file/run \("):
        check_writable_dir(tmp_path / "file" / "run")
    assert check_writable_dir(tmp_path / "new" / "run").is_dir()
    assert os.listdir(tmp_path / "new" / "run") == []


def test_stale_temps_are_removed_and_complete_checkpoints_kept(tmp_path):
    save_checkpoint({"iteration": 2}, tmp_path, 2)
    stale = [tmp_path / ".model_0000004.pth.k2j3.tmp", tmp_path / ".last_checkpoint.x1.tmp",
             tmp_path / ".model_final.pth.ab.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    (tmp_path / ".other.tmp").write_bytes(b"not ours")
    assert remove_stale_temps(tmp_path) == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == [".other.tmp", "last_checkpoint", "model_0000002.pth"]
    # the next save removes them too
    stale[0].write_bytes(b"partial")
    save_checkpoint({"iteration": 3}, tmp_path, 3)
    assert not stale[0].exists()


def test_candidates_newest_first_pointer_first(tmp_path):
    for it in (2, 10, 4):
        save_checkpoint({"iteration": it}, tmp_path, it, keep=0)
    assert [p.name for p in checkpoint_candidates(tmp_path)] == [
        "model_0000004.pth", "model_0000010.pth", "model_0000002.pth"]
    (tmp_path / "last_checkpoint").write_text("model_0000099.pth\n")  # names a missing file
    assert find_last_checkpoint(tmp_path).name == "model_0000010.pth"


def test_lr_schedule_warmup_and_steps():
    kw = dict(warmup_iters=2000, warmup_ratio=0.01, steps=(5000, 6000), gamma=0.1)
    assert lr_factor(0, **kw) == pytest.approx(0.01)
    assert lr_factor(1000, **kw) == pytest.approx(1 - 0.5 * 0.99)
    assert lr_factor(2000, **kw) == 1.0
    assert lr_factor(5000, **kw) == pytest.approx(0.1)
    assert lr_factor(6500, **kw) == pytest.approx(0.01)
