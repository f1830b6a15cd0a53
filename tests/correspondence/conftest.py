"""Fixtures of the correspondence tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from corr_helpers import tiny_weights


@pytest.fixture(scope="session")
def tiny_weights_path(tmp_path_factory) -> Path:
    """A random-init tiny SOLOv2 checkpoint with its config (3 classes)."""
    return tiny_weights(tmp_path_factory.mktemp("corr_weights"))
