"""EMA teacher (docs/method.md §4.5) and loss gates (§4.0), including checkpoint round trips."""

import io

import pytest
import torch
from torch import nn

from discobox.modeling.boxsup.teacher import EMATeacher, LossGates, box_warmup


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.register_buffer("count", torch.zeros(1))
        self.register_buffer("steps", torch.zeros(1, dtype=torch.long))


class _Wrapped(nn.Module):  # stands in for DistributedDataParallel: exposes ``.module``
    def __init__(self, module):
        super().__init__()
        self.module = module


def _perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g))
        model.count += 1
        model.steps += 1


def test_teacher_is_a_frozen_eval_copy():
    student = _Net().train()
    t = EMATeacher(student=student, momentum=0.9, start_iter=3)
    assert not t.model.training and not t.active
    assert all(not p.requires_grad for p in t.model.parameters())
    assert all(p.requires_grad for p in student.parameters())


def test_switch_on_copies_then_ema_follows_formula():
    student = _Net()
    t = EMATeacher(student=_Wrapped(student), momentum=0.9, start_iter=3)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    for it in (1, 2):
        _perturb(student, it)
        t.update(_Wrapped(student), it)
        assert not t.active
        for k, v in t.model.state_dict().items():
            assert torch.equal(v, before[k])  # off: untouched
    _perturb(student, 3)
    t.update(student, 3)  # switch-on: exact copy (momentum 0)
    assert t.active
    for k, v in student.state_dict().items():
        assert torch.equal(t.model.state_dict()[k], v)
    k_old = {n: p.clone() for n, p in t.model.named_parameters()}
    count_old = t.model.count.clone()
    _perturb(student, 4)
    t.update(student, 4)
    for n, q in student.named_parameters():
        torch.testing.assert_close(dict(t.model.named_parameters())[n], 0.9 * k_old[n] + 0.1 * q)
    # float buffers (BN running statistics) follow the same EMA, integer ones are copied
    torch.testing.assert_close(t.model.count, 0.9 * count_old + 0.1 * student.count)
    assert not torch.equal(t.model.count, student.count)
    assert torch.equal(t.model.steps, student.steps)
    assert t.num_updates == 2 and t.last_iter == 4


def test_teacher_and_gates_state_dict_round_trip():
    student = _Net()
    t = EMATeacher(student=student, momentum=0.5, start_iter=1)
    gates = LossGates()
    for it in (1, 2, 3):
        _perturb(student, it)
        t.update(student, it)
        gates.update(0.1 * it)
    buf = io.BytesIO()
    torch.save({"teacher": t.state_dict(), "gates": gates.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    t2 = EMATeacher(student=_Net(), momentum=0.5, start_iter=1)
    g2 = LossGates()
    t2.load_state_dict(state["teacher"])
    g2.load_state_dict(state["gates"])
    assert t2.active and t2.num_updates == 3 and t2.last_iter == 3
    for k, v in t.model.state_dict().items():
        assert torch.equal(t2.model.state_dict()[k], v)
    assert g2.avg == gates.avg
    # a resumed teacher continues with EMA, not with a fresh switch-on copy
    _perturb(student, 9)
    t.update(student, 4)
    t2.update(student, 4)
    for k, v in t.model.state_dict().items():
        assert torch.equal(t2.model.state_dict()[k], v)


def test_gates_update_and_thresholds():
    g = LossGates()
    assert g.avg == 2.0 and not g.ts_open and not g.corr_open
    g.update(1.0)
    assert g.avg == pytest.approx(0.9 * 2.0 + 0.1 * 1.0)
    # strict thresholds: avg == 0.3 is closed, just below is open (§4.0)
    assert not LossGates(init=0.3).ts_open
    assert LossGates(init=0.2999).ts_open and not LossGates(init=0.2999).corr_open
    assert not LossGates(init=0.2).corr_open and LossGates(init=0.1999).corr_open
    g = LossGates(init=0.31, momentum=0.5)
    g.update(0.28)  # 0.295
    assert g.ts_open
    # corr needs the ts gate too, even with a looser corr threshold
    assert not LossGates(init=0.35, ts_thresh=0.3, corr_thresh=0.4).corr_open


def test_gates_disabled_are_forced():
    g = LossGates(enabled=False)
    assert g.ts_open and g.corr_open
    g.update(5.0)
    assert g.ts_open and g.avg == pytest.approx(0.9 * 2.0 + 0.5)
    closed = LossGates(init=0.0, enabled=False, force_open=False)
    assert not closed.ts_open and not closed.corr_open


def test_box_warmup_falls_linearly_to_zero_and_is_off_at_zero_iters():
    """loss.box_warmup_iters: max(0, 1 - iteration / N); N = 0 turns loss_boxwarm off."""
    assert [box_warmup(i, 4) for i in range(7)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0, 0.0]
    assert box_warmup(0, 0) == 0.0 and box_warmup(123, 0) == 0.0
    assert box_warmup(150, 300) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="box_warmup_iters"):
        box_warmup(0, -1)
