import json

import numpy as np
import torch

from discobox.data.coco import CocoDataset
from discobox.data.loader import build_train_loader
from discobox.data.synthetic import SHAPES, make_synthetic_coco
from discobox.data.transforms import build_transforms


def _read(paths):
    return paths.train_json.read_text(), paths.val_json.read_text()


def test_synthetic_is_deterministic(tmp_path):
    a = make_synthetic_coco(tmp_path / "a", num_train=6, num_val=2, seed=3)
    b = make_synthetic_coco(tmp_path / "b", num_train=6, num_val=2, seed=3)
    c = make_synthetic_coco(tmp_path / "c", num_train=6, num_val=2, seed=4)
    assert _read(a) == _read(b) and _read(a) != _read(c)
    for name in ("train_00000.png", "val_00001.png"):
        assert (a.image_dir / name).read_bytes() == (b.image_dir / name).read_bytes()
        assert (a.image_dir / name).read_bytes() != (c.image_dir / name).read_bytes()


def test_synthetic_loads_and_masks_match_boxes(tmp_path):
    paths = make_synthetic_coco(tmp_path, num_train=12, num_val=3, image_size=(96, 128))
    doc = json.loads(paths.train_json.read_text())
    assert [c["name"] for c in doc["categories"]] == list(SHAPES)
    assert all(a["iscrowd"] == 0 and a["area"] > 0 for a in doc["annotations"])
    ds = CocoDataset(ann_file=paths.train_json, image_dir=paths.image_dir, mode="full")
    assert len(ds) == 12 and ds.class_names == list(SHAPES)
    assert sum(ds.skipped.values()) == 0
    fill = []
    for i in range(len(ds)):
        sample = ds[i]
        assert sample["image"].shape == (96, 128, 3)
        inst = sample["instances"]
        assert len(inst) >= 1
        for box, mask in zip(inst.boxes, inst.masks):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            extent = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            torch.testing.assert_close(box, extent)
            fill.append(mask.sum().item() / ((box[2] - box[0]) * (box[3] - box[1])).item())
        # visible masks never overlap (later objects occlude earlier ones)
        assert inst.masks.sum(0).max() <= 1
    assert np.mean(fill) < 0.75  # a filled box is a clearly imperfect mask
    val = CocoDataset(ann_file=paths.val_json, image_dir=paths.image_dir, mode="test")
    assert len(val) == 3 and not set(val.image_ids) & set(ds.image_ids)


def test_synthetic_through_train_loader(tmp_path):
    paths = make_synthetic_coco(tmp_path, num_train=8, num_val=1)
    ds = CocoDataset(
        ann_file=paths.train_json,
        image_dir=paths.image_dir,
        mode="box",
        transforms=build_transforms(train=True, scales=[(160, 96)], flip_prob=0.5),
    )
    batch = next(build_train_loader(ds, batch_size=2, num_workers=0, seed=0))
    assert batch.images.shape == (2, 3, 96, 96) and batch.image_sizes == [(96, 96)] * 2
    assert batch.orig_sizes == [(128, 128)] * 2
    assert all(t.masks is None and len(t) > 0 for t in batch.targets)
    assert all(float(t.boxes.max()) <= 96 for t in batch.targets)
