"""DiscoBox on plain PyTorch: instance segmentation and correspondence learned from boxes.

Public API::

    from discobox import Config, load_config, build_model, load_model, Predictor
"""

from .checkpoint.load import load_model
from .config import Config, load_config
from .inference.predictor import Predictor
from .modeling.build import build_model

__all__ = ["Config", "Predictor", "build_model", "load_config", "load_model"]
__version__ = "0.1.0"
