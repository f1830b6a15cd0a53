"""Keypoint-pair datasets for semantic-correspondence evaluation (docs/method.md §8.4-8.5).

Public layouts read (``root`` may be the dataset folder or its parent):

- **PF-PASCAL** (SCOT/HPF layout): ``PF-PASCAL/{split}_pairs.csv`` with columns
  ``source_image, target_image, class[, flip]``, images in ``JPEGImages/``, keypoints ``kps``
  (``K x 2``, NaN where absent) and ``bbox`` in ``Annotations/<class>/<stem>.mat``. The
  WeakAlign/NCNet CSV (``{split}_pairs_pf_pascal.csv`` or any CSV with ``XA, YA, XB, YB``
  columns of ``;``-separated coordinates) is read too; then the ``.mat`` files are optional.
  ``class`` is a 1-based index into the 20 VOC classes or a class name.
- **PF-WILLOW**: ``PF-WILLOW/test_pairs.csv`` with ``imageA, imageB`` followed by 10 x, 10 y
  coordinates of A, then 10 x, 10 y of B (the SCOT/NCNet file); or a CSV with only the two
  image columns plus one ``.mat`` per image next to it holding ``kps`` or ``pts_coord``
  (``2 x K`` or ``K x 2``). The class is the image's folder (``car(G)``, ...).
- **SPair-71k**: ``SPair-71k/PairAnnotation/{split}/*.json`` (``src_imname``, ``trg_imname``,
  ``category``, ``src_kps``, ``trg_kps``, ``src_bndbox``, ``trg_bndbox``), images in
  ``JPEGImages/<category>/``; a missing box is read from
  ``ImageAnnotation/<category>/<stem>.json`` (``bndbox``).

Every loader drops a pair whose image is missing and a keypoint whose source or target value is
padding (``-1``, NaN) or outside the image, and counts what it dropped in :class:`SkipCounts`.
Coordinates stay in the original image frame.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DiscoboxError

logger = logging.getLogger("discobox")

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
DATASETS = ("pf-pascal", "pf-willow", "spair")
# PCK normalisation per benchmark (§8.4-8.5): target image size or target box size.
THRESH_TYPE = {"pf-pascal": "img", "pf-willow": "bbox", "spair": "bbox"}
_DIRS = {"pf-pascal": "PF-PASCAL", "pf-willow": "PF-WILLOW", "spair": "SPair-71k"}


class CorrDatasetError(DiscoboxError, FileNotFoundError):
    """The dataset root does not hold the expected layout; the message names what is missing."""


@dataclass
class CorrPair:
    """One annotated image pair. Keypoints are ``float64[K, 2]`` (x, y), row k of both matching.

    ``src_box``/``trg_box`` are xyxy (``None`` where the layout has none); sizes are ``(h, w)``.
    """

    src_image: Path
    trg_image: Path
    src_kps: np.ndarray
    trg_kps: np.ndarray
    category: str
    src_size: tuple[int, int]
    trg_size: tuple[int, int]
    src_box: np.ndarray | None = None
    trg_box: np.ndarray | None = None


@dataclass
class SkipCounts:
    """What a loader dropped: pairs (missing image, no valid keypoint, unreadable annotation)
    and keypoints (padding ``-1``/NaN, outside the image)."""

    pairs_listed: int = 0
    pairs_missing_image: int = 0
    pairs_no_keypoints: int = 0
    pairs_bad_annotation: int = 0
    keypoints_listed: int = 0
    keypoints_padding: int = 0
    keypoints_outside: int = 0
    missing_images: list[str] = field(default_factory=list)

    @property
    def pairs_skipped(self) -> int:
        return self.pairs_missing_image + self.pairs_no_keypoints + self.pairs_bad_annotation

    def to_dict(self) -> dict:
        d = asdict(self)
        d["missing_images"] = d["missing_images"][:20]
        d["pairs_skipped"] = self.pairs_skipped
        return d


@dataclass
class CorrDataset:
    """Loaded pairs of one benchmark, with the PCK normalisation it uses (``"img"``/``"bbox"``)."""

    name: str
    pairs: list[CorrPair]
    skips: SkipCounts
    thresh_type: str

    def __len__(self) -> int:
        return len(self.pairs)


def _image_size(path: Path) -> tuple[int, int] | None:
    """``(h, w)`` from the file header, or ``None`` if missing/unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, ValueError):
        return None
    return int(h), int(w)


def _find(candidates: Sequence[Path]) -> Path | None:
    return next((p for p in candidates if p.exists()), None)


def _dataset_dir(root: Path, name: str) -> Path:
    sub = root / _DIRS[name]
    return sub if sub.is_dir() else root


def _resolve_image(base: Path, rel: str, extra: Sequence[Path] = ()) -> Path:
    """First existing candidate for a path written in a CSV; the first candidate otherwise."""
    rel_p = Path(rel.strip().replace("\\", "/"))
    parts = rel_p.parts
    cands = [base / rel_p, base.parent / rel_p, *(d / rel_p.name for d in extra)]
    if len(parts) > 1:
        cands.append(base / Path(*parts[1:]))
    return _find(cands) or cands[0]


def _bad(v: np.ndarray) -> np.ndarray:
    return ~np.isfinite(v).all(1) | (v == -1).any(1)


def _outside(v: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    return (v[:, 0] < 0) | (v[:, 1] < 0) | (v[:, 0] > w) | (v[:, 1] > h)


def _make_pair(
    counts: SkipCounts, *, src: Path, trg: Path, src_kps, trg_kps, category: str,
    src_box=None, trg_box=None,
) -> CorrPair | None:
    """Validate images and keypoints; count and drop what is unusable."""
    counts.pairs_listed += 1
    sizes = []
    for p in (src, trg):
        size = _image_size(p)
        if size is None:
            counts.pairs_missing_image += 1
            counts.missing_images.append(str(p))
            return None
        sizes.append(size)
    a = np.asarray(src_kps, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(trg_kps, dtype=np.float64).reshape(-1, 2)
    k = min(len(a), len(b))
    counts.keypoints_listed += max(len(a), len(b))
    counts.keypoints_padding += max(len(a), len(b)) - k
    a, b = a[:k], b[:k]
    pad = _bad(a) | _bad(b)
    out = ~pad & (_outside(a, sizes[0]) | _outside(b, sizes[1]))
    counts.keypoints_padding += int(pad.sum())
    counts.keypoints_outside += int(out.sum())
    keep = ~(pad | out)
    if not keep.any():
        counts.pairs_no_keypoints += 1
        return None
    box = [None if x is None else np.asarray(x, dtype=np.float64).reshape(4)
           for x in (src_box, trg_box)]
    return CorrPair(src_image=src, trg_image=trg, src_kps=a[keep], trg_kps=b[keep],
                    category=category, src_size=sizes[0], trg_size=sizes[1],
                    src_box=box[0], trg_box=box[1])


def read_csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    if not rows:
        raise CorrDatasetError(f"{path}: empty CSV")
    return [c.strip() for c in rows[0]], rows[1:]


def _coords(text: str) -> list[float]:
    return [float(v) for v in str(text).replace(",", ";").split(";") if v.strip()]


def _mat(path: Path) -> dict:
    from scipy.io import loadmat

    return loadmat(str(path))


def _pascal_class(value: str) -> str:
    v = value.strip()
    if v.lstrip("-").isdigit():
        i = int(v) - 1
        if not 0 <= i < len(VOC_CLASSES):
            raise ValueError(f"class index {v} outside 1..20")
        return VOC_CLASSES[i]
    return v


def pfpascal_csv(root: str | Path, split: str = "test") -> Path:
    """The PF-PASCAL pairs CSV of ``split`` under ``root`` (SCOT or WeakAlign naming)."""
    base = _dataset_dir(Path(root), "pf-pascal")
    found = _find([base / f"{split}_pairs.csv", base / f"{split}_pairs_pf_pascal.csv"])
    if found is None:
        raise CorrDatasetError(f"PF-PASCAL: no {split}_pairs.csv or {split}_pairs_pf_pascal.csv "
                               f"in {base}")
    return found


def load_pf_pascal(root: str | Path, split: str = "test") -> CorrDataset:
    """PF-PASCAL pairs of ``split`` (``test`` for the reported PCK, §8.4)."""
    base = _dataset_dir(Path(root), "pf-pascal")
    path = pfpascal_csv(root, split)
    header, rows = read_csv_rows(path)
    cols = {c.lower(): i for i, c in enumerate(header)}
    inline = all(c in cols for c in ("xa", "ya", "xb", "yb"))
    counts, pairs = SkipCounts(), []
    for row in rows:
        try:
            category = _pascal_class(row[2])
            src = _resolve_image(base, row[0], [base / "JPEGImages"])
            trg = _resolve_image(base, row[1], [base / "JPEGImages"])
            src_box = trg_box = None
            if inline:
                src_kps = np.stack([_coords(row[cols["xa"]]), _coords(row[cols["ya"]])], 1)
                trg_kps = np.stack([_coords(row[cols["xb"]]), _coords(row[cols["yb"]])], 1)
            elif not (src.exists() and trg.exists()):  # counted as a missing image below
                src_kps = trg_kps = np.zeros((0, 2))
            else:
                ann = base / "Annotations" / category
                ma, mb = _mat(ann / f"{src.stem}.mat"), _mat(ann / f"{trg.stem}.mat")
                src_kps, trg_kps = ma["kps"], mb["kps"]
                src_box = ma["bbox"].reshape(-1)[:4] if "bbox" in ma else None
                trg_box = mb["bbox"].reshape(-1)[:4] if "bbox" in mb else None
        except (OSError, ValueError, KeyError, IndexError) as exc:
            counts.pairs_listed += 1
            counts.pairs_bad_annotation += 1
            logger.warning("PF-PASCAL %s: skipping pair %s: %s", path.name, row[:2], exc)
            continue
        pair = _make_pair(counts, src=src, trg=trg, src_kps=src_kps, trg_kps=trg_kps,
                          category=category, src_box=src_box, trg_box=trg_box)
        if pair is not None:
            pairs.append(pair)
    return _finish("pf-pascal", pairs, counts)


def _willow_kps(image: Path) -> np.ndarray:
    m = _mat(image.with_suffix(".mat"))
    for key in ("kps", "pts_coord", "keypoints"):
        if key in m:
            v = np.asarray(m[key], dtype=np.float64)
            return v.T if v.shape[0] == 2 and v.shape[1] != 2 else v
    raise KeyError(f"{image.with_suffix('.mat')}: no 'kps' or 'pts_coord'")


def load_pf_willow(root: str | Path, split: str = "test") -> CorrDataset:
    """PF-WILLOW pairs; PCK uses the target keypoints' extent as the box (§8.5)."""
    base = _dataset_dir(Path(root), "pf-willow")
    path = _find([base / f"{split}_pairs.csv", base / "test_pairs_pf_willow.csv"])
    if path is None:
        raise CorrDatasetError(f"PF-WILLOW: no {split}_pairs.csv in {base}")
    _, rows = read_csv_rows(path)
    counts, pairs = SkipCounts(), []
    for row in rows:
        try:
            src, trg = _resolve_image(base, row[0]), _resolve_image(base, row[1])
            vals = [float(v) for v in row[2:] if v.strip()]
            if vals:
                if len(vals) % 4:
                    raise ValueError(f"{len(vals)} coordinates, expected 4*K")
                k = len(vals) // 4
                v = np.asarray(vals).reshape(4, k)
                src_kps, trg_kps = v[:2].T, v[2:].T
            elif src.exists() and trg.exists():
                src_kps, trg_kps = _willow_kps(src), _willow_kps(trg)
            else:  # counted as a missing image below
                src_kps = trg_kps = np.zeros((0, 2))
        except (OSError, ValueError, KeyError) as exc:
            counts.pairs_listed += 1
            counts.pairs_bad_annotation += 1
            logger.warning("PF-WILLOW %s: skipping pair %s: %s", path.name, row[:2], exc)
            continue
        pair = _make_pair(counts, src=src, trg=trg, src_kps=src_kps, trg_kps=trg_kps,
                          category=Path(row[0].strip()).parent.name)
        if pair is not None:
            t = pair.trg_kps
            pair.trg_box = np.concatenate([t.min(0), t.max(0)])
            s = pair.src_kps
            pair.src_box = np.concatenate([s.min(0), s.max(0)])
            pairs.append(pair)
    return _finish("pf-willow", pairs, counts)


def load_spair(root: str | Path, split: str = "test") -> CorrDataset:
    """SPair-71k pairs of ``split`` (``trn``/``val``/``test``); PCK uses the target box."""
    base = _dataset_dir(Path(root), "spair")
    ann_dir = base / "PairAnnotation" / split
    files = sorted(ann_dir.glob("*.json"))
    if not files:
        raise CorrDatasetError(f"SPair-71k: no PairAnnotation/{split}/*.json under {base}")
    counts, pairs = SkipCounts(), []
    for f in files:
        try:
            a = json.loads(f.read_text())
            cat = a["category"]
            src = base / "JPEGImages" / cat / a["src_imname"]
            trg = base / "JPEGImages" / cat / a["trg_imname"]
            boxes = []
            for side, img in (("src", src), ("trg", trg)):
                box = a.get(f"{side}_bndbox")
                if box is None:
                    img_ann = base / "ImageAnnotation" / cat / f"{img.stem}.json"
                    box = json.loads(img_ann.read_text())["bndbox"]
                boxes.append(box)
            src_kps, trg_kps = a["src_kps"], a["trg_kps"]
        except (OSError, ValueError, KeyError) as exc:
            counts.pairs_listed += 1
            counts.pairs_bad_annotation += 1
            logger.warning("SPair-71k: skipping %s: %s", f.name, exc)
            continue
        pair = _make_pair(counts, src=src, trg=trg, src_kps=src_kps, trg_kps=trg_kps,
                          category=cat, src_box=boxes[0], trg_box=boxes[1])
        if pair is not None:
            pairs.append(pair)
    return _finish("spair", pairs, counts)


def _finish(name: str, pairs: list[CorrPair], counts: SkipCounts) -> CorrDataset:
    if counts.pairs_skipped or counts.keypoints_padding or counts.keypoints_outside:
        logger.info("%s: %d pairs kept of %d (%d missing image, %d without keypoints, %d bad "
                    "annotation); %d keypoints dropped as padding, %d outside the image", name,
                    len(pairs), counts.pairs_listed, counts.pairs_missing_image,
                    counts.pairs_no_keypoints, counts.pairs_bad_annotation,
                    counts.keypoints_padding, counts.keypoints_outside)
    return CorrDataset(name=name, pairs=pairs, skips=counts, thresh_type=THRESH_TYPE[name])


def load_corr_dataset(name: str, root: str | Path, split: str = "test") -> CorrDataset:
    """Dispatch on ``name`` in :data:`DATASETS`."""
    loaders = {"pf-pascal": load_pf_pascal, "pf-willow": load_pf_willow, "spair": load_spair}
    if name not in loaders:
        raise ValueError(f"unknown correspondence dataset {name!r}; expected one of {DATASETS}")
    if not Path(root).exists():
        raise CorrDatasetError(f"dataset root not found: {root}")
    return loaders[name](root, split)
