"""SOLOv2 target assignment and ¼-resolution mask targets (docs/method.md §3.1-§3.4).

Box supervision: every GT box stands for a filled rectangle whose rounded right/bottom edge is
*inclusive* (§3.1 step 3). Its ¼-res target is what ``cv2.resize(mask, (w, h), INTER_LINEAR)``
gives (§3.2), computed here analytically from the box, so no ``N x H x W`` mask is ever built.

The cv2 rule, checked against cv2 in ``tests/modeling/test_targets.py``: output pixel ``(k, l)``
is the mean of the input 2x2 block at rows ``{4k+1, 4k+2}`` and columns ``{4l+1, 4l+2}``,
rounded half up, i.e. it is 1 iff that mean is ``>= 0.5``. For a rectangle this is separable
*except at corners*: a block covering one row and one column of the rectangle (mean 0.25) is 0,
so "column k is 1 iff pixel 4k+1 or 4k+2 is 1" (§3.2) holds along an edge, not at a corner.

Difference to the official code: it rounds the box at the *original* resolution and then resizes
the mask with nearest-neighbour interpolation (§3.1 step 4); we receive boxes already in the
resized frame and round there. Extents can differ by one resized pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ...structures import Instances

DEFAULT_NUM_GRIDS: tuple[int, ...] = (40, 36, 24, 16, 12)
DEFAULT_SCALE_RANGES: tuple[tuple[float, float], ...] = (
    (1, 96),
    (48, 192),
    (96, 384),
    (192, 768),
    (384, 2048),
)


@dataclass
class LevelTargets:
    """Targets of one pyramid level for a whole batch (docs/method.md §3.3 "Combining the images").

    ``P`` is the number of (cell, GT) pairs of this level over the batch, image-major, and within
    an image in GT order, then row-major over each GT's cells (duplicated cells kept).

    Attributes:
        cate_labels: ``int64[B, S, S]`` class per cell; background is ``num_classes``.
        ins_ind: ``bool[B, S*S]`` positive cells (a cell claimed twice counts once).
        grid_index: ``int64[P]`` cell index ``i*S + j``.
        img_index: ``int64[P]`` image of each pair (sorted ascending).
        gt_index: ``int64[P]`` GT row within its image's :class:`Instances`.
        labels: ``int64[P]`` the class read back from ``cate_labels`` at the cell, as the
            official ``kernel_labels`` (so a later GT on the same cell wins, §12.8).
        masks: ``float[P, h, w]`` ¼-res targets (box masks, or real masks in full mode); may be
            all zero for tiny objects (the losses drop those, §4.2).
    """

    cate_labels: Tensor
    ins_ind: Tensor
    grid_index: Tensor
    img_index: Tensor
    gt_index: Tensor
    labels: Tensor
    masks: Tensor

    @property
    def num_grid(self) -> int:
        return int(self.cate_labels.shape[-1])

    @property
    def num_pos(self) -> Tensor:
        """``int64[]`` number of unique positive cells of this level (§4.1 ``avg_factor``)."""
        return self.ins_ind.sum()


def _quarter_size(padded_size: tuple[int, int]) -> tuple[int, int]:
    H, W = padded_size
    return int(H / 4 + 0.5), int(W / 4 + 0.5)


def rounded_box_extents(
    boxes: Tensor, padded_size: tuple[int, int], *, image_size: tuple[int, int] | None = None
) -> tuple[Tensor, Tensor]:
    """Inclusive integer extents of the box masks (docs/method.md §3.1 step 3).

    Args:
        boxes: ``float[N, 4]`` xyxy in the resized frame.
        padded_size: ``(H, W)``.
        image_size: ``(h_i, w_i)`` unpadded size; extents are clipped to it (as the official mask
            lives inside the image). Defaults to ``padded_size``.

    Returns:
        ``int64[N, 4]`` ``(x0, y0, x1, y1)`` rounded half-to-even (``np.round``), inclusive, and
        ``bool[N]`` whether the mask is non-empty.
    """
    hi, wi = image_size if image_size is not None else padded_size
    r = torch.round(boxes.float()).long()
    x0 = r[:, 0].clamp(min=0)
    y0 = r[:, 1].clamp(min=0)
    x1 = r[:, 2].clamp(max=wi - 1)
    y1 = r[:, 3].clamp(max=hi - 1)
    ext = torch.stack([x0, y0, x1, y1], dim=1)
    return ext, (x0 <= x1) & (y0 <= y1)


def _sample_counts(lo: Tensor, hi: Tensor, n: int) -> Tensor:
    """``int64[N, n]``: how many of input pixels ``{4k+1, 4k+2}`` lie in ``[lo, hi]``."""
    p = 4 * torch.arange(n, device=lo.device) + 1
    lo, hi = lo[:, None], hi[:, None]
    return ((p >= lo) & (p <= hi)).long() + ((p + 1 >= lo) & (p + 1 <= hi)).long()


def box_mask_quarter(
    boxes: Tensor, padded_size: tuple[int, int], *, image_size: tuple[int, int] | None = None
) -> Tensor:
    """¼-res box "masks" exactly as cv2 ``INTER_LINEAR`` would give them (docs/method.md §3.1-3.2).

    Args:
        boxes: ``float[N, 4]`` xyxy in the resized frame.
        padded_size: ``(H, W)``, multiples of 4.
        image_size: optional unpadded ``(h_i, w_i)`` to clip the inclusive edge to.

    Returns:
        ``bool[N, H/4, W/4]`` on ``boxes.device``.
    """
    h, w = _quarter_size(padded_size)
    ext, valid = rounded_box_extents(boxes, padded_size, image_size=image_size)
    rows = _sample_counts(ext[:, 1], ext[:, 3], h)
    cols = _sample_counts(ext[:, 0], ext[:, 2], w)
    # mean of the 2x2 block = rows*cols/4; cv2 rounds half up -> 1 iff rows*cols >= 2.
    out = rows[:, :, None] * cols[:, None, :] >= 2
    return out & valid[:, None, None]


def mask_quarter(masks: Tensor, padded_size: tuple[int, int]) -> Tensor:
    """¼-res targets of real masks, the cv2 ``INTER_LINEAR`` 4x rule (docs/method.md §3.2).

    The mask is zero-padded (bottom/right) to ``padded_size``; output pixel ``(k, l)`` is 1 iff the
    mean of input rows ``{4k+1, 4k+2}`` x columns ``{4l+1, 4l+2}`` is ``>= 0.5``.

    Args:
        masks: ``bool[N, h_i, w_i]`` at the resized, unpadded size.
        padded_size: ``(H, W)``.

    Returns:
        ``bool[N, H/4, W/4]``.
    """
    h, w = _quarter_size(padded_size)
    n, hi, wi = masks.shape
    H, W = padded_size
    full = masks.new_zeros((n, H, W), dtype=torch.uint8)
    full[:, : min(hi, H), : min(wi, W)] = masks[:, :H, :W].to(torch.uint8)
    rows = full[:, 1::4][:, :h].long() + full[:, 2::4][:, :h].long()  # [N, h, W]
    block = rows[:, :, 1::4][:, :, :w] + rows[:, :, 2::4][:, :, :w]
    return block >= 2


def box_center_of_mass(
    boxes: Tensor, padded_size: tuple[int, int], *, image_size: tuple[int, int] | None = None
) -> Tensor:
    """Centre of mass of the full-res box mask: the midpoint of the rounded, inclusive extents
    (docs/method.md §3.3 step 2). Returns ``float32[N, 2]`` as ``(c_y, c_x)`` in pixels."""
    ext, _ = rounded_box_extents(boxes, padded_size, image_size=image_size)
    ext = ext.float()
    return torch.stack([(ext[:, 1] + ext[:, 3]) / 2, (ext[:, 0] + ext[:, 2]) / 2], dim=1)


def mask_center_of_mass(masks: Tensor) -> Tensor:
    """True centre of mass of ``bool[N, h, w]`` masks with pixel indices as coordinates
    (docs/method.md §3.3 step 2). Returns ``float32[N, 2]`` ``(c_y, c_x)``; 0 for empty masks."""
    m = masks.double()
    n, h, w = m.shape
    area = m.sum(dim=(1, 2)).clamp(min=1e-6)
    ys = torch.arange(h, dtype=torch.float64, device=m.device)
    xs = torch.arange(w, dtype=torch.float64, device=m.device)
    cy = (m.sum(dim=2) * ys).sum(dim=1) / area
    cx = (m.sum(dim=1) * xs).sum(dim=1) / area
    return torch.stack([cy, cx], dim=1).float()


@dataclass
class _ImageGeometry:
    """Per-image quantities shared by the two assigners (all on CPU except ``quarter``)."""

    labels: list[int]
    scale: Tensor  # float32[N] sqrt(w*h)
    wh: Tensor  # float32[N, 2] box (w, h)
    center: Tensor  # float32[N, 2] (c_y, c_x)
    nonempty: Tensor  # bool[N] full-res mask non-empty
    quarter: Tensor  # bool[N, h, w] on the input device


def _image_geometry(
    inst: Instances, padded_size: tuple[int, int], use_masks: bool
) -> _ImageGeometry:
    boxes = inst.boxes.float()
    wh = (boxes[:, 2:] - boxes[:, :2]).cpu()
    if use_masks and inst.masks is None and len(inst) == 0:
        inst = inst.replace(masks=torch.zeros((0, 1, 1), dtype=torch.bool, device=boxes.device))
    if use_masks:
        if inst.masks is None:
            raise ValueError("full supervision (use_masks=True) needs Instances.masks")
        masks = inst.masks.bool()
        quarter = mask_quarter(masks, padded_size)
        center = mask_center_of_mass(masks).cpu()
        nonempty = masks.flatten(1).any(dim=1).cpu()
    else:
        quarter = box_mask_quarter(boxes, padded_size)
        center = box_center_of_mass(boxes, padded_size).cpu()
        nonempty = rounded_box_extents(boxes.cpu(), padded_size)[1]
    return _ImageGeometry(
        labels=[int(v) for v in inst.labels.tolist()],
        scale=torch.sqrt(wh[:, 0] * wh[:, 1]),
        wh=wh,
        center=center,
        nonempty=nonempty,
        quarter=quarter,
    )


def _grid_coord(value: Tensor, size: int, num_grid: int) -> Tensor:
    """``(value / size) // (1 / S)`` in float32, floored, as the official code (§3.3)."""
    return torch.div(value.float() / size, 1.0 / num_grid, rounding_mode="floor").long()


def _collect(
    per_image: list[list[tuple[int, int, int, int, int]]],
    geoms: list[_ImageGeometry],
    *,
    num_grid: int,
    num_classes: int,
    quarter_size: tuple[int, int],
    device: torch.device,
) -> LevelTargets:
    """Paint the cell regions ``(gt, top, down, left, right)`` in GT order and gather targets."""
    S = num_grid
    B = len(per_image)
    cate = torch.full((B, S, S), num_classes, dtype=torch.int64)
    ins_ind = torch.zeros((B, S * S), dtype=torch.bool)
    grid, img, gt = [], [], []
    for b, regions in enumerate(per_image):
        for n, top, down, left, right in regions:
            cate[b, top : down + 1, left : right + 1] = geoms[b].labels[n]
            for i in range(top, down + 1):
                for j in range(left, right + 1):
                    grid.append(i * S + j)
                    img.append(b)
                    gt.append(n)
    grid_t = torch.tensor(grid, dtype=torch.int64)
    img_t = torch.tensor(img, dtype=torch.int64)
    ins_ind[img_t, grid_t] = True
    labels = cate.view(B, S * S)[img_t, grid_t]
    gt_t = torch.tensor(gt, dtype=torch.int64)
    masks = [
        geoms[b].quarter[gt_t[img_t == b].to(geoms[b].quarter.device)]
        for b in range(B)
        if bool((img_t == b).any())
    ]
    if masks:
        mask_t = torch.cat([m.to(device) for m in masks]).float()
    else:
        mask_t = torch.zeros((0, *quarter_size), dtype=torch.float32, device=device)
    return LevelTargets(
        cate_labels=cate.to(device),
        ins_ind=ins_ind.to(device),
        grid_index=grid_t.to(device),
        img_index=img_t.to(device),
        gt_index=gt_t.to(device),
        labels=labels.to(device),
        masks=mask_t,
    )


def _batch_device(targets: Sequence[Instances], default: torch.device | None) -> torch.device:
    if default is not None:
        return torch.device(default)
    return targets[0].boxes.device if len(targets) else torch.device("cpu")


def assign_targets(
    targets: Sequence[Instances],
    *,
    padded_size: tuple[int, int],
    num_classes: int,
    num_grids: Sequence[int] = DEFAULT_NUM_GRIDS,
    scale_ranges: Sequence[tuple[float, float]] = DEFAULT_SCALE_RANGES,
    sigma: float = 0.2,
    use_masks: bool = False,
    device: torch.device | str | None = None,
) -> list[LevelTargets]:
    """SOLOv2 main assignment ``solov2_target_single`` for a batch (docs/method.md §3.3).

    A GT goes to every level whose inclusive range holds ``sqrt(w*h)`` (ranges overlap, so up to
    two levels). Its positive cells are the centre region (``sigma`` x box size around the centre
    of mass) clamped to +-1 cell around the centre cell; a later GT overwrites ``cate_labels``.
    GTs whose full-res mask is empty are skipped.

    Args:
        targets: per image :class:`Instances` in the resized frame (``boxes float[N, 4]``,
            ``labels int64[N]``, and ``masks bool[N, h_i, w_i]`` when ``use_masks``).
        padded_size: ``(H, W)`` of the padded batch; targets are ``(H/4, W/4)``.
        num_classes: ``C``; background label.
        num_grids: ``S_l`` per level.
        scale_ranges: inclusive ``(lo, hi)`` per level.
        sigma: centre-region scale.
        use_masks: full supervision: centre of mass and ¼-res targets from real masks.
        device: where outputs go (default: the boxes' device).

    Returns:
        One :class:`LevelTargets` per level.
    """
    dev = _batch_device(targets, device)
    H, W = padded_size
    geoms = [_image_geometry(t, padded_size, use_masks) for t in targets]
    levels = []
    for S, (lo, hi) in zip(num_grids, scale_ranges):
        per_image = []
        for g in geoms:
            hit = ((g.scale >= lo) & (g.scale <= hi) & g.nonempty).nonzero().flatten()
            if hit.numel() == 0:
                per_image.append([])
                continue
            cy, cx = g.center[hit, 0], g.center[hit, 1]
            half_w = 0.5 * g.wh[hit, 0] * sigma
            half_h = 0.5 * g.wh[hit, 1] * sigma
            coord_h, coord_w = _grid_coord(cy, H, S), _grid_coord(cx, W, S)
            top = torch.maximum(_grid_coord(cy - half_h, H, S).clamp(min=0), coord_h - 1)
            down = torch.minimum(_grid_coord(cy + half_h, H, S).clamp(max=S - 1), coord_h + 1)
            left = torch.maximum(_grid_coord(cx - half_w, W, S).clamp(min=0), coord_w - 1)
            right = torch.minimum(_grid_coord(cx + half_w, W, S).clamp(max=S - 1), coord_w + 1)
            per_image.append(
                list(zip(hit.tolist(), top.tolist(), down.tolist(), left.tolist(), right.tolist()))
            )
        levels.append(
            _collect(
                per_image,
                geoms,
                num_grid=S,
                num_classes=num_classes,
                quarter_size=_quarter_size(padded_size),
                device=dev,
            )
        )
    return levels


def scale_mids(scale_ranges: Sequence[tuple[float, float]]) -> list[float]:
    """``sqrt(lo*hi)`` per level: ``[9.80, 96, 192, 384, 886.8]`` by default
    (docs/method.md §3.4)."""
    return [math.sqrt(lo * hi) for lo, hi in scale_ranges]


def assign_best_targets(
    targets: Sequence[Instances],
    *,
    padded_size: tuple[int, int],
    num_classes: int,
    num_grids: Sequence[int] = DEFAULT_NUM_GRIDS,
    scale_ranges: Sequence[tuple[float, float]] = DEFAULT_SCALE_RANGES,
    use_masks: bool = False,
    device: torch.device | str | None = None,
) -> list[LevelTargets]:
    """Single-cell assignment ``best_target_single`` for the correspondence branch (docs/method.md
    §3.4).

    Each non-empty GT goes to exactly one level, the one minimising
    ``max(mid/scale, scale/mid)`` (first level on ties), and to exactly one cell, its centre cell
    ``(coord_h, coord_w)``. Arguments and outputs as :func:`assign_targets` (no ``sigma``).
    """
    dev = _batch_device(targets, device)
    H, W = padded_size
    mids = torch.tensor(scale_mids(scale_ranges), dtype=torch.float32)
    geoms = [_image_geometry(t, padded_size, use_masks) for t in targets]
    best = []
    for g in geoms:
        s = g.scale.clamp(min=1e-6)[:, None]
        best.append(torch.maximum(mids / s, s / mids).argmin(dim=1))
    levels = []
    for lvl, S in enumerate(num_grids):
        per_image = []
        for g, bl in zip(geoms, best):
            hit = ((bl == lvl) & g.nonempty).nonzero().flatten()
            ch = _grid_coord(g.center[hit, 0], H, S).clamp(0, S - 1).tolist()
            cw = _grid_coord(g.center[hit, 1], W, S).clamp(0, S - 1).tolist()
            per_image.append([(n, i, i, j, j) for n, i, j in zip(hit.tolist(), ch, cw)])
        levels.append(
            _collect(
                per_image,
                geoms,
                num_grid=S,
                num_classes=num_classes,
                quarter_size=_quarter_size(padded_size),
                device=dev,
            )
        )
    return levels
