"""Projection loss of a trained model on random training crops, per source video and per positive.

    python benchmarks/crop_losses.py benchmarks/out/quality/droplets_s512crop/full --crops 120

Draws ``--crops`` batches of one crop from the run's own training pipeline (its config.yaml, in
box mode), runs the run's ``model_final.pth`` in eval mode and reports the box-projection loss
(docs/method.md §4.2): the mean per crop grouped by the file-name prefix before ``image`` (the
video of the droplets set), and the quantiles of the per-positive terms with the share under a
few thresholds.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

import numpy as np
import torch

from discobox.checkpoint.load import load_model
from discobox.config import load_config
from discobox.data.build import build_train_dataset, build_train_loader_from_config
from discobox.modeling.boxsup import criterion as criterion_mod
from discobox.modeling.build import build_criterion


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a training output folder")
    ap.add_argument("--crops", type=int, default=120)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.run / "config.yaml",
                      ["loss.mode=box", "crf.mode=none", "data.batch_size=1",
                       "data.num_workers=0", f"train.seed={args.seed}"])
    model, _ = load_model(args.run / "model_final.pth")
    crit = build_criterion(cfg)
    terms: list[torch.Tensor] = []
    projection_loss = criterion_mod.projection_loss

    def recording(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        out = projection_loss(probs, targets)
        terms.append(out.detach())
        return out

    criterion_mod.projection_loss = recording
    loader = build_train_loader_from_config(cfg, build_train_dataset(cfg))
    by_group: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(args.crops):
        batch = next(loader)
        with torch.no_grad():
            losses, _ = crit(model(batch.images, batch.image_sizes), batch.targets)
        name = Path(batch.file_names[0]).name
        by_group[re.split(r"image", name)[0]].append(float(losses["loss_proj"]))
    for group, vals in sorted(by_group.items()):
        print(f"{group}: {len(vals)} crops, projection loss mean {np.mean(vals):.3f}")
    per_positive = torch.cat(terms).numpy()
    q = np.quantile(per_positive, [0.1, 0.25, 0.5, 0.75, 0.9])
    print(f"{len(per_positive)} positives, quantiles 10/25/50/75/90%: {np.round(q, 3).tolist()}")
    for thr in (0.3, 0.5):
        print(f"share under {thr}: {(per_positive < thr).mean():.3f}")


if __name__ == "__main__":
    main()
