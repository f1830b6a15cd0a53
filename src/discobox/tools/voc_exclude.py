"""``discobox voc-exclude-pfpascal``: a VOC training list without the PF-PASCAL test images.

The official ``tools/get_voctraining_excluding_pfpascaltesting.py`` reads ``trn_pairs.csv`` by
default, i.e. it removes the PF-PASCAL *training* images despite its name (METHOD.md §8.3,
§12.9). This tool removes the images of the pairs of the requested splits (``test`` by
default; add ``val`` to keep the validation images out too) from a VOC image list.

The list may hold one image id per line (``2008_000123``) or DeepLab-style lines
(``/JPEGImages/2008_000123.jpg /SegmentationClassAug/2008_000123.png``); the image id is the stem
of the first token. Lines are written back unchanged, in order.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.correspondence import pfpascal_csv, read_csv_rows


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
    from ..checkpoint.io import atomic_write_text

    path = Path(voc_list)
    if not path.exists():
        raise FileNotFoundError(f"VOC list not found: {path}")
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


def cmd_voc_exclude(args: argparse.Namespace) -> int:
    r = exclude_pfpascal(voc_list=args.voc_list, pfpascal_root=args.pfpascal_root, out=args.out,
                         splits=args.splits)
    print(f"kept {r['kept']} of {r['listed']} images ({r['excluded']} excluded; "
          f"{r['pfpascal_images']} PF-PASCAL {'+'.join(r['splits'])} images, "
          f"{r['pfpascal_not_in_list']} of them not in the list) -> {r['out']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``discobox voc-exclude-pfpascal`` to the CLI."""
    p = sub.add_parser("voc-exclude-pfpascal",
                       help="VOC training list without the PF-PASCAL test images")
    p.add_argument("--voc-list", required=True, help="e.g. train_aug.txt")
    p.add_argument("--pfpascal-root", required=True, help="PF-PASCAL folder (or its parent)")
    p.add_argument("--out", required=True)
    p.add_argument("--splits", nargs="+", default=["test"],
                   help="PF-PASCAL pair splits to exclude (test; add val to be safe)")
    p.set_defaults(func=cmd_voc_exclude)
