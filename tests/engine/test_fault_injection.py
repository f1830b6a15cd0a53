"""Fault injection on a tiny CPU run: kill -9 (also inside a checkpoint write), SIGTERM, broken
last checkpoints and a full disk. Every interrupted run, resumed with ``--resume``, must end
bit-identical (max abs difference 0.0 over every tensor) to an uninterrupted one.

The kills land at random iterations (``DISCOBOX_FAULT_SEED`` picks them; default 0); each test
prints what it did (``pytest -s``): where it killed, the iterations lost, the largest weight
difference.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny_overrides

from discobox.checkpoint.io import find_last_checkpoint, load_checkpoint_file
from discobox.cli.main import main
from discobox.config import load_config
from discobox.engine import trainer as trainer_mod
from discobox.errors import CheckpointError

RECIPE = "discobox_r18_fpn_cpu"
MAX_ITER, PERIOD = 8, 2
EXTRA = {"solver.max_iter": MAX_ITER, "solver.steps": "[6]", "data.val_json": "null",
         "train.checkpoint_period": PERIOD, "train.keep_checkpoints": 0}
# Runs `python -m discobox` with torch.save writing half a checkpoint, then stalling: the test
# kills it there.
SLOW_WRITER = """
import io, runpy, sys, time, torch
real_save = torch.save
def half_then_stall(obj, f, *args, **kwargs):
    buf = io.BytesIO()
    real_save(obj, buf, *args, **kwargs)
    data = buf.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    time.sleep(120)
    f.write(data[len(data) // 2:])
torch.save = half_then_stall
sys.argv = ["discobox", *sys.argv[1:]]
runpy.run_module("discobox", run_name="__main__")
"""


def _overrides(tiny_coco: Path, out: Path) -> list[str]:
    return tiny_overrides(tiny_coco, out, **EXTRA)


@pytest.fixture(scope="module")
def reference(tiny_coco, tmp_path_factory) -> Path:
    """An uninterrupted run (checkpoints at 2, 4, 6, 8, all kept)."""
    out = tmp_path_factory.mktemp("fault_ref") / "run"
    trainer_mod.train(load_config(RECIPE, _overrides(tiny_coco, out)))
    return out


def _max_abs_diff(a, b) -> float:
    """Largest |a - b| over every tensor of two nested states (inf if their structure or
    dtypes differ)."""
    if isinstance(a, dict):
        if not isinstance(b, dict) or a.keys() != b.keys():
            return float("inf")
        return max((_max_abs_diff(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, list | tuple):
        if len(a) != len(b):
            return float("inf")
        return max((_max_abs_diff(x, y) for x, y in zip(a, b, strict=True)), default=0.0)
    if isinstance(a, torch.Tensor):
        if a.dtype != b.dtype or a.shape != b.shape:
            return float("inf")
        if a.numel() == 0:
            return 0.0
        return float((a.double() - b.double()).abs().max())
    return 0.0 if a == b else float("inf")


def _final_diff(run: Path, reference: Path) -> float:
    """Max abs difference of the final checkpoints' model, teacher, optimizer and bank."""
    keys = ("model", "teacher", "optimizer", "object_bank", "gates", "iteration")
    got = load_checkpoint_file(run / f"model_{MAX_ITER:07d}.pth")
    ref = load_checkpoint_file(reference / f"model_{MAX_ITER:07d}.pth")
    return max(_max_abs_diff(got[k], ref[k]) for k in keys)


def _logged(run: Path) -> int:
    """The last iteration written to metrics.jsonl (0 before any)."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return 0
    its = [int(line.split('"iter": ', 1)[1].split(",", 1)[0])
           for line in path.read_text().splitlines() if '"train/loss' in line]
    return max(its, default=0)


def _temps(run: Path) -> list[Path]:
    return sorted(p for p in run.glob(".model_*.tmp") if p.stat().st_size > 0)


def _start(args: list[str], log: Path, code: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "discobox",
                                                            *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))


def _wait_for(proc: subprocess.Popen, ready, what: str, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before {what}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _resumed_from(run: Path) -> int:
    ckpt = find_last_checkpoint(run)
    return 0 if ckpt is None else load_checkpoint_file(ckpt)["iteration"]


def test_kill9_at_random_points_and_inside_a_write_then_resume_is_bit_identical(
        tiny_coco, reference, tmp_path):
    rng = random.Random(int(os.environ.get("DISCOBOX_FAULT_SEED", "0")))
    run = tmp_path / "run"
    resume = ["train", RECIPE, "--output-dir", str(run), "--resume"]
    kills = []

    # 1: at a random iteration after the first checkpoint, at a random moment of the step
    proc = _start(["train", RECIPE, "--output-dir", str(run), *_overrides(tiny_coco, run)],
                  tmp_path / "1.log")
    target = rng.randint(PERIOD + 1, MAX_ITER - 3)
    _wait_for(proc, lambda: _logged(run) >= target, f"iteration {target}")
    time.sleep(rng.uniform(0.0, 0.3))
    _kill9(proc)
    kills.append(("random", _logged(run), _resumed_from(run)))

    # 2: resumed, then killed again at a random iteration
    proc = _start(resume, tmp_path / "2.log")
    target = kills[-1][1] + rng.randint(1, 2)
    _wait_for(proc, lambda: _logged(run) >= target, f"iteration {target}")
    time.sleep(rng.uniform(0.0, 0.3))
    _kill9(proc)
    kills.append(("random", _logged(run), _resumed_from(run)))

    # 3: resumed, then killed in the middle of writing its next checkpoint
    proc = _start(resume, tmp_path / "3.log", code=SLOW_WRITER)
    _wait_for(proc, lambda: bool(_temps(run)), "a checkpoint write")
    _kill9(proc)
    stale = _temps(run)
    assert stale, "the killed write left no temporary file"
    kills.append(("in write", _logged(run), _resumed_from(run)))

    # resume to the end (in this process: no second start-up): the half-written temporary is
    # removed, the result is bit-identical
    trainer_mod.train(load_config(RECIPE, [f"train.output_dir={run}"]), resume=True)
    assert not any(p.exists() for p in stale)
    assert "removed " in (run / "log.txt").read_text()
    diff = _final_diff(run, reference)
    lost = [logged - ckpt for _, logged, ckpt in kills]
    print(f"\nkill -9: {len(kills)} kills survived "
          f"({', '.join(f'{w} at iteration {lg}' for w, lg, _ in kills)}); iterations lost "
          f"{lost} (checkpoint period {PERIOD}); max abs weight difference {diff}")
    assert all(0 <= n <= PERIOD for n in lost), lost
    assert diff == 0.0


def test_sigterm_saves_the_current_iteration_and_resume_is_bit_identical(
        tiny_coco, reference, tmp_path):
    rng = random.Random(int(os.environ.get("DISCOBOX_FAULT_SEED", "0")) + 1)
    run = tmp_path / "run"
    proc = _start(["train", RECIPE, "--output-dir", str(run), *_overrides(tiny_coco, run)],
                  tmp_path / "term.log")
    target = rng.randint(2, MAX_ITER - 2)
    _wait_for(proc, lambda: _logged(run) >= target, f"iteration {target}")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    err = (tmp_path / "term.log").read_text()
    saved = _resumed_from(run)
    assert f"interrupted: SIGTERM at iteration {saved}: saved " in err
    lost = _logged(run) - saved
    assert lost == 0, (saved, _logged(run))
    trainer_mod.train(load_config(RECIPE, [f"train.output_dir={run}"]), resume=True)
    diff = _final_diff(run, reference)
    print(f"\nSIGTERM after iteration {target}: saved iteration {saved}, {lost} iterations "
          f"lost; max abs weight difference {diff}")
    assert diff == 0.0


def test_truncated_and_empty_last_checkpoints_fall_back(reference, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for it in (4, 6, 8):
        shutil.copy(reference / f"model_{it:07d}.pth", run)
    (run / "last_checkpoint").write_text(f"model_{MAX_ITER:07d}.pth\n")
    (run / f"model_{MAX_ITER:07d}.pth").write_bytes(b"")  # zero bytes
    six = run / "model_0000006.pth"
    six.write_bytes(six.read_bytes()[: six.stat().st_size // 2])  # truncated
    trainer_mod.train(load_config(RECIPE, [f"train.output_dir={run}"]), resume=True)
    log = (run / "log.txt").read_text()
    assert "skipping model_0000008.pth: cannot read checkpoint" in log
    assert "empty file (0 bytes)" in log
    assert "skipping model_0000006.pth: cannot read checkpoint" in log
    assert "resuming from " + str(run / "model_0000004.pth") in log
    assert _final_diff(run, reference) == 0.0

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_0000002.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"^--resume: no readable checkpoint in .*broken "
                                              r"\(tried model_0000002.pth\)$"):
        trainer_mod.train(load_config(RECIPE, [f"train.output_dir={broken}"]), resume=True)


def _mount_tmpfs(where: Path, size: int) -> bool:
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                         capture_output=True)
    return res.returncode == 0


def test_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_previous(
        tiny_coco, reference, tmp_path, capsys):
    """A real full disk: a tmpfs with room for one checkpoint and a half."""
    size = (reference / "model_0000002.pth").stat().st_size
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, size * 3 // 2):
        pytest.skip("cannot mount a small tmpfs here (needs root); "
                    "tests/engine/test_checkpoint.py covers ENOSPC through /dev/full")
    try:
        run = disk / "run"
        extra = {**EXTRA, "solver.max_iter": 4, "solver.steps": "[]", "train.keep_checkpoints": 2}
        rc = main(["train", RECIPE, "--output-dir", str(run),
                   *tiny_overrides(tiny_coco, run, **extra)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2
        assert err[-1] == f"discobox train: error: no space left on device: {run}/model_0000004.pth"
        assert not list(run.glob(".*.tmp"))
        assert load_checkpoint_file(find_last_checkpoint(run))["iteration"] == 2
    finally:
        log = logging.getLogger("discobox")
        for h in list(log.handlers):  # log.txt on the tmpfs keeps it busy
            if str(getattr(h, "baseFilename", "")).startswith(str(disk)):
                h.close()
                log.removeHandler(h)
        subprocess.run(["umount", str(disk)], check=False)
