"""How well does each CRF mode refine a trained student's masks? (docs/method.md §4.3-4.4)

    python benchmarks/crf_refine.py --weights benchmarks/out/quality/synthetic/proj/model_final.pth

For every ground-truth box of the first ``--images`` val images, the student's soft mask of the
box's cell (the same cell selection as box-conditioned inference, docs/method.md §8.1) at 1/4
resolution is refined by each CRF setting (the run's ``crf.*``, one key changed per row) inside
the box, and the mean IoU of ``Y > 0.5`` with the ground-truth mask (area-downsampled to 1/4
resolution) is reported beside the student itself and the filled box, with the CRF's CPU seconds
(1 thread). This is how the mean-field defaults were chosen (BENCHMARKS.md "Mean-field tuning");
it needs no training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import OUT, markdown_table

from discobox.checkpoint.load import load_model
from discobox.data.images import read_image
from discobox.data.loader import collate
from discobox.data.segmentation import decode_segmentation
from discobox.data.transforms import build_transforms
from discobox.inference.box_conditioned import BoxConditionedInference
from discobox.modeling.crf.params import CRFParams
from discobox.modeling.crf.pseudo_labels import crf_pseudo_labels
from discobox.modeling.solov2.head import dynamic_mask_logits
from discobox.structures import Instances

# (row name, mode, CRFParams overrides); the meanfield rows vary one thing at a time.
SETTINGS: list[tuple[str, str, dict]] = [
    ("faithful (official)", "faithful", {}),
    ("meanfield k3 clamp0.05 (old default)", "meanfield", {"mf_kernel_size": 3,
                                                           "prob_clamp": 0.05}),
    ("meanfield k3 clamp0.2", "meanfield", {"mf_kernel_size": 3}),
    ("meanfield k5 clamp0.2", "meanfield", {"mf_kernel_size": 5}),
    ("meanfield k5 dil2 clamp0.2", "meanfield", {"mf_kernel_size": 5, "mf_dilation": 2}),
    ("meanfield k7 clamp0.05", "meanfield", {"prob_clamp": 0.05}),
    ("meanfield k7 clamp0.2 (default)", "meanfield", {}),
    ("meanfield k7 clamp0.3", "meanfield", {"prob_clamp": 0.3}),
    ("meanfield k7 w_color 0.5", "meanfield", {"w_color": 0.5, "w_spatial": 0.125}),
    ("meanfield k7 w_color 2", "meanfield", {"w_color": 2.0, "w_spatial": 0.5}),
    ("meanfield k7 theta_color 1", "meanfield", {"theta_color": 1.0}),
    # wider and longer propagation, checked on droplets (BENCHMARKS.md "Droplets on crops")
    ("meanfield k7 dil2", "meanfield", {"mf_dilation": 2}),
    ("meanfield k9", "meanfield", {"mf_kernel_size": 9}),
    ("meanfield k11", "meanfield", {"mf_kernel_size": 11}),
    ("meanfield k7 20 iterations", "meanfield", {"iters": 20}),
    ("meanfield k7 theta_color 0.25", "meanfield", {"theta_color": 0.25}),
    ("meanfield k7 w_spatial 1", "meanfield", {"w_spatial": 1.0}),
    ("meanfield k7 clamp0.4", "meanfield", {"prob_clamp": 0.4}),
    ("meanfield k7 theta_color 0.15", "meanfield", {"theta_color": 0.15}),
    ("meanfield k5 theta_color 0.25", "meanfield", {"mf_kernel_size": 5, "theta_color": 0.25}),
    ("meanfield k5 theta_color 0.15", "meanfield", {"mf_kernel_size": 5, "theta_color": 0.15}),
    ("meanfield k9 theta_color 0.25", "meanfield", {"mf_kernel_size": 9, "theta_color": 0.25}),
]


def student_masks(model, cfg, root: Path, n_images: int, split: str = "val"):
    """Yield ``(soft [N, h, w], box masks, gt masks, quarter image)`` per image of ``split``.

    The image goes through the project's own test pipeline (``read_image``, the test
    ``Resize``, ``collate``), which also resizes the GT boxes and masks (nearest, as in training).
    """
    coco = json.loads((root / f"{split}.json").read_text())
    anns: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        if not a.get("iscrowd", 0) and "segmentation" in a:
            anns.setdefault(a["image_id"], []).append(a)
    infer = BoxConditionedInference(scale_ranges=cfg.model.scale_ranges)
    transforms = build_transforms(train=False, scales=[cfg.data.test_scale])
    for im in [i for i in coco["images"] if i["id"] in anns][:n_images]:
        A = anns[im["id"]]
        img = read_image(root / "images" / im["file_name"])
        H, W = img.shape[:2]
        gt = Instances(
            boxes=torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                 a["bbox"][1] + a["bbox"][3]] for a in A], dtype=torch.float32),
            labels=torch.zeros(len(A), dtype=torch.int64),
            masks=torch.from_numpy(np.stack([decode_segmentation(a["segmentation"], H, W)
                                             for a in A])),
        )
        batch = collate([transforms({"image": img, "instances": gt, "orig_size": (H, W),
                                     "file_name": im["file_name"]})])
        (h, w), (ph, pw) = batch.image_sizes[0], batch.images.shape[-2:]
        with torch.no_grad():
            out = model(batch.images, batch.image_sizes)
        mf = out.mask_feat[0].float()
        qh, qw = mf.shape[-2:]
        boxes = batch.targets[0].boxes
        grids = [k.shape[-1] for k in out.kernels]
        level, rows, cols = infer.select_cells(boxes, padded_size=(ph, pw), num_grids=grids)
        kern = torch.stack([out.kernels[int(lv)][0].flatten(1)[:, int(r) * grids[int(lv)] + int(c)]
                            for lv, r, c in zip(level, rows, cols)])
        soft = dynamic_mask_logits(kern, mf).sigmoid()
        box_q = torch.zeros(len(A), qh, qw)
        for k, b in enumerate((boxes / 4).tolist()):
            box_q[k, int(b[1]): int(np.ceil(b[3])), int(b[0]): int(np.ceil(b[2]))] = 1
        masks = torch.zeros(len(A), ph, pw)
        masks[:, :h, :w] = batch.targets[0].masks.float()
        gt_q = F.avg_pool2d(masks, 4) > 0.5
        image_q = F.interpolate(out.images, size=(qh, qw), mode="bilinear", align_corners=True)[0]
        yield soft, box_q, gt_q, image_q


def _iou(pred: torch.Tensor, gt: torch.Tensor) -> list[float]:
    p = pred > 0.5
    return ((p & gt).flatten(1).sum(1) / (p | gt).flatten(1).sum(1).clamp(min=1)).tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--dataset", default=str(OUT / "synthetic"),
                    help="folder with val.json + images/ (default: the quality benchmark's "
                         "synthetic set)")
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--split", default="val",
                    help="annotation file <split>.json of --dataset (train: tune off the val set)")
    ap.add_argument("--out", type=Path, default=OUT / "crf_refine.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, cfg = load_model(args.weights)
    model.eval()
    base = cfg.crf
    scores: dict[str, list[float]] = {"student (no CRF)": [], "filled box": []}
    seconds: dict[str, float] = {}
    objects = student_masks(model, cfg, Path(args.dataset), args.images, args.split)
    for soft, box_q, gt, image_q in objects:
        scores["student (no CRF)"] += _iou(soft * box_q, gt)
        scores["filled box"] += _iou(box_q, gt)
        for name, mode, over in SETTINGS:
            params = dataclasses.replace(base, **over) if mode == "meanfield" else CRFParams()
            t0 = time.perf_counter()
            y = crf_pseudo_labels(soft, box_q, image_q, mode=mode, params=params)
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
            scores.setdefault(name, []).extend(_iou(y, gt))
    n = len(scores["filled box"])
    rows = [[name, float(np.mean(v)), seconds.get(name, float("nan"))]
            for name, v in scores.items()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"weights": args.weights, "dataset": args.dataset,
                                    "objects": n, "rows": rows}, indent=2))
    print(f"{n} objects of {args.dataset}, student {args.weights}")
    print(markdown_table(["refiner", "mean IoU", "CPU s (all objects)"], rows))


if __name__ == "__main__":
    main()
