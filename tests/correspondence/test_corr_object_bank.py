"""Object bank: storage, every retrieval threshold, absent/too-few classes, checkpoints."""

import io

import pytest
import torch
import torch.nn.functional as F

from discobox.modeling.correspondence.object_bank import ObjectBank

C_FEAT = 8


def _unit_feat(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.rand((C_FEAT, 7, 7), generator=g), dim=0)


def _block(r0=4, r1=24, c0=4, c1=24, inside=1.0, outside=0.0) -> torch.Tensor:
    m = torch.full((28, 28), outside)
    m[r0:r1, c0:c1] = inside
    return m


BOX = torch.tensor([0.0, 0.0, 40.0, 40.0])
FEAT = _unit_feat(0)
MASK = _block()


def _bank(**kw) -> ObjectBank:
    kw.setdefault("num_classes", 3)
    kw.setdefault("feat_channels", C_FEAT)
    kw.setdefault("min_retrieval", 1)
    return ObjectBank(**kw)


def _push(bank, mask=MASK, feat=FEAT, box=BOX, label=0, n=1):
    return bank.push(masks=mask[None].repeat(n, 1, 1), feats=feat[None].repeat(n, 1, 1, 1),
                     boxes=box[None].repeat(n, 1), labels=torch.full((n,), label))


def _query(bank, label=0):
    return bank.query(mask=MASK, feat=FEAT, box=BOX, label=label)


def test_push_is_circular_and_bounded():
    bank = _bank(capacity=4)
    for i in range(6):
        _push(bank, box=torch.tensor([0.0, 0.0, 40.0 + i, 40.0]))
    assert bank.num_objects(0) == 4 and len(bank) == 4
    q = bank._queues[0]
    assert q.ptr == 2  # slots 0, 1 overwritten by pushes 5 and 6
    assert q.boxes[:, 2].tolist() == [44.0, 45.0, 42.0, 43.0]
    assert bank.stats["pushed"] == 6


def test_bankable_is_strictly_larger_than_32():
    bank = _bank()
    boxes = torch.tensor([[0, 0, 33, 33], [0, 0, 32, 40], [0, 0, 40, 32], [5, 5, 38, 38.0]])
    assert bank.bankable(boxes).tolist() == [True, False, False, True]
    assert _push(bank, box=boxes[1]) == 0 and bank.stats["rejected_small"] == 1
    assert bank.push(masks=MASK[None], feats=FEAT[None], boxes=boxes[1:2],
                     labels=torch.tensor([0]), filter_small=False) == 1


def test_absent_class_and_too_few_are_counted():
    bank = _bank(min_retrieval=5, max_retrieval=5)
    assert _query(bank, label=1) is None and bank.stats["absent"] == 1
    _push(bank, n=4)
    assert _query(bank) is None and bank.stats["too_few"] == 1
    _push(bank, n=1)
    got = _query(bank)
    assert got is not None and len(got) == 5 and bank.stats["hits"] == 1
    assert bank.stats["queries"] == 3


def test_fewer_than_requested_are_returned_above_min():
    bank = _bank(min_retrieval=2, max_retrieval=5)
    _push(bank, n=3)
    got = _query(bank)
    assert len(got) == 3 and got.masks.shape == (3, 28, 28) and got.feats.shape == (3, C_FEAT, 7, 7)


def test_identical_object_passes_all_criteria():
    bank = _bank()
    _push(bank)
    s = bank.scores(mask=MASK, feat=FEAT, box=BOX, label=0)
    assert float(s["fg_iou"][0]) == pytest.approx(1.0)
    assert float(s["bg_iou"][0]) == pytest.approx(1.0)
    assert float(s["appearance"][0]) == pytest.approx(1.0, abs=1e-4)
    assert float(s["ratio"][0]) == pytest.approx(1.0)
    assert bool(s["selected"][0])


# Each variant fails exactly one criterion.
VARIANTS = {
    "fg_iou": dict(mask=_block(r1=16)),  # fg 240/400 = 0.6; bg 384/544 = 0.71
    "bg_iou": dict(mask=_block(outside=0.5)),  # fg 1.0; bg 0.5
    "appearance": dict(feat=F.normalize(torch.randn(C_FEAT, 7, 7,
                                                    generator=torch.Generator().manual_seed(3)),
                                        dim=0)),
    "ratio_low": dict(box=torch.tensor([0.0, 0.0, 40.0, 35.0])),  # r = 35/40 = 0.875
    "ratio_high": dict(box=torch.tensor([0.0, 0.0, 40.0, 50.0])),  # r = 50/40 = 1.25
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_threshold_rejects(name):
    torch.manual_seed(0)
    bank = _bank()
    _push(bank, **VARIANTS[name])
    s = bank.scores(mask=MASK, feat=FEAT, box=BOX, label=0)
    fails = {
        "fg_iou": float(s["fg_iou"][0]) <= 0.7,
        "bg_iou": float(s["bg_iou"][0]) <= 0.7,
        "appearance": float(s["appearance"][0]) <= 0.7,
        "ratio_low": float(s["ratio"][0]) < 0.9,
        "ratio_high": float(s["ratio"][0]) > 1.2,
    }
    assert [k for k, v in fails.items() if v] == [name]
    assert not bool(s["selected"][0])
    assert _query(bank) is None and bank.stats["too_few"] == 1


@pytest.mark.parametrize("crit", ["fg_iou", "bg_iou", "appearance"])
def test_similarity_thresholds_are_strict(crit):
    bank = _bank()
    _push(bank, mask=_block(r1=22, outside=0.1), feat=_unit_feat(0) * 0.9 + _unit_feat(2) * 0.1)
    value = float(bank.scores(mask=MASK, feat=FEAT, box=BOX, label=0)[crit][0])
    setattr(bank, f"{'appear' if crit == 'appearance' else crit}_thresh", value)
    assert _query(bank) is None
    setattr(bank, f"{'appear' if crit == 'appearance' else crit}_thresh", value - 1e-4)
    assert _query(bank) is not None


def test_ratio_range_is_inclusive():
    bank = _bank()
    _push(bank, box=torch.tensor([0.0, 0.0, 40.0, 44.0]))
    r = float(bank.scores(mask=MASK, feat=FEAT, box=BOX, label=0)["ratio"][0])
    bank.ratio_range = (r, r)
    assert _query(bank) is not None
    bank.ratio_range = (r + 1e-4, 2.0)
    assert _query(bank) is None


def test_first_vs_top_selection():
    feats = [F.normalize(FEAT + w * _unit_feat(9), dim=0) for w in (0.6, 0.0, 0.3)]
    for selection, expected in (("first", [0, 1, 2]), ("top", [1, 2, 0])):
        bank = _bank(selection=selection, max_retrieval=3, appear_thresh=0.5)
        for f in feats:
            _push(bank, feat=f)
        assert _query(bank).slots.tolist() == expected
    bank = _bank(selection="first", max_retrieval=2, appear_thresh=0.5)
    for f in feats:
        _push(bank, feat=f)
    assert _query(bank).slots.tolist() == [0, 1]  # the first two, not the two most similar


def test_wrong_shapes_and_labels_raise():
    bank = _bank()
    with pytest.raises(ValueError, match="outside"):
        _push(bank, label=3)
    with pytest.raises(ValueError, match="expected masks"):
        bank.push(masks=torch.zeros(1, 14, 14), feats=FEAT[None], boxes=BOX[None],
                  labels=torch.tensor([0]))
    with pytest.raises(ValueError, match="min_retrieval"):
        _bank(min_retrieval=6, max_retrieval=5)


def test_state_dict_round_trip():
    bank = _bank(capacity=5, dtype=torch.float16)
    _push(bank, n=7)
    _push(bank, label=2, n=2)
    _query(bank)
    buf = io.BytesIO()
    torch.save(bank.state_dict(), buf)
    buf.seek(0)
    other = _bank(capacity=5, dtype=torch.float16)
    other.load_state_dict(torch.load(buf))
    assert other.classes() == [0, 2] and other.num_objects(0) == 5 and other.num_objects(2) == 2
    assert other._queues[0].ptr == bank._queues[0].ptr == 2
    assert other.stats == bank.stats
    a, b = _query(bank), _query(other)
    assert torch.equal(a.slots, b.slots) and torch.equal(a.feats, b.feats)
    with pytest.raises(ValueError, match="capacity"):
        _bank(capacity=6).load_state_dict(bank.state_dict())
