"""``discobox export``: a COCO json's masks as COCO RLE, COCO polygons, YOLO-seg or LabelMe
(:func:`discobox.tools.export_formats.export`)."""

from __future__ import annotations

import argparse
from typing import Any

from ..tools.export_formats import FORMATS, export


def cmd_export(args: argparse.Namespace) -> int:
    files = export(args.input, args.format, args.out, images_dir=args.images, gt=args.gt)
    print(f"wrote {len(files)} file(s) ({args.format}) under {args.out}")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``discobox export IN.json --format F --out DIR [--images DIR] [--gt GT.json]``."""
    p = subparsers.add_parser(
        "export", help="COCO json (dataset or results) -> COCO RLE / polygons, YOLO-seg, LabelMe"
    )
    p.add_argument("input", help="COCO dataset json or COCO results list (predictions, "
                                 "pseudo-labels)")
    p.add_argument("--format", required=True, choices=FORMATS, help="output format")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--images", default=None,
                   help="image directory (paths in data.yaml / LabelMe imagePath; sizes)")
    p.add_argument("--gt", default=None,
                   help="dataset json giving a results list its images and categories")
    p.set_defaults(func=cmd_export)
    return p
