"""SOLOv2 / DiscoBox criterion on fake head outputs (docs/method.md §3.3, §4.0-§4.4)."""

import pytest
import torch
import torch.nn.functional as F

from discobox.modeling.boxsup.criterion import SOLOv2Criterion
from discobox.modeling.boxsup.losses import dice_loss, focal_loss, projection_loss
from discobox.modeling.boxsup.params import LossParams
from discobox.modeling.crf.params import CRFParams
from discobox.modeling.crf.pseudo_labels import crf_pseudo_labels
from discobox.modeling.solov2.outputs import HeadOutput
from discobox.modeling.solov2.targets import assign_targets
from discobox.structures import Instances

GRIDS = (8, 6, 4, 4, 2)
C, E, H, W = 3, 8, 64, 64


def _fake_out(seed=0, requires_grad=True, B=2):
    g = torch.Generator().manual_seed(seed)

    def t(*shape, scale=1.0):
        return (scale * torch.randn(shape, generator=g)).requires_grad_(requires_grad)

    return HeadOutput(
        cate_logits=[t(B, C, s, s) for s in GRIDS],
        kernels=[t(B, E, s, s, scale=0.5) for s in GRIDS],
        mask_feat=t(B, E, H // 4, W // 4),
        p2=torch.randn((B, 4, H // 4, W // 4), generator=g),
        images=torch.randn((B, 3, H, W), generator=g),
    )


def _targets(with_masks=False):
    boxes0 = torch.tensor([[4.0, 4.0, 40.0, 36.0], [30.0, 20.0, 60.0, 60.0], [2, 2, 58, 58]])
    boxes1 = torch.tensor([[10.0, 8.0, 26.0, 30.0]])
    out = []
    for boxes, labels in ((boxes0, [0, 2, 1]), (boxes1, [1])):
        masks = None
        if with_masks:
            masks = torch.zeros((len(boxes), 60, 62), dtype=torch.bool)
            for i, b in enumerate(boxes.long().tolist()):
                masks[i, b[1] + 2 : b[3] - 2, b[0] + 1 : b[2] - 3] = True
        out.append(Instances(boxes=boxes, labels=torch.tensor(labels), masks=masks))
    return out


def _f(t):
    return float(t.detach())


def _criterion(crf_mode="faithful", **loss_kw):
    """A criterion of ``LossParams(**loss_kw)`` whose call returns the loss dict (the stats are
    checked on the way)."""
    crit = SOLOv2Criterion(num_classes=C, num_grids=GRIDS, loss=LossParams(**loss_kw),
                           crf=CRFParams(mode=crf_mode))

    def losses(*args, **kwargs):
        out, stats = crit(*args, **kwargs)
        assert set(stats) == {"positives"} and isinstance(stats["positives"], float)
        return out

    return losses


def _backward_ok(losses, out):
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    for t in (out.mask_feat, *out.kernels, *out.cate_logits):
        assert t.grad is not None and torch.isfinite(t.grad).all()


def test_box_mode_keys_values_and_backward():
    out = _fake_out()
    losses = _criterion()(out, _targets())
    assert set(losses) == {"loss_cls", "loss_proj", "loss_ts"}
    assert all(v.dtype == torch.float32 and v.ndim == 0 for v in losses.values())
    assert _f(losses["loss_ts"]) == 0.0  # gate closed
    assert _f(losses["loss_proj"]) > 0
    _backward_ok(losses, out)


def _manual_positives(out, targets):
    """Student probabilities, box targets and image index of the positives, by hand."""
    levels = assign_targets(targets, padded_size=(H, W), num_classes=C, num_grids=GRIDS)
    probs, tgts, imgs = [], [], []
    for k, t in zip(out.kernels, levels):
        for p in range(t.grid_index.numel()):
            b, cell = int(t.img_index[p]), int(t.grid_index[p])
            kern = k[b].reshape(E, -1)[:, cell]
            probs.append(torch.sigmoid(torch.einsum("e,ehw->hw", kern, out.mask_feat[b])))
            tgts.append(t.masks[p])
            imgs.append(b)
    probs, tgts = torch.stack(probs), torch.stack(tgts)
    keep = tgts.flatten(1).sum(1) > 0
    return probs[keep], tgts[keep], torch.tensor(imgs)[keep]


def _manual_ts_targets(out, probs, tgts, imgs):
    """The student as its own teacher: Y = CRF(S, M) per image (faithful), and maxpool(M)."""
    img_q = F.interpolate(out.images, size=(H // 4, W // 4), mode="bilinear", align_corners=True)
    pseudo = torch.zeros_like(probs)
    for b in (0, 1):
        sel = imgs == b
        pseudo[sel] = crf_pseudo_labels(probs[sel].detach(), tgts[sel], img_q[b], mode="faithful")
    return pseudo, F.max_pool2d(tgts[:, None], 3, 1, 1)[:, 0]


def test_box_warmup_is_the_dice_to_the_filled_boxes_scaled(monkeypatch):
    """loss_boxwarm = weight * box_scale * mean_i dice(sigmoid(logits_i), box mask_i), on the
    same positives and box targets as the projection loss; the other losses do not move."""
    import discobox.modeling.boxsup.criterion as crit_mod

    seen = {}
    real_proj = crit_mod.projection_loss

    def spy_proj(probs, targets):
        seen["probs"], seen["targets"] = probs.detach().clone(), targets.clone()
        return real_proj(probs, targets)

    monkeypatch.setattr(crit_mod, "projection_loss", spy_proj)
    targets = _targets()
    plain = _criterion(crf_mode="none")(_fake_out(seed=2), targets)
    assert "loss_boxwarm" not in plain  # weight 0: off, no key
    crit = _criterion(crf_mode="none", box_warmup_iters=1, box_warmup_weight=2.0)
    out = _fake_out(seed=2)
    warm = crit(out, targets, box_scale=0.75)
    assert seen["targets"].amax() == 1 and seen["targets"].shape[0] >= 3
    expected = 2.0 * 0.75 * float(dice_loss(seen["probs"], seen["targets"]).mean())
    assert _f(warm["loss_boxwarm"]) == pytest.approx(expected, rel=1e-5)
    assert _f(warm["loss_boxwarm"]) > 0.1
    for key in ("loss_cls", "loss_proj"):
        assert _f(warm[key]) == pytest.approx(_f(plain[key]), rel=1e-6), key
    _backward_ok(warm, out)
    # a mask equal to its box scores ~0: the loss pulls the masks towards the filled boxes
    assert float(dice_loss(seen["targets"], seen["targets"]).max()) < 1e-3

    # full mode has real masks and ignores the warm-up
    full = _criterion(mode="full", crf_mode="none", box_warmup_iters=1, box_warmup_weight=2.0)
    assert set(full(_fake_out(seed=2), _targets(with_masks=True), box_scale=1.0)) == {
        "loss_cls", "loss_mask"}

    def no_dice(*args, **kwargs):
        raise AssertionError("the box dice ran although box_scale is 0")

    monkeypatch.setattr(crit_mod, "mask_dice_loss", no_dice)
    out = _fake_out(seed=2)
    off = crit(out, targets, box_scale=0.0)
    assert _f(off["loss_boxwarm"]) == 0.0
    _backward_ok(off, out)
    with pytest.raises(ValueError, match="box_warmup_weight"):
        _criterion(box_warmup_weight=-1.0)


def test_box_mode_matches_manual_computation():
    out = _fake_out(seed=1)
    targets = _targets()
    losses = _criterion()(out, targets, ts_active=True)
    levels = assign_targets(targets, padded_size=(H, W), num_classes=C, num_grids=GRIDS)
    assert levels[1].grid_index.numel() > 0  # the 56 px box sits in two levels
    probs, tgts, imgs = _manual_positives(out, targets)
    torch.testing.assert_close(losses["loss_proj"], projection_loss(probs, tgts).mean())
    # loss_ts with the student as its own teacher: Y = CRF(S, M), dice(S * maxpool(M), Y)
    pseudo, dilated = _manual_ts_targets(out, probs, tgts, imgs)
    boxed = dice_loss(probs * dilated, pseudo).mean()
    whole = dice_loss(probs, pseudo).mean()
    assert _f(whole) > _f(boxed) + 0.01  # the random student spills out of its boxes: D_i counts
    torch.testing.assert_close(losses["loss_ts"], boxed)
    # loss_cls: focal over every cell / (unique positives + 1)
    logits = torch.cat([c.permute(0, 2, 3, 1).reshape(-1, C) for c in out.cate_logits])
    labels = torch.cat([t.cate_labels.reshape(-1) for t in levels])
    onehot = F.one_hot(labels, C + 1)[:, :C]
    num_pos = sum(int(t.ins_ind.sum()) for t in levels)
    ref = focal_loss(logits, onehot, avg_factor=num_pos + 1)
    torch.testing.assert_close(losses["loss_cls"], ref)


@pytest.mark.parametrize("crf_mode", ["faithful", "meanfield"])
def test_ts_loss_with_teacher(crf_mode):
    out = _fake_out(seed=2)
    teacher = _fake_out(seed=3)
    crit = _criterion(crf_mode=crf_mode, pairwise=True)
    losses = crit(out, _targets(), teacher_out=teacher, ts_active=True, image_sizes=[(60, 62)] * 2)
    assert set(losses) == {"loss_cls", "loss_proj", "loss_ts", "loss_pairwise"}
    assert 0 < _f(losses["loss_ts"]) < 2 and _f(losses["loss_pairwise"]) > 0
    _backward_ok(losses, out)
    assert teacher.mask_feat.grad is None and all(k.grad is None for k in teacher.kernels)
    no_teacher = crit(_fake_out(seed=2), _targets(), ts_active=True)
    assert _f(no_teacher["loss_ts"]) != pytest.approx(_f(losses["loss_ts"]))


def test_crf_none_gives_zero_ts():
    losses = _criterion(crf_mode="none")(_fake_out(), _targets(), ts_active=True)
    assert _f(losses["loss_ts"]) == 0.0


@pytest.mark.parametrize("mode", ["box", "full"])
def test_empty_batch_is_finite_zero_and_connected(mode):
    out = _fake_out(seed=4)
    empty = [Instances.empty(with_masks=mode == "full", size=(60, 62)) for _ in range(2)]
    losses = _criterion(mode=mode, pairwise=mode == "box")(out, empty, ts_active=True)
    for k, v in losses.items():
        assert torch.isfinite(v) and v.requires_grad, k
        if k != "loss_cls":
            assert _f(v) == 0.0, k
    # all cells are background: focal over everything / (0 + 1)
    logits = torch.cat([c.permute(0, 2, 3, 1).reshape(-1, C) for c in out.cate_logits])
    ref = focal_loss(logits, torch.zeros_like(logits), avg_factor=1)
    torch.testing.assert_close(losses["loss_cls"], ref)
    _backward_ok(losses, out)
    assert float(out.mask_feat.grad.abs().sum()) == 0.0


@pytest.mark.parametrize("mode", ["box", "full"])
def test_half_empty_batch(mode):
    out = _fake_out(seed=5)
    targets = _targets(with_masks=mode == "full")
    targets[1] = Instances.empty(with_masks=mode == "full", size=(60, 62))
    losses = _criterion(mode=mode)(out, targets, ts_active=True)
    assert all(torch.isfinite(v) for v in losses.values())
    _backward_ok(losses, out)
    assert float(out.kernels[0].grad[1].abs().sum()) == 0.0  # image 1 has no positives
    assert float(out.kernels[0].grad[0].abs().sum()) > 0.0


def test_full_mode_dice_weight():
    out = _fake_out(seed=6)
    targets = _targets(with_masks=True)
    losses = _criterion(mode="full")(out, targets)
    assert set(losses) == {"loss_cls", "loss_mask"}
    light = _criterion(mode="full", mask_weight=1.0)(out, targets)
    assert _f(losses["loss_mask"]) == pytest.approx(3.0 * _f(light["loss_mask"]), rel=1e-6)
    assert 0 < _f(light["loss_mask"]) <= 1.0 + 1e-6
    with pytest.raises(ValueError):
        _criterion(mode="full")(out, _targets(with_masks=False))
    _backward_ok(losses, out)


def test_bad_arguments():
    with pytest.raises(ValueError):
        _criterion(mode="points")
    with pytest.raises(ValueError):
        _criterion(crf_mode="dense")
    with pytest.raises(ValueError):
        SOLOv2Criterion(num_classes=C, num_grids=(8, 6), scale_ranges=((1, 2),))
    with pytest.raises(ValueError, match="box_warmup_iters"):
        _criterion(box_warmup_iters=-1)


def test_sigmoid_grad_floor_moves_saturated_masks():
    """loss.sigmoid_grad_floor: masks at logit ~ +40 everywhere (a collapsed run):
    same loss values, but the mask losses reach the features only with the floor."""

    def run(floor):
        out = _fake_out(seed=2)
        with torch.no_grad():
            out.mask_feat.copy_(out.mask_feat.abs() + 5.0)
            for k in out.kernels:
                k.copy_(k.abs() + 1.0)  # every logit >= 40
        crit = _criterion(box_warmup_iters=1, box_warmup_weight=1.0, sigmoid_grad_floor=floor,
                          crf_mode="meanfield")
        losses = crit(out, _targets(), ts_active=True, box_scale=1.0)
        mask_losses = losses["loss_proj"] + losses["loss_ts"] + losses["loss_boxwarm"]
        mask_losses.backward()
        return {k: _f(v) for k, v in losses.items()}, float(out.mask_feat.grad.abs().max())

    plain, plain_grad = run(0.0)
    floored, floored_grad = run(0.01)
    assert plain == pytest.approx(floored)
    assert plain["loss_proj"] > 0.1  # the boxes do not cover the images: a real loss
    assert plain_grad < 1e-10 < 1e-4 < floored_grad
    with pytest.raises(ValueError, match="sigmoid_grad_floor"):
        _criterion(sigmoid_grad_floor=0.25)


def test_extra_ts_terms_add_their_mean_to_l_ts_while_it_is_on():
    """The correspondence branch's cross-image CRF terms (§5.7) enter L_ts as a second mean;
    with the L_ts gate shut they are ignored. The call leaves the criterion unchanged."""
    crit = SOLOv2Criterion(num_classes=C, num_grids=GRIDS)
    before = dict(vars(crit))
    base, stats = crit(_fake_out(seed=1), _targets(), ts_active=True)
    extra = torch.tensor([0.2, 0.4, 0.9], requires_grad=True)
    out = _fake_out(seed=1)
    with_extra, _ = crit(out, _targets(), ts_active=True, extra_ts_terms=extra)
    assert _f(with_extra["loss_ts"]) == pytest.approx(_f(base["loss_ts"]) + 0.5, rel=1e-6)
    with_extra["loss_ts"].backward()
    torch.testing.assert_close(extra.grad, torch.full((3,), 1 / 3))
    shut, _ = crit(_fake_out(seed=1), _targets(), extra_ts_terms=extra)
    assert _f(shut["loss_ts"]) == 0.0
    probs, _, _ = _manual_positives(_fake_out(seed=1), _targets())
    assert stats["positives"] == float(len(probs)) > 4  # cells with a non-empty box target
    assert vars(crit).keys() == before.keys()
