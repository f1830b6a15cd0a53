"""mmdet-style FPN (docs/method.md §2.3, §9.2)."""

import torch
import torch.nn.functional as F

from discobox.modeling.solov2.fpn import FPN


def test_shapes_and_keys():
    fpn = FPN(in_channels=[64, 128, 256, 512], out_channels=32)
    channels, strides = [64, 128, 256, 512], [4, 8, 16, 32]
    feats = [torch.randn(2, c, 64 // s, 128 // s) for c, s in zip(channels, strides)]
    outs = fpn(feats)
    assert [tuple(p.shape) for p in outs] == [
        (2, 32, 64 // s, 128 // s) for s in (4, 8, 16, 32, 64)
    ]
    keys = set(fpn.state_dict())
    for i in range(4):
        assert {f"lateral_convs.{i}.conv.weight", f"fpn_convs.{i}.conv.bias"} <= keys
    assert fpn.lateral_convs[3].conv.weight.shape == (32, 512, 1, 1)
    assert fpn.fpn_convs[0].conv.weight.shape == (32, 32, 3, 3)
    assert all(torch.count_nonzero(m.conv.bias) == 0 for m in fpn.lateral_convs)


def test_top_down_and_p6_semantics():
    torch.manual_seed(0)
    fpn = FPN(in_channels=[4, 4, 4, 4], out_channels=4)
    feats = [torch.randn(1, 4, s, s) for s in (16, 8, 4, 2)]
    outs = fpn(feats)
    lat = [c.conv(x) for c, x in zip(fpn.lateral_convs, feats)]
    lat[2] = lat[2] + F.interpolate(lat[3], size=(4, 4), mode="nearest")
    lat[1] = lat[1] + F.interpolate(lat[2], size=(8, 8), mode="nearest")
    torch.testing.assert_close(outs[1], fpn.fpn_convs[1].conv(lat[1]))
    torch.testing.assert_close(outs[4], outs[3][:, :, ::2, ::2])


def test_odd_sizes_resize_to_finer_lateral():
    fpn = FPN(in_channels=[8, 8], out_channels=8, num_outs=3)
    outs = fpn([torch.randn(1, 8, 7, 9), torch.randn(1, 8, 4, 5)])
    assert [tuple(p.shape[-2:]) for p in outs] == [(7, 9), (4, 5), (2, 3)]
