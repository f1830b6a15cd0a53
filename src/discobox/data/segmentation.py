"""COCO ``segmentation`` fields (polygons, RLE, compressed RLE) <-> RLE and boolean masks."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def compressed_rle(rle: dict[str, Any]) -> dict[str, Any]:
    """A compressed RLE with ``bytes`` counts, as pycocotools wants them (json gives ``str``)."""
    counts = rle["counts"]
    return {"size": list(rle["size"]),
            "counts": counts.encode() if isinstance(counts, str) else counts}


def segmentation_to_rle(seg: Any, height: int, width: int) -> dict[str, Any]:
    """COCO ``segmentation`` (polygons, RLE, or compressed RLE) -> compressed RLE.

    Raises:
        ValueError: not polygons or an RLE, an odd or short polygon, an RLE of another size.
    """
    if isinstance(seg, list):
        if not seg:
            return mask_utils.encode(np.zeros((height, width), dtype=np.uint8, order="F"))
        polys = [[float(v) for v in p] for p in seg]
        if any(len(p) < 6 or len(p) % 2 for p in polys):
            raise ValueError("polygons need an even number (>= 6) of coordinates")
        return mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if list(seg["size"]) != [height, width]:
            raise ValueError(f"RLE size {seg['size']} != image size {[height, width]}")
        if isinstance(seg["counts"], list):
            return mask_utils.frPyObjects(seg, height, width)
        return compressed_rle(seg)
    raise ValueError(f"expected polygons or RLE, got {type(seg).__name__}")


def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    """COCO ``segmentation`` (polygons, RLE, or compressed RLE) -> ``bool[height, width]``."""
    rle = segmentation_to_rle(seg, height, width)
    with warnings.catch_warnings():  # pycocotools' Masks.__array__ predates numpy 2's copy=
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode([rle])[:, :, 0].astype(bool)


def segmentation_problem(seg: Any, height: int, width: int) -> str | None:
    """Why ``seg`` is not a usable COCO ``segmentation`` for an image of ``height x width``, or
    ``None`` when it is: polygons (a non-empty list of lists of >= 6, an even number of, finite
    numbers) or an RLE (``counts`` str or list, ``size == [height, width]``). A structural check
    (nothing is decoded), cheap enough to run on every annotation when a json is loaded."""
    if isinstance(seg, list):
        if not seg:
            return "an empty polygon list"
        for poly in seg:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                return "a polygon that is not a list of an even number (>= 6) of coordinates"
            if not all(_is_finite_number(v) for v in poly):
                return "a polygon with a coordinate that is not a finite number"
        return None
    if isinstance(seg, dict):
        if "counts" not in seg or "size" not in seg:
            return "an object without 'counts' and 'size'"
        if not isinstance(seg["counts"], str | list):
            return f"RLE 'counts' of type {type(seg['counts']).__name__}"
        if not isinstance(seg["size"], list) or list(seg["size"]) != [height, width]:
            return f"RLE size {seg['size']!r} != image size {[height, width]}"
        return None
    return f"a {type(seg).__name__}, not polygons or an RLE"


def _is_finite_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)
