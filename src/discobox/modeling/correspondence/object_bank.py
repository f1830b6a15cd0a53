"""Per-class object bank for the correspondence branch (docs/method.md §5.2, retrieval §5.3).

One circular queue of ``capacity`` (100) slots per class, created lazily at the first push of
that class. A slot holds the **teacher** crop of one object: its 28x28 mask probabilities, its
ReLU'd, per-location L2-normalised ``C x 7 x 7`` RoI feature of P2 (§5.1), and its ¼-res xyxy
box. The first object of a class goes to slot 0, later ones to ``ptr`` with
``ptr = (ptr + 1) mod capacity`` (H:160-185), so the filled slots are always a prefix until the
queue wraps.

Retrieval (:meth:`ObjectBank.query`, ``get_similar_obj`` H:227-246) selects the slots with soft
foreground IoU, soft background IoU and mask-weighted appearance similarity all above their
thresholds (0.7) and aspect-ratio ratio within ``ratio_range`` (0.9-1.2). The official code
returns the **first** ``max_retrieval`` (5) passing slots in slot order (``selection="first"``);
``selection="top"`` returns the most similar ones instead. The correspondence step needs at least
``min_retrieval`` objects; the official code hard-codes exactly 5 (``min_retrieval_objs=2`` in its
config is never read), so the default is 5.

Unlike the official bank (per GPU, never saved, lost on resume: §5.2, §12.7) this one has
:meth:`state_dict` / :meth:`load_state_dict` and is saved with checkpoints. It lives outside the
model; the training loop owns it and calls :meth:`push`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

SELECTIONS = ("first", "top")
_STAT_KEYS = ("queries", "hits", "absent", "too_few", "pushed", "rejected_small")


@dataclass
class Retrieved:
    """Objects returned by :meth:`ObjectBank.query` (``K <= max_retrieval``).

    Attributes:
        masks: ``float[K, m, m]`` teacher mask probabilities (m = 28).
        feats: ``float[K, C, s, s]`` unit-norm-per-location RoI features (s = 7).
        boxes: ``float[K, 4]`` ¼-res xyxy boxes.
        slots: ``int64[K]`` slot indices in the class queue (ascending for ``"first"``).
    """

    masks: Tensor
    feats: Tensor
    boxes: Tensor
    slots: Tensor

    def __len__(self) -> int:
        return int(self.slots.numel())


class _Queue:
    """Circular storage of one class."""

    def __init__(self, capacity: int, mask_shape: tuple, feat_shape: tuple, *, dtype, device):
        self.masks = torch.zeros((capacity, *mask_shape), dtype=dtype, device=device)
        self.feats = torch.zeros((capacity, *feat_shape), dtype=dtype, device=device)
        self.boxes = torch.zeros((capacity, 4), dtype=torch.float32, device=device)
        self.ptr = 0
        self.size = 0

    def append(self, mask: Tensor, feat: Tensor, box: Tensor) -> None:
        cap = self.masks.shape[0]
        self.masks[self.ptr] = mask.to(self.masks)
        self.feats[self.ptr] = feat.to(self.feats)
        self.boxes[self.ptr] = box.to(self.boxes)
        self.ptr = (self.ptr + 1) % cap
        self.size = min(self.size + 1, cap)


def soft_ious(query: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Soft foreground and background IoU of one mask against many (docs/method.md §5.3).

    ``fg = sum(q*k) / #{q + k >= 1}`` and ``bg = sum((1-q)(1-k)) / #{(1-q) + (1-k) >= 1}``
    (a zero denominator gives 0).

    Args:
        query: ``float[m, m]`` probabilities; masks: ``float[K, m, m]``.

    Returns:
        ``(fg, bg)``, each ``float32[K]``.
    """
    q = query.float().flatten()[None]
    k = masks.float().flatten(1)
    fg = (q * k).sum(1) / ((q + k) >= 1).sum(1).clamp(min=1)
    bg = ((1 - q) * (1 - k)).sum(1) / (((1 - q) + (1 - k)) >= 1).sum(1).clamp(min=1)
    return fg, bg


def appearance_similarity(q_mask: Tensor, q_feat: Tensor, masks: Tensor, feats: Tensor) -> Tensor:
    """Mask-weighted mean cosine of RoI features (docs/method.md §5.3 "Appearance").

    Masks are resized bilinearly to the feature size, then
    ``sim_k = sum_{c,y,x} f_q f_k m_q m_k / (sum_{y,x} m_q m_k + 1e-6)``.

    Args:
        q_mask: ``float[m, m]``; q_feat: ``float[C, s, s]`` (unit norm per location);
        masks: ``float[K, m, m]``; feats: ``float[K, C, s, s]``.

    Returns:
        ``float32[K]``.
    """
    s = q_feat.shape[-1]
    both = torch.cat([q_mask[None].float(), masks.float()])[:, None]
    small = F.interpolate(both, size=(s, s), mode="bilinear", align_corners=False)[:, 0]
    w = small[:1] * small[1:]  # [K, s, s]
    dot = (q_feat.float()[None] * feats.float()).sum(1)  # [K, s, s]
    return (dot * w).flatten(1).sum(1) / (w.flatten(1).sum(1) + 1e-6)


def aspect_ratio_ratio(q_box: Tensor, boxes: Tensor) -> Tensor:
    """``(w_q / h_q) / (w_k / h_k)`` with 1e-5 added to heights (docs/method.md §5.3);
    ``float[K]``."""
    qb = q_box.float()
    b = boxes.float()
    rq = (qb[2] - qb[0]) / (qb[3] - qb[1] + 1e-5)
    rk = (b[:, 2] - b[:, 0]) / (b[:, 3] - b[:, 1] + 1e-5)
    return rq / rk.clamp(min=1e-12)


class ObjectBank:
    """Per-class circular queues of teacher object crops with threshold retrieval (§5.2-5.3).

    Args:
        num_classes: ``C``; labels must lie in ``[0, C)``.
        capacity: slots per class (``len_object_queues`` = 100). Memory is bounded by
            ``num_classes * capacity`` slots.
        feat_channels, feat_size, mask_size: slot shapes (256, 7, 28).
        fg_iou_thresh, bg_iou_thresh, appear_thresh: strict lower bounds (0.7 each).
        ratio_range: inclusive bounds on the aspect-ratio ratio (0.9, 1.2).
        max_retrieval: objects returned at most (5).
        min_retrieval: fewer passing objects than this -> :meth:`query` returns ``None`` (5).
        min_box_size: an object is bankable iff its ¼-res box is wider **and** taller than this
            (32, strict, §5.1).
        selection: ``"first"`` (official: first passing slots in slot order) or ``"top"`` (the
            passing slots with the highest appearance similarity).
        dtype: storage dtype of masks and features (float32; float16 halves the checkpoint).
        device: storage device (default: that of the first pushed tensor).

    Attributes:
        stats: counters ``queries``, ``hits`` (queries that returned objects), ``absent`` (no
            queue for the class yet), ``too_few`` (fewer than ``min_retrieval`` passed),
            ``pushed``, ``rejected_small`` (not bankable).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        capacity: int = 100,
        feat_channels: int = 256,
        feat_size: int = 7,
        mask_size: int = 28,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.7,
        appear_thresh: float = 0.7,
        ratio_range: tuple[float, float] = (0.9, 1.2),
        max_retrieval: int = 5,
        min_retrieval: int = 5,
        min_box_size: float = 32,
        selection: str = "first",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        if capacity < 1 or max_retrieval < 1 or min_retrieval < 1:
            raise ValueError("capacity, max_retrieval and min_retrieval must be >= 1")
        if min_retrieval > max_retrieval:
            raise ValueError(f"min_retrieval={min_retrieval} > max_retrieval={max_retrieval}")
        self.num_classes = int(num_classes)
        self.capacity = int(capacity)
        self.feat_shape = (int(feat_channels), int(feat_size), int(feat_size))
        self.mask_shape = (int(mask_size), int(mask_size))
        self.fg_iou_thresh = float(fg_iou_thresh)
        self.bg_iou_thresh = float(bg_iou_thresh)
        self.appear_thresh = float(appear_thresh)
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        self.max_retrieval = int(max_retrieval)
        self.min_retrieval = int(min_retrieval)
        self.min_box_size = float(min_box_size)
        self.selection = selection
        self.dtype = dtype
        self.device = None if device is None else torch.device(device)
        self._queues: dict[int, _Queue] = {}
        self.stats = dict.fromkeys(_STAT_KEYS, 0)

    # -- inspection ---------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of stored objects over all classes."""
        return sum(q.size for q in self._queues.values())

    def classes(self) -> list[int]:
        return sorted(self._queues)

    def num_objects(self, label: int) -> int:
        q = self._queues.get(int(label))
        return 0 if q is None else q.size

    def bankable(self, boxes: Tensor) -> Tensor:
        """``bool[N]``: ¼-res box width and height both ``> min_box_size`` (§5.1)."""
        b = boxes.reshape(-1, 4).float()
        return ((b[:, 2] - b[:, 0]) > self.min_box_size) & ((b[:, 3] - b[:, 1]) > self.min_box_size)

    def to(self, device: torch.device | str) -> ObjectBank:
        self.device = torch.device(device)
        for q in self._queues.values():
            q.masks, q.feats, q.boxes = (t.to(self.device) for t in (q.masks, q.feats, q.boxes))
        return self

    # -- writing ------------------------------------------------------------------------------

    @torch.no_grad()
    def push(
        self, *, masks: Tensor, feats: Tensor, boxes: Tensor, labels: Tensor,
        filter_small: bool = True,
    ) -> int:
        """Append objects in order (teacher crops, detached). Returns how many were stored.

        Args:
            masks: ``float[N, m, m]``; feats: ``float[N, C, s, s]``; boxes: ``float[N, 4]`` ¼-res
                xyxy; labels: ``int64[N]``.
            filter_small: skip objects that are not :meth:`bankable` (counted in
                ``stats["rejected_small"]``).
        """
        n = int(labels.numel())
        if not (masks.shape[0] == feats.shape[0] == boxes.shape[0] == n):
            raise ValueError("push: masks, feats, boxes and labels must have the same length")
        if n == 0:
            return 0
        if tuple(masks.shape[1:]) != self.mask_shape or tuple(feats.shape[1:]) != self.feat_shape:
            raise ValueError(f"push: expected masks [N, {self.mask_shape}] and feats "
                             f"[N, {self.feat_shape}], got {tuple(masks.shape)}, "
                             f"{tuple(feats.shape)}")
        keep = self.bankable(boxes) if filter_small else torch.ones(n, dtype=torch.bool)
        keep = keep.tolist()
        stored = 0
        for i, label in enumerate(labels.tolist()):
            if not keep[i]:
                self.stats["rejected_small"] += 1
                continue
            self._queue(int(label), masks.device).append(masks[i], feats[i], boxes[i])
            stored += 1
        self.stats["pushed"] += stored
        return stored

    def _queue(self, label: int, device: torch.device) -> _Queue:
        if not 0 <= label < self.num_classes:
            raise ValueError(f"label {label} outside [0, {self.num_classes})")
        q = self._queues.get(label)
        if q is None:
            if self.device is None:
                self.device = torch.device(device)
            q = _Queue(self.capacity, self.mask_shape, self.feat_shape, dtype=self.dtype,
                       device=self.device)
            self._queues[label] = q
        return q

    # -- reading ------------------------------------------------------------------------------

    @torch.no_grad()
    def scores(self, *, mask: Tensor, feat: Tensor, box: Tensor, label: int) -> dict[str, Tensor]:
        """The four retrieval criteria against every filled slot of class ``label`` (§5.3).

        Returns ``{"fg_iou", "bg_iou", "appearance", "ratio", "selected"}``, each ``[K]`` with
        ``K`` the number of filled slots (0 when the class is absent).
        """
        q = self._queues.get(int(label))
        if q is None or q.size == 0:
            empty = torch.zeros(0)
            return {"fg_iou": empty, "bg_iou": empty, "appearance": empty, "ratio": empty,
                    "selected": empty.bool()}
        dev = q.masks.device
        masks, feats, boxes = q.masks[: q.size], q.feats[: q.size], q.boxes[: q.size]
        fg, bg = soft_ious(mask.to(dev), masks)
        sim = appearance_similarity(mask.to(dev), feat.to(dev), masks, feats)
        ratio = aspect_ratio_ratio(box.to(dev), boxes)
        lo, hi = self.ratio_range
        selected = ((fg > self.fg_iou_thresh) & (bg > self.bg_iou_thresh)
                    & (sim > self.appear_thresh) & (ratio >= lo) & (ratio <= hi))
        return {"fg_iou": fg, "bg_iou": bg, "appearance": sim, "ratio": ratio,
                "selected": selected}

    @torch.no_grad()
    def query(self, *, mask: Tensor, feat: Tensor, box: Tensor, label: int) -> Retrieved | None:
        """Objects of class ``label`` similar to the query (docs/method.md §5.3).

        Args:
            mask: ``float[m, m]`` the query's (student) mask probabilities.
            feat: ``float[C, s, s]`` the query's RoI feature, unit norm per location.
            box: ``float[4]`` ¼-res xyxy.
            label: the query's class.

        Returns:
            :class:`Retrieved` with ``min_retrieval <= K <= max_retrieval`` objects, on the
            query's device; ``None`` when the class has no queue yet (``stats["absent"]``) or
            fewer than ``min_retrieval`` slots pass (``stats["too_few"]``).
        """
        self.stats["queries"] += 1
        q = self._queues.get(int(label))
        if q is None:
            self.stats["absent"] += 1
            return None
        s = self.scores(mask=mask, feat=feat, box=box, label=label)
        idx = s["selected"].nonzero().flatten()
        if idx.numel() < self.min_retrieval:
            self.stats["too_few"] += 1
            return None
        if self.selection == "top":
            order = s["appearance"][idx].argsort(descending=True, stable=True)
            idx = idx[order]
        idx = idx[: self.max_retrieval]
        self.stats["hits"] += 1
        dev = mask.device
        return Retrieved(
            masks=q.masks[idx].to(dev, torch.float32),
            feats=q.feats[idx].to(dev, torch.float32),
            boxes=q.boxes[idx].to(dev),
            slots=idx.to(dev),
        )

    # -- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Filled slots of every queue (on CPU), pointers and counters."""
        queues = {}
        for label, q in self._queues.items():
            queues[int(label)] = {
                "masks": q.masks[: q.size].cpu().clone(),
                "feats": q.feats[: q.size].cpu().clone(),
                "boxes": q.boxes[: q.size].cpu().clone(),
                "ptr": q.ptr,
                "size": q.size,
            }
        return {"version": 1, "capacity": self.capacity, "num_classes": self.num_classes,
                "queues": queues, "stats": dict(self.stats)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore queues written by :meth:`state_dict` (same capacity and slot shapes)."""
        if int(state.get("capacity", -1)) != self.capacity:
            raise ValueError(f"object bank: checkpoint capacity {state.get('capacity')} != "
                             f"{self.capacity}")
        device = self.device if self.device is not None else torch.device("cpu")
        self.device = device
        self._queues = {}
        for label, s in state["queues"].items():
            q = self._queue(int(label), device)
            n = int(s["size"])
            if tuple(s["feats"].shape[1:]) != self.feat_shape or n > self.capacity:
                raise ValueError(f"object bank: class {label} has slots of shape "
                                 f"{tuple(s['feats'].shape)}, expected [<= {self.capacity}, "
                                 f"{self.feat_shape}]")
            q.masks[:n] = s["masks"].to(q.masks)
            q.feats[:n] = s["feats"].to(q.feats)
            q.boxes[:n] = s["boxes"].to(q.boxes)
            q.ptr, q.size = int(s["ptr"]), n
        self.stats = {k: int(state.get("stats", {}).get(k, 0)) for k in _STAT_KEYS}
