"""The correspondence branch on fake head outputs (docs/method.md §5, §3.4, §5.7)."""

import pytest
import torch
from corr_helpers import box_targets, fake_head_output

from discobox.modeling.correspondence.branch import CorrespondenceBranch, quarter_boxes
from discobox.modeling.correspondence.object_bank import ObjectBank
from discobox.modeling.correspondence.params import CorrParams
from discobox.modeling.crf.params import CRFParams
from discobox.structures import Instances

GRIDS = (8, 6, 4, 4, 2)


def _branch(crf_mode="faithful", **corr_kw):
    return CorrespondenceBranch(num_classes=3, num_grids=GRIDS, corr=CorrParams(**corr_kw),
                                crf=CRFParams(mode=crf_mode))


def _bank(**kw):
    # Permissive thresholds: these tests exercise the wiring; the thresholds have their own.
    return ObjectBank(num_classes=3, feat_channels=8, fg_iou_thresh=-1, bg_iou_thresh=-1,
                      appear_thresh=-1, ratio_range=(0.0, 1e9), min_box_size=2, **kw)


def test_quarter_boxes_from_mask_extents():
    m = torch.zeros(2, 10, 12)
    m[0, 2:5, 3:9] = 1
    m[1, 0, 11] = 1
    assert quarter_boxes(m).tolist() == [[3, 2, 9, 5], [11, 0, 12, 1]]


def test_empty_bank_gives_zero_loss_ts_terms_and_push_payload():
    out = fake_head_output()
    bank = _bank()
    res = _branch()(out, box_targets(), bank=bank)
    n = res.stats["objects"]
    assert n == 5 and res.stats["matched"] == 0
    assert float(res.loss_corr.detach()) == 0.0 and res.loss_corr.requires_grad
    assert res.ts_terms.shape == (n,)
    assert res.cross_term.shape == (n, 2, 16, 16) and float(res.cross_term.abs().sum()) == 0
    assert len(bank) == 0  # the branch does not write the bank unless online_push
    p = res.to_push
    assert p["feats"].shape[1:] == (8, 7, 7) and p["masks"].shape[1:] == (28, 28)
    assert not p["feats"].requires_grad
    norms = p["feats"].norm(dim=1)
    assert torch.allclose(norms[norms > 0.1], torch.ones_like(norms[norms > 0.1]), atol=1e-2)
    (res.loss_corr + res.ts_terms.sum()).backward()
    assert bank.push(**p) == res.stats["bankable"]


@pytest.mark.parametrize("solver,loss", [("faithful", "faithful"), ("sinkhorn", "infonce")])
def test_filled_bank_gives_loss_gradient_and_cross_term(solver, loss):
    out = fake_head_output(seed=1)
    bank = _bank()
    branch = _branch(solver=solver, loss=loss, sinkhorn_iters=3)
    first = branch(out, box_targets(), bank=bank)
    for _ in range(5):
        bank.push(**first.to_push)
    res = branch(out, box_targets(), bank=bank)
    assert res.stats["matched"] == res.stats["objects"] == 5
    assert float(res.loss_corr.detach()) > 0
    res.loss_corr.backward(retain_graph=True)
    assert out.p2.grad is not None and float(out.p2.grad.abs().sum()) > 0
    # Evidence only inside each object's box, and some evidence for every matched object.
    assert float(res.cross_term.abs().sum()) > 0
    for ev, (x0, y0, x1, y1) in zip(res.cross_term, res.boxes.long().tolist()):
        inside = torch.zeros(16, 16, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert float(ev[:, ~inside].abs().sum()) == 0
    # The corr-CRF dice reaches the masks with its gradient scaled by 0.01.
    out.mask_feat.grad = None
    res.ts_terms.sum().backward()
    g_small = out.mask_feat.grad.abs().sum()
    out2 = fake_head_output(seed=1)
    res2 = _branch(solver=solver, loss=loss, sinkhorn_iters=3, grad_scale=1.0)(
        out2, box_targets(), bank=bank)
    assert torch.allclose(res2.ts_terms.detach(), res.ts_terms.detach())
    res2.ts_terms.sum().backward()
    assert torch.allclose(out2.mask_feat.grad.abs().sum() * 0.01, g_small, rtol=1e-3)


def test_weight_scales_the_loss():
    out = fake_head_output(seed=2)
    bank = _bank()
    for _ in range(5):
        bank.push(**_branch()(out, box_targets(), bank=bank).to_push)
    a = _branch()(out, box_targets(), bank=bank).loss_corr
    b = _branch(weight=0.1)(out, box_targets(), bank=bank).loss_corr
    assert torch.allclose(a * 0.1, b)


def test_online_push_interleaves_query_and_push():
    out = fake_head_output(seed=3)
    bank = _bank(min_retrieval=1, max_retrieval=5)
    res = _branch(online_push=True)(out, box_targets(), bank=bank)
    assert res.to_push == {}
    assert len(bank) == res.stats["bankable"] == 5
    # Objects later in the batch retrieve earlier objects of their class (labels 0,1 repeat).
    assert res.stats["matched"] >= 2


def test_teacher_crops_are_what_gets_pushed():
    out = fake_head_output(seed=4)
    teacher = fake_head_output(seed=5, requires_grad=False)
    res_s = _branch()(out, box_targets(), bank=_bank())
    res_t = _branch()(out, box_targets(), bank=_bank(), teacher_out=teacher)
    assert not torch.allclose(res_s.to_push["feats"], res_t.to_push["feats"])
    assert not torch.allclose(res_s.to_push["masks"], res_t.to_push["masks"])


def test_crf_none_and_empty_targets():
    out = fake_head_output(seed=6)
    res = _branch(crf_mode="none")(out, box_targets(), bank=_bank())
    assert res.ts_terms.numel() == 0
    empty = [Instances(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))] * 2
    res = _branch()(out, empty, bank=_bank())
    assert res.stats["objects"] == 0 and res.ts_terms.numel() == 0
    res.loss_corr.backward()


def test_bad_options_raise():
    with pytest.raises(ValueError, match="solver"):
        _branch(solver="ot")
    with pytest.raises(ValueError, match="loss"):
        _branch(loss="nce")
