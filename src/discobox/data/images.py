"""Reading image files: ``uint8[H, W, 3]`` RGB, or a one-line error naming the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import DiscoboxError


class ImageReadError(DiscoboxError, OSError):
    """An image file is missing, unreadable or cannot be decoded."""


class ImageNotFoundError(ImageReadError):
    """The image file does not exist (a subclass, so callers may count it apart)."""


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``uint8[H, W, 3]`` RGB (cv2 ``IMREAD_COLOR``, as mmcv ``imread``).

    Raises:
        ImageReadError: the file is missing (:class:`ImageNotFoundError`), unreadable or not a
            decodable image; names the path.
    """
    path = Path(path)
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except FileNotFoundError:
        raise ImageNotFoundError(f"image file not found: {path}") from None
    except OSError as exc:
        raise ImageReadError(f"cannot read image file {path}: {exc}") from exc
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ImageReadError(f"cannot decode image (corrupt or unsupported format): {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
