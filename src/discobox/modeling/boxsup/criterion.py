"""The SOLOv2 / DiscoBox training criterion (METHOD.md §3.3, §4.0-§4.4).

Turns a :class:`HeadOutput` and the ground truth into the loss dict::

    box mode:  loss_cls, loss_proj, loss_ts [, loss_pairwise]
    full mode: loss_cls, loss_mask

Targets come from :func:`assign_targets`; losses from ``losses.py`` and ``crf.py``. All loss
maths is fp32 (autocast disabled). The correspondence branch (§5) will plug in at
:meth:`SOLOv2Criterion._correspondence_ts_terms` (extra L_ts terms, §5.7) and add ``loss_corr``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...structures import Instances
from ..correspondence.branch import CorrespondenceBranch, CorrResult
from ..correspondence.object_bank import ObjectBank
from ..crf.pseudo_labels import CRF_MODES, CRFParams, crf_pseudo_labels
from ..solov2.model import PIXEL_MEAN, PIXEL_STD
from ..solov2.outputs import HeadOutput
from ..solov2.targets import DEFAULT_NUM_GRIDS, DEFAULT_SCALE_RANGES, LevelTargets, assign_targets
from .losses import (
    color_similarity,
    dice_loss,
    dilate_box_masks,
    floored_sigmoid,
    focal_loss,
    mask_dice_loss,
    pairwise_color_loss,
    projection_loss,
    rgb_to_lab,
)


def _mask_logits(kernels: Tensor, mask_feat: Tensor) -> Tensor:
    """Dynamic 1x1 conv (§2.7): ``float[N, E], float[E, h, w] -> float[N, h, w]``."""
    return torch.einsum("ne,ehw->nhw", kernels, mask_feat)


def _level_logits(kernels: Tensor, mask_feat: Tensor, t: LevelTargets) -> Tensor:
    """Mask logits at the positive cells of one level: ``float[P, h, w]`` in target order.

    ``kernels: float[B, E, S, S]``, ``mask_feat: float[B, E, h, w]`` (both cast to fp32).
    """
    B, E = kernels.shape[:2]
    h, w = mask_feat.shape[-2:]
    if t.grid_index.numel() == 0:
        return mask_feat.new_zeros((0, h, w), dtype=torch.float32)
    flat = kernels.float().reshape(B, E, -1)
    counts = torch.bincount(t.img_index, minlength=B).tolist()
    out = []
    for b, (cells, n) in enumerate(zip(t.grid_index.split(counts), counts)):
        if n:
            out.append(_mask_logits(flat[b][:, cells].t(), mask_feat[b].float()))
    return torch.cat(out)


@dataclass
class _Positives:
    """Positive masks of all levels, concatenated (level-major, then image, then cell)."""

    logits: Tensor  # float[P, h, w]
    targets: Tensor  # float[P, h, w]
    img_index: Tensor  # int64[P]
    teacher_logits: Tensor | None  # float[P, h, w]

    def select(self, keep: Tensor) -> _Positives:
        """The positives where the boolean ``keep`` is true."""
        return _Positives(
            logits=self.logits[keep],
            targets=self.targets[keep],
            img_index=self.img_index[keep],
            teacher_logits=None if self.teacher_logits is None else self.teacher_logits[keep],
        )


def outside_share(probs: Tensor, box_masks: Tensor, eps: float = 1e-6) -> Tensor:
    """``float[N]``: the share of each mask's mass outside its box dilated by one pixel (the
    ``D_i`` of §4.4), ``sum_{p not in D_i} S_i(p) / (sum_p S_i(p) + eps)``; ours."""
    dilated = dilate_box_masks(box_masks)
    total = probs.flatten(1).sum(dim=1)
    outside = (probs * (1 - dilated)).flatten(1).sum(dim=1)
    return outside / (total + eps)


class SOLOv2Criterion(nn.Module):
    """Losses of box-supervised DiscoBox (``mode="box"``) or fully supervised SOLOv2 (``"full"``).

    Args:
        num_classes: ``C``.
        mode: ``"box"``: category + projection (§4.2) + teacher-student CRF (§4.4) losses from box
            masks; ``"full"``: category + dice on real masks (``Instances.masks`` required).
        num_grids, scale_ranges, sigma: target assignment (§3.3).
        focal_alpha, focal_gamma: category focal loss (§4.1).
        cls_weight, proj_weight, ts_weight: official weights 1.0 (§4.0).
        ts_region: ``"box"`` (official §4.4: ``dice(S_i * D_i, Y_i)`` with ``D_i`` the box
            dilated by one pixel) or ``"image"`` (ours: ``dice(S_i, Y_i)``; ``Y_i`` is 0 outside
            the box, so the student's mass outside its box is penalised as well).
        ts_object_thresh: ours, off (``None``) by default: a per-object form of the L_ts gate
            (§4.0). Object ``i`` enters ``L_ts`` only while its own projection loss (§4.2, 0..2)
            is below the threshold, i.e. while the student's mask already agrees with its box;
            the loss is the sum of the entered objects' terms over all objects, so it grows as
            objects qualify. An object whose mask drifts (empty, or a fragment) leaves ``L_ts``
            and is pulled back by the projection loss alone, instead of the CRF target built
            from that mask pulling it further. The fraction that entered is
            :attr:`ts_object_fraction` after each call.
        ts_term_max: ours, off (``None``) by default: a guard on the other side of ``L_ts``.
            Object ``i``'s own term ``dice(S_i * D_i, Y_i)`` (0..1) counts only while it is
            below this value, i.e. while the CRF target still agrees with the student's mask;
            the kept terms are summed over all objects. A CRF target that has left its
            student (an uncertain mask whose mean-field marginals fall to background, so the
            term pushes the mask down further) is dropped instead of followed. Decided on
            the detached terms. With either per-object option on,
            :attr:`ts_object_fraction` is the share of objects whose term counted.
        outside_weight: ours, 0 (off) by default: weight of ``loss_outside``, box mode. For each
            positive, the share of its mask's mass outside its box dilated by one pixel,
            ``sum_{p not in D_i} S_i(p) / sum_p S_i(p)``, averaged over positives. Box labels
            say that no part of the object lies outside its box, but only the projection loss
            sees those pixels, through a max-projection dice in which a few columns of spill
            cost little (droplets: masks spilling into touching droplets, BENCHMARKS.md). A
            share, not a sum, so it does not reward shrinking the mask.
        box_warmup_weight: ours, 0 (off) by default: weight of ``loss_boxwarm``, box mode, the
            dice between each positive's mask and its filled box mask (§3.2), times the
            ``box_scale`` of the call (:func:`~discobox.modeling.boxsup.teacher.box_warmup`: falls
            from 1 to 0 over ``loss.box_warmup_iters``). The key is present whenever the
            weight is > 0, a zero once the scale is 0.
        sigmoid_grad_floor: ours, 0 (off) by default: box mode, the mask probabilities of every
            mask loss (projection, ``L_ts``, ``loss_boxwarm``, ``loss_outside``) come from
            :func:`~discobox.modeling.boxsup.losses.floored_sigmoid`, whose gradient never falls
            below this, so a mask saturated at 1 (or 0) everywhere can still be moved. Loss
            values are unchanged. In ``[0, 0.25)``.
        mask_weight: full mode dice weight, 3.0 as SOLOv2's ``ins_loss_weight``.
        pairwise_weight: weight of the optional BoxInst pairwise term.
        use_pairwise: add ``loss_pairwise`` (box mode).
        pairwise_tau, pairwise_kernel_size, pairwise_dilation: BoxInst 0.3, 3, 2.
        crf_mode: ``"faithful"``, ``"meanfield"`` or ``"none"`` (no ``L_ts``).
        crf_params: :class:`CRFParams` (official values by default).

    Call: ``criterion(out, targets, teacher_out=None, ts_active=False, image_sizes=None,
    ts_scale=1.0, box_scale=0.0)``; ``box_scale`` multiplies ``loss_boxwarm``; ``ts_scale``
    multiplies ``L_ts`` (the ``loss.ts_ramp_iters`` ramp,
    :func:`~discobox.modeling.boxsup.teacher.ts_ramp`; at 0 the CRF is not run).

    - ``out``: student :class:`HeadOutput` (``mask_feat`` must be ``(H/4, W/4)`` of
      ``out.images``).
    - ``targets``: per image :class:`Instances` in the resized frame.
    - ``teacher_out``: the EMA teacher's output on the same images, or ``None`` (then the
      teacher probabilities are the detached student's, §4.5).
    - ``ts_active``: the L_ts gate (§4.0); ``loss_ts`` is a zero when off.
    - ``image_sizes``: optional unpadded ``(h, w)`` per image; restricts the pairwise term's
      colour similarity to the image (BoxInst); unused otherwise.

    Returns a dict of ``float32[]`` losses, each attached to the graph even when zero (empty
    batches), so DDP sees every parameter used.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        mode: str = "box",
        num_grids: Sequence[int] = DEFAULT_NUM_GRIDS,
        scale_ranges: Sequence[tuple[float, float]] = DEFAULT_SCALE_RANGES,
        sigma: float = 0.2,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        cls_weight: float = 1.0,
        proj_weight: float = 1.0,
        ts_weight: float = 1.0,
        ts_region: str = "box",
        ts_object_thresh: float | None = None,
        ts_term_max: float | None = None,
        outside_weight: float = 0.0,
        box_warmup_weight: float = 0.0,
        sigmoid_grad_floor: float = 0.0,
        mask_weight: float = 3.0,
        pairwise_weight: float = 1.0,
        use_pairwise: bool = False,
        pairwise_tau: float = 0.3,
        pairwise_kernel_size: int = 3,
        pairwise_dilation: int = 2,
        crf_mode: str = "faithful",
        crf_params: CRFParams | None = None,
        corr_branch: CorrespondenceBranch | None = None,
    ) -> None:
        super().__init__()
        if mode not in ("box", "full"):
            raise ValueError(f"mode must be 'box' or 'full', got {mode!r}")
        if crf_mode not in (*CRF_MODES, "none"):
            raise ValueError(f"crf_mode must be one of {(*CRF_MODES, 'none')}, got {crf_mode!r}")
        if ts_region not in ("box", "image"):
            raise ValueError(f"ts_region must be 'box' or 'image', got {ts_region!r}")
        if len(num_grids) != len(scale_ranges):
            raise ValueError("num_grids and scale_ranges must have one entry per level")
        self.num_classes = num_classes
        self.mode = mode
        self.num_grids = tuple(num_grids)
        self.scale_ranges = tuple(tuple(r) for r in scale_ranges)
        self.sigma = sigma
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.cls_weight = cls_weight
        self.proj_weight = proj_weight
        self.ts_weight = ts_weight
        self.ts_region = ts_region
        if ts_object_thresh is not None and ts_object_thresh <= 0:
            raise ValueError(f"ts_object_thresh must be > 0 or None, got {ts_object_thresh}")
        self.ts_object_thresh = ts_object_thresh
        if ts_term_max is not None and not 0 < ts_term_max <= 1:
            raise ValueError(f"ts_term_max must be in (0, 1] or None, got {ts_term_max}")
        self.ts_term_max = ts_term_max
        self.ts_object_fraction: float | None = None  # last batch's share of objects in L_ts
        if outside_weight < 0:
            raise ValueError(f"outside_weight must be >= 0, got {outside_weight}")
        self.outside_weight = outside_weight
        if box_warmup_weight < 0:
            raise ValueError(f"box_warmup_weight must be >= 0, got {box_warmup_weight}")
        self.box_warmup_weight = box_warmup_weight
        if not 0 <= sigmoid_grad_floor < 0.25:
            raise ValueError(f"sigmoid_grad_floor must be in [0, 0.25), got {sigmoid_grad_floor}")
        self.sigmoid_grad_floor = sigmoid_grad_floor
        self.mask_weight = mask_weight
        self.pairwise_weight = pairwise_weight
        self.use_pairwise = use_pairwise
        self.pairwise_tau = pairwise_tau
        self.pairwise_kernel_size = pairwise_kernel_size
        self.pairwise_dilation = pairwise_dilation
        self.crf_mode = crf_mode
        self.crf_params = crf_params if crf_params is not None else CRFParams()
        self.corr_branch = corr_branch
        self.corr_result: CorrResult | None = None  # last batch's branch output (for the loop)

    def forward(
        self,
        out: HeadOutput,
        targets: Sequence[Instances],
        *,
        teacher_out: HeadOutput | None = None,
        ts_active: bool = False,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        bank: ObjectBank | None = None,
        corr_active: bool = False,
        ts_scale: float = 1.0,
        box_scale: float = 0.0,
    ) -> dict[str, Tensor]:
        if len(out.cate_logits) != len(self.num_grids):
            raise ValueError(f"{len(out.cate_logits)} levels, expected {len(self.num_grids)}")
        with torch.autocast(device_type=out.mask_feat.device.type, enabled=False):
            padded = (int(out.images.shape[-2]), int(out.images.shape[-1]))
            levels = assign_targets(
                targets,
                padded_size=padded,
                num_classes=self.num_classes,
                num_grids=self.num_grids,
                scale_ranges=self.scale_ranges,
                sigma=self.sigma,
                use_masks=self.mode == "full",
                device=out.mask_feat.device,
            )
            zero = self._zero(out)
            losses = {"loss_cls": self.cls_weight * self._cls_loss(out, levels) + zero}
            use_teacher = self.mode == "box" and ts_active and self.crf_mode != "none"
            pos = self._positives(out, levels, teacher_out if use_teacher else None)
            if self.mode == "full":
                terms = mask_dice_loss(pos.logits, pos.targets)
                losses["loss_mask"] = self.mask_weight * self._mean(terms, zero)
                return losses
            keep = pos.targets.flatten(1).amax(dim=1) > 0  # drop all-zero targets (§4.2)
            pos = pos.select(keep)
            probs = floored_sigmoid(pos.logits, self.sigmoid_grad_floor)
            proj_terms = projection_loss(probs, pos.targets)
            losses["loss_proj"] = self.proj_weight * self._mean(proj_terms, zero)
            if self.box_warmup_weight > 0:
                boxwarm = zero
                if box_scale > 0:
                    boxwarm = self._mean(mask_dice_loss(pos.logits, pos.targets,
                                                        self.sigmoid_grad_floor), zero)
                losses["loss_boxwarm"] = self.box_warmup_weight * box_scale * boxwarm
            # Correspondence branch (§5): runs before L_ts, whose extra terms it supplies.
            self.corr_result = None
            if self.corr_branch is not None:
                if use_teacher and corr_active and bank is not None:
                    self.corr_result = self.corr_branch(
                        out, targets, bank=bank, teacher_out=teacher_out
                    )
                loss_corr = self.corr_result.loss_corr if self.corr_result is not None else 0.0
                losses["loss_corr"] = loss_corr + zero
            losses["loss_ts"] = self._ts_loss(out, pos, probs, ts_active and ts_scale > 0, zero,
                                              proj_terms=proj_terms.detach(), scale=ts_scale)
            if self.outside_weight > 0:
                losses["loss_outside"] = self.outside_weight * self._mean(
                    outside_share(probs, pos.targets), zero)
            if self.use_pairwise:
                losses["loss_pairwise"] = self.pairwise_weight * (
                    self._pairwise_loss(out, pos, image_sizes) + zero
                )
            return losses

    # -- pieces -------------------------------------------------------------------------------

    @staticmethod
    def _zero(out: HeadOutput) -> Tensor:
        """``0.`` attached to every output, so empty batches still reach all parameters."""
        total = out.mask_feat.float().sum() * 0.0
        for t in (*out.cate_logits, *out.kernels):
            total = total + t.float().sum() * 0.0
        return total

    @staticmethod
    def _mean(terms: Tensor, zero: Tensor) -> Tensor:
        return terms.mean() + zero if terms.numel() else zero

    def _cls_loss(self, out: HeadOutput, levels: list[LevelTargets]) -> Tensor:
        """Focal loss over all cells of all levels and images / (num_pos + 1) (§4.1)."""
        logits = torch.cat(
            [c.float().permute(0, 2, 3, 1).reshape(-1, self.num_classes) for c in out.cate_logits]
        )
        labels = torch.cat([t.cate_labels.reshape(-1) for t in levels])
        onehot = F.one_hot(labels, self.num_classes + 1)[:, : self.num_classes]
        num_pos = sum(t.num_pos for t in levels)
        return focal_loss(
            logits,
            onehot,
            alpha=self.focal_alpha,
            gamma=self.focal_gamma,
            avg_factor=num_pos + 1,
        )

    def _positives(
        self, out: HeadOutput, levels: list[LevelTargets], teacher_out: HeadOutput | None
    ) -> _Positives:
        """Student (and teacher) mask logits at the student's positive cells (§3.3, §4.5)."""
        logits = [_level_logits(k, out.mask_feat, t) for k, t in zip(out.kernels, levels)]
        teacher = None
        if teacher_out is not None:
            with torch.no_grad():
                teacher = torch.cat(
                    [
                        _level_logits(k, teacher_out.mask_feat, t)
                        for k, t in zip(teacher_out.kernels, levels)
                    ]
                )
        return _Positives(
            logits=torch.cat(logits),
            targets=torch.cat([t.masks for t in levels]),
            img_index=torch.cat([t.img_index for t in levels]),
            teacher_logits=teacher,
        )

    def _ts_loss(
        self, out: HeadOutput, pos: _Positives, probs: Tensor, active: bool, zero: Tensor,
        *, proj_terms: Tensor | None = None, scale: float = 1.0,
    ) -> Tensor:
        """``L_ts = mean_i dice(S_i * D_i, Y_i) (+ mean of correspondence terms)`` (§4.4)."""
        self.ts_object_fraction = None
        if not active or self.crf_mode == "none" or probs.shape[0] == 0:
            return zero
        num_objects = probs.shape[0]
        if self.ts_object_thresh is not None and proj_terms is not None:
            entered = proj_terms < self.ts_object_thresh
            self.ts_object_fraction = float(entered.float().mean())
            if not bool(entered.any()):
                return zero
            pos = pos.select(entered)
            probs = probs[entered]
        with torch.no_grad():
            teacher = probs.detach()
            if pos.teacher_logits is not None:
                teacher = torch.sigmoid(pos.teacher_logits)
            init = (teacher + probs.detach()) / 2
            images = out.quarter_images()
            pseudo = torch.zeros_like(init)
            for b in pos.img_index.unique().tolist():
                sel = pos.img_index == b
                pseudo[sel] = crf_pseudo_labels(
                    init[sel],
                    pos.targets[sel],
                    images[b],
                    mode=self.crf_mode,
                    params=self.crf_params,
                )
        student = probs
        if self.ts_region == "box":
            student = probs * dilate_box_masks(pos.targets)
        terms = dice_loss(student, pseudo)
        if self.ts_term_max is not None:
            kept = terms.detach() < self.ts_term_max
            self.ts_object_fraction = float(kept.sum()) / num_objects
            terms = terms * kept
        loss = terms.sum() / num_objects
        corr_terms = self._correspondence_ts_terms(out, pos, probs)
        if corr_terms is not None and corr_terms.numel():
            loss = loss + corr_terms.mean()
        return scale * self.ts_weight * loss + zero

    def _correspondence_ts_terms(
        self, out: HeadOutput, pos: _Positives, probs: Tensor
    ) -> Tensor | None:
        """Extra ``L_ts`` terms from the CRF with the cross-image term (§5.7); ``float[N']``."""
        return None if self.corr_result is None else self.corr_result.ts_terms

    def _pairwise_loss(
        self, out: HeadOutput, pos: _Positives, image_sizes: Sequence[tuple[int, int]] | None
    ) -> Tensor:
        """BoxInst pairwise term on ¼-res LAB colours (4x4 average-pooled RGB, as BoxInst)."""
        if pos.logits.shape[0] == 0:
            return pos.logits.sum() * 0.0
        mean = out.images.new_tensor(PIXEL_MEAN).view(1, 3, 1, 1)
        std = out.images.new_tensor(PIXEL_STD).view(1, 3, 1, 1)
        rgb = out.images.detach().float() * std + mean
        rgb = F.avg_pool2d(rgb, kernel_size=4, stride=4)
        h, w = pos.logits.shape[-2:]
        rgb = rgb[..., :h, :w]
        sims = []
        for b in range(rgb.shape[0]):
            valid = None
            if image_sizes is not None:
                hi, wi = image_sizes[b]
                # BoxInst samples the image mask at pixels 4k+2: valid iff 4k+2 < size.
                valid = torch.zeros((h, w), dtype=torch.bool, device=rgb.device)
                valid[: (hi + 1) // 4, : (wi + 1) // 4] = True
            sims.append(
                color_similarity(
                    rgb_to_lab(rgb[b]),
                    kernel_size=self.pairwise_kernel_size,
                    dilation=self.pairwise_dilation,
                    valid=valid,
                )
            )
        sim = torch.stack(sims)[pos.img_index]
        return pairwise_color_loss(
            pos.logits,
            sim,
            pos.targets,
            tau=self.pairwise_tau,
            kernel_size=self.pairwise_kernel_size,
            dilation=self.pairwise_dilation,
        )
