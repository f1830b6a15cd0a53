"""Warnings about recipe settings that train, but likely not as the user meant; logged once when
a training run is set up."""

from __future__ import annotations

import logging

from ..config import Config

logger = logging.getLogger("discobox")


def warn_random_init_frozen(cfg: Config) -> None:
    """Frozen stages and frozen BN statistics (docs/method.md §2.2) assume pretrained weights:
    from random init they freeze random filters and make every BatchNorm the identity."""
    b = cfg.model.backbone
    if b.weights is None and (b.frozen_stages >= 0 or b.norm_eval):
        logger.warning(
            "model.backbone.weights is not set: training from random init with frozen stages "
            "(%d) and frozen BatchNorm statistics (%s), the settings meant for pretrained "
            "weights. From scratch, model.backbone.frozen_stages=-1 "
            "model.backbone.norm_eval=false trains every stage and BN (lower loss at the same "
            "iteration in BENCHMARKS.md).", b.frozen_stages, b.norm_eval)


def warn_crop_without_tiles(cfg: Config) -> None:
    """SOLOv2's grid is relative to the input (docs/method.md §2): a model trained on crops and
    evaluated on whole, larger images loses most of its AP (BENCHMARKS.md "Droplets on crops")."""
    crop = cfg.data.train_crop
    if crop is None or cfg.test.tile is not None:
        return
    long_side, short_side = max(cfg.data.test_scale), min(cfg.data.test_scale)
    if short_side > min(crop) or long_side > max(crop):
        logger.warning(
            "data.train_crop=%s but test.tile is not set: evaluation and prediction run on whole "
            "images of up to %dx%d, and SOLOv2's grid is relative to its input, so a model "
            "trained on crops loses most of its AP there (BENCHMARKS.md, droplets). Set "
            "test.tile=[%d,%d].", list(crop), short_side, long_side, crop[0], crop[1])
