"""Training-loop state outside the model: the EMA teacher (docs/method.md §4.5), the
data-driven loss gates (§4.0) and the box warm-up's schedule. The teacher and the gates are
called from the trainer and saved in checkpoints (fixing §12.7)."""

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

    Args:
        student: the model (a DDP wrapper is unwrapped); deep-copied into :attr:`model`.
        momentum: EMA momentum ``m`` (0.999).
        start_iter: first iteration count at which the teacher switches on.

    Attributes:
        model: the teacher, in eval mode, ``requires_grad=False``.
    """

    def __init__(
        self, *, student: nn.Module, momentum: float = 0.999, start_iter: int = 13000
    ) -> None:
        self.model = copy.deepcopy(unwrap_model(student)).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.momentum = float(momentum)
        self.start_iter = int(start_iter)
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
        self._copy(src, momentum=self.momentum)
        self.num_updates += 1

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
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self._active = bool(state["active"])
        self.last_iter = int(state["last_iter"])
        self.num_updates = int(state["num_updates"])


class LossGates:
    """Data-driven gates of the auxiliary losses (docs/method.md §4.0, D:147, D:210-217).

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


def box_warmup(iteration: int, warmup_iters: int) -> float:
    """``loss_boxwarm`` weight factor at 0-based ``iteration``: ``max(0, 1 - iteration / N)``.

    Ours (``loss.box_warmup_iters`` = N, off when 0). In the first N iterations of box
    supervision the student is also pulled towards the filled box masks of §3.2, a dense
    target like the fully supervised dice (§3.3) and the "filled box" baseline of Khoreva et
    al. (Simple Does It, 2017), because the projection loss (§4.2) reaches only the largest
    pixel of each row and column of a random student. The weight falls linearly to 0 so the
    box shape does not stay the target; after N iterations only the projection loss and
    ``L_ts`` (§4.3-4.4) shape the masks. It depends on the iteration only, so it is identical on
    every rank and after a resume (BENCHMARKS.md "A warm-up on the filled boxes").
    """
    if warmup_iters < 0:
        raise ValueError(f"box_warmup_iters must be >= 0, got {warmup_iters}")
    if warmup_iters == 0:
        return 0.0
    return max(0.0, 1.0 - max(0, iteration) / warmup_iters)
