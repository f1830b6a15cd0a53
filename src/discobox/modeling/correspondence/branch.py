"""The semantic-correspondence branch of one training batch (docs/method.md §5, §3.4, §5.7).

:class:`CorrespondenceBranch` turns the student (and teacher) outputs of a batch plus the
:class:`~discobox.modeling.correspondence.object_bank.ObjectBank` into

- ``loss_corr``: the dense contrastive loss (§5.5), summed over queries that retrieved enough
  objects and divided by their number (+1e-4), times ``corr.weight``;
- ``ts_terms``: the extra ``L_ts`` terms of the CRF with the cross-image term (§5.7), one per
  object, whose mean the criterion adds to the main ``L_ts`` mean (its ``extra_ts_terms``);
- ``to_push``: the bankable teacher crops of the batch, which the training loop pushes into the
  bank after the step (``bank.push(**result.to_push)``).

Steps: single-cell targets (:func:`assign_best_targets`, §3.4); student and teacher masks at
those cells; drop all-zero targets; integer ¼-res boxes from the target extents; 7x7 RoIAlign
of P2 (ReLU + L2 per location) and 28x28 RoIAlign of the masks (§5.1); per object: query the
bank with the student crop (§5.3), solve (§5.4), loss (§5.5), evidence into ``cross_term``
(§5.6); finally the CRF with ``cross_term`` and the dice with the gradient scaled by
``corr.grad_scale`` (§5.7). The training step (``engine/trainer.py``) calls the branch before
the criterion, while the correspondence gate is open (§4.0).

Ordering. The official code queries and then pushes object by object, so an object can retrieve
objects appended earlier in the same batch. With ``online_push=False`` (default) the branch
never mutates the bank and the loop pushes afterwards: objects of the same batch do not see each
other (they see them from the next iteration on). ``online_push=True`` reproduces the official
interleaving and returns an empty ``to_push``.

Labels come from :attr:`LevelTargets.labels` filtered together with the masks, i.e. the
official ``kernel_labels`` misalignment (§12.4) is fixed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from ...structures import Instances
from ..boxsup.losses import dice_loss, dilate_box_masks
from ..crf.params import CRF_MODES, CRFParams
from ..crf.pseudo_labels import crf_pseudo_labels
from ..solov2.head import dynamic_mask_logits
from ..solov2.outputs import HeadOutput
from ..solov2.targets import DEFAULT_NUM_GRIDS, DEFAULT_SCALE_RANGES, assign_best_targets
from .evidence import cross_image_evidence, paste_evidence
from .object_bank import ObjectBank
from .params import CorrParams
from .solver import (
    CORR_LOSSES,
    SOLVERS,
    faithful_corr_loss,
    infonce_corr_loss,
    solve_faithful,
    solve_sinkhorn,
)


def l2_normalize_roi(f: Tensor) -> Tensor:
    """``relu`` then ``f / (sqrt(sum_c f^2 + 1e-6) + 1e-6)`` per location (H:27-31);
    ``float[N, C, s, s]``."""
    f = F.relu(f)
    return f / ((f * f).sum(1, keepdim=True) + 1e-6).sqrt().add(1e-6)


def quarter_boxes(masks: Tensor) -> Tensor:
    """Integer ¼-res boxes ``[x_min, y_min, x_max + 1, y_max + 1]`` of non-empty masks
    ``float[N, h, w]`` (H:1197-1204). Returns ``float32[N, 4]``."""
    n, h, w = masks.shape
    cols = masks.amax(1) > 0  # [N, w]
    rows = masks.amax(2) > 0  # [N, h]
    xs = torch.arange(w, device=masks.device)
    ys = torch.arange(h, device=masks.device)
    x0 = torch.where(cols, xs, w).amin(1)
    x1 = torch.where(cols, xs, -1).amax(1) + 1
    y0 = torch.where(rows, ys, h).amin(1)
    y1 = torch.where(rows, ys, -1).amax(1) + 1
    return torch.stack([x0, y0, x1, y1], 1).float()


def _gather_logits(kernels: Tensor, mask_feat: Tensor, grid_index: Tensor,
                   img_index: Tensor) -> Tensor:
    """Mask logits at the given cells (dynamic 1x1 conv, §2.7): ``kernels [B, E, S, S]``,
    ``mask_feat [B, E, h, w]``, ``grid_index/img_index int64[P]`` -> ``float32[P, h, w]``."""
    b, e = kernels.shape[:2]
    h, w = mask_feat.shape[-2:]
    k = kernels.float().reshape(b, e, -1)[img_index, :, grid_index]  # [P, E]
    out = mask_feat.new_zeros((len(grid_index), h, w), dtype=torch.float32)
    for i in img_index.unique().tolist():
        sel = img_index == i
        out[sel] = dynamic_mask_logits(k[sel], mask_feat[i].float())
    return out


@dataclass
class CorrResult:
    """Output of :meth:`CorrespondenceBranch.__call__`.

    Attributes:
        loss_corr: ``float32[]`` weighted contrastive loss (attached to the graph, 0 if no query
            retrieved enough objects).
        ts_terms: ``float32[N]`` dice terms of the CRF with the cross-image term (§5.7), gradient
            scaled by ``grad_scale``; empty when the CRF is off or there are no objects.
        to_push: keyword arguments of :meth:`ObjectBank.push` (``masks``, ``feats``, ``boxes``,
            ``labels``; teacher crops of bankable objects, detached); empty with
            ``online_push``.
        cross_term: ``float32[N, 2, h, w]`` the evidence fed to the CRF (for inspection).
        boxes: ``float32[N, 4]`` the objects' integer ¼-res boxes (for inspection).
        stats: ``objects``, ``matched`` (queries with enough retrieved objects), ``bankable``.
    """

    loss_corr: Tensor
    ts_terms: Tensor
    to_push: dict[str, Tensor] = field(default_factory=dict)
    cross_term: Tensor | None = None
    boxes: Tensor | None = None
    stats: dict[str, int] = field(default_factory=dict)


class CorrespondenceBranch:
    """Correspondence branch: bank retrieval, solver, contrastive loss and cross-image CRF term.

    Args:
        num_classes: ``C``.
        num_grids, scale_ranges: as the model (for the §3.4 single-cell assignment).
        corr: :class:`CorrParams` (the ``corr`` config section): solver, loss, ``weight``,
            ``grad_scale``, ``online_push``; the bank's fields are read by the bank, not here.
        crf: :class:`CRFParams` (the ``crf`` config section), the CRF that receives the
            cross-image term (``crf.mode="none"``: no ``ts_terms``).
        feat_size, mask_size: RoIAlign sizes (7, 28).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        num_grids: Sequence[int] = DEFAULT_NUM_GRIDS,
        scale_ranges: Sequence[tuple[float, float]] = DEFAULT_SCALE_RANGES,
        corr: CorrParams | None = None,
        crf: CRFParams | None = None,
        feat_size: int = 7,
        mask_size: int = 28,
    ) -> None:
        corr = corr if corr is not None else CorrParams()
        crf = crf if crf is not None else CRFParams()
        if corr.solver not in SOLVERS:
            raise ValueError(f"corr.solver must be one of {SOLVERS}, got {corr.solver!r}")
        if corr.loss not in CORR_LOSSES:
            raise ValueError(f"corr.loss must be one of {CORR_LOSSES}, got {corr.loss!r}")
        if crf.mode not in (*CRF_MODES, "none"):
            raise ValueError(f"crf.mode must be one of {(*CRF_MODES, 'none')}, got {crf.mode!r}")
        self.num_classes = num_classes
        self.num_grids = tuple(num_grids)
        self.scale_ranges = tuple(tuple(r) for r in scale_ranges)
        self.corr = corr
        self.crf = crf
        self.feat_size, self.mask_size = int(feat_size), int(mask_size)

    # -- pieces -------------------------------------------------------------------------------

    def solve(self, f0: Tensor, f1: Tensor) -> tuple[Tensor, Tensor]:
        """``(Cu, T)``, ``float32[K, n, n]``, for ``f0: [C, s, s]``, ``f1: [K, C, s, s]``."""
        c = self.corr
        if c.solver == "faithful":
            return solve_faithful(f0, f1, num_iters=c.num_iters,
                                  num_smooth_iters=c.num_smooth_iters, dist_kernel=c.dist_kernel)
        return solve_sinkhorn(f0, f1, eps=c.sinkhorn_eps, iters=c.sinkhorn_iters,
                              exp=c.sinkhorn_exp, hough=c.hough, filter_size=c.hough_filter_size)

    def contrastive(self, f0: Tensor, f1: Tensor, cu: Tensor, t: Tensor, m0: Tensor,
                    negatives: Tensor | None) -> Tensor:
        """One query's contrastive term (§5.5)."""
        if self.corr.loss == "faithful":
            return faithful_corr_loss(cu, t)
        s = f0.shape[-1]
        w = F.interpolate(m0[None, None].float(), size=(s, s), mode="bilinear",
                          align_corners=False).flatten()
        return infonce_corr_loss(f0, f1, t, temperature=self.corr.temperature,
                                 negatives=negatives, weights=w)

    def crops(self, p2: Tensor, probs: Tensor, boxes: Tensor, img_index: Tensor):
        """RoI crops (§5.1): ``(feats float[N, C, 7, 7], masks float[N, 28, 28])``."""
        rois = torch.cat([img_index[:, None].float(), boxes], 1)
        feats = roi_align(p2.float(), rois, self.feat_size, 1.0, 0, True)
        own = torch.cat([torch.arange(len(boxes), device=boxes.device)[:, None].float(), boxes], 1)
        masks = roi_align(probs.detach()[:, None].float(), own, self.mask_size, 1.0, 0, True)
        return l2_normalize_roi(feats), masks[:, 0]

    # -- the batch ----------------------------------------------------------------------------

    def __call__(
        self, out: HeadOutput, targets: Sequence[Instances], *, bank: ObjectBank,
        teacher_out: HeadOutput | None = None,
    ) -> CorrResult:
        """Run the branch on a batch (call only while the correspondence gate is open, §4.0).

        Args:
            out: student :class:`HeadOutput` (``p2`` and ``mask_feat`` at ¼ res).
            targets: per image GT :class:`Instances` in the resized frame.
            bank: the object bank (read; also written when ``online_push``).
            teacher_out: the EMA teacher's output, or ``None`` (teacher = detached student).
        """
        with torch.autocast(device_type=out.mask_feat.device.type, enabled=False):
            return self._run(out, targets, bank, teacher_out)

    def _run(self, out, targets, bank, teacher_out) -> CorrResult:
        dev = out.mask_feat.device
        h, w = out.mask_feat.shape[-2:]
        zero = out.p2.float().sum() * 0.0 + out.mask_feat.float().sum() * 0.0
        levels = assign_best_targets(
            targets, padded_size=(int(out.images.shape[-2]), int(out.images.shape[-1])),
            num_classes=self.num_classes, num_grids=self.num_grids,
            scale_ranges=self.scale_ranges, device=dev)
        s_logits, t_logits, masks, img_idx, labels = [], [], [], [], []
        for lvl, t in enumerate(levels):
            if t.grid_index.numel() == 0:
                continue
            keep = t.masks.flatten(1).amax(1) > 0
            if not keep.any():
                continue
            gi, ii = t.grid_index[keep], t.img_index[keep]
            s_logits.append(_gather_logits(out.kernels[lvl], out.mask_feat, gi, ii))
            if teacher_out is not None:
                with torch.no_grad():
                    t_logits.append(_gather_logits(teacher_out.kernels[lvl],
                                                   teacher_out.mask_feat, gi, ii))
            masks.append(t.masks[keep].float())
            img_idx.append(ii)
            labels.append(t.labels[keep])
        empty = CorrResult(loss_corr=zero, ts_terms=zero.new_zeros(0),
                           stats={"objects": 0, "matched": 0, "bankable": 0})
        if not masks:
            return empty
        s_in = torch.sigmoid(torch.cat(s_logits))
        targets_q = torch.cat(masks)
        img_index, label = torch.cat(img_idx), torch.cat(labels)
        with torch.no_grad():
            t_in = torch.sigmoid(torch.cat(t_logits)) if t_logits else s_in.detach()
        boxes = quarter_boxes(targets_q)
        s_feat, s_mask = self.crops(out.p2, s_in, boxes, img_index)
        with torch.no_grad():
            t_p2 = teacher_out.p2 if teacher_out is not None else out.p2.detach()
            t_feat, t_mask = self.crops(t_p2, t_in, boxes, img_index)
        bankable = bank.bankable(boxes)

        n = len(boxes)
        cross = torch.zeros((n, 2, h, w), device=dev)
        terms = []
        for i in range(n):
            q_feat = l2_normalize_roi(s_feat[i : i + 1])[0]
            ret = bank.query(mask=s_mask[i], feat=q_feat.detach(), box=boxes[i],
                             label=int(label[i]))
            if ret is not None:
                cu, tr = self.solve(q_feat, ret.feats)
                negatives = None
                if self.corr.loss == "infonce":
                    other = label != label[i]
                    negatives = t_feat[other].flatten(2).transpose(1, 2).reshape(
                        -1, t_feat.shape[1])
                terms.append(self.contrastive(q_feat, ret.feats, cu, tr, s_mask[i], negatives))
                ev = cross_image_evidence(tr.detach(), cu.detach(), s_mask[i], ret.masks)
                cross[i] = paste_evidence(ev, boxes[i], (h, w))
            if self.corr.online_push and bool(bankable[i]):
                bank.push(masks=t_mask[i : i + 1], feats=t_feat[i : i + 1],
                          boxes=boxes[i : i + 1], labels=label[i : i + 1])
        loss = zero
        if terms:
            loss = torch.stack(terms).sum() / (len(terms) + 1e-4) + zero
        to_push: dict[str, Tensor] = {}
        if not self.corr.online_push:
            to_push = {"masks": t_mask[bankable].detach(), "feats": t_feat[bankable].detach(),
                       "boxes": boxes[bankable], "labels": label[bankable]}
        return CorrResult(
            loss_corr=self.corr.weight * loss,
            ts_terms=self._crf_terms(out, s_in, t_in, targets_q, img_index, cross),
            to_push=to_push,
            cross_term=cross,
            boxes=boxes,
            stats={"objects": n, "matched": len(terms), "bankable": int(bankable.sum())},
        )

    def _crf_terms(self, out: HeadOutput, s_in: Tensor, t_in: Tensor, box_masks: Tensor,
                   img_index: Tensor, cross: Tensor) -> Tensor:
        """``dice(g*s' + (1-g)*detach(s'), Y')`` per object with ``Y'`` the CRF on
        ``(T + S) / 2`` with the cross-image term and ``s' = S * dilate(M)`` (§5.7)."""
        if self.crf.mode == "none":
            return s_in.new_zeros(0)
        with torch.no_grad():
            init = (t_in + s_in.detach()) / 2
            images = out.quarter_images()
            pseudo = torch.zeros_like(init)
            for b in img_index.unique().tolist():
                sel = img_index == b
                pseudo[sel] = crf_pseudo_labels(init[sel], box_masks[sel], images[b],
                                                mode=self.crf.mode, params=self.crf,
                                                cross_term=cross[sel])
            dilated = dilate_box_masks(box_masks)
        sp = s_in * dilated
        g = self.corr.grad_scale
        shat = g * sp + (1.0 - g) * sp.detach()
        return dice_loss(shat, pseudo)
