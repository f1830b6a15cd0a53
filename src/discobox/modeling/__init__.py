"""SOLOv2 network, DiscoBox losses, CRF teacher and post-processing (METHOD.md §2-§4, §7)."""

from .build import build_criterion, build_model, build_postprocessor
from .solov2.model import SOLOv2

__all__ = ["SOLOv2", "build_criterion", "build_model", "build_postprocessor"]
