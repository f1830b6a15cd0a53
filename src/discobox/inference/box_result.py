"""What box-conditioned inference returns (:class:`BoxMasks`): each box's mask inside its
region, the source of the mask (its cell, a neighbouring cell or the filled box) and a confidence
for sorting masks to review (:func:`mask_confidence`)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

SOURCE_CELL, SOURCE_NEIGHBOUR, SOURCE_BOX = 0, 1, 2


@dataclass
class BoxMasks:
    """Masks of a chunk of boxes of one image, each stored only inside its box.

    Attributes:
        index: ``int64[n]`` position of each box in the boxes given to the call.
        regions: ``int64[n, 4]`` ``(x0, y0, x1, y1)`` half-open pixel region (:func:`box_region`).
        crops: ``n`` tensors ``bool[y1 - y0, x1 - x0]`` (CPU), the mask inside its region.
        scores: ``float32[n]`` class score of the chosen cell.
        source: ``int64[n]``: ``SOURCE_CELL``, ``SOURCE_NEIGHBOUR`` or ``SOURCE_BOX``.
        confidence: ``float32[n]`` in ``[0, 1]``, :func:`mask_confidence` (0 for a filled box).
    """

    index: Tensor
    regions: Tensor
    crops: list[Tensor]
    scores: Tensor
    source: Tensor
    confidence: Tensor


def mask_confidence(prob: Tensor, check: Tensor | None, mask_thr: float) -> float:
    """Confidence of one pasted mask, for sorting masks to review (ours).

    ``score = maskness * agreement`` with ``maskness = mean(prob[prob > t])`` (0 for an empty
    mask), the model's mean probability inside its own mask, and ``agreement = IoU(prob > t,
    check > t)``, the overlap of that mask with its CRF refinement (1 without ``check``; 0 when
    both are empty). Why: a mask the model is sure of (probabilities near 1, not near ``t``)
    whose edges follow the image's colour edges (the CRF moves nothing) is rarely wrong.

    Args:
        prob: ``float[h, w]`` the model's pasted soft mask inside the box.
        check: ``float[h, w]`` the CRF-refined soft mask pasted the same way, or ``None``.
        mask_thr: the binarisation threshold ``t``.
    """
    fg = prob > mask_thr
    n = int(fg.sum())
    if n == 0:
        return 0.0
    maskness = float(prob[fg].sum()) / n
    if check is None:
        return maskness
    ref = check > mask_thr
    union = int((fg | ref).sum())
    return maskness * (int((fg & ref).sum()) / union if union else 0.0)
