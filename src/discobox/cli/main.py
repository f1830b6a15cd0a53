"""``discobox <verb> ...``: each sub-command parses its arguments and calls one API function.

Errors a user can fix (bad config key, missing file, unreadable image or checkpoint) are printed as
one line naming the file or key, with exit status 2, instead of a traceback. Set
``DISCOBOX_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from ..checkpoint.convert import register as register_convert
from ..checkpoint.zoo import register as register_zoo
from ..data.voc import register as register_convert_voc
from ..engine.eval_corr import register as register_eval_corr
from ..inference.correspond import register as register_correspond
from ..inference.pseudo_label import register as register_pseudo_label
from ..tools.export_onnx import register as register_export_onnx
from ..tools.json2mat import register as register_json2mat
from ..tools.voc_exclude import register as register_voc_exclude


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides with dotted keys, e.g. solver.lr=0.02 data.batch_size=4")


def cmd_train(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..engine.trainer import train

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    cfg = load_config(args.config, overrides)
    result = train(cfg, resume=args.resume)
    print(json.dumps(result, indent=2))
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from ..checkpoint.load import load_model
    from ..engine import distributed as du
    from ..engine.evaluator import format_metrics
    from ..engine.tester import evaluate

    if args.config and "=" in args.config and not os.path.exists(args.config):
        # `discobox test --weights W key=value`: the optional CONFIG took the first override.
        args.overrides = [args.config, *args.overrides]
        args.config = None
    device = du.resolve_device(args.device)
    du.init_distributed(device)
    model, cfg = load_model(args.weights, config=args.config, overrides=args.overrides)
    model.to(device)
    if args.format_only and not args.out:
        raise SystemExit("discobox test: --format-only needs --out results.json")
    metrics = evaluate(cfg, model, device=device, format_only=args.format_only,
                       results_path=args.out)
    if du.is_main_process() and metrics:
        print(format_metrics(metrics))
        if args.metrics_out:
            from ..checkpoint.io import atomic_write_text

            atomic_write_text(json.dumps(metrics, indent=2), args.metrics_out)
    du.cleanup_distributed()
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..inference.predictor import predict_files

    out = predict_files(weights=args.weights, images=args.images, output=args.output,
                        config=args.config, score_thr=args.score_thr, overrides=args.overrides)
    print(f"wrote overlays and {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..engine.demo import run_demo

    run_demo(output=args.output, minutes=args.minutes, full=args.full, seed=args.seed,
             iterations=args.iterations, num_train=args.num_train, num_val=args.num_val,
             device=args.device)
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from ..config import available_recipes, load_config

    for name in available_recipes():
        if args.show:
            if name == args.show:
                print(load_config(name).to_yaml())
        else:
            print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="discobox",
        description="DiscoBox: instance segmentation and correspondence from bounding boxes.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")

    p = sub.add_parser("demo", help="train on built-in synthetic data (CPU, minutes) and report AP")
    p.add_argument("--output", default="discobox_demo", help="output folder")
    p.add_argument("--minutes", type=float, default=10.0, help="training time budget")
    p.add_argument("--iterations", type=int, default=None, help="fixed iteration count instead")
    p.add_argument("--full", action="store_true", help="also train the fully supervised model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-train", type=int, default=400, help="synthetic training images")
    p.add_argument("--num-val", type=int, default=40, help="synthetic validation images")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a model (use torchrun for several GPUs/nodes)")
    p.add_argument("config", help="recipe name or YAML file (see `discobox recipes`)")
    p.add_argument("--output-dir", default=None)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    _add_overrides(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("test", help="COCO bbox/segm evaluation on data.val_json")
    p.add_argument("config", nargs="?", default=None,
                   help="recipe or YAML (default: the config stored in the checkpoint)")
    p.add_argument("--weights", required=True)
    p.add_argument("--format-only", action="store_true", help="write results, do not evaluate")
    p.add_argument("--out", default=None, help="results json (COCO results format, RLE masks)")
    p.add_argument("--metrics-out", default=None, help="write the metrics to this JSON file")
    p.add_argument("--device", default="auto")
    _add_overrides(p)
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("predict", help="overlay PNGs and COCO-results JSON for images")
    p.add_argument("images", nargs="+")
    p.add_argument("--weights", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--config", default=None)
    p.add_argument("--score-thr", type=float, default=0.3, help="minimum score drawn")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_predict)

    register_pseudo_label(sub)
    register_correspond(sub)
    register_eval_corr(sub)
    register_voc_exclude(sub)
    register_convert(sub)
    register_convert_voc(sub)
    register_json2mat(sub)
    register_export_onnx(sub)
    register_zoo(sub)

    p = sub.add_parser("recipes", help="list the built-in recipes")
    p.add_argument("--show", default=None, help="print one recipe's resolved config")
    p.set_defaults(func=cmd_recipes)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Overrides (KEY=VALUE) may come after options too: collect the leftovers that look like
    # overrides for the verbs that accept them, and reject anything else as argparse would.
    args, extra = parser.parse_known_args(argv)
    if extra:
        bad = [e for e in extra if e.startswith("-") or "=" not in e]
        if bad or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
        args.overrides = [*(args.overrides or []), *extra]
    from ..config import ConfigError
    from ..data.coco import ImageReadError

    user_errors: tuple[type[BaseException], ...] = (
        ConfigError, FileNotFoundError, ImageReadError, ValueError, RuntimeError,
    )
    try:
        return int(args.func(args) or 0)
    except user_errors as exc:
        if os.environ.get("DISCOBOX_DEBUG"):
            raise
        print(f"discobox {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"discobox {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
