"""Local-window sums over a pixel neighbourhood, shared by both CRF modes (docs/method.md §4.3).

``window_sum`` is the reference (one shifted copy per offset, zero padding);
``lattice_window_sum`` computes the same sum with one ``F.unfold``, optionally on one colour
class of pixels only (the colored schedule that the tests use as the reference of the parallel
one). ``full_window_sum`` picks between the two by device: on the CPU the per-offset loop is
faster than the unfold (which copies every window); on a GPU the unfold is 3 kernel launches
instead of about ``3 k^2`` (BENCHMARKS.md "Speed and checks on a GPU").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK_ELEMS = 1 << 24  # unfolded values per chunk of objects in one CRF sweep (64 MiB in fp32)


def offsets(kernel_size: int, dilation: int = 1) -> list[tuple[int, int]]:
    """Window offsets ``(dy, dx)`` in row-major order, as ``nn.Unfold`` enumerates them."""
    r = kernel_size // 2
    return [(dy * dilation, dx * dilation) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]


def shifted(x: Tensor, offs: list[tuple[int, int]]) -> list[Tensor]:
    """``x[..., y + dy, x + dx]`` for each offset, zero outside the image. ``x: [..., h, w]``."""
    h, w = x.shape[-2:]
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offs)
    xp = F.pad(x, (pad, pad, pad, pad))
    return [xp[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w] for dy, dx in offs]


def window_sum(kernel: Tensor, x: Tensor, offs: list[tuple[int, int]]) -> Tensor:
    """``sum_j kernel[j, p] * x[..., p + delta_j]`` with zero padding. ``kernel: [K, h, w]``
    (one for all maps), or ``[N, K, h, w]`` with ``x: [N, h, w]`` (one per map)."""
    out = torch.zeros_like(x)
    for j, nb in enumerate(shifted(x, offs)):
        out = out + (kernel[:, j] if kernel.dim() == 4 else kernel[j]) * nb
    return out


def lattice_window_sum(
    kernel: Tensor, x: Tensor, kernel_size: int, dilation: int, a: int, b: int, step: int
) -> Tensor:
    """``sum_j kernel[j, p] * x[:, p + d_j]`` (zero padded) for the pixels ``p = (a + step i,
    b + step j)`` only, via one ``F.unfold``: ``[N, ceil((h - a) / step), ceil((w - b) / step)]``.

    With ``step = 1`` this is :func:`window_sum` for every pixel in one strided op instead of one
    op per offset; with ``step = period`` it is the field on one colour class of the colored
    schedule at ``1 / period^2`` of the cost. ``kernel`` is ``[K, h, w]`` (one for all maps) or
    ``[N, K, h, w]`` (one per map).
    """
    n, h, w = x.shape
    r = (kernel_size // 2) * dilation
    xp = F.pad(x, (r, r, r, r))[:, a:, b:]
    cols = F.unfold(xp[:, None], kernel_size, dilation=dilation, stride=step)  # [N, K, L]
    hb, wb = len(range(a, h, step)), len(range(b, w, step))
    if kernel.dim() == 4:
        kern = kernel[..., a::step, b::step].reshape(n, kernel.shape[1], -1)  # [N, K, L]
        return (cols * kern).sum(dim=1).view(n, hb, wb)
    kern = kernel[:, a::step, b::step].reshape(kernel.shape[0], 1, -1)  # [K, 1, L]
    return (cols.transpose(0, 1) * kern).sum(dim=0).view(n, hb, wb)


def vectorized_default(x: Tensor) -> bool:
    """Whether the window code should take its unfold (one-launch) form for tensors like ``x``:
    off the CPU, yes; on the CPU the per-offset loops are faster."""
    return x.device.type != "cpu"


def full_window_sum(
    kernel: Tensor, x: Tensor, kernel_size: int, dilation: int = 1,
    *, vectorized: bool | None = None,
) -> Tensor:
    """:func:`window_sum` on every pixel of ``x: [N, h, w]``: the per-offset loop, or with
    ``vectorized`` (default: off the CPU) one :func:`lattice_window_sum`. Same values."""
    if vectorized is None:
        vectorized = vectorized_default(x)
    if vectorized:
        return lattice_window_sum(kernel, x, kernel_size, dilation, 0, 0, 1)
    return window_sum(kernel, x, offsets(kernel_size, dilation))


def neighbours(x: Tensor, kernel_size: int, dilation: int = 1) -> Tensor:
    """``x[:, p + d_j]`` for every offset ``j`` (zero outside), ``[C, k*k, h, w]`` from one
    ``F.unfold`` of ``x: [C, h, w]`` (offsets in :func:`offsets` order)."""
    c, h, w = x.shape
    r = (kernel_size // 2) * dilation
    cols = F.unfold(x[None], kernel_size, dilation=dilation, padding=r)
    return cols.view(c, kernel_size * kernel_size, h, w)
