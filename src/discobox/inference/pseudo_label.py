"""Pseudo-labelling: a COCO json of boxes -> the same json with a mask for every box.

Methods (``method=``):

- ``"model"``: box-conditioned SOLOv2 inference, docs/method.md §8.1 (see
  :mod:`discobox.inference.box_conditioned`); score = the mask's confidence for review,
  ``maskness x IoU(mask, its CRF refinement)`` (``mask_confidence`` in that module; the CRF is
  the training teacher's, ``cfg.crf``), 0 for a filled box. With
  ``test.tile`` in the model's config (models trained on ``data.train_crop``) each box is
  labelled in the sliding window that holds it best, so the network sees inputs of the size it
  was trained on (BENCHMARKS.md, "Droplets on crops: short side 512, 256x320 crops,
  sliding-window test").
- ``"box"``: the filled box (:func:`discobox.inference.labellers.label_box`); score 1.0.
- ``"grabcut"``: OpenCV GrabCut initialised from the box, 5 iterations, on the full image or,
  with ``grabcut_context=c``, on the box grown by ``c`` times its size on each side
  (:func:`discobox.inference.box_baselines.grabcut_mask`); score 1.0.

Every method confines a mask to its box: the pixels whose centres lie in the box, clipped to the
image (``box_region`` in :mod:`discobox.inference.box_geometry`). (The official training-time
``GenerateBoxMask`` rounds and includes the right/bottom edge, one pixel more, docs/method.md
§3.1 step 3.)

The output is a copy of the input json in which every annotation gets a compressed-RLE
``segmentation`` (``counts`` a str) at its image's size, the matching ``area`` and ``score``
(the method's score above, 5 decimals; 0 for a skipped box), so a reviewer can sort by it;
nothing else changes (ids, image ids, category ids, bbox, other keys). Bad input never stops
the run:

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
an integer ``id``, a ``file_name`` or positive integer ``width``/``height``, an annotation naming
an unknown image, a duplicate annotation id, no annotations at all) raise
:class:`~discobox.errors.InvalidInputError` (a ``ValueError``) naming the file; a missing images
folder raises :class:`~discobox.errors.MissingFileError`. An output path
that is a folder or lies in a folder that cannot be written raises
:class:`~discobox.checkpoint.io.OutputError` before any image is read. The output is written
atomically (temp file + rename), so an interrupted run leaves either the previous file or none,
never a truncated one.

Modules: :mod:`~discobox.inference.box_json` reads the json and the images,
:mod:`~discobox.inference.labellers` holds the three methods, this module writes the output.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..checkpoint.io import OutputError, atomic_write_text, check_writable_dir
from ..data.coco import load_coco_json
from ..data.coco_results import METRIC_NAMES, encode_mask
from ..errors import InvalidInputError, MissingFileError
from .box_baselines import check_grabcut_context
from .box_json import SKIP_REASONS, ImageEntry, Result, Work, index_images, prepare
from .box_mask_eval import evaluate_box_masks
from .labellers import ModelLabeller, label_box, label_grabcut

logger = logging.getLogger("discobox")

METHODS = ("model", "box", "grabcut")
__all__ = ["METHODS", "SKIP_REASONS", "format_summary", "pseudo_label"]


class _Output:
    """The output annotations, per-box scores and the summary counters, filled box by box."""

    def __init__(self, anns: list[dict[str, Any]], method: str) -> None:
        self.anns = [dict(a) for a in anns]
        self.scores: list[float | None] = [None] * len(anns)
        self.summary: dict[str, Any] = {
            "method": method, "boxes": len(anns), "labelled": 0,
            "skipped": dict.fromkeys(SKIP_REASONS, 0), "clipped": 0, "fallback_neighbour": 0,
            "fallback_box": 0, "unknown_category": 0, "images": 0, "images_skipped": 0,
        }
        self._empty_rles: dict[tuple[int, int], dict[str, Any]] = {}

    def skip(self, img: ImageEntry, pos: int, reason: str) -> None:
        """An empty mask (area 0) for annotation ``pos``, counted under ``reason``."""
        key = (img.height, img.width)
        if key not in self._empty_rles:
            self._empty_rles[key] = encode_mask(np.zeros(key, dtype=bool))
        self.anns[pos]["segmentation"] = dict(self._empty_rles[key])
        self.anns[pos]["area"] = 0
        self.anns[pos]["score"] = 0.0
        self.summary["skipped"][reason] += 1

    def emit(self, results: Iterator[Result], by_pos: dict[int, ImageEntry]) -> None:
        """Paste each result's crop into a full-image mask and store its RLE and score."""
        for pos, (x0, y0, x1, y1), crop, score, source in results:
            img = by_pos[pos]
            full = np.zeros((img.height, img.width), dtype=bool)
            full[y0:y1, x0:x1] = crop
            self.anns[pos]["segmentation"] = encode_mask(full)
            self.anns[pos]["area"] = int(crop.sum())
            self.anns[pos]["score"] = round(float(score), 5)
            self.scores[pos] = score
            self.summary["labelled"] += 1
            self.summary["fallback_neighbour"] += source == "neighbour"
            self.summary["fallback_box"] += source == "box"


def _check_args(method: str, weights: Any, grabcut_context: float | None, chunk_size: int,
                batch_size: int) -> None:
    if method not in METHODS:
        raise InvalidInputError(f"method must be one of {METHODS}, got {method!r}")
    if method == "model" and weights is None:
        raise InvalidInputError("--method model needs --weights (a checkpoint of `discobox "
                                "train`); or use --method box / --method grabcut")
    check_grabcut_context(grabcut_context, "grabcut_context")  # before any image is read
    if chunk_size < 1 or batch_size < 1:
        raise InvalidInputError(
            f"chunk_size and batch_size must be >= 1, got {chunk_size}, {batch_size}")


def _check_output_file(path: Path) -> None:
    """:class:`OutputError` naming ``path`` if it is a folder or its folder is not writable."""
    if path.is_dir():
        raise OutputError(f"output file is a directory: {path}")
    check_writable_dir(path.parent)


def _label_all(images: dict[int, ImageEntry], anns: list[dict[str, Any]], out: _Output,
               labeller: Callable[[list[Work]], Iterator[Result]], *, step: int,
               progress: bool) -> None:
    """Read every image with boxes and label its boxes, ``step`` images per labeller call."""
    model = labeller if isinstance(labeller, ModelLabeller) else None
    todo = [img for img in images.values() if img.anns]
    out.summary["images"] = len(todo)
    pending: list[Work] = []
    for n, img in enumerate(tqdm(todo, desc="pseudo-label", disable=not progress), 1):
        work = prepare(img, anns, out.skip, out.summary)
        if work is not None:
            if model is not None:
                work.labels = model.labels([anns[p] for p in work.positions])
                out.summary["unknown_category"] += int((work.labels < 0).sum())
            if work.positions:
                pending.append(work)
        if pending and (len(pending) == step or n == len(todo)):
            out.emit(labeller(pending), {p: w.entry for w in pending for p in w.positions})
            pending = []


def _evaluate(anns: list[dict[str, Any]], out: _Output, images: dict[int, ImageEntry],
              categories: list[dict[str, Any]]) -> dict[str, Any]:
    """:func:`evaluate_box_masks` of the labelled boxes against the input's GT masks."""
    return evaluate_box_masks(
        annotations=anns,
        predictions=[o["segmentation"] if s is not None else None
                     for o, s in zip(out.anns, out.scores)],
        scores=out.scores,
        image_sizes={i: (img.height, img.width) for i, img in images.items()},
        categories=categories,
    )


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
    _check_args(method, weights, grabcut_context, chunk_size, batch_size)
    start = time.perf_counter()
    boxes_json, out_json = Path(boxes_json), Path(out_json)
    for path in (out_json, summary_json):  # before any work
        if path is not None:
            _check_output_file(Path(path))
    data = load_coco_json(boxes_json)
    images = index_images(data, boxes_json, Path(images_dir))
    anns: list[dict[str, Any]] = data["annotations"]
    if not anns:
        raise InvalidInputError(f"{boxes_json}: no annotations to label")
    if not Path(images_dir).is_dir():  # else every box would be skipped as a missing image
        raise MissingFileError(f"images folder not found: {images_dir}")
    out = _Output(anns, method)
    summary = out.summary
    if method == "grabcut":
        summary["grabcut_context"] = grabcut_context
    if method == "model":
        labeller: Any = ModelLabeller.from_weights(
            weights=weights, config=config, overrides=overrides, device=device,
            chunk_size=chunk_size, categories=data.get("categories") or [])
    else:
        labeller = label_box if method == "box" else partial(label_grabcut,
                                                             context=grabcut_context)
    _label_all(images, anns, out, labeller, step=batch_size if method == "model" else 1,
               progress=progress)
    if summary["fallback_box"] and method == "grabcut":
        logger.warning("GrabCut gave no mask for %d boxes (under 2 px, no background pixels or "
                       "empty result); wrote their filled boxes", summary["fallback_box"])
    atomic_write_text(json.dumps({**data, "annotations": out.anns}), out_json)
    summary["out"] = str(out_json)
    if evaluate:
        summary.update(_evaluate(anns, out, images, data.get("categories") or []))
    summary["seconds"] = round(time.perf_counter() - start, 3)
    if summary_json is not None:
        atomic_write_text(json.dumps(summary, indent=2), summary_json)
    return summary


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
