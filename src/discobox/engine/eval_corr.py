"""``discobox eval-corr``: PCK of semantic correspondence on PF-PASCAL, PF-WILLOW, SPair-71k.

Protocol (METHOD.md §8.4, SCOT): source keypoints are transferred to the target image
(:mod:`discobox.modeling.correspondence.dense_match`) and a keypoint is correct iff its L2
error is at most ``alpha * L`` with

- ``L = max(h, w)`` of the target image (``"img"``, PF-PASCAL), or
- ``L = max(box_h, box_w)`` of the target box (``"bbox"``, PF-WILLOW: the target keypoints'
  extent; SPair-71k: the annotated box).

Errors and ``L`` are in the original target frame (SCOT measures both in the 350-px resized frame
with the same ratio, which is equivalent up to per-axis rounding). Reported for every ``alpha``
(0.05, 0.10, 0.15): **per image** (mean over pairs of each pair's fraction correct, the number
SCOT and the paper report), **per keypoint** (total correct / total keypoints) and per class.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..data.correspondence import DATASETS, CorrDataset, CorrPair, load_corr_dataset

logger = logging.getLogger("discobox")

ALPHAS = (0.05, 0.10, 0.15)
DEFAULT_EXP = {"pf-pascal": 0.5, "pf-willow": 0.5, "spair": 1.0}  # SCOT's exp2 per benchmark


def pck_threshold(pair: CorrPair, thresh_type: str) -> float:
    """The normaliser ``L`` of a pair (``"img"`` or ``"bbox"``, see module doc)."""
    if thresh_type == "img":
        return float(max(pair.trg_size))
    if thresh_type == "bbox":
        box = pair.trg_box
        if box is None:
            t = pair.trg_kps
            box = np.concatenate([t.min(0), t.max(0)])
        return float(max(box[2] - box[0], box[3] - box[1]))
    raise ValueError(f"thresh_type must be 'img' or 'bbox', got {thresh_type!r}")


def pck_correct(pred: np.ndarray, gt: np.ndarray, length: float,
                alphas: Sequence[float] = ALPHAS) -> np.ndarray:
    """``bool[A, K]``: ``|pred_k - gt_k| <= alpha * length`` for each alpha (float ``[K, 2]``)."""
    err = np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(gt, np.float64), axis=1)
    return err[None] <= np.asarray(alphas, np.float64)[:, None] * length


class PCKMeter:
    """Accumulates per-pair correctness; :meth:`summary` gives per-image, per-keypoint and
    per-class PCK for each alpha."""

    def __init__(self, alphas: Sequence[float] = ALPHAS) -> None:
        self.alphas = tuple(float(a) for a in alphas)
        self.pair_pck: list[np.ndarray] = []  # [A] per pair
        self.correct = np.zeros(len(self.alphas), np.int64)
        self.total = 0
        self.classes: dict[str, list[np.ndarray]] = {}

    def add(self, correct: np.ndarray, category: str = "") -> None:
        c = np.asarray(correct, bool).reshape(len(self.alphas), -1)
        if c.shape[1] == 0:
            return
        p = c.mean(1)
        self.pair_pck.append(p)
        self.correct += c.sum(1)
        self.total += c.shape[1]
        self.classes.setdefault(category, []).append(p)

    def summary(self) -> dict[str, Any]:
        def fmt(v: np.ndarray) -> dict[str, float]:
            return {f"{a:g}": float(x) for a, x in zip(self.alphas, v)}

        n = len(self.pair_pck)
        per_image = np.mean(self.pair_pck, 0) if n else np.zeros(len(self.alphas))
        per_kp = self.correct / self.total if self.total else np.zeros(len(self.alphas))
        return {
            "pck_per_image": fmt(per_image),
            "pck_per_keypoint": fmt(per_kp),
            "per_class": {k: fmt(np.mean(v, 0)) for k, v in sorted(self.classes.items())},
            "pairs_evaluated": n,
            "keypoints_evaluated": int(self.total),
        }


@torch.no_grad()
def evaluate_correspondence(
    model: torch.nn.Module, dataset: CorrDataset, *, alphas: Sequence[float] = ALPHAS,
    img_side: int = 350, levels: Sequence[int] = (0, 1), solver: str = "sinkhorn",
    eps: float = 0.05, iters: int = 1, exp: float = 0.5, hough: bool = True,
    ncells: int = 8192, filter_size: int = 7, rf_size: float | None = None,
    limit: int | None = None, progress: bool = True,
) -> dict[str, Any]:
    """PCK of ``model`` (a :class:`SOLOv2`) on ``dataset``; returns the metrics dict."""
    from ..data.coco import read_image
    from ..modeling.correspondence.dense_match import image_features, match_features

    meter = PCKMeter(alphas)
    pairs = dataset.pairs[:limit] if limit else dataset.pairs
    cache: dict[Path, Any] = {}

    def feats(path: Path):
        if path not in cache:
            if len(cache) > 64:
                cache.clear()
            cache[path] = image_features(model, read_image(path), img_side=img_side,
                                         levels=levels)
        return cache[path]

    for pair in tqdm(pairs, desc=f"eval-corr {dataset.name}", disable=not progress):
        m = match_features(feats(pair.src_image), feats(pair.trg_image), solver=solver, eps=eps,
                           iters=iters, exp=exp, hough=hough, ncells=ncells,
                           filter_size=filter_size)
        pred = m.transfer(pair.src_kps, rf_size)
        length = pck_threshold(pair, dataset.thresh_type)
        meter.add(pck_correct(pred, pair.trg_kps, length, alphas), pair.category)
    result = meter.summary()
    result.update({
        "dataset": dataset.name,
        "thresh_type": dataset.thresh_type,
        "alphas": list(meter.alphas),
        "pairs_listed": dataset.skips.pairs_listed,
        "pairs_skipped": dataset.skips.pairs_skipped,
        "skips": dataset.skips.to_dict(),
        "settings": {"img_side": img_side, "levels": list(levels), "solver": solver, "eps": eps,
                     "iters": iters, "exp": exp, "hough": hough, "ncells": ncells,
                     "filter_size": filter_size, "rf_size": rf_size},
    })
    return result


def eval_corr(
    *, weights: str | Path, dataset: str, root: str | Path, split: str = "test",
    config: str | Path | None = None, device: str = "auto", out: str | Path | None = None,
    **kwargs,
) -> dict[str, Any]:
    """Load a trained model and dataset, evaluate, optionally write ``out`` (JSON)."""
    from ..checkpoint.io import atomic_write_text
    from ..checkpoint.load import load_model
    from . import distributed as du

    data = load_corr_dataset(dataset, root, split)
    if not data.pairs:
        raise ValueError(f"{dataset} under {root}: no usable pairs "
                         f"({data.skips.pairs_skipped} skipped of {data.skips.pairs_listed})")
    model, _ = load_model(weights, config=config)
    model.to(du.resolve_device(device))
    metrics = evaluate_correspondence(model, data, **kwargs)
    metrics["weights"] = str(weights)
    metrics["split"] = split
    if out:
        atomic_write_text(json.dumps(metrics, indent=2), out)
    return metrics


def format_pck(metrics: dict[str, Any]) -> str:
    lines = [f"{metrics['dataset']} ({metrics['thresh_type']} threshold): "
             f"{metrics['pairs_evaluated']} pairs evaluated, {metrics['pairs_skipped']} skipped "
             f"of {metrics['pairs_listed']}, {metrics['keypoints_evaluated']} keypoints"]
    for a in metrics["pck_per_image"]:
        lines.append(f"  PCK@{a}: per image {100 * metrics['pck_per_image'][a]:.1f}  "
                     f"per keypoint {100 * metrics['pck_per_keypoint'][a]:.1f}")
    return "\n".join(lines)


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


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``discobox eval-corr`` to the CLI."""
    p = sub.add_parser("eval-corr", help="PCK on PF-PASCAL / PF-WILLOW / SPair-71k")
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
