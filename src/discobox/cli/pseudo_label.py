"""``discobox pseudo-label``: a mask for every box of a COCO json
(:func:`discobox.inference.pseudo_label.pseudo_label`)."""

from __future__ import annotations

import argparse
from typing import Any

from ..engine.log import setup_logger
from ..inference.pseudo_label import METHODS, format_summary, pseudo_label


def cmd_pseudo_label(args: argparse.Namespace) -> int:
    setup_logger()
    summary = pseudo_label(
        boxes_json=args.boxes, images_dir=args.images, out_json=args.out, method=args.method,
        weights=args.weights, config=args.config, overrides=list(args.overrides or []),
        device=args.device, evaluate=args.evaluate, chunk_size=args.chunk_size,
        batch_size=args.batch_size, progress=not args.no_progress,
        summary_json=args.summary_out, grabcut_context=args.grabcut_context,
    )
    print(format_summary(summary))
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``pseudo-label`` verb to ``discobox``'s sub-parsers."""
    p = subparsers.add_parser(
        "pseudo-label", help="a mask for every box of a COCO json (model, box or GrabCut)"
    )
    p.add_argument("--boxes", required=True, help="COCO json with boxes (masks optional)")
    p.add_argument("--images", required=True, help="folder of the json's file_name entries")
    p.add_argument("--out", required=True, help="output COCO json with RLE segmentations")
    p.add_argument("--method", choices=METHODS, default="model")
    p.add_argument("--config", default=None, help="recipe or YAML (default: the checkpoint's)")
    p.add_argument("--weights", default=None, help="checkpoint (required for --method model)")
    p.add_argument("--device", default="auto")
    p.add_argument("--evaluate", action="store_true",
                   help="report mean IoU and segm AP against the input's GT masks")
    p.add_argument("--chunk-size", type=int, default=64, help="masks held at a time per image")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward (model)")
    p.add_argument("--grabcut-context", type=float, default=None, metavar="C",
                   help="GrabCut on the box grown by C x its size per side instead of the full "
                        "image (faster on large images with small boxes)")
    p.add_argument("--summary-out", default=None, help="also write the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides with dotted keys (model), e.g. test.mask_thr=0.5")
    p.set_defaults(func=cmd_pseudo_label)
    return p
