"""Stopping and continuing a training run: the newest readable checkpoint, the config a resumed
run uses, and SIGINT / SIGTERM turned into "finish the step, save, stop".

Used by :func:`discobox.engine.trainer.train`; see its docstring for the contract.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from ..checkpoint.io import checkpoint_candidates, load_checkpoint_file
from ..config import Config, apply_overrides, config_from_dict, parse_cli_overrides
from ..errors import CheckpointError
from . import distributed as du

logger = logging.getLogger("discobox")


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by :func:`~discobox.engine.trainer.train` after SIGINT or SIGTERM, once the
    checkpoint at the iteration reached is written; ``signum``, ``iteration`` and ``checkpoint``
    (its path, or ``None`` on ranks other than 0) say which. The CLI exits with
    ``128 + signum`` (130, 143)."""

    def __init__(self, signum: int, iteration: int, checkpoint: Path | None):
        name = signal.Signals(signum).name
        super().__init__(f"{name} at iteration {iteration}: saved {checkpoint}; continue with "
                         "--resume")
        self.signum, self.iteration, self.checkpoint = signum, iteration, checkpoint


class StopSignals:
    """While entered (in the main thread), SIGINT and SIGTERM only set ``received``: the loop
    finishes its step, saves and stops. A second SIGINT raises ``KeyboardInterrupt`` at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def flag(self) -> float:
        """1.0 once a signal arrived, else 0.0: averaged over ranks with the step's losses."""
        return float(self.received is not None)

    def stop_requested(self, any_rank: float) -> int | None:
        """The signal to stop for: this process's, or (several processes) SIGTERM when only
        another rank received one; ``any_rank`` is :meth:`flag` averaged over the ranks, so
        all ranks agree and save together."""
        if du.get_world_size() == 1:
            return self.received
        return (self.received or signal.SIGTERM) if any_rank > 0 else None


def env_rank() -> int:
    """This process's rank as torchrun sets it (known before the process group exists)."""
    return int(os.environ.get("RANK", "0"))


_RESUMABLE_KEYS = ("model", "optimizer", "scheduler", "scaler", "gates", "iteration", "config")


def last_checkpoint(out_dir: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint in ``out_dir``, skipping (with a warning naming it and
    why) any newer one that is truncated or incomplete; ``None`` (with a warning) when there
    is none at all.

    Raises:
        CheckpointError: there are checkpoints, but none is readable.
    """
    candidates = checkpoint_candidates(out_dir)
    if not candidates:
        logger.warning("--resume: no checkpoint in %s, starting from scratch", out_dir)
        return None
    for path in candidates:
        try:
            ckpt = load_checkpoint_file(path)
            missing = [k for k in _RESUMABLE_KEYS if k not in ckpt]
            if missing:
                raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}")
        except CheckpointError as exc:
            logger.warning("resume: skipping %s: %s", path.name, exc)
            continue
        logger.info("resuming from %s (iteration %d)", path, ckpt["iteration"])
        return ckpt
    names = ", ".join(p.name for p in candidates)
    raise CheckpointError(f"--resume: no readable checkpoint in {out_dir} (tried {names})")


def resume_config(stored: dict[str, Any], out_dir: str | Path,
                  overrides: dict[str, Any] | list[str] | None = None) -> Config:
    """The config a resumed run uses: ``stored`` (a checkpoint's ``config``) with
    ``train.output_dir`` set to ``out_dir`` (where the checkpoint was found) and ``overrides``
    (dotted keys to values, or ``KEY=VALUE`` strings) applied on top; each key that is given
    is logged as ``resume: KEY: OLD -> NEW``."""
    base = config_from_dict(stored, source="checkpoint config")
    items = parse_cli_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    items.pop("train.output_dir", None)
    items["train.output_dir"] = str(out_dir)
    cfg = apply_overrides(base, items, source="--resume override")
    for key in items:
        old, new = _dotted(base, key), _dotted(cfg, key)
        if key != "train.output_dir" or old != new:
            logger.info("resume: %s: %s -> %s", key, _show(old), _show(new))
    return cfg


def _dotted(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _show(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)
