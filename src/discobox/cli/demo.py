"""``discobox demo``: train and evaluate on built-in synthetic data
(:func:`discobox.engine.demo.run_demo`)."""

from __future__ import annotations

import argparse
from typing import Any

from ..engine.demo import run_demo


def cmd_demo(args: argparse.Namespace) -> int:
    run_demo(output=args.output, minutes=args.minutes, full=args.full, seed=args.seed,
             iterations=args.iterations, num_train=args.num_train, num_val=args.num_val,
             device=args.device)
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``discobox demo [--minutes M | --iterations N] [--full] ...``."""
    p = subparsers.add_parser(
        "demo", help="train on built-in synthetic data (CPU, minutes) and report AP")
    p.add_argument("--output", default="discobox_demo", help="output folder")
    p.add_argument("--minutes", type=float, default=10.0, help="training time budget")
    p.add_argument("--iterations", type=int, default=None, help="fixed iteration count instead")
    p.add_argument("--full", action="store_true", help="also train the fully supervised model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-train", type=int, default=400, help="synthetic training images")
    p.add_argument("--num-val", type=int, default=40, help="synthetic validation images")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=cmd_demo)
    return p
