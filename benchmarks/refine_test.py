"""Test-time CRF refinement (``test.refine``, ours): mask AP of trained models with and without it.

    python benchmarks/refine_test.py --dataset droplets \\
        --runs meanfield=benchmarks/out/quality/droplets_s512crop_seed1/meanfield \\
        --settings none,k3,k5,k7,faithful --split train12 --set "test.tile=[256,320]"

Every (run, setting) is one ``discobox test`` of the run's ``model_final.pth`` with the
setting's overrides (``--set`` adds to all), cached in
``benchmarks/out/refine/<run>_<setting>_<split>.json``. ``--split val`` is the dataset's val
split; ``--split train12`` is 12 train images (every 6th by file name, plus one of video2 on
droplets), for choosing a setting without looking at val: the models saw these images' boxes,
never their masks. Prints segm AP / AP50 / AP75 per run and setting.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import OUT, markdown_table, shared_data

SETTINGS: dict[str, list[str]] = {
    "none": ["test.refine=none"],  # explicit: runs of the CPU recipe refine by default
    "none_t5": ["test.refine=none", "test.mask_thr=0.5"],
    "k3_t5": ["test.refine=meanfield", "test.refine_kernel_size=3", "test.mask_thr=0.5"],
    "k3_t6": ["test.refine=meanfield", "test.refine_kernel_size=3", "test.mask_thr=0.6"],
    "faithful": ["test.refine=faithful"],
    "k3": ["test.refine=meanfield", "test.refine_kernel_size=3"],
    "k3_m2": ["test.refine=meanfield", "test.refine_kernel_size=3", "test.refine_margin=2"],
    "k3_m0": ["test.refine=meanfield", "test.refine_kernel_size=3", "test.refine_margin=0"],
    "k5": ["test.refine=meanfield", "test.refine_kernel_size=5"],
    "k7": ["test.refine=meanfield", "test.refine_kernel_size=7"],
    "k5_t15": ["test.refine=meanfield", "test.refine_kernel_size=5", "crf.theta_color=0.15"],
}


def train_subset(root: Path, out: Path) -> Path:
    """12 train images: every 6th by file name (11) and, where the file exists, video2image100."""
    if out.is_file():
        return out
    d = json.loads((root / "train.json").read_text())
    ims = sorted(d["images"], key=lambda i: i["file_name"])
    sel = ims[::6][:11] + [i for i in ims if i["file_name"] == "video2image100.jpg"]
    ids = {i["id"] for i in sel}
    d["images"] = sel
    d["annotations"] = [a for a in d["annotations"] if a["image_id"] in ids]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(d))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dataset", default="droplets")
    ap.add_argument("--runs", nargs="+", required=True, help="name=run_dir (holds model_final.pth)")
    ap.add_argument("--settings", default="none,k3")
    ap.add_argument("--split", default="val", choices=("val", "train12"))
    ap.add_argument("--set", nargs="*", default=[], help="overrides for every test")
    args = ap.parse_args()
    root = shared_data() / args.dataset
    out_dir = OUT / "refine"
    out_dir.mkdir(parents=True, exist_ok=True)
    split = []
    if args.split == "train12":
        sub = train_subset(root, out_dir / f"{args.dataset}_train12.json")
        split = [f"data.val_json={sub}", f"data.val_images={root / 'images'}"]
    settings = args.settings.split(",")
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; known: {sorted(SETTINGS)}")
    rows = []
    for spec in args.runs:
        name, run = spec.split("=", 1)
        for s in settings:
            metrics = out_dir / f"{name}_{s}_{args.split}.json"
            if not metrics.is_file():
                subprocess.run([sys.executable, "-m", "discobox", "test", "--weights",
                                str(Path(run) / "model_final.pth"), *args.set, *split,
                                *SETTINGS[s], "--metrics-out", str(metrics)], check=True)
            m = json.loads(metrics.read_text())
            rows.append([name, s, m["segm/AP"], m["segm/AP50"], m["segm/AP75"], m["bbox/AP"]])
    print(markdown_table(["run", "refine", "mask AP", "AP50", "AP75", "box AP"], rows))


if __name__ == "__main__":
    main()
