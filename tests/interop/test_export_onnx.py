"""ONNX export of the network forward and onnxruntime parity (tolerances in export_onnx.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import tiny_overrides

from discobox.cli.main import main
from discobox.config import load_config
from discobox.modeling.build import build_model, build_postprocessor
from discobox.tools.export_onnx import (
    ATOL,
    MASK_TOL,
    SCORE_FLIP_TOL,
    ParityReport,
    check_onnx,
    export_onnx,
    output_names,
)

pytest.importorskip("onnx", reason="onnx not installed (optional: pip install onnx)")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (optional)")


def _tiny(dcn: bool = False, **extra):
    items = tiny_overrides(Path("unused"), Path("unused"))
    if dcn:  # DCNv2 in the head towers and the mask branch (the backbone's needs ResNet-50)
        items += ["model.dcn_head=true"]
    cfg = load_config(None, items + [f"{k}={v}" for k, v in extra.items()])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        # Scores around 0.5 (instead of the 0.01 prior) so that post-processing has candidates;
        # non-zero DCN offsets so that the offset layout is exercised.
        model.bbox_head.solo_cate.bias.zero_()
        for name, p in model.named_parameters():
            if "conv_offset" in name:
                p.normal_(std=0.05)
    return model, cfg


def _images(h=64, w=96, b=1):
    return torch.rand((b, 3, h, w), generator=torch.Generator().manual_seed(1)) * 255


def test_parity_plain_model(tmp_path):
    model, cfg = _tiny()
    # The legacy exporter is ~10x faster here; the dynamo one is tested with DCN below.
    path = export_onnx(model, tmp_path / "tiny.onnx", height=64, width=96,
                       exporter="torchscript", opset=17)
    import onnx

    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == output_names(5)
    assert [i.name for i in graph.input] == ["images"]
    post = build_postprocessor(cfg)
    report = check_onnx(path, model, _images(), post=post,
                        image_sizes=[(60, 90)], orig_sizes=[(120, 180)])
    print(report.summary())
    assert report.ok, report.summary()
    assert report.detections[0] > 0
    assert report.detections[0] > 0 and report.score_max_diff <= ATOL
    assert report.mask_disagreement <= MASK_TOL
    assert max(report.max_abs_diff.values()) < 1e-4


@pytest.mark.slow
def test_parity_dcn_model(tmp_path):
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    model, cfg = _tiny(dcn=True)
    path = export_onnx(model, tmp_path / "dcn.onnx", height=64, width=64)
    report = check_onnx(path, model, _images(64, 64), post=build_postprocessor(cfg))
    print(report.summary())
    assert report.ok, report.summary()
    assert report.detections[0] > 0


def test_score_tolerance_widens_only_where_mask_pixels_flip():
    """A flipped mask pixel moves maskness and Matrix NMS decays: scores then get SCORE_FLIP_TOL;
    with identical masks they must agree to ATOL."""
    def report(score_diff, flips):
        return ParityReport(max_abs_diff={"mask_feat": 1e-5}, max_abs_ref={"mask_feat": 3.0},
                            detections=(10, 10), score_max_diff=score_diff,
                            mask_disagreement=flips)

    assert report(ATOL / 2, 0.0).ok
    assert not report(1.3e-3, 0.0).ok
    assert report(1.3e-3, 4.9e-6).ok
    assert not report(2 * SCORE_FLIP_TOL, 4.9e-6).ok
    assert not report(ATOL / 2, 2 * MASK_TOL).ok
    assert "tolerance 0.01" in report(1.3e-3, 4.9e-6).summary()


def test_rejects_bad_requests(tmp_path):
    model, _ = _tiny()
    with pytest.raises(ValueError, match="multiples of 32"):
        export_onnx(model, tmp_path / "x.onnx", height=60, width=96)
    with pytest.raises(ValueError, match="exporter"):
        export_onnx(model, tmp_path / "x.onnx", height=64, width=96, exporter="tf")
    dcn, _ = _tiny(dcn=True)
    with pytest.raises(ValueError, match="DCNv2 .*'dynamo'"):
        export_onnx(dcn, tmp_path / "x.onnx", height=64, width=64, exporter="torchscript")
    assert not (tmp_path / "x.onnx").exists()


def test_cli_export_onnx(tmp_path, capsys):
    model, cfg = _tiny()
    weights = tmp_path / "tiny.pth"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, weights)
    out = tmp_path / "cli.onnx"
    assert main(["export-onnx", "--weights", str(weights), "--out", str(out), "--height", "64",
                 "--width", "96", "--exporter", "torchscript", "--opset", "17"]) == 0
    text = capsys.readouterr().out
    assert out.exists() and "float32[1, 3, 64, 96]" in text and "onnxruntime parity" in text
    assert "FAILED" not in text
