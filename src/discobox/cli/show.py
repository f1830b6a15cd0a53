"""``discobox show``: overlay PNGs of a COCO json over its images, lowest score first, and a
contact sheet (:func:`discobox.tools.show.show`)."""

from __future__ import annotations

import argparse
from typing import Any

from ..tools.show import show


def cmd_show(args: argparse.Namespace) -> int:
    files = show(args.input, args.images, args.out, gt=args.gt, max_images=args.max)
    print(f"wrote {len(files) - 1} overlay(s) and {files[-1]}")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``discobox show J.json --images DIR --out DIR [--gt GT.json] [--max N]``."""
    p = subparsers.add_parser(
        "show", help="overlay PNGs of a COCO json (GT, predictions, pseudo-labels) + contact sheet"
    )
    p.add_argument("input", help="COCO dataset json or COCO results list")
    p.add_argument("--images", required=True, help="directory of the json's images")
    p.add_argument("--out", required=True, help="output directory for the PNGs")
    p.add_argument("--gt", default=None,
                   help="dataset json giving a results list its images and categories")
    p.add_argument("--max", type=int, default=None,
                   help="draw at most N images (the lowest-scored first)")
    p.set_defaults(func=cmd_show)
    return p
