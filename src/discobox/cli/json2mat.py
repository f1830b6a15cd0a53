"""``discobox json2mat``: COCO segm results -> ``.mat`` for the BBTP Matlab VOC evaluation
(:func:`discobox.tools.json2mat.results_to_mat`)."""

from __future__ import annotations

import argparse
from typing import Any

from ..engine.log import setup_logger
from ..tools.json2mat import results_to_mat


def cmd_json2mat(args: argparse.Namespace) -> int:
    setup_logger()
    s = results_to_mat(args.results, args.out, image_list=args.image_list, gt_json=args.gt)
    print(f"wrote {args.out}: {s['detections']} detections on {s['with_detections']} of "
          f"{s['images']} images")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``discobox json2mat results.json out.mat --image-list val.txt [--gt val.json]``."""
    p = subparsers.add_parser(
        "json2mat", help="COCO segm results -> .mat for the BBTP Matlab VOC evaluation"
    )
    p.add_argument("results", help="COCO segm results json (RLE masks)")
    p.add_argument("out", help="output .mat")
    p.add_argument("--image-list", required=True,
                   help="evaluation list, e.g. VOC2012/ImageSets/Segmentation/val.txt")
    p.add_argument("--gt", default=None,
                   help="gt json mapping image ids to file names (e.g. voc_2012_val_cocostyle)")
    p.set_defaults(func=cmd_json2mat)
    return p
