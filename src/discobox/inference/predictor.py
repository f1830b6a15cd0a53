"""Inference on images: the public :class:`Predictor` and the ``discobox predict`` verb."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..checkpoint.io import atomic_write_text
from ..checkpoint.load import load_model
from ..config import Config
from ..data.coco import read_image
from ..data.loader import collate
from ..data.transforms import build_transforms
from ..engine.distributed import amp_autocast
from ..engine.evaluator import instances_to_coco
from ..modeling.build import build_postprocessor
from ..modeling.solov2.postprocess import SOLOv2PostProcessor, masks_to_boxes
from ..structures import ImageBatch, Instances
from .visualize import draw_instances

logger = logging.getLogger("discobox")


@torch.no_grad()
def predict_batch(
    model: torch.nn.Module, post: SOLOv2PostProcessor, batch: ImageBatch, *, amp: str = "none",
    tile: Sequence[int] | None = None, tile_overlap: float = 0.25,
) -> list[Instances]:
    """Model + post-processing for a batch; masks come back at each image's original size.

    With ``tile`` (``(height, width)``, config ``test.tile``) each resized image larger than a
    tile is predicted window by window (:func:`predict_tiled`), for models trained with
    ``data.train_crop``.
    """
    if tile is not None:
        return [predict_tiled(model, post, batch, b, tile=tile, overlap=tile_overlap, amp=amp)
                for b in range(len(batch))]
    with amp_autocast(batch.images.device, amp):
        out = model(batch.images, batch.image_sizes)
    return post(out, image_sizes=batch.image_sizes, orig_sizes=batch.orig_sizes)


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
        raise ValueError(f"test.tile must be [height, width] of positive integers, got {tile!r}")
    if not 0.0 <= overlap <= 0.9:
        raise ValueError(f"test.tile_overlap must be in [0, 0.9], got {overlap}")
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

    SOLOv2's grid cells and coordinate features are relative to the input (METHOD.md §2), so a
    model trained on crops expects inputs of the crop's size: on droplets a model trained on
    256x320 crops gave 57.8 mask AP on val tiles of that size and 2.1 on the whole images
    (BENCHMARKS.md). Here the resized image is cut into ``tile`` windows overlapping by
    ``overlap`` (fraction of the window), all windows run as one batch, each window keeps the
    detections whose box centre lies in its core (the overlaps are split at their middle, so
    an object is reported once, by the window that sees it most centrally), and the kept
    masks are pasted into the image, resized to the original size, ranked by score and cut to
    ``max_per_img``.

    Args:
        tile: ``(height, width)`` in pixels of the resized image; rounded up to the model's
            ``size_divisor``.
        overlap: in ``[0, 0.9]``.
    """
    h, w = (int(v) for v in batch.image_sizes[index])
    orig = tuple(int(v) for v in batch.orig_sizes[index])
    image = batch.images[index]
    th, tw, windows = tile_windows(h, w, tile, overlap,
                                   size_divisor=int(getattr(model, "size_divisor", 32)),
                                   padded=tuple(image.shape[-2:]))
    if len(windows) == 1:
        sub = ImageBatch(images=image[None], image_sizes=[(h, w)], orig_sizes=[orig])
        return predict_batch(model, post, sub, amp=amp)[0]
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
    scores_t = torch.cat(scores)
    order = torch.argsort(scores_t, descending=True)[: post.max_per_img]
    full = torch.cat(masks)[order]
    out_masks = torch.zeros((len(order), *orig), dtype=torch.bool, device=image.device)
    for start in range(0, len(order), post.chunk_size):
        chunk = full[None, start:start + post.chunk_size].float()
        if (h, w) != orig:
            chunk = F.interpolate(chunk, size=orig, mode="bilinear", align_corners=False)
        out_masks[start:start + post.chunk_size] = chunk[0] > 0.5
    nonempty = out_masks.flatten(1).any(1)
    out_masks = out_masks[nonempty]
    return Instances(boxes=masks_to_boxes(out_masks), labels=torch.cat(labels)[order][nonempty],
                     scores=scores_t[order][nonempty], masks=out_masks)


class Predictor:
    """Predict instances on RGB images with a trained model.

    Example::

        predictor = Predictor.from_checkpoint("runs/demo/model_final.pth")
        inst = predictor(image)          # image: uint8[H, W, 3] RGB
        inst.masks.shape                 # bool[N, H, W]
    """

    def __init__(self, *, model: torch.nn.Module, cfg: Config, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.post = build_postprocessor(cfg)
        self.transforms = build_transforms(train=False, scales=[cfg.data.test_scale],
                                           flip_prob=0.0)

    @classmethod
    def from_checkpoint(
        cls, weights: str | Path, *, config: str | Path | None = None,
        device: str | torch.device | None = None, overrides: list[str] | None = None,
    ) -> Predictor:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model, cfg = load_model(weights, config=config, overrides=overrides)
        return cls(model=model, cfg=cfg, device=device)

    @property
    def class_names(self) -> list[str]:
        names = self.cfg.data.class_names
        return list(names) if names else [str(i) for i in range(self.cfg.model.num_classes)]

    def _sample(self, image: np.ndarray, name: str = "") -> dict:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{name or 'image'}: expected uint8[H, W, 3] RGB, got "
                             f"{image.dtype}{list(image.shape)}")
        h, w = image.shape[:2]
        inst = Instances.empty()
        return self.transforms({"image": image, "instances": inst, "image_id": -1,
                                "file_name": name, "orig_size": (h, w)})

    def predict_many(
        self, images: Sequence[np.ndarray], names: Sequence[str] = ()
    ) -> list[Instances]:
        names = list(names) or [""] * len(images)
        batch = collate([self._sample(im, n) for im, n in zip(images, names)])
        batch.targets = None
        return [i.to("cpu") for i in predict_batch(
            self.model, self.post, batch.to(self.device), amp=self.cfg.solver.amp,
            tile=self.cfg.test.tile, tile_overlap=self.cfg.test.tile_overlap)]

    def __call__(self, image: np.ndarray) -> Instances:
        return self.predict_many([image])[0]


def predict_files(
    *, weights: str | Path, images: Sequence[str | Path], output: str | Path,
    config: str | Path | None = None, score_thr: float = 0.3, overrides: list[str] | None = None,
) -> Path:
    """Write ``<stem>.png`` overlays and ``predictions.json`` (COCO results) into ``output``."""
    predictor = Predictor.from_checkpoint(weights, config=config, overrides=overrides)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    results = []
    files = [Path(p) for p in images]
    label_map = list(range(predictor.cfg.model.num_classes))
    for image_id, path in enumerate(tqdm(files, desc="predict")):
        image = read_image(path)
        inst = predictor(image)
        entries = instances_to_coco(inst, image_id, label_map)
        for e in entries:
            e["file_name"] = str(path)
            e["category_name"] = predictor.class_names[e["category_id"]]
        results.extend(entries)
        keep = inst[inst.scores >= score_thr] if len(inst) else inst
        overlay = draw_instances(image, keep, predictor.class_names)
        _write_png(output / f"{path.stem}.png", overlay)
    out_json = output / "predictions.json"
    atomic_write_text(json.dumps(results), out_json)
    logger.info("wrote %d overlays and %s", len(files), out_json)
    return out_json


def _write_png(path: Path, rgb: np.ndarray) -> None:
    import cv2

    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")
