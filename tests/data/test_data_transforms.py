import numpy as np
import pytest
import torch

from discobox.data.transforms import (
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
    build_transforms,
    rescaled_size,
    rng_scope,
)
from discobox.structures import Instances


def _sample(h, w, boxes, masks=None):
    image = np.arange(h * w * 3, dtype=np.int64).reshape(h, w, 3).astype(np.uint8)
    inst = Instances(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.zeros(len(boxes), dtype=torch.int64),
        masks=masks,
    )
    return {"image": image, "instances": inst, "image_id": 1, "file_name": "x", "orig_size": (h, w)}


@pytest.mark.parametrize(
    "hw, scale, expected",
    [
        ((480, 640), (1333, 800), (800, 1067)),  # s = 800/480: 640*5/3 = 1066.67 -> 1067
        ((427, 640), (1333, 800), (800, 1199)),  # s = 800/427: 1199.06 -> 1199
        ((300, 1200), (1333, 800), (333, 1333)),  # long side limits: s = 1333/1200
        ((640, 480), (800, 1333), (1067, 800)),  # scale order does not matter; portrait
        ((100, 100), (1333, 640), (640, 640)),
        ((35, 53), (1333, 800), (800, 1211)),  # int(53 * 800 / 35 + 0.5) = int(1211.93)
    ],
)
def test_rescaled_size_rule(hw, scale, expected):
    assert rescaled_size(*hw, scale) == expected


def test_resize_scales_and_clips_boxes_and_masks():
    masks = torch.zeros((1, 48, 64), dtype=torch.bool)
    masks[0, 10:20, 8:16] = True
    sample = _sample(48, 64, [[8, 10, 16, 20], [-3, 0, 70, 48]], masks=masks.repeat(2, 1, 1))
    out = Resize(scales=[(200, 96)])(sample)  # s = min(200/64, 96/48) = 2 -> 96x128
    assert out["image"].shape == (96, 128, 3) and out["image"].dtype == np.uint8
    assert out["scale_factor"] == (2.0, 2.0)
    torch.testing.assert_close(
        out["instances"].boxes, torch.tensor([[16, 20, 32, 40], [0, 0, 128, 96.0]])
    )
    m = out["instances"].masks
    assert m.dtype == torch.bool and m.shape == (2, 96, 128)
    expected = torch.zeros((96, 128), dtype=torch.bool)
    expected[20:40, 16:32] = True
    assert torch.equal(m[0], expected)  # nearest: exact for integer factors
    # original sample untouched
    assert sample["image"].shape == (48, 64, 3)


def test_resize_non_integer_factor_box_scale_uses_rounded_size():
    out = Resize(scales=[(1333, 800)])(_sample(35, 53, [[0, 0, 53, 35]]))
    h, w = out["image"].shape[:2]
    assert (h, w) == (800, 1211)
    torch.testing.assert_close(out["instances"].boxes, torch.tensor([[0, 0, 1211, 800.0]]))


def test_resize_without_keep_ratio_and_multiscale():
    out = Resize(scales=[(100, 50)], keep_ratio=False)(_sample(48, 64, [[0, 0, 32, 24]]))
    assert out["image"].shape == (50, 100, 3)
    torch.testing.assert_close(out["instances"].boxes, torch.tensor([[0, 0, 50, 25.0]]))
    resize = Resize(scales=[(1333, 64), (1333, 32)])
    shorts = set()
    for seed in range(20):
        with rng_scope(np.random.default_rng(seed)):
            shorts.add(resize(_sample(48, 64, []))["image"].shape[0])
    assert shorts == {32, 64}
    with rng_scope(np.random.default_rng(3)):
        a = resize(_sample(48, 64, []))["image"].shape
    with rng_scope(np.random.default_rng(3)):
        b = resize(_sample(48, 64, []))["image"].shape
    assert a == b


def test_flip_box_rule_and_masks():
    masks = torch.zeros((1, 4, 10), dtype=torch.bool)
    masks[0, :, :3] = True
    sample = _sample(4, 10, [[1, 0, 3, 2]], masks=masks)
    out = RandomHorizontalFlip(p=1.0)(sample)
    assert out["flipped"]
    torch.testing.assert_close(out["instances"].boxes, torch.tensor([[7, 0, 9, 2.0]]))
    np.testing.assert_array_equal(out["image"], sample["image"][:, ::-1])
    assert out["image"].flags["C_CONTIGUOUS"]
    assert out["instances"].masks[0, :, 7:].all() and not out["instances"].masks[0, :, :7].any()
    same = RandomHorizontalFlip(p=0.0)(sample)
    assert not same["flipped"] and same["instances"] is sample["instances"]


def test_flip_probability_uses_scoped_rng():
    flip = RandomHorizontalFlip(p=0.5)
    flips = []
    for seed in range(40):
        with rng_scope(np.random.default_rng(seed)):
            flips.append(flip(_sample(4, 4, []))["flipped"])
    assert 5 < sum(flips) < 35
    again = []
    for seed in range(40):
        with rng_scope(np.random.default_rng(seed)):
            again.append(flip(_sample(4, 4, []))["flipped"])
    assert flips == again


def test_build_transforms():
    train = build_transforms(train=True, scales=[(128, 64)], flip_prob=1.0)
    out = train(_sample(48, 64, [[0, 0, 10, 10]]))
    assert out["image"].shape == (64, 85, 3) and out["flipped"]
    test = build_transforms(train=False, scales=[(128, 64)], flip_prob=1.0)
    out = test(_sample(48, 64, [[0, 0, 10, 10]]))
    assert "flipped" not in out
    with pytest.raises(ValueError, match="one scale"):
        build_transforms(train=False, scales=[(128, 64), (128, 32)])
    with pytest.raises(ValueError, match="scales"):
        build_transforms(train=True, scales=[(128,)])


class _Scripted:
    """A stand-in generator whose ``random()`` returns the given numbers in turn."""

    def __init__(self, values):
        self.values = list(values)

    def random(self):
        return self.values.pop(0)


def test_random_crop_shifts_clips_and_drops_boxes_and_cuts_masks():
    masks = torch.zeros((3, 60, 80), dtype=torch.bool)
    masks[0, 10:30, 10:30] = True  # inside the window below
    masks[1, 35:55, 25:45] = True  # cut by the window's bottom edge (y = 40)
    masks[2, 50:58, 70:78] = True  # outside the window
    boxes = [[10, 10, 30, 30], [25, 35, 45, 55], [70, 50, 78, 58]]
    sample = _sample(60, 80, boxes, masks=masks)
    sample["instances"] = sample["instances"].replace(ids=torch.tensor([7, 8, 9]))
    crop = RandomCrop(size=(35, 50))
    # the window's corner is drawn as y0 = int(u * 26), x0 = int(u' * 31): script (5, 5)
    with rng_scope(_Scripted([5.5 / 26, 5.5 / 31])):
        out = crop(sample)
    assert out["crop"] == (5, 5, 55, 40)
    assert out["image"].shape == (35, 50, 3)
    np.testing.assert_array_equal(out["image"], sample["image"][5:40, 5:55])
    inst = out["instances"]
    assert inst.ids.tolist() == [7, 8]  # the third box lies outside and is dropped
    torch.testing.assert_close(inst.boxes, torch.tensor([[5, 5, 25, 25], [20, 30, 40, 35.0]]))
    assert inst.masks.shape == (2, 35, 50)
    torch.testing.assert_close(inst.masks, masks[:2, 5:40, 5:55])
    # the clipped box stays tight to the visible part of its mask
    ys, xs = torch.nonzero(inst.masks[1], as_tuple=True)
    assert [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1] == [
        20, 30, 40, 35]


def test_random_crop_never_returns_a_crop_without_ground_truth():
    # one small object in a corner of a big image: most random windows miss it
    sample = _sample(400, 400, [[380, 380, 396, 396]])
    crop = RandomCrop(size=(64, 64), max_tries=1)
    for seed in range(30):
        with rng_scope(np.random.default_rng(seed)):
            out = crop(sample)
        assert len(out["instances"]) == 1
        x0, y0, x1, y1 = out["crop"]
        assert (x1 - x0, y1 - y0) == (64, 64) and x0 <= 380 and x1 >= 396


def test_random_crop_keeps_small_images_whole_and_is_reproducible():
    sample = _sample(30, 40, [[0, 0, 10, 10]])
    out = RandomCrop(size=(64, 64))(sample)
    assert out["image"].shape == (30, 40, 3) and out["crop"] == (0, 0, 40, 30)
    out = RandomCrop(size=(64, 20))(sample)  # only the width is cut
    assert out["image"].shape == (30, 20, 3)
    big = _sample(200, 300, [[x, x, x + 20, x + 20] for x in range(0, 180, 20)])
    crops = []
    for _ in range(2):
        with rng_scope(np.random.default_rng(3)):
            crops.append(RandomCrop(size=(50, 50))(big)["crop"])
    assert crops[0] == crops[1]


@pytest.mark.parametrize("size", [(0, 10), (10,), (10.5, 10), (-1, 5)])
def test_random_crop_rejects_bad_sizes_naming_the_key(size):
    with pytest.raises(ValueError, match="data.train_crop"):
        RandomCrop(size=size)


def test_build_transforms_with_crop_and_config_key():
    from discobox.config import load_config

    cfg = load_config(None, ["data.train_crop=[32,48]"])
    assert cfg.data.train_crop == (32, 48)
    assert load_config(None, []).data.train_crop is None
    train = build_transforms(train=True, scales=[(256, 128)], flip_prob=0.0,
                             crop=cfg.data.train_crop)
    out = train(_sample(96, 128, [[0, 0, 128, 96]]))  # resized to 128x171, then cut to 32x48
    assert out["image"].shape == (32, 48, 3)
    torch.testing.assert_close(out["instances"].boxes, torch.tensor([[0, 0, 48, 32.0]]))
