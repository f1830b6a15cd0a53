"""Dense matching of whole images with a trained network (docs/method.md §8.4, SCOT protocol).

Used by ``discobox eval-corr`` and ``discobox correspond``:

1. :func:`image_features`: resize so the longer side is ``img_side`` (bilinear, SCOT: 350), run
   the backbone + FPN of our :class:`SOLOv2`, take FPN levels ``levels`` (0 = P2, stride 4;
   1 = P3, stride 8), L2-normalise each per location, upsample the coarser ones bilinearly
   (``align_corners=True``, hyperpixel style) to the finest and concatenate.
2. :func:`match_dense`: cosine similarity, then ``"sinkhorn"`` (entropic OT on ``1 - max(cos,
   0)``, uniform marginals, ``PI <- (n PI)^exp``; SCOT: ``eps=0.05``, 1 iteration,
   ``exp=0.5``) or ``"cosine"`` (``max(cos, 0)``), optionally followed by regularised Hough
   voting (:func:`~discobox.modeling.correspondence.hough_voting`, 8192 cells, 7x7 Gaussian).
3. :func:`transfer_keypoints`: SCOT's ``predict_kps``: every source cell whose receptive box
   (side ``rf_size``) covers the keypoint votes ``trg_centre[argmax] + (kp - src_centre)``;
   the prediction is their mean (nearest cell if none covers it).

Differences to SCOT's evaluation: features are our FPN levels rather than ResNet-101 bottleneck
outputs (ids 2, 22-29), so absolute PCK is not comparable with the README number unless a
backbone-hyperpixel feature function is plugged in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .solver import hough_cell_size, hough_voting, sinkhorn

MATCH_SOLVERS = ("sinkhorn", "cosine")


@dataclass
class DenseFeatures:
    """Features of one image: ``feat float[C, h, w]`` (unit norm per location), the cell
    ``stride`` in resized pixels, the resize ``scale`` ``(sx, sy)`` (resized = orig * scale) and
    the resized ``size`` ``(h, w)``."""

    feat: Tensor
    stride: int
    scale: tuple[float, float]
    size: tuple[int, int]

    def centers(self) -> Tensor:
        """``float[h*w, 2]`` (x, y) cell centres in *resized* pixels, row-major."""
        h, w = self.feat.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        xy = torch.stack([xs.flatten(), ys.flatten()], 1).float()
        return ((xy + 0.5) * self.stride - 0.5).to(self.feat.device)


def resize_longer(image: np.ndarray, img_side: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Resize ``uint8[H, W, 3]`` so the longer side is ``img_side``; returns ``(image, (sx,
    sy))`` with the exact per-axis factors."""
    h, w = image.shape[:2]
    r = img_side / max(h, w)
    nh, nw = max(1, int(round(h * r))), max(1, int(round(w * r)))
    out = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return out, (nw / w, nh / h)


def hyperpixel(levels: Sequence[Tensor]) -> Tensor:
    """L2-normalise each ``float[C_l, h_l, w_l]`` per location, upsample to the first (finest)
    level's size (bilinear, ``align_corners=True``), concatenate and renormalise:
    ``float[sum C_l, h_0, w_0]``."""
    h, w = levels[0].shape[-2:]
    out = []
    for f in levels:
        f = F.normalize(f.float(), dim=0)
        if f.shape[-2:] != (h, w):
            f = F.interpolate(f[None], size=(h, w), mode="bilinear", align_corners=True)[0]
        out.append(f)
    return F.normalize(torch.cat(out), dim=0)


@torch.no_grad()
def image_features(
    model: torch.nn.Module, image: np.ndarray, *, img_side: int = 350,
    levels: Sequence[int] = (0, 1), device: torch.device | str | None = None,
) -> DenseFeatures:
    """Hyperpixel features of an RGB ``uint8[H, W, 3]`` image from a :class:`SOLOv2`'s
    backbone + FPN (``levels`` index P2, P3, ...; strides ``4 * 2**l``)."""
    if device is None:
        device = next(model.parameters()).device
    resized, scale = resize_longer(image, img_side)
    h, w = resized.shape[:2]
    div = getattr(model, "size_divisor", 32)
    hp, wp = -(-h // div) * div, -(-w // div) * div
    x = torch.zeros((1, 3, hp, wp), device=device)
    x[0, :, :h, :w] = torch.from_numpy(np.ascontiguousarray(resized)).to(device).permute(2, 0, 1)
    x = model.normalize(x, [(h, w)])
    feats = model.neck(model.backbone(x))
    lv = sorted(levels)
    stride = 4 * 2 ** lv[0]
    hc, wc = -(-h // stride), -(-w // stride)
    maps = []
    for i in lv:
        s = 4 * 2**i
        maps.append(feats[i][0, :, : -(-h // s), : -(-w // s)])
    feat = hyperpixel(maps)[:, :hc, :wc]
    return DenseFeatures(feat=feat, stride=stride, scale=scale, size=(h, w))


def match_dense(
    src: Tensor, trg: Tensor, *, src_xy: Tensor, trg_xy: Tensor, src_size: tuple[float, float],
    trg_size: tuple[float, float], solver: str = "sinkhorn", eps: float = 0.05,
    iters: int = 1, exp: float = 0.5, hough: bool = True, ncells: int = 8192,
    filter_size: int = 7, min_cell: float = 0.0, src_weights: Tensor | None = None,
    trg_weights: Tensor | None = None,
) -> Tensor:
    """Confidence of every (source cell, target cell) pair.

    Args:
        src: ``float[N, C]``; trg: ``float[M, C]`` (any scale; cosine is taken).
        src_xy, trg_xy: ``float[N, 2]``, ``float[M, 2]`` positions (x, y) for Hough voting.
        src_size, trg_size: ``(w, h)`` extents of the positions.
        solver: ``"sinkhorn"`` or ``"cosine"``.
        eps, iters, exp: Sinkhorn settings (SCOT PF-PASCAL: 0.05, 1, 0.5).
        hough, ncells, filter_size: regularised Hough matching (SCOT: on, 8192, 7).
        min_cell: lower bound of the Hough cell size. Cells finer than the feature stride alias
            (offsets are multiples of the stride, so bins are unevenly occupied and the Gaussian
            favours some offsets); :func:`match_features` passes the stride. SCOT's 350 px images
            give 7.7 px cells for a 4 px stride, so the bound does not change its setting.
        src_weights, trg_weights: optional OT marginals (normalised inside).

    Returns:
        ``float32[N, M]``.
    """
    if solver not in MATCH_SOLVERS:
        raise ValueError(f"solver must be one of {MATCH_SOLVERS}, got {solver!r}")
    sim = F.normalize(src.float(), dim=1) @ F.normalize(trg.float(), dim=1).t()
    sim = sim.clamp(min=0)
    if solver == "sinkhorn":
        mu = None if src_weights is None else src_weights / src_weights.sum()
        nu = None if trg_weights is None else trg_weights / trg_weights.sum()
        votes = sinkhorn(1.0 - sim, eps=eps, iters=iters, mu=mu, nu=nu)
        votes = (votes * src.shape[0]).clamp(min=0).pow(exp)
    else:
        votes = sim
    if hough:
        votes = hough_voting(votes, src_xy, trg_xy, src_size=src_size, trg_size=trg_size,
                             cell_size=max(hough_cell_size(src_size, trg_size, ncells),
                                           min_cell),
                             filter_size=filter_size)
    return votes


def transfer_keypoints(kps: Tensor, conf: Tensor, src_xy: Tensor, trg_xy: Tensor,
                       rf_size: float) -> Tensor:
    """SCOT ``predict_kps`` (§8.4 "Keypoint transfer"): ``float[K, 2]`` source keypoints ->
    ``float[K, 2]`` target predictions, given ``conf float[N, M]`` and cell centres."""
    best = conf.argmax(1)  # [N]
    k = kps.float()
    d = k[:, None, :] - src_xy[None].float()  # [K, N, 2]
    cover = (d.abs() <= rf_size / 2).all(-1)  # [K, N]
    nearest = d.norm(dim=-1).argmin(1)
    none = ~cover.any(1)
    cover[none, nearest[none]] = True
    pred = trg_xy[best].float()[None] + d  # [K, N, 2]
    w = cover.float()[..., None]
    return (pred * w).sum(1) / w.sum(1)


@dataclass
class PairMatch:
    """Dense match of two images: ``conf float[N, M]``; centres in resized pixels."""

    conf: Tensor
    src: DenseFeatures
    trg: DenseFeatures

    def transfer(self, kps: np.ndarray, rf_size: float | None = None) -> np.ndarray:
        """Original-frame source keypoints ``[K, 2]`` -> original-frame target predictions."""
        rf = float(rf_size) if rf_size is not None else 7.0 * self.src.stride - 1
        sx, sy = self.src.scale
        tx, ty = self.trg.scale
        k = torch.as_tensor(np.asarray(kps, dtype=np.float32)) * torch.tensor([sx, sy])
        k = k.to(self.conf.device)
        pred = transfer_keypoints(k, self.conf, self.src.centers(), self.trg.centers(), rf)
        return (pred.cpu() / torch.tensor([tx, ty])).double().numpy()


def match_features(
    src: DenseFeatures, trg: DenseFeatures, **kwargs,
) -> PairMatch:
    """:func:`match_dense` on two :class:`DenseFeatures` (keyword arguments passed through;
    ``min_cell`` defaults to the larger feature stride)."""
    kwargs.setdefault("min_cell", float(max(src.stride, trg.stride)))
    a = src.feat.flatten(1).t()
    b = trg.feat.flatten(1).t()
    conf = match_dense(a, b, src_xy=src.centers(), trg_xy=trg.centers(),
                       src_size=(src.size[1], src.size[0]), trg_size=(trg.size[1], trg.size[0]),
                       **kwargs)
    return PairMatch(conf=conf, src=src, trg=trg)
