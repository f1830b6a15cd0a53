"""ResNet / ResNeXt backbone (docs/method.md §2.2, §9.1)."""

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from discobox.modeling.solov2.backbone import build_backbone
from discobox.modeling.solov2.dcn import ModulatedDeformConv2d


@pytest.mark.parametrize(
    ("name", "channels"),
    [
        ("resnet18", [64, 128, 256, 512]),
        ("resnet50", [256, 512, 1024, 2048]),
        ("resnext101_32x4d", [256, 512, 1024, 2048]),
    ],
)
def test_output_shapes(name, channels):
    net = build_backbone(name=name, dcn=False, weights=None).eval()
    assert net.out_channels == channels
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [
        (1, c, 64 // s, 96 // s) for c, s in zip(channels, (4, 8, 16, 32))
    ]
    assert all(f.dtype == torch.float32 for f in feats)


def test_resnext_widths():
    x32 = build_backbone(name="resnext101_32x4d", dcn=False, weights=None)
    assert x32.layer1[0].conv2.weight.shape == (128, 4, 3, 3)
    assert x32.layer4[0].conv2.weight.shape == (1024, 32, 3, 3)
    x64 = build_backbone(name="resnext101_64x4d", dcn=True, weights=None)
    assert x64.layer1[0].conv2.weight.shape == (256, 4, 3, 3)
    conv2 = x64.layer2[0].conv2
    assert isinstance(conv2, ModulatedDeformConv2d)
    assert conv2.groups == 64 and conv2.stride == (2, 2) and conv2.bias is None
    assert conv2.weight.shape == (512, 8, 3, 3)
    assert conv2.conv_offset.weight.shape == (27, 512, 3, 3)
    assert conv2.conv_offset.stride == (2, 2)
    assert len(x64.layer3) == 23


def test_dcn_resnet50_forward():
    net = build_backbone(name="resnet50", dcn=True, weights=None).eval()
    assert not isinstance(net.layer1[0].conv2, ModulatedDeformConv2d)
    for stage in (net.layer2, net.layer3, net.layer4):
        assert all(isinstance(b.conv2, ModulatedDeformConv2d) for b in stage)
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]


def test_dcn_basicblock_rejected():
    with pytest.raises(ValueError, match="DCN"):
        build_backbone(name="resnet18", dcn=True, weights=None)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone(name="resnet19", dcn=False, weights=None)


def test_frozen_stages_and_norm_eval():
    net = build_backbone(name="resnet18", dcn=False, weights=None)
    net.train()
    for module in (net.conv1, net.bn1, net.layer1):
        assert all(not p.requires_grad for p in module.parameters())
    for module in (net.layer2, net.layer3, net.layer4):
        assert all(p.requires_grad for p in module.parameters())
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    assert net.layer2[0].bn1.weight.requires_grad and net.layer2[0].bn1.bias.requires_grad
    assert net.layer2.training  # non-BN modules of unfrozen stages follow train()
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    net(torch.randn(2, 3, 64, 64)).__getitem__(-1).sum().backward()
    after = net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert net.layer2[0].bn1.weight.grad is not None
    assert net.conv1.weight.grad is None


def test_no_norm_eval_and_no_freeze():
    net = build_backbone(
        name="resnet18", dcn=False, weights=None, frozen_stages=-1, norm_eval=False
    ).train()
    assert all(p.requires_grad for p in net.parameters())
    assert all(m.training for m in net.modules() if isinstance(m, nn.BatchNorm2d))


def test_load_local_weights(tmp_path):
    torch.manual_seed(0)
    ref = resnet18()
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)  # includes fc.*, which must be ignored silently
    net = build_backbone(name="resnet18", dcn=False, weights=str(path))
    ours = net.state_dict()
    assert set(ours) == {k for k in ref.state_dict() if not k.startswith("fc.")}
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in ours.items())
    # A partial checkpoint warns about the missing keys.
    partial = {k: v for k, v in ref.state_dict().items() if not k.startswith("layer4")}
    torch.save({"state_dict": partial}, path)
    with pytest.warns(UserWarning, match="missing"):
        build_backbone(name="resnet18", dcn=False, weights=str(path))


def test_load_into_dcn_backbone_without_offset_warnings(tmp_path, recwarn):
    src = build_backbone(name="resnet50", dcn=False, weights=None)
    path = tmp_path / "r50.pth"
    torch.save(src.state_dict(), path)
    net = build_backbone(name="resnet50", dcn=True, weights=str(path))
    assert not [w for w in recwarn if "missing" in str(w.message)]
    assert torch.equal(net.layer3[5].conv2.weight, src.layer3[5].conv2.weight)
