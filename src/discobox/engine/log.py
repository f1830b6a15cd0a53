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
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(output_dir / "tb"))
            except Exception:  # noqa: BLE001 - tensorboard is optional
                self._tb = None

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
