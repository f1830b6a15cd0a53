"""``discobox pseudo-label``: a COCO json of boxes -> the same json with a mask for every box.

Methods (``method=``):

- ``"model"``: box-conditioned SOLOv2 inference, METHOD.md §8.1 (see
  :mod:`discobox.inference.box_conditioned`); score = the class score of the box's cell. With
  ``test.tile`` in the model's config (models trained on ``data.train_crop``) each box is
  labelled in the sliding window that holds it best, so the network sees inputs of the size it
  was trained on (droplets, seed-1 meanfield model: mean IoU 0.677 on whole images, 0.795 in
  windows; BENCHMARKS.md).
- ``"box"``: the filled box (:func:`discobox.inference.box_baselines.box_masks`); score 1.0.
- ``"grabcut"``: OpenCV GrabCut initialised from the box, 5 iterations, on the full image or,
  with ``grabcut_context=c``, on the box grown by ``c`` times its size on each side
  (:func:`discobox.inference.box_baselines.grabcut_mask`); score 1.0.

Every method confines a mask to its box: the pixels whose centres lie in the box, clipped to the
image (``box_region`` in :mod:`discobox.inference.box_conditioned`). (The official training-time
``GenerateBoxMask`` rounds and includes the right/bottom edge, one pixel more, §3.1 step 3.)

The output is a copy of the input json in which every annotation gets a compressed-RLE
``segmentation`` (``counts`` a str) at its image's size and the matching ``area``; nothing else
changes (ids, image ids, category ids, bbox, other keys). Bad input never stops the run:

- a box that is not 4 finite numbers (``invalid_box``), has ``w <= 0`` or ``h <= 0``
  (``zero_area``) or does not overlap the image (``outside_image``), and every box of an image
  that is missing on disk (``missing_image``) or cannot be read or decoded (``unreadable_image``,
  e.g. a truncated or corrupt file), each with one warning naming the file, or whose
  size differs from the json (``size_mismatch``), is *skipped*: it gets an **empty** mask (area 0,
  so a consumer can filter it) and is counted in ``summary["skipped"]``;
- a box partly outside the image is clipped to it and labelled (counted in ``clipped``);
- ``model``: a category the model does not know still gets a mask, because SOLOv2 kernels are
  class-agnostic; its score is the cell's best class score (counted in ``unknown_category``).
  Categories map to model classes by name via ``cfg.data.class_names`` when it is set, else as in
  training: the json's category ids sorted ascending are labels ``0..num_classes-1``;
- ``model``/``grabcut``: an empty result falls back to the neighbouring cells (model) and then to
  the filled box, counted in ``fallback_neighbour`` / ``fallback_box``.

Structural errors (not a json object, no ``images``/``annotations`` list, an image without
``id``/``file_name``/``width``/``height``, an annotation naming an unknown image) raise
``ValueError`` naming the file. The output is written atomically (temp file + rename), so an
interrupted run leaves either the previous file or none, never a truncated one.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoint.io import atomic_write_text
from ..data.coco import ImageNotFoundError, ImageReadError, _load_json, read_image
from ..engine.box_mask_eval import evaluate_box_masks
from ..engine.distributed import amp_autocast
from ..engine.evaluator import METRIC_NAMES, encode_mask
from .box_baselines import check_grabcut_context, grabcut_mask
from .box_conditioned import SOURCE_BOX, SOURCE_NEIGHBOUR, BoxConditionedInference
from .box_conditioned import box_region as _box_region

logger = logging.getLogger("discobox")

METHODS = ("model", "box", "grabcut")
SKIP_REASONS = ("invalid_box", "zero_area", "outside_image", "missing_image", "unreadable_image",
                "size_mismatch")


@dataclass
class _Image:
    image_id: int
    path: Path
    height: int
    width: int
    anns: list[int]  # positions in data["annotations"]


@dataclass
class _Work:
    """A readable image and its labelable boxes (original frame, clipped)."""

    entry: _Image
    image: np.ndarray  # uint8[H, W, 3] RGB
    positions: list[int]  # annotation positions
    boxes: np.ndarray  # float32[n, 4] xyxy
    labels: np.ndarray  # int64[n] model class, -1 unknown


# (annotation position, region (x0, y0, x1, y1), crop bool[y1-y0, x1-x0], score, source)
_Result = tuple[int, tuple[int, int, int, int], np.ndarray, float, str]


def _index(data: dict[str, Any], path: Path, image_dir: Path) -> dict[int, _Image]:
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: missing top-level list '{key}'")
    images: dict[int, _Image] = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or any(k not in img for k in ("id", "file_name", "width",
                                                                     "height")):
            raise ValueError(f"{path}: images[{i}] needs 'id', 'file_name', 'width', 'height'")
        if img["id"] in images:
            raise ValueError(f"{path}: duplicate image id {img['id']}")
        images[img["id"]] = _Image(img["id"], image_dir / img["file_name"], int(img["height"]),
                                   int(img["width"]), [])
    for pos, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or ann.get("image_id") not in images:
            where = ann.get("id", f"#{pos}") if isinstance(ann, dict) else f"#{pos}"
            raise ValueError(f"{path}: annotation {where} has no 'image_id' listed in 'images'")
        images[ann["image_id"]].anns.append(pos)
    return images


def _parse_box(ann: dict[str, Any], height: int, width: int) -> tuple[np.ndarray | None, str]:
    """``(clipped xyxy, "")``, ``(clipped xyxy, "clipped")`` or ``(None, skip reason)``."""
    bbox = ann.get("bbox")
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        return None, "invalid_box"
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None, "invalid_box"
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None, "invalid_box"
    if w <= 0 or h <= 0:
        return None, "zero_area"
    box = np.array([max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)], np.float32)
    if box[2] <= box[0] or box[3] <= box[1]:
        return None, "outside_image"
    clipped = x < 0 or y < 0 or x + w > width or y + h > height
    return box, "clipped" if clipped else ""


class _ModelLabeller:
    """Batched network forward + :class:`BoxConditionedInference` (METHOD.md §8.1)."""

    windows_per_forward = 16  # test.tile windows per network forward (memory stays bounded)

    def __init__(self, *, weights, config, overrides, device: str, chunk_size: int,
                 categories: list[dict[str, Any]]) -> None:
        from ..checkpoint.load import load_model
        from ..data.transforms import build_transforms
        from ..engine.distributed import resolve_device
        from ..modeling.build import refine_params

        model, cfg = load_model(weights, config=config, overrides=overrides)
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.amp = cfg.solver.amp
        self.transforms = build_transforms(train=False, scales=[cfg.data.test_scale])
        self.infer = BoxConditionedInference(
            mask_thr=cfg.test.mask_thr, scale_ranges=cfg.model.scale_ranges,
            chunk_size=chunk_size, refine=None if cfg.test.refine == "none" else cfg.test.refine,
            refine_params=refine_params(cfg))
        self.cat_to_label = self._label_map(categories, cfg.data.class_names,
                                            cfg.model.num_classes)
        self.tile = cfg.test.tile
        self.tile_overlap = cfg.test.tile_overlap

    @staticmethod
    def _label_map(categories: list[dict[str, Any]], class_names: Sequence[str] | None,
                   num_classes: int) -> dict[Any, int]:
        cats = [c for c in categories if isinstance(c, dict) and "id" in c]
        if class_names:
            index = {str(n): i for i, n in enumerate(class_names)}
            return {c["id"]: index[str(c.get("name"))] for c in cats
                    if str(c.get("name")) in index}
        ids = sorted(c["id"] for c in cats)
        if len(ids) != num_classes:
            logger.warning("the json has %d categories but the model %d classes; mapping the "
                           "json's category ids in ascending order to classes 0..%d",
                           len(ids), num_classes, num_classes - 1)
        return {cid: i for i, cid in enumerate(ids[:num_classes])}

    def labels(self, anns: list[dict[str, Any]]) -> np.ndarray:
        return np.array([self.cat_to_label.get(a.get("category_id"), -1) for a in anns], np.int64)

    @torch.no_grad()
    def __call__(self, works: list[_Work]) -> Iterator[_Result]:
        from ..data.loader import collate
        from ..structures import Instances

        samples = [
            self.transforms({"image": w.image, "instances": Instances.empty(),
                             "image_id": w.entry.image_id, "file_name": str(w.entry.path),
                             "orig_size": (w.entry.height, w.entry.width)})
            for w in works
        ]
        batch = collate(samples).to(self.device)
        if self.tile is not None:
            for b, w in enumerate(works):
                yield from self._tiled(batch, b, w)
            return
        with amp_autocast(self.device, self.amp):
            out = self.model(batch.images, batch.image_sizes)
        for b, w in enumerate(works):
            yield from self._results(
                w, np.arange(len(w.positions)),
                self.infer(out, b, boxes=torch.from_numpy(w.boxes),
                           labels=torch.from_numpy(w.labels), image_size=batch.image_sizes[b],
                           orig_size=batch.orig_sizes[b]))

    def _tiled(self, batch, b: int, w: _Work) -> Iterator[_Result]:
        """Box-conditioned inference on ``test.tile`` windows (models trained on
        ``data.train_crop``): each box is labelled in the window that holds it best
        (:meth:`BoxConditionedInference.tile_for_boxes`); only those windows run, a few at a
        time."""
        from .predictor import tile_windows, window_crops

        h, w_img = (int(v) for v in batch.image_sizes[b])
        H0, W0 = (int(v) for v in batch.orig_sizes[b])
        image = batch.images[b]
        th, tw, windows = tile_windows(h, w_img, self.tile, self.tile_overlap,
                                       size_divisor=int(getattr(self.model, "size_divisor", 32)),
                                       padded=tuple(image.shape[-2:]))
        boxes = torch.from_numpy(w.boxes)
        resized = boxes * torch.tensor([w_img / W0, h / H0, w_img / W0, h / H0])
        choice = BoxConditionedInference.tile_for_boxes(
            resized, [(y0, x0) for y0, x0, _, _ in windows], (th, tw), (h, w_img))
        choice = choice.numpy()
        used = sorted(set(choice.tolist()))
        for start in range(0, len(used), self.windows_per_forward):
            group = used[start:start + self.windows_per_forward]
            crops, sizes = window_crops(image, [windows[k][:2] for k in group], th, tw, h, w_img)
            with amp_autocast(self.device, self.amp):
                out = self.model(crops, sizes)
            for g, k in enumerate(group):
                sel = np.nonzero(choice == k)[0]
                yield from self._results(
                    w, sel,
                    self.infer(out, g, boxes=boxes[sel], labels=torch.from_numpy(w.labels[sel]),
                               image_size=sizes[g], orig_size=(H0, W0),
                               window=(windows[k][0], windows[k][1], h, w_img)))

    @staticmethod
    def _results(w: _Work, sel: np.ndarray, chunks) -> Iterator[_Result]:
        names = {SOURCE_NEIGHBOUR: "neighbour", SOURCE_BOX: "box"}
        for ch in chunks:
            for k, i in enumerate(ch.index.tolist()):
                region = tuple(int(v) for v in ch.regions[k].tolist())
                yield (w.positions[int(sel[i])], region, ch.crops[k].numpy(),
                       float(ch.scores[k]), names.get(int(ch.source[k]), "model"))


def _label_box(works: list[_Work]) -> Iterator[_Result]:
    for w in works:
        regions = _box_region(torch.from_numpy(w.boxes).double(), w.entry.height, w.entry.width)
        for pos, (x0, y0, x1, y1) in zip(w.positions, regions.tolist()):
            yield pos, (x0, y0, x1, y1), np.ones((y1 - y0, x1 - x0), bool), 1.0, "box_method"


def _label_grabcut(works: list[_Work], context: float | None = None) -> Iterator[_Result]:
    for w in works:
        regions = _box_region(torch.from_numpy(w.boxes).double(), w.entry.height, w.entry.width)
        for pos, box, (x0, y0, x1, y1) in zip(w.positions, w.boxes, regions.tolist()):
            mask, ok = grabcut_mask(w.image, box.tolist(), iters=5, context=context)
            yield pos, (x0, y0, x1, y1), mask[y0:y1, x0:x1], 1.0, "grabcut" if ok else "box"


def pseudo_label(
    *,
    boxes_json: str | Path,
    images_dir: str | Path,
    out_json: str | Path,
    method: str = "model",
    weights: str | Path | None = None,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    device: str = "auto",
    evaluate: bool = False,
    chunk_size: int = 64,
    batch_size: int = 1,
    progress: bool = True,
    summary_json: str | Path | None = None,
    grabcut_context: float | None = None,
) -> dict[str, Any]:
    """Write ``out_json``: ``boxes_json`` with an RLE mask for every annotation (module docstring).

    Args:
        boxes_json: COCO json with ``images`` and ``annotations`` (``bbox``; masks optional).
        images_dir: folder that the images' ``file_name`` are relative to.
        out_json: output path (written atomically).
        method: ``"model"``, ``"box"`` or ``"grabcut"``.
        weights, config, overrides: the checkpoint, optional config and ``KEY=VALUE`` overrides
            (``model`` only; ``weights`` is required there).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``... (``model`` only).
        evaluate: score the pseudo-masks against the input's GT masks, where present.
        chunk_size: masks held at 1/4 resolution at a time per image (``model``).
        batch_size: images per network forward (``model``). Above 1, images are padded to a
            common size, which changes the grid geometry slightly (the official test uses 1).
        progress: show a tqdm bar over images.
        summary_json: also write the returned summary there.
        grabcut_context: ``grabcut`` only: ``None`` runs GrabCut on the full image; a number on
            a crop around each box (``context`` of
            :func:`discobox.inference.box_baselines.grabcut_mask`).

    Returns:
        Summary: ``boxes`` (annotations), ``labelled``, ``skipped`` (count per reason of
        ``SKIP_REASONS``), ``clipped``, ``fallback_neighbour``, ``fallback_box``,
        ``unknown_category``, ``images``, ``images_skipped``, ``out``, ``seconds``; with
        ``evaluate`` also ``mean_iou`` (``None`` without GT masks), ``num_evaluated``,
        ``no_gt_mask``, ``bad_gt_mask`` and ``segm/AP`` ... ``segm/APl`` (percent).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "model" and weights is None:
        raise ValueError("--method model needs --weights (a checkpoint of `discobox train`); "
                         "or use --method box / --method grabcut")
    check_grabcut_context(grabcut_context, "grabcut_context")  # before any image is read
    if chunk_size < 1 or batch_size < 1:
        raise ValueError(f"chunk_size and batch_size must be >= 1, got {chunk_size}, {batch_size}")
    start = time.perf_counter()
    boxes_json, out_json = Path(boxes_json), Path(out_json)
    data = _load_json(boxes_json)
    images = _index(data, boxes_json, Path(images_dir))
    anns: list[dict[str, Any]] = data["annotations"]
    out_anns = [dict(a) for a in anns]
    scores: list[float | None] = [None] * len(anns)
    summary: dict[str, Any] = {
        "method": method, "boxes": len(anns), "labelled": 0,
        "skipped": dict.fromkeys(SKIP_REASONS, 0), "clipped": 0, "fallback_neighbour": 0,
        "fallback_box": 0, "unknown_category": 0, "images": 0, "images_skipped": 0,
    }
    if method == "grabcut":
        summary["grabcut_context"] = grabcut_context
    if method == "model":
        labeller: Any = _ModelLabeller(weights=weights, config=config, overrides=overrides,
                                       device=device, chunk_size=chunk_size,
                                       categories=data.get("categories") or [])
    else:
        labeller = _label_box if method == "box" else partial(_label_grabcut,
                                                               context=grabcut_context)
    empty_rles: dict[tuple[int, int], dict[str, Any]] = {}

    def skip(img: _Image, pos: int, reason: str) -> None:
        key = (img.height, img.width)
        if key not in empty_rles:
            empty_rles[key] = encode_mask(np.zeros(key, dtype=bool))
        out_anns[pos]["segmentation"] = dict(empty_rles[key])
        out_anns[pos]["area"] = 0
        summary["skipped"][reason] += 1

    def emit(results: Iterator[_Result], by_pos: dict[int, _Image]) -> None:
        for pos, (x0, y0, x1, y1), crop, score, source in results:
            img = by_pos[pos]
            full = np.zeros((img.height, img.width), dtype=bool)
            full[y0:y1, x0:x1] = crop
            out_anns[pos]["segmentation"] = encode_mask(full)
            out_anns[pos]["area"] = int(crop.sum())
            scores[pos] = score
            summary["labelled"] += 1
            summary["fallback_neighbour"] += source == "neighbour"
            summary["fallback_box"] += source == "box"

    todo = [img for img in images.values() if img.anns]
    summary["images"] = len(todo)
    pending: list[_Work] = []
    step = batch_size if method == "model" else 1
    for n, img in enumerate(tqdm(todo, desc="pseudo-label", disable=not progress), 1):
        work = _prepare(img, anns, skip, summary)
        if work is not None:
            if method == "model":
                work.labels = labeller.labels([anns[p] for p in work.positions])
                summary["unknown_category"] += int((work.labels < 0).sum())
            if work.positions:
                pending.append(work)
        if pending and (len(pending) == step or n == len(todo)):
            emit(labeller(pending), {p: w.entry for w in pending for p in w.positions})
            pending = []
    if summary["fallback_box"] and method == "grabcut":
        logger.warning("GrabCut gave no mask for %d boxes (under 2 px, no background pixels or "
                       "empty result); wrote their filled boxes", summary["fallback_box"])
    out_data = dict(data)
    out_data["annotations"] = out_anns
    atomic_write_text(json.dumps(out_data), out_json)
    summary["out"] = str(out_json)
    if evaluate:
        summary.update(evaluate_box_masks(
            annotations=anns,
            predictions=[o["segmentation"] if s is not None else None
                         for o, s in zip(out_anns, scores)],
            scores=scores,
            image_sizes={i: (img.height, img.width) for i, img in images.items()},
            categories=data.get("categories") or [],
        ))
    summary["seconds"] = round(time.perf_counter() - start, 3)
    if summary_json is not None:
        atomic_write_text(json.dumps(summary, indent=2), summary_json)
    return summary


def _prepare(img: _Image, anns: list[dict[str, Any]], skip, summary: dict) -> _Work | None:
    """Read the image and parse its boxes; skip (and count) what cannot be labelled."""
    try:
        image = read_image(img.path)
    except ImageReadError as exc:
        logger.warning("skipping %d boxes of image id %s: %s", len(img.anns), img.image_id, exc)
        reason = "missing_image" if isinstance(exc, ImageNotFoundError) else "unreadable_image"
    else:
        reason = ""
        if image.shape[:2] != (img.height, img.width):
            logger.warning("skipping %d boxes of %s: image is %dx%d but the json says %dx%d",
                           len(img.anns), img.path, image.shape[1], image.shape[0], img.width,
                           img.height)
            reason = "size_mismatch"
    if reason:
        summary["images_skipped"] += 1
        for pos in img.anns:
            skip(img, pos, reason)
        return None
    positions, boxes = [], []
    for pos in img.anns:
        box, status = _parse_box(anns[pos], img.height, img.width)
        if box is None:
            skip(img, pos, status)
            continue
        summary["clipped"] += status == "clipped"
        positions.append(pos)
        boxes.append(box)
    return _Work(entry=img, image=image, positions=positions,
                 boxes=np.stack(boxes) if boxes else np.zeros((0, 4), np.float32),
                 labels=np.full(len(positions), -1, np.int64))


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable table of :func:`pseudo_label`'s summary."""
    skipped = {k: v for k, v in summary["skipped"].items() if v}
    lines = [
        f"pseudo-label ({summary['method']}): {summary['boxes']} boxes in {summary['images']} "
        f"images -> {summary.get('out', '')}",
        f"  labelled          {summary['labelled']}",
        f"  skipped (empty)   {sum(skipped.values())}"
        + (f"  ({', '.join(f'{k} {v}' for k, v in skipped.items())})" if skipped else ""),
        f"  clipped to image  {summary['clipped']}",
        f"  fallback          neighbour cell {summary['fallback_neighbour']}, "
        f"filled box {summary['fallback_box']}",
    ]
    if summary["method"] == "model":
        lines.append(f"  unknown category  {summary['unknown_category']}")
    if "num_evaluated" in summary:
        miou = summary["mean_iou"]
        lines.append(f"  mean IoU          {'n/a' if miou is None else f'{miou:.4f}'} over "
                     f"{summary['num_evaluated']} boxes with GT masks")
        if "segm/AP" in summary:
            lines.append("  segm " + " ".join(f"{n} {summary[f'segm/{n}']:.2f}"
                                              for n in METRIC_NAMES))
    return "\n".join(lines)


def cmd_pseudo_label(args: argparse.Namespace) -> int:
    from ..engine.log import setup_logger

    setup_logger()
    summary = pseudo_label(
        boxes_json=args.boxes, images_dir=args.images, out_json=args.out, method=args.method,
        weights=args.weights, config=args.config, overrides=list(args.overrides or []),
        device=args.device, evaluate=args.evaluate, chunk_size=args.chunk_size,
        batch_size=args.batch_size, progress=not args.no_progress,
        summary_json=args.summary_out, grabcut_context=args.grabcut_context,
    )
    print(format_summary(summary))
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``pseudo-label`` verb to ``discobox``'s sub-parsers."""
    p = subparsers.add_parser(
        "pseudo-label", help="a mask for every box of a COCO json (model, box or GrabCut)"
    )
    p.add_argument("--boxes", required=True, help="COCO json with boxes (masks optional)")
    p.add_argument("--images", required=True, help="folder of the json's file_name entries")
    p.add_argument("--out", required=True, help="output COCO json with RLE segmentations")
    p.add_argument("--method", choices=METHODS, default="model")
    p.add_argument("--config", default=None, help="recipe or YAML (default: the checkpoint's)")
    p.add_argument("--weights", default=None, help="checkpoint (required for --method model)")
    p.add_argument("--device", default="auto")
    p.add_argument("--evaluate", action="store_true",
                   help="report mean IoU and segm AP against the input's GT masks")
    p.add_argument("--chunk-size", type=int, default=64, help="masks held at a time per image")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward (model)")
    p.add_argument("--grabcut-context", type=float, default=None, metavar="C",
                   help="GrabCut on the box grown by C x its size per side instead of the full "
                        "image (faster on large images with small boxes)")
    p.add_argument("--summary-out", default=None, help="also write the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. test.mask_thr=0.5")
    p.set_defaults(func=cmd_pseudo_label)
    return p
