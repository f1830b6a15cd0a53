"""SOLOv2 category/kernel head (docs/method.md §2.4, §2.5, §2.7, §2.8, §9.4)."""

import math

import pytest
import torch
import torch.nn.functional as F

from discobox.modeling.solov2.dcn import ModulatedDeformConv2d
from discobox.modeling.solov2.head import (
    ConvGNReLU,
    SOLOv2Head,
    coord_features,
    dynamic_mask_logits,
    group_norm_groups,
    split_feats,
)


def _pyramid(b=2, c=16, h=64, w=96):
    return [torch.randn(b, c, h // s, w // s) for s in (4, 8, 16, 32, 64)]


def test_split_feats_strides():
    levels = split_feats(_pyramid())
    assert [tuple(x.shape[-2:]) for x in levels] == [(8, 12), (8, 12), (4, 6), (2, 3), (2, 3)]


def test_head_output_shapes():
    grids = (12, 10, 8, 6, 4)
    head = SOLOv2Head(
        num_classes=5,
        in_channels=16,
        seg_feat_channels=24,
        stacked_convs=2,
        kernel_out_channels=8,
        num_grids=grids,
    )
    cate, kernels = head(_pyramid())
    assert [tuple(c.shape) for c in cate] == [(2, 5, s, s) for s in grids]
    assert [tuple(k.shape) for k in kernels] == [(2, 8, s, s) for s in grids]
    assert head.kernel_convs[0].conv.weight.shape == (24, 18, 3, 3)
    assert head.cate_convs[0].conv.weight.shape == (24, 16, 3, 3)
    assert head.kernel_convs[0].gn.num_groups == 24  # largest divisor of 24 <= 32
    assert head.kernel_convs[0].conv.bias is None
    torch.testing.assert_close(
        head.solo_cate.bias, torch.full((5,), -math.log(99.0)), rtol=0, atol=1e-6
    )
    assert torch.count_nonzero(head.solo_kernel.bias) == 0
    assert head.kernel_convs[0].conv.weight.std() < 0.02


def test_head_dcn_towers():
    head = SOLOv2Head(
        num_classes=3,
        in_channels=8,
        seg_feat_channels=16,
        stacked_convs=1,
        kernel_out_channels=8,
        num_grids=(5, 4, 3, 2, 2),
        use_dcn=True,
    )
    assert isinstance(head.kernel_convs[0].conv, ModulatedDeformConv2d)
    assert head.kernel_convs[0].conv.conv_offset.weight.shape == (27, 10, 3, 3)
    assert torch.count_nonzero(head.cate_convs[0].conv.conv_offset.weight) == 0
    cate, _ = head(_pyramid(b=1, c=8, h=64, w=64))
    assert cate[0].shape == (1, 3, 5, 5)


@pytest.mark.parametrize(("channels", "groups"), [(512, 32), (128, 32), (16, 16), (48, 24)])
def test_group_norm_groups(channels, groups):
    assert group_norm_groups(channels) == groups
    assert ConvGNReLU(in_channels=4, out_channels=channels).gn.num_groups == groups


def test_coord_features():
    coords = coord_features(torch.zeros(2, 5, 3, 4))
    assert coords.shape == (2, 2, 3, 4)
    torch.testing.assert_close(coords[0, 0, 1], torch.linspace(-1, 1, 4))  # x along width
    torch.testing.assert_close(coords[1, 1, :, 2], torch.linspace(-1, 1, 3))  # y along height


def test_dynamic_mask_logits_equals_conv1x1():
    kernels = torch.randn(7, 8)
    feat = torch.randn(8, 5, 6)
    ref = F.conv2d(feat[None], kernels[:, :, None, None])[0]
    torch.testing.assert_close(dynamic_mask_logits(kernels, feat), ref, atol=1e-5, rtol=1e-5)
    assert dynamic_mask_logits(kernels[:0], feat).shape == (0, 5, 6)
