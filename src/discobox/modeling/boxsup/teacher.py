"""Training-loop state outside the model: the EMA teacher (METHOD.md §4.5) and the data-driven
loss gates (§4.0). Both are called from the trainer and saved in checkpoints (fixing §12.7)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` (or ``DataParallel``) wrapper."""
    return model.module if hasattr(model, "module") else model


class EMATeacher:
    """Self-ensembling teacher, kept outside the student (timm ``ModelEmaV2`` style, §4.5).

    Until ``start_iter`` the teacher is off and the criterion uses the student itself. At the
    first :meth:`update` with ``iteration >= start_iter`` the teacher becomes an exact copy of
    the student (momentum 0); every later call does ``k <- m*k + (1-m)*q`` over parameters in
    ``named_parameters`` order. The official code copies at the end of 1-based iteration 13 002
    (``cnt > 13000``, D:218-221); ``start_iter=13002`` reproduces that exactly when the trainer
    passes the number of finished iterations.

    Floating-point buffers (BatchNorm running statistics) follow the same EMA and integer ones
    are copied. The official code copies buffers, which is the same thing there: with frozen BN
    statistics (``norm_eval``, §4.5) they never change. With trainable BN (the CPU recipe) a
    copy pairs the student's current statistics with weights averaged over the last ~1/(1-m)
    steps; the EMA keeps the teacher's statistics as old as its weights (timm's ``ModelEmaV2``
    averages every state entry the same way).

    ``warmup`` (ours, for short schedules) uses ``m_n = min(m, (1 + n) / (10 + n))`` at the
    n-th update after switch-on (TensorFlow's ``ExponentialMovingAverage(num_updates)``): the
    teacher follows the young student closely and averages over ~n/9 steps later on, so it can
    switch on at iteration 0 instead of leaving "teacher = student" (§4.0) for the first part.

    Args:
        student: the model (a DDP wrapper is unwrapped); deep-copied into :attr:`model`.
        momentum: EMA momentum ``m`` (0.999).
        start_iter: first iteration count at which the teacher switches on.
        warmup: ramp the momentum up as above instead of using ``m`` from the first update.

    Attributes:
        model: the teacher, in eval mode, ``requires_grad=False``.
    """

    def __init__(
        self, *, student: nn.Module, momentum: float = 0.999, start_iter: int = 13000,
        warmup: bool = False,
    ) -> None:
        self.model = copy.deepcopy(unwrap_model(student)).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.momentum = float(momentum)
        self.start_iter = int(start_iter)
        self.warmup = bool(warmup)
        self._active = False
        self.last_iter = 0
        self.num_updates = 0

    @property
    def active(self) -> bool:
        """Whether the teacher has been switched on (its outputs replace the student's)."""
        return self._active

    def to(self, device: torch.device | str) -> EMATeacher:
        self.model.to(device)
        return self

    @torch.no_grad()
    def update(self, student: nn.Module, iteration: int) -> None:
        """Call once per iteration, after the optimizer step, with the finished-iteration count.

        Off before ``start_iter``; copies the student at the switch-on; EMA afterwards.
        """
        self.last_iter = int(iteration)
        src = unwrap_model(student)
        if not self._active:
            if iteration < self.start_iter:
                return
            self._copy(src, momentum=0.0)
            self._active = True
            self.num_updates += 1
            return
        self._copy(src, momentum=self.current_momentum())
        self.num_updates += 1

    def current_momentum(self) -> float:
        """The momentum the next EMA update uses (``m``, or its warm-up value)."""
        if not self.warmup:
            return self.momentum
        n = self.num_updates
        return min(self.momentum, (1.0 + n) / (10.0 + n))

    def _copy(self, src: nn.Module, *, momentum: float) -> None:
        dst_params = dict(self.model.named_parameters())
        tgt, ref = [], []
        for name, q in src.named_parameters():
            k = dst_params[name]
            if momentum == 0.0:
                k.copy_(q.detach())
            else:
                tgt.append(k)
                ref.append(q.detach().to(k.dtype))
        if tgt:
            torch._foreach_mul_(tgt, momentum)
            torch._foreach_add_(tgt, ref, alpha=1.0 - momentum)
        dst_buffers = dict(self.model.named_buffers())
        for name, b in src.named_buffers():
            if name not in dst_buffers:
                continue
            k = dst_buffers[name]
            if momentum == 0.0 or not k.is_floating_point():
                k.copy_(b)
            else:
                k.mul_(momentum).add_(b.detach().to(k.dtype), alpha=1.0 - momentum)

    def state_dict(self) -> dict[str, Any]:
        """Teacher weights and counters (the official code keeps neither, §12.7)."""
        return {
            "model": self.model.state_dict(),
            "active": self._active,
            "last_iter": self.last_iter,
            "num_updates": self.num_updates,
            "momentum": self.momentum,
            "start_iter": self.start_iter,
            "warmup": self.warmup,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self._active = bool(state["active"])
        self.last_iter = int(state["last_iter"])
        self.num_updates = int(state["num_updates"])


class LossGates:
    """Data-driven gates of the auxiliary losses (METHOD.md §4.0, D:147, D:210-217).

    ``avg <- momentum*avg + (1-momentum)*loss_ins`` after every iteration, starting at ``init``.
    ``ts_open`` iff ``avg < ts_thresh`` (L_ts on); ``corr_open`` iff ``ts_open`` and
    ``avg < corr_thresh`` (correspondence branch on, §4.6 step 7). The trainer passes ``loss_ins``
    already averaged over ranks, so the gates agree on every rank (the official ones are per
    process, §12.7).

    With ``enabled=False`` the average is still tracked but both gates report ``force_open``
    (default True): always-on auxiliary losses suit short CPU schedules, where ``avg`` would never
    fall below 0.3; ``force_open=False`` switches them off for ablations.
    """

    def __init__(
        self,
        *,
        init: float = 2.0,
        momentum: float = 0.9,
        ts_thresh: float = 0.3,
        corr_thresh: float = 0.2,
        enabled: bool = True,
        force_open: bool = True,
    ) -> None:
        self.avg = float(init)
        self.momentum = float(momentum)
        self.ts_thresh = float(ts_thresh)
        self.corr_thresh = float(corr_thresh)
        self.enabled = bool(enabled)
        self.force_open = bool(force_open)

    def update(self, loss_ins: float) -> None:
        self.avg = self.momentum * self.avg + (1.0 - self.momentum) * float(loss_ins)

    @property
    def ts_open(self) -> bool:
        if not self.enabled:
            return self.force_open
        return self.avg < self.ts_thresh

    @property
    def corr_open(self) -> bool:
        if not self.enabled:
            return self.force_open
        return self.avg < self.ts_thresh and self.avg < self.corr_thresh

    def state_dict(self) -> dict[str, Any]:
        return {"avg": self.avg}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.avg = float(state["avg"])


def ts_ramp(iteration: int, ramp_iters: int) -> float:
    """``L_ts`` weight factor at 0-based ``iteration``: ``min(1, iteration / ramp_iters)``.

    Ours (``loss.ts_ramp_iters``, off when 0), a deterministic stand-in for the official gate
    (§4.0) on short schedules from random initialisation: before the EMA teacher starts the
    structured teacher is the student itself (§4.5), and the CRF target of a random student can
    be far from it from the first step (BENCHMARKS.md, droplets seed 3: ``L_ts`` 0.76-0.97 at
    each of its first 12 logged steps). The ramp lets the projection loss (§4.2) shape
    the masks first and hands weight to ``L_ts`` gradually, the ramp-up of the consistency
    weight in self-ensembling (Tarvainen & Valpola, 2017). It depends on the iteration only,
    so it is identical on every rank and after a resume. Measured on droplets (six seeds, with
    ``crf.fill_ortho``): the mean did not change, so it is off by default.
    """
    if ramp_iters < 0:
        raise ValueError(f"ts_ramp_iters must be >= 0, got {ramp_iters}")
    if ramp_iters == 0:
        return 1.0
    return min(1.0, max(0, iteration) / ramp_iters)


def box_warmup(iteration: int, warmup_iters: int) -> float:
    """``loss_boxwarm`` weight factor at 0-based ``iteration``: ``max(0, 1 - iteration / N)``.

    Ours (``loss.box_warmup_iters`` = N, off when 0). In the first N iterations of box
    supervision the student is also pulled towards the filled box masks of §3.2, a dense
    target like the fully supervised dice (§3.3) and the "filled box" baseline of Khoreva et
    al. (Simple Does It, 2017). Fully supervised runs never failed early on droplets, while box
    runs did (a projection loss rising to ~1 within 200 iterations, BENCHMARKS.md): the
    projection loss (§4.2) reaches only the largest pixel of each row and column. The weight
    falls linearly to 0 so the box shape does not stay the target; after N iterations only the
    projection loss and ``L_ts`` (§4.3-4.4) shape the masks. It depends on the iteration only,
    so it is identical on every rank and after a resume. Measured on droplets (N = 300 of 900
    iterations, six seeds): mean mask AP 49.5, seeds 0-3 64.4 against 33.1 without, one seed
    collapsed; on in the CPU recipe (BENCHMARKS.md).
    """
    if warmup_iters < 0:
        raise ValueError(f"box_warmup_iters must be >= 0, got {warmup_iters}")
    if warmup_iters == 0:
        return 0.0
    return max(0.0, 1.0 - max(0, iteration) / warmup_iters)
