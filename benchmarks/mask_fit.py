"""How well a model's detections fit each ground-truth mask, one row per results file.

    discobox test --weights W "test.tile=[256,320]" --out /tmp/det_full.json
    python benchmarks/mask_fit.py --gt ../shared/data/droplets/val.json \
        full=/tmp/det_full.json meanfield=/tmp/det_meanfield.json

Mask AP mixes detection, ranking and mask quality; this isolates the masks. For every GT
object it takes the detection (any score) whose mask overlaps it best and reports that IoU (mean
and the fraction above 0.5 / 0.75, the AP50 / AP75 thresholds), the detection's precision and
recall against the GT mask, its area over the GT area, and the IoU after cutting the mask to the
GT box (what is lost outside the box: the box-conditioned pseudo-labels are cut that way).
``--figure OUT.png --images DIR`` also draws each run's detections (score >= ``--score-thr``)
on one val image side by side (``--crop x0,y0,x1,y1`` to zoom in).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from collections import defaultdict

import numpy as np
from common import markdown_table
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from discobox.data.segmentation import compressed_rle


def fit(gt: COCO, dets: list[dict]) -> dict[str, float]:
    by_image: dict[int, list[dict]] = defaultdict(list)
    for d in dets:
        by_image[d["image_id"]].append(d)
    rows: list[tuple[float, ...]] = []  # (IoU, precision, recall, area ratio, IoU cut to box)
    for image_id in gt.getImgIds():
        anns = gt.loadAnns(gt.getAnnIds(imgIds=image_id, iscrowd=False))
        if not anns:
            continue
        rles = [compressed_rle(d["segmentation"]) for d in by_image.get(image_id, [])]
        if not rles:
            rows += [(0.0,) * 5] * len(anns)
            continue
        ious = np.asarray(mask_utils.iou(rles, [gt.annToRLE(a) for a in anns], [0] * len(anns)))
        for j, ann in enumerate(anns):
            k = int(ious[:, j].argmax())
            p = mask_utils.decode(rles[k]).astype(bool)
            g = gt.annToMask(ann).astype(bool)
            inter, p_area, g_area = float((p & g).sum()), float(p.sum()), max(float(g.sum()), 1.0)
            x, y, w, h = ann["bbox"]
            box = np.zeros_like(g)
            box[int(round(y)) : int(round(y + h)), int(round(x)) : int(round(x + w))] = True
            pc = p & box
            cut = float((pc & g).sum()) / max(float((pc | g).sum()), 1.0)
            rows.append((float(ious[k, j]), inter / max(p_area, 1.0), inter / g_area,
                         p_area / g_area, cut))
    iou, prec, rec, area, clipped = np.asarray(rows, dtype=float).reshape(-1, 5).T
    return {
        "objects": len(rows),
        "best_iou": float(iou.mean()),
        "frac_iou_0.5": float((iou > 0.5).mean()),
        "frac_iou_0.75": float((iou > 0.75).mean()),
        "precision": float(prec.mean()),
        "recall": float(rec.mean()),
        "area_ratio_median": float(np.median(area)),
        "iou_cut_to_gt_box": float(clipped.mean()),
    }


def figure(gt: COCO, runs: dict[str, list[dict]], images: str, out: str, *, image_index: int,
           score_thr: float, crop: tuple[int, int, int, int] | None) -> None:
    from PIL import Image, ImageDraw

    info = gt.imgs[gt.getImgIds()[image_index]]
    base = np.asarray(Image.open(f"{images}/{info['file_name']}").convert("RGB"), dtype=float)
    panels = []
    for name, dets in runs.items():
        canvas = base.copy()
        rng = np.random.default_rng(0)
        for d in dets:
            if d["image_id"] != info["id"] or d["score"] < score_thr:
                continue
            m = mask_utils.decode(compressed_rle(d["segmentation"])).astype(bool)
            canvas[m] = 0.5 * canvas[m] + 0.5 * rng.uniform(0, 255, 3)
        if crop is not None:
            x0, y0, x1, y1 = crop
            canvas = canvas[y0:y1, x0:x1]
        panel = Image.fromarray(canvas.astype(np.uint8))
        ImageDraw.Draw(panel).text((8, 8), name, fill=(255, 255, 255))
        panels.append(np.asarray(panel))
        panels.append(np.full((panels[-1].shape[0], 6, 3), 255, dtype=np.uint8))
    Image.fromarray(np.concatenate(panels[:-1], axis=1)).save(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gt", required=True, help="COCO json with GT masks")
    ap.add_argument("results", nargs="+", metavar="NAME=RESULTS_JSON",
                    help="results json of `discobox test --out`")
    ap.add_argument("--out", help="write the rows to this JSON file")
    ap.add_argument("--figure", help="write a side-by-side PNG of the runs' detections")
    ap.add_argument("--images", help="image folder (for --figure)")
    ap.add_argument("--image-index", type=int, default=0)
    ap.add_argument("--score-thr", type=float, default=0.3)
    ap.add_argument("--crop", help="x0,y0,x1,y1 region of the image for --figure")
    args = ap.parse_args()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(args.gt)
    rows, table, runs = {}, [], {}
    for item in args.results:
        name, _, path = item.rpartition("=")
        if not path:
            raise SystemExit(f"expected NAME=RESULTS_JSON, got {item!r}")
        try:
            with open(path) as f:
                runs[name] = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"{path}: cannot read results json ({e})") from None
        m = fit(gt, runs[name])
        rows[name] = m
        table.append([name, m["objects"], m["best_iou"], m["frac_iou_0.5"], m["frac_iou_0.75"],
                      m["precision"], m["recall"], m["area_ratio_median"],
                      m["iou_cut_to_gt_box"]])
    print(markdown_table(["run", "GT objects", "best IoU", "> 0.5", "> 0.75", "precision",
                          "recall", "area / GT (median)", "IoU cut to GT box"], table))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
    if args.figure:
        if not args.images:
            raise SystemExit("--figure needs --images")
        crop = tuple(int(v) for v in args.crop.split(",")) if args.crop else None
        figure(gt, runs, args.images, args.figure, image_index=args.image_index,
               score_thr=args.score_thr, crop=crop)


if __name__ == "__main__":
    main()
