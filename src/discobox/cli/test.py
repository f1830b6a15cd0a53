"""``discobox test``: COCO bbox/segm evaluation of a checkpoint
(:func:`discobox.engine.tester.evaluate`; bbox only for a val json without masks; a val json
without annotations is an error unless ``--format-only``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..checkpoint.io import atomic_write_text
from ..checkpoint.load import load_model
from ..data.coco_results import format_metrics
from ..engine import distributed as du
from ..engine.tester import evaluate
from ..errors import InvalidInputError
from .overrides import add_overrides, is_override


def cmd_test(args: argparse.Namespace) -> int:
    if args.config and is_override(args.config):
        # `discobox test --weights W key=value`: the optional CONFIG took the first override.
        args.overrides = [args.config, *args.overrides]
        args.config = None
    if args.format_only and not args.out:
        raise InvalidInputError("--format-only needs --out results.json")
    device = du.resolve_device(args.device)
    du.init_distributed(device)
    model, cfg = load_model(args.weights, config=args.config, overrides=args.overrides)
    model.to(device)
    metrics = evaluate(cfg, model, device=device, format_only=args.format_only,
                       results_path=args.out)
    if du.is_main_process() and metrics:
        print(format_metrics(metrics))
        if args.metrics_out:
            atomic_write_text(json.dumps(metrics, indent=2), args.metrics_out)
    du.cleanup_distributed()
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``discobox test [CONFIG] --weights W [--format-only --out R] [KEY=VALUE ...]``."""
    p = subparsers.add_parser(
        "test", help="COCO bbox/segm evaluation on data.val_json",
        description="COCO bbox and segm AP of a checkpoint on data.val_json. segm AP needs a "
                    "'segmentation' on every annotation; a box-only val json gives bbox AP only "
                    "(one log line says so).")
    p.add_argument("config", nargs="?", default=None,
                   help="recipe or YAML (default: the config stored in the checkpoint)")
    p.add_argument("--weights", required=True)
    p.add_argument("--format-only", action="store_true", help="write results, do not evaluate")
    p.add_argument("--out", default=None, help="results json (COCO results format, RLE masks)")
    p.add_argument("--metrics-out", default=None, help="write the metrics to this JSON file")
    p.add_argument("--device", default="auto")
    add_overrides(p)
    p.set_defaults(func=cmd_test)
    return p
