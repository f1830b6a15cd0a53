"""Box vs full supervision on one data set: one training run per variant, same recipe/schedule.

    python benchmarks/quality.py --dataset droplets --iters 300

Variants (docs/method.md §4): ``full`` (dice on GT masks, the upper bound), ``proj``
(projection loss only, no teacher), ``faithful`` (official hard colour-vote CRF teacher),
``meanfield`` (soft mean-field CRF teacher), ``pairwise`` (projection + BoxInst pairwise term),
``corr`` (faithful plus the correspondence branch), ``corr_sinkhorn`` (``corr`` with Sinkhorn +
InfoNCE), and the combinations listed in :data:`VARIANTS`. Each run lives in
``benchmarks/out/quality/<dataset>/<variant>`` and resumes if interrupted; finished runs are
reused. Writes ``benchmarks/out/quality_<dataset>.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import OUT, dataset_overrides, markdown_table, one_class_copy

VARIANTS = {
    "full": ["loss.mode=full", "crf.mode=none"],
    "proj": ["loss.mode=box", "crf.mode=none"],
    "faithful": ["loss.mode=box", "crf.mode=faithful"],
    "meanfield": ["loss.mode=box", "crf.mode=meanfield"],
    "pairwise": ["loss.mode=box", "crf.mode=none", "loss.pairwise=true"],
    # + a dice on the filled box masks whose weight falls from 1 to 0 over the first 300
    # iterations (loss.box_warmup_iters)
    "meanfield_boxwarm": ["loss.mode=box", "crf.mode=meanfield", "loss.box_warmup_iters=300"],
    # + a floor on the sigmoid's gradient in the box-mode mask losses (loss.sigmoid_grad_floor)
    "meanfield_boxwarm_floor": ["loss.mode=box", "crf.mode=meanfield",
                                "loss.box_warmup_iters=300", "loss.sigmoid_grad_floor=0.01"],
    # + teacher.momentum 0.99 (a 100-iteration EMA): the CPU recipe's box-mode settings
    "meanfield_boxwarm_floor_m99": ["loss.mode=box", "crf.mode=meanfield",
                                    "loss.box_warmup_iters=300", "loss.sigmoid_grad_floor=0.01",
                                    "teacher.momentum=0.99"],
    # the official teacher at the CPU recipe's settings
    "faithful_boxwarm_floor_m99": ["loss.mode=box", "crf.mode=faithful",
                                   "loss.box_warmup_iters=300", "loss.sigmoid_grad_floor=0.01",
                                   "teacher.momentum=0.99"],
    # the CPU recipe + the BoxInst pairwise colour term, and the BoxInst-like pair without a
    # teacher (projection + pairwise, the same warm-up and floor)
    "meanfield_boxwarm_floor_m99_pw": ["loss.mode=box", "crf.mode=meanfield",
                                       "loss.box_warmup_iters=300",
                                       "loss.sigmoid_grad_floor=0.01", "teacher.momentum=0.99",
                                       "loss.pairwise=true"],
    "pairwise_boxwarm_floor": ["loss.mode=box", "crf.mode=none", "loss.box_warmup_iters=300",
                               "loss.sigmoid_grad_floor=0.01", "loss.pairwise=true"],
    # projection loss only, with the warm-up (and the floor)
    "proj_boxwarm": ["loss.mode=box", "crf.mode=none", "loss.box_warmup_iters=300"],
    "proj_boxwarm_floor": ["loss.mode=box", "crf.mode=none", "loss.box_warmup_iters=300",
                           "loss.sigmoid_grad_floor=0.01"],
    # meanfield teacher with a 5x5 window and a sharper colour kernel, or a 3x3 window
    "meanfield_k5t15": ["loss.mode=box", "crf.mode=meanfield", "crf.mf_kernel_size=5",
                        "crf.theta_color=0.15"],
    "meanfield_k3": ["loss.mode=box", "crf.mode=meanfield", "crf.mf_kernel_size=3"],
    # faithful + the correspondence branch (docs/method.md §5); small objects enter the bank
    # at CPU scales
    "corr": ["loss.mode=box", "crf.mode=faithful", "corr.enabled=true", "corr.min_box_size=4"],
    # the same with the paper-intent solver and loss (§5.4-5.5: Sinkhorn + Hough, InfoNCE)
    "corr_sinkhorn": ["loss.mode=box", "crf.mode=faithful", "corr.enabled=true",
                      "corr.min_box_size=4", "corr.solver=sinkhorn", "corr.loss=infonce"],
}


def schedule(iters: int, scale: int, batch: int) -> list[str]:
    return [
        f"solver.max_iter={iters}",
        f"solver.steps=[{int(iters * 0.8)},{int(iters * 0.93)}]",
        f"solver.warmup_iters={max(1, iters // 6)}",
        f"teacher.start_iter={iters // 3}",
        # variants say what they add: the CPU recipe's box warm-up, sigmoid-gradient floor and
        # teacher momentum are the meanfield_boxwarm_floor_m99 variant
        "loss.box_warmup_iters=0",
        "loss.sigmoid_grad_floor=0",
        "teacher.momentum=0.999",
        f"data.train_scales=[[{2 * scale},{scale}]]",
        f"data.test_scale=[{2 * scale},{scale}]",
        f"data.batch_size={batch}",
        "data.num_workers=1",
        f"train.checkpoint_period={max(50, iters // 6)}",
        "train.eval_period=0",
        "train.tensorboard=false",
    ]


def parse_variants(text: str) -> list[str]:
    """The comma-separated ``--variants`` names; exits with the known list on an unknown one."""
    variants = text.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {sorted(VARIANTS)}")
    return variants


def train_command(recipe: str, run: Path, dataset: str, iters: int, scale: int, batch: int,
                  overrides: list[str]) -> list[str]:
    """``discobox train`` of one run of this benchmark's recipe (resumes an interrupted run)."""
    return [sys.executable, "-m", "discobox", "train", recipe, "--output-dir", str(run),
            "--resume", *dataset_overrides(dataset), *schedule(iters, scale, batch), *overrides]


def run_jobs(jobs: list[tuple[Path, list[str]]], parallel: int) -> None:
    """Run ``(run_dir, command)`` jobs, ``parallel`` at a time; the CPU threads are split
    between them. Each job logs to ``run_dir/stdout.txt``. A failed job does not stop the
    others (a killed seed must not cost its siblings an hour of training): the failures are
    reported, and the exit is non-zero, once every job has ended."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // parallel))}
    todo = list(jobs)
    running: list[tuple[Path, subprocess.Popen]] = []
    failed: list[Path] = []
    while todo or running:
        while todo and len(running) < parallel:
            run, cmd = todo.pop(0)
            run.mkdir(parents=True, exist_ok=True)
            print("$", " ".join(cmd), flush=True)
            log = open(run / "stdout.txt", "a")
            running.append((run, subprocess.Popen(cmd, env=env, stdout=log, stderr=log)))
        time.sleep(5)
        for item in list(running):
            if item[1].poll() is not None:
                running.remove(item)
                if item[1].returncode:
                    failed.append(item[0])
                    print(f"{item[0]} failed (exit {item[1].returncode}): see "
                          f"{item[0] / 'stdout.txt'}; the other runs go on", flush=True)
    if failed:
        raise SystemExit(f"{len(failed)} run(s) failed: "
                         + ", ".join(str(run / "stdout.txt") for run in failed))


def mean_sec_per_iter(run: Path) -> float:
    vals = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "train/sec_per_iter" in rec:
            vals.append(rec["train/sec_per_iter"])
    vals = vals[1:] or vals  # the first window includes start-up
    return sum(vals) / max(1, len(vals))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="droplets")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--scale", type=int, default=320, help="short side (long side = 2x)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--variants", default="full,proj,faithful,meanfield")
    ap.add_argument("--recipe", default="discobox_r18_fpn_cpu")
    ap.add_argument("--tag", default="", help="suffix of the output folder")
    ap.add_argument("--parallel", type=int, default=1, help="runs at once (threads split)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra config overrides for every variant")
    ap.add_argument("--synthetic", action="store_true",
                    help="use the demo's synthetic set (generated into benchmarks/out/synthetic)")
    ap.add_argument("--one-class", action="store_true",
                    help="train and evaluate class-agnostic: every box in one category "
                         "(a copy in benchmarks/out/one_class/<dataset>_1class)")
    args = ap.parse_args()
    variants = parse_variants(args.variants)
    if args.one_class:
        args.dataset = str(one_class_copy(args.dataset))
    if args.synthetic:
        from discobox.data.synthetic import make_synthetic_coco

        root = OUT / "synthetic"
        if not (root / "val.json").is_file():
            make_synthetic_coco(root, num_train=400, num_val=40, image_size=(160, 160), seed=0,
                                max_objects=4)
        args.dataset = str(root)
    name = Path(args.dataset).name + args.tag
    base = OUT / "quality" / name
    todo = [v for v in variants if not (base / v / "metrics_final.json").is_file()]
    run_jobs([(base / v, train_command(args.recipe, base / v, args.dataset, args.iters,
                                       args.scale, args.batch, VARIANTS[v] + args.set))
              for v in todo], args.parallel)
    results = {}
    for variant in variants:
        run = base / variant
        m = json.loads((run / "metrics_final.json").read_text())
        results[variant] = {**m, "sec_per_iter": mean_sec_per_iter(run)}
    full_ap = results.get("full", {}).get("segm/AP")
    rows = []
    for v, m in results.items():
        ratio = m["segm/AP"] / full_ap if full_ap else float("nan")
        rows.append([v, m["segm/AP"], m["segm/AP50"], m["segm/AP75"], m["bbox/AP"],
                     ratio, m["sec_per_iter"]])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"quality_{name}.json").write_text(json.dumps(
        {"args": vars(args), "results": results}, indent=2))
    print(markdown_table(["variant", "mask AP", "AP50", "AP75", "box AP", "mask AP / full",
                          "s/iter"], rows))


if __name__ == "__main__":
    main()
