"""Dense matching of whole images: identity pairs and a known synthetic affine warp (§8.4)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from corr_helpers import (
    affine_warp,
    apply_affine,
    colour_gradient_features,
    textured_image,
)

from discobox.engine.eval_corr import pck_correct
from discobox.modeling.correspondence.dense_match import (
    DenseFeatures,
    PairMatch,
    hyperpixel,
    image_features,
    match_dense,
    match_features,
    resize_longer,
    transfer_keypoints,
)


def _tiny_model():
    from helpers import tiny_overrides

    from discobox.config import load_config
    from discobox.modeling.build import build_model

    cfg = load_config(None, tiny_overrides(Path("."), Path(".")))
    torch.manual_seed(0)
    return build_model(cfg).eval()


def _raw(image: np.ndarray, stride: int = 4) -> DenseFeatures:
    h, w = image.shape[:2]
    return DenseFeatures(feat=colour_gradient_features(image, stride=stride), stride=stride,
                         scale=(1.0, 1.0), size=(h, w))


def test_resize_longer_and_hyperpixel_shapes():
    img = np.zeros((50, 100, 3), np.uint8)
    out, (sx, sy) = resize_longer(img, 64)
    assert out.shape == (32, 64, 3) and sx == 0.64 and sy == 0.64
    f = hyperpixel([torch.randn(4, 8, 8), torch.randn(6, 4, 4)])
    assert f.shape == (10, 8, 8)
    assert torch.allclose(f.norm(dim=0), torch.ones(8, 8), atol=1e-5)


def test_transfer_keypoints_follows_a_pure_translation():
    xy = torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="xy"),
                     -1).reshape(-1, 2) * 4 + 1.5
    conf = torch.zeros(64, 64)
    for i in range(64):
        x, y = i % 8, i // 8
        conf[i, y * 8 + min(x + 1, 7)] = 1.0  # +4 px in x
    kps = torch.tensor([[10.0, 10.0], [13.0, 17.5]])
    pred = transfer_keypoints(kps, conf, xy, xy, rf_size=11)
    assert torch.allclose(pred, kps + torch.tensor([4.0, 0.0]), atol=1e-5)


@pytest.mark.parametrize("solver", ["sinkhorn", "cosine"])
def test_identity_pair_random_solov2_features(solver):
    """Random-init tiny SOLOv2 (FPN P2+P3): an image matched to itself gives identity matches."""
    model = _tiny_model()
    img = textured_image(64, seed=3)
    fa = image_features(model, img, img_side=64, levels=(0, 1))
    fb = image_features(model, img, img_side=64, levels=(0, 1))
    m = match_features(fa, fb, solver=solver, iters=1)
    n = m.conf.shape[0]
    frac = float((m.conf.argmax(1) == torch.arange(n)).float().mean())
    assert frac >= 0.95, frac
    kps = np.random.default_rng(0).uniform(8, 56, (20, 2))
    pred = m.transfer(kps)
    assert pck_correct(pred, kps, 64, [0.05]).mean() == 1.0


def _warp_pck(featfn, seed: int, stride: int = 4, size: int = 96) -> tuple[float, float]:
    img = textured_image(size, seed)
    warped, a = affine_warp(img, angle=15.0, scale=1.15, shift=(6.0, -5.0))
    kps = np.random.default_rng(seed).uniform(0.2 * size, 0.8 * size, (30, 2))
    gt = apply_affine(a, kps)
    m = match_features(featfn(img), featfn(warped), solver="sinkhorn", iters=1, hough=True)
    c = pck_correct(m.transfer(kps), gt, size, [0.05, 0.10])
    return float(c[0].mean()), float(c[1].mean())


def test_synthetic_affine_warp_is_recovered(capsys):
    """Rotation 15 deg, scale 1.15, shift (6, -5) px of a 96 px texture; 30 keypoints, 4 seeds.

    Raw colour + gradient descriptors (5x5 window, dilation 3, stride 4) with Sinkhorn (1 it.)
    + Hough voting: measured PCK@0.1 = 0.983 (PCK@0.05 = 0.983). A random-init tiny SOLOv2
    (P2+P3) reaches only ~0.47 (PCK@0.05 ~0.18), printed for reference, not asserted.
    """
    raw = np.array([_warp_pck(_raw, s) for s in range(4)]).mean(0)
    model = _tiny_model()
    net = np.array([_warp_pck(lambda im: image_features(model, im, img_side=96), s)
                    for s in range(2)]).mean(0)
    with capsys.disabled():
        print(f"\n[warp] colour/gradient PCK@0.05={raw[0]:.3f} PCK@0.1={raw[1]:.3f}; "
              f"random tiny SOLOv2 PCK@0.05={net[0]:.3f} PCK@0.1={net[1]:.3f}")
    assert raw[1] >= 0.9
    assert raw[0] >= 0.8


def test_match_dense_rejects_unknown_solver():
    with pytest.raises(ValueError, match="solver"):
        match_dense(torch.randn(4, 3), torch.randn(4, 3), src_xy=torch.zeros(4, 2),
                    trg_xy=torch.zeros(4, 2), src_size=(1, 1), trg_size=(1, 1), solver="nn")


def test_pair_match_transfer_scales_back_to_original_frame():
    feat = torch.nn.functional.normalize(torch.randn(6, 4, 4), dim=0)
    src = DenseFeatures(feat=feat, stride=4, scale=(0.5, 0.5), size=(16, 16))
    trg = DenseFeatures(feat=feat, stride=4, scale=(0.25, 0.25), size=(16, 16))
    m = PairMatch(conf=torch.eye(16), src=src, trg=trg)
    pred = m.transfer(np.array([[10.0, 6.0]]))
    assert np.allclose(pred, [[20.0, 12.0]])  # identity in the resized frame
