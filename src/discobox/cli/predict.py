"""``discobox predict``: overlays, annotated videos and a COCO-results json for images, folders,
glob patterns and videos (:func:`discobox.inference.predict_files.predict_files`)."""

from __future__ import annotations

import argparse
from typing import Any

from ..engine.log import setup_logger
from ..errors import InvalidInputError
from ..inference.predict_files import format_predict_summary, predict_files
from .overrides import split_overrides


def cmd_predict(args: argparse.Namespace) -> int:
    setup_logger()
    inputs, overrides = split_overrides(args.items)
    if not inputs:
        raise InvalidInputError("no input given (every positional argument is a KEY=VALUE "
                                "override)")
    overrides = [*(args.set or []), *overrides]
    summary = predict_files(weights=args.weights, images=inputs, output=args.output,
                            config=args.config, score_thr=args.score_thr, overrides=overrides,
                            device=args.device, batch_size=args.batch_size,
                            image_ids=args.image_ids_from, progress=not args.no_progress)
    print(format_predict_summary(summary))
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``discobox predict INPUT... [KEY=VALUE ...] --weights W --output D``.

    Positional items mix inputs and config overrides: an item containing ``=`` that is not an
    existing file is an override (``test.score_thr=0.1``), anything else an input: an image
    file, a folder (its files, sorted), a quoted glob pattern (expanded by discobox, ``**``
    recursive) or a video (.mp4, .avi, .mov, .mkv; every frame, and an annotated video out).
    """
    p = subparsers.add_parser(
        "predict", help="overlays and COCO-results JSON for images, folders, globs and videos")
    p.add_argument("items", nargs="+", metavar="INPUT|KEY=VALUE",
                   help="image files, folders, quoted glob patterns, videos, and config "
                        "overrides with dotted keys (test.score_thr=0.1)")
    p.add_argument("--weights", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--config", default=None)
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda:N")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images per forward (above 1 images are padded to a common size)")
    p.add_argument("--image-ids-from", default=None, metavar="JSON",
                   help="COCO json whose images' file_name -> id give the output image_id "
                        "(default: the position among the images read)")
    p.add_argument("--score-thr", type=float, default=0.3, help="minimum score drawn")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="one config override (repeatable; same as a positional KEY=VALUE)")
    p.set_defaults(func=cmd_predict)
    return p
