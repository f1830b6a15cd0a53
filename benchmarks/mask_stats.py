"""Mask-logit statistics of trained runs at their training positives: is a collapsed run's mask
branch saturated (every pixel at 1, or at 0), or shrunk to fragments?

For each run folder (``train`` output: ``config.yaml`` and a checkpoint), rebuilds the model and
the training set (box mode: boxes only), runs ``--batches`` training batches of 2 through the
network (eval mode, no gradient, random crops and flips seeded by ``--seed``), assigns the
targets as the criterion does (docs/method.md §3.3), and prints over every positive cell:

- ``logit in`` / ``logit out``: mean mask logit inside / outside the positive's box mask;
- ``p in`` / ``p out``: mean probability inside / outside;
- ``fg in`` / ``fg out``: share of pixels with ``p > 0.5`` inside / outside;
- ``stuck out``: share of the pixels outside the box that are saturated at 1 (logit above
  9.2, sigmoid derivative under 1e-4): wrong, and out of reach of any loss on the
  probabilities (the plain sigmoid's gradient has vanished);
- with ``--crf``, the mean of the CRF pseudo-label (§4.3, the student as its own teacher)
  inside the box, beside the student's.

    python benchmarks/mask_stats.py out/quality/droplets_s512crop_seed4/meanfield_boxwarm \\
        out/quality/droplets_s512crop_seed4/meanfield_boxwarm_floor
"""

from __future__ import annotations

import argparse
import random
import statistics as st
from pathlib import Path

import numpy as np
import torch

from discobox.checkpoint.io import load_checkpoint_file
from discobox.config import load_config
from discobox.data import collate
from discobox.data.build import build_train_dataset
from discobox.modeling.build import build_criterion, build_model
from discobox.modeling.crf.pseudo_labels import crf_pseudo_labels
from discobox.modeling.solov2.targets import assign_targets

COLUMNS = ("logit in", "logit out", "p in", "p out", "fg in", "fg out", "stuck out")


def run_stats(run: Path, checkpoint: str, batches: int, seed: int, crf: bool) -> dict[str, float]:
    cfg = load_config(run / "config.yaml")
    model = build_model(cfg)
    model.load_state_dict(load_checkpoint_file(run / checkpoint)["model"])
    model.eval()
    crit = build_criterion(cfg)
    dataset = build_train_dataset(cfg)
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    rows: dict[str, list[float]] = {k: [] for k in (*COLUMNS, "crf target in", "student in")}
    with torch.no_grad():
        for i in range(batches):
            batch = collate([dataset[(2 * i) % len(dataset)], dataset[(2 * i + 1) % len(dataset)]])
            out = model(batch.images, batch.image_sizes)
            levels = assign_targets(
                batch.targets, padded_size=tuple(out.images.shape[-2:]),
                num_classes=crit.num_classes, num_grids=crit.num_grids,
                scale_ranges=crit.scale_ranges, sigma=crit.sigma, use_masks=False,
                device=out.mask_feat.device)
            pos = crit._positives(out, levels, None)
            pos = pos.select(pos.targets.flatten(1).amax(dim=1) > 0)
            if pos.logits.shape[0] == 0:
                continue
            logits, inside = pos.logits, pos.targets > 0
            probs = torch.sigmoid(logits)
            values = (logits[inside].mean(), logits[~inside].mean(), probs[inside].mean(),
                      probs[~inside].mean(), (probs > 0.5)[inside].float().mean(),
                      (probs > 0.5)[~inside].float().mean(),
                      (logits[~inside] > 9.2).float().mean())
            for key, v in zip(COLUMNS, values):
                rows[key].append(float(v))
            if crf:
                images = out.quarter_images()
                for b in pos.img_index.unique().tolist():
                    sel = pos.img_index == b
                    target = crf_pseudo_labels(probs[sel], pos.targets[sel], images[b],
                                               mode=crit.crf.mode, params=crit.crf)
                    rows["crf target in"].append(float(target[inside[sel]].mean()))
                    rows["student in"].append(float(probs[sel][inside[sel]].mean()))
    return {k: st.mean(v) for k, v in rows.items() if v}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="train output folders")
    ap.add_argument("--checkpoint", default="model_final.pth")
    ap.add_argument("--batches", type=int, default=6, help="training batches of 2 images")
    ap.add_argument("--seed", type=int, default=0, help="seed of the crops and flips")
    ap.add_argument("--crf", action="store_true", help="also the CRF target inside the box")
    args = ap.parse_args()
    torch.set_num_threads(1)
    header = None
    for run in args.runs:
        stats = run_stats(run, args.checkpoint, args.batches, args.seed, args.crf)
        if header is None:
            header = list(stats)
            print("| run | " + " | ".join(header) + " |")
            print("|---" * (len(header) + 1) + "|")
        print(f"| {run} | " + " | ".join(f"{stats.get(k, float('nan')):.2f}" for k in header)
              + " |")


if __name__ == "__main__":
    main()
