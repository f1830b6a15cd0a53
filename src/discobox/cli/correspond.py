"""``discobox correspond``: dense correspondence between objects of two images
(:func:`discobox.inference.correspond.correspond`)."""

from __future__ import annotations

import argparse
from typing import Any

from ..inference.correspond import correspond, parse_box


def cmd_correspond(args: argparse.Namespace) -> int:
    result = correspond(
        weights=args.weights, image_a=args.image_a, image_b=args.image_b, output=args.output,
        box_a=parse_box(args.box_a) if args.box_a else None,
        box_b=parse_box(args.box_b) if args.box_b else None, num_points=args.num_points,
        img_side=args.img_side, score_thr=args.score_thr, config=args.config,
        device=args.device,
    )
    print(f"{len(result['matches'])} matches written to {args.output}")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``correspond`` verb to ``discobox``'s sub-parsers."""
    p = subparsers.add_parser("correspond",
                              help="dense correspondence between objects of two images")
    p.add_argument("image_a")
    p.add_argument("image_b")
    p.add_argument("--weights", required=True)
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--box-a", default=None, metavar="X0,Y0,X1,Y1")
    p.add_argument("--box-b", default=None, metavar="X0,Y0,X1,Y1")
    p.add_argument("--num-points", type=int, default=20)
    p.add_argument("--img-side", type=int, default=240, help="longer side of each crop")
    p.add_argument("--score-thr", type=float, default=0.3, help="detections below are ignored")
    p.add_argument("--config", default=None)
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_correspond)
    return p
