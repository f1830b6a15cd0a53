"""The SOLOv2 / DiscoBox training criterion (docs/method.md §3.3, §4.0-§4.4).

Turns a :class:`HeadOutput` and the ground truth into ``(losses, stats)``::

    box mode:  loss_cls, loss_proj [, loss_boxwarm], loss_ts [, loss_pairwise]
    full mode: loss_cls, loss_mask

Targets come from :func:`assign_targets`; losses from ``losses.py`` and the CRF package. All
loss maths is fp32 (autocast disabled). The criterion keeps no per-batch state. The
correspondence branch (§5) is not part of it: the training step runs the branch, passes the
branch's extra ``L_ts`` terms (§5.7) as ``extra_ts_terms`` and adds ``loss_corr`` itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...structures import Instances
from ..crf.params import CRF_MODES, CRFParams
from ..crf.pseudo_labels import crf_pseudo_labels
from ..solov2.head import dynamic_mask_logits
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
from .params import LOSS_MODES, LossParams

# BoxInst's pairwise term: similarity threshold, neighbourhood size and dilation
PAIRWISE_TAU, PAIRWISE_KERNEL_SIZE, PAIRWISE_DILATION = 0.3, 3, 2


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
            out.append(dynamic_mask_logits(flat[b][:, cells].t(), mask_feat[b].float()))
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


class SOLOv2Criterion(nn.Module):
    """Losses of box-supervised DiscoBox (``loss.mode="box"``) or fully supervised SOLOv2
    (``"full"``).

    Args:
        num_classes: ``C``.
        num_grids, scale_ranges, sigma: target assignment (§3.3), as the model's.
        loss: :class:`LossParams` (the ``loss`` config section). ``"box"``: category (§4.1) +
            projection (§4.2) + teacher-student CRF (§4.4) losses from box masks; ``"full"``:
            category + dice on real masks (``Instances.masks`` required).
        crf: :class:`CRFParams` (the ``crf`` config section); ``crf.mode="none"`` gives no
            ``L_ts``.

    Call: ``criterion(out, targets, *, teacher_out=None, ts_active=False, image_sizes=None,
    box_scale=0.0, extra_ts_terms=None)``.

    - ``out``: student :class:`HeadOutput` (``mask_feat`` must be ``(H/4, W/4)`` of
      ``out.images``).
    - ``targets``: per image :class:`Instances` in the resized frame.
    - ``teacher_out``: the EMA teacher's output on the same images, or ``None`` (then the
      teacher probabilities are the detached student's, §4.5).
    - ``ts_active``: the L_ts gate (§4.0); ``loss_ts`` is a zero when off.
    - ``image_sizes``: optional unpadded ``(h, w)`` per image; restricts the pairwise term's
      colour similarity to the image (BoxInst); unused otherwise.
    - ``box_scale``: multiplies ``loss_boxwarm`` (the schedule of
      :func:`~discobox.modeling.boxsup.teacher.box_warmup`; at 0 the dice is not computed).
    - ``extra_ts_terms``: ``float[N']`` terms whose mean is added to the ``L_ts`` mean (the
      cross-image CRF terms of the correspondence branch, §5.7); ignored while ``L_ts`` is off.

    Returns ``(losses, stats)``: a dict of ``float32[]`` losses, each attached to the graph even
    when zero (empty batches) so DDP sees every parameter used, and a dict of python floats
    (``positives``: the positive masks the mask losses saw).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        num_grids: Sequence[int] = DEFAULT_NUM_GRIDS,
        scale_ranges: Sequence[tuple[float, float]] = DEFAULT_SCALE_RANGES,
        sigma: float = 0.2,
        loss: LossParams | None = None,
        crf: CRFParams | None = None,
    ) -> None:
        super().__init__()
        loss = loss if loss is not None else LossParams()
        crf = crf if crf is not None else CRFParams()
        if loss.mode not in LOSS_MODES:
            raise ValueError(f"loss.mode must be one of {LOSS_MODES}, got {loss.mode!r}")
        if crf.mode not in (*CRF_MODES, "none"):
            raise ValueError(f"crf.mode must be one of {(*CRF_MODES, 'none')}, got {crf.mode!r}")
        if len(num_grids) != len(scale_ranges):
            raise ValueError("num_grids and scale_ranges must have one entry per level")
        if loss.box_warmup_iters < 0 or loss.box_warmup_weight < 0:
            raise ValueError(f"box_warmup_iters and box_warmup_weight must be >= 0, got "
                             f"{loss.box_warmup_iters}, {loss.box_warmup_weight}")
        if not 0 <= loss.sigmoid_grad_floor < 0.25:
            raise ValueError(
                f"sigmoid_grad_floor must be in [0, 0.25), got {loss.sigmoid_grad_floor}")
        self.num_classes = num_classes
        self.num_grids = tuple(num_grids)
        self.scale_ranges = tuple(tuple(r) for r in scale_ranges)
        self.sigma = sigma
        self.loss = loss
        self.crf = crf

    def forward(
        self,
        out: HeadOutput,
        targets: Sequence[Instances],
        *,
        teacher_out: HeadOutput | None = None,
        ts_active: bool = False,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        box_scale: float = 0.0,
        extra_ts_terms: Tensor | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, float]]:
        if len(out.cate_logits) != len(self.num_grids):
            raise ValueError(f"{len(out.cate_logits)} levels, expected {len(self.num_grids)}")
        lp = self.loss
        with torch.autocast(device_type=out.mask_feat.device.type, enabled=False):
            padded = (int(out.images.shape[-2]), int(out.images.shape[-1]))
            levels = assign_targets(
                targets,
                padded_size=padded,
                num_classes=self.num_classes,
                num_grids=self.num_grids,
                scale_ranges=self.scale_ranges,
                sigma=self.sigma,
                use_masks=lp.mode == "full",
                device=out.mask_feat.device,
            )
            zero = self._zero(out)
            losses = {"loss_cls": lp.cls_weight * self._cls_loss(out, levels) + zero}
            use_teacher = lp.mode == "box" and ts_active and self.crf.mode != "none"
            pos = self._positives(out, levels, teacher_out if use_teacher else None)
            if lp.mode == "full":
                terms = mask_dice_loss(pos.logits, pos.targets)
                losses["loss_mask"] = lp.mask_weight * self._mean(terms, zero)
                return losses, {"positives": float(pos.logits.shape[0])}
            keep = pos.targets.flatten(1).amax(dim=1) > 0  # drop all-zero targets (§4.2)
            pos = pos.select(keep)
            probs = floored_sigmoid(pos.logits, lp.sigmoid_grad_floor)
            proj_terms = projection_loss(probs, pos.targets)
            losses["loss_proj"] = lp.proj_weight * self._mean(proj_terms, zero)
            if lp.box_warmup_iters > 0 and lp.box_warmup_weight > 0:
                boxwarm = zero
                if box_scale > 0:
                    boxwarm = self._mean(mask_dice_loss(pos.logits, pos.targets,
                                                        lp.sigmoid_grad_floor), zero)
                losses["loss_boxwarm"] = lp.box_warmup_weight * box_scale * boxwarm
            losses["loss_ts"] = self._ts_loss(out, pos, probs, ts_active, zero, extra_ts_terms)
            if lp.pairwise:
                losses["loss_pairwise"] = lp.pairwise_weight * (
                    self._pairwise_loss(out, pos, image_sizes) + zero
                )
            return losses, {"positives": float(pos.logits.shape[0])}

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
            alpha=self.loss.focal_alpha,
            gamma=self.loss.focal_gamma,
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
        extra_terms: Tensor | None,
    ) -> Tensor:
        """``L_ts = mean_i dice(S_i * D_i, Y_i) (+ mean of extra_terms)`` (§4.4, §5.7) with
        ``Y_i`` the CRF on ``(T_i + S_i) / 2`` and ``D_i`` the box dilated by one pixel."""
        if not active or self.crf.mode == "none" or probs.shape[0] == 0:
            return zero
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
                    mode=self.crf.mode,
                    params=self.crf,
                )
        terms = dice_loss(probs * dilate_box_masks(pos.targets), pseudo)
        loss = terms.sum() / probs.shape[0]
        if extra_terms is not None and extra_terms.numel():
            loss = loss + extra_terms.mean()
        return self.loss.ts_weight * loss + zero

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
            sims.append(color_similarity(rgb_to_lab(rgb[b]), kernel_size=PAIRWISE_KERNEL_SIZE,
                                         dilation=PAIRWISE_DILATION, valid=valid))
        sim = torch.stack(sims)[pos.img_index]
        return pairwise_color_loss(pos.logits, sim, pos.targets, tau=PAIRWISE_TAU,
                                   kernel_size=PAIRWISE_KERNEL_SIZE, dilation=PAIRWISE_DILATION)
