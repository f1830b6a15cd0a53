"""A true mean-field CRF with soft marginals: the ``crf.mode=meanfield`` teacher (ours).

Unary ``-log`` of the clamped input probabilities, foreground impossible outside the box, a
local-window Potts model with a bilateral (colour) and a spatial Gaussian kernel, fully parallel
updates (Krähenbühl). :func:`energy` is the variational free energy these updates descend; the
tests check the parallel sweeps against a block-coordinate (colored) schedule that provably
never increases it (docs/method.md §4.3, BENCHMARKS.md "Mean-field tuning"). All fp32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .params import CRFParams
from .window import (
    CHUNK_ELEMS,
    full_window_sum,
    neighbours,
    offsets,
    shifted,
    vectorized_default,
    window_sum,
)

_DEFAULT = CRFParams()


def meanfield_kernel(
    image_q: Tensor, *, params: CRFParams = _DEFAULT, vectorized: bool | None = None
) -> Tensor:
    """Symmetric pairwise weights ``k(p, p + d_j)`` of the mean-field CRF.

    ``k = w_color * exp(-||I_p - I_q||^2 / (2 theta_color^2))
    + w_spatial * exp(-||d||^2 / (2 theta_spatial^2))`` over the ``mf_kernel_size`` window with
    ``mf_dilation``; 0 for the centre and for neighbours outside the image (so
    ``k(p, q) = k(q, p)``).

    Args:
        image_q: ``float[3, h, w]`` image at mask resolution (normalised units).
        params: the kernel's fields of :class:`CRFParams`.
        vectorized: one unfold instead of a loop over offsets (same values); default: off the
            CPU (:func:`~.window.vectorized_default`).

    Returns:
        ``float32[k*k, h, w]``, offsets as :func:`~.window.offsets`.
    """
    p = params
    ks, dil = p.mf_kernel_size, p.mf_dilation
    img = image_q.float()
    c, h, w = img.shape
    offs = offsets(ks, dil)
    spa = [p.w_spatial * math.exp(-(dy * dy + dx * dx) / (2 * p.theta_spatial**2))
           for dy, dx in offs]
    if vectorized is None:
        vectorized = vectorized_default(img)
    if vectorized:  # all offsets at once (few GPU launches)
        k2 = len(offs)
        nb = neighbours(img, ks, dil)
        inside = neighbours(torch.ones((1, h, w), device=img.device), ks, dil)[0]
        d2 = ((nb - img[:, None]) ** 2).sum(dim=0)
        spa_t = torch.tensor(spa, device=img.device).view(k2, 1, 1)
        out = (p.w_color * torch.exp(-d2 / (2 * p.theta_color**2)) + spa_t) * inside
        out[k2 // 2] = 0.0  # the centre is no neighbour
        return out
    inside = shifted(torch.ones((1, h, w), device=img.device), offs)
    planes = []
    for (dy, dx), nb, ok, sp in zip(offs, shifted(img, offs), inside, spa):
        if dy == 0 and dx == 0:
            planes.append(torch.zeros((h, w), device=img.device))
            continue
        d2 = ((nb - img) ** 2).sum(dim=0)
        planes.append((p.w_color * torch.exp(-d2 / (2 * p.theta_color**2)) + sp) * ok[0])
    return torch.stack(planes)


def unary_logit(probs: Tensor, params: CRFParams, cross_term: Tensor | None) -> Tensor:
    """``U_bg - U_fg``: logit of ``probs`` clamped to ``[prob_clamp, 1 - prob_clamp]``, plus
    ``cross_weight * (G_fg - G_bg)`` with the cross-image term ``G: [N, 2, h, w]``.
    ``float32[N, h, w]``."""
    p = probs.float().clamp(params.prob_clamp, 1.0 - params.prob_clamp)
    logit = torch.log(p) - torch.log1p(-p)
    if cross_term is not None:
        g = cross_term.float()
        logit = logit + params.cross_weight * (g[:, 1] - g[:, 0])
    return logit


def meanfield_crf(
    probs: Tensor,
    box_masks: Tensor,
    image_q: Tensor | None,
    *,
    params: CRFParams = _DEFAULT,
    cross_term: Tensor | None = None,
    kernel: Tensor | None = None,
) -> Tensor:
    """Mean-field inference for a binary Potts CRF per object; returns soft marginals.

    Unary ``U_fg = -log p``, ``U_bg = -log(1 - p)`` with ``p`` = ``probs`` clamped to
    ``[prob_clamp, 1 - prob_clamp]``; ``U_fg = +inf`` outside the box. Pairwise Potts cost
    ``k(p, q) * 1[y_p != y_q]`` with :func:`meanfield_kernel`. ``params.iters`` parallel sweeps
    of ``Q_fg = M * sigmoid(logit(p) + sum_q k(p, q) (2 Q_fg(q) - 1))``, the binary form of
    ``Q_l(p) = softmax_l(-U_l(p) - sum_q k(p, q) Q_{not l}(q))`` (docs/method.md §4.3).

    Args:
        probs: ``float[N, h, w]`` initial foreground probabilities ((T+S)/2, §4.4).
        box_masks: ``float[N, h, w]`` ¼-res box masks ``M``.
        image_q: ``float[3, h, w]`` the objects' image at mask resolution (unread, may be
            ``None``, when ``kernel`` is given).
        params: :class:`CRFParams`; ``iters=0`` returns the initial ``Q`` (``sigmoid`` of the
            unary inside the box). ``hard`` is not applied here.
        cross_term: optional ``float[N, 2, h, w]`` (bg, fg) evidence ``G``, added to the unary
            (:func:`unary_logit`, docs/method.md §5.7).
        kernel: optional precomputed :func:`meanfield_kernel` of ``image_q``: ``float[k*k, h,
            w]`` (e.g. a crop of the whole image's kernel) or one per object (``float[N, k*k,
            h, w]``, objects of several crops batched).

    Returns:
        ``float32[N, h, w]`` marginals ``Q_fg`` (0 outside the box).
    """
    m = box_masks.float()
    if kernel is None:
        kernel = meanfield_kernel(image_q, params=params)
    unary = unary_logit(probs, params, cross_term)
    q = torch.sigmoid(unary) * m
    ks, dil = params.mf_kernel_size, params.mf_dilation
    h, w = q.shape[-2:]
    # Objects in chunks: the unfolded windows hold N * k^2 * h * w values per sweep.
    chunk = max(1, CHUNK_ELEMS // max(1, ks**2 * h * w))
    for _ in range(params.iters):
        for s in range(0, q.shape[0], chunk):
            sl = slice(s, s + chunk)
            kern = kernel[sl] if kernel.dim() == 4 else kernel
            field = full_window_sum(kern, 2.0 * q[sl] - 1.0, ks, dil)
            q[sl] = torch.sigmoid(unary[sl] + field) * m[sl]
    return q


def energy(
    q_fg: Tensor,
    probs: Tensor,
    box_masks: Tensor,
    image_q: Tensor,
    *,
    params: CRFParams = _DEFAULT,
    cross_term: Tensor | None = None,
) -> Tensor:
    """Variational free energy of :func:`meanfield_crf`'s model (= KL(Q || P) up to log Z).

    ``F(Q) = sum_p sum_l Q_l U_l + 1/2 sum_p sum_q k(p, q) sum_{l != l'} Q_l(p) Q_l'(q)
    + sum_p sum_l Q_l log Q_l``; outside the box ``Q_fg = 0`` and its (infinite) unary is
    skipped. ``q_fg``: ``float[N, h, w]`` marginals; other arguments as :func:`meanfield_crf`.

    Returns:
        ``float32[N]`` one energy per object.
    """
    m = box_masks.float()
    q = q_fg.float() * m
    kernel = meanfield_kernel(image_q, params=params)
    offs = offsets(params.mf_kernel_size, params.mf_dilation)
    p = probs.float().clamp(params.prob_clamp, 1.0 - params.prob_clamp)
    u_fg = -torch.log(p)
    u_bg = -torch.log1p(-p)
    if cross_term is not None:
        # Same logit shift as unary_logit, put entirely on the background unary.
        g = cross_term.float()
        u_bg = u_bg + params.cross_weight * (g[:, 1] - g[:, 0])
    qb = 1.0 - q
    unary = torch.where(m > 0, q * u_fg, torch.zeros_like(q)) + qb * u_bg
    # 1/2 sum_p sum_j k_j(p) [Q_fg(p) Q_bg(p + d_j) + Q_bg(p) Q_fg(p + d_j)]
    pair = 0.5 * (q * window_sum(kernel, qb, offs) + qb * window_sum(kernel, q, offs))
    entropy = torch.xlogy(q, q) + torch.xlogy(qb, qb)
    return (unary + pair + entropy).flatten(1).sum(dim=1)
