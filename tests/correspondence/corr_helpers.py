"""Helpers of the correspondence tests: textures, warps, fake outputs, tiny datasets, weights."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from discobox.modeling.solov2.outputs import HeadOutput
from discobox.structures import Instances


def textured_image(size: int = 96, seed: int = 0) -> np.ndarray:
    """``uint8[size, size, 3]`` multi-scale smooth colour noise (a texture without repeats)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.float32)
    for scale, weight in ((4, 1.0), (8, 0.7), (16, 0.5)):
        small = rng.random((size // scale + 2, size // scale + 2, 3)).astype(np.float32)
        big = cv2.resize(small, (size + 2 * scale, size + 2 * scale),
                         interpolation=cv2.INTER_CUBIC)[scale:scale + size, scale:scale + size]
        img += weight * big
    img -= img.min()
    return (255 * img / img.max()).astype(np.uint8)


def affine_warp(image: np.ndarray, *, angle: float = 8.0, scale: float = 1.08,
                shift: tuple[float, float] = (4.0, -3.0)) -> tuple[np.ndarray, np.ndarray]:
    """Rotate/scale about the centre and shift; returns ``(warped, A float[2, 3])`` mapping source
    (x, y, 1) to target pixels. Borders are reflected so the whole target stays textured."""
    h, w = image.shape[:2]
    a = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale)
    a[:, 2] += shift
    out = cv2.warpAffine(image, a, (w, h), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT)
    return out, a


def apply_affine(a: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ a[:, :2].T + a[:, 2]


def colour_gradient_features(image: np.ndarray, *, stride: int = 4, radius: int = 2,
                             dilation: int = 3) -> torch.Tensor:
    """Raw local descriptors ``float[C, h/stride, w/stride]``: blurred RGB and x/y gradients
    sampled on a ``(2r+1)^2`` dilated window around each cell centre, per-channel centred."""
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255.0
    x = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    gx = x[..., :, 2:] - x[..., :, :-2]
    gy = x[..., 2:, :] - x[..., :-2, :]
    gx = F.pad(gx, (1, 1, 0, 0))
    gy = F.pad(gy, (0, 0, 1, 1))
    base = torch.cat([x - x.mean((2, 3), keepdim=True), 2 * gx, 2 * gy], 1)
    k = 2 * radius + 1
    pad = radius * dilation
    patches = F.unfold(F.pad(base, (pad,) * 4, mode="replicate"), k, dilation=dilation)
    h, w = image.shape[:2]
    patches = patches.view(1, -1, h, w)
    off = stride // 2
    return F.normalize(patches[0, :, off::stride, off::stride], dim=0)


def fake_head_output(*, B: int = 2, C: int = 3, E: int = 8, H: int = 64, W: int = 64,
                     p2_channels: int = 8, grids=(8, 6, 4, 4, 2), seed: int = 0,
                     requires_grad: bool = True) -> HeadOutput:
    g = torch.Generator().manual_seed(seed)

    def t(*shape, scale=1.0):
        return (scale * torch.randn(shape, generator=g)).requires_grad_(requires_grad)

    return HeadOutput(
        cate_logits=[t(B, C, s, s) for s in grids],
        kernels=[t(B, E, s, s, scale=0.5) for s in grids],
        mask_feat=t(B, E, H // 4, W // 4),
        p2=t(B, p2_channels, H // 4, W // 4),
        images=torch.randn((B, 3, H, W), generator=g),
    )


def box_targets() -> list[Instances]:
    boxes0 = torch.tensor([[4.0, 4.0, 40.0, 36.0], [30.0, 20.0, 60.0, 60.0], [2, 2, 58, 58]])
    boxes1 = torch.tensor([[10.0, 8.0, 26.0, 30.0], [20.0, 16.0, 56.0, 50.0]])
    return [Instances(boxes=boxes0, labels=torch.tensor([0, 2, 1])),
            Instances(boxes=boxes1, labels=torch.tensor([1, 0]))]


def write_image(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def tiny_weights(tmp: Path, num_classes: int = 3) -> Path:
    """A random-init tiny ResNet-18 SOLOv2 checkpoint (model + config) under ``tmp``."""
    from helpers import tiny_overrides

    from discobox.config import load_config
    from discobox.modeling.build import build_model

    cfg = load_config(None, tiny_overrides(tmp, tmp / "run",
                                           **{"model.num_classes": num_classes}))
    torch.manual_seed(0)
    model = build_model(cfg)
    path = tmp / "tiny.pth"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, path)
    return path


def save_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


# -- tiny benchmark folders -------------------------------------------------------------------

def make_pfpascal(root: Path, *, inline: bool = False, size: int = 64) -> Path:
    """``root/PF-PASCAL`` with 3 test pairs: a good one (2 valid kps + 1 NaN + 1 outside), one
    whose target image is missing, one with only padding keypoints; plus a trn pair."""
    from scipy.io import savemat

    base = root / "PF-PASCAL"
    names = ["2008_000001", "2008_000002", "2008_000003", "2008_000004", "2009_000005"]
    for i, n in enumerate(names):
        if n != "2008_000004":  # missing image
            write_image(base / "JPEGImages" / f"{n}.jpg", textured_image(size, seed=i))
    nan = float("nan")
    kps = {
        "2008_000001": [[10, 12], [30, 40], [nan, nan], [20, 20]],
        "2008_000002": [[12, 14], [33, 41], [5, 5], [size + 30, 10]],  # last one outside
        "2008_000003": [[-1, -1], [nan, nan]],
        "2008_000004": [[5, 5]],
        "2009_000005": [[7, 7], [9, 9]],
    }
    pairs = [("2008_000001", "2008_000002"), ("2008_000001", "2008_000004"),
             ("2008_000003", "2008_000003")]
    for n, k in kps.items():
        d = base / "Annotations" / "cat"
        d.mkdir(parents=True, exist_ok=True)
        savemat(str(d / f"{n}.mat"), {"kps": np.asarray(k, float),
                                      "bbox": np.array([[2, 3, 50, 60]], float)})
    if inline:
        lines = ["source_image,target_image,class,XA,YA,XB,YB"]
        for a, b in pairs:
            ka, kb = np.asarray(kps[a]), np.asarray(kps[b])
            k = min(len(ka), len(kb))
            ka = np.nan_to_num(ka[:k], nan=-1)
            kb = np.nan_to_num(kb[:k], nan=-1)
            cols = [";".join(f"{v:g}" for v in c) for c in (ka[:, 0], ka[:, 1], kb[:, 0], kb[:, 1])]
            lines.append(f"PF-PASCAL/JPEGImages/{a}.jpg,PF-PASCAL/JPEGImages/{b}.jpg,8,"
                         + ",".join(cols))
        (base / "test_pairs_pf_pascal.csv").write_text("\n".join(lines) + "\n")
    else:
        lines = ["source_image,target_image,class"]
        lines += [f"JPEGImages/{a}.jpg,JPEGImages/{b}.jpg,8" for a, b in pairs]
        (base / "test_pairs.csv").write_text("\n".join(lines) + "\n")
    (base / "trn_pairs.csv").write_text(
        "source_image,target_image,class,flip\nJPEGImages/2009_000005.jpg,"
        "JPEGImages/2008_000001.jpg,8,0\n")
    return base


def make_pfwillow(root: Path, *, mat: bool = False, size: int = 64) -> Path:
    """``root/PF-WILLOW`` with 2 pairs (10 keypoints each, one -1 in the first pair) and a pair
    whose source image is missing."""
    from scipy.io import savemat

    base = root / "PF-WILLOW"
    rng = np.random.default_rng(0)
    imgs = ["car(G)/a.png", "car(G)/b.png", "duck(S)/c.png", "duck(S)/d.png"]
    kps = {}
    for i, rel in enumerate(imgs):
        write_image(base / rel, textured_image(size, seed=10 + i))
        k = rng.uniform(5, size - 5, (10, 2))
        if i == 0:
            k[3] = -1
        kps[rel] = k
        if mat:
            savemat(str((base / rel).with_suffix(".mat")), {"pts_coord": k.T})
    pairs = [(imgs[0], imgs[1]), (imgs[2], imgs[3]), ("car(G)/missing.png", imgs[1])]
    header = "imageA,imageB" + ("" if mat else "," + ",".join(
        [f"XA{i}" for i in range(10)] + [f"YA{i}" for i in range(10)]
        + [f"XB{i}" for i in range(10)] + [f"YB{i}" for i in range(10)]))
    lines = [header]
    for a, b in pairs:
        row = f"PF-WILLOW/{a},PF-WILLOW/{b}"
        if not mat:
            ka = kps.get(a, np.zeros((10, 2)))
            kb = kps[b]
            vals = [*ka[:, 0], *ka[:, 1], *kb[:, 0], *kb[:, 1]]
            row += "," + ",".join(f"{v:.3f}" for v in vals)
        lines.append(row)
    (base / "test_pairs.csv").write_text("\n".join(lines) + "\n")
    return base


def make_spair(root: Path, size: int = 64) -> Path:
    """``root/SPair-71k`` with 3 test pairs: good, missing target image, one without
    ``trg_bndbox`` (read from ImageAnnotation) and a -1 keypoint."""
    base = root / "SPair-71k"
    for i, n in enumerate(["2008_000010", "2008_000011"]):
        write_image(base / "JPEGImages" / "cat" / f"{n}.jpg", textured_image(size, seed=20 + i))
    save_json(base / "ImageAnnotation" / "cat" / "2008_000011.json",
              {"bndbox": [4, 6, 50, 58], "image_width": size, "image_height": size})
    good = {"src_imname": "2008_000010.jpg", "trg_imname": "2008_000011.jpg", "category": "cat",
            "src_kps": [[10, 10], [20, 30], [40, 44]], "trg_kps": [[12, 11], [22, 33], [41, 40]],
            "src_bndbox": [2, 2, 60, 60], "trg_bndbox": [3, 5, 55, 50]}
    missing = dict(good, trg_imname="2008_000099.jpg")
    nobox = dict(good, src_kps=[[10, 10], [-1, -1]], trg_kps=[[12, 11], [5, 5]])
    del nobox["trg_bndbox"]
    d = base / "PairAnnotation" / "test"
    save_json(d / "000001-2008_000010-2008_000011:cat.json", good)
    save_json(d / "000002-2008_000010-2008_000099:cat.json", missing)
    save_json(d / "000003-2008_000010-2008_000011:cat.json", nobox)
    return base
