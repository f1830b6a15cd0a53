"""PCK of semantic correspondence on PF-PASCAL, PF-WILLOW, SPair-71k.

Protocol (docs/method.md §8.4, SCOT): source keypoints are transferred to the target image
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

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoint.io import atomic_write_text
from ..checkpoint.load import load_model
from ..data.correspondence import CorrDataset, CorrPair, load_corr_dataset
from ..data.images import read_image
from ..device import resolve_device
from ..errors import InvalidInputError
from ..modeling.correspondence.dense_match import image_features, match_features

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
    data = load_corr_dataset(dataset, root, split)
    if not data.pairs:
        raise InvalidInputError(f"{dataset} under {root}: no usable pairs "
                         f"({data.skips.pairs_skipped} skipped of {data.skips.pairs_listed})")
    model, _ = load_model(weights, config=config)
    model.to(resolve_device(device))
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
