"""Process-group helpers for ``torchrun`` (NCCL on CUDA, gloo on CPU).

``torchrun --nproc-per-node N -m discobox train CONFIG`` sets ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE``; :func:`init_distributed` reads them. Without them everything runs in one process.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

# Re-exported: engine code calls them as ``du.resolve_device`` / ``du.amp_autocast``.
from ..device import amp_autocast as amp_autocast
from ..device import resolve_device as resolve_device


def is_dist() -> bool:
    """Whether a default process group is initialised (several ranks)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    """Rank 0, or the single process: the one that logs and writes files."""
    return get_rank() == 0


def init_distributed(device: torch.device) -> bool:
    """Initialise the default process group if launched by torchrun; return True if it did."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or is_dist():
        return is_dist()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return True


def cleanup_distributed() -> None:
    """Wait for every rank, then destroy the process group (a no-op without one)."""
    if is_dist():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of floats over ranks (identical key order on every rank is required)."""
    if not is_dist() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= get_world_size()
    return dict(zip(keys, t.tolist()))


def all_gather_objects(obj):
    """Gather a picklable object from every rank; returns a list ordered by rank."""
    if not is_dist():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s picklable ``obj`` on every rank."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
