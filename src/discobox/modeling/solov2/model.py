"""The SOLOv2 network: backbone -> FPN -> (category + kernel head, mask-feature head).

docs/method.md §2.1: submodules are registered as ``backbone``, ``neck``, ``mask_feat_head`` and
``bbox_head`` (the official order and key prefixes, §9), so an official ``state_dict`` loads
strictly. Input normalisation happens inside the model with non-persistent buffers, which are
therefore not part of the ``state_dict``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .head import SOLOv2Head, dynamic_mask_logits
from .mask_branch import MaskFeatHead
from .outputs import HeadOutput

PIXEL_MEAN = (123.675, 116.28, 103.53)  # RGB, docs/method.md §3.1 step 6
PIXEL_STD = (58.395, 57.12, 57.375)


class SOLOv2(nn.Module):
    """SOLOv2 network; the same forward in training and evaluation (no sigmoid inside).

    Args:
        backbone: returns ``[C2, C3, C4, C5]`` (e.g. ``ResNetBackbone``).
        neck: maps ``[C2..C5]`` to ``[P2..P6]`` (e.g. ``FPN``).
        bbox_head: the :class:`SOLOv2Head` (official attribute name ``bbox_head``).
        mask_feat_head: the :class:`MaskFeatHead`.
        size_divisor: the padded input size must be a multiple of this (32).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        neck: nn.Module,
        bbox_head: SOLOv2Head,
        mask_feat_head: MaskFeatHead,
        size_divisor: int = 32,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.mask_feat_head = mask_feat_head
        self.bbox_head = bbox_head
        self.size_divisor = size_divisor
        self.register_buffer(
            "pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False
        )

    def normalize(self, images: Tensor, image_sizes: list[tuple[int, int]] | None) -> Tensor:
        """``(x - mean) / std``; with ``image_sizes`` the padding (bottom/right) is set to 0.

        ``images: float[B, 3, H, W]`` RGB 0..255 -> ``float[B, 3, H, W]``.
        """
        x = (images.float() - self.pixel_mean) / self.pixel_std
        if image_sizes is not None:
            if len(image_sizes) != x.shape[0]:
                raise ValueError(f"{len(image_sizes)} image sizes for {x.shape[0]} images")
            h, w = x.shape[-2:]
            rows = torch.arange(h, device=x.device)
            cols = torch.arange(w, device=x.device)
            sizes = torch.tensor(image_sizes, device=x.device, dtype=torch.long).view(-1, 2)
            valid = (rows.view(1, h, 1) < sizes[:, 0].view(-1, 1, 1)) & (
                cols.view(1, 1, w) < sizes[:, 1].view(-1, 1, 1)
            )
            x = x * valid.unsqueeze(1).to(x.dtype)
        return x

    def forward(
        self, images: Tensor, image_sizes: list[tuple[int, int]] | None = None
    ) -> HeadOutput:
        """Run the network.

        Args:
            images: ``float[B, 3, H, W]`` RGB 0..255, padded (bottom/right) with the mean colour;
                ``H`` and ``W`` multiples of ``size_divisor``.
            image_sizes: per image ``(h, w)`` before padding, or ``None``.

        Returns:
            :class:`HeadOutput` with per-level ``cate_logits`` ``[B, C, S_l, S_l]`` and ``kernels``
            ``[B, E, S_l, S_l]``, ``mask_feat`` ``[B, E, H/4, W/4]``, ``p2`` ``[B, 256, H/4,
            W/4]`` and the normalised ``images``.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.size_divisor or w % self.size_divisor:
            raise ValueError(f"padded size {(h, w)} is not a multiple of {self.size_divisor}")
        x = self.normalize(images, image_sizes)
        feats = self.neck(self.backbone(x))
        cate_logits, kernels = self.bbox_head(feats)
        mask_feat = self.mask_feat_head(feats[:4])
        return HeadOutput(
            cate_logits=cate_logits, kernels=kernels, mask_feat=mask_feat, p2=feats[0], images=x
        )

    @staticmethod
    def mask_logits(kernels: Tensor, mask_feat: Tensor) -> Tensor:
        """``kernels: float[N, E]``, ``mask_feat: float[E, h, w]`` -> ``float[N, h, w]`` (§2.7)."""
        return dynamic_mask_logits(kernels, mask_feat)
