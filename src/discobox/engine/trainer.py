"""The training loop (docs/method.md §4.6, §6), top to bottom.

:func:`train` checks the output folder is writable, sets a run up (:func:`_setup`), restores
it on ``--resume`` from its newest readable checkpoint, with the config stored there
(:func:`resume_config`, :func:`_restore`), then loops: :func:`_train_step` (forward,
correspondence branch, criterion, backward, optimizer, teacher and bank updates),
:func:`_log_record`, :func:`_save_checkpoint`, evaluation. Stateful extras live outside the
model: the EMA teacher, the loss gates and the object bank. Everything needed to continue bit
for bit is checkpointed atomically, so a killed run resumes where it stopped; SIGINT and
SIGTERM save the iteration reached before stopping (:class:`TrainingInterrupted`).
"""

from __future__ import annotations

import json
import logging
import math
import random
import signal
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
    check_writable_dir,
    remove_stale_temps,
    rng_state,
    save_checkpoint,
    save_release,
    set_rng_state,
)
from ..config import Config
from ..data.build import (
    build_train_dataset,
    build_train_loader_from_config,
    resolve_dataset_defaults,
)
from ..errors import DiscoboxError
from ..modeling.boxsup.criterion import SOLOv2Criterion
from ..modeling.boxsup.teacher import EMATeacher, LossGates, box_warmup
from ..modeling.build import build_corr_branch, build_criterion, build_model, build_object_bank
from ..modeling.correspondence.branch import CorrespondenceBranch
from ..modeling.correspondence.object_bank import ObjectBank
from . import distributed as du
from .log import MetricWriter, setup_logger
from .recipe_warnings import warn_crop_without_tiles, warn_random_init_frozen
from .resume import StopSignals, TrainingInterrupted, env_rank, last_checkpoint, resume_config
from .schedule import Schedule, build_optimizer, lr_factor, make_schedule
from .tester import evaluate

logger = logging.getLogger("discobox")

_STOP = "_stop"  # the stop-signal flag's key in the per-step all-reduce


class NonFiniteLossError(DiscoboxError, FloatingPointError):
    """Raised when a loss term is NaN or infinite; the message names the iteration and terms."""


@dataclass
class _Run:
    """What one training run's loop works on (built by :func:`_setup`)."""

    cfg: Config
    device: torch.device
    model: torch.nn.Module  # the student; ``train_model`` is its DDP wrapper (or itself)
    train_model: torch.nn.Module
    criterion: SOLOv2Criterion
    branch: CorrespondenceBranch | None  # the correspondence branch (§5), with its bank
    bank: ObjectBank | None
    optimizer: torch.optim.SGD
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    teacher: EMATeacher | None
    gates: LossGates
    sched: Schedule


def train(cfg: Config, *, resume: bool = False,
          overrides: dict[str, Any] | list[str] | None = None) -> dict[str, Any]:
    """Train ``cfg``; returns the final metrics (and ``output_dir``, ``iteration``).

    ``train.output_dir`` is checked writable before any work. With ``resume``, the run continues
    from the newest readable checkpoint there (weights, optimizer, schedule, teacher, gates,
    object bank, RNG states; a broken newer one is skipped with a warning) and with the config
    stored in it: of ``cfg`` only ``train.output_dir`` is used, and only the keys in
    ``overrides`` (dotted keys to values, or ``KEY=VALUE`` strings as on the command line)
    change it, each logged as ``resume: KEY: OLD -> NEW``. Without a checkpoint the run starts
    from scratch with ``cfg``. SIGINT and SIGTERM finish the iteration in progress, write a
    checkpoint at it and raise :class:`TrainingInterrupted` (a second SIGINT aborts at once).

    Raises:
        OutputError: ``train.output_dir`` is not writable, or a checkpoint write failed.
        CheckpointError: ``resume`` found checkpoints, none of them readable.
        NonFiniteLossError: a loss term became NaN or infinite.
        TrainingInterrupted: SIGINT or SIGTERM, after the checkpoint is written.
    """
    out_dir = Path(cfg.train.output_dir)
    main_rank = env_rank() == 0
    removed = []
    if main_rank:
        check_writable_dir(out_dir)
        removed = remove_stale_temps(out_dir)
    setup_logger(out_dir, rank=env_rank())
    for p in removed:
        logger.info("removed %s (the temporary file of an interrupted checkpoint write)", p)
    ckpt = last_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        cfg = resume_config(ckpt["config"], out_dir, overrides)
    device = du.resolve_device(cfg.train.device)
    du.init_distributed(device)
    seed_everything(cfg.train.seed + du.get_rank())
    cfg = resolve_dataset_defaults(cfg)  # num_classes, class names and ids of the train json
    run, dataset = _setup(cfg, device)
    start_iter = _restore(run, ckpt) if ckpt is not None else 0
    if du.is_main_process():
        atomic_write_text(cfg.to_yaml(), out_dir / "config.yaml")
    if du.get_world_size() > 1:
        run.train_model = DistributedDataParallel(
            run.model, device_ids=[device.index] if device.type == "cuda" else None
        )
    loader = build_train_loader_from_config(cfg, dataset, rank=du.get_rank(),
                                            world_size=du.get_world_size(), start_iter=start_iter)
    writer = MetricWriter(out_dir, enabled=du.is_main_process(),
                          tensorboard=cfg.train.tensorboard)
    try:
        with StopSignals() as signals:
            metrics = _loop(run, loader, writer, start_iter, signals)
    finally:
        writer.close()
    du.barrier()
    if du.is_main_process():
        _save_final(run, metrics)
    return {"output_dir": str(out_dir), "iteration": run.sched.max_iter, **metrics}


def _setup(cfg: Config, device: torch.device) -> tuple[_Run, Any]:
    """Dataset, model, losses, bank, optimizer, schedule, teacher and gates of ``cfg``, in a
    fixed order (model initialisation consumes the seeded RNG)."""
    dataset = build_train_dataset(cfg)
    warn_random_init_frozen(cfg)
    warn_crop_without_tiles(cfg)
    model = build_model(cfg).to(device)
    criterion = build_criterion(cfg)
    branch = build_corr_branch(cfg)
    bank = build_object_bank(cfg)  # lives outside the model, pushed after each step (§5.2)
    if bank is not None:
        bank = bank.to(device)
    optimizer = build_optimizer(cfg, model)
    iters_per_epoch = max(1, len(dataset) // (cfg.data.batch_size * du.get_world_size()))
    sched = make_schedule(cfg, iters_per_epoch)
    s = cfg.solver
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda i: lr_factor(i, warmup_iters=s.warmup_iters, warmup_ratio=s.warmup_ratio,
                            steps=sched.steps, gamma=s.gamma),
    )
    scaler = torch.amp.GradScaler(device.type, enabled=_static_fp16(cfg, device),
                                  init_scale=s.loss_scale if s.loss_scale > 0 else 2.0**16)
    teacher = None
    if cfg.loss.mode == "box" and cfg.teacher.enabled and cfg.crf.mode != "none":
        teacher = EMATeacher(student=model, momentum=cfg.teacher.momentum,
                             start_iter=cfg.teacher.start_iter)
    g = cfg.gates
    gates = LossGates(init=g.init, momentum=g.momentum, ts_thresh=g.ts_thresh,
                      corr_thresh=g.corr_thresh, enabled=g.enabled)
    run = _Run(cfg=cfg, device=device, model=model, train_model=model, criterion=criterion,
               branch=branch, bank=bank, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
               teacher=teacher, gates=gates, sched=sched)
    return run, dataset


def _static_fp16(cfg: Config, device: torch.device) -> bool:
    """Whether the gradient scaler runs (fp16 on CUDA, §2.9)."""
    return device.type == "cuda" and cfg.solver.amp == "fp16"


def _restore(run: _Run, ckpt: dict[str, Any]) -> int:
    """Load every state of ``ckpt`` into ``run``, this rank's RNG state last; returns the
    iteration to continue from."""
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.scaler.load_state_dict(ckpt["scaler"])
    if run.teacher is not None and ckpt.get("teacher") is not None:
        run.teacher.load_state_dict(ckpt["teacher"])
        buffers = dict(run.teacher.model.named_buffers())
        for name, value in (ckpt.get("teacher_buffers") or {}).items():
            buffers[name].copy_(value)
    run.gates.load_state_dict(ckpt["gates"])
    if run.bank is not None and ckpt.get("object_bank") is not None:
        run.bank.load_state_dict(ckpt["object_bank"])
    rng = ckpt.get("rng", [])
    if du.get_rank() < len(rng):
        set_rng_state(rng[du.get_rank()])
    return int(ckpt["iteration"])


def _loop(run: _Run, loader: Any, writer: MetricWriter, start_iter: int,
          signals: StopSignals) -> dict[str, Any]:
    """Iterations ``start_iter .. max_iter``: step, gates, log, checkpoint, evaluation; returns
    the last evaluation's metrics (empty without ``data.val_json``).

    Raises:
        TrainingInterrupted: a stop signal arrived; the checkpoint at the step reached is saved.
    """
    cfg, max_iter = run.cfg, run.sched.max_iter
    logger.info("training %d iterations (%d per epoch, %d process(es), device %s)",
                max_iter, run.sched.iters_per_epoch, du.get_world_size(), run.device)
    metrics: dict[str, Any] = {}
    run.train_model.train()
    t_last = time.perf_counter()
    with tqdm(total=max_iter, initial=start_iter, disable=not du.is_main_process(),
              desc="train", dynamic_ncols=True) as bar:  # closed before any error prints
        for it in range(start_iter, max_iter):
            batch = next(loader).to(run.device, non_blocking=True)
            values, stats, grad_norm = _train_step(run, batch, it)
            # one collective per step: the stop flag rides with the losses (ranks stop together)
            reduced = du.all_reduce_mean({**values, _STOP: signals.flag()}, run.device)
            any_stop = reduced.pop(_STOP)
            if cfg.loss.mode == "box" and "loss_proj" in reduced:
                run.gates.update(reduced["loss_proj"])
            step = it + 1
            if du.is_main_process():
                bar.update(1)
                bar.set_postfix({k.replace("loss_", ""): f"{v:.3f}" for k, v in reduced.items()})
            if step % cfg.train.log_period == 0 or step == max_iter:
                now = time.perf_counter()
                record = _log_record(run, it, reduced, stats, grad_norm,
                                     sec_per_iter=(now - t_last) / cfg.train.log_period)
                t_last = now
                writer.write(step, record, prefix="train/")
            saved = None
            if step % cfg.train.checkpoint_period == 0 or step == max_iter:
                saved = _save_checkpoint(run, step)
            if step < max_iter:
                _stop_if_signalled(run, signals.stop_requested(any_stop), step, saved)
            if cfg.data.val_json and ((cfg.train.eval_period > 0
                                       and step % cfg.train.eval_period == 0) or step == max_iter):
                metrics = evaluate(cfg, run.model, device=run.device)
                writer.write(step, metrics, prefix="val/")
                run.train_model.train()
    return metrics


def _stop_if_signalled(run: _Run, signum: int | None, step: int, saved: Path | None) -> None:
    """After a step: if a stop signal arrived (``signum``), save the checkpoint at ``step``
    (unless ``saved`` is it already) and raise :class:`TrainingInterrupted`."""
    if signum is None:
        return
    if saved is None:
        saved = _save_checkpoint(run, step)
    logger.warning("%s: saved the checkpoint at iteration %d (%s), stopping",
                   signal.Signals(signum).name, step, saved)
    raise TrainingInterrupted(signum, step, saved)


def _train_step(run: _Run, batch: Any, it: int) -> tuple[dict[str, float], dict[str, float],
                                                          float]:
    """One iteration at 0-based ``it`` (§4.6): forward passes, losses, backward, clipping,
    optimizer and schedule step, then the teacher's EMA update and the bank push. Returns this
    process's loss values, the criterion's stats and the gradient norm (NaN without clipping).

    Raises:
        NonFiniteLossError: a loss term is NaN or infinite.
    """
    cfg, s = run.cfg, run.cfg.solver
    losses, stats, to_push = _losses(run, batch, it)
    total = sum(losses.values())
    values = {k: float(v.detach()) for k, v in losses.items()}
    if not math.isfinite(float(total.detach())):
        terms = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        raise NonFiniteLossError(f"non-finite loss at iteration {it + 1}: {terms}")

    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(total).backward()
    grad_norm = float("nan")
    if s.clip_grad is not None:
        run.scaler.unscale_(run.optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(
            [p for p in run.model.parameters() if p.grad is not None], s.clip_grad))
    run.scaler.step(run.optimizer)
    run.scaler.update(s.loss_scale if _static_fp16(cfg, run.device) and s.loss_scale > 0
                      else None)
    run.scheduler.step()

    if run.teacher is not None:
        run.teacher.update(run.model, it + 1)
    if run.bank is not None and to_push is not None:
        run.bank.push(**to_push)
    return values, stats, grad_norm


def _losses(run: _Run, batch: Any,
            it: int) -> tuple[dict[str, torch.Tensor], dict[str, float], dict[str, Any] | None]:
    """Student and teacher forward passes, the correspondence branch (while its gate is open,
    §4.0) and the criterion. Returns ``(losses, stats, to_push)``: ``loss_corr`` is added
    whenever the branch exists; ``to_push`` is the branch's bank payload, or ``None``."""
    cfg, gates, teacher = run.cfg, run.gates, run.teacher
    with du.amp_autocast(run.device, cfg.solver.amp):
        out = run.train_model(batch.images, batch.image_sizes)
        teacher_out = None
        if teacher is not None and teacher.active:
            with torch.no_grad():
                teacher_out = teacher.model(batch.images, batch.image_sizes)
    box_mode = cfg.loss.mode == "box"
    ts_active = box_mode and gates.ts_open
    corr = None
    if (run.branch is not None and run.bank is not None and ts_active
            and cfg.crf.mode != "none" and gates.corr_open):
        corr = run.branch(out, batch.targets, bank=run.bank, teacher_out=teacher_out)
    losses, stats = run.criterion(
        out, batch.targets, teacher_out=teacher_out, ts_active=ts_active,
        image_sizes=batch.image_sizes, box_scale=box_warmup(it, cfg.loss.box_warmup_iters),
        extra_ts_terms=None if corr is None else corr.ts_terms)
    if run.branch is not None:
        zero = out.mask_feat.float().sum() * 0.0  # keeps the key attached while the gate is shut
        losses["loss_corr"] = (corr.loss_corr if corr is not None else 0.0) + zero
    return losses, stats, None if corr is None else corr.to_push


def _log_record(run: _Run, it: int, reduced: dict[str, float], stats: dict[str, float],
                grad_norm: float, *, sec_per_iter: float) -> dict[str, float]:
    """One ``train/`` record: the losses averaged over ranks, their sum, the learning rate,
    the gradient norm, timing, the gate average, whether the teacher is on, the criterion's
    stats and, with the box warm-up, its scale."""
    teacher = run.teacher
    record = {**reduced, "loss": sum(reduced.values()),
              "lr": run.optimizer.param_groups[0]["lr"], "grad_norm": grad_norm,
              "sec_per_iter": sec_per_iter, "gate_avg": run.gates.avg,
              "teacher_on": float(teacher is not None and teacher.active), **stats}
    if run.cfg.loss.mode == "box" and run.cfg.loss.box_warmup_iters > 0:
        record["box_scale"] = box_warmup(it, run.cfg.loss.box_warmup_iters)
    return record


def _save_checkpoint(run: _Run, iteration: int) -> Path | None:
    """Every state :func:`_restore` reads, with every rank's RNG state (gathered on all ranks,
    written by the main process); returns the path written (``None`` on other ranks)."""
    states = du.all_gather_objects(rng_state())
    if not du.is_main_process():
        return None
    cfg = run.cfg
    return save_checkpoint(
        {
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(),
            "teacher": run.teacher.state_dict() if run.teacher is not None else None,
            "teacher_buffers": (_unsaved_buffers(run.teacher.model) if run.teacher is not None
                                else None),
            "gates": run.gates.state_dict(),
            "object_bank": run.bank.state_dict() if run.bank is not None else None,
            "iteration": iteration,
            "rng": states,
            "config": cfg.to_dict(),
            "world_size": du.get_world_size(),
        },
        Path(cfg.train.output_dir),
        iteration,
        keep=cfg.train.keep_checkpoints,
    )


def _unsaved_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The buffers ``state_dict`` leaves out (non-persistent, e.g. ``pixel_mean``): the
    teacher's EMA moves them too (``m*c + (1-m)*c`` rounds), so an exact resume needs them."""
    kept = model.state_dict().keys()
    return {name: b.detach().clone() for name, b in model.named_buffers() if name not in kept}


def _save_final(run: _Run, metrics: dict[str, Any]) -> None:
    """``model_final.pth`` (and ``model_final_teacher.pth`` once the teacher is on, in the same
    release format) and ``metrics_final.json`` when there was an evaluation."""
    cfg, out_dir, max_iter = run.cfg, Path(run.cfg.train.output_dir), run.sched.max_iter
    save_release(run.model.state_dict(), cfg.to_dict(), max_iter, out_dir / "model_final.pth")
    if run.teacher is not None and run.teacher.active:
        save_release(run.teacher.model.state_dict(), cfg.to_dict(), max_iter,
                     out_dir / "model_final_teacher.pth")
    if metrics:
        atomic_write_text(json.dumps(metrics, indent=2), out_dir / "metrics_final.json")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (each rank passes ``train.seed + rank``)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
