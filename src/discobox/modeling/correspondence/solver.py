"""Dense correspondence between object crops: solvers and contrastive losses (§5).

Pure functions on tensors; the per-batch wiring (target assignment, RoI crops, object bank) is
:class:`discobox.modeling.correspondence.branch.CorrespondenceBranch`.

Solvers (docs/method.md §5.4), both returning ``(Cu, T)`` for a query crop against ``K`` retrieved
crops on an ``s x s`` grid (``n = s*s`` cells, s = 7):

- ``"faithful"`` (:func:`solve_faithful`): what the official code runs. Cosine affinity ``Cu``,
  a Chebyshev locality mask on the initial matrix, then 10 rounds of translation-consistent 4-D
  box smoothing (:func:`pass_message`) with row normalisation. No optimal transport (§12).
- ``"sinkhorn"`` (:func:`solve_sinkhorn`): what the paper and the configs describe (and SCOT
  runs at test time, §8.4): entropic OT on ``1 - max(cos, 0)`` with uniform marginals
  (:func:`sinkhorn`, log domain), ``PI <- (n PI)^exp``, then regularised Hough voting over
  offsets (:func:`hough_voting`).

Losses (§5.5): :func:`faithful_corr_loss` is the official cross entropy applied to
*softmaxed* cosines (a double softmax, temperature 1, negatives = the other cells of the same
retrieved object); :func:`infonce_corr_loss` is a proper InfoNCE with temperature and optional
negatives from other objects.

Cross-image evidence from the solvers' transport (§5.6) is :mod:`.evidence`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

SOLVERS = ("faithful", "sinkhorn")
CORR_LOSSES = ("faithful", "infonce")


def grid_size(n: int) -> int:
    s = int(round(math.sqrt(n)))
    if s * s != n:
        raise ValueError(f"{n} cells do not form a square grid")
    return s


def cosine_affinity(f0: Tensor, f1: Tensor, eps: float = 1e-4) -> Tensor:
    """``Cu[k, i, j] = <f0_i / (|f0_i| + eps), f1_kj / (|f1_kj| + eps)>`` in fp32 (§5.4 step 2).

    Args:
        f0: ``float[C, s, s]`` query feature (gradient kept).
        f1: ``float[K, C, s, s]`` retrieved features.

    Returns:
        ``float32[K, n, n]`` with ``n = s*s``.
    """
    a = f0.float().flatten(1).t()
    a = a / (a.norm(dim=1, keepdim=True) + eps)
    b = f1.float().flatten(2).transpose(1, 2)
    b = b / (b.norm(dim=2, keepdim=True) + eps)
    return torch.einsum("ic,kjc->kij", a, b)


def locality_mask(
    size: int = 7, radius: int = 4, device: torch.device | str | None = None
) -> Tensor:
    """``float[n, n]``: 1 iff cells ``i`` and ``j`` of the ``size x size`` grid are within
    Chebyshev distance ``radius`` (``dist_kernel = 2*radius + 1 = 9``, §5.4 step 3)."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    d = torch.maximum((ys[:, None] - ys[None]).abs(), (xs[:, None] - xs[None]).abs())
    return (d <= radius).float().to(device)


def pass_message(v: Tensor) -> Tensor:
    """Translation-consistent 4-D box filter (``pass_message``, H:376-394, §5.4 step 5).

    ``out[p, q] = mean over d in {-1,0,1}^2 of v[p - d, q - d]``, averaging only the terms where
    both ``p - d`` and ``q - d`` lie on the grid.

    Args:
        v: ``float[K, n, n]`` over an ``s x s`` source and target grid.

    Returns:
        ``float[K, n, n]``.
    """
    k, n, _ = v.shape
    s = grid_size(n)
    v5 = v.reshape(k, s, s, s, s)
    vp = F.pad(v5, (1, 1, 1, 1, 1, 1, 1, 1))
    ones = F.pad(torch.ones_like(v5[:1]), (1, 1, 1, 1, 1, 1, 1, 1))
    total = torch.zeros_like(v5)
    count = torch.zeros_like(v5[:1])
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            ys, xs = slice(1 - dy, 1 - dy + s), slice(1 - dx, 1 - dx + s)
            total = total + vp[:, ys, xs, ys, xs]
            count = count + ones[:, ys, xs, ys, xs]
    return (total / count).reshape(k, n, n)


def solve_faithful(
    f0: Tensor, f1: Tensor, *, num_iters: int = 10, num_smooth_iters: int = 1,
    dist_kernel: int = 9,
) -> tuple[Tensor, Tensor]:
    """The official ``SemanticCorrSolver.solve`` (docs/method.md §5.4).

    ``C <- Cu * D`` (no grad); ``num_iters`` times: ``V = smooth(C)``, ``V <- V / (sum_j V +
    1e-4)``, ``C <- Cu + V``, ``C <- C / (sum_j C + 1e-4)``. Returns ``(Cu, T = C)``; ``T`` keeps
    a gradient path through ``Cu``.

    Args:
        f0: ``float[C, s, s]`` query (student) feature; f1: ``float[K, C, s, s]`` retrieved.
        num_iters, num_smooth_iters, dist_kernel: 10, 1, 9 (``corr_num_iter``,
            ``corr_num_smooth_iter``, ``dist_kernel``).

    Returns:
        ``(Cu, T)``, both ``float32[K, n, n]``.
    """
    cu = cosine_affinity(f0, f1)
    s = f0.shape[-1]
    with torch.no_grad():
        c = cu * locality_mask(s, dist_kernel // 2, device=cu.device)
    for _ in range(num_iters):
        v = c
        for _ in range(num_smooth_iters):
            v = pass_message(v)
        v = v / (v.sum(-1, keepdim=True) + 1e-4)
        c = cu + v
        c = c / (c.sum(-1, keepdim=True) + 1e-4)
    return cu, c


def sinkhorn(
    cost: Tensor, *, eps: float = 0.05, mu: Tensor | None = None, nu: Tensor | None = None,
    iters: int = 10, tol: float = 0.0,
) -> Tensor:
    """Entropic optimal transport by Sinkhorn iterations, in the log domain (no overflow).

    Same update order as SCOT's ``perform_sinkhorn`` (``a = 1/n``; ``b = nu / K^T a``;
    ``a = mu / K b``), so after any number of iterations the row marginals equal ``mu``
    exactly and the column marginals converge to ``nu``. ``iters=1`` is SCOT's setting.

    Args:
        cost: ``float[..., N, M]``.
        eps: entropic regularisation (0.05).
        mu: ``float[..., N]`` row marginals (uniform ``1/N`` by default); nu: ``[..., M]``.
        iters: iterations; tol: stop early when the column-marginal L1 error is below it.

    Returns:
        ``float32[..., N, M]`` transport plan ``PI``.
    """
    c = cost.float()
    n, m = c.shape[-2:]
    log_k = -c / eps
    log_mu = (torch.full(c.shape[:-1], -math.log(n), device=c.device) if mu is None
              else mu.float().clamp(min=1e-30).log())
    log_nu = (torch.full((*c.shape[:-2], m), -math.log(m), device=c.device) if nu is None
              else nu.float().clamp(min=1e-30).log())
    log_a = torch.full(c.shape[:-1], -math.log(n), device=c.device)
    log_b = torch.zeros_like(log_nu)
    for _ in range(iters):
        log_b = log_nu - torch.logsumexp(log_k + log_a[..., :, None], dim=-2)
        log_a = log_mu - torch.logsumexp(log_k + log_b[..., None, :], dim=-1)
        if tol > 0:
            col = torch.logsumexp(log_k + log_a[..., :, None], dim=-2) + log_b
            if (col.exp() - log_nu.exp()).abs().sum(-1).max() < tol:
                break
    return (log_a[..., :, None] + log_k + log_b[..., None, :]).exp()


def gaussian_filter(size: int) -> Tensor:
    """``float[size, size]`` normalised Gaussian with sigma ``size / 2 / 2.354`` (SCOT)."""
    sig = size / 2 / 2.354
    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(r[None] ** 2 + r[:, None] ** 2) / (2 * sig * sig))
    return g / g.sum()


def hough_cell_size(src_size: tuple[float, float], trg_size: tuple[float, float],
                    ncells: int = 8192) -> float:
    """SCOT's Hough-space cell size: ``sqrt((W_s + W_t)(H_s + H_t) / ncells)``; sizes ``(w, h)``."""
    return math.sqrt((src_size[0] + trg_size[0]) * (src_size[1] + trg_size[1]) / ncells)


def hough_voting(
    votes: Tensor, src_xy: Tensor, trg_xy: Tensor, *, src_size: tuple[float, float],
    trg_size: tuple[float, float], cell_size: float, filter_size: int = 7,
) -> Tensor:
    """Regularised Hough matching (SCOT ``rhm``, docs/method.md §8.4 step 5).

    Every pair ``(i, j)`` votes with weight ``votes[i, j]`` for its offset bin
    ``floor((src_w - x_i + x'_j) / cell, (src_h - y_i + y'_j) / cell)``; the Hough space is
    summed over all pairs, smoothed with a ``filter_size`` Gaussian, and each vote is multiplied
    by the smoothed count of its bin: ``conf[i, j] = votes[i, j] * H[bin(i, j)]``.

    Args:
        votes: ``float[..., N, M]`` non-negative (e.g. a transport plan).
        src_xy: ``float[N, 2]`` source positions (x, y); trg_xy: ``float[M, 2]``.
        src_size, trg_size: ``(w, h)`` extents of the two position sets.
        cell_size: Hough bin size in position units (:func:`hough_cell_size`).
        filter_size: Gaussian smoothing size (7 in SCOT, ``gaussian_filter_size=3`` in the
            DiscoBox config for 7x7 crops).

    Returns:
        ``float32[..., N, M]`` confidences.
    """
    n, m = votes.shape[-2:]
    nbx = int((src_size[0] + trg_size[0]) / cell_size) + 1
    nby = int((src_size[1] + trg_size[1]) / cell_size) + 1
    sx, sy = src_xy[:, 0].float(), src_xy[:, 1].float()
    tx, ty = trg_xy[:, 0].float(), trg_xy[:, 1].float()
    bx = ((src_size[0] - sx)[:, None] + tx[None]).div(cell_size).floor().long().clamp(0, nbx - 1)
    by = ((src_size[1] - sy)[:, None] + ty[None]).div(cell_size).floor().long().clamp(0, nby - 1)
    bins = (by * nbx + bx).flatten()
    del bx, by
    v = votes.float().reshape(-1, n * m)
    idx = bins.expand(v.shape[0], -1)
    space = torch.zeros(v.shape[0], nby * nbx, device=v.device).scatter_add_(1, idx, v)
    g = gaussian_filter(filter_size).to(v.device)[None, None]
    space = F.conv2d(space.view(-1, 1, nby, nbx), g, padding=filter_size // 2)
    conf = v * space.view(v.shape[0], -1).gather(1, idx)
    return conf.view(votes.shape)


def grid_centers(size: int, device: torch.device | str | None = None) -> Tensor:
    """``float[size*size, 2]`` (x, y) cell centres of a ``size x size`` grid, row-major."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], 1).float().add(0.5).to(device)


def solve_sinkhorn(
    f0: Tensor, f1: Tensor, *, eps: float = 0.05, iters: int = 10, exp: float = 0.5,
    hough: bool = True, filter_size: int = 3,
) -> tuple[Tensor, Tensor]:
    """OT + Hough solver (paper / SCOT style) on crop grids; returns ``(Cu, T)`` like
    :func:`solve_faithful`. ``T`` is the row-normalised (Hough-weighted) plan, detached.

    Args:
        f0: ``float[C, s, s]``; f1: ``float[K, C, s, s]``.
        eps, iters: Sinkhorn regularisation and iterations (``corr_eps`` = 0.05).
        exp: ``PI <- (n PI)^exp`` (SCOT ``exp2``: 0.5 for PF-PASCAL/WILLOW, 1.0 for SPair).
        hough: multiply by the smoothed offset votes on the crop grid (one bin per cell).
        filter_size: Gaussian size of the Hough smoothing (``gaussian_filter_size`` = 3).
    """
    cu = cosine_affinity(f0, f1)
    s = f0.shape[-1]
    n = s * s
    with torch.no_grad():
        pi = sinkhorn(1.0 - cu.detach().clamp(min=0), eps=eps, iters=iters)
        pi = (n * pi).clamp(min=0).pow(exp)
        if hough:
            xy = grid_centers(s, device=cu.device)
            pi = hough_voting(pi, xy, xy, src_size=(s, s), trg_size=(s, s), cell_size=1.0,
                              filter_size=filter_size)
        t = pi / (pi.sum(-1, keepdim=True) + 1e-12)
    return cu, t


def faithful_corr_loss(cu: Tensor, t: Tensor) -> Tensor:
    """The official "InfoNCE" term of one query (docs/method.md §5.5).

    Targets ``a[k, i] = argmax_j T[k, i, j]``; logits are ``softmax_j(Cu[k, i, :])`` (temperature
    1) and ``nn.CrossEntropyLoss`` applies log-softmax again: ``CE(softmax(Cu), a)`` averaged over
    the ``K*n`` rows. Values stay near ``log n`` (~3.89 for n = 49).

    Args:
        cu, t: ``float[K, n, n]``.

    Returns:
        ``float32[]``.
    """
    target = t.detach().argmax(-1)
    p = cu.float().softmax(-1)
    return F.cross_entropy(p.reshape(-1, p.shape[-1]), target.reshape(-1))


def infonce_corr_loss(
    f0: Tensor, f1: Tensor, t: Tensor, *, temperature: float = 0.07,
    negatives: Tensor | None = None, weights: Tensor | None = None,
) -> Tensor:
    """InfoNCE on the solver's assignment (a corrected variant of §5.5).

    For every retrieved object ``k`` and query cell ``i`` the positive is the assigned cell
    ``a[k, i] = argmax_j T[k, i, j]``; the candidates are the ``n`` cells of object ``k`` plus
    ``negatives`` (cells of *other* objects, e.g. other classes in the batch), at temperature
    ``temperature``: ``-log softmax(<f0_i, c> / tau)[a]``.

    Args:
        f0: ``float[C, s, s]`` query (gradient kept); f1: ``float[K, C, s, s]``;
        t: ``float[K, n, n]`` transport / correspondence.
        negatives: optional ``float[M, C]`` extra negative features.
        weights: optional ``float[n]`` per query cell (e.g. its foreground probability); the
            loss is the weighted mean over rows (uniform by default).

    Returns:
        ``float32[]``.
    """
    a = F.normalize(f0.float().flatten(1).t(), dim=1)  # [n, C]
    b = F.normalize(f1.float().flatten(2).transpose(1, 2), dim=2)  # [K, n, C]
    k, n = b.shape[:2]
    logits = torch.einsum("ic,kjc->kij", a, b)
    if negatives is not None and negatives.numel():
        neg = F.normalize(negatives.float(), dim=1)
        logits = torch.cat([logits, (a @ neg.t())[None].expand(k, -1, -1)], dim=-1)
    target = t.detach().argmax(-1)
    loss = F.cross_entropy(logits.reshape(k * n, -1) / temperature, target.reshape(-1),
                           reduction="none").view(k, n)
    if weights is None:
        return loss.mean()
    w = weights.float().flatten()[None].expand(k, -1)
    return (loss * w).sum() / w.sum().clamp(min=1e-6)
