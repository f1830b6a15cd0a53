"""Pictures for BENCHMARKS.md: training curves of a run, and pseudo-masks beside GT masks.

    python benchmarks/plots.py curves discobox_demo/box --out benchmarks/out/demo_curves.png
    python benchmarks/plots.py grid --dataset droplets --methods box,grabcut,model \\
        --out benchmarks/out/pseudo_grid_droplets.png

``curves`` reads ``metrics.jsonl`` (loss terms per logged iteration, validation mask AP where it
was evaluated). ``grid`` reads the pseudo-label jsons written by ``pseudo_labels.py``
(``benchmarks/out/pseudo/<set>_<method>.json``) and draws, per image, the GT masks and each
method's masks. Needs matplotlib (``pip install matplotlib``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from common import OUT, shared_data


def curves(run: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if any(k.startswith("train/loss_") for k in r)]
    val = [r for r in recs if "val/segm/AP" in r]
    keys = sorted({k for r in train for k in r if k.startswith("train/loss_")})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k in keys:
        axes[0].plot([r["iter"] for r in train], [r.get(k, np.nan) for r in train],
                     label=k.split("/")[-1])
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel("loss")
    axes[0].set_yscale("log")
    axes[0].legend()
    axes[0].set_title(f"training losses ({run.name})")
    if val:
        for key, name in (("val/segm/AP", "mask AP"), ("val/bbox/AP", "box AP"),
                          ("val/segm/AP50", "mask AP50")):
            axes[1].plot([r["iter"] for r in val], [r[key] for r in val], "o-", label=name)
        axes[1].legend()
    axes[1].set_xlabel("iteration")
    axes[1].set_ylabel("AP (%)")
    axes[1].set_title("validation")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


def grid(dataset: str, methods: list[str], out: Path, n: int) -> None:
    import cv2
    from pycocotools.coco import COCO

    from discobox.data.images import read_image
    from discobox.inference.visualize import palette

    root = shared_data() / dataset if not Path(dataset).is_dir() else Path(dataset)
    gt = COCO(str(root / "val.json"))
    preds = {m: COCO(str(OUT / "pseudo" / f"{Path(dataset).name}_{m}.json")) for m in methods}
    rows = []
    for img_id in sorted(gt.getImgIds())[:n]:
        info = gt.imgs[img_id]
        image = read_image(root / "images" / info["file_name"])
        scale = 320.0 / max(image.shape[:2])
        panels = []
        for name, coco in [("GT", gt), *preds.items()]:
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
            canvas = image.astype(np.float32).copy()
            colors = palette(max(1, len(anns)))
            for k, a in enumerate(anns):
                m = coco.annToMask(a).astype(bool)
                canvas[m] = canvas[m] * 0.45 + colors[k] * 0.55
            small = cv2.resize(canvas.astype(np.uint8), None, fx=scale, fy=scale,
                               interpolation=cv2.INTER_AREA)
            cv2.putText(small, name, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 2)
            cv2.putText(small, name, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
            panels.append(small)
        rows.append(np.concatenate(panels, axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255)
            for r in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(np.concatenate(rows), cv2.COLOR_RGB2BGR))
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("curves")
    p.add_argument("run", type=Path)
    p.add_argument("--out", type=Path, default=OUT / "curves.png")
    p = sub.add_parser("grid")
    p.add_argument("--dataset", default="droplets")
    p.add_argument("--methods", default="box,grabcut")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.what == "curves":
        curves(args.run, args.out)
    else:
        out = args.out or OUT / f"pseudo_grid_{Path(args.dataset).name}.png"
        grid(args.dataset, args.methods.split(","), out, args.images)


if __name__ == "__main__":
    main()
