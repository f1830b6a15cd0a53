"""Feature pyramid network with mmdet ``FPN`` semantics and key names (docs/method.md §2.3, §9.2).

1x1 lateral convs and 3x3 output convs, both with bias, no norm, no activation; the top-down
path adds the nearest-upsampled coarser lateral resized to the finer lateral's size; extra levels
are ``max_pool2d(kernel=1, stride=2)`` of the last output (P6 = plain subsampling of P5).
Xavier-uniform init, bias 0. Keys: ``lateral_convs.{i}.conv.*`` and ``fpn_convs.{i}.conv.*``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class PlainConv(nn.Module):
    """A conv held under attribute ``.conv`` (mmcv ``ConvModule`` without norm and activation)."""

    def __init__(self, *, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class FPN(nn.Module):
    """mmdet FPN (``start_level=0``, ``add_extra_convs=False``), docs/method.md §2.3.

    Args:
        in_channels: channels of the backbone outputs C2..C5, e.g. ``[256, 512, 1024, 2048]``
            (ResNet-50) or ``[64, 128, 256, 512]`` (ResNet-18).
        out_channels: channels of every output level (256 officially).
        num_outs: number of output levels; levels beyond ``len(in_channels)`` are max-pool
            subsamplings of the previous one (5 gives P2..P6).

    Shapes:
        ``[C2..C5]`` with ``C_i: float[B, in_channels[i], H/2^(i+2), W/2^(i+2)]`` ->
        ``[P2..P6]`` with ``P_i: float[B, out_channels, ~H/2^i, ~W/2^i]`` (strides 4..64).
    """

    def __init__(
        self, *, in_channels: Sequence[int], out_channels: int = 256, num_outs: int = 5
    ) -> None:
        super().__init__()
        if num_outs < len(in_channels):
            raise ValueError(f"num_outs ({num_outs}) < number of inputs ({len(in_channels)})")
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.lateral_convs = nn.ModuleList(
            PlainConv(in_channels=c, out_channels=out_channels, kernel_size=1) for c in in_channels
        )
        self.fpn_convs = nn.ModuleList(
            PlainConv(in_channels=out_channels, out_channels=out_channels, kernel_size=3)
            for _ in in_channels
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """``[C2..C5] -> [P2..P(num_outs+1)]`` (see the class docstring for shapes)."""
        if len(feats) != len(self.lateral_convs):
            raise ValueError(f"expected {len(self.lateral_convs)} inputs, got {len(feats)}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"
            )
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return outs
