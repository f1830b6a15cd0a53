"""Data containers passed between the data pipeline, the model and the evaluators.

Conventions: boxes are ``float32[N, 4]`` xyxy in absolute pixels of the image they belong to;
masks are ``bool[N, H, W]``; images are ``float32[B, 3, H, W]`` RGB in 0..255 and are normalised
inside the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


@dataclass
class Instances:
    """Instances of one image.

    Attributes:
        boxes: ``float32[N, 4]`` xyxy, absolute pixels.
        labels: ``int64[N]`` contiguous 0-based class indices.
        scores: ``float32[N]`` or ``None`` (ground truth has none).
        masks: ``bool[N, H, W]`` or ``None`` (box-only ground truth has none).
        ids: ``int64[N]`` annotation ids, or ``None``.
    """

    boxes: Tensor
    labels: Tensor
    scores: Tensor | None = None
    masks: Tensor | None = None
    ids: Tensor | None = None

    def __post_init__(self) -> None:
        n = self.boxes.shape[0]
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"boxes must be [N, 4], got {tuple(self.boxes.shape)}")
        for name in ("labels", "scores", "masks", "ids"):
            value = getattr(self, name)
            if value is not None and value.shape[0] != n:
                raise ValueError(f"{name} has {value.shape[0]} rows, boxes have {n}")

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @classmethod
    def empty(cls, with_masks: bool = False, size: tuple[int, int] = (0, 0)) -> Instances:
        masks = torch.zeros((0, *size), dtype=torch.bool) if with_masks else None
        return cls(
            boxes=torch.zeros((0, 4), dtype=torch.float32),
            labels=torch.zeros((0,), dtype=torch.int64),
            masks=masks,
        )

    def to(self, device: torch.device | str) -> Instances:
        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return Instances(
            boxes=self.boxes.to(device),
            labels=self.labels.to(device),
            scores=mv(self.scores),
            masks=mv(self.masks),
            ids=mv(self.ids),
        )

    def __getitem__(self, index: Tensor | slice | int) -> Instances:
        if isinstance(index, int):
            index = slice(index, index + 1)

        def sel(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[index]

        return Instances(
            boxes=self.boxes[index],
            labels=self.labels[index],
            scores=sel(self.scores),
            masks=sel(self.masks),
            ids=sel(self.ids),
        )

    def replace(self, **changes) -> Instances:
        return replace(self, **changes)


@dataclass
class ImageBatch:
    """A padded batch of images with their ground truth.

    Attributes:
        images: ``float32[B, 3, H, W]`` RGB 0..255; H and W are multiples of 32. Padding (bottom and
            right) holds the per-channel pixel mean, so that it is 0 after normalisation, as in the
            official pipeline (docs/method.md §3.1 step 7).
        image_sizes: per image ``(h, w)`` after resize, before padding.
        orig_sizes: per image ``(h, w)`` of the file on disk.
        image_ids: per image dataset id (COCO ``image_id``), ``-1`` where unknown.
        file_names: per image path or name, for error messages and writers.
        targets: per image ground truth in the *resized* frame (boxes scaled; masks, when present,
            ``bool[N, h, w]`` at the resized, unpadded size), or ``None`` at inference.
    """

    images: Tensor
    image_sizes: list[tuple[int, int]]
    orig_sizes: list[tuple[int, int]]
    image_ids: list[int] = field(default_factory=list)
    file_names: list[str] = field(default_factory=list)
    targets: list[Instances] | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def padded_size(self) -> tuple[int, int]:
        return int(self.images.shape[-2]), int(self.images.shape[-1])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ImageBatch:
        return ImageBatch(
            images=self.images.to(device, non_blocking=non_blocking),
            image_sizes=self.image_sizes,
            orig_sizes=self.orig_sizes,
            image_ids=self.image_ids,
            file_names=self.file_names,
            targets=None if self.targets is None else [t.to(device) for t in self.targets],
        )
