"""SOLOv2 test-time post-processing: points NMS, Matrix NMS, masks at original size (§7).

docs/method.md §2.5 item 7 (``points_nms``) and §7 steps 1-11 (``get_seg_single``, H:1704-1853).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ...structures import Instances
from ..crf.params import CRFParams, check_refine_mode
from ..crf.pseudo_labels import box_masks, crf_pseudo_labels
from .head import dynamic_mask_logits
from .outputs import HeadOutput


def points_nms(heat: Tensor, kernel: int = 2) -> Tensor:
    """SOLOv2's asymmetric local-maximum filter (docs/method.md §2.5 item 7).

    A cell is kept iff its score equals the max over the 2x2 window of itself and its up, left
    and up-left neighbours (max-pool k=2, stride 1, pad 1, last row/column cropped).

    Args:
        heat: ``float[B, C, S, S]`` scores (after sigmoid).

    Returns:
        ``float[B, C, S, S]``: ``heat`` where kept, 0 elsewhere.
    """
    if kernel != 2:
        raise ValueError("only kernel=2 is implemented (as in the official code)")
    hmax = F.max_pool2d(heat, kernel, stride=1, padding=1)[:, :, :-1, :-1]
    return heat * (hmax == heat).to(heat.dtype)


def matrix_nms(
    masks: Tensor,
    labels: Tensor,
    scores: Tensor,
    *,
    kernel: str = "gaussian",
    sigma: float = 2.0,
    sum_masks: Tensor | None = None,
) -> Tensor:
    """Matrix NMS (docs/method.md §7 step 8; official SOLOv2 ``matrix_nms``).

    Inputs must be sorted by descending score. With ``IoU[i, j]`` the mask IoU of ``i`` ranked
    above ``j`` and of the same class (0 otherwise), and ``comp_i = max_k IoU[k, i]``:
    gaussian ``decay_j = min_i exp(-sigma IoU_ij^2) / exp(-sigma comp_i^2)``, linear
    ``decay_j = min_i (1 - IoU_ij) / (1 - comp_i)``.

    Args:
        masks: ``bool[N, h, w]`` binary masks.
        labels: ``int64[N]`` classes.
        scores: ``float[N]`` scores, descending.
        kernel: ``"gaussian"`` or ``"linear"``.
        sigma: gaussian kernel parameter.
        sum_masks: optional precomputed ``float[N]`` mask areas.

    Returns:
        ``float[N]`` decayed scores ``scores * decay``.
    """
    n = labels.shape[0]
    if n == 0:
        return scores.new_zeros((0,))
    flat = masks.reshape(n, -1).float()
    if sum_masks is None:
        sum_masks = flat.sum(1)
    sum_masks = sum_masks.float()
    inter = flat @ flat.t()
    union = sum_masks[:, None] + sum_masks[None, :] - inter
    iou = (inter / union.clamp(min=1e-6)).triu(diagonal=1)
    same = (labels[:, None] == labels[None, :]).float().triu(diagonal=1)
    decay_iou = iou * same
    comp = decay_iou.max(0).values[:, None].expand(n, n)  # comp[i, j] = comp_i
    if kernel == "gaussian":
        ratio = torch.exp(-sigma * decay_iou**2) / torch.exp(-sigma * comp**2)
    elif kernel == "linear":
        ratio = (1 - decay_iou) / (1 - comp).clamp(min=1e-6)
    else:
        raise ValueError(f"unknown Matrix NMS kernel {kernel!r} (use 'gaussian' or 'linear')")
    return scores * ratio.min(0).values


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight boxes ``[x_min, y_min, x_max + 1, y_max + 1]`` of non-empty ``bool[N, H, W]`` masks.

    Returns ``float32[N, 4]`` (docs/method.md §7 step 11). Empty masks give ``[0, 0, 0, 0]``-like
    garbage; filter them first.
    """
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.float32, device=masks.device)
    cols = masks.any(1)  # [N, W]
    rows = masks.any(2)  # [N, H]
    x0 = cols.float().argmax(1)
    x1 = w - cols.flip(1).float().argmax(1)
    y0 = rows.float().argmax(1)
    y1 = h - rows.flip(1).float().argmax(1)
    return torch.stack((x0, y0, x1, y1), dim=1).float()


class SOLOv2PostProcessor:
    """Turns :class:`HeadOutput` into per-image :class:`Instances` (docs/method.md §7).

    Args:
        score_thr: category-score threshold (step 2).
        mask_thr: soft-mask binarisation threshold (steps 4 and 10).
        nms_pre: candidates kept before Matrix NMS (step 7).
        update_thr: decayed-score threshold (step 9).
        kernel: Matrix NMS kernel, ``"gaussian"`` or ``"linear"``.
        sigma: Matrix NMS gaussian sigma.
        max_per_img: detections kept per image (step 9).
        strides: per-level stride used for the minimum-area filter (step 5).
        chunk_size: masks upsampled to the original size at a time (memory bound).
        refine: ours, ``None`` (official) or a CRF mode (``"meanfield"``, ``"faithful"``):
            after step 9 each kept soft mask is refined by that CRF (§4.3, the teacher's CRF)
            inside its own box (the box of ``soft > mask_thr``, grown by ``refine_margin``
            1/4-res pixels), on the normalised input at 1/4 resolution, as the training
            teacher refines the student's masks. Scores are not changed.
        refine_params: the CRF's :class:`CRFParams` (config ``crf.*``).
        refine_margin: pixels (1/4 res) added on every side of the mask's box.
    """

    def __init__(
        self,
        *,
        score_thr: float = 0.1,
        mask_thr: float = 0.4,
        nms_pre: int = 500,
        update_thr: float = 0.05,
        kernel: str = "gaussian",
        sigma: float = 2.0,
        max_per_img: int = 100,
        strides: Sequence[int] = (8, 8, 16, 32, 32),
        chunk_size: int = 32,
        refine: str | None = None,
        refine_params: CRFParams | None = None,
        refine_margin: int = 1,
    ) -> None:
        if kernel not in ("gaussian", "linear"):
            raise ValueError(f"unknown Matrix NMS kernel {kernel!r} (use 'gaussian' or 'linear')")
        if int(refine_margin) < 0:
            raise ValueError(f"test.refine_margin must be >= 0, got {refine_margin}")
        self.refine = check_refine_mode(refine)
        self.refine_params = refine_params if refine_params is not None else CRFParams()
        self.refine_margin = int(refine_margin)
        self.score_thr = score_thr
        self.mask_thr = mask_thr
        self.nms_pre = nms_pre
        self.update_thr = update_thr
        self.kernel = kernel
        self.sigma = sigma
        self.max_per_img = max_per_img
        self.strides = tuple(strides)
        self.chunk_size = chunk_size

    @torch.no_grad()
    def __call__(
        self,
        out: HeadOutput,
        *,
        image_sizes: Sequence[tuple[int, int]],
        orig_sizes: Sequence[tuple[int, int]],
    ) -> list[Instances]:
        """Per image ``Instances(boxes, labels, scores, masks: bool[N, H0, W0])``, by score.

        Args:
            out: network outputs for a batch of ``B`` images.
            image_sizes: per image ``(h, w)`` of the resized image before padding.
            orig_sizes: per image ``(H0, W0)`` of the original image.
        """
        if len(self.strides) != out.num_levels:
            raise ValueError(f"{len(self.strides)} strides for {out.num_levels} levels")
        batch = out.mask_feat.shape[0]
        if len(image_sizes) != batch or len(orig_sizes) != batch:
            raise ValueError("image_sizes and orig_sizes need one entry per image")
        num_classes = out.cate_logits[0].shape[1]
        cate = torch.cat(
            [
                points_nms(c.float().sigmoid()).permute(0, 2, 3, 1).reshape(batch, -1, num_classes)
                for c in out.cate_logits
            ],
            dim=1,
        )  # [B, sum S^2, C]
        kernels = torch.cat(
            [k.float().flatten(2).transpose(1, 2) for k in out.kernels], dim=1
        )  # [B, sum S^2, E]
        strides = torch.cat(
            [
                torch.full((c.shape[-2] * c.shape[-1],), float(s), device=cate.device)
                for c, s in zip(out.cate_logits, self.strides)
            ]
        )
        image_q = out.quarter_images() if self.refine is not None else None
        return [
            self.single(
                cate[b],
                kernels[b],
                strides,
                out.mask_feat[b].float(),
                image_size=tuple(image_sizes[b]),
                orig_size=tuple(orig_sizes[b]),
                image_q=None if image_q is None else image_q[b],
            )
            for b in range(batch)
        ]

    def _empty(self, size: tuple[int, int], device: torch.device) -> Instances:
        return Instances(
            boxes=torch.zeros((0, 4), dtype=torch.float32, device=device),
            labels=torch.zeros((0,), dtype=torch.int64, device=device),
            scores=torch.zeros((0,), dtype=torch.float32, device=device),
            masks=torch.zeros((0, *size), dtype=torch.bool, device=device),
        )

    def single(
        self,
        cate: Tensor,
        kernels: Tensor,
        strides: Tensor,
        mask_feat: Tensor,
        *,
        image_size: tuple[int, int],
        orig_size: tuple[int, int],
        image_q: Tensor | None = None,
    ) -> Instances:
        """One image (§7 steps 2-11).

        Args:
            cate: ``float[M, C]`` point-NMS'd scores of all ``M = sum S_l^2`` cells.
            kernels: ``float[M, E]``.
            strides: ``float[M]`` the stride of each cell's level.
            mask_feat: ``float[E, h, w]``.
            image_size: ``(h_img, w_img)`` resized size before padding.
            orig_size: ``(H0, W0)``.
            image_q: ``float[3, h, w]`` the normalised input at 1/4 resolution; needed with
                ``refine``.
        """
        device = cate.device
        orig_size = (int(orig_size[0]), int(orig_size[1]))
        # 2. (cell, class) pairs above the score threshold
        cells, labels = torch.nonzero(cate > self.score_thr, as_tuple=True)
        if cells.numel() == 0:
            return self._empty(orig_size, device)
        scores = cate[cells, labels]
        # 4. soft masks at 1/4 resolution
        soft = dynamic_mask_logits(kernels[cells], mask_feat).sigmoid()
        binary = soft > self.mask_thr
        area = binary.sum((1, 2)).float()
        # 5. minimum area (in 1/4-res pixels) = the level stride
        keep = area > strides[cells]
        if not bool(keep.any()):
            return self._empty(orig_size, device)
        soft, binary, area, scores, labels = (
            soft[keep],
            binary[keep],
            area[keep],
            scores[keep],
            labels[keep],
        )
        # 6. maskness
        scores = scores * (soft * binary.float()).sum((1, 2)) / area
        # 7. top nms_pre by score
        order = torch.argsort(scores, descending=True)[: self.nms_pre]
        soft, binary, area, scores, labels = (
            soft[order],
            binary[order],
            area[order],
            scores[order],
            labels[order],
        )
        # 8. Matrix NMS
        scores = matrix_nms(
            binary, labels, scores, kernel=self.kernel, sigma=self.sigma, sum_masks=area
        )
        # 9. update threshold, sort, top max_per_img
        keep = scores >= self.update_thr
        if not bool(keep.any()):
            return self._empty(orig_size, device)
        soft, scores, labels = soft[keep], scores[keep], labels[keep]
        order = torch.argsort(scores, descending=True)[: self.max_per_img]
        soft, scores, labels = soft[order], scores[order], labels[order]
        if self.refine is not None:
            if image_q is None:
                raise ValueError("refine needs image_q, the normalised input at 1/4 resolution")
            soft = self.refine_masks(soft, image_q)
        # 10. paste back at the original resolution
        masks = self.paste(soft, image_size=image_size, orig_size=orig_size)
        # 11. drop empty masks; boxes from the final binary masks
        nonempty = masks.flatten(1).any(1)
        masks, scores, labels = masks[nonempty], scores[nonempty], labels[nonempty]
        return Instances(
            boxes=masks_to_boxes(masks),
            labels=labels.long(),
            scores=scores.float(),
            masks=masks,
        )

    def refine_masks(self, soft: Tensor, image_q: Tensor) -> Tensor:
        """``float[N, h, w]`` soft masks refined by the CRF inside their own grown boxes (ours).

        The box of each mask is the extent of ``soft > mask_thr`` plus ``refine_margin``
        pixels on every side (clipped to the map); a mask with no pixel over the threshold is
        left as it is. The CRF (``crf_pseudo_labels``, the teacher's, run object by object on
        box crops) starts from the mask itself and forces background outside the box.
        """
        fg = soft > self.mask_thr
        nonempty = fg.flatten(1).any(1)
        if not bool(nonempty.any()):
            return soft
        boxes = masks_to_boxes(fg[nonempty])
        boxes[:, :2] -= self.refine_margin
        boxes[:, 2:] += self.refine_margin
        inside = box_masks(boxes, *soft.shape[-2:]).to(soft.device)
        refined = crf_pseudo_labels(soft[nonempty], inside, image_q, mode=self.refine,
                                    params=self.refine_params)
        out = soft.clone()
        out[nonempty] = refined
        return out

    def paste(
        self, soft: Tensor, *, image_size: tuple[int, int], orig_size: tuple[int, int]
    ) -> Tensor:
        """§7 step 10: ``float[N, h, w]`` soft masks -> ``bool[N, H0, W0]``.

        Bilinear x4 to the padded size, crop to ``image_size``, bilinear to ``orig_size``,
        threshold ``> mask_thr``; done in chunks of ``chunk_size`` masks.
        """
        n, h, w = soft.shape
        h_img, w_img = int(image_size[0]), int(image_size[1])
        out = torch.zeros((n, *orig_size), dtype=torch.bool, device=soft.device)
        for start in range(0, n, self.chunk_size):
            chunk = soft[None, start : start + self.chunk_size]
            chunk = F.interpolate(chunk, size=(4 * h, 4 * w), mode="bilinear", align_corners=False)
            chunk = chunk[:, :, :h_img, :w_img]
            chunk = F.interpolate(chunk, size=orig_size, mode="bilinear", align_corners=False)
            out[start : start + self.chunk_size] = chunk[0] > self.mask_thr
        return out
