"""Model zoo: every built-in recipe with its official weights (provenance) and reported AP.

Weights are data: config name, the official weights file, its URL and sha256, and the metric the
weights reach. The numbers are the official README's (docs/method.md §10), COCO mask AP on
val2017 and test-dev from the same weights. Nothing here is guessed: the official repository
publishes no checksums, so every ``sha256`` is ``None`` until somebody records the hash of a
verified download; the VOC weights were never released and the repository reports no VOC numbers
(docs/method.md §10), so those fields are ``None`` too.

The file names are the ones the official README's commands use (``work_dirs/<name>.pth``); the
Google-Drive downloads may carry other names. ``licence`` is the licence the weights are
published under: the official repository (NVlabs/DiscoBox), which publishes them, is under
the NVIDIA Source Code License (non-commercial use); check the official repository's licence
before use. :func:`verify_weights` checks a file against the zoo by its base name: when an entry
records a ``sha256`` for that name, a mismatch raises :class:`WeightsHashError` naming the file
and both hashes. ``discobox.load_model`` calls it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..config import available_recipes
from ..errors import DiscoboxError


@dataclass(frozen=True)
class ReportedAP:
    """COCO-style mask AP (percent) reported for one split."""

    split: str
    ap: float
    ap50: float
    ap75: float
    aps: float
    apm: float
    apl: float


@dataclass(frozen=True)
class ZooEntry:
    """One recipe of ``src/discobox/configs`` and what is known about its official weights.

    Attributes:
        config: recipe name (``discobox recipes``).
        official_config: the official mmdet config it reproduces, or ``None``.
        weights_file: base name of the official weights file, or ``None`` (none released).
        url: where the official weights are published, or ``None``.
        sha256: hex digest of the official weights file, or ``None`` when not recorded.
        reported: reported mask AP per split (empty when none is reported).
        licence: the licence the weights are published under, or ``None`` (no weights).
        note: provenance remarks.
    """

    config: str
    official_config: str | None = None
    weights_file: str | None = None
    url: str | None = None
    sha256: str | None = None
    reported: tuple[ReportedAP, ...] = ()
    licence: str | None = None
    note: str = ""

    def ap(self, split: str) -> float | None:
        """Reported mask AP on ``split`` (``"val2017"`` or ``"test-dev"``), or ``None``."""
        for r in self.reported:
            if r.split == split:
                return r.ap
        return None


_README = "official README (NVlabs/DiscoBox, docs/method.md §10)"
NVIDIA_LICENCE = ("as the official repository github.com/NVlabs/DiscoBox: NVIDIA Source Code "
                  "License, non-commercial; check the official repository's licence before use")

ZOO: dict[str, ZooEntry] = {
    e.config: e
    for e in (
        ZooEntry(
            config="discobox_r50_fpn_3x_coco",
            official_config="configs/discobox/discobox_solov2_r50_fpn_3x.py",
            weights_file="coco_r50_fpn_3x.pth",
            url="https://drive.google.com/file/d/1550Osa2YpcgFFjx_y7dvjVie5jcLmsJW/view",
            reported=(
                ReportedAP("val2017", 30.7, 52.6, 30.6, 13.3, 34.1, 45.6),
                ReportedAP("test-dev", 32.0, 53.6, 32.6, 11.7, 33.7, 48.4),
            ),
            licence=NVIDIA_LICENCE,
            note=f"AP from the {_README}; no checksum published",
        ),
        ZooEntry(
            config="discobox_r101_dcn_fpn_3x_coco",
            official_config="configs/discobox/discobox_solov2_r101_dcn_fpn_3x.py",
            weights_file="coco_r101_dcn_fpn_3x.pth",
            url="https://drive.google.com/file/d/1drOZ2fzPxgadrfuovObqS3aLzUxDQtjH/view",
            reported=(
                ReportedAP("val2017", 35.3, 59.1, 35.4, 16.9, 39.2, 53.0),
                ReportedAP("test-dev", 35.8, 59.8, 36.4, 16.9, 38.7, 52.1),
            ),
            licence=NVIDIA_LICENCE,
            note=f"AP from the {_README}; no checksum published",
        ),
        ZooEntry(
            config="discobox_x101_dcn_fpn_3x_coco",
            official_config="configs/discobox/discobox_solov2_x101_dcn_fpn_3x.py",
            weights_file="coco_x101_dcn_fpn_3x.pth",
            url="https://drive.google.com/file/d/1vyfdMhQkvGBHvp3LKUlUUcFcHNJU15Dv/view",
            reported=(
                ReportedAP("val2017", 37.3, 60.4, 39.1, 17.8, 41.1, 55.4),
                ReportedAP("test-dev", 37.9, 61.4, 40.0, 18.0, 41.1, 53.9),
            ),
            licence=NVIDIA_LICENCE,
            note=f"AP from the {_README} (the abstract's 37.9 is test-dev); no checksum published",
        ),
        ZooEntry(
            config="discobox_r50_fpn_6x_voc",
            official_config="configs/discobox/discobox_solov2_voc_r50_fpn_6x.py",
            weights_file="voc_r50_6x.pth",
            note="weights not released; no VOC numbers reported (docs/method.md §10)",
        ),
        ZooEntry(
            config="discobox_r101_fpn_6x_voc",
            official_config="configs/discobox/discobox_solov2_voc_r101_fpn_6x.py",
            weights_file="voc_r101_6x.pth",
            note="weights not released; no VOC numbers reported (docs/method.md §10)",
        ),
        ZooEntry(
            config="discobox_r18_fpn_cpu",
            note="CPU recipe of this reimplementation; no official counterpart",
        ),
    )
}


class WeightsHashError(DiscoboxError, RuntimeError):
    """A weights file does not have the sha256 the zoo records for its name."""


def list_models() -> list[ZooEntry]:
    """One entry per built-in recipe, in recipe order (recipes missing here get a bare entry)."""
    return [ZOO.get(name, ZooEntry(config=name)) for name in available_recipes()]


def get_entry(config: str) -> ZooEntry:
    """The zoo entry of recipe ``config``; ``KeyError`` naming the known recipes otherwise."""
    if config not in ZOO:
        raise KeyError(f"no zoo entry for {config!r}; known: {', '.join(sorted(ZOO))}")
    return ZOO[config]


def entry_for_file(path: str | Path) -> ZooEntry | None:
    """The entry whose official ``weights_file`` has ``path``'s base name, if any."""
    name = Path(path).name
    for entry in ZOO.values():
        if entry.weights_file == name:
            return entry
    return None


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_weights(path: str | Path) -> str | None:
    """Check ``path`` against the zoo hash recorded for its file name.

    Returns the file's sha256 when the zoo records one for this name (and it matches), else
    ``None`` without reading the file.

    Raises:
        WeightsHashError: the recorded and actual hashes differ; the message names the file and
            both hashes.
    """
    entry = entry_for_file(path)
    if entry is None or entry.sha256 is None:
        return None
    actual = sha256_file(path)
    if actual.lower() != entry.sha256.lower():
        raise WeightsHashError(
            f"{path}: sha256 {actual} does not match the zoo's {entry.sha256} for "
            f"{entry.weights_file} ({entry.config}); the download is corrupt or a different file"
        )
    return actual


def format_table(entries: list[ZooEntry] | None = None) -> str:
    """Plain text: a table (recipe, weights file, val2017 / test-dev mask AP), then per recipe
    with released weights its source URL, sha256 (or "not published") and licence."""
    entries = list_models() if entries is None else entries

    def cell(value: object) -> str:
        return "-" if value is None else str(value)

    rows = [("recipe", "weights file", "AP val2017", "AP test-dev")]
    for e in entries:
        rows.append((e.config, cell(e.weights_file), cell(e.ap("val2017")),
                     cell(e.ap("test-dev"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines += ["", "official weights (source, sha256, licence):"]
    for e in entries:
        if e.url is None:
            lines.append(f"  {e.config}: no official weights ({e.note})")
            continue
        lines += [f"  {e.config}:", f"    url:     {e.url}",
                  f"    sha256:  {e.sha256 or 'not published'}",
                  f"    licence: {e.licence or 'unknown'}"]
    return "\n".join(lines)
