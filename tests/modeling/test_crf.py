"""CRF pseudo-labels: the faithful official arithmetic and the true mean-field mode (§4.3)."""

import math

import numpy as np
import pytest
import torch

from discobox.modeling.crf.pseudo_labels import (
    CRFParams,
    color_kernel,
    crf_pseudo_labels,
    energy,
    faithful_crf,
    fill_holes,
    fill_ortho,
    meanfield_crf,
)


def _two_region_image(h=12, w=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.empty((3, h, w))
    img[:, :, : w // 2] = torch.tensor([0.8, -0.4, 0.3]).view(3, 1, 1)
    img[:, :, w // 2 :] = torch.tensor([-0.5, 0.6, -0.2]).view(3, 1, 1)
    return img + 0.1 * torch.randn((3, h, w), generator=g)


def _box_masks(h, w, spans):
    """``float[len(spans), h, w]`` filled rectangles, one per ``(y0, y1, x0, x1)`` span."""
    boxes = torch.zeros(len(spans), h, w)
    for i, (y0, y1, x0, x1) in enumerate(spans):
        boxes[i, y0:y1, x0:x1] = 1
    return boxes


def _hard_vote(probs, box, image, *, iters=10, alpha0=2.0, theta0=0.5, theta1=30.0):
    """Independent reference (§4.3 "Interpretation"): fg iff inside the box and the
    colour-weighted vote sum_j K_j s_j > 0, s = +1 fg / -1 bg / 0 outside the image."""
    img = image.double().numpy() + 10.0
    box = box.numpy() > 0
    lab = (probs.numpy() * box) > 0.5
    h, w = lab.shape
    for _ in range(iters):
        new = np.zeros_like(lab)
        for y in range(h):
            for x in range(w):
                if not box[y, x]:
                    continue
                vote = 0.0
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        yy, xx = y + dy, x + dx
                        if not (0 <= yy < h and 0 <= xx < w):
                            continue
                        d2 = float(((img[:, yy, xx] - img[:, y, x]) ** 2).sum())
                        k = alpha0 * math.exp(
                            -d2 / (2 * theta0**2) - (dy**2 + dx**2) / (2 * theta1**2)
                        )
                        vote += k if lab[yy, xx] else -k
                new[y, x] = vote > 0
        lab = new
    return torch.from_numpy(lab.astype(np.float32))


def test_color_kernel_values():
    img = torch.zeros((3, 4, 5))
    img[0, 1, 2] = 1.0  # one pixel at colour distance 1 from its neighbours
    k = color_kernel(img)
    assert k.shape == (9, 4, 5) and k.dtype == torch.float32
    torch.testing.assert_close(k[4], torch.full((4, 5), 2.0))  # centre term = alpha0
    # offset (0, +1) of pixel (1, 1) is pixel (1, 2): 2 exp(-1/(2*0.25) - 1/1800)
    assert float(k[5, 1, 1]) == pytest.approx(2 * math.exp(-2 - 1 / 1800), rel=1e-5)
    assert float(k[8, 0, 0]) == pytest.approx(2 * math.exp(-2 / 1800), rel=1e-5)  # diagonal
    # +10 shift: out-of-image neighbours get weight ~0
    assert float(k[0, 0, 0]) == 0.0 and float(k[2, 3, 4]) < 1e-30


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_faithful_crf_equals_hard_colour_vote(seed):
    g = torch.Generator().manual_seed(seed)
    img = _two_region_image(seed=seed)
    probs = torch.rand((2, 12, 12), generator=g)
    box = torch.zeros((2, 12, 12))
    box[0, 1:11, 2:12] = 1
    box[1, 3:9, 0:8] = 1
    got = faithful_crf(probs, box, color_kernel(img), iters=10)
    assert got.shape == (2, 12, 12) and set(got.unique().tolist()) <= {0.0, 1.0}
    for n in range(2):
        ref = _hard_vote(probs[n], box[n], img, iters=10)
        assert torch.equal(got[n], ref), f"object {n}: {(got[n] != ref).sum()} pixels differ"


def test_faithful_crf_never_foreground_outside_box():
    g = torch.Generator().manual_seed(3)
    img = _two_region_image(seed=3)
    probs = torch.ones((3, 12, 12))  # everything "foreground" before masking
    box = torch.zeros((3, 12, 12))
    box[:, 2:7, 3:9] = 1
    cross = torch.rand((3, 2, 12, 12), generator=g)
    for c in (None, cross):
        y = faithful_crf(probs, box, color_kernel(img), cross_term=c)
        assert float((y * (1 - box)).sum()) == 0.0
        assert float(y.sum()) > 0


def test_meanfield_energy_decreases():
    g = torch.Generator().manual_seed(0)
    img = torch.randn((3, 10, 12), generator=g) * 0.5
    probs = torch.rand((2, 10, 12), generator=g)
    box = torch.zeros((2, 10, 12))
    box[0, 1:9, 2:11] = 1
    box[1, 0:6, 0:7] = 1
    kw = {"w_color": 2.0, "theta_color": 0.5, "w_spatial": 0.5, "theta_spatial": 1.0,
          "kernel_size": 3}
    energies = []
    for iters in range(7):
        q = meanfield_crf(probs, box, img, iters=iters, schedule="colored", **kw)
        assert q.min() >= 0 and q.max() <= 1 and float((q * (1 - box)).sum()) == 0
        energies.append(energy(q, probs, box, img, **kw))
    e = torch.stack(energies)  # [iters, N]
    assert (e[1:] <= e[:-1] + 1e-4).all(), e
    assert (e[-1] < e[0] - 1e-2).all()  # and it actually moves
    # dilated neighbourhood (3 x 3 colour classes) also descends
    q0 = meanfield_crf(probs, box, img, iters=0, dilation=2, schedule="colored", **kw)
    q3 = meanfield_crf(probs, box, img, iters=3, dilation=2, schedule="colored", **kw)
    e0 = energy(q0, probs, box, img, dilation=2, **kw)
    e3 = energy(q3, probs, box, img, dilation=2, **kw)
    assert (e3 <= e0 + 1e-4).all()


def test_meanfield_follows_colour_regions():
    img = _two_region_image(h=10, w=12, seed=4)
    probs = torch.full((1, 10, 12), 0.45)
    probs[0, :, :6] = 0.7  # weakly fg on the left colour region, weakly bg on the right
    box = torch.ones((1, 10, 12))
    q = meanfield_crf(probs, box, img, iters=5, w_color=1.0, schedule="colored")
    assert float(q[0, :, :6].min()) > 0.9 and float(q[0, :, 6:].max()) < 0.2
    par = meanfield_crf(probs, box, img, iters=5, w_color=1.0, schedule="parallel")
    assert par.shape == q.shape and torch.isfinite(par).all()
    with pytest.raises(ValueError):
        meanfield_crf(probs, box, img, schedule="random")


def test_crf_pseudo_labels_modes():
    img = _two_region_image()
    probs = torch.rand((2, 12, 12), generator=torch.Generator().manual_seed(5))
    box = torch.zeros((2, 12, 12))
    box[:, 2:10, 2:10] = 1
    hard = crf_pseudo_labels(probs, box, img, mode="faithful")
    torch.testing.assert_close(hard, faithful_crf(probs, box, color_kernel(img)))
    soft = crf_pseudo_labels(probs, box, img, mode="meanfield", params=CRFParams(iters=3))
    torch.testing.assert_close(soft, meanfield_crf(probs, box, img, iters=3))
    cross = torch.rand((2, 2, 12, 12))
    assert torch.isfinite(
        crf_pseudo_labels(probs, box, img, mode="meanfield", cross_term=cross)
    ).all()
    with pytest.raises(ValueError):
        crf_pseudo_labels(probs, box, img, mode="dense")


@pytest.mark.parametrize("mode", ["faithful", "meanfield"])
def test_per_box_crop_equals_whole_image(mode):
    """Cropping each object to its box + window radius changes nothing (only the cost)."""
    g = torch.Generator().manual_seed(0)
    n, h, w = 6, 40, 56
    image = torch.randn(3, h, w, generator=g)
    probs = torch.rand(n, h, w, generator=g)
    boxes = _box_masks(h, w, [(0, 10, 0, 12), (5, 39, 3, 20), (20, 40, 40, 56),
                              (13, 14, 9, 30), (2, 30, 2, 54), (30, 31, 50, 51)])
    cross = torch.rand(n, 2, h, w, generator=g)
    for ct in (None, cross):
        whole = crf_pseudo_labels(probs, boxes, image, mode=mode, crop=False, cross_term=ct)
        cropped = crf_pseudo_labels(probs, boxes, image, mode=mode, crop=True, cross_term=ct)
        torch.testing.assert_close(cropped, whole, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kernel_size,dilation", [(3, 1), (7, 1), (5, 2)])
def test_lattice_window_sum_equals_offset_loop(kernel_size, dilation):
    """The unfold field of the mean-field update equals the per-offset reference sum, on the
    whole grid (parallel schedule) and on one colour class (colored schedule)."""
    from discobox.modeling.crf.meanfield import meanfield_kernel
    from discobox.modeling.crf.window import lattice_window_sum, offsets, window_sum

    g = torch.Generator().manual_seed(1)
    x = torch.randn((3, 11, 13), generator=g)
    kernel = meanfield_kernel(torch.randn((3, 11, 13), generator=g), kernel_size=kernel_size,
                              dilation=dilation)
    ref = window_sum(kernel, x, offsets(kernel_size, dilation))
    torch.testing.assert_close(lattice_window_sum(kernel, x, kernel_size, dilation, 0, 0, 1), ref)
    period = (kernel_size // 2) * dilation + 1
    for a, b in [(0, 0), (1, period - 1), (period - 1, 2 % period)]:
        got = lattice_window_sum(kernel, x, kernel_size, dilation, a, b, period)
        torch.testing.assert_close(got, ref[:, a::period, b::period])


@pytest.mark.parametrize("kernel_size,dilation", [(3, 1), (7, 1), (5, 2)])
def test_kernels_unfold_form_equals_offset_loop(kernel_size, dilation):
    """The one-unfold kernels (the GPU default) equal the per-offset loops (the CPU default)."""
    from discobox.modeling.crf.meanfield import meanfield_kernel

    img = torch.randn((3, 9, 14), generator=torch.Generator().manual_seed(3))
    loop = meanfield_kernel(img, kernel_size=kernel_size, dilation=dilation, vectorized=False)
    vec = meanfield_kernel(img, kernel_size=kernel_size, dilation=dilation, vectorized=True)
    torch.testing.assert_close(vec, loop)
    assert float(vec[kernel_size**2 // 2].abs().max()) == 0.0  # no self-edge
    if dilation == 1:
        torch.testing.assert_close(color_kernel(img, kernel_size=kernel_size, vectorized=True),
                                   color_kernel(img, kernel_size=kernel_size, vectorized=False))


@pytest.mark.parametrize("mode", ["faithful", "meanfield"])
@pytest.mark.parametrize("crop", [True, False])
def test_crf_unfold_path_equals_loop_path(mode, crop, monkeypatch):
    """crf_pseudo_labels takes the unfold forms off the CPU; forced on the CPU they give the
    same labels as the loops."""
    import discobox.modeling.crf.meanfield as mf_mod
    import discobox.modeling.crf.pseudo_labels as crf_mod
    import discobox.modeling.crf.window as window_mod

    g = torch.Generator().manual_seed(4)
    n, h, w = 5, 30, 36
    image = torch.randn(3, h, w, generator=g)
    probs = torch.rand(n, h, w, generator=g)
    boxes = _box_masks(h, w, [(0, 10, 0, 12), (5, 29, 3, 20), (20, 30, 30, 36),
                              (13, 14, 9, 30), (2, 28, 2, 34)])
    boxes[4] = boxes[1]  # two objects of one crop
    cross = torch.rand(n, 2, h, w, generator=g)
    cases = [(CRFParams(), None), (CRFParams(fill_holes=True), cross),
             (CRFParams(fill_ortho=True), None),
             (CRFParams(mf_kernel_size=5, dilation=2, schedule="colored"), None)]
    loops = [crf_pseudo_labels(probs, boxes, image, mode=mode, crop=crop, params=p,
                               cross_term=c) for p, c in cases]
    for mod in (crf_mod, window_mod, mf_mod):
        monkeypatch.setattr(mod, "vectorized_default", lambda x: True)
    for limit in (crf_mod._BATCH_CROP_ELEMS, 2 * 49 * 30 * 36):  # one batch; several
        monkeypatch.setattr(crf_mod, "_BATCH_CROP_ELEMS", limit)
        for (p, c), loop in zip(cases, loops):
            vec = crf_pseudo_labels(probs, boxes, image, mode=mode, crop=crop, params=p,
                                    cross_term=c)
            torch.testing.assert_close(vec, loop, atol=1e-5, rtol=0)
    items = [((0, 30, 0, 36), [1, 4]), ((0, 10, 0, 12), [0]), ((13, 14, 9, 30), [3])]
    batches = crf_mod._pack_crops(items, 49)
    assert [len(b) for b in batches] == [1, 2]  # the big crop alone, then the two small ones
    assert sum(len(m) for b in batches for _, m in b) == 4


def test_meanfield_hard_option_binarises_marginals():
    img = _two_region_image()
    probs = torch.rand((2, 12, 12), generator=torch.Generator().manual_seed(2))
    box = torch.zeros((2, 12, 12))
    box[:, 1:11, 2:10] = 1
    soft = crf_pseudo_labels(probs, box, img, mode="meanfield", params=CRFParams(iters=2))
    hard = crf_pseudo_labels(probs, box, img, mode="meanfield",
                             params=CRFParams(iters=2, hard=True))
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(hard, (soft > 0.5).float())
    assert float((soft * (1 - soft)).sum()) > 0  # the default really is soft


def test_meanfield_config_reaches_params():
    from discobox.config import load_config
    from discobox.modeling.build import crf_params

    cfg = load_config("discobox_r18_fpn_cpu", {"crf.mf_kernel_size": 5, "crf.hard": True,
                                               "crf.schedule": "parallel", "crf.prob_clamp": 0.1})
    p = crf_params(cfg)
    assert (p.mf_kernel_size, p.hard, p.schedule, p.prob_clamp) == (5, True, "parallel", 0.1)
    assert not p.fill_holes
    assert crf_params(load_config("discobox_r18_fpn_cpu", ["crf.fill_holes=true"])).fill_holes
    assert not p.fill_ortho
    assert crf_params(load_config("discobox_r18_fpn_cpu", ["crf.fill_ortho=true"])).fill_ortho
    assert p.kernel_size == 3  # the faithful window stays the official one
    with pytest.raises(ValueError, match="crf.schedule"):
        load_config("discobox_r18_fpn_cpu", {"crf.schedule": "random"})


def test_fill_holes_rings_gaps_and_borders():
    fg = torch.zeros((4, 9, 9), dtype=torch.bool)
    fg[0, 1:8, 1:8] = True
    fg[0, 2:7, 2:7] = False  # a closed square ring: its 5x5 inside is a hole
    fg[1] = fg[0]
    fg[1, 1, 4] = False  # the same ring with a gap: nothing is enclosed
    for k in range(4):  # a diagonal (8-connected) diamond outline around (4, 4)
        for y, x in [(1 + k, 4 + k), (4 + k, 7 - k), (7 - k, 4 - k), (4 - k, 1 + k)]:
            fg[2, y, x] = True
    fg[3, :, 3] = fg[3, :, 6] = True  # two bars from border to border: the strip between
    fg[3, 0, 3:7] = True  # ... is closed on top but open at the bottom border
    holes = fill_holes(fg)
    expected0 = torch.zeros((9, 9), dtype=torch.bool)
    expected0[2:7, 2:7] = True
    assert torch.equal(holes[0], expected0)
    assert not holes[1].any() and not holes[3].any()
    inside = torch.zeros((9, 9), dtype=torch.bool)
    for y in range(9):
        for x in range(9):
            inside[y, x] = abs(y - 4) + abs(x - 4) < 3
    assert torch.equal(holes[2], inside)
    assert fill_holes(torch.zeros((0, 5, 5), dtype=torch.bool)).shape == (0, 5, 5)


def test_fill_holes_matches_scipy_on_random_masks():
    ndimage = pytest.importorskip("scipy.ndimage")
    g = torch.Generator().manual_seed(0)
    fg = torch.rand((30, 17, 23), generator=g) < 0.45
    got = fill_holes(fg)
    for i in range(fg.shape[0]):
        filled = ndimage.binary_fill_holes(fg[i].numpy())  # background 4-connected
        assert np.array_equal(got[i].numpy(), filled & ~fg[i].numpy()), i


@pytest.mark.parametrize("mode", ["faithful", "meanfield"])
def test_crf_fill_holes_option_fills_an_outlined_object(mode):
    """An object whose inside has the background's colour and only its outline differs (the
    droplets case): without the option the target keeps the inside as background; with it the
    inside becomes 1, and the per-box crop still equals the whole-image result."""
    h, w = 20, 20
    image = torch.zeros((3, h, w))
    ring = torch.zeros((h, w), dtype=torch.bool)
    ring[4:16, 4:16] = True
    ring[6:14, 6:14] = False
    image[:, ring] = 2.0  # a dark outline two pixels thick, same grey inside and outside
    box = torch.zeros((1, h, w))
    box[0, 4:16, 4:16] = 1
    probs = torch.where(ring, 0.9, 0.2).unsqueeze(0)  # a student that marks the outline
    plain = crf_pseudo_labels(probs, box, image, mode=mode)
    filled = crf_pseudo_labels(probs, box, image, mode=mode, params=CRFParams(fill_holes=True))
    assert float(plain[0, 8:12, 8:12].max()) < 0.5  # the colour cue alone leaves a hole
    assert torch.all(filled[0, 6:14, 6:14] == 1)
    assert torch.all(filled >= plain) and float(filled[0][box[0] == 0].max()) == 0
    whole = crf_pseudo_labels(probs, box, image, mode=mode, crop=False,
                              params=CRFParams(fill_holes=True))
    torch.testing.assert_close(filled, whole)


def test_fill_ortho_rings_arcs_and_concave_shapes():
    """Row/column fill by hand: a ring and a C fill, a box and an L stay, a U's cup fills."""
    fg = torch.zeros((6, 9, 9), dtype=torch.bool)
    fg[0, 1:8, 1:8] = True
    fg[0, 2:7, 2:7] = False  # a closed square ring
    fg[1] = fg[0]
    fg[1, :, 7] = False  # ... without its right side: a C
    fg[2, 2:5, 3:8] = True  # a box
    fg[3, 1:8, 1] = True
    fg[3, 7, 1:8] = True  # an L
    fg[4, 1:8, 1] = fg[4, 1:8, 7] = True
    fg[4, 7, 1:8] = True  # a U
    fg[5, 0, 0] = fg[5, 8, 8] = True  # two opposite corners: nothing between them in a row
    out = fill_ortho(fg)
    disc = torch.zeros((9, 9), dtype=torch.bool)
    disc[1:8, 1:8] = True
    assert torch.equal(out[0], disc)
    c_fill = disc.clone()
    c_fill[:, 7] = False  # the C brackets columns 1-6 top to bottom: its inside fills
    assert torch.equal(out[1], c_fill)
    assert torch.equal(out[2], fg[2]) and torch.equal(out[3], fg[3])
    assert torch.equal(out[4], disc)  # the cup is bracketed in every row
    assert torch.equal(out[5], fg[5])
    assert fill_ortho(torch.zeros((0, 5, 5), dtype=torch.bool)).shape == (0, 5, 5)
    with pytest.raises(ValueError, match="fill_ortho"):
        fill_ortho(torch.zeros((5, 5), dtype=torch.bool))


def test_fill_ortho_contains_mask_and_holes_and_keeps_bounding_box():
    g = torch.Generator().manual_seed(1)
    fg = torch.rand((40, 13, 17), generator=g) < 0.15
    fg[:, :2] = False  # empty rows and columns at the edges stay empty
    fg[:, :, -3:] = False
    out = fill_ortho(fg)
    assert torch.all(out >= fg) and torch.all(out >= fill_holes(fg))
    assert not out[:, :2].any() and not out[:, :, -3:].any()
    for i in range(fg.shape[0]):
        ys, xs = torch.nonzero(fg[i], as_tuple=True)
        oy, ox = torch.nonzero(out[i], as_tuple=True)
        assert oy.min() >= ys.min() and oy.max() <= ys.max()
        assert ox.min() >= xs.min() and ox.max() <= xs.max()
        for y in range(13):  # every filled pixel is bracketed in its row or its column
            for x in range(17):
                if out[i, y, x]:
                    row, col = fg[i, y], fg[i, :, x]
                    assert (row[: x + 1].any() and row[x:].any()) or \
                        (col[: y + 1].any() and col[y:].any())


@pytest.mark.parametrize("mode", ["faithful", "meanfield"])
def test_crf_fill_ortho_option_fills_an_arc(mode):
    """The droplets case with a broken outline (an arc, which fill_holes leaves open): with
    ``fill_ortho`` the part of the inside the arc spans becomes 1, nothing leaves the box, and
    the per-box crop equals the whole-image result."""
    h, w = 20, 20
    image = torch.zeros((3, h, w))
    arc = torch.zeros((h, w), dtype=torch.bool)
    arc[4:16, 4:16] = True
    arc[6:14, 6:14] = False
    arc[8:12, 14:16] = False  # a gap in the right side of the outline
    image[:, arc] = 2.0
    box = torch.zeros((1, h, w))
    box[0, 4:16, 4:16] = 1
    probs = torch.where(arc, 0.9, 0.2).unsqueeze(0)
    plain = crf_pseudo_labels(probs, box, image, mode=mode)
    holes = crf_pseudo_labels(probs, box, image, mode=mode, params=CRFParams(fill_holes=True))
    ortho = crf_pseudo_labels(probs, box, image, mode=mode, params=CRFParams(fill_ortho=True))
    assert float(plain[0, 8:12, 8:12].max()) < 0.5
    torch.testing.assert_close(holes, plain)  # the outline is open: fill_holes does nothing
    assert torch.all(ortho[0, 6:14, 6:14] == 1)  # bracketed by the arc in every column
    assert torch.all(ortho >= plain) and float(ortho[0][box[0] == 0].max()) == 0
    whole = crf_pseudo_labels(probs, box, image, mode=mode, crop=False,
                              params=CRFParams(fill_ortho=True))
    torch.testing.assert_close(ortho, whole)
