"""SOLOv2 composition (docs/method.md §2.1, §9): shapes, normalisation, official key names."""

import pytest
import torch

from discobox.modeling.solov2.backbone import build_backbone
from discobox.modeling.solov2.fpn import FPN
from discobox.modeling.solov2.head import SOLOv2Head
from discobox.modeling.solov2.mask_branch import MaskFeatHead
from discobox.modeling.solov2.model import SOLOv2
from discobox.modeling.solov2.outputs import HeadOutput


def _model(*, name="resnet18", dcn=False, num_classes=3, small=True):
    backbone = build_backbone(name=name, dcn=dcn, weights=None)
    if small:
        fpn_c, seg_c, stacked, e, mid, grids = 32, 32, 1, 16, 16, (12, 10, 8, 6, 4)
    else:
        fpn_c, seg_c, stacked, e, mid, grids = 256, 512, 4, 256, 128, (40, 36, 24, 16, 12)
    return SOLOv2(
        backbone=backbone,
        neck=FPN(in_channels=backbone.out_channels, out_channels=fpn_c),
        bbox_head=SOLOv2Head(
            num_classes=num_classes,
            in_channels=fpn_c,
            seg_feat_channels=seg_c,
            stacked_convs=stacked,
            kernel_out_channels=e,
            num_grids=grids,
            use_dcn=dcn,
        ),
        mask_feat_head=MaskFeatHead(
            in_channels=fpn_c, out_channels=mid, num_outputs=e, use_dcn=dcn
        ),
    )


def test_forward_shapes_and_padding():
    torch.manual_seed(0)
    model = _model().train()
    images = torch.rand(2, 3, 64, 96) * 255
    out = model(images, [(64, 80), (50, 96)])
    assert isinstance(out, HeadOutput)
    assert [tuple(c.shape) for c in out.cate_logits] == [(2, 3, s, s) for s in (12, 10, 8, 6, 4)]
    assert [tuple(k.shape) for k in out.kernels] == [(2, 16, s, s) for s in (12, 10, 8, 6, 4)]
    assert out.mask_feat.shape == (2, 16, 16, 24)
    assert out.p2.shape == (2, 32, 16, 24)
    assert out.images.shape == (2, 3, 64, 96)
    assert bool((out.images[0, :, :, 80:] == 0).all()) and bool((out.images[1, :, 50:] == 0).all())
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    torch.testing.assert_close(out.images[0, :, :, :80], (images[0, :, :, :80] - mean) / std)
    # Same forward in train and eval mode (BN frozen, GN everywhere else).
    model.eval()
    with torch.no_grad():
        again = model(images, [(64, 80), (50, 96)])
    torch.testing.assert_close(again.cate_logits[0], out.cate_logits[0].detach())
    torch.testing.assert_close(again.mask_feat, out.mask_feat.detach())


def test_rejects_unpadded_input():
    with pytest.raises(ValueError, match="multiple of 32"):
        _model()(torch.zeros(1, 3, 60, 64))


def test_mask_logits():
    out = SOLOv2.mask_logits(torch.ones(2, 3), torch.ones(3, 4, 5))
    assert out.shape == (2, 4, 5) and bool((out == 3).all())


def test_r50_state_dict_keys():
    model = _model(name="resnet50", num_classes=80, small=False)
    sd = model.state_dict()
    assert not any("pixel" in k for k in sd)
    assert {k.split(".")[0] for k in sd} == {"backbone", "neck", "mask_feat_head", "bbox_head"}
    expected = {
        "backbone.conv1.weight": (64, 3, 7, 7),
        "backbone.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "backbone.layer2.0.conv2.weight": (128, 128, 3, 3),
        "backbone.layer4.2.bn3.running_var": (2048,),
        "neck.lateral_convs.0.conv.weight": (256, 256, 1, 1),
        "neck.lateral_convs.3.conv.weight": (256, 2048, 1, 1),
        "neck.fpn_convs.3.conv.bias": (256,),
        "mask_feat_head.convs_all_levels.3.conv0.conv.weight": (128, 258, 3, 3),
        "mask_feat_head.conv_pred.0.conv.weight": (256, 128, 1, 1),
        "bbox_head.kernel_convs.0.conv.weight": (512, 258, 3, 3),
        "bbox_head.kernel_convs.3.gn.weight": (512,),
        "bbox_head.cate_convs.0.conv.weight": (512, 256, 3, 3),
        "bbox_head.solo_cate.weight": (80, 512, 3, 3),
        "bbox_head.solo_cate.bias": (80,),
        "bbox_head.solo_kernel.weight": (256, 512, 3, 3),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert "backbone.fc.weight" not in sd and not any("conv_offset" in k for k in sd)
    # An official-style state dict (no buffers for normalisation) loads strictly.
    model.load_state_dict(sd, strict=True)


def test_r101_dcn_state_dict_keys():
    model = _model(name="resnet101", dcn=True, num_classes=80, small=False)
    sd = model.state_dict()
    expected = {
        "backbone.layer2.0.conv2.conv_offset.weight": (27, 128, 3, 3),
        "backbone.layer2.0.conv2.conv_offset.bias": (27,),
        "backbone.layer3.22.conv2.weight": (256, 256, 3, 3),
        "backbone.layer4.0.conv2.conv_offset.weight": (27, 512, 3, 3),
        "mask_feat_head.convs_all_levels.3.conv0.conv.weight": (128, 258, 3, 3),
        "mask_feat_head.convs_all_levels.3.conv0.conv.conv_offset.weight": (27, 258, 3, 3),
        "mask_feat_head.conv_pred.0.conv.conv_offset.weight": (3, 128, 1, 1),
        "bbox_head.kernel_convs.0.conv.weight": (512, 258, 3, 3),
        "bbox_head.kernel_convs.0.conv.conv_offset.weight": (27, 258, 3, 3),
        "bbox_head.cate_convs.3.conv.conv_offset.bias": (27,),
        "bbox_head.solo_cate.bias": (80,),
        "neck.lateral_convs.0.conv.weight": (256, 256, 1, 1),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert "backbone.layer2.0.conv2.bias" not in sd
    assert "backbone.layer1.0.conv2.conv_offset.weight" not in sd
    assert not any(k.endswith("conv.bias") and "conv_offset" not in k for k in sd if "head" in k)
    assert not any("pixel" in k for k in sd)
    assert sum(1 for k in sd if k.endswith("conv2.conv_offset.weight")) == 4 + 23 + 3
