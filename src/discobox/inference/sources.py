"""The inputs of ``discobox predict``: files, folders, globs and videos, expanded to files; video
frames in and an annotated video out (OpenCV); output file names that never collide; file
names mapped to a COCO json's image ids."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from ..data.coco import load_coco_json
from ..errors import InvalidInputError, MissingFileError

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_GLOB_CHARS = "*?["


def is_video(path: Path) -> bool:
    """A video file, by its extension (:data:`VIDEO_EXTS`, any case)."""
    return path.suffix.lower() in VIDEO_EXTS


def _folder_files(folder: Path) -> list[Path]:
    """The visible regular files of ``folder`` (not recursive), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def expand_inputs(items: Sequence[str | Path]) -> list[Path]:
    """Files of the ``predict`` inputs, in order, each once.

    A folder gives its visible files sorted by name (not recursive; files that are not images
    are skipped later, with a warning); an item with ``*``, ``?`` or ``[`` that is not an
    existing path is a glob pattern (``**`` recursive), expanded here and sorted, so a quoted
    pattern works in every shell.

    Raises:
        MissingFileError: an item that does not exist, or a pattern that matches nothing.
    """
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files.extend(_folder_files(path))
        elif path.exists():
            files.append(path)
        elif any(c in str(item) for c in _GLOB_CHARS):
            matches = sorted(glob.glob(str(item), recursive=True))
            if not matches:
                raise MissingFileError(f"no file matches the pattern {item!r}")
            for m in map(Path, matches):
                files.extend(_folder_files(m) if m.is_dir() else [m])
        else:
            raise MissingFileError(f"image file not found: {path}")
    seen: set[str] = set()
    unique = []
    for f in files:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def overlay_names(paths: Sequence[Path], suffix: str = ".png") -> list[str]:
    """Distinct output names, one per input: ``<stem><suffix>`` where no other input has that
    stem, else ``<stem>_<ext><suffix>`` (``x.png``, ``x.jpg`` -> ``x_png.png``,
    ``x_jpg.png``), and ``_1``, ``_2``... after the second and later of the same name."""
    stems: dict[str, int] = {}
    for p in paths:
        stems[p.stem] = stems.get(p.stem, 0) + 1
    used: set[str] = set()
    names = []
    for p in paths:
        ext = p.suffix.lstrip(".").lower()
        base = p.stem if stems[p.stem] == 1 else f"{p.stem}_{ext}" if ext else p.stem
        name, k = f"{base}{suffix}", 0
        while name in used:
            k += 1
            name = f"{base}_{k}{suffix}"
        used.add(name)
        names.append(name)
    return names


def video_info(path: Path) -> tuple[float, int]:
    """``(fps, frame count)`` of a video as OpenCV reports them (``(0.0, 0)`` if unreadable)."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return 0.0, 0
        return float(cap.get(cv2.CAP_PROP_FPS) or 0.0), int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()


def read_video_frames(path: Path) -> Iterator[np.ndarray]:
    """The frames of a video as ``uint8[H, W, 3]`` RGB, in order.

    Raises:
        InvalidInputError: OpenCV cannot open the file (names it).
    """
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise InvalidInputError(f"cannot open video file (unsupported or corrupt): {path}")
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


class VideoWriter:
    """An annotated video: ``mp4v`` in ``.mp4`` where OpenCV can write it, else ``MJPG`` in
    ``.avi``; opened on the first frame (the frame size is known then)."""

    def __init__(self, stem_path: Path, fps: float) -> None:
        self.stem_path = stem_path
        self.fps = fps if fps > 0 else 25.0
        self.path: Path | None = None
        self._writer: cv2.VideoWriter | None = None

    def write(self, rgb: np.ndarray) -> None:
        if self._writer is None:
            h, w = rgb.shape[:2]
            for ext, codec in ((".mp4", "mp4v"), (".avi", "MJPG")):
                path = self.stem_path.parent / (self.stem_path.name + ext)
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), self.fps,
                                         (w, h))
                if writer.isOpened():
                    self._writer, self.path = writer, path
                    break
                writer.release()
            else:
                raise OSError(f"cannot write a video at {self.stem_path} (no mp4v or MJPG codec)")
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()


def image_ids_from(json_path: str | Path, files: Sequence[Path]) -> dict[Path, int]:
    """Each of ``files`` -> the id of its entry in ``json_path``'s ``images``.

    An image matches the entry whose ``file_name`` ends its path (``a/b.png`` matches
    ``data/a/b.png``), else the one entry with its base name. Files without an image extension
    (:data:`IMAGE_EXTS`) that match nothing are left out (they are most likely not images).

    Raises:
        InvalidInputError: an image file with no entry, a file with several; a video.
    """
    json_path = Path(json_path)
    data = load_coco_json(json_path)
    images = data.get("images")
    if not isinstance(images, list):
        raise InvalidInputError(f"{json_path}: missing top-level list 'images'")
    entries = [(str(im["file_name"]).replace("\\", "/"), im["id"]) for im in images
               if isinstance(im, dict) and "file_name" in im and "id" in im]
    out: dict[Path, int] = {}
    for f in files:
        if is_video(f):
            raise InvalidInputError(f"--image-ids-from {json_path}: {f} is a video; its frames "
                                    "have no image ids there")
        posix = "/" + f.as_posix().lstrip("/")
        suffix = [(fn, i) for fn, i in entries if posix.endswith("/" + fn.lstrip("/"))]
        same = suffix or [(fn, i) for fn, i in entries if Path(fn).name == f.name]
        if not same and f.suffix.lower() not in IMAGE_EXTS:
            continue
        if len(same) != 1:
            raise InvalidInputError(
                f"--image-ids-from {json_path}: {f} matches {len(same)} of its images' "
                f"file_name entries (need exactly 1)")
        out[f] = same[0][1]
    return out
