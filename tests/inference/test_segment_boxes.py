"""``Predictor.segment_boxes``: the masks of ``pseudo-label --method model`` for in-memory
images of any accepted type; the per-mask confidence and that it ranks."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import tiny_overrides
from PIL import Image
from pycocotools.coco import COCO

from discobox import Predictor, pseudo_label
from discobox.config import load_config
from discobox.errors import InvalidInputError
from discobox.inference.box_conditioned import BoxConditionedInference, mask_confidence
from discobox.inference.labellers import label_map
from discobox.modeling.build import build_model
from discobox.modeling.crf.params import CRFParams
from discobox.modeling.solov2.outputs import HeadOutput


@pytest.fixture(scope="module")
def tiny_weights(tiny_coco, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seg_model")
    cfg = load_config("discobox_r18_fpn_cpu", tiny_overrides(tiny_coco, out))
    torch.manual_seed(0)
    path = out / "tiny.pth"
    torch.save({"model": build_model(cfg).state_dict(), "config": cfg.to_dict()}, path)
    return path


@pytest.fixture(scope="module")
def predictor(tiny_weights) -> Predictor:
    return Predictor.from_checkpoint(tiny_weights, device="cpu")


def test_segment_boxes_equals_pseudo_label(tiny_coco, tiny_weights, predictor, tmp_path):
    src, out = tiny_coco / "val.json", tmp_path / "pl.json"
    pseudo_label(boxes_json=src, images_dir=tiny_coco / "images", out_json=out,
                 weights=tiny_weights, device="cpu", progress=False)
    data = json.loads(src.read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        labelled = COCO(str(out))
    cats = label_map(data["categories"], None, predictor.cfg.model.num_classes)
    images, boxes, labels, expected = [], [], [], []
    for img in data["images"]:
        anns = labelled.loadAnns(labelled.getAnnIds(imgIds=[img["id"]]))
        if not anns:
            continue
        images.append(tiny_coco / "images" / img["file_name"])
        boxes.append([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        labels.append([cats[a["category_id"]] for a in anns])
        expected.append(anns)
    assert len(images) >= 2
    for path, b, lab, anns in zip(images, boxes, labels, expected):
        masks, scores = predictor.segment_boxes(path, b, lab)
        assert masks.dtype == bool and masks.shape == (len(b), 96, 96)
        assert scores.dtype == np.float32 and scores.shape == (len(b),)
        for k, a in enumerate(anns):
            assert np.array_equal(masks[k], labelled.annToMask(a).astype(bool))
            assert a["score"] == pytest.approx(float(scores[k]), abs=1e-5)
            assert 0.0 <= a["score"] <= 1.0
    # the batched form gives the same
    batched = predictor.segment_boxes_batch(images, boxes, labels)
    for (m, s), path, b, lab in zip(batched, images, boxes, labels):
        m1, s1 = predictor.segment_boxes(path, b, lab)
        assert np.array_equal(m, m1) and np.allclose(s, s1)


def test_path_pil_and_bgr_array_give_the_same_masks(tiny_coco, predictor):
    path = tiny_coco / "images" / "val_00000.png"
    boxes = np.array([[10.0, 12.0, 60.0, 70.0], [30.5, 5.0, 90.0, 40.0], [-5, -5, 20, 20],
                      [200, 200, 220, 230]])
    m_path, s_path = predictor.segment_boxes(path, boxes)
    m_str, _ = predictor.segment_boxes(str(path), boxes)
    m_pil, s_pil = predictor.segment_boxes(Image.open(path), boxes)
    bgr = cv2.imread(str(path))
    m_bgr, s_bgr = predictor.segment_boxes(bgr, boxes, image_format="BGR")
    m_rgb, _ = predictor.segment_boxes(np.ascontiguousarray(bgr[..., ::-1]), boxes)
    for m in (m_str, m_pil, m_bgr, m_rgb):
        assert np.array_equal(m, m_path)
    assert np.array_equal(s_path, s_pil) and np.array_equal(s_path, s_bgr)
    assert not m_path[3].any() and s_path[3] == 0.0  # outside the image: empty, score 0
    assert not m_path[2][20:].any() and not m_path[2][:, 20:].any()  # clipped, confined
    # __call__ takes the same inputs
    a, b = predictor(path), predictor(bgr, image_format="BGR")
    assert len(a) == len(b) and torch.equal(a.masks, b.masks)


@pytest.mark.parametrize("bad,kind", [
    ([[1, 2, 3]], "list"),
    (np.zeros((20, 20, 3), np.float32), "float32"),
    (np.zeros((20, 20, 4), np.uint8), "[20, 20, 4]"),
    (np.zeros((20, 20), np.uint8), "[20, 20]"),
    (b"png", "bytes"),
])
def test_bad_image_is_a_one_line_error_naming_the_type(predictor, bad, kind):
    with pytest.raises(InvalidInputError) as exc:
        predictor.segment_boxes(bad, [[0, 0, 5, 5]])
    msg = str(exc.value)
    assert kind in msg and "\n" not in msg
    with pytest.raises(InvalidInputError, match=kind.replace("[", r"\[")):
        predictor(bad)


def test_bad_boxes_and_format(predictor):
    img = np.zeros((32, 32, 3), np.uint8)
    for bad in ([[0, 0, 5]], [[0, 0, float("nan"), 5]], "boxes"):
        with pytest.raises(InvalidInputError, match="boxes of image 0"):
            predictor.segment_boxes(img, bad)
    with pytest.raises(InvalidInputError, match="image_format"):
        predictor.segment_boxes(img, [[0, 0, 5, 5]], image_format="RGBA")
    with pytest.raises(InvalidInputError, match="labels"):
        predictor.segment_boxes(img, [[0, 0, 5, 5]], labels=[1, 2])
    masks, scores = predictor.segment_boxes(img, np.zeros((0, 4)))
    assert masks.shape == (0, 32, 32) and scores.shape == (0,)


def test_mask_confidence_formula():
    prob = torch.zeros(10, 10)
    prob[2:8, 2:8] = 0.9
    assert mask_confidence(prob, None, 0.5) == pytest.approx(0.9)
    check = torch.zeros(10, 10)
    check[2:8, 2:5] = 1.0  # the CRF keeps half: IoU 0.5
    assert mask_confidence(prob, check, 0.5) == pytest.approx(0.45)
    assert mask_confidence(torch.zeros(4, 4), None, 0.5) == 0.0


def _output(logit: float) -> HeadOutput:
    """One level, a 4x4 grid, E = 1, mask_feat = 1: every cell's mask logit is its kernel; the
    image is dark with a bright square at x, y in [8, 16)."""
    kernels = torch.full((1, 1, 4, 4), logit)
    cate = torch.zeros((1, 2, 4, 4))
    images = torch.full((1, 3, 32, 32), -1.5)
    images[:, :, 8:16, 8:16] = 1.5
    return HeadOutput(cate_logits=[cate], kernels=[kernels], mask_feat=torch.ones(1, 1, 8, 8),
                      p2=torch.zeros(1, 1, 8, 8), images=images)


@pytest.mark.parametrize("mode", ["faithful", "meanfield"])
def test_confidence_ranks_a_clean_mask_above_an_ambiguous_one(mode):
    """Clean: the model is sure (logit 5) of a box that the bright square fills; ambiguous: an
    unsure mask (logit 0.3) over a box only half of which is the square. The CRF agrees with
    the first and cuts the second in half."""
    infer = BoxConditionedInference(mask_thr=0.5, scale_ranges=((1, 2048),),
                                    confidence_crf=CRFParams(mode=mode, mf_kernel_size=3))

    def run(logit, box):
        (chunk,) = list(infer(_output(logit), 0, boxes=torch.tensor([box]),
                              labels=torch.tensor([0]), image_size=(32, 32),
                              orig_size=(32, 32)))
        assert bool(chunk.crops[0].all())  # both masks are the whole box
        return float(chunk.confidence[0])

    clean = run(5.0, [8.0, 8.0, 16.0, 16.0])
    ambiguous = run(0.3, [8.0, 8.0, 24.0, 16.0])
    assert clean > 0.9 and ambiguous < 0.45 and clean > ambiguous
    # a sure mask the CRF cuts scores below a sure mask it keeps
    assert run(5.0, [8.0, 8.0, 24.0, 16.0]) < clean
    # no CRF: maskness alone
    plain = BoxConditionedInference(mask_thr=0.5, scale_ranges=((1, 2048),))
    (chunk,) = list(plain(_output(0.3), 0, boxes=torch.tensor([[8.0, 8.0, 24.0, 16.0]]),
                          labels=torch.tensor([0]), image_size=(32, 32), orig_size=(32, 32)))
    assert float(chunk.confidence[0]) == pytest.approx(float(torch.sigmoid(torch.tensor(0.3))),
                                                       abs=1e-4)
