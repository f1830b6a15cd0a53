"""Reading and checking a COCO json's entries: each check raises
:class:`~discobox.errors.InvalidInputError` (or :class:`~discobox.errors.MissingFileError`) with
one line naming the file and the entry or key; ids keep their quotes (``!r``)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError, MissingFileError


def load_coco_json(path: Path) -> dict[str, Any]:
    """Read a COCO json file: a dict, or :class:`InvalidInputError` / :class:`MissingFileError`
    naming the file (missing, unreadable, not UTF-8, empty, invalid json, not an object)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingFileError(f"annotation file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path}: not UTF-8 text, so not a json file ({exc})") from None
    except OSError as exc:
        raise InvalidInputError(f"cannot read annotation file {path}: {exc.strerror}") from None
    if not text.strip():
        raise InvalidInputError(f"{path}: annotation file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{path}: invalid json ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise InvalidInputError(
            f"{path}: expected a COCO json object with 'images' and 'categories'")
    return data


def require(entry: dict[str, Any], keys: Sequence[str], where: str) -> None:
    if not isinstance(entry, dict):
        raise InvalidInputError(f"{where}: expected an object, got {type(entry).__name__}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise InvalidInputError(f"{where}: missing key(s) {missing}")


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def int_value(entry: dict[str, Any], key: str, where: str, *, positive: bool = False) -> int:
    """``entry[key]`` as an int (``96.0`` is accepted), else a one-line error naming the key."""
    v = entry[key]
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or (positive and v <= 0):
        kind = "a positive integer" if positive else "an integer"
        raise InvalidInputError(f"{where}: '{key}' must be {kind}, got {entry[key]!r}")
    return v


def check_image(img: Any, where: str) -> int:
    """Validate one ``images`` entry; returns its id."""
    require(img, ("id", "file_name", "width", "height"), where)
    image_id = int_value(img, "id", where)
    where = f"{where} (id {image_id})"
    int_value(img, "width", where, positive=True)
    int_value(img, "height", where, positive=True)
    if not isinstance(img["file_name"], str) or not img["file_name"]:
        raise InvalidInputError(f"{where}: 'file_name' must be a non-empty string, "
                                f"got {img['file_name']!r}")
    return image_id


def check_annotation_values(ann: dict[str, Any], where: str) -> None:
    """Types of the optional ``area`` and ``iscrowd`` fields (``bbox`` is checked when parsed)."""
    if "area" in ann and not (is_number(ann["area"]) and math.isfinite(ann["area"])):
        raise InvalidInputError(f"{where}: 'area' must be a number, got {ann['area']!r}")
    if "iscrowd" in ann and ann["iscrowd"] not in (0, 1):
        raise InvalidInputError(f"{where}: 'iscrowd' must be 0 or 1, got {ann['iscrowd']!r}")
