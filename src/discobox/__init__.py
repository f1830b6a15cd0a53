"""DiscoBox on plain PyTorch: instance segmentation and correspondence learned from boxes.

Public API::

    from discobox import Config, load_config, build_model, load_model, Predictor, pseudo_label
    from discobox import DiscoboxError  # every error a user's input can cause

    predictor = Predictor.from_checkpoint("runs/demo/model_final.pth")
    instances = predictor("image.jpg")                         # path, PIL image or array
    masks, scores = predictor.segment_boxes("image.jpg", [[x0, y0, x1, y1]])  # masks of boxes
"""

from .checkpoint.load import load_model
from .config import Config, load_config
from .errors import DiscoboxError
from .inference.predictor import Predictor
from .inference.pseudo_label import pseudo_label
from .modeling.build import build_model

__all__ = [
    "Config",
    "DiscoboxError",
    "Predictor",
    "build_model",
    "load_config",
    "load_model",
    "pseudo_label",
]
__version__ = "0.1.0"
