"""A synthetic COCO-format instance-segmentation set for tests and the CPU demo.

Every image holds 1..``max_objects`` objects of six shape categories (``SHAPES``): disc, ring,
triangle, cross, crescent and star, none of which is well described by its box. Each object gets a
random size, aspect ratio, rotation and texture (stripes, checker, noise or a flat colour with a
gradient) in jittered colours, over a textured background with clutter (lines, rectangles and
blobs that belong to no category). Objects are painted in order, so later ones occlude earlier
ones; the annotated mask is the *visible* part, the box its extent, and objects that are mostly
hidden are dropped. Masks are stored as compressed RLE.

Output is a pure function of the arguments (numpy ``Generator`` seeded per image from ``seed``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

SHAPES = ("disc", "ring", "triangle", "cross", "crescent", "star")
TEXTURES = ("stripes", "checker", "noise", "gradient")
MIN_VISIBLE_FRACTION = 0.3  # drop objects with less of their area visible
MIN_VISIBLE_PIXELS = 12


@dataclass(frozen=True)
class SyntheticCoco:
    """Paths of a generated set."""

    root: Path
    image_dir: Path
    train_json: Path
    val_json: Path
    class_names: tuple[str, ...]


def _shape_mask(kind: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shape in local coordinates ``u, v`` (unit size, centred at 0): ``bool`` like ``u``."""
    r = np.hypot(u, v)
    if kind == "disc":
        return r <= 1.0
    if kind == "ring":
        inner = rng.uniform(0.45, 0.65)
        return (r <= 1.0) & (r >= inner)
    if kind == "triangle":
        ang = np.deg2rad([90.0, 210.0, 330.0])
        return _polygon(u, v, np.cos(ang), np.sin(ang))
    if kind == "cross":
        t = rng.uniform(0.25, 0.4)
        return ((np.abs(u) <= t) & (np.abs(v) <= 1)) | ((np.abs(v) <= t) & (np.abs(u) <= 1))
    if kind == "crescent":
        shift = rng.uniform(0.45, 0.7)
        return (r <= 1.0) & (np.hypot(u - shift, v) > rng.uniform(0.75, 0.95))
    if kind == "star":
        n = int(rng.integers(5, 7))
        ang = np.pi / 2 + np.arange(2 * n) * np.pi / n
        rad = np.where(np.arange(2 * n) % 2 == 0, 1.0, rng.uniform(0.4, 0.55))
        return _polygon(u, v, rad * np.cos(ang), rad * np.sin(ang))
    raise ValueError(f"unknown shape {kind!r}")


def _polygon(u: np.ndarray, v: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over the grid."""
    inside = np.zeros(u.shape, dtype=bool)
    n = len(px)
    for i in range(n):
        x0, y0, x1, y1 = px[i], py[i], px[(i + 1) % n], py[(i + 1) % n]
        if y0 == y1:
            continue
        crosses = (y0 > v) != (y1 > v)
        x_at = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (u < x_at)
    return inside


def _texture(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """``float32[h, w, 3]`` texture in 0..255 with two jittered colours."""
    c0 = rng.uniform(30, 230, size=3)
    c1 = np.clip(c0 + rng.choice([-1, 1], size=3) * rng.uniform(50, 120, size=3), 0, 255)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "stripes":
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(4, 12)
        t = np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period) > 0
        t = t.astype(np.float32)
    elif kind == "checker":
        cell = rng.uniform(3, 9)
        t = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2).astype(np.float32)
    elif kind == "noise":
        small = rng.random((max(2, h // 3), max(2, w // 3))).astype(np.float32)
        t = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    elif kind == "gradient":
        theta = rng.uniform(0, 2 * np.pi)
        g = xx * np.cos(theta) + yy * np.sin(theta)
        t = (g - g.min()) / max(float(np.ptp(g)), 1.0) * 0.6
    else:
        raise ValueError(f"unknown texture {kind!r}")
    return c0 * (1 - t[..., None]) + c1 * t[..., None]


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Muted textured background with clutter that is not an object."""
    base = rng.uniform(60, 190, size=3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    grad = (xx * np.cos(theta) + yy * np.sin(theta)) / max(h, w)
    img = base + grad[..., None] * rng.uniform(-40, 40, size=3)
    noise = cv2.resize(rng.random((max(2, h // 8), max(2, w // 8))).astype(np.float32), (w, h))
    img = img + (noise[..., None] - 0.5) * rng.uniform(10, 40)
    img = np.ascontiguousarray(img, dtype=np.float32)
    for _ in range(int(rng.integers(3, 9))):
        colour = tuple(float(c) for c in np.clip(base + rng.uniform(-50, 50, size=3), 0, 255))
        kind = rng.integers(3)
        p = rng.integers(0, [w, h, w, h])
        if kind == 0:
            cv2.line(
                img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), colour, int(rng.integers(1, 3))
            )
        elif kind == 1:
            cv2.rectangle(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), colour, -1)
        else:
            axes = (int(rng.integers(2, max(3, w // 16))), int(rng.integers(2, max(3, h // 16))))
            cv2.ellipse(
                img, (int(p[0]), int(p[1])), axes, float(rng.uniform(0, 180)), 0, 360, colour, -1
            )
    img += rng.normal(0, rng.uniform(2, 6), size=img.shape).astype(np.float32)
    return img


def render_image(
    *, height: int, width: int, rng: np.random.Generator, max_objects: int
) -> tuple[np.ndarray, list[tuple[int, np.ndarray, int]]]:
    """One image and its instances.

    Returns:
        ``uint8[height, width, 3]`` RGB and ``[(label, bool[height, width] visible mask, full
        area in pixels), ...]`` in painting order.
    """
    img = _background(height, width, rng)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    side = min(height, width)
    masks: list[tuple[int, np.ndarray, int]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        label = int(rng.integers(len(SHAPES)))
        radius = side * rng.uniform(0.08, 0.3)
        aspect = np.exp(rng.uniform(-0.45, 0.45))
        rx, ry = radius * aspect, radius / aspect
        cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
        phi = rng.uniform(0, 2 * np.pi)
        # the shape lies within max(rx, ry) of its centre: work in that window only
        r = int(np.ceil(max(rx, ry))) + 1
        x0, x1 = max(0, int(cx) - r), min(width, int(cx) + r + 1)
        y0, y1 = max(0, int(cy) - r), min(height, int(cy) + r + 1)
        dx, dy = xx[y0:y1, x0:x1] - cx, yy[y0:y1, x0:x1] - cy
        u = (dx * np.cos(phi) + dy * np.sin(phi)) / rx
        v = (-dx * np.sin(phi) + dy * np.cos(phi)) / ry
        local = _shape_mask(SHAPES[label], u, v, rng)
        if local.sum() < MIN_VISIBLE_PIXELS:
            continue
        tex = _texture(TEXTURES[int(rng.integers(len(TEXTURES)))], y1 - y0, x1 - x0, rng)
        img[y0:y1, x0:x1][local] = tex[local]
        shape = np.zeros((height, width), dtype=bool)
        shape[y0:y1, x0:x1] = local
        masks = [(lab, m & ~shape, full) for lab, m, full in masks]
        masks.append((label, shape, int(shape.sum())))
    # colour jitter of the whole image (brightness, contrast, per-channel gain)
    gain = rng.uniform(0.85, 1.15, size=3) * rng.uniform(0.8, 1.2)
    img = (img - img.mean()) * rng.uniform(0.8, 1.2) + img.mean()
    img = np.clip(img * gain, 0, 255).astype(np.uint8)
    return img, masks


def _annotations(
    masks: list[tuple[int, np.ndarray, int]], image_id: int, next_id: int
) -> list[dict]:
    anns = []
    for label, m, full in masks:
        area = int(m.sum())
        if area < MIN_VISIBLE_PIXELS or area < MIN_VISIBLE_FRACTION * full:
            continue
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
        anns.append(
            {
                "id": next_id + len(anns),
                "image_id": image_id,
                "category_id": label + 1,
                "segmentation": {
                    "size": [int(s) for s in rle["size"]],
                    "counts": rle["counts"].decode("ascii"),
                },
                "area": area,
                "bbox": [x, y, w, h],
                "iscrowd": 0,
            }
        )
    return anns


def make_synthetic_coco(
    out_dir: str | Path,
    *,
    num_train: int = 64,
    num_val: int = 16,
    image_size: tuple[int, int] = (128, 128),
    seed: int = 0,
    max_objects: int = 4,
) -> SyntheticCoco:
    """Write ``images/*.png``, ``train.json`` and ``val.json`` under ``out_dir``.

    Args:
        out_dir: output folder (created).
        num_train, num_val: images per split.
        image_size: ``(height, width)`` of every image.
        seed: the whole set is a function of it.
        max_objects: objects painted per image are drawn from ``1..max_objects``.

    Returns:
        :class:`SyntheticCoco` with the paths and class names (category ids are 1..6).
    """
    height, width = image_size
    if min(height, width) < 16 or max_objects < 1 or min(num_train, num_val) < 0:
        raise ValueError("make_synthetic_coco: need image sides >= 16, max_objects >= 1")
    root = Path(out_dir)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPES)]
    paths = {}
    next_image_id, next_ann_id = 1, 1
    for split_no, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        images, annotations = [], []
        for i in range(count):
            rng = np.random.default_rng([seed, split_no, i])
            img, masks = render_image(height=height, width=width, rng=rng, max_objects=max_objects)
            file_name = f"{split}_{i:05d}.png"
            cv2.imwrite(str(image_dir / file_name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            images.append(
                {"id": next_image_id, "file_name": file_name, "width": width, "height": height}
            )
            anns = _annotations(masks, next_image_id, next_ann_id)
            annotations.extend(anns)
            next_image_id += 1
            next_ann_id += len(anns)
        path = root / f"{split}.json"
        doc = {
            "info": {"description": f"discobox synthetic shapes, seed {seed}"},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        path.write_text(json.dumps(doc))
        paths[split] = path
    return SyntheticCoco(
        root=root,
        image_dir=image_dir,
        train_json=paths["train"],
        val_json=paths["val"],
        class_names=SHAPES,
    )
