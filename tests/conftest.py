"""Shared fixtures: a tiny synthetic COCO data set and a tiny CPU config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# One thread: the test inputs are tiny, and intra-op threads only add overhead (and spin
# badly when the machine is busy).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory) -> Path:
    """8 train / 4 val synthetic images of 96x96 with train.json / val.json."""
    from discobox.data.synthetic import make_synthetic_coco

    root = tmp_path_factory.mktemp("tiny_coco")
    make_synthetic_coco(root, num_train=8, num_val=4, image_size=(96, 96), seed=0, max_objects=3)
    return root
