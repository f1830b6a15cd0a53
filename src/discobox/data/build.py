"""Datasets and loaders from a :class:`~discobox.config.Config` (where config meets data)."""

from __future__ import annotations

from collections.abc import Iterator

from ..config import Config, ConfigError
from ..errors import InvalidInputError
from ..structures import ImageBatch
from .coco import CocoDataset
from .loader import build_test_loader, build_train_loader
from .transforms import build_transforms


def _require_paths(cfg: Config, json_key: str, images_key: str) -> tuple[str, str]:
    ann = getattr(cfg.data, json_key)
    images = getattr(cfg.data, images_key)
    if not ann or not images:
        raise ConfigError(
            f"data.{json_key} and data.{images_key} must be set "
            f"(e.g. data.{json_key}=path/to/instances.json data.{images_key}=path/to/images)"
        )
    return ann, images


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
