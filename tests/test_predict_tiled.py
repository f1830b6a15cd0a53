"""Sliding-window inference (``test.tile``): every object once, with its whole mask, in the
frame of the original image, from windows of the requested size."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from discobox.inference.predictor import predict_batch
from discobox.inference.tiling import predict_tiled, tile_starts
from discobox.modeling.solov2.postprocess import SOLOv2PostProcessor
from discobox.structures import ImageBatch, Instances


class _EchoModel(torch.nn.Module):
    """Stands in for SOLOv2: returns its input and records the input sizes."""

    size_divisor = 32

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, images, image_sizes=None):
        self.calls.append((tuple(images.shape), list(image_sizes)))
        return images


class _BlobPost(SOLOv2PostProcessor):
    """Detects the bright blobs of each input (connected components), like a perfect model
    that only sees its window: a blob cut by the window edge comes back cut."""

    def __call__(self, out, *, image_sizes, orig_sizes):
        result = []
        for img, (h, w) in zip(out, image_sizes):
            comp, n = ndimage.label(img[0, :h, :w].numpy() > 128)
            masks = torch.from_numpy(np.stack([comp == i + 1 for i in range(n)])
                                     if n else np.zeros((0, h, w), bool))
            ys, xs = np.nonzero(comp) if n else ([], [])
            boxes = torch.tensor([[xs[comp[ys, xs] == i + 1].min(), ys[comp[ys, xs] == i + 1].min(),
                                   xs[comp[ys, xs] == i + 1].max() + 1,
                                   ys[comp[ys, xs] == i + 1].max() + 1] for i in range(n)],
                                 dtype=torch.float32).reshape(-1, 4)
            # score = blob area, so ranking is checkable
            result.append(Instances(boxes=boxes, labels=torch.zeros(n, dtype=torch.long),
                                    scores=masks.flatten(1).sum(1).float(), masks=masks))
        return result


def _batch(h, w, squares, orig=None):
    pad_h, pad_w = -(-h // 32) * 32, -(-w // 32) * 32
    images = torch.full((1, 3, pad_h, pad_w), 100.0)
    for y, x, s in squares:
        images[0, :, y:y + s, x:x + s] = 255.0
    return ImageBatch(images=images, image_sizes=[(h, w)], orig_sizes=[orig or (h, w)])


@pytest.mark.parametrize("size,tile,overlap", [(1000, 256, 0.25), (300, 128, 0.25),
                                               (129, 128, 0.5), (500, 96, 0.0)])
def test_tile_starts_cover_with_overlap(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    assert starts[0] == 0 and starts[-1] == size - tile
    assert all(b - a <= tile * (1 - overlap) + 1 for a, b in zip(starts, starts[1:]))
    assert starts == sorted(set(starts))
    assert tile_starts(100, 128, 0.25) == [0]


def test_tiled_reports_every_object_once_with_its_whole_mask():
    # squares on window borders, in overlaps and in corners of a 200x300 image
    squares = [(5, 5, 20), (40, 60, 20), (70, 100, 20), (90, 150, 20), (150, 250, 20),
               (175, 5, 20), (100, 280, 18), (60, 200, 20)]
    model, post = _EchoModel(), _BlobPost(max_per_img=100)
    batch = _batch(200, 300, squares)
    inst = predict_tiled(model, post, batch, 0, tile=(96, 128), overlap=0.25)
    assert len(model.calls) == 1  # all windows in one forward pass
    shape, sizes = model.calls[0]
    assert shape[1:] == (3, 96, 128) and shape[0] == len(tile_starts(200, 96, .25)) * len(
        tile_starts(300, 128, .25))
    assert len(inst) == len(squares)
    expected = set()
    for y, x, s in squares:
        expected.add((x, y, x + s, y + s))
    assert {tuple(int(v) for v in b) for b in inst.boxes} == expected
    assert inst.masks.shape == (len(squares), 200, 300)
    assert inst.masks.flatten(1).sum(1).tolist() == sorted(
        [s * s for _, _, s in squares], reverse=True)  # whole masks, ranked by score
    # without windows the same blobs come back from one full-image pass
    whole = predict_batch(_EchoModel(), post, batch)[0]
    assert torch.equal(whole.masks.sum(0), inst.masks.sum(0))


def test_tiled_masks_come_back_at_the_original_size_and_small_images_skip_tiling():
    batch = _batch(200, 300, [(40, 60, 40)], orig=(100, 150))
    inst = predict_tiled(_EchoModel(), _BlobPost(), batch, 0, tile=(96, 128), overlap=0.25)
    assert inst.masks.shape == (1, 100, 150)
    assert inst.boxes[0].tolist() == [30, 20, 50, 40]
    model = _EchoModel()
    inst = predict_batch(model, _BlobPost(), _batch(90, 120, [(10, 10, 20)]),
                         tile=(96, 128))[0]
    assert model.calls == [((1, 3, 96, 128), [(90, 120)])] and len(inst) == 1


@pytest.mark.parametrize("kw,match", [({"tile": (0, 64)}, "test.tile"),
                                      ({"tile": (64,)}, "test.tile"),
                                      ({"tile": (64, 64), "overlap": 0.95}, "test.tile_overlap")])
def test_tiled_rejects_bad_options_naming_the_key(kw, match):
    with pytest.raises(ValueError, match=match):
        predict_tiled(_EchoModel(), _BlobPost(), _batch(200, 300, []), 0, **kw)


def test_tile_config_keys():
    from discobox.config import load_config

    cfg = load_config(None, ["test.tile=[256,320]", "test.tile_overlap=0.5"])
    assert cfg.test.tile == (256, 320) and cfg.test.tile_overlap == 0.5
    assert load_config(None, []).test.tile is None
