"""Run logging: a JSONL file of scalars, optional TensorBoard, and a console logger.

Only rank 0 writes; other ranks get a no-op writer.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

LOGGER_NAME = "discobox"


def setup_logger(output_dir: str | Path | None = None, *, rank: int = 0) -> logging.Logger:
    """Console (rank 0, INFO) plus ``log.txt`` in ``output_dir``; idempotent."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False
    fmt = logging.Formatter("[%(asctime)s %(levelname)s] %(message)s", "%H:%M:%S")
    if not any(getattr(h, "_discobox_console", False) for h in logger.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(fmt)
        h._discobox_console = True  # type: ignore[attr-defined]
        logger.addHandler(h)
    if output_dir is not None and rank == 0:
        path = Path(output_dir) / "log.txt"
        files = [getattr(h, "baseFilename", None) for h in logger.handlers]
        if str(path.resolve()) not in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(path)
            fh.setFormatter(fmt)
            logger.addHandler(fh)
    return logger


_TB_WARNED = False


def _tensorboard_writer(log_dir: Path) -> Any:
    """A TensorBoard ``SummaryWriter`` on ``log_dir``, or ``None`` when the optional
    ``tensorboard`` package is missing; then warns once per process that scalars go to
    ``metrics.jsonl`` only (``train.tensorboard=false`` turns TensorBoard off silently)."""
    global _TB_WARNED
    try:
        # lazy: tensorboard is an optional extra (pip install "discobox[tensorboard]")
        from torch.utils.tensorboard import SummaryWriter
    except Exception as exc:  # noqa: BLE001 - a broken optional install is as good as none
        if not _TB_WARNED:
            _TB_WARNED = True
            logging.getLogger(LOGGER_NAME).warning(
                "train.tensorboard is on but TensorBoard is unavailable (%s): scalars go to "
                "metrics.jsonl only; pip install 'discobox[tensorboard]' or set "
                "train.tensorboard=false", exc)
        return None
    return SummaryWriter(log_dir=str(log_dir))


class MetricWriter:
    """Appends ``{"iter": i, "time": t, **scalars}`` lines to ``metrics.jsonl`` (+ TensorBoard)."""

    def __init__(self, output_dir: str | Path, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self._tb = None
        self._fh = None
        if not enabled:
            return
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        self._fh = open(output_dir / "metrics.jsonl", "a")  # noqa: SIM115 - closed in close()
        if tensorboard:
            self._tb = _tensorboard_writer(output_dir / "tb")

    def write(self, iteration: int, scalars: dict[str, Any], *, prefix: str = "") -> None:
        if not self.enabled:
            return
        record = {"iter": iteration, "time": round(time.time(), 3)}
        record.update({f"{prefix}{k}": v for k, v in scalars.items()})
        assert self._fh is not None
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for k, v in scalars.items():
                if isinstance(v, int | float):
                    self._tb.add_scalar(f"{prefix}{k}", v, iteration)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` file back (used by plots and tests)."""
    lines = Path(path).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]
