"""SOLOv2 category and kernel branches (docs/method.md §2.4, §2.5, §2.7, §2.8).

Also holds the two building blocks shared with the mask-feature branch (``mask_branch.py``):
:class:`ConvGNReLU` (mmcv ``ConvModule`` with GroupNorm and ReLU, keys ``.conv`` / ``.gn``) and
:func:`coord_features` (the CoordConv x/y channels), plus :func:`dynamic_mask_logits` (§2.7),
which the criterion and the post-processor reuse.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dcn import ModulatedDeformConv2d


def group_norm_groups(channels: int, preferred: int = 32) -> int:
    """GroupNorm group count: ``preferred`` (32, official) when it divides ``channels``, else the
    largest divisor of ``channels`` not above it (e.g. 16 channels -> 16 groups, 48 -> 24)."""
    for g in range(min(preferred, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


class ConvGNReLU(nn.Module):
    """mmcv ``ConvModule(conv(no bias) -> GN -> ReLU)`` with attributes ``conv`` and ``gn``.

    docs/method.md §2.5/§2.6/§9.3-9.4: keys are ``<name>.conv.weight`` (plus
    ``.conv.conv_offset.{weight,bias}`` when ``use_dcn``) and ``<name>.gn.{weight,bias}``.
    Default init is mmcv's: Kaiming-normal (fan_out, ReLU) for a plain conv, the DCN's own
    uniform init (zero offsets) for a DCN conv, GN weight 1 and bias 0 (§2.8).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size; padding is ``kernel_size // 2``.
        use_dcn: use :class:`ModulatedDeformConv2d` (DCNv2) instead of ``nn.Conv2d``.
        num_groups: preferred GroupNorm groups (see :func:`group_norm_groups`).

    Shapes:
        ``float[B, in_channels, H, W] -> float[B, out_channels, H, W]`` (non-negative).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        use_dcn: bool = False,
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        padding = kernel_size // 2
        self.conv: nn.Module
        if use_dcn:
            self.conv = ModulatedDeformConv2d(
                in_channels=in_channels,
                out_channels=out_channels,
                kernel_size=kernel_size,
                padding=padding,
                bias=False,
            )
        else:
            self.conv = nn.Conv2d(
                in_channels, out_channels, kernel_size, padding=padding, bias=False
            )
            nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        self.gn = nn.GroupNorm(group_norm_groups(out_channels, num_groups), out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.gn(self.conv(x)))


def coord_features(x: Tensor) -> Tensor:
    """CoordConv channels for ``x: float[B, C, H, W]`` -> ``float[B, 2, H, W]``.

    Channel 0 is x = ``linspace(-1, 1, W)`` along the width, channel 1 is y = ``linspace(-1, 1,
    H)`` along the height (docs/method.md §2.5 step 1; appended after the features, x then y).
    """
    b, _, h, w = x.shape
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((xx, yy)).unsqueeze(0).expand(b, -1, -1, -1)


def dynamic_mask_logits(kernels: Tensor, mask_feat: Tensor) -> Tensor:
    """Instance-mask logits as a dynamic 1x1 convolution (docs/method.md §2.7).

    ``logit_n(y, x) = sum_e kernels[n, e] * mask_feat[e, y, x]``.

    Args:
        kernels: ``float[N, E]`` one dynamic kernel per selected grid cell (``N`` may be 0).
        mask_feat: ``float[E, h, w]`` mask features of the same image.

    Returns:
        ``float[N, h, w]`` logits (no sigmoid).
    """
    e, h, w = mask_feat.shape
    if kernels.ndim != 2 or kernels.shape[1] != e:
        raise ValueError(f"kernels must be [N, {e}], got {tuple(kernels.shape)}")
    return torch.einsum("ne,ehw->nhw", kernels.to(mask_feat.dtype), mask_feat)


def split_feats(feats: Sequence[Tensor]) -> list[Tensor]:
    """FPN ``[P2..P6]`` -> the five head levels at strides ``[8, 8, 16, 32, 32]`` (§2.4).

    Level 0 is P2 bilinearly downsampled by 0.5, levels 1-3 are P3..P5, level 4 is P6 bilinearly
    resized to P5's size (``align_corners=False``); all are cast to float32.
    """
    if len(feats) != 5:
        raise ValueError(f"expected 5 FPN levels P2..P6, got {len(feats)}")
    p2, p3, p4, p5, p6 = (f.float() for f in feats)
    return [
        F.interpolate(p2, scale_factor=0.5, mode="bilinear", align_corners=False),
        p3,
        p4,
        p5,
        F.interpolate(p6, size=p5.shape[-2:], mode="bilinear", align_corners=False),
    ]


class SOLOv2Head(nn.Module):
    """Category and dynamic-kernel branches of SOLOv2 (docs/method.md §2.4, §2.5, §2.8).

    Weights are shared across the five levels. Per level ``l`` the 256-channel feature gets the
    two CoordConv channels, is resized bilinearly to ``S_l x S_l``; the kernel tower sees all
    ``in_channels + 2`` channels, the category tower the first ``in_channels``.

    Args:
        num_classes: ``C`` (80 for COCO, 20 for VOC).
        in_channels: FPN channels (256).
        seg_feat_channels: tower width (512).
        stacked_convs: convs per tower (4).
        kernel_out_channels: ``E``, the dynamic-kernel length (256); equals the mask-feature
            channel count.
        num_grids: ``S_l`` per level.
        use_dcn: DCNv2 for all tower convs, including the first of each tower (§2.5 item 6).

    Shapes:
        ``[P2..P6]`` (``float[B, in_channels, ., .]``) -> ``(cate_logits, kernels)`` with
        ``cate_logits[l]: float[B, C, S_l, S_l]`` and ``kernels[l]: float[B, E, S_l, S_l]``.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int = 256,
        seg_feat_channels: int = 512,
        stacked_convs: int = 4,
        kernel_out_channels: int = 256,
        num_grids: Sequence[int] = (40, 36, 24, 16, 12),
        use_dcn: bool = False,
    ) -> None:
        super().__init__()
        if len(num_grids) != 5:
            raise ValueError(f"num_grids needs 5 entries (one per level), got {num_grids}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.seg_feat_channels = seg_feat_channels
        self.kernel_out_channels = kernel_out_channels
        self.num_grids = tuple(int(s) for s in num_grids)
        self.kernel_convs = nn.ModuleList()
        self.cate_convs = nn.ModuleList()
        for i in range(stacked_convs):
            k_in = in_channels + 2 if i == 0 else seg_feat_channels
            c_in = in_channels if i == 0 else seg_feat_channels
            self.kernel_convs.append(
                ConvGNReLU(in_channels=k_in, out_channels=seg_feat_channels, use_dcn=use_dcn)
            )
            self.cate_convs.append(
                ConvGNReLU(in_channels=c_in, out_channels=seg_feat_channels, use_dcn=use_dcn)
            )
        k_last = seg_feat_channels if stacked_convs else in_channels + 2
        c_last = seg_feat_channels if stacked_convs else in_channels
        self.solo_cate = nn.Conv2d(c_last, num_classes, 3, padding=1)
        self.solo_kernel = nn.Conv2d(k_last, kernel_out_channels, 3, padding=1)
        self.reset_parameters()

    def reset_parameters(self, prior_prob: float = 0.01) -> None:
        """§2.8: tower convs and both predictors N(0, 0.01); category bias -log((1-p)/p)."""
        for tower in (self.kernel_convs, self.cate_convs):
            for m in tower:
                nn.init.normal_(m.conv.weight, std=0.01)
        nn.init.normal_(self.solo_cate.weight, std=0.01)
        nn.init.constant_(self.solo_cate.bias, -math.log((1 - prior_prob) / prior_prob))
        nn.init.normal_(self.solo_kernel.weight, std=0.01)
        nn.init.zeros_(self.solo_kernel.bias)

    def forward_single(self, x: Tensor, num_grid: int) -> tuple[Tensor, Tensor]:
        """One level: ``float[B, in, H_l, W_l]`` -> ``(float[B, C, S, S], float[B, E, S, S])``."""
        feat = torch.cat((x, coord_features(x)), dim=1)
        feat = F.interpolate(feat, size=num_grid, mode="bilinear", align_corners=False)
        cate_feat = feat[:, :-2].contiguous()
        kernel_feat = feat.contiguous()
        for conv in self.kernel_convs:
            kernel_feat = conv(kernel_feat)
        for conv in self.cate_convs:
            cate_feat = conv(cate_feat)
        return self.solo_cate(cate_feat), self.solo_kernel(kernel_feat)

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """``[P2..P6] -> (cate_logits per level, kernels per level)``; no sigmoid (§2.5)."""
        cate_logits, kernels = [], []
        for x, s in zip(split_feats(feats), self.num_grids):
            cate, kernel = self.forward_single(x, s)
            cate_logits.append(cate)
            kernels.append(kernel)
        return cate_logits, kernels
