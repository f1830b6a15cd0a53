"""Smoke tests on the small real sets in ``../shared/data`` (skipped where absent)."""

import os
from pathlib import Path

import pytest
import torch

from discobox.data.coco import CocoDataset
from discobox.data.loader import build_test_loader, build_train_loader
from discobox.data.transforms import build_transforms

SHARED = Path(
    os.environ.get("DISCOBOX_SHARED_DATA")
    or Path(__file__).resolve().parents[2].parent / "shared" / "data"
)
COCO128 = SHARED / "coco128"

pytestmark = pytest.mark.skipif(
    not (COCO128 / "train.json").is_file(), reason=f"real data not found at {COCO128}"
)


def test_coco128_box_mode_train_loader():
    ds = CocoDataset(
        ann_file=COCO128 / "train.json",
        image_dir=COCO128 / "images",
        mode="box",
        transforms=build_transforms(train=True, scales=[(1333, 800)], flip_prob=0.5),
    )
    assert len(ds) > 90 and len(ds.class_names) == 80
    assert ds.label_to_cat_id[0] == 1 and ds.label_to_cat_id[79] == 90  # official COCO ids
    batch = next(build_train_loader(ds, batch_size=2, num_workers=0, seed=0))
    assert batch.images.shape[0] == 2 and batch.images.shape[-2] % 32 == 0
    for (h, w), t in zip(batch.image_sizes, batch.targets):
        assert min(h, w) <= 800 and max(h, w) <= 1333 and (min(h, w) == 800 or max(h, w) == 1333)
        assert t.masks is None and len(t) > 0
        assert (t.boxes[:, 2:] <= torch.tensor([w, h])).all()


def test_coco128_full_mode_masks_agree_with_boxes():
    ds = CocoDataset(ann_file=COCO128 / "val.json", image_dir=COCO128 / "images", mode="full")
    inst = ds.instances(0)
    assert inst.masks.shape[0] == len(inst) > 0
    for box, mask in zip(inst.boxes, inst.masks):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        extent = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
        assert (extent - box).abs().max() <= 3.0


def test_coco128_test_loader():
    ds = CocoDataset(
        ann_file=COCO128 / "val.json",
        image_dir=COCO128 / "images",
        mode="test",
        transforms=build_transforms(train=False, scales=[(1333, 800)]),
    )
    loader = build_test_loader(ds, batch_size=1, num_workers=0)
    batch = next(iter(loader))
    assert batch.orig_sizes[0] == tuple(ds[0]["orig_size"])
    assert ds.coco.getImgIds() == sorted(ds.image_ids)
