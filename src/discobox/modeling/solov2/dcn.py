"""Modulated deformable convolution (DCNv2) with mmcv ``ModulatedDeformConv2dPack`` semantics.

docs/method.md §9.1: the module owns ``weight`` (``[C_out, C_in / groups, k, k]``), an optional
``bias`` and ``conv_offset``, a plain ``nn.Conv2d`` with ``3 * deform_groups * k * k`` output
channels (same kernel size, stride, padding and dilation as the main conv), zero-initialised.
Its output is split into three equal chunks ``(o1, o2, m)``; ``offset = cat(o1, o2)`` and
``mask = sigmoid(m)`` are passed unchanged to :func:`torchvision.ops.deform_conv2d`, which reads
offsets as interleaved ``(dy, dx)`` pairs per kernel tap, as mmcv's kernel does.

Because ``conv_offset`` starts at zero, a freshly built module computes ``0.5 * conv(x) + bias``
(``sigmoid(0) = 0.5``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops import deform_conv2d


class ModulatedDeformConv2d(nn.Module):
    """DCNv2 layer, a drop-in replacement for ``nn.Conv2d`` (docs/method.md §2.2, §2.5, §2.6, §9.1).

    Args:
        in_channels: input channels ``C_in``.
        out_channels: output channels ``C_out``.
        kernel_size: square kernel size ``k``.
        stride: convolution stride (also used by ``conv_offset``).
        padding: zero padding (also used by ``conv_offset``).
        dilation: kernel dilation (also used by ``conv_offset``).
        groups: convolution groups (ResNeXt); ``conv_offset`` is never grouped, as in mmcv.
        deform_groups: offset groups; every official model uses 1.
        bias: whether the main convolution has a bias.

    Shapes:
        ``x: float[B, C_in, H, W] -> float[B, C_out, H', W']`` with the usual conv arithmetic.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        deform_groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be "
                f"divisible by groups ({groups})"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = (kernel_size, kernel_size)
        self.stride = (stride, stride)
        self.padding = (padding, padding)
        self.dilation = (dilation, dilation)
        self.groups = groups
        self.deform_groups = deform_groups
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size)
        )
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.conv_offset = nn.Conv2d(
            in_channels,
            3 * deform_groups * kernel_size * kernel_size,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=True,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """mmcv init: main weight ``U(+-1/sqrt(C_in * k * k))``, bias 0, ``conv_offset`` 0."""
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        stdv = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -stdv, stdv)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``float[B, C_in, H, W] -> float[B, C_out, H', W']``."""
        o1, o2, m = torch.chunk(self.conv_offset(x), 3, dim=1)
        offset = torch.cat((o1, o2), dim=1)
        mask = torch.sigmoid(m)
        return deform_conv2d(
            x,
            offset,
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            mask=mask,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, deform_groups={self.deform_groups}, "
            f"bias={self.bias is not None}"
        )
