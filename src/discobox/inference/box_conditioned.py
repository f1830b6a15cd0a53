"""Box-conditioned inference: one mask per given box from SOLOv2's per-cell kernels.

The official ``BoxConditionalInference`` cannot run (docs/method.md §8.1, §12.1: ``get_seg``
does not accept ``gt_bboxes``, and the head-side logic was never committed). This module
implements the intent, following the reconstruction of docs/method.md §8.1 step by step:

1. each box (original image frame) is rescaled to the test scale exactly as ``Resize`` does it
   (factors ``w_img / W0`` and ``h_img / H0``, clipped to the resized image);
2. its level: ``best_target_single``'s rule (§3.4), the level minimising
   ``max(mid / scale, scale / mid)`` with ``scale = sqrt(w * h)`` of the rescaled box, but only
   among the levels whose inclusive ``scale_ranges`` contain the scale, i.e. the levels the
   training targets (§3.2) make it a positive of (all levels if none does). Design decision:
   ``best_target_single`` alone picks, for scales between the point where two mids are equally
   far and the next range's lower bound, a level the object was never trained on (official
   ranges: 30.7-48 px goes to level 1, trained on level 0 only; the CPU recipe: 22.6-32 px),
   and the kernel there gives an empty mask (BENCHMARKS.md, "Box-conditioned pseudo-labels").
   Its cell is
   ``floor(c / H_pad * S)`` of the centre of mass of the rounded, inclusive box mask (§3.3),
   with ``H_pad, W_pad = 4 h, 4 w`` the padded size;
3. that cell's kernel gives ``sigmoid(kernel . mask_feat)`` (§2.7);
4. the soft mask is pasted as in §7 step 10 (bilinear x4, crop to the resized image, bilinear to
   the original size), thresholded ``> mask_thr`` and confined to the box. Design decision: the
   box is *not* dilated; its region is the set of pixels it touches,
   the pixels whose centres lie in the box, clipped to the image (:func:`box_region`);
5. the score is the sigmoid class score of the box's category at that cell (no points-NMS, no
   maskness); for a category the model does not know (label ``-1``) the mask is the same
   (kernels are class-agnostic) and the score is the cell's best class score. Ours, for review:
   a *confidence* per mask (:func:`mask_confidence`), ``maskness x IoU(raw, CRF)``: the mean
   pasted probability inside the raw mask times the IoU of the raw mask with its CRF refinement
   (the ``confidence_crf`` teacher CRF, or the ``refine`` CRF when that is on); 0 for a filled
   box;
6. design decision for empty masks: the other cells of the 3x3 neighbourhood of the centre cell
   on the same level are tried, best class score first ("top-k cells around the centre"), and
   if all of them are empty inside the box the filled box is emitted (``source`` says which).

Memory stays bounded with hundreds of boxes: soft masks are computed ``chunk_size`` at a time at
1/4 resolution, and the paste is evaluated only inside each box. The two bilinear resizes are
linear maps, so the paste of a box is ``R[y0:y1] @ soft @ C[x0:x1]^T`` with ``R`` and ``C`` the
composed per-axis interpolation matrices (:func:`paste_matrix`); this equals
:meth:`SOLOv2PostProcessor.paste` restricted to the box up to float rounding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..modeling.crf.params import CRFParams, check_refine_mode
from ..modeling.crf.pseudo_labels import box_masks, crf_pseudo_labels
from ..modeling.solov2.head import dynamic_mask_logits
from ..modeling.solov2.outputs import HeadOutput
from ..modeling.solov2.targets import DEFAULT_SCALE_RANGES, box_center_of_mass, scale_mids
from .box_geometry import box_region, paste_matrix
from .box_result import SOURCE_BOX, SOURCE_CELL, SOURCE_NEIGHBOUR, BoxMasks, mask_confidence


@dataclass
class _ImageContext:
    """Per-image state of :meth:`BoxConditionedInference.__call__`, shared by its chunks."""

    mask_feat: Tensor  # float32[E, h, w]
    labels: Tensor  # int64[N]
    regions: Tensor  # int64[N, 4] pixel region in the original frame
    level: Tensor  # int64[N]
    rows: Tensor  # int64[N]
    cols: Tensor  # int64[N]
    grids: list[int]  # S per level
    R: Tensor  # float32[H0, h] row paste matrix
    C: Tensor  # float32[W0, w] column paste matrix
    kernels: list[Tensor]  # per level float32[E, S*S]
    scores: list[Tensor]  # per level float32[C, S*S] sigmoid class scores
    image_q: Tensor | None  # the CRF's 1/4-res image (refine only)
    quarter_boxes: Tensor | None  # [N, h, w] box masks at 1/4 res (refine only)


class BoxConditionedInference:
    """One mask per given box (docs/method.md §8.1 reconstruction; see the module docstring).

    Args:
        mask_thr: binarisation threshold of the pasted soft mask (``cfg.test.mask_thr``).
        scale_ranges: per-level inclusive ``(lo, hi)`` of training (§3.2); among the levels
            containing a box's scale, the nearest geometric mean picks (§3.4, step 2 above).
        neighbour_fallback: try the 3x3 neighbourhood when the centre cell's mask is empty.
        chunk_size: boxes whose 1/4-res soft masks are held at a time.
        refine: ours, ``None`` or a CRF mode (``"meanfield"``, ``"faithful"``; config
            ``test.refine``): the cell's 1/4-res soft mask is refined by that CRF inside the
            given box before the paste (step 4), as the training teacher refines the student's
            masks (§4.3-4.4). The neighbour fallback (step 6) pastes unrefined masks.
        refine_params: the CRF's :class:`CRFParams` (config ``crf.*``).
        confidence_crf: ours, the CRF (``mode`` and values) whose agreement with the raw mask
            enters :attr:`BoxMasks.confidence` when ``refine`` is off (the training teacher's,
            ``cfg.crf``); ``None``: confidence is the maskness alone.
    """

    def __init__(
        self,
        *,
        mask_thr: float = 0.4,
        scale_ranges: Sequence[Sequence[float]] = DEFAULT_SCALE_RANGES,
        neighbour_fallback: bool = True,
        chunk_size: int = 64,
        refine: str | None = None,
        refine_params: CRFParams | None = None,
        confidence_crf: CRFParams | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.refine = check_refine_mode(refine)
        self.refine_params = refine_params if refine_params is not None else CRFParams()
        if confidence_crf is not None:
            check_refine_mode(confidence_crf.mode)
        self.confidence_crf = confidence_crf
        self.mask_thr = mask_thr
        self.ranges = [(float(lo), float(hi)) for lo, hi in scale_ranges]
        self.mids = scale_mids(self.ranges)
        self.neighbour_fallback = neighbour_fallback
        self.chunk_size = chunk_size

    def select_cells(
        self, boxes: Tensor, *, padded_size: tuple[int, int], num_grids: Sequence[int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Level and cell of each box (module docstring, step 2).

        Args:
            boxes: ``float[N, 4]`` xyxy in the resized (test-scale) frame.
            padded_size: ``(H, W)`` padded input size.
            num_grids: ``S_l`` per level.

        Returns:
            ``int64[N]`` level, ``int64[N]`` row ``i`` and ``int64[N]`` column ``j`` of the cell.
        """
        boxes = boxes.float().cpu()
        wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
        scale = torch.sqrt(wh[:, 0] * wh[:, 1]).clamp(min=1e-6)[:, None]
        mids = torch.tensor(self.mids[: len(num_grids)], dtype=torch.float32)
        lo, hi = torch.tensor(self.ranges[: len(num_grids)], dtype=torch.float32).T
        dist = torch.maximum(mids / scale, scale / mids)
        trained = (scale >= lo) & (scale <= hi)  # the levels whose targets hold the box (§3.2)
        dist = torch.where(trained | ~trained.any(dim=1, keepdim=True), dist, torch.inf)
        level = dist.argmin(dim=1)
        center = box_center_of_mass(boxes, padded_size)  # (c_y, c_x)
        grids = torch.tensor(list(num_grids), dtype=torch.int64)[level]
        H, W = padded_size
        # (c / H) // (1 / S) in float32, as targets._grid_coord (§3.3)
        rows = torch.div(center[:, 0] / H, 1.0 / grids.float(), rounding_mode="floor").long()
        cols = torch.div(center[:, 1] / W, 1.0 / grids.float(), rounding_mode="floor").long()
        rows = torch.minimum(rows.clamp(min=0), grids - 1)
        cols = torch.minimum(cols.clamp(min=0), grids - 1)
        return level, rows, cols

    @torch.no_grad()
    def __call__(
        self,
        out: HeadOutput,
        index: int,
        *,
        boxes: Tensor,
        labels: Tensor,
        image_size: tuple[int, int],
        orig_size: tuple[int, int],
        window: tuple[int, int, int, int] | None = None,
    ) -> Iterator[BoxMasks]:
        """Masks for the boxes of image ``index`` of a batch, yielded ``chunk_size`` at a time.

        Args:
            out: network outputs of the batch.
            index: the image within the batch.
            boxes: ``float[N, 4]`` xyxy in the *original* image frame, inside the image.
            labels: ``int64[N]`` model class per box, ``-1`` for a category the model lacks.
            image_size: ``(h_img, w_img)`` resized size before padding (of the window, with
                ``window``).
            orig_size: ``(H0, W0)`` original size.
            window: tiled inference (ours, config ``test.tile``): ``(y0, x0, H, W)``, the
                network input ``index`` is the window at ``(y0, x0)`` of the resized image of
                ``H x W`` pixels. Each box is mapped into the window (and clipped to it) for the
                cell choice, and the mask is pasted back through the window's place; a box that
                leaves the window gets no mask outside it (:meth:`tile_for_boxes` picks the
                window that holds the box best).
        """
        ctx = self._image_context(out, index, boxes=boxes, labels=labels, image_size=image_size,
                                  orig_size=orig_size, window=window)
        if ctx is None:
            return
        n = ctx.labels.shape[0]
        for start in range(0, n, self.chunk_size):
            yield self._chunk(ctx, torch.arange(start, min(start + self.chunk_size, n)))

    def _image_context(
        self, out: HeadOutput, index: int, *, boxes: Tensor, labels: Tensor,
        image_size: tuple[int, int], orig_size: tuple[int, int],
        window: tuple[int, int, int, int] | None,
    ) -> _ImageContext | None:
        """Everything the chunks of one image share (arguments as :meth:`__call__`); ``None``
        without boxes."""
        mask_feat = out.mask_feat[index].float()  # [E, h, w]
        device = mask_feat.device
        _, h, w = mask_feat.shape
        padded = (4 * h, 4 * w)
        h_img, w_img = int(image_size[0]), int(image_size[1])
        y_off, x_off, h_full, w_full = (0, 0, h_img, w_img) if window is None else (
            int(v) for v in window)
        H0, W0 = int(orig_size[0]), int(orig_size[1])
        boxes = boxes.detach().float().cpu().reshape(-1, 4)
        labels = labels.detach().long().cpu().reshape(-1)
        if boxes.shape[0] == 0:
            return None
        factor = torch.tensor([w_full / W0, h_full / H0, w_full / W0, h_full / H0])
        resized = boxes * factor - torch.tensor([x_off, y_off, x_off, y_off], dtype=torch.float32)
        resized[:, 0::2] = resized[:, 0::2].clamp(0, w_img)
        resized[:, 1::2] = resized[:, 1::2].clamp(0, h_img)
        grids = [int(k.shape[-1]) for k in out.kernels]
        level, rows, cols = self.select_cells(resized, padded_size=padded, num_grids=grids)
        image_q = quarter_boxes = None
        if self._check_mode() is not None:  # the CRF's colours and box masks at 1/4 res
            image_q = out.quarter_images(index)
            quarter_boxes = box_masks(resized, h, w, stride=4).to(device)
        return _ImageContext(
            mask_feat=mask_feat, labels=labels, regions=box_region(boxes, H0, W0),
            level=level, rows=rows, cols=cols, grids=grids,
            R=paste_matrix(h, h_img, H0, offset=y_off, n_full=h_full, device=device),
            C=paste_matrix(w, w_img, W0, offset=x_off, n_full=w_full, device=device),
            kernels=[k[index].float().flatten(1) for k in out.kernels],
            scores=[c[index].float().sigmoid().flatten(1) for c in out.cate_logits],
            image_q=image_q, quarter_boxes=quarter_boxes,
        )

    def _check_mode(self) -> str | None:
        """The CRF mode of the confidence check: ``refine`` when on, else ``confidence_crf``'s."""
        if self.refine is not None:
            return self.refine
        return None if self.confidence_crf is None else self.confidence_crf.mode

    def _crf(self, soft: Tensor, ctx: _ImageContext, sel: Tensor) -> Tensor:
        """The refine CRF (or, with ``refine`` off, ``confidence_crf``) of ``soft`` [n, h, w]."""
        mode = self._check_mode()
        params = self.refine_params if self.refine is not None else self.confidence_crf
        return crf_pseudo_labels(soft, ctx.quarter_boxes[sel.to(soft.device)], ctx.image_q,
                                 mode=mode, params=params)

    def _chunk(self, ctx: _ImageContext, sel: Tensor) -> BoxMasks:
        """Masks of the boxes ``sel`` (``int64[n]``) of one image (steps 3-6)."""
        lv = ctx.level[sel]
        cells = ctx.rows[sel] * torch.tensor(ctx.grids)[lv] + ctx.cols[sel]
        kern = torch.stack([ctx.kernels[int(a)][:, int(c)] for a, c in zip(lv, cells)])
        score = torch.stack([self._score(ctx.scores[int(a)], int(c), int(lb))
                             for a, c, lb in zip(lv, cells, ctx.labels[sel])])
        raw = dynamic_mask_logits(kern, ctx.mask_feat).sigmoid()  # [n, h, w]
        check = self._crf(raw, ctx, sel) if self._check_mode() is not None else None
        soft = check if self.refine is not None else raw
        crops, source, conf = [], [], []
        for k, i in enumerate(sel.tolist()):
            crop = self._paste(soft[k], ctx.R, ctx.C, ctx.regions[i])
            src = SOURCE_CELL
            prob, chk = raw[k], None if check is None else check[k]
            if not bool(crop.any()) and self.neighbour_fallback:
                crop, score[k], found, nsoft = self._neighbours(
                    ctx.kernels, ctx.scores, ctx.mask_feat, ctx.R, ctx.C, ctx.regions[i],
                    int(ctx.level[i]), int(ctx.rows[i]), int(ctx.cols[i]),
                    ctx.grids[int(ctx.level[i])], int(ctx.labels[i]),
                )
                src = SOURCE_NEIGHBOUR if found else SOURCE_CELL
                if found:
                    prob = nsoft
                    chk = None if check is None else self._crf(nsoft[None], ctx, sel[k:k + 1])[0]
            if not bool(crop.any()):
                crop = torch.ones_like(crop)
                src = SOURCE_BOX
            conf.append(0.0 if src == SOURCE_BOX else mask_confidence(
                self._paste_soft(prob, ctx.R, ctx.C, ctx.regions[i]),
                None if chk is None else self._paste_soft(chk, ctx.R, ctx.C, ctx.regions[i]),
                self.mask_thr))
            crops.append(crop.cpu())
            source.append(src)
        return BoxMasks(index=sel, regions=ctx.regions[sel], crops=crops, scores=score.cpu(),
                        source=torch.tensor(source, dtype=torch.int64),
                        confidence=torch.tensor(conf, dtype=torch.float32))

    @staticmethod
    def tile_for_boxes(
        boxes: Tensor, windows: Sequence[tuple[int, int]], tile: tuple[int, int],
        full_size: tuple[int, int],
    ) -> Tensor:
        """The window each box is labelled in (tiled inference, ours).

        The window whose edges leave the box the widest margin, an edge on the image border
        counting as infinitely far: a box that fits in some window gets the one that holds it
        most centrally, a larger box the one that cuts it least. (Detection has no box to go
        by and keeps the window whose core holds a detection's centre, :func:`predict_tiled`.)

        Args:
            boxes: ``float[N, 4]`` xyxy in the resized image's frame.
            windows: ``(y0, x0)`` origin of each window.
            tile: ``(th, tw)`` window size.
            full_size: ``(H, W)`` of the resized image.

        Returns:
            ``int64[N]`` index into ``windows``.
        """
        b = boxes.detach().double().cpu().reshape(-1, 1, 4)
        org = torch.tensor([[x0, y0] for y0, x0 in windows], dtype=torch.float64)  # [K, 2]
        th, tw = tile
        H, W = full_size
        lo, hi = org, org + torch.tensor([tw, th], dtype=torch.float64)
        inf = torch.tensor(float("inf"), dtype=torch.float64)
        margins = torch.stack([
            torch.where(lo[:, 0] > 0, b[..., 0] - lo[:, 0], inf),
            torch.where(lo[:, 1] > 0, b[..., 1] - lo[:, 1], inf),
            torch.where(hi[:, 0] < W, hi[:, 0] - b[..., 2], inf),
            torch.where(hi[:, 1] < H, hi[:, 1] - b[..., 3], inf),
        ], dim=-1).amin(dim=-1)  # [N, K]
        return margins.argmax(dim=1)

    @staticmethod
    def _score(scores: Tensor, cell: int, label: int) -> Tensor:
        """Sigmoid score of ``label`` at ``cell``; the best class where ``label < 0``."""
        col = scores[:, cell]
        return col.max() if label < 0 or label >= col.shape[0] else col[label]

    @staticmethod
    def _paste_soft(soft: Tensor, R: Tensor, C: Tensor, region: Tensor) -> Tensor:
        """``float[h, w]`` soft mask -> ``float[y1 - y0, x1 - x0]`` pasted inside ``region``."""
        x0, y0, x1, y1 = (int(v) for v in region)
        return R[y0:y1] @ soft @ C[x0:x1].T

    def _paste(self, soft: Tensor, R: Tensor, C: Tensor, region: Tensor) -> Tensor:
        """``float[h, w]`` soft mask -> ``bool[y1 - y0, x1 - x0]`` inside ``region``."""
        return self._paste_soft(soft, R, C, region) > self.mask_thr

    def _neighbours(
        self, kernels: list[Tensor], scores: list[Tensor], mask_feat: Tensor, R: Tensor,
        C: Tensor, region: Tensor, level: int, row: int, col: int, S: int, label: int,
    ) -> tuple[Tensor, Tensor, bool, Tensor | None]:
        """First non-empty mask among the 8 neighbouring cells, best class score first: the
        pasted mask, its class score, whether one was found and its ``float[h, w]`` soft mask."""
        cells = [
            (row + di) * S + (col + dj)
            for di in (-1, 0, 1)
            for dj in (-1, 0, 1)
            if (di or dj) and 0 <= row + di < S and 0 <= col + dj < S
        ]
        fallback = self._score(scores[level], row * S + col, label)
        x0, y0, x1, y1 = (int(v) for v in region)
        empty = torch.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), dtype=torch.bool,
                            device=mask_feat.device)
        if not cells:
            return empty, fallback, False, None
        cand = torch.stack([self._score(scores[level], c, label) for c in cells])
        order = torch.argsort(cand, descending=True, stable=True).tolist()
        kern = kernels[level][:, [cells[o] for o in order]].T
        soft = dynamic_mask_logits(kern, mask_feat).sigmoid()
        for k, o in enumerate(order):
            crop = self._paste(soft[k], R, C, region)
            if bool(crop.any()):
                return crop, cand[o], True, soft[k]
        return empty, fallback, False, None
