"""Seed spread of the box/full comparison: quality.py's recipe, several seeds per variant.

    python benchmarks/seeds.py --dataset droplets --variants full,meanfield --seeds 0,1,2 \\
        --iters 900 --scale 512 --tag _s512crop --parallel 6 --set "data.train_crop=[256,320]"

One run of quality.py's schedule per (variant, seed), with ``train.seed=<seed>`` added. Seed 0
lives where quality.py puts it (``benchmarks/out/quality/<dataset><tag>/<variant>``), seed ``s``
in ``<dataset><tag>_seed<s>``, so runs made by quality.py are reused and every run resumes if
interrupted. Prints the per-seed table and, per variant, the mean and standard deviation of mask
AP and of the ratio to ``full`` of the same seed; writes
``benchmarks/out/seeds_<dataset><tag>.json``.

``--teacher`` also evaluates each box run's EMA teacher (``model_final_teacher.pth``, which
``discobox train`` writes beside the student; for runs made before it did, it is taken from
the last checkpoint) and reports it as variant ``<variant>@teacher``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from common import OUT, markdown_table
from quality import VARIANTS, mean_sec_per_iter, parse_variants, run_jobs, train_command

from discobox.checkpoint.io import load_checkpoint_file, save_release


def run_dir(name: str, seed: int, variant: str) -> Path:
    return OUT / "quality" / (name if seed == 0 else f"{name}_seed{seed}") / variant


def teacher_metrics(run: Path) -> dict | None:
    """Metrics of the run's EMA teacher (evaluated once, cached in ``metrics_teacher.json``)."""
    out = run / "metrics_teacher.json"
    if out.is_file():
        return json.loads(out.read_text())
    weights = run / "model_final_teacher.pth"
    if not weights.is_file():
        last = run / "last_checkpoint"
        if not last.is_file():
            return None
        ckpt = load_checkpoint_file(run / last.read_text().strip())
        if not (ckpt.get("teacher") or {}).get("active"):
            return None
        save_release(ckpt["teacher"]["model"], ckpt["config"], ckpt["iteration"], weights)
    subprocess.run([sys.executable, "-m", "discobox", "test", "--weights", str(weights),
                    "--metrics-out", str(out)], check=True)
    return json.loads(out.read_text())


def summarize(results: dict[str, dict[int, dict]]) -> tuple[list[list], list[list]]:
    """Per-seed rows and per-variant summary rows (mean, sd over seeds; ratio to full per seed)."""
    full = results.get("full", {})
    per_seed, summary = [], []
    for variant, by_seed in results.items():
        aps, ratios = [], []
        for seed, m in sorted(by_seed.items()):
            ratio = (m["segm/AP"] / full[seed]["segm/AP"]
                     if seed in full and full[seed]["segm/AP"] else float("nan"))
            per_seed.append([variant, seed, m["segm/AP"], m["segm/AP50"], m["segm/AP75"],
                             m["bbox/AP"], ratio, m["sec_per_iter"]])
            aps.append(m["segm/AP"])
            if ratio == ratio:
                ratios.append(ratio)

        def sd(v: list[float]) -> float:
            return statistics.stdev(v) if len(v) > 1 else float("nan")

        summary.append([variant, len(aps), statistics.fmean(aps), sd(aps), min(aps), max(aps),
                        statistics.fmean(ratios) if ratios else float("nan"), sd(ratios)])
    return per_seed, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="droplets")
    ap.add_argument("--variants", default="full,meanfield")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--scale", type=int, default=320, help="short side (long side = 2x)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--recipe", default="discobox_r18_fpn_cpu")
    ap.add_argument("--tag", default="", help="suffix of the output folders")
    ap.add_argument("--parallel", type=int, default=1, help="runs at once (threads split)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra config overrides for every run")
    ap.add_argument("--teacher", action="store_true",
                    help="also evaluate each run's EMA teacher (variant '<variant>@teacher')")
    args = ap.parse_args()
    variants = parse_variants(args.variants)
    seeds = [int(s) for s in args.seeds.split(",")]
    name = Path(args.dataset).name + args.tag
    jobs = []
    for seed in seeds:  # seed-major: an interrupted sweep leaves whole seeds done
        for v in variants:
            run = run_dir(name, seed, v)
            if not (run / "metrics_final.json").is_file():
                jobs.append((run, train_command(args.recipe, run, args.dataset, args.iters,
                                                args.scale, args.batch,
                                                [*VARIANTS[v], *args.set, f"train.seed={seed}"])))
    run_jobs(jobs, args.parallel)
    results: dict[str, dict[int, dict]] = {}
    for v in variants:
        for seed in seeds:
            run = run_dir(name, seed, v)
            m = json.loads((run / "metrics_final.json").read_text())
            results.setdefault(v, {})[seed] = {**m, "sec_per_iter": mean_sec_per_iter(run)}
            t = teacher_metrics(run) if args.teacher else None
            if t is not None:
                results.setdefault(f"{v}@teacher", {})[seed] = {**t, "sec_per_iter": float("nan")}
    per_seed, summary = summarize(results)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"seeds_{name}.json").write_text(json.dumps(
        {"args": vars(args), "results": results}, indent=2))
    print(markdown_table(["variant", "seed", "mask AP", "AP50", "AP75", "box AP",
                          "mask AP / full", "s/iter"], per_seed))
    print()
    print(markdown_table(["variant", "seeds", "mask AP mean", "sd", "min", "max",
                          "ratio mean", "ratio sd"], summary))


if __name__ == "__main__":
    main()
