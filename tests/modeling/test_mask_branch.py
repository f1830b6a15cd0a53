"""Mask-feature head (docs/method.md §2.6, §9.3)."""

import torch

from discobox.modeling.solov2.dcn import ModulatedDeformConv2d
from discobox.modeling.solov2.mask_branch import MaskFeatHead


def test_shapes_and_nonnegative():
    head = MaskFeatHead(in_channels=16, out_channels=8, num_outputs=12)
    feats = [torch.randn(2, 16, 64 // s, 96 // s) for s in (4, 8, 16, 32)]
    out = head(feats)
    assert out.shape == (2, 12, 16, 24) and out.dtype == torch.float32
    assert bool((out >= 0).all())


def test_official_keys_and_shapes():
    sd = MaskFeatHead().state_dict()
    expected = {
        "convs_all_levels.0.conv0.conv.weight": (128, 256, 3, 3),
        "convs_all_levels.0.conv0.gn.weight": (128,),
        "convs_all_levels.1.conv0.conv.weight": (128, 256, 3, 3),
        "convs_all_levels.2.conv1.conv.weight": (128, 128, 3, 3),
        "convs_all_levels.3.conv0.conv.weight": (128, 258, 3, 3),
        "convs_all_levels.3.conv2.gn.bias": (128,),
        "conv_pred.0.conv.weight": (256, 128, 1, 1),
        "conv_pred.0.gn.weight": (256,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert len([k for k in sd if k.endswith("conv.weight")]) == 8
    assert not any("upsample" in k or k.endswith("conv.bias") for k in sd)


def test_dcn_everywhere_including_1x1():
    head = MaskFeatHead(in_channels=8, out_channels=8, num_outputs=8, use_dcn=True)
    convs = [m.conv for m in head.modules() if hasattr(m, "gn")]
    assert len(convs) == 8 and all(isinstance(c, ModulatedDeformConv2d) for c in convs)
    assert head.conv_pred[0].conv.conv_offset.weight.shape == (3, 8, 1, 1)
    out = head([torch.randn(1, 8, 32 // s, 32 // s) for s in (1, 2, 4, 8)])
    assert out.shape == (1, 8, 32, 32)
