"""ONNX export of the SOLOv2 network and a parity check with onnxruntime.

What is exported is the network forward only (:class:`OnnxHead`): padded RGB images in,
per-level category logits and dynamic kernels plus the mask features out. Input normalisation is
inside the graph. Post-processing (sigmoid + points NMS, mask thresholds, Matrix NMS, pasting
masks back at the original size; docs/method.md §7) stays in Python: it is data-dependent (variable
numbers of candidates) and cheap, and :class:`SOLOv2PostProcessor` consumes the ONNX outputs
unchanged (:func:`onnx_head_output`).

Graph contract (static shapes: export once per padded input size):

- input ``images``: ``float32[B, 3, H, W]`` RGB 0..255, ``H`` and ``W`` multiples of 32, padded
  bottom/right with the mean colour (``discobox.data.loader.collate`` does this), which
  normalises to 0, so no image sizes are needed;
- outputs ``cate_logits_{l}``: ``float32[B, C, S_l, S_l]`` (no sigmoid), ``kernels_{l}``:
  ``float32[B, E, S_l, S_l]`` for the 5 levels, and ``mask_feat``: ``float32[B, E, H/4, W/4]``.

DCNv2 models need the ``dynamo`` exporter and opset >= 19 (ONNX ``DeformConv``, which
onnxruntime's CPU provider runs); the legacy ``torchscript`` exporter handles plain models only.

Parity (:func:`check_onnx`), fp32 on CPU: every output must satisfy
``|onnx - torch| <= ATOL + RTOL * |torch|`` elementwise with ``ATOL = RTOL = 1e-4`` (typical
differences are ~1e-6 on logits and ~1e-5 on mask features); after our post-processing both give
the same detections (count and labels), scores within ``ATOL`` and at most ``MASK_TOL = 1e-3`` of
mask pixels differing (threshold flips at ``mask_thr``). Where some mask pixel does flip, scores
may differ by up to ``SCORE_FLIP_TOL = 1e-2``: a flipped pixel moves its mask's maskness and,
through Matrix NMS, the decay of every overlapping lower score.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoint.load import load_model
from ..errors import InvalidInputError
from ..modeling.build import build_postprocessor
from ..modeling.solov2.dcn import ModulatedDeformConv2d
from ..modeling.solov2.model import SOLOv2
from ..modeling.solov2.outputs import HeadOutput
from ..modeling.solov2.postprocess import SOLOv2PostProcessor

logger = logging.getLogger("discobox")

ATOL = 1e-4
RTOL = 1e-4
MASK_TOL = 1e-3
SCORE_FLIP_TOL = 1e-2
DEFAULT_OPSET = 19
EXPORTERS = ("dynamo", "torchscript")


class OnnxHead(nn.Module):
    """The exported graph: ``images`` -> ``(*cate_logits, *kernels, mask_feat)``.

    Args:
        model: a :class:`SOLOv2` in eval mode.

    Shapes:
        ``float[B, 3, H, W]`` -> ``L`` tensors ``float[B, C, S_l, S_l]``, ``L`` tensors
        ``float[B, E, S_l, S_l]``, then ``float[B, E, H/4, W/4]``.
    """

    def __init__(self, *, model: SOLOv2) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.model(images)
        return (*out.cate_logits, *out.kernels, out.mask_feat)


def output_names(num_levels: int) -> list[str]:
    """``cate_logits_0.., kernels_0.., mask_feat``."""
    return ([f"cate_logits_{i}" for i in range(num_levels)]
            + [f"kernels_{i}" for i in range(num_levels)] + ["mask_feat"])


def _has_dcn(model: nn.Module) -> bool:
    return any(isinstance(m, ModulatedDeformConv2d) for m in model.modules())


def export_onnx(
    model: SOLOv2,
    out: str | Path,
    *,
    height: int,
    width: int,
    batch: int = 1,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
) -> Path:
    """Export ``model`` (moved to CPU, eval) for ``float[batch, 3, height, width]``; atomic write.

    Raises:
        InvalidInputError: sizes not multiples of 32, an unknown exporter, or DCN with the
            torchscript exporter / an opset below 19.
    """
    if height % 32 or width % 32 or height <= 0 or width <= 0:
        raise InvalidInputError(
            f"height and width must be positive multiples of 32, got {height}x{width}")
    if exporter not in EXPORTERS:
        raise InvalidInputError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if _has_dcn(model) and (exporter != "dynamo" or opset < 19):
        raise InvalidInputError("DCNv2 models export only with exporter='dynamo' and opset "
                                ">= 19 (ONNX DeformConv)")
    model = model.cpu().eval().float()
    wrapper = OnnxHead(model=model).eval()
    num_levels = len(model.bbox_head.num_grids)
    names = output_names(num_levels)
    dummy = torch.full((batch, 3, height, width), 128.0)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with torch.no_grad():
            if exporter == "dynamo":
                program = torch.onnx.export(wrapper, (dummy,), dynamo=True, opset_version=opset,
                                            input_names=["images"], output_names=names,
                                            verbose=False)
                program.save(tmp, external_data=False)
            else:
                torch.onnx.export(wrapper, (dummy,), tmp, dynamo=False, opset_version=opset,
                                  input_names=["images"], output_names=names)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    logger.info("exported %s (%s, opset %d, input [%d, 3, %d, %d])", out, exporter, opset,
                batch, height, width)
    return out


def run_onnx(path: str | Path, images: np.ndarray | Tensor) -> list[np.ndarray]:
    """Run an exported graph with onnxruntime on CPU; outputs in :func:`output_names` order."""
    import onnxruntime as ort  # optional dependency (``pip install discobox[onnx]``)

    if isinstance(images, Tensor):
        images = images.detach().cpu().numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images.astype(np.float32)})


def onnx_head_output(outputs: list[np.ndarray | Tensor], images: Tensor) -> HeadOutput:
    """Graph outputs -> :class:`HeadOutput` for :class:`SOLOv2PostProcessor`.

    ``p2`` is not exported (only training uses it) and is left empty.
    """
    tensors = [torch.as_tensor(np.asarray(o)) for o in outputs]
    n = (len(tensors) - 1) // 2
    return HeadOutput(cate_logits=tensors[:n], kernels=tensors[n:2 * n], mask_feat=tensors[-1],
                      p2=torch.empty(0), images=images)


@dataclass
class ParityReport:
    """ONNX vs PyTorch on one input (tolerances in the module docstring)."""

    max_abs_diff: dict[str, float] = field(default_factory=dict)
    max_abs_ref: dict[str, float] = field(default_factory=dict)
    failed_outputs: list[str] = field(default_factory=list)
    detections: tuple[int, int] | None = None  # (torch, onnx), summed over images
    labels_equal: bool = True
    score_max_diff: float = 0.0
    mask_disagreement: float = 0.0  # fraction of mask pixels that differ

    @property
    def ok(self) -> bool:
        same = self.detections is None or (self.detections[0] == self.detections[1]
                                           and self.labels_equal)
        return (not self.failed_outputs and same and self.score_max_diff <= self.score_tol
                and self.mask_disagreement <= MASK_TOL)

    @property
    def score_tol(self) -> float:
        """``ATOL``, or ``SCORE_FLIP_TOL`` once a mask pixel flips (module docstring)."""
        return ATOL if self.mask_disagreement == 0 else SCORE_FLIP_TOL

    def summary(self) -> str:
        worst = max(self.max_abs_diff, key=self.max_abs_diff.get)
        text = (f"max |onnx - torch| = {self.max_abs_diff[worst]:.2e} ({worst}, |torch| up to "
                f"{self.max_abs_ref[worst]:.2f}); tolerance atol={ATOL:g} rtol={RTOL:g}")
        if self.detections is not None:
            text += (f"; detections torch/onnx {self.detections[0]}/{self.detections[1]}, "
                     f"score diff {self.score_max_diff:.2e} (tolerance {self.score_tol:g}), "
                     f"mask pixels differing {self.mask_disagreement:.2e} (tolerance "
                     f"{MASK_TOL:g})")
        if self.failed_outputs:
            text += f"; outputs out of tolerance: {', '.join(self.failed_outputs)}"
        return text + ("" if self.ok else "; PARITY FAILED")


@torch.no_grad()
def check_onnx(
    path: str | Path,
    model: SOLOv2,
    images: Tensor,
    *,
    post: SOLOv2PostProcessor | None = None,
    image_sizes: list[tuple[int, int]] | None = None,
    orig_sizes: list[tuple[int, int]] | None = None,
) -> ParityReport:
    """Compare the exported graph (onnxruntime, CPU) with ``model`` on ``images``.

    Args:
        path: the ``.onnx`` file.
        model: the PyTorch model it was exported from.
        images: ``float[B, 3, H, W]`` at the exported size (padded RGB 0..255).
        post: also compare detections after this post-processor.
        image_sizes / orig_sizes: for ``post``; default: the full padded size.
    """
    model = model.cpu().eval().float()
    images = images.float().cpu()
    ref = OnnxHead(model=model)(images)
    got = run_onnx(path, images)
    names = output_names(len(model.bbox_head.num_grids))
    if len(got) != len(names):
        raise ValueError(f"{path}: {len(got)} outputs, expected {len(names)} ({names})")
    report = ParityReport()
    for name, r, g in zip(names, ref, got):
        r = r.numpy()
        if r.shape != g.shape:
            raise ValueError(f"{path}: output {name} is {g.shape}, PyTorch gives {r.shape}")
        report.max_abs_diff[name] = float(np.abs(g - r).max())
        report.max_abs_ref[name] = float(np.abs(r).max())
        if not np.allclose(g, r, rtol=RTOL, atol=ATOL):
            report.failed_outputs.append(name)
    if post is not None:
        b, _, h, w = images.shape
        sizes = image_sizes or [(h, w)] * b
        origs = orig_sizes or sizes
        ref_inst = post(onnx_head_output(list(ref), images), image_sizes=sizes, orig_sizes=origs)
        got_inst = post(onnx_head_output(got, images), image_sizes=sizes, orig_sizes=origs)
        n_ref = sum(len(i) for i in ref_inst)
        n_got = sum(len(i) for i in got_inst)
        report.detections = (n_ref, n_got)
        differing, total = 0, 0
        for a, c in zip(ref_inst, got_inst):
            if len(a) != len(c) or not torch.equal(a.labels, c.labels):
                report.labels_equal = False
                continue
            if len(a):
                report.score_max_diff = max(report.score_max_diff,
                                            float((a.scores - c.scores).abs().max()))
                differing += int((a.masks ^ c.masks).sum())
                total += a.masks.numel()
        report.mask_disagreement = differing / total if total else 0.0
    return report


def _default_size(test_scale: tuple[int, int]) -> tuple[int, int]:
    """Landscape padded size of the test scale: ``(ceil32(short), ceil32(long))``."""
    long_side, short_side = max(test_scale), min(test_scale)
    return -(-short_side // 32) * 32, -(-long_side // 32) * 32


def export_checkpoint(
    weights: str | Path,
    out: str | Path,
    *,
    config: str | Path | None = None,
    height: int | None = None,
    width: int | None = None,
    batch: int = 1,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
    check: bool = True,
) -> tuple[Path, tuple[int, int], ParityReport | None]:
    """Export a checkpoint's network (``discobox export-onnx``) and optionally check parity.

    ``height``/``width`` default to the padded landscape size of ``data.test_scale``. The parity
    check runs on uniform random images (seed 0) through the config's post-processor.

    Returns:
        ``(onnx path, (height, width), parity report or None)``.

    Raises:
        RuntimeError: the parity check fails (the report names the outputs out of tolerance).
    """
    model, cfg = load_model(weights, config=config)
    default_h, default_w = _default_size(tuple(cfg.data.test_scale))
    height, width = height or default_h, width or default_w
    path = export_onnx(model, out, height=height, width=width, batch=batch, opset=opset,
                       exporter=exporter)
    if not check:
        return path, (height, width), None
    gen = torch.Generator().manual_seed(0)
    images = torch.rand((batch, 3, height, width), generator=gen) * 255
    report = check_onnx(path, model, images, post=build_postprocessor(cfg))
    if not report.ok:
        raise RuntimeError(f"{path}: ONNX outputs differ from PyTorch: {report.summary()}")
    return path, (height, width), report
