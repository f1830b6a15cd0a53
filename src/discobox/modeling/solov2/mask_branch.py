"""SOLOv2 unified mask-feature branch (docs/method.md §2.6, §2.8, §9.3).

Four branches on P2..P5, each ``ConvGNReLU(3x3)`` followed by x2 bilinear upsampling until the
stride is 4 (P5 first gets the two CoordConv channels); the branch outputs are summed and passed
through a 1x1 ``ConvGNReLU`` (``conv_pred.0``), so mask features are non-negative. Keys:
``convs_all_levels.{i}.conv{j}.{conv,gn}.*`` and ``conv_pred.0.{conv,gn}.*``; the ``upsample{j}``
modules have no parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .head import ConvGNReLU, coord_features

NUM_LEVELS = 4  # P2..P5 (official start_level=0, end_level=3)


class MaskFeatHead(nn.Module):
    """Mask-feature head producing ``F: float[B, E, H/4, W/4]`` (docs/method.md §2.6).

    Initialisation is mmcv ConvModule's default, Kaiming-normal (fan_out, ReLU), because the
    official ``init_weights`` never runs (§2.8, §12.3); DCN convs keep their own init.

    Args:
        in_channels: FPN channels (256).
        out_channels: branch width (128; the official config calls it ``out_channels``).
        num_outputs: ``E``, output channels (256; the official config calls it ``num_classes``).
        use_dcn: DCNv2 for every conv, including the final 1x1 (§2.6, §9.3).

    Shapes:
        ``[P2, P3, P4, P5]`` at strides 4..32 (``float[B, in_channels, ., .]``; padded input a
        multiple of 32) -> ``float[B, num_outputs, H/4, W/4]``.
    """

    def __init__(
        self,
        *,
        in_channels: int = 256,
        out_channels: int = 128,
        num_outputs: int = 256,
        use_dcn: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_outputs = num_outputs
        self.convs_all_levels = nn.ModuleList()
        for i in range(NUM_LEVELS):
            branch = nn.Sequential()
            for j in range(max(i, 1)):
                if j == 0:
                    c_in = in_channels + 2 if i == NUM_LEVELS - 1 else in_channels
                else:
                    c_in = out_channels
                branch.add_module(
                    f"conv{j}",
                    ConvGNReLU(in_channels=c_in, out_channels=out_channels, use_dcn=use_dcn),
                )
                if i > 0:
                    branch.add_module(
                        f"upsample{j}",
                        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                    )
            self.convs_all_levels.append(branch)
        self.conv_pred = nn.Sequential(
            ConvGNReLU(
                in_channels=out_channels,
                out_channels=num_outputs,
                kernel_size=1,
                use_dcn=use_dcn,
            )
        )

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        """``[P2, P3, P4, P5] -> float[B, num_outputs, H/4, W/4]``."""
        if len(feats) != NUM_LEVELS:
            raise ValueError(f"expected {NUM_LEVELS} levels P2..P5, got {len(feats)}")
        out = self.convs_all_levels[0](feats[0])
        for i in range(1, NUM_LEVELS):
            x = feats[i]
            if i == NUM_LEVELS - 1:
                x = torch.cat((x, coord_features(x)), dim=1)
            y = self.convs_all_levels[i](x)
            if y.shape[-2:] != out.shape[-2:]:
                raise ValueError(
                    f"level {i} upsamples to {tuple(y.shape[-2:])}, P2 is {tuple(out.shape[-2:])};"
                    " pad the input to a multiple of 32"
                )
            out = out + y
        return self.conv_pred(out)
