"""``discobox train``: train a model from a recipe (:func:`discobox.engine.trainer.train`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..config import load_config, parse_cli_overrides
from ..engine.resume import TrainingInterrupted
from ..engine.trainer import train
from .overrides import add_overrides


def cmd_train(args: argparse.Namespace) -> int:
    """Train; with ``--resume`` the checkpoint's config wins and only the ``KEY=VALUE`` items
    given here override it. SIGINT / SIGTERM save a checkpoint and exit 130 / 143."""
    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    cfg = load_config(args.config, overrides)
    try:
        result = train(cfg, resume=args.resume, overrides=parse_cli_overrides(args.overrides))
    except TrainingInterrupted as exc:
        print(f"discobox train: interrupted: {exc}", file=sys.stderr)
        return 128 + exc.signum
    print(json.dumps(result, indent=2))
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``discobox train CONFIG [--output-dir D] [--resume] [KEY=VALUE ...]``."""
    p = subparsers.add_parser("train", help="train a model (use torchrun for several GPUs/nodes)")
    p.add_argument("config", help="recipe name or YAML file (see `discobox recipes`)")
    p.add_argument("--output-dir", default=None)
    p.add_argument("--resume", action="store_true",
                   help="continue from the last readable checkpoint in the output dir, with the "
                        "config stored in it (KEY=VALUE items given here override it)")
    add_overrides(p)
    p.set_defaults(func=cmd_train)
    return p
