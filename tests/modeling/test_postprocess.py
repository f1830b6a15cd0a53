"""SOLOv2 post-processing (docs/method.md §2.5 item 7, §7)."""

import math

import pytest
import torch

from discobox.modeling.crf.params import CRFParams
from discobox.modeling.solov2.outputs import HeadOutput
from discobox.modeling.solov2.postprocess import (
    SOLOv2PostProcessor,
    masks_to_boxes,
    matrix_nms,
    points_nms,
)


def test_points_nms_hand_grid():
    heat = torch.tensor([[0.1, 0.5, 0.2], [0.3, 0.4, 0.6], [0.9, 0.1, 0.2]]).view(1, 1, 3, 3)
    expected = torch.tensor([[0.1, 0.5, 0.0], [0.3, 0.0, 0.6], [0.9, 0.0, 0.0]])
    torch.testing.assert_close(points_nms(heat)[0, 0], expected)


def _row_masks():
    # 1 x 10 masks: A = cols 0-5, B = cols 2-7 (IoU(A, B) = 4/8), C = A (other class), D = B.
    masks = torch.zeros(4, 1, 10, dtype=torch.bool)
    masks[0, 0, 0:6] = True
    masks[1, 0, 2:8] = True
    masks[2, 0, 0:6] = True
    masks[3, 0, 2:8] = True
    labels = torch.tensor([0, 0, 1, 0])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    return masks, labels, scores


def test_matrix_nms_gaussian_hand_case():
    masks, labels, scores = _row_masks()
    out = matrix_nms(masks, labels, scores, kernel="gaussian", sigma=2.0)
    # D: min(exp(-2*0.5^2) / 1, exp(-2*1^2) / exp(-2*0.5^2)) = exp(-1.5) (compensated by B).
    expected = torch.tensor([0.9, 0.8 * math.exp(-0.5), 0.7, 0.6 * math.exp(-1.5)])
    torch.testing.assert_close(out, expected)


def test_matrix_nms_linear_hand_case():
    masks, labels, scores = _row_masks()
    out = matrix_nms(masks, labels, scores, kernel="linear")
    # B: 1 - 0.5; D: min((1 - 0.5) / 1, (1 - 1) / (1 - 0.5)) = 0.
    torch.testing.assert_close(out, torch.tensor([0.9, 0.4, 0.7, 0.0]))


def test_matrix_nms_empty_and_bad_kernel():
    empty = matrix_nms(
        torch.zeros(0, 2, 2, dtype=torch.bool), torch.zeros(0, dtype=torch.long), torch.zeros(0)
    )
    assert empty.shape == (0,)
    masks, labels, scores = _row_masks()
    with pytest.raises(ValueError):
        matrix_nms(masks, labels, scores, kernel="box")


def test_masks_to_boxes():
    masks = torch.zeros(1, 6, 8, dtype=torch.bool)
    masks[0, 2:5, 1:7] = True
    assert masks_to_boxes(masks).tolist() == [[1.0, 2.0, 7.0, 5.0]]


GRIDS = (4, 3, 2, 2, 2)


def _head_output(strong_logit=5.0, duplicate_logit=None, region=(4, 8, 6, 12)):
    """One image, 3 classes, E = 2, padded 64 x 64 (mask features 16 x 16).

    Mask-feature channel 0 is 1 inside ``region`` (rows r0:r1, cols c0:c1), channel 1 is 1
    everywhere; the kernel [20, -10] gives logits +10 inside and -10 outside.
    """
    cate = [torch.full((1, 3, s, s), -10.0) for s in GRIDS]
    kernels = [torch.zeros(1, 2, s, s) for s in GRIDS]
    cate[1][0, 2, 1, 1] = strong_logit
    kernels[1][0, :, 1, 1] = torch.tensor([20.0, -10.0])
    if duplicate_logit is not None:
        cate[1][0, 2, 0, 0] = duplicate_logit
        kernels[1][0, :, 0, 0] = torch.tensor([20.0, -10.0])
    feat = torch.zeros(1, 2, 16, 16)
    r0, r1, c0, c1 = region
    feat[0, 0, r0:r1, c0:c1] = 1.0
    feat[0, 1] = 1.0
    return HeadOutput(
        cate_logits=cate,
        kernels=kernels,
        mask_feat=feat,
        p2=torch.zeros(1, 4, 16, 16),
        images=torch.zeros(1, 3, 64, 64),
    )


def test_postprocessor_single_instance_at_original_size():
    post = SOLOv2PostProcessor()
    (inst,) = post(_head_output(), image_sizes=[(64, 60)], orig_sizes=[(128, 120)])
    assert len(inst) == 1
    assert inst.masks.shape == (1, 128, 120) and inst.masks.dtype == torch.bool
    assert inst.labels.tolist() == [2]
    assert inst.scores.dtype == torch.float32
    assert inst.scores[0] == pytest.approx(1 / (1 + math.exp(-5.0)), abs=1e-3)
    # 1/4-res rows 4..7, cols 6..11 -> x4 bilinear, > 0.4 after a further x2 resize:
    # rows 31..64, cols 47..96 (worked out by hand from the two linear ramps).
    ys, xs = torch.nonzero(inst.masks[0], as_tuple=True)
    assert (ys.min().item(), ys.max().item(), xs.min().item(), xs.max().item()) == (31, 64, 47, 96)
    # bilinear corners are cut, the middle row and column span the full extents
    assert int(inst.masks[0, 48].sum()) == 96 - 47 + 1
    assert int(inst.masks[0, :, 70].sum()) == 64 - 31 + 1
    assert inst.boxes.tolist() == [[47.0, 31.0, 97.0, 65.0]]


def test_postprocessor_matrix_nms_decays_duplicate():
    post = SOLOv2PostProcessor()
    (inst,) = post(
        _head_output(duplicate_logit=math.log(4.0)), image_sizes=[(64, 64)], orig_sizes=[(64, 64)]
    )
    assert len(inst) == 2
    assert inst.scores[1] == pytest.approx(0.8 * math.exp(-2.0), abs=1e-3)
    assert torch.equal(inst.masks[0], inst.masks[1])
    assert inst.scores[0] > inst.scores[1]
    # With a higher update threshold the duplicate is removed.
    (inst,) = SOLOv2PostProcessor(update_thr=0.2)(
        _head_output(duplicate_logit=math.log(4.0)), image_sizes=[(64, 64)], orig_sizes=[(64, 64)]
    )
    assert len(inst) == 1


def test_postprocessor_empty_cases():
    post = SOLOv2PostProcessor()
    # every score below score_thr
    (inst,) = post(_head_output(strong_logit=-5.0), image_sizes=[(64, 60)], orig_sizes=[(30, 40)])
    assert len(inst) == 0
    assert inst.masks.shape == (0, 30, 40) and inst.scores.shape == (0,)
    assert inst.boxes.shape == (0, 4)
    # a mask of 2 x 2 = 4 quarter-res pixels is not larger than the level stride (8)
    (inst,) = post(_head_output(region=(4, 6, 6, 8)), image_sizes=[(64, 64)], orig_sizes=[(64, 64)])
    assert len(inst) == 0 and inst.masks.shape == (0, 64, 64)


def test_postprocessor_batch_and_chunking():
    a, b = _head_output(), _head_output(strong_logit=-5.0)
    out = HeadOutput(
        cate_logits=[torch.cat([x, y]) for x, y in zip(a.cate_logits, b.cate_logits)],
        kernels=[torch.cat([x, y]) for x, y in zip(a.kernels, b.kernels)],
        mask_feat=torch.cat([a.mask_feat, b.mask_feat]),
        p2=torch.cat([a.p2, b.p2]),
        images=torch.cat([a.images, b.images]),
    )
    post = SOLOv2PostProcessor(chunk_size=1)
    res = post(out, image_sizes=[(64, 60), (64, 64)], orig_sizes=[(128, 120), (64, 64)])
    assert [len(r) for r in res] == [1, 0]
    assert res[0].boxes.tolist() == [[47.0, 31.0, 97.0, 65.0]]


def _bright_square_output():
    """``_head_output``'s mask (1/4-res rows 4..7, cols 6..11) on an image whose bright
    square covers 1/4-res rows 4..8, cols 6..12: the mask misses a row and a column of it."""
    out = _head_output()
    out.images = torch.full((1, 3, 64, 64), -1.5)
    out.images[:, :, 16:36, 24:52] = 1.5
    return out


def _quarter_mask(post):
    (inst,) = post(_bright_square_output(), image_sizes=[(64, 64)], orig_sizes=[(16, 16)])
    assert len(inst) == 1
    ys, xs = torch.nonzero(inst.masks[0], as_tuple=True)
    return ys.min().item(), ys.max().item(), xs.min().item(), xs.max().item()


def test_postprocessor_crf_refine_snaps_mask_to_colour_edges():
    # official: the mask as predicted
    assert _quarter_mask(SOLOv2PostProcessor()) == (4, 7, 6, 11)
    # refined inside the mask's box grown by one pixel: it takes the missed row and column
    # of the bright square and none of the dark pixels also inside the grown box
    refined = SOLOv2PostProcessor(refine="meanfield", refine_params=CRFParams(mf_kernel_size=5))
    assert _quarter_mask(refined) == (4, 8, 6, 12)
    # with no margin the refiner cannot leave the mask's own box
    inside = SOLOv2PostProcessor(refine="meanfield", refine_margin=0,
                                 refine_params=CRFParams(mf_kernel_size=5))
    assert _quarter_mask(inside) == (4, 7, 6, 11)
    with pytest.raises(ValueError, match="unknown CRF mode"):
        SOLOv2PostProcessor(refine="dense")
    with pytest.raises(ValueError, match="refine_margin"):
        SOLOv2PostProcessor(refine="meanfield", refine_margin=-1)


def test_build_postprocessor_refiner_window_is_its_own():
    from discobox.config import load_config
    from discobox.modeling.build import build_postprocessor

    assert build_postprocessor(load_config(None, [])).refine is None
    cfg = load_config(None, ["test.refine=meanfield", "crf.mf_kernel_size=7",
                             "crf.theta_color=0.3", "test.refine_margin=2"])
    post = build_postprocessor(cfg)
    assert post.refine == "meanfield" and post.refine_margin == 2
    # the teacher's window stays 7; the refiner's is test.refine_kernel_size (3); the other
    # CRF settings are shared
    assert post.refine_params.mf_kernel_size == 3 and post.refine_params.theta_color == 0.3
    with pytest.raises(ValueError, match="test.refine_kernel_size"):
        build_postprocessor(load_config(None, ["test.refine=meanfield",
                                               "test.refine_kernel_size=4"]))
