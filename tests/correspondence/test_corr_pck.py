"""PCK with image-size and box normalisation, per image and per keypoint (docs/method.md §8.4)."""

from pathlib import Path

import numpy as np
import pytest

from discobox.data.correspondence import CorrPair
from discobox.engine.eval_corr import PCKMeter, pck_correct, pck_threshold


def _pair(trg_kps, trg_size=(100, 200), trg_box=None):
    k = np.asarray(trg_kps, float)
    return CorrPair(src_image=Path("a"), trg_image=Path("b"), src_kps=k, trg_kps=k,
                    category="cat", src_size=(10, 10), trg_size=trg_size,
                    trg_box=None if trg_box is None else np.asarray(trg_box, float))


GT = np.zeros((6, 2))
PRED = np.array([[0, 0], [9.9, 0], [0, 10], [9, 12], [15, 20], [0, 31.0]])  # errors 0..31


def test_image_normalisation_hand_computed():
    pair = _pair(GT, trg_size=(100, 200))  # h=100, w=200 -> L = 200
    assert pck_threshold(pair, "img") == 200
    c = pck_correct(PRED, GT, 200, (0.05, 0.10, 0.15))  # thresholds 10, 20, 30 px
    assert c.sum(1).tolist() == [3, 4, 5]  # error 10 counts (<=), error 25 only at 0.15


def test_box_normalisation_hand_computed():
    pair = _pair(GT, trg_box=[10, 20, 60, 120])  # box w=50, h=100 -> L = 100
    assert pck_threshold(pair, "bbox") == 100
    c = pck_correct(PRED, GT, 100, (0.05, 0.10, 0.15))  # thresholds 5, 10, 15 px
    assert c.sum(1).tolist() == [1, 3, 4]
    # Without a box (PF-WILLOW style) the target keypoints' extent is the box.
    kp_pair = _pair([[0, 0], [30, 10], [10, 80]])
    assert pck_threshold(kp_pair, "bbox") == 80
    with pytest.raises(ValueError):
        pck_threshold(pair, "box")


def test_per_image_versus_per_keypoint():
    m = PCKMeter((0.1,))
    m.add(np.array([[True, False]]), "cat")  # pair PCK 0.5
    m.add(np.array([[True, True, True, True]]), "dog")  # pair PCK 1.0
    m.add(np.zeros((1, 0), bool), "dog")  # no keypoints: ignored
    s = m.summary()
    assert s["pck_per_image"]["0.1"] == pytest.approx(0.75)
    assert s["pck_per_keypoint"]["0.1"] == pytest.approx(5 / 6)
    assert s["per_class"] == {"cat": {"0.1": 0.5}, "dog": {"0.1": 1.0}}
    assert s["pairs_evaluated"] == 2 and s["keypoints_evaluated"] == 6
