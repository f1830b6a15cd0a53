"""Fixtures for the interoperability tests: official-layout checkpoints and a tiny VOC + SBD tree.

The official state dicts are written from docs/method.md §9 directly (key names and shapes), not
from our model, so the converter is tested against the specification.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


def official_state_dict(
    *,
    depth: int = 50,
    dcn: bool = False,
    num_classes: int = 80,
    groups: int = 1,
    base_width: int = 64,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """An mmdet DiscoBox ``state_dict`` with the key names and shapes of docs/method.md §9.

    Random values (meta tensors when ``device="meta"``); DCN adds ``conv_offset`` to conv2 of
    layer2-4, to every mask-feature conv (1x1 for ``conv_pred.0``) and to every tower conv.
    """
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def rand(*shape: int, scale: float = 0.02) -> torch.Tensor:
        if device == "meta":
            return torch.empty(shape, device="meta")
        return torch.randn(shape, generator=gen) * scale

    def bn(prefix: str, c: int) -> None:
        sd[f"{prefix}.weight"] = rand(c, scale=0.1) + 1
        sd[f"{prefix}.bias"] = rand(c, scale=0.1)
        sd[f"{prefix}.running_mean"] = rand(c, scale=0.1)
        sd[f"{prefix}.running_var"] = rand(c, scale=0.1).abs() + 0.5
        sd[f"{prefix}.num_batches_tracked"] = torch.tensor(1000, device=device)

    def conv_module(prefix: str, c_out: int, c_in: int, k: int, with_dcn: bool) -> None:
        sd[f"{prefix}.conv.weight"] = rand(c_out, c_in, k, k)
        if with_dcn:
            sd[f"{prefix}.conv.conv_offset.weight"] = rand(3 * k * k, c_in, k, k, scale=0.001)
            sd[f"{prefix}.conv.conv_offset.bias"] = rand(3 * k * k, scale=0.001)
        sd[f"{prefix}.gn.weight"] = rand(c_out, scale=0.1) + 1
        sd[f"{prefix}.gn.bias"] = rand(c_out, scale=0.1)

    # 9.1 backbone
    sd["backbone.conv1.weight"] = rand(64, 3, 7, 7)
    bn("backbone.bn1", 64)
    blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    inplanes = 64
    for layer, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
        width = int(planes * base_width / 64) * groups
        for b in range(n):
            p = f"backbone.layer{layer}.{b}"
            c_in = inplanes if b == 0 else planes * 4
            sd[f"{p}.conv1.weight"] = rand(width, c_in, 1, 1)
            bn(f"{p}.bn1", width)
            sd[f"{p}.conv2.weight"] = rand(width, width // groups, 3, 3)
            if dcn and layer >= 2:
                sd[f"{p}.conv2.conv_offset.weight"] = rand(27, width, 3, 3, scale=0.001)
                sd[f"{p}.conv2.conv_offset.bias"] = rand(27, scale=0.001)
            bn(f"{p}.bn2", width)
            sd[f"{p}.conv3.weight"] = rand(planes * 4, width, 1, 1)
            bn(f"{p}.bn3", planes * 4)
            if b == 0:
                sd[f"{p}.downsample.0.weight"] = rand(planes * 4, c_in, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
        inplanes = planes * 4
    # 9.2 neck
    for i, c in enumerate((256, 512, 1024, 2048)):
        sd[f"neck.lateral_convs.{i}.conv.weight"] = rand(256, c, 1, 1)
        sd[f"neck.lateral_convs.{i}.conv.bias"] = rand(256)
        sd[f"neck.fpn_convs.{i}.conv.weight"] = rand(256, 256, 3, 3)
        sd[f"neck.fpn_convs.{i}.conv.bias"] = rand(256)
    # 9.3 mask_feat_head
    m = "mask_feat_head"
    conv_module(f"{m}.convs_all_levels.0.conv0", 128, 256, 3, dcn)
    conv_module(f"{m}.convs_all_levels.1.conv0", 128, 256, 3, dcn)
    conv_module(f"{m}.convs_all_levels.2.conv0", 128, 256, 3, dcn)
    conv_module(f"{m}.convs_all_levels.2.conv1", 128, 128, 3, dcn)
    conv_module(f"{m}.convs_all_levels.3.conv0", 128, 258, 3, dcn)
    conv_module(f"{m}.convs_all_levels.3.conv1", 128, 128, 3, dcn)
    conv_module(f"{m}.convs_all_levels.3.conv2", 128, 128, 3, dcn)
    conv_module(f"{m}.conv_pred.0", 256, 128, 1, dcn)
    # 9.4 bbox_head
    for i in range(4):
        conv_module(f"bbox_head.kernel_convs.{i}", 512, 258 if i == 0 else 512, 3, dcn)
        conv_module(f"bbox_head.cate_convs.{i}", 512, 256 if i == 0 else 512, 3, dcn)
    sd["bbox_head.solo_cate.weight"] = rand(num_classes, 512, 3, 3)
    sd["bbox_head.solo_cate.bias"] = rand(num_classes)
    sd["bbox_head.solo_kernel.weight"] = rand(256, 512, 3, 3)
    sd["bbox_head.solo_kernel.bias"] = rand(256)
    return sd


def official_checkpoint(state: dict[str, torch.Tensor], classes: int = 80) -> dict:
    """mmcv ``save_checkpoint`` container around ``state``."""
    names = list(VOC_CLASSES) if classes == 20 else [f"c{i}" for i in range(classes)]
    return {"meta": {"mmdet_version": "2.10.0", "epoch": 36, "iter": 1000, "CLASSES": names},
            "state_dict": state}


@pytest.fixture(scope="session")
def make_official() -> Callable[..., dict[str, torch.Tensor]]:
    return official_state_dict


@pytest.fixture(scope="session")
def official_r50(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """``coco_r50``-like official checkpoint file and its state dict."""
    state = official_state_dict(depth=50, seed=1)
    path = tmp_path_factory.mktemp("official") / "r50_official.pth"
    torch.save(official_checkpoint(state), path)
    return path, state


@pytest.fixture(scope="session")
def official_r101_dcn(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """``coco_r101_dcn``-like official checkpoint file and its state dict."""
    state = official_state_dict(depth=101, dcn=True, seed=2)
    path = tmp_path_factory.mktemp("official") / "r101_dcn_official.pth"
    torch.save(official_checkpoint(state), path)
    return path, state


# ----------------------------------------------------------------------------- tiny VOC + SBD


def voc_palette() -> list[int]:
    """The standard VOC colour map (256 RGB triples, flattened)."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def write_png(path: Path, arr: np.ndarray) -> None:
    im = Image.fromarray(arr.astype(np.uint8), mode="P")
    im.putpalette(voc_palette())
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def write_xml(path: Path, size: tuple[int, int], objects: list[tuple[str, tuple, int]]) -> None:
    """``objects``: ``(class, (xmin, ymin, xmax, ymax) 1-based inclusive, difficult)``."""
    h, w = size
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth>"
                    f"</size>{objs}</annotation>")


def _instance(obj: np.ndarray, cls: np.ndarray, k: int, c: int, r0: int, r1: int, c0: int,
              c1: int) -> None:
    """Rectangle rows r0..r1, cols c0..c1 (0-based inclusive) with a 1-pixel void border."""
    obj[r0:r1 + 1, c0:c1 + 1] = 255
    cls[r0:r1 + 1, c0:c1 + 1] = 255
    obj[r0 + 1:r1, c0 + 1:c1] = k
    cls[r0 + 1:r1, c0 + 1:c1] = c


@pytest.fixture(scope="session")
def tiny_voc(tmp_path_factory) -> dict[str, Path]:
    """VOCdevkit/VOC2012 with 1 seg-train and 2 seg-val images, and an SBD tree.

    - ``2007_000001`` (VOC train, also in SBD train): person (obj 1) and dog (obj 2, difficult);
    - ``2007_000002`` (VOC val, also in SBD val: must stay out of train_aug): cat;
    - ``2007_000003`` (VOC val): two cars;
    - ``2008_000010`` (SBD train only): aeroplane, person, bird; its XML lists person first,
      then aeroplane, and has no bird (the bird gets its mask box).
    """
    root = tmp_path_factory.mktemp("voc")
    voc = root / "VOCdevkit" / "VOC2012"
    sbd = root / "benchmark_RELEASE" / "dataset"
    rng = np.random.default_rng(0)

    def image(name: str, h: int, w: int) -> None:
        (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            voc / "JPEGImages" / f"{name}.jpg")

    def voc_image(name: str, h: int, w: int, objects: list) -> None:
        obj = np.zeros((h, w), np.uint8)
        cls = np.zeros((h, w), np.uint8)
        xml = []
        for k, (cname, (r0, r1, c0, c1), difficult) in enumerate(objects, start=1):
            _instance(obj, cls, k, VOC_CLASSES.index(cname) + 1, r0, r1, c0, c1)
            xml.append((cname, (c0 + 1, r0 + 1, c1 + 1, r1 + 1), difficult))
        write_png(voc / "SegmentationObject" / f"{name}.png", obj)
        write_png(voc / "SegmentationClass" / f"{name}.png", cls)
        write_xml(voc / "Annotations" / f"{name}.xml", (h, w), xml)
        image(name, h, w)

    voc_image("2007_000001", 40, 48, [("person", (4, 20, 3, 19), 0), ("dog", (22, 36, 24, 44), 1)])
    voc_image("2007_000002", 32, 40, [("cat", (2, 28, 5, 30), 0)])
    voc_image("2007_000003", 36, 44, [("car", (3, 15, 2, 20), 0), ("car", (18, 33, 22, 41), 0)])
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "train.txt").write_text("2007_000001\n")
    (sets / "val.txt").write_text("2007_000002\n2007_000003\n")

    # SBD-only image: instance map + categories; XML in VOC2012/Annotations in another order.
    from scipy.io import savemat

    h, w = 30, 50
    seg = np.zeros((h, w), np.uint8)
    seg[2:12, 3:20] = 1  # aeroplane
    seg[14:28, 30:45] = 2  # person
    seg[20:26, 5:12] = 3  # bird
    cats = np.array([[1], [15], [3]], dtype=np.uint8)
    boundaries = np.empty((3, 1), dtype=object)
    for k in range(3):
        boundaries[k, 0] = np.zeros((h, w), np.uint8)
    (sbd / "inst").mkdir(parents=True, exist_ok=True)
    savemat(sbd / "inst" / "2008_000010.mat",
            {"GTinst": {"Segmentation": seg, "Categories": cats,
                        "Boundaries": boundaries}})
    write_xml(voc / "Annotations" / "2008_000010.xml", (h, w),
              [("person", (30, 14, 46, 29), 0), ("aeroplane", (3, 2, 21, 13), 0)])
    image("2008_000010", h, w)
    # SBD also has masks for VOC images; the VOC ones must win, val ones must be dropped.
    for name in ("2007_000001", "2007_000002"):
        savemat(sbd / "inst" / f"{name}.mat",
                {"GTinst": {"Segmentation": np.zeros((4, 4), np.uint8),
                            "Categories": np.zeros((0, 1), np.uint8)}})
    (sbd / "train.txt").write_text("2007_000001\n2008_000010\n")
    (sbd / "val.txt").write_text("2007_000002\n")
    return {"root": root, "voc": voc, "sbd": sbd.parent}
