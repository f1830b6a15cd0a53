"""``discobox convert-voc``: PASCAL VOC 2012 (+ SBD) -> COCO-style jsons
(:func:`discobox.data.voc.convert_voc`)."""

from __future__ import annotations

import argparse
from typing import Any

from ..data.voc import BOX_SOURCES, convert_voc
from ..engine.log import setup_logger


def cmd_convert_voc(args: argparse.Namespace) -> int:
    setup_logger()
    out = convert_voc(voc_root=args.voc_root, out_dir=args.out, sbd_root=args.sbd_root,
                      box_source=args.box_source)
    for split, path in out.items():
        print(f"{split}: {path}")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``discobox convert-voc --voc-root DIR [--sbd-root DIR] --out DIR``."""
    p = subparsers.add_parser(
        "convert-voc", help="build COCO-style VOC 2012 (train_aug with SBD, val) jsons"
    )
    p.add_argument("--voc-root", required=True, help="VOCdevkit or VOCdevkit/VOC2012")
    p.add_argument("--sbd-root", default=None,
                   help="SBD benchmark_RELEASE (or its dataset/); without it train = VOC train")
    p.add_argument("--out", required=True, help="output folder for the jsons")
    p.add_argument("--box-source", choices=BOX_SOURCES, default="xml",
                   help="bbox from the VOC XML (default) or the tight box of each mask")
    p.set_defaults(func=cmd_convert_voc)
    return p
