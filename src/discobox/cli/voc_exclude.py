"""``discobox voc-exclude-pfpascal``: a VOC training list without the PF-PASCAL test images
(:func:`discobox.tools.voc_exclude.exclude_pfpascal`)."""

from __future__ import annotations

import argparse
from typing import Any

from ..tools.voc_exclude import exclude_pfpascal


def cmd_voc_exclude(args: argparse.Namespace) -> int:
    r = exclude_pfpascal(voc_list=args.voc_list, pfpascal_root=args.pfpascal_root, out=args.out,
                         splits=args.splits)
    print(f"kept {r['kept']} of {r['listed']} images ({r['excluded']} excluded; "
          f"{r['pfpascal_images']} PF-PASCAL {'+'.join(r['splits'])} images, "
          f"{r['pfpascal_not_in_list']} of them not in the list) -> {r['out']}")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``discobox voc-exclude-pfpascal --voc-list L --pfpascal-root R --out O``."""
    p = subparsers.add_parser("voc-exclude-pfpascal",
                              help="VOC training list without the PF-PASCAL test images")
    p.add_argument("--voc-list", required=True, help="e.g. train_aug.txt")
    p.add_argument("--pfpascal-root", required=True, help="PF-PASCAL folder (or its parent)")
    p.add_argument("--out", required=True)
    p.add_argument("--splits", nargs="+", default=["test"],
                   help="PF-PASCAL pair splits to exclude (test; add val to be safe)")
    p.set_defaults(func=cmd_voc_exclude)
    return p
