"""``discobox eval-corr``: PCK on PF-PASCAL / PF-WILLOW / SPair-71k
(:func:`discobox.engine.eval_corr.eval_corr`)."""

from __future__ import annotations

import argparse
from typing import Any

from ..data.correspondence import DATASETS
from ..engine.eval_corr import ALPHAS, DEFAULT_EXP, eval_corr, format_pck


def cmd_eval_corr(args: argparse.Namespace) -> int:
    metrics = eval_corr(
        weights=args.weights, dataset=args.dataset, root=args.root, split=args.split,
        config=args.config, device=args.device, out=args.out, alphas=args.alpha,
        img_side=args.img_side, levels=args.levels, solver=args.solver, eps=args.eps,
        iters=args.iters, exp=args.exp if args.exp is not None else DEFAULT_EXP[args.dataset],
        hough=not args.no_hough, limit=args.limit,
    )
    print(format_pck(metrics))
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``eval-corr`` verb to ``discobox``'s sub-parsers."""
    p = subparsers.add_parser("eval-corr", help="PCK on PF-PASCAL / PF-WILLOW / SPair-71k")
    p.add_argument("--weights", required=True)
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--root", required=True, help="dataset folder (or its parent)")
    p.add_argument("--split", default="test")
    p.add_argument("--alpha", type=float, nargs="+", default=list(ALPHAS))
    p.add_argument("--out", default=None, help="write the metrics to this JSON file")
    p.add_argument("--config", default=None, help="config if the checkpoint holds none")
    p.add_argument("--device", default="auto")
    p.add_argument("--img-side", type=int, default=350, help="longer image side (SCOT: 350)")
    p.add_argument("--levels", type=int, nargs="+", default=[0, 1],
                   help="FPN levels for hyperpixels (0 = P2, 1 = P3)")
    p.add_argument("--solver", choices=("sinkhorn", "cosine"), default="sinkhorn")
    p.add_argument("--eps", type=float, default=0.05)
    p.add_argument("--iters", type=int, default=1, help="Sinkhorn iterations (SCOT: 1)")
    p.add_argument("--exp", type=float, default=None,
                   help="OT plan exponent (default: SCOT's 0.5 for PF-PASCAL/WILLOW, 1.0 SPair)")
    p.add_argument("--no-hough", action="store_true", help="skip regularised Hough voting")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N pairs only")
    p.set_defaults(func=cmd_eval_corr)
    return p
