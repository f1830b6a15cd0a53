"""The correspondence options: one frozen dataclass that is also the ``corr`` section of the
config.

``config.py`` declares ``corr: CorrParams``; the branch receives ``cfg.corr`` as it is and
``modeling/build.py`` hands the bank's fields to :class:`ObjectBank`. This module imports
nothing (the config layer may import it). docs/method.md §5.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CorrParams:
    """Options of the correspondence branch (docs/method.md §5) and its object bank (§5.2-5.3).

    Branch: ``solver`` ``"faithful"`` (official cosine + locality, ``num_iters``,
    ``num_smooth_iters``, ``dist_kernel``; §5.4) or ``"sinkhorn"`` (the paper's optimal
    transport, ``sinkhorn_*``, Hough voting ``hough*``); ``loss`` ``"faithful"`` (official
    double-softmax cross entropy) or ``"infonce"`` (with ``temperature``; §5.5); ``weight``
    multiplies ``loss_corr``; ``grad_scale`` is the gradient factor of the cross-image CRF
    dice (§5.7); ``online_push`` pushes object by object as the official code does.

    Bank: ``capacity`` objects per class and the retrieval thresholds of §5.3
    (``*_thresh``, ``ratio_range``, ``max_retrieval``, ``min_retrieval``, ``min_box_size``,
    ``selection``); ``bank_dtype`` ``"float16"`` halves the bank in checkpoints.
    """

    enabled: bool = True  # the paper's COCO recipes train it; needs loss.mode=box
    weight: float = 1.0  # loss_corr weight (0.1 in the DCN recipes)
    solver: str = "faithful"  # "faithful" (official cosine + locality) or "sinkhorn" (paper)
    loss: str = "faithful"  # "faithful" (official double-softmax CE) or "infonce"
    temperature: float = 0.07
    num_iters: int = 10
    num_smooth_iters: int = 1
    dist_kernel: int = 9
    sinkhorn_eps: float = 0.05
    sinkhorn_iters: int = 10
    sinkhorn_exp: float = 0.5
    hough: bool = True
    hough_filter_size: int = 3
    grad_scale: float = 0.01
    online_push: bool = False
    capacity: int = 100
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.7
    appear_thresh: float = 0.7
    ratio_range: tuple[float, float] = (0.9, 1.2)
    max_retrieval: int = 5
    min_retrieval: int = 5
    min_box_size: float = 32
    selection: str = "first"
    bank_dtype: str = "float32"  # "float16" halves the bank in checkpoints
