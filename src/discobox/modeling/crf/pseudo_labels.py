"""CRF pseudo-labels for the teacher-student loss (METHOD.md §4.3, §4.4, §5.7).

Two modes, selected by :func:`crf_pseudo_labels`:

- ``"faithful"``: the official ``MeanField`` class, arithmetic reproduced literally
  (:func:`color_kernel`, :func:`faithful_crf`). Despite its name it is a hard, colour-weighted
  majority vote on binarised labels (§4.3 "Interpretation"), which the cross-image term ``G``
  perturbs (§5.7).
- ``"meanfield"``: a true mean-field CRF with soft marginals (:mod:`.meanfield`): unary
  ``-log`` of the clamped input probabilities, foreground impossible outside the box, a
  local-window Potts model with a bilateral (colour) and a spatial Gaussian kernel.

This module holds the faithful mode, the parameters of both (:class:`CRFParams`) and the entry
point :func:`crf_pseudo_labels` (per-box crops). All computations are fp32, without gradient
where used as pseudo-labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .meanfield import _MF_CHUNK_ELEMS, energy, meanfield_crf, meanfield_kernel
from .window import full_window_sum, neighbours, offsets, shifted, vectorized_default

__all__ = ["CRF_MODES", "CRFParams", "color_kernel", "crf_pseudo_labels", "energy",
           "faithful_crf", "meanfield_crf", "meanfield_kernel"]

# --- faithful: the official MeanField (§4.3) ---------------------------------------------------


def color_kernel(
    image_q: Tensor,
    *,
    kernel_size: int = 3,
    alpha0: float = 2.0,
    theta0: float = 0.5,
    theta1: float = 30.0,
    vectorized: bool | None = None,
) -> Tensor:
    """Official pairwise kernel (METHOD.md §4.3, H:756-771).

    ``K_j(p) = alpha0 * exp(-||I(p+d_j) - I(p)||^2 / (2 theta0^2) - ||d_j||^2 / (2 theta1^2))``
    after adding 10 to every colour value; out-of-image neighbours are zero-padded, so they get
    weight ~0 (their distance to the shifted colour is ~300). The centre term (``d = 0``) is
    included and equals ``alpha0``.

    Args:
        image_q: ``float[3, h, w]`` normalised image at ¼ res (bilinear, ``align_corners=True``).
        vectorized: one unfold instead of a loop over offsets (same values); default: off the
            CPU (:func:`~.crf_window.vectorized_default`).

    Returns:
        ``float32[k*k, h, w]``, offsets in row-major order.
    """
    img = image_q.float() + 10.0
    offs = offsets(kernel_size)
    spatial = [(dy * dy + dx * dx) / (2 * theta1**2) for dy, dx in offs]
    if vectorized is None:
        vectorized = vectorized_default(img)
    if vectorized:  # all offsets at once (few GPU launches)
        d2 = ((neighbours(img, kernel_size) - img[:, None]) ** 2).sum(dim=0)
        sp = torch.tensor(spatial, device=img.device).view(len(offs), 1, 1)
        return alpha0 * torch.exp(-d2 / (2 * theta0**2) - sp)
    out = []
    for nb, sp in zip(shifted(img, offs), spatial):
        d2 = ((nb - img) ** 2).sum(dim=0)
        out.append(alpha0 * torch.exp(-d2 / (2 * theta0**2) - sp))
    return torch.stack(out)


def faithful_crf(
    probs: Tensor,
    box_masks: Tensor,
    kernel: Tensor,
    *,
    iters: int = 10,
    base: float = 0.1,
    gamma: float = 0.01,
    cross_term: Tensor | None = None,
) -> Tensor:
    """The official ``MeanField.forward``, literally (METHOD.md §4.3 steps 1-3, §5.7).

    1. ``X <- X * M``; ``Q_fg = 1 - base if X > 0.5 else base``; ``Q_bg = 1 - Q_fg``.
    2. ``iters`` times: ``A_l = sum_j K_j * (-log Q_l)(p + d_j)`` (zero padded);
       ``f_l = exp(-A_l) (+ gamma * G_l)``; ``f_fg *= M``; ``f += 1e-6``; normalise over the two
       labels; re-binarise ``Q_fg`` at 0.5.
    3. ``Y = 1[Q_fg > 0.5]``.

    Without ``G`` this equals a hard colour-weighted vote (§4.3 "Interpretation").

    Args:
        probs: ``float[N, h, w]`` initial foreground probabilities ((T+S)/2 in §4.4).
        box_masks: ``float[N, h, w]`` ¼-res box masks ``M``.
        kernel: ``float[k*k, h, w]`` from :func:`color_kernel` of the objects' image, or one
            per object (``float[N, k*k, h, w]``).
        iters, base, gamma: 10, 0.1, 0.01 officially.
        cross_term: optional ``float[N, 2, h, w]`` cross-image term ``G`` (channel 0 background,
            1 foreground, §5.6).

    Returns:
        ``float32[N, h, w]`` hard pseudo-labels in ``{0, 1}``.
    """
    m = box_masks.float()
    kernel = kernel.float()
    per_object = kernel.dim() == 4
    k2 = kernel.shape[1] if per_object else kernel.shape[0]
    kernel_size = int(round(k2**0.5))
    n, h, w = m.shape
    chunk = max(1, _MF_CHUNK_ELEMS // max(1, 2 * k2 * h * w))
    if n > chunk:  # objects are independent: bound the unfolded windows' memory
        return torch.cat([
            faithful_crf(probs[s:s + chunk], m[s:s + chunk],
                         kernel[s:s + chunk] if per_object else kernel, iters=iters, base=base,
                         gamma=gamma,
                         cross_term=None if cross_term is None else cross_term[s:s + chunk])
            for s in range(0, n, chunk)
        ])
    if per_object:  # one kernel per map of the [N * 2] (bg, fg) stack
        kernel = kernel.repeat_interleave(2, dim=0)
    hi = torch.tensor(1.0 - base, device=m.device)
    lo = torch.tensor(base, device=m.device)
    q_fg = torch.where(probs.float() * m > 0.5, hi, lo)
    for _ in range(iters):
        q = torch.stack([1.0 - q_fg, q_fg], dim=1)  # [N, 2, h, w]: bg, fg
        a = full_window_sum(kernel, -torch.log(q).view(2 * n, h, w), kernel_size)
        f = torch.exp(-a.view(n, 2, h, w))
        if cross_term is not None:
            f = f + gamma * cross_term.float()
        f = torch.stack([f[:, 0], f[:, 1] * m], dim=1) + 1e-6
        f = f / f.sum(dim=1, keepdim=True)
        q_fg = torch.where(f[:, 1] > 0.5, hi, lo)
    return (q_fg > 0.5).float()



# --- mode selection ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CRFParams:
    """Parameters of both CRF modes; names match the ``crf`` config section.

    Faithful (METHOD.md §4.3, cfg:r50:51-65): ``iters=10``, ``kernel_size=3``, ``alpha0=2``,
    ``theta0=0.5``, ``theta1=30``, ``base=0.1``, ``gamma=0.01``. The mean-field mode uses
    ``iters`` and its own ``mf_kernel_size``, ``dilation``, ``w_color``, ``theta_color``,
    ``w_spatial``, ``theta_spatial``, ``prob_clamp``, ``schedule``, ``cross_weight`` and
    ``hard`` (return ``1[Q_fg > 0.5]`` instead of the marginals). ``fill_holes`` (both
    modes, ours) sets the target to 1 on background enclosed by foreground (:func:`fill_holes`);
    ``fill_ortho`` (both modes, ours) sets it to 1 on the row/column fill (:func:`fill_ortho`).
    Its defaults (7x7 window,
    unary clamp 0.2) come from a sweep of the CRF as a refiner of trained students' masks on
    the synthetic set: mean IoU with the ground truth 0.73 against 0.54 for the old 3x3 / 0.05
    defaults and 0.58 for the faithful mode (BENCHMARKS.md "Mean-field tuning").
    """

    iters: int = 10
    kernel_size: int = 3
    alpha0: float = 2.0
    theta0: float = 0.5
    theta1: float = 30.0
    base: float = 0.1
    gamma: float = 0.01
    w_color: float = 1.0
    theta_color: float = 0.5
    w_spatial: float = 0.25
    theta_spatial: float = 1.0
    mf_kernel_size: int = 7
    dilation: int = 1
    prob_clamp: float = 0.2
    schedule: str = "parallel"
    cross_weight: float = 1.0
    hard: bool = False
    fill_holes: bool = False
    fill_ortho: bool = False


CRF_MODES = ("faithful", "meanfield")


def check_refine_mode(mode: str | None) -> str | None:
    """``mode`` of a test-time refiner (``test.refine``; ``None`` = off), or a ValueError."""
    if mode is not None and mode not in CRF_MODES:
        raise ValueError(f"test.refine: unknown CRF mode {mode!r}; expected 'none' or one of "
                         f"{CRF_MODES}")
    return mode


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
    """Pseudo-labels ``Y`` of the objects of one image (METHOD.md §4.4 step "Y = MeanField").

    Args:
        probs: ``float[N, h, w]`` initial probabilities, ``(T + S) / 2``.
        box_masks: ``float[N, h, w]`` ¼-res box masks.
        image_q: ``float[3, h, w]`` the normalised image resized to ``(h, w)`` (bilinear,
            ``align_corners=True``).
        mode: ``"faithful"`` (hard labels) or ``"meanfield"`` (soft marginals).
        params: :class:`CRFParams` (defaults: the official values).
        cross_term: optional ``float[N, 2, h, w]`` cross-image term (§5.6-5.7).
        crop: run each object on its box plus a margin of the window radius instead of the
            whole image. The result is identical (outside the box the foreground is forced to 0
            in both modes, so pixels farther than the window radius cannot influence the box),
            and the cost scales with box area instead of ``N * h * w``.

    Returns:
        ``float32[N, h, w]`` targets in ``[0, 1]``, computed without gradient.
    """
    p = params if params is not None else CRFParams()
    if mode not in CRF_MODES:
        raise ValueError(f"unknown CRF mode {mode!r}; expected one of {CRF_MODES}")
    if crop:
        return _per_box(probs, box_masks, image_q, mode=mode, params=p, cross_term=cross_term)
    with torch.autocast(device_type=probs.device.type, enabled=False):
        return _crf(probs, box_masks, image_q, mode=mode, p=p, cross_term=cross_term)


def _crf(
    probs: Tensor,
    box_masks: Tensor,
    image_q: Tensor,
    *,
    mode: str,
    p: CRFParams,
    cross_term: Tensor | None,
    kernel: Tensor | None = None,
) -> Tensor:
    """One CRF pass on whole (possibly cropped) maps, hole filling included; see
    :func:`crf_pseudo_labels`. ``kernel``: the mode's pairwise kernel of ``image_q`` if already
    computed (:func:`_kernel`)."""
    if mode not in CRF_MODES:
        raise ValueError(f"unknown CRF mode {mode!r}; expected one of {CRF_MODES}")
    if kernel is None:
        kernel = _kernel(image_q, mode, p)
    if mode == "faithful":
        y = faithful_crf(probs, box_masks, kernel, iters=p.iters, base=p.base, gamma=p.gamma,
                         cross_term=cross_term)
    else:
        y = meanfield_crf(probs, box_masks, None, iters=p.iters, kernel_size=p.mf_kernel_size,
                          dilation=p.dilation, prob_clamp=p.prob_clamp, schedule=p.schedule,
                          cross_term=cross_term, cross_weight=p.cross_weight, kernel=kernel)
        if p.hard:
            y = (y > 0.5).float()
    if p.fill_holes:
        y = torch.maximum(y, fill_holes(y > 0.5).to(y.dtype))
    if p.fill_ortho:
        y = torch.maximum(y, fill_ortho(y > 0.5).to(y.dtype))
    return y


def _kernel(image_q: Tensor, mode: str, p: CRFParams) -> Tensor:
    """The pairwise kernel of ``mode`` for ``image_q``: ``float32[k*k, h, w]``."""
    if mode == "faithful":
        return color_kernel(image_q, kernel_size=p.kernel_size, alpha0=p.alpha0,
                            theta0=p.theta0, theta1=p.theta1)
    return meanfield_kernel(image_q, kernel_size=p.mf_kernel_size, dilation=p.dilation,
                            w_color=p.w_color, theta_color=p.theta_color,
                            w_spatial=p.w_spatial, theta_spatial=p.theta_spatial)


@torch.no_grad()
def fill_holes(fg: Tensor, *, check_every: int = 8) -> Tensor:
    """Background pixels enclosed by foreground: ``bool[N, h, w]`` -> ``bool[N, h, w]`` (ours).

    A topological prior for the teacher's target: instance masks are (nearly always) free of
    holes, but the colour cues of §4.3 can leave an object's inside as background when it has
    the background's colour and only its outline differs (droplets in BENCHMARKS.md: the
    box-projection loss of §4.2 is minimised exactly by such an outline, whose max projections
    already span the box). With ``crf.fill_holes=true`` the target becomes 1 on these pixels,
    so a closed outline teaches a filled object.

    Background is 4-connected, foreground 8-connected (so a diagonal one-pixel outline still
    encloses); a pixel is a hole when no 4-connected background path reaches the map's border
    (the maps are padded by one background pixel, so a border pixel is never a hole).
    Computed by geodesic dilation from the border, batched over objects, on the device.
    """
    if fg.ndim != 3:
        raise ValueError(f"fill_holes expects [N, h, w], got {tuple(fg.shape)}")
    if fg.numel() == 0:
        return torch.zeros_like(fg, dtype=torch.bool)
    bg = F.pad(~fg, (1, 1, 1, 1), value=True)
    reach = torch.zeros_like(bg)
    reach[:, 0, :] = reach[:, -1, :] = True
    reach[:, :, 0] = reach[:, :, -1] = True
    cross = torch.tensor([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.float32, device=fg.device)
    cross = cross.view(1, 1, 3, 3)
    bg_f = bg.unsqueeze(1).float()
    r = reach.unsqueeze(1).float()
    max_steps = bg.shape[-2] * bg.shape[-1]
    for step in range(max_steps):
        grown = (F.conv2d(r, cross, padding=1) > 0).float() * bg_f
        if (step + 1) % check_every == 0 and torch.equal(grown, r):
            break
        r = grown
    holes = bg & ~(r.squeeze(1) > 0)
    return holes[:, 1:-1, 1:-1]


@torch.no_grad()
def fill_ortho(fg: Tensor) -> Tensor:
    """The row/column fill of each mask: ``bool[N, h, w]`` -> ``bool[N, h, w]`` (ours).

    A pixel is in the fill when foreground lies on both sides of it (or on it) in its row
    *or* in its column: ``row_fill | col_fill``, where ``row_fill`` is 1 between the first
    and the last foreground pixel of each row (``cummax`` from the left and from the right).
    A superset of the mask and of :func:`fill_holes`; a shape convex in rows or in columns
    (a disc, an ellipse, a box, an L) is its own fill, so a closed outline becomes the filled
    object, and an open arc becomes the part of the object it spans (a C: the half disc its
    ends bracket). A shape prior for compact objects whose inside has the background's colour
    (the droplets of BENCHMARKS.md, for which an outline already minimises the max-projection
    loss of §4.2 and satisfies the colour kernels of §4.3); an object with a concavity that
    its own row or column brackets (a cup, a person's spread arms) gets it filled, so it is an
    option for such data, off by default.

    Stays within the mask's bounding box, hence within the object's box.
    """
    if fg.ndim != 3:
        raise ValueError(f"fill_ortho expects [N, h, w], got {tuple(fg.shape)}")
    if fg.numel() == 0:
        return torch.zeros_like(fg, dtype=torch.bool)
    f = fg.to(torch.uint8)

    def spans(dim: int) -> Tensor:
        fwd = torch.cummax(f, dim=dim).values
        bwd = torch.cummax(f.flip(dim), dim=dim).values.flip(dim)
        return (fwd & bwd).bool()

    return spans(2) | spans(1)


def _per_box(
    probs: Tensor,
    box_masks: Tensor,
    image_q: Tensor,
    *,
    mode: str,
    params: CRFParams,
    cross_term: Tensor | None,
) -> Tensor:
    """:func:`crf_pseudo_labels` object by object on ``box + margin`` crops (same result).

    The kernel is computed once on the whole image and cropped: inside a box every neighbour
    within the window lies in the crop, so the crop's own kernel would be the same there, and
    outside the box the foreground is 0 either way.
    """
    out = torch.zeros_like(probs, dtype=torch.float32)
    n, h, w = probs.shape
    dilation = params.dilation if mode == "meanfield" else 1
    ksize = params.mf_kernel_size if mode == "meanfield" else params.kernel_size
    r = (ksize // 2) * dilation
    period = r + 1
    inside = box_masks > 0
    rows, cols = inside.any(dim=2), inside.any(dim=1)  # [N, h], [N, w]
    ar_h = torch.arange(h, device=probs.device)
    ar_w = torch.arange(w, device=probs.device)
    # first/last row and column of every box, fetched in one transfer
    bounds = torch.stack([
        torch.where(rows, ar_h, h).amin(dim=1), torch.where(rows, ar_h, -1).amax(dim=1),
        torch.where(cols, ar_w, w).amin(dim=1), torch.where(cols, ar_w, -1).amax(dim=1),
    ], dim=1).tolist() if n else []
    # Objects with the same crop (e.g. the positive cells of one ground-truth box) run together.
    groups: dict[tuple[int, int, int, int], list[int]] = {}
    for i, (ya, yb, xa, xb) in enumerate(bounds):
        if yb < 0:  # empty box
            continue
        # Crop origins are multiples of the colouring period, so the colour classes of the
        # mean-field "colored" schedule stay the same as on the whole image.
        y0, y1 = max(0, ya - r) // period * period, min(h, yb + 1 + r)
        x0, x1 = max(0, xa - r) // period * period, min(w, xb + 1 + r)
        groups.setdefault((y0, y1, x0, x1), []).append(i)
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
            y = _crf(probs[idx][crop], box_masks[idx][crop], image_q[crop], mode=mode,
                     p=params, cross_term=None if cross_term is None else cross_term[idx][crop],
                     kernel=kernel[crop])
            out[idx, y0:y1, x0:x1] = y
    return out


_BATCH_CROP_ELEMS = 1 << 25  # per-object kernels of one batched CRF call (128 MiB in fp32)


def _pack_crops(
    items: list[tuple[tuple[int, int, int, int], list[int]]], k2: int
) -> list[list[tuple[tuple[int, int, int, int], list[int]]]]:
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


def _per_box_batched(
    out: Tensor,
    groups: dict[tuple[int, int, int, int], list[int]],
    probs: Tensor,
    box_masks: Tensor,
    kernel: Tensor,
    *,
    mode: str,
    params: CRFParams,
    cross_term: Tensor | None,
) -> None:
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
    # fill_holes (in _crf) sees the padding as background joined to each crop's far edges;
    # fill_ortho stays within each mask's bounding box, inside the crop
    y = _crf(p_b, m_b, None, mode=mode, p=params, cross_term=c_b, kernel=k_b)
    for idx, sl, y0, y1, x0, x1 in slots:
        out[idx, y0:y1, x0:x1] = y[sl, : y1 - y0, : x1 - x0]
