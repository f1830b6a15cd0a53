"""Box-conditioned inference (docs/method.md §8.1 reconstruction)."""

import torch
import torch.nn.functional as F

from discobox.inference.box_conditioned import (
    SOURCE_BOX,
    SOURCE_CELL,
    SOURCE_NEIGHBOUR,
    BoxConditionedInference,
)
from discobox.inference.box_geometry import box_region, paste_matrix
from discobox.modeling.crf.params import CRFParams
from discobox.modeling.solov2.outputs import HeadOutput
from discobox.modeling.solov2.targets import assign_best_targets
from discobox.structures import Instances


def test_box_region_pixel_centres_clip():
    boxes = torch.tensor([[2.5, 3.0, 7.5, 9.0], [-4.0, -1.0, 3.2, 2.0], [50.0, 0.0, 60.0, 5.0],
                          [4.1, 1.0, 4.3, 2.0]])
    regions = box_region(boxes, 20, 40)
    # pixel j is in the box iff its centre j + 0.5 is; a sub-pixel box keeps one pixel
    assert regions.tolist() == [[2, 3, 8, 9], [0, 0, 3, 2], [40, 0, 40, 5], [4, 1, 5, 2]]


def test_matrix_paste_equals_interpolate_chain():
    # §7 step 10: x4 to the padded size, crop to the resized image, resize to the original.
    torch.manual_seed(0)
    soft = torch.rand(2, 8, 10)
    h_img, w_img, H0, W0 = 30, 37, 61, 75
    up = F.interpolate(soft[None], size=(32, 40), mode="bilinear", align_corners=False)
    ref = F.interpolate(up[:, :, :h_img, :w_img], size=(H0, W0), mode="bilinear",
                        align_corners=False)[0]
    R, C = paste_matrix(8, h_img, H0), paste_matrix(10, w_img, W0)
    torch.testing.assert_close(R @ soft @ C.T, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(R[5:20] @ soft[1] @ C[3:50].T, ref[1, 5:20, 3:50], atol=1e-5,
                               rtol=0)


def test_window_paste_places_the_window_before_the_resize():
    # tiled inference: the window's x4 mask sits at its offset in the resized image (zero
    # elsewhere), then the whole resized image goes to the original size
    torch.manual_seed(0)
    soft = torch.rand(8, 10)
    h_win, w_win, y0, x0, H, W, H0, W0 = 30, 37, 12, 20, 70, 90, 101, 133
    up = F.interpolate(soft[None, None], size=(32, 40), mode="bilinear", align_corners=False)
    canvas = torch.zeros(1, 1, H, W)
    canvas[..., y0:y0 + h_win, x0:x0 + w_win] = up[..., :h_win, :w_win]
    ref = F.interpolate(canvas, size=(H0, W0), mode="bilinear", align_corners=False)[0, 0]
    R = paste_matrix(8, h_win, H0, offset=y0, n_full=H)
    C = paste_matrix(10, w_win, W0, offset=x0, n_full=W)
    torch.testing.assert_close(R @ soft @ C.T, ref, atol=1e-5, rtol=0)
    try:
        paste_matrix(8, h_win, H0, offset=H - h_win + 1, n_full=H)
    except ValueError as exc:
        assert "outside" in str(exc)
    else:
        raise AssertionError("a window beyond the image must be refused")


def test_tile_for_boxes_picks_the_window_that_holds_the_box_best():
    # windows of 100x100 at x = 0, 75, 150 (a 250 px wide image), one row
    windows, tile, full = [(0, 0), (0, 75), (0, 150)], (100, 100), (100, 250)
    boxes = torch.tensor([
        [10.0, 10.0, 40.0, 40.0],    # only the first window holds it
        [90.0, 10.0, 110.0, 40.0],   # held by the middle window only (margins 15 / 65)
        [160.0, 20.0, 240.0, 60.0],  # the last window (its right edge is the image border)
        [70.0, 0.0, 180.0, 90.0],    # wider than any window: the middle one cuts it least
        [85.0, 5.0, 95.0, 20.0],     # held by two: the first leaves 5 px, the middle 10 / 80
    ])
    choice = BoxConditionedInference.tile_for_boxes(boxes, windows, tile, full)
    assert choice.tolist() == [0, 1, 2, 1, 1]


def test_select_cells_equals_best_target_single():
    boxes = torch.tensor([[3.0, 4.0, 20.0, 15.0], [10.0, 10.0, 90.0, 60.0], [0.0, 0.0, 128.0,
                                                                             96.0],
                          [60.5, 30.2, 70.1, 95.9]])
    grids = (12, 10, 8, 6, 4)
    ranges = ((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048))
    padded = (96, 128)
    level, rows, cols = BoxConditionedInference(scale_ranges=ranges).select_cells(
        boxes, padded_size=padded, num_grids=grids
    )
    ref = assign_best_targets(
        [Instances(boxes=boxes, labels=torch.zeros(4, dtype=torch.long))],
        padded_size=padded, num_classes=1, num_grids=grids, scale_ranges=ranges,
    )
    for n in range(4):
        lt = ref[int(level[n])]
        k = (lt.gt_index == n).nonzero().flatten()
        assert k.numel() == 1
        assert int(lt.grid_index[k]) == int(rows[n]) * grids[int(level[n])] + int(cols[n])


def test_select_cells_keeps_to_levels_the_box_was_trained_on():
    """Scale 40 with the official ranges: level 1's mid (96) is nearer than level 0's (9.8), but
    only level 0's range (1-96) holds 40, so only level 0 had it as a positive (§3.2)."""
    from discobox.modeling.solov2.targets import assign_targets

    ranges = ((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048))
    grids, padded = (40, 36, 24, 16, 12), (256, 320)
    boxes = torch.tensor([[100.0, 100.0, 140.0, 140.0],  # scale 40: the band
                          [10.0, 10.0, 70.0, 70.0],  # scale 60: levels 0 and 1, 1 nearer
                          [0.0, 0.0, 3000.0, 2500.0]])  # above every range: nearest mid
    level, rows, cols = BoxConditionedInference(scale_ranges=ranges).select_cells(
        boxes, padded_size=padded, num_grids=grids)
    assert level.tolist() == [0, 1, 4]
    one = Instances(boxes=boxes[:1], labels=torch.zeros(1, dtype=torch.long))
    best = assign_best_targets([one], padded_size=padded, num_classes=1, num_grids=grids,
                               scale_ranges=ranges)
    assert best[1].gt_index.numel() == 1  # best_target_single alone would pick level 1
    trained = assign_targets([Instances(boxes=boxes[:2], labels=torch.zeros(2, dtype=torch.long))],
                             padded_size=padded, num_classes=1, num_grids=grids,
                             scale_ranges=ranges, use_masks=False)
    for n in range(2):  # the chosen cell is a positive of the training targets at that level
        lt = trained[int(level[n])]
        cells = lt.grid_index[lt.gt_index == n].tolist()
        assert int(rows[n]) * grids[int(level[n])] + int(cols[n]) in cells


def _head_output(center_value: float, neighbour_value: float) -> HeadOutput:
    """One level with a 4x4 grid, E = 1, mask_feat = 1: a cell's mask logit is its kernel."""
    kernels = torch.zeros(1, 1, 4, 4)
    cate = torch.full((1, 2, 4, 4), -5.0)
    kernels[0, 0, 1, 1] = center_value
    kernels[0, 0, 1, 2] = neighbour_value
    cate[0, 1, 1, 1] = 2.0
    cate[0, 1, 1, 2] = 1.0
    return HeadOutput(cate_logits=[cate], kernels=[kernels], mask_feat=torch.ones(1, 1, 8, 8),
                      p2=torch.zeros(1, 1, 8, 8), images=torch.zeros(1, 3, 32, 32))


def _run(out: HeadOutput, label: int = 1):
    infer = BoxConditionedInference(mask_thr=0.5, scale_ranges=((1, 2048),), chunk_size=1)
    box = torch.tensor([[8.0, 8.0, 16.0, 16.0]])  # centre (11.5, 11.5) -> cell (1, 1) of 4
    (chunk,) = list(infer(out, 0, boxes=box, labels=torch.tensor([label]), image_size=(32, 32),
                          orig_size=(32, 32)))
    return chunk


def test_centre_cell_mask_and_score():
    chunk = _run(_head_output(5.0, -5.0))
    assert int(chunk.source[0]) == SOURCE_CELL
    assert chunk.regions[0].tolist() == [8, 8, 16, 16]
    assert chunk.crops[0].shape == (8, 8) and bool(chunk.crops[0].all())
    torch.testing.assert_close(chunk.scores[0], torch.sigmoid(torch.tensor(2.0)))
    unknown = _run(_head_output(5.0, -5.0), label=-1)  # best class at the cell
    torch.testing.assert_close(unknown.scores[0], torch.sigmoid(torch.tensor(2.0)))


def test_empty_mask_falls_back_to_neighbour_then_box():
    chunk = _run(_head_output(-5.0, 5.0))
    assert int(chunk.source[0]) == SOURCE_NEIGHBOUR
    torch.testing.assert_close(chunk.scores[0], torch.sigmoid(torch.tensor(1.0)))
    assert abs(float(chunk.confidence[0]) - float(torch.sigmoid(torch.tensor(5.0)))) < 1e-6
    chunk = _run(_head_output(-5.0, -5.0))
    assert int(chunk.source[0]) == SOURCE_BOX
    assert bool(chunk.crops[0].all())
    assert float(chunk.confidence[0]) == 0.0  # a filled box is reviewed first


def test_refine_keeps_the_part_of_the_box_its_colour_supports():
    # an unsure mask (logit 0.2) over the whole image; the box x, y in [4, 27) of which only
    # x < 16 is bright, the rest and the whole outside dark
    out = _head_output(0.2, -5.0)
    out.images = torch.full((1, 3, 32, 32), -1.5)
    out.images[:, :, 4:28, 4:16] = 1.5
    box = torch.tensor([[4.0, 4.0, 27.0, 27.0]])

    def crop(refine):
        infer = BoxConditionedInference(mask_thr=0.5, scale_ranges=((1, 2048),), refine=refine,
                                        refine_params=CRFParams(mf_kernel_size=3))
        (chunk,) = list(infer(out, 0, boxes=box, labels=torch.tensor([1]), image_size=(32, 32),
                              orig_size=(32, 32)))
        assert int(chunk.source[0]) == SOURCE_CELL
        return chunk.crops[0]

    assert bool(crop(None).all())  # the mask as predicted: the whole box
    refined = crop("meanfield")  # the CRF keeps the bright columns, x 4..15, every row
    assert refined.shape == (23, 23)
    assert refined.any(0).nonzero().flatten().tolist() == list(range(12))
    assert bool(refined.any(1).all()) and bool(refined[1:-1, :12].all())
