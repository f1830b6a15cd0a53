"""Loss functions (docs/method.md §4.1, §4.2) and the optional BoxInst pairwise term."""

import math

import pytest
import torch

from discobox.modeling.boxsup.losses import (
    color_similarity,
    dice_loss,
    floored_sigmoid,
    focal_loss,
    mask_dice_loss,
    pairwise_color_loss,
    projection_loss,
    rgb_to_lab,
)


def test_focal_loss_hand_computed():
    logits = torch.zeros((4, 3))
    onehot = torch.zeros((4, 3))
    # empty targets: every element is a negative, p = 0.5: (1-a) p^2 (-log(1-p))
    neg = 0.75 * 0.25 * math.log(2)
    assert float(focal_loss(logits, onehot, avg_factor=1)) == pytest.approx(12 * neg)
    onehot[1, 2] = 1  # one object: a (1-p)^2 (-log p) for that element
    pos = 0.25 * 0.25 * math.log(2)
    got = focal_loss(logits, onehot, avg_factor=2)
    assert float(got) == pytest.approx((11 * neg + pos) / 2)
    assert got.dtype == torch.float32
    assert focal_loss(torch.zeros((0, 3)), torch.zeros((0, 3)), avg_factor=1) == 0


def test_dice_loss_hand_computed():
    pred = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    target = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    got = dice_loss(pred, target)
    # 1 - 2*1 / (2 + 0.001 + 1 + 0.001); empty target -> 1
    torch.testing.assert_close(got, torch.tensor([1 - 2 / 3.002, 1.0]))
    assert dice_loss(torch.zeros((0, 5)), torch.zeros((0, 5))).shape == (0,)


def test_projection_loss_hand_computed():
    box = torch.zeros((1, 4, 4))
    box[0, 1:3, 1:3] = 1
    probs = torch.zeros((1, 4, 4))
    probs[0, 1, 1] = 1.0
    # both projections: p = [0,1,0,0], t = [0,1,1,0] -> 1 - 2/(1 + 2 + 0.002) each
    got = projection_loss(probs, box)
    assert got.shape == (1,)
    assert float(got[0]) == pytest.approx(2 * (1 - 2 / 3.002))
    # projections of the full box itself: only the eps terms remain
    assert float(projection_loss(box, box)[0]) == pytest.approx(2 * (1 - 4 / 4.002), rel=1e-3)
    # a prediction filling the box's rows and columns everywhere outside still scores 0 there
    cross = torch.zeros((1, 4, 4))
    cross[0, 1, 1] = cross[0, 2, 2] = 1.0
    expected = 2 * (1 - 4 / 4.002)
    assert float(projection_loss(cross, box)[0]) == pytest.approx(expected, rel=1e-3)
    assert projection_loss(torch.zeros((0, 4, 4)), torch.zeros((0, 4, 4))).shape == (0,)


def test_projection_loss_gradient_and_fp32():
    logits = torch.randn((2, 6, 6), dtype=torch.float64, requires_grad=True)
    box = torch.zeros((2, 6, 6))
    box[:, 2:4, 1:5] = 1
    loss = projection_loss(torch.sigmoid(logits), box)
    assert loss.dtype == torch.float32
    loss.sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_mask_dice_loss():
    masks = torch.zeros((1, 5, 5))
    masks[0, 1:4, 1:4] = 1
    logits = (masks * 2 - 1) * 50
    assert float(mask_dice_loss(logits, masks)[0]) == pytest.approx(0.0, abs=1e-3)
    assert float(mask_dice_loss(-logits, masks)[0]) == pytest.approx(1.0, abs=1e-3)


def test_rgb_to_lab_reference_values():
    rgb = torch.tensor([[255.0, 0.0, 255.0], [255.0, 0.0, 0.0], [255.0, 0.0, 0.0]])
    lab = rgb_to_lab(rgb.view(3, 1, 3))
    # pixel 0 white, 1 black, 2 red (skimage: 53.24, 80.09, 67.20)
    torch.testing.assert_close(lab[:, 0, 0], torch.tensor([100.0, 0.0, 0.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(lab[:, 0, 1], torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(lab[:, 0, 2], torch.tensor([53.24, 80.09, 67.20]), atol=0.05, rtol=0)


def test_pairwise_color_loss():
    h, w = 8, 12
    lab = torch.zeros((3, h, w))
    lab[0] = 50.0
    lab[0, :, 6:] = 90.0  # two flat colour regions
    sim = color_similarity(lab)  # 3x3 neighbourhood, dilation 2
    assert sim.shape == (8, h, w)
    assert float(sim[:, 4, 3].min()) == pytest.approx(1.0)  # neighbours x 1, 3, 5: same colour
    assert float(sim[:, 4, 5].min()) < 0.3  # neighbour x = 7 is across the edge
    box = torch.zeros((1, h, w))
    box[0, 2:6, 2:10] = 1
    # confident constant predictions agree with every neighbour: loss ~ 0
    confident = torch.full((1, h, w), 20.0, requires_grad=True)
    assert float(pairwise_color_loss(confident, sim[None], box).detach()) < 1e-6
    # undecided predictions: -log(1/2) per qualifying pair
    undecided = torch.zeros((1, h, w), requires_grad=True)
    loss = pairwise_color_loss(undecided, sim[None], box)
    assert float(loss.detach()) == pytest.approx(math.log(2), rel=1e-5)
    loss.backward()
    assert undecided.grad is not None
    # no box -> no qualifying pair -> 0, still attached
    empty = pairwise_color_loss(undecided, sim[None], torch.zeros((1, h, w)))
    assert float(empty.detach()) == 0 and empty.requires_grad


def test_floored_sigmoid_values_and_gradient_floor():
    """Forward is the sigmoid; the backward is max(s(1-s), floor): a logit at +30 (s = 1) still
    gets a gradient, an unsaturated one gets exactly the sigmoid's."""
    x = torch.tensor([30.0, -30.0, 0.0, 2.0], requires_grad=True)
    y = floored_sigmoid(x, 0.01)
    torch.testing.assert_close(y, torch.sigmoid(x.detach()))
    y.sum().backward()
    s = torch.sigmoid(x.detach())
    torch.testing.assert_close(x.grad, torch.tensor([0.01, 0.01, 0.25, float(s[3] * (1 - s[3]))]))
    x.grad = None
    floored_sigmoid(x, 0.0).sum().backward()  # 0: the plain sigmoid, no gradient at +-30
    assert float(x.grad[0]) < 1e-12 and float(x.grad[1]) < 1e-12


def test_floored_sigmoid_revives_a_saturated_mask():
    """A mask at logit +30 everywhere and a box covering a quarter of it: the projection loss
    gives no gradient through the plain sigmoid and one that lowers the outside with a floor."""
    logits = torch.full((1, 8, 8), 30.0, requires_grad=True)
    box = torch.zeros(1, 8, 8)
    box[:, :4, :4] = 1
    projection_loss(torch.sigmoid(logits), box).sum().backward()
    assert float(logits.grad.abs().max()) < 1e-10
    logits.grad = None
    projection_loss(floored_sigmoid(logits, 0.01), box).sum().backward()
    g = logits.grad[0]
    assert float(g[:4, :4].max()) <= 0  # descent keeps the box's pixels up
    assert float(g[4:, 4:].min()) > 1e-4  # and lowers those outside both projections
    assert mask_dice_loss(logits, box, grad_floor=0.01).item() == pytest.approx(
        mask_dice_loss(logits, box).item())
