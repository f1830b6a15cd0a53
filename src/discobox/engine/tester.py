"""Evaluation on the validation set (``discobox test`` and periodic evaluation in training)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..checkpoint.io import atomic_write_text
from ..config import Config
from ..data.build import build_test_dataset, build_test_loader_from_config
from ..data.coco import CocoDataset
from ..data.coco_results import coco_evaluate, format_metrics
from ..errors import InvalidInputError
from ..inference.predictor import predict_batch
from ..modeling.build import build_postprocessor
from . import distributed as du
from .evaluator import run_inference

logger = logging.getLogger("discobox")


def evaluate(
    cfg: Config,
    model: torch.nn.Module,
    *,
    device: torch.device,
    format_only: bool = False,
    results_path: str | Path | None = None,
) -> dict[str, Any]:
    """Run the model on ``data.val_json`` and return COCO bbox/segm metrics (percent).

    With ``format_only`` no metrics are computed (e.g. test-dev without annotations); results are
    written to ``results_path`` in COCO results format (RLE masks) when it is given.
    segm AP is computed only when every annotation of the val json has a usable
    ``segmentation``; otherwise (a box-only val json, or some annotations without masks) the
    metrics hold ``bbox/*`` only and one log line says so, once per val json.

    Raises:
        InvalidInputError: the val json has no annotations (and not ``format_only``): there is
            nothing to evaluate against; checked before any inference.
    """
    dataset = build_test_dataset(cfg)
    if not format_only and dataset.num_annotations == 0:
        raise InvalidInputError(
            f"{dataset.ann_file}: no annotations to evaluate against "
            "(use --format-only --out RESULTS to only write detections)")
    loader = build_test_loader_from_config(
        cfg, dataset, rank=du.get_rank(), world_size=du.get_world_size()
    )
    post = build_postprocessor(cfg)
    was_training = model.training
    model.eval()
    results = run_inference(
        lambda b: predict_batch(model, post, b.to(device), amp=cfg.solver.amp,
                                tile=cfg.test.tile, tile_overlap=cfg.test.tile_overlap),
        loader,
        dataset.label_to_cat_id,
        total=len(loader),
        desc="eval",
    )
    model.train(was_training)
    metrics: dict[str, Any] = {}
    if du.is_main_process():
        if results_path is not None:
            atomic_write_text(json.dumps(results), results_path)
            logger.info("wrote %d detections to %s", len(results), results_path)
        if not format_only:
            metrics = coco_evaluate(dataset.coco, results, iou_types=_iou_types(dataset),
                                    image_ids=dataset.image_ids, cat_ids=dataset.cat_ids)
            logger.info("evaluation on %s:\n%s", cfg.data.val_json, format_metrics(metrics))
    return du.broadcast_object(metrics)


_SAID_NO_MASKS: set[str] = set()  # val jsons whose "bbox AP only" line was logged


def _iou_types(dataset: CocoDataset) -> tuple[str, ...]:
    """``("bbox", "segm")`` when every annotation has a usable mask, else ``("bbox",)`` and one
    log line (per val json and process) saying why."""
    if dataset.has_masks:
        return ("bbox", "segm")
    key = str(dataset.ann_file.resolve())
    if key not in _SAID_NO_MASKS:
        _SAID_NO_MASKS.add(key)
        logger.warning(
            "%s: %d of %d annotations have no usable 'segmentation': reporting bbox AP only "
            "(segm AP needs masks on every annotation of the val json)",
            dataset.ann_file, dataset.num_without_masks, dataset.num_annotations)
    return ("bbox",)
