"""Sliding-window inference for models trained on crops (``test.tile``, ``data.train_crop``).

:func:`tile_windows` lays the windows over a resized image; :func:`predict_tiled` runs them and
merges their detections. Box-conditioned pseudo-labelling reuses the windows
(:mod:`discobox.inference.labellers`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..device import amp_autocast
from ..errors import InvalidInputError
from ..modeling.solov2.postprocess import SOLOv2PostProcessor, masks_to_boxes
from ..structures import ImageBatch, Instances


def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Window origins along one axis: windows of ``tile`` pixels covering ``[0, size)``, evenly
    spread, consecutive ones overlapping by at least ``overlap * tile``; one window if it fits."""
    if size <= tile:
        return [0]
    step = max(1.0, tile * (1.0 - overlap))
    n = int(np.ceil((size - tile) / step)) + 1
    return [int(round(i * (size - tile) / (n - 1))) for i in range(n)]


def _core_bounds(starts: list[int], tile: int, size: int) -> list[tuple[float, float]]:
    """The part of the axis each window answers for: overlaps split at their middle."""
    cuts = [0.0] + [(starts[k] + starts[k - 1] + tile) / 2 for k in range(1, len(starts))]
    return [(cuts[k], cuts[k + 1] if k + 1 < len(cuts) else float(size))
            for k in range(len(starts))]


def tile_windows(
    h: int, w: int, tile: Sequence[int], overlap: float, *, size_divisor: int = 32,
    padded: tuple[int, int] | None = None,
) -> tuple[int, int, list[tuple[int, int, tuple[float, float], tuple[float, float]]]]:
    """The sliding windows of :func:`predict_tiled` on a resized image of ``h x w`` pixels.

    Args:
        tile: ``(height, width)``, rounded up to ``size_divisor``.
        overlap: in ``[0, 0.9]``.
        padded: the padded tensor size, to which a window is cut (default ``(h, w)`` rounded
            up to ``size_divisor``).

    Returns:
        ``(th, tw, windows)``: the window size and, per window, ``(y0, x0, ycore, xcore)``
        with ``ycore``/``xcore`` the ``(lo, hi)`` span of the axis it answers for.
    """
    if len(tile) != 2 or min(int(v) for v in tile) <= 0:
        raise InvalidInputError(
            f"test.tile must be [height, width] of positive integers, got {tile!r}")
    if not 0.0 <= overlap <= 0.9:
        raise InvalidInputError(f"test.tile_overlap must be in [0, 0.9], got {overlap}")
    div = int(size_divisor)
    th, tw = (int(-(-int(v) // div) * div) for v in tile)
    if padded is None:
        padded = (-(-h // div) * div, -(-w // div) * div)
    th, tw = min(th, padded[0]), min(tw, padded[1])
    ys, xs = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
    ycore, xcore = _core_bounds(ys, th, h), _core_bounds(xs, tw, w)
    return th, tw, [(y0, x0, yc, xc) for y0, yc in zip(ys, ycore) for x0, xc in zip(xs, xcore)]


def window_crops(
    image: torch.Tensor, origins: Sequence[tuple[int, int]], th: int, tw: int, h: int, w: int,
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The ``th x tw`` windows at ``(y0, x0)`` ``origins`` of a padded ``[3, H, W]`` image whose
    unpadded size is ``h x w``, stacked, and each window's unpadded size."""
    crops = torch.stack([image[:, y0:y0 + th, x0:x0 + tw] for y0, x0 in origins])
    return crops, [(min(th, h - y0), min(tw, w - x0)) for y0, x0 in origins]


@torch.no_grad()
def predict_tiled(
    model: torch.nn.Module, post: SOLOv2PostProcessor, batch: ImageBatch, index: int, *,
    tile: Sequence[int], overlap: float = 0.25, amp: str = "none",
) -> Instances:
    """Sliding-window inference on one image of ``batch`` (ours; pairs with ``data.train_crop``).

    SOLOv2's grid cells and coordinate features are relative to the input (docs/method.md §2),
    so a model trained on crops expects inputs of the crop's size (BENCHMARKS.md, "Droplets on
    crops: short side 512, 256x320 crops, sliding-window test"). The resized image is cut into
    ``tile`` windows overlapping by ``overlap`` (fraction of the window), all windows run as one
    batch, each window keeps the detections whose box centre lies in its core (the overlaps are
    split at their middle, so an object is reported once, by the window that sees it most
    centrally), and the kept masks are pasted into the image, resized to the original size,
    ranked by score and cut to ``max_per_img``.

    Args:
        tile: ``(height, width)`` in pixels of the resized image; rounded up to the model's
            ``size_divisor``.
        overlap: in ``[0, 0.9]``.

    Returns:
        :class:`Instances` at the original size: ``masks`` ``bool[N, H0, W0]``, ``boxes``
        ``float[N, 4]`` (of the masks), ``scores`` ``[N]``, ``labels`` ``[N]``.
    """
    h, w = (int(v) for v in batch.image_sizes[index])
    orig = tuple(int(v) for v in batch.orig_sizes[index])
    image = batch.images[index]
    th, tw, windows = tile_windows(h, w, tile, overlap,
                                   size_divisor=int(getattr(model, "size_divisor", 32)),
                                   padded=tuple(image.shape[-2:]))
    if len(windows) == 1:
        with amp_autocast(image.device, amp):
            out = model(image[None], [(h, w)])
        return post(out, image_sizes=[(h, w)], orig_sizes=[orig])[0]
    crops, sizes = window_crops(image, [(y0, x0) for y0, x0, _, _ in windows], th, tw, h, w)
    with amp_autocast(image.device, amp):
        out = model(crops, sizes)
    per_window = post(out, image_sizes=sizes, orig_sizes=sizes)
    masks, scores, labels = [], [], []
    for (y0, x0, (cy0, cy1), (cx0, cx1)), inst, (sh, sw) in zip(windows, per_window, sizes):
        if len(inst) == 0:
            continue
        cx = (inst.boxes[:, 0] + inst.boxes[:, 2]) / 2 + x0
        cy = (inst.boxes[:, 1] + inst.boxes[:, 3]) / 2 + y0
        keep = (cx >= cx0) & (cx < cx1) & (cy >= cy0) & (cy < cy1)
        if not bool(keep.any()):
            continue
        canvas = torch.zeros((int(keep.sum()), h, w), dtype=torch.bool, device=image.device)
        canvas[:, y0:y0 + sh, x0:x0 + sw] = inst.masks[keep]
        masks.append(canvas)
        scores.append(inst.scores[keep])
        labels.append(inst.labels[keep])
    if not masks:
        return post._empty(orig, image.device)
    return _merge(post, torch.cat(masks), torch.cat(scores), torch.cat(labels), orig)


def _merge(post: SOLOv2PostProcessor, masks: torch.Tensor, scores: torch.Tensor,
           labels: torch.Tensor, orig: tuple[int, int]) -> Instances:
    """Rank the windows' kept detections (``masks`` ``bool[N, h, w]`` in the resized image) by
    score, keep ``post.max_per_img``, resize the masks to ``orig`` and drop empty ones."""
    order = torch.argsort(scores, descending=True)[: post.max_per_img]
    full = masks[order]
    out_masks = torch.zeros((len(order), *orig), dtype=torch.bool, device=masks.device)
    for start in range(0, len(order), post.chunk_size):
        chunk = full[None, start:start + post.chunk_size].float()
        if tuple(masks.shape[-2:]) != orig:
            chunk = F.interpolate(chunk, size=orig, mode="bilinear", align_corners=False)
        out_masks[start:start + post.chunk_size] = chunk[0] > 0.5
    nonempty = out_masks.flatten(1).any(1)
    out_masks = out_masks[nonempty]
    return Instances(boxes=masks_to_boxes(out_masks), labels=labels[order][nonempty],
                     scores=scores[order][nonempty], masks=out_masks)
