import numpy as np
import pytest
import torch

from discobox.data.transforms import (
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
