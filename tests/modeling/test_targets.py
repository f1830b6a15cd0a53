"""Box masks, ¼-res targets and SOLOv2 target assignment (docs/method.md §3.1-§3.4)."""

import cv2
import numpy as np
import pytest
import torch

from discobox.modeling.solov2.targets import (
    assign_best_targets,
    assign_targets,
    box_center_of_mass,
    box_mask_quarter,
    mask_center_of_mass,
    mask_quarter,
    scale_mids,
)
from discobox.structures import Instances


def _full_box_mask(box, size):
    """The official GenerateBoxMask (§3.1 step 3): round, inclusive right/bottom edge."""
    m = np.zeros(size, np.uint8)
    x0, y0, x1, y1 = (int(v) for v in np.round(np.asarray(box, np.float32)))
    m[y0 : y1 + 1, x0 : x1 + 1] = 1
    return m


@pytest.mark.parametrize(
    "box",
    [
        (10.0, 10.0, 30.0, 50.0),
        (0.0, 0.0, 96.0, 64.0),  # whole image, edges clipped
        (5.5, 6.5, 7.5, 9.49),  # half-to-even rounding, odd coords
        (1.0, 2.0, 2.0, 3.0),  # a 2x2 corner block -> 0.25 mean -> empty quarter corner
        (6.0, 6.0, 19.0, 19.0),  # corners covering one pixel of the 2x2 sample block
        (93.0, 61.0, 96.0, 64.0),  # bottom-right edge
        (40.2, 3.7, 40.6, 60.1),  # one pixel wide
    ],
)
def test_box_mask_quarter_equals_cv2(box):
    H, W = 64, 96
    ref = cv2.resize(_full_box_mask(box, (H, W)), (W // 4, H // 4), interpolation=cv2.INTER_LINEAR)
    got = box_mask_quarter(torch.tensor([box]), (H, W))
    assert got.shape == (1, H // 4, W // 4) and got.dtype == torch.bool
    np.testing.assert_array_equal(got[0].numpy().astype(np.uint8), ref)


def test_box_mask_quarter_random_against_cv2():
    rng = np.random.default_rng(0)
    H, W = 32, 64
    boxes = []
    for _ in range(200):
        x0, x1 = np.sort(rng.uniform(0, W, 2))
        y0, y1 = np.sort(rng.uniform(0, H, 2))
        boxes.append((x0, y0, x1, y1))
    got = box_mask_quarter(torch.tensor(boxes, dtype=torch.float32), (H, W)).numpy()
    for i, b in enumerate(boxes):
        ref = cv2.resize(_full_box_mask(b, (H, W)), (W // 4, H // 4), cv2.INTER_LINEAR)
        np.testing.assert_array_equal(got[i].astype(np.uint8), ref)


def test_box_mask_quarter_empty():
    assert box_mask_quarter(torch.zeros((0, 4)), (32, 32)).shape == (0, 8, 8)


def test_mask_quarter_equals_cv2_with_padding():
    rng = np.random.default_rng(1)
    H, W = 32, 48
    masks = rng.random((4, 29, 41)) < 0.5
    got = mask_quarter(torch.from_numpy(masks), (H, W)).numpy()
    for i in range(4):
        full = np.zeros((H, W), np.uint8)
        full[:29, :41] = masks[i]
        ref = cv2.resize(full, (W // 4, H // 4), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(got[i].astype(np.uint8), ref)


def test_centres_of_mass():
    c = box_center_of_mass(torch.tensor([[10.0, 10.0, 30.0, 50.0], [5.5, 6.5, 7.5, 9.0]]), (64, 64))
    # rounded inclusive extents: x 10..30, y 10..50; x 6..8 (half to even), y 6..9
    torch.testing.assert_close(c, torch.tensor([[30.0, 20.0], [7.5, 7.0]]))
    m = torch.zeros((1, 8, 8), dtype=torch.bool)
    m[0, 1, 1:5] = True  # (y, x) = (1, 1..4)
    m[0, 2:4, 1] = True  # (2, 1), (3, 1)
    torch.testing.assert_close(mask_center_of_mass(m), torch.tensor([[1.5, 2.0]]))


def _inst(boxes, labels, masks=None):
    return Instances(
        boxes=torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
        labels=torch.tensor(labels, dtype=torch.int64),
        masks=masks,
    )


GRIDS = (8, 4)
RANGES = ((1, 64), (48, 256))


def _assign(targets, **kw):
    kw = {"num_grids": GRIDS, "scale_ranges": RANGES, "num_classes": 3, **kw}
    return assign_targets(targets, padded_size=(64, 64), **kw)


def test_assign_hand_computed_cells():
    # centre (cy, cx) = (30, 20); half (h, w) = (4, 2); S = 8 -> 8 px cells.
    # coord = (3, 2); region rows floor(26/8)=3..floor(34/8)=4, cols 2..2 -> cells 26, 34.
    lv = _assign([_inst([[10, 10, 30, 50]], [1])])
    t = lv[0]
    assert t.grid_index.tolist() == [26, 34]
    assert t.img_index.tolist() == [0, 0] and t.gt_index.tolist() == [0, 0]
    assert t.labels.tolist() == [1, 1]
    assert t.cate_labels.shape == (1, 8, 8) and t.cate_labels.dtype == torch.int64
    expected = torch.full((8, 8), 3)
    expected[3:5, 2] = 1
    assert torch.equal(t.cate_labels[0], expected)
    assert t.ins_ind.shape == (1, 64) and t.ins_ind[0].nonzero().flatten().tolist() == [26, 34]
    assert int(t.num_pos) == 2
    q = box_mask_quarter(torch.tensor([[10.0, 10, 30, 50]]), (64, 64)).float()
    assert t.masks.dtype == torch.float32 and torch.equal(t.masks, q.expand(2, -1, -1))
    # scale sqrt(20*40)=28.3 is outside level 1's range
    assert lv[1].grid_index.numel() == 0 and (lv[1].cate_labels == 3).all()
    assert lv[1].masks.shape == (0, 16, 16)


def test_assign_clamps_region_to_one_cell_around_centre():
    # extents x 4..60, y 4..44 -> centre (24, 32), coord (3, 4); with sigma 0.9 the region
    # is rows 0..5, cols 0..7, clamped to rows 2..4, cols 3..5.
    t = _assign([_inst([[4, 4, 60, 44]], [2])], sigma=0.9)[0]
    assert t.grid_index.tolist() == [19, 20, 21, 27, 28, 29, 35, 36, 37]
    assert (t.cate_labels[0] == 2).sum() == 9


def test_assign_two_levels_for_overlapping_ranges():
    # scale sqrt(54*54) = 54 lies in (1, 64) and in (48, 256); centre (31, 31); with
    # sigma 0.02 the region stays in the centre cell: S=8 -> (3, 3), S=4 -> (1, 1)
    lv = _assign([_inst([[4, 4, 58, 58]], [0])], sigma=0.02)
    assert lv[0].grid_index.tolist() == [27] and lv[1].grid_index.tolist() == [5]
    # both bounds inclusive: 48 -> (1, 48); 64 -> (64, 256); 56 -> neither
    boxes = [[0, 0, 48, 48], [0, 0, 64, 64], [0, 0, 56, 56]]
    lv = _assign([_inst(boxes, [0, 1, 2])], scale_ranges=((1, 48), (64, 256)))
    assert set(lv[0].gt_index.tolist()) == {0} and set(lv[1].gt_index.tolist()) == {1}


def test_assign_later_gt_overwrites_and_duplicates_are_kept():
    boxes = [[10, 10, 30, 50], [12, 10, 28, 50]]  # same centre cells 26 and 34
    t = _assign([_inst(boxes, [1, 2])])[0]
    assert t.grid_index.tolist() == [26, 34, 26, 34]
    assert t.gt_index.tolist() == [0, 0, 1, 1]
    assert t.labels.tolist() == [2, 2, 2, 2]  # read back from the grid (§12.8)
    assert t.cate_labels[0, 3, 2] == 2 and int(t.num_pos) == 2
    assert not torch.equal(t.masks[0], t.masks[2])


def test_assign_batch_empty_and_half_empty():
    lv = _assign([Instances.empty(), Instances.empty()])
    for t in lv:
        assert (t.cate_labels == 3).all() and t.grid_index.numel() == 0
        assert t.masks.shape == (0, 16, 16) and int(t.num_pos) == 0
    lv = _assign([Instances.empty(), _inst([[10, 10, 30, 50]], [1])])
    assert lv[0].img_index.tolist() == [1, 1]
    assert (lv[0].cate_labels[0] == 3).all() and (lv[0].cate_labels[1] == 1).sum() == 2


def test_assign_full_masks_use_true_centre_of_mass():
    m = torch.zeros((1, 60, 60), dtype=torch.bool)
    m[0, 30:50, 2:40] = True  # box-like block ...
    m[0, 30:32, 40:58] = True  # ... with a thin tail: CoM moves off the box centre
    inst = _inst([[2, 30, 58, 50]], [0], masks=m)
    t = _assign([inst], use_masks=True, sigma=0.01)[0]
    cy, cx = mask_center_of_mass(m)[0].tolist()
    assert t.grid_index.tolist() == [int(cy // 8) * 8 + int(cx // 8)]
    assert torch.equal(t.masks[0].bool(), mask_quarter(m, (64, 64))[0])
    with pytest.raises(ValueError):
        _assign([_inst([[2, 30, 58, 50]], [0])], use_masks=True)
    empty = _assign([Instances.empty(with_masks=True, size=(60, 60))], use_masks=True)
    assert empty[0].masks.shape == (0, 16, 16)


def test_assign_best_targets_one_level_one_cell():
    assert scale_mids(((1, 96), (48, 192))) == pytest.approx([96**0.5, 96.0])
    ranges = ((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048))
    grids = (8, 6, 4, 4, 2)
    # scales 28 (< 30.7 -> level 0) and 40 (-> level 1)
    boxes = [[10, 10, 38, 38], [4, 4, 44, 44]]
    lv = assign_best_targets(
        [_inst(boxes, [0, 1])],
        padded_size=(64, 64),
        num_classes=3,
        num_grids=grids,
        scale_ranges=ranges,
    )
    assert [t.grid_index.numel() for t in lv] == [1, 1, 0, 0, 0]
    assert lv[0].grid_index.tolist() == [3 * 8 + 3]  # centre (24, 24) -> cell (3, 3)
    assert lv[1].grid_index.tolist() == [2 * 6 + 2]  # centre (24, 24) -> floor(2.25) = 2
    assert lv[0].gt_index.tolist() == [0] and lv[1].gt_index.tolist() == [1]
