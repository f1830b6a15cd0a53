"""Fixtures of the bad-input corpus: the base set and one tiny checkpoint per session.

The checkpoint comes from a 2-iteration ``discobox train`` whose val json has boxes only (no
``segmentation``): that run itself is the check that training with such a val json ends
normally (issue 31, item 1).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import tiny_overrides

from discobox.cli.main import main


@pytest.fixture(scope="session")
def box_only_val(tiny_coco, tmp_path_factory) -> Path:
    """``val.json`` of the tiny set without any ``segmentation``."""
    data = json.loads((tiny_coco / "val.json").read_text())
    for ann in data["annotations"]:
        del ann["segmentation"]
    path = tmp_path_factory.mktemp("box_only") / "val_boxes.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="session")
def box_only_run(tiny_coco, box_only_val, tmp_path_factory) -> tuple[int, Path]:
    """``(exit status, output dir)`` of a 2-iteration training with the box-only val json."""
    out = tmp_path_factory.mktemp("reliability_train")
    rc = main(["train", "discobox_r18_fpn_cpu", "--output-dir", str(out),
               *tiny_overrides(tiny_coco, out, **{"solver.max_iter": 2,
                                                  "data.val_json": str(box_only_val)})])
    return rc, out


@pytest.fixture(scope="session")
def tiny_weights(box_only_run) -> Path:
    rc, out = box_only_run
    assert rc == 0
    return out / "model_final.pth"
