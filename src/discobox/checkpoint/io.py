"""Atomic checkpoints: write to a temporary file in the same folder, fsync, then rename.

A checkpoint holds everything needed to continue a run bit-for-bit on the same hardware: model,
optimizer, LR scheduler, AMP scaler, EMA teacher and loss gates (both lost on resume in the
official code, docs/method.md §12.7), iteration, RNG states and the resolved config.
``last_checkpoint`` in the output folder names the newest one; ``--resume`` reads it.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from ..errors import CheckpointError, MissingFileError

LAST = "last_checkpoint"


def atomic_write(path: str | Path, write: Callable[[IO], None], *, binary: bool = True) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync, then rename it over
    ``path``: a reader never sees a partial file, and a failure leaves no temporary behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` so that a reader never sees a partial file."""
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def save_release(model_state: dict[str, Any], config: dict[str, Any], iteration: int,
                 path: str | Path) -> Path:
    """A release file: weights + config only (what ``test``, ``predict`` and friends need)."""
    return atomic_save({"model": model_state, "config": config, "iteration": iteration}, path)


def atomic_write_text(text: str, path: str | Path) -> Path:
    return atomic_write(path, lambda fh: fh.write(text), binary=False)


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict[str, Any], output_dir: str | Path, iteration: int, *,
                    keep: int = 2) -> Path:
    """Write ``model_<iter>.pth`` atomically, point ``last_checkpoint`` at it, prune old ones."""
    output_dir = Path(output_dir)
    path = atomic_save(state, output_dir / f"model_{iteration:07d}.pth")
    atomic_write_text(path.name + "\n", output_dir / LAST)
    if keep > 0:
        old = sorted(output_dir.glob("model_[0-9]*.pth"))[:-keep]
        for p in old:
            p.unlink(missing_ok=True)
    return path


def find_last_checkpoint(output_dir: str | Path) -> Path | None:
    output_dir = Path(output_dir)
    pointer = output_dir / LAST
    if pointer.exists():
        path = output_dir / pointer.read_text().strip()
        if path.exists():
            return path
    found = sorted(output_dir.glob("model_[0-9]*.pth"))
    return found[-1] if found else None


def load_checkpoint_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint; a truncated or foreign file gives an error naming the path."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - re-raised with the path
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dict (got {type(obj).__name__})")
    return obj
