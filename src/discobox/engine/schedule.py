"""The run's length, its learning-rate schedule and its optimizer (``cfg.solver``,
docs/method.md §6): iterations from epochs, linear warm-up times step decay, SGD."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import Config


@dataclass
class Schedule:
    """The run's length in iterations and its learning-rate steps."""

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
    """Linear warm-up (mmcv: ``1 - (1 - i/W)(1 - r)``) times step decay (docs/method.md §6)."""
    factor = gamma ** sum(iteration >= s for s in steps)
    if iteration < warmup_iters:
        factor *= 1.0 - (1.0 - iteration / warmup_iters) * (1.0 - warmup_ratio)
    return factor


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.SGD:
    """SGD with weight decay on every trainable parameter (docs/method.md §6)."""
    params = [p for p in model.parameters() if p.requires_grad]
    s = cfg.solver
    return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
