"""A VOC training list without the PF-PASCAL test images (``discobox voc-exclude-pfpascal``).

The official ``tools/get_voctraining_excluding_pfpascaltesting.py`` reads ``trn_pairs.csv`` by
default, i.e. it removes the PF-PASCAL *training* images despite its name (docs/method.md
§8.3, §12.9). This function removes the images of the pairs of the requested splits (``test`` by
default; add ``val`` to keep the validation images out too) from a VOC image list.

The list may hold one image id per line (``2008_000123``) or DeepLab-style lines
(``/JPEGImages/2008_000123.jpg /SegmentationClassAug/2008_000123.png``); the image id is the stem
of the first token. Lines are written back unchanged, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..checkpoint.io import atomic_write_text
from ..data.correspondence import pfpascal_csv, read_csv_rows
from ..errors import MissingFileError


def pfpascal_image_ids(root: str | Path, splits: Sequence[str] = ("test",)) -> set[str]:
    """Stems of both images of every PF-PASCAL pair of ``splits``."""
    ids: set[str] = set()
    for split in splits:
        _, rows = read_csv_rows(pfpascal_csv(root, split))
        for row in rows:
            for cell in row[:2]:
                ids.add(Path(cell.strip().replace("\\", "/")).stem)
    return ids


def _line_id(line: str) -> str | None:
    tok = line.strip().split()
    return Path(tok[0]).stem if tok else None


def exclude_pfpascal(
    *, voc_list: str | Path, pfpascal_root: str | Path, out: str | Path,
    splits: Sequence[str] = ("test",),
) -> dict[str, Any]:
    """Write ``out``: the lines of ``voc_list`` whose image is not in the PF-PASCAL ``splits``.

    Returns counts: ``listed``, ``excluded``, ``kept``, ``pfpascal_images`` and
    ``pfpascal_not_in_list`` (PF-PASCAL images absent from the VOC list).
    """
    path = Path(voc_list)
    if not path.exists():
        raise MissingFileError(f"VOC list not found: {path}")
    ids = pfpascal_image_ids(pfpascal_root, splits)
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    kept, seen = [], set()
    for ln in lines:
        i = _line_id(ln)
        if i in ids:
            seen.add(i)
        else:
            kept.append(ln)
    atomic_write_text("\n".join(kept) + ("\n" if kept else ""), out)
    return {"listed": len(lines), "excluded": len(lines) - len(kept), "kept": len(kept),
            "pfpascal_images": len(ids), "pfpascal_not_in_list": len(ids - seen),
            "splits": list(splits), "out": str(out)}
