"""Speed and memory: SOLOv2 (R-50, R-18) beside torchvision's Mask R-CNN R-50 in the same run.

    python benchmarks/speed.py                    # all cases, CPU
    python benchmarks/speed.py --cases infer_solov2_r50,infer_maskrcnn_r50 --size 480 640

Every case runs in its own subprocess (clean peak-memory reading: ``VmHWM``), with random
weights (no download needed for timing) and fixed synthetic inputs. Cases:

- ``infer_*``: ms per image, batch 1, forward + post-processing, after 2 warm-up runs.
- ``train_*``: seconds per training step, batch 2 (SOLOv2 in box mode with the CRF teacher
  loss on, or fully supervised; Mask R-CNN with its own losses), 10 GT objects per image.
- ``train_solov2_r18_box_faithful``: the R-18 box step with ``crf.mode=faithful`` (the CPU
  recipe's own default is ``meanfield``).
- ``train_solov2_r18_box_corr[_sinkhorn]``: the R-18 box step with the correspondence branch
  (§5: bank retrieval, matching, contrastive loss, cross-image CRF term; objects of 3 classes
  and retrieval thresholds opened so every query gets ``max_retrieval`` partners from the bank
  the warm-up steps filled: a fully matched step), faithful or Sinkhorn + InfoNCE.
- ``crf_<mode>_<n>``: the CRF teacher cost (pseudo-labels of ``n`` objects of one image).
- ``scale_objects_<n>``: a SOLOv2 R-18 box-mode training step with ``n`` objects per image.
- ``scale_size_<s>``: the same step at short side ``s`` (long side ``s * 4 / 3``).

Writes ``benchmarks/out/speed_<device>.json`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch
from common import OUT, markdown_table

R50 = "discobox_r50_fpn_3x_coco"
R18 = "discobox_r18_fpn_cpu"


def _vmhwm_mb() -> float:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _solov2(recipe: str, device: torch.device, **over):
    from discobox.config import load_config
    from discobox.modeling.build import build_criterion, build_model, build_postprocessor

    cfg = load_config(recipe, {"solver.amp": "none", "model.num_classes": 80, **over})
    return cfg, build_model(cfg).to(device), build_criterion(cfg), build_postprocessor(cfg)


def _targets(n: int, h: int, w: int, batch: int, device: torch.device, seed: int = 0,
             num_classes: int = 80):
    """``n`` random boxes (and elliptic masks) per image, sizes 5-40% of the short side."""
    from discobox.structures import Instances

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        s = min(h, w) * (0.05 + 0.35 * torch.rand(n, 2, generator=g))
        c = torch.rand(n, 2, generator=g) * torch.tensor([w, h])
        boxes = torch.cat([c - s / 2, c + s / 2], 1)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w - 1)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h - 1)
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 2)
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        rx, ry = (boxes[:, 2] - boxes[:, 0]) / 2, (boxes[:, 3] - boxes[:, 1]) / 2
        masks = ((xx - cx[:, None, None]) / rx[:, None, None]) ** 2 + (
            (yy - cy[:, None, None]) / ry[:, None, None]) ** 2 <= 1
        out.append(Instances(boxes=boxes, labels=torch.randint(0, num_classes, (n,), generator=g),
                             masks=masks).to(device))
    return out


def _images(batch: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(batch, 3, h, w, generator=g) * 255).to(device)


def _time(fn, device, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / reps


def _pad32(x: int) -> int:
    return (x + 31) // 32 * 32


def run_case(name: str, h: int, w: int, device: torch.device, reps: int) -> dict:
    amp = device.type == "cuda"
    ctx = (lambda: torch.autocast("cuda", dtype=torch.float16)) if amp else (
        lambda: torch.autocast("cpu", enabled=False))
    if name.startswith("infer_solov2"):
        cfg, model, _, post = _solov2(R50 if name.endswith("r50") else R18, device)
        model.eval()
        x = _images(1, _pad32(h), _pad32(w), device)

        @torch.no_grad()
        def step():
            with ctx():
                out = model(x, [(h, w)])
            post(out, image_sizes=[(h, w)], orig_sizes=[(h, w)])
        sec = _time(step, device, 2, reps)
        return {"ms_per_image": sec * 1000}
    if name == "infer_maskrcnn_r50":
        from torchvision.models.detection import maskrcnn_resnet50_fpn

        model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=h,
                                      max_size=max(h, w)).to(device).eval()
        x = [_images(1, h, w, device)[0] / 255.0]

        @torch.no_grad()
        def step():
            with ctx():
                model(x)
        return {"ms_per_image": _time(step, device, 2, reps) * 1000}
    if name.startswith("train_solov2") or name.startswith("scale_"):
        recipe = R50 if "r50" in name else R18
        mode = "full" if name.endswith("_full") else "box"
        n = 10
        if name.startswith("scale_objects_"):
            n = int(name.rsplit("_", 1)[1])
        if name.startswith("scale_size_"):
            h = int(name.rsplit("_", 1)[1])
            w = h * 4 // 3
        over = {"loss.mode": mode}
        if name.endswith("_faithful"):
            over["crf.mode"] = "faithful"
        corr = "_corr" in name
        if corr:
            # thresholds opened so every same-class bank object is retrieved: the cost of a
            # fully matched step (max_retrieval objects per query), not of a rejected one
            over.update({"corr.enabled": True, "corr.min_box_size": 4,
                         "corr.fg_iou_thresh": -1.0, "corr.bg_iou_thresh": -1.0,
                         "corr.appear_thresh": -2.0, "corr.ratio_range": [0.0, 1e9]})
            if name.endswith("_sinkhorn"):
                over.update({"corr.solver": "sinkhorn", "corr.loss": "infonce"})
        from discobox.modeling.build import build_corr_branch, build_object_bank

        cfg, model, crit, _ = _solov2(recipe, device, **over)
        branch, bank = build_corr_branch(cfg), build_object_bank(cfg)
        bank = bank.to(device) if bank is not None else None
        model.train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        x = _images(2, _pad32(h), _pad32(w), device)
        tg = _targets(n, h, w, 2, device, num_classes=3 if corr else 80)
        scaler = torch.amp.GradScaler(device.type, enabled=amp)

        def step():
            with ctx():
                out = model(x, [(h, w)] * 2)
                with torch.no_grad():
                    teacher = model(x, [(h, w)] * 2) if mode == "box" else None
            res = None
            if corr and branch is not None and bank is not None and cfg.crf.mode != "none":
                res = branch(out, tg, bank=bank, teacher_out=teacher)
                last["corr"] = res
            losses, _ = crit(out, tg, teacher_out=teacher, ts_active=mode == "box",
                             image_sizes=[(h, w)] * 2,
                             extra_ts_terms=None if res is None else res.ts_terms)
            if res is not None:
                losses["loss_corr"] = res.loss_corr
            opt.zero_grad()
            scaler.scale(sum(losses.values())).backward()
            scaler.step(opt)
            scaler.update()
            if res is not None:
                bank.push(**res.to_push)
        last: dict = {}
        sec = _time(step, device, 3 if corr else 1, reps)
        res = {"sec_per_step": sec, "objects": n, "size": [h, w]}
        if "corr" in last:  # the branch really matched objects
            res["corr_stats"] = dict(last["corr"].stats)
        return res
    if name == "train_maskrcnn_r50":
        from torchvision.models.detection import maskrcnn_resnet50_fpn

        model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=h,
                                      max_size=max(h, w)).to(device).train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        x = list(_images(2, h, w, device) / 255.0)
        tg = [{"boxes": t.boxes, "labels": t.labels + 1, "masks": t.masks.to(torch.uint8)}
              for t in _targets(10, h, w, 2, device)]
        scaler = torch.amp.GradScaler(device.type, enabled=amp)

        def step():
            with ctx():
                losses = model(x, tg)
            opt.zero_grad()
            scaler.scale(sum(losses.values())).backward()
            scaler.step(opt)
            scaler.update()
        return {"sec_per_step": _time(step, device, 1, reps)}
    if name.startswith("crf_"):
        from discobox.modeling.crf.pseudo_labels import crf_pseudo_labels

        _, mode, n = name.split("_")
        n = int(n)
        hq, wq = _pad32(h) // 4, _pad32(w) // 4
        tg = _targets(n, hq, wq, 1, device)[0]
        boxes = torch.zeros(n, hq, wq, device=device)
        for i, (x0, y0, x1, y1) in enumerate(tg.boxes.round().long().tolist()):
            boxes[i, y0:y1, x0:x1] = 1
        probs = torch.rand(n, hq, wq, device=device)
        img = torch.randn(3, hq, wq, device=device)
        sec = _time(lambda: crf_pseudo_labels(probs, boxes, img, mode=mode), device, 1, reps)
        return {"ms_per_image": sec * 1000, "objects": n}
    raise SystemExit(f"unknown case {name}")


CASES = [
    "infer_solov2_r50", "infer_maskrcnn_r50", "infer_solov2_r18",
    "train_solov2_r50_box", "train_solov2_r50_full", "train_maskrcnn_r50",
    "train_solov2_r18_box", "train_solov2_r18_full", "train_solov2_r18_box_faithful",
    "train_solov2_r18_box_corr", "train_solov2_r18_box_corr_sinkhorn",
    "crf_faithful_10", "crf_meanfield_10", "crf_faithful_50", "crf_faithful_200",
    "scale_objects_1", "scale_objects_10", "scale_objects_50", "scale_objects_200",
    "scale_size_256", "scale_size_384", "scale_size_512",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)  # child process
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    h, w = args.size
    if args.case:
        res = run_case(args.case, h, w, device, args.reps)
        res["peak_rss_mb"] = _vmhwm_mb()
        if device.type == "cuda":
            res["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        print("RESULT " + json.dumps(res))
        return
    results = {}
    for case in args.cases.split(","):
        cmd = [sys.executable, __file__, "--case", case, "--size", str(h), str(w),
               "--device", args.device, "--reps", str(args.reps), "--threads",
               str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"{case}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        results[case] = json.loads(line[0][7:])
        print(case, results[case], flush=True)
    meta = {"size": [h, w], "device": args.device, "threads": args.threads, "reps": args.reps,
            "torch": torch.__version__, "cpu": platform.processor() or platform.machine()}
    if args.device.startswith("cuda"):
        meta["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"speed_{args.device.split(':')[0]}.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=2))
    print(report(meta, results))


def report(meta: dict, r: dict) -> str:
    def get(case, key):
        return r.get(case, {}).get(key, float("nan"))

    h, w = meta["size"]
    mr = get("infer_maskrcnn_r50", "ms_per_image")
    rows = [[c.replace("infer_", ""), get(c, "ms_per_image"), get(c, "ms_per_image") / mr,
             get(c, "peak_rss_mb")] for c in ("infer_solov2_r50", "infer_solov2_r18",
                                               "infer_maskrcnn_r50") if c in r]
    out = [f"Inference, {h}x{w}, batch 1 ({meta['device']}, {meta['threads']} threads)", "",
           markdown_table(["model", "ms/image", "vs Mask R-CNN", "peak RSS MB"], rows), ""]
    mt = get("train_maskrcnn_r50", "sec_per_step")
    rows = [[c.replace("train_", ""), get(c, "sec_per_step"), get(c, "sec_per_step") / mt,
             get(c, "peak_rss_mb")] for c in CASES if c.startswith("train_") and c in r]
    out += [f"Training step, {h}x{w}, batch 2, 10 objects per image", "",
            markdown_table(["model", "s/step", "vs Mask R-CNN", "peak RSS MB"], rows), ""]
    rows = [[c, get(c, "objects"), get(c, "ms_per_image")] for c in CASES
            if c.startswith("crf_") and c in r]
    out += ["CRF teacher (pseudo-labels of one image, 10 iterations)", "",
            markdown_table(["case", "objects", "ms"], rows), ""]
    rows = [[c, get(c, "objects"), "x".join(map(str, r[c].get("size", []))),
             get(c, "sec_per_step"), get(c, "peak_rss_mb")] for c in CASES
            if c.startswith("scale_") and c in r]
    out += ["Scaling (SOLOv2 R-18, box mode with CRF teacher, batch 2)", "",
            markdown_table(["case", "objects/image", "size", "s/step", "peak RSS MB"], rows)]
    return "\n".join(out)


if __name__ == "__main__":
    main()
