"""Config -> objects: the only place where config sections meet constructors.

``build_model(cfg)`` builds the :class:`SOLOv2` network, ``build_criterion(cfg)`` the training
losses, ``build_corr_branch(cfg)`` / ``build_object_bank(cfg)`` the correspondence branch and its
bank, ``build_postprocessor(cfg)`` inference (docs/method.md §7). The ``loss``, ``crf`` and
``corr`` sections are the parameter objects of their modules and are passed as they are. No I/O:
:func:`discobox.checkpoint.load.load_model` restores a trained model with its config.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from ..config import Config
from .boxsup.criterion import SOLOv2Criterion
from .correspondence.branch import CorrespondenceBranch
from .correspondence.object_bank import ObjectBank
from .crf.params import CRFParams
from .solov2.backbone import build_backbone
from .solov2.fpn import FPN
from .solov2.head import SOLOv2Head
from .solov2.mask_branch import MaskFeatHead
from .solov2.model import SOLOv2
from .solov2.postprocess import SOLOv2PostProcessor

logger = logging.getLogger("discobox")

# FPN strides of the five head levels after SOLOv2's resizing of P2 / P6 (docs/method.md §2.5, §7).
HEAD_STRIDES = (8, 8, 16, 32, 32)


def build_model(cfg: Config) -> SOLOv2:
    """SOLOv2 of ``cfg.model`` (docs/method.md §2)."""
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


def refine_params(cfg: Config) -> CRFParams:
    """The test-time refiner's CRF: ``cfg.crf`` with ``mode=test.refine`` and the meanfield
    window ``test.refine_kernel_size`` (docs/method.md §4.3)."""
    k = int(cfg.test.refine_kernel_size)
    if k < 1 or k % 2 == 0:
        raise ValueError(f"test.refine_kernel_size must be an odd positive integer, got {k}")
    return dataclasses.replace(cfg.crf, mode=cfg.test.refine, mf_kernel_size=k)


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
    """The correspondence branch of ``cfg.corr`` (docs/method.md §5.1-5.7), or ``None``
    without it (``corr.enabled`` false, or full supervision)."""
    m = cfg.model
    if not (cfg.corr.enabled and cfg.loss.mode == "box"):
        return None
    return CorrespondenceBranch(num_classes=m.num_classes, num_grids=m.num_grids,
                                scale_ranges=m.scale_ranges, corr=cfg.corr, crf=cfg.crf)


def build_criterion(cfg: Config) -> SOLOv2Criterion:
    """The losses of ``cfg.loss`` with the CRF teacher of ``cfg.crf`` (docs/method.md §3.3,
    §4); the correspondence branch is separate (:func:`build_corr_branch`)."""
    m = cfg.model
    return SOLOv2Criterion(num_classes=m.num_classes, num_grids=m.num_grids,
                           scale_ranges=m.scale_ranges, sigma=m.sigma, loss=cfg.loss, crf=cfg.crf)


def build_postprocessor(cfg: Config) -> SOLOv2PostProcessor:
    """Matrix-NMS inference of ``cfg.test`` (docs/method.md §7)."""
    t = cfg.test
    return SOLOv2PostProcessor(score_thr=t.score_thr, mask_thr=t.mask_thr, nms_pre=t.nms_pre,
                               update_thr=t.update_thr, kernel=t.kernel, sigma=t.sigma,
                               max_per_img=t.max_per_img, strides=HEAD_STRIDES,
                               refine=None if t.refine == "none" else t.refine,
                               refine_params=refine_params(cfg), refine_margin=t.refine_margin)
