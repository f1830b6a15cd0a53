"""Two gloo processes on the CPU through torchrun."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch
from helpers import tiny_overrides

from discobox.checkpoint.io import find_last_checkpoint, load_checkpoint_file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_training(tiny_coco, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        "-m", "discobox", "train", "discobox_r18_fpn_cpu", "--output-dir", str(out),
        *tiny_overrides(tiny_coco, out, **{"solver.max_iter": 3, "data.batch_size": 1}),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint_file(find_last_checkpoint(out))
    assert ckpt["iteration"] == 3 and ckpt["world_size"] == 2
    assert len(ckpt["rng"]) == 2  # one RNG state per rank
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
