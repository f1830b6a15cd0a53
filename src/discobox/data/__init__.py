"""Datasets, transforms and loaders: COCO json -> sample dicts -> :class:`ImageBatch`."""

from .coco import CocoDataset
from .images import ImageReadError, read_image
from .loader import (
    PIXEL_MEAN,
    GroupedBatchSampler,
    ShardSampler,
    TrainLoader,
    build_test_loader,
    build_train_loader,
    collate,
)
from .segmentation import decode_segmentation
from .synthetic import SHAPES, SyntheticCoco, make_synthetic_coco
from .transforms import (
    Compose,
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
    build_transforms,
    current_rng,
    rescaled_size,
    rng_scope,
)

__all__ = [
    "PIXEL_MEAN",
    "SHAPES",
    "CocoDataset",
    "Compose",
    "GroupedBatchSampler",
    "ImageReadError",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Resize",
    "ShardSampler",
    "SyntheticCoco",
    "TrainLoader",
    "build_test_loader",
    "build_train_loader",
    "build_transforms",
    "collate",
    "current_rng",
    "decode_segmentation",
    "make_synthetic_coco",
    "read_image",
    "rescaled_size",
    "rng_scope",
]
