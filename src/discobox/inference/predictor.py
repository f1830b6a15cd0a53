"""Inference on images: :func:`predict_batch`, the public :class:`Predictor` and
:func:`predict_files` (the library side of ``discobox predict``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ..checkpoint.io import atomic_write_text
from ..checkpoint.load import load_model
from ..config import Config
from ..data.coco_results import instances_to_coco
from ..data.images import ImageNotFoundError, read_image
from ..data.loader import collate
from ..data.transforms import build_transforms
from ..device import amp_autocast
from ..modeling.build import build_postprocessor
from ..modeling.solov2.postprocess import SOLOv2PostProcessor
from ..structures import ImageBatch, Instances
from .tiling import predict_tiled
from .visualize import draw_instances

logger = logging.getLogger("discobox")


@torch.no_grad()
def predict_batch(
    model: torch.nn.Module, post: SOLOv2PostProcessor, batch: ImageBatch, *, amp: str = "none",
    tile: Sequence[int] | None = None, tile_overlap: float = 0.25,
) -> list[Instances]:
    """Model + post-processing for a batch; masks come back at each image's original size.

    Returns one :class:`Instances` per image: ``masks`` ``bool[N, H0, W0]``, ``boxes``
    ``float[N, 4]`` xyxy, ``scores`` ``[N]``, ``labels`` ``int64[N]`` (model classes).

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
        """Load ``weights`` (and its stored config, or ``config`` plus ``KEY=VALUE`` ``overrides``)
        onto ``device`` (default: CUDA when available, else the CPU)."""
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
        """One :class:`Instances` per ``uint8[H, W, 3]`` RGB image, on the CPU, at the image's
        size; ``names`` only label error messages. ``ValueError`` for another dtype or shape."""
        names = list(names) or [""] * len(images)
        batch = collate([self._sample(im, n) for im, n in zip(images, names)])
        batch.targets = None
        return [i.to("cpu") for i in predict_batch(
            self.model, self.post, batch.to(self.device), amp=self.cfg.solver.amp,
            tile=self.cfg.test.tile, tile_overlap=self.cfg.test.tile_overlap)]

    def __call__(self, image: np.ndarray) -> Instances:
        """:meth:`predict_many` of one image."""
        return self.predict_many([image])[0]


def predict_files(
    *, weights: str | Path, images: Sequence[str | Path], output: str | Path,
    config: str | Path | None = None, score_thr: float = 0.3, overrides: list[str] | None = None,
) -> Path:
    """Write ``<stem>.png`` overlays and ``predictions.json`` (COCO results) into ``output``."""
    files = [Path(p) for p in images]
    for path in files:  # fail before the model loads and the progress bar starts
        if not path.is_file():
            raise ImageNotFoundError(f"image file not found: {path}")
    predictor = Predictor.from_checkpoint(weights, config=config, overrides=overrides)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    results = []
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
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")
