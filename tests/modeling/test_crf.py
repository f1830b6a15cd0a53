"""CRF pseudo-labels: the faithful official arithmetic and the true mean-field mode
(docs/method.md §4.3, §5.7)."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from discobox.modeling.crf.faithful import color_kernel, faithful_crf
from discobox.modeling.crf.meanfield import energy, meanfield_crf, meanfield_kernel, unary_logit
from discobox.modeling.crf.params import CRFParams
from discobox.modeling.crf.pseudo_labels import crf_pseudo_labels
from discobox.modeling.crf.window import lattice_window_sum, offsets, window_sum


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


def _colored_meanfield(probs, box, image, params):
    """Reference schedule of :func:`meanfield_crf`: the same update on the pixel classes
    ``(y mod P, x mod P)``, ``P = (mf_kernel_size // 2) * mf_dilation + 1``, one class after
    another. No two pixels of a class are neighbours, so each step exactly minimises
    :func:`energy` over its class: the energy never increases (block-coordinate descent)."""
    m = box.float()
    kernel = meanfield_kernel(image, params=params)
    unary = unary_logit(probs, params, None)
    q = torch.sigmoid(unary) * m
    ks, dil = params.mf_kernel_size, params.mf_dilation
    period = (ks // 2) * dil + 1
    for _ in range(params.iters):
        for a in range(period):
            for b in range(period):
                field = lattice_window_sum(kernel, 2.0 * q - 1.0, ks, dil, a, b, period)
                cls = (..., slice(a, None, period), slice(b, None, period))
                q[cls] = torch.sigmoid(unary[cls] + field) * m[cls]
    return q


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
    got = faithful_crf(probs, box, color_kernel(img), params=CRFParams(iters=10))
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


def test_meanfield_energy_decreases_and_parallel_matches_colored():
    """The colored schedule descends :func:`energy` at every sweep (which checks the energy and
    the kernel against the update); the parallel schedule, the one used, descends here too and
    reaches the same fixed point."""
    g = torch.Generator().manual_seed(0)
    img = torch.randn((3, 10, 12), generator=g) * 0.5
    probs = torch.rand((2, 10, 12), generator=g)
    box = torch.zeros((2, 10, 12))
    box[0, 1:9, 2:11] = 1
    box[1, 0:6, 0:7] = 1
    p = CRFParams(w_color=2.0, theta_color=0.5, w_spatial=0.5, theta_spatial=1.0,
                  mf_kernel_size=3)
    energies = []
    for iters in range(7):
        q = _colored_meanfield(probs, box, img, dataclasses.replace(p, iters=iters))
        assert q.min() >= 0 and q.max() <= 1 and float((q * (1 - box)).sum()) == 0
        energies.append(energy(q, probs, box, img, params=p))
    e = torch.stack(energies)  # [iters, N]
    assert (e[1:] <= e[:-1] + 1e-4).all(), e
    assert (e[-1] < e[0] - 1e-2).all()  # and it actually moves
    par = [energy(meanfield_crf(probs, box, img, params=dataclasses.replace(p, iters=i)),
                  probs, box, img, params=p) for i in range(7)]
    assert (torch.stack(par)[1:] <= torch.stack(par)[:-1] + 1e-4).all()  # here it descends too
    long = dataclasses.replace(p, iters=20)  # both at their fixed point
    torch.testing.assert_close(meanfield_crf(probs, box, img, params=long),
                               _colored_meanfield(probs, box, img, long), atol=1e-3, rtol=0)
    # dilated neighbourhood (3 x 3 colour classes) also descends
    pd = dataclasses.replace(p, mf_dilation=2)
    e0 = energy(_colored_meanfield(probs, box, img, dataclasses.replace(pd, iters=0)), probs,
                box, img, params=pd)
    e3 = energy(_colored_meanfield(probs, box, img, dataclasses.replace(pd, iters=3)), probs,
                box, img, params=pd)
    assert (e3 <= e0 + 1e-4).all()


def test_meanfield_follows_colour_regions():
    img = _two_region_image(h=10, w=12, seed=4)
    probs = torch.full((1, 10, 12), 0.45)
    probs[0, :, :6] = 0.7  # weakly fg on the left colour region, weakly bg on the right
    box = torch.ones((1, 10, 12))
    p = CRFParams(iters=5, w_color=1.0)
    for q in (meanfield_crf(probs, box, img, params=p), _colored_meanfield(probs, box, img, p)):
        assert float(q[0, :, :6].min()) > 0.9 and float(q[0, :, 6:].max()) < 0.2


def test_crf_pseudo_labels_modes():
    img = _two_region_image()
    probs = torch.rand((2, 12, 12), generator=torch.Generator().manual_seed(5))
    box = torch.zeros((2, 12, 12))
    box[:, 2:10, 2:10] = 1
    hard = crf_pseudo_labels(probs, box, img, mode="faithful")
    torch.testing.assert_close(hard, faithful_crf(probs, box, color_kernel(img)))
    soft = crf_pseudo_labels(probs, box, img, mode="meanfield", params=CRFParams(iters=3))
    torch.testing.assert_close(soft, meanfield_crf(probs, box, img, params=CRFParams(iters=3)))
    with pytest.raises(ValueError):
        crf_pseudo_labels(probs, box, img, mode="dense")


@pytest.mark.parametrize("mode", ["faithful", "meanfield"])
def test_cross_image_term_decides_where_colour_and_unary_are_ambiguous(mode):
    """One colour everywhere and an ambiguous start: probabilities 0.5 (mean-field), or
    alternating columns (faithful: every 3x3 neighbourhood is mixed, so both exp(-A_l) are
    tiny and gamma * G decides, docs/method.md §4.3 "With G"). The cross-image evidence G says
    foreground on the top half and background on the bottom half; the labels follow it, and
    differ from those without G (§5.7)."""
    h, w = 10, 12
    image = torch.full((3, h, w), 0.3)
    box = torch.ones((1, h, w))
    if mode == "meanfield":
        probs = torch.full((1, h, w), 0.5)
    else:
        probs = torch.full((1, h, w), 0.1)
        probs[0, :, ::2] = 0.9
    cross = torch.zeros((1, 2, h, w))  # channel 0 background, 1 foreground
    cross[0, 1, : h // 2] = 0.9
    cross[0, 0, h // 2 :] = 0.9
    plain = crf_pseudo_labels(probs, box, image, mode=mode)
    with_g = crf_pseudo_labels(probs, box, image, mode=mode, cross_term=cross)
    assert torch.equal(with_g[0] > 0.5, cross[0, 1] > cross[0, 0])
    assert not torch.equal(plain > 0.5, with_g > 0.5)
    whole = crf_pseudo_labels(probs, box, image, mode=mode, cross_term=cross, crop=False)
    torch.testing.assert_close(with_g, whole)


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
    whole grid (parallel schedule) and on one colour class (colored reference schedule)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn((3, 11, 13), generator=g)
    p = CRFParams(mf_kernel_size=kernel_size, mf_dilation=dilation)
    kernel = meanfield_kernel(torch.randn((3, 11, 13), generator=g), params=p)
    ref = window_sum(kernel, x, offsets(kernel_size, dilation))
    torch.testing.assert_close(lattice_window_sum(kernel, x, kernel_size, dilation, 0, 0, 1), ref)
    period = (kernel_size // 2) * dilation + 1
    for a, b in [(0, 0), (1, period - 1), (period - 1, 2 % period)]:
        got = lattice_window_sum(kernel, x, kernel_size, dilation, a, b, period)
        torch.testing.assert_close(got, ref[:, a::period, b::period])


@pytest.mark.parametrize("kernel_size,dilation", [(3, 1), (7, 1), (5, 2)])
def test_kernels_unfold_form_equals_offset_loop(kernel_size, dilation):
    """The one-unfold kernels (the GPU default) equal the per-offset loops (the CPU default)."""
    img = torch.randn((3, 9, 14), generator=torch.Generator().manual_seed(3))
    p = CRFParams(mf_kernel_size=kernel_size, mf_dilation=dilation, kernel_size=kernel_size)
    loop = meanfield_kernel(img, params=p, vectorized=False)
    vec = meanfield_kernel(img, params=p, vectorized=True)
    torch.testing.assert_close(vec, loop)
    assert float(vec[kernel_size**2 // 2].abs().max()) == 0.0  # no self-edge
    if dilation == 1:
        torch.testing.assert_close(color_kernel(img, params=p, vectorized=True),
                                   color_kernel(img, params=p, vectorized=False))


@pytest.mark.parametrize("mode", ["faithful", "meanfield"])
@pytest.mark.parametrize("crop", [True, False])
def test_crf_unfold_path_equals_loop_path(mode, crop, monkeypatch):
    """crf_pseudo_labels takes the unfold forms off the CPU; forced on the CPU they give the
    same labels as the loops."""
    import discobox.modeling.crf.faithful as faithful_mod
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
    cases = [(CRFParams(), None), (CRFParams(), cross),
             (CRFParams(mf_kernel_size=5, mf_dilation=2, hard=True), None)]
    loops = [crf_pseudo_labels(probs, boxes, image, mode=mode, crop=crop, params=p,
                               cross_term=c) for p, c in cases]
    for mod in (crf_mod, window_mod, mf_mod, faithful_mod):
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


def test_crf_config_section_is_the_params():
    """``cfg.crf`` is the :class:`CRFParams` the CRF takes; the refiner's is a copy with its
    mode and window (``test.refine*``); deleted and misspelt keys and bad modes are rejected."""
    from discobox.config import ConfigError, load_config
    from discobox.modeling.build import refine_params

    cfg = load_config("discobox_r18_fpn_cpu", {"crf.mf_kernel_size": 5, "crf.hard": True,
                                               "crf.mf_dilation": 2, "crf.prob_clamp": 0.1,
                                               "test.refine_kernel_size": 3})
    p = cfg.crf
    assert isinstance(p, CRFParams)
    assert (p.mf_kernel_size, p.hard, p.mf_dilation, p.prob_clamp) == (5, True, 2, 0.1)
    assert p.kernel_size == 3  # the faithful window stays the official one
    assert refine_params(cfg.replace(**{"test.refine": "faithful"})) == dataclasses.replace(
        p, mode="faithful", mf_kernel_size=3)
    for key in ("crf.schedule", "crf.fill_holes", "crf.fill_ortho", "crf.dilation"):
        with pytest.raises(ConfigError, match=key.split(".")[1]):
            load_config("discobox_r18_fpn_cpu", {key: 1})
    with pytest.raises(ConfigError, match="crf.mode"):
        load_config("discobox_r18_fpn_cpu", {"crf.mode": "dense"})
