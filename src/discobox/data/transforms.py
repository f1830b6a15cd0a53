"""Geometric transforms of one sample: keep-ratio resize, horizontal flip (docs/method.md §3.1)
and an optional random crop (ours, for small objects in large images).

A *sample* is the dict produced by the datasets::

    {"image": uint8[H, W, 3] RGB numpy, "instances": Instances, "image_id": int,
     "file_name": str, "orig_size": (H, W)}

``instances.boxes`` is ``float32[N, 4]`` xyxy in the pixels of ``image``; ``instances.masks`` is
``bool[N, H, W]`` or ``None``. Transforms keep the image ``uint8``; conversion to float, padding and
batching happen in :func:`discobox.data.loader.collate`. They add ``scale_factor`` (w, h) and
``flipped`` to the sample.

Randomness. Random transforms draw from :func:`current_rng`. Inside ``with rng_scope(gen):`` that is
the given ``numpy.random.Generator``; the training loader opens such a scope for every sample with a
generator seeded from ``(seed, epoch, rank, batch, slot)``, so the chosen scales and flips are a
pure function of the seed and the position in the epoch: identical for any ``num_workers`` and after
a resume. Outside a scope the numpy global generator is used (the torch ``DataLoader`` seeds it per
worker).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import cv2
import numpy as np
import torch

from ..structures import Instances

Sample = dict[str, Any]
Transform = Callable[[Sample], Sample]

_RNG: ContextVar[np.random.Generator | None] = ContextVar("discobox_transform_rng", default=None)


@contextmanager
def rng_scope(rng: np.random.Generator) -> Iterator[np.random.Generator]:
    """Make ``rng`` the source of randomness of all transforms called inside the block."""
    token = _RNG.set(rng)
    try:
        yield rng
    finally:
        _RNG.reset(token)


def current_rng() -> np.random.Generator | np.random.RandomState:
    """The generator transforms draw from: the innermost :func:`rng_scope`, else numpy's global."""
    rng = _RNG.get()
    return rng if rng is not None else np.random.mtrand._rand


def _check_scales(scales: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    out = []
    for s in scales:
        if len(s) != 2 or min(int(v) for v in s) <= 0:
            raise ValueError(f"scales: expected (long, short) pairs of positive ints, got {s!r}")
        out.append((int(s[0]), int(s[1])))
    if not out:
        raise ValueError("scales: at least one (long, short) scale is needed")
    return out


def rescaled_size(h: int, w: int, scale: tuple[int, int]) -> tuple[int, int]:
    """Keep-ratio target ``(new_h, new_w)`` for a ``(long, short)`` scale (mmcv ``rescale_size``).

    ``s = min(long / max(h, w), short / min(h, w))``; new size ``(int(h*s+0.5), int(w*s+0.5))``.
    """
    long_edge, short_edge = max(scale), min(scale)
    s = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(h * s + 0.5), int(w * s + 0.5)


def _uniform_int(rng: np.random.Generator | np.random.RandomState, n: int) -> int:
    """An integer in ``[0, n)`` from either kind of numpy generator."""
    return min(int(rng.random() * n), n - 1)


class Resize:
    """Resize image, boxes and masks to one of ``scales`` (docs/method.md §3.1 step 4).

    Args:
        scales: ``(long, short)`` pairs, e.g. ``[(1333, 800)]``. With several, one is chosen
            uniformly per sample (mmdet ``multiscale_mode='value'``); with one, no randomness is
            drawn.
        keep_ratio: keep the aspect ratio (the rule in :func:`rescaled_size`); otherwise resize to
            exactly ``w = long, h = short``.

    Image: bilinear (cv2); masks: nearest; boxes: scaled by ``(new_w / w, new_h / h)`` and clipped
    to ``[0, new_w] x [0, new_h]``.
    """

    def __init__(self, *, scales: Sequence[Sequence[int]], keep_ratio: bool = True) -> None:
        self.scales = _check_scales(scales)
        self.keep_ratio = keep_ratio

    def _pick(self) -> tuple[int, int]:
        if len(self.scales) == 1:
            return self.scales[0]
        n = len(self.scales)
        return self.scales[_uniform_int(current_rng(), n)]

    def __call__(self, sample: Sample) -> Sample:
        image = sample["image"]
        h, w = image.shape[:2]
        scale = self._pick()
        if self.keep_ratio:
            new_h, new_w = rescaled_size(h, w, scale)
        else:
            new_h, new_w = scale[1], scale[0]
        if (new_h, new_w) != (h, w):
            image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        sx, sy = new_w / w, new_h / h
        inst: Instances = sample["instances"]
        factor = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
        boxes = inst.boxes * factor
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, new_w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, new_h)
        masks = inst.masks
        if masks is not None and (new_h, new_w) != (h, w):
            masks = resize_masks(masks, (new_h, new_w))
        out = dict(sample)
        out["image"] = image
        out["instances"] = inst.replace(boxes=boxes, masks=masks)
        out["scale_factor"] = (sx, sy)
        return out


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize (cv2, as mmdet ``BitmapMasks.rescale``).

    Args:
        masks: ``bool[N, h, w]``.
        size: ``(H, W)``.

    Returns:
        ``bool[N, H, W]``.
    """
    new_h, new_w = size
    out = np.zeros((masks.shape[0], new_h, new_w), dtype=bool)
    src = masks.numpy().astype(np.uint8)
    for i in range(src.shape[0]):
        out[i] = cv2.resize(src[i], (new_w, new_h), interpolation=cv2.INTER_NEAREST) > 0
    return torch.from_numpy(out)


class RandomHorizontalFlip:
    """Flip image, boxes and masks left-right with probability ``p`` (docs/method.md §3.1 step 5).

    Boxes map ``x1' = W - x2``, ``x2' = W - x1``.
    """

    def __init__(self, *, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        flip = self.p > 0 and current_rng().random() < self.p
        out["flipped"] = bool(flip)
        if not flip:
            return out
        out["image"] = np.ascontiguousarray(sample["image"][:, ::-1])
        out["instances"] = hflip_instances(sample["instances"], sample["image"].shape[1])
        return out


def hflip_instances(inst: Instances, width: int) -> Instances:
    """Mirror ``Instances`` in an image of the given width (boxes and masks)."""
    boxes = inst.boxes.clone()
    boxes[:, 0] = width - inst.boxes[:, 2]
    boxes[:, 2] = width - inst.boxes[:, 0]
    masks = None if inst.masks is None else inst.masks.flip(-1)
    return inst.replace(boxes=boxes, masks=masks)


class RandomCrop:
    """Cut a random ``(height, width)`` window out of the (resized) image; ours, off by default.

    Not in the official pipelines. It is for data whose objects are small in large images
    (microscopy, aerial): train at a larger scale, where the objects have enough pixels in the
    1/4-resolution map that the masks and the CRF live on, at the cost of a small input per step.
    A side shorter than the crop is kept whole (``collate`` pads).

    Boxes are shifted and clipped to the window; instances whose clipped box is under
    ``min_box_size`` pixels on a side are dropped. A clipped box is still tight to the object's
    visible part (the part touches the window's edge where it is cut), so the box-projection loss
    (§4.2) stays valid. Windows are drawn up to ``max_tries`` times until one keeps an instance; if
    none does, the window is centred on a randomly chosen instance, so a crop never has no ground
    truth when the image has some.

    Args:
        size: ``(height, width)`` of the window, positive integers (config ``data.train_crop``).
        min_box_size: smallest side in pixels of a kept, clipped box.
        max_tries: random windows to draw before centring one on an instance.
    """

    def __init__(
        self, *, size: Sequence[int], min_box_size: float = 2.0, max_tries: int = 10
    ) -> None:
        size = tuple(size)
        if len(size) != 2 or not all(isinstance(v, int | np.integer) and v > 0 for v in size):
            raise ValueError(
                f"data.train_crop must be [height, width] of positive integers, got {size!r}"
            )
        if min_box_size < 0:
            raise ValueError(f"min_box_size must be >= 0, got {min_box_size}")
        self.size = (int(size[0]), int(size[1]))
        self.min_box_size = float(min_box_size)
        self.max_tries = int(max_tries)

    def _keep(
        self, boxes: torch.Tensor, x0: int, y0: int, cw: int, ch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        shifted = boxes - torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
        shifted[:, 0::2] = shifted[:, 0::2].clamp(0, cw)
        shifted[:, 1::2] = shifted[:, 1::2].clamp(0, ch)
        wh = shifted[:, 2:] - shifted[:, :2]
        keep = (wh >= max(self.min_box_size, 1e-6)).all(dim=1)
        return shifted, keep

    def __call__(self, sample: Sample) -> Sample:
        image = sample["image"]
        h, w = image.shape[:2]
        ch, cw = min(self.size[0], h), min(self.size[1], w)
        inst: Instances = sample["instances"]
        if (ch, cw) == (h, w):
            out = dict(sample)
            out["crop"] = (0, 0, w, h)
            return out
        rng = current_rng()
        boxes = inst.boxes
        for _ in range(max(self.max_tries, 1)):
            y0 = _uniform_int(rng, h - ch + 1)
            x0 = _uniform_int(rng, w - cw + 1)
            shifted, keep = self._keep(boxes, x0, y0, cw, ch)
            if len(inst) == 0 or bool(keep.any()):
                break
        else:
            i = _uniform_int(rng, len(inst))
            cx = float(boxes[i, 0] + boxes[i, 2]) / 2
            cy = float(boxes[i, 1] + boxes[i, 3]) / 2
            x0 = int(np.clip(round(cx - cw / 2), 0, w - cw))
            y0 = int(np.clip(round(cy - ch / 2), 0, h - ch))
            shifted, keep = self._keep(boxes, x0, y0, cw, ch)
            if not bool(keep.any()):  # a box thinner than min_box_size everywhere: keep it anyway
                keep[i] = True
        masks = inst.masks
        if masks is not None:
            masks = masks[keep, y0:y0 + ch, x0:x0 + cw].contiguous()
        out = dict(sample)
        out["image"] = np.ascontiguousarray(image[y0:y0 + ch, x0:x0 + cw])
        out["instances"] = Instances(
            boxes=shifted[keep],
            labels=inst.labels[keep],
            scores=None if inst.scores is None else inst.scores[keep],
            masks=masks,
            ids=None if inst.ids is None else inst.ids[keep],
        )
        out["crop"] = (x0, y0, x0 + cw, y0 + ch)
        return out


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def build_transforms(
    *, train: bool, scales: Sequence[Sequence[int]], flip_prob: float = 0.5,
    crop: Sequence[int] | None = None,
) -> Compose:
    """The official pipelines: train = Resize(scales) + flip(flip_prob); test = Resize(scales[0]).

    ``crop`` (``(height, width)``, train only) adds a :class:`RandomCrop` after the resize and
    before the flip; ``None`` (the default) is the official pipeline.

    Normalisation and padding are not transforms here: ``collate`` pads with the pixel mean and the
    model normalises. ``flip_prob`` is ignored when ``train`` is False (no test-time flip, §7).
    """
    scales = _check_scales(scales)
    if not train:
        if len(scales) != 1:
            raise ValueError(f"test pipeline takes one scale, got {scales}")
        return Compose([Resize(scales=scales)])
    steps: list[Transform] = [Resize(scales=scales)]
    if crop is not None:
        steps.append(RandomCrop(size=crop))
    steps.append(RandomHorizontalFlip(p=flip_prob))
    return Compose(steps)
