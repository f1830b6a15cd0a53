"""Datasets and loaders from a :class:`~discobox.config.Config` (where config meets data)."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError
from ..errors import InvalidInputError
from ..structures import ImageBatch
from .coco import CocoDataset, load_coco_json
from .loader import build_test_loader, build_train_loader
from .transforms import build_transforms

logger = logging.getLogger("discobox")


def _require_paths(cfg: Config, json_key: str, images_key: str) -> tuple[str, str]:
    ann = getattr(cfg.data, json_key)
    images = getattr(cfg.data, images_key)
    if not ann or not images:
        raise ConfigError(
            f"data.{json_key} and data.{images_key} must be set "
            f"(e.g. data.{json_key}=path/to/instances.json data.{images_key}=path/to/images)"
        )
    return ann, images


def read_categories(path: str | Path) -> list[Any]:
    """The top-level ``categories`` list of a COCO json, decoded alone (the annotations are not
    parsed) when the key occurs once in the file; else, or when that fails, from the whole json
    (:func:`~discobox.data.coco.load_coco_json`, whose errors name the file)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = ""
    hits = [m.end() - 1 for m in re.finditer(r'"categories"\s*:\s*\[', text)]
    if len(hits) == 1:
        with contextlib.suppress(json.JSONDecodeError):
            return json.JSONDecoder().raw_decode(text, hits[0])[0]
    categories = load_coco_json(path).get("categories")
    return categories if isinstance(categories, list) else []


def resolve_dataset_defaults(cfg: Config) -> Config:
    """``cfg`` with ``model.num_classes``, ``data.class_names`` and ``data.category_ids`` taken
    from the categories of ``data.train_json``, in the order :class:`CocoDataset` assigns labels
    (category ids ascending, or the order of a given ``data.class_names``): the training json
    wins over the recipe's ``model.num_classes`` (logged when they differ), and the names and ids
    travel in the checkpoint's config to label predictions with the dataset's ids.

    ``data.class_names`` is filled only when unset and the json's names are unique. Without a
    train json, or with categories :class:`CocoDataset` would refuse (it then raises, naming the
    file), ``cfg`` is returned unchanged.
    """
    if not cfg.data.train_json:
        return cfg
    by_id: dict[int, str] = {}
    for c in read_categories(cfg.data.train_json):
        ok = isinstance(c, dict) and type(c.get("id")) is int and "name" in c
        if not ok or c["id"] in by_id:
            return cfg
        by_id[c["id"]] = str(c["name"])
    by_name = {name: cid for cid, name in by_id.items()}
    names = cfg.data.class_names
    if names is None:
        ids = sorted(by_id)
        if len(by_name) == len(by_id):
            names = tuple(by_id[i] for i in ids)
    elif all(n in by_name for n in names) and len(by_name) == len(by_id):
        ids = [by_name[n] for n in names]
    else:
        return cfg
    if not ids:
        return cfg
    if len(ids) != cfg.model.num_classes:
        logger.info("model.num_classes=%d -> %d, the categories of %s", cfg.model.num_classes,
                    len(ids), cfg.data.train_json)
    return cfg.replace(**{"model.num_classes": len(ids), "data.class_names": names,
                          "data.category_ids": list(ids)})


def _check_classes(cfg: Config, dataset: CocoDataset) -> CocoDataset:
    n = len(dataset.class_names)
    if n != cfg.model.num_classes:
        raise ConfigError(
            f"{dataset.ann_file} has {n} categories but model.num_classes={cfg.model.num_classes}; "
            f"set model.num_classes={n} (or data.class_names to select categories)"
        )
    return dataset


def build_train_dataset(cfg: Config) -> CocoDataset:
    """Training set in ``loss.mode`` ('box': never reads segmentations; 'full': decodes masks)."""
    ann, images = _require_paths(cfg, "train_json", "train_images")
    dataset = CocoDataset(
        ann_file=ann,
        image_dir=images,
        mode=cfg.loss.mode,
        transforms=build_transforms(train=True, scales=cfg.data.train_scales,
                                    flip_prob=cfg.data.flip_prob, crop=cfg.data.train_crop),
        class_names=cfg.data.class_names,
    )
    if len(dataset) == 0:
        raise InvalidInputError(f"{ann}: no training images with usable annotations")
    return _check_classes(cfg, dataset)


def build_test_dataset(cfg: Config) -> CocoDataset:
    """Validation set: every image kept (also those without annotations), test-scale resize."""
    ann, images = _require_paths(cfg, "val_json", "val_images")
    dataset = CocoDataset(
        ann_file=ann,
        image_dir=images,
        mode="test",
        transforms=build_transforms(train=False, scales=[cfg.data.test_scale]),
        class_names=cfg.data.class_names,
    )
    return _check_classes(cfg, dataset)


def build_train_loader_from_config(
    cfg: Config, dataset: CocoDataset, *, rank: int = 0, world_size: int = 1, start_iter: int = 0
) -> Iterator[ImageBatch]:
    return build_train_loader(
        dataset,
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        seed=cfg.train.seed,
        rank=rank,
        world_size=world_size,
        start_iter=start_iter,
    )


def build_test_loader_from_config(
    cfg: Config, dataset: CocoDataset, *, rank: int = 0, world_size: int = 1
):
    return build_test_loader(
        dataset, batch_size=1, num_workers=cfg.data.num_workers, rank=rank, world_size=world_size
    )
