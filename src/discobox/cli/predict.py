"""``discobox predict``: overlay PNGs and a COCO-results json for image files
(:func:`discobox.inference.predictor.predict_files`)."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import InvalidInputError
from ..inference.predictor import predict_files
from .overrides import split_overrides


def cmd_predict(args: argparse.Namespace) -> int:
    images, overrides = split_overrides(args.items)
    if not images:
        raise InvalidInputError("no image given (every positional argument is a KEY=VALUE "
                                "override)")
    overrides = [*(args.set or []), *overrides]
    out = predict_files(weights=args.weights, images=images, output=args.output,
                        config=args.config, score_thr=args.score_thr, overrides=overrides)
    print(f"wrote overlays and {out}")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``discobox predict IMAGE... [KEY=VALUE ...] --weights W --output D``.

    Positional items mix image paths and config overrides: an item containing ``=`` that is
    not an existing file is an override (``test.score_thr=0.1``), anything else an image.
    """
    p = subparsers.add_parser("predict", help="overlay PNGs and COCO-results JSON for images")
    p.add_argument("items", nargs="+", metavar="IMAGE|KEY=VALUE",
                   help="image files, and config overrides with dotted keys (test.score_thr=0.1)")
    p.add_argument("--weights", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--config", default=None)
    p.add_argument("--score-thr", type=float, default=0.3, help="minimum score drawn")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="one config override (repeatable; same as a positional KEY=VALUE)")
    p.set_defaults(func=cmd_predict)
    return p
