"""Batching: collation into :class:`ImageBatch`, aspect-ratio grouped sampling, train/test loaders.

Determinism and exact resume. The training stream is a pure function of ``(seed, rank,
world_size, batch_size, dataset)``:

- epoch ``e`` shuffles with a ``DistributedSampler(seed=seed)`` after ``set_epoch(e)`` (every rank
  sees a disjoint shard of one global permutation);
- :class:`GroupedBatchSampler` turns each rank's index stream into exactly ``iters_per_epoch``
  batches of images with the same orientation (``w >= h`` or ``w < h``);
- every sample is loaded inside ``rng_scope`` with a generator seeded from ``(seed, epoch, rank,
  batch, slot)``, so random scales and flips do not depend on ``num_workers`` or on where the
  stream was started.

Iteration ``i`` belongs to epoch ``i // iters_per_epoch``; ``start_iter`` skips whole epochs
arithmetically and the first batches of its epoch by index only, without loading any image.
"""

from __future__ import annotations

import functools
import itertools
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..modeling.solov2.model import PIXEL_MEAN  # padding = the mean: 0 once normalised
from ..structures import ImageBatch, Instances
from .transforms import rng_scope

SIZE_DIVISOR = 32


def collate(samples: Sequence[dict[str, Any]]) -> ImageBatch:
    """Stack transformed samples into a padded :class:`ImageBatch`.

    Args:
        samples: dicts with ``image`` (``uint8[h, w, 3]`` RGB numpy), ``instances``
            (:class:`Instances` in the resized frame), ``orig_size``, and optionally ``image_id``
            and ``file_name``.

    Returns:
        ``images`` ``float32[B, 3, H, W]`` with ``H, W`` the largest sizes rounded up to a multiple
        of 32; padding (bottom/right) holds ``PIXEL_MEAN``. ``targets`` are the instances.
    """
    if not samples:
        raise ValueError("collate: empty list of samples")
    sizes = [tuple(int(v) for v in s["image"].shape[:2]) for s in samples]
    pad_h = -(-max(h for h, _ in sizes) // SIZE_DIVISOR) * SIZE_DIVISOR
    pad_w = -(-max(w for _, w in sizes) // SIZE_DIVISOR) * SIZE_DIVISOR
    images = torch.empty((len(samples), 3, pad_h, pad_w), dtype=torch.float32)
    images[:] = torch.tensor(PIXEL_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    for i, s in enumerate(samples):
        image = s["image"]
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"{s.get('file_name', '')}: expected uint8[H, W, 3] image, got "
                f"{image.dtype}{list(image.shape)}"
            )
        h, w = sizes[i]
        images[i, :, :h, :w] = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    targets: list[Instances] = [s["instances"] for s in samples]
    return ImageBatch(
        images=images,
        image_sizes=sizes,
        orig_sizes=[tuple(int(v) for v in s["orig_size"]) for s in samples],
        image_ids=[int(s.get("image_id", -1)) for s in samples],
        file_names=[str(s.get("file_name", "")) for s in samples],
        targets=targets,
    )


def aspect_groups(dataset: Dataset) -> list[int]:
    """Group id per item: 1 where ``w >= h`` (``aspect_ratios`` attribute), else 0.

    Datasets without ``aspect_ratios`` form one group.
    """
    ratios = getattr(dataset, "aspect_ratios", None)
    if ratios is None:
        return [0] * len(dataset)
    return [1 if r >= 1.0 else 0 for r in ratios]


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of one aspect-ratio group from a per-rank index stream (like mmdet GroupSampler).

    Indices are buffered per group in stream order and a batch is emitted when a buffer holds
    ``batch_size`` indices. The epoch has exactly ``num_batches`` batches: extra ones are dropped,
    and missing ones (leftovers at the end of the stream) are completed by repeating indices of
    the same group.

    Args:
        sampler: per-rank index stream, e.g. ``DistributedSampler``; ``set_epoch`` is forwarded.
        group_ids: group of every dataset index.
        batch_size: images per batch.
        num_batches: batches per epoch; default ``len(sampler) // batch_size`` (at least 1).
    """

    def __init__(
        self,
        *,
        sampler: Iterable[int],
        group_ids: Sequence[int],
        batch_size: int,
        num_batches: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        if num_batches is None:
            num_batches = max(1, len(sampler) // batch_size)  # type: ignore[arg-type]
        self.num_batches = num_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        stream = list(self.sampler)
        if not stream:
            raise ValueError("GroupedBatchSampler: the index stream is empty")
        buffers: dict[int, list[int]] = {}
        emitted = 0
        for idx in stream:
            buf = buffers.setdefault(self.group_ids[idx], [])
            buf.append(idx)
            if len(buf) == self.batch_size:
                yield list(buf)
                buf.clear()
                emitted += 1
                if emitted == self.num_batches:
                    return
        # Too few full batches: complete leftovers (largest first), cycling their own group.
        leftovers = sorted((b for b in buffers.values() if b), key=len, reverse=True)
        while emitted < self.num_batches:
            if leftovers:
                buf = leftovers.pop(0)
                group = self.group_ids[buf[0]]
                pool = [i for i in stream if self.group_ids[i] == group]
            else:  # every group consumed: start again from the stream
                buf, pool = [], stream
            fill = itertools.islice(itertools.cycle(pool), self.batch_size - len(buf))
            yield buf + list(fill)
            emitted += 1


class _Keyed(Dataset):
    """Loads ``(index, seed_key)`` items inside an ``rng_scope`` seeded from ``seed_key``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, tuple[int, ...]]) -> dict[str, Any]:
        index, key = item
        with rng_scope(np.random.default_rng(key)):
            return self.dataset[index]


class _InfiniteBatches(Sampler[list[tuple[int, tuple[int, ...]]]]):
    """Epochs of ``GroupedBatchSampler`` batches from ``start_iter`` on, items with seed keys."""

    def __init__(self, batches: GroupedBatchSampler, *, seed: int, rank: int, start_iter: int):
        self.batches = batches
        self.seed = seed
        self.rank = rank
        self.start_iter = start_iter

    def __iter__(self) -> Iterator[list[tuple[int, tuple[int, ...]]]]:
        n = len(self.batches)
        epoch, skip = divmod(self.start_iter, n)
        while True:
            self.batches.set_epoch(epoch)
            for b, batch in enumerate(itertools.islice(iter(self.batches), skip, None), skip):
                yield [(i, (self.seed, epoch, self.rank, b, j)) for j, i in enumerate(batch)]
            epoch, skip = epoch + 1, 0


class TrainLoader:
    """Infinite iterator of training :class:`ImageBatch` (see the module docstring).

    Attributes:
        iters_per_epoch: batches per epoch and rank, ``max(1, len(dataset) // (batch_size *
            world_size))``.
        start_iter: the global iteration of the first batch returned.
    """

    def __init__(self, loader: DataLoader, *, iters_per_epoch: int, start_iter: int) -> None:
        self.loader = loader
        self.iters_per_epoch = iters_per_epoch
        self.start_iter = start_iter
        self._it: Iterator[ImageBatch] | None = None

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> ImageBatch:
        if self._it is None:
            self._it = iter(self.loader)
        return next(self._it)


def build_train_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    start_iter: int = 0,
    worker_init_fn: Callable[[int], None] | None = None,
) -> TrainLoader:
    """Deterministic, infinite, aspect-ratio grouped training loader for one rank.

    Args:
        dataset: map-style dataset of sample dicts; ``aspect_ratios`` (w/h per item) if grouping.
        batch_size: images per batch on this rank.
        num_workers: DataLoader worker processes (0 loads in the main process).
        seed: base seed of shuffling and of the transforms' randomness.
        rank, world_size: this process and the number of processes.
        start_iter: global iteration to start at (exact resume).
        worker_init_fn: optional extra per-worker setup, run after the workers are made to
            ignore SIGINT and others' SIGTERM (see :func:`ignore_stop_signals`).

    Returns:
        :class:`TrainLoader`; ``next(loader)`` gives an :class:`ImageBatch`.
    """
    if len(dataset) == 0:
        raise ValueError("build_train_loader: the dataset is empty")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if start_iter < 0:
        raise ValueError(f"start_iter must be >= 0, got {start_iter}")
    iters_per_epoch = max(1, len(dataset) // (batch_size * world_size))
    shard = DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False
    )
    batches = GroupedBatchSampler(
        sampler=shard,
        group_ids=aspect_groups(dataset),
        batch_size=batch_size,
        num_batches=iters_per_epoch,
    )
    loader = DataLoader(
        _Keyed(dataset),
        batch_sampler=_InfiniteBatches(batches, seed=seed, rank=rank, start_iter=start_iter),
        num_workers=num_workers,
        collate_fn=collate,
        persistent_workers=False,
        worker_init_fn=worker_init(worker_init_fn),
        generator=torch.Generator().manual_seed(seed * 1000 + rank),
    )
    return TrainLoader(loader, iters_per_epoch=iters_per_epoch, start_iter=start_iter)


def ignore_stop_signals(worker_id: int, then: Callable[[int], None] | None = None) -> None:
    """DataLoader ``worker_init_fn``: the worker ignores SIGINT, and SIGTERM unless its parent
    (the process that owns the loader) sends it; then runs ``then``.

    Why: a scheduler (Slurm) or Ctrl-C signals every process of the job, workers included; a
    worker that dies first makes torch raise in the main process before the trainer's handler
    can save its checkpoint. The parent's own SIGTERM must still work: torch and
    ``multiprocessing`` stop workers with it at shutdown and at exit (and would wait forever).
    SIGTERM is blocked and a thread takes it with ``sigwaitinfo``, which names the sender.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "sigwaitinfo"):  # Linux (Slurm's platform); elsewhere SIGTERM stays fatal
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # later threads inherit it
        threading.Thread(target=_sigterm_from_parent_only, args=(os.getppid(),), daemon=True,
                         name="discobox-sigterm").start()
    if then is not None:
        then(worker_id)


def _sigterm_from_parent_only(parent: int) -> None:
    """Wait for SIGTERMs; exit (as SIGTERM's default would) when ``parent`` sent one."""
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(128 + signal.SIGTERM)


def worker_init(then: Callable[[int], None] | None = None) -> Callable[[int], None]:
    """The loaders' ``worker_init_fn``: :func:`ignore_stop_signals` composed with ``then``."""
    return functools.partial(ignore_stop_signals, then=then)


class ShardSampler(Sampler[int]):
    """Contiguous, non-overlapping share of ``range(size)`` for one rank; no padding duplicates."""

    def __init__(self, *, size: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        per, extra = divmod(size, world_size)
        self.begin = rank * per + min(rank, extra)
        self.end = self.begin + per + (1 if rank < extra else 0)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.begin, self.end))

    def __len__(self) -> int:
        return self.end - self.begin


def build_test_loader(
    dataset: Dataset,
    *,
    batch_size: int = 1,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    worker_init_fn: Callable[[int], None] | None = None,
) -> DataLoader:
    """Sequential loader over this rank's contiguous share of ``dataset`` (each image once overall).

    Yields :class:`ImageBatch`; ``len(loader)`` is this rank's number of batches. Workers ignore
    SIGINT and others' SIGTERM, then run ``worker_init_fn`` (see :func:`ignore_stop_signals`).
    """
    sampler = ShardSampler(size=len(dataset), rank=rank, world_size=world_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=False,
        worker_init_fn=worker_init(worker_init_fn),
    )
