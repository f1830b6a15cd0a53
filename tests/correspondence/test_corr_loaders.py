"""Correspondence benchmark loaders on tiny hand-made folders (skips are counted)."""

import numpy as np
import pytest
from corr_helpers import make_pfpascal, make_pfwillow, make_spair

from discobox.data.correspondence import CorrDatasetError, load_corr_dataset


@pytest.mark.parametrize("inline", [False, True])
def test_pf_pascal(tmp_path, inline):
    make_pfpascal(tmp_path, inline=inline)
    root = tmp_path if inline else tmp_path / "PF-PASCAL"  # the folder or its parent
    ds = load_corr_dataset("pf-pascal", root)
    s = ds.skips
    assert ds.thresh_type == "img" and len(ds) == 1
    assert s.pairs_listed == 3 and s.pairs_missing_image == 1 and s.pairs_no_keypoints == 1
    assert s.pairs_skipped == 2 and "2008_000004.jpg" in s.missing_images[0]
    # pair 1: kp 3 NaN/-1 (padding), kp 4 outside the target image; pair 3: both padding.
    assert s.keypoints_padding == 1 + 2 and s.keypoints_outside == 1
    p = ds.pairs[0]
    assert p.category == "cat" and p.trg_size == (64, 64)
    assert np.allclose(p.src_kps, [[10, 12], [30, 40]]) and np.allclose(p.trg_kps,
                                                                        [[12, 14], [33, 41]])
    if not inline:
        assert np.allclose(p.trg_box, [2, 3, 50, 60])


@pytest.mark.parametrize("mat", [False, True])
def test_pf_willow(tmp_path, mat):
    make_pfwillow(tmp_path, mat=mat)
    ds = load_corr_dataset("pf-willow", tmp_path)
    s = ds.skips
    assert ds.thresh_type == "bbox" and len(ds) == 2
    assert s.pairs_missing_image == 1 and s.keypoints_padding == 1
    assert [p.category for p in ds.pairs] == ["car(G)", "duck(S)"]
    p = ds.pairs[0]
    assert p.src_kps.shape == (9, 2)
    assert np.allclose(p.trg_box, [*p.trg_kps.min(0), *p.trg_kps.max(0)])


def test_spair(tmp_path):
    make_spair(tmp_path)
    ds = load_corr_dataset("spair", tmp_path)
    s = ds.skips
    assert ds.thresh_type == "bbox" and len(ds) == 2
    assert s.pairs_listed == 3 and s.pairs_missing_image == 1 and s.keypoints_padding == 1
    assert np.allclose(ds.pairs[0].trg_box, [3, 5, 55, 50])
    assert np.allclose(ds.pairs[1].trg_box, [4, 6, 50, 58])  # from ImageAnnotation
    assert len(ds.pairs[1].src_kps) == 1


def test_missing_layout_errors_name_the_path(tmp_path):
    with pytest.raises(CorrDatasetError, match="test_pairs"):
        load_corr_dataset("pf-pascal", tmp_path)
    with pytest.raises(CorrDatasetError, match="PairAnnotation"):
        load_corr_dataset("spair", tmp_path)
    with pytest.raises(CorrDatasetError, match="not found"):
        load_corr_dataset("pf-willow", tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown"):
        load_corr_dataset("caltech", tmp_path)
