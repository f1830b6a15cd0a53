"""DCNv2 module (docs/method.md §9.1): mmcv ModulatedDeformConv2dPack semantics."""

import pytest
import torch
import torch.nn.functional as F

from discobox.modeling.solov2.dcn import ModulatedDeformConv2d


@pytest.mark.parametrize(
    ("stride", "groups", "kernel_size"), [(1, 1, 3), (2, 1, 3), (2, 4, 3), (1, 1, 1)]
)
def test_zero_offsets_give_half_plain_conv(stride, groups, kernel_size):
    torch.manual_seed(0)
    dcn = ModulatedDeformConv2d(
        in_channels=8,
        out_channels=12,
        kernel_size=kernel_size,
        stride=stride,
        padding=kernel_size // 2,
        groups=groups,
        bias=False,
    )
    x = torch.randn(2, 8, 9, 10)
    ref = F.conv2d(x, dcn.weight, stride=stride, padding=kernel_size // 2, groups=groups)
    out = dcn(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, 0.5 * ref, atol=1e-5, rtol=1e-5)


def test_attributes_and_bias():
    dcn = ModulatedDeformConv2d(in_channels=6, out_channels=4, kernel_size=3, padding=1)
    names = dict(dcn.named_parameters())
    assert set(names) == {"weight", "bias", "conv_offset.weight", "conv_offset.bias"}
    assert dcn.weight.shape == (4, 6, 3, 3)
    assert dcn.conv_offset.weight.shape == (27, 6, 3, 3)
    assert torch.count_nonzero(dcn.conv_offset.weight) == 0
    assert torch.count_nonzero(dcn.conv_offset.bias) == 0
    torch.nn.init.normal_(dcn.bias)
    x = torch.randn(1, 6, 5, 5)
    ref = 0.5 * F.conv2d(x, dcn.weight, padding=1) + dcn.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(dcn(x), ref, atol=1e-5, rtol=1e-5)
    no_bias = ModulatedDeformConv2d(in_channels=6, out_channels=4, bias=False)
    assert no_bias.bias is None and "bias" not in dict(no_bias.named_parameters())


def test_offsets_shift_sampling_and_get_gradients():
    # A 1x1 DCN whose offset is a constant +1 in x samples the right neighbour.
    dcn = ModulatedDeformConv2d(in_channels=1, out_channels=1, kernel_size=1, bias=False)
    with torch.no_grad():
        dcn.weight.fill_(1.0)
        dcn.conv_offset.bias.copy_(torch.tensor([0.0, 1.0, 20.0]))  # dy, dx, mask logit
    x = torch.arange(12.0).view(1, 1, 3, 4)
    out = dcn(x)
    expected = torch.cat([x[..., 1:], torch.zeros(1, 1, 3, 1)], dim=-1)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    out.sum().backward()
    assert dcn.conv_offset.weight.grad is not None
