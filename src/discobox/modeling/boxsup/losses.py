"""Loss functions of DiscoBox / SOLOv2 (docs/method.md §4.1, §4.2, §4.4), as pure functions.

Every function computes in fp32 (inputs are cast with ``.float()`` under a disabled autocast),
as the official code does for its dice terms (§2.9). Per-instance losses return ``float[N]`` so
the caller decides how to average (the official code averages over every positive mask of every
level, §4.2).

Also holds the optional BoxInst pairwise colour-affinity term (Tian et al., CVPR 2021), which is
not part of DiscoBox: :func:`rgb_to_lab`, :func:`color_similarity`, :func:`pairwise_color_loss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss


def _no_autocast(t: Tensor) -> torch.autocast:
    return torch.autocast(device_type=t.device.type, enabled=False)


def focal_loss(
    logits: Tensor,
    labels_onehot: Tensor,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    avg_factor: float | Tensor,
) -> Tensor:
    """Sigmoid focal loss summed over all elements, divided by ``avg_factor`` (docs/method.md §4.1).

    Args:
        logits: ``float[M, C]`` category logits of all cells (any shape works).
        labels_onehot: same shape; background rows are all zero.
        alpha, gamma: focal parameters (0.25, 2).
        avg_factor: ``num_pos + 1`` (unique positive cells over levels and images, plus one).

    Returns:
        ``float32[]``.
    """
    with _no_autocast(logits):
        loss = sigmoid_focal_loss(
            logits.float(), labels_onehot.float(), alpha=alpha, gamma=gamma, reduction="sum"
        )
        return loss / avg_factor


class _FlooredSigmoid(torch.autograd.Function):
    """``sigmoid(x)`` forward; backward ``max(s * (1 - s), floor)`` instead of ``s * (1 - s)``."""

    @staticmethod
    def forward(ctx, logits: Tensor, floor: float) -> Tensor:  # type: ignore[override]
        out = torch.sigmoid(logits)
        ctx.save_for_backward(out)
        ctx.floor = floor
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (out,) = ctx.saved_tensors
        return grad * (out * (1 - out)).clamp_min(ctx.floor), None


def floored_sigmoid(logits: Tensor, floor: float = 0.0) -> Tensor:
    """``sigmoid(logits)``, whose gradient never falls below ``floor`` (ours; 0: plain sigmoid).

    A mask whose logits have run to +-30 (every pixel 1 or 0) gets ``sigmoid' ~ 1e-13``, so no
    loss on its probabilities can move it again (a collapsed box-supervised run; BENCHMARKS.md
    "A floor on the sigmoid's gradient"). With a floor, the loss still reaches such a pixel.
    The values, and the gradient of every pixel with ``s * (1 - s) >= floor``, are unchanged.
    A saturated pixel on the right side gets a small push further the same way (zero once the
    whole dice agrees with its target).
    """
    if floor <= 0:
        return torch.sigmoid(logits)
    return _FlooredSigmoid.apply(logits, float(floor))


def dice_loss(pred: Tensor, target: Tensor, eps: float = 0.001) -> Tensor:
    """Squared-denominator dice per instance (docs/method.md §4.2, H:698-706).

    ``1 - 2*sum(p*t) / (sum(p^2) + eps + sum(t^2) + eps)`` over all but the first dimension.

    Args:
        pred: ``float[N, ...]`` probabilities.
        target: ``float[N, ...]`` targets in ``[0, 1]``.

    Returns:
        ``float32[N]``.
    """
    with _no_autocast(pred):
        p = pred.float().flatten(1)
        t = target.float().flatten(1)
        a = (p * t).sum(dim=1)
        b = (p * p).sum(dim=1) + eps
        c = (t * t).sum(dim=1) + eps
        return 1.0 - 2.0 * a / (b + c)


def projection_loss(probs: Tensor, box_masks: Tensor) -> Tensor:
    """Box projection ("MIL") loss per instance (docs/method.md §4.2, H:709-719).

    Dice of the max-projections on both axes over the full ¼-res map (not cropped to the box):
    ``dice(max_x P, max_x T) + dice(max_y P, max_y T)``.

    Args:
        probs: ``float[N, h, w]`` mask probabilities (sigmoid of the logits).
        box_masks: ``float[N, h, w]`` ¼-res box masks.

    Returns:
        ``float32[N]``.
    """
    with _no_autocast(probs):
        p = probs.float()
        t = box_masks.float()
        loss_y = dice_loss(p.amax(dim=2), t.amax(dim=2))  # max over columns -> length h
        loss_x = dice_loss(p.amax(dim=1), t.amax(dim=1))  # max over rows -> length w
        return loss_y + loss_x


def mask_dice_loss(logits: Tensor, masks: Tensor, grad_floor: float = 0.0) -> Tensor:
    """Fully supervised SOLOv2 mask loss per instance: ``dice(sigmoid(logits), masks)``.

    Targets are the ¼-res real masks of docs/method.md §3.3 (``use_masks=True``); the dice is the
    §4.2 formula. SOLOv2 weights the mean of this loss by ``ins_loss_weight = 3.0`` (its
    ``loss_ins`` config); the weight is applied by the criterion.

    Args:
        logits: ``float[N, h, w]`` mask logits.
        masks: ``float[N, h, w]`` targets.
        grad_floor: see :func:`floored_sigmoid` (0: the plain sigmoid).

    Returns:
        ``float32[N]``.
    """
    with _no_autocast(logits):
        return dice_loss(floored_sigmoid(logits.float(), grad_floor), masks)


# --- BoxInst pairwise colour-affinity term (option, not in DiscoBox) ---------------------------


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB (D65) -> CIE-LAB, as ``skimage.color.rgb2lab``.

    Args:
        rgb: ``float[3, h, w]`` (or ``[B, 3, h, w]``) RGB in ``0..255``.

    Returns:
        Same shape: ``L`` in ``0..100``, ``a``, ``b`` roughly in ``-128..127``.
    """
    with _no_autocast(rgb):
        c = (rgb.float() / 255.0).clamp(0.0, 1.0)
        c = torch.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
        m = c.new_tensor(
            [
                [0.412453, 0.357580, 0.180423],
                [0.212671, 0.715160, 0.072169],
                [0.019334, 0.119193, 0.950227],
            ]
        )
        xyz = torch.einsum("ij,...jhw->...ihw", m, c)
        white = c.new_tensor([0.95047, 1.0, 1.08883]).view(3, 1, 1)
        xyz = xyz / white
        f = torch.where(xyz > 0.008856, xyz.clamp(min=1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
        fx, fy, fz = f.unbind(dim=-3)
        lab = torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-3)
        return lab


def _unfold_wo_center(x: Tensor, kernel_size: int, dilation: int) -> Tensor:
    """``float[N, C, h, w] -> float[N, C, k*k-1, h, w]`` neighbours (zero padded), centre
    removed."""
    n, c, h, w = x.shape
    pad = (kernel_size + (dilation - 1) * (kernel_size - 1)) // 2
    u = F.unfold(x, kernel_size=kernel_size, padding=pad, dilation=dilation)
    u = u.view(n, c, kernel_size * kernel_size, h, w)
    centre = kernel_size * kernel_size // 2
    return torch.cat([u[:, :, :centre], u[:, :, centre + 1 :]], dim=2)


def color_similarity(
    image_lab: Tensor,
    *,
    kernel_size: int = 3,
    dilation: int = 2,
    valid: Tensor | None = None,
) -> Tensor:
    """BoxInst colour similarity ``exp(-||lab(p) - lab(q)|| / 2)`` to each neighbour ``q``.

    Args:
        image_lab: ``float[3, h, w]`` LAB image at mask resolution.
        kernel_size, dilation: neighbourhood (3, 2 in BoxInst).
        valid: optional ``bool[h, w]`` unpadded region; a pair is kept when any pixel is valid
            there, as BoxInst does.

    Returns:
        ``float32[k*k-1, h, w]``.
    """
    with _no_autocast(image_lab):
        lab = image_lab.float()[None]
        nb = _unfold_wo_center(lab, kernel_size, dilation)
        sim = torch.exp(-torch.norm(lab[:, :, None] - nb, dim=1) * 0.5)[0]
        if valid is not None:
            v = _unfold_wo_center(valid.float()[None, None], kernel_size, dilation)
            sim = sim * v[0, 0].amax(dim=0, keepdim=True)
        return sim


def pairwise_color_loss(
    logits: Tensor,
    similarity: Tensor,
    box_masks: Tensor,
    *,
    tau: float = 0.3,
    kernel_size: int = 3,
    dilation: int = 2,
) -> Tensor:
    """BoxInst pairwise term: ``-log P(y_p = y_q)`` over neighbour pairs whose colour similarity
    is ``>= tau`` and whose centre pixel ``p`` is inside the box, averaged over those pairs.

    ``P(y_p = y_q) = s_p s_q + (1 - s_p)(1 - s_q)`` with ``s = sigmoid(logit)``, in log space.
    BoxInst ramps this term in over 10k iterations; that warm-up is the caller's business.

    Args:
        logits: ``float[N, h, w]`` mask logits.
        similarity: ``float[N, k*k-1, h, w]`` from :func:`color_similarity` of each instance's
            image.
        box_masks: ``float[N, h, w]`` ¼-res box masks.
        tau: similarity threshold (0.3).
        kernel_size, dilation: must match ``similarity``.

    Returns:
        ``float32[]`` (0 when no pair qualifies, still attached to ``logits``).
    """
    with _no_autocast(logits):
        x = logits.float()[:, None]
        log_fg = F.logsigmoid(x)
        log_bg = F.logsigmoid(-x)
        same_fg = log_fg[:, :, None] + _unfold_wo_center(log_fg, kernel_size, dilation)
        same_bg = log_bg[:, :, None] + _unfold_wo_center(log_bg, kernel_size, dilation)
        loss = -torch.logaddexp(same_fg, same_bg)[:, 0]  # [N, k*k-1, h, w]
        weights = (similarity.float() >= tau).float() * box_masks.float()[:, None]
        return (loss * weights).sum() / weights.sum().clamp(min=1.0)


def dilate_box_masks(box_masks: Tensor) -> Tensor:
    """``float[N, h, w]``: box masks dilated by one pixel (3x3 max), the ``D_i`` that
    ``L_ts`` multiplies the student by (docs/method.md §4.4, also §5.7)."""
    return F.max_pool2d(box_masks[:, None].float(), 3, stride=1, padding=1)[:, 0]
