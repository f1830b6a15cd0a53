"""Box-conditioned pseudo-mask quality on the ../shared/data val splits, one row per method.

    python benchmarks/pseudo_labels.py                                   # box + GrabCut
    python benchmarks/pseudo_labels.py --methods grabcut --grabcut-context 1   # GrabCut on crops
    python benchmarks/pseudo_labels.py --methods "" \
        --model droplets=benchmarks/out/quality/droplets/faithful/model_final.pth

Runs ``discobox pseudo-label --evaluate`` (the same code path as users) on each set's
``val.json`` (GT boxes in, masks out) and reports mean IoU per GT box and mask AP. Writes
``benchmarks/out/pseudo_labels.json`` (merged with earlier runs) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import OUT, markdown_table, shared_data

from discobox.inference.pseudo_label import pseudo_label


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="coco128,droplets,vines")
    ap.add_argument("--methods", default="box,grabcut")
    ap.add_argument("--model", action="append", default=[], metavar="DATASET=WEIGHTS",
                    help="trained weights for the model method on one data set (repeatable)")
    ap.add_argument("--tag", default="model", help="row name for --model results")
    ap.add_argument("--grabcut-context", type=float, default=None, metavar="C",
                    help="GrabCut on the box grown by C x its size (row grabcut_cC) instead of "
                         "the full image")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides for --model, e.g. test.refine=meanfield")
    ap.add_argument("--out", type=Path, default=OUT / "pseudo_labels.json")
    args = ap.parse_args()
    path = args.out
    table = json.loads(path.read_text()) if path.is_file() else {}
    weights = {Path(k).name: v for k, v in (item.split("=", 1) for item in args.model)}
    ctx = args.grabcut_context
    for ds in args.datasets.split(","):
        root = Path(ds) if Path(ds).is_dir() else shared_data() / ds
        ds = root.name
        jobs = [(f"grabcut_c{ctx:g}" if m == "grabcut" and ctx is not None else m, m, None)
                for m in args.methods.split(",") if m]
        if ds in weights:
            jobs.append((args.tag, "model", weights[ds]))
        for row, method, w in jobs:
            s = pseudo_label(boxes_json=root / "val.json", images_dir=root / "images",
                             out_json=OUT / "pseudo" / f"{ds}_{row}.json", method=method,
                             weights=w, overrides=args.overrides if w else None,
                             device="cpu", evaluate=True, progress=True,
                             grabcut_context=ctx if method == "grabcut" else None)
            table.setdefault(ds, {})[row] = {"mean_iou": s["mean_iou"], "segm/AP": s["segm/AP"],
                                             "boxes": s["boxes"], "seconds": s["seconds"],
                                             "fallback_box": s["fallback_box"],
                                             "fallback_neighbour": s["fallback_neighbour"],
                                             "weights": w,
                                             "overrides": args.overrides if w else []}
            print(ds, row, table[ds][row], flush=True)
            path.write_text(json.dumps(table, indent=2))
    rows = []
    for ds, methods in table.items():
        for row, s in methods.items():
            rows.append([ds, row, s["mean_iou"], s["segm/AP"], s["boxes"],
                         s.get("fallback_box", "?"), s["seconds"]])
    print(markdown_table(["set", "method", "mean IoU", "mask AP", "boxes", "filled-box fallbacks",
                          "seconds"], rows))


if __name__ == "__main__":
    main()
