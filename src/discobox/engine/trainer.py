"""The training loop (METHOD.md §4.6, §6), top to bottom.

Stateful extras live outside the model and are called from the loop: the EMA teacher
(``teacher.update``), the loss gates (``gates.update``), evaluation and checkpoints. Everything
needed to continue bit-for-bit is checkpointed atomically, so a killed run resumes where it
stopped (``--resume``).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..checkpoint.io import (
    atomic_write_text,
    find_last_checkpoint,
    load_checkpoint_file,
    rng_state,
    save_checkpoint,
    save_release,
    set_rng_state,
)
from ..config import Config, ConfigError, config_from_dict
from ..data.build import build_train_dataset, build_train_loader_from_config
from ..modeling.boxsup.teacher import EMATeacher, LossGates, box_warmup, ts_ramp
from ..modeling.build import build_criterion, build_model, build_object_bank
from . import distributed as du
from .log import MetricWriter, setup_logger
from .tester import evaluate

logger = logging.getLogger("discobox")


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss term is NaN or infinite; the message names the iteration and terms."""


@dataclass
class Schedule:
    max_iter: int
    steps: tuple[int, ...]  # iterations at which lr *= gamma
    iters_per_epoch: int


def make_schedule(cfg: Config, iters_per_epoch: int) -> Schedule:
    """Iteration-based schedule from the epoch-based recipe, or ``solver.max_iter`` directly."""
    s = cfg.solver
    if s.max_iter is not None:
        return Schedule(s.max_iter, tuple(s.steps), iters_per_epoch)
    return Schedule(
        s.epochs * iters_per_epoch, tuple(e * iters_per_epoch for e in s.steps), iters_per_epoch
    )


def lr_factor(iteration: int, *, warmup_iters: int, warmup_ratio: float,
              steps: tuple[int, ...], gamma: float) -> float:
    """Linear warm-up (mmcv: ``1 - (1 - i/W)(1 - r)``) times step decay (METHOD.md §6)."""
    factor = gamma ** sum(iteration >= s for s in steps)
    if iteration < warmup_iters:
        factor *= 1.0 - (1.0 - iteration / warmup_iters) * (1.0 - warmup_ratio)
    return factor


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.SGD:
    """SGD with weight decay on every trainable parameter (METHOD.md §6)."""
    params = [p for p in model.parameters() if p.requires_grad]
    s = cfg.solver
    return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _warn_random_init_frozen(cfg: Config) -> None:
    """Frozen stages and frozen BN statistics (§2.2) assume pretrained weights: from random init
    they freeze random filters and make every BatchNorm the identity."""
    b = cfg.model.backbone
    if b.weights is None and (b.frozen_stages >= 0 or b.norm_eval):
        logger.warning(
            "model.backbone.weights is not set: training from random init with frozen stages "
            "(%d) and frozen BatchNorm statistics (%s), the settings meant for pretrained "
            "weights. From scratch, model.backbone.frozen_stages=-1 "
            "model.backbone.norm_eval=false trains every stage and BN (lower loss at the same "
            "iteration in BENCHMARKS.md).", b.frozen_stages, b.norm_eval)


def _warn_crop_without_tiles(cfg: Config) -> None:
    """SOLOv2's grid is relative to the input (§2): a model trained on crops evaluated on whole,
    larger images loses most of its AP (droplets: 74.8 -> 2.1 mask AP, BENCHMARKS.md)."""
    crop = cfg.data.train_crop
    if crop is None or cfg.test.tile is not None:
        return
    long_side, short_side = max(cfg.data.test_scale), min(cfg.data.test_scale)
    if short_side > min(crop) or long_side > max(crop):
        logger.warning(
            "data.train_crop=%s but test.tile is not set: evaluation and prediction run on whole "
            "images of up to %dx%d, and SOLOv2's grid is relative to its input, so a model "
            "trained on crops loses most of its AP there (BENCHMARKS.md, droplets). Set "
            "test.tile=[%d,%d].", list(crop), short_side, long_side, crop[0], crop[1])


def train(cfg: Config, *, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg``; returns the final metrics (and ``output_dir``, ``iteration``)."""
    device = du.resolve_device(cfg.train.device)
    du.init_distributed(device)
    rank, world = du.get_rank(), du.get_world_size()
    out_dir = Path(cfg.train.output_dir)
    setup_logger(out_dir, rank=rank)

    # Resume: the checkpoint's config wins for everything but the output folder.
    ckpt = None
    if resume:
        last = find_last_checkpoint(out_dir)
        if last is None:
            logger.warning("--resume: no checkpoint in %s, starting from scratch", out_dir)
        else:
            ckpt = load_checkpoint_file(last)
            logger.info("resuming from %s (iteration %d)", last, ckpt["iteration"])
    seed_everything(cfg.train.seed + rank)

    dataset = build_train_dataset(cfg)
    _warn_random_init_frozen(cfg)
    _warn_crop_without_tiles(cfg)
    model = build_model(cfg).to(device)
    for key in ("ts_ramp_iters", "box_warmup_iters", "box_warmup_weight"):
        if getattr(cfg.loss, key) < 0:
            raise ConfigError(f"loss.{key} must be >= 0, got {getattr(cfg.loss, key)}")
    criterion = build_criterion(cfg)
    bank = build_object_bank(cfg)  # lives outside the model, updated below (§5.2)
    if bank is not None:
        bank = bank.to(device)
    optimizer = build_optimizer(cfg, model)
    iters_per_epoch = max(1, len(dataset) // (cfg.data.batch_size * world))
    sched = make_schedule(cfg, iters_per_epoch)
    s = cfg.solver
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda i: lr_factor(i, warmup_iters=s.warmup_iters, warmup_ratio=s.warmup_ratio,
                            steps=sched.steps, gamma=s.gamma),
    )
    use_scaler = device.type == "cuda" and s.amp == "fp16"
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler,
                                  init_scale=s.loss_scale if s.loss_scale > 0 else 2.0**16)
    box_mode = cfg.loss.mode == "box"
    teacher = None
    if box_mode and cfg.teacher.enabled and cfg.crf.mode != "none":
        teacher = EMATeacher(student=model, momentum=cfg.teacher.momentum,
                             start_iter=cfg.teacher.start_iter, warmup=cfg.teacher.warmup)
    g = cfg.gates
    gates = LossGates(init=g.init, momentum=g.momentum, ts_thresh=g.ts_thresh,
                      corr_thresh=g.corr_thresh, enabled=g.enabled)

    start_iter = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        if teacher is not None and ckpt.get("teacher") is not None:
            teacher.load_state_dict(ckpt["teacher"])
        gates.load_state_dict(ckpt["gates"])
        if bank is not None and ckpt.get("object_bank") is not None:
            bank.load_state_dict(ckpt["object_bank"])
        start_iter = int(ckpt["iteration"])
        rng = ckpt.get("rng", [])
        if rank < len(rng):
            set_rng_state(rng[rank])

    if du.is_main_process():
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cfg.to_yaml(), out_dir / "config.yaml")
    train_model: torch.nn.Module = model
    if world > 1:
        train_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    loader = build_train_loader_from_config(cfg, dataset, rank=rank, world_size=world,
                                            start_iter=start_iter)
    writer = MetricWriter(out_dir, enabled=du.is_main_process(),
                          tensorboard=cfg.train.tensorboard)

    def checkpoint(iteration: int) -> None:
        states = du.all_gather_objects(rng_state())
        if not du.is_main_process():
            return
        save_checkpoint(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "teacher": teacher.state_dict() if teacher is not None else None,
                "gates": gates.state_dict(),
                "object_bank": bank.state_dict() if bank is not None else None,
                "iteration": iteration,
                "rng": states,
                "config": cfg.to_dict(),
                "world_size": world,
            },
            out_dir,
            iteration,
            keep=cfg.train.keep_checkpoints,
        )

    logger.info("training %d iterations (%d per epoch, %d process(es), device %s)",
                sched.max_iter, iters_per_epoch, world, device)
    metrics: dict[str, Any] = {}
    bar = tqdm(total=sched.max_iter, initial=start_iter, disable=not du.is_main_process(),
               desc="train", dynamic_ncols=True)
    train_model.train()
    t_last = time.perf_counter()
    for it in range(start_iter, sched.max_iter):
        batch = next(loader).to(device, non_blocking=True)
        with du.amp_autocast(device, s.amp):
            out = train_model(batch.images, batch.image_sizes)
            teacher_out = None
            if teacher is not None and teacher.active:
                with torch.no_grad():
                    teacher_out = teacher.model(batch.images, batch.image_sizes)
        ts_scale = ts_ramp(it, cfg.loss.ts_ramp_iters)
        box_scale = box_warmup(it, cfg.loss.box_warmup_iters)
        losses = criterion(out, batch.targets, teacher_out=teacher_out,
                           ts_active=box_mode and gates.ts_open, image_sizes=batch.image_sizes,
                           bank=bank, corr_active=box_mode and gates.corr_open,
                           ts_scale=ts_scale, box_scale=box_scale)
        total = sum(losses.values())
        values = {k: float(v.detach()) for k, v in losses.items()}
        if not math.isfinite(float(total.detach())):
            terms = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
            raise NonFiniteLossError(f"non-finite loss at iteration {it + 1}: {terms}")

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        grad_norm = float("nan")
        if s.clip_grad is not None:
            scaler.unscale_(optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.grad is not None], s.clip_grad))
        scaler.step(optimizer)
        scaler.update(s.loss_scale if use_scaler and s.loss_scale > 0 else None)
        scheduler.step()

        if teacher is not None:
            teacher.update(model, it + 1)
        if bank is not None and criterion.corr_result is not None:
            bank.push(**criterion.corr_result.to_push)
        reduced = du.all_reduce_mean(values, device)
        if box_mode and "loss_proj" in reduced:
            gates.update(reduced["loss_proj"])

        step = it + 1
        if du.is_main_process():
            bar.update(1)
            bar.set_postfix({k.replace("loss_", ""): f"{v:.3f}" for k, v in reduced.items()})
        if step % cfg.train.log_period == 0 or step == sched.max_iter:
            now = time.perf_counter()
            record = {**reduced, "loss": sum(reduced.values()),
                      "lr": optimizer.param_groups[0]["lr"], "grad_norm": grad_norm,
                      "sec_per_iter": (now - t_last) / cfg.train.log_period,
                      "gate_avg": gates.avg, "teacher_on": float(teacher is not None
                                                                 and teacher.active)}
            if cfg.loss.ts_ramp_iters > 0:
                record["ts_scale"] = ts_scale
            if box_mode and cfg.loss.box_warmup_iters > 0:
                record["box_scale"] = box_scale
            if criterion.ts_object_fraction is not None:
                record["ts_object_fraction"] = criterion.ts_object_fraction
            t_last = now
            writer.write(step, record, prefix="train/")
        if step % cfg.train.checkpoint_period == 0 or step == sched.max_iter:
            checkpoint(step)
        if cfg.data.val_json and (
            (cfg.train.eval_period > 0 and step % cfg.train.eval_period == 0)
            or step == sched.max_iter
        ):
            metrics = evaluate(cfg, model, device=device)
            writer.write(step, metrics, prefix="val/")
            train_model.train()
    bar.close()
    writer.close()
    du.barrier()
    if du.is_main_process():
        save_release(model.state_dict(), cfg.to_dict(), sched.max_iter,
                     out_dir / "model_final.pth")
        if teacher is not None and teacher.active:
            # the EMA teacher in the same release format (`test --weights` takes either)
            save_release(teacher.model.state_dict(), cfg.to_dict(), sched.max_iter,
                         out_dir / "model_final_teacher.pth")
    if du.is_main_process() and metrics:
        import json

        atomic_write_text(json.dumps(metrics, indent=2), out_dir / "metrics_final.json")
    return {"output_dir": str(out_dir), "iteration": sched.max_iter, **metrics}


def config_of_checkpoint(ckpt: dict[str, Any]) -> Config | None:
    data = ckpt.get("config")
    return config_from_dict(data) if isinstance(data, dict) else None
