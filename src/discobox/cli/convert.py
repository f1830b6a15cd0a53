"""``discobox convert``: an official DiscoBox (mmdet) checkpoint -> a discobox checkpoint
(:func:`discobox.checkpoint.convert.convert_checkpoint`)."""

from __future__ import annotations

import argparse
from typing import Any

from ..checkpoint.convert import convert_checkpoint
from ..engine.log import setup_logger


def cmd_convert(args: argparse.Namespace) -> int:
    setup_logger()
    report = convert_checkpoint(args.src, args.dst, config=args.config, strict=args.strict)
    print(f"wrote {args.dst}: {report.summary()}")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``discobox convert official.pth ours.pth [--config NAME] [--no-strict]``."""
    p = subparsers.add_parser(
        "convert", help="convert an official DiscoBox (mmdet) checkpoint to a discobox one"
    )
    p.add_argument("src", help="official checkpoint (mmcv: meta + state_dict)")
    p.add_argument("dst", help="output checkpoint (model + config + provenance)")
    p.add_argument("--config", default=None,
                   help="recipe name or YAML (default: inferred from the tensor shapes)")
    p.add_argument("--no-strict", dest="strict", action="store_false",
                   help="allow unmapped, missing or mismatched keys (reported, not fatal)")
    p.set_defaults(func=cmd_convert)
    return p
