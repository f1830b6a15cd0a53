"""DataLoader workers of the project's loaders survive SIGINT and a scheduler's SIGTERM (so the
main process can save a checkpoint), yet still stop when their own parent terminates them."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from discobox.data.loader import build_test_loader, build_train_loader
from discobox.structures import Instances

pytestmark = pytest.mark.skipif(not hasattr(signal, "sigwaitinfo"),
                                reason="SIGTERM filtering by sender needs sigwaitinfo (Linux)")


class SignalProbe(Dataset):
    """Each sample's ``file_name`` is ``"pid:sigterm_blocked:sigint_ignored"``, read in the
    worker."""

    def __len__(self):
        return 4

    @property
    def aspect_ratios(self):
        return [1.0] * 4

    def __getitem__(self, i):
        term = int(signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, []))
        intr = int(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
        return {
            "image": np.zeros((8, 8, 3), dtype=np.uint8),
            "instances": Instances.empty(),
            "orig_size": (8, 8),
            "image_id": i,
            "file_name": f"{os.getpid()}:{term}:{intr}",
        }


def _probe(batch):
    pid, term, intr = batch.file_names[0].split(":")
    return int(pid), term == "1", intr == "1"


def test_train_loader_worker_survives_a_schedulers_sigterm_and_sigint():
    calls = []
    loader = build_train_loader(
        SignalProbe(), batch_size=1, num_workers=1, seed=0,
        worker_init_fn=calls.append,  # composed: runs in the worker, must not break it
    )
    pid, term, intr = _probe(next(loader))
    assert pid != os.getpid()  # loaded in a worker
    assert term and intr
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN  # main process untouched
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    # as Slurm does: SIGTERM from another process (here `kill`), and SIGINT
    subprocess.run(["kill", "-TERM", str(pid)], check=True)
    subprocess.run(["kill", "-INT", str(pid)], check=True)
    time.sleep(0.3)
    for _ in range(3):  # the worker is still alive and serving batches
        assert _probe(next(loader))[0] == pid


def test_test_loader_workers_ignore_stop_signals_and_run_user_init():
    seen = torch.multiprocessing.get_context("fork").Queue()
    loader = build_test_loader(SignalProbe(), num_workers=2, worker_init_fn=seen.put)
    probes = [_probe(b) for b in loader]
    assert len(probes) == 4
    assert all(pid != os.getpid() and term and intr for pid, term, intr in probes)
    assert sorted(seen.get(timeout=5) for _ in range(2)) == [0, 1]


def test_exit_with_live_workers_does_not_hang():
    """A loader still referenced at exit: multiprocessing terminates (SIGTERM) and joins its
    workers; they must obey their parent's SIGTERM, or the process never ends."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_loader_signals import SignalProbe
        from discobox.data.loader import build_train_loader
        KEEP = build_train_loader(SignalProbe(), batch_size=1, num_workers=2, seed=0)
        next(KEEP)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
