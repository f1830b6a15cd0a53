"""Atomic checkpoints: write to a temporary file in the same folder, fsync, then rename.

A checkpoint holds everything needed to continue a run bit-for-bit on the same hardware: model,
optimizer, LR scheduler, AMP scaler, EMA teacher and loss gates (both lost on resume in the
official code, docs/method.md §12.7), iteration, RNG states and the resolved config.
``last_checkpoint`` in the output folder names the newest one; ``--resume`` reads the newest
readable one (:func:`checkpoint_candidates`). A write that fails (full disk, read-only folder)
raises :class:`OutputError` naming the path and leaves the previous file as it was; the
temporary files of writes killed midway are removed by :func:`remove_stale_temps`.
"""

from __future__ import annotations

import errno
import io
import os
import random
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from ..errors import CheckpointError, DiscoboxError, MissingFileError

LAST = "last_checkpoint"
_CKPT_GLOB = "model_[0-9]*.pth"
_CKPT_NAME = re.compile(r"model_(\d+)\.pth")
# temporary files of atomic_write: ".<name>.<random>.tmp" beside <name>
_TEMP_GLOBS = (".model_[0-9]*.pth.*.tmp", ".model_final*.pth.*.tmp", f".{LAST}.*.tmp")
_FULL_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


class OutputError(DiscoboxError, OSError):
    """An output file or folder cannot be written (read-only, full disk, not a folder); the
    message names the path."""


class _RecordingFile(io.FileIO):
    """A file that remembers the OSError of a failed write: ``torch.save`` reports a full disk
    only as ``unexpected pos N vs M``, with the OSError lost."""

    error: OSError | None = None

    def write(self, b: Any) -> int | None:
        try:
            return super().write(b)
        except OSError as exc:
            self.error = exc
            raise


def _umask_mode() -> int:
    """``0o666`` less the process umask: the mode ``open()`` would give a new file."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _os_error(exc: BaseException, raw: _RecordingFile | None) -> OSError | None:
    """The OSError behind a failed write: ``exc`` itself, one in its chain, or the one the file
    recorded."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and not isinstance(seen, DiscoboxError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return raw.error if raw is not None else None


def _output_error(path: Path, err: OSError) -> OutputError:
    """One line naming ``path``: ``no space left on device: PATH`` for a full disk."""
    if err.errno in _FULL_ERRNOS:
        return OutputError(f"{_FULL_ERRNOS[err.errno]}: {path}")
    return OutputError(f"cannot write {path}: {err.strerror or err}")


def atomic_write(path: str | Path, write: Callable[[IO], None], *, binary: bool = True) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync, then rename it over
    ``path``: a reader never sees a partial file, and a failure leaves no temporary behind and
    the previous ``path`` untouched. The file gets the umask's mode (e.g. 0644).

    Raises:
        OutputError: the folder or file cannot be written (``no space left on device: PATH``
            for a full disk); other errors of ``write`` propagate unchanged.
    """
    path = Path(path)
    tmp: str | None = None
    raw: _RecordingFile | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, _umask_mode())
        raw = _RecordingFile(fd, "wb")
        buffered = io.BufferedWriter(raw)
        fh: IO = buffered if binary else io.TextIOWrapper(buffered, encoding="utf-8")
        with fh:
            write(fh)
            fh.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        err = _os_error(exc, raw) if isinstance(exc, Exception) else None
        if err is None and isinstance(exc, RuntimeError) and _disk_full(path.parent):
            err = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if err is not None:
            raise _output_error(path, err) from exc
        raise
    return path


def _disk_full(folder: Path) -> bool:
    try:
        return os.statvfs(folder).f_bavail == 0
    except OSError:
        return False


def check_writable_dir(folder: str | Path) -> Path:
    """Create ``folder`` if needed and check a file can be written in it, before any work.

    Raises:
        OutputError: naming ``folder`` (not a folder, read-only, no permission, disk full).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".discobox-write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"output directory is not writable: {folder} "
                          f"({exc.strerror or exc})") from exc
    return folder


def remove_stale_temps(output_dir: str | Path) -> list[Path]:
    """Remove the temporary files of checkpoint writes that were killed midway (only
    ``.model_*.pth.*.tmp`` and ``.last_checkpoint.*.tmp``, never a complete checkpoint);
    returns the paths removed. Call it where no other write to ``output_dir`` is under way."""
    output_dir = Path(output_dir)
    removed = []
    for pattern in _TEMP_GLOBS:
        for p in output_dir.glob(pattern):
            p.unlink(missing_ok=True)
            removed.append(p)
    return sorted(removed)


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` so that a reader never sees a partial file."""
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def save_release(model_state: dict[str, Any], config: dict[str, Any], iteration: int,
                 path: str | Path) -> Path:
    """A release file: weights + config only (what ``test``, ``predict`` and friends need)."""
    return atomic_save({"model": model_state, "config": config, "iteration": iteration}, path)


def atomic_write_text(text: str, path: str | Path) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`)."""
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
    """Write ``model_<iter>.pth`` atomically, point ``last_checkpoint`` at it, prune old ones
    (only once the new one is complete) and remove stale temporaries of killed writes.

    Raises:
        OutputError: the write failed (e.g. ``no space left on device: PATH``); the previous
            checkpoints and ``last_checkpoint`` are left as they were.
    """
    output_dir = Path(output_dir)
    remove_stale_temps(output_dir)
    path = atomic_save(state, output_dir / f"model_{iteration:07d}.pth")
    atomic_write_text(path.name + "\n", output_dir / LAST)
    if keep > 0:
        old = sorted(output_dir.glob(_CKPT_GLOB))[:-keep]
        for p in old:
            p.unlink(missing_ok=True)
    return path


def checkpoint_candidates(output_dir: str | Path) -> list[Path]:
    """The checkpoints of ``output_dir``, newest first: the one ``last_checkpoint`` names, then
    every ``model_<iter>.pth`` by decreasing iteration (for falling back past a broken one)."""
    output_dir = Path(output_dir)
    found = sorted((p for p in output_dir.glob(_CKPT_GLOB) if _CKPT_NAME.fullmatch(p.name)),
                   key=lambda p: int(_CKPT_NAME.fullmatch(p.name).group(1)), reverse=True)
    pointer = output_dir / LAST
    if pointer.is_file():
        try:
            named = output_dir / pointer.read_text().strip()
        except (OSError, UnicodeDecodeError):
            named = None
        if named is not None and named.is_file() and named in found:
            found.remove(named)
            found.insert(0, named)
    return found


def find_last_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint of ``output_dir`` (readable or not), or ``None``."""
    found = checkpoint_candidates(output_dir)
    return found[0] if found else None


def load_checkpoint_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint; a truncated or foreign file gives a one-line error naming the path."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - re-raised with the path
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if path.stat().st_size == 0:
            reason = "empty file (0 bytes)"
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dict (got {type(obj).__name__})")
    return obj
