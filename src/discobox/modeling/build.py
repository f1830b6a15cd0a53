"""Config -> objects: the only place where config sections meet constructors.

``build_model(cfg)`` builds the :class:`SOLOv2` network, ``build_criterion(cfg)`` the training
losses, ``build_postprocessor(cfg)`` inference (METHOD.md §7), and ``load_model(weights)`` restores
a trained model together with the config it was trained with
(:func:`discobox.checkpoint.load.load_model`).
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from ..config import Config
from .boxsup.criterion import SOLOv2Criterion
from .correspondence.branch import CorrespondenceBranch
from .correspondence.object_bank import ObjectBank
from .crf.pseudo_labels import CRFParams
from .solov2.backbone import build_backbone
from .solov2.fpn import FPN
from .solov2.head import SOLOv2Head
from .solov2.mask_branch import MaskFeatHead
from .solov2.model import SOLOv2
from .solov2.postprocess import SOLOv2PostProcessor

logger = logging.getLogger("discobox")

# FPN strides of the five head levels after SOLOv2's resizing of P2 / P6 (METHOD.md §2.5, §7).
HEAD_STRIDES = (8, 8, 16, 32, 32)


def build_model(cfg: Config) -> SOLOv2:
    """SOLOv2 of ``cfg.model`` (METHOD.md §2)."""
    m = cfg.model
    b = m.backbone
    backbone = build_backbone(name=b.name, dcn=b.dcn, weights=b.weights,
                              frozen_stages=b.frozen_stages, norm_eval=b.norm_eval)
    neck = FPN(in_channels=backbone.out_channels, out_channels=m.fpn_channels, num_outs=5)
    head = SOLOv2Head(
        num_classes=m.num_classes,
        in_channels=m.fpn_channels,
        seg_feat_channels=m.seg_feat_channels,
        stacked_convs=m.stacked_convs,
        kernel_out_channels=m.kernel_out_channels,
        num_grids=m.num_grids,
        use_dcn=m.dcn_head,
    )
    mask_head = MaskFeatHead(
        in_channels=m.fpn_channels,
        out_channels=m.mask_mid_channels,
        num_outputs=m.kernel_out_channels,
        use_dcn=m.dcn_head,
    )
    return SOLOv2(backbone=backbone, neck=neck, bbox_head=head, mask_feat_head=mask_head)


def crf_params(cfg: Config) -> CRFParams:
    c = cfg.crf
    return CRFParams(iters=c.iters, kernel_size=c.kernel_size, alpha0=c.alpha0, theta0=c.theta0,
                     theta1=c.theta1, base=c.base, mf_kernel_size=c.mf_kernel_size,
                     dilation=c.mf_dilation, w_color=c.w_color, theta_color=c.theta_color,
                     w_spatial=c.w_spatial, theta_spatial=c.theta_spatial,
                     prob_clamp=c.prob_clamp, schedule=c.schedule, hard=c.hard,
                     fill_holes=c.fill_holes, fill_ortho=c.fill_ortho)


def refine_params(cfg: Config) -> CRFParams:
    """The test-time refiner's CRF (``test.refine``): ``crf.*`` with the meanfield window
    ``test.refine_kernel_size``."""
    k = int(cfg.test.refine_kernel_size)
    if k < 1 or k % 2 == 0:
        raise ValueError(f"test.refine_kernel_size must be an odd positive integer, got {k}")
    return dataclasses.replace(crf_params(cfg), mf_kernel_size=k)


def build_object_bank(cfg: Config) -> ObjectBank | None:
    """The per-class object bank of ``cfg.corr`` (§5.2), or ``None`` without the branch."""
    c = cfg.corr
    if not (c.enabled and cfg.loss.mode == "box"):
        return None
    return ObjectBank(
        num_classes=cfg.model.num_classes, capacity=c.capacity,
        feat_channels=cfg.model.fpn_channels, fg_iou_thresh=c.fg_iou_thresh,
        bg_iou_thresh=c.bg_iou_thresh, appear_thresh=c.appear_thresh,
        ratio_range=tuple(c.ratio_range), max_retrieval=c.max_retrieval,
        min_retrieval=c.min_retrieval, min_box_size=c.min_box_size, selection=c.selection,
        dtype=torch.float16 if c.bank_dtype == "float16" else torch.float32,
    )


def build_corr_branch(cfg: Config) -> CorrespondenceBranch | None:
    """The correspondence branch of ``cfg.corr`` (§5.1-5.7), or ``None`` when disabled."""
    c, m = cfg.corr, cfg.model
    if not (c.enabled and cfg.loss.mode == "box"):
        return None
    return CorrespondenceBranch(
        num_classes=m.num_classes, num_grids=m.num_grids, scale_ranges=m.scale_ranges,
        solver=c.solver, loss=c.loss, weight=c.weight, temperature=c.temperature,
        num_iters=c.num_iters, num_smooth_iters=c.num_smooth_iters, dist_kernel=c.dist_kernel,
        sinkhorn_eps=c.sinkhorn_eps, sinkhorn_iters=c.sinkhorn_iters,
        sinkhorn_exp=c.sinkhorn_exp, hough=c.hough, hough_filter_size=c.hough_filter_size,
        crf_mode=cfg.crf.mode, crf_params=crf_params(cfg), grad_scale=c.grad_scale,
        online_push=c.online_push,
    )


def build_criterion(cfg: Config) -> SOLOv2Criterion:
    """The loss module of ``cfg.loss`` / ``cfg.crf`` / ``cfg.corr`` (METHOD.md §3.3, §4, §5)."""
    m, lo = cfg.model, cfg.loss
    return SOLOv2Criterion(
        num_classes=m.num_classes,
        mode=lo.mode,
        num_grids=m.num_grids,
        scale_ranges=m.scale_ranges,
        sigma=m.sigma,
        focal_alpha=lo.focal_alpha,
        focal_gamma=lo.focal_gamma,
        cls_weight=lo.cls_weight,
        proj_weight=lo.proj_weight,
        ts_weight=lo.ts_weight,
        ts_region=lo.ts_region,
        ts_object_thresh=lo.ts_object_thresh,
        ts_term_max=lo.ts_term_max,
        outside_weight=lo.outside_weight,
        box_warmup_weight=lo.box_warmup_weight if lo.box_warmup_iters > 0 else 0.0,
        sigmoid_grad_floor=lo.sigmoid_grad_floor,
        mask_weight=lo.mask_weight,
        pairwise_weight=lo.pairwise_weight,
        use_pairwise=lo.pairwise,
        crf_mode=cfg.crf.mode,
        crf_params=crf_params(cfg),
        corr_branch=build_corr_branch(cfg),
    )


def build_postprocessor(cfg: Config) -> SOLOv2PostProcessor:
    """Matrix-NMS inference of ``cfg.test`` (METHOD.md §7)."""
    t = cfg.test
    return SOLOv2PostProcessor(score_thr=t.score_thr, mask_thr=t.mask_thr, nms_pre=t.nms_pre,
                               update_thr=t.update_thr, kernel=t.kernel, sigma=t.sigma,
                               max_per_img=t.max_per_img, strides=HEAD_STRIDES,
                               refine=None if t.refine == "none" else t.refine,
                               refine_params=refine_params(cfg), refine_margin=t.refine_margin)
