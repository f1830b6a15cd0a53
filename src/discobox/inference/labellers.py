"""The three pseudo-labelling methods: each maps a list of :class:`Work` (images and their boxes)
to :data:`Result` tuples, one per box (see :mod:`discobox.inference.pseudo_label`)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint.load import load_model
from ..config import Config
from ..data.loader import collate
from ..data.transforms import build_transforms
from ..device import amp_autocast, resolve_device
from ..modeling.build import refine_params
from ..modeling.crf.params import CRF_MODES, CRFParams
from ..structures import ImageBatch, Instances
from .box_baselines import grabcut_mask
from .box_conditioned import SOURCE_BOX, SOURCE_NEIGHBOUR, BoxConditionedInference
from .box_geometry import box_region
from .box_json import Result, Work
from .tiling import tile_windows, window_crops

logger = logging.getLogger("discobox")


def confidence_crf(cfg: Config) -> CRFParams:
    """The CRF of the pseudo-mask confidence: the training teacher's (``cfg.crf``), the
    official faithful CRF where the model was trained without a teacher."""
    mode = cfg.crf.mode if cfg.crf.mode in CRF_MODES else "faithful"
    return dataclasses.replace(cfg.crf, mode=mode)


def label_map(categories: list[dict[str, Any]], class_names: Sequence[str] | None,
              num_classes: int) -> dict[Any, int]:
    """json category id -> model class: by name via ``class_names`` when set, else as in
    training (the json's category ids sorted ascending are classes ``0..num_classes-1``)."""
    cats = [c for c in categories if isinstance(c, dict) and "id" in c]
    if class_names:
        index = {str(n): i for i, n in enumerate(class_names)}
        return {c["id"]: index[str(c.get("name"))] for c in cats if str(c.get("name")) in index}
    ids = sorted(c["id"] for c in cats)
    if len(ids) != num_classes:
        logger.warning("the json has %d categories but the model %d classes; mapping the "
                       "json's category ids in ascending order to classes 0..%d",
                       len(ids), num_classes, num_classes - 1)
    return {cid: i for i, cid in enumerate(ids[:num_classes])}


class ModelLabeller:
    """Batched network forward + :class:`BoxConditionedInference` (docs/method.md §8.1).

    Each :data:`Result`'s score is the mask's confidence (:func:`mask_confidence`: maskness
    times the agreement with the training teacher's CRF, ``cfg.crf``), for sorting masks to
    review; the emitted masks do not depend on it.
    """

    windows_per_forward = 16  # test.tile windows per network forward (memory stays bounded)

    def __init__(self, *, model: torch.nn.Module, cfg: Config, device: str | torch.device,
                 chunk_size: int, categories: list[dict[str, Any]]) -> None:
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = model.to(self.device).eval()
        self.amp = cfg.solver.amp
        self.transforms = build_transforms(train=False, scales=[cfg.data.test_scale])
        self.infer = BoxConditionedInference(
            mask_thr=cfg.test.mask_thr, scale_ranges=cfg.model.scale_ranges,
            chunk_size=chunk_size, refine=None if cfg.test.refine == "none" else cfg.test.refine,
            refine_params=refine_params(cfg), confidence_crf=confidence_crf(cfg))
        self.cat_to_label = label_map(categories, cfg.data.class_names,
                                      cfg.model.num_classes) if categories else {}
        self.tile = cfg.test.tile
        self.tile_overlap = cfg.test.tile_overlap

    @classmethod
    def from_weights(cls, *, weights: str | Path, config: str | Path | None,
                     overrides: list[str] | None, device: str, chunk_size: int,
                     categories: list[dict[str, Any]]) -> ModelLabeller:
        """Load ``weights`` (with its stored config, or ``config`` and ``overrides``)."""
        model, cfg = load_model(weights, config=config, overrides=overrides)
        return cls(model=model, cfg=cfg, device=device, chunk_size=chunk_size,
                   categories=categories)

    def labels(self, anns: list[dict[str, Any]]) -> np.ndarray:
        """``int64[n]`` model class per annotation, ``-1`` for an unknown category."""
        return np.array([self.cat_to_label.get(a.get("category_id"), -1) for a in anns], np.int64)

    @torch.no_grad()
    def __call__(self, works: list[Work]) -> Iterator[Result]:
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

    def _tiled(self, batch: ImageBatch, b: int, w: Work) -> Iterator[Result]:
        """Box-conditioned inference on ``test.tile`` windows (models trained on
        ``data.train_crop``): each box is labelled in the window that holds it best
        (:meth:`BoxConditionedInference.tile_for_boxes`); only those windows run, a few at a
        time."""
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
    def _results(w: Work, sel: np.ndarray, chunks) -> Iterator[Result]:
        names = {SOURCE_NEIGHBOUR: "neighbour", SOURCE_BOX: "box"}
        for ch in chunks:
            for k, i in enumerate(ch.index.tolist()):
                region = tuple(int(v) for v in ch.regions[k].tolist())
                yield (w.positions[int(sel[i])], region, ch.crops[k].numpy(),
                       float(ch.confidence[k]), names.get(int(ch.source[k]), "model"))


def label_box(works: list[Work]) -> Iterator[Result]:
    """The filled box (its pixel region, :func:`box_region`), score 1.0."""
    for w in works:
        regions = box_region(torch.from_numpy(w.boxes).double(), w.entry.height, w.entry.width)
        for pos, (x0, y0, x1, y1) in zip(w.positions, regions.tolist()):
            yield pos, (x0, y0, x1, y1), np.ones((y1 - y0, x1 - x0), bool), 1.0, "box_method"


def label_grabcut(works: list[Work], context: float | None = None) -> Iterator[Result]:
    """GrabCut from each box, 5 iterations (:func:`grabcut_mask`), score 1.0; source ``"box"``
    where GrabCut gave nothing and the filled box was used."""
    for w in works:
        regions = box_region(torch.from_numpy(w.boxes).double(), w.entry.height, w.entry.width)
        for pos, box, (x0, y0, x1, y1) in zip(w.positions, w.boxes, regions.tolist()):
            mask, ok = grabcut_mask(w.image, box.tolist(), iters=5, context=context)
            yield pos, (x0, y0, x1, y1), mask[y0:y1, x0:x1], 1.0, "grabcut" if ok else "box"
