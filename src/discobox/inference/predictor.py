"""Inference on images: :func:`predict_batch`, :func:`to_rgb` and the public
:class:`Predictor` (instances of an image; masks of given boxes). The library side of
``discobox predict`` is :mod:`discobox.inference.predict_files`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..checkpoint.load import load_model
from ..config import Config
from ..data.coco_classes import COCO_CATEGORY_IDS, COCO_CLASSES
from ..data.images import read_image
from ..data.loader import collate
from ..data.transforms import build_transforms
from ..device import amp_autocast, resolve_device
from ..errors import InvalidInputError
from ..modeling.build import build_postprocessor
from ..modeling.solov2.postprocess import SOLOv2PostProcessor
from ..structures import ImageBatch, Instances
from .box_json import ImageEntry, Work
from .labellers import ModelLabeller
from .tiling import predict_tiled

logger = logging.getLogger("discobox")

ImageLike = str | Path | Image.Image | np.ndarray
IMAGE_FORMATS = ("RGB", "BGR")


def to_rgb(image: Any, image_format: str = "RGB", name: str = "image") -> np.ndarray:
    """``uint8[H, W, 3]`` RGB from a file path, a PIL image or a ``uint8[H, W, 3]`` array.

    ``image_format`` says the array's channel order (``"BGR"`` for OpenCV's ``imread``); it
    does not apply to paths (decoded to RGB) or PIL images (converted with ``convert("RGB")``).

    Raises:
        InvalidInputError: another type, dtype or shape (one line naming it), or an unknown
            ``image_format``; :class:`~discobox.data.images.ImageReadError` for a path that
            cannot be read.
    """
    if image_format not in IMAGE_FORMATS:
        raise InvalidInputError(f"image_format must be one of {IMAGE_FORMATS}, got "
                                f"{image_format!r}")
    if isinstance(image, str | Path):
        return read_image(image)
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InvalidInputError(f"{name}: expected a uint8[H, W, 3] array, got "
                                    f"{image.dtype}{list(image.shape)}")
        return np.ascontiguousarray(image[..., ::-1] if image_format == "BGR" else image)
    raise InvalidInputError(f"{name}: expected a file path, a PIL image or a uint8[H, W, 3] "
                            f"numpy array, got {type(image).__module__}.{type(image).__name__}")


def _as_boxes(boxes: Any, n_labels: Any, i: int) -> tuple[np.ndarray, np.ndarray]:
    """``float64[N, 4]`` boxes and ``int64[N]`` labels (``-1`` when ``None``) of image ``i``."""
    try:
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if len(boxes) else np.zeros((0, 4))
    except (TypeError, ValueError):
        raise InvalidInputError(f"boxes of image {i}: expected float[N, 4] xyxy, got "
                                f"{type(boxes).__name__}") from None
    if np.asarray(boxes).size != b.size or not np.isfinite(b).all():
        raise InvalidInputError(f"boxes of image {i}: expected finite float[N, 4] xyxy")
    if n_labels is None:
        return b, np.full(len(b), -1, np.int64)
    labels = np.asarray(n_labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(b):
        raise InvalidInputError(f"labels of image {i}: {len(labels)} for {len(b)} boxes")
    return b, labels


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
    """Predict instances on images, or a mask for each given box, with a trained model.

    Images may be file paths, PIL images or ``uint8[H, W, 3]`` arrays (RGB, or BGR with
    ``image_format="BGR"``); see :func:`to_rgb`.

    Example::

        predictor = Predictor.from_checkpoint("runs/demo/model_final.pth")
        inst = predictor("street.jpg")   # Instances: masks bool[N, H, W], boxes, scores, labels
        masks, scores = predictor.segment_boxes("street.jpg", [[10, 20, 110, 220]])
    """

    def __init__(self, *, model: torch.nn.Module, cfg: Config, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = model.to(self.device).eval()
        self.post = build_postprocessor(cfg)
        self.transforms = build_transforms(train=False, scales=[cfg.data.test_scale],
                                           flip_prob=0.0)
        self._labeller: ModelLabeller | None = None

    @classmethod
    def from_checkpoint(
        cls, weights: str | Path, *, config: str | Path | None = None,
        device: str | torch.device | None = None, overrides: list[str] | None = None,
    ) -> Predictor:
        """Load ``weights`` (and its stored config, or ``config`` plus ``KEY=VALUE`` ``overrides``)
        onto ``device`` (default ``"auto"``: CUDA when available, else the CPU)."""
        model, cfg = load_model(weights, config=config, overrides=overrides)
        return cls(model=model, cfg=cfg, device="auto" if device is None else device)

    @property
    def class_names(self) -> list[str]:
        """Name of each model class: ``cfg.data.class_names`` (the training json's, stored in
        the checkpoint), else the COCO names for an 80-class model without category ids (the
        official checkpoints), else ``"0"``, ``"1"``..."""
        names = getattr(self.cfg.data, "class_names", None)
        n = self.cfg.model.num_classes
        if names and len(names) == n:
            return [str(v) for v in names]
        if n == len(COCO_CLASSES) and not getattr(self.cfg.data, "category_ids", None):
            return list(COCO_CLASSES)
        return [str(i) for i in range(n)]

    @property
    def category_ids(self) -> list[int]:
        """Dataset category id of each model class: ``cfg.data.category_ids`` (the training
        json's, stored in the checkpoint), else COCO's ids for an 80-class model named as COCO
        (:attr:`class_names`), else ``0..num_classes-1``."""
        ids = getattr(self.cfg.data, "category_ids", None)
        n = self.cfg.model.num_classes
        if ids and len(ids) == n:
            return [int(i) for i in ids]
        if n == len(COCO_CATEGORY_IDS) and tuple(self.class_names) == COCO_CLASSES:
            return list(COCO_CATEGORY_IDS)
        return list(range(n))

    def _sample(self, image: np.ndarray, name: str = "") -> dict:
        h, w = image.shape[:2]
        return self.transforms({"image": image, "instances": Instances.empty(), "image_id": -1,
                                "file_name": name, "orig_size": (h, w)})

    def predict_many(
        self, images: Sequence[ImageLike], names: Sequence[str] = (), *,
        image_format: str = "RGB",
    ) -> list[Instances]:
        """One :class:`Instances` per image (one forward), on the CPU, at the image's size:
        ``masks`` ``bool[N, H, W]``, ``boxes`` xyxy, ``scores``, ``labels`` (model classes).
        ``names`` only label error messages; images as :func:`to_rgb`."""
        names = list(names) or [f"image {i}" for i in range(len(images))]
        rgb = [to_rgb(im, image_format, n) for im, n in zip(images, names)]
        batch = collate([self._sample(im, n) for im, n in zip(rgb, names)])
        batch.targets = None
        return [i.to("cpu") for i in predict_batch(
            self.model, self.post, batch.to(self.device), amp=self.cfg.solver.amp,
            tile=self.cfg.test.tile, tile_overlap=self.cfg.test.tile_overlap)]

    def __call__(self, image: ImageLike, *, image_format: str = "RGB") -> Instances:
        """:meth:`predict_many` of one image."""
        return self.predict_many([image], image_format=image_format)[0]

    def segment_boxes(
        self, image: ImageLike, boxes: Any, labels: Any = None, *, image_format: str = "RGB",
        chunk_size: int = 64,
    ) -> tuple[np.ndarray, np.ndarray]:
        """A mask for each given box: the masks of ``discobox pseudo-label --method model``.

        Box-conditioned inference (docs/method.md §8.1, :mod:`.box_conditioned`): each box's
        grid cell gives its mask, confined to the box (the pixels whose centres lie in it).

        Args:
            image: a path, a PIL image or a ``uint8[H, W, 3]`` array (:func:`to_rgb`).
            boxes: ``float[N, 4]`` xyxy in pixels; clipped to the image; a box that covers no
                pixel of the image gets an empty mask and score 0.
            labels: ``int[N]`` model classes (indices of :attr:`class_names`), or ``None``
                (unknown: kernels are class-agnostic, so the masks rarely change; only the
                order of the fallback cells does).
            chunk_size: masks held at 1/4 resolution at a time.

        Returns:
            ``(masks bool[N, H, W], scores float32[N])``; ``scores`` is each mask's confidence,
            ``maskness x IoU(mask, its CRF refinement)``
            (:func:`~discobox.inference.box_conditioned.mask_confidence`), 0 for a filled box.
        """
        labels_list = None if labels is None else [labels]
        return self.segment_boxes_batch([image], [boxes], labels_list, image_format=image_format,
                                        chunk_size=chunk_size)[0]

    def segment_boxes_batch(
        self, images: Sequence[ImageLike], boxes_list: Sequence[Any],
        labels_list: Sequence[Any] | None = None, *, image_format: str = "RGB",
        batch_size: int = 1, chunk_size: int = 64,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`segment_boxes` of many images, ``batch_size`` images per forward (above 1,
        images are padded to a common size, which changes the grid geometry slightly, as
        ``pseudo-label --batch-size``)."""
        if len(boxes_list) != len(images) or (labels_list is not None
                                              and len(labels_list) != len(images)):
            raise InvalidInputError(f"{len(images)} images need as many boxes (and labels) "
                                    f"lists, got {len(boxes_list)}")
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        works, outs, where = [], [], {}
        for i, (image, boxes) in enumerate(zip(images, boxes_list)):
            rgb = to_rgb(image, image_format, f"image {i}")
            b, lab = _as_boxes(boxes, None if labels_list is None else labels_list[i], i)
            H, W = rgb.shape[:2]
            clipped = np.stack([np.maximum(b[:, 0], 0.0), np.maximum(b[:, 1], 0.0),
                                np.minimum(b[:, 2], W), np.minimum(b[:, 3], H)],
                               axis=1).astype(np.float32)
            valid = np.nonzero((clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1]))[0]
            positions = []
            for k in valid.tolist():
                where[len(where)] = (i, k)
                positions.append(len(where) - 1)
            outs.append((np.zeros((len(b), H, W), bool), np.zeros(len(b), np.float32)))
            entry = ImageEntry(image_id=i, path=Path(str(image) if isinstance(image, str | Path)
                                                     else f"<image {i}>"),
                               height=H, width=W, anns=[])
            works.append(Work(entry=entry, image=rgb, positions=positions,
                              boxes=clipped[valid].reshape(-1, 4), labels=lab[valid]))
        labeller = self._box_labeller(chunk_size)
        todo = [w for w in works if w.positions]
        for start in range(0, len(todo), batch_size):
            for pos, (x0, y0, x1, y1), crop, score, _ in labeller(todo[start:start + batch_size]):
                i, k = where[pos]
                outs[i][0][k, y0:y1, x0:x1] = crop
                outs[i][1][k] = score
        return outs

    def _box_labeller(self, chunk_size: int) -> ModelLabeller:
        """The box-conditioned labeller of ``pseudo-label --method model`` on this model."""
        if chunk_size < 1:
            raise InvalidInputError(f"chunk_size must be >= 1, got {chunk_size}")
        if self._labeller is None or self._labeller.infer.chunk_size != chunk_size:
            self._labeller = ModelLabeller(model=self.model, cfg=self.cfg, device=self.device,
                                           chunk_size=chunk_size, categories=[])
        return self._labeller
