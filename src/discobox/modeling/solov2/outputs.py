"""The tensor contract between the network, the criterion and the post-processor."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor


@dataclass
class HeadOutput:
    """Raw outputs of one SOLOv2 forward pass (train and test alike; no sigmoid applied).

    Attributes:
        cate_logits: per level ``l`` (5 levels), ``float[B, C, S_l, S_l]`` category logits.
        kernels: per level, ``float[B, E, S_l, S_l]`` dynamic 1x1 kernels (E = 256 by default).
        mask_feat: ``float[B, E, H/4, W/4]`` unified mask features (docs/method.md §2.6).
        p2: ``float[B, 256, H/4, W/4]`` FPN level P2, used by the correspondence branch (§5.1).
        images: ``float[B, 3, H, W]`` the normalised, padded input (padding is 0), used by the CRF
            colour kernel (§4.3).
    """

    cate_logits: list[Tensor]
    kernels: list[Tensor]
    mask_feat: Tensor
    p2: Tensor
    images: Tensor

    @property
    def num_levels(self) -> int:
        return len(self.cate_logits)

    def quarter_images(self, index: int | None = None) -> Tensor:
        """``float[B, 3, h, w]`` (``[3, h, w]`` for one ``index``): the normalised padded
        images, bilinear ``align_corners=True`` to mask resolution, the CRF's colours (§4.3
        "Colour features"); detached."""
        images = self.images if index is None else self.images[index:index + 1]
        q = F.interpolate(images.detach().float(), size=tuple(self.mask_feat.shape[-2:]),
                          mode="bilinear", align_corners=True)
        return q if index is None else q[0]
