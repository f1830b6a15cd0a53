"""Device selection and mixed precision: the two torch-device decisions every entry point makes."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext

import torch

from .errors import InvalidInputError


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> this process's CUDA device (``LOCAL_RANK``) when CUDA exists, else the CPU;
    any other name -> ``torch.device(name)``.

    Raises:
        InvalidInputError: a CUDA device is named on a machine without CUDA.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device {name!r}: CUDA is not available on this machine")
    return device


def amp_autocast(device: torch.device, amp: str) -> AbstractContextManager:
    """Mixed precision on CUDA (``solver.amp``: ``"fp16"``, ``"bf16"``); a no-op on the CPU or with
    ``"none"``."""
    if device.type != "cuda" or amp == "none":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.float16 if amp == "fp16" else torch.bfloat16)
