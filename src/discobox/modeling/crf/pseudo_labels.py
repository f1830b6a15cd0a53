"""The CRF teacher's entry point: pseudo-labels ``Y`` of one image's objects (docs/method.md §4.4).

:func:`crf_pseudo_labels` runs the mode asked for, ``"faithful"`` (the official hard colour
vote, :mod:`.faithful`) or ``"meanfield"`` (soft marginals, :mod:`.meanfield`), object by
object on its box plus the window radius (same result as on the whole image, at a cost that
scales with box area), crops batched into one call off the CPU. All fp32, without gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .faithful import color_kernel, faithful_crf
from .meanfield import meanfield_crf, meanfield_kernel
from .params import CRF_MODES, CRFParams
from .window import vectorized_default

__all__ = ["box_masks", "crf_pseudo_labels"]

Crop = tuple[int, int, int, int]  # y0, y1, x0, x1 of a crop of the map
_BATCH_CROP_ELEMS = 1 << 25  # per-object kernels of one batched CRF call (128 MiB in fp32)


def box_masks(boxes: Tensor, h: int, w: int, *, stride: float = 1.0) -> Tensor:
    """``float32[N, h, w]`` (CPU): 1 on the pixels of an ``h x w`` map of the given ``stride``
    that xyxy ``boxes`` (input pixels) touch, ``floor(x0 / stride) .. ceil(x1 / stride) - 1``
    per axis, clipped to the map, at least one pixel per axis."""
    q = boxes.detach().float().cpu() / float(stride)
    x0 = q[:, 0].floor().clamp(0, w - 1)
    y0 = q[:, 1].floor().clamp(0, h - 1)
    x1 = torch.maximum(q[:, 2].ceil().clamp(max=w), x0 + 1)
    y1 = torch.maximum(q[:, 3].ceil().clamp(max=h), y0 + 1)
    ar_h = torch.arange(h, dtype=torch.float32)
    ar_w = torch.arange(w, dtype=torch.float32)
    rows = (ar_h >= y0[:, None]) & (ar_h < y1[:, None])
    cols = (ar_w >= x0[:, None]) & (ar_w < x1[:, None])
    return (rows[:, :, None] & cols[:, None, :]).float()


@torch.no_grad()
def crf_pseudo_labels(
    probs: Tensor,
    box_masks: Tensor,
    image_q: Tensor,
    *,
    mode: str,
    params: CRFParams | None = None,
    cross_term: Tensor | None = None,
    crop: bool = True,
) -> Tensor:
    """Pseudo-labels ``Y`` of the objects of one image (docs/method.md §4.4 "Y = MeanField").

    Args:
        probs: ``float[N, h, w]`` initial probabilities, ``(T + S) / 2``.
        box_masks: ``float[N, h, w]`` ¼-res box masks.
        image_q: ``float[3, h, w]`` the normalised image resized to ``(h, w)`` (bilinear,
            ``align_corners=True``).
        mode: ``"faithful"`` (hard labels) or ``"meanfield"`` (soft marginals, or hard with
            ``params.hard``); ``params.mode`` is not read.
        params: :class:`CRFParams` (defaults: the official values).
        cross_term: optional ``float[N, 2, h, w]`` cross-image term (§5.6-5.7).
        crop: run each object on its box plus a margin of the window radius instead of the
            whole image. Same result (outside the box the foreground is forced to 0 in both
            modes, so pixels farther than the window radius cannot influence the box).

    Returns:
        ``float32[N, h, w]`` targets in ``[0, 1]``, 0 outside the box.
    """
    p = params if params is not None else CRFParams()
    if mode not in CRF_MODES:
        raise ValueError(f"unknown CRF mode {mode!r}; expected one of {CRF_MODES}")
    if crop:
        return _per_box(probs, box_masks, image_q, mode=mode, params=p, cross_term=cross_term)
    with torch.autocast(device_type=probs.device.type, enabled=False):
        return _crf(probs, box_masks, _kernel(image_q, mode, p), mode=mode, params=p,
                    cross_term=cross_term)


def _crf(probs: Tensor, box_masks: Tensor, kernel: Tensor, *, mode: str, params: CRFParams,
         cross_term: Tensor | None) -> Tensor:
    """One CRF call on whole (possibly cropped) maps with the mode's pairwise ``kernel``
    (:func:`_kernel`: ``[k*k, h, w]``, or ``[N, k*k, h, w]`` per object)."""
    if mode == "faithful":
        return faithful_crf(probs, box_masks, kernel, params=params, cross_term=cross_term)
    y = meanfield_crf(probs, box_masks, None, params=params, cross_term=cross_term,
                      kernel=kernel)
    return (y > 0.5).float() if params.hard else y


def _kernel(image_q: Tensor, mode: str, params: CRFParams) -> Tensor:
    """The pairwise kernel of ``mode`` for ``image_q``: ``float32[k*k, h, w]``."""
    if mode == "faithful":
        return color_kernel(image_q, params=params)
    return meanfield_kernel(image_q, params=params)


def _crops(box_masks: Tensor, r: int) -> dict[Crop, list[int]]:
    """Each object's box grown by ``r`` pixels, clipped to the map; objects with the same crop
    (e.g. the positive cells of one ground-truth box) share an entry. Empty boxes are left out."""
    n, h, w = box_masks.shape
    inside = box_masks > 0
    rows, cols = inside.any(dim=2), inside.any(dim=1)  # [N, h], [N, w]
    ar_h = torch.arange(h, device=box_masks.device)
    ar_w = torch.arange(w, device=box_masks.device)
    # first/last row and column of every box, fetched in one transfer
    bounds = torch.stack([
        torch.where(rows, ar_h, h).amin(dim=1), torch.where(rows, ar_h, -1).amax(dim=1),
        torch.where(cols, ar_w, w).amin(dim=1), torch.where(cols, ar_w, -1).amax(dim=1),
    ], dim=1).tolist() if n else []
    # Crop origins are rounded down to multiples of r + 1. Any origin at least r before the box
    # gives the same labels; this one keeps the crops, and so the batching and the float
    # summation order, of the runs that BENCHMARKS.md reports (bit-identical training).
    period = r + 1
    groups: dict[Crop, list[int]] = {}
    for i, (ya, yb, xa, xb) in enumerate(bounds):
        if yb >= 0:
            crop = (max(0, ya - r) // period * period, min(h, yb + 1 + r),
                    max(0, xa - r) // period * period, min(w, xb + 1 + r))
            groups.setdefault(crop, []).append(i)
    return groups


def _per_box(probs: Tensor, box_masks: Tensor, image_q: Tensor, *, mode: str,
             params: CRFParams, cross_term: Tensor | None) -> Tensor:
    """:func:`crf_pseudo_labels` object by object on ``box + margin`` crops (same result).

    The kernel is computed once on the whole image and cropped: inside a box every neighbour
    within the window lies in the crop, so the crop's own kernel would be the same there, and
    outside the box the foreground is 0 either way.
    """
    out = torch.zeros_like(probs, dtype=torch.float32)
    if mode == "meanfield":
        r = (params.mf_kernel_size // 2) * params.mf_dilation
    else:
        r = params.kernel_size // 2
    groups = _crops(box_masks, r)
    if not groups:
        return out
    with torch.autocast(device_type=probs.device.type, enabled=False):
        kernel = _kernel(image_q, mode, params)
        items = list(groups.items())
        batches = (_pack_crops(items, kernel.shape[0]) if vectorized_default(probs)
                   else [[it] for it in items])
        for batch in batches:
            if len(batch) > 1:
                _per_box_batched(out, dict(batch), probs, box_masks, kernel, mode=mode,
                                 params=params, cross_term=cross_term)
                continue
            (y0, y1, x0, x1), members = batch[0]
            idx = torch.tensor(members, device=probs.device)
            crop = (..., slice(y0, y1), slice(x0, x1))
            out[idx, y0:y1, x0:x1] = _crf(
                probs[idx][crop], box_masks[idx][crop], kernel[crop], mode=mode, params=params,
                cross_term=None if cross_term is None else cross_term[idx][crop])
    return out


def _pack_crops(items: list[tuple[Crop, list[int]]], k2: int) -> list[list[tuple[Crop, list[int]]]]:
    """Crops grouped for :func:`_per_box_batched`, largest first, each batch's per-object
    kernels (objects x ``k2`` x its largest height x its largest width) within
    ``_BATCH_CROP_ELEMS``; a crop too big to share a batch runs alone."""
    items = sorted(items, key=lambda it: -(it[0][1] - it[0][0]) * (it[0][3] - it[0][2]))
    batches: list[list] = []
    cur: list = []
    n = hc = wc = 0
    for it in items:
        (y0, y1, x0, x1), members = it
        n2, h2, w2 = n + len(members), max(hc, y1 - y0), max(wc, x1 - x0)
        if cur and n2 * k2 * h2 * w2 > _BATCH_CROP_ELEMS:
            batches.append(cur)
            cur, n2, h2, w2 = [], len(members), y1 - y0, x1 - x0
        cur.append(it)
        n, hc, wc = n2, h2, w2
    if cur:
        batches.append(cur)
    return batches


def _per_box_batched(out: Tensor, groups: dict[Crop, list[int]], probs: Tensor,
                     box_masks: Tensor, kernel: Tensor, *, mode: str, params: CRFParams,
                     cross_term: Tensor | None) -> None:
    """All crops of :func:`_per_box` in one CRF call (the GPU path: a few launches per sweep
    instead of a few per crop and sweep). Each crop sits at the top left of a common
    ``[Hc, Wc]`` canvas with its own kernel crop; the padding is outside every box (forced
    background) and its kernel is 0, so every object gets exactly its crop's result. Writes
    into ``out``."""
    hc = max(y1 - y0 for y0, y1, _, _ in groups)
    wc = max(x1 - x0 for _, _, x0, x1 in groups)
    m = sum(len(members) for members in groups.values())
    dev = probs.device
    p_b = torch.zeros((m, hc, wc), device=dev)
    m_b = torch.zeros((m, hc, wc), device=dev)
    k_b = torch.zeros((m, kernel.shape[0], hc, wc), device=dev)
    c_b = None if cross_term is None else torch.zeros((m, 2, hc, wc), device=dev)
    slots = []
    s = 0
    for (y0, y1, x0, x1), members in groups.items():
        idx = torch.tensor(members, device=dev)
        sl = slice(s, s + len(members))
        hh, ww = y1 - y0, x1 - x0
        p_b[sl, :hh, :ww] = probs[idx, y0:y1, x0:x1]
        m_b[sl, :hh, :ww] = box_masks[idx, y0:y1, x0:x1]
        k_b[sl, :, :hh, :ww] = kernel[:, y0:y1, x0:x1]
        if c_b is not None:
            c_b[sl, :, :hh, :ww] = cross_term[idx, :, y0:y1, x0:x1]
        slots.append((idx, sl, y0, y1, x0, x1))
        s += len(members)
    y = _crf(p_b, m_b, k_b, mode=mode, params=params, cross_term=c_b)
    for idx, sl, y0, y1, x0, x1 in slots:
        out[idx, y0:y1, x0:x1] = y[sl, : y1 - y0, : x1 - x0]
