"""ResNet / ResNeXt backbone with mmdet semantics, built from torchvision's ResNet.

docs/method.md §2.2: outputs C2..C5 (strides 4/8/16/32); ``frozen_stages=1`` freezes the stem and
``layer1`` (no gradient, eval mode); ``norm_eval=True`` keeps *every* BatchNorm in eval mode with
frozen running statistics while the affine gamma/beta of the unfrozen stages stay trainable (this
is not torchvision's ``FrozenBatchNorm2d``); optional DCNv2 replaces ``conv2`` of every bottleneck
of the selected stages. Parameter names equal torchvision's minus ``fc.*`` (docs/method.md §9.1), so
torchvision and official DiscoBox backbone weights load by plain copy.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from .dcn import ModulatedDeformConv2d

# name -> (block, blocks per stage, groups, width_per_group)
ARCHS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int], int, int]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), 1, 64),
    "resnet34": (BasicBlock, (3, 4, 6, 3), 1, 64),
    "resnet50": (Bottleneck, (3, 4, 6, 3), 1, 64),
    "resnet101": (Bottleneck, (3, 4, 23, 3), 1, 64),
    "resnext50_32x4d": (Bottleneck, (3, 4, 6, 3), 32, 4),
    "resnext101_32x4d": (Bottleneck, (3, 4, 23, 3), 32, 4),
    "resnext101_64x4d": (Bottleneck, (3, 4, 23, 3), 64, 4),
}


class ResNetBackbone(nn.Module):
    """ResNet/ResNeXt trunk returning ``[C2, C3, C4, C5]`` (docs/method.md §2.2).

    Args:
        block: torchvision ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
        groups: ResNeXt cardinality (1 for ResNet).
        width_per_group: ResNeXt base width (64 for ResNet); bottleneck width is
            ``floor(planes * width_per_group / 64) * groups`` as in mmdet and torchvision.
        dcn_stages: per stage (layer1..layer4) whether every block's ``conv2`` becomes a
            :class:`ModulatedDeformConv2d` (no bias, same stride and groups). Bottleneck only.
        frozen_stages: ``-1`` freezes nothing, ``0`` the stem, ``k >= 1`` the stem and
            ``layer1..layer{k}``.
        norm_eval: keep every BatchNorm in eval mode during training.

    Attributes:
        out_channels: channels of C2..C5, e.g. ``[256, 512, 1024, 2048]`` (Bottleneck) or
            ``[64, 128, 256, 512]`` (BasicBlock).
        strides: ``[4, 8, 16, 32]``.

    Shapes:
        ``x: float[B, 3, H, W]`` (normalised) -> list of
        ``float[B, out_channels[i], H / s_i, W / s_i]``.
    """

    def __init__(
        self,
        *,
        block: type[nn.Module],
        layers: Sequence[int],
        groups: int = 1,
        width_per_group: int = 64,
        dcn_stages: Sequence[bool] = (False, False, False, False),
        frozen_stages: int = 1,
        norm_eval: bool = True,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or len(dcn_stages) != 4:
            raise ValueError("layers and dcn_stages need one entry per stage (4)")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be in [-1, 4], got {frozen_stages}")
        if any(dcn_stages) and block is not Bottleneck:
            raise ValueError("DCN is only supported for Bottleneck backbones (ResNet-50 and up)")
        net = ResNet(block, list(layers), groups=groups, width_per_group=width_per_group)
        # Same attribute names as torchvision (and mmdet), minus avgpool/fc.
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4
        expansion = block.expansion
        self.out_channels = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
        self.strides = [4, 8, 16, 32]
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        for stage, use_dcn in zip(self.stages(), dcn_stages):
            if use_dcn:
                for blk in stage:
                    blk.conv2 = _to_dcn(blk.conv2)
        self.train(True)

    def stages(self) -> list[nn.Sequential]:
        """``[layer1, layer2, layer3, layer4]``."""
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.conv1, self.bn1, *self.stages()[: self.frozen_stages]]

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNetBackbone:
        """Frozen stages stay in eval mode; with ``norm_eval`` every BatchNorm does too."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        """``float[B, 3, H, W] -> [C2, C3, C4, C5]`` at strides 4, 8, 16, 32."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for stage in self.stages():
            x = stage(x)
            outs.append(x)
        return outs

    def load_weights(self, path: str | Path) -> None:
        """Load a local torchvision-style state dict (never downloads).

        Accepts a plain state dict, or an mmcv/discobox checkpoint with a ``state_dict`` (or
        ``model``) entry; a ``backbone.`` key prefix is stripped. ``fc.*`` keys are ignored;
        missing keys other than DCN ``conv_offset`` ones and unexpected keys produce a warning.
        Shape mismatches raise.
        """
        obj = torch.load(Path(path), map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
        if any(k.startswith("backbone.") for k in obj):
            obj = {k[len("backbone.") :]: v for k, v in obj.items() if k.startswith("backbone.")}
        state = {k: v for k, v in obj.items() if not k.startswith("fc.")}
        result = self.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if ".conv_offset." not in k]
        if missing:
            warnings.warn(
                f"{path}: {len(missing)} backbone keys missing, e.g. {missing[:5]}", stacklevel=2
            )
        if result.unexpected_keys:
            warnings.warn(
                f"{path}: {len(result.unexpected_keys)} unexpected backbone keys, "
                f"e.g. {result.unexpected_keys[:5]}",
                stacklevel=2,
            )


def _to_dcn(conv: nn.Conv2d) -> ModulatedDeformConv2d:
    """A bias-free DCNv2 with ``conv``'s geometry (mmdet ``stage_with_dcn``, docs/method.md
    §2.2)."""
    return ModulatedDeformConv2d(
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        kernel_size=conv.kernel_size[0],
        stride=conv.stride[0],
        padding=conv.padding[0],
        dilation=conv.dilation[0],
        groups=conv.groups,
        bias=False,
    )


def build_backbone(
    *,
    name: str,
    dcn: bool,
    weights: str | None,
    frozen_stages: int = 1,
    norm_eval: bool = True,
) -> ResNetBackbone:
    """Build a backbone by name (see :data:`ARCHS`), optionally loading local weights.

    Args:
        name: ``resnet18/34/50/101``, ``resnext50_32x4d``, ``resnext101_32x4d`` or
            ``resnext101_64x4d`` (the official X-101 is 64x4d, docs/method.md §2.2).
        dcn: DCNv2 in stages 2-4 (``stage_with_dcn=(False, True, True, True)``).
        weights: path to a local torchvision state dict, or ``None`` for random init
            (torchvision's Kaiming init, equal to mmdet's).
        frozen_stages: see :class:`ResNetBackbone`.
        norm_eval: see :class:`ResNetBackbone`.
    """
    if name not in ARCHS:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(ARCHS)}")
    block, layers, groups, width = ARCHS[name]
    if dcn and block is not Bottleneck:
        raise ValueError(f"DCN is not supported for {name} (BasicBlock); use ResNet-50 or larger")
    backbone = ResNetBackbone(
        block=block,
        layers=layers,
        groups=groups,
        width_per_group=width,
        dcn_stages=(False, True, True, True) if dcn else (False, False, False, False),
        frozen_stages=frozen_stages,
        norm_eval=norm_eval,
    )
    if weights is not None:
        backbone.load_weights(weights)
    return backbone
