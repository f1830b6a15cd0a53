"""``discobox export-onnx``: the network forward to ONNX, checked with onnxruntime
(:func:`discobox.tools.export_onnx.export_checkpoint`)."""

from __future__ import annotations

import argparse
from typing import Any

from ..engine.log import setup_logger
from ..tools.export_onnx import DEFAULT_OPSET, EXPORTERS, export_checkpoint


def cmd_export_onnx(args: argparse.Namespace) -> int:
    setup_logger()
    out, (height, width), report = export_checkpoint(
        args.weights, args.out, config=args.config, height=args.height, width=args.width,
        batch=args.batch, opset=args.opset, exporter=args.exporter, check=args.check,
    )
    print(f"wrote {out} (input images: float32[{args.batch}, 3, {height}, {width}])")
    if report is not None:
        print(f"onnxruntime parity: {report.summary()}")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``discobox export-onnx --weights W --out model.onnx [--config C] [--height H
    --width W]``."""
    p = subparsers.add_parser(
        "export-onnx", help="export the network forward to ONNX and check it with onnxruntime"
    )
    p.add_argument("--weights", required=True, help="discobox or official checkpoint")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--config", default=None, help="recipe or YAML (default: the checkpoint's)")
    p.add_argument("--height", type=int, default=None,
                   help="padded input height, multiple of 32 (default: from data.test_scale)")
    p.add_argument("--width", type=int, default=None,
                   help="padded input width, multiple of 32 (default: from data.test_scale)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--exporter", choices=EXPORTERS, default="dynamo")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip the onnxruntime parity check")
    p.set_defaults(func=cmd_export_onnx)
    return p
