"""The loss options: one frozen dataclass that is also the ``loss`` section of the config.

``config.py`` declares ``loss: LossParams``, so a ``loss.*`` key is a field here and the
criterion receives ``cfg.loss`` as it is. This module imports nothing (the config layer may
import it). docs/method.md §4.
"""

from __future__ import annotations

from dataclasses import dataclass

LOSS_MODES = ("box", "full")


@dataclass(frozen=True)
class LossParams:
    """Weights and options of :class:`~discobox.modeling.boxsup.criterion.SOLOv2Criterion`.

    ``mode``: ``"box"`` (DiscoBox: category + projection + teacher-student losses, docs/method.md
    §4.0) or ``"full"`` (category + dice on real masks, the fully supervised upper bound).
    The official weights are 1.0 (§4.0); ``mask_weight`` is SOLOv2's ``ins_loss_weight``.

    Ours, off by default: ``box_warmup_iters`` > 0 adds ``loss_boxwarm``, a dice to the filled
    box masks (§3.2) of weight ``box_warmup_weight`` falling linearly to 0 at that iteration
    (:func:`~discobox.modeling.boxsup.teacher.box_warmup`); ``sigmoid_grad_floor`` > 0 gives
    every box-mode mask loss a sigmoid whose gradient never falls below it
    (:func:`~discobox.modeling.boxsup.losses.floored_sigmoid`); ``pairwise`` adds the BoxInst
    pairwise colour term ``loss_pairwise`` (not part of DiscoBox).
    """

    mode: str = "box"  # "box" (DiscoBox) or "full" (fully supervised upper bound)
    cls_weight: float = 1.0
    proj_weight: float = 1.0
    ts_weight: float = 1.0
    # ours, 0 = off: loss_boxwarm's weight falls from box_warmup_weight to 0 over these iterations
    box_warmup_iters: int = 0
    box_warmup_weight: float = 1.0
    # ours, 0 = off: the least gradient of the sigmoid in the box-mode mask losses, in [0, 0.25)
    sigmoid_grad_floor: float = 0.0
    mask_weight: float = 3.0  # full mode's dice weight
    pairwise: bool = False  # BoxInst pairwise colour-affinity term
    pairwise_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
