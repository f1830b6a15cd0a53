"""MetricWriter: without the tensorboard package it warns once and still writes metrics.jsonl."""

from __future__ import annotations

import builtins
import logging

from discobox.engine import log


def test_missing_tensorboard_warns_once(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ModuleNotFoundError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    monkeypatch.setattr(log, "_TB_WARNED", False)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(log.LOGGER_NAME)
    logger.addHandler(handler)
    try:
        for run in ("a", "b"):
            writer = log.MetricWriter(tmp_path / run, tensorboard=True)
            writer.write(1, {"loss": 0.5})
            writer.close()
        log.MetricWriter(tmp_path / "c", tensorboard=False).close()
    finally:
        logger.removeHandler(handler)
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "metrics.jsonl only" in warnings[0].getMessage()
    assert log.read_metrics(tmp_path / "a" / "metrics.jsonl")[0]["loss"] == 0.5
    assert not (tmp_path / "a" / "tb").exists()
