"""A box's pixels and the paste of a 1/4-resolution mask as matrices (docs/method.md §7 step 10).

:func:`box_region` is the pixel region a box covers (pixel-centre rule); :func:`paste_matrix`
writes the x4 upsample, crop and resize to the original size of one axis as one matrix, so a
soft mask is pasted as ``R @ soft @ C.T`` and only inside a box's region when rows and columns
are sliced first.
"""

from __future__ import annotations

import torch
from torch import Tensor


def box_region(boxes: Tensor, height: int, width: int) -> Tensor:
    """Pixels covered by each box: half-open ``[x0, x1) x [y0, y1)`` clipped to the image.

    A pixel belongs to the box when its centre ``(j + 0.5)`` lies inside it (the rasterisation
    convention of pycocotools polygons), so ``x0 = ceil(bx0 - 0.5)``, ``x1 = floor(bx1 - 0.5) +
    1``; a box thinner than one pixel that overlaps the image keeps the one pixel it overlaps
    most. On coco128 val the filled-box mean IoU is 0.619 with this rule against 0.567 with
    "every pixel the box touches" (``floor(bx0)``, ``ceil(bx1)``).

    Args:
        boxes: ``float[N, 4]`` xyxy, absolute pixels.
        height, width: image size.

    Returns:
        ``int64[N, 4]`` ``(x0, y0, x1, y1)``; a box that overlaps no pixel has ``x1 <= x0`` or
        ``y1 <= y0``.
    """
    b = boxes.detach().double()

    def axis(lo: Tensor, hi: Tensor, size: int) -> tuple[Tensor, Tensor]:
        a = torch.ceil(lo - 0.5)
        z = torch.floor(hi - 0.5) + 1
        thin = (z <= a) & (hi > lo) & (hi > 0) & (lo < size)
        centre = torch.floor((lo + hi) / 2).clamp(0, size - 1)
        a = torch.where(thin, centre, a)
        z = torch.where(thin, centre + 1, z)
        return a.clamp(0, size), z.clamp(0, size)

    x0, x1 = axis(b[:, 0], b[:, 2], width)
    y0, y1 = axis(b[:, 1], b[:, 3], height)
    return torch.stack([x0, y0, x1, y1], dim=1).long()


def resize_matrix(n_in: int, n_out: int, *, device: torch.device | None = None) -> Tensor:
    """``float64[n_out, n_in]``: 1-D bilinear resize as ``F.interpolate(align_corners=False)``.

    Source coordinate ``(d + 0.5) * n_in / n_out - 0.5`` clamped below at 0; the right neighbour
    is clamped to ``n_in - 1``.
    """
    d = torch.arange(n_out, dtype=torch.float64, device=device)
    src = ((d + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    w1 = src - i0
    m = torch.zeros((n_out, n_in), dtype=torch.float64, device=device)
    rows = torch.arange(n_out, device=device)
    m.index_put_((rows, i0), 1 - w1, accumulate=True)
    m.index_put_((rows, i1), w1, accumulate=True)
    return m


def paste_matrix(
    n_quarter: int, n_img: int, n_orig: int, *, offset: int = 0, n_full: int | None = None,
    device=None,
) -> Tensor:
    """``float32[n_orig, n_quarter]``: §7 step 10 along one axis (x4, crop to ``n_img``, resize).

    With ``n_full`` the network input was a window of ``n_img`` pixels starting at ``offset``
    of a resized image of ``n_full`` pixels (tiled inference): the window's x4 mask is placed
    there (zero elsewhere) before the resize of ``n_full`` to ``n_orig``.
    """
    up = resize_matrix(n_quarter, 4 * n_quarter, device=device)[:n_img]
    full = n_img if n_full is None else int(n_full)
    if offset < 0 or offset + n_img > full:
        raise ValueError(f"window [{offset}, {offset + n_img}) outside [0, {full})")
    return (resize_matrix(full, n_orig, device=device)[:, offset:offset + n_img] @ up).float()
