"""Inference over a data loader, gathered over ranks, as COCO results entries.

The results format and its scoring live in :mod:`discobox.data.coco_results`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from tqdm import tqdm

from ..data.coco_results import instances_to_coco
from ..structures import ImageBatch, Instances
from . import distributed as du


@torch.no_grad()
def run_inference(
    predict_batch: Callable[[ImageBatch], list[Instances]],
    loader: Iterable[ImageBatch],
    label_to_cat_id: list[int] | dict[int, int],
    *,
    total: int | None = None,
    desc: str = "inference",
) -> list[dict[str, Any]]:
    """Predict every batch and return COCO results gathered from all ranks (on every rank).

    ``predict_batch`` maps a batch to one :class:`Instances` per image at the original size;
    ``label_to_cat_id`` maps a model label to the dataset's category id.
    """
    results: list[dict[str, Any]] = []
    bar = tqdm(loader, total=total, desc=desc, disable=not du.is_main_process(), leave=False)
    for batch in bar:
        for inst, image_id in zip(predict_batch(batch), batch.image_ids):
            results.extend(instances_to_coco(inst, image_id, label_to_cat_id))
    gathered = du.all_gather_objects(results)
    return [r for part in gathered for r in part]
