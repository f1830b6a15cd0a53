"""Prediction time with and without ``test.refine`` (BENCHMARKS.md "Test-time CRF refinement").

    python benchmarks/refine_time.py [--weights W] [--images 4] [--passes 2]

Times ``Predictor`` (tiled, as the droplets runs are evaluated) on the first ``--images`` val
images of droplets, one thread, the two settings alternating ``--passes`` times.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from common import OUT, shared_data

from discobox.data.images import read_image
from discobox.inference.predictor import Predictor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=str(OUT / "quality" / "droplets_s512crop_seed1" /
                                             "meanfield" / "model_final.pth"))
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--passes", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = shared_data() / "droplets"
    val = json.loads((root / "val.json").read_text())
    images = [read_image(root / "images" / i["file_name"]) for i in val["images"][: args.images]]
    for rep in range(args.passes):
        for refine in ("none", "meanfield"):
            predictor = Predictor.from_checkpoint(
                args.weights, device="cpu",
                overrides=["test.tile=[256,320]", f"test.refine={refine}"])
            start = time.perf_counter()
            n = sum(len(predictor(im)) for im in images)
            sec = (time.perf_counter() - start) / len(images)
            print(f"pass {rep} refine={refine}: {sec:.2f} s/image, {n} detections", flush=True)


if __name__ == "__main__":
    main()
