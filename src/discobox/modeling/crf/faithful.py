"""The official ``MeanField`` CRF teacher, arithmetic reproduced literally (docs/method.md §4.3).

Despite its name it is a hard, colour-weighted majority vote on binarised labels (§4.3
"Interpretation"), which the cross-image term ``G`` perturbs (§5.7): :func:`color_kernel` is its
pairwise kernel, :func:`faithful_crf` its ``forward``. All fp32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .params import CRFParams
from .window import CHUNK_ELEMS, full_window_sum, neighbours, offsets, shifted, vectorized_default

_DEFAULT = CRFParams()


def color_kernel(
    image_q: Tensor, *, params: CRFParams = _DEFAULT, vectorized: bool | None = None
) -> Tensor:
    """Official pairwise kernel (docs/method.md §4.3).

    ``K_j(p) = alpha0 * exp(-||I(p+d_j) - I(p)||^2 / (2 theta0^2) - ||d_j||^2 / (2 theta1^2))``
    over the ``kernel_size`` window, after adding 10 to every colour value; out-of-image
    neighbours are zero-padded, so they get weight ~0 (their distance to the shifted colour is
    ~300). The centre term (``d = 0``) is included and equals ``alpha0``.

    Args:
        image_q: ``float[3, h, w]`` normalised image at ¼ res (bilinear, ``align_corners=True``).
        params: the kernel's fields of :class:`CRFParams`.
        vectorized: one unfold instead of a loop over offsets (same values); default: off the
            CPU (:func:`~.window.vectorized_default`).

    Returns:
        ``float32[k*k, h, w]``, offsets in row-major order.
    """
    p = params
    img = image_q.float() + 10.0
    offs = offsets(p.kernel_size)
    spatial = [(dy * dy + dx * dx) / (2 * p.theta1**2) for dy, dx in offs]
    if vectorized is None:
        vectorized = vectorized_default(img)
    if vectorized:  # all offsets at once (few GPU launches)
        d2 = ((neighbours(img, p.kernel_size) - img[:, None]) ** 2).sum(dim=0)
        sp = torch.tensor(spatial, device=img.device).view(len(offs), 1, 1)
        return p.alpha0 * torch.exp(-d2 / (2 * p.theta0**2) - sp)
    out = []
    for nb, sp in zip(shifted(img, offs), spatial):
        d2 = ((nb - img) ** 2).sum(dim=0)
        out.append(p.alpha0 * torch.exp(-d2 / (2 * p.theta0**2) - sp))
    return torch.stack(out)


def faithful_crf(
    probs: Tensor,
    box_masks: Tensor,
    kernel: Tensor,
    *,
    params: CRFParams = _DEFAULT,
    cross_term: Tensor | None = None,
) -> Tensor:
    """The official ``MeanField.forward``, literally (docs/method.md §4.3 steps 1-3, §5.7).

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
        params: ``iters``, ``base``, ``gamma`` of :class:`CRFParams` (10, 0.1, 0.01 officially).
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
    chunk = max(1, CHUNK_ELEMS // max(1, 2 * k2 * h * w))
    if n > chunk:  # objects are independent: bound the unfolded windows' memory
        return torch.cat([
            faithful_crf(probs[s:s + chunk], m[s:s + chunk],
                         kernel[s:s + chunk] if per_object else kernel, params=params,
                         cross_term=None if cross_term is None else cross_term[s:s + chunk])
            for s in range(0, n, chunk)
        ])
    if per_object:  # one kernel per map of the [N * 2] (bg, fg) stack
        kernel = kernel.repeat_interleave(2, dim=0)
    hi = torch.tensor(1.0 - params.base, device=m.device)
    lo = torch.tensor(params.base, device=m.device)
    q_fg = torch.where(probs.float() * m > 0.5, hi, lo)
    for _ in range(params.iters):
        q = torch.stack([1.0 - q_fg, q_fg], dim=1)  # [N, 2, h, w]: bg, fg
        a = full_window_sum(kernel, -torch.log(q).view(2 * n, h, w), kernel_size)
        f = torch.exp(-a.view(n, 2, h, w))
        if cross_term is not None:
            f = f + params.gamma * cross_term.float()
        f = torch.stack([f[:, 0], f[:, 1] * m], dim=1) + 1e-6
        f = f / f.sum(dim=1, keepdim=True)
        q_fg = torch.where(f[:, 1] > 0.5, hi, lo)
    return (q_fg > 0.5).float()
