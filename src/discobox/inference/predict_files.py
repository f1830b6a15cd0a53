"""``discobox predict``'s library side: :func:`predict_files` runs a :class:`Predictor` over
files, folders, globs and videos and writes overlays, annotated videos and a COCO-results json.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from ..checkpoint.io import atomic_write_text, check_writable_dir
from ..data.coco_results import instances_to_coco
from ..data.images import ImageReadError, read_image
from ..errors import InvalidInputError
from .predictor import Predictor
from .sources import (
    VideoWriter,
    expand_inputs,
    image_ids_from,
    is_video,
    overlay_names,
    read_video_frames,
    video_info,
)
from .visualize import draw_instances

logger = logging.getLogger("discobox")


@dataclass
class _Item:
    """One image or video frame waiting for its forward pass."""

    image: np.ndarray
    image_id: int
    file_name: str
    overlay: Path | None  # PNG to write, or None for a video frame
    frame: int | None = None


@dataclass
class _Run:
    """State of one :func:`predict_files` call: the predictor, the results, the counters."""

    predictor: Predictor
    output: Path
    score_thr: float
    batch_size: int
    bar: Any
    results: list[dict[str, Any]] = field(default_factory=list)
    pending: list[_Item] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=lambda: {
        "images": 0, "videos": 0, "frames": 0, "skipped": 0, "skipped_files": [],
        "detections": 0})

    def add(self, item: _Item, video: VideoWriter | None = None) -> None:
        self.pending.append(item)
        if len(self.pending) >= self.batch_size:
            self.flush(video)

    def flush(self, video: VideoWriter | None = None) -> None:
        """Predict the pending items; write their overlays (or video frames) and results."""
        if not self.pending:
            return
        p = self.predictor
        insts = p.predict_many([it.image for it in self.pending],
                               [it.file_name for it in self.pending])
        for it, inst in zip(self.pending, insts):
            entries = instances_to_coco(inst, it.image_id, p.category_ids)
            for e, label in zip(entries, inst.labels.tolist()):
                e["file_name"] = it.file_name
                e["category_name"] = p.class_names[label]
                if it.frame is not None:
                    e["frame"] = it.frame
            self.results.extend(entries)
            keep = inst[inst.scores >= self.score_thr] if len(inst) else inst
            overlay = draw_instances(it.image, keep, p.class_names)
            if it.overlay is not None:
                _write_png(it.overlay, overlay)
            elif video is not None:
                video.write(overlay)
        self.bar.update(len(self.pending))
        self.pending = []

    def skip(self, path: Path, why: str) -> None:
        logger.warning("skipping %s: %s", path, why)
        self.summary["skipped"] += 1
        self.summary["skipped_files"].append(str(path))


def predict_files(
    *, weights: str | Path, images: Sequence[str | Path], output: str | Path,
    config: str | Path | None = None, score_thr: float = 0.3, overrides: list[str] | None = None,
    device: str | None = None, batch_size: int = 1, image_ids: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Predict on files, folders, glob patterns and videos; write overlays and results.

    Inputs are expanded by :func:`~discobox.inference.sources.expand_inputs`. Into ``output``:
    one overlay PNG per image (``<stem>.png``; :func:`~discobox.inference.sources.overlay_names`
    keeps them apart: ``x.png`` and ``x.jpg`` give ``x_png.png`` and ``x_jpg.png``), one
    annotated video per video (``<stem>.mp4``, or ``.avi`` where OpenCV cannot write mp4),
    and ``predictions.json``, a COCO results list with ``file_name``, ``category_name`` and,
    for video frames, ``frame`` added. A file that is neither a
    readable image nor a video is skipped with a warning and counted (``skipped``).

    Ids: ``image_id`` is the id of the file's entry in the ``image_ids`` json
    (:func:`~discobox.inference.sources.image_ids_from`), else the position among the images
    and frames read (0-based); ``category_id`` is the dataset's
    (:attr:`Predictor.category_ids`).

    Returns:
        Summary: ``images``, ``videos``, ``frames``, ``skipped``, ``skipped_files``,
        ``detections``, ``out`` (the json's path).

    Raises:
        MissingFileError: an input that does not exist or a pattern that matches nothing.
        InvalidInputError: ``batch_size < 1``; an image that ``image_ids`` does not list.
        OutputError: ``output`` is not a writable folder (checked before any work).
    """
    if batch_size < 1:
        raise InvalidInputError(f"--batch-size must be >= 1, got {batch_size}")
    files = expand_inputs(images)  # all checks before the model loads
    ids = image_ids_from(image_ids, files) if image_ids is not None else None
    output = check_writable_dir(output)
    predictor = Predictor.from_checkpoint(weights, config=config, overrides=overrides,
                                          device=device)
    total = sum(video_info(f)[1] if is_video(f) else 1 for f in files)
    with tqdm(total=total, desc="predict", unit="image", disable=not progress) as bar:
        run = _Run(predictor=predictor, output=output, score_thr=score_thr,
                   batch_size=batch_size, bar=bar)
        next_id = 0
        for path, name in zip(files, overlay_names(files)):
            if is_video(path):
                next_id = _predict_video(run, path, output / Path(name).stem, next_id)
                continue
            try:
                image = read_image(path)
            except ImageReadError as exc:
                run.skip(path, str(exc))
                bar.update(1)
                continue
            if ids is not None and path not in ids:
                run.skip(path, f"not listed in {image_ids}")
                bar.update(1)
                continue
            image_id = ids[path] if ids is not None else next_id
            next_id += 1
            run.summary["images"] += 1
            run.add(_Item(image, image_id, str(path), output / name))
        run.flush()
    out_json = output / "predictions.json"
    atomic_write_text(json.dumps(run.results), out_json)
    return {**run.summary, "detections": len(run.results), "out": str(out_json)}


def _predict_video(run: _Run, path: Path, stem: Path, next_id: int) -> int:
    """Every frame of ``path`` through the model; the annotated video at ``stem`` + ext.
    Returns the next free image id."""
    run.flush()
    fps, _ = video_info(path)
    writer = VideoWriter(stem, fps)
    try:
        frames = read_video_frames(path)
        n = 0
        for n, frame in enumerate(frames, 1):
            run.add(_Item(frame, next_id, str(path), None, frame=n - 1), writer)
            next_id += 1
        run.flush(writer)
    except InvalidInputError as exc:
        run.skip(path, str(exc))
        return next_id
    finally:
        writer.close()
    if n == 0:
        run.skip(path, "no frame could be read")
        return next_id
    run.summary["videos"] += 1
    run.summary["frames"] += n
    return next_id


def format_predict_summary(summary: dict[str, Any]) -> str:
    """One line: what was read, skipped and written."""
    text = (f"predict: {summary['images']} images, {summary['frames']} frames of "
            f"{summary['videos']} videos, {summary['detections']} detections -> "
            f"{summary['out']}")
    if summary["skipped"]:
        text += f"; skipped {summary['skipped']} files that are not images or videos"
    return text


def _write_png(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")
